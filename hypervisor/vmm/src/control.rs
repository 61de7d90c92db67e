//! The server side of the control socket through which a toolstack
//! (kxend, kxen-run) drives kxen-vmm. The protocol (requests, replies,
//! which descriptors come with which reply) is defined and documented once,
//! in the `kxen-vmm-api` crate; this module answers it. The listener and
//! every client are fds of the event loop ([`ControlServer`]); a malformed
//! line gets an error reply, not a dropped domain.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kxen_vmm_api::protocol::{DomainInfo, Reply, Request, RoutingAreaInfo};
use kxen_vmm_api::wire::{self, MAX_REQUEST_LINE};
use kxen_xen::Domain;
use nix::sys::socket::{recv, MsgFlags};
use tracing::{debug, warn};

use crate::dom0::Dom0Ports;
use crate::event_loop::watch;
use crate::events::{EventError, EventRouting};
use crate::exit::{DomainExit, ExitLatch};
use crate::hvm::HvmDevices;
use crate::kick::Pauser;
use crate::memory::GuestMemory;

/// A client that stops reading its replies holds the event loop this long
/// at most, then loses its connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control requests reach.
pub struct ControlHandles {
    pub domain: Arc<Domain>,
    pub memory: Arc<GuestMemory>,
    pub dom0: Arc<Dom0Ports>,
    pub events: Arc<EventRouting>,
    pub hvm: Option<Arc<HvmDevices>>,
    /// A classic PV domain's PV machine, whose MMU and vCPU state a save
    /// carries.
    pub pv: Option<Arc<crate::pv::PvMachine>>,
    /// The syscall bridge of an HVM domain on a PVM host, whose
    /// breakpoint a save carries.
    pub syscall_bridge: Option<Arc<crate::syscall_bridge::SyscallBridge>>,
    pub exit: Arc<ExitLatch>,
    pub pauser: Arc<Pauser>,
    /// When the process started, for the uptime.
    pub started: Instant,
    pub max_memory_kib: u64,
    /// The memfd of the last `restore-buffer` request, until `load-state`.
    pub restore_buffer: std::sync::Mutex<Option<std::fs::File>>,
    /// Exit counters and KVM's statistics.
    pub perf: Arc<crate::perf::PerfCounters>,
}

impl ControlHandles {
    pub fn info(&self) -> DomainInfo {
        let domain = &self.domain;
        let cfg = &domain.cfg;
        let (online, blocked) = {
            let st = domain.lock();
            let up: Vec<_> = st
                .vcpus
                .iter()
                .filter(|v| v.online && v.initialised)
                .collect();
            let blocked = !up.is_empty()
                && up
                    .iter()
                    .all(|v| v.runstate.state == xen_abi::vcpu::RUNSTATE_BLOCKED);
            (up.len() as u32, blocked)
        };
        let suspended = domain.suspended_by().is_some();
        DomainInfo {
            blocked,
            vcpus_online: online,
            domid: cfg.domid,
            name: cfg.name.clone(),
            paused: self.pauser.is_paused(),
            vcpus: cfg.nr_vcpus,
            memory_kib: (cfg.ram_pages() - domain.lock().ballooned.len() as u64) * 4,
            max_memory_kib: self.max_memory_kib,
            hypercalls: domain.hypercalls.load(std::sync::atomic::Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            pid: std::process::id(),
            suspended,
        }
    }
}

/// One connection: its unfinished line and the Dom0 ports it opened.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    opened: Vec<u32>,
}

/// Event data of the listener; clients get the numbers after it.
const LISTENER: u32 = 0;

/// The control socket in the event loop.
pub struct ControlServer {
    handles: ControlHandles,
    path: PathBuf,
    listener: UnixListener,
    clients: BTreeMap<u32, Client>,
    next_client: u32,
}

impl ControlServer {
    /// Listen on `path` (replacing a stale socket).
    pub fn bind(handles: ControlHandles, path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            handles,
            path,
            listener,
            clients: BTreeMap::new(),
            next_client: LISTENER + 1,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) if !crate::peer::is_trusted(&stream) => continue,
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("control socket: {e}");
                    return;
                }
            };
            // Reads never block (MSG_DONTWAIT); a reply waits for room in
            // the socket, REPLY_TIMEOUT at most.
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
            let id = self.next_client;
            self.next_client = self.next_client.wrapping_add(1).max(LISTENER + 1);
            watch(ops, &stream, id, "a control client");
            self.clients.insert(
                id,
                Client {
                    stream,
                    line: Vec::new(),
                    opened: Vec::new(),
                },
            );
        }
    }

    /// Read what the client sent and answer every whole line; false when
    /// the connection is over.
    fn serve(&mut self, client: &mut Client) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let n = match recv(client.stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            };
            client.line.extend_from_slice(&buf[..n]);
            while let Some(end) = client.line.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = client.line.drain(..=end).collect();
                // Never more than one line's worth, newline included.
                if line.len() > MAX_REQUEST_LINE {
                    let _ = send(&mut client.stream, &Reply::error("request too long"), &[]);
                    return false;
                }
                if !self.answer(client, &line) {
                    return false;
                }
            }
            if client.line.len() > MAX_REQUEST_LINE {
                let _ = send(&mut client.stream, &Reply::error("request too long"), &[]);
                return false;
            }
        }
    }

    /// Answer one request line; false if the reply could not be sent.
    fn answer(&self, client: &mut Client, line: &[u8]) -> bool {
        let h = &self.handles;
        let (reply, fds, _owned) = match wire::parse_request(line) {
            Ok(Request::VirtioAttach(req)) => virtio_attach(h, &req),
            Ok(
                req @ (Request::SaveState
                | Request::RestoreBuffer { .. }
                | Request::LoadState
                | Request::ResumeSuspended),
            ) => save_restore(h, &req),
            Ok(Request::PvPageTypes) => pv_page_types(h),
            Ok(req @ (Request::DirtyLogStart | Request::DirtyLog | Request::DirtyLogStop)) => {
                dirty_log(h, &req)
            }
            Ok(req) => match handle_events(h, &req, &mut client.opened) {
                Some(r) => r,
                None => {
                    let (reply, fds) = handle(h, req);
                    (reply, fds, None)
                }
            },
            Err(e) => (Reply::error(format!("bad request: {e}")), vec![], None),
        };
        send(&mut client.stream, &reply, &fds).is_ok()
    }

    fn drop_client(&mut self, id: u32, ops: &mut EventOps) {
        if let Some(client) = self.clients.remove(&id) {
            let _ = ops.remove(Events::new(&client.stream, EventSet::IN));
            close_ports(&self.handles, &client.opened);
        }
    }
}

impl MutEventSubscriber for ControlServer {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.listener, LISTENER, "the control socket");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let id = events.data();
        if id == LISTENER {
            self.accept(ops);
            return;
        }
        let Some(mut client) = self.clients.remove(&id) else {
            return;
        };
        // A hang-up shows as the end of the stream once its data is read.
        let open = self.serve(&mut client);
        self.clients.insert(id, client);
        if !open {
            self.drop_client(id, ops);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        for client in std::mem::take(&mut self.clients).into_values() {
            close_ports(&self.handles, &client.opened);
        }
        remove_socket(&self.path);
    }
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Close the Dom0 ports a connection opened, as its end does.
fn close_ports(h: &ControlHandles, ports: &[u32]) {
    for &port in ports {
        let _ = h.events.close(&h.domain, port);
    }
}

/// A reply, the fds to attach, and what keeps them open until sent.
type EventReply = (Reply, Vec<i32>, Option<Box<dyn std::any::Any>>);

/// `virtio-attach`: the slot's new link and eventfds for kxend.
fn virtio_attach(h: &ControlHandles, req: &kxen_vmm_api::protocol::VirtioAttach) -> EventReply {
    debug!(?req, "control request");
    let Some(virtio) = h.hvm.as_ref().and_then(|d| d.virtio.as_ref()) else {
        return (
            Reply::error("no virtio devices (not HVM, or no --virtio)"),
            vec![],
            None,
        );
    };
    match virtio.attach(req) {
        Ok(fds) => {
            let raw = fds.fds();
            (Reply::ok(), raw, Some(Box::new(fds)))
        }
        Err(e) => (Reply::error(e.to_string()), vec![], None),
    }
}

/// The event-channel requests; None for the others.
fn new_memfd(len: u64) -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"kxen-domain-state",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let file = std::fs::File::from(fd);
    file.set_len(len)?;
    Ok(file)
}

/// `dirty-log-start`, `dirty-log` and `dirty-log-stop`: KVM's log of the
/// guest's writes, for a live migration's pre-copy.
/// `pv-page-types`: the PV domain's page tables as PAGE_DATA entries.
fn pv_page_types(h: &ControlHandles) -> EventReply {
    use std::os::unix::fs::FileExt;
    let Some(pv) = &h.pv else {
        return (
            Reply::error("pv-page-types: not a classic PV domain"),
            vec![],
            None,
        );
    };
    let bytes: Vec<u8> = crate::state::page_type_entries(pv)
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    match new_memfd(bytes.len() as u64).and_then(|f| f.write_all_at(&bytes, 0).map(|()| f)) {
        Ok(file) => {
            let mut reply = Reply::ok();
            reply.size = Some(bytes.len() as u64);
            let raw = file.as_raw_fd();
            (reply, vec![raw], Some(Box::new(file)))
        }
        Err(e) => (Reply::error(format!("pv-page-types: {e}")), vec![], None),
    }
}

fn dirty_log(h: &ControlHandles, req: &Request) -> EventReply {
    use std::os::unix::fs::FileExt;
    debug!(?req, "control request");
    let refuse = |msg: String| (Reply::error(msg), vec![], None);
    match *req {
        Request::DirtyLogStart | Request::DirtyLogStop => {
            let on = matches!(req, Request::DirtyLogStart);
            match h.memory.set_dirty_logging(on) {
                Ok(()) => (Reply::ok(), vec![], None),
                Err(e) => refuse(format!("dirty logging: {e}")),
            }
        }
        _ => {
            let bitmaps = match h.memory.take_dirty_log() {
                Ok(b) => b,
                Err(e) => return refuse(format!("dirty-log: {e}")),
            };
            let bytes: Vec<u8> = bitmaps
                .iter()
                .flatten()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            let file = match new_memfd(bytes.len() as u64)
                .and_then(|f| f.write_all_at(&bytes, 0).map(|()| f))
            {
                Ok(file) => file,
                Err(e) => return refuse(format!("dirty-log: bitmap memfd: {e}")),
            };
            let mut reply = Reply::ok();
            reply.size = Some(bytes.len() as u64);
            let raw = file.as_raw_fd();
            (reply, vec![raw], Some(Box::new(file)))
        }
    }
}

/// `save-state`, `restore-buffer` and `load-state` (`crate::state`).
fn save_restore(h: &ControlHandles, req: &Request) -> EventReply {
    use std::os::unix::fs::FileExt;
    debug!(?req, "control request");
    let refuse = |msg: String| (Reply::error(msg), vec![], None);
    match *req {
        Request::SaveState => {
            let bytes = match crate::state::save(h) {
                Ok(bytes) => bytes,
                Err(e) => return refuse(format!("save: {e}")),
            };
            let file = match new_memfd(bytes.len() as u64)
                .and_then(|f| f.write_all_at(&bytes, 0).map(|()| f))
            {
                Ok(file) => file,
                Err(e) => return refuse(format!("save: state memfd: {e}")),
            };
            let mut reply = Reply::ok();
            reply.size = Some(bytes.len() as u64);
            let raw = file.as_raw_fd();
            (reply, vec![raw], Some(Box::new(file)))
        }
        Request::RestoreBuffer { len } => {
            if len == 0 || len > kxen_vmm_api::image::MAX_IMAGE as u64 {
                return refuse(format!(
                    "restore-buffer: {len} bytes (1 to {} allowed)",
                    kxen_vmm_api::image::MAX_IMAGE
                ));
            }
            let file = match new_memfd(len) {
                Ok(file) => file,
                Err(e) => return refuse(format!("restore-buffer: {e}")),
            };
            let raw = match file.try_clone() {
                Ok(dup) => dup,
                Err(e) => return refuse(format!("restore-buffer: {e}")),
            };
            *h.restore_buffer.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
            let fd = raw.as_raw_fd();
            (Reply::ok(), vec![fd], Some(Box::new(raw)))
        }
        Request::LoadState => {
            let Some(file) = h
                .restore_buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            else {
                return refuse("load-state: no restore-buffer was requested".into());
            };
            let len = match file.metadata() {
                Ok(m) => m.len().min(kxen_vmm_api::image::MAX_IMAGE as u64) as usize,
                Err(e) => return refuse(format!("load-state: {e}")),
            };
            let mut bytes = vec![0u8; len];
            if let Err(e) = file.read_exact_at(&mut bytes, 0) {
                return refuse(format!("load-state: reading the buffer: {e}"));
            }
            match crate::state::load(h, &bytes) {
                Ok(()) => (Reply::ok(), vec![], None),
                Err(e) => refuse(format!("restore: {e}")),
            }
        }
        Request::ResumeSuspended => match crate::state::cancel_suspend(h) {
            Ok(()) => (Reply::ok(), vec![], None),
            Err(e) => refuse(format!("resume-suspended: {e}")),
        },
        _ => refuse("unreachable".into()),
    }
}

fn handle_events(h: &ControlHandles, req: &Request, opened: &mut Vec<u32>) -> Option<EventReply> {
    let channel = |res: Result<(u32, vmm_sys_util::eventfd::EventFd), EventError>,
                   opened: &mut Vec<u32>| match res {
        Ok((port, fd)) => {
            opened.push(port);
            let mut reply = Reply::ok();
            reply.dom0_port = Some(port);
            let raw = fd.as_raw_fd();
            (
                reply,
                vec![raw],
                Some(Box::new(fd) as Box<dyn std::any::Any>),
            )
        }
        Err(e) => (Reply::error(e.to_string()), vec![], None),
    };
    Some(match *req {
        Request::Events => {
            let mut reply = Reply::ok();
            reply.routing = Some(RoutingAreaInfo {
                offset: h.events.area_offset,
                size: kxen_vmm_api::routing::ROUTING_AREA_SIZE as u64,
            });
            reply.vcpus = Some(h.domain.cfg.nr_vcpus);
            reply.irqfd = Some(h.events.irqfd_ok());
            (reply, h.events.fds(), None)
        }
        Request::EvtchnBind { guest_port } => {
            channel(h.events.bind_guest_port(&h.domain, guest_port), opened)
        }
        Request::EvtchnAllocUnbound => channel(h.events.alloc_unbound(), opened),
        Request::EvtchnClose { dom0_port } => {
            opened.retain(|&p| p != dom0_port);
            match h.events.close(&h.domain, dom0_port) {
                Ok(()) => (Reply::ok(), vec![], None),
                Err(e) => (Reply::error(e.to_string()), vec![], None),
            }
        }
        _ => return None,
    })
}

fn handle(h: &ControlHandles, req: Request) -> (Reply, Vec<i32>) {
    debug!(?req, "control request");
    match req {
        Request::Info => {
            let mut reply = Reply::ok();
            reply.info = Some(h.info());
            (reply, vec![])
        }
        Request::Pause => {
            h.pauser.pause();
            (Reply::ok(), vec![])
        }
        Request::Unpause => {
            h.pauser.unpause();
            (Reply::ok(), vec![])
        }
        Request::Destroy => {
            h.exit.request_exit(DomainExit::Destroyed);
            (Reply::ok(), vec![])
        }
        Request::Memfd => {
            let mut reply = Reply::ok();
            reply.size = h.memory.memfd.metadata().ok().map(|m| m.len());
            reply.regions = Some(h.memory.regions());
            (reply, vec![h.memory.memfd.as_raw_fd()])
        }
        Request::Dom0Ports => {
            let mut reply = Reply::ok();
            reply.ports = Some(h.dom0.infos());
            (reply, h.dom0.fds())
        }
        Request::PerfCounters => {
            let mut reply = Reply::ok();
            reply.perf_counters = Some(h.perf.snapshot());
            (reply, vec![])
        }
        Request::Serial => match h.hvm.as_ref().and_then(|d| d.dom0_serial_fd()) {
            Some(fd) => (Reply::ok(), vec![fd]),
            None => (
                Reply::error("no serial line for Dom0 (not HVM, or --serial is not dom0)"),
                vec![],
            ),
        },
        // Served by handle_events.
        Request::Events
        | Request::EvtchnBind { .. }
        | Request::EvtchnAllocUnbound
        | Request::EvtchnClose { .. }
        | Request::SaveState
        | Request::RestoreBuffer { .. }
        | Request::LoadState
        | Request::ResumeSuspended
        | Request::DirtyLogStart
        | Request::PvPageTypes
        | Request::DirtyLog
        | Request::DirtyLogStop
        | Request::VirtioAttach(_) => (Reply::error("unreachable"), vec![]),
    }
}

fn send(stream: &mut UnixStream, reply: &Reply, fds: &[i32]) -> std::io::Result<()> {
    wire::send_with_fds(stream, &wire::encode(reply), fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, IoSliceMut, Write};
    use std::os::fd::{FromRawFd, RawFd};
    use std::time::Instant;

    use kxen_devices::virtio_mmio::{reg, status, DeviceType};
    use kxen_devices::BusDevice;
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use crate::virtio::{AttachRequest, VirtioDevices};

    #[test]
    fn virtio_attach_request_parses() {
        let line = br#"{"op":"virtio-attach","slot":1,"device_id":2,"device_features":4294967360,"config":[0,16,0,0,0,0,0,0],"queues":1}"#;
        let Ok(Request::VirtioAttach(req)) = serde_json::from_slice::<Request>(line) else {
            panic!("not parsed");
        };
        assert_eq!(
            req,
            AttachRequest {
                slot: 1,
                device_id: 2,
                device_features: (1 << 32) | (1 << 6),
                config: vec![0, 16, 0, 0, 0, 0, 0, 0],
                queues: 1
            }
        );
        assert!(serde_json::from_slice::<Request>(br#"{"op":"virtio-attach","slot":0}"#).is_err());
        assert!(serde_json::from_slice::<Request>(
            br#"{"op":"virtio-attach","slot":0,"device_id":1,"queues":2,"config":[256]}"#
        )
        .is_err());
    }

    /// Receive one reply line and its fds, as kxend does.
    fn receive(stream: &UnixStream) -> (String, Vec<RawFd>) {
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 16]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(f) = cmsg {
                fds.extend(f);
            }
        }
        let n = msg.bytes;
        (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
    }

    /// The attach reply crosses a socket with its fds, and the fds work
    /// from the far side: the link answers activate, the call eventfd
    /// raises the slot's interrupt, a kick arrives.
    #[test]
    fn virtio_attach_reply_carries_working_fds() {
        let line = EventFd::new(EFD_NONBLOCK).unwrap();
        let devs = Arc::new(
            VirtioDevices::new(&[DeviceType::Blk], vec![line.try_clone().unwrap()], None).unwrap(),
        );
        let irq_thread = devs.start().unwrap();
        let (mut vmm_side, kxend_side) = UnixStream::pair().unwrap();
        let fds = devs
            .attach(&AttachRequest {
                slot: 0,
                device_id: 2,
                device_features: 0,
                config: vec![],
                queues: 2,
            })
            .unwrap();
        send(&mut vmm_side, &Reply::ok(), &fds.fds()).unwrap();
        drop(fds);
        let (text, got) = receive(&kxend_side);
        assert_eq!(text, "{\"ok\":true}\n");
        assert_eq!(got.len(), 5);
        // SAFETY: these fds were just received and are owned by nobody else.
        let (link, call, kick1) = unsafe {
            (
                UnixStream::from_raw_fd(got[0]),
                EventFd::from_raw_fd(got[1]),
                EventFd::from_raw_fd(got[4]),
            )
        };
        for &fd in &got[2..4] {
            // SAFETY: as above; closed at once.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
        let answer = link.try_clone().unwrap();
        let kxend = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&link).read_line(&mut line).unwrap();
            (&answer).write_all(b"{\"ok\":true}\n").unwrap();
            // Kept open: a closed link would make the device need a reset.
            (line, link, answer)
        });
        let slot = &devs.slots()[0];
        let w = |offset: u64, v: u32| {
            slot.device().write(offset, &v.to_le_bytes());
        };
        w(reg::STATUS, status::ACKNOWLEDGE);
        w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(reg::DRIVER_FEATURES_SEL, 1);
        w(reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(reg::STATUS, s);
        w(reg::QUEUE_SEL, 1);
        w(reg::QUEUE_READY, 1);
        w(reg::STATUS, s | status::DRIVER_OK);
        let (sent, _link, _answer) = kxend.join().unwrap();
        assert!(
            sent.starts_with(
                r#"{"event":"activate","features":4294967296,"queues":[{"index":1,"size":256"#
            ),
            "{sent}"
        );
        w(reg::QUEUE_NOTIFY, 1);
        assert_eq!(kick1.read().unwrap(), 1);
        call.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while line.read().is_err() {
            assert!(Instant::now() < deadline, "no interrupt");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut b = [0u8; 4];
        slot.device().read(reg::INTERRUPT_STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        devs.stop();
        irq_thread.join().unwrap();
    }
}
