//! The calling vCPU's page tables, walked in software.
//!
//! Hypercall pointers are guest-virtual addresses. Xen's copy to and from
//! the guest translates them as the guest kernel itself would access them,
//! and refuses (-EFAULT) what the CPU would refuse: a page that is not
//! present, a write to a read-only page, a supervisor-only page reached from
//! user mode, a non-canonical address. KVM's `KVM_TRANSLATE` cannot answer
//! that on x86 (it always reports the page writable and never checks U/S),
//! so this module walks the paging structures itself, reading them straight
//! from guest memory and never outside it, and combines the permissions
//! along the walk as the CPU does.
//!
//! Covered: paging off; 32-bit paging (4 KiB pages, and 4 MiB pages with
//! CR4.PSE, including PSE-36's high address bits); PAE; 4- and 5-level long
//! mode (CR4.LA57), with 2 MiB and 1 GiB pages. Every present entry's
//! reserved bits are checked (the physical-address bits at and above the
//! guest's MAXPHYADDR, NX without EFER.NXE, PS where it is reserved, the
//! bits between a large page's PAT bit and its frame).
//!
//! Not modelled, on purpose: SMEP and SMAP (a hypercall buffer is an
//! explicit access by the kernel, which Linux wraps in `stac` anyway),
//! protection keys, and PAE's PDPTE registers (the four PDPTEs are read
//! from memory at CR3 on every walk, not cached when CR3 was loaded; a
//! guest that edits them without reloading CR3 sees the new entries).
//!
//! # Accessed and dirty bits
//! When Xen copies to or from a guest page, the CPU's own walk sets the
//! Accessed bit of every entry used and, for a write, the Dirty bit of the
//! leaf. A guest relies on that: Linux decides from D whether a page must
//! be written back before it is reclaimed, and from A how recently it was
//! used. A hypercall that wrote a user buffer (privcmd's buffers are user
//! memory) and left D clear would let the guest drop the data. So a
//! successful [`PageWalker::access`] sets A on each level (PAE's PDPTEs have
//! none) and D on the leaf for a write, as the CPU would, and only after
//! every permission check passed: a refused access changes nothing. Each bit
//! is set with a compare-exchange against the value the walk read, so an
//! entry the guest changed meanwhile (perhaps into a not-present entry whose
//! other bits hold a swap location) is never touched; the walk then starts
//! again with the new entry. [`PageWalker::translate`] (the [`VcpuMmu`]
//! query without an access) sets nothing.

use std::sync::atomic::Ordering;

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use super::{atomic_u32, atomic_u64, AccessKind, Fault, VcpuMmu};

/// Page-table entry bits (the same positions in 32-bit, PAE and long-mode
/// entries).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
/// PS: in a directory entry, the entry maps a large page.
const LARGE_PAGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;

pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// How many times a walk starts again because the guest changed an entry
/// between our read and our Accessed/Dirty update before it gives up.
const MAX_WALK_RETRIES: usize = 8;

/// The vCPU state that decides how its virtual addresses translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The privilege level the access is made at: 3 checks U/S.
    pub cpl: u8,
    /// The guest's MAXPHYADDR (CPUID 0x80000008 EAX bits 7:0); entry address
    /// bits at and above it are reserved.
    pub phys_addr_bits: u8,
}

/// Which paging structures [`PagingRegs`] select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: linear addresses are physical.
    Off,
    /// 32-bit paging: two levels of 4-byte entries.
    Legacy32,
    /// PAE: four PDPTEs, then two levels of 8-byte entries.
    Pae,
    /// Long mode, PML4 at CR3.
    Long4,
    /// Long mode with CR4.LA57, PML5 at CR3.
    Long5,
}

impl PagingRegs {
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.efer & EFER_LMA != 0 {
            if self.cr4 & CR4_LA57 != 0 {
                PagingMode::Long5
            } else {
                PagingMode::Long4
            }
        } else if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Legacy32
        }
    }

    /// The same vCPU making a supervisor access (an implicit one such as
    /// reading the IDT, whatever its CPL).
    pub fn as_supervisor(self) -> Self {
        PagingRegs { cpl: 0, ..self }
    }

    /// Physical-address bits, clamped to what x86 defines (32 to 52).
    fn maxphyaddr(&self) -> u32 {
        u32::from(self.phys_addr_bits).clamp(32, 52)
    }

    fn nx_enabled(&self) -> bool {
        self.efer & EFER_NXE != 0
    }
}

/// Why a translation failed. Every variant is a page fault to the CPU and
/// `-EFAULT` to a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WalkError {
    #[error("{gva:#x} is not canonical")]
    NonCanonical { gva: u64 },
    #[error("{gva:#x} is beyond the 32-bit linear address space")]
    Beyond32Bits { gva: u64 },
    #[error("not present (level {level} entry {entry:#x})")]
    NotPresent { level: u8, entry: u64 },
    #[error("reserved bit set (level {level} entry {entry:#x})")]
    ReservedBit { level: u8, entry: u64 },
    #[error("level {level} table entry at {gpa:#x} is outside guest memory")]
    OutsideGuestMemory { level: u8, gpa: u64 },
    #[error("write to a read-only page")]
    ReadOnly,
    #[error("user-mode access to a supervisor page")]
    SupervisorOnly,
    #[error("instruction fetch from a no-execute page")]
    NoExecute,
    #[error("the guest kept changing its page tables during the walk")]
    Unstable,
}

impl From<WalkError> for Fault {
    fn from(_: WalkError) -> Fault {
        Fault
    }
}

/// A successful walk: where the address lands and what the combined
/// entries allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// 4 KiB, 2 MiB, 4 MiB or 1 GiB.
    pub page_size: u64,
    /// R/W set at every level.
    pub writable: bool,
    /// U/S set at every level.
    pub user: bool,
    /// No level has XD set (or EFER.NXE is clear).
    pub executable: bool,
}

/// One entry the walk used, for the Accessed/Dirty update.
#[derive(Clone, Copy)]
struct UsedEntry {
    gpa: u64,
    value: u64,
    /// A 4-byte entry (32-bit paging).
    narrow: bool,
    /// PAE PDPTEs have no Accessed bit.
    has_accessed_bit: bool,
}

/// The entries of one walk, at most one per level.
struct UsedEntries {
    entries: [Option<UsedEntry>; 5],
    len: usize,
}

impl UsedEntries {
    fn new() -> Self {
        UsedEntries {
            entries: [None; 5],
            len: 0,
        }
    }

    fn push(&mut self, e: UsedEntry) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = Some(e);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &UsedEntry> {
        self.entries[..self.len].iter().flatten()
    }
}

/// Bits `lo..hi` set.
const fn bits(lo: u32, hi: u32) -> u64 {
    if hi <= lo {
        0
    } else if hi >= 64 {
        !0u64 << lo
    } else {
        ((1u64 << hi) - 1) & !((1u64 << lo) - 1)
    }
}

fn is_canonical(gva: u64, va_bits: u32) -> bool {
    let shift = 64 - va_bits;
    ((gva << shift) as i64 >> shift) as u64 == gva
}

/// One level of an 8-byte-entry walk (PAE below its PDPTE, or long mode).
struct Level {
    /// 5 for a PML5 down to 1 for a page table.
    number: u8,
    /// The lowest virtual-address bit this level indexes.
    shift: u32,
    /// Whether PS may map a large page here (else PS is reserved).
    large_ok: bool,
}

const LONG_LEVELS: [Level; 5] = [
    Level {
        number: 5,
        shift: 48,
        large_ok: false,
    },
    Level {
        number: 4,
        shift: 39,
        large_ok: false,
    },
    Level {
        number: 3,
        shift: 30,
        large_ok: true,
    },
    Level {
        number: 2,
        shift: 21,
        large_ok: true,
    },
    Level {
        number: 1,
        shift: 12,
        large_ok: false,
    },
];

/// A vCPU's page tables over its domain's memory: the [`VcpuMmu`] that
/// hypercalls and the VMM's instruction emulation translate through.
pub struct PageWalker<'a> {
    mem: &'a GuestMemoryMmap,
    regs: PagingRegs,
}

/// The permissions gathered so far on a walk.
struct Rights {
    writable: bool,
    user: bool,
    executable: bool,
}

impl Rights {
    fn all() -> Self {
        Rights {
            writable: true,
            user: true,
            executable: true,
        }
    }

    fn and(&mut self, entry: u64, nx_enabled: bool) {
        self.writable &= entry & WRITABLE != 0;
        self.user &= entry & USER != 0;
        self.executable &= !(nx_enabled && entry & NO_EXECUTE != 0);
    }
}

impl<'a> PageWalker<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, regs: PagingRegs) -> Self {
        PageWalker { mem, regs }
    }

    pub fn regs(&self) -> &PagingRegs {
        &self.regs
    }

    /// Translate `gva` without checking an access or touching the guest's
    /// Accessed/Dirty bits.
    pub fn probe(&self, gva: u64) -> Result<Translation, WalkError> {
        self.walk(gva, &mut UsedEntries::new())
    }

    /// Translate `gva` for an access of `kind` at the vCPU's CPL, as the
    /// CPU would allow it, and mark the entries used Accessed (and the
    /// leaf Dirty for a write). See the module documentation.
    pub fn access(&self, gva: u64, kind: AccessKind) -> Result<Translation, WalkError> {
        for _ in 0..MAX_WALK_RETRIES {
            let mut used = UsedEntries::new();
            let t = self.walk(gva, &mut used)?;
            self.check(&t, kind)?;
            if self.mark_used(&used, kind == AccessKind::Write) {
                return Ok(t);
            }
        }
        Err(WalkError::Unstable)
    }

    /// The permission checks the CPU makes once the walk reached a page.
    fn check(&self, t: &Translation, kind: AccessKind) -> Result<(), WalkError> {
        let user_mode = self.regs.cpl == 3;
        if user_mode && !t.user {
            return Err(WalkError::SupervisorOnly);
        }
        match kind {
            AccessKind::Read => Ok(()),
            // With CR0.WP clear, supervisor writes ignore R/W.
            AccessKind::Write if !t.writable && (user_mode || self.regs.cr0 & CR0_WP != 0) => {
                Err(WalkError::ReadOnly)
            }
            AccessKind::Write => Ok(()),
            AccessKind::Fetch if !t.executable => Err(WalkError::NoExecute),
            AccessKind::Fetch => Ok(()),
        }
    }

    /// Set Accessed on every entry used and Dirty on the leaf for a write,
    /// each only if the entry still holds what the walk read. False if the
    /// guest changed an entry meanwhile (the caller walks again).
    fn mark_used(&self, used: &UsedEntries, write: bool) -> bool {
        let leaf = used.len.checked_sub(1);
        for (i, e) in used.iter().enumerate() {
            let mut want = e.value;
            if e.has_accessed_bit {
                want |= ACCESSED;
            }
            if write && Some(i) == leaf {
                want |= DIRTY;
            }
            if want == e.value {
                continue;
            }
            let swapped = if e.narrow {
                atomic_u32(self.mem, e.gpa).is_some_and(|a| {
                    a.compare_exchange(
                        e.value as u32,
                        want as u32,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                })
            } else {
                atomic_u64(self.mem, e.gpa).is_some_and(|a| {
                    a.compare_exchange(e.value, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                })
            };
            if !swapped {
                return false;
            }
        }
        true
    }

    fn walk(&self, gva: u64, used: &mut UsedEntries) -> Result<Translation, WalkError> {
        match self.regs.mode() {
            PagingMode::Off => Ok(Translation {
                gpa: gva,
                page_size: 4096,
                writable: true,
                user: true,
                executable: true,
            }),
            PagingMode::Legacy32 => self.walk_legacy32(gva, used),
            PagingMode::Pae => self.walk_pae(gva, used),
            PagingMode::Long4 => self.walk_long(gva, &LONG_LEVELS[1..], 48, used),
            PagingMode::Long5 => self.walk_long(gva, &LONG_LEVELS, 57, used),
        }
    }

    fn read_entry64(&self, level: u8, gpa: u64) -> Result<u64, WalkError> {
        atomic_u64(self.mem, gpa)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(WalkError::OutsideGuestMemory { level, gpa })
    }

    fn read_entry32(&self, level: u8, gpa: u64) -> Result<u64, WalkError> {
        atomic_u32(self.mem, gpa)
            .map(|a| u64::from(a.load(Ordering::Acquire)))
            .ok_or(WalkError::OutsideGuestMemory { level, gpa })
    }

    /// Address bits [MAXPHYADDR, 52): reserved in every long-mode entry.
    fn above_maxphyaddr(&self) -> u64 {
        bits(self.regs.maxphyaddr(), 52)
    }

    fn nx_reserved(&self) -> u64 {
        if self.regs.nx_enabled() {
            0
        } else {
            NO_EXECUTE
        }
    }

    /// Walk 8-byte-entry levels from the table at `table`, `levels` ending
    /// with the page table. `reserved` gives each level's reserved bits for
    /// a table pointer, `large_reserved` those of a large-page entry.
    fn walk_levels(
        &self,
        gva: u64,
        mut table: u64,
        levels: &[Level],
        reserved: u64,
        mut rights: Rights,
        used: &mut UsedEntries,
    ) -> Result<Translation, WalkError> {
        let nx = self.regs.nx_enabled();
        let frame_mask = bits(12, self.regs.maxphyaddr());
        for level in levels {
            let index = (gva >> level.shift) & 0x1ff;
            let entry_gpa = table + index * 8;
            let entry = self.read_entry64(level.number, entry_gpa)?;
            if entry & PRESENT == 0 {
                return Err(WalkError::NotPresent {
                    level: level.number,
                    entry,
                });
            }
            let is_large = entry & LARGE_PAGE != 0 && level.number != 1;
            let mut rsvd = reserved;
            if is_large {
                if !level.large_ok {
                    rsvd |= LARGE_PAGE;
                } else {
                    // Between the PAT bit (12) and the large frame.
                    rsvd |= bits(13, level.shift);
                }
            }
            if entry & rsvd != 0 {
                return Err(WalkError::ReservedBit {
                    level: level.number,
                    entry,
                });
            }
            rights.and(entry, nx);
            used.push(UsedEntry {
                gpa: entry_gpa,
                value: entry,
                narrow: false,
                has_accessed_bit: true,
            });
            if is_large || level.number == 1 {
                let page_size = 1u64 << level.shift;
                let frame = entry & frame_mask & !(page_size - 1);
                return Ok(Translation {
                    gpa: frame | (gva & (page_size - 1)),
                    page_size,
                    writable: rights.writable,
                    user: rights.user,
                    executable: rights.executable,
                });
            }
            table = entry & frame_mask;
        }
        // `levels` always ends with level 1, which returned above.
        Err(WalkError::NotPresent { level: 1, entry: 0 })
    }

    fn walk_long(
        &self,
        gva: u64,
        levels: &[Level],
        va_bits: u32,
        used: &mut UsedEntries,
    ) -> Result<Translation, WalkError> {
        if !is_canonical(gva, va_bits) {
            return Err(WalkError::NonCanonical { gva });
        }
        let root = self.regs.cr3 & bits(12, self.regs.maxphyaddr());
        let reserved = self.above_maxphyaddr() | self.nx_reserved();
        self.walk_levels(gva, root, levels, reserved, Rights::all(), used)
    }

    fn walk_pae(&self, gva: u64, used: &mut UsedEntries) -> Result<Translation, WalkError> {
        if gva > u64::from(u32::MAX) {
            return Err(WalkError::Beyond32Bits { gva });
        }
        let maxphy = self.regs.maxphyaddr();
        let pdpte_gpa = (self.regs.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8;
        let pdpte = self.read_entry64(3, pdpte_gpa)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level: 3,
                entry: pdpte,
            });
        }
        // PDPTEs carry no permissions: bits 1-2 and 5-8 are reserved, as
        // is everything from MAXPHYADDR up (NX included).
        if pdpte & (bits(maxphy, 64) | 0x1e6) != 0 {
            return Err(WalkError::ReservedBit {
                level: 3,
                entry: pdpte,
            });
        }
        used.push(UsedEntry {
            gpa: pdpte_gpa,
            value: pdpte,
            narrow: false,
            has_accessed_bit: false,
        });
        // Below the PDPTE: bits MAXPHYADDR..62 are reserved, not ignored
        // as in long mode.
        let reserved = bits(maxphy, 63) | self.nx_reserved();
        self.walk_levels(
            gva,
            pdpte & bits(12, maxphy),
            &LONG_LEVELS[3..],
            reserved,
            Rights::all(),
            used,
        )
    }

    fn walk_legacy32(&self, gva: u64, used: &mut UsedEntries) -> Result<Translation, WalkError> {
        if gva > u64::from(u32::MAX) {
            return Err(WalkError::Beyond32Bits { gva });
        }
        let mut rights = Rights::all();
        let pde_gpa = (self.regs.cr3 & 0xffff_f000) + ((gva >> 22) & 0x3ff) * 4;
        let pde = self.read_entry32(2, pde_gpa)?;
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level: 2,
                entry: pde,
            });
        }
        rights.and(pde, false);
        used.push(UsedEntry {
            gpa: pde_gpa,
            value: pde,
            narrow: true,
            has_accessed_bit: true,
        });
        if pde & LARGE_PAGE != 0 && self.regs.cr4 & CR4_PSE != 0 {
            // A 4 MiB page: frame bits 31:22, and with PSE-36 physical
            // bits 39:32 in entry bits 20:13. Bit 21 is reserved, as are
            // the high bits beyond MAXPHYADDR.
            let frame = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
            if pde & (1 << 21) != 0 || frame & bits(self.regs.maxphyaddr(), 64) != 0 {
                return Err(WalkError::ReservedBit {
                    level: 2,
                    entry: pde,
                });
            }
            return Ok(Translation {
                gpa: frame | (gva & 0x3f_ffff),
                page_size: 4 << 20,
                writable: rights.writable,
                user: rights.user,
                executable: true,
            });
        }
        let pte_gpa = (pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4;
        let pte = self.read_entry32(1, pte_gpa)?;
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level: 1,
                entry: pte,
            });
        }
        rights.and(pte, false);
        used.push(UsedEntry {
            gpa: pte_gpa,
            value: pte,
            narrow: true,
            has_accessed_bit: true,
        });
        Ok(Translation {
            gpa: (pte & 0xffff_f000) | (gva & 0xfff),
            page_size: 4096,
            writable: rights.writable,
            user: rights.user,
            executable: true,
        })
    }
}

impl VcpuMmu for PageWalker<'_> {
    /// The page and whether the vCPU, at its CPL, may write it; `None`
    /// where even a read would fault.
    fn translate(&self, gva: u64) -> Option<(u64, bool)> {
        let t = self.probe(gva).ok()?;
        self.check(&t, AccessKind::Read).ok()?;
        Some((t.gpa, self.check(&t, AccessKind::Write).is_ok()))
    }

    fn access(&self, gva: u64, kind: AccessKind) -> Result<u64, Fault> {
        match PageWalker::access(self, gva, kind) {
            Ok(t) => Ok(t.gpa),
            Err(e) => {
                tracing::trace!(gva, ?kind, "guest access refused: {e}");
                Err(Fault)
            }
        }
    }
}

#[cfg(test)]
mod tests;
