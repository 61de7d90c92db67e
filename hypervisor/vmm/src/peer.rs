//! Who is on the other end of the control socket. The socket hands out the
//! guest's memory and event descriptors, so only root (kxend) and the
//! VMM's own uid may use it, whatever the socket file's mode.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::warn;

/// Whether the peer of `stream` is root or runs as this process's uid
/// (SO_PEERCRED: its credentials when it connected).
pub fn is_trusted(stream: &UnixStream) -> bool {
    let own = nix::unistd::geteuid().as_raw();
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) if cred.uid() == 0 || cred.uid() == own => true,
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control socket: refused a client"
            );
            false
        }
        Err(e) => {
            warn!("control socket: no peer credentials ({e}); refused");
            false
        }
    }
}
