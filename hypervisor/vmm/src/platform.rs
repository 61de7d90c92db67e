//! The VMM side of [`kxen_xen::Platform`].

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

use kxen_xen::{EventLayout, OverlayFrame, Platform};

use crate::dom0::Dom0Ports;
use crate::events::EventRouting;
use crate::memory::GuestMemory;
use crate::vm::{DomainExit, Kicker, Runtime};

pub struct VmmPlatform {
    pub domid: u16,
    pub memory: Arc<GuestMemory>,
    pub kicker: Arc<Kicker>,
    pub dom0: Arc<Dom0Ports>,
    pub events: Arc<EventRouting>,
    /// Set once the runtime exists (it owns the domain that owns us).
    pub runtime: Arc<Mutex<Option<Weak<Runtime>>>>,
}

impl VmmPlatform {
    fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }
}

impl Platform for VmmPlatform {
    fn raise_upcall(&self, vcpu: u32, vector: u8) {
        if let Some(rt) = self.runtime() {
            rt.inject_vector(vcpu, vector);
        }
    }

    fn kick_vcpu(&self, vcpu: u32) {
        self.kicker.kick(vcpu);
    }

    fn map_overlay(&self, gfn: u64, frame: OverlayFrame) -> Result<(), i64> {
        self.memory.map_overlay(gfn, frame)
    }

    fn unmap_overlay(&self, gfn: u64) {
        self.memory.unmap_overlay(gfn);
    }

    fn discard_ram(&self, gfn: u64) {
        self.memory.discard_ram(gfn);
    }

    fn shutdown(&self, reason: u32) {
        if let Some(rt) = self.runtime() {
            rt.request_exit(DomainExit::Shutdown(reason));
        }
    }

    fn console_write(&self, data: &[u8]) {
        // Xen's own console: lines from guests carry a (dN) prefix.
        let text = String::from_utf8_lossy(data);
        let mut err = std::io::stderr().lock();
        for line in text.split_inclusive('\n') {
            let _ = write!(err, "(d{}) {line}", self.domid);
        }
        let _ = err.flush();
    }

    fn notify_remote(&self, remote_dom: u16, remote_port: u32) {
        if remote_dom == 0 && !self.events.notify_dom0(remote_port) {
            self.dom0.notify(remote_port);
        }
    }

    fn begin_event_layout_change(&self) {
        self.events.area.begin_change();
    }

    fn publish_event_layout(&self, layout: &EventLayout) {
        self.events.publish_layout(layout);
    }

    fn publish_port(&self, port: u32, notify_vcpu: u32, dom0_port: u32) {
        self.events.area.set_port(port, notify_vcpu, dom0_port);
    }

    fn set_blocked(&self, vcpu: u32, blocked: bool) {
        self.events.area.set_blocked(vcpu, blocked);
    }

    fn upcall_vector_changed(&self, vcpu: u32, vector: Option<u8>) {
        self.events.set_vector(vcpu, vector);
    }

    fn bind_dom0_unbound(&self, dom0_port: u32, local_port: u32) -> Result<(), i64> {
        self.events.bind_unbound(dom0_port, local_port)
    }

    fn remote_port_closed(&self, remote_dom: u16, remote_port: u32) {
        if remote_dom == 0 {
            self.events.guest_closed(remote_port);
        }
    }
}
