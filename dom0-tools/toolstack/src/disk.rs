//! xl's disk specification (`disk = [ 'DISKSPEC', ... ]`, `xl block-attach`),
//! as described in xl-disk-configuration(5) and accepted by libxlu's disk
//! scanner, plus the virtual-device numbering libxl uses in xenstore.
//!
//! A spec is a comma-separated mix of positional parameters
//! (`target,format,vdev,access`), `key=value` parameters, flags and the
//! deprecated `prefix:` forms:
//!
//! ```text
//! /dev/vg/guest,raw,xvda,rw
//! format=raw, vdev=xvda, access=rw, target=/img/with,commas
//! phy:/dev/vg/guest,xvda,w
//! /root/image.iso,,hdc,cdrom
//! ,hdc:cdrom,r
//! ```
//!
//! Tokenisation follows the scanner's rules: at each position the longest
//! matching rule wins, and among equally long matches the one listed first.
//! That is what makes `discard` a flag but `discards` a positional value, and
//! `file:` a prefix even in `file:/img,xvda,w`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Image format (`format=`). The default is `raw`; an empty CD-ROM drive is
/// `empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow,
    Qcow2,
    Vhd,
    Qed,
    Empty,
}

impl DiskFormat {
    /// The name used in specs and in libxl's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow => "qcow",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Qed => "qed",
            DiskFormat::Empty => "empty",
        }
    }

    /// Parses a format name; the empty string means the default (`raw`).
    pub fn from_spec(s: &str) -> Option<Self> {
        Some(match s {
            "" | "raw" => DiskFormat::Raw,
            "qcow" => DiskFormat::Qcow,
            "qcow2" => DiskFormat::Qcow2,
            "vhd" => DiskFormat::Vhd,
            "empty" => DiskFormat::Empty,
            "qed" => DiskFormat::Qed,
            _ => return None,
        })
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Backend implementation (`backendtype=`); absent means "let the toolstack
/// choose".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBackendType {
    Phy,
    Tap,
    Qdisk,
    Standalone,
}

impl DiskBackendType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBackendType::Phy => "phy",
            DiskBackendType::Tap => "tap",
            DiskBackendType::Qdisk => "qdisk",
            DiskBackendType::Standalone => "standalone",
        }
    }

    fn from_spec(s: &str) -> Option<Self> {
        Some(match s {
            "phy" => DiskBackendType::Phy,
            "tap" => DiskBackendType::Tap,
            "qdisk" => DiskBackendType::Qdisk,
            "standalone" => DiskBackendType::Standalone,
            _ => return None,
        })
    }
}

/// Device protocol (`specification=`); the default is `xen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskSpecification {
    Xen,
    Virtio,
}

impl DiskSpecification {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskSpecification::Xen => "xen",
            DiskSpecification::Virtio => "virtio",
        }
    }

    fn from_spec(s: &str) -> Option<Self> {
        match s {
            "xen" => Some(DiskSpecification::Xen),
            "virtio" => Some(DiskSpecification::Virtio),
            _ => None,
        }
    }
}

/// One parsed disk specification.
///
/// Options that were not given stay `None`/`false`; the defaults that libxl
/// applies when the device is added are documented on each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Block device or image path as written. Only a CD-ROM drive may be
    /// without one: `None` when no target was given, `Some("")` when it was
    /// given empty (`,hdc:cdrom,r`); see [`DiskSpec::target_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub format: DiskFormat,
    /// Guest device name as written (`xvda`, `hdc`, `sdb1`, `51712`, ...);
    /// always valid, see [`DiskSpec::devid`].
    pub vdev: String,
    /// `access=rw` (true) or `access=ro` (false). CD-ROMs are read-only.
    pub readwrite: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_cdrom: bool,
    /// Set for CD-ROMs (media can be inserted and ejected).
    #[serde(default, skip_serializing_if = "is_false")]
    pub removable: bool,
    /// Backend domain name (`backend=`); default domain 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backendtype: Option<DiskBackendType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specification: Option<DiskSpecification>,
    /// Hotplug script (`script=`, or `block-NAME` from an `iscsi:`-style
    /// prefix); default `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct_io_safe: bool,
    /// `discard` / `no-discard`; default: on for read-write disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<bool>,
    /// `trusted` / `untrusted`; default trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
    /// `grant_usage=0|1` (virtio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_usage: Option<bool>,
    /// `colo` / `no-colo` and the COLO replication parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo_export: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_disk: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What was wrong with a disk spec (the messages are libxlu's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskErrorKind {
    UnknownFormat,
    UnknownAccess,
    UnknownBackendType,
    UnknownSpecification,
    /// `devtype=` other than `cdrom`/`disk`.
    UnknownDevtype,
    /// `vdev:TYPE` with TYPE other than `cdrom`/`disk`.
    UnknownDeprecatedType,
    UnknownParameter,
    UnknownPrefix,
    BadColoPort,
    BadSyntax,
    TooManyPositional,
    /// A parameter given twice (the name says which).
    Respecified(&'static str),
    NoVdev,
    NoTarget,
    InvalidVdev,
}

impl fmt::Display for DiskErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskErrorKind::UnknownFormat => f.write_str("unknown value for format"),
            DiskErrorKind::UnknownAccess => f.write_str("unknown value for access"),
            DiskErrorKind::UnknownBackendType => f.write_str("unknown value for backendtype"),
            DiskErrorKind::UnknownSpecification => f.write_str("unknown value for specification"),
            DiskErrorKind::UnknownDevtype => f.write_str("unknown value for type"),
            DiskErrorKind::UnknownDeprecatedType => f.write_str("unknown deprecated type"),
            DiskErrorKind::UnknownParameter => f.write_str("unknown parameter"),
            DiskErrorKind::UnknownPrefix => f.write_str("unknown deprecated disk prefix"),
            DiskErrorKind::BadColoPort => f.write_str("unknown value for colo_port"),
            DiskErrorKind::BadSyntax => f.write_str("bad disk syntax"),
            DiskErrorKind::TooManyPositional => f.write_str("too many positional parameters"),
            DiskErrorKind::Respecified(what) => write!(f, "{what} respecified"),
            DiskErrorKind::NoVdev => f.write_str("no vdev specified"),
            DiskErrorKind::NoTarget => {
                f.write_str("no target specified (and device not removable)")
            }
            DiskErrorKind::InvalidVdev => {
                f.write_str("invalid or unsupported virtual disk identifier")
            }
        }
    }
}

/// A disk spec that could not be parsed. Displays as libxlu's message
/// without its source prefix: ``unknown value for format: near `qcow3' in
/// `/img,qcow3,xvda'``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DiskError {
    pub kind: DiskErrorKind,
    /// The offending piece of the spec, when there is one.
    pub near: Option<String>,
    /// The whole spec (or, for several components, the one being parsed).
    pub spec: String,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(near) = &self.near {
            write!(f, ": near `{near}'")?;
        }
        write!(f, " in `{}'", self.spec)
    }
}

impl DiskSpec {
    /// Parses one disk spec.
    pub fn parse(spec: &str) -> Result<DiskSpec, DiskError> {
        Self::parse_components(&[spec])
    }

    /// Parses a spec given in several pieces that together describe one disk,
    /// as `xl block-attach DOMAIN COMPONENT...` does: positional parameters
    /// carry on from one piece to the next.
    pub fn parse_components<S: AsRef<str>>(components: &[S]) -> Result<DiskSpec, DiskError> {
        let mut p = Parser::default();
        for c in components {
            p.spec = c.as_ref().to_string();
            p.scan()?;
        }
        p.finish()
    }

    /// The path to open: the target unless it is absent or empty (an
    /// empty CD-ROM drive).
    pub fn target_path(&self) -> Option<&str> {
        self.target.as_deref().filter(|t| !t.is_empty())
    }

    /// The xenstore virtual-device number of [`DiskSpec::vdev`].
    pub fn devid(&self) -> u32 {
        vdev_to_devid(&self.vdev).unwrap_or(0)
    }

    /// `"rw"` or `"ro"`.
    pub fn access(&self) -> &'static str {
        if self.readwrite {
            "rw"
        } else {
            "ro"
        }
    }

    /// The canonical `key=value` form of this spec (target last), which
    /// parses back to an equal `DiskSpec`.
    pub fn to_spec_string(&self) -> String {
        let mut parts = vec![
            format!("format={}", self.format),
            format!("vdev={}", self.vdev),
            format!("access={}", self.access()),
        ];
        if self.is_cdrom {
            parts.push("devtype=cdrom".into());
        }
        if let Some(b) = &self.backend {
            parts.push(format!("backend={b}"));
        }
        if let Some(b) = self.backendtype {
            parts.push(format!("backendtype={}", b.as_str()));
        }
        if let Some(s) = self.specification {
            parts.push(format!("specification={}", s.as_str()));
        }
        if let Some(s) = &self.script {
            parts.push(format!("script={s}"));
        }
        if self.direct_io_safe {
            parts.push("direct-io-safe".into());
        }
        match self.discard {
            Some(true) => parts.push("discard".into()),
            Some(false) => parts.push("no-discard".into()),
            None => {}
        }
        match self.trusted {
            Some(true) => parts.push("trusted".into()),
            Some(false) => parts.push("untrusted".into()),
            None => {}
        }
        if let Some(g) = self.grant_usage {
            parts.push(format!("grant_usage={}", u8::from(g)));
        }
        match self.colo {
            Some(true) => parts.push("colo".into()),
            Some(false) => parts.push("no-colo".into()),
            None => {}
        }
        for (k, v) in [
            ("colo-host", &self.colo_host),
            ("colo-export", &self.colo_export),
            ("active-disk", &self.active_disk),
            ("hidden-disk", &self.hidden_disk),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if let Some(p) = self.colo_port {
            parts.push(format!("colo-port={p}"));
        }
        if let Some(t) = &self.target {
            parts.push(format!("target={t}"));
        }
        parts.join(", ")
    }
}

impl fmt::Display for DiskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_spec_string())
    }
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DiskSpec::parse(s)
    }
}

// ---------------------------------------------------------------------------
// The scanner

/// Parameters of the form `key=value` that set one field.
const KEY_VALUE_RULES: &[&str] = &[
    "format=",
    "access=",
    "backend=",
    "backendtype=",
    "specification=",
    "vdev=",
    "script=",
    "colo-host=",
    "colo-port=",
    "colo-export=",
    "active-disk=",
    "hidden-disk=",
];

/// The scanner's rules, in priority order (ties in length go to the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// `key=[^,]*,?` for a known key.
    KeyValue(&'static str),
    /// A bare word with an optional comma: `cdrom`, `discard`, ...
    Flag(&'static str),
    /// `devtype=[^,]*,?` with a value other than cdrom/disk.
    Devtype,
    /// `target=.*`: the rest of the spec.
    Target,
    /// `[a-z][-a-z0-9]*=[^,]*,?` for any other key.
    UnknownParameter,
    /// A deprecated `prefix:`; the rule counts the rest of the spec as its
    /// trailing context, so it beats positional parameters.
    Prefix(&'static str),
    /// `[a-z][a-z0-9]*:` followed by a non-alphanumeric or nothing.
    UnknownPrefix,
    /// `[^=,]*,|[^=,]+,?`
    Positional,
    /// Anything else: the rest is a syntax error.
    Bad,
}

/// Bare flags, in the scanner's order, with the literal that matches them.
const FLAGS: &[&str] = &[
    "cdrom",
    "devtype=cdrom",
    "devtype=disk",
    "direct-io-safe",
    "discard",
    "no-discard",
    "colo",
    "no-colo",
    "trusted",
    "untrusted",
    "grant_usage=1",
    "grant_usage=0",
];

const FORMAT_PREFIXES: &[&str] = &["raw:", "qcow:", "qcow2:", "vhd:"];
const SCRIPT_PREFIXES: &[&str] = &["iscsi:", "nbd:", "enbd:", "drbd:"];
const IGNORED_PREFIXES: &[&str] = &[
    "tapdisk:", "tap:", "tap2:", "aio:", "ioemu:", "file:", "phy:",
];

#[derive(Default)]
struct Parser {
    spec: String,
    target: Option<String>,
    format: Option<DiskFormat>,
    vdev: Option<String>,
    readwrite: Option<bool>,
    is_cdrom: bool,
    backend: Option<String>,
    backendtype: Option<DiskBackendType>,
    specification: Option<DiskSpecification>,
    script: Option<String>,
    direct_io_safe: bool,
    discard: Option<bool>,
    trusted: Option<bool>,
    grant_usage: Option<bool>,
    colo: Option<bool>,
    colo_host: Option<String>,
    colo_port: Option<i32>,
    colo_export: Option<String>,
    active_disk: Option<String>,
    hidden_disk: Option<String>,
    access_set: bool,
    had_depr_prefix: bool,
}

/// Length of the end of line from `s` (flex's `.*`).
fn line_len(s: &[u8]) -> usize {
    s.iter().position(|&b| b == b'\n').unwrap_or(s.len())
}

/// Length of `[^,]*,?` at `s`.
fn value_len(s: &[u8]) -> usize {
    match s.iter().position(|&b| b == b',') {
        Some(i) => i + 1,
        None => s.len(),
    }
}

fn is_lower(b: u8) -> bool {
    b.is_ascii_lowercase()
}

/// The longest rule matching at the start of `s`: (rule, token length,
/// length counted for the longest-match comparison).
fn best_rule(s: &[u8]) -> (Rule, usize, usize) {
    let mut best: Option<(Rule, usize, usize)> = None;
    let mut offer = |rule: Rule, token: usize, total: usize| {
        if best.is_none_or(|(_, _, t)| total > t) {
            best = Some((rule, token, total));
        }
    };

    // Keyword rules, in the scanner's order. Flags and key=value rules are
    // interleaved there, but no flag and key=value rule can both match the
    // same text, except `devtype=` whose specific values come first.
    for key in KEY_VALUE_RULES.iter().take(1) {
        if s.starts_with(key.as_bytes()) {
            let n = key.len() + value_len(&s[key.len()..]);
            offer(Rule::KeyValue(key), n, n);
        }
    }
    for flag in FLAGS {
        if s.starts_with(flag.as_bytes()) {
            let mut n = flag.len();
            if s.get(n) == Some(&b',') {
                n += 1;
            }
            offer(Rule::Flag(flag), n, n);
        }
        if *flag == "devtype=disk" && s.starts_with(b"devtype=") {
            let n = 8 + value_len(&s[8..]);
            offer(Rule::Devtype, n, n);
        }
    }
    for key in KEY_VALUE_RULES.iter().skip(1) {
        if s.starts_with(key.as_bytes()) {
            let n = key.len() + value_len(&s[key.len()..]);
            offer(Rule::KeyValue(key), n, n);
        }
    }
    if s.starts_with(b"target=") {
        let n = line_len(s);
        offer(Rule::Target, n, n);
    }
    if !s.is_empty() && is_lower(s[0]) {
        let mut i = 1;
        while i < s.len() && (is_lower(s[i]) || s[i].is_ascii_digit() || s[i] == b'-') {
            i += 1;
        }
        if s.get(i) == Some(&b'=') {
            let n = i + 1 + value_len(&s[i + 1..]);
            offer(Rule::UnknownParameter, n, n);
        }
    }
    for prefix in FORMAT_PREFIXES
        .iter()
        .chain(SCRIPT_PREFIXES)
        .chain(IGNORED_PREFIXES)
    {
        if s.starts_with(prefix.as_bytes()) {
            offer(Rule::Prefix(prefix), prefix.len(), line_len(s));
        }
    }
    if !s.is_empty() && is_lower(s[0]) {
        let mut i = 1;
        while i < s.len() && (is_lower(s[i]) || s[i].is_ascii_digit()) {
            i += 1;
        }
        if s.get(i) == Some(&b':') {
            let token = i + 1;
            let rest = &s[token..];
            let total = match rest.first() {
                Some(&c) if c != b'\n' && !is_lower(c) && !c.is_ascii_digit() => {
                    token + line_len(rest)
                }
                _ => token,
            };
            offer(Rule::UnknownPrefix, token, total);
        }
    }
    let stop = s
        .iter()
        .position(|&b| b == b',' || b == b'=')
        .unwrap_or(s.len());
    let positional = if s.get(stop) == Some(&b',') {
        stop + 1
    } else {
        stop
    };
    if positional > 0 {
        offer(Rule::Positional, positional, positional);
    }
    offer(Rule::Bad, 1, 1);
    best.expect("the catch-all rule always matches")
}

impl Parser {
    fn err(&self, kind: DiskErrorKind, near: Option<&str>) -> DiskError {
        DiskError {
            kind,
            near: near.map(str::to_string),
            spec: self.spec.clone(),
        }
    }

    /// Scans `self.spec`, updating the fields.
    fn scan(&mut self) -> Result<(), DiskError> {
        let spec = self.spec.clone();
        let bytes = spec.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            // Whitespace before a parameter is skipped.
            if matches!(bytes[pos], b' ' | b'\t' | b'\n') {
                pos += 1;
                continue;
            }
            let (rule, len, _) = best_rule(&bytes[pos..]);
            if rule == Rule::Bad {
                return Err(self.err(DiskErrorKind::BadSyntax, Some(&spec[pos..])));
            }
            let token = &spec[pos..pos + len];
            pos += len;
            self.action(rule, token)?;
        }
        Ok(())
    }

    fn action(&mut self, rule: Rule, token: &str) -> Result<(), DiskError> {
        let stripped = token.strip_suffix(',').unwrap_or(token);
        let value = || stripped.split_once('=').map_or("", |(_, v)| v);
        match rule {
            Rule::KeyValue(key) => {
                let v = value();
                match key {
                    "format=" => self.set_format(v)?,
                    "access=" => self.set_access(v)?,
                    "backend=" => save(&mut self.backend, "backend", v, &self.spec)?,
                    "backendtype=" => match DiskBackendType::from_spec(v) {
                        Some(b) if self.backendtype.is_none_or(|old| old == b) => {
                            self.backendtype = Some(b)
                        }
                        Some(_) => {
                            return Err(self.err(DiskErrorKind::Respecified("backend"), Some(v)))
                        }
                        None => return Err(self.err(DiskErrorKind::UnknownBackendType, Some(v))),
                    },
                    "specification=" => match DiskSpecification::from_spec(v) {
                        Some(s) if self.specification.is_none_or(|old| old == s) => {
                            self.specification = Some(s)
                        }
                        Some(_) => {
                            return Err(
                                self.err(DiskErrorKind::Respecified("specification"), Some(v))
                            )
                        }
                        None => return Err(self.err(DiskErrorKind::UnknownSpecification, Some(v))),
                    },
                    "vdev=" => save(&mut self.vdev, "vdev", v, &self.spec)?,
                    "script=" => save(&mut self.script, "script", v, &self.spec)?,
                    "colo-host=" => save(&mut self.colo_host, "colo-host", v, &self.spec)?,
                    "colo-export=" => save(&mut self.colo_export, "colo-export", v, &self.spec)?,
                    "active-disk=" => save(&mut self.active_disk, "active-disk", v, &self.spec)?,
                    "hidden-disk=" => save(&mut self.hidden_disk, "hidden-disk", v, &self.spec)?,
                    "colo-port=" => match atoi(v) {
                        0 => return Err(self.err(DiskErrorKind::BadColoPort, Some(v))),
                        p => self.colo_port = Some(p),
                    },
                    _ => unreachable!("unhandled disk key {key}"),
                }
            }
            Rule::Flag(flag) => match flag {
                "cdrom" | "devtype=cdrom" => self.is_cdrom = true,
                "devtype=disk" => self.is_cdrom = false,
                "direct-io-safe" => self.direct_io_safe = true,
                "discard" => self.discard = Some(true),
                "no-discard" => self.discard = Some(false),
                "colo" => self.colo = Some(true),
                "no-colo" => self.colo = Some(false),
                "trusted" => self.trusted = Some(true),
                "untrusted" => self.trusted = Some(false),
                "grant_usage=1" => self.grant_usage = Some(true),
                "grant_usage=0" => self.grant_usage = Some(false),
                _ => unreachable!("unhandled disk flag {flag}"),
            },
            Rule::Devtype => return Err(self.err(DiskErrorKind::UnknownDevtype, Some(token))),
            Rule::Target => save(&mut self.target, "target", value(), &self.spec)?,
            Rule::UnknownParameter => {
                return Err(self.err(DiskErrorKind::UnknownParameter, Some(stripped)))
            }
            Rule::Prefix(prefix) => {
                self.had_depr_prefix = true;
                let name = &prefix[..prefix.len() - 1];
                if FORMAT_PREFIXES.contains(&prefix) {
                    self.set_format(name)?;
                } else if SCRIPT_PREFIXES.contains(&prefix) {
                    save(
                        &mut self.script,
                        "script",
                        &format!("block-{name}"),
                        &self.spec,
                    )?;
                }
            }
            Rule::UnknownPrefix => {
                return Err(self.err(DiskErrorKind::UnknownPrefix, Some(token)));
            }
            Rule::Positional => self.positional(stripped)?,
            Rule::Bad => unreachable!("handled by scan"),
        }
        Ok(())
    }

    fn positional(&mut self, tok: &str) -> Result<(), DiskError> {
        if self.target.is_none() {
            self.target = Some(tok.to_string());
        } else if !self.had_depr_prefix && self.format.is_none() {
            if self.target.as_deref() == Some("") && self.vdev_and_devtype(tok)? {
                self.format = Some(DiskFormat::Empty);
            } else {
                self.set_format(tok)?;
            }
        } else if self.vdev.is_none() {
            if !self.vdev_and_devtype(tok)? {
                self.vdev = Some(tok.to_string());
            }
        } else if !self.access_set {
            self.access_set = true;
            self.set_access(tok)?;
        } else {
            return Err(self.err(DiskErrorKind::TooManyPositional, Some(tok)));
        }
        Ok(())
    }

    /// The deprecated `vdev:devtype` form; false (and nothing done) when
    /// `tok` has no colon.
    fn vdev_and_devtype(&mut self, tok: &str) -> Result<bool, DiskError> {
        let Some((vdev, devtype)) = tok.rsplit_once(':') else {
            return Ok(false);
        };
        save(&mut self.vdev, "vdev", vdev, &self.spec)?;
        match devtype {
            "cdrom" => self.is_cdrom = true,
            "disk" => self.is_cdrom = false,
            _ => return Err(self.err(DiskErrorKind::UnknownDeprecatedType, Some(devtype))),
        }
        Ok(true)
    }

    fn set_format(&mut self, s: &str) -> Result<(), DiskError> {
        match DiskFormat::from_spec(s) {
            Some(f) if self.format.is_none_or(|old| old == f) => {
                self.format = Some(f);
                Ok(())
            }
            Some(_) => Err(self.err(DiskErrorKind::Respecified("format"), Some(s))),
            None => Err(self.err(DiskErrorKind::UnknownFormat, Some(s))),
        }
    }

    fn set_access(&mut self, s: &str) -> Result<(), DiskError> {
        self.readwrite = Some(match s {
            "r" | "ro" => false,
            "rw" | "w" | "" => true,
            _ => return Err(self.err(DiskErrorKind::UnknownAccess, Some(s))),
        });
        Ok(())
    }

    fn finish(self) -> Result<DiskSpec, DiskError> {
        let mut format = self.format.unwrap_or(DiskFormat::Raw);
        let mut readwrite = self.readwrite.unwrap_or(true);
        let removable = self.is_cdrom;
        let target = self.target.clone();
        let empty = target.as_deref().is_none_or(str::is_empty);
        if self.is_cdrom {
            readwrite = false;
            if empty {
                format = DiskFormat::Empty;
            }
        }
        let Some(vdev) = self.vdev.clone() else {
            return Err(self.err(DiskErrorKind::NoVdev, None));
        };
        if empty && !removable {
            return Err(self.err(DiskErrorKind::NoTarget, None));
        }
        if vdev_to_devid(&vdev).is_none() {
            return Err(self.err(DiskErrorKind::InvalidVdev, Some(&vdev)));
        }
        Ok(DiskSpec {
            target,
            format,
            vdev,
            readwrite,
            is_cdrom: self.is_cdrom,
            removable,
            backend: self.backend,
            backendtype: self.backendtype,
            specification: self.specification,
            script: self.script,
            direct_io_safe: self.direct_io_safe,
            discard: self.discard,
            trusted: self.trusted,
            grant_usage: self.grant_usage,
            colo: self.colo,
            colo_host: self.colo_host,
            colo_port: self.colo_port,
            colo_export: self.colo_export,
            active_disk: self.active_disk,
            hidden_disk: self.hidden_disk,
        })
    }
}

/// Stores a string parameter; giving a non-empty one twice is an error
/// (an empty earlier value may be overwritten).
fn save(
    slot: &mut Option<String>,
    what: &'static str,
    value: &str,
    spec: &str,
) -> Result<(), DiskError> {
    if slot.as_deref().is_some_and(|old| !old.is_empty()) {
        return Err(DiskError {
            kind: DiskErrorKind::Respecified(what),
            near: Some(value.to_string()),
            spec: spec.to_string(),
        });
    }
    *slot = Some(value.to_string());
    Ok(())
}

/// C's `atoi`: optional whitespace and sign, then decimal digits; 0 if none.
fn atoi(s: &str) -> i32 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        v = (v * 10 + i64::from(b - b'0')).min(i64::from(u32::MAX));
    }
    let v = if neg { -v } else { v };
    v as i32
}

// ---------------------------------------------------------------------------
// Virtual device numbers (xen-vbd-interface(7))

/// Major number of Xen virtual disks (`xvd*`).
pub const XVD_MAJOR: u32 = 202;
/// Flag marking the extended `xvd` numbering (disks beyond `xvdp` or
/// partitions beyond 15).
pub const VDEV_EXTENDED: u32 = 1 << 28;

/// Decodes `PREFIX` + drive letters (bijective base 26: a..z, aa..) +
/// optional partition number (no leading zeros). Returns (disk, partition).
fn virtdisk_matches(vdev: &str, prefix: &str, max_disk: u32, max_part: u32) -> Option<(u32, u32)> {
    let rest = vdev.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut disk: u64 = 0;
    for (i, c) in rest.bytes().take(letters).enumerate() {
        disk = if i == 0 {
            u64::from(c - b'a')
        } else {
            (disk + 1) * 26 + u64::from(c - b'a')
        };
        if disk > u64::from(max_disk) {
            return None;
        }
    }
    let part = &rest[letters..];
    let part = if part.is_empty() {
        0
    } else {
        if part.starts_with('0') || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 10 {
            return None;
        }
        let p: u64 = part.parse().ok()?;
        if p > u64::from(max_part) {
            return None;
        }
        p as u32
    };
    Some((disk as u32, part))
}

/// The `dNpM` form: disk N, partition M.
fn dp_form(vdev: &str) -> Option<(u32, u32)> {
    let rest = vdev.strip_prefix('d')?;
    let (d, p) = rest.split_once('p')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(d) || !digits(p) {
        return None;
    }
    let (d, p): (u64, u64) = (d.parse().ok()?, p.parse().ok()?);
    (d < (1 << 20) && p < 256).then_some((d as u32, p as u32))
}

/// Parses C `strtoul(s, _, 0)` over the whole string: `0x` hex, leading-zero
/// octal, or decimal.
pub(crate) fn parse_c_ulong(s: &str) -> Option<u64> {
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The xenstore virtual-device number for a guest device name, as libxl
/// computes it, or `None` if the name is not valid:
///
/// * `xvdX[N]` (and `dXpN`): `202<<8 | disk<<4 | part` for disk < 16 and
///   part < 16, otherwise the extended `1<<28 | disk<<8 | part` (up to
///   2^20 disks, 255 partitions);
/// * a plain number (decimal, `0x` hex or `0` octal) up to `i32::MAX`, taken
///   as is;
/// * `hdX[N]` (hda..hdd, partitions up to 63): IDE majors 3 and 22;
/// * `sdX[N]` (sda..sdp, partitions up to 15): SCSI major 8.
///
/// `xvda` is 51712.
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    if let Some((disk, part)) =
        dp_form(vdev).or_else(|| virtdisk_matches(vdev, "xvd", (1 << 20) - 1, 255))
    {
        return Some(if disk <= 15 && part <= 15 {
            (XVD_MAJOR << 8) | (disk << 4) | part
        } else {
            VDEV_EXTENDED | (disk << 8) | part
        });
    }
    if let Some(n) = parse_c_ulong(vdev) {
        return (n <= i32::MAX as u64).then_some(n as u32);
    }
    if let Some((disk, part)) = virtdisk_matches(vdev, "hd", 3, 63) {
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk & 1) << 6) | part);
    }
    if let Some((disk, part)) = virtdisk_matches(vdev, "sd", 15, 15) {
        return Some((8 << 8) | (disk << 4) | part);
    }
    None
}

/// The `xvd` name for a virtual-device number (libxl's reverse mapping,
/// which always answers in `xvd` terms): 51712 → `xvda`, 51729 → `xvdb1`.
pub fn devid_to_vdev(devid: u32) -> String {
    let (minor, nr_parts) = if devid & VDEV_EXTENDED == 0 {
        (devid & 0xff, 16)
    } else {
        (devid & !VDEV_EXTENDED, 256)
    };
    let mut name = String::from("xvd");
    let mut letters = Vec::new();
    let mut n = minor / nr_parts;
    loop {
        letters.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    letters.reverse();
    name.push_str(std::str::from_utf8(&letters).expect("ascii"));
    if minor % nr_parts != 0 {
        name.push_str(&(minor & (nr_parts - 1)).to_string());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DiskSpec {
        DiskSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn e(s: &str) -> DiskError {
        DiskSpec::parse(s).expect_err(s)
    }

    fn basic(target: &str, format: DiskFormat, vdev: &str, rw: bool) -> DiskSpec {
        DiskSpec {
            target: Some(target.into()),
            format,
            vdev: vdev.into(),
            readwrite: rw,
            is_cdrom: false,
            removable: false,
            backend: None,
            backendtype: None,
            specification: None,
            script: None,
            direct_io_safe: false,
            discard: None,
            trusted: None,
            grant_usage: None,
            colo: None,
            colo_host: None,
            colo_port: None,
            colo_export: None,
            active_disk: None,
            hidden_disk: None,
        }
    }

    #[test]
    fn equivalent_forms_from_the_manual() {
        let want = basic("/dev/vg/guest-volume", DiskFormat::Raw, "hda", true);
        for s in [
            "/dev/vg/guest-volume,,hda",
            "/dev/vg/guest-volume,raw,hda,rw",
            "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
            "raw:/dev/vg/guest-volume,hda,w",
        ] {
            assert_eq!(p(s), want, "{s}");
        }
    }

    #[test]
    fn cdrom_forms_from_the_manual() {
        let mut want = basic("/root/image.iso", DiskFormat::Raw, "hdc", false);
        want.is_cdrom = true;
        want.removable = true;
        for s in [
            "/root/image.iso,,hdc,cdrom",
            "/root/image.iso,,hdc,,cdrom",
            "/root/image.iso,raw,hdc,devtype=cdrom",
            "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
            "raw:/root/image.iso,hdc:cdrom,ro",
        ] {
            assert_eq!(p(s), want, "{s}");
        }
    }

    #[test]
    fn empty_cdrom() {
        for s in [",hdc:cdrom,r", "vdev=hdc,cdrom", ",,hdc,cdrom"] {
            let d = p(s);
            assert_eq!(d.target_path(), None, "{s}");
            assert_eq!(d.format, DiskFormat::Empty, "{s}");
            assert!(d.is_cdrom && d.removable && !d.readwrite, "{s}");
            assert_eq!(d.vdev, "hdc");
        }
    }

    #[test]
    fn omissions() {
        assert_eq!(e("/img").kind, DiskErrorKind::NoVdev);
        assert_eq!(e("/img,raw").kind, DiskErrorKind::NoVdev);
        assert_eq!(
            p("/img,qcow2,xvdb"),
            basic("/img", DiskFormat::Qcow2, "xvdb", true)
        );
        assert_eq!(
            p("/img,,xvdb,r"),
            basic("/img", DiskFormat::Raw, "xvdb", false)
        );
        assert_eq!(
            p("/img,vhd,xvdb,"),
            basic("/img", DiskFormat::Vhd, "xvdb", true)
        );
        // leading blanks are skipped, trailing ones kept (as xl does)
        assert_eq!(p(" /img ,qed, xvdb, ro").target.as_deref(), Some("/img "));
        assert_eq!(e("/img, qed ,xvdb").near.as_deref(), Some("qed "));
    }

    #[test]
    fn key_value_forms() {
        let d = p("vdev=xvda, target=/img");
        assert_eq!(d, basic("/img", DiskFormat::Raw, "xvda", true));
        let d = p("format=qcow2,vdev=xvdc,access=ro,target=/srv/a,b=c,d");
        assert_eq!(d.target.as_deref(), Some("/srv/a,b=c,d"));
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert!(!d.readwrite);
        // target= takes the rest, trailing comma stripped
        assert_eq!(p("vdev=xvda,target=/x,").target.as_deref(), Some("/x"));
        // the first positional parameter is the target, so this gives two
        assert_eq!(
            e("xvda,target=/x").kind,
            DiskErrorKind::Respecified("target")
        );
        // positional target left empty, then target= given
        assert_eq!(p(",raw,xvda,rw,target=/y").target.as_deref(), Some("/y"));
        // key=value before positionals
        let d = p("access=r, /img, , xvde");
        assert_eq!(d, basic("/img", DiskFormat::Raw, "xvde", false));
    }

    #[test]
    fn legacy_prefixes() {
        assert_eq!(
            p("file:/img,xvda,w"),
            basic("/img", DiskFormat::Raw, "xvda", true)
        );
        assert_eq!(
            p("phy:/dev/sdb,hda,r"),
            basic("/dev/sdb", DiskFormat::Raw, "hda", false)
        );
        assert_eq!(
            p("tap:aio:/img,xvda,w"),
            basic("/img", DiskFormat::Raw, "xvda", true)
        );
        assert_eq!(
            p("tap:qcow2:/img.qcow2,xvda,w"),
            basic("/img.qcow2", DiskFormat::Qcow2, "xvda", true)
        );
        assert_eq!(p("qcow:/a,xvda").format, DiskFormat::Qcow);
        assert_eq!(p("vhd:/a,xvda").format, DiskFormat::Vhd);
        let d = p("iscsi:iqn.2001-04.com.example:disk,xvda,w");
        assert_eq!(d.script.as_deref(), Some("block-iscsi"));
        assert_eq!(d.target.as_deref(), Some("iqn.2001-04.com.example:disk"));
        assert_eq!(p("drbd:res0,xvda,w").script.as_deref(), Some("block-drbd"));
        assert_eq!(p("enbd:x,xvda").script.as_deref(), Some("block-enbd"));
        assert_eq!(p("nbd:x,xvda").script.as_deref(), Some("block-nbd"));
        for pre in ["tapdisk:", "tap2:", "ioemu:", "aio:"] {
            assert_eq!(p(&format!("{pre}/i,xvda")).target.as_deref(), Some("/i"));
        }
        let err = e("foo:/img,xvda,w");
        assert_eq!(err.kind, DiskErrorKind::UnknownPrefix);
        assert_eq!(err.near.as_deref(), Some("foo:"));
    }

    #[test]
    fn flags_and_options() {
        let d = p("/img,raw,xvda,rw,discard,direct-io-safe,untrusted,backend=dd,backendtype=qdisk,script=block-x,specification=virtio,grant_usage=1");
        assert_eq!(d.discard, Some(true));
        assert!(d.direct_io_safe);
        assert_eq!(d.trusted, Some(false));
        assert_eq!(d.backend.as_deref(), Some("dd"));
        assert_eq!(d.backendtype, Some(DiskBackendType::Qdisk));
        assert_eq!(d.script.as_deref(), Some("block-x"));
        assert_eq!(d.specification, Some(DiskSpecification::Virtio));
        assert_eq!(d.grant_usage, Some(true));
        assert_eq!(p("/i,,xvda,no-discard,trusted").discard, Some(false));
        assert_eq!(p("/i,,xvda,no-discard,trusted").trusted, Some(true));
        for b in ["phy", "tap", "qdisk", "standalone"] {
            assert!(p(&format!("/i,,xvda,backendtype={b}"))
                .backendtype
                .is_some());
        }
        let d = p("/i,,xvda,devtype=disk");
        assert!(!d.is_cdrom);
        let d = p(
            "/i,,xvda,colo,colo-host=h,colo-port=9000,colo-export=e,active-disk=a,hidden-disk=h2",
        );
        assert_eq!(d.colo, Some(true));
        assert_eq!(d.colo_port, Some(9000));
        assert_eq!(d.hidden_disk.as_deref(), Some("h2"));
        assert_eq!(p("/i,,xvda,no-colo").colo, Some(false));
        // a word that merely starts like a flag is positional (here: access)
        let err = e("/i,,xvda,discardx");
        assert_eq!(err.kind, DiskErrorKind::UnknownAccess);
        assert_eq!(err.near.as_deref(), Some("discardx"));
    }

    #[test]
    fn errors() {
        let err = e("/img,qcow3,xvda");
        assert_eq!(err.kind, DiskErrorKind::UnknownFormat);
        assert_eq!(
            err.to_string(),
            "unknown value for format: near `qcow3' in `/img,qcow3,xvda'"
        );
        // the legacy form without a prefix puts the vdev in the format slot
        assert_eq!(e("/img,xvda,w").kind, DiskErrorKind::UnknownFormat);
        assert_eq!(e("/img,raw,xvda,rx").kind, DiskErrorKind::UnknownAccess);
        assert_eq!(e("access=x,/img,,xvda").kind, DiskErrorKind::UnknownAccess);
        assert_eq!(
            e("/img,,xvda,backendtype=nope").kind,
            DiskErrorKind::UnknownBackendType
        );
        assert_eq!(
            e("/img,,xvda,specification=x").kind,
            DiskErrorKind::UnknownSpecification
        );
        assert_eq!(
            e("/img,,xvda,devtype=floppy").kind,
            DiskErrorKind::UnknownDevtype
        );
        assert_eq!(
            e(",hdc:floppy,r").kind,
            DiskErrorKind::UnknownDeprecatedType
        );
        let err = e("/img,,xvda,foo=bar");
        assert_eq!(err.kind, DiskErrorKind::UnknownParameter);
        assert_eq!(err.near.as_deref(), Some("foo=bar"));
        assert_eq!(
            e("/img,,xvda,rw,extra").kind,
            DiskErrorKind::TooManyPositional
        );
        assert_eq!(
            e("/img,raw,xvda,format=qcow2").kind,
            DiskErrorKind::Respecified("format")
        );
        assert_eq!(
            e("/img,,xvda,vdev=xvdb").kind,
            DiskErrorKind::Respecified("vdev")
        );
        assert_eq!(
            e("/img,,xvda,target=/other").kind,
            DiskErrorKind::Respecified("target")
        );
        assert_eq!(e("/a/b=c,,xvda").kind, DiskErrorKind::BadSyntax);
        assert_eq!(e("/a/b=c,,xvda").near.as_deref(), Some("=c,,xvda"));
        assert_eq!(e("vdev=xvda").kind, DiskErrorKind::NoTarget);
        assert_eq!(e(",raw,xvda").kind, DiskErrorKind::NoTarget);
        assert_eq!(e("").kind, DiskErrorKind::NoVdev);
        assert_eq!(e("/img,,xvd").kind, DiskErrorKind::InvalidVdev);
        assert_eq!(e("/img,,hde").kind, DiskErrorKind::InvalidVdev);
        assert_eq!(e("/img,,xvda0").kind, DiskErrorKind::InvalidVdev);
        assert_eq!(e("/img,,vda").kind, DiskErrorKind::InvalidVdev);
        assert_eq!(e("/img,,xvda,colo-port=x").kind, DiskErrorKind::BadColoPort);
        assert_eq!(
            e("/img,,xvd").to_string(),
            "invalid or unsupported virtual disk identifier: near `xvd' in `/img,,xvd'"
        );
        assert_eq!(e("/img").to_string(), "no vdev specified in `/img'");
    }

    #[test]
    fn components() {
        let d = DiskSpec::parse_components(&["/img", "raw", "xvdb", "ro"]).unwrap();
        assert_eq!(d, basic("/img", DiskFormat::Raw, "xvdb", false));
        let d = DiskSpec::parse_components(&["vdev=xvdc", "target=/a,b"]).unwrap();
        assert_eq!(d.target.as_deref(), Some("/a,b"));
    }

    #[test]
    fn canonical_round_trip() {
        for s in [
            "/img,qcow2,xvdb,ro",
            "/root/image.iso,,hdc,cdrom",
            ",hdc:cdrom,r",
            "phy:/dev/vg/x,sda1,w",
            "/i,,xvda,discard,untrusted,backendtype=phy,backend=d1,script=s,direct-io-safe,grant_usage=0,specification=xen",
            "/i,,xvda,colo,colo-host=h,colo-port=9,colo-export=e,active-disk=a,hidden-disk=b",
            "format=raw,vdev=xvda,target=/with,comma",
        ] {
            let d = p(s);
            assert_eq!(p(&d.to_spec_string()), d, "{s} -> {d}");
        }
        assert_eq!(
            p("/img,,xvda").to_string(),
            "format=raw, vdev=xvda, access=rw, target=/img"
        );
    }

    #[test]
    fn json_round_trip() {
        let d = p("/img,qcow2,xvdb,ro,untrusted");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(
            j,
            r#"{"target":"/img","format":"qcow2","vdev":"xvdb","readwrite":false,"trusted":false}"#
        );
        assert_eq!(serde_json::from_str::<DiskSpec>(&j).unwrap(), d);
    }

    #[test]
    fn vdev_numbers() {
        assert_eq!(vdev_to_devid("xvda"), Some(51712));
        assert_eq!(vdev_to_devid("xvda1"), Some(51713));
        assert_eq!(vdev_to_devid("xvdb"), Some(51728));
        assert_eq!(vdev_to_devid("xvdp15"), Some((202 << 8) | (15 << 4) | 15));
        // beyond 16 disks or 15 partitions: extended numbering
        assert_eq!(vdev_to_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_to_devid("xvda16"), Some((1 << 28) | 16));
        assert_eq!(vdev_to_devid("xvdz"), Some((1 << 28) | (25 << 8)));
        assert_eq!(vdev_to_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(vdev_to_devid("xvdab255"), Some((1 << 28) | (27 << 8) | 255));
        assert_eq!(vdev_to_devid("xvda256"), None);
        assert_eq!(vdev_to_devid("d0p0"), Some(51712));
        assert_eq!(vdev_to_devid("d20p3"), Some((1 << 28) | (20 << 8) | 3));
        assert_eq!(vdev_to_devid("d0p256"), None);
        // IDE: hda/hdb on major 3, hdc/hdd on 22
        assert_eq!(vdev_to_devid("hda"), Some(768));
        assert_eq!(vdev_to_devid("hdb"), Some(768 + 64));
        assert_eq!(vdev_to_devid("hdc"), Some(22 << 8));
        assert_eq!(vdev_to_devid("hdd2"), Some((22 << 8) | 64 | 2));
        assert_eq!(vdev_to_devid("hda63"), Some(768 + 63));
        assert_eq!(vdev_to_devid("hda64"), None);
        assert_eq!(vdev_to_devid("hde"), None);
        // SCSI
        assert_eq!(vdev_to_devid("sda"), Some(2048));
        assert_eq!(vdev_to_devid("sdb3"), Some(2048 + 16 + 3));
        assert_eq!(vdev_to_devid("sdp15"), Some(2048 + 255));
        assert_eq!(vdev_to_devid("sdq"), None);
        assert_eq!(vdev_to_devid("sda16"), None);
        // plain numbers
        assert_eq!(vdev_to_devid("51712"), Some(51712));
        assert_eq!(vdev_to_devid("0xca00"), Some(51712));
        assert_eq!(vdev_to_devid("0145000"), Some(51712));
        assert_eq!(vdev_to_devid("2147483648"), None);
        // malformed
        for bad in [
            "", "xvd", "xvd1", "xvdA", "xvda01", "xvda-1", "hd", "vda", "d1", "dp1",
        ] {
            assert_eq!(vdev_to_devid(bad), None, "{bad}");
        }
    }

    #[test]
    fn vdev_names() {
        assert_eq!(devid_to_vdev(51712), "xvda");
        assert_eq!(devid_to_vdev(51729), "xvdb1");
        assert_eq!(devid_to_vdev((1 << 28) | (26 << 8)), "xvdaa");
        assert_eq!(devid_to_vdev((1 << 28) | (27 << 8) | 255), "xvdab255");
        for name in ["xvda", "xvdp15", "xvdq", "xvdzz7", "xvda200"] {
            assert_eq!(devid_to_vdev(vdev_to_devid(name).unwrap()), name);
        }
    }
}
