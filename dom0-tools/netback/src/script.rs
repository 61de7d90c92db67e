//! Running the vif hotplug script (`vif-bridge online|offline`), with the
//! environment Xen's hotplug scripts expect.

use std::path::Path;
use std::process::{Command, Stdio};

use tracing::debug;

use crate::error::NetError;
use crate::spec::VifSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Online,
    Offline,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Online => "online",
            Action::Offline => "offline",
        }
    }
}

/// Run `script action` for the vif whose host interface is `vif`.
pub fn run_hotplug(
    script: &Path,
    action: Action,
    spec: &VifSpec,
    vif: &str,
    xenbus_path: &str,
) -> Result<(), NetError> {
    let err = |detail: String| NetError::Script {
        script: script.display().to_string(),
        action: action.as_str(),
        detail,
    };
    debug!(script = %script.display(), action = action.as_str(), vif, "vif hotplug");
    let out = Command::new(script)
        .arg(action.as_str())
        .env("vif", vif)
        .env("bridge", &spec.bridge)
        .env("mac", spec.mac_string())
        .env("mtu", spec.mtu.to_string())
        .env("XENBUS_PATH", xenbus_path)
        .env("script", script)
        .env("type_if", "vif")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!("{}: {}", out.status, msg.trim())));
    }
    Ok(())
}
