//! Framing: one JSON object per line, file descriptors in SCM_RIGHTS
//! control messages on the same Unix stream socket. Pure functions for
//! the bytes (fuzzed), two small helpers for the socket.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::Serialize;

use crate::protocol::{Reply, Request};

/// Longest request line the VMM accepts, newline included.
pub const MAX_REQUEST_LINE: usize = 4096;
/// Longest reply line a client accepts, newline included.
pub const MAX_REPLY_LINE: usize = 64 * 1024;
/// Most descriptors one reply may carry (per-vCPU irqfds plus wake).
pub const MAX_REPLY_FDS: usize = 64;

/// A line that is not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// `msg` as one line, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these types cannot fail: no maps with non-string keys,
    // no floats, no custom Serialize impls.
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parse one request line (trailing newline optional).
pub fn parse_request(line: &[u8]) -> Result<Request, WireError> {
    if line.len() > MAX_REQUEST_LINE {
        return Err(WireError::TooLong {
            max: MAX_REQUEST_LINE,
        });
    }
    Ok(serde_json::from_slice(line)?)
}

/// Parse one reply line (trailing newline optional).
pub fn parse_reply(line: &[u8]) -> Result<Reply, WireError> {
    if line.len() > MAX_REPLY_LINE {
        return Err(WireError::TooLong {
            max: MAX_REPLY_LINE,
        });
    }
    Ok(serde_json::from_slice(line)?)
}

/// Bytes received so far, cut into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineBuffer {
    pending: Vec<u8>,
    max: usize,
}

impl LineBuffer {
    pub fn new(max: usize) -> Self {
        LineBuffer {
            pending: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole line (newline included), `Ok(None)` while none is
    /// complete, or an error once more than `max` bytes came without one.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(end) if end < self.max => Ok(Some(self.pending.drain(..=end).collect())),
            Some(_) => Err(WireError::TooLong { max: self.max }),
            None if self.pending.len() >= self.max => Err(WireError::TooLong { max: self.max }),
            None => Ok(None),
        }
    }

    /// Whether bytes of an unfinished line are waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Send `line` with `fds` attached (none: a plain write).
pub fn send_with_fds(stream: &UnixStream, line: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    if fds.is_empty() {
        return std::io::Write::write_all(&mut &*stream, line);
    }
    let cmsg = [ControlMessage::ScmRights(fds)];
    let iov = [IoSlice::new(line)];
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    // The descriptors went with the first byte; the rest is plain data.
    std::io::Write::write_all(&mut &*stream, &line[sent..])
}

/// What one `recvmsg` brought.
pub struct Received {
    /// Bytes read; 0 at end of stream.
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors for lack of room.
    pub truncated: bool,
}

/// Read once into `buf`, taking up to [`MAX_REPLY_FDS`] descriptors
/// (close-on-exec).
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut space = nix::cmsg_space!([RawFd; MAX_REPLY_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS just installed `fd` in our table;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DomainInfo, VirtioAttach};

    #[test]
    fn requests_round_trip_in_their_wire_spelling() {
        let cases = [
            (Request::Info, r#"{"op":"info"}"#),
            (Request::Dom0Ports, r#"{"op":"dom0-ports"}"#),
            (
                Request::EvtchnBind { guest_port: 5 },
                r#"{"op":"evtchn-bind","guest_port":5}"#,
            ),
            (
                Request::EvtchnAllocUnbound,
                r#"{"op":"evtchn-alloc-unbound"}"#,
            ),
            (
                Request::EvtchnClose { dom0_port: 9 },
                r#"{"op":"evtchn-close","dom0_port":9}"#,
            ),
            (
                Request::VirtioAttach(VirtioAttach {
                    slot: 1,
                    device_id: 2,
                    device_features: 64,
                    config: vec![0, 16],
                    queues: 1,
                }),
                r#"{"op":"virtio-attach","slot":1,"device_id":2,"device_features":64,"config":[0,16],"queues":1}"#,
            ),
        ];
        for (req, text) in cases {
            let line = encode(&req);
            assert_eq!(line, format!("{text}\n").into_bytes());
            assert_eq!(parse_request(&line).unwrap(), req);
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut reply = Reply::ok();
        reply.info = Some(DomainInfo {
            domid: 3,
            name: "d".into(),
            paused: true,
            vcpus: 2,
            memory_kib: 1024,
            max_memory_kib: 2048,
            hypercalls: 7,
            uptime_ms: 5,
            pid: 42,
            blocked: false,
            vcpus_online: 1,
            suspended: false,
        });
        assert_eq!(parse_reply(&encode(&reply)).unwrap(), reply);
        let refused = Reply::error("no");
        assert_eq!(encode(&refused), b"{\"ok\":false,\"error\":\"no\"}\n");
        assert_eq!(parse_reply(&encode(&refused)).unwrap(), refused);
    }

    #[test]
    fn hostile_lines_are_errors() {
        for line in [
            &b"{\"ok\":\"yes\"}"[..],
            b"{\"ok\":true,\"size\":-1}",
            b"{\"ok\":true,\"regions\":[{\"gpa\":1}]}",
            b"{\"ok\":true,\"info\":{\"domid\":70000}}",
            b"{\"ok\":tr",
            b"",
            b"\xff\xfe",
            b"[1,2,3]",
        ] {
            assert!(parse_reply(line).is_err(), "{line:?}");
        }
        let long = vec![b' '; MAX_REPLY_LINE + 1];
        assert!(matches!(parse_reply(&long), Err(WireError::TooLong { .. })));
        for line in [
            &b"{\"op\":\"frob\"}"[..],
            b"{\"op\":\"evtchn-bind\"}",
            b"{\"op\":\"evtchn-bind\",\"guest_port\":-1}",
            b"{\"op\":\"virtio-attach\",\"slot\":0,\"device_id\":1,\"queues\":2,\"config\":[256]}",
            b"null",
        ] {
            assert!(parse_request(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn line_buffer_splits_and_bounds_lines() {
        let mut lines = LineBuffer::new(16);
        lines.push(b"{\"ok\":tr");
        assert!(lines.next_line().unwrap().is_none());
        lines.push(b"ue}\n{\"ok\"");
        assert_eq!(lines.next_line().unwrap().unwrap(), b"{\"ok\":true}\n");
        assert!(lines.next_line().unwrap().is_none());
        assert!(!lines.is_empty());
        lines.push(&[b'x'; 16]);
        assert!(matches!(
            lines.next_line(),
            Err(WireError::TooLong { max: 16 })
        ));
    }

    #[test]
    fn fds_cross_with_their_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let (keep, _other) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"{\"ok\":true}\n", &[keep.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let got = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"{\"ok\":true}\n");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
    }
}
