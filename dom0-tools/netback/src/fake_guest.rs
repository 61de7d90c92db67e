//! A guest for tests: memory in a memfd, a grant table, a TX and an RX
//! ring, written the way a netfront would, with no VMM.

use std::sync::Arc;

use kxen_foreign::evtchn::{Dom0Channel, TestGuestEnd};
use kxen_foreign::foreign::{ForeignMemory, ForeignPage, MemfdRegion};
use kxen_foreign::grant::GrantTable;
use xen_abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY};
use xen_abi::io::netif::*;
use xen_abi::io::ring::{entry_offset, OFFSET_REQ_PROD, OFFSET_RSP_EVENT, OFFSET_RSP_PROD};

use crate::queue::{Channels, FrontendFeatures, NetQueue};
use crate::ring::BackRing;
use crate::stats::VifStats;
use crate::tx::TxEntry;

/// Frame 1: grant table; 2: TX ring; 3: RX ring; 4..: data pages.
pub const PAGES: u64 = 64;
pub const GNT_TX_RING: u32 = 1;
pub const GNT_RX_RING: u32 = 2;
/// Grant refs from here map data frames: gref g -> frame g.
pub const FIRST_DATA: u32 = 4;

pub struct FakeGuest {
    pub mem: Arc<ForeignMemory>,
    pub table: ForeignPage,
    pub tx: ForeignPage,
    pub rx: ForeignPage,
    pub tx_prod: u32,
    pub rx_prod: u32,
    pub tx_rsp_cons: u32,
    pub rx_rsp_cons: u32,
}

impl FakeGuest {
    pub fn new() -> FakeGuest {
        let fd = nix::sys::memfd::memfd_create(c"netback-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let file = std::fs::File::from(fd);
        let size = PAGES * 4096;
        file.set_len(size).unwrap();
        let regions = vec![MemfdRegion {
            gpa: 0,
            len: size,
            offset: 0,
        }];
        let mem = Arc::new(ForeignMemory::map(file.into(), size, regions).unwrap());
        let g = FakeGuest {
            table: mem.page(1).unwrap(),
            tx: mem.page(2).unwrap(),
            rx: mem.page(3).unwrap(),
            mem,
            tx_prod: 0,
            rx_prod: 0,
            tx_rsp_cons: 0,
            rx_rsp_cons: 0,
        };
        g.grant(GNT_TX_RING, 2, false);
        g.grant(GNT_RX_RING, 3, false);
        for p in [&g.tx, &g.rx] {
            p.store_u32(4, 1); // req_event
            p.store_u32(OFFSET_RSP_EVENT, 1);
        }
        for gref in FIRST_DATA..PAGES as u32 {
            g.grant(gref, gref, false);
        }
        g
    }

    pub fn grant(&self, gref: u32, frame: u32, readonly: bool) {
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.table.store_u32(gref as usize * 8 + 4, frame);
        self.table.store_u32(gref as usize * 8, flags as u32);
    }

    pub fn revoke(&self, gref: u32) {
        self.table.store_u32(gref as usize * 8, 0);
    }

    pub fn page(&self, frame: u32) -> ForeignPage {
        self.mem.page(frame as u64).unwrap()
    }

    /// Build the backend's queue over this guest.
    pub fn queue(&self, features: FrontendFeatures) -> (NetQueue, TestGuestEnd, Arc<VifStats>) {
        let grants = Arc::new(GrantTable::new(self.mem.clone(), &[1], 0));
        let tx = BackRing::new(
            grants.map(GNT_TX_RING, true).unwrap(),
            NET_TX_RING_ENTRY_SIZE,
        )
        .unwrap();
        let rx = BackRing::new(
            grants.map(GNT_RX_RING, true).unwrap(),
            NET_RX_RING_ENTRY_SIZE,
        )
        .unwrap();
        let (chan, end) = Dom0Channel::pair_for_tests(3, 7).unwrap();
        let stats = Arc::new(VifStats::default());
        let q = NetQueue::new(
            grants,
            tx,
            rx,
            Channels::Shared(chan),
            features,
            stats.clone(),
        );
        (q, end, stats)
    }

    /// Write TX entries and publish them.
    pub fn push_tx(&mut self, entries: &[TxEntry]) {
        for e in entries {
            let off = entry_offset(self.tx_prod, NET_TX_RING_SIZE, NET_TX_RING_ENTRY_SIZE);
            self.tx.write(off, e);
            self.tx_prod = self.tx_prod.wrapping_add(1);
        }
        self.tx.store_u32(OFFSET_REQ_PROD, self.tx_prod);
    }

    /// Responses published since the last call: (id, status).
    pub fn tx_responses(&mut self) -> Vec<(u16, i16)> {
        let prod = self.tx.load_u32(OFFSET_RSP_PROD);
        let mut out = Vec::new();
        while self.tx_rsp_cons != prod {
            let off = entry_offset(self.tx_rsp_cons, NET_TX_RING_SIZE, NET_TX_RING_ENTRY_SIZE);
            let mut b = [0u8; 4];
            self.tx.read(off, &mut b);
            out.push((
                u16::from_le_bytes([b[0], b[1]]),
                i16::from_le_bytes([b[2], b[3]]),
            ));
            self.tx_rsp_cons = self.tx_rsp_cons.wrapping_add(1);
        }
        self.tx
            .store_u32(OFFSET_RSP_EVENT, self.tx_rsp_cons.wrapping_add(1));
        out
    }

    /// Post an RX buffer.
    pub fn post_rx(&mut self, id: u16, gref: u32) {
        let off = entry_offset(self.rx_prod, NET_RX_RING_SIZE, NET_RX_RING_ENTRY_SIZE);
        let mut e = [0u8; 8];
        e[0..2].copy_from_slice(&id.to_le_bytes());
        e[4..8].copy_from_slice(&gref.to_le_bytes());
        self.rx.write(off, &e);
        self.rx_prod = self.rx_prod.wrapping_add(1);
        self.rx.store_u32(OFFSET_REQ_PROD, self.rx_prod);
    }

    /// RX responses published since the last call, as raw 8-byte slots.
    pub fn rx_responses(&mut self) -> Vec<[u8; 8]> {
        let prod = self.rx.load_u32(OFFSET_RSP_PROD);
        let mut out = Vec::new();
        while self.rx_rsp_cons != prod {
            let off = entry_offset(self.rx_rsp_cons, NET_RX_RING_SIZE, NET_RX_RING_ENTRY_SIZE);
            let mut b = [0u8; 8];
            self.rx.read(off, &mut b);
            out.push(b);
            self.rx_rsp_cons = self.rx_rsp_cons.wrapping_add(1);
        }
        self.rx
            .store_u32(OFFSET_RSP_EVENT, self.rx_rsp_cons.wrapping_add(1));
        out
    }

    /// Put `data` into data frame `frame` at `off`.
    pub fn fill(&self, frame: u32, off: usize, data: &[u8]) {
        self.page(frame).write(off, data);
    }
}

/// Decode an RX response slot.
pub fn rx_rsp(b: &[u8; 8]) -> NetifRxResponse {
    NetifRxResponse {
        id: u16::from_le_bytes([b[0], b[1]]),
        offset: u16::from_le_bytes([b[2], b[3]]),
        flags: u16::from_le_bytes([b[4], b[5]]),
        status: i16::from_le_bytes([b[6], b[7]]),
    }
}
