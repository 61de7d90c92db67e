//! What the VMM told us at boot: hvm_start_info (memory map, command line)
//! and the Xen CPUID leaves.

use core::sync::atomic::{AtomicU64, Ordering};

use xen_abi::cpuid::{XEN_CPUID_BASE, XEN_HVM_CPUID_DOMID_PRESENT};
use xen_abi::memory::{E820_RAM, E820_RESERVED};
use xen_abi::pvh::{MemmapEntry, StartInfo, START_INFO_MAGIC};

use crate::hypercall::cpuid;

static START_INFO: AtomicU64 = AtomicU64::new(0);

/// Most memmap entries looked at.
const MAX_MEMMAP: usize = 128;
/// Longest command line read.
const MAX_CMDLINE: usize = 4096;

pub fn init(start_info_gpa: u64) {
    START_INFO.store(start_info_gpa, Ordering::Release);
}

/// The start_info structure, if its magic is right.
pub fn start_info() -> Option<StartInfo> {
    let gpa = START_INFO.load(Ordering::Acquire);
    if gpa == 0 || gpa >= 1 << 32 {
        return None;
    }
    // SAFETY: EBX at entry held the GPA of hvm_start_info, which lies in RAM
    // below 4 GiB and is identity-mapped; it is only read.
    let si = unsafe { (gpa as *const StartInfo).read_unaligned() };
    (si.magic == START_INFO_MAGIC).then_some(si)
}

/// Memory-map entry `i` from start_info.
pub fn memmap_entry(i: usize) -> Option<MemmapEntry> {
    let si = start_info()?;
    if i >= si.memmap_entries as usize || i >= MAX_MEMMAP || si.memmap_paddr >= 1 << 32 {
        return None;
    }
    let p = (si.memmap_paddr as *const MemmapEntry).wrapping_add(i);
    // SAFETY: memmap_paddr points at memmap_entries entries in RAM below
    // 4 GiB (identity-mapped); i is in range; only read.
    Some(unsafe { p.read_unaligned() })
}

pub fn memmap() -> impl Iterator<Item = MemmapEntry> {
    (0..MAX_MEMMAP).map_while(memmap_entry)
}

/// Pages of RAM (type 1) in the start_info memory map.
pub fn ram_pages() -> u64 {
    memmap()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size >> 12)
        .sum()
}

/// End of the highest RAM range that ends at or below 4 GiB (our page
/// tables map only the first 4 GiB).
pub fn ram_end_below_4g() -> u64 {
    memmap()
        .filter(|e| e.kind == E820_RAM && e.addr + e.size <= 1 << 32)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap_or(0)
}

/// Whether `[gpa, gpa + len)` lies inside one reserved (type 2) range.
pub fn in_reserved(gpa: u64, len: u64) -> bool {
    memmap().any(|e| e.kind == E820_RESERVED && gpa >= e.addr && gpa + len <= e.addr + e.size)
}

/// The command line from start_info (without the NUL).
pub fn cmdline() -> &'static [u8] {
    let Some(si) = start_info() else { return &[] };
    let p = si.cmdline_paddr;
    if p == 0 || p >= 1 << 32 {
        return &[];
    }
    let base = p as *const u8;
    let mut len = 0;
    // SAFETY: cmdline_paddr points at a NUL-terminated string in RAM below
    // 4 GiB; we read at most MAX_CMDLINE bytes of it.
    while len < MAX_CMDLINE && unsafe { base.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just scanned are initialised guest RAM that no
    // one writes for the rest of the run.
    unsafe { core::slice::from_raw_parts(base, len) }
}

/// The value of `key=` on the command line, if present.
pub fn cmdline_value(key: &[u8]) -> Option<&'static [u8]> {
    cmdline()
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .find_map(|tok| {
            (tok.len() > key.len() && tok.starts_with(key) && tok[key.len()] == b'=')
                .then(|| &tok[key.len() + 1..])
        })
}

/// Our domid from CPUID leaf 0x40000004 (ECX, if DOMID_PRESENT).
pub fn domid() -> Option<u16> {
    let max = cpuid(XEN_CPUID_BASE, 0)[0];
    if max < XEN_CPUID_BASE + 4 {
        return None;
    }
    let r = cpuid(XEN_CPUID_BASE + 4, 0);
    (r[0] & XEN_HVM_CPUID_DOMID_PRESENT != 0).then_some(r[2] as u16)
}
