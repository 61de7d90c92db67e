//! Helpers for tests that exchange frames with a real TAP device: a
//! thread in a private network namespace, `ip(8)`, and a raw packet
//! socket on one interface. Used by this crate's tests and, through the
//! `test-support` feature, by kxen-virtio-backend's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};

/// `PACKET_VNET_HDR` from `<linux/if_packet.h>`.
const PACKET_VNET_HDR: libc::c_int = 15;

/// Run `f` on a fresh thread inside a new, private network namespace.
pub fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // No IPv6 autoconfiguration chatter on the test interfaces.
        for k in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1");
        }
        f()
    })
    .join()
    .expect("test thread");
}

/// Run `ip` with `args`: whether it succeeded, and its standard output.
pub fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A raw packet socket on one interface, with a 200 ms receive timeout.
pub struct PacketSock(OwnedFd);

impl PacketSock {
    /// Open and bind the socket on `ifname`; with `vnet_hdr`, every frame
    /// sent and received carries a virtio-net header first.
    pub fn open(ifname: &str, vnet_hdr: bool) -> PacketSock {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = PacketSock(unsafe { OwnedFd::from_raw_fd(fd) });
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "no interface {ifname}");
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: the option value is a c_int that outlives the call.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    PACKET_VNET_HDR,
                    std::ptr::addr_of!(one).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(r, 0, "PACKET_VNET_HDR");
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: the option value is a timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a properly sized sockaddr_ll.
        let r = unsafe {
            libc::bind(
                fd,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        sock
    }

    /// Send one frame (after its virtio-net header in vnet-header mode).
    pub fn send(&self, pkt: &[u8]) {
        // SAFETY: pkt is a valid buffer for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0) };
        assert_eq!(
            n,
            pkt.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The first packet containing `marker`, within a few seconds.
    pub fn recv_with(&self, marker: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && contains(&buf[..n as usize], marker) {
                return buf[..n as usize].to_vec();
            }
        }
        panic!("no packet with the marker arrived");
    }
}
