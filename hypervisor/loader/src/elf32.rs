//! 32-bit ELF PVH kernels (for example 32-bit builds of XTF or mini-OS).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

use crate::{LoadedKernel, LoaderError};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Refuse absurd program header tables.
const MAX_PHDRS: u16 = 64;
/// Refuse absurd note segments.
const MAX_NOTE_SEGMENT: u32 = 64 * 1024;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}

struct Phdr {
    kind: u32,
    offset: u32,
    paddr: u32,
    filesz: u32,
    memsz: u32,
}

/// Find the PVH entry in the contents of one PT_NOTE segment.
pub fn find_pvh_entry(notes: &[u8]) -> Option<u64> {
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let kind = u32_at(notes, off + 8);
        let name_start = off + 12;
        let desc_start = name_start.checked_add(namesz.checked_add(3)? & !3)?;
        let next = desc_start.checked_add(descsz.checked_add(3)? & !3)?;
        if desc_start.checked_add(descsz)? > notes.len() {
            return None;
        }
        let name = &notes[name_start..name_start + namesz];
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            let desc = &notes[desc_start..desc_start + descsz];
            return match descsz {
                4 => Some(u32_at(desc, 0) as u64),
                8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
                _ => None,
            };
        }
        off = next;
    }
    None
}

pub fn load(mem: &GuestMemoryMmap, image: &mut File) -> Result<LoadedKernel, LoaderError> {
    let mut ehdr = [0u8; 52];
    image.seek(SeekFrom::Start(0))?;
    image
        .read_exact(&mut ehdr)
        .map_err(|_| LoaderError::BadElf("short ELF header"))?;
    if ehdr[5] != 1 {
        return Err(LoaderError::BadElf("not little-endian"));
    }
    if u16_at(&ehdr, 18) != 3 {
        return Err(LoaderError::BadElf("not an i386 image"));
    }
    let phoff = u32_at(&ehdr, 28) as u64;
    let phentsize = u16_at(&ehdr, 42) as usize;
    let phnum = u16_at(&ehdr, 44);
    if phentsize < 32 || phnum > MAX_PHDRS {
        return Err(LoaderError::BadElf("bad program header table"));
    }
    let mut phdrs = Vec::new();
    for i in 0..phnum as u64 {
        let mut raw = vec![0u8; phentsize];
        image.seek(SeekFrom::Start(phoff + i * phentsize as u64))?;
        image
            .read_exact(&mut raw)
            .map_err(|_| LoaderError::BadElf("short program header"))?;
        phdrs.push(Phdr {
            kind: u32_at(&raw, 0),
            offset: u32_at(&raw, 4),
            paddr: u32_at(&raw, 12),
            filesz: u32_at(&raw, 16),
            memsz: u32_at(&raw, 20),
        });
    }

    let mut entry = None;
    let mut end = 0u64;
    for ph in &phdrs {
        match ph.kind {
            PT_NOTE if entry.is_none() => {
                if ph.filesz > MAX_NOTE_SEGMENT {
                    return Err(LoaderError::BadElf("note segment too large"));
                }
                let mut notes = vec![0u8; ph.filesz as usize];
                image.seek(SeekFrom::Start(ph.offset as u64))?;
                image
                    .read_exact(&mut notes)
                    .map_err(|_| LoaderError::BadElf("short note segment"))?;
                entry = find_pvh_entry(&notes);
            }
            PT_LOAD => {
                if ph.filesz > ph.memsz {
                    return Err(LoaderError::BadElf("segment file size exceeds memory size"));
                }
                let addr = ph.paddr as u64;
                let seg_end = addr + ph.memsz as u64;
                let mut data = vec![0u8; ph.memsz as usize];
                image.seek(SeekFrom::Start(ph.offset as u64))?;
                image
                    .read_exact(&mut data[..ph.filesz as usize])
                    .map_err(|_| LoaderError::BadElf("short segment"))?;
                mem.write_slice(&data, GuestAddress(addr)).map_err(|_| {
                    LoaderError::SegmentOutsideRam {
                        addr,
                        len: ph.memsz as u64,
                    }
                })?;
                end = end.max(seg_end);
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
