//! kxen's blkback: Dom0's backend for Xen virtual block devices (vbd).
//!
//! * [`BlkBackend`] implements kxend's `BackendDevice` contract: it
//!   publishes the device and its features, reads the frontend's rings
//!   (multi-page, multi-queue) and serves each on its own I/O thread.
//! * [`VbdSpec`] is what kxend derives from xl's disk spec.
//! * [`request`] is the pure, fuzzable decoder of guest requests.
//!
//! Requests move data straight between the backing store and the guest's
//! granted pages (preadv/pwritev on the mapped pages); every guest-supplied
//! index, grant reference and sector range is checked first, and a bad
//! request is answered with BLKIF_RSP_ERROR, never acted on.

mod backend;
mod backring;
mod disk;
mod domain;
pub mod error;
pub mod frontend;
mod pgrants;
mod queue;
pub mod request;
pub mod spec;
mod stats;

pub use backend::{BlkBackend, MAX_QUEUES};
pub use disk::Disk;
pub use error::BlkError;
pub use queue::Features;
pub use spec::{DevType, VbdSpec};

#[cfg(test)]
mod tests;
