//! Who is on the other end of a Unix socket: kxend.sock and the VMM links
//! control domains, so only root and kxend's own uid may use them.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::warn;

/// Whether the peer of `stream` is root or runs as kxend's own uid
/// (SO_PEERCRED, the credentials it had when it connected).
pub fn is_trusted(stream: &UnixStream, socket: &str) -> bool {
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => {
            let uid = cred.uid();
            let trusted = uid == 0 || uid == own_uid();
            if !trusted {
                warn!(
                    uid,
                    pid = cred.pid(),
                    "{socket}: refused a client of uid {uid}"
                );
            }
            trusted
        }
        Err(e) => {
            warn!("{socket}: no peer credentials ({e}); refused");
            false
        }
    }
}

/// kxend's effective uid.
fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}
