//! kxen's Dom0 network backend (netback).
//!
//! * [`tx`]: the guest's TX ring entries parsed into packets (pure);
//! * [`queue`]: one queue's ring engine (TX ring → packets, packets → RX
//!   ring) over a grant table and event channels;
//! * [`tap`], [`worker`]: the host side, a TAP device and an I/O thread
//!   per queue;
//! * [`backend`]: [`NetBackend`], the xenbus `BackendDevice` for "vif".
pub mod backend;
pub mod error;
pub mod offload;
pub mod queue;
pub mod ring;
pub mod script;
pub mod spec;
pub mod stats;
pub mod tap;
pub mod tx;
pub mod vnet;
pub mod worker;

#[cfg(test)]
mod fake_guest;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tap_tests;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use backend::NetBackend;
pub use error::NetError;
pub use spec::VifSpec;
