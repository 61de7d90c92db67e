//! Address decoding for port I/O and MMIO exits.

use std::sync::{Arc, Mutex};

/// What a device write can ask of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    /// Reset the machine (i8042 pulse, reset register).
    Reset,
    /// Power the machine off.
    PowerOff,
}

/// One device's register window.
pub trait BusDevice: Send {
    /// Read `data.len()` bytes at `offset` from the window's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Write `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    #[error("empty window at {0:#x}")]
    Empty(u64),
}

struct Window {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping windows, looked up by address.
#[derive(Default)]
pub struct Bus {
    windows: Vec<Window>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if self
            .windows
            .iter()
            .any(|w| base < w.base + w.len && w.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.windows.push(Window { base, len, device });
        self.windows.sort_by_key(|w| w.base);
        Ok(())
    }

    /// The device whose window holds all of `addr..addr+size`, and the
    /// offset into it. An access straddling a window's end matches nothing.
    fn find(&self, addr: u64, size: usize) -> Option<(&Window, u64)> {
        let i = self.windows.partition_point(|w| w.base <= addr);
        let w = self.windows.get(i.checked_sub(1)?)?;
        let offset = addr - w.base;
        (offset.checked_add(size as u64)? <= w.len).then_some((w, offset))
    }

    /// Serve a read; false if no device claims it (the caller decides
    /// what a floating bus reads as).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((w, offset)) => {
                w.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Serve a write; `None` in the outer option if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<Option<PlatformRequest>> {
        let (w, offset) = self.find(addr, data.len())?;
        Some(
            w.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(offset, data),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<PlatformRequest> {
            self.0 = data[0];
            (data[0] == 0xfe).then_some(PlatformRequest::Reset)
        }
    }

    #[test]
    fn routes_by_window_and_refuses_overlaps_and_straddles() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0x10))), 0x60, 1)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(0x20))), 0x3f8, 8)
            .unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(0))), u64::MAX, 2)
            .is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 0x22);
        assert!(!bus.read(0x61, &mut b));
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w), "straddles the window end");
        assert_eq!(bus.write(0x60, &[0xfe]), Some(Some(PlatformRequest::Reset)));
        assert_eq!(bus.write(0x64, &[0xfe]), None);
    }
}
