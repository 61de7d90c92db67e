//! Requests and replies between `kxl` and `kxend`.
//!
//! One JSON object per line on kxend's Unix socket (`$KXEN_RUN_DIR/kxend.sock`,
//! default /run/kxen). A `console` request that succeeds turns the
//! connection into a raw byte stream both ways.

use serde::{Deserialize, Serialize};

/// Default directories; both can be overridden so tests run isolated kxends.
pub const DEFAULT_RUN_DIR: &str = "/run/kxen";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kxen";
pub const RUN_DIR_ENV: &str = "KXEN_RUN_DIR";
pub const STATE_DIR_ENV: &str = "KXEN_STATE_DIR";
pub const SOCKET_NAME: &str = "kxend.sock";

/// Where kxend's socket is.
pub fn socket_path() -> std::path::PathBuf {
    run_dir().join(SOCKET_NAME)
}

pub fn run_dir() -> std::path::PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
}

pub fn state_dir() -> std::path::PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

/// A domain named by id or by name, as xl accepts.
pub type DomainRef = String;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// Build and start a domain from a parsed xl.cfg (as JSON).
    Create {
        config: serde_json::Value,
        config_path: String,
        paused: bool,
    },
    Destroy {
        domain: DomainRef,
    },
    Shutdown {
        domain: DomainRef,
    },
    Reboot {
        domain: DomainRef,
    },
    Pause {
        domain: DomainRef,
    },
    Unpause {
        domain: DomainRef,
    },
    /// Wait until the domain is gone (`shutdown -w`), or `timeout_s` passes.
    WaitGone {
        domain: DomainRef,
        timeout_s: u64,
    },
    List,
    Resolve {
        domain: DomainRef,
    },
    Info,
    Dmesg {
        clear: bool,
    },
    MemSet {
        domain: DomainRef,
        target_kib: u64,
    },
    /// Attach to the domain's console: after the reply, raw bytes.
    Console {
        domain: DomainRef,
    },
}

/// State flags of a domain, as `xl list` prints them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StateFlags {
    pub running: bool,
    pub blocked: bool,
    pub paused: bool,
    pub shutdown: bool,
    pub crashed: bool,
    pub dying: bool,
}

/// One domain as kxend reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainStatus {
    pub domid: u32,
    pub name: String,
    pub uuid: String,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub vcpus: u32,
    pub state: StateFlags,
    /// SHUTDOWN_* reason once shut down.
    pub shutdown_reason: Option<u32>,
    pub cpu_time_s: f64,
    pub uptime_s: f64,
    /// The domain's parsed configuration (JSON of the toolstack config).
    pub config: serde_json::Value,
}

/// Host facts for `xl info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HostInfo {
    pub host: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub nr_cpus: u32,
    pub cpu_mhz: u64,
    pub total_memory_mib: u64,
    pub free_memory_mib: u64,
    pub xen_major: u32,
    pub xen_minor: u32,
    pub xen_extra: String,
    pub xen_caps: String,
    pub virt_caps: String,
    pub kvm_backend: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<DomainStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Shutdown {
            domain: "guest".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"shutdown","domain":"guest"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }
}
