//! Persistent grants: data pages a frontend keeps granted for the life of
//! the connection, mapped once and reused, so the hot path pins no grant
//! entries. Bounded per ring like Linux's blkback (1056 by default);
//! beyond the bound, grants are mapped per request.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use kxen_foreign::grant::GrantMapping;

/// Linux blkback's default `max_persistent_grants`.
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

pub struct PersistentGrants {
    map: HashMap<u32, GrantMapping>,
    limit: usize,
    gauge: Arc<super::stats::Stats>,
}

impl PersistentGrants {
    pub fn new(limit: usize, gauge: Arc<super::stats::Stats>) -> Self {
        PersistentGrants {
            map: HashMap::with_capacity(limit.min(MAX_PERSISTENT_GRANTS)),
            limit,
            gauge,
        }
    }

    pub fn get(&self, gref: u32) -> Option<&GrantMapping> {
        self.map.get(&gref)
    }

    pub fn has_room(&self) -> bool {
        self.map.len() < self.limit
    }

    /// Keep `m` mapped for later requests; returns it back.
    pub fn insert(&mut self, gref: u32, m: GrantMapping) -> &GrantMapping {
        super::stats::add(&self.gauge.persistent_grants, 1);
        self.map.entry(gref).or_insert(m)
    }
}

impl Drop for PersistentGrants {
    fn drop(&mut self) {
        let n = self.map.len() as u64;
        let g: &AtomicU64 = &self.gauge.persistent_grants;
        g.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}
