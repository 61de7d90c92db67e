//! GNTTABOP_copy with fuzzer-chosen grant entries and ops, over a v1 table
//! and over a v2 table: never panics, and every busy bit the copy sets is
//! cleared again (in v2, in the status words, never in the entries).

use std::sync::OnceLock;

use kxen_xen::harness::{self, read_guest, write_guest};
use kxen_xen::hypercall::Call;

/// Grant frame 0 lives at this RAM frame.
const TABLE_GFN: u64 = 0x100;
/// The ops array.
const OPS: u64 = 0x20_0000;
/// Entries the fuzzer fills (the rest of the frame stays invalid).
const ENTRIES: usize = 64;
const BUSY: u16 = (1 << 3) | (1 << 4);
/// Hypercall and sub-op numbers (the fuzz crate does not link xen-abi).
const GRANT_TABLE_OP: u64 = 20;
const GNTTABOP_COPY: u64 = 5;
const GNTTABOP_SET_VERSION: u64 = 8;
/// Bytes of one v2 entry.
const V2_SIZE: usize = 16;
/// Where the harness places status frame 0 of a v2 table (the default
/// window after the 64 grant frames').
const STATUS_GFN: u64 = harness::DEFAULT_GRANT_GFN + 64;
/// Bytes of one `gnttab_copy` op, and where its status is.
const OP_SIZE: u64 = 40;
const STATUS_OFFSET: u64 = 36;

/// One fuzz input; panics on any broken invariant. True when the input
/// had at least one copy succeed.
pub fn gnttab_copy(data: &[u8]) -> bool {
    static DOMAIN: OnceLock<kxen_xen::Domain> = OnceLock::new();
    let domain = DOMAIN.get_or_init(|| {
        let d = harness::domain().0;
        assert_eq!(harness::place_grant_frame(&d, TABLE_GFN), 0);
        d
    });
    if data.len() < ENTRIES * 8 + 1 {
        return false;
    }
    let (entries, rest) = data.split_at(ENTRIES * 8);
    let mut table = [0u8; ENTRIES * 8];
    table.copy_from_slice(entries);
    // Entries point at small frames, mostly inside RAM.
    for e in table.chunks_mut(8) {
        e[6] = 0;
        e[7] = 0;
        e[5] &= 0x0f;
    }
    write_guest(domain, TABLE_GFN << 12, &table);
    let count = rest[0] as u64 % 16;
    let ops = &rest[1..];
    write_guest(domain, OPS, &ops[..ops.len().min(16 * 40)]);
    let busy_before: Vec<u16> = table
        .chunks(8)
        .map(|e| u16::from_le_bytes([e[0], e[1]]) & BUSY)
        .collect();
    domain.hypercall(
        0,
        &kxen_xen::guest::IdentityMmu,
        Call::native(GRANT_TABLE_OP, [GNTTABOP_COPY, OPS, count, 0, 0]),
    );
    let mut after = [0u8; ENTRIES * 8];
    assert!(read_guest(domain, TABLE_GFN << 12, &mut after));
    for (i, e) in after.chunks(8).enumerate() {
        let busy = u16::from_le_bytes([e[0], e[1]]) & BUSY;
        assert_eq!(busy, busy_before[i], "entry {i} left busy");
    }
    (0..count).any(|i| {
        let mut status = [0xffu8; 2];
        read_guest(domain, OPS + i * OP_SIZE + STATUS_OFFSET, &mut status)
            && i16::from_le_bytes(status) == 0
    })
}

/// The v2 variant: 64 v2 entries (16 bytes each, frames kept small), then
/// 64 status words, then the op count and the ops.
pub fn gnttab_copy_v2(data: &[u8]) -> bool {
    static DOMAIN: OnceLock<kxen_xen::Domain> = OnceLock::new();
    let domain = DOMAIN.get_or_init(|| {
        let d = harness::domain().0;
        assert_eq!(harness::place_grant_frame(&d, TABLE_GFN), 0);
        write_guest(&d, OPS, &2u32.to_le_bytes());
        let rc = harness::hypercall(&d, GRANT_TABLE_OP, [GNTTABOP_SET_VERSION, OPS, 1, 0, 0]);
        assert_eq!(rc, 0, "set_version(2)");
        d
    });
    if data.len() < ENTRIES * (V2_SIZE + 2) + 1 {
        return false;
    }
    let (entries, rest) = data.split_at(ENTRIES * V2_SIZE);
    let (status, rest) = rest.split_at(ENTRIES * 2);
    let mut table = [0u8; ENTRIES * V2_SIZE];
    table.copy_from_slice(entries);
    // Frames mostly inside RAM, now and then far beyond it.
    for e in table.chunks_mut(V2_SIZE) {
        if e[15] & 0x80 == 0 {
            e[10..16].fill(0);
            e[9] &= 0x0f;
        }
    }
    write_guest(domain, TABLE_GFN << 12, &table);
    write_guest(domain, STATUS_GFN << 12, status);
    let count = rest[0] as u64 % 16;
    let ops = &rest[1..];
    write_guest(domain, OPS, &ops[..ops.len().min(16 * 40)]);
    domain.hypercall(
        0,
        &kxen_xen::guest::IdentityMmu,
        Call::native(GRANT_TABLE_OP, [GNTTABOP_COPY, OPS, count, 0, 0]),
    );
    let mut after = [0u8; ENTRIES * V2_SIZE];
    assert!(read_guest(domain, TABLE_GFN << 12, &mut after));
    assert_eq!(after, table, "a v2 copy wrote a grant entry");
    let mut status_after = [0u8; ENTRIES * 2];
    assert!(read_guest(domain, STATUS_GFN << 12, &mut status_after));
    assert_eq!(
        &status_after[..],
        status,
        "a v2 copy left a status word changed"
    );
    (0..count).any(|i| {
        let mut st = [0xffu8; 2];
        read_guest(domain, OPS + i * OP_SIZE + STATUS_OFFSET, &mut st)
            && i16::from_le_bytes(st) == 0
    })
}
