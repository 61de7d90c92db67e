//! xl's network device specification (`vif = [ 'VIFSPEC', ... ]`,
//! `xl network-attach`), as described in xl-network-configuration(5) and
//! parsed by xl: comma-separated `key=value` settings and flags, every one
//! optional (`''` is a valid vif with all defaults).
//!
//! Parsing keeps what was written; [`VifSpec::fill_defaults`] then applies
//! the defaults libxl applies when the device is created (a random MAC in
//! Xen's OUI, bridge `xenbr0`, script `vif-bridge`, MTU 1500, ...).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::config::DomainType;

/// The default bridge.
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// The default hotplug script (relative to [`XEN_SCRIPT_DIR`]).
pub const DEFAULT_SCRIPT: &str = "vif-bridge";
/// Where relative hotplug script names are looked up.
pub const XEN_SCRIPT_DIR: &str = "/etc/xen/scripts";
/// The default MTU.
pub const DEFAULT_MTU: u32 = 1500;
/// The default emulated NIC model (HVM only).
pub const DEFAULT_MODEL: &str = "rtl8139";
/// Default rate-limit replenishment interval: 50 ms.
pub const DEFAULT_RATE_INTERVAL_USECS: u32 = 50_000;

/// A MAC address; displays as `00:16:3e:0a:0b:0c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Xen's Organizationally Unique Identifier.
    pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

    /// A random address in Xen's OUI, as libxl generates one:
    /// `00:16:3e` followed by three random bytes, the first of them with
    /// its top bit clear.
    pub fn random_xen() -> MacAddr {
        let r = crate::config::random_bytes::<3>();
        MacAddr([
            Self::XEN_OUI[0],
            Self::XEN_OUI[1],
            Self::XEN_OUI[2],
            r[0] & 0x7f,
            r[1],
            r[2],
        ])
    }

    /// Whether the address is a group (multicast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address `{0}'")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;

    /// Six groups of one or two hex digits separated by `:` (or all by `-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let sep = if s.contains('-') && !s.contains(':') {
            '-'
        } else {
            ':'
        };
        let mut mac = [0u8; 6];
        let mut groups = s.split(sep);
        for byte in &mut mac {
            let g = groups.next().ok_or_else(bad)?;
            if g.is_empty() || g.len() > 2 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(g, 16).map_err(|_| bad())?;
        }
        if groups.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `type=`: a PV-only device, or (HVM) an emulated one with a PV path too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicType {
    Vif,
    Ioemu,
}

impl NicType {
    pub fn as_str(self) -> &'static str {
        match self {
            NicType::Vif => "vif",
            NicType::Ioemu => "ioemu",
        }
    }
}

/// Outgoing rate limit (`rate=RATE[@INTERVAL]`): `bytes_per_interval` bytes
/// of credit every `interval_usecs` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VifRate {
    pub bytes_per_interval: u64,
    pub interval_usecs: u32,
}

impl fmt::Display for VifRate {
    /// A `rate=` value that parses back to the same limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}B/s@{}us",
            self.bytes_per_second(),
            self.interval_usecs
        )
    }
}

impl VifRate {
    /// The limit in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        if self.interval_usecs == 0 {
            return 0;
        }
        (u128::from(self.bytes_per_interval) * 1_000_000 / u128::from(self.interval_usecs)) as u64
    }

    /// Parses `RATE[@INTERVAL]`. RATE is a number with an optional `K`, `M`
    /// or `G` (powers of 1000) and `B/s` (bytes) or `b/s` (bits); INTERVAL a
    /// number with `s` (the default unit), `ms` or `us`.
    pub fn parse(rate: &str) -> Result<VifRate, VifError> {
        let err = |msg: &'static str| VifError::Rate {
            msg,
            rate: rate.to_string(),
        };
        let (bytes, interval) = match rate.split_once('@') {
            Some((b, i)) => (b, Some(i)),
            None => (rate, None),
        };
        if bytes.is_empty() {
            return Err(err("no rate specified"));
        }
        let bytes_per_sec = parse_bytes_per_sec(bytes).map_err(err)?;
        let interval_usecs = match interval {
            Some(i) => parse_interval_usecs(i).map_err(err)?,
            None => DEFAULT_RATE_INTERVAL_USECS,
        };
        // xl refuses a rate whose product with the interval overflows 64 bits
        if bytes_per_sec > u64::MAX / u64::from(interval_usecs) {
            return Err(err("rate overflow"));
        }
        let bytes_per_interval = bytes_per_sec * u64::from(interval_usecs) / 1_000_000;
        Ok(VifRate {
            bytes_per_interval,
            interval_usecs,
        })
    }
}

/// C `strtoull(s, &end, 0)` over a run of decimal digits (so a leading `0`
/// means octal and stops at the first 8 or 9): (value, rest).
fn c_digits(s: &str) -> (Option<u64>, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    let digits = &s[..n];
    if digits.len() > 1 && digits.starts_with('0') {
        let m = digits[1..]
            .bytes()
            .take_while(|b| (b'0'..=b'7').contains(b))
            .count();
        (u64::from_str_radix(&digits[..1 + m], 8).ok(), &s[1 + m..])
    } else {
        (digits.parse().ok(), &s[n..])
    }
}

/// `^[0-9]+[GMK]?[Bb]/s$`
fn parse_bytes_per_sec(s: &str) -> Result<u64, &'static str> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    let suffix = &s[n..];
    let suffix_ok = matches!(
        suffix,
        "B/s" | "b/s" | "KB/s" | "Kb/s" | "MB/s" | "Mb/s" | "GB/s" | "Gb/s"
    );
    if n == 0 || !suffix_ok {
        return Err("invalid rate");
    }
    let (value, rest) = c_digits(s);
    let value = match value {
        Some(v) if v != 0 && v <= u64::from(u32::MAX) => v,
        _ => return Err("rate overflow"),
    };
    let rest = rest.as_bytes();
    let mut v = match rest.first() {
        Some(b'G') => value * 1_000_000_000,
        Some(b'M') => value * 1_000_000,
        Some(b'K') => value * 1_000,
        _ => value,
    };
    if rest.first() == Some(&b'b') || rest.get(1) == Some(&b'b') {
        v /= 8;
    }
    Ok(v)
}

/// `^[0-9]+[mu]?s?$`, in microseconds.
fn parse_interval_usecs(s: &str) -> Result<u32, &'static str> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || !matches!(&s[n..], "" | "s" | "m" | "ms" | "u" | "us") {
        return Err("invalid replenishment interval");
    }
    let (value, rest) = c_digits(s);
    let value = match value {
        Some(v) if v != 0 && v <= u64::from(u32::MAX) => v,
        _ => return Err("replenishment interval overflow"),
    };
    let usecs = match rest.as_bytes().first() {
        Some(b's') | None => value * 1_000_000,
        Some(b'm') => value * 1_000,
        _ => value,
    };
    u32::try_from(usecs).map_err(|_| "replenishment interval overflow")
}

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VifSpec {
    /// Device number: the index in `vif = [...]` unless `devid=` says
    /// otherwise; `None` for `network-attach` (the next free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Backend interface name (`vifname=`); default `vifDOMID.DEVID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `type=vif|ioemu`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub nictype: Option<NicType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<VifRate>,
    /// Backend domain name; default domain 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `gatewaydev=` (or the deprecated `netdev=`), for vif-route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gatewaydev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
    /// `trusted` / `untrusted`; default trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
    /// COLO settings (`forwarddev=`, `colo_*=`), kept as written.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub colo: std::collections::BTreeMap<String, String>,
}

/// A vif spec that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VifError {
    #[error("unrecognized argument `{0}'")]
    UnrecognizedArgument(String),
    #[error("invalid MAC address `{0}'")]
    BadMac(String),
    #[error("invalid type `{0}' (expected vif or ioemu)")]
    BadType(String),
    /// A number (`mtu=`, `devid=`) that did not parse.
    #[error("{key}: failed to convert \"{value}\" to number")]
    BadNumber { key: &'static str, value: String },
    #[error("{msg} in `{rate}'")]
    Rate { msg: &'static str, rate: String },
    /// Emulated NIC on a domain type without a device model.
    #[error("trying to create PV or PVH guest with an emulated interface")]
    EmulatedOnPv,
}

impl VifError {
    /// What xl itself prints for this error (xl_parse.c / libxlu_vif.c);
    /// `source` is the config file name (or `command line`).
    pub fn xl_message(&self, source: &str) -> String {
        match self {
            VifError::UnrecognizedArgument(a) => format!("unrecognized argument `{a}'"),
            VifError::BadMac(_) => "Invalid parameter `mac'.".into(),
            VifError::BadType(_) => "Invalid parameter `type'.".into(),
            VifError::BadNumber { value, .. } => {
                format!("xl: failed to convert \"{value}\" to number")
            }
            VifError::Rate { msg, rate } => {
                format!("{source}: config parsing error in vif: {msg} in `{rate}'")
            }
            VifError::EmulatedOnPv => self.to_string(),
        }
    }
}

/// Keys whose values are kept in [`VifSpec::colo`].
fn is_colo_key(key: &str) -> bool {
    key == "forwarddev" || key.starts_with("colo_")
}

fn parse_number(key: &'static str, value: &str) -> Result<u32, VifError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VifError::BadNumber {
            key,
            value: value.into(),
        });
    }
    value.parse().map_err(|_| VifError::BadNumber {
        key,
        value: value.into(),
    })
}

impl VifSpec {
    /// Parses a vif spec; advisory messages (deprecated or ignored
    /// parameters) are logged and dropped.
    pub fn parse(spec: &str) -> Result<VifSpec, VifError> {
        let (vif, warnings) = Self::parse_with_warnings(spec)?;
        for w in warnings {
            tracing::warn!("vif `{spec}': {w}");
        }
        Ok(vif)
    }

    /// Parses a vif spec, returning xl's advisory messages too.
    pub fn parse_with_warnings(spec: &str) -> Result<(VifSpec, Vec<String>), VifError> {
        Self::parse_tokens(spec.split(','))
    }

    /// Parses settings given one per item, as `xl network-attach DOMAIN
    /// KEY=VALUE...` does (no splitting at commas).
    pub fn parse_tokens<'a, I>(tokens: I) -> Result<(VifSpec, Vec<String>), VifError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut vif = VifSpec::default();
        let mut warnings = Vec::new();
        for token in tokens {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            vif.set(token, &mut warnings)?;
        }
        Ok((vif, warnings))
    }

    fn set(&mut self, token: &str, warnings: &mut Vec<String>) -> Result<(), VifError> {
        match token {
            "trusted" => {
                self.trusted = Some(true);
                return Ok(());
            }
            "untrusted" => {
                self.trusted = Some(false);
                return Ok(());
            }
            _ => {}
        }
        let Some((key, value)) = token.split_once('=') else {
            return Err(VifError::UnrecognizedArgument(token.into()));
        };
        let s = || Some(value.to_string());
        match key {
            "type" => {
                self.nictype = Some(match value {
                    "vif" => NicType::Vif,
                    "ioemu" => NicType::Ioemu,
                    _ => return Err(VifError::BadType(value.into())),
                })
            }
            "mac" => {
                self.mac = Some(
                    value
                        .parse()
                        .map_err(|_| VifError::BadMac(value.to_string()))?,
                )
            }
            "bridge" => self.bridge = s(),
            "netdev" => {
                warnings.push(
                    "the netdev parameter is deprecated, please use gatewaydev instead".into(),
                );
                self.gatewaydev = s();
            }
            "gatewaydev" => self.gatewaydev = s(),
            "ip" => self.ip = s(),
            "script" => self.script = s(),
            "backend" => self.backend = s(),
            "vifname" => self.vifname = s(),
            "model" => self.model = s(),
            "rate" => self.rate = Some(VifRate::parse(value)?),
            "accel" => {
                warnings.push("the accel parameter for vifs is currently not supported".into())
            }
            "devid" => self.devid = Some(parse_number("devid", value)?),
            "mtu" => self.mtu = Some(parse_number("mtu", value)?),
            "vlan" => self.vlan = s(),
            k if is_colo_key(k) => {
                self.colo.insert(k.to_string(), value.to_string());
            }
            _ => return Err(VifError::UnrecognizedArgument(token.into())),
        }
        Ok(())
    }

    /// Applies libxl's creation-time defaults: MTU 1500, model `rtl8139`,
    /// a random MAC in Xen's OUI, bridge `xenbr0`, script `vif-bridge`,
    /// trusted, and the device type (`ioemu` for HVM unless `type=vif`;
    /// always `vif` for PV and PVH, where `ioemu` is an error).
    pub fn fill_defaults(&mut self, domain_type: DomainType) -> Result<(), VifError> {
        if self.mtu.is_none_or(|m| m == 0) {
            self.mtu = Some(DEFAULT_MTU);
        }
        self.model.get_or_insert_with(|| DEFAULT_MODEL.to_string());
        self.mac.get_or_insert_with(MacAddr::random_xen);
        self.bridge
            .get_or_insert_with(|| DEFAULT_BRIDGE.to_string());
        self.script
            .get_or_insert_with(|| DEFAULT_SCRIPT.to_string());
        self.trusted.get_or_insert(true);
        match domain_type {
            DomainType::Hvm => {
                self.nictype.get_or_insert(NicType::Ioemu);
            }
            DomainType::Pv | DomainType::Pvh => {
                if self.nictype == Some(NicType::Ioemu) {
                    return Err(VifError::EmulatedOnPv);
                }
                self.nictype = Some(NicType::Vif);
            }
        }
        Ok(())
    }

    /// The hotplug script as a path: relative names are looked up in
    /// [`XEN_SCRIPT_DIR`].
    pub fn script_path(&self) -> String {
        let script = self.script.as_deref().unwrap_or(DEFAULT_SCRIPT);
        if script.starts_with('/') {
            script.to_string()
        } else {
            format!("{XEN_SCRIPT_DIR}/{script}")
        }
    }

    /// The canonical spec string, which parses back to an equal `VifSpec`.
    pub fn to_spec_string(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        push("mac", &self.mac.map(|m| m.to_string()));
        push("bridge", &self.bridge);
        push("vifname", &self.vifname);
        push("script", &self.script);
        push("ip", &self.ip);
        push("type", &self.nictype.map(|t| t.as_str().to_string()));
        push("model", &self.model);
        push("mtu", &self.mtu.map(|m| m.to_string()));
        push("rate", &self.rate.map(|r| r.to_string()));
        push("backend", &self.backend);
        push("gatewaydev", &self.gatewaydev);
        push("vlan", &self.vlan);
        push("devid", &self.devid.map(|d| d.to_string()));
        for (k, v) in &self.colo {
            parts.push(format!("{k}={v}"));
        }
        match self.trusted {
            Some(true) => parts.push("trusted".into()),
            Some(false) => parts.push("untrusted".into()),
            None => {}
        }
        parts.join(",")
    }
}

impl fmt::Display for VifSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_spec_string())
    }
}

impl FromStr for VifSpec {
    type Err = VifError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VifSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> VifSpec {
        VifSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn manual_examples() {
        let v = p("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0");
        assert_eq!(v.mac, Some(MacAddr([0x00, 0x16, 0x3e, 0x74, 0x3d, 0x76])));
        assert_eq!(v.model.as_deref(), Some("rtl8139"));
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));
        assert_eq!(
            p("mac=00:16:3E:74:34:32").mac.unwrap().to_string(),
            "00:16:3e:74:34:32"
        );
        assert_eq!(p(""), VifSpec::default());
    }

    #[test]
    fn every_key() {
        let v = p(
            "mac=aa:bb:cc:dd:ee:ff, bridge=br1, vifname=web0, script=vif-route, \
                   ip=10.0.0.2 10.0.0.3, type=ioemu, model=e1000, mtu=9000, rate=10Mb/s, \
                   backend=netdom, gatewaydev=eth0, vlan=10p/20, devid=3, untrusted, \
                   forwarddev=eth1, colo_sock_mirror_port=9003",
        );
        assert_eq!(v.bridge.as_deref(), Some("br1"));
        assert_eq!(v.vifname.as_deref(), Some("web0"));
        assert_eq!(v.script.as_deref(), Some("vif-route"));
        assert_eq!(v.ip.as_deref(), Some("10.0.0.2 10.0.0.3"));
        assert_eq!(v.nictype, Some(NicType::Ioemu));
        assert_eq!(v.model.as_deref(), Some("e1000"));
        assert_eq!(v.mtu, Some(9000));
        assert_eq!(
            v.rate,
            Some(VifRate {
                bytes_per_interval: 62_500,
                interval_usecs: 50_000
            })
        );
        assert_eq!(v.backend.as_deref(), Some("netdom"));
        assert_eq!(v.gatewaydev.as_deref(), Some("eth0"));
        assert_eq!(v.vlan.as_deref(), Some("10p/20"));
        assert_eq!(v.devid, Some(3));
        assert_eq!(v.trusted, Some(false));
        assert_eq!(v.colo.len(), 2);
        assert_eq!(p("trusted").trusted, Some(true));
        assert_eq!(p("type=vif").nictype, Some(NicType::Vif));
    }

    #[test]
    fn deprecated_and_ignored() {
        let (v, w) = VifSpec::parse_with_warnings("netdev=eth0,accel=x").unwrap();
        assert_eq!(v.gatewaydev.as_deref(), Some("eth0"));
        assert_eq!(
            w,
            [
                "the netdev parameter is deprecated, please use gatewaydev instead",
                "the accel parameter for vifs is currently not supported"
            ]
        );
    }

    #[test]
    fn empty_items_and_spaces() {
        let v = p(",, bridge=xenbr1 ,,mac=00:16:3e:00:00:01,");
        // The two settings and nothing else: empty items add no field.
        assert_eq!(
            v,
            VifSpec {
                bridge: Some("xenbr1".into()),
                mac: Some(MacAddr([0x00, 0x16, 0x3e, 0x00, 0x00, 0x01])),
                ..VifSpec::default()
            }
        );
    }

    #[test]
    fn mac_syntax() {
        for good in [
            "00:16:3e:00:00:01",
            "0:16:3e:0:0:1",
            "AA:BB:CC:DD:EE:FF",
            "00-16-3e-00-00-01",
        ] {
            assert!(good.parse::<MacAddr>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "00:16:3e:00:00",
            "00:16:3e:00:00:01:02",
            "00:16:3e:00:00:001",
            "00:16:3e:00:00:0g",
            "00:16:3e:00:00:",
            "0016.3e00.0001",
            "00:16-3e:00:00:01",
            "00:16:3e:00:00:01 ",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            VifSpec::parse("mac=00:16:3e:zz:00:01").unwrap_err(),
            VifError::BadMac("00:16:3e:zz:00:01".into())
        );
        assert_eq!(
            VifSpec::parse("mac=1").unwrap_err().xl_message("x.cfg"),
            "Invalid parameter `mac'."
        );
    }

    #[test]
    fn random_mac_is_in_xen_oui() {
        for _ in 0..32 {
            let m = MacAddr::random_xen();
            assert_eq!(&m.0[..3], &MacAddr::XEN_OUI);
            assert_eq!(m.0[3] & 0x80, 0);
            assert!(!m.is_multicast());
        }
        assert_ne!(MacAddr::random_xen(), MacAddr::random_xen());
    }

    #[test]
    fn errors() {
        assert_eq!(
            VifSpec::parse("brigde=xenbr0").unwrap_err(),
            VifError::UnrecognizedArgument("brigde=xenbr0".into())
        );
        assert_eq!(
            VifSpec::parse("foo").unwrap_err().to_string(),
            "unrecognized argument `foo'"
        );
        assert_eq!(
            VifSpec::parse("type=e1000").unwrap_err(),
            VifError::BadType("e1000".into())
        );
        assert!(matches!(
            VifSpec::parse("mtu=big").unwrap_err(),
            VifError::BadNumber { key: "mtu", .. }
        ));
        assert!(matches!(
            VifSpec::parse("mtu=99999999999").unwrap_err(),
            VifError::BadNumber { key: "mtu", .. }
        ));
        assert!(matches!(
            VifSpec::parse("devid=-1").unwrap_err(),
            VifError::BadNumber { key: "devid", .. }
        ));
    }

    #[test]
    fn rates() {
        let r = |s: &str| VifRate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let rate = |b, i| VifRate {
            bytes_per_interval: b,
            interval_usecs: i,
        };
        // the manual's examples
        assert_eq!(r("10Mb/s"), rate(62_500, 50_000));
        assert_eq!(r("250KB/s"), rate(12_500, 50_000));
        assert_eq!(r("1MB/s@20ms"), rate(20_000, 20_000));
        assert_eq!(r("100B/s"), rate(5, 50_000));
        assert_eq!(r("800b/s@1s"), rate(100, 1_000_000));
        assert_eq!(r("1GB/s@100us"), rate(100_000, 100));
        assert_eq!(r("8Gb/s@2"), rate(2_000_000_000, 2_000_000));
        assert_eq!(r("1000B/s@1u"), rate(0, 1));
        assert_eq!(r("1000B/s@5m"), rate(5, 5_000));
        // leading zero: octal, as strtoull(.., 0) reads it
        assert_eq!(r("010B/s@1s"), rate(8, 1_000_000));
        let e = |s: &str| VifRate::parse(s).unwrap_err().to_string();
        assert_eq!(e("@1s"), "no rate specified in `@1s'");
        assert_eq!(e("10MB"), "invalid rate in `10MB'");
        assert_eq!(e("10 MB/s"), "invalid rate in `10 MB/s'");
        assert_eq!(e("10kB/s"), "invalid rate in `10kB/s'");
        assert_eq!(e("0B/s"), "rate overflow in `0B/s'");
        assert_eq!(e("4294967296B/s"), "rate overflow in `4294967296B/s'");
        assert_eq!(
            e("1MB/s@20h"),
            "invalid replenishment interval in `1MB/s@20h'"
        );
        assert_eq!(e("1MB/s@"), "invalid replenishment interval in `1MB/s@'");
        assert_eq!(e("1MB/s@0"), "replenishment interval overflow in `1MB/s@0'");
        assert_eq!(
            e("1MB/s@5000s"),
            "replenishment interval overflow in `1MB/s@5000s'"
        );
        assert_eq!(
            VifRate::parse("1MB/s@0").unwrap_err().xl_message("a.cfg"),
            "a.cfg: config parsing error in vif: replenishment interval overflow in `1MB/s@0'"
        );
        assert_eq!(r("1MB/s@20ms").to_string(), "1000000B/s@20000us");
        for s in ["10Mb/s", "250KB/s", "1MB/s@20ms", "3B/s@1s"] {
            assert_eq!(r(&r(s).to_string()), r(s), "{s}");
        }
    }

    #[test]
    fn defaults() {
        let mut v = p("");
        v.fill_defaults(DomainType::Pvh).unwrap();
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));
        assert_eq!(v.script.as_deref(), Some("vif-bridge"));
        assert_eq!(v.script_path(), "/etc/xen/scripts/vif-bridge");
        assert_eq!(v.mtu, Some(1500));
        assert_eq!(v.model.as_deref(), Some("rtl8139"));
        assert_eq!(v.nictype, Some(NicType::Vif));
        assert_eq!(v.trusted, Some(true));
        assert_eq!(&v.mac.unwrap().0[..3], &MacAddr::XEN_OUI);

        let mut v = p("mac=00:16:3e:01:02:03,bridge=br9,script=/usr/local/vif,mtu=0");
        v.fill_defaults(DomainType::Hvm).unwrap();
        assert_eq!(v.mac.unwrap().to_string(), "00:16:3e:01:02:03");
        assert_eq!(v.bridge.as_deref(), Some("br9"));
        assert_eq!(v.script_path(), "/usr/local/vif");
        assert_eq!(v.mtu, Some(1500));
        assert_eq!(v.nictype, Some(NicType::Ioemu));

        let mut v = p("type=ioemu");
        assert_eq!(v.fill_defaults(DomainType::Pv), Err(VifError::EmulatedOnPv));
    }

    #[test]
    fn canonical_and_json_round_trip() {
        for s in [
            "",
            "mac=00:16:3e:74:3d:76,model=rtl8139,bridge=xenbr0",
            "bridge=br1,vifname=web0,script=vif-route,ip=10.0.0.2,type=vif,mtu=9000,rate=1MB/s@20ms,backend=d,gatewaydev=eth0,vlan=10,devid=2,untrusted,colo_x=1",
        ] {
            let v = p(s);
            assert_eq!(p(&v.to_spec_string()), v, "{s}");
            let j = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<VifSpec>(&j).unwrap(), v, "{j}");
        }
        assert_eq!(
            serde_json::to_string(&p("mac=00:16:3e:00:00:01,type=vif")).unwrap(),
            r#"{"mac":"00:16:3e:00:00:01","type":"vif"}"#
        );
    }

    #[test]
    fn network_attach_tokens() {
        let (v, _) = VifSpec::parse_tokens(["bridge=xenbr1", "mac=00:16:3e:00:00:09"]).unwrap();
        assert_eq!(v.bridge.as_deref(), Some("xenbr1"));
        // no splitting at commas: the whole argument is the bridge name
        let (v, _) = VifSpec::parse_tokens(["bridge=a,b"]).unwrap();
        assert_eq!(v.bridge.as_deref(), Some("a,b"));
    }
}
