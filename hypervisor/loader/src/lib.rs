//! Guest kernel loading for kxen.
//!
//! * PVH ELF kernels: 64-bit images go through linux-loader; 32-bit images
//!   (which linux-loader does not read) through [`elf32`]. Either way the
//!   entry point is the `XEN_ELFNOTE_PHYS32_ENTRY` note, and the class does
//!   not decide the machine: as in Xen, an ELFCLASS32 image may say x86-64
//!   (`elf32-x86-64`) and an ELFCLASS64 one i386 (see [`check_pvh_ident`]).
//! * The PVH boot block: `hvm_start_info`, its memory map, module list and
//!   command line, written to guest memory by [`start_info`].
//! * Linux's own 64-bit boot protocol for HVM guests ([`linux`]): bzImage
//!   or vmlinux, the zero page, command line and initrd.
//! * ACPI tables ([`acpi`]): vCPUs, their start mailbox, power-off and reset.

pub mod acpi;
pub mod elf32;
pub mod linux;
pub mod pv;
pub mod start_info;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot read kernel image: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF image")]
    NotElf,
    #[error("bad kernel image: {0}")]
    BadImage(&'static str),
    #[error("bad ELF image: {0}")]
    BadElf(&'static str),
    #[error(
        "ELF image is for machine {machine} (ELFCLASS{bits}): a PVH kernel is built for \
         i386 (3) or x86-64 (62)"
    )]
    NotX86 { machine: u16, bits: u8 },
    #[error("ELF image is big-endian: an x86 PVH kernel is little-endian")]
    BigEndian,
    #[error("ELF kernel has no PVH entry note (Xen note type 18)")]
    NoPvhEntry,
    #[error("kernel segment at {addr:#x}+{len:#x} does not fit in guest RAM")]
    SegmentOutsideRam { addr: u64, len: u64 },
    #[error("linux-loader: {0}")]
    Linux(#[from] linux_loader::loader::Error),
    #[error("boot data does not fit: {0}")]
    NoRoom(&'static str),
    #[error("guest memory write failed at {0:#x}")]
    GuestWrite(u64),
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 32-bit physical PVH entry point.
    pub entry: u64,
    /// First byte past the highest loaded segment.
    pub end: u64,
}

/// Load a PVH ELF kernel (32- or 64-bit) into `mem` at its physical
/// addresses.
pub fn load_pvh_elf(mem: &GuestMemoryMmap, image: &mut File) -> Result<LoadedKernel, LoaderError> {
    let mut start = [0u8; 20];
    image.seek(SeekFrom::Start(0))?;
    image
        .read_exact(&mut start)
        .map_err(|_| LoaderError::NotElf)?;
    match check_pvh_ident(&start)? {
        ELFCLASS32 => elf32::load(mem, image),
        ELFCLASS64 => {
            let result = Elf::load(mem, None, image, None)?;
            match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(GuestAddress(entry)) => Ok(LoadedKernel {
                    entry,
                    end: result.kernel_end,
                }),
                _ => Err(LoaderError::NoPvhEntry),
            }
        }
        _ => Err(LoaderError::BadElf("unknown ELF class")),
    }
}

const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Check the first 20 bytes of an ELF image (its ident and `e_machine`,
/// at the same offsets in both classes) for a PVH kernel; returns its class.
///
/// Xen's toolstack takes an image with a PHYS32_ENTRY note as a PVH
/// ("hvm-3.0-x86_32") kernel whatever its class and machine say: the
/// entry is 32-bit protected mode either way, so `elf32-x86-64` images
/// (ELFCLASS32, EM_X86_64) and ELFCLASS64 images saying EM_386 boot as
/// well as the usual pairings. kxen accepts those four pairings and
/// refuses machines that cannot be an x86 kernel, which Xen would load and
/// crash on, with an error that names the machine.
pub fn check_pvh_ident(start: &[u8; 20]) -> Result<u8, LoaderError> {
    if &start[..4] != b"\x7fELF" {
        return Err(LoaderError::NotElf);
    }
    let class = start[4];
    let bits = match class {
        ELFCLASS32 => 32,
        ELFCLASS64 => 64,
        _ => return Err(LoaderError::BadElf("unknown ELF class")),
    };
    if start[5] != ELFDATA2LSB {
        return Err(LoaderError::BigEndian);
    }
    match u16::from_le_bytes([start[18], start[19]]) {
        EM_386 | EM_X86_64 => Ok(class),
        machine => Err(LoaderError::NotX86 { machine, bits }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const LOAD_AT: u32 = 0x10_0000;
    const PAYLOAD: &[u8] = b"kxen elf32 payload";

    /// A minimal ELFCLASS32 PVH kernel: one PT_LOAD of `PAYLOAD` (plus
    /// .bss) at `LOAD_AT` and a PT_NOTE with the PHYS32_ENTRY note.
    fn elf32_image(machine: u16) -> Vec<u8> {
        const EHDR: u32 = 52;
        const PHDR: u32 = 32;
        let note_at = EHDR + 2 * PHDR;
        let mut note = Vec::new();
        for word in [4u32, 4, xen_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY] {
            note.extend_from_slice(&word.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&LOAD_AT.to_le_bytes());
        let payload_at = note_at + note.len() as u32;

        let mut image = vec![0x7f, b'E', b'L', b'F', ELFCLASS32, ELFDATA2LSB, 1];
        image.resize(16, 0);
        image.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
        image.extend_from_slice(&machine.to_le_bytes());
        image.extend_from_slice(&1u32.to_le_bytes()); // e_version
        image.extend_from_slice(&LOAD_AT.to_le_bytes()); // e_entry
        image.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
        image.extend_from_slice(&0u32.to_le_bytes()); // e_shoff
        image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [EHDR as u16, PHDR as u16, 2, 40, 0, 0] {
            image.extend_from_slice(&half.to_le_bytes());
        }
        let load = [
            1,
            payload_at,
            LOAD_AT,
            LOAD_AT,
            PAYLOAD.len() as u32,
            0x1000,
            5,
            4,
        ];
        let notes = [4, note_at, 0, 0, note.len() as u32, note.len() as u32, 4, 4];
        for word in load.into_iter().chain(notes) {
            image.extend_from_slice(&word.to_le_bytes());
        }
        image.extend_from_slice(&note);
        image.extend_from_slice(PAYLOAD);
        image
    }

    fn load_image(image: &[u8]) -> (GuestMemoryMmap, Result<LoadedKernel, LoaderError>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!(
            "kxen-loader-elf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, image).unwrap();
        let mut file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let result = load_pvh_elf(&mem, &mut file);
        (mem, result)
    }

    /// `elf32-x86-64` (ELFCLASS32 with EM_X86_64), as Xen accepts it for
    /// PVH, loads like `elf32-i386`.
    #[test]
    fn elf32_x86_64_and_i386_images_load() {
        for machine in [EM_X86_64, EM_386] {
            let (mem, loaded) = load_image(&elf32_image(machine));
            let loaded = loaded.unwrap_or_else(|e| panic!("machine {machine}: {e}"));
            assert_eq!(loaded.entry, u64::from(LOAD_AT));
            assert_eq!(loaded.end, u64::from(LOAD_AT) + 0x1000);
            let mut back = vec![0u8; PAYLOAD.len() + 4];
            mem.read_slice(&mut back, GuestAddress(u64::from(LOAD_AT)))
                .unwrap();
            assert_eq!(&back[..PAYLOAD.len()], PAYLOAD);
            assert_eq!(&back[PAYLOAD.len()..], &[0; 4], ".bss is zero");
        }
    }

    #[test]
    fn non_x86_machines_are_refused_by_name() {
        // EM_ARM, EM_AARCH64, EM_NONE.
        for machine in [40u16, 183, 0] {
            let (_, loaded) = load_image(&elf32_image(machine));
            let err = loaded.expect_err("a non-x86 image must be refused");
            assert!(
                matches!(err, LoaderError::NotX86 { machine: m, bits: 32 } if m == machine),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("machine {machine}")));
        }
        let mut start = [0u8; 20];
        start[..20].copy_from_slice(&elf32_image(40)[..20]);
        start[4] = ELFCLASS64;
        assert!(matches!(
            check_pvh_ident(&start),
            Err(LoaderError::NotX86 {
                machine: 40,
                bits: 64
            })
        ));
    }

    #[test]
    fn both_classes_accept_both_x86_machines() {
        for class in [ELFCLASS32, ELFCLASS64] {
            for machine in [EM_386, EM_X86_64] {
                let mut start = [0u8; 20];
                start.copy_from_slice(&elf32_image(machine)[..20]);
                start[4] = class;
                assert_eq!(check_pvh_ident(&start).unwrap(), class);
            }
        }
    }

    #[test]
    fn big_endian_and_unknown_classes_are_refused() {
        let mut image = elf32_image(EM_X86_64);
        image[5] = 2; // ELFDATA2MSB
        assert!(matches!(load_image(&image).1, Err(LoaderError::BigEndian)));
        let mut image = elf32_image(EM_X86_64);
        image[4] = 3;
        assert!(matches!(
            load_image(&image).1,
            Err(LoaderError::BadElf("unknown ELF class"))
        ));
    }

    #[test]
    fn an_elf32_image_without_the_pvh_note_is_refused() {
        let mut image = elf32_image(EM_X86_64);
        // The note's type: 18 -> 17.
        let note_type_at = 52 + 64 + 8;
        image[note_type_at] = 17;
        assert!(matches!(load_image(&image).1, Err(LoaderError::NoPvhEntry)));
    }

    #[test]
    fn a_segment_beyond_guest_ram_is_refused_before_allocating() {
        let mut image = elf32_image(EM_X86_64);
        // The PT_LOAD's p_memsz: 4 GiB - 1.
        let memsz_at = 52 + 20;
        image[memsz_at..memsz_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load_image(&image).1,
            Err(LoaderError::SegmentOutsideRam { .. })
        ));
    }
}
