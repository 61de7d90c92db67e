//! The vbd backend: publishes the device, connects its queues to the
//! frontend's rings and stops them again.

use std::collections::BTreeMap;
use std::sync::Arc;

use kxen_foreign::evtchn::Dom0Channel;
use kxen_foreign::grant::GrantTable;
use kxen_foreign::xenbus::{BackendDevice, BackendError, DeviceContext};
use tracing::info;
use xen_abi::io::blkif::*;
use xen_abi::io::ring::MAX_RING_PAGE_ORDER;

use crate::backring::BackRing;
use crate::disk::Disk;
use crate::error::BlkError;
use crate::frontend::{read_frontend, FrontendConfig, Offer};
use crate::pgrants::{PersistentGrants, MAX_PERSISTENT_GRANTS};
use crate::queue::{Features, Queue, QueueThread};
use crate::request::Limits;
use crate::spec::{DevType, VbdSpec};
use crate::stats::Stats;

/// Most queues a vbd offers, whatever the spec asks.
pub const MAX_QUEUES: u32 = 16;

/// One virtual block device's backend.
pub struct BlkBackend {
    spec: VbdSpec,
    disk: Arc<Disk>,
    stats: Arc<Stats>,
    queues: Vec<QueueThread>,
    /// Quiesced by the toolstack: queues connected meanwhile start parked.
    quiesced: bool,
}

impl BlkBackend {
    /// Open the backing store; the device is served once connected.
    pub fn new(mut spec: VbdSpec) -> Result<BlkBackend, BlkError> {
        spec.max_queues = spec.max_queues.clamp(1, MAX_QUEUES);
        spec.max_ring_page_order = spec.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
        spec.max_indirect_segments = spec.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS as u32);
        let disk = Disk::open(&spec)?;
        info!(
            path = %spec.path.display(),
            sectors = disk.sectors(),
            direct = disk.is_direct(),
            block_device = disk.is_block_device(),
            readonly = disk.readonly(),
            "vbd opened"
        );
        Ok(BlkBackend {
            spec,
            disk: Arc::new(disk),
            stats: Arc::new(Stats::default()),
            queues: Vec::new(),
            quiesced: false,
        })
    }

    pub fn spec(&self) -> &VbdSpec {
        &self.spec
    }

    /// Disk size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// The `info` node: VDISK_* bits.
    pub fn info(&self) -> u32 {
        let mut info = 0;
        if self.spec.devtype == DevType::Cdrom {
            info |= VDISK_CDROM | VDISK_REMOVABLE;
        }
        if self.disk.readonly() {
            info |= VDISK_READONLY;
        }
        info
    }

    /// The optional operations this vbd serves.
    pub fn features(&self) -> Features {
        Features {
            flush: true,
            barrier: !self.disk.readonly(),
            discard: self.spec.discard && !self.disk.readonly(),
        }
    }

    fn offer(&self) -> Offer {
        Offer {
            max_queues: self.spec.max_queues,
            max_ring_page_order: self.spec.max_ring_page_order,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            capacity: self.disk.sectors(),
            max_indirect_segments: self.spec.max_indirect_segments as u16,
        }
    }

    pub fn is_connected(&self) -> bool {
        !self.queues.is_empty()
    }

    /// The backend nodes `publish` writes, as (key, value).
    pub fn backend_nodes(&self) -> Vec<(&'static str, String)> {
        let f = self.features();
        let mut v = vec![
            (keys::FEATURE_FLUSH_CACHE, "1".to_string()),
            (keys::FEATURE_BARRIER, u8::from(f.barrier).to_string()),
            (keys::FEATURE_DISCARD, u8::from(f.discard).to_string()),
        ];
        if f.discard {
            v.push((
                keys::DISCARD_GRANULARITY,
                self.disk.discard_granularity().to_string(),
            ));
            v.push((keys::DISCARD_ALIGNMENT, "0".to_string()));
            v.push((keys::DISCARD_SECURE, "0".to_string()));
        }
        v.push((
            keys::FEATURE_PERSISTENT,
            u8::from(self.spec.persistent).to_string(),
        ));
        if self.spec.max_indirect_segments > 0 {
            v.push((
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                self.spec.max_indirect_segments.to_string(),
            ));
        }
        v.push((
            keys::MAX_RING_PAGE_ORDER,
            self.spec.max_ring_page_order.to_string(),
        ));
        v.push((
            keys::MULTI_QUEUE_MAX_QUEUES,
            self.spec.max_queues.to_string(),
        ));
        v.push((keys::SECTORS, self.disk.sectors().to_string()));
        v.push((
            keys::SECTOR_SIZE,
            self.disk.logical_sector_size().to_string(),
        ));
        v.push((
            keys::PHYSICAL_SECTOR_SIZE,
            self.disk.physical_sector_size().to_string(),
        ));
        v.push((keys::INFO, self.info().to_string()));
        v.push((
            keys::MODE,
            if self.disk.readonly() { "r" } else { "w" }.to_string(),
        ));
        v
    }

    /// Parse the frontend's transport nodes through `read` (keys relative
    /// to the frontend directory) against what this vbd offered.
    pub fn read_frontend(
        &self,
        read: impl Fn(&str) -> Option<String>,
    ) -> Result<FrontendConfig, BlkError> {
        read_frontend(read, self.offer())
    }

    /// Start serving: one ring per entry of `rings` (its pages' grant refs
    /// in order, and its bound channel), each on its own I/O thread.
    /// `persistent`: the frontend asked for persistent grants.
    pub fn connect_rings(
        &mut self,
        grants: Arc<GrantTable>,
        rings: Vec<(Vec<u32>, Dom0Channel)>,
        persistent: bool,
    ) -> Result<(), BlkError> {
        if self.is_connected() {
            return Err(BlkError::AlreadyConnected);
        }
        let persistent = persistent && self.spec.persistent;
        let mut started = Vec::with_capacity(rings.len());
        for (index, (refs, channel)) in rings.into_iter().enumerate() {
            let mappings = refs
                .iter()
                .map(|&r| grants.map(r, true))
                .collect::<Result<Vec<_>, _>>()?;
            let ring = BackRing::attach(mappings)?;
            let pgrants = persistent
                .then(|| PersistentGrants::new(MAX_PERSISTENT_GRANTS, self.stats.clone()));
            let q = Queue::new(
                index,
                ring,
                channel,
                grants.clone(),
                self.disk.clone(),
                self.stats.clone(),
                self.limits(),
                self.features(),
                pgrants,
            );
            // On failure, `started` drops and stops what already runs.
            started.push(QueueThread::spawn(q, self.quiesced)?);
        }
        self.stats
            .broken
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.queues = started;
        Ok(())
    }

    /// Stop every queue: joins the threads, unpins ring and persistent
    /// grants, closes the channels. Idempotent.
    pub fn stop(&mut self) {
        for mut q in self.queues.drain(..) {
            q.stop();
        }
    }

    /// Stop taking requests and wait, until `deadline`, for every queue to
    /// answer the one it is serving. On a timeout the queues serve again.
    pub fn quiesce(&mut self, deadline: std::time::Instant) -> Result<(), BlkError> {
        self.quiesced = true;
        if let Err(e) =
            kxen_foreign::quiesce::quiesce_all(self.queues.iter().map(QueueThread::gate), deadline)
        {
            self.resume();
            return Err(e.into());
        }
        Ok(())
    }

    /// Serve again, requests posted while quiesced first.
    pub fn resume(&mut self) {
        self.quiesced = false;
        for q in &self.queues {
            q.gate().resume();
        }
    }

    /// `disconnect` without a DeviceContext, for tests.
    #[cfg(test)]
    pub(crate) fn disconnect_for_tests(&mut self) {
        self.stop();
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.stats.snapshot()
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BackendDevice for BlkBackend {
    fn kind(&self) -> &'static str {
        "vbd"
    }

    fn publish(&mut self, ctx: &DeviceContext) -> Result<(), BackendError> {
        for (k, v) in self.backend_nodes() {
            ctx.write_backend(k, &v)?;
        }
        Ok(())
    }

    fn connect(&mut self, ctx: &DeviceContext) -> Result<(), BackendError> {
        if self.is_connected() {
            return Ok(());
        }
        let config = self.read_frontend(|k| ctx.read_frontend(k))?;
        let (grants, rings) = crate::domain::attach(ctx, &config)?;
        self.connect_rings(grants, rings, config.persistent)?;
        info!(
            frontend = %ctx.frontend_path,
            queues = config.queues.len(),
            pages = config.queues[0].ring_refs.len(),
            persistent = config.persistent,
            "vbd connected"
        );
        Ok(())
    }

    fn disconnect(&mut self) {
        self.stop();
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        self.counters()
    }

    fn quiesce(&mut self, deadline: std::time::Instant) -> Result<(), BackendError> {
        Ok(BlkBackend::quiesce(self, deadline)?)
    }

    fn resume(&mut self) {
        BlkBackend::resume(self);
    }
}
