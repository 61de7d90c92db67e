//! Page-table entries as the PV MMU sees them: levels, the bits a 64-bit
//! PV guest may not set, and Xen's adjustment of the entries it accepts.

use std::fmt;

use xen_abi::pv::{
    HYPERVISOR_L4_SLOTS, PTE_ACCESSED, PTE_ADDR_MASK, PTE_GLOBAL, PTE_GNTTAB, PTE_GUEST_KERNEL,
    PTE_PCD, PTE_PRESENT, PTE_PSE, PTE_PWT, PTE_USER,
};

/// A machine frame number. With kxen's identity P2M it is also the
/// guest-physical frame number.
pub type Mfn = u64;

/// Entries per page-table page, as a count of entry indices.
pub const ENTRIES: usize = xen_abi::pv::PT_ENTRIES;

/// A page-table level of 4-level paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PtLevel {
    L1,
    L2,
    L3,
    L4,
}

impl PtLevel {
    /// The level the entries of a table of this level point at; `None`
    /// for L1, whose entries map data frames.
    pub fn child(self) -> Option<PtLevel> {
        match self {
            PtLevel::L1 => None,
            PtLevel::L2 => Some(PtLevel::L1),
            PtLevel::L3 => Some(PtLevel::L2),
            PtLevel::L4 => Some(PtLevel::L3),
        }
    }

    /// The index of `va`'s entry in a table of this level.
    pub fn index_of(self, va: u64) -> usize {
        let shift = match self {
            PtLevel::L1 => 12,
            PtLevel::L2 => 21,
            PtLevel::L3 => 30,
            PtLevel::L4 => 39,
        };
        ((va >> shift) & 0x1ff) as usize
    }
}

impl fmt::Display for PtLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = match self {
            PtLevel::L1 => 1,
            PtLevel::L2 => 2,
            PtLevel::L3 => 3,
            PtLevel::L4 => 4,
        };
        write!(f, "L{n}")
    }
}

pub fn is_present(entry: u64) -> bool {
    entry & PTE_PRESENT != 0
}

/// The machine frame an entry points at.
pub fn entry_mfn(entry: u64) -> Mfn {
    (entry & PTE_ADDR_MASK) >> 12
}

/// Whether `slot` of an L4 belongs to the hypervisor (256-271): a guest
/// never validates, writes or maps through those.
pub fn is_hypervisor_l4_slot(slot: usize) -> bool {
    HYPERVISOR_L4_SLOTS.contains(&slot)
}

/// The bits a present entry of `level` may not have. Xen lets a PV guest
/// set only Present, RW, User, Accessed, Dirty, NX and the software bits;
/// so in L2-L4 entries it refuses PWT, PCD, PSE (no superpages for PV) and
/// Global. L1 entries may be Global (user mappings use it) but not carry
/// the grant-mapping bit, nor the cache attributes PWT/PCD/PAT unless the
/// domain may flush caches (it has I/O resources).
pub fn disallowed_bits(level: PtLevel, cache_flush_permitted: bool) -> u64 {
    let cache_attrs = PTE_PWT | PTE_PCD | PTE_PSE;
    match level {
        PtLevel::L1 if cache_flush_permitted => PTE_GNTTAB,
        PtLevel::L1 => PTE_GNTTAB | cache_attrs,
        _ => cache_attrs | PTE_GLOBAL,
    }
}

/// Xen's adjustment of a present entry it accepts from a 64-bit PV guest.
/// The guest kernel runs in ring 3, so every level must be User for the
/// hardware; in L1 an entry the guest made kernel-only is marked with the
/// software guest-kernel bit (so the guest can still tell), and a user
/// entry becomes Global (user mappings are the same in both L4s). Xen also
/// sets Accessed in L4 entries, as it cannot sync hardware-set A bits back.
pub fn adjust_entry(level: PtLevel, entry: u64) -> u64 {
    if !is_present(entry) {
        return entry;
    }
    match level {
        PtLevel::L1 => {
            let mut adjusted = entry;
            if adjusted & PTE_USER == 0 {
                adjusted |= PTE_GUEST_KERNEL | PTE_USER;
            }
            if adjusted & PTE_GUEST_KERNEL == 0 {
                adjusted |= PTE_GLOBAL | PTE_USER;
            }
            adjusted
        }
        PtLevel::L2 | PtLevel::L3 => entry | PTE_USER,
        PtLevel::L4 => entry | PTE_USER | PTE_ACCESSED,
    }
}

/// Whether `va` is an address a 64-bit PV guest may name: the lower half,
/// or the upper half above the hypervisor's region (so also no
/// non-canonical address).
pub fn is_guest_address(va: u64) -> bool {
    !((1 << 47)..xen_abi::pv::HYPERVISOR_VIRT_END).contains(&va)
}

/// Whether `va` is canonical for 48-bit virtual addresses.
pub fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == (1 << 17) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::pv::{PTE_DIRTY, PTE_NX, PTE_RW};

    #[test]
    fn l1_adjustment_marks_kernel_and_user_entries() {
        let frame = 0x1234 << 12;
        // A kernel-only mapping becomes User for the ring-3 kernel, tagged
        // with the guest-kernel bit, and is not Global.
        let kernel = adjust_entry(PtLevel::L1, frame | PTE_PRESENT | PTE_RW);
        assert_eq!(
            kernel,
            frame | PTE_PRESENT | PTE_RW | PTE_USER | PTE_GUEST_KERNEL
        );
        // A user mapping becomes Global.
        let user = adjust_entry(PtLevel::L1, frame | PTE_PRESENT | PTE_USER);
        assert_eq!(user, frame | PTE_PRESENT | PTE_USER | PTE_GLOBAL);
        // A guest that sets the guest-kernel bit itself keeps it as is.
        let tagged = frame | PTE_PRESENT | PTE_USER | PTE_GUEST_KERNEL;
        assert_eq!(adjust_entry(PtLevel::L1, tagged), tagged);
        // Non-present entries are left alone at every level.
        for level in [PtLevel::L1, PtLevel::L2, PtLevel::L3, PtLevel::L4] {
            assert_eq!(adjust_entry(level, frame | PTE_RW), frame | PTE_RW);
        }
    }

    #[test]
    fn upper_levels_gain_user_and_l4_accessed() {
        let e = (7 << 12) | PTE_PRESENT | PTE_RW;
        assert_eq!(adjust_entry(PtLevel::L2, e), e | PTE_USER);
        assert_eq!(adjust_entry(PtLevel::L3, e), e | PTE_USER);
        assert_eq!(adjust_entry(PtLevel::L4, e), e | PTE_USER | PTE_ACCESSED);
    }

    #[test]
    fn disallowed_bits_per_level() {
        // Superpages are refused above L1.
        for level in [PtLevel::L2, PtLevel::L3, PtLevel::L4] {
            assert_ne!(disallowed_bits(level, false) & PTE_PSE, 0);
            assert_ne!(disallowed_bits(level, true) & PTE_GLOBAL, 0);
        }
        // L1 may be Global; cache attributes only with cache-flush rights.
        assert_eq!(disallowed_bits(PtLevel::L1, false) & PTE_GLOBAL, 0);
        assert_ne!(disallowed_bits(PtLevel::L1, false) & PTE_PCD, 0);
        assert_eq!(disallowed_bits(PtLevel::L1, true), PTE_GNTTAB);
        // Never the guest-usable bits.
        for level in [PtLevel::L1, PtLevel::L2, PtLevel::L3, PtLevel::L4] {
            let usable = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY | PTE_NX;
            assert_eq!(disallowed_bits(level, false) & usable, 0);
        }
    }

    #[test]
    fn addresses_and_indices() {
        assert!(is_guest_address(0x7fff_ffff_ffff));
        assert!(!is_guest_address(0x8000_0000_0000));
        assert!(!is_guest_address(0xffff_8000_0000_0000));
        assert!(!is_guest_address(0xffff_87ff_ffff_ffff));
        assert!(is_guest_address(0xffff_8800_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        let va = 0xffff_ffff_8020_3000u64;
        assert_eq!(PtLevel::L4.index_of(va), 511);
        assert_eq!(PtLevel::L3.index_of(va), 510);
        assert_eq!(PtLevel::L2.index_of(va), 1);
        assert_eq!(PtLevel::L1.index_of(va), 3);
        assert!(is_hypervisor_l4_slot(256) && is_hypervisor_l4_slot(271));
        assert!(!is_hypervisor_l4_slot(255) && !is_hypervisor_l4_slot(272));
        assert_eq!(entry_mfn(PTE_NX | (0xabcde << 12) | PTE_PRESENT), 0xabcde);
    }
}
