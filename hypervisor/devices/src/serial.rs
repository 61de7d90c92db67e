//! The 16550A UART at 0x3f8 (COM1), from vm-superio, with its interrupt on
//! an irqfd and its output sent to whatever the console is.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, PlatformRequest};

/// COM1's port base and its ISA interrupt line.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// Eight registers.
pub const UART_WINDOW: u64 = 8;

/// An interrupt line driven through an irqfd: each trigger is one edge.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type ConsoleOut = Box<dyn Write + Send>;

pub struct Uart {
    inner: Serial<IrqLine, NoEvents, ConsoleOut>,
}

impl Uart {
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Uart {
            inner: Serial::new(IrqLine(irq), out),
        }
    }

    /// Queue keyboard input for the guest; returns how many bytes fit in
    /// the receive FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.inner.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        self.inner.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
    }
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        if let Some(&value) = data.first() {
            // An output error (console gone) drops the byte, as a UART
            // with nothing on its line would.
            if let Err(e) = self.inner.write(offset as u8, value) {
                tracing::trace!("UART write: {e:?}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_receives_and_raises_its_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut uart = Uart::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            uart.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        uart.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(uart.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8; 1];
        uart.read(5, &mut b);
        assert_eq!(b[0] & 1, 1, "LSR data ready");
        uart.read(0, &mut b);
        assert_eq!(b[0], b'o');
        // Out-of-range offsets and wide accesses are harmless.
        let mut wide = [0u8; 4];
        uart.read(200, &mut wide);
        uart.write(77, &[1, 2, 3]);
    }
}
