//! The 16550A UART at 0x3f8 (COM1), from vm-superio, with its interrupt on
//! an irqfd and its output sent to whatever the console is.
//!
//! Input that does not fit the receive FIFO waits in the VMM: the UART
//! tells it, through [`InputRoom`], when the guest has emptied the FIFO,
//! so nobody polls for room.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, PlatformRequest};
use crate::state::{exact, DeviceStateError};

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

/// Tells the input's owner that the guest emptied the receive FIFO: an
/// eventfd written when the guest reads the last queued byte, only while
/// the owner holds input that did not fit ([`InputRoom::want`]), so a
/// guest reading keystrokes one by one costs no extra wake-ups.
pub struct InputRoom {
    fd: EventFd,
    wanted: AtomicBool,
}

impl InputRoom {
    pub fn new() -> std::io::Result<Self> {
        Ok(InputRoom {
            fd: EventFd::new(libc::EFD_NONBLOCK)?,
            wanted: AtomicBool::new(false),
        })
    }

    /// The eventfd to watch.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// Ask for one signal when the FIFO is next emptied. Offer the input
    /// again after asking: the guest may have emptied it just before.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::SeqCst);
    }
}

/// The UART's events: only "receive FIFO empty" matters, and only to an
/// [`InputRoom`].
#[derive(Default)]
struct UartEvents(Option<Arc<InputRoom>>);

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(room) = &self.0 {
            if room.wanted.swap(false, Ordering::SeqCst) {
                if let Err(e) = room.fd.write(1) {
                    tracing::warn!("UART input room eventfd: {e}");
                }
            }
        }
    }
}

pub struct Uart {
    inner: Serial<IrqLine, UartEvents, ConsoleOut>,
}

impl Uart {
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Uart {
            inner: Serial::with_events(IrqLine(irq), UartEvents::default(), out),
        }
    }

    /// A UART that signals `room` when the guest empties its receive FIFO.
    pub fn with_input_room(irq: EventFd, out: ConsoleOut, room: Arc<InputRoom>) -> Self {
        Uart {
            inner: Serial::with_events(IrqLine(irq), UartEvents(Some(room)), out),
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

/// The receive FIFO's size (vm-superio's 16550A).
pub const UART_FIFO: usize = 64;
/// The saved UART's length: nine registers, the FIFO's fill and the FIFO.
const UART_STATE_LEN: usize = 9 + 1 + UART_FIFO;

/// The UART's registers and the bytes waiting in its receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UartState {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// At most [`UART_FIFO`] bytes.
    pub fifo: Vec<u8>,
}

impl UartState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(UART_STATE_LEN);
        out.extend_from_slice(&self.registers);
        out.push(self.fifo.len() as u8);
        let mut fifo = [0u8; UART_FIFO];
        fifo[..self.fifo.len()].copy_from_slice(&self.fifo);
        out.extend_from_slice(&fifo);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DeviceStateError> {
        let mut c = exact("UART", bytes, UART_STATE_LEN)?;
        let registers = c.bytes::<9>();
        let len = c.u8() as usize;
        let fifo = c.bytes::<UART_FIFO>();
        if len > UART_FIFO {
            return Err(DeviceStateError::field(
                "UART",
                format!("{len} bytes in a {UART_FIFO}-byte FIFO"),
            ));
        }
        if fifo[len..].iter().any(|&b| b != 0) {
            return Err(DeviceStateError::field(
                "UART",
                "bytes past the FIFO's fill",
            ));
        }
        // IER has four defined bits; the others read as zero on a 16550A.
        if registers[2] & 0xf0 != 0 {
            return Err(DeviceStateError::field(
                "UART",
                format!("IER {:#x}", registers[2]),
            ));
        }
        Ok(UartState {
            registers,
            fifo: fifo[..len].to_vec(),
        })
    }
}

impl Uart {
    /// The registers and the receive FIFO, for a save.
    pub fn save_state(&self) -> UartState {
        let s = self.inner.state();
        UartState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            fifo: s.in_buffer,
        }
    }

    /// Take `state` (checked by [`UartState::decode`]), keeping the
    /// interrupt line, the console and the input-room signal; a pending
    /// interrupt is raised again.
    pub fn load_state(&mut self, state: &UartState) -> Result<(), DeviceStateError> {
        if state.fifo.len() > UART_FIFO {
            return Err(DeviceStateError::field("UART", "FIFO overflow"));
        }
        let r = state.registers;
        let serial_state = SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: state.fifo.clone(),
        };
        let irq = self
            .inner
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| DeviceStateError::field("UART", format!("interrupt line: {e}")))?;
        let events = UartEvents(self.inner.events().0.clone());
        let out: ConsoleOut = std::mem::replace(self.inner.writer_mut(), Box::new(std::io::sink()));
        match Serial::from_state(&serial_state, IrqLine(irq), events, out) {
            Ok(serial) => {
                self.inner = serial;
                Ok(())
            }
            Err(e) => Err(DeviceStateError::field("UART", format!("{e}"))),
        }
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

    #[test]
    fn signals_room_once_the_guest_empties_the_fifo_and_only_when_asked() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let room = Arc::new(InputRoom::new().unwrap());
        let mut uart = Uart::with_input_room(irq, Box::new(std::io::sink()), room.clone());
        let mut byte = [0u8; 1];
        // Nobody asked: emptying the FIFO signals nothing.
        assert_eq!(uart.enqueue_input(b"a"), 1);
        uart.read(0, &mut byte);
        assert!(room.fd().read().is_err(), "no signal unasked");
        // Fill the FIFO past its size; the rest waits for room.
        let input = [b'x'; 100];
        let taken = uart.enqueue_input(&input);
        assert!(taken < input.len(), "the FIFO holds less than 100 bytes");
        room.want();
        for _ in 0..taken - 1 {
            uart.read(0, &mut byte);
        }
        assert!(room.fd().read().is_err(), "a byte is still queued");
        uart.read(0, &mut byte);
        assert_eq!(room.fd().read().unwrap(), 1, "emptied: one signal");
        // Asked once, signalled once.
        assert_eq!(uart.enqueue_input(b"b"), 1);
        uart.read(0, &mut byte);
        assert!(room.fd().read().is_err(), "one signal per request");
    }

    #[test]
    fn state_round_trips_and_keeps_the_line_and_console() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut uart = Uart::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        uart.write(1, &[0x01]); // IER: received-data interrupt
        uart.write(7, &[0x5a]); // scratch
        assert_eq!(uart.enqueue_input(b"abc"), 3);
        let saved = uart.save_state();
        let bytes = saved.encode();
        assert_eq!(UartState::decode(&bytes).unwrap(), saved);

        let irq2 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink2 = Sink::default();
        let mut other = Uart::new(irq2.try_clone().unwrap(), Box::new(sink2.clone()));
        other.load_state(&saved).unwrap();
        assert!(
            irq2.read().unwrap() >= 1,
            "pending receive interrupt raised"
        );
        let mut b = [0u8; 1];
        other.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        other.read(0, &mut b);
        assert_eq!(b[0], b'a');
        other.write(0, b"z");
        assert_eq!(
            &*sink2.0.lock().unwrap(),
            b"z",
            "output still goes to its console"
        );

        let mut bad = bytes.clone();
        bad[9] = 65;
        assert!(UartState::decode(&bad).is_err(), "FIFO fill past 64");
        let mut bad = bytes.clone();
        bad[9] = 1;
        assert!(UartState::decode(&bad).is_err(), "bytes past the fill");
        assert!(UartState::decode(&bytes[1..]).is_err(), "short");
    }
}
