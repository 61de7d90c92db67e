//! The host side of a vif: a TAP device from /dev/net/tun with a
//! virtio_net_hdr before every frame, one file descriptor per queue.
//!
//! The device is not persistent: it disappears when the last queue's fd
//! is closed, so dropping [`Tap`] (after the I/O threads are gone) removes it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::error::NetError;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// One queue of the TAP device.
pub struct TapQueue {
    file: std::fs::File,
}

impl TapQueue {
    /// Read one frame (virtio_net_hdr first); WouldBlock when none is queued.
    pub fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one frame (virtio_net_hdr first) into the host stack.
    pub fn write_packet(&self, pkt: &[u8]) -> std::io::Result<()> {
        let n = (&self.file).write(pkt)?;
        if n != pkt.len() {
            return Err(std::io::Error::other("short write to the tap"));
        }
        Ok(())
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A TAP device and its queues.
pub struct Tap {
    name: String,
    queues: Vec<Arc<TapQueue>>,
}

/// Check a name the kernel would take as is (no `%d` patterns, no `/`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn tap_err(name: &str, source: std::io::Error) -> NetError {
    NetError::Tap {
        name: name.to_string(),
        source,
    }
}

impl Tap {
    /// Create TAP device `name` with `queues` queues (non-blocking fds).
    pub fn create(name: &str, queues: usize) -> Result<Tap, NetError> {
        if !valid_ifname(name) {
            return Err(NetError::Spec(format!("bad interface name `{name}'")));
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut out = Vec::with_capacity(queues);
        for _ in 0..queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|e| tap_err(name, e))?;
            // SAFETY: ifreq is plain old data; all-zero is a valid value.
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
            // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
            if r < 0 {
                return Err(tap_err(name, std::io::Error::last_os_error()));
            }
            out.push(Arc::new(TapQueue { file }));
        }
        Ok(Tap {
            name: name.to_string(),
            queues: out,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue(&self, i: usize) -> Option<Arc<TapQueue>> {
        self.queues.get(i).cloned()
    }

    /// Set the length of the header before every frame (`TUNSETVNETHDRSZ`):
    /// 10 (the default, netback's) or 12 (virtio 1.x's `virtio_net_hdr_v1`,
    /// with `num_buffers`). It applies to every queue of the device.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<(), NetError> {
        let Some(q) = self.queues.first() else {
            return Ok(());
        };
        let len = libc::c_int::try_from(len).map_err(|_| NetError::Spec("bad header".into()))?;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which outlives the call.
        let r = unsafe { libc::ioctl(q.file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &len) };
        if r < 0 {
            return Err(tap_err(&self.name, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Tell the kernel which offloads the packets we read may use
    /// (`TUN_F_*`): partial checksums and TSO only when the frontend takes them.
    pub fn set_offload(&self, flags: u32) -> Result<(), NetError> {
        let Some(q) = self.queues.first() else {
            return Ok(());
        };
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                q.file.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(tap_err(&self.name, std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("vif5.0"));
        assert!(valid_ifname("vif32767.12345"));
        assert!(valid_ifname("vif32767.123456"));
        assert!(!valid_ifname("vif32767.1234567"));
        assert!(!valid_ifname("tap%d"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname(".."));
    }
}
