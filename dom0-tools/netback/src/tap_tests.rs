//! netback end to end on the host side: a fake guest's rings, the real
//! TAP device, the I/O thread and the hotplug script. Each test runs in a
//! thread with its own network namespace, so nothing touches the host's
//! interfaces; frames are only exchanged with a packet socket on the TAP.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xen_abi::io::netif::*;

use crate::backend::NetBackend;
use crate::fake_guest::*;
use crate::offload::frames::tcp4;
use crate::offload::{parse_headers, seed_partial_csum};
use crate::queue::FrontendFeatures;
use crate::spec::{VifSpec, BUNDLED_VIF_SCRIPT};
use crate::test_support::{contains, in_netns, ip, PacketSock};
use crate::tx::encode::{extra, req};
use crate::vnet::{self, VnetHdr, VNET_HDR_LEN};

const BACKEND_PATH: &str = "/local/domain/0/backend/vif/1/0";

fn features() -> FrontendFeatures {
    FrontendFeatures {
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
        csum_offload: true,
        ipv6_csum_offload: true,
    }
}

/// Wait until `f` returns Some. A timeout is reported at the caller.
#[track_caller]
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once the interface is gone (unregistering may finish just after
/// the last fd closes).
fn tap_goes_away(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !ip(&["link", "show", "dev", name]).0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn spec() -> VifSpec {
    VifSpec::new(1, 0, [0, 0x16, 0x3e, 0, 0, 1])
}

#[test]
fn frames_cross_the_tap_both_ways() {
    in_netns(|| {
        let mut g = FakeGuest::new();
        let (q, end, stats) = g.queue(features());
        let mut nb = NetBackend::new(spec()).unwrap();
        nb.start(vec![q], BACKEND_PATH).unwrap();
        assert_eq!(nb.tap_name(), Some("vif1.0"));
        assert!(ip(&["link", "set", "dev", "vif1.0", "up"]).0);
        let sock = PacketSock::open("vif1.0", false);

        // Guest to host.
        let frame = tcp4(b"marker-guest-to-host");
        g.fill(10, 200, &frame);
        g.push_tx(&[req(10, 200, 0, 9, frame.len() as u16)]);
        end.kick.write(1).unwrap();
        let got = sock.recv_with(b"marker-guest-to-host");
        assert_eq!(got, frame);
        let rsp = wait_for(|| g.tx_responses().pop());
        assert_eq!(rsp, (9, NETIF_RSP_OKAY));

        // Host to guest.
        for i in 0..8 {
            g.post_rx(i, 20 + i as u32);
        }
        end.kick.write(1).unwrap();
        let frame = tcp4(b"marker-host-to-guest");
        sock.send(&frame);
        let found = wait_for(|| {
            g.rx_responses().into_iter().map(|b| rx_rsp(&b)).find(|r| {
                let mut data = vec![0u8; r.status.max(0) as usize];
                g.page(20 + r.id as u32).read(0, &mut data);
                contains(&data, b"marker-host-to-guest")
            })
        });
        assert_eq!(found.status, frame.len() as i16);
        // Both packets were counted before their responses were published,
        // and those responses were seen above (in_netns turns IPv6 off, so
        // the host sends nothing else on the link).
        assert_eq!(stats.tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rx_packets.load(Ordering::Relaxed), 1);
        // The I/O thread counts a kick when poll() wakes for it, which may
        // be after it already moved the packets: wait for the count.
        wait_for(|| (stats.kicks_in.load(Ordering::Relaxed) >= 1).then_some(()));
        // A notification is counted before it is sent: once the guest end
        // has received one for each ring, both are in the statistics.
        let mut received = 0;
        wait_for(|| {
            received += end.take_notifications();
            (received >= 2).then_some(())
        });
        assert!(stats.notifies_out.load(Ordering::Relaxed) >= received);

        // Teardown removes the TAP; disconnect is idempotent.
        use kxen_foreign::xenbus::BackendDevice;
        drop(sock);
        nb.disconnect();
        nb.disconnect();
        assert!(tap_goes_away("vif1.0"));
    });
}

#[test]
fn gso_and_partial_checksums_pass_the_tap_both_ways() {
    in_netns(|| {
        let mut g = FakeGuest::new();
        let (q, end, _stats) = g.queue(features());
        let mut nb = NetBackend::new(spec()).unwrap();
        nb.start(vec![q], BACKEND_PATH).unwrap();
        assert!(ip(&["link", "set", "dev", "vif1.0", "up"]).0);
        let sock = PacketSock::open("vif1.0", true);

        // Guest TSO packet: 9000 bytes of payload over three slots.
        let mut payload = b"marker-gso-out".to_vec();
        payload.resize(9000, 0x33);
        let mut frame = tcp4(&payload);
        let h = parse_headers(&frame).unwrap();
        seed_partial_csum(&mut frame, &h);
        g.fill(10, 0, &frame[..4096]);
        g.fill(11, 0, &frame[4096..8192]);
        g.fill(12, 0, &frame[8192..]);
        let f0 = NETTXF_CSUM_BLANK | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO;
        g.push_tx(&[
            req(10, 0, f0, 1, frame.len() as u16),
            extra(NetifExtraInfo::with_gso(
                XEN_NETIF_GSO_TYPE_TCPV4,
                1448,
                false,
            )),
            req(11, 0, NETTXF_MORE_DATA, 2, 4096),
            req(12, 0, 0, 3, (frame.len() - 8192) as u16),
        ]);
        end.kick.write(1).unwrap();
        let got = sock.recv_with(b"marker-gso-out");
        let hdr = VnetHdr::from_bytes(&got).unwrap();
        assert_eq!(hdr.gso_type & !vnet::GSO_ECN, vnet::GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1448);
        assert_eq!(hdr.flags & vnet::F_NEEDS_CSUM, vnet::F_NEEDS_CSUM);
        assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);

        // Host TSO packet to the guest: one GSO extra, several slots.
        for i in 0..8 {
            g.post_rx(i, 20 + i as u32);
        }
        end.kick.write(1).unwrap();
        let mut payload = b"marker-gso-in".to_vec();
        payload.resize(6000, 0x44);
        let mut frame = tcp4(&payload);
        let h = parse_headers(&frame).unwrap();
        seed_partial_csum(&mut frame, &h);
        let out_hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut pkt = out_hdr.to_bytes().to_vec();
        pkt.extend_from_slice(&frame);
        sock.send(&pkt);
        let rsps = wait_for(|| {
            let r = g.rx_responses();
            (!r.is_empty()).then_some(r)
        });
        let first = rx_rsp(&rsps[0]);
        assert_ne!(first.flags & NETRXF_EXTRA_INFO, 0, "{first:?}");
        assert_ne!(first.flags & NETRXF_CSUM_BLANK, 0);
        assert_eq!(rsps[1][0], XEN_NETIF_EXTRA_TYPE_GSO);
        assert_eq!(u16::from_le_bytes([rsps[1][2], rsps[1][3]]), 1400);
        let total: i32 = [0usize, 2]
            .iter()
            .filter_map(|&i| rsps.get(i))
            .map(|b| rx_rsp(b).status as i32)
            .sum();
        assert_eq!(total, frame.len() as i32);
        drop(sock);
        drop(nb);
        assert!(tap_goes_away("vif1.0"));
    });
}

#[test]
fn hotplug_script_bridges_the_vif_and_leaves_the_bridge() {
    in_netns(|| {
        let g = FakeGuest::new();
        let (q, _end, _) = g.queue(features());
        let spec = VifSpec {
            bridge: "kxenbrtest".into(),
            script: Some(BUNDLED_VIF_SCRIPT.into()),
            mtu: 1400,
            ..spec()
        };
        let mut nb = NetBackend::new(spec).unwrap();
        nb.start(vec![q], BACKEND_PATH).unwrap();
        let (ok, link) = ip(&["-o", "link", "show", "dev", "vif1.0"]);
        assert!(ok);
        assert!(link.contains("master kxenbrtest"), "{link}");
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("fe:ff:ff:ff:ff:ff"), "{link}");
        assert!(link.contains(",UP"), "{link}");
        let (ok, br) = ip(&["-o", "link", "show", "dev", "kxenbrtest"]);
        assert!(ok && br.contains(",UP"), "{br}");
        // No address was assigned anywhere.
        let (_, addrs) = ip(&["-o", "addr", "show", "dev", "kxenbrtest"]);
        assert!(!addrs.contains("inet"), "{addrs}");
        use kxen_foreign::xenbus::BackendDevice;
        nb.disconnect();
        assert!(tap_goes_away("vif1.0"));
        assert!(ip(&["link", "show", "dev", "kxenbrtest"]).0);
    });
}

#[test]
fn a_failing_script_fails_the_connect_and_removes_the_tap() {
    in_netns(|| {
        let g = FakeGuest::new();
        let (q, _end, _) = g.queue(features());
        let spec = VifSpec {
            script: Some("/bin/false".into()),
            ..spec()
        };
        let mut nb = NetBackend::new(spec).unwrap();
        let err = nb.start(vec![q], BACKEND_PATH).unwrap_err();
        assert!(err.to_string().contains("online"), "{err}");
        assert!(!nb.is_connected());
        assert!(tap_goes_away("vif1.0"));
    });
}

#[test]
fn xenbus_publish_and_a_connect_that_cannot_map_costs_nothing() {
    use kxen_foreign::domain::ForeignDomain;
    use kxen_foreign::xenbus::{BackendDevice, DeviceContext};
    use kxen_xenstore::{Config, Xenstored};
    use std::sync::Arc;

    in_netns(|| {
        let g = FakeGuest::new();
        let store = Xenstored::new(Config::default()).unwrap();
        let ctx = DeviceContext {
            domain: Arc::new(ForeignDomain::new(1, g.mem.clone())),
            store: store.clone(),
            frontend_domid: 1,
            devid: 0,
            frontend_path: "/local/domain/1/device/vif/0".into(),
            backend_path: BACKEND_PATH.into(),
        };
        let mut nb = NetBackend::new(VifSpec {
            queues: 2,
            ..spec()
        })
        .unwrap();
        assert_eq!(nb.kind(), "vif");
        nb.publish(&ctx).unwrap();
        for (k, v) in [
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("multi-queue-max-queues", "2"),
            ("mac", "00:16:3e:00:00:01"),
            ("bridge", "xenbr0"),
            ("handle", "0"),
        ] {
            assert_eq!(ctx.read_backend(k).as_deref(), Some(v), "{k}");
        }
        // Nothing published by the frontend yet.
        assert!(nb.connect(&ctx).is_err());
        for (k, v) in [
            ("tx-ring-ref", "1"),
            ("rx-ring-ref", "2"),
            ("event-channel", "3"),
        ] {
            store
                .write(&format!("{}/{k}", ctx.frontend_path), v)
                .unwrap();
        }
        // No request-rx-copy: refused as a frontend error.
        assert!(matches!(
            nb.connect(&ctx),
            Err(kxen_foreign::xenbus::BackendError::Frontend(_))
        ));
        store
            .write(&format!("{}/request-rx-copy", ctx.frontend_path), "1")
            .unwrap();
        // This domain has no VMM: no grant frames or channels to use.
        assert!(nb.connect(&ctx).is_err());
        assert!(!nb.is_connected());
        assert!(tap_goes_away("vif1.0"));
        nb.disconnect();
        assert_eq!(nb.stats()["tx_packets"], 0);
        assert_eq!(nb.stats().len(), 9);
        store.shutdown();
    });
}

#[test]
fn two_queues_share_one_multi_queue_tap() {
    in_netns(|| {
        let mut g0 = FakeGuest::new();
        let mut g1 = FakeGuest::new();
        let (q0, end0, stats0) = g0.queue(features());
        let (q1, end1, stats1) = g1.queue(features());
        let mut nb = NetBackend::new(VifSpec {
            queues: 2,
            ..spec()
        })
        .unwrap();
        nb.start(vec![q0, q1], BACKEND_PATH).unwrap();
        assert!(ip(&["link", "set", "dev", "vif1.0", "up"]).0);
        let sock = PacketSock::open("vif1.0", false);
        for (g, end, stats, marker) in [
            (&mut g0, &end0, &stats0, b"marker-queue-0"),
            (&mut g1, &end1, &stats1, b"marker-queue-1"),
        ] {
            let frame = tcp4(marker);
            g.fill(10, 0, &frame);
            g.push_tx(&[req(10, 0, 0, 1, frame.len() as u16)]);
            end.kick.write(1).unwrap();
            assert_eq!(sock.recv_with(marker), frame);
            // The frame reaches the socket before the I/O thread counts it;
            // the guest's response is published only after the count.
            let rsp = wait_for(|| g.tx_responses().pop());
            assert_eq!(rsp, (1, NETIF_RSP_OKAY));
            assert_eq!(stats.tx_packets.load(Ordering::Relaxed), 1);
        }
        drop(sock);
        drop(nb);
        assert!(tap_goes_away("vif1.0"));
    });
}

/// Quiesced, the vif takes no TX request and fills no RX buffer; resumed,
/// it serves what was posted and sent meanwhile, exactly once.
#[test]
fn a_quiesced_vif_moves_nothing_and_resume_moves_it_once() {
    in_netns(|| {
        let mut g = FakeGuest::new();
        let (q, end, stats) = g.queue(features());
        let mut nb = NetBackend::new(spec()).unwrap();
        nb.start(vec![q], BACKEND_PATH).unwrap();
        assert!(ip(&["link", "set", "dev", "vif1.0", "up"]).0);
        let sock = PacketSock::open("vif1.0", false);
        for i in 0..8 {
            g.post_rx(i, 20 + i as u32);
        }
        end.kick.write(1).unwrap();

        nb.quiesce(Instant::now() + Duration::from_secs(5)).unwrap();
        // Posted while quiesced: a TX packet (kicked), and a host packet.
        let frame = tcp4(b"marker-quiesced-tx");
        g.fill(10, 200, &frame);
        g.push_tx(&[req(10, 200, 0, 9, frame.len() as u16)]);
        end.kick.write(1).unwrap();
        let inbound = tcp4(b"marker-quiesced-rx");
        sock.send(&inbound);
        // Nothing must move; an absence is only seen over a window.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            g.tx_responses().is_empty(),
            "a TX request was answered while quiesced"
        );
        assert!(
            g.rx_responses().is_empty(),
            "an RX buffer was filled while quiesced"
        );
        assert_eq!(stats.tx_packets.load(Ordering::Relaxed), 0);
        assert_eq!(stats.rx_packets.load(Ordering::Relaxed), 0);

        nb.resume();
        assert_eq!(sock.recv_with(b"marker-quiesced-tx"), frame);
        assert_eq!(wait_for(|| g.tx_responses().pop()), (9, NETIF_RSP_OKAY));
        let delivered = wait_for(|| {
            let r = g.rx_responses();
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(delivered.len(), 1);
        let rsp = rx_rsp(&delivered[0]);
        assert_eq!(rsp.status, inbound.len() as i16);
        let mut data = vec![0u8; inbound.len()];
        g.page(20 + rsp.id as u32).read(0, &mut data);
        assert!(contains(&data, b"marker-quiesced-rx"));
        // Settled again: nothing was answered or delivered twice.
        nb.quiesce(Instant::now() + Duration::from_secs(5)).unwrap();
        assert!(g.tx_responses().is_empty());
        assert!(g.rx_responses().is_empty());
        assert_eq!(stats.tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rx_packets.load(Ordering::Relaxed), 1);
        nb.resume();
        drop(sock);
        drop(nb);
        assert!(tap_goes_away("vif1.0"));
    });
}
