//! virtio-mmio devices of HVM domains: the transport here, the queues in
//! kxend (the protocol between them is `hypervisor/vmm/virtio-protocol.md`).
//!
//! `--virtio blk|net` gives slot i a register window at
//! [`VIRTIO_MMIO_BASE`] + i × 0x1000 and GSI 16 + i (an irqfd). The
//! register model is [`kxen_devices::virtio_mmio`]; this module attaches
//! it to kxend:
//!
//! * `virtio-attach` on the control socket makes a link (a stream
//!   socketpair, JSON lines), a call eventfd, an error eventfd and one kick
//!   eventfd per queue, and hands kxend its ends. The kicks are KVM
//!   ioeventfds on QueueNotify with the queue index as datamatch.
//! * The device's backend is the link: DRIVER_OK sends `activate`, a reset
//!   after it sends `reset`, each waiting up to [`LINK_TIMEOUT`] for
//!   kxend's `{"ok":true}`; a refusal, a timeout or a closed link make the
//!   device need a reset.
//! * The VMM's event loop ([`VirtioInterrupts`]) waits on every slot's
//!   call and error eventfds and on its link's hang-up: a call sets InterruptStatus bit 0 and
//!   pulses the irqfd; an error or a closed link sets DEVICE_NEEDS_RESET
//!   with a configuration interrupt.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{recv, send, MsgFlags};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use kxen_devices::virtio_mmio::{
    reg, AttachError, BackendError, DeviceType, QueueConfig, QueueIndices, VirtioBackend,
    VirtioInterrupt, VirtioMmio, INT_VRING, MAX_QUEUES, VIRTIO_MMIO_WINDOW,
};
use kxen_devices::{Bus, BusError};
use kxen_loader::acpi::VirtioMmioDevice;

use crate::event_loop::watch;

/// Slot 0's register window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Slot 0's GSI.
pub const VIRTIO_GSI_BASE: u32 = 16;
/// Most `--virtio` devices (GSIs 16..=23, the IOAPIC's last pins).
pub const MAX_SLOTS: usize = 8;
/// How long a vCPU waits for kxend's answer to `activate` or `reset`.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest reply line kxend may send.
const MAX_REPLY: usize = 4096;

/// Where slot `i` sits.
pub fn slot_base(i: usize) -> u64 {
    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_WINDOW
}

/// The DSDT entries for these slots.
pub fn acpi_devices(kinds: &[DeviceType]) -> Vec<VirtioMmioDevice> {
    (0..kinds.len())
        .map(|i| VirtioMmioDevice {
            base: slot_base(i) as u32,
            len: VIRTIO_MMIO_WINDOW as u32,
            gsi: VIRTIO_GSI_BASE + i as u32,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("no virtio slot {0}")]
    NoSlot(u32),
    #[error("slot {slot} is virtio-{kind}, not device id {device_id}")]
    WrongKind {
        slot: u32,
        kind: &'static str,
        device_id: u32,
    },
    #[error("{0}")]
    Attach(#[from] AttachError),
    #[error("at most {MAX_SLOTS} virtio devices")]
    TooMany,
    #[error("virtio: {0}")]
    Io(#[from] std::io::Error),
    #[error("virtio bus: {0}")]
    Bus(#[from] BusError),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link closed")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("kxend: {0}")]
    Refused(String),
    #[error("bad reply: {0}")]
    BadReply(String),
    #[error("link: {0}")]
    Io(std::io::Error),
}

/// A queue in the `activate` message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// A restored queue's saved positions: where the backend goes on
    /// (absent on a driver's activation, which starts at 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_avail: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_used: Option<u16>,
}

/// VMM → kxend link messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum LinkEvent {
    Activate {
        features: u64,
        queues: Vec<LinkQueue>,
    },
    Reset,
}

/// kxend's answer to each event.
#[derive(Debug, Deserialize)]
struct LinkReply {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// The VMM's end of the link.
struct Link {
    stream: UnixStream,
    buf: Vec<u8>,
    closed: Arc<AtomicBool>,
    timeout: Duration,
}

impl Link {
    /// Send `event` and wait for its reply.
    fn request(&mut self, event: &LinkEvent) -> Result<(), LinkError> {
        let result = self.exchange(event);
        if matches!(result, Err(LinkError::Closed | LinkError::Io(_))) {
            self.closed.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Send `event` without waiting for its reply: kxend only starts
    /// reading the link once it has the attach reply, which this send
    /// precedes. Its answer is dropped with the next request's stale
    /// replies; a refusal also comes as the error eventfd.
    fn post(&mut self, event: &LinkEvent) -> Result<(), LinkError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LinkError::Closed);
        }
        let result = self.send_line(event);
        if matches!(result, Err(LinkError::Closed | LinkError::Io(_))) {
            self.closed.store(true, Ordering::SeqCst);
        }
        result
    }

    fn send_line(&mut self, event: &LinkEvent) -> Result<(), LinkError> {
        let mut line = serde_json::to_vec(event).map_err(|e| LinkError::Io(e.into()))?;
        line.push(b'\n');
        let fd = self.stream.as_raw_fd();
        let mut sent = 0;
        while sent < line.len() {
            // MSG_NOSIGNAL: a closed peer is an error here, not SIGPIPE.
            match send(fd, &line[sent..], MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(LinkError::Closed)
                }
                Err(nix::errno::Errno::EAGAIN) => return Err(LinkError::Timeout(self.timeout)),
                Err(e) => return Err(LinkError::Io(e.into())),
            }
        }
        Ok(())
    }

    fn exchange(&mut self, event: &LinkEvent) -> Result<(), LinkError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LinkError::Closed);
        }
        self.drop_stale_replies()?;
        let deadline = Instant::now() + self.timeout;
        self.send_line(event)?;
        let line = self.read_line(deadline)?;
        let reply: LinkReply = serde_json::from_slice(&line).map_err(|e| {
            LinkError::BadReply(format!("{e}: {:?}", String::from_utf8_lossy(&line)))
        })?;
        if reply.ok {
            Ok(())
        } else {
            Err(LinkError::Refused(
                reply.error.unwrap_or_else(|| "no reason given".into()),
            ))
        }
    }

    /// Replies that arrived after their request timed out.
    fn drop_stale_replies(&mut self) -> Result<(), LinkError> {
        self.buf.clear();
        let mut scratch = [0u8; 512];
        loop {
            match recv(
                self.stream.as_raw_fd(),
                &mut scratch,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => debug!(bytes = n, "virtio link: dropped a late reply"),
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ECONNRESET) => return Err(LinkError::Closed),
                Err(e) => return Err(LinkError::Io(e.into())),
            }
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, LinkError> {
        let mut chunk = [0u8; 512];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(line);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(LinkError::BadReply("reply too long".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkError::Timeout(self.timeout));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(LinkError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(LinkError::Closed),
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
    }
}

/// One kxend attachment of a slot: the link and the eventfds.
struct Attachment {
    generation: u64,
    link: Mutex<Link>,
    link_fd: RawFd,
    link_closed: Arc<AtomicBool>,
    call: EventFd,
    error: EventFd,
    kicks: Vec<EventFd>,
    /// Which kicks KVM took as ioeventfds.
    registered: Vec<bool>,
}

/// The register model's backend: the link to kxend.
struct LinkBackend {
    slot: usize,
    attachment: Arc<Attachment>,
}

impl LinkBackend {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.attachment
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The link's description of `queues`, with the positions a restored
/// device goes on from (`indices`, queue for queue) or none for a fresh
/// activation.
fn link_queues(queues: &[QueueConfig], indices: Option<&[QueueIndices]>) -> Vec<LinkQueue> {
    queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let at = indices.and_then(|all| all.get(i));
            LinkQueue {
                index: q.index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                next_avail: at.map(|a| a.next_avail),
                next_used: at.map(|a| a.next_used),
            }
        })
        .collect()
}

impl VirtioBackend for LinkBackend {
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), BackendError> {
        let event = LinkEvent::Activate {
            features,
            queues: link_queues(queues, None),
        };
        info!(
            slot = self.slot,
            features,
            queues = queues.len(),
            "virtio activate"
        );
        self.link().request(&event).map_err(|e| {
            warn!(slot = self.slot, "virtio activate: {e}");
            BackendError(e.to_string())
        })
    }

    fn reset(&mut self) {
        debug!(slot = self.slot, "virtio reset");
        if let Err(e) = self.link().request(&LinkEvent::Reset) {
            warn!(slot = self.slot, "virtio reset: {e}");
        }
    }

    fn resume(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        indices: &[QueueIndices],
    ) -> Result<(), BackendError> {
        let event = LinkEvent::Activate {
            features,
            queues: link_queues(queues, Some(indices)),
        };
        info!(
            slot = self.slot,
            features,
            queues = queues.len(),
            "virtio resume of a restored device"
        );
        self.link().post(&event).map_err(|e| {
            warn!(slot = self.slot, "virtio resume: {e}");
            BackendError(e.to_string())
        })
    }

    fn notify(&mut self, queue: u16) {
        if let Some(kick) = self.attachment.kicks.get(queue as usize) {
            let _ = kick.write(1);
        }
    }
}

/// One slot: its device on the MMIO bus and what kxend attached.
pub struct VirtioSlot {
    pub kind: DeviceType,
    pub base: u64,
    pub device: Arc<Mutex<VirtioMmio>>,
    interrupt: Arc<VirtioInterrupt>,
    attached: Mutex<Option<Arc<Attachment>>>,
}

impl VirtioSlot {
    pub fn device(&self) -> MutexGuard<'_, VirtioMmio> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attachment(&self) -> MutexGuard<'_, Option<Arc<Attachment>>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An attach request, as the control op carries it.
pub use kxen_vmm_api::protocol::VirtioAttach as AttachRequest;

/// What kxend gets back: its end of the link, then the call, error and
/// kick eventfds, in [`AttachFds::fds`] order. Owned until sent.
pub struct AttachFds {
    pub link: UnixStream,
    pub call: EventFd,
    pub error: EventFd,
    pub kicks: Vec<EventFd>,
}

impl AttachFds {
    /// `[link, call, error, kick 0..N-1]`.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.link.as_raw_fd(),
            self.call.as_raw_fd(),
            self.error.as_raw_fd(),
        ];
        fds.extend(self.kicks.iter().map(|k| k.as_raw_fd()));
        fds
    }
}

/// Which of a slot's fds an epoll event is for.
const WHAT_CALL: u64 = 0;
const WHAT_ERROR: u64 = 1;
const WHAT_LINK: u64 = 2;
const TOKEN_STOP: u64 = u64::MAX;

fn token(generation: u64, slot: usize, what: u64) -> u64 {
    (generation << 8) | ((slot as u64) << 2) | what
}

fn untoken(token: u64) -> (u64, usize, u64) {
    (token >> 8, ((token >> 2) & 0x3f) as usize, token & 3)
}

/// Every virtio slot of a domain and their interrupt thread.
pub struct VirtioDevices {
    slots: Vec<VirtioSlot>,
    /// For ioeventfds; none in tests without KVM.
    vm: Option<Arc<VmFd>>,
    epoll: Epoll,
    generation: AtomicU64,
    stop: EventFd,
    timeout: Duration,
}

/// Borrow a raw fd for an epoll call.
fn borrow(fd: &impl AsRawFd) -> BorrowedFd<'_> {
    // SAFETY: the fd belongs to `fd`, which outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

impl VirtioDevices {
    /// Slots for `kinds`; `lines[i]` is slot i's interrupt (an irqfd on
    /// GSI 16+i in the VMM). `vm` registers the kick ioeventfds.
    pub fn new(
        kinds: &[DeviceType],
        lines: Vec<EventFd>,
        vm: Option<Arc<VmFd>>,
    ) -> Result<Self, VirtioError> {
        Self::with_timeout(kinds, lines, vm, LINK_TIMEOUT)
    }

    /// As [`VirtioDevices::new`], with another link reply timeout.
    pub fn with_timeout(
        kinds: &[DeviceType],
        lines: Vec<EventFd>,
        vm: Option<Arc<VmFd>>,
        timeout: Duration,
    ) -> Result<Self, VirtioError> {
        if kinds.len() > MAX_SLOTS || lines.len() != kinds.len() {
            return Err(VirtioError::TooMany);
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll
            .add(
                borrow(&stop),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_STOP),
            )
            .map_err(std::io::Error::from)?;
        let slots = kinds
            .iter()
            .zip(lines)
            .enumerate()
            .map(|(i, (&kind, line))| {
                let interrupt = Arc::new(VirtioInterrupt::new(move || {
                    let _ = line.write(1);
                }));
                VirtioSlot {
                    kind,
                    base: slot_base(i),
                    device: Arc::new(Mutex::new(VirtioMmio::new(kind, interrupt.clone()))),
                    interrupt,
                    attached: Mutex::new(None),
                }
            })
            .collect();
        Ok(VirtioDevices {
            slots,
            vm,
            epoll,
            generation: AtomicU64::new(0),
            stop,
            timeout,
        })
    }

    pub fn slots(&self) -> &[VirtioSlot] {
        &self.slots
    }

    /// Put every slot's window on `bus`.
    pub fn add_to_bus(&self, bus: &mut Bus) -> Result<(), VirtioError> {
        for slot in &self.slots {
            bus.insert(slot.device.clone(), slot.base, VIRTIO_MMIO_WINDOW)?;
        }
        Ok(())
    }

    /// Serve a `virtio-attach`: replace slot's backend with a new link and
    /// return kxend's fds.
    pub fn attach(&self, req: &AttachRequest) -> Result<AttachFds, VirtioError> {
        let index = req.slot as usize;
        let slot = self.slots.get(index).ok_or(VirtioError::NoSlot(req.slot))?;
        if req.device_id != slot.kind.id() {
            return Err(VirtioError::WrongKind {
                slot: req.slot,
                kind: slot.kind.name(),
                device_id: req.device_id,
            });
        }
        let queues = req.queues as usize;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(AttachError::Queues(queues).into());
        }
        if req.config.len() > kxen_devices::virtio_mmio::MAX_CONFIG {
            return Err(AttachError::ConfigTooLong(req.config.len()).into());
        }
        let (ours, theirs) = UnixStream::pair()?;
        let call = EventFd::new(EFD_NONBLOCK)?;
        let error = EventFd::new(EFD_NONBLOCK)?;
        let kicks = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let fds = AttachFds {
            link: theirs,
            call: call.try_clone()?,
            error: error.try_clone()?,
            kicks: kicks
                .iter()
                .map(|k| k.try_clone())
                .collect::<Result<_, _>>()?,
        };
        ours.set_write_timeout(Some(self.timeout))?;
        let link_closed = Arc::new(AtomicBool::new(false));
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;

        // One attach per slot at a time; the old attachment goes first.
        let mut attached = slot.attachment();
        if let Some(old) = attached.take() {
            self.forget(&old, slot.base);
        }
        let registered = kicks
            .iter()
            .enumerate()
            .map(|(q, kick)| self.register_kick(slot.base, q, kick))
            .collect();
        let attachment = Arc::new(Attachment {
            generation,
            link_fd: ours.as_raw_fd(),
            link: Mutex::new(Link {
                stream: ours,
                buf: Vec::new(),
                closed: link_closed.clone(),
                timeout: self.timeout,
            }),
            link_closed,
            call,
            error,
            kicks,
            registered,
        });
        let backend = LinkBackend {
            slot: index,
            attachment: attachment.clone(),
        };
        slot.device()
            .attach(Box::new(backend), req.device_features, &req.config, queues)?;
        let watch = [
            (attachment.call.as_raw_fd(), EpollFlags::EPOLLIN, WHAT_CALL),
            (
                attachment.error.as_raw_fd(),
                EpollFlags::EPOLLIN,
                WHAT_ERROR,
            ),
            (attachment.link_fd, EpollFlags::EPOLLRDHUP, WHAT_LINK),
        ];
        for (fd, flags, what) in watch {
            // SAFETY: the attachment owns `fd` and outlives its epoll
            // registration (forget() removes it before dropping).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            self.epoll
                .add(fd, EpollEvent::new(flags, token(generation, index, what)))
                .map_err(std::io::Error::from)?;
        }
        *attached = Some(attachment);
        info!(
            slot = index,
            kind = slot.kind.name(),
            queues,
            features = req.device_features,
            "virtio backend attached"
        );
        Ok(fds)
    }

    fn register_kick(&self, base: u64, queue: usize, kick: &EventFd) -> bool {
        let Some(vm) = &self.vm else {
            return false;
        };
        let addr = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
        match vm.register_ioevent(kick, &addr, queue as u32) {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    queue,
                    "virtio kick ioeventfd: {e}; QueueNotify goes through the VMM"
                );
                false
            }
        }
    }

    /// Stop watching and kicking through an attachment being replaced.
    fn forget(&self, old: &Attachment, base: u64) {
        for fd in [old.call.as_raw_fd(), old.error.as_raw_fd(), old.link_fd] {
            // SAFETY: `old` still owns the fd.
            let _ = self.epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) });
        }
        if let Some(vm) = &self.vm {
            let addr = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
            for (q, kick) in old.kicks.iter().enumerate() {
                if old.registered.get(q) == Some(&true) {
                    if let Err(e) = vm.unregister_ioevent(kick, &addr, q as u32) {
                        warn!(queue = q, "virtio kick ioeventfd removal: {e}");
                    }
                }
            }
        }
        old.link_closed.store(true, Ordering::SeqCst);
    }

    /// Serve the interrupts on a thread of its own (the event loop's
    /// [`VirtioInterrupts`] does this in the VMM), until [`Self::stop`].
    pub fn start(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("virtio-irq".into())
            .spawn(move || {
                crate::seccomp::install(crate::seccomp::ThreadClass::Service);
                while me.serve_ready(PollTimeout::NONE) {}
            })
    }

    /// End the interrupt thread.
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }

    /// Serve what is ready, waiting up to `timeout`; false once stopped.
    fn serve_ready(&self, timeout: PollTimeout) -> bool {
        let mut events = [EpollEvent::empty(); 32];
        let n = match self.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return true,
            Err(e) => {
                warn!("virtio interrupts: {e}");
                return false;
            }
        };
        for event in &events[..n] {
            if event.data() == TOKEN_STOP {
                return false;
            }
            self.handle_event(event.data());
        }
        true
    }

    fn handle_event(&self, token: u64) {
        let (generation, index, what) = untoken(token);
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let current = slot.attachment().clone();
        let Some(att) = current.filter(|a| a.generation == generation) else {
            return;
        };
        match what {
            WHAT_CALL => {
                if att.call.read().is_ok() {
                    slot.interrupt.raise(INT_VRING);
                }
            }
            WHAT_ERROR => {
                if att.error.read().is_ok() {
                    warn!(
                        slot = index,
                        "kxend stopped serving a malformed virtio device"
                    );
                    slot.device()
                        .backend_failed("kxend reported a malformed queue");
                }
            }
            _ => {
                // SAFETY: `att` owns the link fd.
                let _ = self
                    .epoll
                    .delete(unsafe { BorrowedFd::borrow_raw(att.link_fd) });
                att.link_closed.store(true, Ordering::SeqCst);
                info!(slot = index, "virtio link closed by kxend");
                slot.device().backend_failed("link closed");
            }
        }
    }
}

/// The virtio slots' interrupts in the event loop: their own epoll set
/// (attachments come and go under it) is one fd of the loop's.
pub struct VirtioInterrupts(pub Arc<VirtioDevices>);

impl MutEventSubscriber for VirtioInterrupts {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.0.epoll.0, 0, "the virtio interrupts");
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.serve_ready(PollTimeout::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    use kxen_devices::virtio_mmio::{status, INT_CONFIG, VIRTIO_F_VERSION_1};
    use kxen_devices::BusDevice;

    fn devices(kinds: &[DeviceType]) -> (Arc<VirtioDevices>, Vec<EventFd>) {
        let lines: Vec<EventFd> = kinds
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let ours = lines.iter().map(|l| l.try_clone().unwrap()).collect();
        let devs =
            VirtioDevices::with_timeout(kinds, lines, None, Duration::from_millis(300)).unwrap();
        (Arc::new(devs), ours)
    }

    fn blk_request(slot: u32, queues: u32) -> AttachRequest {
        AttachRequest {
            slot,
            device_id: 2,
            device_features: 1 << 6,
            config: 4096u64.to_le_bytes().to_vec(),
            queues,
        }
    }

    fn r(dev: &mut VirtioMmio, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(slot: &VirtioSlot, offset: u64, v: u32) {
        slot.device().write(offset, &v.to_le_bytes());
    }

    /// A driver up to FEATURES_OK with queue 0 ready.
    fn negotiate(slot: &VirtioSlot) {
        w(slot, reg::STATUS, 0);
        w(slot, reg::STATUS, status::ACKNOWLEDGE);
        w(slot, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(slot, reg::DRIVER_FEATURES_SEL, 1);
        w(slot, reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(slot, reg::STATUS, s);
        w(slot, reg::QUEUE_SEL, 0);
        w(slot, reg::QUEUE_NUM, 128);
        w(slot, reg::QUEUE_DESC_LOW, 0x10_0000);
        w(slot, reg::QUEUE_DRIVER_LOW, 0x10_1000);
        w(slot, reg::QUEUE_DEVICE_LOW, 0x10_2000);
        w(slot, reg::QUEUE_READY, 1);
    }

    fn driver_ok(slot: &VirtioSlot) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(slot, reg::STATUS, s | status::DRIVER_OK);
    }

    /// A fake kxend on its end of the link: answers each event with
    /// `reply(event)` (None: stay silent) and reports what it saw.
    fn fake_kxend(
        link: UnixStream,
        reply: impl Fn(&LinkEvent) -> Option<String> + Send + 'static,
    ) -> std::sync::mpsc::Receiver<LinkEvent> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut writer = link.try_clone().unwrap();
            for line in BufReader::new(link).lines() {
                let Ok(line) = line else { return };
                let event: LinkEvent = serde_json::from_str(&line).unwrap();
                let answer = reply(&event);
                let _ = tx.send(event);
                if let Some(answer) = answer {
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn attach_validates_and_hands_out_fds() {
        let (devs, _lines) = devices(&[DeviceType::Blk, DeviceType::Net]);
        assert!(matches!(
            devs.attach(&blk_request(2, 1)),
            Err(VirtioError::NoSlot(2))
        ));
        assert!(matches!(
            devs.attach(&blk_request(1, 1)),
            Err(VirtioError::WrongKind { .. })
        ));
        assert!(devs.attach(&blk_request(0, 0)).is_err());
        assert!(devs.attach(&blk_request(0, 9)).is_err());
        let mut long = blk_request(0, 1);
        long.config = vec![0; 257];
        assert!(devs.attach(&long).is_err());
        let mut dev = devs.slots()[0].device();
        assert_eq!(r(&mut dev, reg::DEVICE_ID), 0, "nothing attached yet");
        drop(dev);

        let fds = devs.attach(&blk_request(0, 3)).unwrap();
        assert_eq!(fds.fds().len(), 6);
        let mut dev = devs.slots()[0].device();
        assert_eq!(r(&mut dev, reg::DEVICE_ID), 2);
        assert_eq!(r(&mut dev, reg::DEVICE_FEATURES), 1 << 6);
        let mut b8 = [0u8; 8];
        dev.read(reg::CONFIG, &mut b8);
        assert_eq!(u64::from_le_bytes(b8), 4096);
    }

    #[test]
    fn a_restored_running_device_resumes_over_the_new_link_without_a_reset() {
        // The source: the driver has the device running on queue 0.
        let (src, _lines) = devices(&[DeviceType::Blk]);
        let fds = src.attach(&blk_request(0, 2)).unwrap();
        let _seen = fake_kxend(fds.link, |_| Some("{\"ok\":true}\n".into()));
        let slot = &src.slots()[0];
        negotiate(slot);
        driver_ok(slot);
        let mut saved = slot.device().save_state();
        saved.queues[0].indices.next_avail = 41;
        saved.queues[0].indices.next_used = 41;

        // The destination: the state loads before kxend attaches; the
        // attach posts the activation with the positions, the link's
        // answer comes later, and the driver sees a running device.
        let (dst, lines) = devices(&[DeviceType::Blk]);
        let thread = dst.start().unwrap();
        dst.slots()[0].device().load_state(&saved).unwrap();
        let fds = dst.attach(&blk_request(0, 2)).unwrap();
        let seen = fake_kxend(fds.link, |_| Some("{\"ok\":true}\n".into()));
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(2)).unwrap(),
            LinkEvent::Activate {
                features: VIRTIO_F_VERSION_1,
                queues: vec![test_queue(Some(41))]
            }
        );
        let slot = &dst.slots()[0];
        let st = r(&mut slot.device(), reg::STATUS);
        assert_eq!(st & status::DEVICE_NEEDS_RESET, 0, "{st:#x}");
        assert_ne!(st & status::DRIVER_OK, 0);
        assert!(lines[0].read().unwrap() >= 1, "the driver is told to look");
        // Kicks reach the new backend.
        w(slot, reg::QUEUE_NOTIFY, 1);
        assert_eq!(fds.kicks[1].read().unwrap(), 1);
        // kxend refusing the posted activation: DEVICE_NEEDS_RESET.
        fds.error.write(1).unwrap();
        wait_for("DEVICE_NEEDS_RESET", || {
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
        });
        dst.stop();
        thread.join().unwrap();
    }

    /// The one queue the tests' driver sets up, as the link describes it,
    /// going on from `next` (both indices) or fresh.
    fn test_queue(next: Option<u16>) -> LinkQueue {
        LinkQueue {
            index: 0,
            size: 128,
            desc: 0x10_0000,
            avail: 0x10_1000,
            used: 0x10_2000,
            next_avail: next,
            next_used: next,
        }
    }

    #[test]
    fn activate_notify_call_and_reset_over_the_link() {
        let (devs, lines) = devices(&[DeviceType::Blk]);
        let thread = devs.start().unwrap();
        let fds = devs.attach(&blk_request(0, 2)).unwrap();
        let seen = fake_kxend(fds.link, |_| Some("{\"ok\":true}\n".into()));
        let slot = &devs.slots()[0];
        negotiate(slot);
        driver_ok(slot);
        let s = r(&mut slot.device(), reg::STATUS);
        assert_eq!(s & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(s & status::DRIVER_OK, 0);
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(2)).unwrap(),
            LinkEvent::Activate {
                features: VIRTIO_F_VERSION_1,
                queues: vec![test_queue(None)]
            }
        );
        // No KVM here: QueueNotify reaches the device and kicks queue 1.
        w(slot, reg::QUEUE_NOTIFY, 1);
        w(slot, reg::QUEUE_NOTIFY, 2);
        assert_eq!(fds.kicks[1].read().unwrap(), 1);
        assert!(fds.kicks[0].read().is_err(), "queue 0 not kicked");

        // kxend publishes used buffers: InterruptStatus bit 0 and a pulse.
        fds.call.write(1).unwrap();
        wait_for("the call", || lines[0].read().is_ok());
        assert_eq!(r(&mut slot.device(), reg::INTERRUPT_STATUS), INT_VRING);
        w(slot, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut slot.device(), reg::INTERRUPT_STATUS), 0);

        // Reset waits for kxend's answer.
        w(slot, reg::STATUS, 0);
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(2)).unwrap(),
            LinkEvent::Reset
        );
        assert_eq!(r(&mut slot.device(), reg::STATUS), 0);
        devs.stop();
        thread.join().unwrap();
    }

    #[test]
    fn refused_or_silent_activation_needs_reset() {
        let (devs, lines) = devices(&[DeviceType::Net]);
        let req = AttachRequest {
            device_id: 1,
            ..blk_request(0, 2)
        };
        let fds = devs.attach(&req).unwrap();
        let seen = fake_kxend(fds.link, |e| match e {
            LinkEvent::Activate { .. } => Some("{\"ok\":false,\"error\":\"no tap\"}\n".into()),
            LinkEvent::Reset => Some("{\"ok\":true}\n".into()),
        });
        let slot = &devs.slots()[0];
        negotiate(slot);
        driver_ok(slot);
        assert!(matches!(
            seen.recv_timeout(Duration::from_secs(2)),
            Ok(LinkEvent::Activate { .. })
        ));
        assert_ne!(
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(r(&mut slot.device(), reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(lines[0].read().unwrap(), 1);
        w(slot, reg::STATUS, 0);
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(2)),
            Ok(LinkEvent::Reset)
        );

        // A kxend that never answers: the vCPU waits the timeout, no more.
        let fds = devs.attach(&req).unwrap();
        let seen = fake_kxend(fds.link, |_| None);
        negotiate(slot);
        let started = Instant::now();
        driver_ok(slot);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(seen.recv_timeout(Duration::from_secs(1)).is_ok());
        assert_ne!(
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        // The reset still goes out (kxend may have started), also unanswered.
        let started = Instant::now();
        w(slot, reg::STATUS, 0);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(1)),
            Ok(LinkEvent::Reset)
        );
        assert_eq!(r(&mut slot.device(), reg::STATUS), 0);
    }

    #[test]
    fn error_eventfd_and_closed_link_need_reset() {
        let (devs, lines) = devices(&[DeviceType::Blk]);
        let thread = devs.start().unwrap();
        let slot = &devs.slots()[0];

        // kxend finds the queue malformed.
        let fds = devs.attach(&blk_request(0, 1)).unwrap();
        let _seen = fake_kxend(fds.link, |_| Some("{\"ok\":true}\n".into()));
        negotiate(slot);
        driver_ok(slot);
        fds.error.write(1).unwrap();
        wait_for("needs-reset", || {
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
        });
        assert_eq!(r(&mut slot.device(), reg::INTERRUPT_STATUS), INT_CONFIG);
        assert!(lines[0].read().is_ok());
        w(slot, reg::STATUS, 0);

        // kxend dies while the device runs.
        let fds = devs.attach(&blk_request(0, 1)).unwrap();
        let (link, call) = (fds.link, fds.call);
        let answer = link.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(answer.try_clone().unwrap());
            r.read_line(&mut line).unwrap();
            (&answer).write_all(b"{\"ok\":true}\n").unwrap();
            line
        });
        negotiate(slot);
        driver_ok(slot);
        assert!(reader.join().unwrap().contains("activate"));
        assert_eq!(
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        drop(link);
        wait_for("needs-reset after EOF", || {
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
        });
        // The reset after a dead link does not wait.
        let started = Instant::now();
        w(slot, reg::STATUS, 0);
        assert!(started.elapsed() < Duration::from_millis(200));
        // After a new attach, the replaced attachment's call eventfd is
        // no longer watched; the new one is. The old call is signalled
        // first, then the new one, then the thread is stopped: epoll hands
        // out ready fds in the order they became ready, so once the thread
        // has ended it has handled all three, and only the new call may
        // have raised the line.
        let fds = devs.attach(&blk_request(0, 1)).unwrap();
        while lines[0].read().is_ok() {}
        call.write(1).unwrap();
        fds.call.write(1).unwrap();
        let mut raised = 0;
        wait_for("new call", || {
            raised += lines[0].read().unwrap_or(0);
            raised > 0
        });
        devs.stop();
        thread.join().unwrap();
        raised += lines[0].read().unwrap_or(0);
        assert_eq!(raised, 1, "the replaced attachment's call raised the line");
    }

    #[test]
    fn second_attach_replaces_a_running_backend() {
        let (devs, lines) = devices(&[DeviceType::Blk]);
        let slot = &devs.slots()[0];
        let first = devs.attach(&blk_request(0, 1)).unwrap();
        let seen_first = fake_kxend(first.link, |_| Some("{\"ok\":true}\n".into()));
        negotiate(slot);
        driver_ok(slot);
        assert!(seen_first.recv_timeout(Duration::from_secs(2)).is_ok());
        let second = devs.attach(&blk_request(0, 2)).unwrap();
        assert_eq!(second.kicks.len(), 2);
        let seen_second = fake_kxend(second.link, |_| Some("{\"ok\":true}\n".into()));
        assert_ne!(
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(lines[0].read().unwrap(), 1);
        // The old kxend's link is closed: its reader ends.
        wait_for("old link EOF", || {
            matches!(
                seen_first.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Disconnected)
            )
        });
        // The driver resets (nothing activated on the new link) and
        // starts over on the new one.
        w(slot, reg::STATUS, 0);
        negotiate(slot);
        driver_ok(slot);
        assert!(matches!(
            seen_second.recv_timeout(Duration::from_secs(2)),
            Ok(LinkEvent::Activate { .. })
        ));
        assert_eq!(
            r(&mut slot.device(), reg::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn acpi_entries_follow_the_slots() {
        let acpi = acpi_devices(&[DeviceType::Blk, DeviceType::Net]);
        assert_eq!(
            acpi,
            vec![
                VirtioMmioDevice {
                    base: 0xd000_0000,
                    len: 0x1000,
                    gsi: 16
                },
                VirtioMmioDevice {
                    base: 0xd000_1000,
                    len: 0x1000,
                    gsi: 17
                },
            ]
        );
        let mut bus = Bus::new();
        let (devs, _) = devices(&[DeviceType::Blk, DeviceType::Net]);
        devs.add_to_bus(&mut bus).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0xd000_1000, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
        assert!(!bus.read(0xd000_2000, &mut b));
    }
}
