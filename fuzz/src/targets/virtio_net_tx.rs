//! A hostile virtio-net driver's transmit queue: guest RAM (descriptor
//! table, avail ring, indirect tables, frames) straight from the fuzz
//! input, each available chain checked and split into header and frame as
//! kxend's virtio-net does before writing to the TAP.

use kxen_virtio_backend::chain::{self, iovecs, total};
use kxen_virtio_backend::net::{parse_tx, HDR_LEN, MAX_FRAME};
use virtio_queue::QueueT;

/// One fuzz input; panics on any broken invariant. True when the input
/// held at least one frame the device would send.
pub fn virtio_net_tx(data: &[u8]) -> bool {
    let Some((_, mem, mut q)) = crate::virtio_queue(data) else {
        return false;
    };
    let mut frames = 0;
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
            frames += 1;
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
    frames > 0
}
