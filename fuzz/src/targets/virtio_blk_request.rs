//! A hostile virtio-blk driver: guest RAM (descriptor table, avail ring,
//! indirect tables, request headers) straight from the fuzz input, each
//! available chain checked and decoded as kxend's virtio-blk does before
//! touching the disk.

use kxen_virtio_backend::blk::{self, BlkOp, DiskGeometry, HEADER_LEN, SECTOR};
use kxen_virtio_backend::chain::{self, total};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// One fuzz input; panics on any broken invariant. True when the input
/// held at least one request the device would act on.
pub fn virtio_blk_request(data: &[u8]) -> bool {
    let Some((flags, mem, mut q)) = crate::virtio_queue(data) else {
        return false;
    };
    let geo = DiskGeometry {
        sectors: 2048,
        readonly: flags & 2 != 0,
        discard: flags & 4 != 0,
    };
    let mut parsed = 0;
    for _ in 0..32 {
        let c = match chain::pop(&mut q, &mem) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => break,
        };
        assert!(!c.descs.is_empty() && c.descs.len() <= chain::MAX_CHAIN);
        for d in &c.descs {
            assert!(mem.check_range(GuestAddress(d.addr), d.len as usize));
        }
        let Ok((layout, op)) = blk::parse(&mem, &geo, &c) else {
            continue;
        };
        parsed += 1;
        assert_eq!(total(&layout.header), HEADER_LEN);
        assert!(mem.check_range(GuestAddress(layout.status), 1));
        match op {
            BlkOp::Read { offset, data } | BlkOp::Write { offset, data } => {
                assert!(offset + total(&data) <= geo.sectors * SECTOR);
                assert_eq!(total(&data) % SECTOR, 0);
            }
            BlkOp::Discard(ranges) => {
                assert!(!geo.readonly && geo.discard);
                for (off, len) in ranges {
                    assert!(off + len <= geo.sectors * SECTOR);
                }
            }
            BlkOp::Flush | BlkOp::GetId { .. } | BlkOp::Fail(_) => {}
        }
        if q.add_used(&mem, c.head, 1).is_err() {
            break;
        }
    }
    parsed > 0
}
