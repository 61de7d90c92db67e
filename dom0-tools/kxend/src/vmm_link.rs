//! kxend's client for a kxen-vmm control socket.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: {0}")]
    Recv(#[from] nix::Error),
    #[error("kxen-vmm closed the control socket")]
    Closed,
    #[error("bad reply from kxen-vmm: {0}")]
    BadReply(String),
    #[error("kxen-vmm: {0}")]
    Refused(String),
}

pub struct VmmLink {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl VmmLink {
    /// Connect, retrying until `limit` (the VMM may still be starting).
    pub fn connect(path: &Path, limit: Duration) -> Result<Self, LinkError> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    return Ok(VmmLink {
                        stream,
                        pending: Vec::new(),
                    });
                }
                Err(e) if start.elapsed() < limit => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(LinkError::Connect(path.display().to_string(), e)),
            }
        }
    }

    /// Send one request; returns the reply and any fds that came with it.
    pub fn request(&mut self, req: &Value) -> Result<(Value, Vec<OwnedFd>), LinkError> {
        let mut line = serde_json::to_vec(req).map_err(|e| LinkError::BadReply(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        let mut fds = Vec::new();
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let reply: Value = serde_json::from_slice(&line)
                    .map_err(|e| LinkError::BadReply(e.to_string()))?;
                if reply["ok"] != true {
                    let why = reply["error"]
                        .as_str()
                        .unwrap_or("request failed")
                        .to_string();
                    return Err(LinkError::Refused(why));
                }
                return Ok((reply, fds));
            }
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
            let msg = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed this descriptor
                        // for us; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    pub fn op(&mut self, op: &str) -> Result<(Value, Vec<OwnedFd>), LinkError> {
        self.request(&serde_json::json!({ "op": op }))
    }
}
