//! Emulated platform devices for kxen's HVM domains.
//!
//! Each device decodes its own registers; the [`bus`] routes a port or
//! MMIO exit to the device that claims the address. Devices never panic on
//! a guest access: unknown registers read as a floating bus and writes to
//! them are dropped, as on real hardware.

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod state;
pub mod virtio_mmio;
pub mod xen_platform;

pub use bus::{Bus, BusDevice, BusError, PlatformRequest};
