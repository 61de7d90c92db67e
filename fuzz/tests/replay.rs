//! Every fuzz target as an ordinary test: each runs over a fixed,
//! deterministic input set, with no panic allowed. The set is a small seed
//! corpus built here (well-formed inputs that reach each target's deepest
//! checks; every seed must get there) plus a fixed number of mutants of
//! those seeds from a seeded PRNG (bit flips, interesting values, byte
//! runs, insertions, deletions, truncation, splices), so a run is the same
//! on every machine and a failure names the input that caused it.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml` runs it on stable Rust; no
//! cargo-fuzz needed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use xen_abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GTF_PERMIT_ACCESS, GTF_READONLY,
};
use xen_abi::io::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, ENTRY_SIZE,
};
use xen_abi::io::netif::{
    NetifExtraInfo, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use xen_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;
use xen_abi::xenstore as xs;
use xen_abi::DOMID_SELF;

/// Mutants per target: enough to walk well past the seeds, few enough that
/// the slowest target stays within a few seconds in a debug build.
const MUTANTS: usize = 10_000;

// ---- the replay loop ------------------------------------------------------

/// SplitMix64: a tiny, well-mixed PRNG, so the input set needs no crate.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Rng {
        // Each target gets its own stream, fixed by its name.
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that sit on the edges parsers check.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x7fff,
    0xffff,
    u64::MAX,
];

/// One mutant of `seed`: one to four edits, mostly in place (the formats
/// are positional), sometimes changing the length or splicing in another
/// seed.
fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(m.len());
        match rng.below(10) {
            0 | 1 => {
                if !m.is_empty() {
                    m[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                if !m.is_empty() {
                    m[at] = rng.next() as u8;
                }
            }
            3 | 4 => {
                // A little-endian field of 1, 2, 4 or 8 bytes set to an
                // edge value (or that value plus or minus one).
                let width = 1 << rng.below(4);
                let v = INTERESTING[rng.below(INTERESTING.len())]
                    .wrapping_add(rng.below(3) as u64)
                    .wrapping_sub(1);
                for (i, b) in v.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(slot) = m.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            5 => {
                let len = rng.below(16).min(m.len() - at.min(m.len()));
                let fill = rng.next() as u8;
                m[at..at + len].fill(fill);
            }
            6 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(at.min(m.len())..at.min(m.len()), bytes);
            }
            7 => {
                let n = rng.below(16).min(m.len() - at.min(m.len()));
                m.drain(at..at + n);
            }
            8 => m.truncate(rng.below(m.len() + 1)),
            _ => {
                // Splice: our head, another seed's tail from the same
                // offset (the formats are positional).
                let other = &seeds[rng.below(seeds.len())];
                m.truncate(at);
                m.extend_from_slice(&other[at.min(other.len())..]);
            }
        }
    }
    m
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run `target` over every seed, then over `MUTANTS` mutants. Every seed
/// must reach the target's deepest checks (else the corpus has rotted and
/// the mutants test little); no input may panic.
fn replay(name: &str, target: fn(&[u8]) -> bool, seeds: Vec<Vec<u8>>) {
    let started = Instant::now();
    let run = |label: &str, input: &[u8]| -> bool {
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(reached) => reached,
            Err(_) => panic!(
                "{name}: {label} panicked (message above); input, {} bytes:\n{}",
                input.len(),
                hex(input)
            ),
        }
    };
    // KXEN_FUZZ_SEEDS=DIR writes the seeds to DIR/NAME/ as a starting
    // corpus for `cargo fuzz run NAME DIR/NAME`.
    if let Some(dir) = std::env::var_os("KXEN_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        assert!(
            run(&format!("seed {i}"), seed),
            "{name}: seed {i} no longer reaches the target's checks; input:\n{}",
            hex(seed)
        );
    }
    let mut rng = Rng::new(name);
    let mut reached = 0;
    for i in 0..MUTANTS {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, &seeds);
        reached += usize::from(run(&format!("mutant {i}"), &input));
    }
    eprintln!(
        "{name}: {} seeds and {MUTANTS} mutants ({reached} reached the deepest checks) in {:.2?}",
        seeds.len(),
        started.elapsed()
    );
    // Mutants that all die at the first check would test nothing deep.
    assert!(
        reached * 20 >= MUTANTS,
        "{name}: only {reached} of {MUTANTS} mutants reached the target's checks"
    );
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

// ---- pvh_note -------------------------------------------------------------

/// One ELF note: sizes, type, name and descriptor, each padded to 4 bytes.
fn elf_note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend(le32(name.len() as u32));
    n.extend(le32(desc.len() as u32));
    n.extend(le32(kind));
    n.extend(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

#[test]
fn pvh_note() {
    let entry32 = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &le32(0x10_0200));
    let entry64 = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &le64(0x20_0000));
    let mut behind_others = elf_note(b"GNU\0", 3, &[0xab; 20]);
    behind_others.extend(elf_note(b"Xen\0", 1, b"linux\0"));
    behind_others.extend(elf_note(b"Xen\0", 6, b"generic\0"));
    behind_others.extend(&entry32);
    let mut after_empty_name = elf_note(b"", 0, &[]);
    after_empty_name.extend(&entry64);
    assert_eq!(
        kxen_loader::elf32::find_pvh_entry(&behind_others),
        Some(0x10_0200)
    );
    assert_eq!(
        kxen_loader::elf32::find_pvh_entry(&entry64),
        Some(0x20_0000)
    );
    replay(
        "pvh_note",
        kxen_fuzz::pvh_note,
        vec![entry32, entry64, behind_others, after_empty_name],
    );
}

// ---- blkif_request ----------------------------------------------------------

/// Fuzz input: limits (capacity / 8 and indirect segment limit, each a
/// little-endian u16), the 112-byte ring slot, then indirect pages.
fn blkif_input(capacity_div8: u16, max_indirect: u16, slot: &[u8], pages: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(le16(capacity_div8));
    d.extend(le16(max_indirect));
    let mut s = slot.to_vec();
    s.resize(ENTRY_SIZE, 0);
    d.extend(s);
    d.extend(pages);
    d
}

/// `struct blkif_request` with `segs` (gref, first_sect, last_sect).
fn blkif_direct(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> Vec<u8> {
    let mut s = vec![op, segs.len() as u8];
    s.extend(le16(0x51)); // handle
    s.extend(le32(0));
    s.extend(le64(id));
    s.extend(le64(sector));
    for &(gref, first, last) in segs {
        s.extend(le32(gref));
        s.extend([first, last, 0, 0]);
    }
    s
}

/// `struct blkif_request_indirect` naming `pages` indirect pages.
fn blkif_indirect(op: u8, count: u16, sector: u64, pages: u32) -> Vec<u8> {
    let mut s = vec![BLKIF_OP_INDIRECT, op];
    s.extend(le16(count));
    s.extend(le32(0));
    s.extend(le64(0xfeed));
    s.extend(le64(sector));
    s.extend(le16(0x51));
    s.extend(le16(0));
    for p in 0..8 {
        s.extend(le32(if p < pages { 100 + p } else { 0 }));
    }
    s
}

/// `count` indirect segments, whole pages each, packed 512 to a page.
fn indirect_segments(count: usize) -> Vec<u8> {
    let mut pages = Vec::new();
    for i in 0..count {
        pages.extend(le32(1000 + i as u32));
        pages.extend([(i % 4) as u8, 7, 0, 0]);
    }
    pages.resize(pages.len().next_multiple_of(4096), 0);
    pages
}

#[test]
fn blkif_request() {
    let whole = |n: u32| -> Vec<(u32, u8, u8)> { (0..n).map(|i| (10 + i, 0, 7)).collect() };
    let mut discard = vec![BLKIF_OP_DISCARD, 1];
    discard.extend(le16(0x51));
    discard.extend(le32(0));
    discard.extend(le64(7));
    discard.extend(le64(16));
    discard.extend(le64(64));
    let seeds = vec![
        blkif_input(
            0x1000,
            1024,
            &blkif_direct(BLKIF_OP_READ, 1, 8, &whole(3)),
            &[],
        ),
        blkif_input(
            0x1000,
            1024,
            &blkif_direct(BLKIF_OP_WRITE, 2, 0x7f00, &whole(11)),
            &[],
        ),
        blkif_input(
            0x1000,
            0,
            &blkif_direct(BLKIF_OP_READ, 3, 1, &[(5, 1, 1), (6, 2, 6), (7, 0, 0)]),
            &[],
        ),
        blkif_input(
            0x1000,
            0,
            &blkif_direct(BLKIF_OP_WRITE_BARRIER, 4, 0, &[]),
            &[],
        ),
        blkif_input(
            0x1000,
            0,
            &blkif_direct(BLKIF_OP_FLUSH_DISKCACHE, 5, 0, &[]),
            &[],
        ),
        blkif_input(0x1000, 0, &discard, &[]),
        blkif_input(
            0x1000,
            1024,
            &blkif_indirect(BLKIF_OP_READ, 600, 64, 2),
            &indirect_segments(600),
        ),
        blkif_input(
            0x1000,
            32,
            &blkif_indirect(BLKIF_OP_WRITE, 17, 0, 1),
            &indirect_segments(17),
        ),
    ];
    replay("blkif_request", kxen_fuzz::blkif_request, seeds);
}

// ---- netif_tx ---------------------------------------------------------------

/// An Ethernet frame: optional 802.1Q tag, IPv4 or IPv6, TCP or UDP, with
/// `payload` bytes after the L4 header.
fn frame(vlan: bool, ipv6: bool, tcp: bool, payload: usize) -> Vec<u8> {
    let mut f = vec![0x00, 0x16, 0x3e, 0, 0, 1, 0x00, 0x16, 0x3e, 0, 0, 2];
    if vlan {
        f.extend([0x81, 0x00, 0x00, 0x0a]);
    }
    let l4_len = if tcp { 20 } else { 8 } + payload;
    let proto = if tcp { 6 } else { 17 };
    if ipv6 {
        f.extend([0x86, 0xdd]);
        f.extend([0x60, 0, 0, 0]);
        f.extend((l4_len as u16).to_be_bytes());
        f.extend([proto, 64]);
        f.extend([0xfe, 0x80].iter().chain(&[0u8; 13]).chain(&[1u8]));
        f.extend([0xfe, 0x80].iter().chain(&[0u8; 13]).chain(&[2u8]));
    } else {
        f.extend([0x08, 0x00]);
        f.extend([0x45, 0]);
        f.extend(((20 + l4_len) as u16).to_be_bytes());
        f.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
        f.extend([10, 0, 0, 1, 10, 0, 0, 2]);
    }
    f.extend(40000u16.to_be_bytes());
    f.extend(80u16.to_be_bytes());
    if tcp {
        f.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend((l4_len as u16).to_be_bytes());
        f.extend([0, 0]);
    }
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// 64 ring entries (the packets, then empty slots) and the frame bytes.
fn netif_input(entries: &[[u8; 12]], frame: &[u8]) -> Vec<u8> {
    let mut d: Vec<u8> = entries.iter().flatten().copied().collect();
    d.resize(12 * 64, 0);
    d.extend(frame);
    d
}

#[test]
fn netif_tx() {
    use kxen_netback::tx::encode::{extra, req};
    let mcast = NetifExtraInfo {
        extra_type: XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
        flags: 0,
        u: [0x01, 0x00, 0x5e, 0, 0, 1],
    };
    let ring = [
        // Two slots, checksum offload.
        req(1, 0, NETTXF_CSUM_BLANK | NETTXF_MORE_DATA, 1, 1514),
        req(2, 0, 0, 2, 514),
        // GSO over three slots.
        req(
            3,
            0,
            NETTXF_EXTRA_INFO | NETTXF_MORE_DATA | NETTXF_CSUM_BLANK,
            3,
            3000,
        ),
        extra(NetifExtraInfo::with_gso(
            XEN_NETIF_GSO_TYPE_TCPV4,
            1448,
            false,
        )),
        req(4, 0, NETTXF_MORE_DATA, 4, 1000),
        req(5, 0, 0, 5, 1000),
        // A multicast-only request.
        req(6, 0, NETTXF_EXTRA_INFO, 6, 0),
        extra(mcast),
        // One small validated frame at an offset.
        req(7, 100, NETTXF_DATA_VALIDATED, 7, 60),
    ];
    let ipv6_gso = [
        req(8, 0, NETTXF_EXTRA_INFO | NETTXF_CSUM_BLANK, 8, 1200),
        extra(NetifExtraInfo::with_gso(
            XEN_NETIF_GSO_TYPE_TCPV6,
            1200,
            false,
        )),
    ];
    for f in [frame(false, false, true, 64), frame(true, true, false, 10)] {
        assert!(kxen_netback::offload::parse_headers(&f).is_some());
    }
    let seeds = vec![
        netif_input(&ring, &frame(false, false, true, 64)),
        netif_input(&ring, &frame(false, false, false, 32)),
        netif_input(&ring, &frame(true, true, false, 10)),
        netif_input(&ipv6_gso, &frame(false, true, true, 100)),
        netif_input(&ring[6..], &frame(true, false, true, 0)),
    ];
    replay("netif_tx", kxen_fuzz::netif_tx, seeds);
}

// ---- gnttab_copy --------------------------------------------------------------

/// The domain the harness runs (what a grant entry must name).
const HARNESS_DOMID: u16 = 1;

/// One `gnttab_copy` op: (gref or gfn, domid, offset) for each side.
fn copy_op(src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) -> Vec<u8> {
    let mut op = Vec::new();
    for (r, domid, offset) in [src, dst] {
        op.extend(le64(r));
        op.extend(le16(domid));
        op.extend(le16(offset));
        op.extend(le32(0));
    }
    op.extend(le16(len));
    op.extend(le16(flags));
    op.extend(le16(0x7777)); // status, overwritten
    op.extend(le16(0));
    op
}

/// 64 grant entries, then the op count, then the ops.
fn gnttab_input(entries: &[(u16, u16, u32)], ops: &[Vec<u8>]) -> Vec<u8> {
    let mut d = Vec::new();
    for i in 0..64 {
        let (flags, domid, frame) = entries.get(i).copied().unwrap_or((0, 0, 0));
        d.extend(le16(flags));
        d.extend(le16(domid));
        d.extend(le32(frame));
    }
    d.push(ops.len() as u8);
    for op in ops {
        d.extend(op);
    }
    d
}

#[test]
fn gnttab_copy() {
    let both = GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF;
    let me = HARNESS_DOMID;
    let entries: Vec<(u16, u16, u32)> = (0..16)
        .map(|i| match i {
            3 => (GTF_PERMIT_ACCESS | GTF_READONLY, me, 0x303),
            5 => (GTF_PERMIT_ACCESS, 2, 0x305), // granted to another domain
            6 => (GTF_PERMIT_ACCESS, me, 0xfff), // the last RAM frame
            7 => (GTF_PERMIT_ACCESS, me, 0x1000), // past RAM
            _ => (GTF_PERMIT_ACCESS, me, 0x300 + i),
        })
        .collect();
    let ops = vec![
        // Grant to grant, grant to own frame, own frame to grant.
        copy_op((0, DOMID_SELF, 0), (1, DOMID_SELF, 128), 256, both),
        copy_op(
            (2, me, 0),
            (0x400, DOMID_SELF, 0),
            4096,
            GNTCOPY_SOURCE_GREF,
        ),
        copy_op((0x401, DOMID_SELF, 16), (4, me, 32), 100, GNTCOPY_DEST_GREF),
        // The same grant on both sides, a read-only destination, another
        // domain's grant, frames at and past the end of RAM.
        copy_op((8, DOMID_SELF, 0), (8, DOMID_SELF, 2048), 2048, both),
        copy_op((0, DOMID_SELF, 0), (3, DOMID_SELF, 0), 8, both),
        copy_op((5, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
        copy_op((6, DOMID_SELF, 4000), (7, DOMID_SELF, 0), 96, both),
        // Offset plus length past the page, a gref past the table.
        copy_op((0, DOMID_SELF, 4000), (1, DOMID_SELF, 0), 200, both),
        copy_op((600, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
    ];
    let seeds = vec![
        gnttab_input(&entries, &ops),
        gnttab_input(&entries, &ops[..3]),
        gnttab_input(&entries, &[ops[3].clone(), ops[0].clone()]),
        gnttab_input(
            &entries[..4],
            &[ops[2].clone(), ops[8].clone(), ops[1].clone()],
        ),
    ];
    replay("gnttab_copy", kxen_fuzz::gnttab_copy, seeds);
}

/// 64 v2 entries (flags, domid, (page_off, length), frame), 64 status
/// words, then the op count and the ops.
fn gnttab_v2_input(
    entries: &[(u16, u16, (u16, u16), u64)],
    busy: &[(usize, u16)],
    ops: &[Vec<u8>],
) -> Vec<u8> {
    let mut d = Vec::new();
    for i in 0..64 {
        let (flags, domid, (off, len), frame) =
            entries.get(i).copied().unwrap_or((0, 0, (0, 0), 0));
        d.extend(le16(flags));
        d.extend(le16(domid));
        d.extend(le16(off));
        d.extend(le16(len));
        d.extend(le64(frame));
    }
    for i in 0..64 {
        let word = busy.iter().find(|(g, _)| *g == i).map_or(0, |(_, b)| *b);
        d.extend(le16(word));
    }
    d.push(ops.len() as u8);
    for op in ops {
        d.extend(op);
    }
    d
}

#[test]
fn gnttab_copy_v2() {
    const GTF_SUB_PAGE: u16 = 1 << 8;
    const GTF_TRANSITIVE: u16 = 3;
    const GTF_READING: u16 = 1 << 3;
    let both = GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF;
    let me = HARNESS_DOMID;
    let entries: Vec<(u16, u16, (u16, u16), u64)> = (0..16)
        .map(|i| match i {
            3 => (GTF_PERMIT_ACCESS | GTF_READONLY, me, (0, 0), 0x303),
            5 => (GTF_PERMIT_ACCESS, 2, (0, 0), 0x305),
            6 => (GTF_PERMIT_ACCESS | GTF_SUB_PAGE, me, (1024, 512), 0x306),
            7 => (GTF_PERMIT_ACCESS, me, (0, 0), 1 << 40),
            9 => (GTF_TRANSITIVE, me, (me, 0), 0),
            _ => (GTF_PERMIT_ACCESS, me, (0, 0), 0x300 + i as u64),
        })
        .collect();
    let ops = vec![
        copy_op((0, DOMID_SELF, 0), (1, DOMID_SELF, 128), 256, both),
        copy_op(
            (2, me, 0),
            (0x400, DOMID_SELF, 0),
            4096,
            GNTCOPY_SOURCE_GREF,
        ),
        // Inside and outside the sub_page window.
        copy_op((6, DOMID_SELF, 1024), (1, DOMID_SELF, 0), 512, both),
        copy_op((6, DOMID_SELF, 1000), (1, DOMID_SELF, 0), 64, both),
        // Read-only destination, another domain, a 64-bit frame, a
        // transitive grant, the same grant on both sides, a gref past the
        // 256 entries of the frame.
        copy_op((0, DOMID_SELF, 0), (3, DOMID_SELF, 0), 8, both),
        copy_op((5, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
        copy_op((7, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
        copy_op((9, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
        copy_op((8, DOMID_SELF, 0), (8, DOMID_SELF, 2048), 2048, both),
        copy_op((256, DOMID_SELF, 0), (1, DOMID_SELF, 0), 8, both),
    ];
    let seeds = vec![
        gnttab_v2_input(&entries, &[], &ops),
        // A status word already busy (a backend's pin) stays so.
        gnttab_v2_input(&entries, &[(0, GTF_READING)], &ops[..3]),
        gnttab_v2_input(&entries[..8], &[], &[ops[9].clone(), ops[2].clone()]),
    ];
    replay("gnttab_copy_v2", kxen_fuzz::gnttab_copy_v2, seeds);
}

// ---- hypercalls ---------------------------------------------------------------

/// One 44-byte hypercall record of `kxen_xen::harness::run_bytes`.
fn hypercall(nr: u32, vcpu: u8, args: [u64; 5]) -> Vec<u8> {
    let mut c = le32(nr | u32::from(vcpu & 1) << 24).to_vec();
    for a in args {
        c.extend(le64(a));
    }
    c
}

#[test]
fn hypercalls() {
    // xen_version, sched_op(yield), event_channel_op, grant_table_op,
    // memory_op, vcpu_op: small commands, pointers into RAM.
    let calls = [
        hypercall(17, 0, [0, 0x1000, 0, 0, 0]),
        hypercall(17, 1, [1, 0x1000, 0, 0, 0]),
        hypercall(29, 0, [0, 0, 0, 0, 0]),
        hypercall(32, 0, [6, 0x2000, 0, 0, 0]),
        hypercall(32, 1, [4, 0x2000, 0, 0, 0]),
        hypercall(20, 0, [6, 0x3000, 1, 0, 0]),
        hypercall(12, 0, [2, 0x4000, 0, 0, 0]),
        hypercall(24, 1, [11, 1, 0x5000, 0, 0]),
        // FIFO events: init_control and expand_array on zeroed arguments
        // (GFN 0, offset 0, vCPU 0), then bind_ipi and send through the
        // queues.
        hypercall(32, 0, [11, 0x6000, 0, 0, 0]),
        hypercall(32, 0, [12, 0x6100, 0, 0, 0]),
        hypercall(32, 0, [7, 0x6200, 0, 0, 0]),
        hypercall(32, 0, [4, 0x6204, 0, 0, 0]),
    ];
    let seeds = vec![
        calls.concat(),
        calls[3..].concat(),
        calls.iter().rev().flatten().copied().collect(),
    ];
    replay("hypercalls", kxen_fuzz::hypercalls, seeds);
}

// ---- insn_decode --------------------------------------------------------------

/// Registers (16 GPRs, rip, fs and gs base), the control byte (code
/// size, CPL, VMX/SVM offered, CR0.TS/EM), the instruction bytes, and the
/// rest of a 512-byte FXSAVE image (MXCSR at 24, its mask at 28).
fn insn_input(control: u8, insn: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    for r in 0..16u64 {
        d.extend(le64(0x10_0000 + r * 0x1000));
    }
    d.extend(le64(0x40_0000)); // rip
    d.extend(le64(0x7000_0000)); // fs base
    d.extend(le64(0x7100_0000)); // gs base
    d.push(control);
    let mut image = insn.to_vec();
    image.resize(512, 0);
    image[24..28].copy_from_slice(&le32(0x1f80));
    image[28..32].copy_from_slice(&le32(0xffff));
    d.extend(image);
    d
}

#[test]
fn insn_decode() {
    const CPL3: u8 = 3 << 2;
    const VMX: u8 = 0x10;
    const TS: u8 = 0x40;
    const EM: u8 = 0x80;
    const CODE32: u8 = 1;
    let insns: [(u8, &[u8]); 26] = [
        (0, &[0x0f, 0xae, 0x10]),                                  // ldmxcsr (%rax)
        (0, &[0x0f, 0xae, 0x18]),                                  // stmxcsr (%rax)
        (0, &[0x0f, 0xae, 0x00]),                                  // fxsave (%rax)
        (0, &[0x48, 0x0f, 0xae, 0x08]),                            // fxrstor64 (%rax)
        (0, &[0x0f, 0xae, 0x44, 0x24, 0x08]),                      // fxsave 8(%rsp)
        (0, &[0x0f, 0xae, 0x05, 0x00, 0x10, 0x00, 0x00]),          // fxsave 0x1000(%rip)
        (0, &[0x64, 0x0f, 0xae, 0x14, 0x25, 0, 1, 0, 0]),          // ldmxcsr %fs:0x100
        (0, &[0x65, 0x41, 0x0f, 0xae, 0x9c, 0x24, 0x80, 0, 0, 0]), // stmxcsr %gs:0x80(%r12)
        (0, &[0x0f, 0xae, 0x90, 0x78, 0x56, 0x34, 0x12]),          // ldmxcsr 0x12345678(%rax)
        (0, &[0x49, 0x0f, 0xae, 0x0c, 0xc8]),                      // fxrstor64 (%r8,%rcx,8)
        (0, &[0xd9, 0xd0]),                                        // fnop
        (TS, &[0xd9, 0xd0]),                                       // fnop, TS: #NM
        (0, &[0x9b]),                                              // fwait
        (0, &[0xdb, 0xe3]),                                        // fninit
        (0, &[0xdb, 0xe2]),                                        // fnclex
        (0, &[0xd9, 0x28]),                                        // fldcw (%rax)
        (CODE32, &[0xd9, 0x7c, 0x24, 0x08]),                       // fnstcw 8(%esp)
        (0, &[0xdf, 0xe0]),                                        // fnstsw %ax
        (0, &[0x67, 0xcc]),                                        // addr32 int3
        (0, &[0xf3, 0x66, 0xcc]),                                  // prefixed int3
        (0, &[0x66, 0x0f, 0xc7, 0x30]),                            // vmclear, no VMX: #UD
        (VMX, &[0x66, 0x0f, 0xc7, 0x30]),                          // vmclear, VMX offered
        (CPL3, &[0x0f, 0x30]),                                     // wrmsr at CPL3: #GP(0)
        (CPL3, &[0x0f, 0x01, 0xca]),                               // clac at CPL3: #UD
        (EM, &[0x0f, 0xae, 0x10]),                                 // ldmxcsr, EM: #UD
        (0, &[0xf3, 0x0f, 0xb8, 0xc8]),                            // popcnt: no answer
    ];
    let seeds = insns.iter().map(|(c, i)| insn_input(*c, i)).collect();
    replay("insn_decode", kxen_fuzz::insn_decode, seeds);
}

// ---- the virtio queue targets -------------------------------------------------

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Guest RAM as `kxen_fuzz::virtio_queue` lays it out: a flags byte, 8 KiB
/// of low RAM (descriptors at 0, avail ring at 0x100, used ring at 0x200)
/// and one page at 1 MiB.
struct VirtqRam {
    low: Vec<u8>,
    high: Vec<u8>,
    avail: u16,
}

/// Where the high page is in guest-physical space.
const HIGH: u64 = 0x10_0000;

impl VirtqRam {
    fn new() -> VirtqRam {
        VirtqRam {
            low: vec![0; 0x2000],
            high: vec![0; 0x1000],
            avail: 0,
        }
    }

    fn put(&mut self, gpa: u64, bytes: &[u8]) {
        let (ram, at) = if gpa >= HIGH {
            (&mut self.high, (gpa - HIGH) as usize)
        } else {
            (&mut self.low, gpa as usize)
        };
        ram[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A descriptor in the table at `table` (0 for the ring's own).
    fn desc(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = le64(addr).to_vec();
        d.extend(le32(len));
        d.extend(le16(flags));
        d.extend(le16(next));
        self.put(table + 16 * u64::from(i), &d);
    }

    /// A chain of (addr, len, device-writable) starting at descriptor `head`.
    fn chain(&mut self, head: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = head + k as u16;
            let more = k + 1 < bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if more { F_NEXT } else { 0 };
            self.desc(0, i, addr, len, flags, i + 1);
        }
        self.publish(head);
    }

    fn publish(&mut self, head: u16) {
        self.put(0x104 + 2 * u64::from(self.avail % 16), &le16(head));
        self.avail += 1;
        self.put(0x102, &le16(self.avail));
    }

    fn input(&self, flags: u8) -> Vec<u8> {
        let mut d = vec![flags];
        d.extend(&self.low);
        d.extend(&self.high);
        d
    }
}

/// A virtio-blk request header.
fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = le32(kind).to_vec();
    h.extend(le32(0));
    h.extend(le64(sector));
    h
}

#[test]
fn virtio_blk_request() {
    use kxen_virtio_backend::blk::{T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT};
    let mut ram = VirtqRam::new();
    for (i, (kind, sector)) in [
        (T_IN, 4),
        (T_OUT, 8),
        (T_FLUSH, 0),
        (T_GET_ID, 0),
        (T_DISCARD, 0),
        (T_IN, 2040),
        (T_OUT, 0),
    ]
    .into_iter()
    .enumerate()
    {
        ram.put(0x300 + 16 * i as u64, &blk_header(kind, sector));
    }
    // A discard segment: sector 16, 32 sectors, no flags.
    let mut seg = le64(16).to_vec();
    seg.extend(le32(32));
    seg.extend(le32(0));
    ram.put(0x700, &seg);
    ram.chain(
        0,
        &[(0x300, 16, false), (0x400, 512, true), (0x600, 1, true)],
    );
    ram.chain(
        3,
        &[(0x310, 16, false), (0x800, 1024, false), (0x601, 1, true)],
    );
    ram.chain(6, &[(0x320, 16, false), (0x602, 1, true)]);
    ram.chain(
        8,
        &[(0x330, 16, false), (0xc00, 20, true), (0x603, 1, true)],
    );
    ram.chain(
        11,
        &[(0x340, 16, false), (0x700, 16, false), (0x604, 1, true)],
    );
    // An indirect table at 0x1000: header, data in the high page, status.
    let mut table = VirtqRam::new();
    for (i, (addr, len, flags)) in [
        (0x350u64, 16u32, F_NEXT),
        (HIGH, 4096, F_WRITE | F_NEXT),
        (0x605, 1, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        table.desc(0x1000, i as u16, addr, len, flags, i as u16 + 1);
    }
    ram.low[0x1000..0x1030].copy_from_slice(&table.low[0x1000..0x1030]);
    ram.desc(0, 14, 0x1000, 48, F_INDIRECT, 0);
    ram.publish(14);
    // A write whose data is split over two descriptors, one in high RAM,
    // and a read into the high page.
    let mut split = VirtqRam::new();
    split.put(0x300, &blk_header(T_OUT, 100));
    split.put(0x310, &blk_header(T_IN, 0));
    split.chain(
        0,
        &[
            (0x300, 16, false),
            (0x900, 512, false),
            (HIGH + 0x200, 512, false),
            (0x600, 1, true),
        ],
    );
    split.chain(
        4,
        &[(0x310, 16, false), (HIGH, 512, true), (0x601, 1, true)],
    );
    // Zero-length writable descriptors (at addresses outside RAM) before
    // and after the status byte: the status is still the last byte the
    // driver offered.
    split.put(0x320, &blk_header(T_IN, 1));
    split.chain(
        7,
        &[
            (0x320, 16, false),
            (0xa00, 512, true),
            (0x8000_0000, 0, true),
            (0x602, 1, true),
            (0x9000_0000, 0, true),
        ],
    );
    let readonly_only = {
        let mut r = VirtqRam::new();
        r.put(0x300, &blk_header(T_IN, 0));
        r.chain(
            0,
            &[(0x300, 16, false), (0x400, 512, true), (0x600, 1, true)],
        );
        r
    };
    let seeds = vec![
        ram.input(1 | 4),
        ram.input(0),
        ram.input(2),
        split.input(1),
        readonly_only.input(2 | 1),
    ];
    replay("virtio_blk_request", kxen_fuzz::virtio_blk_request, seeds);
}

#[test]
fn virtio_net_tx() {
    use kxen_virtio_backend::net::HDR_LEN;
    let mut ram = VirtqRam::new();
    let f = frame(false, false, true, 40);
    let mut hdr_and_frame = vec![0u8; HDR_LEN];
    hdr_and_frame.extend(&f);
    ram.put(0x300, &hdr_and_frame);
    ram.put(HIGH, &f);
    let whole = hdr_and_frame.len() as u32;
    // Header and frame in one buffer; split; frame in high RAM; a header
    // alone (an empty frame, dropped); an indirect chain.
    ram.chain(0, &[(0x300, whole, false)]);
    ram.chain(
        1,
        &[
            (0x300, HDR_LEN as u32, false),
            (0x300 + HDR_LEN as u64, 60, false),
        ],
    );
    ram.chain(
        3,
        &[
            (0x300, 4, false),
            (0x304, 8, false),
            (HIGH, f.len() as u32, false),
        ],
    );
    ram.chain(6, &[(0x300, HDR_LEN as u32, false)]);
    let mut table = VirtqRam::new();
    table.desc(0x1000, 0, 0x300, HDR_LEN as u32, F_NEXT, 1);
    table.desc(0x1000, 1, HIGH, f.len() as u32, 0, 0);
    ram.low[0x1000..0x1020].copy_from_slice(&table.low[0x1000..0x1020]);
    ram.desc(0, 7, 0x1000, 32, F_INDIRECT, 0);
    ram.publish(7);
    let seeds = vec![ram.input(1), ram.input(0)];
    replay("virtio_net_tx", kxen_fuzz::virtio_net_tx, seeds);
}

// ---- virtio_mmio_regs -----------------------------------------------------------

use kxen_devices::virtio_mmio::reg;

/// The op stream `kxen_fuzz::virtio_mmio_regs` reads.
#[derive(Default)]
struct MmioOps(Vec<u8>);

impl MmioOps {
    fn write(&mut self, offset: u64, value: u32) -> &mut Self {
        self.0.push(0);
        self.0.extend(le16(offset as u16));
        self.0.push(0);
        self.0.extend(le32(value));
        self
    }

    fn read(&mut self, offset: u64) -> &mut Self {
        self.0.push(6);
        self.0.extend(le16(offset as u16));
        self.0.push(0);
        self
    }

    /// An unaligned or odd-sized read.
    fn read_sized(&mut self, offset: u64, len: u8) -> &mut Self {
        self.0.push(9);
        self.0.extend(le16(offset as u16));
        self.0.push(len);
        self
    }

    fn attach(&mut self, features: u64, queues: u8, config_len: u8) -> &mut Self {
        self.0.extend([11, config_len, 0, queues]);
        self.0.extend(le64(features));
        self
    }

    fn other(&mut self, op: u8, c: u8) -> &mut Self {
        self.0.extend([op, 0, 0, c]);
        self
    }

    /// A driver bringing queues up to DRIVER_OK, as Linux does.
    fn bring_up(&mut self, queues: u32, features_low: u32) -> &mut Self {
        use kxen_devices::virtio_mmio::status::*;
        self.write(reg::STATUS, 0)
            .write(reg::STATUS, ACKNOWLEDGE)
            .write(reg::STATUS, ACKNOWLEDGE | DRIVER)
            .write(reg::DEVICE_FEATURES_SEL, 0)
            .read(reg::DEVICE_FEATURES)
            .write(reg::DEVICE_FEATURES_SEL, 1)
            .read(reg::DEVICE_FEATURES)
            .write(reg::DRIVER_FEATURES_SEL, 0)
            .write(reg::DRIVER_FEATURES, features_low)
            .write(reg::DRIVER_FEATURES_SEL, 1)
            .write(reg::DRIVER_FEATURES, 1) // VIRTIO_F_VERSION_1
            .write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
            .read(reg::STATUS);
        for q in 0..queues {
            let base = 0x1_0000 * (q + 1);
            self.write(reg::QUEUE_SEL, q)
                .read(reg::QUEUE_NUM_MAX)
                .write(reg::QUEUE_NUM, 64)
                .write(reg::QUEUE_DESC_LOW, base)
                .write(reg::QUEUE_DESC_HIGH, 0)
                .write(reg::QUEUE_DRIVER_LOW, base + 0x400)
                .write(reg::QUEUE_DRIVER_HIGH, 0)
                .write(reg::QUEUE_DEVICE_LOW, base + 0x1000)
                .write(reg::QUEUE_DEVICE_HIGH, 0)
                .write(reg::QUEUE_READY, 1);
        }
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
            .read(reg::STATUS)
    }

    fn input(&self, net: bool) -> Vec<u8> {
        let mut d = vec![u8::from(net)];
        d.extend(&self.0);
        d
    }
}

#[test]
fn virtio_mmio_regs() {
    const VERSION_1: u64 = 1 << 32;
    // Attach, bring up, traffic, config reads, interrupts, reset.
    let mut full = MmioOps::default();
    full.attach(VERSION_1 | 1 << 5 | 1 << 9, 2, 16)
        .read(reg::MAGIC_VALUE)
        .read(reg::VERSION)
        .read(reg::DEVICE_ID)
        .bring_up(2, 1 << 5)
        .write(reg::QUEUE_NOTIFY, 0)
        .write(reg::QUEUE_NOTIFY, 1)
        .other(14, 1) // the backend raises a used-buffer interrupt
        .read(reg::INTERRUPT_STATUS)
        .write(reg::INTERRUPT_ACK, 1)
        .read(0x100)
        .read_sized(0x101, 1)
        .read_sized(0x102, 2)
        .read_sized(0x100, 8)
        .read(0xfc)
        .write(reg::STATUS, 0)
        .read(reg::STATUS);
    // The backend refuses activation, then fails after a good one.
    let mut refused = MmioOps::default();
    refused
        .attach(VERSION_1, 1, 0)
        .other(12, 1)
        .bring_up(1, 0)
        .other(12, 0)
        .bring_up(1, 0)
        .write(reg::QUEUE_NOTIFY, 0)
        .other(13, 0) // backend failed: DEVICE_NEEDS_RESET
        .read(reg::STATUS)
        .other(15, 0) // the driver resets
        .bring_up(1, 0);
    // A second backend attached over a live one, and a queue count the
    // transport refuses.
    let mut reattach = MmioOps::default();
    reattach
        .attach(VERSION_1 | 1 << 16, 3, 8)
        .bring_up(3, 1 << 16)
        .attach(VERSION_1, 9, 4)
        .attach(VERSION_1 | 1 << 3, 1, 12)
        .bring_up(1, 1 << 3);
    let seeds = vec![
        full.input(false),
        full.input(true),
        refused.input(false),
        reattach.input(true),
    ];
    replay("virtio_mmio_regs", kxen_fuzz::virtio_mmio_regs, seeds);
}

// ---- xenstore_wire --------------------------------------------------------------

/// A xenstore message: header and payload.
fn xs_msg(kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    kxen_xenstore::wire::message(kind, req_id, tx_id, payload)
}

/// The op stream `kxen_fuzz::xenstore_wire` reads.
#[derive(Default)]
struct XsOps(Vec<u8>);

impl XsOps {
    /// Send `msgs` on socket connection `conn` (0, 1: Dom0; 2: domain 5;
    /// 3: domain 7's socket). The target feeds chunks of 8 bytes times a
    /// length byte: the stream is padded to whole chunks with one more
    /// read, and long streams go in several chunks.
    fn socket(&mut self, conn: u8, msgs: &[Vec<u8>]) -> &mut Self {
        let mut stream: Vec<u8> = msgs.concat();
        let pad = (8 - (stream.len() + 16 + 3) % 8) % 8;
        let path = format!("/{}\0", "p".repeat(1 + pad));
        stream.extend(xs_msg(xs::XS_READ, 999, 0, path.as_bytes()));
        assert_eq!(stream.len() % 8, 0);
        for chunk in stream.chunks(255 * 8) {
            self.0.push(conn);
            self.0.push((chunk.len() / 8) as u8);
            self.0.extend(chunk);
        }
        self
    }

    /// Domain 7 puts `msgs` on its ring (whole 4-byte units) and kicks.
    fn ring(&mut self, msgs: &[Vec<u8>]) -> &mut Self {
        let mut bytes: Vec<u8> = msgs.concat();
        let pad = (4 - (bytes.len() + 16 + 3) % 4) % 4;
        let path = format!("/{}\0", "q".repeat(1 + pad));
        bytes.extend(xs_msg(xs::XS_READ, 998, 0, path.as_bytes()));
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.len() <= 1020, "more than the ring holds");
        self.0.push(4);
        self.0.push((bytes.len() / 4) as u8);
        self.0.extend(bytes);
        self.0.push(6);
        self
    }

    /// Domain 7 consumes its responses and kicks.
    fn consume(&mut self) -> &mut Self {
        self.0.push(7);
        self
    }

    /// Scribble `value` over ring index field `field` (0..7).
    fn scribble(&mut self, field: u8, value: u32) -> &mut Self {
        self.0.extend([5, field]);
        self.0.extend(le32(value));
        self
    }

    fn other(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
}

#[test]
fn xenstore_wire() {
    let s = |t: &str| t.as_bytes().to_vec();
    let dom0 = vec![
        xs_msg(xs::XS_MKDIR, 1, 0, b"/local/domain/5/data\0"),
        xs_msg(xs::XS_WRITE, 2, 0, b"/local/domain/5/data/x\0hello"),
        xs_msg(xs::XS_READ, 3, 0, b"/local/domain/5/data/x\0"),
        xs_msg(xs::XS_DIRECTORY, 4, 0, b"/local/domain/5\0"),
        xs_msg(xs::XS_GET_PERMS, 5, 0, b"/local/domain/5/data\0"),
        xs_msg(xs::XS_SET_PERMS, 6, 0, b"/local/domain/5/data\0n5\0r7\0"),
        xs_msg(xs::XS_WATCH, 7, 0, b"/local/domain/5/data\0tok\0"),
        xs_msg(xs::XS_TRANSACTION_START, 8, 0, b"\0"),
        xs_msg(xs::XS_WRITE, 9, 1, b"/local/domain/5/data/y\0in-tx"),
        xs_msg(xs::XS_TRANSACTION_END, 10, 1, b"T\0"),
        xs_msg(xs::XS_GET_DOMAIN_PATH, 11, 0, b"7\0"),
        xs_msg(xs::XS_IS_DOMAIN_INTRODUCED, 12, 0, b"7\0"),
        xs_msg(xs::XS_DIRECTORY_PART, 13, 0, b"/local/domain\x000\0"),
        xs_msg(xs::XS_RM, 14, 0, b"/local/domain/5/data/x\0"),
        xs_msg(xs::XS_UNWATCH, 15, 0, b"/local/domain/5/data\0tok\0"),
    ];
    let dom5 = vec![
        xs_msg(xs::XS_WRITE, 1, 0, b"/local/domain/5/a\0b"),
        xs_msg(xs::XS_READ, 2, 0, b"/local/domain/5/a\0"),
        xs_msg(xs::XS_WRITE, 3, 0, b"/local/domain/7/x\0denied"),
        xs_msg(xs::XS_WATCH, 4, 0, b"/local/domain/5\0w\0"),
        xs_msg(xs::XS_READ, 5, 0, b"data/x\0"),
    ];
    let guest = vec![
        xs_msg(xs::XS_WRITE, 1, 0, &s("/local/domain/7/k\0v")),
        xs_msg(xs::XS_READ, 2, 0, b"/local/domain/7/k\0"),
        xs_msg(xs::XS_WATCH, 3, 0, b"/local/domain/7\0g\0"),
        xs_msg(xs::XS_TRANSACTION_START, 4, 0, b"\0"),
    ];
    let mut all = XsOps::default();
    all.socket(0, &dom0)
        .socket(2, &dom5)
        .ring(&guest)
        .consume()
        .socket(1, &dom0[..4])
        .other(9) // expire transactions and pending watches
        .socket(3, &guest)
        .other(8) // release and introduce domain 7 again
        .ring(&guest[..2])
        .consume();
    let mut hostile_ring = XsOps::default();
    hostile_ring
        .ring(&guest)
        .scribble(1, 0xffff_fff0)
        .other(6)
        .scribble(0, 7)
        .scribble(3, 0x1000)
        .other(6)
        .consume()
        .scribble(5, 1)
        .scribble(6, 0xdead)
        .socket(0, &dom0[..3]);
    // A message split over two feeds, then the rest of the session.
    let mut split = XsOps::default();
    let first = xs_msg(xs::XS_WRITE, 1, 0, b"/local/domain/5/split\0value!!!!!");
    assert_eq!(first.len() % 8, 0);
    split.0.extend([0, 2]);
    split.0.extend(&first[..16]);
    split.0.extend([0, (first.len() / 8 - 2) as u8]);
    split.0.extend(&first[16..]);
    split.socket(0, &dom0[2..]).socket(2, &dom5);
    let seeds = vec![all.0, hostile_ring.0, split.0];
    replay("xenstore_wire", kxen_fuzz::xenstore_wire, seeds);
}

// ---- vmm_api_wire -----------------------------------------------------------

#[test]
fn vmm_api_wire() {
    use kxen_vmm_api::protocol::{
        Dom0PortInfo, DomainInfo, Reply, Request, RoutingAreaInfo, VirtioAttach,
    };
    use kxen_vmm_api::wire::encode;
    use kxen_vmm_api::MemfdRegion;

    let mut seeds: Vec<Vec<u8>> = [
        Request::Info,
        Request::Pause,
        Request::Memfd,
        Request::Dom0Ports,
        Request::EvtchnBind { guest_port: 5 },
        Request::EvtchnClose { dom0_port: 3 },
        Request::VirtioAttach(VirtioAttach {
            slot: 1,
            device_id: 2,
            device_features: 1 << 32,
            config: vec![0, 1, 2, 3],
            queues: 2,
        }),
    ]
    .iter()
    .map(encode)
    .collect();
    // Replies with many optional fields: a mutated key in them is ignored
    // rather than refused, so mutants keep reaching the typed decoder.
    let mut memfd = Reply::ok();
    memfd.size = Some(64 << 20);
    memfd.regions = Some(vec![
        MemfdRegion {
            gpa: 0,
            len: 0xa_0000,
            offset: 0,
        },
        MemfdRegion {
            gpa: 0x10_0000,
            len: 0x3f0_0000,
            offset: 0x10_0000,
        },
    ]);
    memfd.routing = Some(RoutingAreaInfo {
        offset: 64 << 20,
        size: 0x1000,
    });
    let mut info = Reply::ok();
    info.info = Some(DomainInfo {
        domid: 3,
        name: "guest".into(),
        paused: false,
        vcpus: 2,
        memory_kib: 65536,
        max_memory_kib: 65536,
        hypercalls: 1234,
        uptime_ms: 5000,
        pid: 4242,
        blocked: true,
        vcpus_online: 2,
        suspended: false,
    });
    let mut ports = Reply::ok();
    ports.dom0_port = Some(7);
    ports.vcpus = Some(2);
    ports.irqfd = Some(true);
    ports.ports = Some(vec![Dom0PortInfo {
        name: "console".into(),
        dom0_port: 1,
        local_port: 2,
        pfn: 0xfeffc,
    }]);
    seeds.push(encode(&Reply::ok()));
    seeds.push(encode(&Reply::error("no such port")));
    seeds.extend([memfd, info, ports].iter().map(encode));
    replay("vmm_api_wire", kxen_fuzz::vmm_api_wire, seeds);
}

// ---- page_walk --------------------------------------------------------------

/// A `page_walk` input: mode byte (low 3 bits: off, 32-bit, PAE, 4-level,
/// 5-level; 0x08 CR0.WP, 0x10 CR4.PSE, 0x20 EFER.NXE, 0x40 CPL 3), the CR3
/// page, MAXPHYADDR, the access kind (0 read, 1 write, 2 fetch), the
/// address, then the first bytes of guest RAM, where the tables live.
fn walk_input(mode: u8, cr3_page: u8, kind: u8, gva: u64, entries: &[(u64, u64, bool)]) -> Vec<u8> {
    let mut input = vec![mode, cr3_page, 46, kind];
    input.extend(le64(gva));
    let mut ram = vec![0u8; 0x9000];
    for &(gpa, value, narrow) in entries {
        let at = gpa as usize;
        if narrow {
            ram[at..at + 4].copy_from_slice(&le32(value as u32));
        } else {
            ram[at..at + 8].copy_from_slice(&le64(value));
        }
    }
    input.extend(ram);
    input
}

#[test]
fn page_walk() {
    // Present, writable, user.
    const PWU: u64 = 0x7;
    const LARGE: u64 = 0x80;
    let long4 = [
        (0x1000, 0x2000 | PWU, false),
        (0x2000, 0x3000 | PWU, false),
        (0x3000, 0x4000 | PWU, false),
        (0x4000, 0x5000 | PWU, false),
    ];
    let long5 = [
        (0x1000, 0x2000 | PWU, false),
        (0x2000, 0x3000 | PWU, false),
        (0x3000, 0x4000 | PWU, false),
        (0x4000, 0x6000 | PWU, false),
        (0x6000, 0x8000 | PWU, false),
    ];
    let long4_2m = [
        (0x1000, 0x2000 | PWU, false),
        (0x2000, 0x3000 | PWU, false),
        (0x3000, PWU | LARGE, false),
    ];
    // PAE: four PDPTEs (present only), then 8-byte PD and PT entries.
    let pae = [
        (0x1000, 0x2000 | 1, false),
        (0x2000, 0x3000 | PWU, false),
        (0x3000, 0x5000 | PWU, false),
    ];
    let legacy = [(0x1000, 0x2000 | PWU, true), (0x2000, 0x5000 | PWU, true)];
    let legacy_4m = [(0x1000, PWU | LARGE, true)];
    let seeds = vec![
        walk_input(0, 0, 0, 0x5123, &[]),
        walk_input(3 | 0x08, 1, 0, 0x123, &long4),
        walk_input(3 | 0x08 | 0x40, 1, 1, 0x123, &long4),
        walk_input(3 | 0x08 | 0x20, 1, 2, 0xff8, &long4),
        walk_input(3 | 0x08, 1, 1, 0x1f_f000, &long4_2m),
        walk_input(4 | 0x08 | 0x40, 1, 0, 0x10, &long5),
        walk_input(2 | 0x08, 1, 1, 0x321, &pae),
        walk_input(1 | 0x08 | 0x40, 1, 1, 0x456, &legacy),
        walk_input(1 | 0x08 | 0x10, 1, 0, 0x3f_fff0, &legacy_4m),
    ];
    replay("page_walk", kxen_fuzz::page_walk, seeds);
}

// ---- pv_notes ---------------------------------------------------------------

const PV_VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

/// A 64-bit x86_64 ELF image: `segs` (paddr, contents, memsz) as PT_LOAD
/// segments at VIRT_BASE + paddr, then `notes` as one PT_NOTE segment.
fn elf64_image(segs: &[(u64, Vec<u8>, u64)], notes: &[u8]) -> Vec<u8> {
    let phnum = segs.len() + 1;
    let mut data_at = 64 + 56 * phnum;
    let mut phdrs = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for (paddr, contents, memsz) in segs {
        let vaddr = PV_VIRT_BASE + paddr;
        phdrs.push((1u32, data_at, vaddr, *paddr, contents.len(), *memsz));
        data_at += contents.len();
        body.extend(contents);
    }
    phdrs.push((4, data_at, 0, 0, notes.len(), notes.len() as u64));
    body.extend(notes);
    let mut out = b"\x7fELF\x02\x01\x01".to_vec();
    out.resize(16, 0);
    out.extend(le16(2));
    out.extend(le16(62));
    out.extend(le32(1));
    out.extend(le64(0)); // e_entry
    out.extend(le64(64)); // e_phoff
    out.extend(le64(0)); // e_shoff
    out.extend(le32(0));
    out.extend(le16(64));
    out.extend(le16(56));
    out.extend(le16(phnum as u16));
    out.extend([0; 6]); // no sections
    for (kind, offset, vaddr, paddr, filesz, memsz) in phdrs {
        out.extend(le32(kind));
        out.extend(le32(7));
        out.extend(le64(offset as u64));
        out.extend(le64(vaddr));
        out.extend(le64(paddr));
        out.extend(le64(filesz as u64));
        out.extend(le64(memsz));
        out.extend(le64(0x1000));
    }
    out.extend(body);
    out
}

/// The notes of a Linux x86_64 PV kernel whose entry is at paddr 16 MiB.
fn linux_pv_notes() -> Vec<u8> {
    let mut n = Vec::new();
    n.extend(elf_note(b"Xen\0", 6, b"linux\0"));
    n.extend(elf_note(b"Xen\0", 5, b"xen-3.0\0"));
    n.extend(elf_note(b"Xen\0", 3, &le64(PV_VIRT_BASE)));
    n.extend(elf_note(b"Xen\0", 15, &le64(0x80_0000_0000)));
    n.extend(elf_note(b"Xen\0", 1, &le64(PV_VIRT_BASE + 0x100_0040)));
    n.extend(elf_note(
        b"Xen\0",
        10,
        b"!writable_page_tables|pae_pgdir_above_4gb",
    ));
    n.extend(elf_note(b"Xen\0", 17, &le32(0x8801)));
    n.extend(elf_note(b"Xen\0", 8, b"generic\0"));
    n.extend(elf_note(b"Xen\0", 16, &le32(1)));
    n.extend(elf_note(b"Xen\0", 18, &le32(0x100_0000)));
    n
}

/// A small PV kernel image: text at 16 MiB and bss after it.
fn pv_kernel_image(notes: &[u8]) -> Vec<u8> {
    elf64_image(
        &[
            (0x100_0000, vec![0x90; 256], 0x1000),
            (0x100_1000, vec![0x11; 64], 0x3000),
        ],
        notes,
    )
}

#[test]
fn pv_notes() {
    let linux = linux_pv_notes();
    let parsed = kxen_loader::pv::PvKernel::parse(pv_kernel_image(&linux)).unwrap();
    assert_eq!(parsed.notes.virt_base, Some(PV_VIRT_BASE));
    let pvh_only = elf_note(b"Xen\0", 18, &le32(0x100_0000));
    let mut hypercall_page = linux.clone();
    hypercall_page.extend(elf_note(b"Xen\0", 2, &le64(PV_VIRT_BASE + 0x100_1000)));
    hypercall_page.extend(elf_note(b"Xen\0", 4, &le64(0)));
    let seeds = vec![
        linux.clone(),
        pvh_only.clone(),
        pv_kernel_image(&linux),
        pv_kernel_image(&hypercall_page),
        pv_kernel_image(&pvh_only),
    ];
    replay("pv_notes", kxen_fuzz::pv_notes, seeds);
}

// ---- pv_mmu -------------------------------------------------------------------

/// One pv_mmu record: op byte (kind in bits 2:0, mmu_update command in
/// 5:3, vCPU in bit 7), three parameter bytes and the raw word.
fn mmu_record(op: u8, b1: u8, b2: u8, b3: u8, raw: u64) -> Vec<u8> {
    let mut rec = vec![op, b1, b2, b3];
    rec.extend(le64(raw));
    rec
}

/// Guest store of the raw `value` into entry `2 * index_half` of `frame`.
fn mmu_store(frame: u8, index_half: u8, value: u64) -> Vec<u8> {
    mmu_record(0, frame, 0, 0x80 | index_half, value)
}

fn mmu_ext(cmd: u8, frame: u8) -> Vec<u8> {
    mmu_record(2, cmd, frame, 0, 0)
}

#[test]
fn pv_mmu() {
    const P: u64 = 1;
    const RW: u64 = 3;
    // L4 (frame 1) slot 510 -> L3 (2) -> L2 (3) -> L1 (4) -> data 5 writable,
    // and the L4 mapped read-only; then pin it and load it.
    let tree: Vec<u8> = [
        mmu_store(1, 127 + 128, (2 << 12) | RW),
        mmu_store(2, 0, (3 << 12) | RW),
        mmu_store(3, 0, (4 << 12) | RW),
        mmu_store(4, 0, (5 << 12) | RW),
        mmu_store(4, 1, (1 << 12) | P),
        mmu_ext(3, 1),
        mmu_ext(5, 1),
    ]
    .concat();
    // Entry updates: map frame 6 writable at L1 index 8, then try to map
    // the L2 writable (refused), PRESERVE_AD at index 12, unmap.
    let updates: Vec<u8> = [
        tree.clone(),
        mmu_record(1, 4, 6, 2, RW),
        mmu_record(1, 4, 3, 2, RW),
        mmu_record(1 | (2 << 3), 4, 7, 3, P),
        mmu_record(1, 4, 0, 2, 0x200),
        mmu_record(1 | (1 << 3), 9, 0, 0, 0x44),
        // Replace present L2, L3 and L4 entries (index 4) with others,
        // then clear them: the old references must go.
        mmu_store(12, 0, (14 << 12) | RW),
        mmu_record(1, 3, 12, 1, RW),
        mmu_record(1, 3, 13, 1, RW),
        mmu_record(1, 3, 0, 1, 0x200),
        mmu_record(1, 2, 12, 1, RW),
        mmu_record(1, 2, 13, 1, P),
        mmu_record(1, 1, 13, 1, P),
        mmu_record(1, 1, 12, 1, P),
        mmu_record(1, 1, 0, 1, 0x200),
        mmu_record(1, 2, 0, 1, 0x200),
    ]
    .concat();
    // update_va_mapping at 0xffffff00_00003000 (L4 510, L1 index 3) with
    // flags through a bitmap, an unpin of the loaded L4, a new base, a
    // user base, LDT and flushes.
    let uvm: Vec<u8> = [
        tree.clone(),
        mmu_record(4, 255, 6, 8 | 1, RW),
        mmu_record(4 | 0x80, 255, 7, 2, P),
        mmu_ext(4, 1),
        mmu_store(8, 0, 0),
        mmu_ext(15, 8),
        mmu_record(2, 13, 0, 1 | (2 << 1), 0x20),
        mmu_record(2, 9, 0, 1 | (1 << 1), 3),
        mmu_ext(5, 8),
        mmu_ext(16, 5),
        mmu_record(2, 17, 6, 0, 0),
    ]
    .concat();
    // A table that maps itself writable, a superpage, a reserved frame, a
    // batch and descriptor pages.
    let refusals: Vec<u8> = [
        mmu_store(9, 0, (9 << 12) | RW),
        mmu_ext(0, 9),
        mmu_store(10, 0, (11 << 12) | RW | 0x80),
        mmu_ext(1, 10),
        mmu_store(11, 0, (16 << 12) | P),
        mmu_ext(0, 11),
        mmu_ext(0, 12),
        mmu_record(6, 12, 0, 0, 0),
        mmu_record(6, 13, 0, 0, 0),
        mmu_record(1, 4, 13, 2, RW),
        mmu_record(5, 12, 0, 3, 0),
        mmu_record(5 | 0x40, 12, 3, 1, 0),
        mmu_record(7, 255, 6, 2 | 4, RW),
        mmu_record(6, 13, 0, 1, 0),
    ]
    .concat();
    let seeds = vec![tree, updates, uvm, [mmu_ext(0, 12), refusals].concat()];
    replay("pv_mmu", kxen_fuzz::pv_mmu, seeds);
}

// ---- pv_emulate ---------------------------------------------------------------

/// One pv_emulate input: flags, RIP, RAX, RCX, RDX, RBX, instruction bytes.
fn emulate_input(flags: u8, regs: [u64; 4], insn: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend(le64(0xffff_ffff_8000_1000));
    for r in regs {
        v.extend(le64(r));
    }
    v.extend(insn);
    v
}

#[test]
fn pv_emulate() {
    const KERNEL: u8 = 1 | 0x80;
    const UD: u8 = 2;
    let forced = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];
    let seeds = vec![
        emulate_input(KERNEL, [0, 0xc000_0100, 0, 0], &[0x0f, 0x32]),
        emulate_input(KERNEL, [0x1000, 0xc000_0100, 0, 0], &[0x0f, 0x30]),
        emulate_input(KERNEL, [0, 0, 0, 0x20_000], &[0x0f, 0x22, 0xdb]),
        emulate_input(KERNEL, [0, 0, 0, 0], &[0x41, 0x0f, 0x20, 0xd9]),
        emulate_input(KERNEL | (1 << 2), [0, 0, 0xcfc, 0], &[0x66, 0xed]),
        emulate_input(KERNEL, [0, 0, 0, 0], &[0x0f, 0x06]),
        emulate_input(KERNEL | UD, [0x4000_0000, 0, 0, 0], &forced),
        emulate_input(UD | 0x20, [1, 0, 0, 0], &forced),
        emulate_input(KERNEL, [1, 0, 0, 0], &[0x0f, 0xa2]),
    ];
    replay("pv_emulate", kxen_fuzz::pv_emulate, seeds);
}

// ---- pv_context, pv_ptwr ---------------------------------------------------------

#[test]
fn pv_context() {
    // A kernel-mode context (flags at 0 of the fuzzed bytes: VGCF_in_kernel),
    // RIP and RSP canonical, a #PF handler, CR3; and descriptors.
    let mut ctx = vec![0u8; 5168 - 512];
    ctx[0..8].copy_from_slice(&le64(4));
    ctx[8 + 128..8 + 136].copy_from_slice(&le64(0xffff_ffff_8100_0000));
    ctx[8 + 152..8 + 160].copy_from_slice(&le64(0xffff_ffff_8200_0000));
    let pf = 208 + 16 * 14;
    ctx[pf + 2..pf + 4].copy_from_slice(&0xe030u16.to_le_bytes());
    ctx[pf + 8..pf + 16].copy_from_slice(&le64(0xffff_ffff_8100_2000));
    let descriptors = [
        le64(0x00af_9b00_0000_ffff),
        le64(0x0000_8900_0000_0067),
        le64(0x0000_ec00_0033_0000 | (1 << 47)),
    ]
    .concat()
    .to_vec();
    let seeds = vec![ctx, descriptors];
    replay("pv_context", kxen_fuzz::pv_context, seeds);
}

#[test]
fn pv_saved_vcpu() {
    // A saved user-mode vCPU (online, not in kernel), RIP and RSP
    // canonical, a #PF handler, kernel and user L4s, one GDT frame; then
    // the extended record with a syscall32 callback.
    let mut basic = vec![0u8; 5168 - 512];
    basic[0..8].copy_from_slice(&le64(1 << 5));
    basic[8 + 128..8 + 136].copy_from_slice(&le64(0x40_1000));
    basic[8 + 152..8 + 160].copy_from_slice(&le64(0x7ffe_0000));
    let pf = 208 + 16 * 14;
    basic[pf + 2..pf + 4].copy_from_slice(&0xe033u16.to_le_bytes());
    basic[pf + 8..pf + 16].copy_from_slice(&le64(0xffff_ffff_8100_2000));
    basic[4320..4328].copy_from_slice(&le64(0x1234)); // gdt_frames[0]
    basic[4448..4456].copy_from_slice(&le64(16)); // gdt_ents
    basic[4480..4488].copy_from_slice(&le64(0x2001 << 12)); // ctrlreg[1]
    basic[4496..4504].copy_from_slice(&le64(0x2000 << 12)); // ctrlreg[3]
    let mut with_extended = basic.clone();
    let mut extended = vec![0u8; 40];
    extended[8..16].copy_from_slice(&le64(0xffff_ffff_8100_3000));
    extended[28] = 1;
    with_extended.extend(extended);
    replay(
        "pv_saved_vcpu",
        kxen_fuzz::pv_saved_vcpu,
        vec![basic, with_extended],
    );
}

/// One pv_ptwr input: old entry, entry offset, RAX, other registers, bytes.
fn ptwr_input(old: u64, offset: u16, rax: u64, other: u64, insn: &[u8]) -> Vec<u8> {
    let mut v = le64(old).to_vec();
    v.extend(offset.to_le_bytes());
    v.extend(le64(rax));
    v.extend(le64(other));
    v.extend(insn);
    v
}

#[test]
fn pv_ptwr() {
    let seeds = vec![
        ptwr_input(0, 8, 0, 0x67, &[0x48, 0x89, 0x2b]),
        ptwr_input(0x1111, 16, 0x1111, 0x67, &[0xf0, 0x48, 0x0f, 0xb1, 0x2b]),
        ptwr_input(0x63, 24, 0, 0, &[0xf0, 0x48, 0x0f, 0xba, 0x33, 0x05]),
        ptwr_input(0x63, 24, 0, 0, &[0x48, 0x87, 0x03]),
    ];
    replay("pv_ptwr", kxen_fuzz::pv_ptwr, seeds);
}

// ---- bzimage ----------------------------------------------------------------

/// A bzImage: boot sector, 4 setup sectors, then `payload` at
/// payload_offset 0x100 of the protected-mode part, with the build's size
/// trailer.
fn bzimage_input(payload: &[u8], uncompressed: usize) -> Vec<u8> {
    let mut payload = payload.to_vec();
    payload.extend(le32(uncompressed as u32));
    let mut image = vec![0u8; 5 * 512 + 0x100];
    image[0x1f1] = 4;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&le16(0x020f));
    image[0x248..0x24c].copy_from_slice(&le32(0x100));
    image[0x24c..0x250].copy_from_slice(&le32(payload.len() as u32));
    image.extend(payload);
    image
}

/// The loader's xz fixture: a small ELF compressed with the kernel
/// build's filter chain (x86 BCJ, LZMA2, CRC32).
const SAMPLE_ELF_XZ: &str =
    include_str!("../../hypervisor/loader/src/pv/testdata/sample_elf.xz.hex");

#[test]
fn bzimage() {
    use std::io::Write;
    let elf = pv_kernel_image(&linux_pv_notes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&elf).unwrap();
    let gzip = gz.finish().unwrap();
    let zstd =
        ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest);
    let mut lz4 = le32(0x184c_2102).to_vec();
    for block in elf.chunks(512) {
        let c = lz4_flex::block::compress(block);
        lz4.extend(le32(c.len() as u32));
        lz4.extend(c);
    }
    let hex: String = SAMPLE_ELF_XZ.split_whitespace().collect();
    let xz: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for payload in [&gzip, &zstd, &lz4] {
        let image = bzimage_input(payload, elf.len());
        assert_eq!(&kxen_loader::pv::extract_elf(&image).unwrap()[..], &elf[..]);
    }
    let seeds = vec![
        bzimage_input(&elf, elf.len()),
        bzimage_input(&gzip, elf.len()),
        bzimage_input(&zstd, elf.len()),
        bzimage_input(&lz4, elf.len()),
        bzimage_input(&xz, 3248),
        gzip,
        xz,
    ];
    replay("bzimage", kxen_fuzz::bzimage, seeds);
}

// ---- migration_stream -------------------------------------------------------

/// A one-vCPU HVM context: HEADER, CPU (zeroed), LAPIC, PIT, RTC, END.
fn hvm_context_blob() -> Vec<u8> {
    use xen_abi::hvm_save as save;
    let mut builder = kxen_stream::hvm_context::HvmContextBuilder::new(&save::SaveHeader {
        magic: save::HVM_FILE_MAGIC,
        version: save::HVM_FILE_VERSION,
        changeset: 0,
        cpuid: 0x000a_06a4,
        gtsc_khz: 2_000_000,
    });
    builder
        .push_bytes(save::HVM_SAVE_CODE_CPU, 0, &[0; 1032])
        .unwrap()
        .push(save::HVM_SAVE_CODE_LAPIC, 0, &save::HwLapic::default())
        .push(save::HVM_SAVE_CODE_PIT, 0, &save::HwPit::default())
        .push(save::HVM_SAVE_CODE_RTC, 0, &save::HwRtc::default());
    builder.finish()
}

/// The records of a small HVM save, written into `libxc`: STATIC_DATA_END,
/// two PAGE_DATA records (contents, XTAB, a pinned table), TSC info,
/// params and context.
fn hvm_libxc_records<W: std::io::Write>(libxc: &mut kxen_stream::libxc::LibxcWriter<W>) {
    use kxen_stream::libxc::{HvmParamEntry, Page, PageType, TscInfo};
    let contents = [0x5au8; kxen_stream::PAGE_SIZE];
    libxc.write_static_data_end().unwrap();
    libxc
        .write_pages(&[
            Page {
                pfn: 1,
                page_type: PageType::NoTab,
                contents: Some(&contents),
            },
            Page {
                pfn: 2,
                page_type: PageType::XTab,
                contents: None,
            },
        ])
        .unwrap();
    libxc
        .write_pages(&[Page {
            pfn: 0xfeffc,
            page_type: PageType::L1TabPinned,
            contents: Some(&contents),
        }])
        .unwrap();
    libxc
        .write_tsc_info(&TscInfo {
            mode: 0,
            khz: 2_000_000,
            nsec: 1,
            incarnation: 0,
        })
        .unwrap();
    libxc
        .write_hvm_params(&[HvmParamEntry {
            index: 1,
            value: 0xfeffc,
        }])
        .unwrap();
    libxc.write_hvm_context(&hvm_context_blob()).unwrap();
}

#[test]
fn migration_stream() {
    use kxen_stream::libxc::{CpuidLeaf, DomainHeader, GuestType, LibxcWriter, MsrEntry};
    use kxen_stream::libxl::{EmulatorId, LibxlWriter};
    let domain = DomainHeader {
        guest_type: GuestType::X86Hvm,
        xen_major: 4,
        xen_minor: 17,
    };

    // A libxl image as kxl save writes it.
    let libxl = LibxlWriter::new(Vec::new()).unwrap();
    let mut libxc = libxl.begin_libxc(&domain).unwrap();
    hvm_libxc_records(&mut libxc);
    let mut libxl = libxc.finish_into_libxl().unwrap();
    libxl
        .write_emulator_xenstore_data(EmulatorId::QEMU_UPSTREAM, 0, &[("state", "running")])
        .unwrap();
    libxl
        .write_emulator_context(EmulatorId::UNKNOWN, 0, b"kxen")
        .unwrap();
    let image = libxl.finish().unwrap();

    // A checkpointed stream: libxc CHECKPOINT, libxl's checkpoint
    // records, CHECKPOINT_END, more libxc, END.
    let libxl = LibxlWriter::new(Vec::new()).unwrap();
    let mut libxc = libxl.begin_libxc(&domain).unwrap();
    hvm_libxc_records(&mut libxc);
    let mut libxl = libxc.checkpoint_into_libxl().unwrap();
    libxl.write_checkpoint_state(2).unwrap();
    libxl.write_checkpoint_end().unwrap();
    let mut libxc = libxl.resume_libxc().unwrap();
    libxc.write_checkpoint_dirty_pfn_list(&[1, 2]).unwrap();
    let checkpointed = libxc.finish_into_libxl().unwrap().finish().unwrap();

    // A libxc stream of its own, with the static and PV records.
    let mut libxc = LibxcWriter::new(
        Vec::new(),
        &DomainHeader {
            guest_type: GuestType::X86Pv,
            ..domain
        },
    )
    .unwrap();
    libxc
        .write_x86_cpuid_policy(&[CpuidLeaf::default()])
        .unwrap();
    libxc.write_x86_msr_policy(&[MsrEntry::default()]).unwrap();
    libxc
        .write_x86_pv_info(&kxen_stream::libxc::X86PvInfo {
            guest_width: 8,
            pt_levels: 4,
        })
        .unwrap();
    libxc.write_static_data_end().unwrap();
    libxc.write_x86_pv_p2m_frames(0, 511, &[3]).unwrap();
    libxc
        .write_x86_pv_vcpu(kxen_stream::libxc::PvVcpuKind::Basic, 0, &[1; 13])
        .unwrap();
    libxc.write_record(0x8000_0001, b"optional").unwrap();
    libxc.write_checkpoint().unwrap();
    libxc.write_verify().unwrap();
    let standalone = libxc.finish().unwrap();

    let seeds = vec![image, checkpointed, standalone, hvm_context_blob()];
    replay("migration_stream", kxen_fuzz::migration_stream, seeds);
}

// ---- vmm_image ----------------------------------------------------------------

#[test]
fn vmm_image() {
    use kxen_vmm_api::image::{encode, PvVcpuRecords, TscInfo, VmmImage};
    let full = VmmImage {
        hvm_context: hvm_context_blob(),
        hvm_params: vec![(1, 2), (3, 0x1234_5678_9abc)],
        tsc: TscInfo {
            mode: 0,
            khz: 2_000_000,
            nsec: 123_456_789,
            incarnation: 0,
        },
        xen_state: b"KXENXST\0 state".to_vec(),
        ..VmmImage::default()
    };
    let odd_lengths = VmmImage {
        hvm_context: vec![7; 5],
        hvm_params: vec![],
        xen_state: vec![1; 13],
        ..full.clone()
    };
    // A classic PV domain's, with its vCPU records and page types.
    let pv = VmmImage {
        pv_vcpus: vec![PvVcpuRecords {
            vcpu: 0,
            basic: vec![3; 21],
            extended: vec![4; 40],
        }],
        pv_page_types: vec![0x42 | 0xc << 60],
        ..full.clone()
    };
    let seeds = vec![encode(&full), encode(&odd_lengths), encode(&pv)];
    replay("vmm_image", kxen_fuzz::vmm_image, seeds);
}

// ---- xl_savefile --------------------------------------------------------------

#[test]
fn xl_savefile() {
    use kxen_stream::libxc::{DomainHeader, GuestType};
    use kxen_stream::libxl::{EmulatorId, LibxlWriter};
    let config = kxen_toolstack::config::parse_str(
        "name=\"guest\"\ntype=\"pvh\"\nmemory=64\nvcpus=1\nkernel=\"/k\"\n\
         disk=[\"/d.img,raw,xvda,rw\"]\non_crash=\"preserve\"\n",
        "guest.cfg",
    )
    .unwrap()
    .0;
    let mut with_stream = Vec::new();
    kxen_toolstack::savefile::write_header(&mut with_stream, &config).unwrap();
    let header_only = with_stream.clone();
    let libxl = LibxlWriter::new(Vec::new()).unwrap();
    let mut libxc = libxl
        .begin_libxc(&DomainHeader {
            guest_type: GuestType::X86Hvm,
            xen_major: 4,
            xen_minor: 17,
        })
        .unwrap();
    hvm_libxc_records(&mut libxc);
    let mut libxl = libxc.finish_into_libxl().unwrap();
    libxl
        .write_emulator_context(EmulatorId::UNKNOWN, 0, b"kxen")
        .unwrap();
    with_stream.extend(libxl.finish().unwrap());
    let seeds = vec![with_stream, header_only];
    replay("xl_savefile", kxen_fuzz::xl_savefile, seeds);
}

// ---- xen_snapshot -------------------------------------------------------------

/// A harness domain's Xen state after a few hypercalls that leave state
/// behind (event channels of each kind, a timer, a placed grant frame),
/// as the VMM frames it, followed by `calls`.
fn xen_state_seed(calls: &[Vec<u8>]) -> Vec<u8> {
    xen_state_seed_with(calls, false)
}

/// [`xen_state_seed`], on FIFO event channels when `fifo` (vCPU 0's
/// control block at GFN 0x10, an event array page at 0x20, an event left
/// queued).
fn xen_state_seed_with(calls: &[Vec<u8>], fifo: bool) -> Vec<u8> {
    use kxen_xen::harness;
    let (domain, _) = harness::domain();
    if fifo {
        // EVTCHNOP_init_control {control_gfn, offset, vcpu, link_bits}.
        let mut init = le64(0x10).to_vec();
        init.extend([0u8; 16]);
        assert!(harness::write_guest(&domain, 0x1000, &init));
        assert_eq!(harness::hypercall(&domain, 32, [11, 0x1000, 0, 0, 0]), 0);
        // EVTCHNOP_expand_array {array_gfn}.
        assert!(harness::write_guest(&domain, 0x1000, &le64(0x20)));
        assert_eq!(harness::hypercall(&domain, 32, [12, 0x1000, 0, 0, 0]), 0);
    }
    // EVTCHNOP_alloc_unbound {dom, remote_dom, port}: a loopback channel.
    let mut alloc = le16(DOMID_SELF).to_vec();
    alloc.extend(le16(DOMID_SELF));
    alloc.extend(le32(0));
    assert!(harness::write_guest(&domain, 0x1000, &alloc));
    assert_eq!(harness::hypercall(&domain, 32, [6, 0x1000, 0, 0, 0]), 0);
    // EVTCHNOP_bind_ipi {vcpu, port} and bind_virq {virq, vcpu, port}.
    assert!(harness::write_guest(&domain, 0x2000, &[0; 8]));
    assert_eq!(harness::hypercall(&domain, 32, [7, 0x2000, 0, 0, 0]), 0);
    assert!(harness::write_guest(&domain, 0x3000, &[0; 12]));
    assert_eq!(harness::hypercall(&domain, 32, [1, 0x3000, 0, 0, 0]), 0);
    // set_timer_op (a one-shot deadline) and a grant frame in RAM.
    harness::hypercall(&domain, 15, [1 << 40, 0, 0, 0, 0]);
    assert_eq!(harness::place_grant_frame(&domain, 0x800), 0);
    let snap = domain.snapshot().unwrap();
    let mut section = kxen_vmm::state::encode_xen_state(&snap).unwrap();
    section.extend(calls.concat());
    section
}

#[test]
fn xen_snapshot() {
    let calls = [
        hypercall(32, 0, [4, 0x2000, 0, 0, 0]),
        hypercall(32, 1, [3, 0x1000, 0, 0, 0]),
        hypercall(20, 0, [6, 0x3000, 1, 0, 0]),
    ];
    let seeds = vec![
        xen_state_seed(&[]),
        xen_state_seed(&calls),
        xen_state_seed_with(&calls, true),
    ];
    replay("xen_snapshot", kxen_fuzz::xen_snapshot, seeds);
}

// ---- device_state -------------------------------------------------------------

/// The device-state section of an HVM domain whose drivers have set up
/// the UART, the PCI platform device and a running virtio-blk device.
fn device_state_seed(running: bool) -> Vec<u8> {
    use kxen_devices::virtio_mmio::{reg, status, DeviceType, VirtioInterrupt, VirtioMmio};
    use kxen_devices::BusDevice;
    use std::sync::Arc;

    let irq = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let mut uart = kxen_devices::serial::Uart::new(irq, Box::new(std::io::sink()));
    uart.write(1, &[0x0f]);
    uart.enqueue_input(b"echo hi\r");
    let mut pci = kxen_devices::pci::PciBus::new();
    pci.add(2, kxen_devices::xen_platform::platform_function());
    pci.write(0, &(0x8000_1004u32).to_le_bytes());
    pci.write(4, &7u32.to_le_bytes());
    let mut dev = VirtioMmio::new(DeviceType::Blk, Arc::new(VirtioInterrupt::new(|| {})));
    struct Nop;
    impl kxen_devices::virtio_mmio::VirtioBackend for Nop {
        fn activate(
            &mut self,
            _: u64,
            _: &[kxen_devices::virtio_mmio::QueueConfig],
        ) -> Result<(), kxen_devices::virtio_mmio::BackendError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn notify(&mut self, _: u16) {}
    }
    dev.attach(Box::new(Nop), 1 << 6, &[0; 8], 1).unwrap();
    let w = |dev: &mut VirtioMmio, o: u64, v: u32| {
        dev.write(o, &v.to_le_bytes());
    };
    if running {
        w(&mut dev, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut dev, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut dev, reg::DRIVER_FEATURES, 1);
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut dev, reg::STATUS, ok);
        w(&mut dev, reg::QUEUE_NUM, 128);
        w(&mut dev, reg::QUEUE_DESC_LOW, 0x10_0000);
        w(&mut dev, reg::QUEUE_DRIVER_LOW, 0x10_1000);
        w(&mut dev, reg::QUEUE_DEVICE_LOW, 0x10_2000);
        w(&mut dev, reg::QUEUE_READY, 1);
        w(&mut dev, reg::STATUS, ok | status::DRIVER_OK);
    }
    let mut virtio = dev.save_state();
    if running {
        virtio.queues[0].indices.next_avail = 0xfffe;
        virtio.queues[0].indices.next_used = 0xfffe;
    }
    kxen_devices::state::encode(&kxen_devices::state::DeviceState {
        uart: Some(uart.save_state()),
        i8042: Some(kxen_devices::i8042::I8042::new(None).save_state()),
        acpi_pm: Some(kxen_devices::acpi_pm::AcpiPm::new().save_state()),
        pci: Some(pci.save_state()),
        virtio: vec![(0, virtio)],
        syscall_bridge: Some(kxen_devices::state::BridgeBreakpoint {
            handler: 0xffff_ffff_81c0_1230,
            gpa: 0x01c0_1230,
            original: 0xf3,
        }),
    })
}

#[test]
fn device_state() {
    let seeds = vec![
        device_state_seed(true),
        device_state_seed(false),
        kxen_devices::state::encode(&Default::default()),
    ];
    replay("device_state", kxen_fuzz::device_state, seeds);
}

// ---- bootloader_simple0 -----------------------------------------------------

#[test]
fn bootloader_simple0() {
    let pygrub = b"kernel /var/lib/kxen/bootloader/boot.Ab12Cd/files/boot_kernel.x1y2z3\0\
ramdisk /var/lib/kxen/bootloader/boot.Ab12Cd/files/boot_ramdisk.q9w8e7\0\
args root=/dev/xvda ro console=hvc0 quiet\0\0"
        .to_vec();
    let kernel_only = b"kernel /k".to_vec();
    let with_junk = b"junk\0kernel\t /a\0kernelX /b\0args \0\0\0ramdisk  /r\0".to_vec();
    let mut long_item = b"kernel /k\0args ".to_vec();
    long_item.extend(std::iter::repeat_n(b'a', 8200));
    long_item.push(0);
    replay(
        "bootloader_simple0",
        kxen_fuzz::bootloader_simple0,
        vec![pygrub, kernel_only, with_junk, long_item],
    );
}

// ---- xenstore_image -----------------------------------------------------------

#[test]
fn xenstore_image() {
    use kxen_xenstore::image::{DomainImage, ImageNode, ImageWatch, RingImage};
    use kxen_xenstore::{Access, Perm, Perms};
    let full = DomainImage {
        domid: 3,
        nodes: vec![
            ImageNode {
                path: "data".into(),
                perms: Perms::owner(3, Access::None),
                value: vec![],
            },
            ImageNode {
                path: "data/kept".into(),
                perms: Perms::new(vec![Perm::new(3, Access::None), Perm::new(0, Access::Read)])
                    .unwrap(),
                value: b"value\0with a NUL".to_vec(),
            },
        ],
        watches: vec![
            ImageWatch {
                path: b"control/shutdown".to_vec(),
                token: b"tok".to_vec(),
            },
            ImageWatch {
                path: b"/local/domain/3/data".to_vec(),
                token: b"abs".to_vec(),
            },
            ImageWatch {
                path: b"@releaseDomain".to_vec(),
                token: b"special".to_vec(),
            },
        ],
        ring: None,
    };
    // A domain saved mid-exchange: a half-taken request, queued output
    // and an open transaction.
    let mut partial = vec![11, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0];
    partial.extend_from_slice(b"data/x\0");
    let in_flight = DomainImage {
        ring: Some(RingImage {
            req_cons: 100,
            req_prod: 120,
            rsp_cons: u32::MAX - 10,
            rsp_prod: 1013,
            partial_request: partial,
            pending_output: vec![7; 300],
            transactions: vec![1, 2],
        }),
        ..full.clone()
    };
    let seeds = vec![
        full.encode(),
        in_flight.encode(),
        DomainImage::default().encode(),
    ];
    replay("xenstore_image", kxen_fuzz::xenstore_image, seeds);
}
