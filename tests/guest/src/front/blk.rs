//! blkfront: one virtual block device, connected through xenbus to its
//! backend, with a request ring, persistent grants and indirect segments
//! when the backend offers them.
//!
//! All data goes through the device's own buffer area of [`BUF_PAGES`]
//! pages; callers address it by page index. With persistent grants every
//! buffer page keeps one grant for the life of the connection; without,
//! each request grants its pages and revokes them when answered.

use core::fmt::Write;

use xen_abi::io::blkif::{
    keys, Request, RequestDiscard, RequestIndirect, RequestSegment, Response,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, ENTRY_SIZE, PROTOCOL_X86_64,
    SEGMENTS_PER_INDIRECT_FRAME,
};
use xen_abi::DOMID_SELF;

use super::xs::{self, state, Path, XsError};
use crate::checks::Fail;
use crate::time::{now_ns, Deadline};
use crate::{events, grants, pages, xen, xs_path};
use kxen_testguest::ring::FrontRing;

/// Requests in flight at most (and the ids they carry).
pub const MAX_INFLIGHT: usize = 64;
/// Pages of the buffer area.
pub const BUF_PAGES: usize = 1024;
/// Most segments one request carries (indirect: one indirect page).
pub const MAX_SEGS: usize = 256;
/// Ring page order asked for when the backend allows it.
const WANT_RING_ORDER: u32 = 2;
const MAX_RING_PAGES: usize = 1 << WANT_RING_ORDER;
/// Most queues (rings with their own event channel) used.
pub const MAX_QUEUES: usize = 4;
/// Queues used by default when the backend offers several (override with
/// `kxen.blk-queues=N` on the command line).
const DEFAULT_QUEUES: u64 = 2;
/// How long a handshake step or an I/O may take.
pub const HANDSHAKE_MS: u64 = 5_000;
pub const IO_MS: u64 = 10_000;
const SECTORS_PER_PAGE: u32 = 8;

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    done: bool,
    /// The queue the request went to (its response must come back there).
    queue: u8,
    status: i16,
    /// Per-request grants to revoke when answered (non-persistent mode).
    ngrefs: u16,
    grefs: [u32; MAX_SEGS],
}

/// What the backend offered and what we use.
#[derive(Clone, Copy, Default)]
pub struct Features {
    pub persistent: bool,
    /// Segments per indirect request (0: no indirect requests).
    pub indirect: u32,
    pub ring_order: u32,
    pub flush: bool,
    pub barrier: bool,
    pub discard: bool,
}

/// A connected (or failed half-way) block device. All-zero is a valid
/// value: it lives in zeroed pages from [`pages::alloc_zeroed`].
pub struct BlkDev {
    pub devid: u32,
    pub fe: Path,
    pub be: Path,
    pub backend_id: u16,
    queues: [Queue; MAX_QUEUES],
    pub nr_queues: usize,
    ring_pages: usize,
    /// Round-robin position for the next request.
    next_queue: usize,
    pub sectors: u64,
    pub sector_size: u32,
    pub info: u32,
    pub features: Features,
    buf: *mut u8,
    buf_grefs: [u32; BUF_PAGES],
    indirect: [*mut u8; MAX_INFLIGHT],
    indirect_gref: [u32; MAX_INFLIGHT],
    slots: [Slot; MAX_INFLIGHT],
    pub kicks: u64,
    pub reqs: u64,
    /// Responses with an id we never sent (a broken backend).
    pub bogus: u64,
    /// Grants the backend never released (their pages are leaked).
    pub stuck_grants: u64,
    pub connected: bool,
}

/// One ring and its event channel. All-zero: not set up.
struct Queue {
    ring: FrontRing<Response>,
    base: *mut u8,
    grefs: [u32; MAX_RING_PAGES],
    port: u32,
}

/// A request as the commands describe it.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read,
    Write,
    Barrier,
    Flush,
    Discard,
}

/// Deliberately broken requests for `blk hostile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    None,
    /// Segment 0's grant reference is one that grants nothing.
    BadGref,
    /// Segment 0 is granted read-only although the backend must write it.
    ReadOnlyGrant,
    /// nr_segments = 0 on a read.
    NoSegments,
    /// nr_segments above the direct-request maximum.
    TooManySegments,
    /// first_sect > last_sect in segment 0.
    BadSectRange,
    /// Indirect request with more segments than the backend allows.
    TooManyIndirect,
    /// An unknown operation code.
    BadOp,
}

fn fail(args: core::fmt::Arguments) -> Fail {
    Fail::new(args)
}

impl BlkDev {
    fn page(&self, i: usize) -> *mut u8 {
        self.buf.wrapping_add(i * 4096)
    }

    /// The whole buffer area as bytes.
    pub fn buf_bytes(&mut self, first_page: usize, len: usize) -> &mut [u8] {
        assert!(first_page * 4096 + len <= BUF_PAGES * 4096);
        // SAFETY: the buffer area is BUF_PAGES pages of ours (checked
        // bound); the backend writes it only while a read is in flight,
        // and callers only look at it between requests.
        unsafe { core::slice::from_raw_parts_mut(self.page(first_page), len) }
    }

    /// Largest data request in sectors.
    pub fn max_sectors(&self) -> u32 {
        let segs = if self.features.indirect > 0 {
            self.features.indirect as usize
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        segs as u32 * SECTORS_PER_PAGE
    }

    pub fn queue_limit(&self) -> u32 {
        let total: u32 = self.queues[..self.nr_queues]
            .iter()
            .map(|q| q.ring.size())
            .sum();
        total.min(MAX_INFLIGHT as u32)
    }

    /// A free request id and the queue (round robin) with ring room for it.
    fn free_slot(&self) -> Option<(usize, usize)> {
        let q = (0..self.nr_queues)
            .map(|k| (self.next_queue + k) % self.nr_queues)
            .find(|&q| self.queues[q].ring.free_slots() > 0)?;
        Some((self.slots.iter().position(|s| !s.busy)?, q))
    }

    /// Queue one request (not yet published: call [`BlkDev::kick`]).
    /// Data requests cover `nsect` sectors from `sector`, using buffer
    /// pages from `first_page`. Returns the request's id.
    pub fn queue(
        &mut self,
        op: Op,
        sector: u64,
        first_page: usize,
        nsect: u32,
        forge: Forge,
    ) -> Result<usize, Fail> {
        let (id, q) = self
            .free_slot()
            .ok_or_else(|| fail(format_args!("ring full")))?;
        self.next_queue = (q + 1) % self.nr_queues;
        let handle = self.devid as u16;
        let (code, data) = match op {
            Op::Read => (BLKIF_OP_READ, true),
            Op::Write => (BLKIF_OP_WRITE, true),
            Op::Barrier => (BLKIF_OP_WRITE_BARRIER, true),
            Op::Flush => (BLKIF_OP_FLUSH_DISKCACHE, false),
            Op::Discard => (BLKIF_OP_DISCARD, false),
        };
        let slot = Slot {
            busy: true,
            done: false,
            queue: q as u8,
            status: 0,
            ngrefs: 0,
            grefs: [0; MAX_SEGS],
        };
        self.slots[id] = slot;
        if let Op::Discard = op {
            let req = RequestDiscard {
                operation: BLKIF_OP_DISCARD,
                flag: 0,
                handle,
                _pad: 0,
                id: id as u64,
                sector_number: sector,
                nr_sectors: nsect as u64,
            };
            return self.queue_entry(id, req);
        }
        if !data {
            let mut req = zero_request();
            req.operation = code;
            req.handle = handle;
            req.id = id as u64;
            req.sector_number = sector;
            return self.queue_entry(id, req);
        }
        let npages = nsect.div_ceil(SECTORS_PER_PAGE) as usize;
        if nsect == 0 && forge != Forge::NoSegments
            || npages > MAX_SEGS
            || first_page + npages > BUF_PAGES
        {
            self.slots[id].busy = false;
            return Err(fail(format_args!(
                "bad request shape: {} sectors at buffer page {}",
                nsect, first_page
            )));
        }
        let mut segs = [RequestSegment {
            gref: 0,
            first_sect: 0,
            last_sect: 0,
            _pad: [0; 2],
        }; MAX_SEGS];
        let writes_memory = code == BLKIF_OP_READ;
        for (i, seg) in segs.iter_mut().enumerate().take(npages) {
            let left = nsect - i as u32 * SECTORS_PER_PAGE;
            seg.last_sect = (left.min(SECTORS_PER_PAGE) - 1) as u8;
            seg.gref = match self.grant_page(id, first_page + i, !writes_memory) {
                Ok(g) => g,
                Err(e) => {
                    self.release_slot_grants(id);
                    self.slots[id].busy = false;
                    return Err(e);
                }
            };
        }
        // Hostile variants rewrite what a correct frontend would send.
        let mut nsegs = npages;
        let mut invalid_gref = None;
        match forge {
            Forge::BadGref | Forge::ReadOnlyGrant => {
                let g = if forge == Forge::BadGref {
                    grants::reserve_invalid()
                } else {
                    grants::grant(self.backend_id, self.page(first_page) as u64 >> 12, true)
                };
                let g = match g {
                    Ok(g) => g,
                    Err(e) => {
                        self.release_slot_grants(id);
                        self.slots[id].busy = false;
                        return Err(fail(format_args!("grant: {}", e)));
                    }
                };
                if forge == Forge::BadGref {
                    invalid_gref = Some(g);
                } else {
                    self.track_grant(id, g);
                }
                segs[0].gref = g;
            }
            Forge::NoSegments => nsegs = 0,
            Forge::TooManySegments => nsegs = BLKIF_MAX_SEGMENTS_PER_REQUEST + 1,
            Forge::BadSectRange => {
                segs[0].first_sect = 7;
                segs[0].last_sect = 1;
            }
            Forge::None | Forge::TooManyIndirect | Forge::BadOp => {}
        }
        let r = if forge == Forge::TooManyIndirect {
            let claimed = self.features.indirect.max(1) as usize * 4 + 1;
            self.queue_indirect(id, code, handle, sector, &segs[..nsegs], claimed)
        } else if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST && forge != Forge::TooManySegments {
            let mut req = zero_request();
            req.operation = if forge == Forge::BadOp { 0x7f } else { code };
            req.nr_segments = nsegs as u8;
            req.handle = handle;
            req.id = id as u64;
            req.sector_number = sector;
            req.seg[..nsegs].copy_from_slice(&segs[..nsegs]);
            self.queue_entry(id, req)
        } else if forge == Forge::TooManySegments {
            let mut req = zero_request();
            req.operation = code;
            req.nr_segments = nsegs as u8;
            req.handle = handle;
            req.id = id as u64;
            req.sector_number = sector;
            req.seg
                .copy_from_slice(&segs[..BLKIF_MAX_SEGMENTS_PER_REQUEST]);
            self.queue_entry(id, req)
        } else if self.features.indirect as usize >= nsegs {
            self.queue_indirect(id, code, handle, sector, &segs[..nsegs], nsegs)
        } else {
            self.release_slot_grants(id);
            self.slots[id].busy = false;
            Err(fail(format_args!(
                "{} segments need indirect requests, which the backend does not offer",
                nsegs
            )))
        };
        if let Some(g) = invalid_gref {
            // Never valid, so nothing to revoke; the ref is free again
            // once the request is answered.
            if r.is_ok() {
                self.track_invalid(id, g);
            } else {
                grants::release_unused(g);
            }
        }
        r
    }

    fn queue_indirect(
        &mut self,
        id: usize,
        code: u8,
        handle: u16,
        sector: u64,
        segs: &[RequestSegment],
        claimed: usize,
    ) -> Result<usize, Fail> {
        let page = self.indirect[id];
        if page.is_null() {
            self.release_slot_grants(id);
            self.slots[id].busy = false;
            return Err(fail(format_args!("no indirect page")));
        }
        for (i, s) in segs.iter().enumerate().take(SEGMENTS_PER_INDIRECT_FRAME) {
            // SAFETY: the indirect page is ours (4 KiB, 512 segments of 8
            // bytes); i < SEGMENTS_PER_INDIRECT_FRAME.
            unsafe { (page as *mut RequestSegment).add(i).write_volatile(*s) };
        }
        let mut grefs = [0u32; 8];
        grefs[0] = self.indirect_gref[id];
        let req = RequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: code,
            nr_segments: claimed as u16,
            _pad: 0,
            id: id as u64,
            sector_number: sector,
            handle,
            _pad1: 0,
            indirect_grefs: grefs,
            _pad2: 0,
        };
        self.queue_entry(id, req)
    }

    fn queue_entry<T: Copy>(&mut self, id: usize, req: T) -> Result<usize, Fail> {
        let q = self.slots[id].queue as usize;
        if !self.queues[q].ring.queue(req) {
            self.release_slot_grants(id);
            self.slots[id].busy = false;
            return Err(fail(format_args!("ring full")));
        }
        self.reqs += 1;
        Ok(id)
    }

    /// A grant of buffer page `page` for request `id`.
    fn grant_page(&mut self, id: usize, page: usize, readonly: bool) -> Result<u32, Fail> {
        if self.features.persistent {
            if self.buf_grefs[page] == 0 {
                // Persistent grants are writable: the same page serves
                // reads and writes.
                let g = grants::grant(self.backend_id, self.page(page) as u64 >> 12, false)
                    .map_err(|e| fail(format_args!("grant: {}", e)))?;
                self.buf_grefs[page] = g;
            }
            return Ok(self.buf_grefs[page]);
        }
        let g = grants::grant(self.backend_id, self.page(page) as u64 >> 12, readonly)
            .map_err(|e| fail(format_args!("grant: {}", e)))?;
        self.track_grant(id, g);
        Ok(g)
    }

    fn track_grant(&mut self, id: usize, g: u32) {
        let s = &mut self.slots[id];
        if (s.ngrefs as usize) < MAX_SEGS {
            s.grefs[s.ngrefs as usize] = g;
            s.ngrefs += 1;
        }
    }

    fn track_invalid(&mut self, id: usize, g: u32) {
        // Marked with the top bit: released, not revoked.
        self.track_grant(id, g | 1 << 31);
    }

    fn release_slot_grants(&mut self, id: usize) {
        let s = self.slots[id];
        for &g in &s.grefs[..s.ngrefs as usize] {
            if g & 1 << 31 != 0 {
                grants::release_unused(g & !(1 << 31));
            } else if grants::end(g).is_err() {
                self.stuck_grants += 1;
            }
        }
        self.slots[id].ngrefs = 0;
    }

    /// Publish queued requests, notifying the backend if it asked.
    pub fn kick(&mut self) {
        for q in &mut self.queues[..self.nr_queues] {
            if q.ring.push() {
                xen::send(q.port);
                self.kicks += 1;
            }
        }
    }

    /// Consume every response; returns how many.
    pub fn collect(&mut self) -> usize {
        let mut n = 0;
        for q in 0..self.nr_queues {
            loop {
                while let Some(rsp) = self.queues[q].ring.take() {
                    n += 1;
                    let id = rsp.id as usize;
                    if id >= MAX_INFLIGHT
                        || !self.slots[id].busy
                        || self.slots[id].done
                        || self.slots[id].queue as usize != q
                    {
                        self.bogus += 1;
                        continue;
                    }
                    self.release_slot_grants(id);
                    let s = &mut self.slots[id];
                    s.done = true;
                    s.status = rsp.status;
                }
                if !self.queues[q].ring.final_check() {
                    break;
                }
            }
        }
        n
    }

    /// If request `id` is answered, free its slot and return its status.
    pub fn take_done(&mut self, id: usize) -> Option<i16> {
        let s = &mut self.slots[id];
        if s.busy && s.done {
            s.busy = false;
            s.done = false;
            Some(s.status)
        } else {
            None
        }
    }

    /// Any answered request: (id, status).
    pub fn take_any_done(&mut self) -> Option<(usize, i16)> {
        let id = self.slots.iter().position(|s| s.busy && s.done)?;
        self.take_done(id).map(|st| (id, st))
    }

    /// Sleep until the device's event channel fires or `deadline_ns`.
    fn sleep(&mut self, deadline_ns: Option<u64>) {
        events::drain();
        let mut ports = [0u32; MAX_QUEUES];
        for (p, q) in ports.iter_mut().zip(&self.queues[..self.nr_queues]) {
            *p = q.port;
            events::take_seen(q.port);
            events::clear_pending(q.port);
        }
        if self.queues[..self.nr_queues]
            .iter()
            .any(|q| q.ring.unconsumed() > 0)
        {
            return;
        }
        let now = now_ns().unwrap_or(0);
        let until = deadline_ns
            .unwrap_or(now + 10_000_000)
            .min(now + 100_000_000);
        xen::poll(&mut ports[..self.nr_queues], until);
    }

    /// Wait until request `id` is answered; its status.
    pub fn wait(&mut self, id: usize, ms: u64) -> Result<i16, Fail> {
        let mut d = Deadline::after_ms(ms);
        loop {
            self.collect();
            if let Some(st) = self.take_done(id) {
                return Ok(st);
            }
            if d.expired() {
                return Err(fail(format_args!(
                    "no response to request {} within {} ms",
                    id, ms
                )));
            }
            self.sleep(d.end_ns());
        }
    }

    /// Wait until some request is answered.
    pub fn wait_any(&mut self, ms: u64) -> Result<(usize, i16), Fail> {
        let mut d = Deadline::after_ms(ms);
        loop {
            self.collect();
            if let Some(r) = self.take_any_done() {
                return Ok(r);
            }
            if d.expired() {
                return Err(fail(format_args!("no response within {} ms", ms)));
            }
            self.sleep(d.end_ns());
        }
    }

    /// One request, waited for: its status.
    pub fn io(&mut self, op: Op, sector: u64, first_page: usize, nsect: u32) -> Result<i16, Fail> {
        self.io_forged(op, sector, first_page, nsect, Forge::None)
    }

    pub fn io_forged(
        &mut self,
        op: Op,
        sector: u64,
        first_page: usize,
        nsect: u32,
        forge: Forge,
    ) -> Result<i16, Fail> {
        let id = self.queue(op, sector, first_page, nsect, forge)?;
        self.kick();
        self.wait(id, IO_MS)
    }

    /// Feature summary as printed on the connect line.
    pub fn feature_list(&self, out: &mut impl Write) {
        let f = self.features;
        let mut sep = "";
        let mut item = |out: &mut dyn Write, args: core::fmt::Arguments| {
            let _ = out.write_str(sep);
            let _ = out.write_fmt(args);
            sep = ",";
        };
        if f.persistent {
            item(out, format_args!("persistent"));
        }
        if f.indirect > 0 {
            item(out, format_args!("indirect:{}", f.indirect));
        }
        item(out, format_args!("ring-order:{}", f.ring_order));
        if self.nr_queues > 1 {
            item(out, format_args!("queues:{}", self.nr_queues));
        }
        if f.discard {
            item(out, format_args!("discard"));
        }
        if f.flush {
            item(out, format_args!("flush"));
        }
        if f.barrier {
            item(out, format_args!("barrier"));
        }
    }
}

fn zero_request() -> Request {
    Request {
        operation: 0,
        nr_segments: 0,
        handle: 0,
        _pad: 0,
        id: 0,
        sector_number: 0,
        seg: [RequestSegment {
            gref: 0,
            first_sect: 0,
            last_sect: 0,
            _pad: [0; 2],
        }; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    }
}

fn flag(path: &Path) -> Result<bool, XsError> {
    Ok(xs::read_u64_or(path, 0)? != 0)
}

/// The backend's state-watch token for device `devid`.
pub fn be_token(devid: u32, out: &mut Path) {
    let _ = write!(out, "kxen-front-vbd-{}", devid);
}

/// Connect block device `devid` (device/vbd/<devid>): the whole xenbus
/// handshake. On failure the frontend is left Closed and what was set up
/// is torn down.
pub fn connect(devid: u32) -> Result<&'static mut BlkDev, Fail> {
    // SAFETY: BlkDev is all integers, bools, raw pointers and byte arrays;
    // all-zero is a valid (disconnected) value.
    let dev = unsafe { pages::alloc_zeroed::<BlkDev>() }
        .ok_or_else(|| fail(format_args!("out of memory")))?;
    dev.devid = devid;
    match handshake(dev) {
        Ok(()) => Ok(dev),
        Err(e) => {
            let fe = xs_path!("{}", dev.fe);
            teardown(dev);
            let _ = xs::switch_state(&fe, state::CLOSED);
            Err(e)
        }
    }
}

fn handshake(dev: &mut BlkDev) -> Result<(), Fail> {
    let xe = |what: &str, e: XsError| fail(format_args!("{}: {}", what, e));
    dev.fe = xs_path!("device/vbd/{}", dev.devid);
    let mut be = [0u8; 160];
    let n = xs::read(&xs_path!("{}/backend", dev.fe), &mut be).map_err(|e| xe("backend", e))?;
    dev.be.push(&be[..n]);
    let id = xs::read_u64(&xs_path!("{}/backend-id", dev.fe)).map_err(|e| xe("backend-id", e))?;
    dev.backend_id = u16::try_from(id).map_err(|_| fail(format_args!("backend-id {}", id)))?;
    let mut token = Path::new();
    be_token(dev.devid, &mut token);
    let be_state = xs_path!("{}/state", dev.be);
    xs::watch(&be_state, token.as_bytes()).map_err(|e| xe("watch backend state", e))?;

    xs::switch_state(&dev.fe, state::INITIALISING).map_err(|e| xe("state", e))?;
    xs::wait_state(
        &be_state,
        token.as_bytes(),
        |s| s == state::INIT_WAIT || s == state::CONNECTED,
        HANDSHAKE_MS,
    )
    .map_err(|(e, s)| fail(format_args!("backend not in InitWait ({}, state {})", e, s)))?;

    // What the backend offers before connecting.
    let be = &dev.be;
    let max_order = xs::read_u64_or(&xs_path!("{}/{}", be, keys::MAX_RING_PAGE_ORDER), 0)
        .map_err(|e| xe("max-ring-page-order", e))?;
    let order = (max_order as u32).min(WANT_RING_ORDER);
    dev.features.ring_order = order;
    dev.ring_pages = 1 << order;
    dev.features.persistent = flag(&xs_path!("{}/{}", be, keys::FEATURE_PERSISTENT))
        .map_err(|e| xe("feature-persistent", e))?;

    // How many queues: what the backend allows, what we want.
    let max_queues = xs::read_u64_or(&xs_path!("{}/{}", be, keys::MULTI_QUEUE_MAX_QUEUES), 1)
        .map_err(|e| xe("multi-queue-max-queues", e))?;
    let want = crate::env::cmdline_value(b"kxen.blk-queues")
        .and_then(kxen_testguest::cmd::parse_u64)
        .unwrap_or(DEFAULT_QUEUES);
    dev.nr_queues = max_queues.min(want).clamp(1, MAX_QUEUES as u64) as usize;

    // Per queue: ring pages, their grants and an event channel.
    let backend_id = dev.backend_id;
    let ring_pages = dev.ring_pages;
    for q in dev.queues[..dev.nr_queues].iter_mut() {
        q.base =
            pages::alloc_contig(ring_pages).ok_or_else(|| fail(format_args!("out of memory")))?;
        for i in 0..ring_pages {
            let gfn = (q.base as u64 >> 12) + i as u64;
            q.grefs[i] = grants::grant(backend_id, gfn, false)
                .map_err(|e| fail(format_args!("ring grant: {}", e)))?;
        }
        // SAFETY: q.base is ring_pages zeroed, page-aligned pages of ours.
        q.ring = unsafe { FrontRing::new(q.base, ring_pages * 4096, ENTRY_SIZE) };
        q.port = xen::alloc_unbound(DOMID_SELF, backend_id)
            .map_err(|rc| fail(format_args!("alloc_unbound: {}", rc)))?;
        xen::unmask(q.port);
    }

    let fe = xs_path!("{}", dev.fe);
    let nq = dev.nr_queues;
    let mut grefs = [[0u32; MAX_RING_PAGES]; MAX_QUEUES];
    let mut ports = [0u32; MAX_QUEUES];
    for (i, q) in dev.queues[..nq].iter().enumerate() {
        grefs[i] = q.grefs;
        ports[i] = q.port;
    }
    let persistent = dev.features.persistent;
    xs::transaction(|tx| {
        if ring_pages > 1 {
            xs::write_u64(
                tx,
                &xs_path!("{}/{}", fe, keys::RING_PAGE_ORDER),
                order as u64,
            )?;
        }
        if nq > 1 {
            xs::write_u64(
                tx,
                &xs_path!("{}/{}", fe, keys::MULTI_QUEUE_NUM_QUEUES),
                nq as u64,
            )?;
        }
        for q in 0..nq {
            // One queue: its keys at the top; several: under queue-<q>/.
            let dir = if nq == 1 {
                xs_path!("{}", fe)
            } else {
                xs_path!("{}/{}{}", fe, keys::QUEUE_PREFIX, q)
            };
            if ring_pages == 1 {
                xs::write_u64(
                    tx,
                    &xs_path!("{}/{}", dir, keys::RING_REF),
                    grefs[q][0] as u64,
                )?;
            } else {
                for (i, g) in grefs[q].iter().enumerate().take(ring_pages) {
                    xs::write_u64(tx, &xs_path!("{}/ring-ref{}", dir, i), *g as u64)?;
                }
            }
            xs::write_u64(
                tx,
                &xs_path!("{}/{}", dir, keys::EVENT_CHANNEL),
                ports[q] as u64,
            )?;
        }
        xs::write(
            tx,
            &xs_path!("{}/{}", fe, keys::PROTOCOL),
            PROTOCOL_X86_64.as_bytes(),
        )?;
        xs::write_u64(
            tx,
            &xs_path!("{}/{}", fe, keys::FRONTEND_FEATURE_PERSISTENT),
            persistent as u64,
        )
    })
    .map_err(|e| xe("writing ring details", e))?;
    xs::switch_state(&dev.fe, state::INITIALISED).map_err(|e| xe("state", e))?;

    xs::wait_backend_connected(&be_state, token.as_bytes(), HANDSHAKE_MS)
        .map_err(|(e, s)| fail(format_args!("backend did not connect ({}, state {})", e, s)))?;

    // What the backend says once connected.
    let be = &dev.be;
    dev.sectors =
        xs::read_u64(&xs_path!("{}/{}", be, keys::SECTORS)).map_err(|e| xe("sectors", e))?;
    dev.sector_size = xs::read_u64_or(&xs_path!("{}/{}", be, keys::SECTOR_SIZE), 512)
        .map_err(|e| xe("sector-size", e))? as u32;
    dev.info =
        xs::read_u64_or(&xs_path!("{}/{}", be, keys::INFO), 0).map_err(|e| xe("info", e))? as u32;
    dev.features.flush = flag(&xs_path!("{}/{}", be, keys::FEATURE_FLUSH_CACHE))
        .map_err(|e| xe("feature-flush-cache", e))?;
    dev.features.barrier = flag(&xs_path!("{}/{}", be, keys::FEATURE_BARRIER))
        .map_err(|e| xe("feature-barrier", e))?;
    dev.features.discard = flag(&xs_path!("{}/{}", be, keys::FEATURE_DISCARD))
        .map_err(|e| xe("feature-discard", e))?;
    let indirect = xs::read_u64_or(
        &xs_path!("{}/{}", be, keys::FEATURE_MAX_INDIRECT_SEGMENTS),
        0,
    )
    .map_err(|e| xe("feature-max-indirect-segments", e))?;
    dev.features.indirect = if indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST as u64 {
        indirect.min(MAX_SEGS as u64) as u32
    } else {
        0
    };
    // The persistent-grant choice is per connection: honour what the
    // backend says now.
    dev.features.persistent &= flag(&xs_path!("{}/{}", be, keys::FEATURE_PERSISTENT))
        .map_err(|e| xe("feature-persistent", e))?;
    if dev.sector_size == 0 || !dev.sector_size.is_multiple_of(512) {
        return Err(fail(format_args!("sector-size {}", dev.sector_size)));
    }

    dev.buf = pages::alloc_contig(BUF_PAGES).ok_or_else(|| fail(format_args!("out of memory")))?;
    if dev.features.indirect > 0 {
        for i in 0..MAX_INFLIGHT {
            let p = pages::alloc().ok_or_else(|| fail(format_args!("out of memory")))?;
            dev.indirect[i] = p;
            dev.indirect_gref[i] = grants::grant(dev.backend_id, p as u64 >> 12, true)
                .map_err(|e| fail(format_args!("indirect grant: {}", e)))?;
        }
    }
    xs::switch_state(&dev.fe, state::CONNECTED).map_err(|e| xe("state", e))?;
    dev.connected = true;
    Ok(())
}

/// Hot unplug (backend Closing/Closed): stop, revoke, switch to Closed.
pub fn close(dev: &'static mut BlkDev) {
    dev.connected = false;
    let fe = xs_path!("{}", dev.fe);
    let _ = xs::switch_state(&fe, state::CLOSING);
    teardown(dev);
    let _ = xs::switch_state(&fe, state::CLOSED);
}

/// Release everything the device holds: event channel, grants, pages. A
/// page whose grant the backend still uses is leaked, never reused.
fn teardown(dev: &'static mut BlkDev) {
    let mut token = Path::new();
    be_token(dev.devid, &mut token);
    if !dev.be.as_bytes().is_empty() {
        let _ = xs::unwatch(&xs_path!("{}/state", dev.be), token.as_bytes());
    }
    for q in &dev.queues {
        if q.port != 0 {
            xen::close(q.port);
        }
    }
    for id in 0..MAX_INFLIGHT {
        if dev.slots[id].busy {
            dev.release_slot_grants(id);
        }
    }
    let mut leak = false;
    for i in 0..MAX_INFLIGHT {
        if !dev.indirect[i].is_null() {
            if grants::end(dev.indirect_gref[i]).is_ok() {
                pages::free(dev.indirect[i]);
            } else {
                leak = true;
            }
        }
    }
    let mut buf_ok = true;
    for g in dev.buf_grefs {
        if g != 0 && grants::end(g).is_err() {
            buf_ok = false;
        }
    }
    if !dev.buf.is_null() && buf_ok {
        for i in 0..BUF_PAGES {
            pages::free(dev.page(i));
        }
    }
    let ring_pages = dev.ring_pages;
    for q in &dev.queues {
        if q.base.is_null() {
            continue;
        }
        let ok = q
            .grefs
            .iter()
            .take(ring_pages)
            .all(|&g| g == 0 || grants::end(g).is_ok());
        if ok {
            for i in 0..ring_pages {
                pages::free(q.base.wrapping_add(i * 4096));
            }
        }
    }
    let _ = leak;
    pages::free_zeroed(dev);
}
