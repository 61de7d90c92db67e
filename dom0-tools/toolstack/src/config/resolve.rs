//! From serde's raw view of the keys to a [`DomainConfig`]: xl's
//! abbreviations and defaults, cross-key checks, disk and vif specs, and
//! the warnings for keys kxen does not read.

use std::cell::RefCell;

use serde::Deserialize;

use crate::{disk::DiskSpec, vif::VifSpec};

use super::de::{SettingsDe, StringList};
use super::error::{ConfigError, ConfigWarning, WarningKind};
use super::model::{Action, DomainConfig, DomainType, Uuid, VcpuAffinity, DEFAULT_MEMORY_MIB};
use super::syntax::{CfgFile, Value};

/// The keys of xl.cfg as serde sees them. Everything is optional here;
/// [`Resolver::resolve`] applies the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    name: Option<String>,
    #[serde(rename = "type")]
    domain_type: Option<String>,
    builder: Option<String>,
    uuid: Option<String>,
    memory: Option<u64>,
    maxmem: Option<u64>,
    vcpus: Option<u32>,
    maxvcpus: Option<u32>,
    kernel: Option<String>,
    ramdisk: Option<String>,
    cmdline: Option<String>,
    root: Option<String>,
    extra: Option<String>,
    bootloader: Option<String>,
    bootloader_args: Option<StringList>,
    on_poweroff: Option<Action>,
    on_reboot: Option<Action>,
    on_watchdog: Option<Action>,
    on_crash: Option<Action>,
    on_soft_reset: Option<Action>,
    disk: Option<Vec<String>>,
    vif: Option<Vec<String>>,
    serial: Option<StringList>,
    cpu_weight: Option<u32>,
    cap: Option<u32>,
    cpus: Option<VcpuAffinity>,
    cpus_soft: Option<VcpuAffinity>,
    max_grant_frames: Option<u32>,
    max_maptrack_frames: Option<u32>,
    max_event_channels: Option<u32>,
    nomigrate: Option<bool>,
    xen_platform_pci: Option<bool>,
}

/// Keys xl reads that kxen does not implement (warned about as
/// unsupported rather than unknown).
pub const UNSUPPORTED_XL_KEYS: &[&str] = &[
    "acpi",
    "acpi_firmware",
    "acpi_laptop_slate",
    "acpi_s3",
    "acpi_s4",
    "altp2m",
    "altp2m_count",
    "altp2mhvm",
    "apic",
    "arm_sci",
    "bios",
    "bios_path_override",
    "boot",
    "bootloader_restrict",
    "bootloader_user",
    "channel",
    "cpuid",
    "device_model",
    "device_model_args",
    "device_model_args_hvm",
    "device_model_args_pv",
    "device_model_override",
    "device_model_stubdomain_override",
    "device_model_stubdomain_seclabel",
    "device_model_user",
    "device_model_version",
    "device_tree",
    "display",
    "dm_restrict",
    "driver_domain",
    "dtdev",
    "e820_host",
    "extratime",
    "firmware",
    "firmware_override",
    "gfx_passthru",
    "gic_version",
    "hap",
    "hdtype",
    "hpet",
    "hvm_pirq",
    "init_seclabel",
    "iomem",
    "ioports",
    "irqs",
    "keymap",
    "latency",
    "llc_colors",
    "localtime",
    "max_grant_version",
    "mca_caps",
    "mmio_hole",
    "ms_vm_genid",
    "msr_relaxed",
    "nestedhvm",
    "nographic",
    "nr_spis",
    "nx",
    "oos",
    "opengl",
    "p9",
    "pae",
    "passthrough",
    "pci",
    "pci_msitranslate",
    "pci_permissive",
    "pci_power_mgmt",
    "pci_seize",
    "period",
    "pool",
    "pvcalls",
    "pvshim",
    "pvshim_cmdline",
    "pvshim_extra",
    "pvshim_path",
    "rdm",
    "rdm_mem_boundary",
    "rtc_timeoffset",
    "sdl",
    "seclabel",
    "shadow_memory",
    "slice",
    "smbios",
    "smbios_firmware",
    "soundhw",
    "spice",
    "spice_clipboard_sharing",
    "spice_image_compression",
    "spice_streaming_video",
    "spiceagent_mouse",
    "spicedisable_ticketing",
    "spicehost",
    "spicepasswd",
    "spiceport",
    "spicetls_port",
    "spiceusbredirection",
    "spicevdagent",
    "stdvga",
    "stubdomain_cmdline",
    "stubdomain_kernel",
    "stubdomain_memory",
    "stubdomain_ramdisk",
    "sve",
    "tee",
    "timer_mode",
    "trap_unmapped_accesses",
    "tsc_mode",
    "usb",
    "usbctrl",
    "usbdev",
    "usbdevice",
    "usbversion",
    "vendor_device",
    "vfb",
    "vga",
    "videoram",
    "vif2",
    "viridian",
    "virtio",
    "vkb",
    "vkb_device",
    "vmtrace_buf_kb",
    "vnc",
    "vncdisplay",
    "vnclisten",
    "vncpasswd",
    "vncunused",
    "vncviewer",
    "vnuma",
    "vpmu",
    "vpt_align",
    "vsnd",
    "vtpm",
    "vuart",
    "xauthority",
    "xen_platform_pci_bar_uc",
    "xend_suspend_evtchn_compat",
    "xenstore_feature_mask",
    "xenstore_quota",
];

/// xl's prefix match for `type=` and `builder=`: the value may abbreviate
/// a name (`p` is `pv`, `h` is `hvm`); the first name it abbreviates wins.
fn abbreviates<T: Copy>(value: &str, names: &[(&str, T)]) -> Option<T> {
    if value.is_empty() {
        return None;
    }
    names
        .iter()
        .find(|(name, _)| name.starts_with(value))
        .map(|&(_, t)| t)
}

struct Resolver<'a> {
    cfg: &'a CfgFile,
    warnings: Vec<ConfigWarning>,
}

impl Resolver<'_> {
    fn line(&self, key: &str) -> u32 {
        self.cfg.get(key).map_or(0, |s| s.line)
    }

    fn value_err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            file: self.cfg.source.clone(),
            line: self.line(key),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn missing(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            file: self.cfg.source.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn note(&mut self, key: &str, line: u32, msg: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.cfg.source.clone(),
            line,
            key: key.to_string(),
            kind: WarningKind::Note(msg.into()),
        });
    }

    /// Line of item `i` of list-valued `key`.
    fn item_line(&self, key: &str, i: usize) -> u32 {
        self.cfg
            .get(key)
            .and_then(|s| s.value.as_list())
            .and_then(|items| items.get(i))
            .map_or(self.line(key), Value::line)
    }

    fn resolve(&mut self, raw: RawConfig) -> Result<DomainConfig, ConfigError> {
        let types = [
            ("hvm", DomainType::Hvm),
            ("pv", DomainType::Pv),
            ("pvh", DomainType::Pvh),
        ];
        let mut domain_type =
            match &raw.domain_type {
                Some(t) => Some(abbreviates(t, &types).ok_or_else(|| {
                    self.value_err("type", format!("invalid domain type \"{t}\""))
                })?),
                None => None,
            };
        if let Some(b) = &raw.builder {
            let builders = [("hvm", DomainType::Hvm), ("generic", DomainType::Pv)];
            let t = abbreviates(b, &builders)
                .ok_or_else(|| self.value_err("builder", format!("invalid domain type \"{b}\"")))?;
            if domain_type.is_some_and(|d| d != t) {
                return Err(self.value_err(
                    "builder",
                    "contradicting \"builder\" and \"type\" options specified",
                ));
            }
            domain_type = Some(t);
        }
        let domain_type = domain_type.unwrap_or(DomainType::Pv);

        let name = raw
            .name
            .ok_or_else(|| self.missing("name", "domain name must be specified"))?;
        if name.is_empty() {
            return Err(self.value_err("name", "domain name must not be empty"));
        }

        let uuid = match &raw.uuid {
            Some(u) => Some(
                u.parse::<Uuid>()
                    .map_err(|e| self.value_err("uuid", e.to_string()))?,
            ),
            None => None,
        };

        let (memory, maxmem) = match (raw.memory, raw.maxmem) {
            (Some(m), Some(x)) => (m, x),
            (Some(m), None) => (m, m),
            (None, Some(x)) => (x, x),
            (None, None) => (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB),
        };
        if maxmem < memory {
            return Err(self.value_err(
                "maxmem",
                format!("maxmem ({maxmem}) is less than memory ({memory})"),
            ));
        }
        if memory.checked_mul(1024 * 1024).is_none() || maxmem.checked_mul(1024 * 1024).is_none() {
            let key = if raw.maxmem.is_some() {
                "maxmem"
            } else {
                "memory"
            };
            return Err(self.value_err(key, "value out of range"));
        }

        let vcpus = raw.vcpus.unwrap_or(0).max(1);
        let maxvcpus = match raw.maxvcpus {
            Some(m) if m != 0 => m,
            _ => vcpus,
        };
        if maxvcpus < vcpus {
            return Err(self.value_err("maxvcpus", "maxvcpus < vcpus"));
        }

        let cmdline = match (raw.cmdline, raw.root, raw.extra) {
            (Some(c), root, extra) => {
                if root.is_some() || extra.is_some() {
                    let line = self.line("cmdline");
                    self.note(
                        "cmdline",
                        line,
                        "ignoring root= and extra= in favour of cmdline=",
                    );
                }
                Some(c)
            }
            (None, Some(r), Some(e)) => Some(format!("root={r} {e}")),
            (None, Some(r), None) => Some(format!("root={r}")),
            (None, None, Some(e)) => Some(e),
            (None, None, None) => None,
        };

        if domain_type != DomainType::Hvm && raw.kernel.is_none() && raw.bootloader.is_none() {
            return Err(self.missing("kernel", "neither kernel nor bootloader specified"));
        }

        let mut disks = Vec::new();
        for (i, spec) in raw.disk.unwrap_or_default().iter().enumerate() {
            let line = self.item_line("disk", i);
            let disk = DiskSpec::parse(spec).map_err(|error| ConfigError::Disk {
                file: self.cfg.source.clone(),
                line,
                error,
            })?;
            if let Some(prev) = disks.iter().find(|d: &&DiskSpec| d.devid() == disk.devid()) {
                return Err(ConfigError::Value {
                    file: self.cfg.source.clone(),
                    line,
                    key: "disk".into(),
                    msg: format!(
                        "virtual device `{}' is the same device as `{}'",
                        disk.vdev, prev.vdev
                    ),
                });
            }
            disks.push(disk);
        }

        let mut vifs: Vec<VifSpec> = Vec::new();
        for (i, spec) in raw.vif.unwrap_or_default().iter().enumerate() {
            let line = self.item_line("vif", i);
            let (mut vif, notes) =
                VifSpec::parse_with_warnings(spec).map_err(|error| ConfigError::Vif {
                    file: self.cfg.source.clone(),
                    line,
                    error,
                })?;
            for n in notes {
                self.note("vif", line, n);
            }
            let devid = *vif.devid.get_or_insert(i as u32);
            if vifs.iter().any(|v| v.devid == Some(devid)) {
                return Err(ConfigError::Value {
                    file: self.cfg.source.clone(),
                    line,
                    key: "vif".into(),
                    msg: format!("devid {devid} used twice"),
                });
            }
            vifs.push(vif);
        }

        // xl refuses a CPU list it cannot read before anything starts
        // (parse_vcpu_affinity exits); the host's CPUs are counted when
        // kxend applies it, so any count serves to check the syntax here.
        for (key, affinity) in [("cpus", &raw.cpus), ("cpus_soft", &raw.cpus_soft)] {
            for list in affinity.iter().flat_map(VcpuAffinity::lists) {
                crate::xl::parse_cpurange(list, 1).map_err(|msg| self.value_err(key, msg))?;
            }
        }

        let mut config = DomainConfig::new(name, domain_type);
        config.uuid = uuid;
        config.memory = memory;
        config.maxmem = maxmem;
        config.vcpus = vcpus;
        config.maxvcpus = maxvcpus;
        config.kernel = raw.kernel;
        config.ramdisk = raw.ramdisk;
        config.cmdline = cmdline;
        config.bootloader = raw.bootloader;
        config.bootloader_args = raw.bootloader_args.unwrap_or_default().0;
        config.on_poweroff = raw.on_poweroff.unwrap_or(Action::Destroy);
        config.on_reboot = raw.on_reboot.unwrap_or(Action::Restart);
        config.on_watchdog = raw.on_watchdog.unwrap_or(Action::Destroy);
        config.on_crash = raw.on_crash.unwrap_or(Action::Destroy);
        config.on_soft_reset = raw.on_soft_reset.unwrap_or(Action::SoftReset);
        config.disks = disks;
        config.vifs = vifs;
        config.serial = raw.serial.unwrap_or_default().0;
        config.cpu_weight = raw.cpu_weight;
        config.cap = raw.cap;
        config.cpus = raw.cpus;
        config.cpus_soft = raw.cpus_soft;
        config.max_grant_frames = raw.max_grant_frames;
        config.max_maptrack_frames = raw.max_maptrack_frames;
        config.max_event_channels = raw.max_event_channels;
        config.nomigrate = raw.nomigrate.unwrap_or(false);
        config.xen_platform_pci =
            domain_type == DomainType::Hvm && raw.xen_platform_pci.unwrap_or(false);
        Ok(config)
    }
}

impl DomainConfig {
    /// Builds a domain configuration from a parsed file.
    pub fn from_cfg(cfg: &CfgFile) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
        let ignored = RefCell::new(Vec::new());
        let raw = RawConfig::deserialize(SettingsDe {
            settings: cfg.effective(),
            ignored: &ignored,
        })
        .map_err(|e| ConfigError::Value {
            file: cfg.source.clone(),
            line: e.line.unwrap_or(0),
            key: e.key.unwrap_or_default(),
            msg: e.msg,
        })?;
        let mut resolver = Resolver {
            cfg,
            warnings: Vec::new(),
        };
        for s in ignored.into_inner() {
            let kind = if UNSUPPORTED_XL_KEYS.contains(&s.key.as_str()) {
                WarningKind::Unsupported
            } else {
                WarningKind::UnknownKey
            };
            resolver.warnings.push(ConfigWarning {
                file: cfg.source.clone(),
                line: s.line,
                key: s.key.clone(),
                kind,
            });
        }
        let config = resolver.resolve(raw)?;
        let mut warnings = resolver.warnings;
        warnings.sort_by_key(|w| w.line);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok((config, warnings))
    }
}
