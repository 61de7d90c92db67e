//! The daemon's state and the request dispatcher: connections, domains,
//! watches, transactions and the store, all behind one lock in
//! [`crate::Xenstored`]. Nothing here blocks: sockets are non-blocking and
//! ring pages are plain memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};
use xen_abi::xenstore as xs;

use crate::config::{Config, IntroduceHook, IntroduceRequest, Quotas};
use crate::error::XsError;
use crate::path;
use crate::perms::{Access, Caller, Perms, PERM_OWNER, PERM_WRITE};
use crate::ring::{self, SharedPage};
use crate::store::Store;
use crate::view::{self, Transaction, View};
use crate::watch::{event_path, ConnId, Fire, WatchIndex};
use crate::wire::{self, Header, HEADER_LEN, PAYLOAD_MAX};

/// The connection that carries the embedder's own (callback) watches.
pub(crate) const INTERNAL: ConnId = 0;

/// Stop reading a socket while this much output waits for it.
const SOCKET_OUT_HIGH: usize = 1 << 20;
/// Drop watch events for a socket client that lets this much pile up.
const SOCKET_EVENT_CAP: usize = 64 << 20;
/// Messages handled per ring per service round (fairness).
pub(crate) const RING_BUDGET: usize = 64;

/// A watch callback of the embedder.
pub type WatchCallback = Arc<dyn Fn(&str) + Send + Sync>;

/// Decrements a domain's outstanding-request count when the reply and all
/// the watch events its request caused have gone out (or been dropped).
#[derive(Debug)]
pub(crate) struct Tracker(Arc<AtomicUsize>);

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct OutMsg {
    data: Vec<u8>,
    sent: usize,
    event: bool,
    _tracker: Option<Arc<Tracker>>,
    deadline: Option<Instant>,
}

pub(crate) struct RingState {
    page: Arc<dyn SharedPage>,
    notify: Arc<dyn Fn() + Send + Sync>,
    hdr: [u8; HEADER_LEN],
    hdr_have: usize,
    body: Vec<u8>,
    need_notify: bool,
}

impl RingState {
    fn new(page: Arc<dyn SharedPage>, notify: Arc<dyn Fn() + Send + Sync>) -> RingState {
        RingState {
            page,
            notify,
            hdr: [0; HEADER_LEN],
            hdr_have: 0,
            body: Vec::new(),
            need_notify: true,
        }
    }
}

pub(crate) enum Kind {
    /// A Unix-socket client (Dom0 tools).
    Socket {
        stream: UnixStream,
        listener: u64,
        interest: u32,
    },
    /// A byte stream driven by hand (tests, fuzzing): output stays queued.
    Loopback,
    /// A domain's shared ring.
    Ring(RingState),
    /// The embedder's callback watches.
    Internal,
}

pub(crate) struct Conn {
    caller: Caller,
    home: String,
    kind: Kind,
    out: VecDeque<OutMsg>,
    out_bytes: usize,
    /// Payloads of queued (non-special) watch events, to drop duplicates.
    pending_events: HashSet<Vec<u8>>,
    transactions: Vec<Transaction>,
    next_tx_id: u32,
    watches: Vec<(Vec<u8>, Vec<u8>)>,
    ignored: bool,
    outstanding: Arc<AtomicUsize>,
    inbuf: Vec<u8>,
    /// The domain whose ring this is.
    domid: Option<u32>,
}

impl Conn {
    fn new(caller: Caller, home: String, kind: Kind) -> Conn {
        Conn {
            caller,
            home,
            kind,
            out: VecDeque::new(),
            out_bytes: 0,
            pending_events: HashSet::new(),
            transactions: Vec::new(),
            next_tx_id: 0,
            watches: Vec::new(),
            ignored: false,
            outstanding: Arc::new(AtomicUsize::new(0)),
            inbuf: Vec::new(),
            domid: None,
        }
    }

    fn pop_front(&mut self) {
        pop_front(&mut self.out, &mut self.out_bytes, &mut self.pending_events);
    }
}

fn pop_front(out: &mut VecDeque<OutMsg>, out_bytes: &mut usize, pending: &mut HashSet<Vec<u8>>) {
    if let Some(m) = out.pop_front() {
        *out_bytes -= m.data.len();
        if m.event {
            pending.remove(&m.data[HEADER_LEN..]);
        }
    }
}

struct Domain {
    conn: ConnId,
    shutdown: bool,
}

/// Work to do once the state lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    notifies: Vec<(ConnId, Arc<dyn Fn() + Send + Sync>)>,
    callbacks: Vec<(WatchCallback, String)>,
}

impl Effects {
    /// Kick guests' event channels, then run watch callbacks.
    pub fn run(self) {
        for (_, n) in self.notifies {
            n();
        }
        for (cb, p) in self.callbacks {
            cb(&p);
        }
    }
}

/// What a handler answers.
struct Reply {
    payload: Vec<u8>,
    /// A watch event to queue after the reply (a new watch fires at once).
    post_event: Option<(Vec<u8>, Vec<u8>)>,
}

impl Reply {
    fn ok() -> Reply {
        Reply::data(b"OK\0".to_vec())
    }

    fn data(payload: Vec<u8>) -> Reply {
        Reply {
            payload,
            post_event: None,
        }
    }
}

pub(crate) struct Core {
    pub store: Store,
    pub quotas: Quotas,
    watches: WatchIndex,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    domains: HashMap<u32, Domain>,
    pub intro_perms: Perms,
    pub release_perms: Perms,
    callbacks: HashMap<u64, WatchCallback>,
    next_callback: u64,
    introduce_hook: Option<IntroduceHook>,
    dirty: Vec<ConnId>,
    effects: Effects,
    /// The event loop's epoll instance (socket interest changes).
    pub epoll: Option<i32>,
    /// Rings with work left over from their last service round.
    pub ring_backlog: Vec<ConnId>,
    trace_io: bool,
    pub saved_generation: u64,
    scratch: Vec<u8>,
    /// Guests' watches from a loaded state file, waiting for their domain
    /// to be resumed.
    pub restored_watches: HashMap<u32, Vec<crate::persist::DomainWatch>>,
    /// Bumped whenever a watch is added or removed (they are saved too).
    pub watch_epoch: u64,
    pub saved_watch_epoch: u64,
}

pub(crate) const EV_CONN: u64 = 2 << 56;

impl Core {
    pub fn new(config: Config) -> Core {
        let mut conns = HashMap::new();
        conns.insert(
            INTERNAL,
            Conn::new(Caller::DOM0, path::domain_path(0), Kind::Internal),
        );
        let store = Store::new();
        Core {
            restored_watches: HashMap::new(),
            watch_epoch: 0,
            saved_watch_epoch: 0,
            saved_generation: store.generation(),
            store,
            quotas: config.quotas,
            watches: WatchIndex::default(),
            conns,
            next_conn: 1,
            domains: HashMap::new(),
            intro_perms: Perms::owner(0, Access::None),
            release_perms: Perms::owner(0, Access::None),
            callbacks: HashMap::new(),
            next_callback: 1,
            introduce_hook: config.introduce_hook,
            dirty: Vec::new(),
            effects: Effects::default(),
            epoll: None,
            ring_backlog: Vec::new(),
            trace_io: false,
            scratch: vec![0; 64 * 1024],
        }
    }

    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    fn new_conn(&mut self, conn: Conn) -> ConnId {
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

    // ----- output -----

    fn queue(&mut self, id: ConnId, msg: OutMsg) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.out_bytes += msg.data.len();
        c.out.push_back(msg);
        self.dirty.push(id);
    }

    fn queue_reply(
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
    fn queue_event(&mut self, id: ConnId, path: &[u8], token: &[u8], cause: Option<Arc<Tracker>>) {
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
    fn deliver(&mut self, fires: Vec<Fire>, cause: Option<&Arc<Tracker>>) {
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

    fn fire_special(&mut self, name: &str) {
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
    fn flush_socket(&mut self, id: ConnId) -> bool {
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

    fn flush_ring(&mut self, id: ConnId) {
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

    fn collect_notify(&mut self, id: ConnId) {
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

    // ----- epoll interest for sockets -----

    fn update_interest(&mut self, id: ConnId) {
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

    // ----- connection teardown -----

    /// Forget a connection's watches, transactions and queued messages.
    fn reset_conn_state(&mut self, id: ConnId) {
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
    fn ignore(&mut self, id: ConnId, err: u32) {
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

    // ----- input: byte streams -----

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

    // ----- input: rings -----

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

    /// The ring connection of a domain.
    pub fn domain_conn(&self, domid: u32) -> Option<ConnId> {
        self.domains.get(&domid).map(|d| d.conn)
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

    // ----- requests -----

    fn tracker(&self, id: ConnId) -> Option<Arc<Tracker>> {
        let c = self.conns.get(&id)?;
        if !matches!(c.kind, Kind::Ring(_)) {
            return None;
        }
        c.outstanding.fetch_add(1, Ordering::AcqRel);
        Some(Arc::new(Tracker(c.outstanding.clone())))
    }

    /// Handle one request and queue its reply (in order).
    pub fn process(&mut self, id: ConnId, hdr: Header, payload: &[u8]) {
        if self.trace_io {
            info!(conn = id, kind = hdr.kind, req_id = hdr.req_id, tx_id = hdr.tx_id, payload = %String::from_utf8_lossy(payload), "xenstore request");
        }
        let tracker = self.tracker(id);
        match self.dispatch(id, &hdr, payload, tracker.as_ref()) {
            Ok(reply) => {
                self.queue_reply(id, &hdr, hdr.kind, &reply.payload, tracker);
                if let Some((p, t)) = reply.post_event {
                    self.queue_event(id, &p, &t, None);
                }
            }
            Err(e) => {
                let mut p = e.name().as_bytes().to_vec();
                p.push(0);
                self.queue_reply(id, &hdr, xs::XS_ERROR, &p, tracker);
            }
        }
    }

    fn dispatch(
        &mut self,
        id: ConnId,
        hdr: &Header,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let kind = hdr.kind;
        let privileged_only = matches!(
            kind,
            xs::XS_CONTROL
                | xs::XS_INTRODUCE
                | xs::XS_RELEASE
                | xs::XS_IS_DOMAIN_INTRODUCED
                | xs::XS_RESUME
                | xs::XS_SET_TARGET
        );
        if kind >= xs::XS_TYPE_COUNT || matches!(kind, xs::XS_WATCH_EVENT | xs::XS_ERROR | 20) {
            return Err(XsError::NoSys);
        }
        let c = self.conns.get(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        if privileged_only && !caller.privileged {
            return Err(XsError::Acces);
        }
        let tx_index = if kind == xs::XS_WATCH || kind == xs::XS_UNWATCH || hdr.tx_id == 0 {
            None
        } else {
            Some(
                c.transactions
                    .iter()
                    .position(|t| t.id == hdr.tx_id)
                    .ok_or(XsError::NoEnt)?,
            )
        };
        match kind {
            xs::XS_READ
            | xs::XS_DIRECTORY
            | xs::XS_DIRECTORY_PART
            | xs::XS_GET_PERMS
            | xs::XS_WRITE
            | xs::XS_MKDIR
            | xs::XS_RM
            | xs::XS_SET_PERMS => self.node_request(id, kind, tx_index, payload, tracker),
            xs::XS_WATCH => self.do_watch(id, payload),
            xs::XS_UNWATCH => self.do_unwatch(id, payload),
            xs::XS_TRANSACTION_START => {
                if tx_index.is_some() {
                    return Err(XsError::Busy);
                }
                self.transaction_start(id).map(|t| {
                    let mut p = t.to_string().into_bytes();
                    p.push(0);
                    Reply::data(p)
                })
            }
            xs::XS_TRANSACTION_END => self.do_transaction_end(id, tx_index, payload, tracker),
            xs::XS_INTRODUCE => self.do_introduce(payload),
            xs::XS_RELEASE => {
                let domid = onearg_domid(payload)?;
                self.release(domid)?;
                Ok(Reply::ok())
            }
            xs::XS_RESUME => {
                let domid = onearg_domid(payload)?;
                let d = self.domains.get_mut(&domid).ok_or(XsError::NoEnt)?;
                d.shutdown = false;
                Ok(Reply::ok())
            }
            xs::XS_GET_DOMAIN_PATH => {
                let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
                let mut p = path::domain_path(wire::atoi(arg) as u32).into_bytes();
                p.push(0);
                Ok(Reply::data(p))
            }
            xs::XS_IS_DOMAIN_INTRODUCED => {
                let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
                let domid = wire::atoi(arg) as u32;
                let yes = domid == xen_abi::DOMID_SELF as u32
                    || domid == 0
                    || self.domains.contains_key(&domid);
                Ok(Reply::data(if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                }))
            }
            xs::XS_SET_TARGET => {
                let v: Vec<&[u8]> = wire::strings(payload).take(2).collect();
                if v.len() < 2 {
                    return Err(XsError::Inval);
                }
                let domid = wire::atoi(v[0]) as u32;
                let tdomid = wire::atoi(v[1]) as u32;
                let conn = self.domains.get(&domid).ok_or(XsError::NoEnt)?.conn;
                if !self.domains.contains_key(&tdomid) {
                    return Err(XsError::NoEnt);
                }
                let c = self.conns.get_mut(&conn).ok_or(XsError::Inval)?;
                c.caller.target = Some(tdomid);
                Ok(Reply::ok())
            }
            xs::XS_RESET_WATCHES => {
                let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
                let watches = std::mem::take(&mut c.watches);
                self.watch_epoch += 1;
                c.transactions.clear();
                for (p, t) in watches {
                    self.watches.remove(id, &p, &t);
                }
                Ok(Reply::ok())
            }
            xs::XS_CONTROL => self.do_control(payload),
            _ => Err(XsError::NoSys),
        }
    }

    /// Run a node operation in the connection's view (its transaction, if
    /// the request names one), then deliver the watch events it fired.
    fn node_request(
        &mut self,
        id: ConnId,
        kind: u32,
        tx_index: Option<usize>,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        let home = c.home.clone();
        let mut tx = tx_index.map(|i| c.transactions.swap_remove(i));
        let special_perms = (self.intro_perms.clone(), self.release_perms.clone());
        let mut view = View::new(
            &mut self.store,
            tx.as_mut(),
            caller,
            &self.quotas,
            &self.watches,
        );
        let result = node_op(&mut view, &home, kind, payload, special_perms);
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        if let Some(t) = tx {
            if let Some(c) = self.conns.get_mut(&id) {
                c.transactions.push(t);
            }
        }
        let cause = if caller.privileged { None } else { tracker };
        self.deliver(fires, cause);
        match result? {
            NodeResult::Reply(p) => Ok(Reply::data(p)),
            NodeResult::SpecialPerms(name, perms) => {
                if name == "@introduceDomain" {
                    self.intro_perms = perms;
                } else {
                    self.release_perms = perms;
                }
                Ok(Reply::ok())
            }
        }
    }

    fn do_watch(&mut self, id: ConnId, payload: &[u8]) -> Result<Reply, XsError> {
        if wire::count_strings(payload) != 2 {
            return Err(XsError::Inval);
        }
        let mut it = wire::strings(payload);
        let (raw, token) = (it.next().unwrap_or(b""), it.next().unwrap_or(b""));
        let c = self.conns.get(&id).ok_or(XsError::Io)?;
        let (node, relative) = self.watch_path(&c.home, raw)?;
        if self.watches.contains(id, &node, token) {
            return Err(XsError::Exist);
        }
        if !c.caller.privileged && c.watches.len() > self.quotas.watches_per_domain {
            return Err(XsError::TooBig);
        }
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        c.watches.push((node.clone(), token.to_vec()));
        self.watches.add(id, &node, token, relative);
        self.watch_epoch += 1;
        let ev = event_path(&node, relative, &c.home).to_vec();
        Ok(Reply {
            payload: b"OK\0".to_vec(),
            post_event: Some((ev, token.to_vec())),
        })
    }

    /// Check and canonicalize a path to watch.
    fn watch_path(&self, home: &str, raw: &[u8]) -> Result<(Vec<u8>, bool), XsError> {
        if raw.first() == Some(&b'@') {
            if raw.len() > xs::REL_PATH_MAX {
                return Err(XsError::Inval);
            }
            return Ok((raw.to_vec(), false));
        }
        let relative = raw.first() != Some(&b'/');
        let node = path::canonicalize(home, raw);
        if !path::is_valid_nodename(&node, self.quotas.path_max) {
            return Err(XsError::Inval);
        }
        Ok((node.into_owned(), relative))
    }

    fn do_unwatch(&mut self, id: ConnId, payload: &[u8]) -> Result<Reply, XsError> {
        if wire::count_strings(payload) != 2 {
            return Err(XsError::Inval);
        }
        let mut it = wire::strings(payload);
        let (raw, token) = (it.next().unwrap_or(b""), it.next().unwrap_or(b""));
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let node = path::canonicalize(&c.home, raw).into_owned();
        let Some(i) = c.watches.iter().position(|(p, t)| *p == node && t == token) else {
            return Err(XsError::NoEnt);
        };
        c.watches.remove(i);
        self.watches.remove(id, &node, token);
        self.watch_epoch += 1;
        Ok(Reply::ok())
    }

    fn transaction_start(&mut self, id: ConnId) -> Result<u32, XsError> {
        let max = self.quotas.transactions_per_domain;
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        if !c.caller.privileged && c.transactions.len() > max {
            return Err(XsError::NoSpc);
        }
        self.store.next_generation();
        let tid = loop {
            let t = c.next_tx_id;
            c.next_tx_id = c.next_tx_id.wrapping_add(1);
            if t != 0 && !c.transactions.iter().any(|x| x.id == t) {
                break t;
            }
        };
        c.transactions.push(Transaction::new(tid));
        Ok(tid)
    }

    fn do_transaction_end(
        &mut self,
        id: ConnId,
        tx_index: Option<usize>,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
        let commit = match arg {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsError::Inval),
        };
        let i = tx_index.ok_or(XsError::NoEnt)?;
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        let tx = c.transactions.swap_remove(i);
        if commit {
            let fires = view::commit(&mut self.store, tx, caller, &self.quotas, &self.watches)?;
            let cause = if caller.privileged { None } else { tracker };
            self.deliver(fires, cause);
        }
        Ok(Reply::ok())
    }

    fn do_introduce(&mut self, payload: &[u8]) -> Result<Reply, XsError> {
        let v: Vec<&[u8]> = wire::strings(payload).take(3).collect();
        if v.len() < 3 {
            return Err(XsError::Inval);
        }
        let domid = wire::atoi(v[0]) as u32;
        let gfn = parse_i64(v[1]);
        let port = wire::atoi(v[2]);
        if port <= 0 || domid == 0 || domid >= xen_abi::DOMID_FIRST_RESERVED as u32 {
            return Err(XsError::Inval);
        }
        let hook = self.introduce_hook.clone().ok_or(XsError::NoSys)?;
        let (page, notify) = hook(IntroduceRequest {
            domid,
            gfn,
            port: port as u32,
        })?;
        self.introduce(domid, page, Arc::from(notify));
        Ok(Reply::ok())
    }

    // ----- domains -----

    /// Start (or restart) serving a domain's ring. The ring is reset to
    /// empty as Xen's `XS_INTRODUCE` does; the first introduction fires
    /// `@introduceDomain`.
    pub fn introduce(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        let state = RingState::new(page.clone(), notify);
        let id = match self.domains.get(&domid) {
            Some(d) => {
                let id = d.conn;
                self.reset_conn_state(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.kind = Kind::Ring(state);
                    c.ignored = false;
                }
                id
            }
            None => {
                let id = self.add_domain_conn(domid, state);
                if domid != 0 {
                    self.fire_special("@introduceDomain");
                }
                info!(domid, "domain introduced");
                id
            }
        };
        ring::reset(&*page);
        self.collect_notify(id);
    }

    /// Re-attach to a domain whose ring was served before this daemon
    /// started (a restarted toolstack): unlike `introduce`, the ring keeps
    /// its indices and contents, and the domain's saved watches come back
    /// without firing.
    pub fn resume_domain(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        if self.domains.contains_key(&domid) {
            // Already served: only the ring binding changes.
            self.introduce_binding(domid, page, notify);
            return;
        }
        let id = self.add_domain_conn(domid, RingState::new(page, notify));
        for w in self.restored_watches.remove(&domid).unwrap_or_default() {
            if let Some(c) = self.conns.get_mut(&id) {
                c.watches.push((w.node.clone(), w.token.clone()));
            }
            self.watches.add(id, &w.node, &w.token, w.relative);
        }
        info!(domid, "domain resumed");
        self.collect_notify(id);
    }

    /// A new ring connection for `domid`, registered as its domain.
    fn add_domain_conn(&mut self, domid: u32, state: RingState) -> ConnId {
        let mut conn = Conn::new(
            Caller::domain(domid),
            path::domain_path(domid),
            Kind::Ring(state),
        );
        conn.domid = Some(domid);
        let id = self.new_conn(conn);
        self.domains.insert(
            domid,
            Domain {
                conn: id,
                shutdown: false,
            },
        );
        id
    }

    /// Replace the ring page and notifier of a served domain in place.
    fn introduce_binding(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        let Some(id) = self.domains.get(&domid).map(|d| d.conn) else {
            return;
        };
        if let Some(Conn {
            kind: Kind::Ring(state),
            ..
        }) = self.conns.get_mut(&id)
        {
            state.page = page;
            state.notify = notify;
        }
        self.collect_notify(id);
    }

    /// The watches guests have set, for the state file.
    pub fn domain_watches(&self) -> Vec<crate::persist::DomainWatch> {
        let mut out = Vec::new();
        for (&domid, d) in &self.domains {
            let Some(c) = self.conns.get(&d.conn) else {
                continue;
            };
            for (node, token) in &c.watches {
                if let Some(relative) = self.watches.relative_of(d.conn, node, token) {
                    out.push(crate::persist::DomainWatch {
                        domid,
                        node: node.clone(),
                        token: token.clone(),
                        relative,
                    });
                }
            }
        }
        out
    }

    pub fn is_introduced(&self, domid: u32) -> bool {
        self.domains.contains_key(&domid)
    }

    /// Stop serving a domain: its connection goes, the nodes it owns are
    /// removed, its entries leave other nodes' permissions (so a later
    /// domain with the same id inherits nothing), and `@releaseDomain`
    /// fires.
    pub fn release(&mut self, domid: u32) -> Result<(), XsError> {
        let d = self.domains.remove(&domid).ok_or(XsError::NoEnt)?;
        self.close(d.conn);
        self.remove_domain_nodes(domid);
        for perms in [&mut self.intro_perms, &mut self.release_perms] {
            strip_domid(perms, domid, true);
        }
        info!(domid, "domain released");
        self.fire_special("@releaseDomain");
        Ok(())
    }

    /// The domain has shut down or crashed: `@releaseDomain` fires once
    /// (again only after `XS_RESUME`).
    pub fn domain_shutdown(&mut self, domid: u32) {
        if let Some(d) = self.domains.get_mut(&domid) {
            if !d.shutdown {
                d.shutdown = true;
                self.fire_special("@releaseDomain");
            }
        }
    }

    fn remove_domain_nodes(&mut self, domid: u32) {
        // Subtrees rooted at nodes the domain owns, outermost first.
        let mut roots = Vec::new();
        let mut stack = vec!["/".to_string()];
        while let Some(n) = stack.pop() {
            let Some(node) = self.store.get(&n) else {
                continue;
            };
            if n != "/" && node.perms.owner_id() == domid {
                roots.push(n);
                continue;
            }
            stack.extend(node.child_names().map(|c| path::join(&n, c)));
        }
        let mut view = View::new(
            &mut self.store,
            None,
            Caller::DOM0,
            &self.quotas,
            &self.watches,
        );
        for r in &roots {
            if let Err(e) = view.rm_node(r) {
                warn!(node = %r, error = %e, "could not remove a released domain's node");
            }
        }
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        self.deliver(fires, None);
        // Strip the domain from the permissions of what remains.
        let names: Vec<String> = self
            .store
            .iter()
            .filter(|(_, n)| n.perms.as_slice()[1..].iter().any(|p| p.domid == domid))
            .map(|(k, _)| k.clone())
            .collect();
        for n in names {
            let gen = self.store.next_generation();
            if let Some(node) = self.store.get_mut(&n) {
                strip_domid(&mut node.perms, domid, false);
                node.generation = gen;
            }
        }
    }

    // ----- the embedder's direct access -----

    /// Run node operations as Dom0 outside any transaction.
    pub fn dom0_op<R>(
        &mut self,
        f: impl FnOnce(&mut View<'_>) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let mut view = View::new(
            &mut self.store,
            None,
            Caller::DOM0,
            &self.quotas,
            &self.watches,
        );
        let r = f(&mut view);
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        self.deliver(fires, None);
        r
    }

    pub fn set_special_perms(&mut self, name: &str, perms: Perms) -> Result<(), XsError> {
        match name {
            "@introduceDomain" => self.intro_perms = perms,
            "@releaseDomain" => self.release_perms = perms,
            _ => return Err(XsError::Inval),
        }
        Ok(())
    }

    /// Add a callback watch; it fires once at once, like any new watch.
    pub fn add_callback(&mut self, path: &str, cb: WatchCallback) -> Result<u64, XsError> {
        let (node, _) = self.watch_path(&path::domain_path(0), path.as_bytes())?;
        let n = self.next_callback;
        self.next_callback += 1;
        let token = n.to_string().into_bytes();
        self.callbacks.insert(n, cb);
        if let Some(c) = self.conns.get_mut(&INTERNAL) {
            c.watches.push((node.clone(), token.clone()));
        }
        self.watches.add(INTERNAL, &node, &token, false);
        self.queue_event(INTERNAL, &node, &token, None);
        Ok(n)
    }

    pub fn remove_callback(&mut self, n: u64) -> bool {
        if self.callbacks.remove(&n).is_none() {
            return false;
        }
        let token = n.to_string().into_bytes();
        if let Some(c) = self.conns.get_mut(&INTERNAL) {
            if let Some(i) = c.watches.iter().position(|(_, t)| *t == token) {
                let (p, t) = c.watches.remove(i);
                self.watches.remove(INTERNAL, &p, &t);
            }
        }
        true
    }

    // ----- CONTROL -----

    fn do_control(&mut self, payload: &[u8]) -> Result<Reply, XsError> {
        let args: Vec<String> = wire::strings(payload)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let Some((cmd, rest)) = args.split_first() else {
            return Err(XsError::Inval);
        };
        let text = |s: String| {
            let mut p = s.into_bytes();
            p.push(0);
            Ok(Reply::data(p))
        };
        match cmd.as_str() {
            "check" => {
                if !rest.is_empty() {
                    return Err(XsError::Inval);
                }
                self.check_store();
                Ok(Reply::ok())
            }
            "log" => match rest {
                [on] if on == "on" => {
                    self.trace_io = true;
                    Ok(Reply::ok())
                }
                [off] if off == "off" => {
                    self.trace_io = false;
                    Ok(Reply::ok())
                }
                _ => Err(XsError::Inval),
            },
            "print" => {
                if rest.len() != 1 {
                    return Err(XsError::Inval);
                }
                info!(message = %rest[0], "xenstore-control print");
                Ok(Reply::ok())
            }
            "quota" => match rest {
                [] => text(self.quota_text(false)),
                [set, name, val] if set == "set" => self.quota_set(name, val, false),
                [domid] => text(self.domain_quota_text(wire::atoi(domid.as_bytes()) as u32)?),
                _ => Err(XsError::Inval),
            },
            "quota-soft" => match rest {
                [] => text(self.quota_text(true)),
                [set, name, val] if set == "set" => self.quota_set(name, val, true),
                _ => Err(XsError::Inval),
            },
            "help" => {
                if !rest.is_empty() {
                    return Err(XsError::Inval);
                }
                text(
                    "check\t\nlog\ton|off\nprint\t<string>\nquota\t[set <name> <val>|<domid>]\n\
                     quota-soft\t[set <name> <val>]\nhelp\t\n"
                        .to_string(),
                )
            }
            _ => Err(XsError::Inval),
        }
    }

    fn quota_table(&self, soft: bool) -> Vec<(&'static str, usize, &'static str)> {
        let q = &self.quotas;
        if soft {
            return vec![(
                "memory",
                q.memory_soft,
                "Total Xenstore memory per domain (warning level)",
            )];
        }
        vec![
            ("nodes", q.nodes_per_domain, "Nodes per domain"),
            ("watches", q.watches_per_domain, "Watches per domain"),
            (
                "transactions",
                q.transactions_per_domain,
                "Transactions per domain",
            ),
            (
                "outstanding",
                q.outstanding,
                "Outstanding requests per domain",
            ),
            (
                "transaction-nodes",
                q.transaction_nodes,
                "Max. number of accessed nodes per transaction",
            ),
            (
                "memory",
                q.memory,
                "Total Xenstore memory per domain (error level)",
            ),
            ("node-size", q.node_size, "Max. size of a node"),
            ("path-max", q.path_max, "Max. length of a node path"),
            (
                "permissions",
                q.perms_per_node,
                "Max. number of permissions per node",
            ),
        ]
    }

    fn quota_text(&self, soft: bool) -> String {
        let mut s = String::from("Quota settings:\n");
        for (name, val, descr) in self.quota_table(soft) {
            s.push_str(&format!("{name:<17}: {val:>8} {descr}\n"));
        }
        s
    }

    fn quota_set(&mut self, name: &str, val: &str, soft: bool) -> Result<Reply, XsError> {
        let v = wire::atoi(val.as_bytes());
        if v < 1 {
            return Err(XsError::Inval);
        }
        let v = v as usize;
        let q = &mut self.quotas;
        let slot = match (soft, name) {
            (true, "memory") => &mut q.memory_soft,
            (false, "nodes") => &mut q.nodes_per_domain,
            (false, "watches") => &mut q.watches_per_domain,
            (false, "transactions") => &mut q.transactions_per_domain,
            (false, "outstanding") => &mut q.outstanding,
            (false, "transaction-nodes") => &mut q.transaction_nodes,
            (false, "memory") => &mut q.memory,
            (false, "node-size") => &mut q.node_size,
            (false, "path-max") => {
                q.path_max = v.min(xs::REL_PATH_MAX);
                return Ok(Reply::ok());
            }
            (false, "permissions") => &mut q.perms_per_node,
            _ => return Err(XsError::Inval),
        };
        *slot = v;
        Ok(Reply::ok())
    }

    fn domain_quota_text(&self, domid: u32) -> Result<String, XsError> {
        let (watches, transactions, outstanding, memory) = if domid == 0 {
            (0, 0, 0, 0)
        } else {
            let d = self.domains.get(&domid).ok_or(XsError::NoEnt)?;
            let c = self.conns.get(&d.conn).ok_or(XsError::NoEnt)?;
            (
                c.watches.len(),
                c.transactions.len(),
                c.outstanding.load(Ordering::Acquire),
                c.out_bytes,
            )
        };
        let mut s = format!("Domain {domid}:\n");
        for (name, v) in [
            ("nodes", self.store.owned_by(domid)),
            ("watches", watches),
            ("transactions", transactions),
            ("outstanding", outstanding),
            ("memory", memory),
        ] {
            s.push_str(&format!("{name:<16}: {v:>8}\n"));
        }
        Ok(s)
    }

    /// Consistency check (`CONTROL check`): every listed child exists and
    /// every node is reachable. Problems are logged.
    pub fn check_store(&self) -> usize {
        let mut problems = 0;
        let reachable: HashSet<String> = self.store.subtree("/").into_iter().collect();
        for (name, node) in self.store.iter() {
            if !reachable.contains(name) {
                warn!(node = %name, "store check: unreachable node");
                problems += 1;
            }
            for c in node.child_names() {
                if self.store.get(&path::join(name, c)).is_none() {
                    warn!(node = %name, child = %c, "store check: missing child");
                    problems += 1;
                }
            }
        }
        problems
    }
}

/// What a node request produced.
enum NodeResult {
    Reply(Vec<u8>),
    SpecialPerms(String, Perms),
}

/// Parse and run one node request in a view.
fn node_op(
    view: &mut View<'_>,
    home: &str,
    kind: u32,
    payload: &[u8],
    special: (Perms, Perms),
) -> Result<NodeResult, XsError> {
    let caller = view.caller;
    let name_of = |raw: &[u8]| -> Result<String, XsError> {
        let canon = path::canonicalize(home, raw);
        Ok(path::valid_node(&canon, view.quotas.path_max)
            .ok_or(XsError::Inval)?
            .to_string())
    };
    let one = || wire::onearg(payload).ok_or(XsError::Inval);
    let ok = || Ok(NodeResult::Reply(b"OK\0".to_vec()));
    match kind {
        xs::XS_READ => {
            let name = name_of(one()?)?;
            view.read(&name).map(NodeResult::Reply)
        }
        xs::XS_DIRECTORY => {
            let name = name_of(one()?)?;
            view.directory(&name).map(NodeResult::Reply)
        }
        xs::XS_GET_PERMS => {
            let name = name_of(one()?)?;
            view.get_perms(&name)
                .map(|p| NodeResult::Reply(p.to_wire()))
        }
        xs::XS_DIRECTORY_PART => {
            if wire::count_strings(payload) != 2 {
                return Err(XsError::Inval);
            }
            let mut it = wire::strings(payload);
            let name = name_of(it.next().unwrap_or(b""))?;
            let off = wire::atoi(it.next().unwrap_or(b""));
            view.directory_part(&name, off as u32 as usize)
                .map(NodeResult::Reply)
        }
        xs::XS_WRITE => {
            let Some(nul) = payload.iter().position(|&c| c == 0) else {
                return Err(XsError::Inval);
            };
            let name = name_of(&payload[..nul])?;
            view.write(&name, &payload[nul + 1..])?;
            ok()
        }
        xs::XS_MKDIR => {
            let name = name_of(one()?)?;
            view.mkdir(&name)?;
            ok()
        }
        xs::XS_RM => {
            let name = name_of(one()?)?;
            view.rm(&name)?;
            ok()
        }
        xs::XS_SET_PERMS => {
            let n = wire::count_strings(payload);
            if n < 2 {
                return Err(XsError::Inval);
            }
            if !caller.privileged && n - 1 > view.quotas.perms_per_node {
                return Err(XsError::NoSpc);
            }
            let nul = payload.iter().position(|&c| c == 0).unwrap_or(0);
            let perms = Perms::from_wire(&payload[nul + 1..])?;
            let raw = &payload[..nul];
            if raw.first() == Some(&b'@') {
                let name = String::from_utf8_lossy(raw).into_owned();
                let cur = match name.as_str() {
                    "@introduceDomain" => &special.0,
                    "@releaseDomain" => &special.1,
                    _ => return Err(XsError::Inval),
                };
                let need = PERM_WRITE | PERM_OWNER;
                if caller.access(cur) & need != need {
                    return Err(XsError::Acces);
                }
                return Ok(NodeResult::SpecialPerms(name, perms));
            }
            let name = name_of(raw)?;
            view.set_perms(&name, perms)?;
            ok()
        }
        _ => Err(XsError::NoSys),
    }
}

fn onearg_domid(payload: &[u8]) -> Result<u32, XsError> {
    let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
    let domid = wire::atoi(arg) as u32;
    if domid == 0 {
        return Err(XsError::Inval);
    }
    Ok(domid)
}

fn parse_i64(s: &[u8]) -> i64 {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Remove a domain from a permission list. An owner entry passes to Dom0
/// (`owner_to_dom0`) or stays (nodes it owns are removed separately).
fn strip_domid(perms: &mut Perms, domid: u32, owner_to_dom0: bool) {
    let v = perms.as_mut_vec();
    if owner_to_dom0 && v[0].domid == domid {
        v[0].domid = 0;
    }
    let owner = v[0];
    let mut rest: Vec<_> = v[1..]
        .iter()
        .copied()
        .filter(|p| p.domid != domid)
        .collect();
    v.clear();
    v.push(owner);
    v.append(&mut rest);
}
