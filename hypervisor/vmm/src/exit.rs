//! How a domain ends, and the latch that records it.
//!
//! Whoever ends the domain first (the guest's shutdown hypercall, a vCPU
//! that crashed, a toolstack's `destroy`, SIGTERM) decides the reason. The
//! latch runs the stop hooks the builder gave it (closing the guest entry
//! gate, so no vCPU enters the guest again) and wakes the event loop
//! through an eventfd, which then stops the rest.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use tracing::{info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How a domain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainExit {
    /// The guest shut itself down with a SHUTDOWN_* reason.
    Shutdown(u32),
    /// The hypervisor ended the domain (triple fault, emulation failure...).
    Crashed(String),
    /// The VMM was told to destroy the domain (SIGTERM, SIGINT).
    Destroyed,
}

impl DomainExit {
    /// Process exit status: 0 poweroff, 2 reboot, 3 suspend, 4 guest crash,
    /// 5 watchdog, 6 soft reset, 7 ended by the hypervisor.
    pub fn exit_code(&self) -> i32 {
        match self {
            DomainExit::Shutdown(r) => match *r {
                xen_abi::sched::SHUTDOWN_POWEROFF => 0,
                xen_abi::sched::SHUTDOWN_REBOOT => 2,
                xen_abi::sched::SHUTDOWN_SUSPEND => 3,
                xen_abi::sched::SHUTDOWN_CRASH => 4,
                xen_abi::sched::SHUTDOWN_WATCHDOG => 5,
                _ => 6,
            },
            DomainExit::Crashed(_) => 7,
            DomainExit::Destroyed => 8,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            DomainExit::Shutdown(r) => format!(
                "shutdown: {}",
                match *r {
                    0 => "poweroff",
                    1 => "reboot",
                    2 => "suspend",
                    3 => "crash",
                    4 => "watchdog",
                    _ => "soft_reset",
                }
            ),
            DomainExit::Crashed(why) => format!("crashed: {why}"),
            DomainExit::Destroyed => "destroyed".into(),
        }
    }
}

/// A stop hook: run on every exit request, first or not.
pub type StopHook = Box<dyn Fn() + Send + Sync>;

/// Records the first exit request and tells the event loop.
pub struct ExitLatch {
    domid: u16,
    reason: Mutex<Option<DomainExit>>,
    /// Readable once an exit was requested; the event loop watches it.
    requested: EventFd,
    hooks: Vec<StopHook>,
}

impl ExitLatch {
    pub fn new(domid: u16, hooks: Vec<StopHook>) -> std::io::Result<Self> {
        Ok(ExitLatch {
            domid,
            reason: Mutex::new(None),
            requested: EventFd::new(EFD_NONBLOCK)?,
            hooks,
        })
    }

    /// First caller decides how the domain ended; everyone is told to stop.
    pub fn request_exit(&self, why: DomainExit) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if reason.is_none() {
                info!(domid = self.domid, "domain {}", why.describe());
                *reason = Some(why);
            }
        }
        for hook in &self.hooks {
            hook();
        }
        if let Err(e) = self.requested.write(1) {
            warn!("waking the event loop for the domain's end: {e}");
        }
    }

    /// The reason, once an exit was requested.
    pub fn reason(&self) -> Option<DomainExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn fd(&self) -> RawFd {
        self.requested.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_hooks_run_every_time() {
        let stops = Arc::new(AtomicU32::new(0));
        let counted = stops.clone();
        let latch = ExitLatch::new(
            1,
            vec![Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })],
        )
        .unwrap();
        assert_eq!(latch.reason(), None);
        latch.request_exit(DomainExit::Shutdown(0));
        latch.request_exit(DomainExit::Destroyed);
        assert_eq!(latch.reason(), Some(DomainExit::Shutdown(0)));
        assert_eq!(stops.load(Ordering::SeqCst), 2);
        // The eventfd is readable for the event loop.
        let mut value = 0u64;
        // SAFETY: reading 8 bytes into a u64 from the latch's own eventfd.
        let n = unsafe { libc::read(latch.fd(), (&mut value as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(value, 2);
    }
}
