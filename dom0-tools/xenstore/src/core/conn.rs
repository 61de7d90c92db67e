//! Connection lifecycle: registering socket, loopback and internal
//! clients, and tearing a connection down (forgetting its watches,
//! transactions and queued output) when it closes or misbehaves.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use tracing::{debug, warn};
use xen_abi::xenstore as xs;

use crate::path;
use crate::perms::Caller;
use crate::watch::ConnId;

use super::{Conn, Core, Kind, INTERNAL};

impl Core {
    pub(super) fn new_conn(&mut self, conn: Conn) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, conn);
        id
    }

    /// A client on a byte stream driven by hand, acting as `domid`.
    pub fn add_loopback(&mut self, domid: u32) -> ConnId {
        self.new_conn(Conn::new(
            Caller::domain(domid),
            path::domain_path(domid),
            Kind::Loopback,
        ))
    }

    pub fn all_conns(&self) -> Vec<ConnId> {
        self.conns
            .keys()
            .copied()
            .filter(|&c| c != INTERNAL)
            .collect()
    }

    pub fn all_ring_conns(&self) -> Vec<ConnId> {
        self.domains.values().map(|d| d.conn).collect()
    }

    /// A Unix-socket client (always Dom0, privileged).
    pub fn add_socket(&mut self, stream: UnixStream, listener: u64) -> ConnId {
        let conn = Conn::new(
            Caller::DOM0,
            path::domain_path(0),
            Kind::Socket {
                stream,
                listener,
                interest: 0,
            },
        );
        let id = self.new_conn(conn);
        self.update_interest(id);
        id
    }

    pub fn socket_conns_of(&self, listener: u64) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Socket { listener: l, .. } if l == listener))
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn conn_exists(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Forget a connection's watches, transactions and queued messages.
    pub(super) fn reset_conn_state(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        self.watch_epoch += 1;
        for (p, t) in std::mem::take(&mut c.watches) {
            self.watches.remove(id, &p, &t);
        }
        c.transactions.clear();
        c.out.clear();
        c.out_bytes = 0;
        c.pending_events.clear();
        c.inbuf.clear();
        if let Kind::Ring(r) = &mut c.kind {
            r.hdr_have = 0;
            r.body.clear();
        }
    }

    /// Stop talking to a domain's ring after a protocol error: its watches,
    /// transactions and queued data go, and the ring's `error` says why.
    pub(super) fn ignore(&mut self, id: ConnId, err: u32) {
        self.reset_conn_state(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        warn!(
            conn = id,
            domid = c.caller.domid,
            err,
            "xenstore connection ignored"
        );
        c.ignored = true;
        if let Kind::Ring(r) = &mut c.kind {
            r.page.store_u32(xs::OFFSET_ERROR, err);
            r.need_notify = true;
        }
        self.collect_notify(id);
    }

    /// Drop a connection entirely.
    pub fn close(&mut self, id: ConnId) {
        if id == INTERNAL {
            return;
        }
        // Like Xen: push out what is queued if the socket takes it now.
        if matches!(
            self.conns.get(&id).map(|c| &c.kind),
            Some(Kind::Socket { .. })
        ) {
            self.flush_socket(id);
        }
        self.reset_conn_state(id);
        if let Some(c) = self.conns.remove(&id) {
            if let (
                Kind::Socket {
                    stream, interest, ..
                },
                Some(epoll),
            ) = (&c.kind, self.epoll)
            {
                if *interest != 0 {
                    // SAFETY: deregistering an fd that is still open from
                    // the loop's epoll fd; no pointer is dereferenced.
                    unsafe {
                        libc::epoll_ctl(
                            epoll,
                            libc::EPOLL_CTL_DEL,
                            stream.as_raw_fd(),
                            std::ptr::null_mut(),
                        );
                    }
                }
            }
            debug!(conn = id, "connection closed");
        }
    }
}
