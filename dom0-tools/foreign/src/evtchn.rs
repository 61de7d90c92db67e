//! Dom0's end of an interdomain event channel.
//!
//! The guest's `EVTCHNOP_send` on its end makes kxen-vmm write `kick`, an
//! eventfd the backend polls directly. Dom0's notification raises the
//! guest's port: the pending bits are set in the guest's shared_info with
//! the same 2-level logic the hypervisor uses, and the target vCPU is
//! interrupted through a KVM irqfd, so no kxen-vmm thread wakes up.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use kxen_vmm_api::routing::*;
use kxen_xen::evtchn::{set_pending, EventWords, SharedInfoBits, VcpuEventBits};
use tracing::{trace, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::shared_info::{SharedInfoLayout, VCPU_INFO_UPCALL_PENDING};

use crate::domain::ForeignDomain;
use crate::foreign::ForeignMemory;

/// Layout changes a notification retries across before giving up (the
/// VMM re-raises pending events itself after each change).
const MAX_LAYOUT_RETRIES: usize = 64;

/// A domain's event routing as Dom0 reaches it: the routing area in the
/// memfd, one irqfd per vCPU and the wake eventfd (from the `events`
/// control op).
pub struct GuestEvents {
    mem: Arc<ForeignMemory>,
    /// memfd offset of the routing area.
    area: u64,
    irqfds: Vec<EventFd>,
    wake: EventFd,
    /// Whether the irqfds are KVM irqfds (else kxen-vmm relays them).
    irqfd: bool,
}

impl GuestEvents {
    /// Checks that the area is inside the mapping and initialised.
    pub fn new(
        mem: Arc<ForeignMemory>,
        area: u64,
        irqfds: Vec<EventFd>,
        wake: EventFd,
        irqfd: bool,
    ) -> Option<Self> {
        let end = area.checked_add(ROUTING_AREA_SIZE as u64)?;
        if end > mem.len() as u64 || !area.is_multiple_of(xen_abi::PAGE_SIZE as u64) {
            return None;
        }
        let me = GuestEvents {
            mem,
            area,
            irqfds,
            wake,
            irqfd,
        };
        (me.u32(HDR_MAGIC)? == ROUTING_MAGIC && me.u32(HDR_VERSION)? == ROUTING_VERSION)
            .then_some(me)
    }

    fn u32(&self, field: usize) -> Option<u32> {
        Some(
            self.mem
                .atomic_u32(self.area + field as u64)?
                .load(Ordering::SeqCst),
        )
    }

    fn u64(&self, field: usize) -> Option<u64> {
        Some(
            self.mem
                .atomic_u64(self.area + field as u64)?
                .load(Ordering::SeqCst),
        )
    }

    /// Whether kxen-vmm delivers Dom0's kicks through KVM irqfds.
    pub fn uses_irqfd(&self) -> bool {
        self.irqfd
    }

    fn nr_vcpus(&self) -> u32 {
        self.u32(HDR_NR_VCPUS)
            .unwrap_or(0)
            .min(ROUTING_MAX_VCPUS as u32)
            .min(self.irqfds.len() as u32)
    }

    /// Whether `vcpu` waits for an event inside kxen-vmm (SCHEDOP_block,
    /// SCHEDOP_poll): the flag the VMM sets before it checks the pending
    /// bits, and the one [`GuestEvents::raise`] reads to decide on a wake.
    pub fn vcpu_blocked(&self, vcpu: u32) -> bool {
        vcpu < self.nr_vcpus()
            && self
                .u32(vcpu_entry(vcpu as usize) + VCPU_BLOCKED_FIELD)
                .is_some_and(|b| b != 0)
    }

    /// Grant frames the guest placed (one past the highest).
    pub fn nr_grant_frames(&self) -> u32 {
        self.u32(HDR_NR_GRANT_FRAMES)
            .unwrap_or(0)
            .min(ROUTING_MAX_GRANT_FRAMES as u32)
    }

    /// memfd offset of grant frame `index`, if placed.
    pub fn grant_frame_offset(&self, index: u32) -> Option<u64> {
        if index >= self.nr_grant_frames() {
            return None;
        }
        let off = self.u64(grant_frame_entry(index as usize))?;
        (off != ROUTING_NO_OFFSET).then_some(off)
    }

    /// The grant table's version (1 or 2); an area without the field says 1.
    pub fn grant_version(&self) -> u32 {
        match self.u32(HDR_GRANT_VERSION).unwrap_or(0) {
            2 => 2,
            _ => 1,
        }
    }

    /// memfd offset of v2 status frame `index`, if placed.
    pub fn status_frame_offset(&self, index: u32) -> Option<u64> {
        let nr = self
            .u32(HDR_NR_STATUS_FRAMES)
            .unwrap_or(0)
            .min(ROUTING_MAX_STATUS_FRAMES as u32);
        if index >= nr {
            return None;
        }
        let off = self.u64(status_frame_entry(index as usize))?;
        (off != ROUTING_NO_OFFSET).then_some(off)
    }

    /// One past the highest guest port the VMM ever bound to Dom0: the end
    /// of a scan for bound ports.
    pub fn nr_bound_ports(&self) -> u32 {
        self.u32(HDR_NR_PORTS)
            .unwrap_or(0)
            .min(ROUTING_NR_PORTS as u32)
    }

    /// The routing entry of guest `port`: (Dom0 port, notify vCPU).
    pub fn port_route(&self, port: u32) -> Option<(u32, u32)> {
        if port as usize >= ROUTING_NR_PORTS {
            return None;
        }
        let e = port_entry(port as usize);
        Some((self.u32(e)?, self.u32(e + 4)?))
    }

    /// Raise guest `port` on behalf of Dom0's `dom0_port`: the 2-level
    /// pending bits are set in the guest's memory with kxen-xen's code,
    /// the target vCPU's irqfd is written when it needs an upcall, and
    /// kxen-vmm is woken only if a vCPU waits inside it. False (nothing
    /// done) when the port is not bound to `dom0_port`.
    pub fn raise(&self, port: u32, dom0_port: u32) -> bool {
        let mut upcall = false;
        let mut target = None;
        for _ in 0..MAX_LAYOUT_RETRIES {
            let Some(before) = self.u32(HDR_GENERATION) else {
                return false;
            };
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            match self.port_route(port) {
                Some((bound, vcpu)) if bound == dom0_port && dom0_port != 0 => {
                    target = Some(vcpu);
                }
                _ => return false,
            }
            if self.u32(HDR_EVENT_ABI) == Some(EVENT_ABI_FIFO) {
                // The VMM links a FIFO domain's events into its queues.
                return self.request_raise(port);
            }
            let vcpu = target.unwrap_or(0);
            upcall |= self.set_pending_once(port, vcpu);
            fence(Ordering::SeqCst);
            if self.u32(HDR_GENERATION) == Some(before) {
                break;
            }
        }
        let Some(vcpu) = target else {
            return false;
        };
        if upcall {
            if let Some(fd) = self.irqfds.get(vcpu as usize) {
                if let Err(e) = fd.write(1) {
                    warn!(vcpu, "irqfd write: {e}");
                }
            }
        }
        // Dekker with the VMM: our pending bits are visible before we read
        // any blocked flag; it stores the flag before it checks the bits.
        fence(Ordering::SeqCst);
        let blocked = (0..self.nr_vcpus()).any(|v| self.vcpu_blocked(v));
        if blocked {
            let _ = self.wake.write(1);
        }
        trace!(port, vcpu, upcall, blocked, "raised guest port");
        true
    }

    /// Ask the VMM to raise `port` (a FIFO domain): set its request bit,
    /// then write the wake eventfd, whose reader takes the bits.
    fn request_raise(&self, port: u32) -> bool {
        if port as usize >= ROUTING_NR_PORTS {
            return false;
        }
        let word = raise_request_word(port as usize);
        let Some(bits) = self.mem.atomic_u64(self.area + word as u64) else {
            return false;
        };
        bits.fetch_or(1 << (port % 64), Ordering::SeqCst);
        let _ = self.wake.write(1);
        trace!(port, "asked the VMM to raise a FIFO guest port");
        true
    }

    /// The guest's shared_info layout, as the VMM last published it.
    fn shared_info_layout(&self) -> SharedInfoLayout {
        match self.u32(HDR_SHARED_INFO_LAYOUT) {
            Some(SHARED_INFO_COMPAT) => SharedInfoLayout::Compat,
            _ => SharedInfoLayout::Native,
        }
    }

    /// `count` event words of `layout` at memfd offset `offset`.
    fn event_words(
        &self,
        offset: u64,
        layout: SharedInfoLayout,
        count: usize,
    ) -> Option<EventWords<'_>> {
        Some(if layout.is_compat() {
            EventWords::Compat(self.mem.atomic_u32_slice(offset, count)?)
        } else {
            EventWords::Native(self.mem.atomic_u64_slice(offset, count)?)
        })
    }

    fn set_pending_once(&self, port: u32, vcpu: u32) -> bool {
        let Some(si) = self.u64(HDR_SHARED_INFO_OFFSET) else {
            return false;
        };
        if si == ROUTING_NO_OFFSET {
            return false;
        }
        // A change of layout moves the generation, so the caller redoes
        // the notification if the VMM switched layouts meanwhile.
        let layout = self.shared_info_layout();
        let words = |offset: usize| {
            self.event_words(
                si.checked_add(offset as u64)?,
                layout,
                layout.evtchn_words(),
            )
        };
        let (Some(pending), Some(mask)) =
            (words(layout.evtchn_pending()), words(layout.evtchn_mask()))
        else {
            return false;
        };
        let vi = (vcpu < self.nr_vcpus())
            .then(|| self.u64(vcpu_entry(vcpu as usize) + VCPU_INFO_OFFSET_FIELD))
            .flatten()
            .filter(|&off| off != ROUTING_NO_OFFSET)
            .and_then(|off| {
                Some(VcpuEventBits {
                    upcall_pending: self
                        .mem
                        .atomic_u8(off.checked_add(VCPU_INFO_UPCALL_PENDING as u64)?)?,
                    pending_sel: self.event_words(
                        off.checked_add(layout.vcpu_pending_sel() as u64)?,
                        layout,
                        1,
                    )?,
                })
            });
        set_pending(&SharedInfoBits { pending, mask }, vi.as_ref(), port)
    }
}

/// How Dom0 raises the guest's end.
enum Notifier {
    /// A test peer: each notification is one eventfd write.
    Eventfd(EventFd),
    /// A real guest, through its routing area and irqfds; the binding is
    /// closed (through the domain's control socket) when dropped.
    Guest(Arc<ForeignDomain>),
}

/// One bound interdomain channel, Dom0's side.
pub struct Dom0Channel {
    /// 0 until a guest binds a port Dom0 allocated unbound.
    guest_port: AtomicU32,
    dom0_port: u32,
    kick: EventFd,
    notifier: Notifier,
}

/// The guest side of a channel made by [`Dom0Channel::pair_for_tests`].
pub struct TestGuestEnd {
    /// Write to it to simulate the guest's EVTCHNOP_send.
    pub kick: EventFd,
    /// Readable once Dom0 notified.
    pub notified: EventFd,
}

impl TestGuestEnd {
    /// Notifications Dom0 sent since the last call.
    pub fn take_notifications(&self) -> u64 {
        self.notified.read().unwrap_or(0)
    }
}

impl Dom0Channel {
    /// A channel whose guest end is a pair of eventfds, for backend tests
    /// that run without a VMM.
    pub fn pair_for_tests(
        guest_port: u32,
        dom0_port: u32,
    ) -> std::io::Result<(Self, TestGuestEnd)> {
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let notified = EventFd::new(EFD_NONBLOCK)?;
        let channel = Dom0Channel {
            guest_port: AtomicU32::new(guest_port),
            dom0_port,
            kick: kick.try_clone()?,
            notifier: Notifier::Eventfd(notified.try_clone()?),
        };
        Ok((channel, TestGuestEnd { kick, notified }))
    }

    /// The guest's port number.
    pub fn guest_port(&self) -> u32 {
        let port = self.guest_port.load(Ordering::Acquire);
        if port != 0 {
            return port;
        }
        // Allocated unbound: learn the guest's end once it bound it.
        if let Notifier::Guest(domain) = &self.notifier {
            if let Some(port) = domain.guest_port_of(self.dom0_port) {
                self.guest_port.store(port, Ordering::Release);
                return port;
            }
        }
        0
    }

    /// Dom0's port number.
    pub fn dom0_port(&self) -> u32 {
        self.dom0_port
    }

    /// Readable (POLLIN) when the guest sent an event since the last
    /// [`Dom0Channel::ack`].
    pub fn kick_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self` and outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.kick.as_raw_fd()) }
    }

    /// Consume pending kicks; true if there were any.
    pub fn ack(&self) -> bool {
        self.kick.read().is_ok()
    }

    /// Raise the guest's port.
    pub fn notify(&self) {
        match &self.notifier {
            Notifier::Eventfd(fd) => {
                let _ = fd.write(1);
            }
            Notifier::Guest(domain) => {
                let port = self.guest_port();
                if let Some(events) = domain.events() {
                    if port != 0 {
                        events.raise(port, self.dom0_port);
                    }
                }
            }
        }
    }

    /// A channel to a real guest (made by [`ForeignDomain`]).
    pub(crate) fn for_guest(
        domain: Arc<ForeignDomain>,
        guest_port: u32,
        dom0_port: u32,
        kick: EventFd,
    ) -> Self {
        Dom0Channel {
            guest_port: AtomicU32::new(guest_port),
            dom0_port,
            kick,
            notifier: Notifier::Guest(domain),
        }
    }

    /// The guest's port as the guest currently has it routed: false once
    /// the guest closed its end (later notifies are dropped).
    pub fn is_connected(&self) -> bool {
        match &self.notifier {
            Notifier::Eventfd(_) => true,
            Notifier::Guest(domain) => domain
                .events()
                .and_then(|e| e.port_route(self.guest_port()))
                .is_some_and(|(bound, _)| bound == self.dom0_port),
        }
    }
}

impl Drop for Dom0Channel {
    fn drop(&mut self) {
        if let Notifier::Guest(domain) = &self.notifier {
            if let Err(e) = domain.close_dom0_port(self.dom0_port) {
                warn!(dom0_port = self.dom0_port, "close channel: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foreign::MemfdRegion;
    use xen_abi::shared_info::*;

    /// A memfd with shared_info at offset 0 and the routing area after it,
    /// laid out as kxen-vmm does; one vCPU using the legacy vcpu_info slot.
    fn domain() -> (Arc<ForeignMemory>, GuestEvents, Vec<EventFd>, EventFd) {
        let area = 4096u64;
        let size = area + ROUTING_AREA_SIZE as u64;
        let fd = nix::sys::memfd::memfd_create(c"evtchn-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(size).unwrap();
        let mem = Arc::new(
            ForeignMemory::map(
                file.into(),
                size,
                vec![MemfdRegion {
                    gpa: 0,
                    len: 4096,
                    offset: 0,
                }],
            )
            .unwrap(),
        );
        let put32 = |off: usize, v: u32| {
            mem.atomic_u32(area + off as u64)
                .unwrap()
                .store(v, Ordering::SeqCst)
        };
        let put64 = |off: usize, v: u64| {
            mem.atomic_u64(area + off as u64)
                .unwrap()
                .store(v, Ordering::SeqCst)
        };
        put32(HDR_VERSION, ROUTING_VERSION);
        put32(HDR_NR_VCPUS, 1);
        put64(HDR_SHARED_INFO_OFFSET, 0);
        put64(vcpu_entry(0) + VCPU_INFO_OFFSET_FIELD, 0);
        put32(port_entry(70), 9); // guest port 70 <-> Dom0 port 9, vCPU 0
        put32(port_entry(4200), 10); // a FIFO port past the 2-level space
        put32(HDR_NR_PORTS, 4201);
        put32(HDR_MAGIC, ROUTING_MAGIC);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let events = GuestEvents::new(
            mem.clone(),
            area,
            vec![irq.try_clone().unwrap()],
            wake.try_clone().unwrap(),
            true,
        )
        .unwrap();
        (mem, events, vec![irq], wake)
    }

    #[test]
    fn raise_sets_bits_and_kicks_once() {
        let (mem, events, irqs, wake) = domain();
        assert!(events.raise(70, 9));
        let pending = mem.atomic_u64(OFFSET_EVTCHN_PENDING as u64 + 8).unwrap();
        assert_eq!(pending.load(Ordering::SeqCst), 1 << 6);
        assert_eq!(mem.atomic_u64(8).unwrap().load(Ordering::SeqCst), 1 << 1);
        assert_eq!(mem.atomic_u8(0).unwrap().load(Ordering::SeqCst), 1);
        assert_eq!(irqs[0].read().unwrap(), 1);
        // Already pending: no second interrupt; nobody blocked: no wake.
        assert!(events.raise(70, 9));
        assert!(irqs[0].read().is_err());
        assert!(wake.read().is_err());
    }

    #[test]
    fn a_compat_layout_guest_gets_32_bit_words() {
        let (mem, events, irqs, _wake) = domain();
        let area = 4096u64;
        mem.atomic_u32(area + HDR_SHARED_INFO_LAYOUT as u64)
            .unwrap()
            .store(SHARED_INFO_COMPAT, Ordering::SeqCst);
        // Port 70: compat word 2, bit 6; selector (a u32 at 4) bit 2.
        assert!(events.raise(70, 9));
        let pending = mem
            .atomic_u32(COMPAT_OFFSET_EVTCHN_PENDING as u64 + 8)
            .unwrap();
        assert_eq!(pending.load(Ordering::SeqCst), 1 << 6);
        assert_eq!(
            mem.atomic_u32(COMPAT_VCPU_INFO_PENDING_SEL as u64)
                .unwrap()
                .load(Ordering::SeqCst),
            1 << 2
        );
        // Nothing at the 64-bit selector's place.
        assert_eq!(mem.atomic_u64(8).unwrap().load(Ordering::SeqCst), 0);
        assert_eq!(irqs[0].read().unwrap(), 1);
        // The compat mask word covers port 70 at 0x880 + 8.
        mem.atomic_u32(COMPAT_OFFSET_EVTCHN_PENDING as u64 + 8)
            .unwrap()
            .store(0, Ordering::SeqCst);
        mem.atomic_u8(0).unwrap().store(0, Ordering::SeqCst);
        mem.atomic_u32(COMPAT_OFFSET_EVTCHN_MASK as u64 + 8)
            .unwrap()
            .store(1 << 6, Ordering::SeqCst);
        assert!(events.raise(70, 9));
        assert_eq!(pending.load(Ordering::SeqCst), 1 << 6);
        assert_eq!(mem.atomic_u8(0).unwrap().load(Ordering::SeqCst), 0);
        assert!(irqs[0].read().is_err());
    }

    #[test]
    fn a_fifo_domain_gets_a_request_to_the_vmm_not_2_level_bits() {
        let (mem, events, irqs, wake) = domain();
        let area = 4096u64;
        mem.atomic_u32(area + HDR_EVENT_ABI as u64)
            .unwrap()
            .store(EVENT_ABI_FIFO, Ordering::SeqCst);
        assert!(events.raise(70, 9));
        // Port 70: bit 6 of request word 1; the VMM is woken to take it.
        let requests = mem
            .atomic_u64(area + raise_request_word(70) as u64)
            .unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 1 << 6);
        assert_eq!(wake.read().unwrap(), 1);
        // No 2-level bits, no upcall flag, no interrupt of our own.
        let pending = mem.atomic_u64(OFFSET_EVTCHN_PENDING as u64 + 8).unwrap();
        assert_eq!(pending.load(Ordering::SeqCst), 0);
        assert_eq!(mem.atomic_u8(0).unwrap().load(Ordering::SeqCst), 0);
        assert!(irqs[0].read().is_err());
        // A port not bound to this Dom0 port is still refused.
        assert!(!events.raise(71, 9));
        assert_eq!(requests.load(Ordering::SeqCst), 1 << 6);
        // Port 4200 (past 4096): bit 40 of request word 65.
        assert!(events.raise(4200, 10));
        let high = mem
            .atomic_u64(area + raise_request_word(4200) as u64)
            .unwrap();
        assert_eq!(high.load(Ordering::SeqCst), 1 << 40);
        assert!(!events.raise(ROUTING_NR_PORTS as u32, 10));
    }

    #[test]
    fn unbound_masked_and_blocked_ports() {
        let (mem, events, irqs, wake) = domain();
        // Wrong Dom0 port, unbound port, out-of-range port: nothing.
        assert!(!events.raise(70, 8));
        assert!(!events.raise(71, 9));
        assert!(!events.raise(71, 0));
        assert!(!events.raise(1 << 20, 9));
        assert_eq!(mem.atomic_u8(0).unwrap().load(Ordering::SeqCst), 0);
        // Masked: pending, no interrupt, but a blocked vCPU (polling) is
        // woken.
        mem.atomic_u64(OFFSET_EVTCHN_MASK as u64 + 8)
            .unwrap()
            .store(1 << 6, Ordering::SeqCst);
        mem.atomic_u32(4096 + (vcpu_entry(0) + VCPU_BLOCKED_FIELD) as u64)
            .unwrap()
            .store(1, Ordering::SeqCst);
        assert!(events.raise(70, 9));
        assert!(irqs[0].read().is_err());
        assert_eq!(wake.read().unwrap(), 1);
        // An area without its magic is refused.
        mem.atomic_u32(4096).unwrap().store(0, Ordering::SeqCst);
        assert!(GuestEvents::new(mem, 4096, vec![], EventFd::new(0).unwrap(), true).is_none());
    }
}
