//! virtio-net against a real TAP: each test runs on a thread in its own
//! network namespace, and frames are exchanged with a packet socket on
//! the TAP, so nothing touches the host's interfaces.

use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::device::{Queues, VirtioDevice, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};
use crate::error::Fault;
use crate::memory::GuestMem;
use crate::net::*;
use crate::tests::{test_memory, Driver, F_INDIRECT, F_NEXT};
use kxen_netback::spec::BUNDLED_VIF_SCRIPT;
use kxen_netback::test_support::{in_netns, ip, PacketSock};
use kxen_netback::VifSpec;

/// A chain as (addr, len, device-writable) buffers.
type Bufs<'a> = &'a [(u64, u32, bool)];

const MAC: [u8; 6] = [0, 0x16, 0x3e, 0x12, 0x34, 0x56];
const RXQ: u64 = 0x1000;
const TXQ: u64 = 0x8000;
const BUF: u64 = 0x10_0000;

/// An Ethernet frame (local experimental ethertype) carrying `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

struct Rig {
    mem: GuestMem,
    dev: NetDevice,
}

fn rig() -> Rig {
    let dev = NetDevice::new(VifSpec::new(7, 1, MAC)).expect("TAP");
    assert_eq!(dev.tap_name(), "vif7.1");
    assert!(ip(&["link", "set", "dev", "vif7.1", "up"]).0);
    Rig {
        mem: test_memory(),
        dev,
    }
}

fn activate(r: &mut Rig, rx: &Driver, tx: &Driver, features: u64) -> Queues {
    r.dev.activate(features).unwrap();
    Queues::new(features, &[rx.setup(0), tx.setup(1)], 2, &r.mem).unwrap()
}

/// Poll the device's host fd like the worker does, up to a few seconds,
/// until `done`.
fn pump(r: &mut Rig, q: &mut Queues, mut done: impl FnMut(&mut Rig) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(r) {
        assert!(Instant::now() < deadline, "timed out");
        if let Some(fd) = r.dev.host_fd() {
            crate::tests::readable(&fd, 100);
            r.dev.host_ready(q, &r.mem).unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn net_features_and_config() {
    in_netns(|| {
        let r = rig();
        let f = r.dev.features();
        for bit in [
            F_MAC,
            F_STATUS,
            F_MRG_RXBUF,
            F_RING_EVENT_IDX,
            F_VERSION_1,
            F_MTU,
        ] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        let c = r.dev.config();
        assert_eq!(&c[0..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), S_LINK_UP);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    });
}

#[test]
fn frames_cross_the_tap_both_ways() {
    in_netns(|| {
        let mut r = rig();
        let mem = test_memory();
        let mut rx = Driver::new(&mem, RXQ, 16);
        let mut tx = Driver::new(&mem, TXQ, 16);
        r.mem = mem.clone();
        let mut q = activate(&mut r, &rx, &tx, F_VERSION_1 | F_MAC | F_STATUS);
        let sock = PacketSock::open("vif7.1", false);

        // Guest to host: header and frame in separate buffers.
        let out = frame(b"marker-guest-to-host");
        mem.write_slice(&[0xee; HDR_LEN], GuestAddress(BUF))
            .unwrap();
        mem.write_slice(&out, GuestAddress(BUF + 0x1000)).unwrap();
        tx.add(&[
            (BUF, HDR_LEN as u32, false),
            (BUF + 0x1000, out.len() as u32, false),
        ]);
        r.dev.process(TX, &mut q, &mem).unwrap();
        assert_eq!(sock.recv_with(b"marker-guest-to-host"), out);
        assert_eq!(tx.used(), vec![(0, 0)]);
        assert!(q.take_notify(&mem).unwrap());

        // Host to guest, into one 2 KiB buffer (no MRG_RXBUF).
        rx.add(&[(BUF + 0x10000, 2048, true)]);
        let back = frame(b"marker-host-to-guest");
        sock.send(&back);
        let mut got = Vec::new();
        pump(&mut r, &mut q, |_| {
            got.extend(rx.used());
            !got.is_empty()
        });
        assert_eq!(got, vec![(0, (HDR_LEN + back.len()) as u32)]);
        let mut buf = vec![0u8; HDR_LEN + back.len()];
        mem.read_slice(&mut buf, GuestAddress(BUF + 0x10000))
            .unwrap();
        assert_eq!(&buf[..HDR_LEN], &rx_header(1));
        assert_eq!(&buf[HDR_LEN..], &back[..]);
        assert_eq!((r.dev.stats.tx, r.dev.stats.rx), (1, 1));
    });
}

#[test]
fn mergeable_receive_buffers_and_starvation() {
    in_netns(|| {
        let mut r = rig();
        let mem = test_memory();
        let mut rx = Driver::new(&mem, RXQ, 16);
        let tx = Driver::new(&mem, TXQ, 16);
        r.mem = mem.clone();
        let f = F_VERSION_1 | F_MRG_RXBUF | F_RING_EVENT_IDX;
        let mut q = activate(&mut r, &rx, &tx, f);
        let sock = PacketSock::open("vif7.1", false);

        // A 1000-byte frame needs four 300-byte buffers; the guest has
        // three. The device waits (not reading the TAP) and asks for a
        // kick when the avail index moves past what it saw.
        for i in 0..3 {
            rx.add(&[(BUF + 0x1000 * i, 300, true)]);
        }
        let mut payload = b"marker-big".to_vec();
        payload.resize(1000 - 14, 0x5a);
        let big = frame(&payload);
        sock.send(&big);
        pump(&mut r, &mut q, |r| r.dev.host_fd().is_none());
        assert!(rx.used().is_empty());
        assert_eq!(rx.avail_event(), 3);

        rx.add(&[(BUF + 0x3000, 300, true)]);
        r.dev.process(RX, &mut q, &mem).unwrap();
        let used = rx.used();
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            [300, 300, 300, 112]
        );
        let mut got = Vec::new();
        for (i, (_, len)) in used.iter().enumerate() {
            let mut b = vec![0u8; *len as usize];
            mem.read_slice(&mut b, GuestAddress(BUF + 0x1000 * i as u64))
                .unwrap();
            got.extend(b);
        }
        assert_eq!(&got[..HDR_LEN], &rx_header(4));
        assert_eq!(&got[HDR_LEN..], &big[..]);
        assert!(r.dev.host_fd().is_some());
    });
}

#[test]
fn hostile_transmit_chains() {
    in_netns(|| {
        let mut r = rig();
        let mem = test_memory();
        r.mem = mem.clone();
        let cases: [(Bufs, Fault); 3] = [
            (
                &[(BUF, 12, false), (BUF + 0x1000, 64, true)],
                Fault::WritableTx,
            ),
            (&[(BUF, 8, false)], Fault::ShortHeader(8)),
            (
                &[(BUF, 12, false), (12 << 20, 64, false)],
                Fault::OutOfRam {
                    addr: 12 << 20,
                    len: 64,
                },
            ),
        ];
        for (chain, want) in cases {
            let rx = Driver::new(&mem, RXQ, 16);
            let mut tx = Driver::new(&mem, TXQ, 16);
            let mut q = activate(&mut r, &rx, &tx, F_VERSION_1);
            tx.add(chain);
            assert_eq!(r.dev.process(TX, &mut q, &mem).unwrap_err(), want);
        }
        // An empty frame is dropped, not a fault.
        let rx = Driver::new(&mem, RXQ, 16);
        let mut tx = Driver::new(&mem, TXQ, 16);
        let mut q = activate(&mut r, &rx, &tx, F_VERSION_1);
        tx.add(&[(BUF, 12, false)]);
        r.dev.process(TX, &mut q, &mem).unwrap();
        assert_eq!(tx.used(), vec![(0, 0)]);
        assert_eq!(r.dev.stats.tx_dropped, 1);
    });
}

/// A frame in more pieces than one writev takes (1024 descriptors, the
/// first carrying the header and one frame byte: 1025 iovecs) is dropped
/// whole; sending the first 1024 would put a truncated frame on the wire.
#[test]
fn transmit_frame_in_too_many_pieces_is_dropped_not_truncated() {
    in_netns(|| {
        let mut r = rig();
        let mem = test_memory();
        r.mem = mem.clone();
        let rx = Driver::new(&mem, RXQ, 16);
        let mut tx = Driver::new(&mem, TXQ, 16);
        let mut q = activate(&mut r, &rx, &tx, F_VERSION_1 | F_RING_INDIRECT_DESC);
        const TABLE: u64 = 0x20_0000;
        const PIECES: u16 = 1024;
        for i in 0..PIECES {
            let (addr, len) = if i == 0 {
                (BUF, HDR_LEN as u32 + 1)
            } else {
                (BUF + 0x1000 + u64::from(i), 1)
            };
            let flags = if i + 1 < PIECES { F_NEXT } else { 0 };
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i + 1));
            mem.write_obj(raw, GuestAddress(TABLE + 16 * u64::from(i)))
                .unwrap();
        }
        tx.store(0, TABLE, 16 * u32::from(PIECES), F_INDIRECT, 0);
        tx.publish(0);
        r.dev.process(TX, &mut q, &mem).unwrap();
        assert_eq!(tx.used(), vec![(0, 0)]);
        assert_eq!((r.dev.stats.tx, r.dev.stats.tx_dropped), (0, 1));
    });
}

#[test]
fn hotplug_script_bridges_the_tap_and_it_goes_away() {
    in_netns(|| {
        let mut spec = VifSpec::new(7, 1, MAC);
        spec.script = Some(BUNDLED_VIF_SCRIPT.into());
        spec.bridge = "xenbr7".into();
        let dev = NetDevice::new(spec).expect("TAP");
        let (_, line) = ip(&["-o", "link", "show", "dev", "vif7.1"]);
        assert!(line.contains("master xenbr7"), "{line}");
        assert!(line.contains("fe:ff:ff:ff:ff:ff"), "{line}");
        drop(dev);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ip(&["link", "show", "dev", "vif7.1"]).0 {
            assert!(Instant::now() < deadline, "vif7.1 still there");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
