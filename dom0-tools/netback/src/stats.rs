//! Per-vif counters, shared by the I/O threads and `stats()`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters named from the host's point of view, as Xen's vif devices
/// are: "tx" is what the guest sent, "rx" what it received.
#[derive(Debug, Default)]
pub struct VifStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub tx_errors: AtomicU64,
    pub kicks_in: AtomicU64,
    pub notifies_out: AtomicU64,
}

impl VifStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("rx_packets", get(&self.rx_packets)),
            ("rx_bytes", get(&self.rx_bytes)),
            ("tx_packets", get(&self.tx_packets)),
            ("tx_bytes", get(&self.tx_bytes)),
            ("rx_dropped", get(&self.rx_dropped)),
            ("tx_dropped", get(&self.tx_dropped)),
            ("tx_errors", get(&self.tx_errors)),
            ("kicks_in", get(&self.kicks_in)),
            ("notifies_out", get(&self.notifies_out)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
