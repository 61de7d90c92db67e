//! The emulated platform of an HVM domain: the legacy devices on the port
//! bus, their interrupt lines, and where the serial line goes.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use kxen_devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_WINDOW};
use kxen_devices::cmos::{Cmos, CMOS_BASE, CMOS_WINDOW};
use kxen_devices::i8042::{I8042, I8042_BASE, I8042_KBD_IRQ, I8042_WINDOW};
use kxen_devices::pci::{PciBus, PCI_CONFIG_BASE, PCI_CONFIG_WINDOW};
use kxen_devices::serial::{
    ConsoleOut, InputRoom, IrqLine, Uart, COM1_BASE, COM1_IRQ, UART_WINDOW,
};
use kxen_devices::state::{DeviceState, DeviceStateError};
use kxen_devices::virtio_mmio::DeviceType;
use kxen_devices::{Bus, BusDevice};

use crate::error::VmError;
use crate::event_loop::{drain, watch};
use crate::virtio::{VirtioDevices, VIRTIO_GSI_BASE};
use kxen_vmm_api::launch::SerialMode as ConsoleMode;

/// HVM-only settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvmConfig {
    /// Where COM1 goes.
    pub serial: ConsoleMode,
    /// Show the Xen CPUID leaves and the Xen platform PCI device, for
    /// PVHVM guests that switch to PV drivers.
    pub xen_platform_pci: bool,
    /// virtio-mmio devices, slot by slot (`--virtio`), served by kxend.
    pub virtio: Vec<DeviceType>,
}

/// The devices of one HVM domain.
pub struct HvmDevices {
    pub pio: Bus,
    pub mmio: Bus,
    /// The virtio-mmio slots, when `--virtio` gave any.
    pub virtio: Option<Arc<VirtioDevices>>,
    uart: Arc<Mutex<Uart>>,
    /// The CMOS/RTC, kept besides its place on the port bus so that a save
    /// can read its clock and a restore give it one (the RTC record).
    pub cmos: Arc<Mutex<Cmos>>,
    /// The other legacy devices, kept for a save and a restore.
    keyboard: Arc<Mutex<I8042>>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    pci: Arc<Mutex<PciBus>>,
    /// kxend's end of the serial line, handed to every kxend that asks
    /// (a restarted kxend picks the line up again).
    dom0_serial: Option<UnixStream>,
    /// Where the VMM reads keystrokes for the UART from.
    input: Option<SerialInput>,
    /// Signalled when the guest empties the UART's receive FIFO.
    input_room: Arc<InputRoom>,
    /// Serial output bytes dropped because the reader was not keeping up.
    pub serial_dropped: Arc<AtomicU64>,
}

enum SerialInput {
    Stdin,
    Socket(UnixStream),
}

/// Console output that never blocks a vCPU: a full socket drops bytes.
struct NonBlockingLine {
    stream: UnixStream,
    dropped: Arc<AtomicU64>,
}

impl Write for NonBlockingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stream.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.dropped.fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(buf.len())
            }
            // kxend went away: the line is dead, not the domain.
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// stdout, flushed after every byte the guest sends.
struct Unbuffered<W: Write>(W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn irq_line(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::Setup(format!("eventfd: {e}")))?;
    vm.register_irqfd(&evt, gsi)?;
    Ok(evt)
}

impl HvmDevices {
    pub fn build(
        vm: &Arc<VmFd>,
        cfg: &HvmConfig,
        ram_below_4g: u64,
        ram_above_4g: u64,
    ) -> Result<Self, VmError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut dom0_serial = None;
        let (out, input): (ConsoleOut, Option<SerialInput>) = match &cfg.serial {
            ConsoleMode::Stdio => (
                Box::new(Unbuffered(std::io::stdout())),
                Some(SerialInput::Stdin),
            ),
            ConsoleMode::Null => (Box::new(std::io::sink()), None),
            ConsoleMode::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| VmError::Setup(format!("serial {}: {e}", path.display())))?;
                (Box::new(f), None)
            }
            ConsoleMode::Dom0 => {
                let (ours, theirs) = UnixStream::pair()
                    .map_err(|e| VmError::Setup(format!("serial socketpair: {e}")))?;
                ours.set_nonblocking(true)
                    .map_err(|e| VmError::Setup(format!("serial socket: {e}")))?;
                let reader = ours
                    .try_clone()
                    .map_err(|e| VmError::Setup(format!("serial socket: {e}")))?;
                dom0_serial = Some(theirs);
                (
                    Box::new(NonBlockingLine {
                        stream: ours,
                        dropped: dropped.clone(),
                    }),
                    Some(SerialInput::Socket(reader)),
                )
            }
        };
        let input_room =
            Arc::new(InputRoom::new().map_err(|e| VmError::Setup(format!("eventfd: {e}")))?);
        let uart = Arc::new(Mutex::new(Uart::with_input_room(
            irq_line(vm, COM1_IRQ)?,
            out,
            input_room.clone(),
        )));
        let keyboard = Arc::new(Mutex::new(I8042::new(Some(IrqLine(irq_line(
            vm,
            I8042_KBD_IRQ,
        )?)))));
        let mut pio = Bus::new();
        let add = |bus: &mut Bus, dev: Arc<Mutex<dyn BusDevice>>, base, len| {
            bus.insert(dev, base, len)
                .map_err(|e| VmError::Setup(format!("device bus: {e}")))
        };
        add(&mut pio, uart.clone(), COM1_BASE, UART_WINDOW)?;
        add(&mut pio, keyboard.clone(), I8042_BASE, I8042_WINDOW)?;
        let cmos = Arc::new(Mutex::new(Cmos::new(ram_below_4g, ram_above_4g)));
        add(&mut pio, cmos.clone(), CMOS_BASE, CMOS_WINDOW)?;
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new()));
        add(&mut pio, acpi_pm.clone(), ACPI_PM_BASE, ACPI_PM_WINDOW)?;
        let mut pci = PciBus::new();
        if cfg.xen_platform_pci {
            use kxen_devices::xen_platform::*;
            pci.add(PLATFORM_PCI_DEVICE, platform_function());
            add(
                &mut pio,
                Arc::new(Mutex::new(UnplugPorts::new())),
                UNPLUG_BASE,
                UNPLUG_WINDOW,
            )?;
        }
        let pci = Arc::new(Mutex::new(pci));
        add(&mut pio, pci.clone(), PCI_CONFIG_BASE, PCI_CONFIG_WINDOW)?;
        let mut mmio = Bus::new();
        let virtio = if cfg.virtio.is_empty() {
            None
        } else {
            let lines = (0..cfg.virtio.len() as u32)
                .map(|i| irq_line(vm, VIRTIO_GSI_BASE + i))
                .collect::<Result<Vec<_>, _>>()?;
            let devices = VirtioDevices::new(&cfg.virtio, lines, Some(vm.clone()))
                .map_err(|e| VmError::Setup(e.to_string()))?;
            devices
                .add_to_bus(&mut mmio)
                .map_err(|e| VmError::Setup(e.to_string()))?;
            Some(Arc::new(devices))
        };
        Ok(HvmDevices {
            pio,
            mmio,
            virtio,
            uart,
            cmos,
            keyboard,
            acpi_pm,
            pci,
            dom0_serial,
            input,
            input_room,
            serial_dropped: dropped,
        })
    }

    /// The device models' state for a save (the CMOS clock apart: it is
    /// Xen's RTC record). The virtio queues' positions are left at zero
    /// for the caller, who reads them from guest memory.
    pub fn save_devices(&self) -> DeviceState {
        DeviceState {
            uart: Some(lock(&self.uart).save_state()),
            i8042: Some(lock(&self.keyboard).save_state()),
            acpi_pm: Some(lock(&self.acpi_pm).save_state()),
            pci: Some(lock(&self.pci).save_state()),
            virtio: self
                .virtio
                .iter()
                .flat_map(|v| v.slots().iter().enumerate())
                .map(|(i, slot)| (i as u16, slot.device().save_state()))
                .collect(),
            // The bridge is not a device: the saver adds its breakpoint.
            syscall_bridge: None,
        }
    }

    /// Check `state` against these devices: every device there, virtio
    /// slots of the same kinds, PCI functions the same (nothing changes).
    pub fn check_devices(&self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let missing = |what: &'static str| DeviceStateError::field(what, "not in the image");
        state.uart.as_ref().ok_or_else(|| missing("UART"))?;
        state.i8042.as_ref().ok_or_else(|| missing("i8042"))?;
        state.acpi_pm.as_ref().ok_or_else(|| missing("ACPI PM"))?;
        let pci = state.pci.as_ref().ok_or_else(|| missing("PCI"))?;
        // The bus checks itself all-or-nothing; try it on a copy's worth:
        // load into a scratch bus with the same functions.
        let mut scratch = lock(&self.pci).scratch_copy();
        scratch.load_state(pci)?;
        let slots = self.virtio.as_ref().map_or(&[][..], |v| v.slots());
        if state.virtio.len() != slots.len() {
            return Err(DeviceStateError::field(
                "virtio-mmio",
                format!(
                    "{} slots in the image, {} in this domain",
                    state.virtio.len(),
                    slots.len()
                ),
            ));
        }
        for ((index, saved), slot) in state.virtio.iter().zip(slots) {
            if usize::from(*index) >= slots.len() || u32::from(saved.device_id) != slot.kind.id() {
                return Err(DeviceStateError::field(
                    "virtio-mmio",
                    format!(
                        "slot {index}: device ID {} for a virtio-{} slot",
                        saved.device_id,
                        slot.kind.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Load `state`, checked by [`Self::check_devices`], into the devices
    /// of a domain that has not run.
    pub fn load_devices(&self, state: &DeviceState) -> Result<(), DeviceStateError> {
        self.check_devices(state)?;
        if let Some(pci) = &state.pci {
            lock(&self.pci).load_state(pci)?;
        }
        if let Some(s) = &state.i8042 {
            lock(&self.keyboard).load_state(s);
        }
        if let Some(s) = &state.acpi_pm {
            lock(&self.acpi_pm).load_state(s);
        }
        if let (Some(v), true) = (&self.virtio, !state.virtio.is_empty()) {
            for (index, saved) in &state.virtio {
                if let Some(slot) = v.slots().get(usize::from(*index)) {
                    slot.device().load_state(saved)?;
                }
            }
        }
        if let Some(s) = &state.uart {
            lock(&self.uart).load_state(s)?;
        }
        Ok(())
    }

    /// kxend's end of the serial line, to pass over the control socket.
    pub fn dom0_serial_fd(&self) -> Option<std::os::fd::RawFd> {
        self.dom0_serial.as_ref().map(|s| s.as_raw_fd())
    }

    /// The event loop's feeder of keystrokes into the UART, if the serial
    /// line has an input.
    pub fn serial_input(&self) -> Result<Option<SerialInputFeeder>, VmError> {
        let source = match &self.input {
            Some(SerialInput::Stdin) => InputSource::Stdin,
            Some(SerialInput::Socket(s)) => InputSource::Socket(
                s.try_clone()
                    .map_err(|e| VmError::Setup(format!("serial socket: {e}")))?,
            ),
            None => return Ok(None),
        };
        Ok(Some(SerialInputFeeder {
            uart: self.uart.clone(),
            room: self.input_room.clone(),
            source,
            pending: Vec::new(),
            watching_input: false,
        }))
    }

    /// Start the virtio interrupt thread, if there are virtio devices.
    pub fn start_virtio(&self) -> Result<Option<JoinHandle<()>>, VmError> {
        match &self.virtio {
            Some(v) => v
                .start()
                .map(Some)
                .map_err(|e| VmError::Setup(format!("virtio interrupt thread: {e}"))),
            None => Ok(None),
        }
    }

    pub fn stop(&self) {
        if let Some(v) = &self.virtio {
            v.stop();
        }
        let dropped = self.serial_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            info!(dropped, "serial output bytes dropped (reader too slow)");
        }
    }
}

/// Where keystrokes come from.
enum InputSource {
    Stdin,
    /// kxend's serial line (non-blocking).
    Socket(UnixStream),
}

impl InputSource {
    fn raw_fd(&self) -> RawFd {
        match self {
            InputSource::Stdin => libc::STDIN_FILENO,
            InputSource::Socket(s) => s.as_raw_fd(),
        }
    }

    /// One read after epoll said the input is readable. stdin stays
    /// blocking (it may be the user's terminal, shared with the shell), but
    /// a readable descriptor answers at once.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputSource::Stdin => std::io::stdin().lock().read(buf),
            InputSource::Socket(s) => s.read(buf),
        }
    }
}

const INPUT: u32 = 0;
const ROOM: u32 = 1;

/// Feeds the serial line's input into the UART from the event loop. While
/// the receive FIFO is full, the input is not watched (what did not fit
/// waits here) and the UART's [`InputRoom`] signal, sent when the guest
/// empties the FIFO, brings it back.
pub struct SerialInputFeeder {
    uart: Arc<Mutex<Uart>>,
    room: Arc<InputRoom>,
    source: InputSource,
    /// Read but not yet taken by the UART.
    pending: Vec<u8>,
    watching_input: bool,
}

impl SerialInputFeeder {
    fn input_events(&self) -> Events {
        Events::with_data_raw(self.source.raw_fd(), INPUT, EventSet::IN)
    }

    /// Hand the UART what it takes of `pending`. True when all is taken;
    /// otherwise the FIFO is full and the room signal is requested.
    fn offer(&mut self) -> bool {
        loop {
            let taken = self
                .uart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(&self.pending);
            self.pending.drain(..taken);
            if self.pending.is_empty() {
                return true;
            }
            self.room.want();
            // The guest may have emptied the FIFO between our offer and
            // the request, and then nobody would signal: offer once more.
            let taken = self
                .uart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(&self.pending);
            if taken == 0 {
                return false;
            }
            self.pending.drain(..taken);
        }
    }

    fn stop_watching_input(&mut self, ops: &mut EventOps) {
        if self.watching_input {
            if let Err(e) = ops.remove(self.input_events()) {
                warn!("serial input: cannot stop watching: {e}");
            }
            self.watching_input = false;
        }
    }

    fn watch_input(&mut self, ops: &mut EventOps) {
        if !self.watching_input {
            match ops.add(self.input_events()) {
                Ok(()) => self.watching_input = true,
                // stdin on a regular file or /dev/null cannot be watched;
                // such input has no keystrokes to wait for.
                Err(e) => debug!("serial input: not watched: {e}"),
            }
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match self.source.read(&mut buf) {
            Ok(0) => {
                debug!("serial input: end of input");
                self.stop_watching_input(ops);
            }
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                if !self.offer() {
                    debug!(waiting = self.pending.len(), "serial input: FIFO full");
                    self.stop_watching_input(ops);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("serial input: {e}");
                self.stop_watching_input(ops);
            }
        }
    }
}

impl MutEventSubscriber for SerialInputFeeder {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, self.room.fd(), ROOM, "the UART's receive FIFO");
        self.watch_input(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ROOM => {
                drain(self.room.fd());
                if self.offer() {
                    self.watch_input(ops);
                }
            }
            _ => self.read_input(ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};

    /// Read the UART's receive register until the FIFO is empty.
    fn guest_reads_all(uart: &Mutex<Uart>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut uart = uart.lock().unwrap();
        loop {
            let mut lsr = [0u8; 1];
            uart.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                return got;
            }
            let mut byte = [0u8; 1];
            uart.read(0, &mut byte);
            got.push(byte[0]);
        }
    }

    #[test]
    fn input_waits_while_the_fifo_is_full_and_flows_when_the_guest_reads() {
        let room = Arc::new(InputRoom::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let uart = Arc::new(Mutex::new(Uart::with_input_room(
            irq,
            Box::new(std::io::sink()),
            room.clone(),
        )));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let feeder = SerialInputFeeder {
            uart: uart.clone(),
            room,
            source: InputSource::Socket(ours),
            pending: Vec::new(),
            watching_input: false,
        };
        let mut manager = EventManager::<Arc<Mutex<SerialInputFeeder>>>::new().unwrap();
        let feeder = Arc::new(Mutex::new(feeder));
        manager.add_subscriber(feeder.clone());

        // More than the FIFO holds: the rest waits, the input is unwatched.
        let typed: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        theirs.write_all(&typed).unwrap();
        manager.run_with_timeout(1000).unwrap();
        assert!(!feeder.lock().unwrap().watching_input);
        let mut received = guest_reads_all(&uart);
        assert!(!received.is_empty() && received.len() < typed.len());

        // Each emptying brings the next batch, until all has arrived.
        while received.len() < typed.len() {
            assert!(
                manager.run_with_timeout(1000).unwrap() > 0,
                "no event after the guest emptied the FIFO ({} of {} bytes)",
                received.len(),
                typed.len()
            );
            received.extend(guest_reads_all(&uart));
        }
        assert_eq!(received, typed);
        assert!(feeder.lock().unwrap().watching_input, "input watched again");

        // Input that fits goes straight through.
        theirs.write_all(b"ok").unwrap();
        manager.run_with_timeout(1000).unwrap();
        assert_eq!(guest_reads_all(&uart), b"ok");
    }
}
