//! kxend's state and its request server.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kxen_toolstack::config::{Action, DomainConfig, DomainType};
use kxen_toolstack::protocol::{DeviceEntry, DomainEntry, Reply, Request};
use kxen_toolstack::xl::{
    self, CreditParams, DomainInfo, ShutdownReason, VcpuInfo, VcpuSelector, VirtCaps, XlInfo,
};
use tracing::{error, info, warn};

mod clients;
mod info;
mod lifecycle;
mod migrate;
mod precopy;
mod saverestore;
mod scheduling;
mod suspend;

// The parts share each other's helpers through the parent.
use scheduling::*;

pub use clients::claim_socket;
pub use info::host_info;

use crate::affinity;
use crate::devices::{BackendFactory, DeviceError, DeviceSpec, DomainDevices};
use crate::domain::{AttachError, Domain, DomainRecord, Tuning};
use crate::preflight::{self, CreateError};
use crate::reactor;
use crate::store::StoreService;
use kxen_virtio_backend::VirtioDomain;
use kxen_vmm_api::launch::{GuestType, SerialMode, VirtioKind};
use kxen_vmm_api::LaunchArgs;

/// How long a new kxen-vmm may take to open its control socket. It builds
/// the domain first: a stock PV kernel is decompressed and its page
/// tables written, which took over 10 s for a debug build on a loaded
/// 2-core host. A VMM that dies meanwhile is noticed at once; this only
/// bounds one that hangs.
const ATTACH_LIMIT: Duration = Duration::from_secs(60);
/// How long a VMM that dropped its control socket during start-up gets to
/// exit by itself, so that its own reason can be reported.
const VMM_EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long kxend lets xenstore changes gather before it saves them.
const SAVE_COALESCE: Duration = Duration::from_millis(200);
/// Longest request line from a client.
const MAX_REQUEST: usize = 1 << 20;
/// How long a kxl client may take to finish a request line or to take
/// its reply before its worker gives up on it.
const CLIENT_IO_LIMIT: Duration = Duration::from_secs(10);

/// A domain that stopped and was kept (`preserve`): listed, not running.
#[derive(Debug, Clone)]
struct Preserved {
    record: DomainRecord,
    reason: u32,
}

/// Everything needed to start a kxen-vmm, taken from the parsed xl.cfg.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub name: String,
    pub kernel: String,
    pub ramdisk: Option<String>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    /// How kxen-vmm boots the kernel: PVH (its PHYS32_ENTRY), HVM (Linux
    /// boot protocol, emulated devices) or classic PV (the PV domain
    /// builder, the kernel deprivileged).
    pub guest_type: GuestType,
    /// HVM: the Xen platform PCI device and Xen CPUID leaves.
    pub xen_platform_pci: bool,
    /// HVM: virtio-mmio slots (`--virtio blk|net`): the config's disks,
    /// then its vifs, in order.
    pub virtio: Vec<VirtioKind>,
    /// `max_event_channels` (xl's default 1023 when the config has none).
    pub max_event_channels: u32,
}

impl LaunchSpec {
    pub fn from_config(config: &DomainConfig) -> Result<Self, String> {
        let kernel = config
            .kernel
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(match config.domain_type {
                DomainType::Hvm => {
                    "the config has no kernel (kxen boots HVM guests by direct kernel boot: set kernel=)"
                }
                DomainType::Pvh | DomainType::Pv => {
                    "the config has no kernel (set kernel=, or bootloader = \"pygrub\" to boot the one on its disk)"
                }
            })?;
        let guest_type = match config.domain_type {
            DomainType::Hvm => GuestType::Hvm,
            DomainType::Pvh => GuestType::Pvh,
            DomainType::Pv => GuestType::Pv,
        };
        let virtio: Vec<VirtioKind> = if guest_type == GuestType::Hvm {
            let disks = config.disks.iter().map(|_| VirtioKind::Blk);
            disks
                .chain(config.vifs.iter().map(|_| VirtioKind::Net))
                .collect()
        } else {
            Vec::new()
        };
        if virtio.len() > kxen_virtio_backend::attach::MAX_SLOTS as usize {
            return Err(format!(
                "an HVM domain has at most {} disks and vifs together",
                kxen_virtio_backend::attach::MAX_SLOTS
            ));
        }
        Ok(LaunchSpec {
            name: config.name.clone(),
            kernel,
            ramdisk: config.ramdisk.clone(),
            cmdline: config.cmdline.clone().unwrap_or_default(),
            memory_mib: config.memory,
            maxmem_mib: config.maxmem.max(config.memory),
            vcpus: config.vcpus.max(1),
            guest_type,
            xen_platform_pci: config.xen_platform_pci,
            virtio,
            max_event_channels: config
                .max_event_channels
                .unwrap_or(kxen_vmm_api::launch::DEFAULT_MAX_EVENT_CHANNELS),
        })
    }

    /// An HVM domain: its disks and vifs are virtio devices, its main
    /// console the serial line.
    pub fn is_hvm(&self) -> bool {
        self.guest_type == GuestType::Hvm
    }

    /// kxen-vmm's arguments for domain `domid`: paused, its console,
    /// xenstore and serial line served by kxend through the control socket.
    pub fn vmm_args(&self, domid: u32, control: &Path, exit_file: &Path) -> LaunchArgs {
        let mut args = LaunchArgs::new(&self.kernel);
        args.ramdisk = self.ramdisk.as_ref().map(PathBuf::from);
        args.cmdline = self.cmdline.clone();
        args.memory = self.memory_mib;
        args.maxmem = Some(self.maxmem_mib);
        args.vcpus = self.vcpus;
        args.max_event_channels = self.max_event_channels;
        // allocate_domid keeps domids below DOMID_FIRST_RESERVED (0x7ff0).
        args.domid = u16::try_from(domid).unwrap_or(u16::MAX);
        args.name = self.name.clone();
        args.paused = true;
        args.control_socket = Some(control.to_path_buf());
        args.exit_file = Some(exit_file.to_path_buf());
        args.guest_type = self.guest_type;
        if self.is_hvm() {
            args.serial = SerialMode::Dom0;
            args.xen_platform_pci = self.xen_platform_pci;
            args.virtio = self.virtio.clone();
        }
        args
    }
}

pub struct Daemon {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub vmm: PathBuf,
    store: Arc<dyn StoreService>,
    domains: Mutex<BTreeMap<u32, Arc<Domain>>>,
    /// Signalled (with `domains`) when a domain leaves it.
    domain_left: Condvar,
    /// Each domain's xenbus devices (disks, vifs).
    devices: Mutex<BTreeMap<u32, Arc<DomainDevices>>>,
    /// Each HVM domain's virtio devices (its disks and vifs).
    virtio: Mutex<BTreeMap<u32, VirtioDomain>>,
    backends: Arc<BackendFactory>,
    preserved: Mutex<BTreeMap<u32, Preserved>>,
    next_domid: Mutex<u32>,
    hvlog: Mutex<File>,
    started: Instant,
    /// How long xl.cfg's `bootloader` may run ([`crate::bootloader::TIMEOUT_ENV`]).
    bootloader_limit: Duration,
    /// How long a guest may take to acknowledge a suspend request, and
    /// then to suspend ([`suspend::SUSPEND_TIMEOUT_ENV`]).
    suspend_limit: Duration,
}

impl Daemon {
    pub fn new(
        state_dir: PathBuf,
        run_dir: PathBuf,
        vmm: PathBuf,
        store: Arc<dyn StoreService>,
        backends: Arc<BackendFactory>,
    ) -> std::io::Result<Arc<Self>> {
        for dir in ["domains", "console", "logs"] {
            std::fs::create_dir_all(state_dir.join(dir))?;
        }
        std::fs::create_dir_all(run_dir.join("domains"))?;
        let hvlog = OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("hypervisor.log"))?;
        let next = std::fs::read_to_string(state_dir.join("next-domid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        Ok(Arc::new(Daemon {
            state_dir,
            run_dir,
            vmm,
            store,
            domains: Mutex::new(BTreeMap::new()),
            domain_left: Condvar::new(),
            devices: Mutex::new(BTreeMap::new()),
            virtio: Mutex::new(BTreeMap::new()),
            backends,
            preserved: Mutex::new(BTreeMap::new()),
            next_domid: Mutex::new(next),
            hvlog: Mutex::new(hvlog),
            started: Instant::now(),
            bootloader_limit: crate::bootloader::limit_from_env(),
            suspend_limit: suspend::suspend_limit_from_env(),
        }))
    }

    /// A line in the hypervisor log (`xl dmesg`), stamped as Xen stamps
    /// its console lines.
    pub fn log(&self, line: &str) {
        info!("{line}");
        let _ = writeln!(
            self.hvlog.lock().unwrap_or_else(|e| e.into_inner()),
            "{}{line}",
            dmesg_prefix(SystemTime::now())
        );
    }

    fn record_path(&self, domid: u32) -> PathBuf {
        self.state_dir.join(format!("domains/{domid}.json"))
    }

    fn save_record(&self, record: &DomainRecord) {
        let path = self.record_path(record.domid);
        let tmp = path.with_extension("tmp");
        if let Ok(text) = serde_json::to_vec_pretty(record) {
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    fn allocate_domid(&self) -> u32 {
        let mut next = self.next_domid.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<u32> = self
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .chain(
                self.preserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys(),
            )
            .copied()
            .collect();
        while *next == 0 || *next >= 0x7ff0 || live.contains(&*next) {
            *next = if *next >= 0x7ff0 { 1 } else { *next + 1 };
        }
        let domid = *next;
        *next += 1;
        let _ = std::fs::write(self.state_dir.join("next-domid"), next.to_string());
        domid
    }

    fn name_in_use(&self, name: &str) -> bool {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|d| d.record.name == name)
            || self
                .preserved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|p| p.record.name == name)
    }

    /// Find a domain by id or name, as xl resolves them.
    fn resolve(&self, domain: &str) -> Option<u32> {
        if domain == "Domain-0" || domain == "0" {
            return Some(0);
        }
        let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let preserved = self.preserved.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(id) = domain.parse::<u32>() {
            if domains.contains_key(&id) || preserved.contains_key(&id) {
                return Some(id);
            }
            return None;
        }
        domains
            .values()
            .find(|d| d.record.name == domain)
            .map(|d| d.record.domid)
            .or_else(|| {
                preserved
                    .values()
                    .find(|p| p.record.name == domain)
                    .map(|p| p.record.domid)
            })
    }

    fn live(&self, domid: u32) -> Option<Arc<Domain>> {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domid)
            .cloned()
    }
}

/// The start of a hypervisor log line: Xen's `(XEN) ` and its
/// `console_timestamps=datems` stamp, `[YYYY-MM-DD HH:MM:SS.mmm] `, in UTC
/// as Xen's wallclock keeps it.
pub fn dmesg_prefix(when: SystemTime) -> String {
    format!("(XEN) {}", kxen_vmm_api::log::datems_stamp(when))
}

/// `text` on one line: a reason quoted from elsewhere (a hotplug script's
/// output, say) must not spill over several.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<LaunchSpec, String> {
        let (mut cfg, _) = kxen_toolstack::config::parse_str(text, "t.cfg").unwrap();
        cfg.fill_defaults().unwrap();
        LaunchSpec::from_config(&cfg)
    }

    #[test]
    fn dmesg_lines_carry_xen_datems_stamps() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(
            dmesg_prefix(at(1_796_566_183_668)),
            "(XEN) [2026-12-06 14:09:43.668] "
        );
        assert_eq!(dmesg_prefix(at(0)), "(XEN) [1970-01-01 00:00:00.000] ");
        // A leap day, and milliseconds below 100 keep their zeros.
        assert_eq!(
            dmesg_prefix(at(1_709_164_800_007)),
            "(XEN) [2024-02-29 00:00:00.007] "
        );
    }

    #[test]
    fn hvm_disks_and_vifs_become_virtio_slots() {
        let s = spec(
            r#"name = "h"
type = "hvm"
kernel = "/k"
vif = [ "bridge=xenbr0", "mac=00:16:3e:00:00:02" ]
disk = [ "/a.img,raw,xvda,rw", "/b.img,raw,xvdb,ro" ]
"#,
        )
        .unwrap();
        use kxen_vmm_api::launch::VirtioKind::{Blk, Net};
        assert_eq!(s.virtio, [Blk, Blk, Net, Net]);
        // kxen-vmm's own parser reads back what kxend renders.
        let args = s.vmm_args(7, Path::new("/run/7.sock"), Path::new("/run/7.exit"));
        let mut argv = vec![std::ffi::OsString::from("kxen-vmm")];
        argv.extend(args.to_args());
        let parsed = <LaunchArgs as clap::Parser>::try_parse_from(argv).unwrap();
        assert_eq!(parsed, args);
        assert_eq!(parsed.serial, SerialMode::Dom0);
        assert_eq!(parsed.guest_type, GuestType::Hvm);
        assert!(parsed.paused);
        assert_eq!(parsed.domid, 7);
        // PV and PVH domains keep their PV devices. No type is xl's
        // default, classic PV, and kxen-vmm is told so.
        for (type_line, guest_type) in [
            ("", GuestType::Pv),
            ("type = \"pv\"\n", GuestType::Pv),
            ("type = \"pvh\"\n", GuestType::Pvh),
        ] {
            let s = spec(&format!(
                "name = \"p\"\n{type_line}kernel = \"/k\"\ndisk = [ \"/a.img,raw,xvda,rw\" ]\n"
            ))
            .unwrap();
            assert!(s.virtio.is_empty());
            let args = s.vmm_args(7, Path::new("/run/7.sock"), Path::new("/run/7.exit"));
            let mut argv = vec![std::ffi::OsString::from("kxen-vmm")];
            argv.extend(args.to_args());
            let parsed = <LaunchArgs as clap::Parser>::try_parse_from(argv).unwrap();
            assert_eq!(parsed.guest_type, guest_type, "{type_line:?}");
            assert_eq!(parsed.serial, SerialMode::Stdio);
        }
        let many: Vec<String> = (0..9)
            .map(|i| format!("\"/d{i},raw,xvd{},rw\"", (b'a' + i) as char))
            .collect();
        let text = format!(
            "name = \"h\"\ntype = \"hvm\"\nkernel = \"/k\"\ndisk = [ {} ]\n",
            many.join(", ")
        );
        assert!(spec(&text).unwrap_err().contains("at most 8"));
    }
}
