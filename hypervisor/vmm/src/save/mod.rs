//! A vCPU's state as Xen's HVM save records (issue 17, item 6): the
//! translation between KVM's per-vCPU state and `struct hvm_hw_cpu`,
//! `struct hvm_hw_lapic` and `struct hvm_hw_lapic_regs`, which a
//! migration stream's HVM_CONTEXT record carries.
//!
//! * [`cpu`]: [`KvmVcpuState`] ↔ [`xen_abi::hvm_save::HwCpu`], pure
//!   functions (no ioctls) with the checks Xen's `hvm_load_cpu_ctxt` makes
//!   and the ones KVM would otherwise fail on;
//! * [`lapic`]: `kvm_lapic_state` ↔ [`xen_abi::hvm_save::HwLapicRegs`] and
//!   the LAPIC record's hidden state;
//! * [`platform`]: the in-kernel PICs, IOAPIC and PIT ↔ the PIC, IOAPIC
//!   and PIT records;
//! * [`xsave`]: the XSAVE area and XCR0 ↔ the CPU_XSAVE record;
//! * [`mtrr`]: PAT and the MTRRs ↔ the MTRR record;
//! * [`irq`]: the interrupt wires ↔ PCI_IRQ, ISA_IRQ and PCI_LINK;
//! * [`rtc`]: kxen's CMOS clock ↔ the RTC record;
//! * [`kvm`]: the ioctls that read and write all of it.
//!
//! Facts about Xen's records come from `xen/arch/x86/hvm/hvm.c`,
//! `xen/arch/x86/hvm/vlapic.c` and `public/arch-x86/hvm/save.h`; no code
//! or text is copied.

pub mod cpu;
pub mod irq;
pub mod kvm;
pub mod lapic;
pub mod mtrr;
pub mod platform;
#[cfg(test)]
mod platform_tests;
pub mod rtc;
#[cfg(test)]
mod tests;
pub mod xsave;

pub use cpu::{KvmVcpuState, LoadError, SaveError, SavedMsrs, XenVcpuRecords};
