//! The ring engine against a fake guest (no VMM, no TAP).

use std::sync::atomic::Ordering;

use xen_abi::io::netif::*;
use xen_abi::io::ring::OFFSET_REQ_PROD;

use crate::fake_guest::*;
use crate::offload::frames::{l4_csum_ok, tcp4, udp6};
use crate::offload::{parse_headers, seed_partial_csum};
use crate::queue::{FrontendFeatures, RxOutcome};
use crate::tx::encode::{extra, req};
use crate::vnet::{self, VnetHdr, VNET_HDR_LEN};

fn all_features() -> FrontendFeatures {
    FrontendFeatures {
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
        csum_offload: true,
        ipv6_csum_offload: true,
    }
}

#[test]
fn tx_packet_reaches_the_sink_with_its_offload_header() {
    let mut g = FakeGuest::new();
    let (mut q, end, stats) = g.queue(all_features());
    let mut frame = tcp4(b"hello from the guest");
    let h = parse_headers(&frame).unwrap();
    seed_partial_csum(&mut frame, &h);
    g.fill(10, 100, &frame);
    g.push_tx(&[req(
        10,
        100,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED,
        42,
        frame.len() as u16,
    )]);
    let mut out = Vec::new();
    let more = q.process_tx(&mut |p| {
        out.push(p.to_vec());
        Ok(())
    });
    assert!(!more);
    assert_eq!(out.len(), 1);
    let hdr = VnetHdr::from_bytes(&out[0]).unwrap();
    assert_eq!(hdr.flags, vnet::F_NEEDS_CSUM);
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
    assert_eq!(hdr.gso_type, vnet::GSO_NONE);
    assert_eq!(&out[0][VNET_HDR_LEN..], &frame[..]);
    assert_eq!(g.tx_responses(), vec![(42, NETIF_RSP_OKAY)]);
    assert_eq!(end.take_notifications(), 1);
    assert_eq!(stats.tx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(stats.tx_bytes.load(Ordering::Relaxed), frame.len() as u64);
}

#[test]
fn tx_multi_slot_gso_packet_becomes_one_tso_frame() {
    let mut g = FakeGuest::new();
    let (mut q, _end, _) = g.queue(all_features());
    let payload: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
    let mut frame = tcp4(&payload);
    let h = parse_headers(&frame).unwrap();
    seed_partial_csum(&mut frame, &h);
    // 1000 bytes in the first slot, then 4096, then the rest.
    let (a, rest) = frame.split_at(1000);
    let (b, c) = rest.split_at(4096);
    g.fill(10, 3000, a);
    g.fill(11, 0, b);
    g.fill(12, 0, c);
    let gso = NetifExtraInfo::with_gso(XEN_NETIF_GSO_TYPE_TCPV4, 1448, false);
    let f0 = NETTXF_CSUM_BLANK | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO;
    g.push_tx(&[
        req(10, 3000, f0, 1, frame.len() as u16),
        extra(gso),
        req(11, 0, NETTXF_MORE_DATA, 2, 4096),
        req(12, 0, 0, 3, c.len() as u16),
    ]);
    let mut out = Vec::new();
    q.process_tx(&mut |p| {
        out.push(p.to_vec());
        Ok(())
    });
    assert_eq!(out.len(), 1);
    let hdr = VnetHdr::from_bytes(&out[0]).unwrap();
    assert_eq!(hdr.gso_type, vnet::GSO_TCPV4);
    assert_eq!((hdr.gso_size, hdr.hdr_len), (1448, 54));
    assert_eq!(&out[0][VNET_HDR_LEN..], &frame[..]);
    assert_eq!(
        g.tx_responses(),
        vec![
            (1, NETIF_RSP_OKAY),
            (0, NETIF_RSP_NULL),
            (2, NETIF_RSP_OKAY),
            (3, NETIF_RSP_OKAY)
        ]
    );
}

#[test]
fn hostile_tx_requests_are_answered_with_errors() {
    let mut g = FakeGuest::new();
    let (mut q, _end, stats) = g.queue(all_features());
    let frame = tcp4(b"x");
    g.fill(10, 0, &frame);
    g.revoke(20);
    g.grant(21, 10, false);
    g.table.store_u32(21 * 8, GTF_PERMIT | (9 << 16)); // for domain 9
    let n = frame.len() as u16;
    g.push_tx(&[
        req(20, 0, 0, 1, n),                  // revoked grant
        req(21, 0, 0, 2, n),                  // another domain's grant
        req(5000, 0, 0, 3, n),                // beyond the table
        req(10, 4090, 0, 4, n),               // crosses the page
        req(10, 0, 0, 5, 13),                 // shorter than Ethernet
        req(10, 0, NETTXF_CSUM_BLANK, 6, 20), // csum_blank without TCP/UDP
        req(10, 0, 0, 7, n),                  // fine
    ]);
    let mut sent = 0;
    q.process_tx(&mut |_| {
        sent += 1;
        Ok(())
    });
    assert_eq!(sent, 1);
    let r = g.tx_responses();
    let statuses: Vec<i16> = r.iter().map(|x| x.1).collect();
    assert_eq!(statuses, vec![-1, -1, -1, -1, -1, -1, 0]);
    assert_eq!(stats.tx_errors.load(Ordering::Relaxed), 6);
    // Grants are unpinned again afterwards.
    assert_eq!(g.table.load_u32(10 * 8) & 0x18, 0);

    // A sink that refuses: DROPPED.
    g.push_tx(&[req(10, 0, 0, 8, n)]);
    q.process_tx(&mut |_| Err(std::io::Error::other("full")));
    assert_eq!(g.tx_responses(), vec![(8, NETIF_RSP_DROPPED)]);
    assert_eq!(stats.tx_dropped.load(Ordering::Relaxed), 1);
}

const GTF_PERMIT: u32 = 1;

#[test]
fn tx_ring_index_beyond_the_ring_stops_the_ring_without_reading() {
    let mut g = FakeGuest::new();
    let (mut q, _end, stats) = g.queue(all_features());
    g.tx.store_u32(OFFSET_REQ_PROD, 100_000);
    let mut sent = 0;
    q.process_tx(&mut |_| {
        sent += 1;
        Ok(())
    });
    assert_eq!(sent, 0);
    assert!(g.tx_responses().is_empty());
    assert_eq!(stats.tx_errors.load(Ordering::Relaxed), 1);
    // And it stays stopped.
    g.tx.store_u32(OFFSET_REQ_PROD, 1);
    q.process_tx(&mut |_| {
        sent += 1;
        Ok(())
    });
    assert_eq!(sent, 0);
}

#[test]
fn incomplete_tx_packet_waits_for_its_last_slot() {
    let mut g = FakeGuest::new();
    let (mut q, _end, _) = g.queue(all_features());
    let frame = tcp4(&[7u8; 100]);
    g.fill(10, 0, &frame[..60]);
    g.fill(11, 0, &frame[60..]);
    g.push_tx(&[req(10, 0, NETTXF_MORE_DATA, 1, frame.len() as u16)]);
    let mut out = Vec::new();
    q.process_tx(&mut |p| {
        out.push(p.to_vec());
        Ok(())
    });
    assert!(out.is_empty() && g.tx_responses().is_empty());
    // The backend asked to be kicked when the next slot comes.
    assert_eq!(g.tx.load_u32(4), 2);
    g.push_tx(&[req(11, 0, 0, 2, (frame.len() - 60) as u16)]);
    q.process_tx(&mut |p| {
        out.push(p.to_vec());
        Ok(())
    });
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][VNET_HDR_LEN..], &frame[..]);
}

fn with_hdr(h: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut p = h.to_bytes().to_vec();
    p.extend_from_slice(frame);
    p
}

#[test]
fn rx_packet_lands_in_a_posted_buffer_with_csum_flags() {
    let mut g = FakeGuest::new();
    let (mut q, end, stats) = g.queue(all_features());
    let mut frame = tcp4(b"to the guest");
    let h = parse_headers(&frame).unwrap();
    seed_partial_csum(&mut frame, &h);
    let hdr = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    assert_eq!(q.deliver_rx(&with_hdr(hdr, &frame)), RxOutcome::NoRoom);
    g.post_rx(77, 30);
    assert_eq!(q.deliver_rx(&with_hdr(hdr, &frame)), RxOutcome::Delivered);
    q.push_rx();
    let r = g.rx_responses();
    assert_eq!(r.len(), 1);
    let rsp = rx_rsp(&r[0]);
    assert_eq!(
        (rsp.id, rsp.offset, rsp.status),
        (77, 0, frame.len() as i16)
    );
    assert_eq!(rsp.flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
    let mut got = vec![0u8; frame.len()];
    g.page(30).read(0, &mut got);
    assert_eq!(got, frame);
    assert_eq!(end.take_notifications(), 1);
    assert_eq!(stats.rx_packets.load(Ordering::Relaxed), 1);
}

#[test]
fn rx_without_csum_offload_gets_a_finished_checksum() {
    let mut g = FakeGuest::new();
    let features = FrontendFeatures {
        csum_offload: false,
        ..all_features()
    };
    let (mut q, _end, _) = g.queue(features);
    for (i, mut frame) in [tcp4(b"abc"), udp6(b"defg")].into_iter().enumerate() {
        let h = parse_headers(&frame).unwrap();
        seed_partial_csum(&mut frame, &h);
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: h.l4 as u16,
            csum_offset: h.proto.csum_offset() as u16,
            ..Default::default()
        };
        g.post_rx(i as u16, 30 + i as u32);
        assert_eq!(q.deliver_rx(&with_hdr(hdr, &frame)), RxOutcome::Delivered);
        q.push_rx();
        let rsp = rx_rsp(&g.rx_responses()[0]);
        assert_eq!(rsp.flags, NETRXF_DATA_VALIDATED);
        let mut got = vec![0u8; frame.len()];
        g.page(30 + i as u32).read(0, &mut got);
        assert!(l4_csum_ok(&got));
    }
}

#[test]
fn rx_gso_packet_spans_slots_with_a_gso_extra() {
    let mut g = FakeGuest::new();
    let (mut q, _end, _) = g.queue(all_features());
    let frame = tcp4(&vec![0x5a; 9000]);
    let hdr = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        csum_start: 34,
        csum_offset: 16,
    };
    for i in 0..4 {
        g.post_rx(100 + i, 40 + i as u32);
    }
    assert_eq!(q.deliver_rx(&with_hdr(hdr, &frame)), RxOutcome::Delivered);
    q.push_rx();
    let r = g.rx_responses();
    assert_eq!(r.len(), 4);
    let first = rx_rsp(&r[0]);
    assert_eq!((first.id, first.status), (100, 4096));
    assert_eq!(
        first.flags,
        NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_MORE_DATA | NETRXF_EXTRA_INFO
    );
    assert_eq!(r[1][0], XEN_NETIF_EXTRA_TYPE_GSO);
    let e = NetifExtraInfo {
        extra_type: r[1][0],
        flags: r[1][1],
        u: r[1][2..8].try_into().unwrap(),
    };
    assert_eq!(
        (e.gso().gso_type, e.gso().size),
        (XEN_NETIF_GSO_TYPE_TCPV4, 1448)
    );
    let second = rx_rsp(&r[2]);
    assert_eq!(
        (second.id, second.status, second.flags),
        (102, 4096, NETRXF_MORE_DATA)
    );
    let third = rx_rsp(&r[3]);
    assert_eq!(
        (third.id, third.status, third.flags),
        (103, (frame.len() - 8192) as i16, 0)
    );
    let mut got = vec![0u8; frame.len()];
    g.page(40).read(0, &mut got[..4096]);
    g.page(42).read(0, &mut got[4096..8192]);
    g.page(43).read(0, &mut got[8192..]);
    assert_eq!(got, frame);
}

#[test]
fn rx_that_the_frontend_cannot_take_is_dropped() {
    let mut g = FakeGuest::new();
    let features = FrontendFeatures {
        sg: false,
        gso_tcpv4: false,
        gso_tcpv6: false,
        ..all_features()
    };
    let (mut q, _end, stats) = g.queue(features);
    for i in 0..4 {
        g.post_rx(i, 40 + i as u32);
    }
    let big = tcp4(&[1; 5000]);
    assert_eq!(
        q.deliver_rx(&with_hdr(VnetHdr::default(), &big)),
        RxOutcome::Dropped
    );
    let gso = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        gso_size: 1000,
        ..Default::default()
    };
    let small = tcp4(&[1; 100]);
    assert_eq!(q.deliver_rx(&with_hdr(gso, &small)), RxOutcome::Dropped);
    assert_eq!(q.deliver_rx(&[0u8; 5]), RxOutcome::Dropped);
    assert_eq!(q.deliver_rx(&[0u8; VNET_HDR_LEN]), RxOutcome::Dropped);
    assert_eq!(stats.rx_dropped.load(Ordering::Relaxed), 4);
    // A forged buffer grant: the slot answers ERROR.
    g.revoke(40);
    assert_eq!(
        q.deliver_rx(&with_hdr(VnetHdr::default(), &small)),
        RxOutcome::Dropped
    );
    q.push_rx();
    let rsp = rx_rsp(&g.rx_responses()[0]);
    assert_eq!((rsp.id, rsp.status), (0, NETIF_RSP_ERROR));
    // RX ring index beyond the ring: refused from then on.
    g.rx.store_u32(OFFSET_REQ_PROD, 60_000);
    assert_eq!(
        q.deliver_rx(&with_hdr(VnetHdr::default(), &small)),
        RxOutcome::Dropped
    );
    g.rx.store_u32(OFFSET_REQ_PROD, g.rx_prod);
    assert_eq!(
        q.deliver_rx(&with_hdr(VnetHdr::default(), &small)),
        RxOutcome::Dropped
    );
}

#[test]
fn rx_waits_for_enough_buffers_without_spinning() {
    let mut g = FakeGuest::new();
    let (mut q, _end, _) = g.queue(all_features());
    let pkt = with_hdr(VnetHdr::default(), &tcp4(&[9; 6000]));
    g.post_rx(1, 30);
    assert_eq!(q.deliver_rx(&pkt), RxOutcome::NoRoom);
    // One buffer is there but two are needed: no work yet, and the
    // backend asks to be kicked at the second.
    assert!(!q.arm_rx());
    assert_eq!(g.rx.load_u32(4), 2);
    g.post_rx(2, 31);
    assert!(q.arm_rx());
    assert_eq!(q.deliver_rx(&pkt), RxOutcome::Delivered);
}
