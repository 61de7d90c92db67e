//! Finding an Ethernet frame's IP and TCP/UDP headers, and the checksum
//! arithmetic that checksum offload needs.
//!
//! All functions take untrusted bytes (a guest's packet) and return None
//! instead of reading past the end.

/// Bytes of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Most VLAN tags and IPv6 extension headers we walk before giving up.
const MAX_NESTING: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// Offset of the checksum field in the L4 header.
    pub fn csum_offset(self) -> usize {
        match self {
            L4Proto::Tcp => 16,
            L4Proto::Udp => 6,
        }
    }
}

/// Where a frame's headers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Start of the IP header.
    pub l3: usize,
    pub ipv6: bool,
    /// Start of the TCP/UDP header.
    pub l4: usize,
    pub proto: L4Proto,
    /// Bytes of the TCP/UDP header (with TCP options).
    pub l4_len: usize,
}

impl Headers {
    /// Bytes of all headers: where the payload starts.
    pub fn total_len(&self) -> usize {
        self.l4 + self.l4_len
    }

    /// Where the L4 checksum field is.
    pub fn csum_field(&self) -> usize {
        self.l4 + self.proto.csum_offset()
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parse Ethernet (with up to a few VLAN tags), IPv4/IPv6 and TCP/UDP.
/// None for anything else, for IP fragments, and for truncated headers.
pub fn parse_headers(frame: &[u8]) -> Option<Headers> {
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        tags += 1;
        if tags > MAX_NESTING {
            return None;
        }
        off += 4;
        ethertype = be16(frame, off)?;
    }
    let l3 = off + 2;
    let (ipv6, proto, l4) = match ethertype {
        ETH_P_IP => {
            let vihl = *frame.get(l3)?;
            let ihl = (vihl & 0xf) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || frame.len() < l3 + ihl {
                return None;
            }
            // A fragment's L4 header (if any) cannot be checksummed alone.
            if be16(frame, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            (false, frame[l3 + 9], l3 + ihl)
        }
        ETH_P_IPV6 => {
            if frame.len() < l3 + 40 || frame[l3] >> 4 != 6 {
                return None;
            }
            let mut next = frame[l3 + 6];
            let mut at = l3 + 40;
            let mut hops = 0;
            // Hop-by-hop, routing and destination options may precede L4.
            while matches!(next, 0 | 43 | 60) {
                hops += 1;
                if hops > MAX_NESTING {
                    return None;
                }
                next = *frame.get(at)?;
                at += (*frame.get(at + 1)? as usize + 1) * 8;
            }
            (true, next, at)
        }
        _ => return None,
    };
    let (proto, l4_len) = match proto {
        IPPROTO_TCP => {
            let doff = (*frame.get(l4 + 12)? >> 4) as usize * 4;
            if doff < 20 {
                return None;
            }
            (L4Proto::Tcp, doff)
        }
        IPPROTO_UDP => (L4Proto::Udp, 8),
        _ => return None,
    };
    if frame.len() < l4 + l4_len {
        return None;
    }
    Some(Headers {
        l3,
        ipv6,
        l4,
        proto,
        l4_len,
    })
}

/// One's-complement sum of `data` (big-endian 16-bit words) added to `sum`.
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// Fold a running sum to 16 bits.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header sum (unfolded, not complemented) for an L4 segment of
/// `l4_bytes` bytes: what a partial checksum field holds.
pub fn pseudo_header_sum(frame: &[u8], h: &Headers, l4_bytes: usize) -> Option<u32> {
    let proto = match h.proto {
        L4Proto::Tcp => IPPROTO_TCP,
        L4Proto::Udp => IPPROTO_UDP,
    } as u32;
    let sum = if h.ipv6 {
        csum_add(0, frame.get(h.l3 + 8..h.l3 + 40)?)
    } else {
        csum_add(0, frame.get(h.l3 + 12..h.l3 + 20)?)
    };
    Some(sum + proto + (l4_bytes as u32 & 0xffff) + (l4_bytes as u32 >> 16))
}

/// Finish a partial checksum in software: sum from `start` to the end of
/// the frame (the field holds the pseudo-header sum) and store the result
/// at `start + offset`. False if the positions are outside the frame.
pub fn complete_csum(frame: &mut [u8], start: usize, offset: usize, udp: bool) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if start >= frame.len() || field.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let mut c = !csum_fold(csum_add(0, &frame[start..]));
    if udp && c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Fill in the pseudo-header sum that a partial checksum field must hold
/// (for GSO packets sent without one).
pub fn seed_partial_csum(frame: &mut [u8], h: &Headers) -> bool {
    let l4_bytes = frame.len() - h.l4;
    let Some(sum) = pseudo_header_sum(frame, h, l4_bytes) else {
        return false;
    };
    let f = h.csum_field();
    frame[f..f + 2].copy_from_slice(&csum_fold(sum).to_be_bytes());
    true
}

/// Test helpers: well-formed frames.
#[cfg(test)]
pub(crate) mod frames {
    /// Ethernet + IPv4 + TCP (20-byte header) carrying `payload`.
    pub fn tcp4(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[0x00, 0x16, 0x3e, 1, 2, 3]);
        f[6..12].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        let tot = (20 + 20 + payload.len()) as u16;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = !super::csum_fold(super::csum_add(0, ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        f.extend_from_slice(payload);
        f
    }

    /// Ethernet + IPv6 + UDP carrying `payload`.
    pub fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        let plen = (8 + payload.len()) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        f[20] = 17;
        f[21] = 64;
        f[22] = 0xfd;
        f[37] = 1;
        f[38] = 0xfd;
        f[53] = 2;
        f[54..56].copy_from_slice(&5000u16.to_be_bytes());
        f[56..58].copy_from_slice(&5001u16.to_be_bytes());
        f[58..60].copy_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// True if the L4 checksum of a full frame verifies.
    pub fn l4_csum_ok(frame: &[u8]) -> bool {
        let h = super::parse_headers(frame).unwrap();
        let l4 = &frame[h.l4..];
        let sum = super::pseudo_header_sum(frame, &h, l4.len()).unwrap();
        super::csum_fold(super::csum_add(sum, l4)) == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::frames::*;
    use super::*;

    #[test]
    fn finds_tcp4_and_udp6_headers() {
        let f = tcp4(b"hello");
        let h = parse_headers(&f).unwrap();
        assert_eq!((h.l3, h.l4, h.l4_len, h.ipv6), (14, 34, 20, false));
        assert_eq!(h.proto, L4Proto::Tcp);
        assert_eq!((h.total_len(), h.csum_field()), (54, 50));
        let f = udp6(b"x");
        let h = parse_headers(&f).unwrap();
        assert_eq!((h.l4, h.proto, h.csum_field()), (54, L4Proto::Udp, 60));
    }

    #[test]
    fn refuses_truncated_odd_and_fragmented() {
        let f = tcp4(b"");
        for n in 0..f.len() {
            assert_eq!(parse_headers(&f[..n]), None, "prefix of {n} bytes");
        }
        let mut frag = tcp4(b"");
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_headers(&frag), None);
        let mut arp = tcp4(b"");
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_headers(&arp), None);
        let mut badhl = tcp4(b"");
        badhl[14] = 0x44;
        assert_eq!(parse_headers(&badhl), None);
        // Endless VLAN tags.
        let tags = [0x81u8, 0x00, 0, 1].repeat(20);
        let mut vlan = vec![0u8; 12];
        vlan.extend_from_slice(&tags);
        assert_eq!(parse_headers(&vlan), None);
    }

    #[test]
    fn partial_checksum_completes_to_a_valid_one() {
        for mut f in [tcp4(b"some payload bytes"), udp6(b"odd")] {
            let h = parse_headers(&f).unwrap();
            assert!(seed_partial_csum(&mut f, &h));
            assert!(complete_csum(
                &mut f,
                h.l4,
                h.proto.csum_offset(),
                h.proto == L4Proto::Udp
            ));
            assert!(l4_csum_ok(&f));
        }
        let mut f = tcp4(b"");
        assert!(!complete_csum(&mut f, 50, 10, false));
        assert!(!complete_csum(&mut f, usize::MAX, 2, false));
    }
}
