//! The xenstore daemon's wire handling: arbitrary bytes from socket-style
//! clients (privileged and unprivileged) and from a hostile guest's ring
//! page, including the guest scribbling over the ring indices. The daemon
//! must never panic or hang, must only ever emit well-formed messages, and
//! must keep its store consistent.

use std::sync::Arc;

use kxen_xenstore::harness::Harness;
use kxen_xenstore::wire::{message, Header, HEADER_LEN, PAYLOAD_MAX};
use kxen_xenstore::{HeapPage, Quotas, SharedPage};

const GUEST: u32 = 7;
/// Message types (the fuzz crate does not link xen-abi).
const XS_ERROR: u32 = 16;
const XS_WATCH_EVENT: u32 = 15;
const RING_FIELDS: [usize; 7] = [0x800, 0x804, 0x808, 0x80c, 0x810, 0x814, 0x818];

/// Every byte a client received must be a sequence of complete, bounded
/// messages (a stream may end mid-message only if more is to come, which
/// the harness never does: replies are queued whole). Returns how many
/// were neither errors nor watch events.
fn check_stream(out: &[u8]) -> usize {
    let mut replies = 0;
    let mut b = out;
    while !b.is_empty() {
        assert!(b.len() >= HEADER_LEN, "partial header in output");
        let h = Header::parse(b);
        assert!(h.len as usize <= PAYLOAD_MAX, "oversized reply");
        let end = HEADER_LEN + h.len as usize;
        assert!(b.len() >= end, "partial payload in output");
        if h.kind != XS_ERROR && h.kind != XS_WATCH_EVENT {
            replies += 1;
        }
        b = &b[end..];
    }
    replies
}

fn guest_send(page: &HeapPage, data: &[u8]) {
    let prod = page.load_u32(0x804);
    for (i, &c) in data.iter().enumerate() {
        page.write((prod as usize + i) % 1024, &[c]);
    }
    page.store_u32(0x804, prod.wrapping_add(data.len() as u32));
}

/// One fuzz input; panics on any broken invariant. True when the input
/// got at least one successful reply to a client's request.
pub fn xenstore_wire(data: &[u8]) -> bool {
    let mut h = Harness::new(Quotas {
        nodes_per_domain: 20,
        watches_per_domain: 4,
        transactions_per_domain: 2,
        transaction_nodes: 16,
        memory: 8192,
        ..Quotas::default()
    });
    let conns = [h.connect(0), h.connect(0), h.connect(5), h.connect(GUEST)];
    // Give the domains homes they own.
    for d in [5u32, GUEST] {
        let home = format!("/local/domain/{d}\0");
        h.feed(conns[0], &message(12, 1, 0, home.as_bytes()));
        h.feed(
            conns[0],
            &message(14, 2, 0, format!("{home}n{d}\0").as_bytes()),
        );
    }
    check_stream(&h.output(conns[0]));
    let mut replies = 0;
    let page = Arc::new(HeapPage::new());
    h.introduce(GUEST, page.clone(), Box::new(|| {}));

    let mut d = data;
    let mut take = |n: usize| -> &[u8] {
        let n = n.min(d.len());
        let (a, b) = d.split_at(n);
        d = b;
        a
    };
    let mut steps = 0;
    while let [op] = take(1) {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op % 10 {
            0..=3 => {
                let c = conns[(op % 4) as usize];
                let len = take(1).first().copied().unwrap_or(0) as usize * 8;
                let chunk = take(len).to_vec();
                h.feed(c, &chunk);
                replies += check_stream(&h.output(c));
            }
            4 => {
                let len = take(1).first().copied().unwrap_or(0) as usize * 4;
                let chunk = take(len).to_vec();
                guest_send(&page, &chunk);
            }
            5 => {
                let field =
                    RING_FIELDS[take(1).first().copied().unwrap_or(0) as usize % RING_FIELDS.len()];
                let v = take(4);
                let mut w = [0u8; 4];
                w[..v.len()].copy_from_slice(v);
                page.store_u32(field, u32::from_le_bytes(w));
            }
            6 => {
                h.kick(GUEST);
            }
            7 => {
                let prod = page.load_u32(0x80c);
                page.store_u32(0x808, prod);
                h.kick(GUEST);
            }
            8 => {
                let _ = h.release(GUEST);
                h.introduce(GUEST, page.clone(), Box::new(|| {}));
            }
            _ => h.expire(std::time::Instant::now() + std::time::Duration::from_secs(3600)),
        }
    }
    for c in conns {
        replies += check_stream(&h.output(c));
    }
    assert_eq!(h.check(), 0, "store inconsistent");
    replies > 0
}
