//! netfront: one virtual network interface with tx/rx rings (rx-copy
//! mode), and the little IPv4 stack the tests need: ARP both ways, ICMP
//! echo both ways, UDP datagrams out.

use core::fmt::Write;

use kxen_testguest::net::{self, Arp, Echo, Ipv4, Mac};
use xen_abi::io::netif::{
    NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA,
    NETTXF_MORE_DATA, NET_RX_RING_ENTRY_SIZE, NET_TX_RING_ENTRY_SIZE, XS_EVENT_CHANNEL,
    XS_FEATURE_NO_CSUM_OFFLOAD, XS_FEATURE_RX_COPY, XS_FEATURE_RX_NOTIFY, XS_FEATURE_SG, XS_MAC,
    XS_REQUEST_RX_COPY, XS_RX_RING_REF, XS_TX_RING_REF,
};
use xen_abi::DOMID_SELF;

use super::xs::{self, state, Path, XsError};
use crate::checks::Fail;
use crate::time::{now_ns, Deadline};
use crate::{ensure, env, events, grants, pages, xen, xs_path};
use kxen_testguest::ring::FrontRing;

pub const RX_BUFS: usize = 64;
pub const TX_BUFS: usize = 64;
const HANDSHAKE_MS: u64 = 5_000;
const PING_IDENT: u16 = 0x6b78;
/// Ethernet frames shorter than this are padded.
const MIN_FRAME: usize = 60;
/// Largest frame sent (no jumbo frames).
pub const MAX_FRAME: usize = 1514;

/// One vif. All-zero is a valid (disconnected) value.
pub struct NetDev {
    pub devid: u32,
    pub fe: Path,
    pub be: Path,
    pub backend_id: u16,
    pub port: u32,
    tx: FrontRing<NetifTxResponse>,
    rx: FrontRing<NetifRxResponse>,
    tx_ring: *mut u8,
    rx_ring: *mut u8,
    tx_ring_gref: u32,
    rx_ring_gref: u32,
    rx_buf: [*mut u8; RX_BUFS],
    rx_gref: [u32; RX_BUFS],
    tx_buf: [*mut u8; TX_BUFS],
    tx_gref: [u32; TX_BUFS],
    tx_busy: [bool; TX_BUFS],
    pub mac: Mac,
    pub ip: Ipv4,
    pub peer: Ipv4,
    pub have_ip: bool,
    pub have_peer: bool,
    peer_mac: Mac,
    peer_known: bool,
    /// Echo replies seen, by sequence number modulo 256.
    echo_seen: [bool; 256],
    /// Statuses of the last TX responses (for `net hostile`).
    last_tx_status: [i16; TX_BUFS],
    tx_answered: [bool; TX_BUFS],
    ip_ident: u16,
    /// Continuation slots of a multi-slot packet still to skip.
    skipping: bool,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub kicks: u64,
    pub connected: bool,
}

fn fail(args: core::fmt::Arguments) -> Fail {
    Fail::new(args)
}

pub fn be_token(devid: u32, out: &mut Path) {
    let _ = write!(out, "kxen-front-vif-{}", devid);
}

impl NetDev {
    fn rx_frame(&mut self, id: usize, offset: usize, len: usize) {
        // SAFETY: rx_buf[id] is one of our pages; the backend finished
        // copying into it (its response is published) and the bounds
        // offset + len <= 4096 were checked by the caller. Copied out so
        // that the buffer can be re-posted at once.
        let data = unsafe { core::slice::from_raw_parts(self.rx_buf[id].add(offset), len) };
        let mut frame = [0u8; MAX_FRAME + 4];
        let n = len.min(frame.len());
        frame[..n].copy_from_slice(&data[..n]);
        self.handle_frame(&frame[..n]);
    }

    /// Consume every RX and TX response, answer what needs answering and
    /// re-post RX buffers.
    pub fn poll(&mut self) {
        if !self.connected {
            return;
        }
        loop {
            let mut reposted = false;
            while let Some(rsp) = self.rx.take() {
                let id = rsp.id as usize;
                if id >= RX_BUFS {
                    self.rx_dropped += 1;
                    continue;
                }
                let more = rsp.flags & NETRXF_MORE_DATA != 0;
                let ok = rsp.status > 0
                    && rsp.offset as usize + rsp.status as usize <= 4096
                    && rsp.flags & NETRXF_EXTRA_INFO == 0;
                if ok && !more && !self.skipping {
                    self.rx_packets += 1;
                    self.rx_frame(id, rsp.offset as usize, rsp.status as usize);
                } else {
                    // Errors, and packets that span slots (we post only
                    // single pages and never exceed the MTU): dropped.
                    self.rx_dropped += 1;
                }
                self.skipping = more;
                let req = NetifRxRequest {
                    id: id as u16,
                    _pad: 0,
                    gref: self.rx_gref[id],
                };
                reposted |= self.rx.queue(req);
            }
            if reposted && self.rx.push() {
                xen::send(self.port);
                self.kicks += 1;
            }
            while let Some(rsp) = self.tx.take() {
                if rsp.status == NETIF_RSP_NULL {
                    continue;
                }
                let id = rsp.id as usize;
                if id < TX_BUFS && self.tx_busy[id] {
                    self.tx_busy[id] = false;
                    self.tx_answered[id] = true;
                    self.last_tx_status[id] = rsp.status;
                    if rsp.status != NETIF_RSP_OKAY {
                        self.tx_errors += 1;
                    }
                }
            }
            let more_rx = self.rx.final_check();
            let more_tx = self.tx.final_check();
            if !more_rx && !more_tx {
                return;
            }
        }
    }

    fn handle_frame(&mut self, f: &[u8]) {
        let Some((eth, payload)) = net::parse_eth(f) else {
            return;
        };
        if eth.dst != self.mac && eth.dst != net::BROADCAST {
            return;
        }
        match eth.ethertype {
            net::ETHERTYPE_ARP => {
                let Some(a) = net::parse_arp(payload) else {
                    return;
                };
                if self.have_peer && a.spa == self.peer {
                    self.peer_mac = a.sha;
                    self.peer_known = true;
                }
                if a.op == net::ARP_REQUEST && self.have_ip && a.tpa == self.ip {
                    let reply = Arp {
                        op: net::ARP_REPLY,
                        sha: self.mac,
                        spa: self.ip,
                        tha: a.sha,
                        tpa: a.spa,
                    };
                    let _ = self.send(|out| net::build_arp(out, &reply));
                }
            }
            net::ETHERTYPE_IPV4 => {
                let Some(ip) = net::parse_ipv4_packet(payload) else {
                    return;
                };
                if !self.have_ip || ip.dst != self.ip || ip.proto != net::IPPROTO_ICMP {
                    return;
                }
                let Some(e) = net::parse_echo(ip.payload) else {
                    return;
                };
                if e.kind == net::ICMP_ECHO_REQUEST {
                    let mut data = [0u8; MAX_FRAME];
                    let n = e.data.len().min(MAX_FRAME - 14 - 20 - 8);
                    data[..n].copy_from_slice(&e.data[..n]);
                    let (src, mac) = (ip.src, eth.src);
                    let reply = Echo {
                        kind: net::ICMP_ECHO_REPLY,
                        ident: e.ident,
                        seq: e.seq,
                        data: &data[..n],
                    };
                    self.send_ip(mac, src, net::IPPROTO_ICMP, |out| {
                        net::build_echo(out, &reply)
                    });
                } else if e.kind == net::ICMP_ECHO_REPLY && e.ident == PING_IDENT {
                    self.echo_seen[(e.seq & 0xff) as usize] = true;
                }
            }
            _ => {}
        }
    }

    /// Sleep until the vif's event channel fires or `deadline_ns`.
    fn sleep(&mut self, deadline_ns: Option<u64>) {
        events::drain();
        events::take_seen(self.port);
        events::clear_pending(self.port);
        if self.rx.unconsumed() > 0 || self.tx.unconsumed() > 0 {
            return;
        }
        let now = now_ns().unwrap_or(0);
        let until = deadline_ns
            .unwrap_or(now + 10_000_000)
            .min(now + 50_000_000);
        let mut ports = [self.port];
        xen::poll(&mut ports, until);
    }

    /// Poll until `cond` holds or `ms` pass.
    fn wait_for(&mut self, ms: u64, cond: impl Fn(&NetDev) -> bool) -> bool {
        let mut d = Deadline::after_ms(ms);
        loop {
            self.poll();
            if cond(self) {
                return true;
            }
            if d.expired() {
                return false;
            }
            self.sleep(d.end_ns());
        }
    }

    fn free_tx(&mut self) -> Option<usize> {
        if self.tx.free_slots() == 0 {
            return None;
        }
        self.tx_busy.iter().position(|b| !b)
    }

    /// Queue raw TX requests for buffer `id` (already filled); publishes
    /// and notifies.
    fn post_tx(&mut self, reqs: &[NetifTxRequest], id: usize) -> bool {
        if (self.tx.free_slots() as usize) < reqs.len() {
            return false;
        }
        for r in reqs {
            self.tx.queue(*r);
        }
        self.tx_busy[id] = true;
        self.tx_answered[id] = false;
        if self.tx.push() {
            xen::send(self.port);
            self.kicks += 1;
        }
        true
    }

    /// Send one frame built by `build` into a free TX buffer. Waits up to a
    /// second for a free buffer.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Result<usize, Fail> {
        let mut id = self.free_tx();
        if id.is_none() {
            self.wait_for(1_000, |d| {
                d.tx.free_slots() > 0 && d.tx_busy.iter().any(|b| !b)
            });
            id = self.free_tx();
        }
        let id = id.ok_or_else(|| fail(format_args!("no free TX buffer")))?;
        // SAFETY: tx_buf[id] is one of our pages and not in flight
        // (tx_busy is false), so the backend does not read it now.
        let buf = unsafe { core::slice::from_raw_parts_mut(self.tx_buf[id], 4096) };
        let mut len = build(&mut buf[..MAX_FRAME]);
        if len == 0 {
            return Err(fail(format_args!("frame did not fit")));
        }
        if len < MIN_FRAME {
            buf[len..MIN_FRAME].fill(0);
            len = MIN_FRAME;
        }
        let req = NetifTxRequest {
            gref: self.tx_gref[id],
            offset: 0,
            flags: 0,
            id: id as u16,
            size: len as u16,
        };
        if !self.post_tx(&[req], id) {
            return Err(fail(format_args!("TX ring full")));
        }
        self.tx_packets += 1;
        Ok(id)
    }

    /// Send an IPv4 datagram whose payload `build` writes.
    fn send_ip(
        &mut self,
        dst_mac: Mac,
        dst: Ipv4,
        proto: u8,
        build: impl FnOnce(&mut [u8]) -> usize,
    ) -> Option<usize> {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        let (mac, ip, ident) = (self.mac, self.ip, self.ip_ident);
        self.send(|out| {
            let n = build(&mut out[net::ETH_HLEN + net::IP_HLEN..]);
            if n == 0 {
                return 0;
            }
            net::build_ipv4_headers(out, dst_mac, mac, ip, dst, proto, ident, n)
        })
        .ok()
    }

    /// Find the peer's MAC by ARP (three tries).
    pub fn resolve_peer(&mut self) -> Result<Mac, Fail> {
        ensure!(
            self.have_ip && self.have_peer,
            "no kxen.ip=/kxen.peer= on the command line"
        );
        for _ in 0..3 {
            if self.peer_known {
                break;
            }
            let req = Arp {
                op: net::ARP_REQUEST,
                sha: self.mac,
                spa: self.ip,
                tha: [0; 6],
                tpa: self.peer,
            };
            self.send(|out| net::build_arp(out, &req))?;
            self.wait_for(1_000, |d| d.peer_known);
        }
        ensure!(
            self.peer_known,
            "no ARP reply from {}.{}.{}.{}",
            self.peer[0],
            self.peer[1],
            self.peer[2],
            self.peer[3]
        );
        Ok(self.peer_mac)
    }

    /// `net ping`: echo requests to the peer, one at a time, one second
    /// each; the number of replies.
    pub fn ping(&mut self, count: u64) -> Result<u64, Fail> {
        let mac = self.resolve_peer()?;
        let mut got = 0;
        for seq in 0..count {
            let seq = seq as u16;
            self.echo_seen[(seq & 0xff) as usize] = false;
            let data = *b"kxen-testguest ping payload 0123";
            let e = Echo {
                kind: net::ICMP_ECHO_REQUEST,
                ident: PING_IDENT,
                seq,
                data: &data,
            };
            let peer = self.peer;
            self.send_ip(mac, peer, net::IPPROTO_ICMP, |out| net::build_echo(out, &e))
                .ok_or_else(|| fail(format_args!("sending echo request {} failed", seq)))?;
            if self.wait_for(1_000, |d| d.echo_seen[(seq & 0xff) as usize]) {
                got += 1;
            }
        }
        Ok(got)
    }

    /// `net bench tx`: UDP datagrams to the peer's discard port; returns
    /// (payload bytes, ns).
    pub fn bench_tx(&mut self, mib: u64) -> Result<(u64, u64), Fail> {
        let mac = self.resolve_peer()?;
        const PAYLOAD: usize = MAX_FRAME - 14 - 20 - 8;
        let total = mib * 1024 * 1024;
        let mut sent = 0u64;
        let errors0 = self.tx_errors;
        let start = now_ns().unwrap_or(0);
        while sent < total {
            let n = (total - sent).min(PAYLOAD as u64) as usize;
            let (src, dst) = (self.ip, self.peer);
            let id = self.send_ip(mac, dst, net::IPPROTO_UDP, |out| {
                out[8..8 + n].fill(0x5a);
                net::build_udp(out, src, dst, 40000, 9, n)
            });
            ensure!(id.is_some(), "TX stalled after {} bytes", sent);
            sent += n as u64;
            self.poll();
        }
        ensure!(
            self.wait_for(5_000, |d| d.tx_busy.iter().all(|b| !b)),
            "TX responses missing at the end"
        );
        let ns = now_ns().unwrap_or(start).saturating_sub(start).max(1);
        ensure!(
            self.tx_errors == errors0,
            "{} datagrams failed",
            self.tx_errors - errors0
        );
        Ok((sent, ns))
    }

    /// `net hostile`: malformed TX requests must be refused and the vif
    /// keep working.
    pub fn hostile(&mut self) -> Result<(), Fail> {
        let bad = grants::reserve_invalid().map_err(|e| fail(format_args!("grant: {}", e)))?;
        let r = self.hostile_cases(bad);
        grants::release_unused(bad);
        r?;
        // Still working: a well-formed frame is sent fine, and the peer
        // (if configured) still answers.
        let req = Arp {
            op: net::ARP_REQUEST,
            sha: self.mac,
            spa: self.ip,
            tha: [0; 6],
            tpa: self.peer,
        };
        let id = self.send(|out| net::build_arp(out, &req))?;
        ensure!(
            self.wait_for(2_000, |d| d.tx_answered[id]),
            "no TX response to a valid frame after the hostile ones"
        );
        ensure!(
            self.last_tx_status[id] == NETIF_RSP_OKAY,
            "valid frame after the hostile ones: status {}",
            self.last_tx_status[id]
        );
        if self.have_peer && self.have_ip {
            self.peer_known = false;
            let got = self.ping(1)?;
            ensure!(got == 1, "peer no longer answers pings");
        }
        Ok(())
    }

    fn hostile_cases(&mut self, bad_gref: u32) -> Result<(), Fail> {
        for case in 0..4 {
            let Some(id) = self.free_tx() else {
                self.wait_for(1_000, |d| d.tx_busy.iter().all(|b| !b));
                continue;
            };
            // SAFETY: as in `send`: our idle TX page.
            let buf = unsafe { core::slice::from_raw_parts_mut(self.tx_buf[id], 4096) };
            buf[..64].fill(0xee);
            let g = self.tx_gref[id];
            let mk = |gref, offset, flags, size| NetifTxRequest {
                gref,
                offset,
                flags,
                id: id as u16,
                size,
            };
            let (what, reqs): (&str, [NetifTxRequest; 2]) = match case {
                0 => (
                    "frame crossing the page end",
                    [mk(g, 4000, 0, 200), mk(0, 0, 0, 0)],
                ),
                1 => (
                    "oversized frame (65535 bytes in one slot)",
                    [mk(g, 0, 0, 65535), mk(0, 0, 0, 0)],
                ),
                2 => ("forged grant ref", [mk(bad_gref, 0, 0, 64), mk(0, 0, 0, 0)]),
                _ => (
                    "first slot shorter than the rest of the chain",
                    [mk(g, 0, NETTXF_MORE_DATA, 60), mk(g, 100, 0, 200)],
                ),
            };
            let n = if case == 3 { 2 } else { 1 };
            ensure!(self.post_tx(&reqs[..n], id), "{}: TX ring full", what);
            ensure!(
                self.wait_for(2_000, |d| d.tx_answered[id] && d.tx.outstanding() == 0),
                "{}: no TX response",
                what
            );
            let st = self.last_tx_status[id];
            ensure!(
                st == NETIF_RSP_ERROR || st == NETIF_RSP_DROPPED,
                "{}: expected NETIF_RSP_ERROR or DROPPED, got {}",
                what,
                st
            );
        }
        Ok(())
    }
}

/// Connect vif `devid` (device/vif/<devid>). `with_ip`: this vif takes
/// the command line's address (only one vif may, or a second vif's ARP
/// announcement would steal the address from the first).
pub fn connect(devid: u32, with_ip: bool) -> Result<&'static mut NetDev, Fail> {
    // SAFETY: NetDev is integers, bools, byte arrays and raw pointers:
    // all-zero is a valid, disconnected value.
    let dev = unsafe { pages::alloc_zeroed::<NetDev>() }
        .ok_or_else(|| fail(format_args!("out of memory")))?;
    dev.devid = devid;
    match handshake(dev, with_ip) {
        Ok(()) => Ok(dev),
        Err(e) => {
            let fe = xs_path!("{}", dev.fe);
            teardown(dev);
            let _ = xs::switch_state(&fe, state::CLOSED);
            Err(e)
        }
    }
}

fn handshake(dev: &mut NetDev, with_ip: bool) -> Result<(), Fail> {
    let xe = |what: &str, e: XsError| fail(format_args!("{}: {}", what, e));
    dev.fe = xs_path!("device/vif/{}", dev.devid);
    let mut be = [0u8; 160];
    let n = xs::read(&xs_path!("{}/backend", dev.fe), &mut be).map_err(|e| xe("backend", e))?;
    dev.be.push(&be[..n]);
    let id = xs::read_u64(&xs_path!("{}/backend-id", dev.fe)).map_err(|e| xe("backend-id", e))?;
    dev.backend_id = u16::try_from(id).map_err(|_| fail(format_args!("backend-id {}", id)))?;
    let mut mac = [0u8; 32];
    let n = xs::read(&xs_path!("{}/{}", dev.fe, XS_MAC), &mut mac).map_err(|e| xe("mac", e))?;
    dev.mac = net::parse_mac(&mac[..n]).ok_or_else(|| fail(format_args!("bad mac")))?;
    if with_ip {
        if let Some((ip, _)) = env::cmdline_value(b"kxen.ip").and_then(net::parse_cidr) {
            dev.ip = ip;
            dev.have_ip = true;
        }
        if let Some(p) = env::cmdline_value(b"kxen.peer").and_then(net::parse_ipv4) {
            dev.peer = p;
            dev.have_peer = true;
        }
    }

    let mut token = Path::new();
    be_token(dev.devid, &mut token);
    let be_state = xs_path!("{}/state", dev.be);
    xs::watch(&be_state, token.as_bytes()).map_err(|e| xe("watch backend state", e))?;
    xs::switch_state(&dev.fe, state::INITIALISING).map_err(|e| xe("state", e))?;
    xs::wait_state(
        &be_state,
        token.as_bytes(),
        |s| s == state::INIT_WAIT || s == state::CONNECTED,
        HANDSHAKE_MS,
    )
    .map_err(|(e, s)| fail(format_args!("backend not in InitWait ({}, state {})", e, s)))?;
    let rx_copy = xs::read_u64_or(&xs_path!("{}/{}", dev.be, XS_FEATURE_RX_COPY), 0)
        .map_err(|e| xe("feature-rx-copy", e))?;
    if rx_copy == 0 {
        return Err(fail(format_args!("backend lacks feature-rx-copy")));
    }

    let oom = || fail(format_args!("out of memory"));
    dev.tx_ring = pages::alloc().ok_or_else(oom)?;
    dev.rx_ring = pages::alloc().ok_or_else(oom)?;
    let grant = |p: *mut u8, ro: bool, backend: u16| {
        grants::grant(backend, p as u64 >> 12, ro).map_err(|e| fail(format_args!("grant: {}", e)))
    };
    dev.tx_ring_gref = grant(dev.tx_ring, false, dev.backend_id)?;
    dev.rx_ring_gref = grant(dev.rx_ring, false, dev.backend_id)?;
    // SAFETY: each ring is one zeroed page of ours.
    dev.tx = unsafe { FrontRing::new(dev.tx_ring, 4096, NET_TX_RING_ENTRY_SIZE) };
    // SAFETY: as above.
    dev.rx = unsafe { FrontRing::new(dev.rx_ring, 4096, NET_RX_RING_ENTRY_SIZE) };
    for i in 0..TX_BUFS {
        dev.tx_buf[i] = pages::alloc().ok_or_else(oom)?;
        dev.tx_gref[i] = grant(dev.tx_buf[i], true, dev.backend_id)?;
    }
    for i in 0..RX_BUFS {
        dev.rx_buf[i] = pages::alloc().ok_or_else(oom)?;
        dev.rx_gref[i] = grant(dev.rx_buf[i], false, dev.backend_id)?;
        let req = NetifRxRequest {
            id: i as u16,
            _pad: 0,
            gref: dev.rx_gref[i],
        };
        dev.rx.queue(req);
    }
    dev.port = xen::alloc_unbound(DOMID_SELF, dev.backend_id)
        .map_err(|rc| fail(format_args!("alloc_unbound: {}", rc)))?;
    xen::unmask(dev.port);
    // RX buffers are visible before we say Connected.
    dev.rx.push();

    let fe = xs_path!("{}", dev.fe);
    let (txg, rxg, port) = (dev.tx_ring_gref, dev.rx_ring_gref, dev.port);
    xs::transaction(|tx| {
        xs::write_u64(tx, &xs_path!("{}/{}", fe, XS_TX_RING_REF), txg as u64)?;
        xs::write_u64(tx, &xs_path!("{}/{}", fe, XS_RX_RING_REF), rxg as u64)?;
        xs::write_u64(tx, &xs_path!("{}/{}", fe, XS_EVENT_CHANNEL), port as u64)?;
        xs::write(tx, &xs_path!("{}/{}", fe, XS_REQUEST_RX_COPY), b"1")?;
        xs::write(tx, &xs_path!("{}/{}", fe, XS_FEATURE_RX_NOTIFY), b"1")?;
        xs::write(tx, &xs_path!("{}/{}", fe, XS_FEATURE_SG), b"0")?;
        xs::write(tx, &xs_path!("{}/{}", fe, XS_FEATURE_NO_CSUM_OFFLOAD), b"1")
    })
    .map_err(|e| xe("writing ring details", e))?;
    xs::switch_state(&dev.fe, state::CONNECTED).map_err(|e| xe("state", e))?;
    xs::wait_backend_connected(&be_state, token.as_bytes(), HANDSHAKE_MS)
        .map_err(|(e, s)| fail(format_args!("backend did not connect ({}, state {})", e, s)))?;
    dev.connected = true;
    // Say who we are (as Linux does on link-up) so the peer learns our MAC.
    if dev.have_ip {
        let ann = Arp {
            op: net::ARP_REQUEST,
            sha: dev.mac,
            spa: dev.ip,
            tha: [0; 6],
            tpa: dev.ip,
        };
        let _ = dev.send(|out| net::build_arp(out, &ann));
    }
    Ok(())
}

/// Hot unplug: stop, revoke, switch to Closed.
pub fn close(dev: &'static mut NetDev) {
    dev.connected = false;
    let fe = xs_path!("{}", dev.fe);
    let _ = xs::switch_state(&fe, state::CLOSING);
    teardown(dev);
    let _ = xs::switch_state(&fe, state::CLOSED);
}

fn release(gref: u32, page: *mut u8) {
    if page.is_null() {
        return;
    }
    if gref == 0 || grants::end(gref).is_ok() {
        pages::free(page);
    }
    // Else the backend still holds it: leak the page rather than reuse it.
}

fn teardown(dev: &'static mut NetDev) {
    let mut token = Path::new();
    be_token(dev.devid, &mut token);
    if !dev.be.as_bytes().is_empty() {
        let _ = xs::unwatch(&xs_path!("{}/state", dev.be), token.as_bytes());
    }
    if dev.port != 0 {
        xen::close(dev.port);
    }
    for i in 0..TX_BUFS {
        release(dev.tx_gref[i], dev.tx_buf[i]);
    }
    for i in 0..RX_BUFS {
        release(dev.rx_gref[i], dev.rx_buf[i]);
    }
    release(dev.tx_ring_gref, dev.tx_ring);
    release(dev.rx_ring_gref, dev.rx_ring);
    pages::free_zeroed(dev);
}
