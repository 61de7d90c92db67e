//! A guest domain as Dom0's backends reach it: its memory (the memfd),
//! its grant table and its event channels, all obtained from the domain's
//! kxen-vmm over its control socket.

use std::io::{IoSliceMut, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde::Deserialize;
use tracing::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::evtchn::{Dom0Channel, GuestEvents};
use crate::foreign::{ForeignMemory, MemfdRegion};
use crate::grant::{GrantTable, PinTable};

/// How long one control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most fds one reply carries (per-vCPU irqfds plus wake).
const MAX_FDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control protocol: {0}")]
    Protocol(String),
    /// kxen-vmm answered with an error.
    #[error("kxen-vmm: {0}")]
    Refused(String),
    #[error("mapping guest memory: {0}")]
    Map(std::io::Error),
    #[error("domain {0} offers no event routing")]
    NoEvents(u16),
}

/// The replies we use, fields as kxen-vmm's control protocol names them.
#[derive(Debug, Deserialize, Default)]
struct Reply {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    regions: Option<Vec<MemfdRegion>>,
    #[serde(default)]
    dom0_port: Option<u32>,
    #[serde(default)]
    routing: Option<RoutingInfo>,
    #[serde(default)]
    vcpus: Option<u32>,
    #[serde(default)]
    irqfd: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct RoutingInfo {
    offset: u64,
    size: u64,
}

/// One connection to a kxen-vmm control socket.
struct Control {
    stream: UnixStream,
}

impl Control {
    fn connect(path: &Path) -> Result<Self, DomainError> {
        let stream = UnixStream::connect(path).map_err(|source| DomainError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
        stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
        Ok(Control { stream })
    }

    /// Send one request line; return the reply and the fds it carried.
    fn request(&mut self, line: &str) -> Result<(Reply, Vec<OwnedFd>), DomainError> {
        self.stream.write_all(line.as_bytes())?;
        self.stream.write_all(b"\n")?;
        let mut data = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while !data.ends_with(b"\n") {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS just installed these fds in our
                    // table; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            if n == 0 {
                return Err(DomainError::Protocol("connection closed".into()));
            }
            data.extend_from_slice(&buf[..n]);
            if data.len() > 1 << 20 {
                return Err(DomainError::Protocol("reply too long".into()));
            }
        }
        let reply: Reply = serde_json::from_slice(&data)
            .map_err(|e| DomainError::Protocol(format!("bad reply: {e}")))?;
        if !reply.ok {
            return Err(DomainError::Refused(
                reply.error.unwrap_or_else(|| "error".into()),
            ));
        }
        Ok((reply, fds))
    }
}

/// One DomU, seen from Dom0.
pub struct ForeignDomain {
    pub domid: u16,
    pub memory: Arc<ForeignMemory>,
    control: Option<Mutex<Control>>,
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
        let mut control = Control::connect(control_socket)?;
        let (reply, mut fds) = control.request(r#"{"op":"memfd"}"#)?;
        let (Some(size), Some(regions), Some(memfd)) = (reply.size, reply.regions, fds.pop())
        else {
            return Err(DomainError::Protocol("memfd reply incomplete".into()));
        };
        let memory = Arc::new(ForeignMemory::map(memfd, size, regions).map_err(DomainError::Map)?);
        let events = match control.request(r#"{"op":"events"}"#) {
            Ok((reply, fds)) => Some(Self::events_from(&memory, reply, fds)?),
            // An older kxen-vmm: memory and grants only.
            Err(DomainError::Refused(e)) => {
                debug!(domid, "no event routing: {e}");
                None
            }
            Err(e) => return Err(e),
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
        reply: Reply,
        fds: Vec<OwnedFd>,
    ) -> Result<GuestEvents, DomainError> {
        let (Some(routing), Some(vcpus)) = (reply.routing, reply.vcpus) else {
            return Err(DomainError::Protocol("events reply incomplete".into()));
        };
        if routing.size < xen_abi::routing::ROUTING_AREA_SIZE as u64
            || fds.len() != vcpus as usize + 1
        {
            return Err(DomainError::Protocol(format!(
                "events: {} fds for {vcpus} vCPUs, area of {} bytes",
                fds.len(),
                routing.size
            )));
        }
        let mut eventfds: Vec<EventFd> = fds
            .into_iter()
            // SAFETY: kxen-vmm sends eventfds in these slots; we own them.
            .map(|fd| unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
            .collect();
        let wake = eventfds.pop().expect("checked: vcpus + 1 fds");
        GuestEvents::new(
            memory.clone(),
            routing.offset,
            eventfds,
            wake,
            reply.irqfd.unwrap_or(false),
        )
        .ok_or_else(|| DomainError::Protocol("routing area missing or not initialised".into()))
    }

    /// Send one control request `line` (a JSON object) to the domain's
    /// kxen-vmm; on success return the fds its reply carried.
    pub fn control_request(&self, line: &str) -> Result<Vec<OwnedFd>, DomainError> {
        self.request(line).map(|(_, fds)| fds)
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

    fn request(&self, line: &str) -> Result<(Reply, Vec<OwnedFd>), DomainError> {
        let control = self
            .control
            .as_ref()
            .ok_or(DomainError::NoEvents(self.domid))?;
        control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request(line)
    }

    fn channel(
        self: &Arc<Self>,
        line: &str,
        guest_port: Option<u32>,
    ) -> Result<(u32, EventFd), DomainError> {
        if self.events.is_none() {
            return Err(DomainError::NoEvents(self.domid));
        }
        let (reply, mut fds) = self.request(line)?;
        let (Some(port), Some(fd)) = (reply.dom0_port, fds.pop()) else {
            return Err(DomainError::Protocol("channel reply incomplete".into()));
        };
        debug!(domid = self.domid, port, ?guest_port, "Dom0 port open");
        // SAFETY: kxen-vmm sends the channel's eventfd; we own it now.
        let kick = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        Ok((port, kick))
    }

    /// Bind a Dom0 port to the guest's `guest_port`, which the guest
    /// allocated unbound for domain 0 (EVTCHNOP_alloc_unbound).
    pub fn bind_interdomain(self: &Arc<Self>, guest_port: u32) -> Result<Dom0Channel, DomainError> {
        let line = format!(r#"{{"op":"evtchn-bind","guest_port":{guest_port}}}"#);
        let (port, kick) = self.channel(&line, Some(guest_port))?;
        Ok(Dom0Channel::for_guest(self.clone(), guest_port, port, kick))
    }

    /// Allocate a Dom0 port for the guest to bind with
    /// EVTCHNOP_bind_interdomain(remote_dom 0, remote_port = the channel's
    /// `dom0_port()`). Until it does, `guest_port()` is 0 and notifying
    /// does nothing; [`Dom0Channel::guest_port`] finds the guest's port
    /// once it is bound.
    pub fn alloc_unbound(self: &Arc<Self>) -> Result<Dom0Channel, DomainError> {
        let (port, kick) = self.channel(r#"{"op":"evtchn-alloc-unbound"}"#, None)?;
        Ok(Dom0Channel::for_guest(self.clone(), 0, port, kick))
    }

    /// Close Dom0's `dom0_port` (the guest's end becomes unbound).
    pub(crate) fn close_dom0_port(&self, dom0_port: u32) -> Result<(), DomainError> {
        self.request(&format!(
            r#"{{"op":"evtchn-close","dom0_port":{dom0_port}}}"#
        ))
        .map(|_| ())
    }

    /// The guest port bound to Dom0's `dom0_port`, from the routing area.
    pub fn guest_port_of(&self, dom0_port: u32) -> Option<u32> {
        let events = self.events.as_ref()?;
        (1..xen_abi::routing::ROUTING_NR_PORTS as u32)
            .find(|&p| events.port_route(p).is_some_and(|(d, _)| d == dom0_port))
    }
}
