//! A minimal xenstore client on the shared ring (HVM params STORE_PFN and
//! STORE_EVTCHN). Message framing is in [`kxen_testguest::xswire`]; this
//! module moves bytes through the ring page.

use core::sync::atomic::{AtomicU32, Ordering};

use kxen_testguest::xswire::{self, Framer, Header, TooLong};
use xen_abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
use xen_abi::xenstore::{
    OFFSET_REQ, OFFSET_REQ_CONS, OFFSET_REQ_PROD, OFFSET_RSP, OFFSET_RSP_CONS, OFFSET_RSP_PROD,
    PAYLOAD_MAX, RING_SIZE, XS_WATCH_EVENT,
};

use crate::cell::Single;
use crate::time::Deadline;
use crate::{events, xen};

static REQ_ID: AtomicU32 = AtomicU32::new(1);

/// A fresh request id (never 0).
pub fn next_req_id() -> u32 {
    loop {
        let id = REQ_ID.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

pub struct Reply {
    pub kind: u32,
    pub len: usize,
    pub buf: [u8; PAYLOAD_MAX],
}

impl Reply {
    /// A reply to be filled: no payload, a type no message has.
    pub fn empty() -> Reply {
        Reply {
            kind: u32::MAX,
            len: 0,
            buf: [0; PAYLOAD_MAX],
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The payload without trailing NULs.
    pub fn text(&self) -> &[u8] {
        xswire::text(self.payload())
    }
}

/// The ring page and its event channel.
#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
    port: u32,
}

impl Ring {
    fn index(&self, off: usize) -> &'static AtomicU32 {
        // SAFETY: `base` is the identity-mapped xenstore page from
        // HVM_PARAM_STORE_PFN (page aligned, never unmapped); the indices
        // are shared with the server, hence atomics.
        unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    /// Free bytes in the request ring.
    fn space(&self) -> usize {
        let cons = self.index(OFFSET_REQ_CONS).load(Ordering::Acquire);
        let prod = self.index(OFFSET_REQ_PROD).load(Ordering::Relaxed);
        RING_SIZE.saturating_sub(prod.wrapping_sub(cons) as usize)
    }

    /// Copy `bytes` into the request ring at free-running index `p`.
    fn put_at(&self, mut p: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            let idx = p as usize & (RING_SIZE - 1);
            // SAFETY: idx < RING_SIZE: a byte of the req array that the
            // server does not read until req_prod moves past it (the caller
            // checked there is room).
            unsafe { self.base.add(OFFSET_REQ + idx).write_volatile(b) };
            p = p.wrapping_add(1);
        }
        p
    }

    /// Queue one request (header + `parts`) if the request ring has room
    /// for all of it, and notify the server. `Ok(false)`: no room yet.
    pub fn try_send(&self, kind: u32, req_id: u32, parts: &[&[u8]]) -> Result<bool, &'static str> {
        self.try_send_tx(kind, req_id, 0, parts)
    }

    /// [`Ring::try_send`] inside transaction `tx_id` (0: none).
    pub fn try_send_tx(
        &self,
        kind: u32,
        req_id: u32,
        tx_id: u32,
        parts: &[&[u8]],
    ) -> Result<bool, &'static str> {
        let Some(mut h) = xswire::request_header(kind, req_id, parts) else {
            return Err("request too long");
        };
        h.tx_id = tx_id;
        let total = xswire::HEADER_LEN + h.len as usize;
        if total > RING_SIZE {
            // Never fits at once; the guest only sends short requests.
            return Err("request longer than the ring");
        }
        if self.space() < total {
            return Ok(false);
        }
        let prod = self.index(OFFSET_REQ_PROD);
        let mut p = prod.load(Ordering::Relaxed);
        p = self.put_at(p, &h.to_bytes());
        for part in parts {
            p = self.put_at(p, part);
        }
        prod.store(p, Ordering::Release);
        xen::send(self.port);
        Ok(true)
    }

    /// Put raw request bytes on the ring, as far as they fit, and notify
    /// the server; returns how many went. For checks that send a message
    /// in pieces (a request longer than the ring, or one left half-sent).
    pub fn put_raw(&self, bytes: &[u8]) -> usize {
        let n = self.space().min(bytes.len());
        if n == 0 {
            return 0;
        }
        let prod = self.index(OFFSET_REQ_PROD);
        let p = self.put_at(prod.load(Ordering::Relaxed), &bytes[..n]);
        prod.store(p, Ordering::Release);
        xen::send(self.port);
        n
    }

    /// Whether the server has taken every request byte on the ring.
    pub fn requests_taken(&self) -> bool {
        self.space() == RING_SIZE
    }

    /// Response bytes waiting on the ring.
    pub fn responses_waiting(&self) -> usize {
        self.available()
    }

    fn available(&self) -> usize {
        let cons = self.index(OFFSET_RSP_CONS).load(Ordering::Relaxed);
        let prod = self.index(OFFSET_RSP_PROD).load(Ordering::Acquire);
        prod.wrapping_sub(cons) as usize
    }

    /// Move response bytes into `framer` until it holds a complete message
    /// (`Ok(true)`) or the ring is empty (`Ok(false)`). Never takes a byte
    /// of the next message. Notifies the server when it consumed bytes.
    pub fn recv(&self, framer: &mut Framer) -> Result<bool, TooLong> {
        let cons = self.index(OFFSET_RSP_CONS);
        let mut c = cons.load(Ordering::Relaxed);
        let mut consumed = false;
        let result = loop {
            if framer.complete() {
                break Ok(true);
            }
            let avail = self.available().min(RING_SIZE);
            if avail == 0 {
                break Ok(false);
            }
            let mut chunk = [0u8; 64];
            let n = avail.min(framer.wanted()).min(chunk.len());
            for b in chunk[..n].iter_mut() {
                let idx = c as usize & (RING_SIZE - 1);
                // SAFETY: idx < RING_SIZE: a byte of the rsp array between
                // rsp_cons and rsp_prod (n <= available).
                *b = unsafe { self.base.add(OFFSET_RSP + idx).read_volatile() };
                c = c.wrapping_add(1);
            }
            cons.store(c, Ordering::Release);
            consumed = true;
            if let Err(e) = framer.push(&chunk[..n]) {
                break Err(e);
            }
        };
        if consumed {
            xen::send(self.port);
        }
        result
    }
}

/// The ring, if the domain has one.
pub fn ring() -> Result<Ring, &'static str> {
    let pfn = xen::get_param(HVM_PARAM_STORE_PFN).map_err(|_| "get_param(STORE_PFN) failed")?;
    let port =
        xen::get_param(HVM_PARAM_STORE_EVTCHN).map_err(|_| "get_param(STORE_EVTCHN) failed")?;
    if pfn == 0 || pfn >= 1 << 20 || port == 0 {
        return Err("no xenstore ring (STORE_PFN or STORE_EVTCHN is 0 or above 4 GiB)");
    }
    Ok(Ring {
        base: (pfn << 12) as *mut u8,
        port: port as u32,
    })
}

/// Longest payload kept for a message that arrives while someone else
/// waits for a reply (watch events, replies to service mode's requests).
const DEFERRED_MAX: usize = 512;
/// How many such messages are kept.
const DEFERRED_SLOTS: usize = 32;

#[derive(Clone, Copy)]
struct Deferred {
    header: Header,
    len: usize,
    buf: [u8; DEFERRED_MAX],
}

/// Everything read from the response ring goes through here: one framer
/// (so a message is never split between two readers) and a queue of the
/// messages that arrived while a synchronous [`request`] waited for its own
/// reply. Service mode's asynchronous client takes them with [`next`].
struct Inbox {
    framer: Framer,
    queue: [Deferred; DEFERRED_SLOTS],
    head: usize,
    count: usize,
    /// Messages dropped because the queue was full.
    lost: u32,
}

const EMPTY: Deferred = Deferred {
    header: Header {
        kind: 0,
        req_id: 0,
        tx_id: 0,
        len: 0,
    },
    len: 0,
    buf: [0; DEFERRED_MAX],
};

static INBOX: Single<Inbox> = Single::new(Inbox {
    framer: Framer::new(),
    queue: [EMPTY; DEFERRED_SLOTS],
    head: 0,
    count: 0,
    lost: 0,
});

impl Inbox {
    /// Queue the framer's complete message; false if the queue is full.
    fn defer(&mut self) -> bool {
        if self.count == DEFERRED_SLOTS {
            return false;
        }
        let Some(header) = self.framer.header() else {
            return true;
        };
        let p = self.framer.payload();
        // Watch consumers only care that a watch fired, not how often:
        // one queued event per token is enough, so a burst of events (our
        // own writes under a watched directory) cannot crowd out replies.
        if header.kind == XS_WATCH_EVENT {
            if let Some((_, token)) = xswire::watch_event(p) {
                let dup = (0..self.count).any(|i| {
                    let d = &self.queue[(self.head + i) % DEFERRED_SLOTS];
                    d.header.kind == XS_WATCH_EVENT
                        && xswire::watch_event(&d.buf[..d.len]).is_some_and(|(_, t)| t == token)
                });
                if dup {
                    return true;
                }
            }
        }
        let n = p.len().min(DEFERRED_MAX);
        let slot = &mut self.queue[(self.head + self.count) % DEFERRED_SLOTS];
        slot.header = header;
        slot.len = n;
        slot.buf[..n].copy_from_slice(&p[..n]);
        self.count += 1;
        true
    }

    fn pop(&mut self) -> Option<Deferred> {
        if self.count == 0 {
            return None;
        }
        let d = self.queue[self.head];
        self.head = (self.head + 1) % DEFERRED_SLOTS;
        self.count -= 1;
        Some(d)
    }
}

/// The next message for an asynchronous client: a queued one first, else
/// one from the ring. `f` sees its header and payload. `Ok(false)`: none.
pub fn next(ring: &Ring, f: impl FnOnce(Header, &[u8])) -> Result<bool, TooLong> {
    INBOX.with(|ib| {
        if let Some(d) = ib.pop() {
            f(d.header, &d.buf[..d.len]);
            return Ok(true);
        }
        if !ring.recv(&mut ib.framer)? {
            return Ok(false);
        }
        if let Some(h) = ib.framer.header() {
            f(h, ib.framer.payload());
        }
        ib.framer.reset();
        Ok(true)
    })
}

/// Whether messages taken off the ring wait in the queue (they arrived
/// while someone waited for a reply; their event is already consumed).
pub fn deferred() -> bool {
    INBOX.with(|ib| ib.count > 0)
}

/// Move complete messages from the ring into the queue (while it has room),
/// so that long waits neither lose watch events nor stall the server.
pub fn pump() {
    let Ok(ring) = ring() else { return };
    INBOX.with(|ib| {
        while ib.count < DEFERRED_SLOTS {
            match ring.recv(&mut ib.framer) {
                Ok(true) => {
                    ib.defer();
                    ib.framer.reset();
                }
                Ok(false) => break,
                Err(_) => {
                    // The stream is broken; start over at the next header.
                    ib.framer.reset();
                    break;
                }
            }
        }
    });
}

/// Take every queued watch event whose token starts with `prefix`; returns
/// whether there was one (or whether messages were lost, which may have
/// included one).
pub fn take_watch_events(prefix: &[u8]) -> bool {
    INBOX.with(|ib| {
        let mut hit = core::mem::take(&mut ib.lost) != 0;
        let n = ib.count;
        for _ in 0..n {
            let Some(d) = ib.pop() else { break };
            let mine = d.header.kind == XS_WATCH_EVENT
                && xswire::watch_event(&d.buf[..d.len]).is_some_and(|(_, t)| t.starts_with(prefix));
            if mine {
                hit = true;
            } else {
                // Keep the others, in order.
                let slot = (ib.head + ib.count) % DEFERRED_SLOTS;
                ib.queue[slot] = d;
                ib.count += 1;
            }
        }
        hit
    })
}

/// Send one request (payload = the parts, concatenated) and wait up to one
/// second for its reply; other messages are queued for [`next`].
pub fn request(kind: u32, parts: &[&[u8]], reply: &mut Reply) -> Result<(), &'static str> {
    request_tx(kind, 0, parts, reply)
}

/// [`request`] inside transaction `tx_id` (0: none).
pub fn request_tx(
    kind: u32,
    tx_id: u32,
    parts: &[&[u8]],
    reply: &mut Reply,
) -> Result<(), &'static str> {
    let ring = ring()?;
    let req_id = next_req_id();
    let mut d = Deadline::after_ms(1_000);
    while !ring.try_send_tx(kind, req_id, tx_id, parts)? {
        if d.expired() {
            return Err("timed out waiting for request ring space");
        }
        xen::sched_yield();
    }
    wait_reply(&ring, req_id, d, reply)
}

/// Wait until `deadline` for the reply to request `req_id`; other
/// messages are queued for [`next`].
pub fn wait_reply(
    ring: &Ring,
    req_id: u32,
    mut d: Deadline,
    reply: &mut Reply,
) -> Result<(), &'static str> {
    loop {
        let got = INBOX.with(|ib| -> Result<bool, &'static str> {
            loop {
                match ring.recv(&mut ib.framer) {
                    Err(_) => {
                        ib.framer.reset();
                        return Err("reply longer than XENSTORE_PAYLOAD_MAX");
                    }
                    Ok(false) => return Ok(false),
                    Ok(true) => {
                        let Some(h) = ib.framer.header() else {
                            ib.framer.reset();
                            return Err("framing error");
                        };
                        if h.kind != XS_WATCH_EVENT && h.req_id == req_id {
                            let p = ib.framer.payload();
                            reply.buf[..p.len()].copy_from_slice(p);
                            reply.kind = h.kind;
                            reply.len = p.len();
                            ib.framer.reset();
                            return Ok(true);
                        }
                        if !ib.defer() {
                            ib.lost += 1;
                        }
                        ib.framer.reset();
                    }
                }
            }
        })?;
        if got {
            return Ok(());
        }
        events::drain();
        if d.expired() {
            return Err("timed out waiting for a reply");
        }
        xen::sched_yield();
    }
}
