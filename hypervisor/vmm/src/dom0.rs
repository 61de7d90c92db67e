//! The link to Dom0's console and xenstore services (kxend, or kxen-run
//! for a domain of its own).
//!
//! Each Dom0-side port (the console and xenstore ends) gets two eventfds:
//! `to_dom0`, written when the guest sends on its end, and `from_dom0`,
//! which Dom0 writes to raise the guest's end. Dom0 fetches them, with
//! the ring PFNs and the memfd layout, through the control socket
//! (`dom0-ports`).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use kxen_xen::Domain;
use tracing::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::event_loop::{drain, watch};

pub use kxen_vmm_api::protocol::Dom0PortInfo;

pub struct Dom0Port {
    pub name: &'static str,
    pub dom0_port: u32,
    pub pfn: u64,
    /// The guest's end, known once the domain has bound it.
    local_port: AtomicU32,
    pub to_dom0: EventFd,
    pub from_dom0: EventFd,
}

pub struct Dom0Ports {
    pub ports: Vec<Dom0Port>,
}

impl Dom0Ports {
    /// One port per (name, Dom0 port, ring pfn); the guest's ends are
    /// recorded with [`Dom0Ports::bound`] once the domain has them.
    pub fn new(specs: &[(&'static str, u32, u64)]) -> std::io::Result<Self> {
        let mut ports = Vec::new();
        for &(name, dom0_port, pfn) in specs {
            ports.push(Dom0Port {
                name,
                dom0_port,
                pfn,
                local_port: AtomicU32::new(0),
                to_dom0: EventFd::new(EFD_NONBLOCK)?,
                from_dom0: EventFd::new(EFD_NONBLOCK)?,
            });
        }
        Ok(Dom0Ports { ports })
    }

    /// The guest's port `local_port` is connected to Dom0's `dom0_port`.
    pub fn bound(&self, dom0_port: u32, local_port: u32) {
        if let Some(p) = self.ports.iter().find(|p| p.dom0_port == dom0_port) {
            p.local_port.store(local_port, Ordering::SeqCst);
        }
    }

    /// The guest sent an event to Dom0's `dom0_port`.
    pub fn notify(&self, dom0_port: u32) {
        if let Some(p) = self.ports.iter().find(|p| p.dom0_port == dom0_port) {
            if let Err(e) = p.to_dom0.write(1) {
                warn!(dom0_port, "kick kxend: {e}");
            }
        } else {
            debug!(dom0_port, "event for an unknown Dom0 port");
        }
    }

    /// The fds Dom0 receives, in port order: to_dom0, from_dom0.
    pub fn fds(&self) -> Vec<RawFd> {
        self.ports
            .iter()
            .flat_map(|p| [p.to_dom0.as_raw_fd(), p.from_dom0.as_raw_fd()])
            .collect()
    }

    pub fn infos(&self) -> Vec<Dom0PortInfo> {
        self.ports
            .iter()
            .map(|p| Dom0PortInfo {
                name: p.name.into(),
                dom0_port: p.dom0_port,
                local_port: p.local_port.load(Ordering::SeqCst),
                pfn: p.pfn,
            })
            .collect()
    }
}

/// Forwards Dom0's notifications on the console and xenstore ports to the
/// guest, from the event loop.
pub struct Dom0Notifications {
    pub ports: Arc<Dom0Ports>,
    pub domain: Arc<Domain>,
}

impl MutEventSubscriber for Dom0Notifications {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, port) in self.ports.ports.iter().enumerate() {
            watch(ops, &port.from_dom0, index as u32, port.name);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let Some(port) = self.ports.ports.get(events.data() as usize) else {
            return;
        };
        if drain(&port.from_dom0) {
            self.domain
                .notify_from_remote(port.local_port.load(Ordering::SeqCst));
        }
    }
}
