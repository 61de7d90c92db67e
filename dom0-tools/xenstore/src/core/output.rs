//! The output side of every connection: queueing replies and watch
//! events in order, flushing them to sockets and rings, the epoll interest
//! that keeps a slow socket from being read, and expiring events a domain
//! leaves unread.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};
use xen_abi::xenstore as xs;

use crate::ring;
use crate::watch::{event_path, ConnId, Fire};
use crate::wire::{self, Header, HEADER_LEN, PAYLOAD_MAX};

use super::{
    pop_front, Conn, Core, Kind, OutMsg, Tracker, EV_CONN, SOCKET_EVENT_CAP, SOCKET_OUT_HIGH,
};

impl Core {
    fn queue(&mut self, id: ConnId, msg: OutMsg) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.out_bytes += msg.data.len();
        c.out.push_back(msg);
        self.dirty.push(id);
    }

    pub(super) fn queue_reply(
        &mut self,
        id: ConnId,
        hdr: &Header,
        kind: u32,
        payload: &[u8],
        tracker: Option<Arc<Tracker>>,
    ) {
        let data = if payload.len() > PAYLOAD_MAX {
            wire::message(xs::XS_ERROR, hdr.req_id, hdr.tx_id, b"E2BIG\0")
        } else {
            wire::message(kind, hdr.req_id, hdr.tx_id, payload)
        };
        self.queue(
            id,
            OutMsg {
                data,
                sent: 0,
                event: false,
                _tracker: tracker,
                deadline: None,
            },
        );
    }

    /// Queue `XS_WATCH_EVENT path\0token\0` for a connection, unless it is
    /// too long, a duplicate of one already queued, or over the
    /// connection's memory quota.
    pub(super) fn queue_event(
        &mut self,
        id: ConnId,
        path: &[u8],
        token: &[u8],
        cause: Option<Arc<Tracker>>,
    ) {
        let len = path.len() + token.len() + 2;
        if len > PAYLOAD_MAX {
            return;
        }
        let timeout = self.quotas.watch_event_timeout;
        let memory = self.quotas.memory;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.ignored {
            return;
        }
        if let Kind::Internal = c.kind {
            let idnum = std::str::from_utf8(token)
                .ok()
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(cb) = idnum.and_then(|n| self.callbacks.get(&n)) {
                self.effects
                    .callbacks
                    .push((cb.clone(), String::from_utf8_lossy(path).into_owned()));
            }
            return;
        }
        let mut data = Vec::with_capacity(HEADER_LEN + len);
        data.extend_from_slice(
            &Header {
                kind: xs::XS_WATCH_EVENT,
                req_id: 0,
                tx_id: 0,
                len: len as u32,
            }
            .to_bytes(),
        );
        data.extend_from_slice(path);
        data.push(0);
        data.extend_from_slice(token);
        data.push(0);
        let special = path.first() == Some(&b'@');
        if !special && c.pending_events.contains(&data[HEADER_LEN..]) {
            return;
        }
        let cap = if c.caller.privileged {
            SOCKET_EVENT_CAP
        } else {
            memory
        };
        if c.out_bytes + data.len() > cap {
            warn!(
                conn = id,
                domid = c.caller.domid,
                "watch event dropped: connection over its memory quota"
            );
            return;
        }
        if !special {
            c.pending_events.insert(data[HEADER_LEN..].to_vec());
        }
        let deadline = (!c.caller.privileged).then(|| Instant::now() + timeout);
        self.queue(
            id,
            OutMsg {
                data,
                sent: 0,
                event: true,
                _tracker: cause,
                deadline,
            },
        );
    }

    /// Hand the watch events of a change to their watchers.
    pub(super) fn deliver(&mut self, fires: Vec<Fire>, cause: Option<&Arc<Tracker>>) {
        for f in fires {
            let special = f.name.starts_with('@');
            let mut allowed: HashMap<ConnId, bool> = HashMap::new();
            for m in &f.matches {
                let Some(c) = self.conns.get(&m.conn) else {
                    continue;
                };
                let ok = *allowed.entry(m.conn).or_insert_with(|| {
                    if special {
                        let p = if f.name == "@introduceDomain" {
                            &self.intro_perms
                        } else {
                            &self.release_perms
                        };
                        c.caller.can_read(p)
                    } else {
                        f.permitted(&c.caller)
                    }
                });
                if !ok {
                    continue;
                }
                let p = event_path(f.name.as_bytes(), m.relative, &c.home).to_vec();
                self.queue_event(m.conn, &p, &m.token, cause.cloned());
            }
        }
    }

    pub(super) fn fire_special(&mut self, name: &str) {
        if let Some(f) = Fire::special(&self.watches, name) {
            self.deliver(vec![f], None);
        }
    }

    /// Push queued output towards every connection that has some.
    pub fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty {
            self.flush(id);
        }
    }

    pub fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut c.kind {
            Kind::Socket { .. } => {
                if !self.flush_socket(id) {
                    self.close(id);
                    return;
                }
                self.update_interest(id);
            }
            Kind::Ring(_) => self.flush_ring(id),
            Kind::Loopback | Kind::Internal => {}
        }
    }

    /// Write what the socket takes; false if the client is gone.
    pub(super) fn flush_socket(&mut self, id: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let Conn {
            kind,
            out,
            out_bytes,
            pending_events,
            ..
        } = c;
        let Kind::Socket { stream, .. } = kind else {
            return true;
        };
        while !out.is_empty() {
            let iov: Vec<IoSlice<'_>> = out
                .iter()
                .take(64)
                .map(|m| IoSlice::new(&m.data[m.sent..]))
                .collect();
            match stream.write_vectored(&iov) {
                Ok(0) => return false,
                Ok(mut n) => {
                    drop(iov);
                    while n > 0 {
                        let front = out.front_mut().expect("bytes written from a message");
                        let left = front.data.len() - front.sent;
                        if n >= left {
                            n -= left;
                            pop_front(out, out_bytes, pending_events);
                        } else {
                            front.sent += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = id, error = %e, "socket write failed");
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn flush_ring(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.ignored {
            return;
        }
        let Conn {
            kind,
            out,
            out_bytes,
            pending_events,
            ..
        } = c;
        let Kind::Ring(r) = kind else {
            return;
        };
        if r.frozen {
            return;
        }
        let page = r.page.clone();
        let mut bad = false;
        while let Some(m) = out.front_mut() {
            match ring::write_responses(&*page, &m.data[m.sent..]) {
                Err(_) => {
                    bad = true;
                    break;
                }
                Ok(0) => break,
                Ok(n) => {
                    r.need_notify = true;
                    m.sent += n;
                    if m.sent == m.data.len() {
                        pop_front(out, out_bytes, pending_events);
                    }
                }
            }
        }
        if bad {
            self.ignore(id, xs::ERROR_RINGIDX);
        }
        self.collect_notify(id);
    }

    pub(super) fn collect_notify(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Ring(r),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if r.need_notify {
            r.need_notify = false;
            if !self.effects.notifies.iter().any(|(c, _)| *c == id) {
                self.effects.notifies.push((id, r.notify.clone()));
            }
        }
    }

    /// Take everything queued for a loopback connection.
    pub fn take_output(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            while let Some(m) = c.out.front() {
                out.extend_from_slice(&m.data[m.sent..]);
                c.pop_front();
            }
        }
        out
    }

    pub(super) fn update_interest(&mut self, id: ConnId) {
        let Some(epoll) = self.epoll else {
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Kind::Socket {
            stream, interest, ..
        } = &mut c.kind
        else {
            return;
        };
        let mut want = 0u32;
        if c.out_bytes < SOCKET_OUT_HIGH {
            want |= libc::EPOLLIN as u32;
        }
        if !c.out.is_empty() {
            want |= libc::EPOLLOUT as u32;
        }
        if want == *interest {
            return;
        }
        let op = if *interest == 0 {
            libc::EPOLL_CTL_ADD
        } else {
            libc::EPOLL_CTL_MOD
        };
        let mut ev = libc::epoll_event {
            events: want | libc::EPOLLRDHUP as u32,
            u64: EV_CONN | id,
        };
        // SAFETY: `epoll` is the loop's live epoll fd, the stream's fd is
        // open (owned by this connection) and `ev` is a valid event struct.
        let rc = unsafe { libc::epoll_ctl(epoll, op, stream.as_raw_fd(), &mut ev) };
        if rc == 0 {
            *interest = want;
        } else {
            warn!(conn = id, error = %std::io::Error::last_os_error(), "epoll_ctl failed");
        }
    }

    /// Whether any connection has output queued that it has not taken.
    pub fn output_queued(&self) -> bool {
        self.conns.values().any(|c| !c.out.is_empty())
    }

    /// Housekeeping: drop watch events unprivileged domains left unread
    /// past the timeout. Returns whether any connection has output waiting.
    pub fn expire_events(&mut self, now: Instant) -> bool {
        let mut waiting = false;
        for c in self.conns.values_mut() {
            if c.caller.privileged || c.out.is_empty() {
                continue;
            }
            let before = c.out.len();
            let mut keep = VecDeque::with_capacity(before);
            while let Some(m) = c.out.pop_front() {
                if m.sent == 0 && m.deadline.is_some_and(|d| d <= now) {
                    c.out_bytes -= m.data.len();
                    if m.event {
                        c.pending_events.remove(&m.data[HEADER_LEN..]);
                    }
                } else {
                    keep.push_back(m);
                }
            }
            c.out = keep;
            if c.out.len() != before {
                debug!(
                    domid = c.caller.domid,
                    dropped = before - c.out.len(),
                    "watch events timed out"
                );
            }
            waiting |= !c.out.is_empty();
        }
        waiting
    }
}
