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

#[derive(Clone)]
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

impl PciFunction {
    /// This function with `saved` as its configuration space, as the
    /// guest's own writes could have made it; None if `saved` differs
    /// from that in a byte the guest cannot write (identity, BAR size or
    /// type bits).
    fn with_config(&self, saved: &[u8; 256]) -> Option<PciFunction> {
        let mut f = self.clone();
        let mut at = 0;
        while at < 256 {
            let is_bar = (BAR0..BAR0 + 24).contains(&at);
            let len = if is_bar { 4 } else { 1 };
            f.write(at, &saved[at..at + len]);
            at += len;
        }
        (f.config == *saved).then_some(f)
    }
}

const PCI_FUNCTION_STATE_LEN: usize = 1 + 256;

/// The bus's address register and each function's configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciState {
    pub address: u32,
    /// (devfn, configuration space), in devfn order.
    pub functions: Vec<(u8, [u8; 256])>,
}

impl PciState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.functions.len() * PCI_FUNCTION_STATE_LEN);
        out.extend_from_slice(&self.address.to_le_bytes());
        out.push(self.functions.len() as u8);
        for (devfn, config) in &self.functions {
            out.push(*devfn);
            out.extend_from_slice(config);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::state::DeviceStateError> {
        use crate::state::DeviceStateError;
        let count = *bytes.get(4).ok_or(DeviceStateError::EntryLength {
            what: "PCI",
            got: bytes.len(),
            want: 5,
        })? as usize;
        let mut c = crate::state::exact("PCI", bytes, 5 + count * PCI_FUNCTION_STATE_LEN)?;
        let address = c.u32();
        c.u8();
        let mut functions: Vec<(u8, [u8; 256])> = Vec::with_capacity(count);
        for _ in 0..count {
            let devfn = c.u8();
            if functions.last().is_some_and(|(last, _)| *last >= devfn) {
                return Err(DeviceStateError::field(
                    "PCI",
                    format!("function {devfn:#x} out of order or twice"),
                ));
            }
            functions.push((devfn, c.bytes::<256>()));
        }
        Ok(PciState { address, functions })
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

    /// A bus with the same functions and registers, for checking a saved
    /// state without touching this one.
    pub fn scratch_copy(&self) -> PciBus {
        PciBus {
            address: self.address,
            functions: self.functions.clone(),
        }
    }

    pub fn save_state(&self) -> PciState {
        PciState {
            address: self.address,
            functions: self
                .functions
                .iter()
                .map(|(devfn, f)| (*devfn, f.config))
                .collect(),
        }
    }

    /// Take `state`: the same functions as this bus has, each config
    /// space one the guest could have written. Nothing changes unless
    /// every function is accepted.
    pub fn load_state(&mut self, state: &PciState) -> Result<(), crate::state::DeviceStateError> {
        use crate::state::DeviceStateError;
        let ours: Vec<u8> = self.functions.keys().copied().collect();
        let theirs: Vec<u8> = state.functions.iter().map(|(d, _)| *d).collect();
        if ours != theirs {
            return Err(DeviceStateError::field(
                "PCI",
                format!("functions {theirs:?}, this domain has {ours:?}"),
            ));
        }
        let mut loaded = BTreeMap::new();
        for (devfn, config) in &state.functions {
            let f = self.functions[devfn].with_config(config).ok_or_else(|| {
                DeviceStateError::field(
                    "PCI",
                    format!("function {devfn:#x}: a read-only register differs"),
                )
            })?;
            loaded.insert(*devfn, f);
        }
        self.functions = loaded;
        self.address = state.address;
        Ok(())
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

    #[test]
    fn state_round_trips_and_read_only_bytes_are_checked() {
        let mut bus = sample();
        cfg_write(&mut bus, 2, 0x04, 0x0007);
        cfg_write(&mut bus, 2, 0x14, 0xe000_0000);
        cfg_write(&mut bus, 2, 0x3c, 0x0b);
        let saved = bus.save_state();
        let bytes = saved.encode();
        assert_eq!(PciState::decode(&bytes).unwrap(), saved);
        let mut other = sample();
        other.load_state(&saved).unwrap();
        assert_eq!(cfg_read(&mut other, 2, 0x04) & 0xffff, 0x0007);
        assert_eq!(cfg_read(&mut other, 2, 0x3c) & 0xff, 0x0b);
        assert_eq!(other.save_state(), bus.save_state());

        // A changed vendor ID, BAR type bits, or a function this bus lacks.
        let mut bad = saved.clone();
        bad.functions[1].1[0] ^= 1;
        assert!(sample().load_state(&bad).is_err());
        let mut bad = saved.clone();
        bad.functions[1].1[0x10] ^= 1;
        assert!(sample().load_state(&bad).is_err());
        assert!(PciBus::new().load_state(&saved).is_err());
        // Out of order, truncated.
        let mut bad = saved.clone();
        bad.functions.swap(0, 1);
        assert!(PciState::decode(&bad.encode()).is_err());
        assert!(PciState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(PciState::decode(&[]).is_err());
    }
}
