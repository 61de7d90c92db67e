//! kxen's Dom0 data plane for the virtio devices of HVM domains.
//!
//! kxen-vmm owns the virtio-mmio transport (registers, feature
//! negotiation, interrupts); kxend serves the virtqueues directly in guest
//! memory, with virtio-queue, over the same backing code as the PV
//! backends: blkback's [`kxen_blkback::Disk`] for virtio-blk and
//! netback's TAP and hotplug script for virtio-net. The protocol between
//! the two is hypervisor/vmm/virtio-protocol.md.
//!
//! * [`memory`]: the domain's RAM as a vm-memory `GuestMemoryMmap`;
//! * [`chain`]: descriptor chains checked once (loops, RAM bounds, order);
//! * [`blk`], [`net`]: the devices, with their pure request parsers;
//! * [`device`]: the per-device worker (link socket, kicks, interrupts);
//! * [`link`], [`attach`]: `virtio-attach` and the link messages.
//!
//! A guest that breaks the queue rules (a descriptor loop, a buffer
//! outside RAM, a request without header or status) gets a device error:
//! the device stops and the VMM sets DEVICE_NEEDS_RESET. A bad request in
//! a well-formed chain only gets an error status.

pub mod attach;
pub mod blk;
pub mod chain;
pub mod device;
pub mod error;
pub mod link;
pub mod memory;
pub mod net;

pub use attach::VirtioDomain;
pub use blk::{BlkConfig, BlkDevice};
pub use device::{DeviceFds, DeviceHandle, QuiesceControl, VirtioDevice};
pub use error::{Fault, VirtioError};
pub use net::NetDevice;

#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod tests;
