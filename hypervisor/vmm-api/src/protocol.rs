//! The control protocol's messages: one [`Request`] line from the client,
//! one [`Reply`] line back, with file descriptors attached to the reply
//! where [the crate documentation](crate) says so.

use serde::{Deserialize, Serialize};

use crate::memfd::MemfdRegion;

/// A request, as the `op` field of its JSON object names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The domain's state ([`DomainInfo`]).
    Info,
    /// Hold every vCPU out of guest mode; answered once none is in it.
    Pause,
    Unpause,
    /// End the domain (exit status 8).
    Destroy,
    /// The guest-memory memfd and its [`MemfdRegion`]s.
    Memfd,
    /// The console and xenstore rings' Dom0 ends, two eventfds each.
    #[serde(rename = "dom0-ports")]
    Dom0Ports,
    /// HVM with `--serial dom0`: Dom0's end of COM1.
    Serial,
    /// The event routing area, the per-vCPU irqfds and the wake eventfd.
    Events,
    /// Bind a Dom0 port to the guest's unbound `guest_port`.
    #[serde(rename = "evtchn-bind")]
    EvtchnBind {
        guest_port: u32,
    },
    /// A Dom0 port the guest binds with EVTCHNOP_bind_interdomain.
    #[serde(rename = "evtchn-alloc-unbound")]
    EvtchnAllocUnbound,
    /// Close a Dom0 port this connection opened.
    #[serde(rename = "evtchn-close")]
    EvtchnClose {
        dom0_port: u32,
    },
    /// The paused domain's state ([`crate::image`]) in a memfd; its length
    /// is the reply's `size`. Memory is not in it: Dom0 reads the guest
    /// memfd.
    #[serde(rename = "save-state")]
    SaveState,
    /// A memfd of `len` bytes for a [`Request::LoadState`] image.
    #[serde(rename = "restore-buffer")]
    RestoreBuffer {
        len: u64,
    },
    /// Load the image written into the restore buffer onto this paused,
    /// never-unpaused domain, whose memory Dom0 has filled.
    #[serde(rename = "load-state")]
    LoadState,
    /// Cancel the guest's suspend (Xen's xc_domain_resume): the paused,
    /// suspended domain's SCHEDOP_shutdown(SHUTDOWN_suspend) returns 1,
    /// so the guest resumes in place with its devices connected (a
    /// checkpoint, or a save or migration that failed). The domain stays
    /// paused until `unpause`.
    #[serde(rename = "resume-suspended")]
    ResumeSuspended,
    /// Where the domain's time went: named counters (kxen-vmm's exits by
    /// kind and the time it spent on them, hypercalls by number, KVM's
    /// own vCPU statistics), cumulative since the domain started.
    #[serde(rename = "perf-counters")]
    PerfCounters,
    /// Start KVM's dirty logging of the guest's writes to its memfd
    /// regions (a live migration's pre-copy).
    #[serde(rename = "dirty-log-start")]
    DirtyLogStart,
    /// The pages the guest wrote since the start or the previous
    /// `dirty-log`, and clear the log: a memfd of `size` bytes holding,
    /// per memfd region in `memfd` order, ceil(pages / 64) little-endian
    /// u64 words, bit i of word w for the region's page 64w + i.
    #[serde(rename = "dirty-log")]
    DirtyLog,
    /// Stop the dirty logging.
    #[serde(rename = "dirty-log-stop")]
    DirtyLogStop,
    /// A classic PV domain's page tables: a memfd of `size` bytes holding
    /// little-endian u64 PAGE_DATA pfn entries (the frame, and its level
    /// in bits 63:60 with bit 63 set when pinned), for a save's page types.
    #[serde(rename = "pv-page-types")]
    PvPageTypes,
    /// Connect kxend's data plane to an HVM virtio-mmio slot.
    #[serde(rename = "virtio-attach")]
    VirtioAttach(VirtioAttach),
}

/// `virtio-attach`: what kxend's device offers in slot `slot`
/// (`hypervisor/vmm/virtio-protocol.md` has the transport's side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioAttach {
    /// The slot, in `--virtio` order.
    pub slot: u32,
    /// The virtio device ID (1 net, 2 blk); must match the slot's kind.
    pub device_id: u32,
    /// Feature bits the device offers (the VMM adds VIRTIO_F_VERSION_1).
    #[serde(default)]
    pub device_features: u64,
    /// The device's config space, at most 256 bytes.
    #[serde(default)]
    pub config: Vec<u8>,
    /// Queues the device serves, 1..=8: one kick eventfd each.
    pub queues: u32,
}

/// Where the event routing area lies in the memfd.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct RoutingAreaInfo {
    pub offset: u64,
    pub size: u64,
}

/// One of the Dom0 ends of the console and xenstore channels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dom0PortInfo {
    /// "console" or "xenstore".
    pub name: String,
    /// The port number on Dom0's side.
    pub dom0_port: u32,
    /// The guest's port (what its HVM param says).
    pub local_port: u32,
    /// Guest frame of the ring page.
    pub pfn: u64,
}

/// The `info` reply's domain state.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u16,
    pub name: String,
    pub paused: bool,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub hypercalls: u64,
    pub uptime_ms: u64,
    /// The VMM's process id.
    pub pid: u32,
    /// Every online vCPU is waiting for an event (SCHEDOP_block/poll).
    #[serde(default)]
    pub blocked: bool,
    /// vCPUs up (online and started).
    #[serde(default)]
    pub vcpus_online: u32,
    /// The guest suspended itself (SCHEDOP_shutdown with SHUTDOWN_suspend)
    /// and waits, paused, for the toolstack to save or resume it.
    #[serde(default)]
    pub suspended: bool,
}

/// A reply line. `ok` says whether the request was served; the other
/// fields are present where the request's row in the table says so.
#[derive(Debug, Serialize, Deserialize, Default, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<DomainInfo>,
    /// `memfd`: the memfd's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<MemfdRegion>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Dom0PortInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dom0_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingAreaInfo>,
    /// `events`: how many per-vCPU irqfds follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// `events`: whether the irqfds are KVM irqfds (else kxen-vmm relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irqfd: Option<bool>,
    /// `perf-counters`: counter name to value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf_counters: Option<std::collections::BTreeMap<String, u64>>,
}

impl Reply {
    /// A bare success.
    pub fn ok() -> Self {
        Reply {
            ok: true,
            ..Default::default()
        }
    }

    /// A refusal saying why.
    pub fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}
