//! Stopping a backend's I/O thread between requests, and starting it
//! again: what a live migration's final pass needs (issue 17). Once every
//! thread of a domain's backends is parked, no request is being served,
//! every response taken so far is on its ring and every guest page those
//! requests wrote is written (and in the Dom0 dirty log), so the paused
//! domain's memory no longer changes behind the final pass.
//!
//! One gate per I/O thread. The toolstack side calls [`QuiesceGate::request`]
//! then [`QuiesceGate::wait_parked`], and later [`QuiesceGate::resume`]; the
//! thread polls [`QuiesceGate::wake_fd`] beside its kicks and calls
//! [`QuiesceGate::park_if_requested`] where it holds no request.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// The thread was still serving a request at the deadline.
    #[error("an I/O thread did not finish its in-flight request before the deadline")]
    Timeout,
}

#[derive(Default)]
struct State {
    /// The thread sleeps in `park_if_requested`.
    parked: bool,
    /// The thread has returned for good (stopped, or its ring broke): it
    /// takes no request either.
    exited: bool,
}

/// The meeting point of one I/O thread and whoever quiesces it.
pub struct QuiesceGate {
    /// Read by the thread between requests, without the lock.
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    /// Written on request and on resume, so a thread asleep in poll()
    /// notices either.
    wake: EventFd,
}

/// What [`QuiesceGate::park_if_requested`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Parked {
    /// Nothing was requested; the thread goes on.
    No,
    /// The thread was parked and is resumed: it must look at its rings
    /// again, since kicks that came meanwhile may already be consumed.
    Resumed,
    /// The stop event fired while parked: the thread returns.
    Stopped,
}

impl QuiesceGate {
    pub fn new() -> std::io::Result<QuiesceGate> {
        Ok(QuiesceGate {
            requested: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the thread to park once its current request is answered.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Whether a quiesce is asked for: the thread takes no new request.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Wait until the thread is parked (or gone), at most until `deadline`.
    pub fn wait_parked(&self, deadline: Instant) -> Result<(), QuiesceError> {
        let mut state = self.lock();
        while !(state.parked || state.exited) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QuiesceError::Timeout);
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Let the thread serve its rings again. Harmless when not quiesced.
    pub fn resume(&self) {
        if self.requested.swap(false, Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
    }

    /// The fd the thread polls beside its kicks; readable after a request
    /// or a resume. The thread need not read it: `park_if_requested` and
    /// [`QuiesceGate::clear_wake`] do.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd lives as long as `self`, which the borrow
        // is tied to.
        unsafe { BorrowedFd::borrow_raw(self.wake.as_raw_fd()) }
    }

    /// Drain the wake event after poll() returned.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    /// The thread is returning for good.
    pub fn exited(&self) {
        self.lock().exited = true;
        self.changed.notify_all();
    }

    /// Thread side, called where the thread holds no request: if a
    /// quiesce is asked for, say so and sleep until resumed or `stop`
    /// becomes readable (it is not read, so the caller still sees it).
    pub fn park_if_requested(&self, stop: BorrowedFd<'_>) -> Parked {
        if !self.is_requested() {
            return Parked::No;
        }
        self.lock().parked = true;
        self.changed.notify_all();
        let outcome = loop {
            self.clear_wake();
            if !self.is_requested() {
                break Parked::Resumed;
            }
            let mut fds = [
                PollFd::new(stop, PollFlags::POLLIN),
                PollFd::new(self.wake_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                // poll on two valid fds fails only for want of memory;
                // a parked thread that cannot sleep stops.
                Err(_) => break Parked::Stopped,
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                break Parked::Stopped;
            }
        };
        self.lock().parked = false;
        outcome
    }
}

/// Quiesce every gate of `gates` by `deadline`: all are asked first, so
/// their in-flight requests finish together.
pub fn quiesce_all<'a>(
    gates: impl IntoIterator<Item = &'a QuiesceGate> + Clone,
    deadline: Instant,
) -> Result<(), QuiesceError> {
    for g in gates.clone() {
        g.request();
    }
    for g in gates {
        g.wait_parked(deadline)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_thread_parks_between_requests_and_resumes() {
        let gate = Arc::new(QuiesceGate::new().unwrap());
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let g = gate.clone();
        let resumed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let resumed2 = resumed.clone();
        let t = std::thread::spawn(move || {
            // SAFETY: `stop2` lives until this closure returns.
            let stop_fd = unsafe { BorrowedFd::borrow_raw(stop2.as_raw_fd()) };
            loop {
                match g.park_if_requested(stop_fd) {
                    Parked::Stopped => return,
                    Parked::Resumed => {
                        resumed2.fetch_add(1, Ordering::SeqCst);
                    }
                    Parked::No => {}
                }
                let mut fds = [
                    PollFd::new(stop_fd, PollFlags::POLLIN),
                    PollFd::new(g.wake_fd(), PollFlags::POLLIN),
                ];
                poll(&mut fds, PollTimeout::NONE).unwrap();
                g.clear_wake();
                if stop2.read().is_ok() {
                    return;
                }
            }
        });
        gate.request();
        gate.wait_parked(Instant::now() + Duration::from_secs(10))
            .unwrap();
        gate.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while resumed.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the thread was not resumed");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Parked again: the thread went back through the gate.
        gate.request();
        gate.wait_parked(Instant::now() + Duration::from_secs(10))
            .unwrap();
        stop.write(1).unwrap();
        t.join().unwrap();
        assert_eq!(resumed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_busy_thread_times_out_with_an_error() {
        let gate = QuiesceGate::new().unwrap();
        gate.request();
        let started = Instant::now();
        let r = gate.wait_parked(started + Duration::from_millis(50));
        assert!(matches!(r, Err(QuiesceError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        gate.exited();
        gate.wait_parked(Instant::now()).unwrap();
    }
}
