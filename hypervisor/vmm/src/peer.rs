//! Who is on the other end of the control socket. The socket hands out the
//! guest's memory and event descriptors, so only root (kxend) and the
//! VMM's own uid may use it, whatever the socket file's mode.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use tracing::warn;

/// Whether the peer of `stream` is root or runs as this process's uid
/// (SO_PEERCRED: its credentials when it connected).
pub fn is_trusted(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the size the call is told.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    let own = unsafe { libc::geteuid() };
    let trusted = rc == 0 && (cred.uid == 0 || cred.uid == own);
    if !trusted {
        warn!(
            uid = cred.uid,
            pid = cred.pid,
            "control socket: refused a client"
        );
    }
    trusted
}
