//! The PVH boot block: `hvm_start_info`, memory map, modules, command line.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::pvh::{MemmapEntry, ModlistEntry, StartInfo, START_INFO_MAGIC};
use zerocopy::IntoBytes;

use crate::LoaderError;

/// Where the boot block goes in low guest memory.
#[derive(Debug, Clone, Copy)]
pub struct BootBlockLayout {
    pub start_info: u64,
    pub modlist: u64,
    pub memmap: u64,
    pub memmap_max: usize,
    pub cmdline: u64,
    pub cmdline_max: usize,
}

impl Default for BootBlockLayout {
    fn default() -> Self {
        BootBlockLayout {
            start_info: 0x6000,
            modlist: 0x6040,
            memmap: 0x6100,
            memmap_max: 64,
            cmdline: 0x7000,
            cmdline_max: 0x1000,
        }
    }
}

/// A module (initrd) already copied into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
}

/// Write the boot block; returns the GPA of `hvm_start_info` (for EBX).
pub fn write(
    mem: &GuestMemoryMmap,
    layout: &BootBlockLayout,
    cmdline: &str,
    memmap: &[MemmapEntry],
    modules: &[Module],
    rsdp: u64,
) -> Result<u64, LoaderError> {
    if cmdline.len() + 1 > layout.cmdline_max {
        return Err(LoaderError::NoRoom("command line"));
    }
    if memmap.len() > layout.memmap_max {
        return Err(LoaderError::NoRoom("memory map"));
    }
    if modules.len() > 4 {
        return Err(LoaderError::NoRoom("module list"));
    }
    let put = |gpa: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| LoaderError::GuestWrite(gpa))
    };
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    put(layout.cmdline, &line)?;
    put(layout.memmap, memmap.as_bytes())?;
    let mods: Vec<ModlistEntry> = modules
        .iter()
        .map(|m| ModlistEntry {
            paddr: m.paddr,
            size: m.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    put(layout.modlist, mods.as_bytes())?;
    let info = StartInfo {
        magic: START_INFO_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            layout.modlist
        },
        cmdline_paddr: layout.cmdline,
        rsdp_paddr: rsdp,
        memmap_paddr: layout.memmap,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    put(layout.start_info, info.as_bytes())?;
    Ok(layout.start_info)
}
