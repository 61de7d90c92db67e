//! A hostile virtio-net driver's transmit queue: guest RAM (descriptor
//! table, avail ring, indirect tables, frames) straight from the fuzz
//! input, each available chain checked and split into header and frame as
//! kxend's virtio-net does before writing to the TAP.
#![no_main]

use kxen_virtio_backend::chain::{self, iovecs, total};
use kxen_virtio_backend::net::{parse_tx, HDR_LEN, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;

fuzz_target!(|data: &[u8]| {
    let Some((_, mem, mut q)) = kxen_fuzz::virtio_queue(data) else {
        return;
    };
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
