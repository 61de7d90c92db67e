//! What a vbd serves: the backing store and the features offered.

use std::path::PathBuf;

/// xl's `devtype=`: how the guest should see the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevType {
    #[default]
    Disk,
    /// A read-only, removable CD-ROM drive.
    Cdrom,
}

/// One virtual block device as kxend configures it from xl's disk spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdSpec {
    /// A raw image file or a host block device.
    pub path: PathBuf,
    /// `access=ro`: writes and discards fail with BLKIF_RSP_ERROR.
    pub readonly: bool,
    pub devtype: DevType,
    /// Open with O_DIRECT where the filesystem allows it (no host page
    /// cache; writes are on the device when acknowledged).
    pub direct_io: bool,
    /// `multi-queue-max-queues`: rings (and I/O threads) a frontend may ask for.
    pub max_queues: u32,
    /// `max-ring-page-order`: each ring may have up to 2^order pages.
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments`; 0 disables indirect requests.
    pub max_indirect_segments: u32,
    /// Offer persistent grants.
    pub persistent: bool,
    /// Offer discard (if the backing store can punch holes).
    pub discard: bool,
}

impl VbdSpec {
    /// A read-write (or read-only) disk with every feature on.
    pub fn new(path: impl Into<PathBuf>, readonly: bool) -> VbdSpec {
        VbdSpec {
            path: path.into(),
            readonly,
            devtype: DevType::Disk,
            direct_io: true,
            max_queues: 4,
            max_ring_page_order: 4,
            max_indirect_segments: 256,
            persistent: true,
            discard: true,
        }
    }

    /// Read-only in effect: CD-ROMs are never written.
    pub fn effective_readonly(&self) -> bool {
        self.readonly || self.devtype == DevType::Cdrom
    }
}
