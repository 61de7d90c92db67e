//! 32-bit ELF PVH kernels (for example 32-bit builds of XTF or mini-OS,
//! linked as `elf32-i386` or as `elf32-x86-64`). The `object` crate reads
//! the headers and checks every table and segment against the image; the
//! counts and sizes are capped here, so a hostile image cannot make us walk
//! an enormous table.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use object::elf::{FileHeader32, PT_LOAD, PT_NOTE};
use object::read::elf::{FileHeader as _, NoteIterator, ProgramHeader as _};
use object::LittleEndian;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use xen_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

use crate::{LoadedKernel, LoaderError};

type FileHeader = FileHeader32<LittleEndian>;

/// Refuse absurd program header tables.
const MAX_PHDRS: usize = 64;
/// Refuse absurd note segments.
const MAX_NOTE_SEGMENT: u64 = 64 * 1024;
/// A 32-bit kernel addresses 4 GiB at most; a bigger file is not one.
const MAX_IMAGE: u64 = 1 << 32;

/// Find the PVH entry in the contents of one PT_NOTE segment (notes
/// aligned to 4 bytes, as ELF32 and Xen's notes are).
pub fn find_pvh_entry(notes: &[u8]) -> Option<u64> {
    let mut iter = NoteIterator::<FileHeader>::new(LittleEndian, 4, notes).ok()?;
    while let Some(note) = iter.next().ok()? {
        // Xen's name is "Xen" with its NUL; object strips the NUL.
        if note.n_type(LittleEndian).0 != XEN_ELFNOTE_PHYS32_ENTRY || note.name() != b"Xen" {
            continue;
        }
        let desc = note.desc();
        return match desc.len() {
            4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
            8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
            _ => None,
        };
    }
    None
}

/// Load a little-endian ELFCLASS32 image; the caller has checked that its
/// machine is one a PVH kernel may name.
pub fn load(mem: &GuestMemoryMmap, image: &mut File) -> Result<LoadedKernel, LoaderError> {
    let size = image.metadata()?.len();
    if size > MAX_IMAGE {
        return Err(LoaderError::BadElf("image larger than 4 GiB"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    image.seek(SeekFrom::Start(0))?;
    image.read_to_end(&mut bytes)?;
    let data = bytes.as_slice();
    let header = FileHeader::parse(data).map_err(|_| LoaderError::BadElf("bad ELF header"))?;
    let endian = header
        .endian()
        .map_err(|_| LoaderError::BadElf("not little-endian"))?;
    if usize::from(header.e_phnum.get(endian)) > MAX_PHDRS {
        return Err(LoaderError::BadElf("bad program header table"));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|_| LoaderError::BadElf("bad program header table"))?;

    let mut entry = None;
    let mut end = 0u64;
    for ph in phdrs {
        match ph.p_type(endian) {
            PT_NOTE if entry.is_none() => {
                if u64::from(ph.p_filesz(endian)) > MAX_NOTE_SEGMENT {
                    return Err(LoaderError::BadElf("note segment too large"));
                }
                let notes = ph
                    .data(endian, data)
                    .map_err(|_| LoaderError::BadElf("short note segment"))?;
                entry = find_pvh_entry(notes);
            }
            PT_LOAD => {
                let filesz = u64::from(ph.p_filesz(endian));
                let memsz = u64::from(ph.p_memsz(endian));
                if filesz > memsz {
                    return Err(LoaderError::BadElf("segment file size exceeds memory size"));
                }
                let file_bytes = ph
                    .data(endian, data)
                    .map_err(|_| LoaderError::BadElf("short segment"))?;
                let addr = u64::from(ph.p_paddr(endian));
                let outside = || LoaderError::SegmentOutsideRam { addr, len: memsz };
                // Checked before the zero fill is allocated: a hostile
                // memory size cannot make us allocate more than guest RAM.
                if !mem.check_range(GuestAddress(addr), memsz as usize, Permissions::Write) {
                    return Err(outside());
                }
                mem.write_slice(file_bytes, GuestAddress(addr))
                    .map_err(|_| outside())?;
                // The rest of the segment (.bss) is zero.
                let zeros = vec![0u8; (memsz - filesz) as usize];
                mem.write_slice(&zeros, GuestAddress(addr + filesz))
                    .map_err(|_| outside())?;
                end = end.max(addr + memsz);
            }
            _ => {}
        }
    }
    let entry = entry.ok_or(LoaderError::NoPvhEntry)?;
    Ok(LoadedKernel { entry, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn finds_four_and_eight_byte_entries() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes()));
        assert_eq!(find_pvh_entry(&notes), Some(0x10_0000));
        let notes = note(b"Xen\0", 18, &0x20_0000u64.to_le_bytes());
        assert_eq!(find_pvh_entry(&notes), Some(0x20_0000));
    }

    #[test]
    fn truncated_notes_are_rejected() {
        let notes = note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes());
        for cut in 0..notes.len() {
            assert_eq!(find_pvh_entry(&notes[..cut]), None);
        }
        let mut huge = notes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_pvh_entry(&huge), None);
    }
}
