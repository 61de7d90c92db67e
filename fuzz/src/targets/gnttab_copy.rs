//! GNTTABOP_copy with fuzzer-chosen grant entries and ops: never panics,
//! and every busy bit the copy sets is cleared again.

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
        Call {
            nr: GRANT_TABLE_OP,
            args: [GNTTABOP_COPY, OPS, count, 0, 0],
        },
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
