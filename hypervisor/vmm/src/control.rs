//! The server side of the control socket through which a toolstack
//! (kxend, kxen-run) drives kxen-vmm. The protocol (requests, replies,
//! which descriptors come with which reply) is defined and documented once,
//! in the `kxen-vmm-api` crate; this module answers it. Each client has its
//! own thread; a malformed line gets an error reply, not a dropped domain.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kxen_vmm_api::protocol::{Reply, Request, RoutingAreaInfo};
use kxen_vmm_api::wire::{self, MAX_REQUEST_LINE};
use tracing::{debug, warn};

use crate::events::EventError;
use crate::vm::{DomainExit, Runtime};

/// Listen on `path` and serve clients until the domain ends.
pub fn serve(rt: Arc<Runtime>, path: PathBuf) -> std::io::Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            crate::seccomp::install(crate::seccomp::ThreadClass::Service);
            while !rt.domain.is_stopping() {
                match listener.accept() {
                    Ok((stream, _)) if !crate::peer::is_trusted(&stream) => {}
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        let rt = rt.clone();
                        let _ = std::thread::Builder::new()
                            .name("control-client".into())
                            .spawn(move || serve_client(&rt, stream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        warn!("control socket: {e}");
                        break;
                    }
                }
            }
            remove_socket(&path);
        })
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn serve_client(rt: &Runtime, stream: UnixStream) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut opened = OpenedPorts { rt, ports: vec![] };
    loop {
        if rt.domain.is_stopping() {
            return;
        }
        // Never buffer more than one line's worth, newline or not.
        let budget = (MAX_REQUEST_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(budget).read_until(b'\n', &mut line) {
            Ok(0) if line.len() <= MAX_REQUEST_LINE => return,
            Ok(_) if !line.ends_with(b"\n") && line.len() <= MAX_REQUEST_LINE => continue,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return,
        }
        if line.len() > MAX_REQUEST_LINE {
            let _ = send(&mut writer, &Reply::error("request too long"), &[]);
            return;
        }
        let (reply, fds, _owned) = match wire::parse_request(&line) {
            Ok(Request::VirtioAttach(req)) => virtio_attach(rt, &req),
            Ok(req) => match handle_events(rt, &req, &mut opened) {
                Some(r) => r,
                None => {
                    let (reply, fds) = handle(rt, req);
                    (reply, fds, None)
                }
            },
            Err(e) => (Reply::error(format!("bad request: {e}")), vec![], None),
        };
        line.clear();
        if send(&mut writer, &reply, &fds).is_err() {
            return;
        }
    }
}

/// Dom0 ports opened through one connection, closed when it ends.
struct OpenedPorts<'a> {
    rt: &'a Runtime,
    ports: Vec<u32>,
}

impl Drop for OpenedPorts<'_> {
    fn drop(&mut self) {
        for &port in &self.ports {
            let _ = self.rt.events.close(&self.rt.domain, port);
        }
    }
}

/// A reply, the fds to attach, and what keeps them open until sent.
type EventReply = (Reply, Vec<i32>, Option<Box<dyn std::any::Any>>);

/// `virtio-attach`: the slot's new link and eventfds for kxend.
fn virtio_attach(rt: &Runtime, req: &kxen_vmm_api::protocol::VirtioAttach) -> EventReply {
    debug!(?req, "control request");
    let Some(virtio) = rt.hvm.as_ref().and_then(|d| d.virtio.as_ref()) else {
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
fn handle_events(rt: &Runtime, req: &Request, opened: &mut OpenedPorts) -> Option<EventReply> {
    let channel = |res: Result<(u32, vmm_sys_util::eventfd::EventFd), EventError>,
                   opened: &mut OpenedPorts| match res {
        Ok((port, fd)) => {
            opened.ports.push(port);
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
                offset: rt.events.area_offset,
                size: kxen_vmm_api::routing::ROUTING_AREA_SIZE as u64,
            });
            reply.vcpus = Some(rt.domain.cfg.nr_vcpus);
            reply.irqfd = Some(rt.events.irqfd_ok());
            (reply, rt.events.fds(), None)
        }
        Request::EvtchnBind { guest_port } => {
            channel(rt.events.bind_guest_port(&rt.domain, guest_port), opened)
        }
        Request::EvtchnAllocUnbound => channel(rt.events.alloc_unbound(), opened),
        Request::EvtchnClose { dom0_port } => {
            opened.ports.retain(|&p| p != dom0_port);
            match rt.events.close(&rt.domain, dom0_port) {
                Ok(()) => (Reply::ok(), vec![], None),
                Err(e) => (Reply::error(e.to_string()), vec![], None),
            }
        }
        _ => return None,
    })
}

fn handle(rt: &Runtime, req: Request) -> (Reply, Vec<i32>) {
    debug!(?req, "control request");
    match req {
        Request::Info => {
            let mut reply = Reply::ok();
            reply.info = Some(rt.info());
            (reply, vec![])
        }
        Request::Pause => {
            rt.pause();
            (Reply::ok(), vec![])
        }
        Request::Unpause => {
            rt.unpause();
            (Reply::ok(), vec![])
        }
        Request::Destroy => {
            rt.request_exit(DomainExit::Destroyed);
            (Reply::ok(), vec![])
        }
        Request::Memfd => {
            let mut reply = Reply::ok();
            reply.size = rt.memory.memfd.metadata().ok().map(|m| m.len());
            reply.regions = Some(rt.memory.regions());
            (reply, vec![rt.memory.memfd.as_raw_fd()])
        }
        Request::Dom0Ports => {
            let mut reply = Reply::ok();
            reply.ports = Some(rt.dom0.infos());
            (reply, rt.dom0.fds())
        }
        Request::Serial => match rt.hvm.as_ref().and_then(|d| d.dom0_serial_fd()) {
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
        | Request::VirtioAttach(_) => (Reply::error("unreachable"), vec![]),
    }
}

fn send(stream: &mut UnixStream, reply: &Reply, fds: &[i32]) -> std::io::Result<()> {
    wire::send_with_fds(stream, &wire::encode(reply), fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSliceMut, Write};
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
