//! The input side: reading requests from Unix sockets and hand-driven
//! byte streams, and serving a domain's shared ring (reconnects, replies
//! waiting for room, then a budget of requests).

use std::io::Read;
use std::sync::atomic::Ordering;

use tracing::{info, warn};
use xen_abi::xenstore as xs;

use crate::ring;
use crate::watch::ConnId;
use crate::wire::{Header, HEADER_LEN, PAYLOAD_MAX};

use super::{Conn, Core, Kind};

impl Core {
    /// Read what a socket has (one read) and handle the complete messages.
    /// Returns false when the client has gone (or misbehaved).
    pub fn socket_readable(&mut self, id: ConnId) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        let res = {
            let Some(Conn {
                kind: Kind::Socket { stream, .. },
                ..
            }) = self.conns.get_mut(&id)
            else {
                self.scratch = scratch;
                return false;
            };
            loop {
                match stream.read(&mut scratch) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            }
        };
        let alive = match res {
            Ok(0) => false,
            Ok(n) => self.feed(id, &scratch[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(_) => false,
        };
        self.scratch = scratch;
        alive
    }

    /// Handle bytes from a stream connection. False on a protocol
    /// violation (payload over 4096 bytes): the caller drops the client.
    pub fn feed(&mut self, id: ConnId, mut data: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let mut pending = std::mem::take(&mut c.inbuf);
        loop {
            if !pending.is_empty() {
                if pending.len() < HEADER_LEN {
                    let take = (HEADER_LEN - pending.len()).min(data.len());
                    pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if pending.len() < HEADER_LEN {
                        break;
                    }
                }
                let hdr = Header::parse(&pending);
                if hdr.len as usize > PAYLOAD_MAX {
                    warn!(conn = id, len = hdr.len, "client sent an oversized message");
                    return false;
                }
                let total = HEADER_LEN + hdr.len as usize;
                let take = (total - pending.len()).min(data.len());
                pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                if pending.len() < total {
                    break;
                }
                self.process(id, hdr, &pending[HEADER_LEN..]);
                pending.clear();
            }
            while data.len() >= HEADER_LEN {
                let hdr = Header::parse(data);
                if hdr.len as usize > PAYLOAD_MAX {
                    warn!(conn = id, len = hdr.len, "client sent an oversized message");
                    return false;
                }
                let total = HEADER_LEN + hdr.len as usize;
                if data.len() < total {
                    break;
                }
                self.process(id, hdr, &data[HEADER_LEN..total]);
                data = &data[total..];
            }
            if data.is_empty() {
                break;
            }
            pending.extend_from_slice(data);
            data = &[];
            if pending.len() >= HEADER_LEN {
                continue;
            }
            break;
        }
        match self.conns.get_mut(&id) {
            Some(c) => {
                c.inbuf = pending;
                true
            }
            None => false,
        }
    }

    /// Handle a domain's ring: reconnect requests, replies waiting for room,
    /// then up to `budget` requests. Returns true if it should be called
    /// again soon (budget used up with input left).
    pub fn service_ring(&mut self, id: ConnId, budget: usize) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let Kind::Ring(r) = &mut c.kind else {
            return false;
        };
        if r.frozen {
            return false;
        }
        let page = r.page.clone();
        if page.load_u32(xs::OFFSET_CONNECTION) == xs::RECONNECT {
            info!(domid = c.caller.domid, "guest reset its xenstore ring");
            self.reset_conn_state(id);
            let Some(c) = self.conns.get_mut(&id) else {
                return false;
            };
            c.ignored = false;
            ring::reset(&*page);
            if let Kind::Ring(r) = &mut c.kind {
                r.need_notify = true;
            }
            self.collect_notify(id);
            return false;
        }
        if c.ignored {
            return false;
        }
        self.flush_ring(id);
        let mut handled = 0;
        let more = loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return false;
            };
            if c.ignored {
                break false;
            }
            if !c.caller.privileged
                && c.outstanding.load(Ordering::Acquire) >= self.quotas.outstanding
            {
                break false;
            }
            if handled == budget {
                break ring::has_requests(&*page);
            }
            let Kind::Ring(r) = &mut c.kind else {
                return false;
            };
            // Header first, then exactly the body it announces.
            if r.hdr_have < HEADER_LEN {
                match ring::read_requests(&*page, &mut r.hdr[r.hdr_have..]) {
                    Err(_) => {
                        self.ignore(id, xs::ERROR_RINGIDX);
                        break false;
                    }
                    Ok(n) => {
                        if n > 0 {
                            r.need_notify = true;
                        }
                        r.hdr_have += n;
                    }
                }
                if r.hdr_have < HEADER_LEN {
                    break false;
                }
                let len = Header::parse(&r.hdr).len as usize;
                if len > PAYLOAD_MAX {
                    warn!(
                        domid = c.caller.domid,
                        len, "guest sent an oversized xenstore message"
                    );
                    self.ignore(id, xs::ERROR_PROTO);
                    break false;
                }
                r.body.clear();
                r.body.reserve_exact(len);
            }
            let hdr = Header::parse(&r.hdr);
            let len = hdr.len as usize;
            let have = r.body.len();
            if have < len {
                let mut buf = [0u8; 1024];
                let want = (len - have).min(buf.len());
                match ring::read_requests(&*page, &mut buf[..want]) {
                    Err(_) => {
                        self.ignore(id, xs::ERROR_RINGIDX);
                        break false;
                    }
                    Ok(n) => {
                        if n > 0 {
                            r.need_notify = true;
                        }
                        r.body.extend_from_slice(&buf[..n]);
                    }
                }
                if r.body.len() < len {
                    if r.body.len() > have {
                        continue;
                    }
                    break false;
                }
            }
            let body = std::mem::take(&mut r.body);
            r.hdr_have = 0;
            self.process(id, hdr, &body);
            if let Some(Conn {
                kind: Kind::Ring(r),
                ..
            }) = self.conns.get_mut(&id)
            {
                r.body = body;
                r.body.clear();
            }
            self.flush_ring(id);
            handled += 1;
        };
        self.flush_ring(id);
        self.collect_notify(id);
        more
    }
}
