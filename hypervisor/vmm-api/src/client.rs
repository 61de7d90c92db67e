//! The one client of the control protocol, used by kxend, the backends,
//! the virtio data plane and kxen-run. Each method sends one request and
//! checks its reply: the fields and the number of descriptors the
//! protocol promises, or an error. A hostile or broken VMM gets an error
//! here, never a panic, and descriptors that came with a refused or
//! malformed reply are closed.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::memfd::{check_regions, LayoutError, MemfdRegion};
use crate::protocol::{Dom0PortInfo, DomainInfo, Reply, Request, RoutingAreaInfo, VirtioAttach};
use crate::routing::ROUTING_AREA_SIZE;
use crate::wire::{self, LineBuffer, WireError, MAX_REPLY_LINE};

/// How long one request may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("kxen-vmm closed the control socket")]
    Closed,
    #[error("bad reply from kxen-vmm: {0}")]
    BadReply(#[from] WireError),
    /// kxen-vmm answered with an error.
    #[error("kxen-vmm: {0}")]
    Refused(String),
    #[error("kxen-vmm's {op} reply lacks {what}")]
    Missing {
        op: &'static str,
        what: &'static str,
    },
    #[error("kxen-vmm's {op} reply carried {got} descriptors, expected {expected}")]
    FdCount {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("kxen-vmm sent more descriptors than a reply may carry")]
    FdsTruncated,
    #[error("kxen-vmm's memfd layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("kxen-vmm's routing area is {0} bytes, too small")]
    RoutingArea(u64),
}

/// The guest's memory, as the `memfd` request hands it over.
#[derive(Debug)]
pub struct GuestMemfd {
    pub memfd: OwnedFd,
    /// Size of the memfd in bytes; every region lies inside it.
    pub size: u64,
    pub regions: Vec<MemfdRegion>,
}

/// One Dom0 end of the console or xenstore channel.
#[derive(Debug)]
pub struct Dom0Port {
    pub info: Dom0PortInfo,
    /// Written by kxen-vmm when the guest sends on its end.
    pub to_dom0: OwnedFd,
    /// Written by Dom0 to raise the guest's end.
    pub from_dom0: OwnedFd,
}

/// The `events` grant: the routing area and the fds that raise guest ports.
#[derive(Debug)]
pub struct EventsGrant {
    pub routing: RoutingAreaInfo,
    /// Whether the irqfds are KVM irqfds (else kxen-vmm relays them).
    pub irqfd: bool,
    /// One per vCPU, in vCPU order.
    pub vcpu_irqfds: Vec<OwnedFd>,
    /// Written when a vCPU blocked in kxen-vmm must look for events.
    pub wake: OwnedFd,
}

/// A Dom0 end of an interdomain channel.
#[derive(Debug)]
pub struct Dom0Channel {
    pub dom0_port: u32,
    /// Written by kxen-vmm when the guest sends on its end.
    pub to_dom0: OwnedFd,
}

/// The fds a `virtio-attach` hands over.
#[derive(Debug)]
pub struct VirtioAttachFds {
    /// kxend's end of the link (a stream socket).
    pub link: OwnedFd,
    /// Written by kxend after publishing used buffers.
    pub call: OwnedFd,
    /// Written by kxend when it found a queue malformed.
    pub error: OwnedFd,
    /// One per queue, written by kxen-vmm on QueueNotify.
    pub kicks: Vec<OwnedFd>,
}

/// One connection to a kxen-vmm control socket. Dom0 ports opened through
/// it are closed by kxen-vmm when it ends.
pub struct VmmClient {
    stream: UnixStream,
    lines: LineBuffer,
}

/// The most bytes a `pv-page-types` reply may have: an entry for every
/// frame of the largest PV domain (2^26 frames).
const MAX_PV_PAGE_TYPES_BYTES: u64 = 8 << 26;

impl VmmClient {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_stream(stream)
    }

    /// Connect, retrying until `limit`: the VMM may still be starting.
    pub fn connect_within(path: &Path, limit: Duration) -> Result<Self, ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            match Self::connect(path) {
                Ok(client) => return Ok(client),
                Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A client over an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Self, ClientError> {
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(VmmClient {
            stream,
            lines: LineBuffer::new(MAX_REPLY_LINE),
        })
    }

    /// Send `request` and return its reply with the descriptors that came
    /// with it; a refusal is [`ClientError::Refused`].
    pub fn call(&mut self, request: &Request) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        wire::send_with_fds(&self.stream, &wire::encode(request), &[])?;
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let line = loop {
            if let Some(line) = self.lines.next_line()? {
                break line;
            }
            let got = wire::recv_with_fds(&self.stream, &mut buf)?;
            fds.extend(got.fds);
            if got.truncated {
                return Err(ClientError::FdsTruncated);
            }
            if got.len == 0 {
                return Err(ClientError::Closed);
            }
            self.lines.push(&buf[..got.len]);
        };
        let reply = wire::parse_reply(&line)?;
        if !reply.ok {
            return Err(ClientError::Refused(
                reply.error.unwrap_or_else(|| "request failed".into()),
            ));
        }
        Ok((reply, fds))
    }

    /// A request whose reply carries nothing but `ok`.
    fn plain(&mut self, request: Request) -> Result<(), ClientError> {
        self.call(&request).map(drop)
    }

    pub fn info(&mut self) -> Result<DomainInfo, ClientError> {
        let (reply, _) = self.call(&Request::Info)?;
        reply.info.ok_or(ClientError::Missing {
            op: "info",
            what: "info",
        })
    }

    /// The domain's perf counters by name (`perf-counters`).
    pub fn perf_counters(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, u64>, ClientError> {
        let (reply, _) = self.call(&Request::PerfCounters)?;
        reply.perf_counters.ok_or(ClientError::Missing {
            op: "perf-counters",
            what: "perf_counters",
        })
    }

    pub fn pause(&mut self) -> Result<(), ClientError> {
        self.plain(Request::Pause)
    }

    pub fn unpause(&mut self) -> Result<(), ClientError> {
        self.plain(Request::Unpause)
    }

    pub fn destroy(&mut self) -> Result<(), ClientError> {
        self.plain(Request::Destroy)
    }

    /// Cancel the paused guest's suspend: its suspend hypercall returns 1
    /// and it resumes in place at the next `unpause`.
    pub fn resume_suspended(&mut self) -> Result<(), ClientError> {
        self.plain(Request::ResumeSuspended)
    }

    /// The paused domain's state ([`crate::image`]), read from the memfd
    /// the reply carries.
    pub fn save_state(&mut self) -> Result<Vec<u8>, ClientError> {
        use std::os::unix::fs::FileExt;
        let (reply, fds) = self.call(&Request::SaveState)?;
        let [memfd] = exactly::<1>("save-state", fds)?;
        let size = reply.size.ok_or(ClientError::Missing {
            op: "save-state",
            what: "size",
        })?;
        if size > crate::image::MAX_IMAGE as u64 {
            return Err(ClientError::Refused(format!(
                "save-state: {size} bytes of state is more than allowed"
            )));
        }
        let mut bytes = vec![0u8; size as usize];
        std::fs::File::from(memfd).read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// Hand `image` to the paused, never-run domain and load it.
    pub fn load_state(&mut self, image: &[u8]) -> Result<(), ClientError> {
        use std::os::unix::fs::FileExt;
        let (_, fds) = self.call(&Request::RestoreBuffer {
            len: image.len() as u64,
        })?;
        let [memfd] = exactly::<1>("restore-buffer", fds)?;
        std::fs::File::from(memfd).write_all_at(image, 0)?;
        self.plain(Request::LoadState)
    }

    /// Start KVM's dirty log of the guest's writes (live migration).
    pub fn dirty_log_start(&mut self) -> Result<(), ClientError> {
        self.plain(Request::DirtyLogStart)
    }

    pub fn dirty_log_stop(&mut self) -> Result<(), ClientError> {
        self.plain(Request::DirtyLogStop)
    }

    /// The pages the guest wrote since the previous call (or the start),
    /// one bitmap per region of `regions` (the `memfd` reply's), a bit per
    /// page; KVM's log is cleared. The reply is checked against `regions`.
    pub fn dirty_log(&mut self, regions: &[MemfdRegion]) -> Result<Vec<Vec<u64>>, ClientError> {
        use std::os::unix::fs::FileExt;
        let (reply, fds) = self.call(&Request::DirtyLog)?;
        let [memfd] = exactly::<1>("dirty-log", fds)?;
        let size = reply.size.ok_or(ClientError::Missing {
            op: "dirty-log",
            what: "size",
        })?;
        let words: Vec<usize> = regions
            .iter()
            .map(|r| (r.len / 4096).div_ceil(64) as usize)
            .collect();
        let expected: u64 = words.iter().map(|&w| w as u64 * 8).sum();
        if size != expected {
            return Err(ClientError::Refused(format!(
                "dirty-log: {size} bytes of bitmap for regions that need {expected}"
            )));
        }
        let mut bytes = vec![0u8; size as usize];
        std::fs::File::from(memfd).read_exact_at(&mut bytes, 0)?;
        let mut words_in = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        Ok(words
            .iter()
            .map(|&n| words_in.by_ref().take(n).collect())
            .collect())
    }

    /// A classic PV domain's page tables, as PAGE_DATA pfn entries
    /// (`pv-page-types`).
    pub fn pv_page_types(&mut self) -> Result<Vec<u64>, ClientError> {
        use std::os::unix::fs::FileExt;
        let (reply, fds) = self.call(&Request::PvPageTypes)?;
        let [memfd] = exactly::<1>("pv-page-types", fds)?;
        let size = reply.size.ok_or(ClientError::Missing {
            op: "pv-page-types",
            what: "size",
        })?;
        if size % 8 != 0 || size > MAX_PV_PAGE_TYPES_BYTES {
            return Err(ClientError::Refused(format!("pv-page-types: {size} bytes")));
        }
        let mut bytes = vec![0u8; size as usize];
        std::fs::File::from(memfd).read_exact_at(&mut bytes, 0)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }

    pub fn memfd(&mut self) -> Result<GuestMemfd, ClientError> {
        let (reply, fds) = self.call(&Request::Memfd)?;
        let [memfd] = exactly::<1>("memfd", fds)?;
        let missing = |what| ClientError::Missing { op: "memfd", what };
        let size = reply.size.ok_or(missing("size"))?;
        let regions = reply.regions.ok_or(missing("regions"))?;
        check_regions(&regions, size)?;
        Ok(GuestMemfd {
            memfd,
            size,
            regions,
        })
    }

    pub fn dom0_ports(&mut self) -> Result<Vec<Dom0Port>, ClientError> {
        let (reply, fds) = self.call(&Request::Dom0Ports)?;
        let ports = reply.ports.ok_or(ClientError::Missing {
            op: "dom0-ports",
            what: "ports",
        })?;
        if fds.len() != ports.len() * 2 {
            return Err(ClientError::FdCount {
                op: "dom0-ports",
                expected: ports.len() * 2,
                got: fds.len(),
            });
        }
        let mut fds = fds.into_iter();
        Ok(ports
            .into_iter()
            .zip(std::iter::from_fn(|| Some((fds.next()?, fds.next()?))))
            .map(|(info, (to_dom0, from_dom0))| Dom0Port {
                info,
                to_dom0,
                from_dom0,
            })
            .collect())
    }

    pub fn serial(&mut self) -> Result<OwnedFd, ClientError> {
        let (_, fds) = self.call(&Request::Serial)?;
        let [line] = exactly::<1>("serial", fds)?;
        Ok(line)
    }

    pub fn events(&mut self) -> Result<EventsGrant, ClientError> {
        let (reply, mut fds) = self.call(&Request::Events)?;
        let missing = |what| ClientError::Missing { op: "events", what };
        let routing = reply.routing.ok_or(missing("routing"))?;
        let vcpus = reply.vcpus.ok_or(missing("vcpus"))? as usize;
        if routing.size < ROUTING_AREA_SIZE as u64 {
            return Err(ClientError::RoutingArea(routing.size));
        }
        if fds.len() != vcpus + 1 {
            return Err(ClientError::FdCount {
                op: "events",
                expected: vcpus.saturating_add(1),
                got: fds.len(),
            });
        }
        let wake = fds.pop().ok_or(missing("the wake eventfd"))?;
        Ok(EventsGrant {
            routing,
            irqfd: reply.irqfd.unwrap_or(false),
            vcpu_irqfds: fds,
            wake,
        })
    }

    fn channel(&mut self, op: &'static str, request: Request) -> Result<Dom0Channel, ClientError> {
        let (reply, fds) = self.call(&request)?;
        let dom0_port = reply.dom0_port.ok_or(ClientError::Missing {
            op,
            what: "dom0_port",
        })?;
        let [to_dom0] = exactly::<1>(op, fds)?;
        Ok(Dom0Channel { dom0_port, to_dom0 })
    }

    pub fn evtchn_bind(&mut self, guest_port: u32) -> Result<Dom0Channel, ClientError> {
        self.channel("evtchn-bind", Request::EvtchnBind { guest_port })
    }

    pub fn evtchn_alloc_unbound(&mut self) -> Result<Dom0Channel, ClientError> {
        self.channel("evtchn-alloc-unbound", Request::EvtchnAllocUnbound)
    }

    pub fn evtchn_close(&mut self, dom0_port: u32) -> Result<(), ClientError> {
        self.plain(Request::EvtchnClose { dom0_port })
    }

    pub fn virtio_attach(&mut self, attach: VirtioAttach) -> Result<VirtioAttachFds, ClientError> {
        let queues = attach.queues as usize;
        let (_, fds) = self.call(&Request::VirtioAttach(attach))?;
        if fds.len() != queues.saturating_add(3) {
            return Err(ClientError::FdCount {
                op: "virtio-attach",
                expected: queues.saturating_add(3),
                got: fds.len(),
            });
        }
        let mut fds = fds.into_iter();
        let mut next = || {
            fds.next().ok_or(ClientError::Missing {
                op: "virtio-attach",
                what: "descriptors",
            })
        };
        Ok(VirtioAttachFds {
            link: next()?,
            call: next()?,
            error: next()?,
            kicks: (0..queues).map(|_| next()).collect::<Result<_, _>>()?,
        })
    }
}

/// The reply's descriptors, which must be exactly `N`.
fn exactly<const N: usize>(
    op: &'static str,
    fds: Vec<OwnedFd>,
) -> Result<[OwnedFd; N], ClientError> {
    let got = fds.len();
    fds.try_into().map_err(|_| ClientError::FdCount {
        op,
        expected: N,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;

    /// A fake VMM answering each request line with the next of `replies`
    /// (raw bytes, fds to attach), then closing.
    fn fake_vmm(
        replies: Vec<(Vec<u8>, usize)>,
    ) -> (VmmClient, std::thread::JoinHandle<Vec<String>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            for (bytes, nfds) in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line);
                let keep: Vec<UnixStream> =
                    (0..nfds).map(|_| UnixStream::pair().unwrap().0).collect();
                let raw: Vec<_> = keep.iter().map(|s| s.as_raw_fd()).collect();
                if bytes.is_empty() {
                    break;
                }
                // The client may hang up first (an oversized reply).
                let _ = wire::send_with_fds(&theirs, &bytes, &raw);
            }
            let _ = (&theirs).flush();
            seen
        });
        (VmmClient::from_stream(ours).unwrap(), server)
    }

    #[test]
    fn typed_calls_check_their_replies() {
        let (mut client, server) = fake_vmm(vec![
            (b"{\"ok\":true,\"size\":8192,\"regions\":[{\"gpa\":0,\"len\":4096,\"offset\":0}]}\n".to_vec(), 1),
            (b"{\"ok\":true,\"dom0_port\":4}\n".to_vec(), 1),
            (b"{\"ok\":false,\"error\":\"no such port\"}\n".to_vec(), 0),
        ]);
        let mem = client.memfd().unwrap();
        assert_eq!(mem.size, 8192);
        assert_eq!(mem.regions.len(), 1);
        assert_eq!(client.evtchn_bind(7).unwrap().dom0_port, 4);
        assert!(matches!(
            client.evtchn_close(4),
            Err(ClientError::Refused(why)) if why == "no such port"
        ));
        assert_eq!(
            server.join().unwrap(),
            [
                "{\"op\":\"memfd\"}\n",
                "{\"op\":\"evtchn-bind\",\"guest_port\":7}\n",
                "{\"op\":\"evtchn-close\",\"dom0_port\":4}\n"
            ]
        );
    }

    /// Each hostile reply is an error of its own kind; none panics.
    #[test]
    fn hostile_replies_are_errors() {
        type Case = (Vec<u8>, usize, fn(&ClientError) -> bool);
        let cases: Vec<Case> = vec![
            // No memfd attached.
            (
                b"{\"ok\":true,\"size\":4096,\"regions\":[]}\n".to_vec(),
                0,
                |e| matches!(e, ClientError::FdCount { expected: 1, got: 0, .. }),
            ),
            // Two where one is due: both are closed.
            (
                b"{\"ok\":true,\"size\":4096,\"regions\":[]}\n".to_vec(),
                2,
                |e| matches!(e, ClientError::FdCount { expected: 1, got: 2, .. }),
            ),
            // A region past the memfd's end.
            (
                b"{\"ok\":true,\"size\":4096,\"regions\":[{\"gpa\":0,\"len\":8192,\"offset\":0}]}\n"
                    .to_vec(),
                1,
                |e| matches!(e, ClientError::Layout(_)),
            ),
            // Wrong types.
            (
                b"{\"ok\":true,\"size\":\"big\"}\n".to_vec(),
                1,
                |e| matches!(e, ClientError::BadReply(_)),
            ),
            // A field missing.
            (
                b"{\"ok\":true,\"size\":4096}\n".to_vec(),
                1,
                |e| matches!(e, ClientError::Missing { what: "regions", .. }),
            ),
            // Truncated: the VMM closes mid-line.
            (b"{\"ok\":tr".to_vec(), 0, |e| matches!(e, ClientError::Closed)),
            // Oversized: no newline within the limit.
            (
                vec![b' '; MAX_REPLY_LINE + 10],
                0,
                |e| matches!(e, ClientError::BadReply(WireError::TooLong { .. })),
            ),
            // Not JSON at all.
            (b"\xff\n".to_vec(), 0, |e| matches!(e, ClientError::BadReply(_))),
        ];
        for (bytes, nfds, expected) in cases {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned();
            let (mut client, server) = fake_vmm(vec![(bytes, nfds)]);
            let err = client.memfd().expect_err(&shown);
            assert!(expected(&err), "{shown}: {err}");
            drop(client);
            server.join().unwrap();
        }
    }

    #[test]
    fn events_reply_needs_one_fd_per_vcpu_and_wake() {
        let area = ROUTING_AREA_SIZE;
        let line = format!(
            "{{\"ok\":true,\"routing\":{{\"offset\":0,\"size\":{area}}},\"vcpus\":2,\"irqfd\":true}}\n"
        );
        let (mut client, server) = fake_vmm(vec![
            (line.clone().into_bytes(), 3),
            (line.into_bytes(), 2),
            (
                b"{\"ok\":true,\"routing\":{\"offset\":0,\"size\":16},\"vcpus\":0}\n".to_vec(),
                1,
            ),
        ]);
        let grant = client.events().unwrap();
        assert_eq!(grant.vcpu_irqfds.len(), 2);
        assert!(grant.irqfd);
        assert!(matches!(
            client.events(),
            Err(ClientError::FdCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
        assert!(matches!(client.events(), Err(ClientError::RoutingArea(16))));
        server.join().unwrap();
    }

    #[test]
    fn a_closed_vmm_is_an_error() {
        let (mut client, server) = fake_vmm(vec![(vec![], 0)]);
        assert!(matches!(client.info(), Err(ClientError::Closed)));
        server.join().unwrap();
    }
}
