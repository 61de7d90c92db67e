//! The daemon's state machine driven by hand, without threads or sockets:
//! byte-stream clients whose output is collected, and domain rings serviced
//! on demand. For tests and fuzzing; it runs exactly the code the service
//! thread runs.

use std::sync::Arc;

use crate::config::{Config, Quotas};
use crate::core::{Core, RING_BUDGET};
use crate::error::XsError;
use crate::ring::SharedPage;

/// See the module documentation.
pub struct Harness {
    core: Core,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new(Quotas::default())
    }
}

impl Harness {
    pub fn new(quotas: Quotas) -> Harness {
        Harness {
            core: Core::new(Config {
                quotas,
                introduce_hook: None,
            }),
        }
    }

    /// A byte-stream client acting as `domid` (0: privileged, like a
    /// socket client; others: an unprivileged domain).
    pub fn connect(&mut self, domid: u32) -> u64 {
        self.core.add_loopback(domid)
    }

    /// Bytes from a client; false if the client was dropped for a protocol
    /// violation.
    pub fn feed(&mut self, conn: u64, bytes: &[u8]) -> bool {
        let ok = self.core.feed(conn, bytes);
        if !ok {
            self.core.close(conn);
        }
        self.core.flush_dirty();
        self.core.take_effects().run();
        ok
    }

    /// Everything the daemon sent a client so far.
    pub fn output(&mut self, conn: u64) -> Vec<u8> {
        self.core.take_output(conn)
    }

    /// Serve a ring (as [`crate::Xenstored::introduce_domain`]).
    pub fn introduce(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Box<dyn Fn() + Send + Sync>,
    ) {
        self.core.introduce(domid, page, Arc::from(notify));
        self.core.flush_dirty();
        self.core.take_effects().run();
    }

    /// Service a domain's ring once (as after an event-channel kick):
    /// returns true if more input is waiting than one round handles.
    pub fn kick(&mut self, domid: u32) -> bool {
        let more = match self.core.domain_conn(domid) {
            Some(c) => self.core.service_ring(c, RING_BUDGET),
            None => false,
        };
        self.core.flush_dirty();
        self.core.take_effects().run();
        more
    }

    pub fn release(&mut self, domid: u32) -> Result<(), XsError> {
        let r = self.core.release(domid);
        self.core.flush_dirty();
        self.core.take_effects().run();
        r
    }

    /// A domain's part of the store (as [`crate::Xenstored::export_domain`]).
    pub fn export_domain(&self, domid: u32) -> crate::image::DomainImage {
        self.core.export_domain(domid)
    }

    /// Bring a saved part back (as [`crate::Xenstored::import_domain`]).
    pub fn import_domain(
        &mut self,
        domid: u32,
        image: &crate::image::DomainImage,
    ) -> Result<(usize, usize), XsError> {
        let r = self.core.import_domain(domid, image);
        self.core.flush_dirty();
        self.core.take_effects().run();
        r
    }

    /// Hold a domain's ring still, or let it go (as
    /// [`crate::Xenstored::freeze_domain`] and
    /// [`crate::Xenstored::thaw_domain`], which also kicks it).
    pub fn freeze(&mut self, domid: u32, frozen: bool) -> Result<(), XsError> {
        let r = self.core.freeze_ring(domid, frozen);
        self.core.flush_dirty();
        self.core.take_effects().run();
        if r.is_ok() && !frozen {
            self.kick(domid);
        }
        r
    }

    /// Drop timed-out watch events as of `now`.
    pub fn expire(&mut self, now: std::time::Instant) {
        self.core.expire_events(now);
    }

    /// Store consistency problems (0 when sound).
    pub fn check(&self) -> usize {
        self.core.check_store()
    }

    /// Number of nodes in the store.
    pub fn nodes(&self) -> usize {
        self.core.store.len()
    }
}
