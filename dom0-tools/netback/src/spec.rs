//! What the toolstack says about one vif.

use std::path::PathBuf;

use crate::error::NetError;
use crate::tap::valid_ifname;

/// The vif hotplug script shipped with kxen (dom0-tools/netback/scripts).
pub const BUNDLED_VIF_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/vif-bridge");
/// libxl's default bridge.
pub const DEFAULT_BRIDGE: &str = "xenbr0";
pub const DEFAULT_MTU: u32 = 1500;
/// Most queues a vif offers (`multi-queue-max-queues`).
pub const MAX_QUEUES: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifSpec {
    pub domid: u16,
    /// The vif's index in the domain (xenstore device id).
    pub devid: u32,
    /// The guest's MAC (the toolstack picks 00:16:3e:xx:xx:xx by default).
    pub mac: [u8; 6],
    pub bridge: String,
    /// Host interface name; None: `vif<domid>.<devid>` as Xen names it.
    pub vifname: Option<String>,
    /// Hotplug script run with `online`/`offline`; None: none is run.
    pub script: Option<PathBuf>,
    pub mtu: u32,
    /// Most queues offered to the frontend.
    pub queues: u32,
}

impl VifSpec {
    /// A vif with libxl's defaults and no hotplug script.
    pub fn new(domid: u16, devid: u32, mac: [u8; 6]) -> VifSpec {
        VifSpec {
            domid,
            devid,
            mac,
            bridge: DEFAULT_BRIDGE.to_string(),
            vifname: None,
            script: None,
            mtu: DEFAULT_MTU,
            queues: 1,
        }
    }

    /// The host interface name.
    pub fn vifname(&self) -> String {
        self.vifname
            .clone()
            .unwrap_or_else(|| format!("vif{}.{}", self.domid, self.devid))
    }

    /// The MAC as xenstore and scripts write it.
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    pub fn validate(&self) -> Result<(), NetError> {
        let name = self.vifname();
        if !valid_ifname(&name) {
            return Err(NetError::Spec(format!("bad vif name `{name}'")));
        }
        if !valid_ifname(&self.bridge) {
            return Err(NetError::Spec(format!("bad bridge name `{}'", self.bridge)));
        }
        if self.mac[0] & 1 != 0 {
            return Err(NetError::Spec(format!(
                "MAC {} is a multicast address",
                self.mac_string()
            )));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(NetError::Spec(format!("bad MTU {}", self.mtu)));
        }
        if !(1..=MAX_QUEUES).contains(&self.queues) {
            return Err(NetError::Spec(format!(
                "{} queues (1 to {MAX_QUEUES})",
                self.queues
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s = VifSpec::new(5, 0, [0, 0x16, 0x3e, 1, 2, 0xab]);
        assert_eq!(s.vifname(), "vif5.0");
        assert_eq!(s.mac_string(), "00:16:3e:01:02:ab");
        assert!(s.validate().is_ok());
        let bad = [
            VifSpec {
                vifname: Some("much-too-long-name".into()),
                ..s.clone()
            },
            VifSpec {
                bridge: "br;rm".into(),
                ..s.clone()
            },
            VifSpec {
                mac: [1, 0, 0, 0, 0, 0],
                ..s.clone()
            },
            VifSpec {
                queues: 0,
                ..s.clone()
            },
            VifSpec { mtu: 10, ..s },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
