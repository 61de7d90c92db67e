//! The guest's TX ring entries, parsed into packets: a pure function from
//! ring bytes to a typed packet (or to the reason it is refused), so it can
//! be tested and fuzzed without guest memory.
//!
//! One packet on the ring is: a first request (its `size` is the whole
//! packet), extra-info slots if the first request has `NETTXF_extra_info`,
//! then one request per further slot while `NETTXF_more_data` is set.

use xen_abi::io::netif::*;
use xen_abi::PAGE_SIZE;
use zerocopy_free::{extra_from, req_from};

use crate::offload::ETH_HLEN;

/// Bytes of one TX ring entry.
pub type TxEntry = [u8; NET_TX_RING_ENTRY_SIZE];

/// Most data slots one packet may use.
pub const MAX_SLOTS: usize = XEN_NETBK_LEGACY_SLOTS_MAX;
/// Most extra-info slots one packet may carry (one per type at most).
pub const MAX_EXTRAS: usize = XEN_NETIF_EXTRA_TYPE_MAX as usize - 1;

/// Why a packet is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("packet uses more than {MAX_SLOTS} slots")]
    TooManySlots,
    #[error("more than {MAX_EXTRAS} extra-info slots")]
    TooManyExtras,
    #[error("extra-info type {0} is not defined")]
    BadExtraType(u8),
    #[error("GSO type {0} with segment size {1} is not supported")]
    BadGso(u8, u16),
    #[error("packet of {0} bytes is shorter than an Ethernet header")]
    TooShort(u16),
    #[error("slots hold more bytes than the packet's size")]
    SizeMismatch,
    #[error("slot at offset {0} with {1} bytes crosses its page")]
    CrossesPage(u16, u32),
}

/// One slot's bytes: `len` bytes at `offset` in granted page `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSlot {
    pub gref: u32,
    pub offset: u16,
    pub len: u16,
}

/// GSO metadata from the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxGso {
    /// `XEN_NETIF_GSO_TYPE_TCPV4` or `_TCPV6`.
    pub gso_type: u8,
    /// MSS: payload bytes per segment, never 0.
    pub size: u16,
}

/// A well-formed packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// Data slots in order; their lengths add up to `len`.
    pub slots: Vec<TxSlot>,
    /// The whole packet's length.
    pub len: u16,
    /// The first request's `NETTXF_*` flags.
    pub flags: u16,
    pub gso: Option<TxGso>,
    /// A multicast filter update (MCAST_ADD/DEL) rather than a packet to
    /// send: it is answered OKAY and not forwarded.
    pub mcast_only: bool,
}

/// What the ring entries starting at the consumer index hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxParse {
    /// A packet and the response each consumed entry gets: the request id,
    /// or None for an extra-info slot (answered `NETIF_RSP_NULL`).
    Packet(TxPacket, Vec<Option<u16>>),
    /// A malformed packet: the entries it consumed get `NETIF_RSP_ERROR`
    /// (None: `NETIF_RSP_NULL`).
    Bad(TxError, Vec<Option<u16>>),
    /// The packet's remaining entries are not published yet.
    Incomplete,
}

/// Parse the packet whose entries start at `entries[0]`; `entries` are all
/// the entries published and not yet consumed, in ring order.
pub fn parse_tx_packet(entries: &[TxEntry]) -> TxParse {
    let Some(first) = entries.first().map(req_from) else {
        return TxParse::Incomplete;
    };
    let mut ids = vec![Some(first.id)];
    let mut at = 1;
    let mut gso = None;
    let mut mcast = false;
    let mut error = None;

    if first.flags & NETTXF_EXTRA_INFO != 0 {
        loop {
            let Some(e) = entries.get(at).map(extra_from) else {
                return TxParse::Incomplete;
            };
            at += 1;
            ids.push(None);
            if ids.len() - 1 > MAX_EXTRAS {
                // A chain of extras that never ends: stop trusting it here.
                return TxParse::Bad(TxError::TooManyExtras, ids);
            }
            match e.extra_type {
                XEN_NETIF_EXTRA_TYPE_GSO => {
                    let g = e.gso();
                    let ok = matches!(
                        g.gso_type,
                        XEN_NETIF_GSO_TYPE_TCPV4 | XEN_NETIF_GSO_TYPE_TCPV6
                    ) && g.size != 0;
                    if !ok {
                        error.get_or_insert(TxError::BadGso(g.gso_type, g.size));
                    }
                    gso = Some(TxGso {
                        gso_type: g.gso_type,
                        size: g.size,
                    });
                }
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD | XEN_NETIF_EXTRA_TYPE_MCAST_DEL => mcast = true,
                XEN_NETIF_EXTRA_TYPE_HASH => {}
                t => {
                    // The rest of the chain cannot be trusted either.
                    return TxParse::Bad(TxError::BadExtraType(t), ids);
                }
            }
            if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                break;
            }
        }
    }

    let mut reqs = vec![first];
    let mut more = first.flags & NETTXF_MORE_DATA != 0;
    while more {
        let Some(r) = entries.get(at).map(req_from) else {
            if reqs.len() > MAX_SLOTS {
                // Already refused: consume what is there rather than wait.
                return TxParse::Bad(TxError::TooManySlots, ids);
            }
            return TxParse::Incomplete;
        };
        at += 1;
        ids.push(Some(r.id));
        reqs.push(r);
        more = r.flags & NETTXF_MORE_DATA != 0;
    }
    if reqs.len() > MAX_SLOTS {
        return TxParse::Bad(TxError::TooManySlots, ids);
    }
    if let Some(e) = error {
        return TxParse::Bad(e, ids);
    }
    if mcast {
        let pkt = TxPacket {
            slots: Vec::new(),
            len: 0,
            flags: first.flags,
            gso: None,
            mcast_only: true,
        };
        return TxParse::Packet(pkt, ids);
    }
    if (first.size as usize) < ETH_HLEN {
        return TxParse::Bad(TxError::TooShort(first.size), ids);
    }
    // The first slot holds what the later slots do not.
    let rest: u32 = reqs[1..].iter().map(|r| r.size as u32).sum();
    let Some(first_len) = (first.size as u32).checked_sub(rest) else {
        return TxParse::Bad(TxError::SizeMismatch, ids);
    };
    let mut slots = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let len = if i == 0 { first_len } else { r.size as u32 };
        if r.offset as usize + len as usize > PAGE_SIZE {
            return TxParse::Bad(TxError::CrossesPage(r.offset, len), ids);
        }
        slots.push(TxSlot {
            gref: r.gref,
            offset: r.offset,
            len: len as u16,
        });
    }
    let pkt = TxPacket {
        slots,
        len: first.size,
        flags: first.flags,
        gso,
        mcast_only: false,
    };
    TxParse::Packet(pkt, ids)
}

/// Typed views of raw entries (plain little-endian decoding; any bytes are
/// a valid entry).
mod zerocopy_free {
    use super::TxEntry;
    use xen_abi::io::netif::{NetifExtraInfo, NetifTxRequest};

    fn u16_at(e: &TxEntry, i: usize) -> u16 {
        u16::from_le_bytes([e[i], e[i + 1]])
    }

    pub fn req_from(e: &TxEntry) -> NetifTxRequest {
        NetifTxRequest {
            gref: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            offset: u16_at(e, 4),
            flags: u16_at(e, 6),
            id: u16_at(e, 8),
            size: u16_at(e, 10),
        }
    }

    pub fn extra_from(e: &TxEntry) -> NetifExtraInfo {
        let mut u = [0u8; 6];
        u.copy_from_slice(&e[2..8]);
        NetifExtraInfo {
            extra_type: e[0],
            flags: e[1],
            u,
        }
    }
}

/// Test and fuzz helpers: encode entries as a frontend would.
pub mod encode {
    use super::TxEntry;

    /// A request entry.
    pub fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxEntry {
        let mut e = [0u8; 12];
        e[0..4].copy_from_slice(&gref.to_le_bytes());
        e[4..6].copy_from_slice(&offset.to_le_bytes());
        e[6..8].copy_from_slice(&flags.to_le_bytes());
        e[8..10].copy_from_slice(&id.to_le_bytes());
        e[10..12].copy_from_slice(&size.to_le_bytes());
        e
    }

    /// An extra-info entry.
    pub fn extra(info: xen_abi::io::netif::NetifExtraInfo) -> TxEntry {
        let mut e = [0u8; 12];
        e[0] = info.extra_type;
        e[1] = info.flags;
        e[2..8].copy_from_slice(&info.u);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    #[test]
    fn single_slot_packet() {
        let e = [req(7, 100, NETTXF_CSUM_BLANK, 3, 60)];
        let TxParse::Packet(p, ids) = parse_tx_packet(&e) else {
            panic!("not a packet")
        };
        assert_eq!(ids, vec![Some(3)]);
        assert_eq!(
            p.slots,
            vec![TxSlot {
                gref: 7,
                offset: 100,
                len: 60
            }]
        );
        assert_eq!((p.len, p.flags, p.gso, p.mcast_only), (60, 1, None, false));
    }

    #[test]
    fn multi_slot_with_gso_extra() {
        let gso = NetifExtraInfo::with_gso(XEN_NETIF_GSO_TYPE_TCPV4, 1448, false);
        let e = [
            req(
                1,
                0,
                NETTXF_EXTRA_INFO | NETTXF_MORE_DATA | NETTXF_CSUM_BLANK,
                10,
                9000,
            ),
            extra(gso),
            req(2, 0, NETTXF_MORE_DATA, 11, 4096),
            req(3, 0, 0, 12, 4000),
            req(99, 0, 0, 13, 60), // the next packet
        ];
        let TxParse::Packet(p, ids) = parse_tx_packet(&e) else {
            panic!("not a packet")
        };
        assert_eq!(ids, vec![Some(10), None, Some(11), Some(12)]);
        let lens: Vec<u16> = p.slots.iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![904, 4096, 4000]);
        assert_eq!(
            p.gso,
            Some(TxGso {
                gso_type: 1,
                size: 1448
            })
        );
    }

    #[test]
    fn incomplete_chains_wait() {
        assert_eq!(parse_tx_packet(&[]), TxParse::Incomplete);
        let e = [req(1, 0, NETTXF_MORE_DATA, 1, 100)];
        assert_eq!(parse_tx_packet(&e), TxParse::Incomplete);
        let e = [req(1, 0, NETTXF_EXTRA_INFO, 1, 100)];
        assert_eq!(parse_tx_packet(&e), TxParse::Incomplete);
    }

    #[test]
    fn hostile_packets_are_refused_with_every_slot_answered() {
        // Crosses the page.
        let e = [req(1, 4000, 0, 1, 200)];
        assert_eq!(
            parse_tx_packet(&e),
            TxParse::Bad(TxError::CrossesPage(4000, 200), vec![Some(1)])
        );
        // Later slots bigger than the packet.
        let e = [req(1, 0, NETTXF_MORE_DATA, 1, 100), req(2, 0, 0, 2, 200)];
        assert_eq!(
            parse_tx_packet(&e),
            TxParse::Bad(TxError::SizeMismatch, vec![Some(1), Some(2)])
        );
        // Too short.
        let e = [req(1, 0, 0, 1, 13)];
        assert!(matches!(
            parse_tx_packet(&e),
            TxParse::Bad(TxError::TooShort(13), _)
        ));
        // 19 slots.
        let mut e: Vec<TxEntry> = (0..18)
            .map(|i| req(i, 0, NETTXF_MORE_DATA, i as u16, 60))
            .collect();
        e.push(req(18, 0, 0, 18, 60));
        match parse_tx_packet(&e) {
            TxParse::Bad(TxError::TooManySlots, ids) => assert_eq!(ids.len(), 19),
            other => panic!("{other:?}"),
        }
        // A never-ending chain is refused once it is too long, not waited on.
        let e: Vec<TxEntry> = (0..40).map(|i| req(i, 0, NETTXF_MORE_DATA, 0, 1)).collect();
        match parse_tx_packet(&e) {
            TxParse::Bad(TxError::TooManySlots, ids) => assert_eq!(ids.len(), 40),
            other => panic!("{other:?}"),
        }
        // Bad extra type.
        let bad = NetifExtraInfo {
            extra_type: 9,
            ..Default::default()
        };
        let e = [req(1, 0, NETTXF_EXTRA_INFO, 1, 60), extra(bad)];
        assert_eq!(
            parse_tx_packet(&e),
            TxParse::Bad(TxError::BadExtraType(9), vec![Some(1), None])
        );
        // GSO with size 0, and an unknown GSO type.
        for g in [
            NetifExtraInfo::with_gso(XEN_NETIF_GSO_TYPE_TCPV4, 0, false),
            NetifExtraInfo::with_gso(7, 1000, false),
        ] {
            let e = [req(1, 0, NETTXF_EXTRA_INFO, 1, 60), extra(g)];
            assert!(matches!(
                parse_tx_packet(&e),
                TxParse::Bad(TxError::BadGso(..), _)
            ));
        }
        // Endless extras.
        let more = NetifExtraInfo::with_gso(XEN_NETIF_GSO_TYPE_TCPV4, 1000, true);
        let mut e = vec![req(1, 0, NETTXF_EXTRA_INFO, 1, 60)];
        e.extend(std::iter::repeat_n(extra(more), 10));
        assert!(matches!(
            parse_tx_packet(&e),
            TxParse::Bad(TxError::TooManyExtras, _)
        ));
    }

    #[test]
    fn multicast_updates_are_not_packets() {
        let mut m = NetifExtraInfo {
            extra_type: XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
            ..Default::default()
        };
        m.u = [1, 0, 0x5e, 0, 0, 1];
        let e = [req(0, 0, NETTXF_EXTRA_INFO, 4, 0), extra(m)];
        let TxParse::Packet(p, ids) = parse_tx_packet(&e) else {
            panic!()
        };
        assert!(p.mcast_only);
        assert_eq!(ids, vec![Some(4), None]);
    }
}
