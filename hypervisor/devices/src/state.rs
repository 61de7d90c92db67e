//! The saved state of the HVM device models (issue 17): the section of a
//! kxen image that carries what only kxen's devices know (the UART, the
//! i8042, the ACPI PM block, PCI configuration space and the virtio-mmio
//! transports), and the one PVM-host hook with state: where kxen-vmm's
//! syscall bridge put its breakpoint in the guest's page-fault handler and
//! the byte it displaced (the `int3` itself is in guest memory, so it
//! travels with the pages). The CMOS clock travels as Xen's own RTC record
//! instead.
//!
//! The section comes from a restore file or a migration stream, so it is
//! hostile input: [`parse`] checks every length and every field before it
//! returns anything, and the devices' `load_state` methods check again
//! what depends on the device they are loaded into (its kind, its
//! functions), before changing anything.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "KXENDEV\0" | version u32 = 1 | body length u32 | body
//! body: entries, each  tag u16 | instance u16 | length u32 | bytes
//! ```
//!
//! Each device has one entry (virtio-mmio one per slot, the slot being the
//! instance); every entry's length is fixed by its tag. An unknown tag, a
//! duplicate, a short or long entry, or bytes after the body are refused.

use thiserror::Error;

pub const DEVICE_STATE_MAGIC: &[u8; 8] = b"KXENDEV\0";
pub const DEVICE_STATE_VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const ENTRY_HEADER_LEN: usize = 8;

pub const TAG_UART: u16 = 1;
pub const TAG_I8042: u16 = 2;
pub const TAG_ACPI_PM: u16 = 3;
pub const TAG_PCI: u16 = 4;
pub const TAG_VIRTIO_MMIO: u16 = 5;
pub const TAG_SYSCALL_BRIDGE: u16 = 6;

/// Most virtio-mmio slots a section may carry.
pub const MAX_VIRTIO_SLOTS: u16 = 8;

/// Why a device-state section, or one device's state, was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceStateError {
    #[error("device state: bad magic or truncated header")]
    Header,
    #[error("device state: version {0} (this kxen reads {DEVICE_STATE_VERSION})")]
    Version(u32),
    #[error("device state: the body is {declared} bytes but {present} are present")]
    BodyLength { declared: usize, present: usize },
    #[error("device state: entry at byte {0} is truncated")]
    Truncated(usize),
    #[error("device state: unknown entry tag {0}")]
    UnknownTag(u16),
    #[error("device state: entry tag {tag} instance {instance} twice")]
    Duplicate { tag: u16, instance: u16 },
    #[error("device state: entry tag {tag} instance {instance} is out of range")]
    Instance { tag: u16, instance: u16 },
    #[error("device state: {what} entry is {got} bytes, not {want}")]
    EntryLength {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("device state: {what}: {why}")]
    Field { what: &'static str, why: String },
}

impl DeviceStateError {
    pub fn field(what: &'static str, why: impl Into<String>) -> Self {
        DeviceStateError::Field {
            what,
            why: why.into(),
        }
    }
}

/// Little-endian reads from a slice whose length the caller has checked.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        self.take()
    }

    /// A 0/1 byte as a bool; anything else is refused.
    pub(crate) fn flag(&mut self, what: &'static str) -> Result<bool, DeviceStateError> {
        match self.u8() {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DeviceStateError::field(what, format!("flag byte {v}"))),
        }
    }
}

/// Checks an entry's length before its fields are read.
pub(crate) fn exact<'a>(
    what: &'static str,
    bytes: &'a [u8],
    want: usize,
) -> Result<Cursor<'a>, DeviceStateError> {
    if bytes.len() != want {
        return Err(DeviceStateError::EntryLength {
            what,
            got: bytes.len(),
            want,
        });
    }
    Ok(Cursor::new(bytes))
}

/// Every device's saved state, as one section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub uart: Option<crate::serial::UartState>,
    pub i8042: Option<crate::i8042::I8042State>,
    pub acpi_pm: Option<crate::acpi_pm::AcpiPmState>,
    pub pci: Option<crate::pci::PciState>,
    /// By slot, in slot order.
    pub virtio: Vec<(u16, crate::virtio_mmio::VirtioMmioState)>,
    /// The syscall bridge's breakpoint, where one is planted.
    pub syscall_bridge: Option<BridgeBreakpoint>,
}

/// Where kxen-vmm's syscall bridge planted its `int3`: the page-fault
/// handler's address, the guest-physical address of its first byte and
/// the byte the `int3` displaced. The loader checks the address against
/// the domain's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeBreakpoint {
    pub handler: u64,
    pub gpa: u64,
    pub original: u8,
}

const BRIDGE_STATE_LEN: usize = 17;

impl BridgeBreakpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BRIDGE_STATE_LEN);
        out.extend_from_slice(&self.handler.to_le_bytes());
        out.extend_from_slice(&self.gpa.to_le_bytes());
        out.push(self.original);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DeviceStateError> {
        let mut c = exact("syscall bridge", bytes, BRIDGE_STATE_LEN)?;
        let b = BridgeBreakpoint {
            handler: c.u64(),
            gpa: c.u64(),
            original: c.u8(),
        };
        // A kernel-half, canonical handler address; an int3 never
        // displaced itself.
        let canonical_kernel = b.handler >> 47 == 0x1_ffff;
        if !canonical_kernel || b.original == 0xcc {
            return Err(DeviceStateError::field(
                "syscall bridge",
                format!("handler {:#x}, byte {:#x}", b.handler, b.original),
            ));
        }
        Ok(b)
    }
}

fn push_entry(out: &mut Vec<u8>, tag: u16, instance: u16, body: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&instance.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// The section for `state`.
pub fn encode(state: &DeviceState) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(s) = &state.uart {
        push_entry(&mut body, TAG_UART, 0, &s.encode());
    }
    if let Some(s) = &state.i8042 {
        push_entry(&mut body, TAG_I8042, 0, &s.encode());
    }
    if let Some(s) = &state.acpi_pm {
        push_entry(&mut body, TAG_ACPI_PM, 0, &s.encode());
    }
    if let Some(s) = &state.pci {
        push_entry(&mut body, TAG_PCI, 0, &s.encode());
    }
    for (slot, s) in &state.virtio {
        push_entry(&mut body, TAG_VIRTIO_MMIO, *slot, &s.encode());
    }
    if let Some(b) = &state.syscall_bridge {
        push_entry(&mut body, TAG_SYSCALL_BRIDGE, 0, &b.encode());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(DEVICE_STATE_MAGIC);
    out.extend_from_slice(&DEVICE_STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parse and check a whole section (hostile input).
pub fn parse(bytes: &[u8]) -> Result<DeviceState, DeviceStateError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != DEVICE_STATE_MAGIC {
        return Err(DeviceStateError::Header);
    }
    let mut header = Cursor::new(&bytes[8..HEADER_LEN]);
    let version = header.u32();
    if version != DEVICE_STATE_VERSION {
        return Err(DeviceStateError::Version(version));
    }
    let declared = header.u32() as usize;
    let body = &bytes[HEADER_LEN..];
    if body.len() != declared {
        return Err(DeviceStateError::BodyLength {
            declared,
            present: body.len(),
        });
    }
    let mut state = DeviceState::default();
    let mut at = 0usize;
    while at < body.len() {
        let header = body
            .get(at..at + ENTRY_HEADER_LEN)
            .ok_or(DeviceStateError::Truncated(at))?;
        let mut h = Cursor::new(header);
        let (tag, instance, len) = (h.u16(), h.u16(), h.u32() as usize);
        let start = at + ENTRY_HEADER_LEN;
        let data = start
            .checked_add(len)
            .and_then(|end| body.get(start..end))
            .ok_or(DeviceStateError::Truncated(at))?;
        at = start + len;
        let duplicate = || DeviceStateError::Duplicate { tag, instance };
        let single = |instance: u16| {
            if instance == 0 {
                Ok(())
            } else {
                Err(DeviceStateError::Instance { tag, instance })
            }
        };
        match tag {
            TAG_UART => {
                single(instance)?;
                if state.uart.is_some() {
                    return Err(duplicate());
                }
                state.uart = Some(crate::serial::UartState::decode(data)?);
            }
            TAG_I8042 => {
                single(instance)?;
                if state.i8042.is_some() {
                    return Err(duplicate());
                }
                state.i8042 = Some(crate::i8042::I8042State::decode(data)?);
            }
            TAG_ACPI_PM => {
                single(instance)?;
                if state.acpi_pm.is_some() {
                    return Err(duplicate());
                }
                state.acpi_pm = Some(crate::acpi_pm::AcpiPmState::decode(data)?);
            }
            TAG_PCI => {
                single(instance)?;
                if state.pci.is_some() {
                    return Err(duplicate());
                }
                state.pci = Some(crate::pci::PciState::decode(data)?);
            }
            TAG_VIRTIO_MMIO => {
                if instance >= MAX_VIRTIO_SLOTS {
                    return Err(DeviceStateError::Instance { tag, instance });
                }
                if state.virtio.iter().any(|(slot, _)| *slot == instance) {
                    return Err(duplicate());
                }
                let s = crate::virtio_mmio::VirtioMmioState::decode(data)?;
                state.virtio.push((instance, s));
            }
            TAG_SYSCALL_BRIDGE => {
                single(instance)?;
                if state.syscall_bridge.is_some() {
                    return Err(duplicate());
                }
                state.syscall_bridge = Some(BridgeBreakpoint::decode(data)?);
            }
            other => return Err(DeviceStateError::UnknownTag(other)),
        }
    }
    state.virtio.sort_by_key(|(slot, _)| *slot);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_pm::AcpiPmState;
    use crate::serial::UartState;

    fn sample() -> DeviceState {
        DeviceState {
            uart: Some(UartState {
                registers: [12, 0, 1, 1, 3, 0x60, 8, 0xb0, 0],
                fifo: b"ls\n".to_vec(),
            }),
            i8042: Some(crate::i8042::I8042::new(None).save_state()),
            acpi_pm: Some(AcpiPmState {
                pm1_enable: 0x100,
                pm1_control: 1,
                gpe0_enable: 0,
                timer: 12345,
            }),
            pci: Some(crate::pci::PciBus::new().save_state()),
            virtio: Vec::new(),
            syscall_bridge: Some(BridgeBreakpoint {
                handler: 0xffff_ffff_81c0_1230,
                gpa: 0x1c0_1230,
                original: 0xf3,
            }),
        }
    }

    #[test]
    fn sections_round_trip() {
        let state = sample();
        assert_eq!(parse(&encode(&state)).unwrap(), state);
        assert_eq!(
            parse(&encode(&DeviceState::default())).unwrap(),
            DeviceState::default()
        );
    }

    #[test]
    fn broken_sections_are_refused() {
        let good = encode(&sample());
        // Every truncation.
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "truncated to {len}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse(&extra).is_err(), "a byte past the body");
        let mut version = good.clone();
        version[8] = 2;
        assert_eq!(parse(&version), Err(DeviceStateError::Version(2)));
        // An unknown tag, a second UART, an instance past the slots.
        let with = |tag: u16, instance: u16, body: &[u8]| {
            let mut s = good.clone();
            push_entry(&mut s, tag, instance, body);
            let len = (s.len() - HEADER_LEN) as u32;
            s[12..16].copy_from_slice(&len.to_le_bytes());
            parse(&s)
        };
        assert_eq!(with(99, 0, &[]), Err(DeviceStateError::UnknownTag(99)));
        let uart = sample().uart.unwrap().encode();
        assert!(matches!(
            with(TAG_UART, 0, &uart),
            Err(DeviceStateError::Duplicate { .. })
        ));
        assert!(matches!(
            with(TAG_VIRTIO_MMIO, 8, &[]),
            Err(DeviceStateError::Instance { .. })
        ));
        // A breakpoint in user space, or one that displaced an int3.
        let mut state = sample();
        state.syscall_bridge = Some(BridgeBreakpoint {
            handler: 0x40_1000,
            gpa: 0,
            original: 0x90,
        });
        assert!(parse(&encode(&state)).is_err());
        state.syscall_bridge = Some(BridgeBreakpoint {
            handler: 0xffff_ffff_8100_0000,
            gpa: 0,
            original: 0xcc,
        });
        assert!(parse(&encode(&state)).is_err());
        // An entry whose length runs past the body.
        let mut long = good.clone();
        long[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&long).is_err());
    }
}
