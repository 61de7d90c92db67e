//! KVM's local APIC ↔ Xen's LAPIC and LAPIC_REGS save records.
//!
//! `kvm_lapic_state` and `struct hvm_hw_lapic_regs` are both the first
//! 1 KiB of the xAPIC register page, byte for byte, with one difference:
//! in x2APIC mode (and without `KVM_CAP_X2APIC_API`'s format, which kxen
//! does not enable) KVM keeps the APIC ID register in xAPIC form, the ID in
//! bits 31:24, where Xen's page holds the 32-bit x2APIC ID.
//!
//! `struct hvm_hw_lapic`'s fields: `apic_base_msr` is IA32_APIC_BASE
//! (`kvm_sregs::apic_base`); `disabled` is derived (software-disabled when
//! SVR bit 8 is clear, hardware-disabled when the base MSR's enable bit
//! is), as is `timer_divisor` (from the divide configuration register);
//! `tdt_msr` is IA32_TSC_DEADLINE; `pending_esr` (errors not yet latched
//! into ESR) has no KVM counterpart and is saved 0. On load the derived
//! fields are recomputed from the page, as the page is what KVM runs.
use kvm_bindings::kvm_lapic_state;
use thiserror::Error;
use xen_abi::hvm_save::{HwLapic, HwLapicRegs};
use zerocopy::FromZeros;

const APIC_ID: usize = 0x20;
const APIC_TASK_PRIORITY: usize = 0x80;
const APIC_SPURIOUS_VECTOR: usize = 0xf0;
const APIC_TIMER_DIVIDE: usize = 0x3e0;
const SVR_APIC_ENABLED: u32 = 1 << 8;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// Xen's `VLAPIC_SW_DISABLED` and `VLAPIC_HW_DISABLED`.
pub const VLAPIC_SW_DISABLED: u32 = 1;
pub const VLAPIC_HW_DISABLED: u32 = 2;

/// The LAPIC state that lives outside KVM's register page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LapicHidden {
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
}

/// A LAPIC record KVM cannot take.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LapicLoadError {
    #[error("APIC base MSR {0:#x} has reserved bits set")]
    BadApicBase(u64),
    #[error("APIC base MSR {0:#x} selects x2APIC mode with the APIC disabled")]
    X2apicWhileDisabled(u64),
    #[error("x2APIC ID {0:#x} does not fit KVM's 8-bit form")]
    X2apicIdTooWide(u32),
}

fn register(page: &[u8; 1024], offset: usize) -> u32 {
    u32::from_le_bytes([
        page[offset],
        page[offset + 1],
        page[offset + 2],
        page[offset + 3],
    ])
}

fn set_register(page: &mut [u8; 1024], offset: usize, value: u32) {
    page[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn kvm_page(lapic: &kvm_lapic_state) -> [u8; 1024] {
    lapic.regs.map(|byte| byte as u8)
}

/// The task-priority register of KVM's LAPIC page.
pub fn task_priority(lapic: &kvm_lapic_state) -> u32 {
    register(&kvm_page(lapic), APIC_TASK_PRIORITY) & 0xff
}

/// Xen's `timer_divisor` for a divide configuration register value:
/// bits 3, 1 and 0 pick 2, 4, ... 128, and 0b111 picks 1.
pub fn timer_divisor(divide_configuration: u32) -> u32 {
    let index = (divide_configuration & 3) | ((divide_configuration & 8) >> 1);
    1 << ((index + 1) & 7)
}

fn x2apic_mode(apic_base: u64) -> bool {
    apic_base & (APIC_BASE_X2APIC | APIC_BASE_ENABLE) == APIC_BASE_X2APIC | APIC_BASE_ENABLE
}

/// KVM's LAPIC as Xen's LAPIC and LAPIC_REGS records.
pub fn save(lapic: &kvm_lapic_state, hidden: &LapicHidden) -> (HwLapic, HwLapicRegs) {
    let mut page = kvm_page(lapic);
    if x2apic_mode(hidden.apic_base) {
        let id = register(&page, APIC_ID) >> 24;
        set_register(&mut page, APIC_ID, id);
    }
    let mut disabled = 0;
    if register(&page, APIC_SPURIOUS_VECTOR) & SVR_APIC_ENABLED == 0 {
        disabled |= VLAPIC_SW_DISABLED;
    }
    if hidden.apic_base & APIC_BASE_ENABLE == 0 {
        disabled |= VLAPIC_HW_DISABLED;
    }
    let record = HwLapic {
        apic_base_msr: hidden.apic_base,
        disabled,
        timer_divisor: timer_divisor(register(&page, APIC_TIMER_DIVIDE)),
        tdt_msr: hidden.tsc_deadline,
        pending_esr: 0,
        _pad: 0,
    };
    let mut regs = HwLapicRegs::new_zeroed();
    regs.data = page;
    (record, regs)
}

/// Xen's LAPIC records into KVM's page (`lapic`); returns the state that
/// lives outside it.
pub fn load(
    record: &HwLapic,
    regs: &HwLapicRegs,
    lapic: &mut kvm_lapic_state,
) -> Result<LapicHidden, LapicLoadError> {
    let apic_base = record.apic_base_msr;
    let valid = APIC_BASE_BSP | APIC_BASE_X2APIC | APIC_BASE_ENABLE | APIC_BASE_ADDRESS;
    if apic_base & !valid != 0 {
        return Err(LapicLoadError::BadApicBase(apic_base));
    }
    if apic_base & (APIC_BASE_X2APIC | APIC_BASE_ENABLE) == APIC_BASE_X2APIC {
        return Err(LapicLoadError::X2apicWhileDisabled(apic_base));
    }
    let mut page = regs.data;
    if x2apic_mode(apic_base) {
        let id = register(&page, APIC_ID);
        if id > 0xff {
            return Err(LapicLoadError::X2apicIdTooWide(id));
        }
        set_register(&mut page, APIC_ID, id << 24);
    }
    lapic.regs = page.map(|byte| byte as std::os::raw::c_char);
    Ok(LapicHidden {
        apic_base,
        tsc_deadline: record.tdt_msr,
    })
}
