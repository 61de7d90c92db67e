//! One vif queue's ring engine: the guest's TX ring into a packet sink,
//! and packets into the guest's RX ring. It only needs the guest's grant
//! table and its event channel(s), so it runs in unit tests against a fake
//! guest with no VMM and no TAP.

use std::sync::Arc;

use kxen_foreign::evtchn::Dom0Channel;
use kxen_foreign::grant::GrantTable;
use tracing::{debug, warn};
use xen_abi::io::netif::*;
use xen_abi::PAGE_SIZE;
use zerocopy::IntoBytes;

use crate::offload::{complete_csum, parse_headers, seed_partial_csum, L4Proto};
use crate::ring::BackRing;
use crate::stats::VifStats;
use crate::tx::{parse_tx_packet, TxEntry, TxPacket, TxParse, MAX_EXTRAS, MAX_SLOTS};
use crate::vnet::{self, VnetHdr, VNET_HDR_LEN};

/// Entries the TX parser may need to see to decide on one packet.
const TX_SCAN: usize = 1 + MAX_EXTRAS + MAX_SLOTS + 1;
/// TX packets handled per call before the caller gets a turn.
const TX_BUDGET: usize = 64;

/// What the frontend negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendFeatures {
    /// Multi-slot packets (feature-sg).
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    /// It takes packets with blank checksums (not feature-no-csum-offload).
    pub csum_offload: bool,
    pub ipv6_csum_offload: bool,
}

impl Default for FrontendFeatures {
    /// What a frontend that writes no feature nodes gets (netif.h defaults).
    fn default() -> Self {
        FrontendFeatures {
            sg: false,
            gso_tcpv4: false,
            gso_tcpv6: false,
            csum_offload: true,
            ipv6_csum_offload: false,
        }
    }
}

/// The queue's event channels: one for both rings, or split.
pub enum Channels {
    Shared(Dom0Channel),
    Split { tx: Dom0Channel, rx: Dom0Channel },
}

impl Channels {
    pub fn tx(&self) -> &Dom0Channel {
        match self {
            Channels::Shared(c) | Channels::Split { tx: c, .. } => c,
        }
    }

    pub fn rx(&self) -> &Dom0Channel {
        match self {
            Channels::Shared(c) | Channels::Split { rx: c, .. } => c,
        }
    }
}

/// What became of a packet offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    Delivered,
    /// The guest has not posted enough buffers: offer it again later.
    NoRoom,
    Dropped,
}

pub struct NetQueue {
    grants: Arc<GrantTable>,
    tx: BackRing,
    rx: BackRing,
    channels: Channels,
    features: FrontendFeatures,
    stats: Arc<VifStats>,
    tx_broken: bool,
    rx_broken: bool,
    /// RX slots the held-back packet needs (after a NoRoom).
    rx_need: u32,
}

impl NetQueue {
    pub fn new(
        grants: Arc<GrantTable>,
        tx: BackRing,
        rx: BackRing,
        channels: Channels,
        features: FrontendFeatures,
        stats: Arc<VifStats>,
    ) -> NetQueue {
        NetQueue {
            grants,
            tx,
            rx,
            channels,
            features,
            stats,
            tx_broken: false,
            rx_broken: false,
            rx_need: 1,
        }
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn features(&self) -> FrontendFeatures {
        self.features
    }

    /// Take the guest's TX packets and hand each, virtio_net_hdr first, to
    /// `sink`. Returns true if work remains (the budget ran out).
    pub fn process_tx(&mut self, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> bool {
        let mut more = false;
        let mut budget = TX_BUDGET;
        while !self.tx_broken {
            if self.tx.overflowed() {
                warn!("vif TX ring: guest published more requests than the ring holds");
                VifStats::inc(&self.stats.tx_errors);
                self.tx_broken = true;
                break;
            }
            let avail = self.tx.unconsumed() as usize;
            if avail == 0 {
                if self.tx.arm(1) {
                    continue;
                }
                break;
            }
            if budget == 0 {
                more = true;
                break;
            }
            budget -= 1;
            let n = avail.min(TX_SCAN);
            let mut entries = vec![[0u8; NET_TX_RING_ENTRY_SIZE]; n];
            for (i, e) in entries.iter_mut().enumerate() {
                self.tx
                    .read_entry(self.tx.req_cons.wrapping_add(i as u32), e);
            }
            match parse_tx_packet(&entries) {
                TxParse::Incomplete => {
                    // Wait for the rest of the packet.
                    if self.tx.arm(avail as u32 + 1) {
                        continue;
                    }
                    break;
                }
                TxParse::Packet(p, ids) => {
                    let status = self.send_tx(&p, sink);
                    self.respond_tx(&ids, status);
                }
                TxParse::Bad(e, ids) => {
                    debug!("vif TX: dropping a malformed packet: {e}");
                    VifStats::inc(&self.stats.tx_errors);
                    self.respond_tx(&ids, NETIF_RSP_ERROR);
                }
            }
        }
        if self.tx.push() {
            // Counted before it is sent, so whoever receives the event
            // finds it already in the statistics.
            VifStats::inc(&self.stats.notifies_out);
            self.channels.tx().notify();
        }
        more
    }

    fn respond_tx(&mut self, ids: &[Option<u16>], status: i16) {
        for id in ids {
            let rsp = match id {
                Some(id) => NetifTxResponse { id: *id, status },
                None => NetifTxResponse {
                    id: 0,
                    status: NETIF_RSP_NULL,
                },
            };
            let mut entry: TxEntry = [0; NET_TX_RING_ENTRY_SIZE];
            entry[..4].copy_from_slice(rsp.as_bytes());
            self.tx.write_entry(self.tx.rsp_prod_pvt, &entry);
            self.tx.rsp_prod_pvt = self.tx.rsp_prod_pvt.wrapping_add(1);
        }
        self.tx.req_cons = self.tx.req_cons.wrapping_add(ids.len() as u32);
    }

    /// Gather one packet from its grants and pass it on; the response status.
    fn send_tx(&mut self, p: &TxPacket, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> i16 {
        if p.mcast_only {
            return NETIF_RSP_OKAY;
        }
        let mut buf = vec![0u8; VNET_HDR_LEN + p.len as usize];
        let mut at = VNET_HDR_LEN;
        for s in &p.slots {
            let dst = &mut buf[at..at + s.len as usize];
            let copied = self
                .grants
                .map(s.gref, false)
                .and_then(|m| m.read(s.offset as usize, dst));
            if let Err(e) = copied {
                debug!("vif TX: {e}");
                VifStats::inc(&self.stats.tx_errors);
                return NETIF_RSP_ERROR;
            }
            at += s.len as usize;
        }
        let Some(hdr) = tx_offload_header(p, &mut buf[VNET_HDR_LEN..]) else {
            debug!("vif TX: offload requested on a packet without TCP/UDP headers");
            VifStats::inc(&self.stats.tx_errors);
            return NETIF_RSP_ERROR;
        };
        buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        match sink(&buf) {
            Ok(()) => {
                VifStats::inc(&self.stats.tx_packets);
                VifStats::add(&self.stats.tx_bytes, p.len as u64);
                NETIF_RSP_OKAY
            }
            Err(e) => {
                debug!("vif TX: host refused the packet: {e}");
                VifStats::inc(&self.stats.tx_dropped);
                NETIF_RSP_DROPPED
            }
        }
    }

    /// Offer one packet (virtio_net_hdr + frame) to the guest. Responses
    /// are published by [`NetQueue::push_rx`].
    pub fn deliver_rx(&mut self, pkt: &[u8]) -> RxOutcome {
        if self.rx_broken {
            VifStats::inc(&self.stats.rx_dropped);
            return RxOutcome::Dropped;
        }
        let Some(plan) = rx_plan(pkt, &self.features) else {
            VifStats::inc(&self.stats.rx_dropped);
            return RxOutcome::Dropped;
        };
        let frame: &[u8] = plan.completed.as_deref().unwrap_or(&pkt[VNET_HDR_LEN..]);
        let data_slots = frame.len().div_ceil(PAGE_SIZE);
        let needed = data_slots + plan.gso.is_some() as usize;
        if needed > self.rx.size() as usize {
            VifStats::inc(&self.stats.rx_dropped);
            return RxOutcome::Dropped;
        }
        if self.rx.overflowed() {
            warn!("vif RX ring: guest published more requests than the ring holds");
            self.rx_broken = true;
            VifStats::inc(&self.stats.rx_dropped);
            return RxOutcome::Dropped;
        }
        if (self.rx.unconsumed() as usize) < needed {
            self.rx_need = needed as u32;
            return RxOutcome::NoRoom;
        }
        let mut ok = true;
        for (k, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let req = self.take_rx_request();
            let mut flags = 0;
            if k == 0 {
                flags |= plan.flags;
                if plan.gso.is_some() {
                    flags |= NETRXF_EXTRA_INFO;
                }
            }
            if k + 1 < data_slots {
                flags |= NETRXF_MORE_DATA;
            }
            let written = self
                .grants
                .map(req.gref, true)
                .and_then(|m| m.write(0, chunk));
            let status = match written {
                Ok(()) => chunk.len() as i16,
                Err(e) => {
                    debug!("vif RX: {e}");
                    ok = false;
                    NETIF_RSP_ERROR
                }
            };
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status,
            };
            self.put_rx_response(rsp.as_bytes());
            if k == 0 {
                if let Some((gso_type, size)) = plan.gso {
                    // The extra slot uses up a request whose buffer stays empty.
                    self.take_rx_request();
                    let extra = NetifExtraInfo::with_gso(gso_type, size, false);
                    self.put_rx_response(extra.as_bytes());
                }
            }
        }
        if ok {
            VifStats::inc(&self.stats.rx_packets);
            VifStats::add(&self.stats.rx_bytes, frame.len() as u64);
            RxOutcome::Delivered
        } else {
            VifStats::inc(&self.stats.rx_dropped);
            RxOutcome::Dropped
        }
    }

    fn take_rx_request(&mut self) -> NetifRxRequest {
        let mut b = [0u8; NET_RX_RING_ENTRY_SIZE];
        self.rx.read_entry(self.rx.req_cons, &mut b);
        self.rx.req_cons = self.rx.req_cons.wrapping_add(1);
        NetifRxRequest {
            id: u16::from_le_bytes([b[0], b[1]]),
            _pad: 0,
            gref: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    fn put_rx_response(&mut self, bytes: &[u8]) {
        self.rx.write_entry(self.rx.rsp_prod_pvt, bytes);
        self.rx.rsp_prod_pvt = self.rx.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publish RX responses and notify the guest if it asked.
    pub fn push_rx(&mut self) {
        if self.rx.push() {
            // Counted before it is sent, as in process_tx.
            VifStats::inc(&self.stats.notifies_out);
            self.channels.rx().notify();
        }
    }

    /// Ask for a kick once the guest has posted enough RX buffers for the
    /// packet last refused with NoRoom; true if they are already there.
    pub fn arm_rx(&self) -> bool {
        self.rx.arm(self.rx_need)
    }

    pub fn stats(&self) -> &Arc<VifStats> {
        &self.stats
    }
}

/// The virtio_net_hdr for a guest TX packet; None if the packet asks for
/// checksum offload or GSO but has no TCP/UDP headers to apply it to.
pub fn tx_offload_header(p: &TxPacket, frame: &mut [u8]) -> Option<VnetHdr> {
    let mut hdr = VnetHdr::default();
    let csum_blank = p.flags & NETTXF_CSUM_BLANK != 0;
    if csum_blank || p.gso.is_some() {
        let h = parse_headers(frame)?;
        if !csum_blank {
            // A GSO packet must carry the pseudo-header sum for the
            // segments' checksums to come out right.
            seed_partial_csum(frame, &h);
        }
        hdr.flags = vnet::F_NEEDS_CSUM;
        hdr.csum_start = h.l4 as u16;
        hdr.csum_offset = h.proto.csum_offset() as u16;
        if let Some(g) = p.gso {
            let (want_v6, t) = match g.gso_type {
                XEN_NETIF_GSO_TYPE_TCPV4 => (false, vnet::GSO_TCPV4),
                _ => (true, vnet::GSO_TCPV6),
            };
            if h.proto != L4Proto::Tcp || h.ipv6 != want_v6 {
                return None;
            }
            hdr.gso_type = t;
            hdr.gso_size = g.size;
            hdr.hdr_len = h.total_len() as u16;
        }
    } else if p.flags & NETTXF_DATA_VALIDATED != 0 {
        hdr.flags = vnet::F_DATA_VALID;
    }
    Some(hdr)
}

/// How a host packet goes to this frontend.
struct RxPlan {
    /// `NETRXF_*` checksum flags for the first slot.
    flags: u16,
    /// (XEN_NETIF_GSO_TYPE_*, MSS) for a GSO extra slot.
    gso: Option<(u8, u16)>,
    /// The frame with its checksum completed in software, when the
    /// frontend cannot take a blank one.
    completed: Option<Vec<u8>>,
}

/// Decide flags, GSO and checksum handling for one host packet; None if
/// this frontend cannot take it.
fn rx_plan(pkt: &[u8], f: &FrontendFeatures) -> Option<RxPlan> {
    let hdr = VnetHdr::from_bytes(pkt)?;
    let frame = &pkt[VNET_HDR_LEN..];
    if frame.is_empty() || frame.len() > u16::MAX as usize {
        return None;
    }
    if frame.len() > PAGE_SIZE && !f.sg {
        return None;
    }
    let gso = match hdr.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => None,
        vnet::GSO_TCPV4 if f.gso_tcpv4 => Some((XEN_NETIF_GSO_TYPE_TCPV4, hdr.gso_size)),
        vnet::GSO_TCPV6 if f.gso_tcpv6 => Some((XEN_NETIF_GSO_TYPE_TCPV6, hdr.gso_size)),
        _ => return None,
    };
    if gso.is_some_and(|(_, size)| size == 0) {
        return None;
    }
    let mut plan = RxPlan {
        flags: 0,
        gso,
        completed: None,
    };
    if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
        let ipv6 = parse_headers(frame).map(|h| h.ipv6);
        let blank_ok = f.csum_offload && (ipv6 == Some(false) || f.ipv6_csum_offload);
        if blank_ok {
            plan.flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
        } else {
            if gso.is_some() {
                return None;
            }
            let mut copy = frame.to_vec();
            let udp = parse_headers(frame).is_some_and(|h| h.proto == L4Proto::Udp);
            if !complete_csum(
                &mut copy,
                hdr.csum_start as usize,
                hdr.csum_offset as usize,
                udp,
            ) {
                return None;
            }
            plan.completed = Some(copy);
            plan.flags = NETRXF_DATA_VALIDATED;
        }
    } else if hdr.flags & vnet::F_DATA_VALID != 0 {
        plan.flags = NETRXF_DATA_VALIDATED;
    }
    Some(plan)
}
