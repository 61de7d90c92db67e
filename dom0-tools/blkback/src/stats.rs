//! Counters shared by a vbd's queues, read by `kxl block-list`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One vbd's counters; every field is a running total except
        /// `persistent_grants` (a gauge) and `broken` (0 or 1).
        #[derive(Default, Debug)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}

counters!(
    rd_req,
    wr_req,
    rd_sect,
    wr_sect,
    flush_req,
    barrier_req,
    discard_req,
    indirect_req,
    errors,
    unsupported,
    kicks_in,
    notifies_out,
    persistent_grants,
    broken,
);

/// Add to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
