//! The domain configuration as kxen uses it: [`DomainConfig`] and its
//! value types (guest type, lifecycle actions, UUID), with xl's defaults.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Serialize};

use crate::{
    disk::DiskSpec,
    vif::{VifError, VifSpec},
};

/// Guest type (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Pv,
    Pvh,
    Hvm,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
        }
    }
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when the domain shuts down for a given reason (`on_poweroff`,
/// `on_reboot`, `on_watchdog`, `on_crash`, `on_soft_reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Destroy,
    Restart,
    RenameRestart,
    Preserve,
    CoredumpDestroy,
    CoredumpRestart,
    SoftReset,
}

impl Action {
    /// The name in xl.cfg.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        }
    }

    /// The name in libxl's JSON (`libxl_action_on_shutdown`).
    pub fn libxl_name(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "restart_rename",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump_destroy",
            Action::CoredumpRestart => "coredump_restart",
            Action::SoftReset => "soft_reset",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
            .map_err(|e| e.to_string())
    }
}

/// A domain UUID; displays as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID (Domain-0's).
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A random (version 4) UUID.
    pub fn random() -> Uuid {
        let mut b = random_bytes::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Text that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse UUID: {0}")]
pub struct BadUuid(pub String);

impl FromStr for Uuid {
    type Err = BadUuid;
    fn from_str(s: &str) -> Result<Self, BadUuid> {
        let bad = || BadUuid(s.to_string());
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return Err(bad());
                }
                i += 1;
                continue;
            }
            let hex = std::str::from_utf8(&b[i..i + 2]).map_err(|_| bad())?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            n += 1;
            i += 2;
        }
        Ok(Uuid(out))
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `N` random bytes from the kernel, or (should that fail) from the hasher
/// keys std seeds from the OS.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut out = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_ok()
    {
        return out;
    }
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    out
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A domain as an xl.cfg file describes it, with xl's parse-time defaults
/// applied. Sizes are in MiB, as in the file.
///
/// Creation-time defaults (a UUID, MAC addresses, bridges, ...) are applied
/// by [`DomainConfig::fill_defaults`], which kxend calls when it builds the
/// domain, as libxl does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    pub name: String,
    /// Default `pv` (xl's default on x86); `builder="generic"`/`"hvm"` is
    /// the deprecated spelling.
    #[serde(rename = "type")]
    pub domain_type: DomainType,
    /// `None` until [`DomainConfig::fill_defaults`] generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Initial memory in MiB: `memory`, else `maxmem`, else 32 (libxl).
    pub memory: u64,
    /// Maximum memory in MiB: `maxmem`, else `memory`.
    pub maxmem: u64,
    /// vCPUs online at start: `vcpus`, at least 1.
    pub vcpus: u32,
    /// vCPUs the guest may bring up: `maxvcpus`, else `vcpus`.
    pub maxvcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    /// `cmdline`, or `root=ROOT EXTRA` built from `root` and `extra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootloader_args: Vec<String>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_watchdog: Action,
    pub on_crash: Action,
    pub on_soft_reset: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vifs: Vec<VifSpec>,
    /// `serial`: one device or a list (`pty`, `file:PATH`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<String>,
    /// Scheduler weight (`cpu_weight`) and cap in percent of a CPU (`cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<u32>,
    /// Hard affinity of the vCPUs (`cpus`), in xl's CPU-list syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<VcpuAffinity>,
    /// Soft affinity (`cpus_soft`): kept and shown, not enforced (Linux
    /// has no soft affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_soft: Option<VcpuAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grant_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_maptrack_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_channels: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub nomigrate: bool,
    /// HVM: expose the Xen platform PCI device (and Xen's CPUID leaves) so
    /// a PVHVM guest can switch to PV drivers. Off unless asked for: a
    /// stock kernel that sees Xen makes hypercalls kxen can only take
    /// through its own transport.
    #[serde(default, skip_serializing_if = "is_false")]
    pub xen_platform_pci: bool,
}

/// `cpus`/`cpus_soft` of xl.cfg: one CPU list for every vCPU (a string),
/// or one per vCPU (a list; vCPUs beyond its end keep the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VcpuAffinity {
    Every(String),
    PerVcpu(Vec<String>),
}

impl VcpuAffinity {
    /// The CPU list for vCPU `vcpu`, if the setting names one.
    pub fn for_vcpu(&self, vcpu: u32) -> Option<&str> {
        match self {
            VcpuAffinity::Every(list) => Some(list),
            VcpuAffinity::PerVcpu(lists) => lists.get(vcpu as usize).map(String::as_str),
        }
    }

    /// Every CPU list it holds.
    pub fn lists(&self) -> Vec<&str> {
        match self {
            VcpuAffinity::Every(list) => vec![list.as_str()],
            VcpuAffinity::PerVcpu(lists) => lists.iter().map(String::as_str).collect(),
        }
    }
}

/// libxl's default memory when the file gives neither `memory` nor
/// `maxmem`, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 32;

impl DomainConfig {
    /// A configuration with xl's defaults and nothing else.
    pub fn new(name: impl Into<String>, domain_type: DomainType) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            domain_type,
            uuid: None,
            memory: DEFAULT_MEMORY_MIB,
            maxmem: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            maxvcpus: 1,
            kernel: None,
            ramdisk: None,
            cmdline: None,
            bootloader: None,
            bootloader_args: Vec::new(),
            on_poweroff: Action::Destroy,
            on_reboot: Action::Restart,
            on_watchdog: Action::Destroy,
            on_crash: Action::Destroy,
            on_soft_reset: Action::SoftReset,
            disks: Vec::new(),
            vifs: Vec::new(),
            serial: Vec::new(),
            cpu_weight: None,
            cap: None,
            cpus: None,
            cpus_soft: None,
            max_grant_frames: None,
            max_maptrack_frames: None,
            max_event_channels: None,
            nomigrate: false,
            xen_platform_pci: false,
        }
    }

    /// Initial memory in KiB.
    pub fn memory_kib(&self) -> u64 {
        self.memory * 1024
    }

    /// Maximum memory in KiB.
    pub fn maxmem_kib(&self) -> u64 {
        self.maxmem * 1024
    }

    /// Applies the defaults libxl applies when it creates the domain: a
    /// random UUID if none was given, and each vif's MAC, bridge, script,
    /// MTU, model and type (see [`VifSpec::fill_defaults`]).
    pub fn fill_defaults(&mut self) -> Result<(), VifError> {
        self.uuid.get_or_insert_with(Uuid::random);
        for vif in &mut self.vifs {
            vif.fill_defaults(self.domain_type)?;
        }
        Ok(())
    }
}
