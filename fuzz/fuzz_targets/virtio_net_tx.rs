//! A hostile virtio-net driver's transmit queue: guest RAM (descriptor
//! table, avail ring, indirect tables, frames) straight from the fuzz
//! input, each available chain checked and split into header and frame as
//! kxend's virtio-net does before writing to the TAP.
#![no_main]

use kxen_virtio_backend::chain::{self, iovecs, total};
use kxen_virtio_backend::net::{parse_tx, HDR_LEN, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    for _ in 0..32 {
        let c = match chain::pop(&mut q, &mem) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => break,
        };
        let Ok(parsed) = parse_tx(&c) else {
            continue;
        };
        assert!(c.descs.iter().all(|d| !d.write));
        if let Ok(pkt) = parsed {
            assert_eq!(total(&pkt.frame), pkt.len);
            assert_eq!(pkt.len + HDR_LEN as u64, total(&c.readable()));
            assert!(pkt.len > 0 && pkt.len <= MAX_FRAME as u64);
            let iov = iovecs(&mem, &pkt.frame).expect("checked chain");
            assert_eq!(iov.iter().map(|v| v.iov_len as u64).sum::<u64>(), pkt.len);
        }
        if q.add_used(&mem, c.head, 0).is_err() {
            break;
        }
    }
});
