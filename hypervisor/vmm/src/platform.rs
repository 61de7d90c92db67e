//! The VMM side of [`kxen_xen::Platform`].
//!
//! The domain owns its platform, so the platform holds only handles that
//! do not lead back to the domain: memory, the kicker, the event routing
//! (which also raises upcalls), Dom0's ports, the exit latch, the guest
//! entry gate and the timer service's eventfd.

use std::io::Write;
use std::sync::Arc;

use kxen_xen::{EventLayout, OverlayFrame, Platform};
use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::dom0::Dom0Ports;
use crate::events::EventRouting;
use crate::exit::{DomainExit, ExitLatch};
use crate::kick::Kicker;
use crate::memory::GuestMemory;
use crate::vcpu::gate::GuestEntryGate;

pub struct VmmPlatform {
    pub domid: u16,
    pub memory: Arc<GuestMemory>,
    pub nr_vcpus: u32,
    /// A toolstack holds the control socket: a guest that suspends itself
    /// stays, paused, for it to save. Without one (kxen-run) the domain
    /// ends with exit status 3, as there is nobody to save it.
    pub keep_suspended: bool,
    pub kicker: Arc<Kicker>,
    pub dom0: Arc<Dom0Ports>,
    pub events: Arc<EventRouting>,
    pub exit: Arc<ExitLatch>,
    /// The guest entry gate: a vCPU blocked in SCHEDOP_block/poll counts
    /// as out of the guest, so pausing a blocked domain does not wait.
    pub gate: Arc<GuestEntryGate>,
    /// Written when a vCPU timer changes; the event loop's timer service
    /// re-plans.
    pub timers_changed: EventFd,
}

impl Platform for VmmPlatform {
    fn raise_upcall(&self, vcpu: u32, vector: u8) {
        self.events.inject_vector(vcpu, vector);
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
        if reason == xen_abi::sched::SHUTDOWN_SUSPEND && self.keep_suspended {
            // Xen keeps a suspended domain, paused, for the toolstack to
            // save (or resume): no vCPU enters the guest again, the
            // suspending one as soon as its hypercall is answered.
            self.gate.close();
            for vcpu in 0..self.nr_vcpus {
                self.kicker.kick(vcpu);
            }
            return;
        }
        self.exit.request_exit(DomainExit::Shutdown(reason));
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

    fn event_abi_changed(&self, fifo: bool) {
        self.events.area.set_event_abi(fifo);
    }

    fn publish_event_layout(&self, layout: &EventLayout) {
        self.events.publish_layout(layout);
    }

    fn publish_port(&self, port: u32, notify_vcpu: u32, dom0_port: u32) {
        self.events.area.set_port(port, notify_vcpu, dom0_port);
    }

    fn set_blocked(&self, vcpu: u32, blocked: bool) {
        self.events.area.set_blocked(vcpu, blocked);
        // A vCPU waiting for an event is not running for pause's sake.
        if blocked {
            self.gate.leave();
        } else {
            self.gate.resume();
        }
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

    fn timers_changed(&self) {
        if let Err(e) = self.timers_changed.write(1) {
            warn!("waking the timer service: {e}");
        }
    }
}
