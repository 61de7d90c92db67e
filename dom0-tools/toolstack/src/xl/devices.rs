//! Device lists (xl_block.c, xl_nic.c): `xl block-list` and
//! `xl network-list`.

use serde::{Deserialize, Serialize};

/// The header of `xl block-list`.
pub fn block_list_header() -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )
}

/// One virtual block device as `xl block-list` shows it (libxl_diskinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub devid: u32,
    pub backend_id: u32,
    pub frontend_id: u32,
    /// XenbusState.
    pub state: i32,
    pub evtch: i32,
    pub rref: i32,
    /// Backend xenstore path.
    pub backend: String,
}

/// One line of `xl block-list`.
pub fn block_list_row(b: &BlockInfo) -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
        b.devid, b.backend_id, b.frontend_id, b.state, b.evtch, b.rref, b.backend
    )
}

/// The header of `xl network-list`.
pub fn network_list_header() -> String {
    format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}\n",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    )
}

/// One network device as `xl network-list` shows it (libxl_nicinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub devid: u32,
    pub backend_id: u32,
    pub mac: crate::vif::MacAddr,
    pub state: i32,
    pub evtch: i32,
    pub rref_tx: i32,
    pub rref_rx: i32,
    pub backend: String,
}

/// One line of `xl network-list`.
pub fn network_list_row(n: &NicInfo) -> String {
    format!(
        "{:<3} {:<2} {}{:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}\n",
        n.devid, n.backend_id, n.mac, n.devid, n.state, n.evtch, n.rref_tx, n.rref_rx, n.backend
    )
}
