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
//! * [`kvm`]: reading and writing a [`KvmVcpuState`] through a vCPU fd.
//!
//! Facts about Xen's records come from `xen/arch/x86/hvm/hvm.c`,
//! `xen/arch/x86/hvm/vlapic.c` and `public/arch-x86/hvm/save.h`; no code
//! or text is copied.

pub mod cpu;
pub mod kvm;
pub mod lapic;
#[cfg(test)]
mod tests;

pub use cpu::{KvmVcpuState, LoadError, SaveError, SavedMsrs, XenVcpuRecords};
