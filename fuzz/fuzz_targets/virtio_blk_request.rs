//! A hostile virtio-blk driver: guest RAM (descriptor table, avail ring,
//! indirect tables, request headers) straight from the fuzz input, each
//! available chain checked and decoded as kxend's virtio-blk does before
//! touching the disk.
#![no_main]

use kxen_virtio_backend::blk::{self, BlkOp, DiskGeometry, HEADER_LEN, SECTOR};
use kxen_virtio_backend::chain::{self, total};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const LOW: usize = 0x2000;
const HIGH: u64 = 0x10_0000;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH), 0x1000)])
            .unwrap();
    let (low, high) = data.split_at(data.len().min(LOW));
    mem.write_slice(low, GuestAddress(0)).unwrap();
    mem.write_slice(&high[..high.len().min(0x1000)], GuestAddress(HIGH))
        .unwrap();
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    let geo = DiskGeometry {
        sectors: 2048,
        readonly: flags & 2 != 0,
        discard: flags & 4 != 0,
    };
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
});
