//! The paravirtual network interface (`xen/include/public/io/netif.h`).
//!
//! A vif has two shared rings, each one page laid out as `io/ring.h`
//! describes (a 64-byte header, then entries):
//!
//! * the **TX ring** carries packets from the guest: each packet is one or
//!   more [`NetifTxRequest`] slots (the first slot's `size` is the whole
//!   packet, [`NETTXF_MORE_DATA`] chains further slots), optionally
//!   followed by [`NetifExtraInfo`] slots when [`NETTXF_EXTRA_INFO`] is set
//!   on the first one. The backend answers each slot with a
//!   [`NetifTxResponse`] (extra-info slots get [`NETIF_RSP_NULL`]).
//! * the **RX ring** carries packets to the guest: the guest posts empty
//!   granted pages as [`NetifRxRequest`]s and the backend copies packets
//!   into them, answering with [`NetifRxResponse`]s whose `status` is the
//!   number of bytes in that slot (or a negative `NETIF_RSP_*`).
//!   [`NETRXF_MORE_DATA`] chains slots; [`NETRXF_EXTRA_INFO`] says the next
//!   response slot holds a [`NetifExtraInfo`] (e.g. GSO).
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ring::ring_size_for_pages;

/// Bytes of one TX ring entry: the union of [`NetifTxRequest`] and
/// [`NetifTxResponse`] (extra-info slots reuse a request entry).
pub const NET_TX_RING_ENTRY_SIZE: usize = 12;
/// Bytes of one RX ring entry: the union of [`NetifRxRequest`] and
/// [`NetifRxResponse`] (extra-info slots reuse a response entry).
pub const NET_RX_RING_ENTRY_SIZE: usize = 8;
/// Entries in a one-page TX ring (netif rings are always one page).
pub const NET_TX_RING_SIZE: u32 = ring_size_for_pages(1, NET_TX_RING_ENTRY_SIZE);
/// Entries in a one-page RX ring.
pub const NET_RX_RING_SIZE: u32 = ring_size_for_pages(1, NET_RX_RING_ENTRY_SIZE);

/// Largest packet a TX request chain may describe (the first slot's `size`).
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xffff;
/// Slots a backend must accept for one packet (`XEN_NETIF_NR_SLOTS_MIN`);
/// Linux netback's `XEN_NETBK_LEGACY_SLOTS_MAX`. Backends may accept more.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
pub const XEN_NETBK_LEGACY_SLOTS_MAX: usize = XEN_NETIF_NR_SLOTS_MIN;

// ---- TX request flags (`NETTXF_*`) ----

/// The protocol checksum is blank: the backend (or the host stack) must
/// fill it in. Implies [`NETTXF_DATA_VALIDATED`].
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// The packet's data is known good (its checksum needs no check).
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// Another slot of this packet follows.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// An extra-info slot follows this request (first slot only).
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

// ---- RX response flags (`NETRXF_*`) ----

/// The packet's data is known good.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// The protocol checksum is blank (partial; to be completed by the guest
/// or not at all when it stays local).
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// Another slot of this packet follows.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// The next response slot is a [`NetifExtraInfo`].
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// This slot carries only GSO metadata, before the packet (old
/// `feature-gso-*-prefix` frontends).
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

// ---- Response status (`NETIF_RSP_*`) ----

/// The packet was dropped (e.g. no space, or not deliverable).
pub const NETIF_RSP_DROPPED: i16 = -2;
/// The request was malformed or its grant unusable.
pub const NETIF_RSP_ERROR: i16 = -1;
pub const NETIF_RSP_OKAY: i16 = 0;
/// No response for this slot (an extra-info slot's answer).
pub const NETIF_RSP_NULL: i16 = 1;

// ---- Extra info (`XEN_NETIF_EXTRA_*`) ----

pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// `u.gso` is valid.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `u.mcast` holds a multicast address to add to the filter.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `u.mcast` holds a multicast address to remove from the filter.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `u.hash` holds the packet's hash (`feature-ctrl-ring` frontends).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last defined type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Another extra-info slot follows this one.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// GSO types (`XEN_NETIF_GSO_TYPE_*`).
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `netif_tx_request_t`: one slot of a guest-to-backend packet (12 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxRequest {
    /// Grant of the page holding this slot's bytes.
    pub gref: u32,
    /// Offset of the data in that page; `offset + slot bytes <= 4096`.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First slot: the whole packet's length; later slots: this slot's.
    pub size: u16,
}

/// `netif_tx_response_t` (4 bytes, in a 12-byte ring entry).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxResponse {
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `netif_rx_request_t`: an empty page the guest posts for a packet.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    pub _pad: u16,
    /// Grant of the (writable) page to copy into.
    pub gref: u32,
}

/// `netif_rx_response_t` (8 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxResponse {
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes in this slot, or a negative `NETIF_RSP_*`.
    pub status: i16,
}

/// The `gso` arm of [`NetifExtraInfo`]'s union.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraGso {
    /// Maximum payload bytes per segment (the MSS); never 0.
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub gso_type: u8,
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*` (none defined).
    pub features: u16,
}

/// `netif_extra_info_t`: 8 bytes, occupying one request (TX) or response
/// (RX) slot. The union is kept as raw bytes; [`NetifExtraInfo::gso`],
/// [`NetifExtraInfo::mcast_addr`] and [`NetifExtraInfo::with_gso`] give
/// typed views.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub extra_type: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u`: gso {size u16, type u8, pad u8, features u16},
    /// mcast {addr [u8; 6]}, hash {type u8, algorithm u8, value [u8; 4]}.
    pub u: [u8; 6],
}

impl NetifExtraInfo {
    /// The GSO arm (meaningful when `extra_type` is GSO).
    pub fn gso(&self) -> NetifExtraGso {
        NetifExtraGso {
            size: u16::from_le_bytes([self.u[0], self.u[1]]),
            gso_type: self.u[2],
            pad: self.u[3],
            features: u16::from_le_bytes([self.u[4], self.u[5]]),
        }
    }

    /// The multicast address (for MCAST_ADD/MCAST_DEL).
    pub fn mcast_addr(&self) -> [u8; 6] {
        self.u
    }

    /// A GSO extra-info slot.
    pub fn with_gso(gso_type: u8, size: u16, more: bool) -> Self {
        let s = size.to_le_bytes();
        NetifExtraInfo {
            extra_type: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: if more { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 },
            u: [s[0], s[1], gso_type, 0, 0, 0],
        }
    }
}

// ---- xenstore keys ----

/// Backend: copy-mode receive is supported (Linux frontends require it).
pub const XS_FEATURE_RX_COPY: &str = "feature-rx-copy";
/// Backend: page-flipping receive is supported (never, by kxen).
pub const XS_FEATURE_RX_FLIP: &str = "feature-rx-flip";
/// Both ends: scatter-gather (multi-slot packets).
pub const XS_FEATURE_SG: &str = "feature-sg";
pub const XS_FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
pub const XS_FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
pub const XS_FEATURE_GSO_TCPV4_PREFIX: &str = "feature-gso-tcpv4-prefix";
pub const XS_FEATURE_GSO_TCPV6_PREFIX: &str = "feature-gso-tcpv6-prefix";
pub const XS_FEATURE_IPV6_CSUM_OFFLOAD: &str = "feature-ipv6-csum-offload";
/// Frontend: it cannot take packets with blank checksums.
pub const XS_FEATURE_NO_CSUM_OFFLOAD: &str = "feature-no-csum-offload";
/// Frontend: it sets `rsp_event` on the RX ring (old frontends did not).
pub const XS_FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
pub const XS_FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
pub const XS_FEATURE_MULTICAST_CONTROL: &str = "feature-multicast-control";
pub const XS_FEATURE_CTRL_RING: &str = "feature-ctrl-ring";
/// Backend: most queues it offers.
pub const XS_MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
/// Frontend: queues it uses (each under `queue-N/`).
pub const XS_MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
pub const XS_TX_RING_REF: &str = "tx-ring-ref";
pub const XS_RX_RING_REF: &str = "rx-ring-ref";
pub const XS_EVENT_CHANNEL: &str = "event-channel";
pub const XS_EVENT_CHANNEL_TX: &str = "event-channel-tx";
pub const XS_EVENT_CHANNEL_RX: &str = "event-channel-rx";
/// Frontend: it wants copy-mode receive (must be 1).
pub const XS_REQUEST_RX_COPY: &str = "request-rx-copy";
pub const XS_MAC: &str = "mac";
pub const XS_BRIDGE: &str = "bridge";
pub const XS_HANDLE: &str = "handle";
pub const XS_MTU: &str = "mtu";

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_netif_h() {
        assert_eq!(size_of::<NetifTxRequest>(), 12);
        assert_eq!(offset_of!(NetifTxRequest, offset), 4);
        assert_eq!(offset_of!(NetifTxRequest, flags), 6);
        assert_eq!(offset_of!(NetifTxRequest, id), 8);
        assert_eq!(offset_of!(NetifTxRequest, size), 10);
        assert_eq!(size_of::<NetifTxResponse>(), 4);
        assert_eq!(offset_of!(NetifTxResponse, status), 2);
        assert_eq!(size_of::<NetifRxRequest>(), 8);
        assert_eq!(offset_of!(NetifRxRequest, gref), 4);
        assert_eq!(size_of::<NetifRxResponse>(), 8);
        assert_eq!(offset_of!(NetifRxResponse, offset), 2);
        assert_eq!(offset_of!(NetifRxResponse, flags), 4);
        assert_eq!(offset_of!(NetifRxResponse, status), 6);
        assert_eq!(size_of::<NetifExtraInfo>(), 8);
        assert_eq!(size_of::<NetifExtraGso>(), 6);
        assert_eq!(offset_of!(NetifExtraGso, gso_type), 2);
        assert_eq!(offset_of!(NetifExtraGso, features), 4);
        assert!(size_of::<NetifExtraInfo>() <= NET_TX_RING_ENTRY_SIZE);
        assert!(size_of::<NetifExtraInfo>() <= NET_RX_RING_ENTRY_SIZE);
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(NET_TX_RING_SIZE, 256);
        assert_eq!(NET_RX_RING_SIZE, 256);
    }

    #[test]
    fn gso_view_round_trips() {
        let e = NetifExtraInfo::with_gso(XEN_NETIF_GSO_TYPE_TCPV6, 1440, true);
        assert_eq!(e.as_bytes(), &[1, 1, 0xa0, 0x05, 2, 0, 0, 0]);
        let g = e.gso();
        assert_eq!((g.size, g.gso_type, g.features), (1440, 2, 0));
        let back = NetifExtraInfo::read_from_bytes(e.as_bytes()).unwrap();
        assert_eq!(back, e);
    }
}
