//! The VMM's one event thread: everything that is not a vCPU (Dom0's
//! notifications, blocked-vCPU wake-ups, Xen timers, virtio interrupts, the
//! control socket, termination signals, the AP mailbox) is an
//! [`event_manager`] subscriber on one epoll set. The thread sleeps in
//! `epoll_wait` without a timeout: an idle domain costs no wake-ups.
//!
//! The loop ends when the domain's [`ExitLatch`] fires.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use kxen_xen::Domain;

use crate::exit::{DomainExit, ExitLatch};

/// A subscriber of the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wrap a subscriber for [`EventLoop::add`].
pub fn subscriber<S: MutEventSubscriber + Send + 'static>(s: S) -> Subscriber {
    Arc::new(Mutex::new(s))
}

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("event manager: {0}")]
    Manager(#[from] event_manager::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct EventLoop {
    manager: EventManager<Subscriber>,
    done: Arc<AtomicBool>,
}

impl EventLoop {
    /// A loop that runs until `exit` fires.
    pub fn new(exit: Arc<ExitLatch>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::new()?;
        let done = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(subscriber(ExitWatch {
            exit,
            done: done.clone(),
        }));
        Ok(EventLoop { manager, done })
    }

    pub fn add(&mut self, s: Subscriber) {
        self.manager.add_subscriber(s);
    }

    /// Dispatch events until the domain's exit is requested.
    pub fn run(&mut self) -> Result<(), EventLoopError> {
        while !self.done.load(Ordering::SeqCst) {
            self.manager.run()?;
        }
        Ok(())
    }
}

/// Add `fd` to the subscriber's interest list, logging a failure (an init
/// cannot return one).
pub fn watch(ops: &mut EventOps, fd: &impl AsRawFd, data: u32, what: &str) {
    if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
        warn!("event loop: cannot watch {what}: {e}");
    }
}

/// Read an eventfd that epoll reported; false if there was nothing.
pub fn drain(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

/// Ends the loop when the domain's exit is requested.
struct ExitWatch {
    exit: Arc<ExitLatch>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.exit.fd(), EventSet::IN)) {
            warn!("event loop: cannot watch the exit latch: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The latch stays readable: nothing to read, the loop is over.
        self.done.store(true, Ordering::SeqCst);
    }
}

/// SIGTERM and SIGINT destroy the domain. Every thread blocks them
/// ([`SignalWatch::block_termination`] runs before any thread starts) and
/// the loop reads them from a signalfd.
pub struct SignalWatch {
    fd: SignalFd,
    exit: Arc<ExitLatch>,
}

impl SignalWatch {
    fn termination() -> SigSet {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set
    }

    /// Block SIGTERM and SIGINT in the calling thread and every thread it
    /// starts from now on.
    pub fn block_termination() -> nix::Result<()> {
        Self::termination().thread_block()
    }

    pub fn new(exit: Arc<ExitLatch>) -> nix::Result<Self> {
        let fd = SignalFd::with_flags(
            &Self::termination(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        Ok(SignalWatch { fd, exit })
    }
}

impl MutEventSubscriber for SignalWatch {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.fd, 0, "the termination signals");
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(sig)) = self.fd.read_signal() {
            info!(signal = sig.ssi_signo, "destroying the domain");
            self.exit.request_exit(DomainExit::Destroyed);
        }
    }
}

/// A non-blocking monotonic timerfd.
pub fn new_timer() -> nix::Result<TimerFd> {
    TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
}

/// Arm `timer` to fire once after `after`, or disarm it.
pub fn arm_once(timer: &TimerFd, after: Option<Duration>) {
    let result = match after {
        // A zero expiration would disarm: fire at once instead.
        Some(d) => timer.set(
            Expiration::OneShot(TimeSpec::from_duration(d.max(Duration::from_nanos(1)))),
            TimerSetTimeFlags::empty(),
        ),
        None => timer.unset(),
    };
    if let Err(e) = result {
        warn!("timerfd: {e}");
    }
}

/// The Xen layer's vCPU timers (singleshot and periodic) on a timerfd,
/// re-planned when the domain says its timers changed.
pub struct DomainTimers {
    domain: Arc<Domain>,
    timer: TimerFd,
    /// Written by the platform when a timer was set or cleared.
    changed: EventFd,
}

const TIMER_EXPIRED: u32 = 0;
const TIMERS_CHANGED: u32 = 1;

impl DomainTimers {
    /// `changed` is the eventfd the platform writes on a timer change.
    pub fn new(domain: Arc<Domain>, changed: EventFd) -> nix::Result<Self> {
        Ok(DomainTimers {
            domain,
            timer: new_timer()?,
            changed,
        })
    }

    fn replan(&self) {
        let next = self.domain.fire_due_timers();
        arm_once(&self.timer, next);
    }
}

impl MutEventSubscriber for DomainTimers {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.timer.as_fd(), TIMER_EXPIRED, "the Xen timers");
        watch(ops, &self.changed, TIMERS_CHANGED, "Xen timer changes");
        // Timers set while the domain was built.
        self.replan();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TIMER_EXPIRED => {
                // Non-blocking: a re-arm in this batch may have reset it.
                let _ = self.timer.wait();
            }
            _ => {
                drain(&self.changed);
            }
        }
        self.replan();
        debug!("Xen timers re-planned");
    }
}
