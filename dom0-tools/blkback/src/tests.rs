//! The backend against a fake guest: a memfd "domain" holding a grant
//! table, ring pages and data pages, driven the way a frontend would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen_foreign::evtchn::{Dom0Channel, TestGuestEnd};
use kxen_foreign::foreign::{ForeignMemory, ForeignPage, MemfdRegion};
use kxen_foreign::grant::GrantTable;
use xen_abi::grant_table::*;
use xen_abi::io::blkif::*;
use xen_abi::io::ring;
use zerocopy::{FromBytes, IntoBytes};

use crate::{BlkBackend, VbdSpec};

const GUEST_PAGES: u64 = 512;
const TABLE_GFNS: [u64; 2] = [1, 2];

/// A disk image that removes itself.
struct Image(PathBuf);

impl Image {
    fn new(sectors: u64) -> Image {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "kxen-blkback-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // A recognisable pattern: byte = sector number (mod 251).
        let data: Vec<u8> = (0..sectors * 512)
            .map(|i| ((i / 512) % 251) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        Image(p)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Guest {
    mem: Arc<ForeignMemory>,
    next_gfn: u64,
    next_gref: u32,
}

impl Guest {
    fn new() -> Guest {
        let fd = nix::sys::memfd::memfd_create(c"blkback-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let file = std::fs::File::from(fd);
        let len = GUEST_PAGES * 4096;
        file.set_len(len).unwrap();
        let mem = ForeignMemory::map(
            file.into(),
            len,
            vec![MemfdRegion {
                gpa: 0,
                len,
                offset: 0,
            }],
        )
        .unwrap();
        Guest {
            mem: Arc::new(mem),
            next_gfn: 3,
            next_gref: 8,
        }
    }

    fn table(&self) -> Arc<GrantTable> {
        Arc::new(GrantTable::new(self.mem.clone(), &TABLE_GFNS, 0))
    }

    fn page(&self, gfn: u64) -> ForeignPage {
        self.mem.page(gfn).unwrap()
    }

    fn alloc(&mut self) -> u64 {
        let g = self.next_gfn;
        self.next_gfn += 1;
        assert!(g < GUEST_PAGES);
        g
    }

    fn entry(&self, gref: u32) -> (ForeignPage, usize) {
        let per = GRANT_ENTRIES_PER_FRAME as u32;
        (
            self.page(TABLE_GFNS[(gref / per) as usize]),
            (gref % per) as usize * 8,
        )
    }

    fn set_entry(&self, gref: u32, flags: u16, domid: u16, frame: u32) {
        let (t, off) = self.entry(gref);
        t.store_u32(off + 4, frame);
        t.store_u32(off, flags as u32 | (domid as u32) << 16);
    }

    fn flags(&self, gref: u32) -> u16 {
        let (t, off) = self.entry(gref);
        t.load_u32(off) as u16
    }

    /// Grant a fresh page to Dom0; returns (gref, gfn).
    fn grant_new(&mut self, readonly: bool) -> (u32, u64) {
        let gfn = self.alloc();
        let gref = self.next_gref;
        self.next_gref += 1;
        let ro = if readonly { GTF_READONLY } else { 0 };
        self.set_entry(gref, GTF_PERMIT_ACCESS | ro, 0, gfn as u32);
        (gref, gfn)
    }
}

/// The frontend's end of a ring.
struct FrontRing {
    pages: Vec<ForeignPage>,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    end: TestGuestEnd,
    kicks: u32,
}

impl FrontRing {
    fn bytes_at(&self, mut off: usize, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let n = (4096 - off % 4096).min(buf.len() - done);
            self.pages[off / 4096].read(off % 4096, &mut buf[done..done + n]);
            done += n;
            off += n;
        }
    }

    fn write_at(&self, mut off: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let n = (4096 - off % 4096).min(data.len() - done);
            self.pages[off / 4096].write(off % 4096, &data[done..done + n]);
            done += n;
            off += n;
        }
    }

    fn queue(&mut self, slot: &[u8]) {
        let mut full = [0u8; ENTRY_SIZE];
        full[..slot.len()].copy_from_slice(slot);
        let off = ring::entry_offset(self.req_prod_pvt, self.size, ENTRY_SIZE);
        self.write_at(off, &full);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// Publish queued requests and kick if the backend asked for it.
    fn push(&mut self) {
        let h = &self.pages[0];
        let old = h.load_u32(ring::OFFSET_REQ_PROD);
        h.store_u32(ring::OFFSET_REQ_PROD, self.req_prod_pvt);
        std::sync::atomic::fence(Ordering::SeqCst);
        if ring::need_notify(old, self.req_prod_pvt, h.load_u32(ring::OFFSET_REQ_EVENT)) {
            self.end.kick.write(1).unwrap();
            self.kicks += 1;
        }
    }

    /// Wait for `n` responses (5 s at most).
    fn responses(&mut self, n: usize) -> Vec<Response> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while out.len() < n {
            let prod = self.pages[0].load_u32(ring::OFFSET_RSP_PROD);
            while self.rsp_cons != prod && out.len() < n {
                let mut b = [0u8; RESPONSE_SIZE];
                self.bytes_at(
                    ring::entry_offset(self.rsp_cons, self.size, ENTRY_SIZE),
                    &mut b,
                );
                out.push(Response::read_from_bytes(&b).unwrap());
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
            }
            self.pages[0].store_u32(ring::OFFSET_RSP_EVENT, self.rsp_cons.wrapping_add(1));
            if out.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "timed out: {} of {n} responses",
                    out.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        out
    }

    fn submit(&mut self, slots: &[&[u8]]) -> Vec<Response> {
        for s in slots {
            self.queue(s);
        }
        self.push();
        self.responses(slots.len())
    }
}

/// Make a ring of 2^order pages in the guest; returns its grant refs.
fn make_ring(g: &mut Guest, order: u32, dom0_port: u32) -> (Vec<u32>, FrontRing, Dom0Channel) {
    let mut refs = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..(1 << order) {
        let (gref, gfn) = g.grant_new(false);
        refs.push(gref);
        pages.push(g.page(gfn));
    }
    pages[0].write(0, ring::SringHeader::default().as_bytes());
    let (chan, end) = Dom0Channel::pair_for_tests(7, dom0_port).unwrap();
    let front = FrontRing {
        size: ring::ring_size_for_pages(pages.len(), ENTRY_SIZE),
        pages,
        req_prod_pvt: 0,
        rsp_cons: 0,
        end,
        kicks: 0,
    };
    (refs, front, chan)
}

struct Setup {
    guest: Guest,
    image: Image,
    backend: BlkBackend,
    front: FrontRing,
}

fn setup_with(
    sectors: u64,
    spec: impl FnOnce(&mut VbdSpec),
    order: u32,
    persistent: bool,
) -> Setup {
    let image = Image::new(sectors);
    let mut s = VbdSpec::new(&image.0, false);
    spec(&mut s);
    let mut backend = BlkBackend::new(s).unwrap();
    let mut guest = Guest::new();
    let (refs, front, chan) = make_ring(&mut guest, order, 1);
    backend
        .connect_rings(guest.table(), vec![(refs, chan)], persistent)
        .unwrap();
    Setup {
        guest,
        image,
        backend,
        front,
    }
}

fn setup() -> Setup {
    setup_with(256, |_| {}, 0, false)
}

fn rw_request(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> Request {
    let mut r = Request {
        operation: op,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (d, &(gref, first, last)) in r.seg.iter_mut().zip(segs) {
        *d = RequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad: [0; 2],
        };
    }
    r
}

fn fill(g: &Guest, gfn: u64, byte: u8) {
    g.page(gfn).write(0, &[byte; 4096]);
}

fn page_bytes(g: &Guest, gfn: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    g.page(gfn).read(0, &mut b);
    b
}

fn statuses(r: &[Response]) -> Vec<i16> {
    r.iter().map(|r| r.status).collect()
}

#[test]
fn write_then_read_round_trips_through_the_file() {
    let mut s = setup();
    let (g1, f1) = s.guest.grant_new(true);
    let (g2, f2) = s.guest.grant_new(true);
    fill(&s.guest, f1, 0xa1);
    fill(&s.guest, f2, 0xb2);
    // 8 sectors of page 1, then sectors 2..=3 of page 2, at sector 16.
    let w = rw_request(BLKIF_OP_WRITE, 41, 16, &[(g1, 0, 7), (g2, 2, 3)]);
    let r = s.front.submit(&[w.as_bytes()]);
    assert_eq!(r[0].id, 41);
    assert_eq!(r[0].operation, BLKIF_OP_WRITE);
    assert_eq!(r[0].status, BLKIF_RSP_OKAY);
    let file = s.image.contents();
    assert!(file[16 * 512..24 * 512].iter().all(|&b| b == 0xa1));
    assert!(file[24 * 512..26 * 512].iter().all(|&b| b == 0xb2));
    assert!(file[26 * 512..27 * 512].iter().all(|&b| b == 26));
    assert!(file[15 * 512..16 * 512].iter().all(|&b| b == 15));
    // The write grants were read-only and are released again.
    assert_eq!(s.guest.flags(g1), GTF_PERMIT_ACCESS | GTF_READONLY);

    let (g3, f3) = s.guest.grant_new(false);
    let rd = rw_request(BLKIF_OP_READ, 42, 23, &[(g3, 1, 3)]);
    let r = s.front.submit(&[rd.as_bytes()]);
    assert_eq!(statuses(&r), [BLKIF_RSP_OKAY]);
    let p = page_bytes(&s.guest, f3);
    assert!(
        p[..512].iter().all(|&b| b == 0),
        "sector 0 of the page untouched"
    );
    assert!(p[512..1024].iter().all(|&b| b == 0xa1));
    assert!(p[1024..2048].iter().all(|&b| b == 0xb2));
    assert!(p[2048..].iter().all(|&b| b == 0));
    assert_eq!(s.guest.flags(g3), GTF_PERMIT_ACCESS);

    let st = s.backend.counters();
    assert_eq!(st["wr_req"], 1);
    assert_eq!(st["wr_sect"], 10);
    assert_eq!(st["rd_req"], 1);
    assert_eq!(st["rd_sect"], 3);
    assert_eq!(st["errors"], 0);
    assert_eq!(st["kicks_in"], u64::from(s.front.kicks));
    assert!(st["notifies_out"] >= 1);
}

#[test]
fn flush_barrier_and_discard() {
    let mut s = setup();
    let (g1, f1) = s.guest.grant_new(false);
    fill(&s.guest, f1, 0x5c);
    let flush = Request {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        id: 1,
        ..Default::default()
    };
    let barrier = rw_request(BLKIF_OP_WRITE_BARRIER, 2, 100, &[(g1, 0, 7)]);
    let empty_barrier = rw_request(BLKIF_OP_WRITE_BARRIER, 3, 0, &[]);
    let discard = RequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 4,
        sector_number: 32,
        nr_sectors: 16,
        ..Default::default()
    };
    let r = s.front.submit(&[
        flush.as_bytes(),
        barrier.as_bytes(),
        empty_barrier.as_bytes(),
        discard.as_bytes(),
    ]);
    assert_eq!(statuses(&r), [0, 0, 0, 0]);
    assert_eq!(
        r.iter().map(|r| (r.id, r.operation)).collect::<Vec<_>>(),
        [
            (1, BLKIF_OP_FLUSH_DISKCACHE),
            (2, BLKIF_OP_WRITE_BARRIER),
            (3, BLKIF_OP_WRITE_BARRIER),
            (4, BLKIF_OP_DISCARD)
        ]
    );
    let file = s.image.contents();
    assert_eq!(file.len(), 256 * 512, "discard keeps the size");
    assert!(file[100 * 512..108 * 512].iter().all(|&b| b == 0x5c));
    assert!(
        file[32 * 512..48 * 512].iter().all(|&b| b == 0),
        "discarded range reads as zeroes"
    );
    assert!(file[31 * 512..32 * 512].iter().all(|&b| b == 31));
    assert!(file[48 * 512..49 * 512].iter().all(|&b| b == 48));
    let st = s.backend.counters();
    assert_eq!(
        (st["flush_req"], st["barrier_req"], st["discard_req"]),
        (1, 2, 1)
    );
}

#[test]
fn indirect_requests_carry_many_segments() {
    let mut s = setup_with(4096, |_| {}, 0, false);
    // 40 segments of one full page each: 320 sectors from sector 64.
    let mut data = Vec::new();
    let (ind_gref, ind_gfn) = s.guest.grant_new(true);
    let mut descs = Vec::new();
    for i in 0..40u8 {
        let (g, f) = s.guest.grant_new(false);
        fill(&s.guest, f, i + 1);
        data.push((g, f));
        descs.extend_from_slice(
            RequestSegment {
                gref: g,
                first_sect: 0,
                last_sect: 7,
                _pad: [0; 2],
            }
            .as_bytes(),
        );
    }
    s.guest.page(ind_gfn).write(0, &descs);
    let mut req = RequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_WRITE,
        nr_segments: 40,
        id: 77,
        sector_number: 64,
        ..Default::default()
    };
    req.indirect_grefs[0] = ind_gref;
    let r = s.front.submit(&[req.as_bytes()]);
    assert_eq!(statuses(&r), [BLKIF_RSP_OKAY]);
    assert_eq!((r[0].id, r[0].operation), (77, BLKIF_OP_WRITE));
    let file = s.image.contents();
    for i in 0..40usize {
        let at = (64 + i * 8) * 512;
        assert!(
            file[at..at + 4096].iter().all(|&b| b == i as u8 + 1),
            "page {i}"
        );
    }
    // Read it back into the same pages after clearing them.
    for &(_, f) in &data {
        fill(&s.guest, f, 0);
    }
    req.indirect_op = BLKIF_OP_READ;
    req.id = 78;
    let r = s.front.submit(&[req.as_bytes()]);
    assert_eq!(statuses(&r), [BLKIF_RSP_OKAY]);
    for (i, &(_, f)) in data.iter().enumerate() {
        assert!(page_bytes(&s.guest, f).iter().all(|&b| b == i as u8 + 1));
    }
    // More segments than offered, and a bad descriptor, are refused.
    req.nr_segments = 257;
    let r1 = s.front.submit(&[req.as_bytes()]);
    req.nr_segments = 40;
    let mut bad = descs.clone();
    bad[8 * 5 + 5] = 9; // segment 5: last_sect 9
    s.guest.page(ind_gfn).write(0, &bad);
    let r2 = s.front.submit(&[req.as_bytes()]);
    assert_eq!(statuses(&r1), [BLKIF_RSP_ERROR]);
    assert_eq!(statuses(&r2), [BLKIF_RSP_ERROR]);
    assert_eq!(s.backend.counters()["indirect_req"], 3);
}

#[test]
fn multi_page_ring_wraps_across_pages() {
    let mut s = setup_with(256, |_| {}, 1, false);
    assert_eq!(s.front.size, 64);
    let (g, f) = s.guest.grant_new(false);
    fill(&s.guest, f, 0);
    // 150 reads in batches of 50: slots straddle page boundaries and the
    // indices wrap the 64-slot ring twice.
    for batch in 0..3u64 {
        let reqs: Vec<Request> = (0..50u64)
            .map(|i| rw_request(BLKIF_OP_READ, batch * 100 + i, i, &[(g, 0, 0)]))
            .collect();
        let slots: Vec<&[u8]> = reqs.iter().map(|r| r.as_bytes()).collect();
        let r = s.front.submit(&slots);
        assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY));
        let ids: Vec<u64> = r.iter().map(|r| r.id).collect();
        assert_eq!(ids, (0..50).map(|i| batch * 100 + i).collect::<Vec<_>>());
    }
    assert_eq!(page_bytes(&s.guest, f)[0], 49);
}

#[test]
fn persistent_grants_stay_mapped_until_disconnect() {
    let mut s = setup_with(256, |_| {}, 0, true);
    let (g1, f1) = s.guest.grant_new(false);
    fill(&s.guest, f1, 0x11);
    let w = rw_request(BLKIF_OP_WRITE, 1, 8, &[(g1, 0, 7)]);
    let r = s.front.submit(&[w.as_bytes()]);
    assert_eq!(statuses(&r), [0]);
    // Still pinned (for writing) after the response: it is persistent.
    assert_eq!(s.guest.flags(g1), GTF_PERMIT_ACCESS | GTF_WRITING);
    assert_eq!(s.backend.counters()["persistent_grants"], 1);
    // Reused for a read in the other direction.
    let rd = rw_request(BLKIF_OP_READ, 2, 0, &[(g1, 0, 0)]);
    let r = s.front.submit(&[rd.as_bytes()]);
    assert_eq!(statuses(&r), [0]);
    assert!(page_bytes(&s.guest, f1)[..512].iter().all(|&b| b == 0));
    assert_eq!(s.backend.counters()["persistent_grants"], 1);
    // A read-only grant cannot be persistent; it is used per request.
    let (g2, f2) = s.guest.grant_new(true);
    fill(&s.guest, f2, 0x22);
    let w2 = rw_request(BLKIF_OP_WRITE, 3, 16, &[(g2, 0, 7)]);
    assert_eq!(statuses(&s.front.submit(&[w2.as_bytes()])), [0]);
    assert_eq!(s.guest.flags(g2), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert!(s.image.contents()[16 * 512..24 * 512]
        .iter()
        .all(|&b| b == 0x22));
    s.backend.disconnect_for_tests();
    assert_eq!(s.guest.flags(g1), GTF_PERMIT_ACCESS);
    assert_eq!(s.backend.counters()["persistent_grants"], 0);
    s.backend.disconnect_for_tests();
}

#[test]
fn queues_run_independently() {
    let image = Image::new(256);
    let mut backend = BlkBackend::new(VbdSpec::new(&image.0, false)).unwrap();
    let mut guest = Guest::new();
    let (r0, mut f0, c0) = make_ring(&mut guest, 0, 1);
    let (r1, mut f1, c1) = make_ring(&mut guest, 0, 2);
    backend
        .connect_rings(guest.table(), vec![(r0, c0), (r1, c1)], false)
        .unwrap();
    let (ga, pa) = guest.grant_new(false);
    let (gb, pb) = guest.grant_new(false);
    fill(&guest, pa, 0xaa);
    fill(&guest, pb, 0xbb);
    for _ in 0..2 {
        f0.queue(rw_request(BLKIF_OP_WRITE, 10, 0, &[(ga, 0, 7)]).as_bytes());
        f1.queue(rw_request(BLKIF_OP_WRITE, 20, 8, &[(gb, 0, 7)]).as_bytes());
    }
    f0.push();
    f1.push();
    assert_eq!(statuses(&f0.responses(2)), [0, 0]);
    assert_eq!(statuses(&f1.responses(2)), [0, 0]);
    let file = image.contents();
    assert!(file[..4096].iter().all(|&b| b == 0xaa));
    assert!(file[4096..8192].iter().all(|&b| b == 0xbb));
    assert_eq!(backend.counters()["wr_req"], 4);
    assert!(matches!(
        backend.connect_rings(guest.table(), vec![], false),
        Err(crate::BlkError::AlreadyConnected)
    ));
}

#[test]
fn hostile_requests_are_answered_with_errors() {
    let mut s = setup();
    let (good, gf) = s.guest.grant_new(false);
    let (ro, _) = s.guest.grant_new(true);
    fill(&s.guest, gf, 0x77);
    // A grant for another domain, and one that was never granted.
    let other = 100;
    s.guest.set_entry(other, GTF_PERMIT_ACCESS, 3, gf as u32);
    let mut bad_sect = rw_request(BLKIF_OP_WRITE, 5, 0, &[(good, 0, 7)]);
    bad_sect.seg[0].last_sect = 8;
    let mut backwards = rw_request(BLKIF_OP_WRITE, 6, 0, &[(good, 0, 7)]);
    backwards.seg[0].first_sect = 4;
    backwards.seg[0].last_sect = 3;
    let mut too_many = rw_request(BLKIF_OP_READ, 7, 0, &[(good, 0, 0)]);
    too_many.nr_segments = 12;
    let mut unknown = rw_request(BLKIF_OP_READ, 11, 0, &[(good, 0, 0)]);
    unknown.operation = 0x42;
    let discard_past_end = RequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 13,
        sector_number: 250,
        nr_sectors: 7,
        ..Default::default()
    };
    let reqs: Vec<Vec<u8>> = vec![
        rw_request(BLKIF_OP_WRITE, 1, 0, &[(9999, 0, 7)])
            .as_bytes()
            .to_vec(),
        rw_request(BLKIF_OP_WRITE, 2, 0, &[(u32::MAX, 0, 7)])
            .as_bytes()
            .to_vec(),
        rw_request(BLKIF_OP_WRITE, 3, 0, &[(other, 0, 7)])
            .as_bytes()
            .to_vec(),
        // Reading into a read-only grant would write the guest's page.
        rw_request(BLKIF_OP_READ, 4, 0, &[(ro, 0, 7)])
            .as_bytes()
            .to_vec(),
        bad_sect.as_bytes().to_vec(),
        backwards.as_bytes().to_vec(),
        too_many.as_bytes().to_vec(),
        rw_request(BLKIF_OP_READ, 8, 0, &[]).as_bytes().to_vec(),
        rw_request(BLKIF_OP_WRITE, 9, 249, &[(good, 0, 7)])
            .as_bytes()
            .to_vec(),
        rw_request(BLKIF_OP_READ, 10, u64::MAX, &[(good, 0, 0)])
            .as_bytes()
            .to_vec(),
        unknown.as_bytes().to_vec(),
        // A good segment after a forged one: nothing is written.
        rw_request(BLKIF_OP_WRITE, 12, 0, &[(good, 0, 7), (5000, 0, 7)])
            .as_bytes()
            .to_vec(),
        discard_past_end.as_bytes().to_vec(),
    ];
    let slots: Vec<&[u8]> = reqs.iter().map(|r| r.as_slice()).collect();
    let before = s.image.contents();
    let r = s.front.submit(&slots);
    let e = BLKIF_RSP_ERROR;
    assert_eq!(
        statuses(&r),
        [e, e, e, e, e, e, e, e, e, e, BLKIF_RSP_EOPNOTSUPP, e, e]
    );
    assert_eq!(
        r.iter().map(|r| r.id).collect::<Vec<_>>(),
        (1..=13).collect::<Vec<_>>()
    );
    assert_eq!(
        s.image.contents(),
        before,
        "no hostile request reached the disk"
    );
    // Every grant is unpinned again, and the device still works.
    for gref in [good, ro, other] {
        assert_eq!(s.guest.flags(gref) & (GTF_READING | GTF_WRITING), 0);
    }
    let ok = rw_request(BLKIF_OP_WRITE, 14, 0, &[(good, 0, 7)]);
    assert_eq!(statuses(&s.front.submit(&[ok.as_bytes()])), [0]);
    let st = s.backend.counters();
    assert_eq!((st["errors"], st["unsupported"], st["broken"]), (12, 1, 0));
}

#[test]
fn read_only_disks_refuse_writes_and_discards() {
    let mut s = setup_with(64, |s| s.readonly = true, 0, false);
    let (g, f) = s.guest.grant_new(false);
    fill(&s.guest, f, 0x99);
    let discard = RequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 3,
        sector_number: 0,
        nr_sectors: 8,
        ..Default::default()
    };
    let r = s.front.submit(&[
        rw_request(BLKIF_OP_WRITE, 1, 0, &[(g, 0, 7)]).as_bytes(),
        rw_request(BLKIF_OP_WRITE_BARRIER, 2, 0, &[(g, 0, 7)]).as_bytes(),
        discard.as_bytes(),
        rw_request(BLKIF_OP_READ, 4, 8, &[(g, 0, 0)]).as_bytes(),
    ]);
    assert_eq!(statuses(&r), [-1, -1, -1, 0]);
    assert_eq!(page_bytes(&s.guest, f)[0], 8);
    let file = s.image.contents();
    assert!(
        (0..4096).all(|i| file[i] == (i / 512) as u8),
        "file unchanged"
    );
    assert_eq!(s.backend.info() & VDISK_READONLY, VDISK_READONLY);
}

#[test]
fn an_overrun_ring_is_abandoned_not_looped_on() {
    let mut s = setup();
    let (g, _) = s.guest.grant_new(false);
    let ok = rw_request(BLKIF_OP_READ, 1, 0, &[(g, 0, 0)]);
    assert_eq!(statuses(&s.front.submit(&[ok.as_bytes()])), [0]);
    // Claim 100 requests on a 32-slot ring.
    let h = &s.front.pages[0];
    h.store_u32(ring::OFFSET_REQ_PROD, s.front.req_prod_pvt + 100);
    s.front.end.kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.backend.counters()["broken"] == 0 {
        assert!(Instant::now() < deadline, "ring overrun not detected");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        h.load_u32(ring::OFFSET_RSP_PROD),
        1,
        "no response for the bogus requests"
    );
    assert_eq!(s.backend.counters()["rd_req"], 1);
    s.backend.disconnect_for_tests();
}

#[test]
fn forged_ring_refs_fail_the_connection() {
    let image = Image::new(64);
    let mut backend = BlkBackend::new(VbdSpec::new(&image.0, false)).unwrap();
    let mut guest = Guest::new();
    let (_, _, chan) = make_ring(&mut guest, 0, 1);
    assert!(backend
        .connect_rings(guest.table(), vec![(vec![4000], chan)], false)
        .is_err());
    assert!(!backend.is_connected());
    let (ro, _) = guest.grant_new(true);
    let (_, _, chan) = make_ring(&mut guest, 0, 1);
    assert!(backend
        .connect_rings(guest.table(), vec![(vec![ro], chan)], false)
        .is_err());
    // Three ring pages: not a power of two.
    let (mut refs, _, chan) = make_ring(&mut guest, 2, 1);
    refs.pop();
    assert!(backend
        .connect_rings(guest.table(), vec![(refs, chan)], false)
        .is_err());
}

#[test]
fn published_nodes_describe_the_disk() {
    let image = Image::new(100);
    let b = BlkBackend::new(VbdSpec::new(&image.0, false)).unwrap();
    let nodes: std::collections::HashMap<_, _> = b.backend_nodes().into_iter().collect();
    assert_eq!(nodes["sectors"], "100");
    assert_eq!(nodes["sector-size"], "512");
    assert_eq!(nodes["info"], "0");
    assert_eq!(nodes["mode"], "w");
    assert_eq!(nodes["feature-flush-cache"], "1");
    assert_eq!(nodes["feature-discard"], "1");
    assert_eq!(nodes["feature-persistent"], "1");
    assert_eq!(nodes["feature-max-indirect-segments"], "256");
    assert_eq!(nodes["max-ring-page-order"], "4");
    assert_eq!(nodes["multi-queue-max-queues"], "4");
    let mut spec = VbdSpec::new(&image.0, false);
    spec.devtype = crate::DevType::Cdrom;
    let cd = BlkBackend::new(spec).unwrap();
    let nodes: std::collections::HashMap<_, _> = cd.backend_nodes().into_iter().collect();
    assert_eq!(
        nodes["info"],
        (VDISK_CDROM | VDISK_REMOVABLE | VDISK_READONLY).to_string()
    );
    assert_eq!(nodes["mode"], "r");
    assert_eq!(nodes["feature-discard"], "0");
    assert!(BlkBackend::new(VbdSpec::new("/nonexistent/kxen.img", false)).is_err());
    assert!(BlkBackend::new(VbdSpec::new("/dev/null", true)).is_err());
}

#[test]
fn xenbus_publish_and_connect_through_the_store() {
    use kxen_foreign::domain::ForeignDomain;
    use kxen_foreign::xenbus::{BackendDevice, DeviceContext};
    use kxen_xenstore::{Config, Xenstored};

    let image = Image::new(80);
    let mut b = BlkBackend::new(VbdSpec::new(&image.0, true)).unwrap();
    let guest = Guest::new();
    let store = Xenstored::new(Config::default()).unwrap();
    let ctx = DeviceContext {
        domain: Arc::new(ForeignDomain::new(5, guest.mem.clone())),
        store: store.clone(),
        frontend_domid: 5,
        devid: 51712,
        frontend_path: "/local/domain/5/device/vbd/51712".into(),
        backend_path: "/local/domain/0/backend/vbd/5/51712".into(),
    };
    assert_eq!(b.kind(), "vbd");
    b.publish(&ctx).unwrap();
    assert_eq!(ctx.read_backend("sectors").as_deref(), Some("80"));
    assert_eq!(ctx.read_backend("info").as_deref(), Some("4"));
    assert_eq!(ctx.read_backend("mode").as_deref(), Some("r"));
    assert_eq!(
        ctx.read_backend("feature-flush-cache").as_deref(),
        Some("1")
    );
    assert_eq!(ctx.read_backend("feature-barrier").as_deref(), Some("0"));
    // No transport published yet: connect fails and serves nothing.
    assert!(b.connect(&ctx).is_err());
    for (k, v) in [
        ("ring-ref", "8"),
        ("event-channel", "3"),
        ("protocol", "x86_64-abi"),
    ] {
        store
            .write(&format!("{}/{k}", ctx.frontend_path), v)
            .unwrap();
    }
    // This domain has no VMM to bind channels through.
    assert!(matches!(
        b.connect(&ctx),
        Err(kxen_foreign::xenbus::BackendError::EventChannel(_))
    ));
    assert!(!b.is_connected());
    b.disconnect();
    b.disconnect();
    assert!(b.stats().contains_key("rd_req"));
    store.shutdown();
}

#[test]
fn a_frontend_that_never_stops_cannot_block_disconnect() {
    let mut s = setup();
    let (g, _) = s.guest.grant_new(false);
    let req = rw_request(BLKIF_OP_READ, 1, 0, &[(g, 0, 0)]);
    let header = s.front.pages[0].clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    // Keep the ring full forever: every answered slot is re-published.
    let kick = s.front.end.kick.try_clone().unwrap();
    let busy = std::thread::spawn(move || {
        while !done2.load(Ordering::Relaxed) {
            let old = header.load_u32(ring::OFFSET_REQ_PROD);
            let new = header.load_u32(ring::OFFSET_RSP_PROD).wrapping_add(32);
            if new.wrapping_sub(old) as i32 > 0 {
                // Answered slots hold responses now: put requests back.
                let mut i = old;
                while i != new {
                    header.write(ring::entry_offset(i, 32, ENTRY_SIZE), req.as_bytes());
                    i = i.wrapping_add(1);
                }
                header.store_u32(ring::OFFSET_REQ_PROD, new);
                std::sync::atomic::fence(Ordering::SeqCst);
                if ring::need_notify(old, new, header.load_u32(ring::OFFSET_REQ_EVENT)) {
                    kick.write(1).unwrap();
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.backend.counters()["rd_req"] < 1000 {
        assert!(
            Instant::now() < deadline,
            "backend is not serving: {:?}",
            s.backend.counters()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut backend = s.backend;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        backend.disconnect_for_tests();
        tx.send(backend.counters()).unwrap();
    });
    let counters = rx.recv_timeout(Duration::from_secs(5));
    done.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    let counters = counters.expect("disconnect did not finish");
    assert_eq!(counters["broken"], 0);
    assert_eq!(counters["errors"], 0);
}

/// A queue on a one-page ring (Dom0 port 1) over a 64-sector image,
/// with flush, barrier and discard offered: the image (kept for the
/// queue's life), the guest, its front ring and the queue.
fn single_queue() -> (Image, Guest, FrontRing, crate::queue::Queue) {
    use crate::backring::BackRing;
    use crate::disk::Disk;
    use crate::queue::{Features, Queue};
    use crate::request::Limits;

    let image = Image::new(64);
    let mut guest = Guest::new();
    let (refs, front, chan) = make_ring(&mut guest, 0, 1);
    let grants = guest.table();
    let ring =
        BackRing::attach(refs.iter().map(|&r| grants.map(r, true).unwrap()).collect()).unwrap();
    let disk = Arc::new(Disk::open(&VbdSpec::new(&image.0, false)).unwrap());
    let stats = Arc::new(crate::stats::Stats::default());
    let limits = Limits {
        capacity: disk.sectors(),
        max_indirect_segments: 0,
    };
    let features = Features {
        flush: true,
        barrier: true,
        discard: true,
    };
    let q = Queue::new(0, ring, chan, grants, disk, stats, limits, features, None);
    (image, guest, front, q)
}

#[test]
fn a_stopping_queue_takes_no_more_requests() {
    use crate::queue::Pass;

    // The image lives as long as the queue that reads it.
    let (_image, mut guest, mut front, mut q) = single_queue();
    let (g, _) = guest.grant_new(false);
    front.queue(rw_request(BLKIF_OP_READ, 1, 0, &[(g, 0, 0)]).as_bytes());
    front.push();
    q.set_stopping(true);
    assert_eq!(q.process(), Pass::Idle);
    assert_eq!(front.pages[0].load_u32(ring::OFFSET_RSP_PROD), 0);
    q.set_stopping(false);
    assert_eq!(q.process(), Pass::Idle);
    assert_eq!(statuses(&front.responses(1)), [0]);
}

/// A queue asked to quiesce answers the request it is serving, takes no
/// other, and once resumed serves those posted meanwhile (which came
/// without a kick) exactly once.
#[test]
fn quiesce_waits_for_the_request_in_flight_and_resume_serves_the_rest() {
    use crate::queue::QueueThread;
    use kxen_foreign::quiesce::QuiesceError;
    use std::sync::mpsc;

    let (image, mut guest, mut front, mut q) = single_queue();
    // Request 1 is held in flight until the test lets it go.
    let (entered_tx, entered) = mpsc::channel::<u64>();
    let (release, release_rx) = mpsc::channel::<()>();
    q.before_serve = Some(Box::new(move |slot| {
        let id = u64::from_le_bytes(slot[8..16].try_into().unwrap());
        entered_tx.send(id).unwrap();
        if id == 1 {
            release_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }));
    let thread = QueueThread::spawn(q, false).unwrap();
    let gate = thread.gate();

    // Requests 1 and 2 in one batch; the data lands in pages g1, g2.
    let (g1, p1) = guest.grant_new(false);
    let (g2, p2) = guest.grant_new(false);
    fill(&guest, p1, 0xee);
    fill(&guest, p2, 0xee);
    front.queue(rw_request(BLKIF_OP_READ, 1, 0, &[(g1, 0, 7)]).as_bytes());
    front.queue(rw_request(BLKIF_OP_READ, 2, 8, &[(g2, 0, 7)]).as_bytes());
    front.push();
    assert_eq!(entered.recv_timeout(Duration::from_secs(5)).unwrap(), 1);

    gate.request();
    // Request 1 is in flight: the quiesce waits, and says so at its deadline.
    assert!(matches!(
        gate.wait_parked(Instant::now() + Duration::from_millis(100)),
        Err(QuiesceError::Timeout)
    ));
    release.send(()).unwrap();
    gate.wait_parked(Instant::now() + Duration::from_secs(5))
        .unwrap();
    // Parked: request 1 is answered and its data in the guest's page;
    // request 2 was not taken.
    let header = front.pages[0].clone();
    assert_eq!(header.load_u32(ring::OFFSET_RSP_PROD), 1);
    let disk = image.contents();
    assert!(
        page_bytes(&guest, p1) == disk[..4096],
        "request 1's data is not in the guest"
    );
    assert!(
        page_bytes(&guest, p2) == [0xee; 4096],
        "request 2 was served while quiesced"
    );
    assert!(
        entered.try_recv().is_err(),
        "request 2 was taken while quiesced"
    );

    // Request 3 is posted while quiesced; the backend asked for no kick.
    let (g3, _) = guest.grant_new(false);
    front.queue(rw_request(BLKIF_OP_READ, 3, 16, &[(g3, 0, 7)]).as_bytes());
    front.push();
    assert_eq!(header.load_u32(ring::OFFSET_RSP_PROD), 1);

    gate.resume();
    let answered: Vec<u64> = front.responses(3).iter().map(|r| r.id).collect();
    assert_eq!(answered, [1, 2, 3]);
    // Settled again, nothing was answered twice.
    gate.request();
    gate.wait_parked(Instant::now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(header.load_u32(ring::OFFSET_RSP_PROD), 3);
    assert!(page_bytes(&guest, p2) == disk[4096..8192]);
    drop(thread);
}
