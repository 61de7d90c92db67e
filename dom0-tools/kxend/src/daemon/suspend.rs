//! Xen's suspend protocol (issue 17), as libxl drives it for `xl save`
//! and for a migration's last pass: a guest that says it takes part
//! (`control/feature-suspend = 1`, which Linux writes at boot) is asked
//! through `control/shutdown = suspend`; it acknowledges by clearing the
//! node, quiesces its frontends and calls SCHEDOP_shutdown(SHUTDOWN_suspend),
//! which leaves the domain suspended and paused in kxen-vmm. Its image
//! then resumes in a new domain as in a new Xen domain: the hypercall
//! returns 0, the guest binds its event channels and maps its frames again,
//! and its frontends reconnect to the backends the restore set up.
//!
//! A guest may instead give a suspend event channel, as libxl knows them:
//! a port it allocated unbound for Dom0, in `device/suspend/event-channel`
//! (libxl creates the node empty, for the guest to fill). kxend then binds
//! a port of its own to it and notifies it, with no xenstore request and
//! no acknowledgement, and waits for the guest to suspend, as libxl does
//! (60 s); if the binding fails it asks through `control/shutdown`.
//!
//! A classic PV guest is always asked, as libxl asks it.
//!
//! A guest that does not offer the protocol is paused instead, and its
//! whole Xen state goes in the image: kxen, unlike Xen, owns all of it.
//!
//! A guest that offers it and then ignores the request gets libxl's
//! treatment: after the limit the request is withdrawn, the save fails
//! with a clear error, and the domain runs on.

use std::time::{Duration, Instant};

use kxen_vmm_api::VmmClient;
use tracing::warn;

use super::*;

/// Environment variable overriding [`DEFAULT_SUSPEND_LIMIT`], in seconds.
pub const SUSPEND_TIMEOUT_ENV: &str = "KXEN_SUSPEND_TIMEOUT";
/// How long the guest may take to acknowledge the request, and then to
/// suspend (libxl waits 60 s for each).
pub const DEFAULT_SUSPEND_LIMIT: Duration = Duration::from_secs(60);
/// How often the guest's progress is looked at while waiting.
const POLL: Duration = Duration::from_millis(5);

/// How a domain was stopped for its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stopped {
    /// Paused by the toolstack; its Xen state goes in the image.
    Paused,
    /// It suspended itself (Xen's protocol); it resumes as a new domain,
    /// or in place with its suspend cancelled.
    Suspended,
}

/// The suspend limit: [`SUSPEND_TIMEOUT_ENV`] seconds when set to a whole
/// number above zero, else [`DEFAULT_SUSPEND_LIMIT`].
pub fn suspend_limit_from_env() -> Duration {
    let Some(raw) = std::env::var_os(SUSPEND_TIMEOUT_ENV) else {
        return DEFAULT_SUSPEND_LIMIT;
    };
    match raw.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => {
            warn!(
                "{SUSPEND_TIMEOUT_ENV}={raw:?} is not a number of seconds above 0; using {} s",
                DEFAULT_SUSPEND_LIMIT.as_secs()
            );
            DEFAULT_SUSPEND_LIMIT
        }
    }
}

impl Daemon {
    /// Whether `d`'s guest offers Xen's suspend protocol.
    fn offers_suspend(&self, d: &Domain) -> bool {
        // A classic PV guest is always asked, as libxl asks it: the
        // protocol is part of the PV contract, and a guest resumed from an
        // image never writes its feature nodes again (Linux writes them
        // once, at boot).
        if d.record.config.domain_type == kxen_toolstack::config::DomainType::Pv {
            return true;
        }
        let path = format!("/local/domain/{}/control/feature-suspend", d.record.domid);
        self.store
            .xenstored()
            .read(&path)
            .is_ok_and(|v| v.trim_ascii() == b"1")
            || self.suspend_event_channel(d).is_some()
    }

    /// The port the guest gave for Xen's suspend event channel
    /// (`device/suspend/event-channel`), if it gave one.
    fn suspend_event_channel(&self, d: &Domain) -> Option<u32> {
        let path = format!(
            "/local/domain/{}/device/suspend/event-channel",
            d.record.domid
        );
        let value = self.store.xenstored().read(&path).ok()?;
        let port: u32 = std::str::from_utf8(&value).ok()?.trim().parse().ok()?;
        (port != 0).then_some(port)
    }

    /// libxl's first way to ask: notify the guest's suspend event channel
    /// through a Dom0 port bound to it for the occasion (closed again when
    /// this returns, which leaves the guest's port unbound for the next
    /// time), then wait for the guest to suspend.
    fn suspend_through_channel(
        &self,
        d: &Domain,
        channel: &kxen_foreign::evtchn::Dom0Channel,
    ) -> Result<Stopped, String> {
        channel.notify();
        self.await_suspend(
            d,
            "after its suspend event channel was notified",
            " (suspend event channel)",
        )
    }

    /// Wait for a guest that was asked to suspend, then pause it. `after`
    /// says what the wait followed (for the error), `via` how it was
    /// asked (for the log).
    fn await_suspend(&self, d: &Domain, after: &str, via: &str) -> Result<Stopped, String> {
        let id = d.record.domid;
        let suspended = wait_until(self.suspend_limit, || d.info().is_ok_and(|i| i.suspended));
        if !suspended {
            return Err(format!(
                "guest did not suspend, timed out (waited {} s {after})",
                self.suspend_limit.as_secs()
            ));
        }
        d.pause().map_err(|e| format!("pausing domain {id}: {e}"))?;
        self.log(&format!(
            "domain {id} ({}) suspended itself on request{via}",
            d.record.name
        ));
        Ok(Stopped::Suspended)
    }

    /// Stop `d` for its image: ask a guest that offers the suspend protocol
    /// to suspend itself, pause any other. On an error the domain runs as
    /// before (the request withdrawn).
    pub(super) fn stop_for_image(&self, d: &Domain) -> Result<Stopped, String> {
        let id = d.record.domid;
        let running = d.info().map_err(|e| format!("domain {id}: {e}"))?;
        if running.suspended {
            // Suspended already (by itself, with nobody asking): save it
            // as it is.
            d.pause().map_err(|e| format!("pausing domain {id}: {e}"))?;
            return Ok(Stopped::Suspended);
        }
        if running.paused || !self.offers_suspend(d) {
            d.pause().map_err(|e| format!("pausing domain {id}: {e}"))?;
            return Ok(Stopped::Paused);
        }
        if let Some(port) = self.suspend_event_channel(d) {
            match self.devices_of(id).bind_suspend_channel(port) {
                Ok(channel) => return self.suspend_through_channel(d, &channel),
                Err(e) => self.log(&format!(
                    "domain {id}: suspend event channel {port} initialization failed ({e}); asking through control/shutdown"
                )),
            }
        }
        let node = format!("/local/domain/{id}/control/shutdown");
        let store = self.store.xenstored();
        store
            .write(&node, b"suspend")
            .map_err(|e| format!("writing {node}: {e}"))?;
        // The guest acknowledges by clearing the node.
        let acked = wait_until(self.suspend_limit, || {
            store.read(&node).map_or(true, |v| v.is_empty())
        });
        if !acked {
            let _ = store.rm(&node);
            // It may have suspended between the last look and the rm.
            if !d.info().is_ok_and(|i| i.suspended) {
                return Err(format!(
                    "guest didn't acknowledge suspend, cancelling request (waited {} s)",
                    self.suspend_limit.as_secs()
                ));
            }
        }
        self.await_suspend(d, "after it acknowledged", "")
    }

    /// Undo [`Self::stop_for_image`] for a domain that stays here (a
    /// checkpoint, or a save or migration that failed): a suspend is
    /// cancelled, so the guest's suspend hypercall returns 1 and it goes
    /// on with its devices as they were; then it is unpaused unless
    /// `keep_paused`.
    pub(super) fn resume_after_image(
        &self,
        d: &Domain,
        stopped: Stopped,
        keep_paused: bool,
    ) -> Result<(), String> {
        if stopped == Stopped::Suspended {
            let mut link = VmmClient::connect(&d.record.control).map_err(|e| e.to_string())?;
            link.resume_suspended().map_err(|e| e.to_string())?;
        }
        if keep_paused {
            return Ok(());
        }
        d.unpause().map_err(|e| e.to_string())
    }
}

/// Poll `ready` every [`POLL`] until it holds or `limit` passes.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}
