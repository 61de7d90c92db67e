//! Event delivery between the guest and Dom0 backends without kxen-vmm
//! in the path.
//!
//! * Dom0 -> guest: each vCPU has an eventfd registered as a KVM irqfd on
//!   its own GSI, routed (KVM_SET_GSI_ROUTING) as an MSI to the vCPU's APIC
//!   with its upcall vector. A backend sets the pending bits itself (it
//!   finds them through the routing area) and writes the irqfd; KVM injects
//!   the interrupt without waking any of our threads. A vCPU waiting in
//!   SCHEDOP_block/poll inside the VMM is woken through `wake`, which the
//!   event loop watches ([`Dom0WakeRelay`]).
//! * guest -> Dom0: each Dom0 port bound to the guest has an eventfd the
//!   VMM writes when the guest sends on its end.
//!
//! Dom0 ports 1 and 2 are the console and xenstore ends ([`crate::dom0`]);
//! ports handed out here start at [`FIRST_DOM0_PORT`].

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_msi, KvmIrqRouting,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use tracing::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::errno::EINVAL;

use crate::event_loop::{drain, watch};
use crate::memory::GuestMemory;
use crate::routing::RoutingArea;

/// First Dom0 port number handed out for interdomain channels.
pub const FIRST_DOM0_PORT: u32 = 3;
/// Dom0 ports stay within the 2-level port space.
const LAST_DOM0_PORT: u32 = xen_abi::event_channel::NR_EVENT_CHANNELS_2L - 1;
/// GSI of vCPU 0's irqfd; the in-kernel IOAPIC uses 0..24.
const FIRST_VCPU_GSI: u32 = 24;
const IOAPIC_PINS: u32 = 24;
const PIC_PINS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("no free Dom0 port")]
    NoPorts,
    #[error("Dom0 port {0} is not open")]
    UnknownPort(u32),
    #[error("guest port {port}: errno {errno}")]
    Guest { port: u32, errno: i64 },
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
}

/// Dom0's end of one interdomain channel.
struct Channel {
    /// The guest port it is connected to; None while unbound.
    guest_port: Option<u32>,
    /// Written when the guest sends on its end.
    to_dom0: EventFd,
}

pub struct EventRouting {
    pub area: RoutingArea,
    /// memfd offset of the routing area.
    pub area_offset: u64,
    memory: Arc<GuestMemory>,
    vm: Arc<VmFd>,
    /// Per vCPU: the fd Dom0 writes to interrupt it.
    irqfds: Vec<EventFd>,
    /// Whether the irqfds are KVM irqfds (else the event loop relays).
    irqfd_ok: bool,
    /// Written by Dom0 when it raised an event for a blocked vCPU.
    pub wake: EventFd,
    vectors: Mutex<Vec<Option<u8>>>,
    channels: Mutex<BTreeMap<u32, Channel>>,
    /// Per vCPU: the upcall vector KVM refused last (0: none). KVM drops a
    /// fixed interrupt to a software-disabled LAPIC instead of holding it
    /// in IRR as Xen's vLAPIC does; Linux disables its boot CPU's LAPIC
    /// across a suspend (lapic_suspend) while the resumed kernel already
    /// registers its vcpu_info, whose upcall would be lost for good (an
    /// upcall is raised only when `evtchn_upcall_pending` goes 0 to 1).
    /// [`UpcallRetry`] raises it again until KVM takes it.
    refused: Vec<AtomicU8>,
    /// Written when an upcall was refused: the retry timer starts.
    pub refused_wake: EventFd,
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    e
}

fn msi_route(gsi: u32, apic_id: u32, vector: u8) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    // Fixed delivery, edge, physical destination: what inject_vector sends.
    e.u.msi = kvm_irq_routing_msi {
        address_lo: 0xfee0_0000 | (apic_id << 12),
        address_hi: 0,
        data: vector as u32,
        ..Default::default()
    };
    e
}

impl EventRouting {
    pub fn new(vm: Arc<VmFd>, memory: Arc<GuestMemory>, nr_vcpus: u32) -> std::io::Result<Self> {
        let area_offset = memory.layout.routing_offset();
        let area = RoutingArea::new(&memory.memfd, area_offset, nr_vcpus)?;
        let mut irqfds = Vec::new();
        for _ in 0..nr_vcpus {
            irqfds.push(EventFd::new(EFD_NONBLOCK)?);
        }
        let mut me = EventRouting {
            area,
            area_offset,
            memory,
            vm,
            irqfds,
            irqfd_ok: false,
            wake: EventFd::new(EFD_NONBLOCK)?,
            vectors: Mutex::new(vec![None; nr_vcpus as usize]),
            channels: Mutex::new(BTreeMap::new()),
            refused: (0..nr_vcpus).map(|_| AtomicU8::new(0)).collect(),
            refused_wake: EventFd::new(EFD_NONBLOCK)?,
        };
        // KXEN_NO_IRQFD=1 forces the relay (tests exercise it on hosts
        // where irqfds work).
        let forced_off = std::env::var_os("KXEN_NO_IRQFD").is_some_and(|v| v == "1");
        me.irqfd_ok = match me.install_irqfds() {
            Ok(()) if forced_off => {
                warn!("KXEN_NO_IRQFD=1: Dom0 events relayed by kxen-vmm");
                me.remove_irqfds();
                false
            }
            Ok(()) => true,
            Err(e) => {
                warn!("KVM irqfd/GSI routing unavailable ({e}); Dom0 events relayed by kxen-vmm");
                false
            }
        };
        Ok(me)
    }

    fn install_irqfds(&self) -> Result<(), kvm_ioctls::Error> {
        self.set_routes(&self.vectors.lock().unwrap_or_else(|e| e.into_inner()))?;
        for (vcpu, fd) in self.irqfds.iter().enumerate() {
            self.vm.register_irqfd(fd, FIRST_VCPU_GSI + vcpu as u32)?;
        }
        Ok(())
    }

    fn remove_irqfds(&self) {
        for (vcpu, fd) in self.irqfds.iter().enumerate() {
            let _ = self.vm.unregister_irqfd(fd, FIRST_VCPU_GSI + vcpu as u32);
        }
    }

    /// Replace KVM's GSI routing: the in-kernel PIC/IOAPIC defaults plus
    /// one MSI route per vCPU that has an upcall vector.
    fn set_routes(&self, vectors: &[Option<u8>]) -> Result<(), kvm_ioctls::Error> {
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < PIC_PINS {
                entries.push(irqchip_route(gsi, gsi / 8, gsi % 8));
            }
            entries.push(irqchip_route(gsi, 2, gsi));
        }
        for (vcpu, vector) in vectors.iter().enumerate() {
            if let Some(vector) = vector {
                entries.push(msi_route(
                    FIRST_VCPU_GSI + vcpu as u32,
                    vcpu as u32,
                    *vector,
                ));
            }
        }
        let mut routing =
            KvmIrqRouting::new(entries.len()).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm.set_gsi_routing(&routing)
    }

    /// Whether Dom0's per-vCPU fds are KVM irqfds.
    pub fn irqfd_ok(&self) -> bool {
        self.irqfd_ok
    }

    /// The fds Dom0 receives with the `events` op: one per vCPU, then wake.
    pub fn fds(&self) -> Vec<RawFd> {
        self.irqfds
            .iter()
            .map(|f| f.as_raw_fd())
            .chain([self.wake.as_raw_fd()])
            .collect()
    }

    /// `vcpu` now takes upcalls on `vector`.
    pub fn set_vector(&self, vcpu: u32, vector: Option<u8>) {
        let mut vectors = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = vectors.get_mut(vcpu as usize) else {
            return;
        };
        if *slot == vector {
            return;
        }
        *slot = vector;
        if self.irqfd_ok {
            if let Err(e) = self.set_routes(&vectors) {
                warn!(vcpu, "KVM_SET_GSI_ROUTING: {e}");
            }
        }
    }

    /// Mirror a layout change of the Xen layer into the routing area.
    pub fn publish_layout(&self, layout: &kxen_xen::EventLayout) {
        let off = |gpa: u64| self.memory.memfd_offset(gpa);
        let vcpus: Vec<Option<u64>> = layout
            .vcpu_info_gpa
            .iter()
            .map(|g| g.and_then(off))
            .collect();
        let frames: Vec<Option<u64>> = layout
            .grant_frames
            .iter()
            .map(|g| g.and_then(|gfn| off(gfn << 12)))
            .collect();
        let status: Vec<Option<u64>> = layout
            .grant_status_frames
            .iter()
            .map(|g| g.and_then(|gfn| off(gfn << 12)))
            .collect();
        self.area.publish_layout(
            off(layout.shared_info_gfn << 12),
            &vcpus,
            &frames,
            layout.grant_version,
            &status,
            layout.shared_info_layout.is_compat(),
        );
    }

    // ---- Dom0 ports ---------------------------------------------------------

    fn alloc_port(&self, guest_port: Option<u32>) -> Result<(u32, EventFd), EventError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let port = (FIRST_DOM0_PORT..=LAST_DOM0_PORT)
            .find(|p| !channels.contains_key(p))
            .ok_or(EventError::NoPorts)?;
        let to_dom0 = EventFd::new(EFD_NONBLOCK)?;
        let fd = to_dom0.try_clone()?;
        channels.insert(
            port,
            Channel {
                guest_port,
                to_dom0,
            },
        );
        Ok((port, fd))
    }

    /// Dom0 binds a new port to the guest's unbound `guest_port`.
    pub fn bind_guest_port(
        &self,
        domain: &kxen_xen::Domain,
        guest_port: u32,
    ) -> Result<(u32, EventFd), EventError> {
        let (port, fd) = self.alloc_port(Some(guest_port))?;
        // The domain lock is taken without ours held (lock order: domain,
        // then channels).
        if let Err(errno) = domain.dom0_bind(guest_port, port) {
            self.channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&port);
            return Err(EventError::Guest {
                port: guest_port,
                errno,
            });
        }
        Ok((port, fd))
    }

    /// Dom0 allocates a port for the guest to bind.
    pub fn alloc_unbound(&self) -> Result<(u32, EventFd), EventError> {
        self.alloc_port(None)
    }

    /// Dom0 closes its port; the guest's end becomes unbound.
    pub fn close(&self, domain: &kxen_xen::Domain, port: u32) -> Result<(), EventError> {
        let channel = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port)
            .ok_or(EventError::UnknownPort(port))?;
        if let Some(guest_port) = channel.guest_port {
            domain.dom0_closed(guest_port, port);
        }
        Ok(())
    }

    /// The guest sent on a port bound to Dom0's `port`; false if the port
    /// is not one of ours.
    pub fn notify_dom0(&self, port: u32) -> bool {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match channels.get(&port) {
            Some(c) => {
                if let Err(e) = c.to_dom0.write(1) {
                    warn!(port, "kick Dom0: {e}");
                }
                true
            }
            None => false,
        }
    }

    /// The guest binds its `local_port` to Dom0's unbound `port`.
    pub fn bind_unbound(&self, port: u32, local_port: u32) -> Result<(), i64> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match channels.get_mut(&port) {
            Some(c) if c.guest_port.is_none() => {
                c.guest_port = Some(local_port);
                Ok(())
            }
            _ => Err(-EINVAL),
        }
    }

    /// The guest closed its end of Dom0's `port`: Dom0's end is unbound
    /// again (the guest may bind it anew).
    pub fn guest_closed(&self, port: u32) {
        if let Some(c) = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&port)
        {
            c.guest_port = None;
        }
    }

    /// Raise `vector` on `vcpu` through its LAPIC (APIC ID = vCPU id); one
    /// KVM refuses is raised again by [`UpcallRetry`].
    pub fn inject_vector(&self, vcpu: u32, vector: u8) {
        let Some(refused) = self.refused.get(vcpu as usize) else {
            return;
        };
        if inject_vector(&self.vm, vcpu, vector) {
            // Read first: every upcall passes here, and a store would
            // bounce the line between the vCPUs' threads for nothing.
            if refused.load(Ordering::Relaxed) != 0 {
                refused.store(0, Ordering::SeqCst);
            }
        } else if refused.swap(vector, Ordering::SeqCst) == 0 {
            debug!(vcpu, vector, "upcall refused by the LAPIC: retrying");
            let _ = self.refused_wake.write(1);
        }
    }

    /// Raise each refused upcall again; true while one is still refused.
    fn retry_refused(&self) -> bool {
        let mut left = false;
        for (vcpu, refused) in self.refused.iter().enumerate() {
            let vector = refused.load(Ordering::SeqCst);
            if vector == 0 {
                continue;
            }
            if inject_vector(&self.vm, vcpu as u32, vector) {
                debug!(vcpu, vector, "refused upcall taken");
                let _ = refused.compare_exchange(vector, 0, Ordering::SeqCst, Ordering::SeqCst);
            } else {
                left = true;
            }
        }
        left
    }
}

/// Raise `vector` on `vcpu` through its LAPIC (APIC ID = vCPU id). False
/// when no LAPIC took it (KVM_SIGNAL_MSI delivered to none: a software-
/// disabled LAPIC drops fixed interrupts).
pub fn inject_vector(vm: &VmFd, vcpu: u32, vector: u8) -> bool {
    tracing::trace!(vcpu, vector, "upcall MSI");
    let msi = kvm_msi {
        address_lo: 0xfee0_0000 | (vcpu << 12),
        address_hi: 0,
        data: vector as u32,
        ..Default::default()
    };
    match vm.signal_msi(msi) {
        Ok(delivered) => delivered > 0,
        Err(e) => {
            warn!(vcpu, vector, "KVM_SIGNAL_MSI failed: {e}");
            // Not a refusal a retry would change.
            true
        }
    }
}

/// How often a refused upcall is raised again.
const UPCALL_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// Raises refused upcalls again (see [`EventRouting::inject_vector`]):
/// a timer that runs only while one is refused.
pub struct UpcallRetry {
    routing: Arc<EventRouting>,
    timer: nix::sys::timerfd::TimerFd,
    armed: bool,
}

impl UpcallRetry {
    pub fn new(routing: Arc<EventRouting>) -> nix::Result<Self> {
        Ok(UpcallRetry {
            routing,
            timer: crate::event_loop::new_timer()?,
            armed: false,
        })
    }

    fn arm(&mut self, on: bool) {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if on == self.armed {
            return;
        }
        let result = if on {
            self.timer.set(
                Expiration::Interval(TimeSpec::from_duration(UPCALL_RETRY)),
                TimerSetTimeFlags::empty(),
            )
        } else {
            self.timer.unset()
        };
        match result {
            Ok(()) => self.armed = on,
            Err(e) => warn!("upcall retry timer: {e}"),
        }
    }
}

const RETRY_WAKE: u32 = 0;
const RETRY_TICK: u32 = 1;

impl MutEventSubscriber for UpcallRetry {
    fn init(&mut self, ops: &mut EventOps) {
        watch(
            ops,
            &self.routing.refused_wake,
            RETRY_WAKE,
            "refused upcalls",
        );
        watch(
            ops,
            &std::os::fd::AsFd::as_fd(&self.timer),
            RETRY_TICK,
            "the upcall retry timer",
        );
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == RETRY_WAKE {
            drain(&self.routing.refused_wake);
        } else {
            let _ = self.timer.wait();
        }
        let left = self.routing.retry_refused();
        self.arm(left);
    }
}

/// How often [`StaleUpcallSweep`] looks for an upcall left pending.
const STALE_UPCALL_SWEEP: std::time::Duration = std::time::Duration::from_millis(200);

/// Xen delivers the callback vector whenever a vCPU's
/// `evtchn_upcall_pending` is set (it checks at every VM entry), so an
/// upcall cannot be lost. Here Dom0's backends raise it through KVM
/// irqfds, which give no word back: one that a software-disabled LAPIC
/// dropped (Linux turns its LAPIC off across a suspend) would leave the
/// flag set for good, and since an upcall is raised only when the flag
/// goes from 0 to 1, no later event would raise another. This sweep
/// samples the flags instead: a vCPU whose flag stayed set across two
/// looks gets its upcall again (at worst one spurious upcall, which the
/// guest's handler takes as nothing to do). A vCPU with delivery masked
/// (`evtchn_upcall_mask`, a PV guest's virtual interrupt flag) is left
/// alone: it takes its pending events when it unmasks, as on Xen, and a
/// raise meanwhile would only add a callback it did not ask for.
/// [`UpcallRetry`] covers the upcalls kxen-vmm raises itself, whose
/// refusals it sees.
pub struct StaleUpcallSweep {
    domain: Arc<kxen_xen::Domain>,
    gate: Arc<crate::vcpu::gate::GuestEntryGate>,
    timer: nix::sys::timerfd::TimerFd,
    /// Per vCPU: the flag was set at the last look.
    set_before: Vec<bool>,
}

impl StaleUpcallSweep {
    pub fn new(
        domain: Arc<kxen_xen::Domain>,
        gate: Arc<crate::vcpu::gate::GuestEntryGate>,
        nr_vcpus: u32,
    ) -> nix::Result<Self> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let timer = crate::event_loop::new_timer()?;
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(STALE_UPCALL_SWEEP)),
            TimerSetTimeFlags::empty(),
        )?;
        Ok(StaleUpcallSweep {
            domain,
            gate,
            timer,
            set_before: vec![false; nr_vcpus as usize],
        })
    }

    /// One look at every vCPU's flag; the vCPUs whose upcall was raised
    /// again.
    fn sweep(&mut self) -> Vec<u32> {
        let mut raised = Vec::new();
        if self.gate.is_paused() {
            // A paused domain's state may be being saved: leave its LAPICs
            // alone; the flags are looked at again once it runs.
            self.set_before.fill(false);
            return raised;
        }
        let st = self.domain.lock();
        for (vcpu, before) in self.set_before.iter_mut().enumerate() {
            let vcpu = vcpu as u32;
            let set =
                self.domain.upcall_pending(&st, vcpu) && !self.domain.upcall_masked(&st, vcpu);
            if set && *before && self.domain.upcall_vector(&st, vcpu).is_some() {
                self.domain.raise_upcall(&st, vcpu);
                raised.push(vcpu);
                *before = false;
            } else {
                *before = set;
            }
        }
        raised
    }
}

impl MutEventSubscriber for StaleUpcallSweep {
    fn init(&mut self, ops: &mut EventOps) {
        watch(
            ops,
            &std::os::fd::AsFd::as_fd(&self.timer),
            0,
            "the stale upcall sweep",
        );
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        for vcpu in self.sweep() {
            debug!(vcpu, "upcall left pending: raised again");
        }
    }
}

/// Wakes vCPUs blocked in the hypervisor when Dom0 asks, and, without
/// irqfds, relays Dom0's per-vCPU kicks as MSIs; from the event loop.
pub struct Dom0WakeRelay {
    pub routing: Arc<EventRouting>,
    pub domain: Arc<kxen_xen::Domain>,
}

/// Event data of the wake eventfd; vCPU n's relayed irqfd is n + 1.
const WAKE: u32 = 0;

impl MutEventSubscriber for Dom0WakeRelay {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.routing.wake, WAKE, "Dom0's wake-ups");
        if !self.routing.irqfd_ok {
            for (vcpu, fd) in self.routing.irqfds.iter().enumerate() {
                watch(ops, fd, vcpu as u32 + 1, "a relayed vCPU interrupt");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let routing = &self.routing;
        if events.data() == WAKE {
            if drain(&routing.wake) {
                debug!("Dom0 woke blocked vCPUs");
                // Ports Dom0 asks us to raise (a FIFO domain's queues are
                // ours to link); drained after the eventfd, so a request
                // made before its write is seen now or at the next wake.
                for port in routing.area.take_raise_requests() {
                    self.domain.notify_from_dom0(port);
                }
                // Notify under the lock so a vCPU between its check and
                // its wait cannot miss it.
                let _st = self.domain.lock();
                self.domain.wake.notify_all();
            }
            return;
        }
        let vcpu = events.data() - 1;
        let Some(fd) = routing.irqfds.get(vcpu as usize) else {
            return;
        };
        if !drain(fd) {
            return;
        }
        let vector = routing
            .vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vcpu as usize)
            .copied()
            .flatten();
        if let Some(vector) = vector {
            routing.inject_vector(vcpu, vector);
        }
        let _st = self.domain.lock();
        self.domain.wake.notify_all();
    }
}
