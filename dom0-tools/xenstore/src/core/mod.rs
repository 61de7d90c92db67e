//! The daemon's state: connections, domains, watches, transactions and the
//! store, all behind one lock in [`crate::Xenstored`]. Nothing here blocks:
//! sockets are non-blocking and ring pages are plain memory. This module
//! holds the state's types, its construction and the embedder's direct
//! access; the work on it is split by job into [`conn`] (connection
//! lifecycle), [`input`], [`output`], [`dispatch`] (requests), [`domains`]
//! and [`control`] (XS_CONTROL and quotas).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, IntroduceHook, Quotas};
use crate::error::XsError;
use crate::path;
use crate::perms::{Access, Caller, Perms};
use crate::ring::SharedPage;
use crate::store::Store;
use crate::view::{Transaction, View};
use crate::watch::{ConnId, WatchIndex};
use crate::wire::HEADER_LEN;

mod conn;
mod control;
mod dispatch;
mod domains;
mod input;
mod output;

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
    /// Held still while the domain's image is taken: neither side of the
    /// ring is touched, so the page the image holds and the state
    /// exported with it agree.
    frozen: bool,
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
            frozen: false,
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
}
