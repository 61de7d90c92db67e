//! A hostile netfront's TX ring: arbitrary ring entries parsed packet by
//! packet as netback's engine consumes them, then the packet bytes given
//! the offload treatment (header walk, checksum arithmetic).

use kxen_netback::offload::{complete_csum, parse_headers};
use kxen_netback::queue::tx_offload_header;
use kxen_netback::tx::{parse_tx_packet, TxEntry, TxParse, MAX_SLOTS};

/// One fuzz input; panics on any broken invariant. True when the input
/// held at least one well-formed packet.
pub fn netif_tx(data: &[u8]) -> bool {
    let (ring, frame) = data.split_at(data.len().min(12 * 64));
    let entries: Vec<TxEntry> = ring
        .chunks_exact(12)
        .map(|c| c.try_into().unwrap())
        .collect();
    let mut at = 0;
    let mut packets = 0;
    while at < entries.len() {
        let consumed = match parse_tx_packet(&entries[at..]) {
            TxParse::Incomplete => break,
            TxParse::Bad(_, ids) => ids.len(),
            TxParse::Packet(p, ids) => {
                packets += 1;
                assert!(p.slots.len() <= MAX_SLOTS);
                let total: usize = p.slots.iter().map(|s| s.len as usize).sum();
                if !p.mcast_only {
                    assert_eq!(total, p.len as usize);
                }
                for s in &p.slots {
                    assert!(s.offset as usize + s.len as usize <= 4096);
                }
                let mut bytes = frame.to_vec();
                bytes.resize(p.len as usize, 0);
                if let Some(h) = tx_offload_header(&p, &mut bytes) {
                    if h.flags != 0 && h.csum_start != 0 {
                        assert!((h.csum_start as usize) < bytes.len());
                    }
                }
                ids.len()
            }
        };
        assert!(consumed >= 1 && consumed <= entries.len() - at);
        at += consumed;
    }
    if let Some(h) = parse_headers(frame) {
        assert!(h.total_len() <= frame.len());
        let mut f = frame.to_vec();
        assert!(complete_csum(&mut f, h.l4, h.proto.csum_offset(), false));
    }
    packets > 0
}
