//! PCI configuration mechanism #1 (ports 0xcf8/0xcfc) on a single bus,
//! with a host bridge and whatever functions the platform adds.
//!
//! Each function is a 256-byte configuration space with a mask of the bits
//! the guest may write; BARs answer the all-ones sizing probe with their
//! size. Functions that do not exist read as all ones.

use std::collections::BTreeMap;

use crate::bus::{BusDevice, PlatformRequest};

pub const PCI_CONFIG_BASE: u64 = 0xcf8;
pub const PCI_CONFIG_WINDOW: u64 = 8;

const ADDRESS: u64 = 0;
const DATA: u64 = 4;
const ENABLE: u32 = 1 << 31;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const REVISION: usize = 0x08;
const CLASS_PROG: usize = 0x09;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// Command register bits a guest may change: I/O, memory, bus master,
/// INTx disable.
const COMMAND_WRITABLE: u16 = 0x0007 | 0x0400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 { prefetchable: bool },
}

#[derive(Debug, Clone, Copy)]
pub struct Bar {
    pub kind: BarKind,
    /// A power of two.
    pub size: u32,
    /// Where firmware placed it.
    pub base: u32,
}

impl Bar {
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => 1,
            BarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    0x8
                } else {
                    0
                }
            }
        }
    }
}

/// What identifies a function.
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class, subclass, programming interface.
    pub class: [u8; 3],
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// INTA..INTD as 1..4, 0 for none.
    pub interrupt_pin: u8,
    pub interrupt_line: u8,
}

pub struct PciFunction {
    config: [u8; 256],
    writable: [u8; 256],
    bars: [Option<Bar>; 6],
}

impl PciFunction {
    pub fn new(id: &PciIdentity, bars: &[Bar]) -> Self {
        let mut f = PciFunction {
            config: [0; 256],
            writable: [0; 256],
            bars: [None; 6],
        };
        f.put16(VENDOR_ID, id.vendor);
        f.put16(DEVICE_ID, id.device);
        f.config[REVISION] = id.revision;
        f.config[CLASS_PROG] = id.class[2];
        f.config[CLASS_PROG + 1] = id.class[1];
        f.config[CLASS_PROG + 2] = id.class[0];
        f.config[HEADER_TYPE] = 0;
        f.put16(SUBSYSTEM_VENDOR, id.subsystem_vendor);
        f.put16(SUBSYSTEM_ID, id.subsystem);
        f.config[INTERRUPT_PIN] = id.interrupt_pin;
        f.config[INTERRUPT_LINE] = id.interrupt_line;
        f.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        f.writable[INTERRUPT_LINE] = 0xff;
        for (i, bar) in bars.iter().take(6).enumerate() {
            f.bars[i] = Some(*bar);
            f.put32(BAR0 + 4 * i, (bar.base & !(bar.size - 1)) | bar.flags());
        }
        f
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.config[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.config[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Where BAR `index` currently is (the guest may move it).
    pub fn bar_base(&self, index: usize) -> Option<u32> {
        let bar = self.bars.get(index)?.as_ref()?;
        let at = BAR0 + 4 * index;
        let raw = u32::from_le_bytes(self.config[at..at + 4].try_into().ok()?);
        Some(raw & !(bar.size - 1) & !bar.flags())
    }

    fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        // BARs take whole-register writes: keep the size's alignment and
        // the type bits, so an all-ones probe reads back the size.
        if (BAR0..BAR0 + 24).contains(&offset) && offset.is_multiple_of(4) && data.len() == 4 {
            let index = (offset - BAR0) / 4;
            if let Some(bar) = self.bars[index] {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                let mask = match bar.kind {
                    BarKind::Io => !(bar.size - 1) & 0xffff,
                    BarKind::Memory32 { .. } => !(bar.size - 1),
                };
                self.put32(offset, (value & mask) | bar.flags());
            }
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            if at < 256 {
                let w = self.writable[at];
                self.config[at] = (self.config[at] & !w) | (b & w);
            }
        }
    }
}

/// Bus 0 and the 0xcf8/0xcfc register pair.
pub struct PciBus {
    address: u32,
    /// Functions by device/function number (device << 3 | function).
    functions: BTreeMap<u8, PciFunction>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus holding only the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut bus = PciBus {
            address: 0,
            functions: BTreeMap::new(),
        };
        bus.add(
            0,
            PciFunction::new(
                &PciIdentity {
                    // An i440FX host bridge, as Xen's and QEMU's PC machines
                    // present.
                    vendor: 0x8086,
                    device: 0x1237,
                    revision: 2,
                    class: [0x06, 0x00, 0x00],
                    subsystem_vendor: 0,
                    subsystem: 0,
                    interrupt_pin: 0,
                    interrupt_line: 0,
                },
                &[],
            ),
        );
        bus
    }

    /// Place `function` at device `device`, function 0.
    pub fn add(&mut self, device: u8, function: PciFunction) {
        self.functions.insert((device & 0x1f) << 3, function);
    }

    pub fn function(&self, device: u8) -> Option<&PciFunction> {
        self.functions.get(&((device & 0x1f) << 3))
    }

    /// The function and register the address register selects, if enabled
    /// and on bus 0.
    fn selected(&self) -> Option<(u8, usize)> {
        if self.address & ENABLE == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        let devfn = ((self.address >> 8) & 0xff) as u8;
        Some((devfn, (self.address & 0xfc) as usize))
    }
}

impl BusDevice for PciBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            ADDRESS if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            o if (DATA..DATA + 4).contains(&o) => {
                let Some((devfn, reg)) = self.selected() else {
                    return;
                };
                let at = reg + (o - DATA) as usize;
                if let Some(f) = self.functions.get(&devfn) {
                    f.read(at, data);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        match offset {
            ADDRESS if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            o if (DATA..DATA + 4).contains(&o) => {
                let (devfn, reg) = self.selected()?;
                let at = reg + (o - DATA) as usize;
                if let Some(f) = self.functions.get_mut(&devfn) {
                    f.write(at, data);
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

    fn cfg_read(bus: &mut PciBus, dev: u8, reg: u32) -> u32 {
        bus.write(ADDRESS, &(ENABLE | (dev as u32) << 11 | reg).to_le_bytes());
        let mut b = [0u8; 4];
        bus.read(DATA, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write(bus: &mut PciBus, dev: u8, reg: u32, v: u32) {
        bus.write(ADDRESS, &(ENABLE | (dev as u32) << 11 | reg).to_le_bytes());
        bus.write(DATA, &v.to_le_bytes());
    }

    /// The host bridge and the Xen platform device (an I/O BAR of 256
    /// bytes at 0xc000, a prefetchable 16 MiB memory BAR at 0xf0000000).
    fn sample() -> PciBus {
        let mut bus = PciBus::new();
        bus.add(2, crate::xen_platform::platform_function());
        bus
    }

    #[test]
    fn enumerates_and_sizes_bars() {
        let mut bus = sample();
        assert_eq!(cfg_read(&mut bus, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read(&mut bus, 2, 0), 0x0001_5853);
        assert_eq!(cfg_read(&mut bus, 2, 8) >> 8, 0xff_8000);
        assert_eq!(cfg_read(&mut bus, 1, 0), 0xffff_ffff, "empty slot");
        assert_eq!(cfg_read(&mut bus, 2, 0x10), 0xc001);
        cfg_write(&mut bus, 2, 0x10, 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, 2, 0x10), 0xff01);
        cfg_write(&mut bus, 2, 0x14, 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, 2, 0x14), 0xff00_0008);
        cfg_write(&mut bus, 2, 0x14, 0xe000_0000);
        assert_eq!(bus.function(2).unwrap().bar_base(1), Some(0xe000_0000));
    }

    #[test]
    fn read_only_registers_stay_put() {
        let mut bus = sample();
        cfg_write(&mut bus, 2, 0, 0x1234_5678);
        assert_eq!(cfg_read(&mut bus, 2, 0), 0x0001_5853);
        cfg_write(&mut bus, 2, 4, 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, 2, 4) & 0xffff, COMMAND_WRITABLE as u32);
        cfg_write(&mut bus, 2, 0x3c, 0x0000_0105);
        assert_eq!(
            cfg_read(&mut bus, 2, 0x3c) & 0xffff,
            0x0105,
            "line writable, pin not"
        );
    }

    #[test]
    fn disabled_or_foreign_bus_addresses_read_all_ones() {
        let mut bus = sample();
        bus.write(ADDRESS, &0x0000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        bus.read(DATA, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.write(ADDRESS, &(ENABLE | 1 << 16).to_le_bytes());
        bus.read(DATA, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Byte access to the address port is not a config cycle.
        bus.write(ADDRESS + 1, &[0x80]);
        let mut one = [0u8; 1];
        bus.read(DATA + 3, &mut one);
        bus.write(DATA + 3, &[1, 2, 3, 4]);
    }
}
