//! The contract between kxend's xenbus plumbing and a device backend.
//!
//! kxend creates the frontend and backend nodes of each device, watches
//! both `state` nodes and runs the XenbusState handshake. A backend
//! (blkback, netback) only says what it offers and connects to or
//! disconnects from the frontend's rings when kxend tells it to.

use std::collections::BTreeMap;
use std::sync::Arc;

use kxen_xenstore::Xenstored;

use crate::domain::ForeignDomain;

/// Where a device lives and how to reach its domain.
pub struct DeviceContext {
    /// The guest (frontend) domain.
    pub domain: Arc<ForeignDomain>,
    /// Dom0's store (a cheap handle); backends act as domain 0.
    pub store: Xenstored,
    pub frontend_domid: u16,
    /// Device id (the vdev number for a vbd, the index for a vif).
    pub devid: u32,
    /// e.g. /local/domain/5/device/vbd/51712
    pub frontend_path: String,
    /// e.g. /local/domain/0/backend/vbd/5/51712
    pub backend_path: String,
}

impl DeviceContext {
    /// Read a frontend node as a string; None if absent or not UTF-8.
    pub fn read_frontend(&self, key: &str) -> Option<String> {
        let v = self
            .store
            .read(&format!("{}/{key}", self.frontend_path))
            .ok()?;
        String::from_utf8(v).ok()
    }

    /// Read a backend node as a string.
    pub fn read_backend(&self, key: &str) -> Option<String> {
        let v = self
            .store
            .read(&format!("{}/{key}", self.backend_path))
            .ok()?;
        String::from_utf8(v).ok()
    }

    /// Write a backend node (Dom0-owned, frontend-readable through the
    /// permissions kxend set on the backend directory).
    pub fn write_backend(&self, key: &str, value: &str) -> Result<(), BackendError> {
        self.store
            .write(&format!("{}/{key}", self.backend_path), value)
            .map_err(|e| BackendError::Store(format!("{key}: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("xenstore: {0}")]
    Store(String),
    /// The frontend published something missing or malformed.
    #[error("frontend: {0}")]
    Frontend(String),
    #[error("grant: {0}")]
    Grant(#[from] crate::grant::GrantError),
    #[error("event channel: {0}")]
    EventChannel(String),
    #[error("backing store: {0}")]
    Io(#[from] std::io::Error),
    #[error("quiescing: {0}")]
    Quiesce(#[from] crate::quiesce::QuiesceError),
}

/// A device backend driven by kxend's xenbus state machine.
///
/// kxend calls, in order: `publish` (then sets backend state InitWait),
/// `connect` when the frontend reaches Initialised or Connected (then
/// Connected on success, Closing with an `error` node on failure), and
/// `disconnect` when the frontend closes, the device is detached or the
/// domain goes away. `disconnect` may come at any point and more than once.
pub trait BackendDevice: Send {
    /// The xenstore device type: "vbd" or "vif".
    fn kind(&self) -> &'static str;
    /// Write the feature and configuration nodes under the backend path.
    fn publish(&mut self, ctx: &DeviceContext) -> Result<(), BackendError>;
    /// Read the frontend's rings and channels, map them and start serving.
    fn connect(&mut self, ctx: &DeviceContext) -> Result<(), BackendError>;
    /// Stop serving; drop every grant mapping and channel. Idempotent.
    fn disconnect(&mut self);
    /// Counters for `kxl block-list` / `network-list` (name → value).
    fn stats(&self) -> BTreeMap<String, u64>;
    /// Stop taking requests and wait, until `deadline`, for those already
    /// taken to be answered on their rings with their guest pages written;
    /// a netback also stops filling the guest's RX buffers. Until
    /// `resume`, the backend writes no guest memory. A device that
    /// connects meanwhile starts quiesced.
    fn quiesce(&mut self, deadline: std::time::Instant) -> Result<(), BackendError>;
    /// Serve again, looking at the rings at once so that requests posted
    /// while quiesced are answered without waiting for a kick.
    fn resume(&mut self);
}
