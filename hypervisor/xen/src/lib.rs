//! The Xen hypercall ABI served to one domain.
//!
//! This crate holds every piece of Xen semantics kxen implements: the
//! hypercall dispatcher and its sub-operations, the 2-level event channel
//! logic, grant table bookkeeping, HVM parameters, vCPU timers, pvclock and
//! runstate. It knows nothing of KVM: the VMM plugs in a [`Platform`] (inject
//! an upcall vector, map a page at a GFN, stop the domain...) and, per call,
//! a [`guest::VcpuMmu`] that translates the caller's virtual addresses.
//!
//! Every argument comes from an untrusted guest: handlers validate and fail
//! with Xen's error codes, never panic.

pub mod domain;
pub mod evtchn;
pub mod evtchn_fifo;
pub mod gntcopy;
pub mod grant;
pub mod guest;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod hypercall;
pub mod snapshot;
pub mod time;

pub use domain::{Domain, DomainConfig, EventLayout, OverlayFrame, Platform};
pub use guest::VcpuMmu;
