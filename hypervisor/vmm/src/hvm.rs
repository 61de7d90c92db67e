//! The emulated platform of an HVM domain: the legacy devices on the port
//! bus, their interrupt lines, and where the serial line goes.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VmFd;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use kxen_devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_WINDOW};
use kxen_devices::cmos::{Cmos, CMOS_BASE, CMOS_WINDOW};
use kxen_devices::i8042::{I8042, I8042_BASE, I8042_KBD_IRQ, I8042_WINDOW};
use kxen_devices::pci::{PciBus, PCI_CONFIG_BASE, PCI_CONFIG_WINDOW};
use kxen_devices::serial::{ConsoleOut, IrqLine, Uart, COM1_BASE, COM1_IRQ, UART_WINDOW};
use kxen_devices::virtio_mmio::DeviceType;
use kxen_devices::{Bus, BusDevice};

use crate::error::VmError;
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
    /// kxend's end of the serial line, handed to every kxend that asks
    /// (a restarted kxend picks the line up again).
    dom0_serial: Option<UnixStream>,
    /// Where the VMM reads keystrokes for the UART from.
    input: Option<SerialInput>,
    stopping: AtomicBool,
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
        let uart = Arc::new(Mutex::new(Uart::new(irq_line(vm, COM1_IRQ)?, out)));
        let keyboard = I8042::new(Some(IrqLine(irq_line(vm, I8042_KBD_IRQ)?)));
        let mut pio = Bus::new();
        let add = |bus: &mut Bus, dev: Arc<Mutex<dyn BusDevice>>, base, len| {
            bus.insert(dev, base, len)
                .map_err(|e| VmError::Setup(format!("device bus: {e}")))
        };
        add(&mut pio, uart.clone(), COM1_BASE, UART_WINDOW)?;
        add(
            &mut pio,
            Arc::new(Mutex::new(keyboard)),
            I8042_BASE,
            I8042_WINDOW,
        )?;
        add(
            &mut pio,
            Arc::new(Mutex::new(Cmos::new(ram_below_4g, ram_above_4g))),
            CMOS_BASE,
            CMOS_WINDOW,
        )?;
        add(
            &mut pio,
            Arc::new(Mutex::new(AcpiPm::new())),
            ACPI_PM_BASE,
            ACPI_PM_WINDOW,
        )?;
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
        add(
            &mut pio,
            Arc::new(Mutex::new(pci)),
            PCI_CONFIG_BASE,
            PCI_CONFIG_WINDOW,
        )?;
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
            dom0_serial,
            input,
            stopping: AtomicBool::new(false),
            serial_dropped: dropped,
        })
    }

    /// kxend's end of the serial line, to pass over the control socket.
    pub fn dom0_serial_fd(&self) -> Option<std::os::fd::RawFd> {
        self.dom0_serial.as_ref().map(|s| s.as_raw_fd())
    }

    /// Feed keystrokes to the UART until the domain stops.
    pub fn start_input(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let me = self.clone();
        let source = match &self.input {
            Some(SerialInput::Stdin) => None,
            Some(SerialInput::Socket(s)) => Some(s.try_clone().ok()?),
            None => return None,
        };
        let handle = std::thread::Builder::new()
            .name("serial-input".into())
            .spawn(move || {
                crate::seccomp::install(crate::seccomp::ThreadClass::Service);
                match source {
                    Some(socket) => me.socket_input(socket),
                    None => me.stdin_input(),
                }
            });
        match handle {
            Ok(h) => Some(h),
            Err(e) => {
                warn!("serial input thread: {e}");
                None
            }
        }
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
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(v) = &self.virtio {
            v.stop();
        }
        let dropped = self.serial_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            info!(dropped, "serial output bytes dropped (reader too slow)");
        }
    }

    /// Offer `pending` to the UART until it is all taken or we stop.
    fn deliver(&self, mut pending: &[u8]) {
        while !pending.is_empty() && !self.stopping.load(Ordering::SeqCst) {
            let n = self
                .uart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(pending);
            pending = &pending[n..];
            if !pending.is_empty() {
                // The receive FIFO is full until the guest reads it.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    fn socket_input(&self, mut socket: UnixStream) {
        let mut buf = [0u8; 256];
        while !self.stopping.load(Ordering::SeqCst) {
            {
                // SAFETY: the socket outlives this borrow.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
                let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                    continue;
                }
            }
            match socket.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.deliver(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!("serial input: {e}");
                    return;
                }
            }
        }
    }

    fn stdin_input(&self) {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            self.deliver(&buf[..n]);
        }
    }
}
