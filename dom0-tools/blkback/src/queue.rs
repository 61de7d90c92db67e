//! One ring's request engine and the I/O thread that runs it.
//!
//! A queue owns its ring, its event channel and its persistent grants; the
//! disk, the grant table and the counters are shared by a vbd's queues.
//! Requests are served in ring order, synchronously, and a response is
//! written only once its I/O has completed, so an acknowledged write is
//! in the backing store (and, after a flush or barrier, on stable storage).
//!
//! A queue quiesces (for a migration's final pass) between two requests:
//! the request being served completes and is answered, the responses are
//! pushed, and the thread parks at its [`QuiesceGate`] taking nothing more
//! until resumed; then it looks at the ring at once, since the requests
//! posted meanwhile may have come without a kick.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kxen_foreign::evtchn::Dom0Channel;
use kxen_foreign::grant::{GrantError, GrantTable};
use kxen_foreign::quiesce::{Parked, QuiesceGate};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::io::blkif::*;
use xen_abi::PAGE_SIZE;

use crate::backring::BackRing;
use crate::disk::Disk;
use crate::pgrants::PersistentGrants;
use crate::request::{parse_indirect_page, parse_request, BlkRequest, Limits, Segment, Segments};
use crate::stats::{add, Stats};

/// What the vbd offers; requests for anything else get EOPNOTSUPP.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub flush: bool,
    pub barrier: bool,
    pub discard: bool,
}

/// Scratch space reused across requests, so the hot path allocates nothing.
struct Scratch {
    segs: Vec<Segment>,
    iov: Vec<libc::iovec>,
    maps: Vec<kxen_foreign::grant::GrantMapping>,
    page: Box<[u8; PAGE_SIZE]>,
}

// SAFETY: the iovecs' raw pointers point into grant mappings that are
// only used by the thread that owns the Scratch, and are cleared after
// each request; nothing is shared.
unsafe impl Send for Scratch {}

/// Why a request failed; turned into a BLKIF_RSP_* status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("grant: {0}")]
    Grant(GrantError),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("I/O: {0}")]
    Io(std::io::Error),
    #[error("operation not offered")]
    Unsupported,
    #[error("read-only device")]
    ReadOnly,
}

impl Failure {
    fn status(&self) -> i16 {
        match self {
            Failure::Unsupported => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

pub struct Queue {
    index: usize,
    ring: BackRing,
    channel: Dom0Channel,
    grants: Arc<GrantTable>,
    disk: Arc<Disk>,
    stats: Arc<Stats>,
    limits: Limits,
    features: Features,
    persistent: Option<PersistentGrants>,
    scratch: Scratch,
    /// Set by [`QueueThread::stop`]: a frontend that keeps the ring busy
    /// must not keep the thread from stopping.
    stopping: Arc<AtomicBool>,
    /// Set by [`QueueThread::spawn`]: asks the queue to stop taking
    /// requests and park (a queue driven by hand has none).
    gate: Option<Arc<QuiesceGate>>,
    /// Called with each request slot before it is served (tests use it to
    /// hold a request in flight).
    #[cfg(test)]
    pub(crate) before_serve: Option<ServeHook>,
}

/// What tests run before a request is served.
#[cfg(test)]
pub(crate) type ServeHook = Box<dyn FnMut(&[u8; ENTRY_SIZE]) + Send>;

/// The outcome of one pass over the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Caught up; a kick will bring more.
    Idle,
    /// The frontend corrupted the ring; stop serving it.
    Broken,
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        ring: BackRing,
        channel: Dom0Channel,
        grants: Arc<GrantTable>,
        disk: Arc<Disk>,
        stats: Arc<Stats>,
        limits: Limits,
        features: Features,
        persistent: Option<PersistentGrants>,
    ) -> Queue {
        Queue {
            index,
            ring,
            channel,
            grants,
            disk,
            stats,
            limits,
            features,
            persistent,
            scratch: Scratch {
                segs: Vec::with_capacity(usize::from(limits.max_indirect_segments).max(11)),
                iov: Vec::with_capacity(usize::from(limits.max_indirect_segments).max(11)),
                maps: Vec::with_capacity(usize::from(limits.max_indirect_segments).max(11)),
                page: Box::new([0; PAGE_SIZE]),
            },
            stopping: Arc::new(AtomicBool::new(false)),
            gate: None,
            #[cfg(test)]
            before_serve: None,
        }
    }

    /// Whether the queue must take no new request: stopping, or asked to
    /// quiesce.
    fn hold_off(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
            || self.gate.as_ref().is_some_and(|g| g.is_requested())
    }

    /// Serve requests until the ring is empty (and re-armed), pushing
    /// responses once per batch.
    pub fn process(&mut self) -> Pass {
        let mut slot = [0u8; ENTRY_SIZE];
        loop {
            if self.hold_off() {
                return Pass::Idle;
            }
            let n = match self.ring.pending() {
                Ok(n) => n,
                Err(e) => return self.broken(e),
            };
            if n == 0 {
                match self.ring.final_check() {
                    Ok(true) => continue,
                    Ok(false) => return Pass::Idle,
                    Err(e) => return self.broken(e),
                }
            }
            for _ in 0..n {
                // A quiesce waits for one request, not for the batch.
                if self.hold_off() {
                    break;
                }
                self.ring.take_request(&mut slot);
                let rsp = self.serve(&slot);
                self.ring.put_response(&rsp);
            }
            if self.ring.push_responses() {
                self.channel.notify();
                add(&self.stats.notifies_out, 1);
            }
        }
    }

    /// What [`QueueThread::stop`] does to a running queue (for tests).
    #[cfg(test)]
    pub(crate) fn set_stopping(&self, on: bool) {
        self.stopping.store(on, Ordering::Relaxed);
    }

    fn broken(&mut self, e: crate::backring::RingOverflow) -> Pass {
        error!(queue = self.index, "{e}; the ring is no longer served");
        self.stats.broken.store(1, Ordering::Relaxed);
        // Whatever was answered is still published.
        if self.ring.push_responses() {
            self.channel.notify();
        }
        Pass::Broken
    }

    fn serve(&mut self, slot: &[u8; ENTRY_SIZE]) -> Response {
        #[cfg(test)]
        if let Some(hook) = self.before_serve.as_mut() {
            hook(slot);
        }
        let (id, operation, status) = match parse_request(slot, &self.limits) {
            Err(rej) => {
                debug!(
                    queue = self.index,
                    id = rej.id,
                    op = rej.operation,
                    reason = rej.reason,
                    "request refused"
                );
                if rej.status == BLKIF_RSP_EOPNOTSUPP {
                    add(&self.stats.unsupported, 1);
                } else {
                    add(&self.stats.errors, 1);
                }
                (rej.id, rej.operation, rej.status)
            }
            Ok(p) => {
                let status = match self.execute(&p.request) {
                    Ok(()) => BLKIF_RSP_OKAY,
                    Err(f) => {
                        debug!(queue = self.index, id = p.id, op = p.operation, failure = %f, "request failed");
                        if matches!(f, Failure::Unsupported) {
                            add(&self.stats.unsupported, 1);
                        } else {
                            add(&self.stats.errors, 1);
                        }
                        f.status()
                    }
                };
                (p.id, p.operation, status)
            }
        };
        Response {
            id,
            operation,
            status,
            ..Default::default()
        }
    }

    fn execute(&mut self, req: &BlkRequest) -> Result<(), Failure> {
        match *req {
            BlkRequest::Flush => {
                add(&self.stats.flush_req, 1);
                if !self.features.flush {
                    return Err(Failure::Unsupported);
                }
                self.disk.flush().map_err(Failure::Io)
            }
            BlkRequest::Discard {
                sector, nr_sectors, ..
            } => {
                add(&self.stats.discard_req, 1);
                if self.disk.readonly() {
                    return Err(Failure::ReadOnly);
                }
                if !self.features.discard {
                    return Err(Failure::Unsupported);
                }
                let unit = SECTOR_SIZE as u64;
                self.disk
                    .discard(sector * unit, nr_sectors * unit)
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EOPNOTSUPP) => Failure::Unsupported,
                        _ => Failure::Io(e),
                    })
            }
            BlkRequest::Read { sector, segments } => {
                add(&self.stats.rd_req, 1);
                let r = self.rw(false, sector, &segments, false);
                self.release();
                r.map(|s| add(&self.stats.rd_sect, s))
            }
            BlkRequest::Write {
                sector,
                segments,
                barrier,
            } => {
                add(&self.stats.wr_req, 1);
                if barrier {
                    add(&self.stats.barrier_req, 1);
                }
                if self.disk.readonly() {
                    return Err(Failure::ReadOnly);
                }
                if barrier && !self.features.barrier {
                    return Err(Failure::Unsupported);
                }
                let r = self.rw(true, sector, &segments, barrier);
                self.release();
                r.map(|s| add(&self.stats.wr_sect, s))
            }
        }
    }

    /// Unpin this request's non-persistent grants, forget its iovecs.
    fn release(&mut self) {
        self.scratch.iov.clear();
        self.scratch.maps.clear();
        self.scratch.segs.clear();
    }

    /// Collect the segments, map them, and move the data. Returns the
    /// sectors moved.
    fn rw(
        &mut self,
        write: bool,
        sector: u64,
        segments: &Segments,
        barrier: bool,
    ) -> Result<u64, Failure> {
        self.scratch.segs.clear();
        match *segments {
            Segments::Direct { segs, count } => {
                self.scratch
                    .segs
                    .extend_from_slice(&segs[..usize::from(count)]);
            }
            Segments::Indirect {
                pages,
                nr_pages,
                count,
            } => {
                add(&self.stats.indirect_req, 1);
                let mut left = usize::from(count);
                for &gref in &pages[..usize::from(nr_pages)] {
                    // Copy only the descriptors this page holds, once:
                    // the guest may change the page under us.
                    let bytes = left.min(SEGMENTS_PER_INDIRECT_FRAME) * SEGMENT_SIZE;
                    let page = &mut self.scratch.page[..bytes];
                    let m = self.grants.map(gref, false).map_err(Failure::Grant)?;
                    m.read(0, page).map_err(Failure::Grant)?;
                    drop(m);
                    let before = self.scratch.segs.len();
                    parse_indirect_page(page, left, &mut self.scratch.segs)
                        .map_err(Failure::Malformed)?;
                    left -= self.scratch.segs.len() - before;
                }
            }
        }
        let sectors: u64 = self.scratch.segs.iter().map(Segment::sectors).sum();
        if !crate::request::extent_fits(sector, sectors, self.limits.capacity) {
            return Err(Failure::Malformed("beyond the end of the disk"));
        }
        // A read fills the guest's pages; a write only reads them.
        let into_page = !write;
        for i in 0..self.scratch.segs.len() {
            let seg = self.scratch.segs[i];
            let ptr = self.segment_ptr(&seg, into_page).map_err(Failure::Grant)?;
            self.scratch.iov.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: seg.byte_len(),
            });
        }
        if barrier {
            // Everything acknowledged before the barrier is durable first.
            self.disk.flush().map_err(Failure::Io)?;
        }
        if !self.scratch.iov.is_empty() {
            let offset = sector * SECTOR_SIZE as u64;
            // SAFETY: every iovec points into a grant mapping held in
            // `scratch.maps` or the persistent cache until `release`, with
            // the direction checked by io_ptr (writable for reads).
            let r = unsafe {
                if write {
                    self.disk.write_vectored(&mut self.scratch.iov, offset)
                } else {
                    self.disk.read_vectored(&mut self.scratch.iov, offset)
                }
            };
            r.map_err(Failure::Io)?;
        }
        if barrier {
            self.disk.flush().map_err(Failure::Io)?;
        }
        Ok(sectors)
    }

    /// Where segment `seg` lies in Dom0, mapping its grant if needed.
    fn segment_ptr(&mut self, seg: &Segment, into_page: bool) -> Result<*mut u8, GrantError> {
        let (off, len) = (seg.byte_offset(), seg.byte_len());
        if let Some(cache) = &mut self.persistent {
            if let Some(m) = cache.get(seg.gref) {
                return m.io_ptr(off, len, into_page);
            }
            if cache.has_room() {
                // Persistent grants are mapped writable once and reused for
                // either direction (blkif.h requires frontends to allow it).
                match self.grants.map(seg.gref, true) {
                    Ok(m) => return cache.insert(seg.gref, m).io_ptr(off, len, into_page),
                    Err(GrantError::ReadOnly(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let m = self.grants.map(seg.gref, into_page)?;
        let ptr = m.io_ptr(off, len, into_page)?;
        self.scratch.maps.push(m);
        Ok(ptr)
    }
}

/// A queue running on its own thread.
pub struct QueueThread {
    stopping: Arc<AtomicBool>,
    gate: Arc<QuiesceGate>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Run `q` on a new thread; `quiesced`: it takes no request until
    /// resumed (a ring connected while its domain's backends are quiesced).
    pub fn spawn(mut q: Queue, quiesced: bool) -> std::io::Result<QueueThread> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let stopping = q.stopping.clone();
        let gate = Arc::new(QuiesceGate::new()?);
        if quiesced {
            gate.request();
        }
        q.gate = Some(gate.clone());
        let thread = std::thread::Builder::new()
            .name(format!("blkback-q{}", q.index))
            .spawn(move || run(&mut q, &stop2))?;
        Ok(QueueThread {
            stopping,
            gate,
            stop,
            thread: Some(thread),
        })
    }

    /// The thread's quiesce gate.
    pub fn gate(&self) -> &QuiesceGate {
        &self.gate
    }

    /// Stop the thread and wait for it; dropping the queue unpins every
    /// grant and closes the channel.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("blkback queue thread panicked");
            }
        }
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(q: &mut Queue, stop: &EventFd) {
    serve_rings(q, stop);
    // A gone thread takes no request either: a quiesce need not wait.
    if let Some(gate) = &q.gate {
        gate.exited();
    }
}

fn serve_rings(q: &mut Queue, stop: &EventFd) {
    let Some(gate) = q.gate.clone() else {
        return;
    };
    // Requests queued before we attached get served without a kick.
    if q.process() == Pass::Broken {
        return;
    }
    loop {
        // SAFETY: `stop` is owned by the caller and outlives this borrow.
        let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
        match gate.park_if_requested(stop_fd) {
            Parked::Stopped => return,
            Parked::Resumed => {
                // Requests posted while parked may have come without a
                // kick (or with one the poll below will see): look now.
                if q.process() == Pass::Broken {
                    return;
                }
                continue;
            }
            Parked::No => {}
        }
        let kick = q.channel.kick_fd();
        let mut fds = [
            PollFd::new(kick, PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
            PollFd::new(gate.wake_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                error!(queue = q.index, error = %e, "poll failed; queue stops");
                return;
            }
        }
        let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        let kicked = fds[0].revents().is_some_and(|r| !r.is_empty());
        if stopping || q.stopping.load(Ordering::Relaxed) {
            return;
        }
        gate.clear_wake();
        if kicked && q.channel.ack() {
            add(&q.stats.kicks_in, 1);
        }
        if q.process() == Pass::Broken {
            return;
        }
    }
}
