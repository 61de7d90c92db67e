//! One I/O thread per vif queue: it sleeps in poll() on the guest's
//! kick(s), the TAP queue and a stop eventfd, and moves packets both ways.
//!
//! Quiesced (a migration's final pass), the thread parks between two
//! loops: every TX request it took is answered and pushed, every packet
//! it put in the guest's RX buffers is pushed, and it fills no more. Host
//! packets wait in the TAP's queue meanwhile (the kernel drops what
//! overflows it, as a NIC drops for a stopped guest), as does a packet
//! held back for want of RX buffers; they are delivered on resume, or
//! dropped with the source domain once it has migrated.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use kxen_foreign::quiesce::{Parked, QuiesceGate};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::{Channels, NetQueue, RxOutcome};
use crate::stats::VifStats;
use crate::tap::TapQueue;
use crate::vnet::VNET_HDR_LEN;

/// Largest frame the TAP hands us: a 64 KiB GSO packet plus headers.
const RX_BUF: usize = VNET_HDR_LEN + 65536 + 256;
/// Host packets moved to the guest per loop before TX gets a turn.
const RX_BATCH: usize = 64;

pub struct Worker {
    stop: EventFd,
    gate: Arc<QuiesceGate>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// `quiesced`: the thread moves nothing until resumed.
    pub fn spawn(
        name: String,
        queue: NetQueue,
        tap: Arc<TapQueue>,
        quiesced: bool,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let gate = Arc::new(QuiesceGate::new()?);
        if quiesced {
            gate.request();
        }
        let gate2 = gate.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            run(queue, &tap, &stop2, &gate2);
            // A gone thread moves nothing either: a quiesce need not wait.
            gate2.exited();
        })?;
        Ok(Worker {
            stop,
            gate,
            handle: Some(handle),
        })
    }

    /// The thread's quiesce gate.
    pub fn gate(&self) -> &QuiesceGate {
        &self.gate
    }

    /// Stop the thread and wait for it (it drops the queue's mappings).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                warn!("vif I/O thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(mut q: NetQueue, tap: &TapQueue, stop: &EventFd, gate: &QuiesceGate) {
    let stats = q.stats().clone();
    let mut buf = vec![0u8; RX_BUF];
    let mut pending: Option<Vec<u8>> = None;
    loop {
        // Here the thread holds no request: the previous loop answered and
        // pushed all it took. After a resume the loop below looks at both
        // rings and the TAP at once, kicks or not.
        // SAFETY: the eventfd is owned by the caller and outlives this borrow.
        let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
        if gate.park_if_requested(stop_fd) == Parked::Stopped {
            debug!("vif I/O thread stopping");
            return;
        }
        let tx_more = q.process_tx(&mut |pkt| tap.write_packet(pkt));
        let rx_more = move_rx(&mut q, tap, &mut buf, &mut pending);
        q.push_rx();
        if pending.is_some() && q.arm_rx() {
            continue; // buffers arrived while we armed
        }
        // Idle, the thread sleeps until a kick, the TAP or the stop event:
        // an idle vif costs nothing (the guest's ring notifications are
        // what Xen's netback relies on too).
        let timeout = if tx_more || rx_more {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        let (kick_tx, kick_rx) = match q.channels() {
            Channels::Shared(c) => (c.kick_fd(), None),
            Channels::Split { tx, rx } => (tx.kick_fd(), Some(rx.kick_fd())),
        };
        let mut fds = vec![
            PollFd::new(stop_fd, PollFlags::POLLIN),
            PollFd::new(gate.wake_fd(), PollFlags::POLLIN),
            PollFd::new(kick_tx, PollFlags::POLLIN),
        ];
        if let Some(k) = kick_rx {
            fds.push(PollFd::new(k, PollFlags::POLLIN));
        }
        if pending.is_none() {
            fds.push(PollFd::new(tap.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                warn!("vif I/O thread: poll: {e}");
                return;
            }
        }
        if stop.read().is_ok() {
            debug!("vif I/O thread stopping");
            return;
        }
        gate.clear_wake();
        let ch = q.channels();
        let kicks = match ch {
            Channels::Shared(c) => c.ack() as u64,
            Channels::Split { tx, rx } => tx.ack() as u64 + rx.ack() as u64,
        };
        VifStats::add(&stats.kicks_in, kicks);
    }
}

/// Move host packets into the guest; true if more may be waiting.
fn move_rx(
    q: &mut NetQueue,
    tap: &TapQueue,
    buf: &mut [u8],
    pending: &mut Option<Vec<u8>>,
) -> bool {
    if let Some(p) = pending.as_deref() {
        if q.deliver_rx(p) == RxOutcome::NoRoom {
            return false;
        }
        *pending = None;
    }
    for _ in 0..RX_BATCH {
        match tap.read_packet(buf) {
            Ok(n) => {
                if q.deliver_rx(&buf[..n]) == RxOutcome::NoRoom {
                    *pending = Some(buf[..n].to_vec());
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                warn!("vif: reading the tap: {e}");
                return false;
            }
        }
    }
    true
}
