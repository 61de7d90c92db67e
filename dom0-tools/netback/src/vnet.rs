//! `struct virtio_net_hdr`, the per-packet offload header a TAP device
//! opened with `IFF_VNET_HDR` puts before every frame (both directions).
//!
//! Without `TUNSETVNETLE`/`TUNSETVNETBE` the fields are in host byte order;
//! kxen only runs on little-endian x86, so they are read as little-endian.

/// Bytes of the header (the legacy layout, without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `csum_start`/`csum_offset` are valid: the checksum is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksum is already known good.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// Flag bit on `gso_type`: the TCP stream uses ECN.
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of Ethernet + IP + L4 headers (a hint for GSO).
    pub hdr_len: u16,
    /// Payload bytes per segment for GSO.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// None if `b` is shorter than the header.
    pub fn from_bytes(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 74, 0, 0xa0, 5, 54, 0, 16, 0]);
        assert_eq!(VnetHdr::from_bytes(&b), Some(h));
        assert_eq!(VnetHdr::from_bytes(&b[..9]), None);
    }
}
