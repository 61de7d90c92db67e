//! Daemon configuration: quotas (Xen's defaults) and the hook that lets
//! `XS_INTRODUCE` reach the embedding toolstack.

use std::sync::Arc;
use std::time::Duration;

use crate::error::XsError;
use crate::ring::SharedPage;

/// Limits applied to unprivileged domains (Dom0 and socket clients are
/// exempt). Defaults and error codes are Xen 4.17's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`ENOSPC` beyond).
    pub nodes_per_domain: usize,
    /// Largest node record (header + 8 bytes per permission + value +
    /// child names); `ENOSPC` at or beyond.
    pub node_size: usize,
    /// Watches per domain; `E2BIG` once more than this many exist.
    pub watches_per_domain: usize,
    /// Open transactions per domain; `ENOSPC` once more than this many exist.
    pub transactions_per_domain: usize,
    /// Permission entries per node (`ENOSPC`).
    pub perms_per_node: usize,
    /// Nodes one transaction may touch (`ENOSPC`, and the transaction fails).
    pub transaction_nodes: usize,
    /// Longest path below a domain's home (`EINVAL`); applies to everyone.
    pub path_max: usize,
    /// Requests whose replies (and the watch events they caused) are not
    /// yet delivered; the daemon stops reading a domain's ring at this many.
    pub outstanding: usize,
    /// Bytes queued towards one domain; watch events beyond it are dropped.
    pub memory: usize,
    /// Soft memory limit (reported by `CONTROL quota-soft`; informational).
    pub memory_soft: usize,
    /// Watch events a domain has not started to consume within this time
    /// are dropped.
    pub watch_event_timeout: Duration,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes_per_domain: 1000,
            node_size: 2048,
            watches_per_domain: 128,
            transactions_per_domain: 10,
            perms_per_node: 5,
            transaction_nodes: 1024,
            path_max: xen_abi::xenstore::REL_PATH_MAX,
            outstanding: 20,
            memory: 2 * 1024 * 1024 + 512 * 1024,
            memory_soft: 2 * 1024 * 1024,
            watch_event_timeout: Duration::from_secs(20),
        }
    }
}

/// What `XS_INTRODUCE <domid> <gfn> <port>` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntroduceRequest {
    pub domid: u32,
    /// The ring's guest frame (signed decimal on the wire, as in Xen).
    pub gfn: i64,
    /// The guest's unbound event channel for xenstore.
    pub port: u32,
}

/// A mapped ring page and the function that notifies its event channel.
pub type RingBinding = (Arc<dyn SharedPage>, Box<dyn Fn() + Send + Sync>);

/// Maps the ring of a domain introduced over the wire. Called with the
/// daemon's state locked: it must not call back into the daemon.
pub type IntroduceHook =
    Arc<dyn Fn(IntroduceRequest) -> Result<RingBinding, XsError> + Send + Sync>;

/// Daemon configuration.
#[derive(Clone, Default)]
pub struct Config {
    pub quotas: Quotas,
    /// Handles `XS_INTRODUCE` from Dom0 clients; without one such requests
    /// fail with `ENOSYS` (only the embedder can map a guest's ring).
    pub introduce_hook: Option<IntroduceHook>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("quotas", &self.quotas)
            .field("introduce_hook", &self.introduce_hook.is_some())
            .finish()
    }
}
