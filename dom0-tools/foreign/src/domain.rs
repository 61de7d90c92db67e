//! A guest domain as Dom0's backends reach it: its memory (the memfd),
//! its grant table and its event channels, all obtained from the domain's
//! kxen-vmm over its control socket.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use kxen_vmm_api::client::{EventsGrant, VirtioAttachFds};
use kxen_vmm_api::protocol::VirtioAttach;
use kxen_vmm_api::{ClientError, VmmClient};
use tracing::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::evtchn::{Dom0Channel, GuestEvents};
use crate::foreign::ForeignMemory;
use crate::grant::{GrantTable, PinTable};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The control link failed or kxen-vmm refused (see [`ClientError`]).
    #[error("{0}")]
    Control(#[from] ClientError),
    #[error("control protocol: {0}")]
    Protocol(String),
    #[error("mapping guest memory: {0}")]
    Map(std::io::Error),
    #[error("domain {0} offers no event routing")]
    NoEvents(u16),
}

fn eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: kxen-vmm sends eventfds in the slots this is used for; the
    // fd is ours from here.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

/// One DomU, seen from Dom0.
pub struct ForeignDomain {
    pub domid: u16,
    pub memory: Arc<ForeignMemory>,
    control: Option<Mutex<VmmClient>>,
    events: Option<GuestEvents>,
    /// Active grant pins, shared by every grant table view of the domain.
    pins: Arc<PinTable>,
}

impl ForeignDomain {
    /// A domain over memory only (no VMM): for tests of code that needs a
    /// `ForeignDomain` but no event channels.
    pub fn new(domid: u16, memory: Arc<ForeignMemory>) -> Self {
        ForeignDomain {
            domid,
            memory,
            control: None,
            events: None,
            pins: Arc::default(),
        }
    }

    /// Connect to the kxen-vmm of domain `domid` through its control
    /// socket: map its memory and its event routing. The connection stays
    /// open for binding channels; kxen-vmm closes the channels bound
    /// through it when it ends.
    pub fn connect(domid: u16, control_socket: &Path) -> Result<Arc<Self>, DomainError> {
        let mut control = VmmClient::connect(control_socket)?;
        let guest = control.memfd()?;
        let memory = Arc::new(
            ForeignMemory::map(guest.memfd, guest.size, guest.regions).map_err(DomainError::Map)?,
        );
        let events = match control.events() {
            Ok(grant) => Some(Self::events_from(&memory, grant)?),
            // An older kxen-vmm: memory and grants only.
            Err(ClientError::Refused(e)) => {
                debug!(domid, "no event routing: {e}");
                None
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Arc::new(ForeignDomain {
            domid,
            memory,
            control: Some(Mutex::new(control)),
            events,
            pins: Arc::default(),
        }))
    }

    fn events_from(
        memory: &Arc<ForeignMemory>,
        grant: EventsGrant,
    ) -> Result<GuestEvents, DomainError> {
        GuestEvents::new(
            memory.clone(),
            grant.routing.offset,
            grant.vcpu_irqfds.into_iter().map(eventfd).collect(),
            eventfd(grant.wake),
            grant.irqfd,
        )
        .ok_or_else(|| DomainError::Protocol("routing area missing or not initialised".into()))
    }

    /// Attach a virtio device to the domain's slot (`virtio-attach`).
    pub fn virtio_attach(&self, attach: VirtioAttach) -> Result<VirtioAttachFds, DomainError> {
        self.with_control(|c| c.virtio_attach(attach))
    }

    /// The domain's event routing, if its VMM offers one.
    pub fn events(&self) -> Option<&GuestEvents> {
        self.events.as_ref()
    }

    /// The domain's grant table as `backend_domid` (Dom0: 0) uses it.
    /// Frame locations are read from the routing area on each access, as
    /// the guest may move its frames at any time.
    pub fn grant_table(self: &Arc<Self>, backend_domid: u16) -> GrantTable {
        GrantTable::routed(self.clone(), backend_domid, self.pins.clone())
    }

    /// Run `call` on the domain's control connection.
    fn with_control<T>(
        &self,
        call: impl FnOnce(&mut VmmClient) -> Result<T, ClientError>,
    ) -> Result<T, DomainError> {
        let control = self
            .control
            .as_ref()
            .ok_or(DomainError::NoEvents(self.domid))?;
        let mut control = control.lock().unwrap_or_else(|e| e.into_inner());
        Ok(call(&mut control)?)
    }

    fn channel(self: &Arc<Self>, guest_port: Option<u32>) -> Result<(u32, EventFd), DomainError> {
        if self.events.is_none() {
            return Err(DomainError::NoEvents(self.domid));
        }
        let channel = self.with_control(|c| match guest_port {
            Some(port) => c.evtchn_bind(port),
            None => c.evtchn_alloc_unbound(),
        })?;
        debug!(
            domid = self.domid,
            port = channel.dom0_port,
            ?guest_port,
            "Dom0 port open"
        );
        Ok((channel.dom0_port, eventfd(channel.to_dom0)))
    }

    /// Bind a Dom0 port to the guest's `guest_port`, which the guest
    /// allocated unbound for domain 0 (EVTCHNOP_alloc_unbound).
    pub fn bind_interdomain(self: &Arc<Self>, guest_port: u32) -> Result<Dom0Channel, DomainError> {
        let (port, kick) = self.channel(Some(guest_port))?;
        Ok(Dom0Channel::for_guest(self.clone(), guest_port, port, kick))
    }

    /// Allocate a Dom0 port for the guest to bind with
    /// EVTCHNOP_bind_interdomain(remote_dom 0, remote_port = the channel's
    /// `dom0_port()`). Until it does, `guest_port()` is 0 and notifying
    /// does nothing; [`Dom0Channel::guest_port`] finds the guest's port
    /// once it is bound.
    pub fn alloc_unbound(self: &Arc<Self>) -> Result<Dom0Channel, DomainError> {
        let (port, kick) = self.channel(None)?;
        Ok(Dom0Channel::for_guest(self.clone(), 0, port, kick))
    }

    /// Close Dom0's `dom0_port` (the guest's end becomes unbound).
    pub(crate) fn close_dom0_port(&self, dom0_port: u32) -> Result<(), DomainError> {
        self.with_control(|c| c.evtchn_close(dom0_port))
    }

    /// The guest port bound to Dom0's `dom0_port`, from the routing area.
    pub fn guest_port_of(&self, dom0_port: u32) -> Option<u32> {
        let events = self.events.as_ref()?;
        (1..events.nr_bound_ports())
            .find(|&p| events.port_route(p).is_some_and(|(d, _)| d == dom0_port))
    }
}
