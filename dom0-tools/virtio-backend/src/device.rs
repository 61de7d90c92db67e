//! The device side every virtio device shares: the [`VirtioDevice`]
//! contract, the activated queues, and the worker thread that serves the
//! link socket, the kick eventfds and the device's host fd.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::Fault;
use crate::link::{self, LinkEvent, QueueSetup};
use crate::memory::GuestMem;

/// QueueNumMax the VMM offers.
pub const QUEUE_MAX: u16 = 256;

pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

/// `virtq_avail.flags`: the driver wants no interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One virtio device's data plane.
pub trait VirtioDevice: Send {
    /// For logs and thread names.
    fn name(&self) -> String;
    /// virtio device ID (net 1, blk 2).
    fn device_id(&self) -> u32;
    /// Feature bits offered.
    fn features(&self) -> u64;
    /// Device configuration space.
    fn config(&self) -> Vec<u8>;
    fn num_queues(&self) -> usize;
    /// The driver set DRIVER_OK having acked `features`.
    fn activate(&mut self, _features: u64) -> Result<(), String> {
        Ok(())
    }
    /// The driver reset the device (or the device faulted): forget all
    /// queue state.
    fn reset(&mut self) {}
    /// Queue `index` was kicked (or the device was just activated).
    fn process(&mut self, index: usize, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault>;
    /// A host fd to poll for input while the device is active, if it
    /// wants input now.
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// `host_fd` is readable.
    fn host_ready(&mut self, _q: &mut Queues, _mem: &GuestMem) -> Result<(), Fault> {
        Ok(())
    }
}

/// The queues of an active device.
pub struct Queues {
    queues: Vec<Option<Queue>>,
    added: Vec<bool>,
    features: u64,
}

impl Queues {
    /// Queues as the activate message lists them; `count` is how many the
    /// device has. Every listed queue must lie in guest RAM.
    pub fn new(
        features: u64,
        setups: &[QueueSetup],
        count: usize,
        mem: &GuestMem,
    ) -> Result<Queues, String> {
        let mut queues: Vec<Option<Queue>> = (0..count).map(|_| None).collect();
        for s in setups {
            let slot = queues
                .get_mut(s.index as usize)
                .ok_or_else(|| format!("no queue {}", s.index))?;
            if slot.is_some() {
                return Err(format!("queue {} listed twice", s.index));
            }
            let bad = |what: &str| format!("queue {}: {what}", s.index);
            let mut q = Queue::new(QUEUE_MAX).map_err(|e| bad(&e.to_string()))?;
            q.try_set_size(s.size)
                .map_err(|e| bad(&format!("size {}: {e}", s.size)))?;
            q.try_set_desc_table_address(GuestAddress(s.desc))
                .map_err(|e| bad(&e.to_string()))?;
            q.try_set_avail_ring_address(GuestAddress(s.avail))
                .map_err(|e| bad(&e.to_string()))?;
            q.try_set_used_ring_address(GuestAddress(s.used))
                .map_err(|e| bad(&e.to_string()))?;
            q.set_event_idx(features & F_RING_EVENT_IDX != 0);
            // A restored running queue goes on where the source's stopped
            // (any u16 is a valid free-running ring position).
            if let Some(at) = s.next_avail {
                q.set_next_avail(at);
            }
            if let Some(at) = s.next_used {
                q.set_next_used(at);
            }
            q.set_ready(true);
            if !q.is_valid(mem) {
                return Err(bad("rings outside guest RAM"));
            }
            *slot = Some(q);
        }
        Ok(Queues {
            added: vec![false; count],
            queues,
            features,
        })
    }

    /// The features the driver acked.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Queue `index`, if the driver made it ready.
    pub fn queue(&mut self, index: usize) -> Option<&mut Queue> {
        self.queues.get_mut(index).and_then(Option::as_mut)
    }

    /// Put chain `head` on the used ring with `len` bytes written.
    pub fn add_used(
        &mut self,
        mem: &GuestMem,
        index: usize,
        head: u16,
        len: u32,
    ) -> Result<(), Fault> {
        let q = self
            .queue(index)
            .ok_or_else(|| Fault::Queue(format!("queue {index} not ready")))?;
        q.add_used(mem, head, len)
            .map_err(|e| Fault::Queue(e.to_string()))?;
        self.added[index] = true;
        Ok(())
    }

    /// The driver's current avail index of queue `index`.
    pub fn avail_idx(&mut self, mem: &GuestMem, index: usize) -> Result<u16, Fault> {
        let q = self
            .queue(index)
            .ok_or_else(|| Fault::Queue(format!("queue {index} not ready")))?;
        q.avail_idx(mem, Ordering::Acquire)
            .map(|w| w.0)
            .map_err(|e| Fault::Queue(e.to_string()))
    }

    /// Ask the driver to kick queue `index` when it makes a buffer
    /// available past `seen` (the avail index the device last looked at).
    /// Returns true if it already did, so the device should look again.
    pub fn notify_on_new(
        &mut self,
        mem: &GuestMem,
        index: usize,
        seen: u16,
    ) -> Result<bool, Fault> {
        let q = self
            .queue(index)
            .ok_or_else(|| Fault::Queue(format!("queue {index} not ready")))?;
        let err = |e: virtio_queue::Error| Fault::Queue(e.to_string());
        if q.event_idx_enabled() {
            // avail_event sits after the used ring's entries.
            let addr = q.used_ring() + 4 + 8 * u64::from(q.size());
            mem.store(seen.to_le(), GuestAddress(addr), Ordering::Relaxed)
                .map_err(|e| Fault::Queue(e.to_string()))?;
        } else {
            q.enable_notification(mem).map_err(err)?;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let now = q.avail_idx(mem, Ordering::Acquire).map_err(err)?;
        Ok(now.0 != seen)
    }

    /// Whether the driver wants an interrupt for what was added since the
    /// last call (EVENT_IDX, or the avail ring's NO_INTERRUPT flag).
    pub fn take_notify(&mut self, mem: &GuestMem) -> Result<bool, Fault> {
        let mut notify = false;
        for (i, slot) in self.queues.iter_mut().enumerate() {
            let Some(q) = slot.as_mut() else {
                continue;
            };
            if !std::mem::take(&mut self.added[i]) {
                continue;
            }
            let wants = q
                .needs_notification(mem)
                .map_err(|e| Fault::Queue(e.to_string()))?;
            let wants = if q.event_idx_enabled() {
                wants
            } else {
                let flags: u16 = mem
                    .load(GuestAddress(q.avail_ring()), Ordering::Acquire)
                    .map_err(|e| Fault::Queue(e.to_string()))?;
                wants && u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0
            };
            notify |= wants;
        }
        Ok(notify)
    }
}

/// The fds kxen-vmm hands over for one device (virtio-attach's reply).
pub struct DeviceFds {
    pub link: UnixStream,
    pub call: EventFd,
    pub error: EventFd,
    pub kicks: Vec<EventFd>,
}

/// Stops a device worker taking requests, for a save's or a migration's
/// final pass (the paused domain's memory must stop changing: no request
/// served, no frame received into its buffers), and lets it go on.
pub struct QuiesceControl {
    state: Mutex<QuiesceState>,
    changed: Condvar,
    /// Wakes the worker to look at `state`.
    wake: EventFd,
}

#[derive(Default)]
struct QuiesceState {
    /// kxend asks the worker to stop taking requests.
    wanted: bool,
    /// The worker has answered everything it took and waits.
    quiesced: bool,
    /// The worker is gone (a stopped worker takes nothing either).
    ended: bool,
}

impl QuiesceControl {
    fn new() -> std::io::Result<Self> {
        Ok(QuiesceControl {
            state: Mutex::new(QuiesceState::default()),
            changed: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuiesceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop taking requests; returns once every request taken is answered
    /// (the worker serves synchronously: it then has none in flight), or
    /// fails at `deadline`, serving again.
    pub fn quiesce(&self, deadline: Instant) -> Result<(), String> {
        let mut st = self.lock();
        st.wanted = true;
        let _ = self.wake.write(1);
        while !st.quiesced && !st.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.wanted = false;
                let _ = self.wake.write(1);
                return Err("the virtio device did not finish its requests in time".into());
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Serve again, requests posted meanwhile first.
    pub fn resume(&self) {
        self.lock().wanted = false;
        let _ = self.wake.write(1);
    }

    /// The worker's side, between requests: whether to stay quiesced.
    fn settle(&self) -> bool {
        let mut st = self.lock();
        if st.quiesced != st.wanted {
            st.quiesced = st.wanted;
            self.changed.notify_all();
        }
        st.wanted
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }
}

/// A running device worker; dropping it stops the thread.
pub struct DeviceHandle {
    name: String,
    stop: Arc<EventFd>,
    control: Arc<QuiesceControl>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop serving and wait for the thread (which drops the device).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!(device = %self.name, "virtio worker panicked");
            }
        }
    }

    /// The worker's quiesce switch, for a save's final pass.
    pub fn quiesce_control(&self) -> Arc<QuiesceControl> {
        self.control.clone()
    }

    /// Whether the worker still runs (it ends when the VMM closes the link).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Start the thread serving `dev` over `fds`.
pub fn spawn(
    dev: Box<dyn VirtioDevice>,
    mem: Arc<GuestMem>,
    fds: DeviceFds,
) -> std::io::Result<DeviceHandle> {
    let name = dev.name();
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let control = Arc::new(QuiesceControl::new()?);
    let mut worker = Worker {
        dev,
        mem,
        fds,
        stop: stop.clone(),
        control: control.clone(),
        queues: None,
        pending: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("virtio-{name}"))
        .spawn(move || worker.run())?;
    Ok(DeviceHandle {
        name,
        stop,
        control,
        thread: Some(thread),
    })
}

struct Worker {
    dev: Box<dyn VirtioDevice>,
    mem: Arc<GuestMem>,
    fds: DeviceFds,
    stop: Arc<EventFd>,
    control: Arc<QuiesceControl>,
    /// Some while the driver has the device running.
    queues: Option<Queues>,
    /// Link bytes not yet a whole line.
    pending: Vec<u8>,
}

fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for poll() on fds the worker owns and keeps open
    // for the whole loop iteration.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

impl Worker {
    fn run(&mut self) {
        let name = self.dev.name();
        debug!(device = %name, "virtio worker up");
        let mut was_quiesced = false;
        loop {
            // Between requests: every one taken so far is answered.
            let quiesced = self.control.settle();
            if was_quiesced && !quiesced {
                // Kicks and frames that came meanwhile.
                self.after_activate();
            }
            was_quiesced = quiesced;
            let host = if self.queues.is_some() && !quiesced {
                self.dev.host_fd()
            } else {
                None
            };
            let mut raws = vec![
                self.stop.as_raw_fd(),
                self.fds.link.as_raw_fd(),
                self.control.wake.as_raw_fd(),
            ];
            // Quiesced, the kicks and the host wait (their counts stay).
            let kicks = if quiesced { 0 } else { self.fds.kicks.len() };
            raws.extend(self.fds.kicks.iter().take(kicks).map(|k| k.as_raw_fd()));
            raws.extend(host);
            let mut pfds: Vec<PollFd> = raws
                .iter()
                .map(|&r| PollFd::new(fd(r), PollFlags::POLLIN))
                .collect();
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(device = %name, "poll: {e}");
                    break;
                }
            }
            let ready: Vec<bool> = pfds
                .iter()
                .map(|p| {
                    p.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    })
                })
                .collect();
            drop(pfds);
            if ready[0] {
                break;
            }
            if ready[2] {
                let _ = self.control.wake.read();
            }
            if ready[1] && !self.serve_link(quiesced) {
                info!(device = %name, "link closed");
                break;
            }
            let mut result = Ok(());
            for (i, kicked) in ready[3..3 + kicks].iter().enumerate() {
                if !kicked {
                    continue;
                }
                let _ = self.fds.kicks[i].read();
                if let (Ok(()), Some(q)) = (&result, self.queues.as_mut()) {
                    result = self.dev.process(i, q, &self.mem);
                }
            }
            if host.is_some() && *ready.last().unwrap_or(&false) {
                if let (Ok(()), Some(q)) = (&result, self.queues.as_mut()) {
                    result = self.dev.host_ready(q, &self.mem);
                }
            }
            self.finish(result);
        }
        self.dev.reset();
        self.control.end();
        debug!(device = %name, "virtio worker down");
    }

    /// After processing: interrupt the guest, or report a fault.
    fn finish(&mut self, result: Result<(), Fault>) {
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        let result = result.and_then(|()| q.take_notify(&self.mem));
        match result {
            Ok(true) => {
                let _ = self.fds.call.write(1);
            }
            Ok(false) => {}
            Err(fault) => self.fail(fault),
        }
    }

    /// The guest broke the queue: stop serving it and tell the VMM.
    fn fail(&mut self, fault: Fault) {
        warn!(device = %self.dev.name(), "device error: {fault}");
        // Used entries already published still deserve their interrupt.
        if let Some(mut q) = self.queues.take() {
            if q.take_notify(&self.mem).unwrap_or(false) {
                let _ = self.fds.call.write(1);
            }
        }
        self.dev.reset();
        let _ = self.fds.error.write(1);
    }

    /// Read link messages and answer them; false once the link is closed.
    /// A quiesced device takes an activation but serves no request until
    /// it resumes.
    fn serve_link(&mut self, quiesced: bool) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.fds.link.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                warn!(device = %self.dev.name(), "link: {e}");
                return false;
            }
        };
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() > link::MAX_LINE && !self.pending.contains(&b'\n') {
            warn!(device = %self.dev.name(), "link: line too long");
            return false;
        }
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            let mut resumed = false;
            let reply = match link::parse_event(&line) {
                Ok(event) => {
                    resumed = matches!(&event, LinkEvent::Activate { queues, .. }
                        if queues.iter().any(|q| q.is_resumed()));
                    self.handle(event)
                }
                Err(e) => Err(e),
            };
            let text = link::reply_line(&reply);
            if let Err(e) = self.fds.link.write_all(text.as_bytes()) {
                warn!(device = %self.dev.name(), "link: {e}");
                return false;
            }
            match &reply {
                Ok(()) if !quiesced => self.after_activate(),
                Ok(()) => {}
                // The VMM posted a restored device's activation without
                // waiting for this answer: tell it through the error
                // eventfd, so the driver sees DEVICE_NEEDS_RESET.
                Err(e) if resumed => {
                    warn!(device = %self.dev.name(), "resuming a restored device: {e}");
                    let _ = self.fds.error.write(1);
                }
                Err(_) => {}
            }
        }
        true
    }

    fn handle(&mut self, event: LinkEvent) -> Result<(), String> {
        match event {
            LinkEvent::Activate { features, queues } => {
                self.queues = None;
                self.dev.reset();
                let offered = self.dev.features() | F_VERSION_1;
                if features & !offered != 0 {
                    return Err(format!(
                        "features {:#x} were not offered",
                        features & !offered
                    ));
                }
                let q = Queues::new(features, &queues, self.dev.num_queues(), &self.mem)?;
                self.dev.activate(features)?;
                info!(device = %self.dev.name(), features = format_args!("{features:#x}"), "activated");
                self.queues = Some(q);
                Ok(())
            }
            LinkEvent::Reset => {
                if self.queues.take().is_some() {
                    info!(device = %self.dev.name(), "reset");
                }
                self.dev.reset();
                Ok(())
            }
        }
    }

    /// Serve what the driver queued before DRIVER_OK (e.g. receive buffers).
    fn after_activate(&mut self) {
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for i in 0..self.dev.num_queues() {
            if result.is_ok() && q.queue(i).is_some() {
                result = self.dev.process(i, q, &self.mem);
            }
        }
        self.finish(result);
    }
}
