//! Classic 64-bit Xen PV semantics, whoever executes them.
//!
//! A PV guest kernel runs deprivileged and asks the hypervisor for every
//! privileged act. This crate holds what those requests *mean*, as Xen
//! defines it, with no KVM in sight: kxen-vmm calls it on an exit, and an
//! in-guest path may call the same code later. It starts with the PV MMU
//! ([`mmu`]): page types and their counts, pinning, `mmu_update`,
//! `mmuext_op` and `update_va_mapping`. Each call returns the Xen error
//! code on refusal and, on success, the [`Effects`] the executor must apply
//! (TLB flushes, a new CR3, a new LDT); nothing here touches a CPU.
//!
//! Every argument comes from an untrusted guest: frame numbers are checked
//! against the domain, counts and addresses against Xen's limits, and no
//! guest input can panic, recurse without bound or make us allocate more
//! than the domain's frame count.

pub mod context;
pub mod descriptors;
pub mod effects;
pub mod emulate;
pub mod error;
pub mod m2p;
pub mod memory;
pub mod mmu;
pub mod pte;
pub mod ptwr;
pub mod saved;
pub mod traps;
pub mod vcpu;

pub use effects::{Effects, FlushScope, TlbFlush, VcpuMask, MAX_VCPUS};
pub use error::MmuError;
pub use m2p::{M2pLayout, M2pLayoutError};
pub use memory::{MemFrames, MmuMemory};
pub use mmu::{
    BatchOutcome, FrameInfo, FrameType, Outcome, PvMmu, PvMmuConfig, PvMmuConfigError,
    VcpuMmuState, MAX_FRAMES,
};
pub use pte::{Mfn, PtLevel};
pub use saved::{SavedRegs, SavedVcpu, SavedVcpuError};
pub use traps::{Bounce, Interrupted, IretFrame, IretReturn, TrapError, TrapInfo, TrapTable};
pub use vcpu::{IretOutcome, PvVcpu, PvVcpuError, SegmentLoad};
