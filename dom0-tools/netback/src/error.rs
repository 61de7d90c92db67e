//! netback's errors.

use kxen_foreign::grant::GrantError;
use kxen_foreign::xenbus::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid vif spec: {0}")]
    Spec(String),
    #[error("ring grant is not mapped writable")]
    RingNotWritable,
    #[error("ring grant: {0}")]
    Grant(#[from] GrantError),
    #[error("frontend: {0}")]
    Frontend(String),
    #[error("tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("hotplug script {script} {action}: {detail}")]
    Script {
        script: String,
        action: &'static str,
        detail: String,
    },
    #[error("event channel: {0}")]
    EventChannel(String),
    #[error("I/O thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Quiesce(#[from] kxen_foreign::quiesce::QuiesceError),
}

impl From<NetError> for BackendError {
    fn from(e: NetError) -> BackendError {
        match e {
            NetError::Grant(g) => BackendError::Grant(g),
            NetError::Frontend(f) => BackendError::Frontend(f),
            NetError::EventChannel(c) => BackendError::EventChannel(c),
            NetError::Quiesce(q) => BackendError::Quiesce(q),
            NetError::Tap { source, .. } | NetError::Thread(source) => BackendError::Io(source),
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}
