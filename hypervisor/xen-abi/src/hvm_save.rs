//! HVM save records (`public/hvm/save.h` and `public/arch-x86/hvm/save.h`):
//! the typed entries of the blob that `XEN_DOMCTL_{get,set}hvmcontext`
//! moves and that a migration stream's HVM_CONTEXT record carries.
//!
//! The blob is a sequence of entries, each a [`SaveDescriptor`] followed by
//! `length` bytes of one of the layouts below, ended by a descriptor with
//! typecode [`HVM_SAVE_CODE_END`] and length 0. The first entry is the
//! [`SaveHeader`]. Per-vCPU entries carry the vCPU id in `instance`.
//!
//! Bitfields in Xen's structs are kept here as the bytes that hold them,
//! with masks for their parts, so the layouts stay plain data.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct hvm_save_descriptor`: precedes every entry in the blob.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SaveDescriptor {
    /// One of the `HVM_SAVE_CODE_*` constants.
    pub typecode: u16,
    /// The vCPU id for per-vCPU entries, the PIC's index (0 master,
    /// 1 slave), otherwise 0.
    pub instance: u16,
    /// Bytes of entry data after this descriptor.
    pub length: u32,
}

// HVM_SAVE_CODE(x) for every entry type Xen defines on x86.
pub const HVM_SAVE_CODE_END: u16 = 0;
pub const HVM_SAVE_CODE_HEADER: u16 = 1;
pub const HVM_SAVE_CODE_CPU: u16 = 2;
pub const HVM_SAVE_CODE_PIC: u16 = 3;
pub const HVM_SAVE_CODE_IOAPIC: u16 = 4;
pub const HVM_SAVE_CODE_LAPIC: u16 = 5;
pub const HVM_SAVE_CODE_LAPIC_REGS: u16 = 6;
pub const HVM_SAVE_CODE_PCI_IRQ: u16 = 7;
pub const HVM_SAVE_CODE_ISA_IRQ: u16 = 8;
pub const HVM_SAVE_CODE_PCI_LINK: u16 = 9;
pub const HVM_SAVE_CODE_PIT: u16 = 10;
pub const HVM_SAVE_CODE_RTC: u16 = 11;
pub const HVM_SAVE_CODE_HPET: u16 = 12;
pub const HVM_SAVE_CODE_PMTIMER: u16 = 13;
pub const HVM_SAVE_CODE_MTRR: u16 = 14;
pub const HVM_SAVE_CODE_VIRIDIAN_DOMAIN: u16 = 15;
/// `CPU_XSAVE_CODE`: variable length (see [`HwCpuXsave`]).
pub const HVM_SAVE_CODE_CPU_XSAVE: u16 = 16;
pub const HVM_SAVE_CODE_VIRIDIAN_VCPU: u16 = 17;
pub const HVM_SAVE_CODE_VMCE_VCPU: u16 = 18;
pub const HVM_SAVE_CODE_TSC_ADJUST: u16 = 19;
/// `CPU_MSR_CODE`: variable length (see [`HvmMsrHeader`]).
pub const HVM_SAVE_CODE_CPU_MSR: u16 = 20;
/// `HVM_SAVE_CODE_MAX`: the highest typecode Xen knows.
pub const HVM_SAVE_CODE_MAX: u16 = 20;

/// `HVM_FILE_MAGIC`, in [`SaveHeader::magic`].
pub const HVM_FILE_MAGIC: u32 = 0x5438_1286;
/// `HVM_FILE_VERSION`, in [`SaveHeader::version`].
pub const HVM_FILE_VERSION: u32 = 1;

/// `struct hvm_save_header` (HEADER, code 1): the first entry of the blob.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SaveHeader {
    /// [`HVM_FILE_MAGIC`].
    pub magic: u32,
    /// [`HVM_FILE_VERSION`].
    pub version: u32,
    /// Version of the hypervisor that saved the blob (informational).
    pub changeset: u64,
    /// CPUID leaf 1 EAX of the saving host.
    pub cpuid: u32,
    /// The guest's TSC frequency in kHz.
    pub gtsc_khz: u32,
}

/// `XEN_X86_FPU_INITIALISED` in [`HwCpu::flags`]: `fpu_regs` holds real state.
pub const XEN_X86_FPU_INITIALISED: u32 = 1;

// Parts of HwCpu::pending_event (a bitfield union in Xen's header).
pub const PENDING_EVENT_VECTOR_MASK: u32 = 0xff;
pub const PENDING_EVENT_TYPE_SHIFT: u32 = 8;
pub const PENDING_EVENT_TYPE_MASK: u32 = 0x7 << PENDING_EVENT_TYPE_SHIFT;
pub const PENDING_EVENT_ERROR_VALID: u32 = 1 << 11;
pub const PENDING_EVENT_VALID: u32 = 1 << 31;

/// `struct hvm_hw_cpu` (CPU, code 2, one per vCPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HwCpu {
    /// The FXSAVE image.
    pub fpu_regs: [u8; 512],
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
    pub cs_sel: u32,
    pub ds_sel: u32,
    pub es_sel: u32,
    pub fs_sel: u32,
    pub gs_sel: u32,
    pub ss_sel: u32,
    pub tr_sel: u32,
    pub ldtr_sel: u32,
    pub cs_limit: u32,
    pub ds_limit: u32,
    pub es_limit: u32,
    pub fs_limit: u32,
    pub gs_limit: u32,
    pub ss_limit: u32,
    pub tr_limit: u32,
    pub ldtr_limit: u32,
    pub idtr_limit: u32,
    pub gdtr_limit: u32,
    pub cs_base: u64,
    pub ds_base: u64,
    pub es_base: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ss_base: u64,
    pub tr_base: u64,
    pub ldtr_base: u64,
    pub idtr_base: u64,
    pub gdtr_base: u64,
    /// Segment attributes in VMX's packed 12-bit "arbytes" form.
    pub cs_arbytes: u32,
    pub ds_arbytes: u32,
    pub es_arbytes: u32,
    pub fs_arbytes: u32,
    pub gs_arbytes: u32,
    pub ss_arbytes: u32,
    pub tr_arbytes: u32,
    pub ldtr_arbytes: u32,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// MSR_SHADOW_GS_BASE (KERNEL_GS_BASE).
    pub shadow_gs: u64,
    /// Obsolete; written as 0 and ignored.
    pub msr_flags: u64,
    pub msr_lstar: u64,
    pub msr_star: u64,
    pub msr_cstar: u64,
    pub msr_syscall_mask: u64,
    pub msr_efer: u64,
    pub msr_tsc_aux: u64,
    /// What RDTSC would return in the guest.
    pub tsc: u64,
    /// The event being injected, if any (`PENDING_EVENT_*`).
    pub pending_event: u32,
    /// Error code of the pending event.
    pub error_code: u32,
    /// `XEN_X86_FPU_INITIALISED`.
    pub flags: u32,
    pub pad0: u32,
}

/// Length of `struct hvm_hw_cpu_compat`, the older CPU entry without
/// `msr_tsc_aux`, `flags` and `pad0`, which Xen still accepts on restore.
pub const HW_CPU_COMPAT_LEN: usize = 1016;

// Parts of HwVpic::init_and_priority and HwVpic::mode_bits.
pub const VPIC_INIT_STATE_MASK: u8 = 0x0f;
pub const VPIC_PRIORITY_ADD_SHIFT: u8 = 4;
pub const VPIC_READSEL_ISR: u8 = 1 << 0;
pub const VPIC_POLL: u8 = 1 << 1;
pub const VPIC_AUTO_EOI: u8 = 1 << 2;
pub const VPIC_ROTATE_ON_AUTO_EOI: u8 = 1 << 3;
pub const VPIC_SPECIAL_FULLY_NESTED_MODE: u8 = 1 << 4;
pub const VPIC_SPECIAL_MASK_MODE: u8 = 1 << 5;
pub const VPIC_IS_MASTER: u8 = 1 << 6;

/// `struct hvm_hw_vpic` (PIC, code 3, instance 0 master, 1 slave).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwVpic {
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub irq_base: u8,
    /// `init_state:4` (low nibble) and `priority_add:4` (high nibble).
    pub init_and_priority: u8,
    /// The one-bit fields, `VPIC_READSEL_ISR` .. `VPIC_IS_MASTER`.
    pub mode_bits: u8,
    pub elcr: u8,
    pub int_output: u8,
}

/// `VIOAPIC_NUM_PINS`: 16 ISA IRQs and 32 PCI ones.
pub const VIOAPIC_NUM_PINS: usize = 48;

/// `struct hvm_hw_vioapic` (IOAPIC, code 4). Each redirection entry is the
/// architectural 64-bit RTE (`union vioapic_redir_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HwVioapic {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub redirtbl: [u64; VIOAPIC_NUM_PINS],
}

/// `struct hvm_hw_lapic` (LAPIC, code 5, one per vCPU).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwLapic {
    pub apic_base_msr: u64,
    /// `VLAPIC_*_DISABLED` bits.
    pub disabled: u32,
    pub timer_divisor: u32,
    /// IA32_TSC_DEADLINE.
    pub tdt_msr: u64,
    pub pending_esr: u32,
    /// The tail padding C gives the struct (its alignment is 8).
    pub _pad: u32,
}

/// `struct hvm_hw_lapic_regs` (LAPIC_REGS, code 6, one per vCPU): the
/// APIC register page's first 1 KiB, as the xAPIC MMIO layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HwLapicRegs {
    pub data: [u8; 1024],
}

/// `struct hvm_hw_pci_irqs` (PCI_IRQ, code 7): 128 INTx wires as a bitmap.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwPciIrqs {
    pub wires: [u64; 2],
}

/// `struct hvm_hw_isa_irqs` (ISA_IRQ, code 8): 16 ISA IRQ wires as a bitmap.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwIsaIrqs {
    pub wires: u64,
}

/// `struct hvm_hw_pci_link` (PCI_LINK, code 9).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwPciLink {
    pub route: [u8; 4],
    pub pad0: [u8; 4],
}

/// `struct hvm_hw_pit_channel`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwPitChannel {
    /// Reload value; 65536 is possible, hence 32 bits.
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
}

/// `struct hvm_hw_pit` (PIT, code 10).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwPit {
    pub channels: [HwPitChannel; 3],
    pub speaker_data_on: u32,
    pub pad0: u32,
}

/// `RTC_CMOS_SIZE`: the clock's registers, 0x0..0xd.
pub const RTC_CMOS_SIZE: usize = 14;

/// `struct hvm_hw_rtc` (RTC, code 11).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwRtc {
    pub cmos_data: [u8; RTC_CMOS_SIZE],
    pub cmos_index: u8,
    pub pad0: u8,
    /// Seconds between the guest's clock and the host's.
    pub rtc_offset: i64,
}

/// `HPET_TIMER_NUM`.
pub const HPET_TIMER_NUM: usize = 3;

/// One comparator of [`HwHpet`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwHpetTimer {
    pub config: u64,
    pub cmp: u64,
    pub fsb: u64,
    pub res4: u64,
}

/// `struct hvm_hw_hpet` (HPET, code 12): the 1 KiB register block and the
/// comparators' last written periods.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HwHpet {
    pub capability: u64,
    pub res0: u64,
    pub config: u64,
    pub res1: u64,
    pub isr: u64,
    pub res2: [u64; 25],
    pub mc64: u64,
    pub res3: u64,
    pub timers: [HwHpetTimer; HPET_TIMER_NUM],
    pub res5: [u64; 4 * (24 - HPET_TIMER_NUM)],
    pub period: [u64; HPET_TIMER_NUM],
}

/// `struct hvm_hw_pmtimer` (PMTIMER, code 13): the ACPI PM timer.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwPmtimer {
    /// PM_TMR_BLK.TMR_VAL, the 24/32-bit free-running count.
    pub tmr_val: u32,
    pub pm1a_sts: u16,
    pub pm1a_en: u16,
}

/// `MTRR_VCNT`: variable-range MTRR pairs.
pub const MTRR_VCNT: usize = 8;
/// `NUM_FIXED_MSR`: fixed-range MTRR MSRs.
pub const NUM_FIXED_MSR: usize = 11;

/// `struct hvm_hw_mtrr` (MTRR, code 14, one per vCPU).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwMtrr {
    pub msr_pat_cr: u64,
    /// PHYSBASE/PHYSMASK pairs, base first.
    pub msr_mtrr_var: [u64; MTRR_VCNT * 2],
    pub msr_mtrr_fixed: [u64; NUM_FIXED_MSR],
    pub msr_mtrr_cap: u64,
    pub msr_mtrr_def_type: u64,
}

/// `struct hvm_hw_cpu_xsave` (CPU_XSAVE, code 16, one per vCPU): the fixed
/// part. The entry's descriptor length covers this plus the XSAVE area's
/// extended components, which follow it in the blob.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HwCpuXsave {
    /// Ignored on restore.
    pub xfeature_mask: u64,
    pub xcr0: u64,
    /// Every XCR0 bit the guest has ever set.
    pub xcr0_accum: u64,
    /// The legacy FXSAVE region of the XSAVE area.
    pub fpu_sse: [u8; 512],
    pub xstate_bv: u64,
    pub xcomp_bv: u64,
    pub xsave_hdr_reserved: [u64; 6],
}

/// `struct hvm_vmce_vcpu` (VMCE_VCPU, code 18, one per vCPU).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwVmceVcpu {
    pub caps: u64,
    pub mci_ctl2_bank0: u64,
    pub mci_ctl2_bank1: u64,
    pub mcg_ext_ctl: u64,
}

/// `struct hvm_tsc_adjust` (TSC_ADJUST, code 19, one per vCPU).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HwTscAdjust {
    pub tsc_adjust: u64,
}

/// The fixed head of `struct hvm_msr` (CPU_MSR, code 20, one per vCPU):
/// `count` [`HvmOneMsr`] entries follow. C aligns the array to 8, hence
/// the padding.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmMsrHeader {
    pub count: u32,
    pub _pad: u32,
}

/// `struct hvm_one_msr`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmOneMsr {
    pub index: u32,
    pub _rsvd: u32,
    pub val: u64,
}

/// `HVM_SAVE_LENGTH(x)` for the fixed-size entry types, `None` for END's
/// zero and for the variable-size ones (CPU_XSAVE, CPU_MSR) and the ones
/// kxen has no layout for (the Viridian entries).
pub const fn fixed_entry_length(typecode: u16) -> Option<usize> {
    use core::mem::size_of;
    Some(match typecode {
        HVM_SAVE_CODE_END => 0,
        HVM_SAVE_CODE_HEADER => size_of::<SaveHeader>(),
        HVM_SAVE_CODE_CPU => size_of::<HwCpu>(),
        HVM_SAVE_CODE_PIC => size_of::<HwVpic>(),
        HVM_SAVE_CODE_IOAPIC => size_of::<HwVioapic>(),
        HVM_SAVE_CODE_LAPIC => size_of::<HwLapic>(),
        HVM_SAVE_CODE_LAPIC_REGS => size_of::<HwLapicRegs>(),
        HVM_SAVE_CODE_PCI_IRQ => size_of::<HwPciIrqs>(),
        HVM_SAVE_CODE_ISA_IRQ => size_of::<HwIsaIrqs>(),
        HVM_SAVE_CODE_PCI_LINK => size_of::<HwPciLink>(),
        HVM_SAVE_CODE_PIT => size_of::<HwPit>(),
        HVM_SAVE_CODE_RTC => size_of::<HwRtc>(),
        HVM_SAVE_CODE_HPET => size_of::<HwHpet>(),
        HVM_SAVE_CODE_PMTIMER => size_of::<HwPmtimer>(),
        HVM_SAVE_CODE_MTRR => size_of::<HwMtrr>(),
        HVM_SAVE_CODE_VMCE_VCPU => size_of::<HwVmceVcpu>(),
        HVM_SAVE_CODE_TSC_ADJUST => size_of::<HwTscAdjust>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// The sizes are HVM_SAVE_LENGTH(x) as a C compiler lays out Xen's
    /// structs on x86-64; the restore side compares them with each
    /// descriptor's length, so one byte off refuses every image.
    #[test]
    fn entry_sizes_match_xen() {
        assert_eq!(size_of::<SaveDescriptor>(), 8);
        assert_eq!(size_of::<SaveHeader>(), 24);
        assert_eq!(size_of::<HwCpu>(), 1032);
        assert_eq!(size_of::<HwVpic>(), 8);
        assert_eq!(size_of::<HwVioapic>(), 400);
        assert_eq!(size_of::<HwLapic>(), 32);
        assert_eq!(size_of::<HwLapicRegs>(), 1024);
        assert_eq!(size_of::<HwPciIrqs>(), 16);
        assert_eq!(size_of::<HwIsaIrqs>(), 8);
        assert_eq!(size_of::<HwPciLink>(), 8);
        assert_eq!(size_of::<HwPitChannel>(), 16);
        assert_eq!(size_of::<HwPit>(), 56);
        assert_eq!(size_of::<HwRtc>(), 24);
        assert_eq!(size_of::<HwHpet>(), 1048);
        assert_eq!(size_of::<HwPmtimer>(), 8);
        assert_eq!(size_of::<HwMtrr>(), 240);
        assert_eq!(size_of::<HwCpuXsave>(), 600);
        assert_eq!(size_of::<HwVmceVcpu>(), 32);
        assert_eq!(size_of::<HwTscAdjust>(), 8);
        assert_eq!(size_of::<HvmMsrHeader>(), 8);
        assert_eq!(size_of::<HvmOneMsr>(), 16);
    }

    /// Offsets a hand count of Xen's fields gives, at the points where a
    /// missed or extra field would shift everything after it.
    #[test]
    fn cpu_field_offsets_match_xen() {
        assert_eq!(offset_of!(HwCpu, rax), 512);
        assert_eq!(offset_of!(HwCpu, cr0), 656);
        assert_eq!(offset_of!(HwCpu, cs_sel), 736);
        assert_eq!(offset_of!(HwCpu, cs_limit), 768);
        assert_eq!(offset_of!(HwCpu, cs_base), 808);
        assert_eq!(offset_of!(HwCpu, cs_arbytes), 888);
        assert_eq!(offset_of!(HwCpu, sysenter_cs), 920);
        assert_eq!(offset_of!(HwCpu, msr_tsc_aux), 1000);
        assert_eq!(offset_of!(HwCpu, tsc), 1008);
        assert_eq!(offset_of!(HwCpu, pending_event), 1016);
        assert_eq!(offset_of!(HwCpuXsave, xstate_bv), 536);
        assert_eq!(offset_of!(HwHpet, timers), 256);
        assert_eq!(offset_of!(HwHpet, period), 1024);
        assert_eq!(offset_of!(HwRtc, rtc_offset), 16);
    }

    #[test]
    fn fixed_lengths_cover_the_fixed_types() {
        assert_eq!(fixed_entry_length(HVM_SAVE_CODE_CPU), Some(1032));
        assert_eq!(fixed_entry_length(HVM_SAVE_CODE_END), Some(0));
        assert_eq!(fixed_entry_length(HVM_SAVE_CODE_CPU_XSAVE), None);
        assert_eq!(fixed_entry_length(HVM_SAVE_CODE_CPU_MSR), None);
    }
}
