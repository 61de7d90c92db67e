//! What can go wrong while setting up or connecting a vbd.

use std::path::PathBuf;

use kxen_foreign::grant::GrantError;
use kxen_foreign::xenbus::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: neither a regular file nor a block device")]
    NotADisk(PathBuf),
    #[error("{path}: cannot query the device: {source}")]
    Query {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The frontend published a missing or malformed transport parameter.
    #[error("frontend: {0}")]
    Frontend(String),
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    #[error("ring: {0}")]
    Ring(String),
    #[error("event channel: {0}")]
    EventChannel(String),
    #[error("already connected")]
    AlreadyConnected,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Quiesce(#[from] kxen_foreign::quiesce::QuiesceError),
}

impl From<BlkError> for BackendError {
    fn from(e: BlkError) -> Self {
        match e {
            BlkError::Frontend(m) => BackendError::Frontend(m),
            BlkError::Grant(g) => BackendError::Grant(g),
            BlkError::EventChannel(m) => BackendError::EventChannel(m),
            BlkError::Io(io) => BackendError::Io(io),
            BlkError::Quiesce(q) => BackendError::Quiesce(q),
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}
