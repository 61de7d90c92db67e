//! Guest kernel loading for kxen.
//!
//! * PVH ELF kernels: 64-bit images go through linux-loader; 32-bit images
//!   (which linux-loader does not read) through [`elf32`]. Either way the
//!   entry point is the `XEN_ELFNOTE_PHYS32_ENTRY` note.
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
    let mut ident = [0u8; 16];
    image.seek(SeekFrom::Start(0))?;
    image
        .read_exact(&mut ident)
        .map_err(|_| LoaderError::NotElf)?;
    if &ident[..4] != b"\x7fELF" {
        return Err(LoaderError::NotElf);
    }
    match ident[4] {
        1 => elf32::load(mem, image),
        2 => {
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
