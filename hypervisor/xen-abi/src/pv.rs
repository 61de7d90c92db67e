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
/// Entries the M2P area has room for (`MACH2PHYS_NR_ENTRIES`): one per
/// machine frame of a 2^47-byte machine.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) / 8;
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

// ---- the PV MMU hypercalls ----------------------------------------------------

/// Hypercall numbers of the PV MMU (RAX), beside the common ones in
/// [`crate::hypercall`].
pub mod hypercall {
    /// `mmu_update(reqs, count, done_out, foreigndom)`.
    pub const MMU_UPDATE: u64 = 1;
    /// `update_va_mapping(va, val, flags)`.
    pub const UPDATE_VA_MAPPING: u64 = 14;
    /// `update_va_mapping_otherdomain(va, val, flags, domid)`.
    pub const UPDATE_VA_MAPPING_OTHERDOMAIN: u64 = 22;
    /// `mmuext_op(ops, count, done_out, foreigndom)`.
    pub const MMUEXT_OP: u64 = 26;
    /// `set_trap_table(traps)`.
    pub const SET_TRAP_TABLE: u64 = 0;
    /// `set_gdt(frame_list, entries)`.
    pub const SET_GDT: u64 = 2;
    /// `update_descriptor(maddr, desc)`.
    pub const UPDATE_DESCRIPTOR: u64 = 10;
    /// `fpu_taskswitch(set)`: set or clear the virtual CR0.TS.
    pub const FPU_TASKSWITCH: u64 = 5;
    /// `stack_switch(ss, sp)`: the kernel stack for bounces from user mode.
    pub const STACK_SWITCH: u64 = 3;
    /// `set_callbacks(event, failsafe, syscall)` (the 64-bit form).
    pub const SET_CALLBACKS: u64 = 4;
    /// `multicall(calls, count)`.
    pub const MULTICALL: u64 = 13;
    /// `iret()`: the frame is on the guest's stack.
    pub const IRET: u64 = 23;
    /// `set_segment_base(which, base)`.
    pub const SET_SEGMENT_BASE: u64 = 25;
    /// `callback_op(cmd, arg)`.
    pub const CALLBACK_OP: u64 = 30;
}

/// `callback_op` commands (public/callback.h).
pub const CALLBACKOP_REGISTER: u64 = 0;
pub const CALLBACKOP_UNREGISTER: u64 = 1;
/// Callback types.
pub const CALLBACKTYPE_EVENT: u16 = 0;
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
pub const CALLBACKTYPE_SYSENTER_DEPRECATED: u16 = 3;
pub const CALLBACKTYPE_NMI: u16 = 4;
pub const CALLBACKTYPE_SYSENTER: u16 = 5;
pub const CALLBACKTYPE_SYSCALL32: u16 = 7;
/// Deliver the callback with event upcalls masked.
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;
/// Bytes of `struct callback_register` in the 64-bit ABI: `u16 type`,
/// `u16 flags`, 4 bytes of padding, `u64 address`.
pub const CALLBACK_REGISTER_SIZE: usize = 16;

/// `set_segment_base` selectors.
pub const SEGBASE_FS: u64 = 0;
pub const SEGBASE_GS_USER: u64 = 1;
pub const SEGBASE_GS_KERNEL: u64 = 2;
pub const SEGBASE_GS_USER_SEL: u64 = 3;

/// `vcpu_guest_context.flags` bits (public/arch-x86/xen.h).
pub const VGCF_I387_VALID: u64 = 1 << 0;
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
pub const VGCF_ONLINE: u64 = 1 << 5;

/// Xen's flat 64-bit ring-3 selectors beside the 32-bit ones above. The
/// kernel and user 64-bit selectors are the same: a 64-bit PV vCPU's
/// mode is the hypervisor's flag, not its CS.
pub const FLAT_RING3_CS64: u16 = 0xe033;
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// `mmu_update` command, in bits 2:0 of `ptr` (entries are 8 bytes, so
/// the entry address itself never uses them): checked write of one
/// page-table entry at machine address `ptr`.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// Set the M2P entry of the machine frame `ptr` addresses to `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// As [`MMU_NORMAL_PT_UPDATE`], keeping the entry's current Accessed and
/// Dirty bits.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// As [`MMU_NORMAL_PT_UPDATE`] without translating `val` through the
/// foreign domain's P2M (the same thing for a PV domain).
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;
/// The bits of `mmu_update.ptr` that hold the command.
pub const MMU_UPDATE_CMD_MASK: u64 = 7;
/// Set in `count` by a preempted batch's continuation.
pub const MMU_UPDATE_PREEMPTED: u32 = 1 << 31;

/// One `mmu_update` request.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MmuUpdate {
    /// Machine address of the entry (or frame), with the command in bits 2:0.
    pub ptr: u64,
    /// The new entry (or, for MACHPHYS_UPDATE, the pseudo-physical frame).
    pub val: u64,
}

/// `mmuext_op` commands.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
pub const MMUEXT_INVLPG_ALL: u32 = 11;
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
pub const MMUEXT_SET_LDT: u32 = 13;
// 14 is unused.
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
pub const MMUEXT_COPY_PAGE: u32 = 17;
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
pub const MMUEXT_MARK_SUPER: u32 = 19;
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// One `mmuext_op`, as a 64-bit guest lays it out: `cmd`, then two 8-byte
/// unions. `arg1` is a machine frame (pin, unpin, base pointers, clear and
/// copy destination) or a linear address (INVLPG, SET_LDT); `arg2` is the
/// LDT entry count (SET_LDT, low 32 bits), a vCPU bitmap pointer (the
/// *_MULTI commands) or the copy source frame (COPY_PAGE).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MmuextOp {
    pub cmd: u32,
    pub pad: u32,
    pub arg1: u64,
    pub arg2: u64,
}

/// Most LDT entries `MMUEXT_SET_LDT` accepts (a 64 KiB LDT).
pub const MAX_LDT_ENTRIES: u32 = 8192;

/// `update_va_mapping` flags, bits 1:0: which flush follows the update.
pub const UVMF_NONE: u64 = 0;
pub const UVMF_TLB_FLUSH: u64 = 1;
pub const UVMF_INVLPG: u64 = 2;
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// The rest of the flags word: 0 for the calling vCPU only
/// (`UVMF_LOCAL`), [`UVMF_ALL`] for every vCPU, anything else is the
/// address of a vCPU bitmap (`UVMF_MULTI`).
pub const UVMF_LOCAL: u64 = 0;
pub const UVMF_ALL: u64 = 1 << 2;

/// Software bit 52 (the lowest of the high available bits) that Xen sets
/// in the L1 entries of a 64-bit PV guest that the guest made kernel-only.
pub const PTE_GUEST_KERNEL: u64 = 1 << 52;
/// Bit 62, reserved in guest L1 entries for grant mappings.
pub const PTE_GNTTAB: u64 = 1 << 62;
/// The software-available bits 11:9.
pub const PTE_AVAIL: u64 = 0xe00;
/// The software-available bits 62:52.
pub const PTE_AVAIL_HIGH: u64 = 0x7ff << 52;

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
    fn mmu_structs_match_xen_h() {
        assert_eq!(size_of::<MmuUpdate>(), 16);
        assert_eq!(offset_of!(MmuUpdate, ptr), 0);
        assert_eq!(offset_of!(MmuUpdate, val), 8);
        assert_eq!(size_of::<MmuextOp>(), 24);
        assert_eq!(offset_of!(MmuextOp, cmd), 0);
        assert_eq!(offset_of!(MmuextOp, arg1), 8);
        assert_eq!(offset_of!(MmuextOp, arg2), 16);
        // A request as a guest writes it: ptr then val, little-endian.
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&0x1234_5002u64.to_le_bytes());
        raw[8..].copy_from_slice(&7u64.to_le_bytes());
        let req = MmuUpdate::read_from_bytes(&raw).unwrap();
        assert_eq!(req.ptr & MMU_UPDATE_CMD_MASK, MMU_PT_UPDATE_PRESERVE_AD);
        assert_eq!(req.val, 7);
    }

    #[test]
    fn mmu_numbers_match_xen_h() {
        assert_eq!(hypercall::MMU_UPDATE, 1);
        assert_eq!(hypercall::UPDATE_VA_MAPPING, 14);
        assert_eq!(hypercall::UPDATE_VA_MAPPING_OTHERDOMAIN, 22);
        assert_eq!(hypercall::MMUEXT_OP, 26);
        assert_eq!(
            [
                MMU_NORMAL_PT_UPDATE,
                MMU_MACHPHYS_UPDATE,
                MMU_PT_UPDATE_PRESERVE_AD,
                MMU_PT_UPDATE_NO_TRANSLATE
            ],
            [0, 1, 2, 3]
        );
        // PIN_L1..TLB_FLUSH_ALL..SET_LDT run 0..=13 without a gap.
        let consecutive = [
            MMUEXT_PIN_L1_TABLE,
            MMUEXT_PIN_L2_TABLE,
            MMUEXT_PIN_L3_TABLE,
            MMUEXT_PIN_L4_TABLE,
            MMUEXT_UNPIN_TABLE,
            MMUEXT_NEW_BASEPTR,
            MMUEXT_TLB_FLUSH_LOCAL,
            MMUEXT_INVLPG_LOCAL,
            MMUEXT_TLB_FLUSH_MULTI,
            MMUEXT_INVLPG_MULTI,
            MMUEXT_TLB_FLUSH_ALL,
            MMUEXT_INVLPG_ALL,
            MMUEXT_FLUSH_CACHE,
            MMUEXT_SET_LDT,
        ];
        for (expected, cmd) in consecutive.into_iter().enumerate() {
            assert_eq!(cmd as usize, expected);
        }
        assert_eq!(
            [
                MMUEXT_NEW_USER_BASEPTR,
                MMUEXT_CLEAR_PAGE,
                MMUEXT_COPY_PAGE,
                MMUEXT_FLUSH_CACHE_GLOBAL,
                MMUEXT_MARK_SUPER,
                MMUEXT_UNMARK_SUPER
            ],
            [15, 16, 17, 18, 19, 20]
        );
        assert_eq!((UVMF_TLB_FLUSH, UVMF_INVLPG, UVMF_ALL), (1, 2, 4));
        // The guest-kernel and grant bits sit inside the high available bits.
        assert_eq!(PTE_GUEST_KERNEL & PTE_AVAIL_HIGH, PTE_GUEST_KERNEL);
        assert_eq!(PTE_GNTTAB & PTE_AVAIL_HIGH, PTE_GNTTAB);
        assert_eq!(PTE_AVAIL_HIGH & (PTE_ADDR_MASK | PTE_NX), 0);
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
