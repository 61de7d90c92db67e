//! Ethernet, ARP, IPv4, ICMP and UDP: building and parsing the few frames
//! netfront sends and answers. Pure functions on byte slices; every length
//! and offset taken from a received frame is checked before use.

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IP_HLEN: usize = 20;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ARP_LEN: usize = 28;
pub const BROADCAST: Mac = [0xff; 6];

pub type Mac = [u8; 6];
pub type Ipv4 = [u8; 4];

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of `data`, starting from `initial`
/// (a partial one's-complement sum, e.g. of a pseudo-header).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parse "a.b.c.d".
pub fn parse_ipv4(s: &[u8]) -> Option<Ipv4> {
    let mut out = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&b| b == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 {
            return None;
        }
        let mut v: u32 = 0;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (d - b'0') as u32;
        }
        if v > 255 {
            return None;
        }
        out[n] = v as u8;
        n += 1;
    }
    (n == 4).then_some(out)
}

/// Parse "a.b.c.d/len" (len defaults to 24 when absent).
pub fn parse_cidr(s: &[u8]) -> Option<(Ipv4, u8)> {
    match s.iter().position(|&b| b == b'/') {
        None => Some((parse_ipv4(s)?, 24)),
        Some(i) => {
            let len = crate::cmd::parse_u64(&s[i + 1..])?;
            (len <= 32).then_some((parse_ipv4(&s[..i])?, len as u8))
        }
    }
}

/// Parse "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &[u8]) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(|&b| b == b':') {
        if n == 6 || part.len() != 2 {
            return None;
        }
        let hex = |d: u8| (d as char).to_digit(16);
        out[n] = (hex(part[0])? * 16 + hex(part[1])?) as u8;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// A received Ethernet frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eth {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
}

pub fn parse_eth(f: &[u8]) -> Option<(Eth, &[u8])> {
    if f.len() < ETH_HLEN {
        return None;
    }
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&f[0..6]);
    src.copy_from_slice(&f[6..12]);
    Some((
        Eth {
            dst,
            src,
            ethertype: be16(f, 12),
        },
        &f[ETH_HLEN..],
    ))
}

fn put_eth(out: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    put16(out, 12, ethertype);
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: Mac,
    pub spa: Ipv4,
    pub tha: Mac,
    pub tpa: Ipv4,
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    if p.len() < ARP_LEN
        || be16(p, 0) != 1
        || be16(p, 2) != ETHERTYPE_IPV4
        || p[4] != 6
        || p[5] != 4
    {
        return None;
    }
    let mut a = Arp {
        op: be16(p, 6),
        sha: [0; 6],
        spa: [0; 4],
        tha: [0; 6],
        tpa: [0; 4],
    };
    a.sha.copy_from_slice(&p[8..14]);
    a.spa.copy_from_slice(&p[14..18]);
    a.tha.copy_from_slice(&p[18..24]);
    a.tpa.copy_from_slice(&p[24..28]);
    Some(a)
}

/// Write an Ethernet frame carrying `arp` into `out`; returns its length.
/// Requests go to the broadcast address, replies to `arp.tha`.
pub fn build_arp(out: &mut [u8], arp: &Arp) -> usize {
    let dst = if arp.op == ARP_REQUEST {
        BROADCAST
    } else {
        arp.tha
    };
    put_eth(out, dst, arp.sha, ETHERTYPE_ARP);
    let p = &mut out[ETH_HLEN..ETH_HLEN + ARP_LEN];
    put16(p, 0, 1);
    put16(p, 2, ETHERTYPE_IPV4);
    p[4] = 6;
    p[5] = 4;
    put16(p, 6, arp.op);
    p[8..14].copy_from_slice(&arp.sha);
    p[14..18].copy_from_slice(&arp.spa);
    p[18..24].copy_from_slice(&arp.tha);
    p[24..28].copy_from_slice(&arp.tpa);
    ETH_HLEN + ARP_LEN
}

/// A received IPv4 datagram's header fields and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip<'a> {
    pub src: Ipv4,
    pub dst: Ipv4,
    pub proto: u8,
    pub payload: &'a [u8],
}

/// Parse an IPv4 header (options allowed, fragments refused) and check its
/// checksum and lengths.
pub fn parse_ipv4_packet(p: &[u8]) -> Option<Ip<'_>> {
    if p.len() < IP_HLEN || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = (p[0] & 0xf) as usize * 4;
    let total = be16(p, 2) as usize;
    if ihl < IP_HLEN || total < ihl || total > p.len() {
        return None;
    }
    // More-fragments flag or a fragment offset: not for us.
    if be16(p, 6) & 0x3fff != 0 {
        return None;
    }
    if checksum(&p[..ihl], 0) != 0 {
        return None;
    }
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(&p[12..16]);
    dst.copy_from_slice(&p[16..20]);
    Some(Ip {
        src,
        dst,
        proto: p[9],
        payload: &p[ihl..total],
    })
}

/// Write Ethernet + IPv4 headers for a payload of `payload_len` bytes that
/// the caller puts at `out[ETH_HLEN + IP_HLEN..]`; returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn build_ipv4_headers(
    out: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4,
    dst: Ipv4,
    proto: u8,
    ident: u16,
    payload_len: usize,
) -> usize {
    put_eth(out, dst_mac, src_mac, ETHERTYPE_IPV4);
    let ip = &mut out[ETH_HLEN..ETH_HLEN + IP_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, (IP_HLEN + payload_len) as u16);
    put16(ip, 4, ident);
    put16(ip, 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(ip, 0);
    put16(ip, 10, c);
    ETH_HLEN + IP_HLEN + payload_len
}

/// An ICMP echo request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo<'a> {
    pub kind: u8,
    pub ident: u16,
    pub seq: u16,
    pub data: &'a [u8],
}

/// Parse an ICMP echo message (checksum verified).
pub fn parse_echo(p: &[u8]) -> Option<Echo<'_>> {
    if p.len() < 8 || p[1] != 0 || checksum(p, 0) != 0 {
        return None;
    }
    if p[0] != ICMP_ECHO_REQUEST && p[0] != ICMP_ECHO_REPLY {
        return None;
    }
    Some(Echo {
        kind: p[0],
        ident: be16(p, 4),
        seq: be16(p, 6),
        data: &p[8..],
    })
}

/// Write an ICMP echo message into `out`; returns its length, or 0 if it
/// does not fit.
pub fn build_echo(out: &mut [u8], e: &Echo) -> usize {
    let len = 8 + e.data.len();
    if out.len() < len {
        return 0;
    }
    out[0] = e.kind;
    out[1] = 0;
    put16(out, 2, 0);
    put16(out, 4, e.ident);
    put16(out, 6, e.seq);
    out[8..len].copy_from_slice(e.data);
    let c = checksum(&out[..len], 0);
    put16(out, 2, c);
    len
}

/// Write a UDP header for `payload_len` bytes already at `out[8..]`
/// (checksum over the IPv4 pseudo-header); returns the UDP length.
pub fn build_udp(
    out: &mut [u8],
    src: Ipv4,
    dst: Ipv4,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> usize {
    let len = 8 + payload_len;
    put16(out, 0, sport);
    put16(out, 2, dport);
    put16(out, 4, len as u16);
    put16(out, 6, 0);
    let mut pseudo: u32 = 0;
    for w in [src, dst] {
        pseudo += be16(&w, 0) as u32 + be16(&w, 2) as u32;
    }
    pseudo += IPPROTO_UDP as u32 + len as u32;
    let c = checksum(&out[..len], pseudo);
    // 0 means "no checksum" in UDP; send all ones instead.
    put16(out, 6, if c == 0 { 0xffff } else { c });
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = [0x00, 0x16, 0x3e, 0, 0, 1];
    const MAC_B: Mac = [0x00, 0x16, 0x3e, 0, 0, 2];

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2 -> 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0x220d
        );
        assert_eq!(checksum(&[0xab], 0), !0xab00);
    }

    #[test]
    fn parse_addresses() {
        assert_eq!(parse_ipv4(b"10.99.0.2"), Some([10, 99, 0, 2]));
        assert_eq!(parse_ipv4(b"10.99.0"), None);
        assert_eq!(parse_ipv4(b"10.99.0.256"), None);
        assert_eq!(parse_ipv4(b"10.99.0.2.1"), None);
        assert_eq!(parse_cidr(b"10.99.0.2/24"), Some(([10, 99, 0, 2], 24)));
        assert_eq!(parse_cidr(b"10.99.0.2/33"), None);
        assert_eq!(
            parse_mac(b"00:16:3e:0a:Bc:ff"),
            Some([0, 0x16, 0x3e, 10, 0xbc, 0xff])
        );
        assert_eq!(parse_mac(b"00:16:3e:0a:bc"), None);
        assert_eq!(parse_mac(b"00:16:3e:0a:bc:fg"), None);
    }

    #[test]
    fn arp_round_trip() {
        let req = Arp {
            op: ARP_REQUEST,
            sha: MAC_A,
            spa: [10, 99, 0, 2],
            tha: [0; 6],
            tpa: [10, 99, 0, 1],
        };
        let mut f = [0u8; 64];
        let n = build_arp(&mut f, &req);
        assert_eq!(n, 42);
        let (eth, rest) = parse_eth(&f[..n]).unwrap();
        assert_eq!(eth.dst, BROADCAST);
        assert_eq!(eth.ethertype, ETHERTYPE_ARP);
        assert_eq!(parse_arp(rest), Some(req));
        assert_eq!(parse_arp(&rest[..27]), None);
    }

    #[test]
    fn icmp_echo_round_trip() {
        let mut f = [0u8; 128];
        let e = Echo {
            kind: ICMP_ECHO_REQUEST,
            ident: 0x1234,
            seq: 7,
            data: b"kxen ping",
        };
        let n = build_echo(&mut f[ETH_HLEN + IP_HLEN..], &e);
        let total = build_ipv4_headers(
            &mut f,
            MAC_B,
            MAC_A,
            [10, 99, 0, 2],
            [10, 99, 0, 1],
            IPPROTO_ICMP,
            1,
            n,
        );
        let (eth, rest) = parse_eth(&f[..total]).unwrap();
        assert_eq!((eth.dst, eth.src), (MAC_B, MAC_A));
        let ip = parse_ipv4_packet(rest).unwrap();
        assert_eq!(ip.proto, IPPROTO_ICMP);
        assert_eq!(ip.dst, [10, 99, 0, 1]);
        assert_eq!(parse_echo(ip.payload), Some(e));
        // A flipped bit fails the checksum.
        let mut bad = f;
        bad[ETH_HLEN + IP_HLEN + 9] ^= 1;
        let (_, rest) = parse_eth(&bad[..total]).unwrap();
        assert_eq!(parse_echo(parse_ipv4_packet(rest).unwrap().payload), None);
        // A total length beyond the frame is refused.
        let mut short = f;
        short[ETH_HLEN + 3] = 200;
        assert!(parse_ipv4_packet(&short[ETH_HLEN..total]).is_none());
    }

    #[test]
    fn udp_checksum_verifies() {
        let mut u = [0u8; 8 + 4];
        u[8..].copy_from_slice(b"data");
        let n = build_udp(&mut u, [10, 99, 0, 2], [10, 99, 0, 1], 4000, 9, 4);
        assert_eq!(n, 12);
        let pseudo = (10 << 8 | 99) + 2 + (10 << 8 | 99) + 1 + 17 + 12;
        assert_eq!(checksum(&u, pseudo), 0);
    }
}
