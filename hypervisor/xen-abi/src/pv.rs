//! The classic (x86_64) PV boot ABI: the ELF notes a PV kernel carries,
//! `struct start_info`, the flat selectors and the fixed virtual regions a
//! 64-bit PV guest sees.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::version;

// ---- ELF notes (name "Xen") --------------------------------------------------

/// Name of every Xen ELF note, as it appears in the note's name field.
pub const XEN_ELFNOTE_NAME: &[u8] = b"Xen";

/// `NAME=VALUE` string (legacy).
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Virtual address of the kernel's entry point.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the page the builder fills with hypercall stubs.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual address the kernel image is mapped at (paddr 0 ↔ VIRT_BASE).
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Difference between the ELF `p_paddr` fields and the real pseudo-physical
/// addresses (0 when absent).
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Version of Xen the kernel was written for (string, "xen-3.0").
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name (string, "linux").
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest OS version (string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader type (string, "generic").
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE support (string: "yes", "no", "bimodal"); 32-bit guests only.
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// The '|'-separated feature list (string); a leading '!' marks a feature
/// the kernel cannot run without.
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// Whether the kernel wants its symbol table loaded (string).
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest address the hypervisor hole may start at (32-bit guests).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// Mask/value pairs recognising non-present L1 entries that hold MFNs.
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// The kernel supports cooperative suspend cancellation.
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Virtual address at which the kernel wants the initial P2M list mapped,
/// outside the bootstrap mapping (numeric).
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// The kernel accepts `mod_start` as a PFN (with [`SIF_MOD_START_PFN`]).
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// The features the kernel supports, as a 32-bit bitmap of XENFEAT_* bits.
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point for PVH boot (see [`crate::pvh`]).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = crate::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

/// XENFEAT_* bits that the FEATURES note names and that [`crate::version`]
/// does not already define.
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;

/// The feature names a FEATURES note may use (the XENFEAT_* names without
/// their prefix) and their bit numbers.
pub const FEATURE_NAMES: &[(&str, u32)] = &[
    (
        "writable_page_tables",
        version::XENFEAT_WRITABLE_PAGE_TABLES,
    ),
    (
        "writable_descriptor_tables",
        XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
    ),
    (
        "auto_translated_physmap",
        version::XENFEAT_AUTO_TRANSLATED_PHYSMAP,
    ),
    (
        "supervisor_mode_kernel",
        version::XENFEAT_SUPERVISOR_MODE_KERNEL,
    ),
    ("pae_pgdir_above_4gb", XENFEAT_PAE_PGDIR_ABOVE_4GB),
    (
        "mmu_pt_update_preserve_ad",
        XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
    ),
    ("highmem_assist", XENFEAT_HIGHMEM_ASSIST),
    ("gnttab_map_avail_bits", XENFEAT_GNTTAB_MAP_AVAIL_BITS),
    ("hvm_callback_vector", version::XENFEAT_HVM_CALLBACK_VECTOR),
    ("hvm_safe_pvclock", version::XENFEAT_HVM_SAFE_PVCLOCK),
    ("hvm_pirqs", version::XENFEAT_HVM_PIRQS),
    ("dom0", version::XENFEAT_DOM0),
];

/// The XENFEAT_* bit a FEATURES-note name stands for.
pub fn feature_bit(name: &str) -> Option<u32> {
    FEATURE_NAMES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, bit)| bit)
}

// ---- start_info --------------------------------------------------------------

/// `start_info.magic` for a 64-bit PV guest (NUL-padded to 32 bytes); also
/// the capability string `xen_caps` lists for it.
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";
/// Length of `start_info.cmd_line`, terminating NUL included.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `start_info.flags`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `start_info.flags`: the domain is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `start_info.flags`: the module is a multiboot module list.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `start_info.flags`: `mod_start` is a PFN, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `start_info.flags`: the toolstack may read the guest's virtual P2M.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `start_info.flags`: power-management bits (dom0 only).
pub const SIF_PM_MASK: u32 = 0xff << 8;

/// `struct start_info` as a 64-bit PV guest sees it, with the `console`
/// union in its domU form. Explicit padding keeps the layout free of
/// compiler-inserted holes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`], NUL-padded.
    pub magic: [u8; 32],
    /// Pages the domain owns.
    pub nr_pages: u64,
    /// Machine address of the shared_info page.
    pub shared_info: u64,
    /// SIF_* flags.
    pub flags: u32,
    pub pad0: u32,
    /// Machine frame of the xenstore ring.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    pub pad1: u32,
    /// Machine frame of the console ring.
    pub console_mfn: u64,
    /// Event channel of the console ring.
    pub console_evtchn: u32,
    pub pad2: u32,
    /// Virtual address of the bootstrap L4.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the P2M list.
    pub mfn_list: u64,
    /// Virtual address (or PFN, with [`SIF_MOD_START_PFN`]) of the module.
    pub mod_start: u64,
    /// Length of the module in bytes.
    pub mod_len: u64,
    /// NUL-terminated command line.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the frames that back a P2M placed by INIT_P2M.
    pub first_p2m_pfn: u64,
    /// Number of those frames.
    pub nr_p2m_frames: u64,
}

impl Default for StartInfo {
    fn default() -> Self {
        <StartInfo as zerocopy::FromZeros>::new_zeroed()
    }
}

// ---- selectors, virtual regions, page tables -----------------------------------

/// Flat 64-bit kernel (and user) code selector, from Xen's reserved GDT
/// entries.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
/// Flat kernel stack selector.
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// Kernel data selector in 64-bit mode: the null selector.
pub const FLAT_KERNEL_DS64: u16 = 0;
/// Flat 32-bit (compatibility mode) code selector.
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// Flat 32-bit data selector.
pub const FLAT_RING3_DS32: u16 = 0xe02b;

/// Start of the region a 64-bit PV guest may not map: it belongs to the
/// hypervisor (L4 slots 256-271).
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of the hypervisor region.
pub const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
/// Where the read-only M2P table is mapped (`XENMEM_machphys_mapping`).
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of the M2P mapping.
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;
/// First and last L4 slot reserved for the hypervisor.
pub const HYPERVISOR_L4_SLOTS: core::ops::RangeInclusive<usize> = 256..=271;

/// The PAT MSR value the PV ABI fixes.
pub const PV_PAT: u64 = 0x0000_0501_0007_0406;

/// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_USER: u64 = 1 << 2;
pub const PTE_PWT: u64 = 1 << 3;
pub const PTE_PCD: u64 = 1 << 4;
pub const PTE_ACCESSED: u64 = 1 << 5;
pub const PTE_DIRTY: u64 = 1 << 6;
/// Large page in an L2/L3 entry; PAT in an L1 entry.
pub const PTE_PSE: u64 = 1 << 7;
pub const PTE_GLOBAL: u64 = 1 << 8;
pub const PTE_NX: u64 = 1 << 63;
/// The machine frame address bits of an entry.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entries per page-table page.
pub const PT_ENTRIES: usize = 512;

// The M2P lies inside the hypervisor's hole, so a guest can never map over it.
const _: () = assert!(MACH2PHYS_VIRT_START >= HYPERVISOR_VIRT_START);
const _: () = assert!(MACH2PHYS_VIRT_END <= HYPERVISOR_VIRT_END);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn start_info_layout_matches_xen_h() {
        assert_eq!(size_of::<StartInfo>(), 1168);
        assert_eq!(offset_of!(StartInfo, nr_pages), 32);
        assert_eq!(offset_of!(StartInfo, shared_info), 40);
        assert_eq!(offset_of!(StartInfo, flags), 48);
        assert_eq!(offset_of!(StartInfo, store_mfn), 56);
        assert_eq!(offset_of!(StartInfo, store_evtchn), 64);
        assert_eq!(offset_of!(StartInfo, console_mfn), 72);
        assert_eq!(offset_of!(StartInfo, console_evtchn), 80);
        assert_eq!(offset_of!(StartInfo, pt_base), 88);
        assert_eq!(offset_of!(StartInfo, nr_pt_frames), 96);
        assert_eq!(offset_of!(StartInfo, mfn_list), 104);
        assert_eq!(offset_of!(StartInfo, mod_start), 112);
        assert_eq!(offset_of!(StartInfo, mod_len), 120);
        assert_eq!(offset_of!(StartInfo, cmd_line), 128);
        assert_eq!(offset_of!(StartInfo, first_p2m_pfn), 1152);
        assert_eq!(offset_of!(StartInfo, nr_p2m_frames), 1160);
        assert!(size_of::<StartInfo>() <= crate::PAGE_SIZE);
        assert!(START_INFO_MAGIC.len() < 32);
    }

    #[test]
    fn note_numbers_match_elfnote_h() {
        let numbers = [
            XEN_ELFNOTE_INFO,
            XEN_ELFNOTE_ENTRY,
            XEN_ELFNOTE_HYPERCALL_PAGE,
            XEN_ELFNOTE_VIRT_BASE,
            XEN_ELFNOTE_PADDR_OFFSET,
            XEN_ELFNOTE_XEN_VERSION,
            XEN_ELFNOTE_GUEST_OS,
            XEN_ELFNOTE_GUEST_VERSION,
            XEN_ELFNOTE_LOADER,
            XEN_ELFNOTE_PAE_MODE,
            XEN_ELFNOTE_FEATURES,
            XEN_ELFNOTE_BSD_SYMTAB,
            XEN_ELFNOTE_HV_START_LOW,
            XEN_ELFNOTE_L1_MFN_VALID,
            XEN_ELFNOTE_SUSPEND_CANCEL,
            XEN_ELFNOTE_INIT_P2M,
            XEN_ELFNOTE_MOD_START_PFN,
            XEN_ELFNOTE_SUPPORTED_FEATURES,
            XEN_ELFNOTE_PHYS32_ENTRY,
        ];
        // elfnote.h numbers its notes consecutively from 0 to 18.
        for (expected, number) in numbers.into_iter().enumerate() {
            assert_eq!(number as usize, expected);
        }
    }

    #[test]
    fn selectors_and_regions() {
        // Selector = GDT index * 8 + RPL 3. Xen's flat entries sit in the
        // reserved GDT range that starts at entry 14 * 512 = 7168.
        assert_eq!(FLAT_RING3_CS32 >> 3, 7168 + 4);
        assert_eq!(FLAT_RING3_DS32 >> 3, 7168 + 5);
        assert_eq!(FLAT_KERNEL_CS64 & 3, 3);
        assert_eq!(FLAT_KERNEL_SS64 & 3, 3);
        assert_eq!(FLAT_KERNEL_CS64 >> 3, FLAT_RING3_CS32 / 8 + 2);
        // The M2P sits inside the hypervisor hole, which is L4 slots 256..=271.
        let slot = |va: u64| ((va >> 39) & 0x1ff) as usize;
        assert_eq!(slot(HYPERVISOR_VIRT_START), *HYPERVISOR_L4_SLOTS.start());
        assert_eq!(slot(HYPERVISOR_VIRT_END - 1), *HYPERVISOR_L4_SLOTS.end());
        // 256 GiB of M2P: one u64 per machine frame, 2^35 frames.
        assert_eq!((MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) / 8, 1 << 35);
    }

    #[test]
    fn feature_names_resolve() {
        assert_eq!(feature_bit("writable_page_tables"), Some(0));
        assert_eq!(feature_bit("pae_pgdir_above_4gb"), Some(4));
        assert_eq!(feature_bit("dom0"), Some(11));
        assert_eq!(feature_bit("no_such_feature"), None);
        // Every bit is named once.
        for (i, (_, bit)) in FEATURE_NAMES.iter().enumerate() {
            assert!(FEATURE_NAMES[..i].iter().all(|(_, b)| b != bit));
        }
    }
}
