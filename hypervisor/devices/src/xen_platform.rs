//! The Xen platform PCI device (5853:0001) and the emulated-device unplug
//! ports at 0x10-0x13, for PVHVM guests that move to PV drivers.
//!
//! Protocol (Xen's docs/misc/hvm-emulated-unplug): the guest reads the
//! magic 0x49d2 from port 0x10 and a protocol version from 0x12, writes a
//! product number to 0x12 and a build number to 0x10, then writes a
//! bitmask of emulated devices to unplug to 0x10. Single bytes written to
//! 0x12 are log characters.

use crate::bus::{BusDevice, PlatformRequest};
use crate::pci::{Bar, BarKind, PciFunction, PciIdentity};

pub const UNPLUG_BASE: u64 = 0x10;
pub const UNPLUG_WINDOW: u64 = 4;
/// Where the platform device sits on bus 0.
pub const PLATFORM_PCI_DEVICE: u8 = 2;
pub const PLATFORM_IO_BAR_BASE: u32 = 0xc000;
pub const PLATFORM_MMIO_BAR_BASE: u32 = 0xf000_0000;
pub const PLATFORM_MMIO_BAR_SIZE: u32 = 16 << 20;
/// The interrupt line firmware routes INTA to.
pub const PLATFORM_IRQ: u8 = 11;

const MAGIC: u16 = 0x49d2;
const PROTOCOL_VERSION: u8 = 1;
/// Unplug bitmask bits.
pub const UNPLUG_IDE_DISKS: u16 = 1 << 0;
pub const UNPLUG_NICS: u16 = 1 << 1;
pub const UNPLUG_AUX_IDE_DISKS: u16 = 1 << 2;
pub const UNPLUG_NVME_DISKS: u16 = 1 << 3;
/// Longest log line kept before it is flushed.
const LOG_LINE_MAX: usize = 256;

/// The PCI function (vendor "XS", device 1, class "other").
pub fn platform_function() -> PciFunction {
    PciFunction::new(
        &PciIdentity {
            vendor: 0x5853,
            device: 0x0001,
            revision: 1,
            class: [0xff, 0x80, 0x00],
            subsystem_vendor: 0x5853,
            subsystem: 0x0001,
            interrupt_pin: 1,
            interrupt_line: PLATFORM_IRQ,
        },
        &[
            Bar {
                kind: BarKind::Io,
                size: 0x100,
                base: PLATFORM_IO_BAR_BASE,
            },
            Bar {
                kind: BarKind::Memory32 { prefetchable: true },
                size: PLATFORM_MMIO_BAR_SIZE,
                base: PLATFORM_MMIO_BAR_BASE,
            },
        ],
    )
}

/// The fixed unplug/log ports.
#[derive(Default)]
pub struct UnplugPorts {
    /// Devices the guest asked to unplug (bitmask).
    pub unplugged: u16,
    pub product: Option<u16>,
    pub build: Option<u32>,
    log: Vec<u8>,
}

impl UnplugPorts {
    pub fn new() -> Self {
        Self::default()
    }
}

impl BusDevice for UnplugPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.len()) {
            (0, 2) => data.copy_from_slice(&MAGIC.to_le_bytes()),
            (2, 1) => data[0] = PROTOCOL_VERSION,
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        match (offset, data.len()) {
            (0, 2) => {
                let mask = u16::from_le_bytes([data[0], data[1]]);
                self.unplugged |= mask;
                // kxen emulates no IDE, NVMe or emulated NIC: the PV
                // drivers have nothing to take over from.
                tracing::info!(mask, "guest unplugged emulated devices");
            }
            (0, 4) => self.build = Some(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
            (2, 2) => self.product = Some(u16::from_le_bytes([data[0], data[1]])),
            (2, 1) => {
                if data[0] == b'\n' || self.log.len() >= LOG_LINE_MAX {
                    tracing::info!(
                        "guest PV driver log: {}",
                        String::from_utf8_lossy(&self.log)
                    );
                    self.log.clear();
                } else {
                    self.log.push(data[0]);
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplug_handshake() {
        let mut p = UnplugPorts::new();
        let mut magic = [0u8; 2];
        p.read(0, &mut magic);
        assert_eq!(u16::from_le_bytes(magic), MAGIC);
        let mut ver = [0u8; 1];
        p.read(2, &mut ver);
        assert_eq!(ver[0], PROTOCOL_VERSION);
        p.write(2, &3u16.to_le_bytes());
        p.write(0, &1u32.to_le_bytes());
        p.write(0, &(UNPLUG_IDE_DISKS | UNPLUG_NICS).to_le_bytes());
        assert_eq!((p.product, p.build, p.unplugged), (Some(3), Some(1), 3));
        for b in std::iter::repeat_n(b'x', 1000) {
            p.write(2, &[b]);
        }
        assert!(p.log.len() <= LOG_LINE_MAX);
        let mut odd = [0u8; 4];
        p.read(1, &mut odd);
        assert_eq!(odd, [0xff; 4]);
    }
}
