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

use crate::affinity;
use crate::devices::{BackendFactory, DeviceError, DeviceSpec, DomainDevices};
use crate::domain::{AttachError, Domain, DomainRecord, Tuning};
use crate::preflight::{self, CreateError};
use crate::reactor;
use crate::store::StoreService;
use kxen_virtio_backend::VirtioDomain;
use kxen_vmm_api::launch::{GuestType, SerialMode, VirtioKind};
use kxen_vmm_api::LaunchArgs;

/// How long a new kxen-vmm may take to open its control socket.
const ATTACH_LIMIT: Duration = Duration::from_secs(10);
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
    /// HVM: Linux boot protocol and emulated devices instead of PVH.
    pub hvm: bool,
    /// HVM: the Xen platform PCI device and Xen CPUID leaves.
    pub xen_platform_pci: bool,
    /// HVM: virtio-mmio slots (`--virtio blk|net`): the config's disks,
    /// then its vifs, in order.
    pub virtio: Vec<VirtioKind>,
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
                _ => "the config has no kernel (kxen boots PVH kernels directly)",
            })?;
        let hvm = config.domain_type == DomainType::Hvm;
        let virtio: Vec<VirtioKind> = if hvm {
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
            hvm,
            xen_platform_pci: config.xen_platform_pci,
            virtio,
        })
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
        // allocate_domid keeps domids below DOMID_FIRST_RESERVED (0x7ff0).
        args.domid = u16::try_from(domid).unwrap_or(u16::MAX);
        args.name = self.name.clone();
        args.paused = true;
        args.control_socket = Some(control.to_path_buf());
        args.exit_file = Some(exit_file.to_path_buf());
        if self.hvm {
            args.guest_type = GuestType::Hvm;
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

    /// Create and start a domain; returns its domid.
    pub fn create(
        self: &Arc<Self>,
        mut config: DomainConfig,
        paused: bool,
    ) -> Result<u32, CreateError> {
        config
            .fill_defaults()
            .map_err(|e| CreateError::Config(e.to_string()))?;
        let spec = LaunchSpec::from_config(&config).map_err(CreateError::Config)?;
        preflight::check(&config, &spec)?;
        if spec.name == "Domain-0" || self.name_in_use(&spec.name) {
            return Err(CreateError::NameInUse(spec.name));
        }
        let tuning = Tuning {
            sched: CreditParams {
                weight: config.cpu_weight.unwrap_or(xl::DEFAULT_WEIGHT),
                cap: config.cap.unwrap_or(0),
            },
            soft_affinity: config_affinity(config.cpus_soft.as_ref(), spec.vcpus)
                .map_err(CreateError::Affinity)?,
        };
        let domid = self.allocate_domid();
        let record = DomainRecord {
            domid,
            name: spec.name.clone(),
            uuid: config
                .uuid
                .map(|u| u.to_string())
                .unwrap_or_else(|| kxen_toolstack::config::Uuid::random().to_string()),
            pid: 0,
            control: self.run_dir.join(format!("domains/{domid}.sock")),
            exit_file: self.state_dir.join(format!("domains/{domid}.exit")),
            console_log: self
                .state_dir
                .join(format!("console/guest-{}.log", spec.name)),
            config,
            created: SystemTime::now(),
            memory_kib: spec.memory_mib * 1024,
            max_memory_kib: spec.maxmem_mib * 1024,
            vcpus: spec.vcpus,
            tuning,
        };
        let _ = std::fs::remove_file(&record.exit_file);
        let _ = std::fs::remove_file(&record.control);
        let vmm_log_path = self
            .state_dir
            .join(format!("logs/vmm-{domid}-{}.log", spec.name));
        let vmm_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&vmm_log_path)
            .map_err(|e| CreateError::VmmLog {
                path: vmm_log_path.display().to_string(),
                reason: preflight::describe_io(&e),
            })?;
        // Where this VMM's own stderr starts in the (appended) log.
        let vmm_log_start = vmm_log.metadata().map_or(0, |m| m.len());
        // The guest's port 0xE9 lines belong in `kxl dmesg`: the VMM gets
        // the hypervisor log as an inherited descriptor (its sandbox opens
        // no files), closed here once it has started.
        let hvlog_for_vmm = self
            .hvlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
            .map_err(|e| CreateError::VmmLog {
                path: self.state_dir.join("hypervisor.log").display().to_string(),
                reason: preflight::describe_io(&e),
            })?;
        let hvlog_fd = std::os::fd::AsRawFd::as_raw_fd(&hvlog_for_vmm);
        let mut vmm_args = spec.vmm_args(domid, &record.control, &record.exit_file);
        vmm_args.hypervisor_log_fd = Some(hvlog_fd);
        let mut cmd = Command::new(&self.vmm);
        // SAFETY: the closure makes one async-signal-safe call (fcntl) on
        // a descriptor the parent keeps open until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Inherited by this child only: std opened it close-on-exec.
                if libc::fcntl(hvlog_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.args(vmm_args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(vmm_log))
            // Its own process group: a terminal's ^C to kxl or kxend must
            // not reach the domains.
            .process_group(0);
        let jailed = crate::jail::JailRequest {
            domid,
            vmm: &self.vmm,
            read_only: std::iter::once(Path::new(&spec.kernel))
                .chain(spec.ramdisk.as_deref().map(Path::new))
                .collect(),
            writable: vec![&record.control, &record.exit_file],
            cpu: crate::cgroup::CpuSettings {
                cap_percent: record.config.cap,
                weight: record.config.cpu_weight,
            },
        };
        let mut child = crate::jail::launch(&jailed, &mut cmd).map_err(|e| CreateError::Spawn {
            path: self.vmm.display().to_string(),
            reason: preflight::describe_io(&e),
        })?;
        // The child has its own copy now.
        drop(hvlog_for_vmm);
        let mut record = record;
        record.pid = child.id();
        self.save_record(&record);
        let attached =
            await_control_socket(&mut child, &record.control, &vmm_log_path, vmm_log_start)
                .and_then(|()| {
                    Domain::attach(record.clone(), self.store.clone(), ATTACH_LIMIT, false)
                        .map_err(|e| vmm_gone_or(&mut child, &vmm_log_path, vmm_log_start, e))
                });
        let domain = match attached {
            Ok(d) => d,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(self.record_path(domid));
                let _ = std::fs::remove_file(&record.control);
                crate::jail::cleanup(domid);
                self.log(&format!("domain {domid} ({}) not created: {e}", spec.name));
                return Err(e);
            }
        };
        self.write_domain_nodes(&domain);
        let plugged = if spec.hvm {
            self.attach_virtio(&domain)
        } else {
            self.attach_config_devices(&domain)
                .map_err(|e| e.to_string())
        };
        let ready = plugged
            .map_err(CreateError::Devices)
            .and_then(|()| pin_config_vcpus(&domain).map_err(CreateError::Affinity));
        if let Err(e) = ready {
            let _ = domain.destroy();
            self.drop_virtio(domid);
            self.devices_of(domid).teardown();
            self.devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&domid);
            let _ = child.wait();
            crate::jail::cleanup(domid);
            self.store.release(domid);
            self.store.rm(&format!("/local/domain/{domid}"));
            self.store.rm(&format!("/vm/{}", domain.record.uuid));
            let _ = std::fs::remove_file(self.record_path(domid));
            return Err(e);
        }
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, domain.clone());
        self.log(&format!(
            "domain {domid} ({}) created: {} MiB, {} vCPU(s), kernel {}",
            spec.name, spec.memory_mib, spec.vcpus, spec.kernel
        ));
        self.monitor(domain.clone(), Some(child));
        if !paused {
            domain
                .unpause()
                .map_err(|e| CreateError::Unpause(e.to_string()))?;
        }
        Ok(domid)
    }

    /// The device set of a domain, made on first use.
    fn devices_of(&self, domid: u32) -> Arc<DomainDevices> {
        let mut all = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(domid)
            .or_insert_with(|| {
                DomainDevices::new(
                    domid,
                    self.run_dir.join(format!("domains/{domid}.sock")),
                    self.store.clone(),
                    self.backends.clone(),
                )
            })
            .clone()
    }

    /// Serve an HVM domain's disks and vifs as virtio devices, in the
    /// slots `--virtio` gave them: disks first, then vifs, in config order.
    /// The domain is still paused, so the driver finds them ready.
    fn attach_virtio(&self, d: &Domain) -> Result<(), String> {
        let cfg = &d.record.config;
        if cfg.disks.is_empty() && cfg.vifs.is_empty() {
            return Ok(());
        }
        let domid = d.record.domid;
        let mut virtio =
            VirtioDomain::connect(domid as u16, &d.record.control).map_err(|e| e.to_string())?;
        let mut slot = 0;
        for disk in &cfg.disks {
            let dev = crate::backends::virtio_blk(disk)
                .map_err(|e| format!("disk {}: {e}", disk.vdev))?;
            virtio
                .attach(slot, dev)
                .map_err(|e| format!("disk {}: {e}", disk.vdev))?;
            slot += 1;
        }
        for (index, vif) in cfg.vifs.iter().enumerate() {
            let devid = vif.devid.unwrap_or(index as u32);
            let dev = crate::backends::virtio_net(domid, devid, vif)
                .map_err(|e| format!("vif {devid}: {e}"))?;
            virtio
                .attach(slot, dev)
                .map_err(|e| format!("vif {devid}: {e}"))?;
            slot += 1;
        }
        self.log(&format!(
            "domain {domid}: virtio {}",
            virtio.device_names().join(", ")
        ));
        self.virtio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, virtio);
        Ok(())
    }

    /// Stop a domain's virtio devices (their TAPs go away).
    fn drop_virtio(&self, domid: u32) {
        let virtio = self
            .virtio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid);
        if let Some(mut v) = virtio {
            v.teardown();
        }
    }

    /// Plug the disks and vifs of the domain's config, in order.
    fn attach_config_devices(&self, d: &Domain) -> Result<(), DeviceError> {
        let cfg = &d.record.config;
        if cfg.disks.is_empty() && cfg.vifs.is_empty() {
            return Ok(());
        }
        let devices = self.devices_of(d.record.domid);
        for disk in &cfg.disks {
            devices.attach(DeviceSpec::Disk(disk.clone()), disk.devid())?;
        }
        for (index, vif) in cfg.vifs.iter().enumerate() {
            let devid = vif.devid.unwrap_or(index as u32);
            devices.attach(DeviceSpec::Vif(vif.clone()), devid)?;
        }
        Ok(())
    }

    /// The xenstore layout libxl gives a new domain.
    fn write_domain_nodes(&self, d: &Domain) {
        let r = &d.record;
        let s = &self.store;
        let dom = format!("/local/domain/{}", r.domid);
        let ro = vec!["n0".to_string(), format!("r{}", r.domid)];
        let rw = vec![format!("n{}", r.domid)];
        let vm = format!("/vm/{}", r.uuid);
        s.mkdir(&dom);
        s.set_perms(&dom, &ro);
        s.write(&format!("{vm}/name"), r.name.as_bytes());
        s.write(&format!("{vm}/uuid"), r.uuid.as_bytes());
        s.set_perms(&vm, &ro);
        for (k, v) in [
            ("name", r.name.clone()),
            ("domid", r.domid.to_string()),
            ("vm", vm.clone()),
            ("memory/static-max", r.max_memory_kib.to_string()),
            ("memory/target", r.memory_kib.to_string()),
            ("memory/videoram", "-1".to_string()),
            ("console/ring-ref", d.console_ring.pfn.to_string()),
            ("console/port", d.console_ring.port.to_string()),
            ("console/limit", "1048576".to_string()),
            ("console/type", "xenconsoled".to_string()),
            ("console/output", "pty".to_string()),
            ("store/ring-ref", d.store_ring.pfn.to_string()),
            ("store/port", d.store_ring.port.to_string()),
        ] {
            let path = format!("{dom}/{k}");
            s.write(&path, v.as_bytes());
            s.set_perms(&path, &ro);
        }
        for sub in ["memory", "console", "store"] {
            s.set_perms(&format!("{dom}/{sub}"), &ro);
        }
        for sub in [
            "cpu", "device", "control", "data", "drivers", "feature", "attr", "error",
        ] {
            let path = format!("{dom}/{sub}");
            s.mkdir(&path);
            s.set_perms(&path, &rw);
        }
        let shutdown = format!("{dom}/control/shutdown");
        s.write(&shutdown, b"");
        s.set_perms(&shutdown, &rw);
        for v in 0..r.vcpus {
            let path = format!("{dom}/cpu/{v}/availability");
            s.write(&path, b"online");
            s.set_perms(&path, &rw);
        }
    }

    /// Watch a domain's VMM process from the event loop through a pidfd
    /// (readable once the process has ended, whether or not it is our
    /// child); its end is handled on the domain pool.
    fn monitor(self: &Arc<Self>, domain: Arc<Domain>, child: Option<std::process::Child>) {
        let domid = domain.record.domid;
        let pidfd = match pidfd_open(domain.record.pid) {
            Ok(fd) => fd,
            Err(e) => {
                // Already gone (ESRCH) or no pidfds: handle the end now.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    warn!(domid, "pidfd_open: {e}");
                }
                let me = self.clone();
                let child = Mutex::new(child);
                reactor::DOMAINS.spawn(move || me.vmm_ended(&domain, child));
                return;
            }
        };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&pidfd);
        let me = self.clone();
        let child = Mutex::new(child);
        let pending = Mutex::new(Some((domain, child)));
        let on_exit = move |_| {
            // The pidfd lives in this handler until it is deregistered.
            let _ = &pidfd;
            if let Some((domain, child)) = pending.lock().unwrap_or_else(|e| e.into_inner()).take()
            {
                let me = me.clone();
                reactor::DOMAINS.spawn(move || me.vmm_ended(&domain, child));
            }
            reactor::Next::Remove
        };
        if let Err(e) = reactor::reactor().add(raw, reactor::IN, Arc::new(on_exit)) {
            error!(domid, "cannot watch kxen-vmm: {e}");
        }
    }

    /// A domain's VMM process has ended: reap it if it is our child, and
    /// apply the domain's end.
    fn vmm_ended(
        self: &Arc<Self>,
        domain: &Arc<Domain>,
        child: Mutex<Option<std::process::Child>>,
    ) {
        let code = match child.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(mut child) => {
                let status = child.wait().ok();
                if let Some(signal) =
                    status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s))
                {
                    self.vmm_killed(domain, signal);
                }
                status.and_then(|s| s.code())
            }
            None => None,
        };
        self.domain_died(domain.record.domid, code);
    }

    /// A domain's VMM was killed by `signal`: it wrote no exit file, so
    /// write the reason there for [`Self::domain_died`] to report as the
    /// domain's crash.
    fn vmm_killed(&self, domain: &Domain, signal: i32) {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let why = if signal == libc::SIGSYS {
            format!("killed by {name} (seccomp violation)")
        } else {
            format!("killed by {name}")
        };
        error!(domid = domain.record.domid, "kxen-vmm {why}");
        if !domain.record.exit_file.exists() {
            let _ = std::fs::write(&domain.record.exit_file, format!("7 {why}\n"));
        }
    }

    /// A domain's VMM exited: apply on_poweroff/on_reboot/on_crash.
    fn domain_died(self: &Arc<Self>, domid: u32, wait_code: Option<i32>) {
        let Some(domain) = self
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid)
        else {
            return;
        };
        self.domain_left.notify_all();
        domain.detach();
        let devices = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid);
        if let Some(devices) = devices {
            devices.teardown();
        }
        self.drop_virtio(domid);
        let record = domain.record.clone();
        let from_file = std::fs::read_to_string(&record.exit_file).ok();
        let code = from_file
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|c| c.parse::<i32>().ok())
            .or(wait_code)
            .unwrap_or(7);
        let why = from_file
            .as_deref()
            .map(|s| s.trim().split_once(' ').map_or("", |x| x.1).to_string())
            .unwrap_or_else(|| "kxen-vmm ended without a reason".into());
        // kxen-vmm exit statuses back to SHUTDOWN_* reasons.
        let reason = match code {
            0 => 0,
            2 => 1,
            3 => 2,
            5 => 4,
            6 => 5,
            8 => u32::MAX,
            _ => 3,
        };
        self.store.release(domid);
        self.store.rm(&format!("/local/domain/{domid}"));
        self.store.rm(&format!("/vm/{}", record.uuid));
        let _ = std::fs::remove_file(self.record_path(domid));
        let _ = std::fs::remove_file(&record.exit_file);
        let _ = std::fs::remove_file(&record.control);
        crate::jail::cleanup(domid);
        if reason == u32::MAX {
            self.log(&format!("domain {domid} ({}) destroyed", record.name));
            return;
        }
        if code == 7 || code == 1 {
            error!(domid, "domain {} crashed: {why}", record.name);
        }
        let cfg = &record.config;
        let (key, action) = match reason {
            0 => ("on_poweroff", cfg.on_poweroff),
            1 => ("on_reboot", cfg.on_reboot),
            4 => ("on_watchdog", cfg.on_watchdog),
            5 => ("on_soft_reset", cfg.on_soft_reset),
            _ => ("on_crash", cfg.on_crash),
        };
        self.log(&format!(
            "domain {domid} ({}) {why}; {key} = {}",
            record.name,
            action.as_str()
        ));
        match action {
            // kxen writes no core dumps: the coredump-* actions behave as
            // their plain forms.
            Action::Destroy | Action::CoredumpDestroy => {}
            Action::Preserve => {
                self.preserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(domid, Preserved { record, reason });
            }
            Action::Restart
            | Action::RenameRestart
            | Action::CoredumpRestart
            | Action::SoftReset => {
                if action == Action::RenameRestart {
                    let mut old = record.clone();
                    old.name = format!("{}--incoming", record.name);
                    self.preserved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            domid,
                            Preserved {
                                record: old,
                                reason,
                            },
                        );
                }
                match self.create(record.config.clone(), false) {
                    Ok(new) => self.log(&format!("domain {} restarted as {new}", record.name)),
                    Err(e) => self.log(&format!("restarting {} failed: {e}", record.name)),
                }
            }
        }
    }

    /// Re-attach to the domains a previous kxend left running.
    pub fn recover(self: &Arc<Self>) {
        let Ok(dir) = std::fs::read_dir(self.state_dir.join("domains")) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(record) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DomainRecord>(&b).ok())
            else {
                continue;
            };
            let domid = record.domid;
            if crate::domain::process_alive(record.pid) {
                match Domain::attach(
                    record.clone(),
                    self.store.clone(),
                    Duration::from_secs(2),
                    true,
                ) {
                    Ok(domain) => {
                        self.domains
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(domid, domain.clone());
                        self.log(&format!("re-attached to domain {domid} ({})", record.name));
                        if record.config.domain_type == DomainType::Hvm {
                            // A second attach replaces the first; a running
                            // driver sees DEVICE_NEEDS_RESET.
                            if let Err(e) = self.attach_virtio(&domain) {
                                self.log(&format!("domain {domid}: virtio devices lost: {e}"));
                            }
                        }
                        let devices = self.devices_of(domid);
                        for (kind, devid) in devices.existing_nodes() {
                            if let Err(e) = devices.adopt(kind, devid) {
                                self.log(&format!("domain {domid}: {kind} {devid} lost: {e}"));
                            }
                        }
                        self.monitor(domain, None);
                        continue;
                    }
                    Err(e) => warn!(domid, "cannot re-attach: {e}"),
                }
            }
            // It ended while no kxend watched: account for it now.
            self.log(&format!(
                "domain {domid} ({}) ended while kxend was away",
                record.name
            ));
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&record.control);
            self.store.release(domid);
            self.store.rm(&format!("/local/domain/{domid}"));
            for kind in ["vbd", "vif"] {
                self.store
                    .rm(&format!("/local/domain/0/backend/{kind}/{domid}"));
            }
        }
        let mut next = self.next_domid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(max) = self
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .max()
        {
            *next = (*next).max(max + 1);
        }
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

    fn entry_of(&self, d: &Domain) -> DomainEntry {
        let info = d.info().ok();
        let memory_kib = info.as_ref().map_or(d.record.memory_kib, |i| i.memory_kib);
        let paused = d.paused.load(std::sync::atomic::Ordering::SeqCst);
        // xl's 'r' means a vCPU is on a CPU; an idle guest (every vCPU in
        // SCHEDOP_block) shows 'b' instead.
        let blocked = info.as_ref().is_some_and(|i| i.blocked);
        let online = info.as_ref().map_or(d.record.vcpus, |i| i.vcpus_online);
        let sched = d.tuning.lock().unwrap_or_else(|e| e.into_inner()).sched;
        let vcpus = vcpu_infos(d, online, paused);
        DomainEntry {
            info: DomainInfo {
                current_memkb: memory_kib,
                vcpu_online: online,
                running: !paused && !blocked,
                blocked: blocked && !paused,
                paused,
                cpu_time_ns: process_cpu_ns(d.record.pid),
                ..dominfo(&d.record)
            },
            config: Some(d.record.config.clone()),
            max_memory_kib: d.record.max_memory_kib,
            uptime_s: d.record.created.elapsed().unwrap_or_default().as_secs(),
            sched: Some(sched),
            vcpus: Some(vcpus),
        }
    }

    fn dom0_entry(&self) -> DomainEntry {
        let host = host_info();
        let mem = host.total_memory * 1024;
        DomainEntry {
            info: DomainInfo {
                domid: 0,
                name: "Domain-0".into(),
                uuid: Default::default(),
                current_memkb: mem,
                vcpu_online: host.nr_cpus,
                running: true,
                cpu_time_ns: process_cpu_ns(std::process::id()),
                ..idle_info()
            },
            config: None,
            max_memory_kib: mem,
            uptime_s: self.started.elapsed().as_secs(),
            // The host's own scheduling is not kxen's to change: Xen's
            // defaults, which Domain-0 keeps.
            sched: Some(CreditParams::default()),
            vcpus: None,
        }
    }

    fn list(&self) -> Vec<DomainEntry> {
        let mut out = vec![self.dom0_entry()];
        let domains: Vec<Arc<Domain>> = self
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        out.extend(domains.iter().map(|d| self.entry_of(d)));
        for p in self
            .preserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            out.push(DomainEntry {
                info: DomainInfo {
                    shutdown: true,
                    shutdown_reason: Some(ShutdownReason::from_code(p.reason as i32)),
                    ..dominfo(&p.record)
                },
                config: Some(p.record.config.clone()),
                max_memory_kib: p.record.max_memory_kib,
                uptime_s: 0,
                sched: Some(p.record.tuning.sched),
                vcpus: None,
            });
        }
        out.sort_by_key(|d| d.info.domid);
        out
    }

    /// Wait (in the event loop, owning no thread) for a client's next
    /// request, then serve it on the client pool.
    fn watch_client(self: &Arc<Self>, conn: BufReader<UnixStream>) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(conn.get_ref());
        let me = self.clone();
        let conn = Mutex::new(Some(conn));
        let added = reactor::reactor().add_with(fd, reactor::IN, |token| {
            Arc::new(move |_| {
                reactor::reactor().remove(token);
                if let Some(conn) = conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let me = me.clone();
                    reactor::CLIENTS.spawn(move || me.serve(conn));
                }
                reactor::Next::Remove
            })
        });
        if let Err(e) = added {
            warn!("kxl client: {e}");
        }
    }

    /// Serve a client's requests while they are there to read; then wait
    /// for more in the event loop.
    fn serve(self: &Arc<Self>, mut reader: BufReader<UnixStream>) {
        // A client that stops halfway through a line or stops reading its
        // reply does not hold a worker for long.
        let _ = reader.get_ref().set_read_timeout(Some(CLIENT_IO_LIMIT));
        let _ = reader.get_ref().set_write_timeout(Some(CLIENT_IO_LIMIT));
        let Ok(mut writer) = reader.get_ref().try_clone() else {
            return;
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_REQUEST as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let request = serde_json::from_slice::<Request>(&line);
            if let Ok(Request::Console { domain, kind }) = &request {
                let Some(id) = self.resolve(domain) else {
                    let _ = send(&mut writer, &Reply::unknown_domain(domain));
                    return;
                };
                let Some(d) = self.live(id) else {
                    let _ = send(
                        &mut writer,
                        &Reply::error(format!("domain {domain} is not running")),
                    );
                    return;
                };
                let Some(console) = d.console_for(*kind) else {
                    let _ = send(
                        &mut writer,
                        &Reply::error(format!("domain {domain} has no such console")),
                    );
                    return;
                };
                if send(&mut writer, &Reply::ok()).is_ok() {
                    let typed = reader.buffer().to_vec();
                    let stream = reader.into_inner();
                    let _ = stream.set_read_timeout(None);
                    let _ = stream.set_write_timeout(None);
                    console.attach(stream, &typed);
                }
                return;
            }
            let reply = match request {
                Ok(req) => self.handle(req),
                Err(e) => Reply::error(format!("bad request: {e}")),
            };
            if send(&mut writer, &reply).is_err() {
                return;
            }
            if reader.buffer().is_empty() {
                break;
            }
        }
        self.watch_client(reader);
    }

    fn handle(self: &Arc<Self>, req: Request) -> Reply {
        let unknown = Reply::unknown_domain;
        match req {
            Request::Ping => Reply::ok(),
            Request::Create { config, paused, .. } => {
                let name = config.name.clone();
                match self.create(*config, paused) {
                    Ok(domid) => Reply {
                        domid: Some(domid),
                        ..Reply::ok()
                    },
                    // libxl names the domain its errors are about; kxl
                    // prints this as one line.
                    Err(e) => Reply::error(one_line(&format!("domain {name}: {e}"))),
                }
            }
            Request::Destroy { domain } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(0) => Reply::error(xl::NOT_DESTROYING_DOM0.trim_end()),
                Some(id) => {
                    if let Some(p) = self
                        .preserved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id)
                    {
                        self.log(&format!(
                            "preserved domain {id} ({}) destroyed",
                            p.record.name
                        ));
                        return Reply::ok();
                    }
                    match self.live(id).map(|d| d.destroy()) {
                        Some(Ok(_)) => {
                            self.wait_gone(id, Duration::from_secs(10));
                            Reply::ok()
                        }
                        Some(Err(e)) => Reply::error(e.to_string()),
                        None => unknown(&domain),
                    }
                }
            },
            Request::Shutdown { domain } => self.control_shutdown(&domain, "poweroff"),
            Request::Reboot { domain } => self.control_shutdown(&domain, "reboot"),
            Request::Pause { domain } => self.pause(&domain, true),
            Request::Unpause { domain } => self.pause(&domain, false),
            Request::WaitGone { domain, timeout_s } => match self.resolve(&domain) {
                None => Reply::ok(),
                Some(id) => {
                    if self.wait_gone(id, Duration::from_secs(timeout_s)) {
                        Reply::ok()
                    } else {
                        Reply::error(format!("domain {domain} did not go away"))
                    }
                }
            },
            Request::List => Reply {
                domains: Some(self.list()),
                ..Reply::ok()
            },
            Request::Resolve { domain } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(id) => Reply {
                    domid: Some(id),
                    domains: Some(
                        self.list()
                            .into_iter()
                            .filter(|d| d.info.domid == id)
                            .collect(),
                    ),
                    ..Reply::ok()
                },
            },
            Request::Info => Reply {
                host: Some(host_info()),
                ..Reply::ok()
            },
            Request::Dmesg { clear } => {
                let text = std::fs::read_to_string(self.state_dir.join("hypervisor.log"))
                    .unwrap_or_default();
                if clear {
                    let _ = self
                        .hvlog
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set_len(0);
                }
                Reply {
                    text: Some(text),
                    ..Reply::ok()
                }
            }
            Request::MemSet { domain, target_kib } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(0) => Reply::error("Domain-0 memory is the host's"),
                Some(id) => {
                    let max = self.live(id).map_or(0, |d| d.record.max_memory_kib);
                    if target_kib > max {
                        return Reply::error(format!(
                            "memory_dynamic_max must be less than or equal to memory_static_max ({max} KiB)"
                        ));
                    }
                    self.store.write(
                        &format!("/local/domain/{id}/memory/target"),
                        target_kib.to_string().as_bytes(),
                    );
                    Reply::ok()
                }
            },
            Request::Console { domain, .. } => unknown(&domain),
            Request::SchedCredit {
                domain,
                weight,
                cap,
            } => self.sched_credit(&domain, weight, cap),
            Request::VcpuPin {
                domain,
                vcpu,
                hard,
                soft,
            } => self.vcpu_pin(&domain, &vcpu, &hard, soft.as_deref()),
            Request::BlockAttach { domain, disk } => self.with_devices(&domain, |devs| {
                if let Err(missing) = preflight::disk_present(&disk) {
                    return Ok(Reply::error(missing.to_string()));
                }
                devs.attach(DeviceSpec::Disk((*disk).clone()), disk.devid())
                    .map(|_| Reply::ok())
            }),
            Request::BlockDetach {
                domain,
                device,
                force,
            } => self.with_devices(&domain, |devs| {
                let devid = device
                    .parse::<u32>()
                    .ok()
                    .or_else(|| kxen_toolstack::disk::vdev_to_devid(&device));
                match devid.map(|id| devs.detach("vbd", id, force)) {
                    Some(Ok(())) => Ok(Reply::ok()),
                    Some(Err(DeviceError::NotFound(_))) | None => {
                        Ok(Reply::error(xl::device_not_connected(&device)))
                    }
                    Some(Err(e)) => Err(e),
                }
            }),
            Request::BlockList { domain } => self.with_devices(&domain, |devs| {
                let stats: BTreeMap<u32, BTreeMap<String, u64>> =
                    devs.block_stats().into_iter().collect();
                let entries = devs
                    .block_list()
                    .into_iter()
                    .map(|b| DeviceEntry {
                        stats: stats.get(&b.devid).cloned().unwrap_or_default(),
                        block: Some(b),
                        nic: None,
                    })
                    .collect();
                Ok(Reply {
                    devices: Some(entries),
                    ..Reply::ok()
                })
            }),
            Request::NetworkAttach { domain, vif } => self.with_devices(&domain, |devs| {
                let mut vif = *vif;
                vif.fill_defaults(kxen_toolstack::config::DomainType::Pvh)
                    .map_err(|e| DeviceError::Backend(e.to_string()))?;
                let devid = vif.devid.unwrap_or_else(|| devs.next_vif_devid());
                vif.devid = Some(devid);
                devs.attach(DeviceSpec::Vif(vif), devid)
                    .map(|_| Reply::ok())
            }),
            Request::NetworkDetach { domain, device } => self.with_devices(&domain, |devs| {
                let by_mac = device.parse::<kxen_toolstack::vif::MacAddr>().ok();
                let devid = devs
                    .network_list()
                    .into_iter()
                    .map(|(n, _)| n)
                    .find(|n| device.parse::<u32>().ok() == Some(n.devid) || by_mac == Some(n.mac))
                    .map(|n| n.devid);
                match devid.map(|id| devs.detach("vif", id, false)) {
                    Some(Ok(())) => Ok(Reply::ok()),
                    Some(Err(DeviceError::NotFound(_))) | None => {
                        Ok(Reply::error(xl::unknown_device(&device)))
                    }
                    Some(Err(e)) => Err(e),
                }
            }),
            Request::NetworkList { domain } => self.with_devices(&domain, |devs| {
                let entries = devs
                    .network_list()
                    .into_iter()
                    .map(|(n, stats)| DeviceEntry {
                        block: None,
                        nic: Some(n),
                        stats,
                    })
                    .collect();
                Ok(Reply {
                    devices: Some(entries),
                    ..Reply::ok()
                })
            }),
        }
    }

    /// Run a device request against a live domain's device set.
    fn with_devices(
        &self,
        domain: &str,
        f: impl FnOnce(&Arc<DomainDevices>) -> Result<Reply, DeviceError>,
    ) -> Reply {
        let Some(id) = self.resolve(domain).filter(|id| *id != 0) else {
            return Reply::unknown_domain(domain);
        };
        if self.live(id).is_none() {
            return Reply::unknown_domain(domain);
        }
        match f(&self.devices_of(id)) {
            Ok(reply) => reply,
            Err(e) => Reply::error(e.to_string()),
        }
    }

    fn control_shutdown(&self, domain: &str, what: &str) -> Reply {
        match self.resolve(domain) {
            None => Reply::unknown_domain(domain),
            Some(0) => Reply::error("cannot shut down Domain-0 from here"),
            Some(id) if self.live(id).is_none() => {
                Reply::error(format!("domain {domain} is not running"))
            }
            Some(id) => {
                self.store.write(
                    &format!("/local/domain/{id}/control/shutdown"),
                    what.as_bytes(),
                );
                self.log(&format!("domain {id}: {what} requested"));
                Reply::ok()
            }
        }
    }

    fn pause(&self, domain: &str, pause: bool) -> Reply {
        match self.resolve(domain).and_then(|id| self.live(id)) {
            None => Reply::unknown_domain(domain),
            Some(d) => match if pause { d.pause() } else { d.unpause() } {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e.to_string()),
            },
        }
    }

    /// `xl sched-credit -d DOMAIN -w WEIGHT -c CAP`: libxl's checks, then
    /// the domain's cgroup; the new values go into its record.
    fn sched_credit(&self, domain: &str, weight: Option<i64>, cap: Option<i64>) -> Reply {
        let Some(id) = self.resolve(domain) else {
            return Reply::unknown_domain(domain);
        };
        let refused = |why: &str| {
            xl_refusal(vec![
                xl::libxl_error(id, why),
                xl::SCHED_PARAMS_SET_FAILED.into(),
            ])
        };
        if id == 0 {
            return refused("kxen does not schedule Domain-0 (the host's own processes)");
        }
        let Some(d) = self.live(id) else {
            return refused("Getting domain info: the domain is not running");
        };
        let mut tuning = d.tuning.lock().unwrap_or_else(|e| e.into_inner());
        let max_vcpus = d.record.config.maxvcpus.max(d.record.vcpus);
        let next = match xl::check_credit_params(tuning.sched, weight, cap, max_vcpus) {
            Ok(next) => next,
            Err(why) => return refused(&why),
        };
        let settings = crate::cgroup::CpuSettings {
            cap_percent: Some(next.cap),
            weight: Some(next.weight),
        };
        let applied = match crate::jail::cgroups() {
            Some(cgroups) => cgroups.set_cpu(id, settings).map_err(|e| e.to_string()),
            None => Err("kxend runs its VMMs without cgroups (--no-jail)".into()),
        };
        if let Err(e) = applied {
            return refused(&format!("Setting domain sched credit: {e}"));
        }
        tuning.sched = next;
        let mut record = d.record.clone();
        record.tuning = tuning.clone();
        drop(tuning);
        self.save_record(&record);
        self.log(&format!(
            "domain {id}: credit weight {} cap {}",
            next.weight, next.cap
        ));
        Reply {
            domains: Some(vec![self.entry_of(&d)]),
            ..Reply::ok()
        }
    }

    /// `xl vcpu-pin DOMAIN VCPU HARD [SOFT]`, checked in xl's order: the
    /// domain, the vCPU, the CPU lists, then each vCPU thread's affinity.
    fn vcpu_pin(&self, domain: &str, vcpu: &str, hard: &str, soft: Option<&str>) -> Reply {
        let Some(id) = self.resolve(domain) else {
            return Reply::unknown_domain(domain);
        };
        let selector = match xl::parse_vcpu_selector(vcpu) {
            Ok(s) => s,
            Err(msg) => return xl_refusal(vec![msg]),
        };
        let nr_cpus = affinity::host_cpus();
        let parse = |list: Option<&str>| match list {
            None | Some("-") => Ok(None),
            Some(list) => xl::parse_cpurange(list, nr_cpus).map(Some),
        };
        let (hard, soft) = match (parse(Some(hard)), parse(soft)) {
            (Ok(h), Ok(s)) => (h, s),
            (Err(msg), _) | (_, Err(msg)) => return xl_refusal(vec![msg]),
        };
        let one_failed = |v: u32, why: String| {
            xl_refusal(vec![
                xl::libxl_error(id, &format!("Setting vcpu affinity: {why}")),
                xl::could_not_set_affinity(v),
            ])
        };
        let d = match (id, self.live(id)) {
            (0, _) => {
                let v = match selector {
                    VcpuSelector::One(v) => v,
                    VcpuSelector::All => 0,
                };
                return one_failed(v, "kxen does not pin Domain-0 (the host's CPUs)".into());
            }
            (_, Some(d)) => d,
            (_, None) => {
                return xl_refusal(vec![
                    xl::libxl_error(id, "the domain is not running"),
                    "libxl_list_vcpu failed.".into(),
                ])
            }
        };
        let threads = affinity::vcpu_threads(d.record.pid);
        let targets: Vec<u32> = match selector {
            VcpuSelector::One(v) => vec![v],
            VcpuSelector::All => threads.keys().copied().collect(),
        };
        let mut failures = Vec::new();
        let mut tuning = d.tuning.lock().unwrap_or_else(|e| e.into_inner());
        for v in targets {
            let Some(&tid) = threads.get(&v) else {
                failures.push((v, "Invalid argument".to_string()));
                continue;
            };
            if let Some(cpus) = &hard {
                if let Err(e) = affinity::set_affinity(tid, cpus) {
                    let mut why = preflight::describe_io(&e);
                    if let Some(allowed) = crate::jail::cgroups().and_then(|c| c.allowed_cpus(id)) {
                        why.push_str(&format!(" (the domain's cpuset allows CPUs {allowed})"));
                    }
                    failures.push((v, why));
                    continue;
                }
            }
            if let Some(cpus) = &soft {
                tuning.soft_affinity.insert(v, cpus.clone());
            }
        }
        let mut record = d.record.clone();
        record.tuning = tuning.clone();
        drop(tuning);
        self.save_record(&record);
        match (selector, failures.as_slice()) {
            (_, []) => {
                self.log(&format!("domain {id}: vcpu-pin {vcpu} {}", {
                    let show = |s: &Option<Vec<u32>>| {
                        s.as_ref()
                            .map_or("-".to_string(), |c| xl::cpumap_to_string(c, nr_cpus))
                    };
                    format!("{} / {}", show(&hard), show(&soft))
                }));
                Reply::ok()
            }
            (VcpuSelector::One(_), [(v, why), ..]) => one_failed(*v, why.clone()),
            // libxl_set_vcpuaffinity_all: a warning per vCPU, and xl
            // still succeeds.
            (VcpuSelector::All, failed) => {
                let mut lines = Vec::new();
                for (v, why) in failed {
                    lines.push(xl::libxl_error(
                        id,
                        &format!("Setting vcpu affinity: {why}"),
                    ));
                    lines.push(format!(
                        "libxl: warning: Domain {id}:Failed to set affinity for {v}"
                    ));
                }
                lines.push(xl::COULD_NOT_SET_AFFINITY_ALL.into());
                Reply {
                    xl_messages: Some(lines),
                    ..Reply::ok()
                }
            }
        }
    }

    /// Wait until `domid` is no longer running.
    fn wait_gone(&self, domid: u32, limit: Duration) -> bool {
        let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let (_domains, waited) = self
            .domain_left
            .wait_timeout_while(domains, limit, |d| d.contains_key(&domid))
            .unwrap_or_else(|e| e.into_inner());
        !waited.timed_out()
    }

    /// Accept clients from the event loop until the process ends; the
    /// calling thread saves the store when it changed.
    pub fn serve_forever(self: &Arc<Self>, listener: UnixListener) {
        if let Err(e) = listener.set_nonblocking(true) {
            error!("kxend.sock: {e}");
            return;
        }
        let me = self.clone();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let on_accept = move |_| {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if !crate::peer::is_trusted(&stream, "kxend.sock") {
                            continue;
                        }
                        if stream.set_nonblocking(false).is_ok() {
                            me.watch_client(BufReader::new(stream));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!("accept: {e}");
                        break;
                    }
                }
            }
            reactor::Next::Keep
        };
        if let Err(e) = reactor::reactor().add(fd, reactor::IN, Arc::new(on_accept)) {
            error!("kxend.sock: {e}");
            return;
        }
        let xs = self.store.xenstored();
        loop {
            xs.wait_dirty();
            // Coalesce a burst of changes (a domain's creation writes
            // dozens of nodes) into one write of the state file.
            std::thread::sleep(SAVE_COALESCE);
            self.store.save();
        }
    }
}

/// A descriptor that becomes readable when process `pid` ends.
fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Wait until a just-started kxen-vmm listens on its control socket. A VMM
/// that ends first (a kernel it cannot load, a size it refuses) is
/// explained by its own last words instead of a failed connect.
fn await_control_socket(
    child: &mut Child,
    control: &Path,
    vmm_log: &Path,
    vmm_log_start: u64,
) -> Result<(), CreateError> {
    let deadline = Instant::now() + ATTACH_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = preflight::log_since(vmm_log, vmm_log_start);
            return Err(CreateError::Vmm(preflight::vmm_failure(&said, status)));
        }
        if control.exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CreateError::VmmSilent(ATTACH_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After attaching to a new VMM failed: the VMM's own reason if it is
/// ending by itself (a VMM that fails while building the domain closes its
/// socket on the way out), else the attach error.
fn vmm_gone_or(
    child: &mut Child,
    vmm_log: &Path,
    vmm_log_start: u64,
    attach_error: AttachError,
) -> CreateError {
    let deadline = Instant::now() + VMM_EXIT_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let said = preflight::log_since(vmm_log, vmm_log_start);
            return CreateError::Vmm(preflight::vmm_failure(&said, status));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    CreateError::Attach(attach_error.to_string())
}

/// A refusal in xl's words: kxl prints `lines` and exits 1.
fn xl_refusal(lines: Vec<String>) -> Reply {
    Reply {
        error: Some(lines.join("\n")),
        xl_messages: Some(lines),
        ..Reply::default()
    }
}

/// xl.cfg's `cpus`/`cpus_soft` read against this host: vCPU to its CPUs,
/// for the vCPUs below `vcpus` the setting names.
fn config_affinity(
    setting: Option<&kxen_toolstack::config::VcpuAffinity>,
    vcpus: u32,
) -> Result<BTreeMap<u32, Vec<u32>>, String> {
    let mut map = BTreeMap::new();
    let Some(setting) = setting else {
        return Ok(map);
    };
    let nr_cpus = affinity::host_cpus();
    for v in 0..vcpus {
        if let Some(list) = setting.for_vcpu(v) {
            map.insert(v, xl::parse_cpurange(list, nr_cpus)?);
        }
    }
    Ok(map)
}

/// Apply xl.cfg's `cpus` (hard affinity) to a new domain's vCPU threads,
/// before it first runs.
fn pin_config_vcpus(d: &Domain) -> Result<(), String> {
    let hard = config_affinity(d.record.config.cpus.as_ref(), d.record.vcpus)?;
    if hard.is_empty() {
        return Ok(());
    }
    let threads = affinity::await_vcpu_threads(d.record.pid, d.record.vcpus, ATTACH_LIMIT)
        .map_err(|e| e.to_string())?;
    for (v, cpus) in hard {
        let Some(&tid) = threads.get(&v) else {
            continue;
        };
        affinity::set_affinity(tid, &cpus).map_err(|e| {
            format!(
                "cpus: cannot set the hard affinity of vcpu {v} to {}: {}",
                xl::cpumap_to_string(&cpus, affinity::host_cpus()),
                preflight::describe_io(&e)
            )
        })?;
    }
    Ok(())
}

/// The vCPUs of a live domain as their threads show them; `online` of
/// them are up.
fn vcpu_infos(d: &Domain, online: u32, paused: bool) -> Vec<VcpuInfo> {
    let nr_cpus = affinity::host_cpus();
    let every: Vec<u32> = (0..nr_cpus).collect();
    let soft = d
        .tuning
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .soft_affinity
        .clone();
    affinity::vcpu_threads(d.record.pid)
        .into_iter()
        .map(|(v, tid)| {
            let stat = affinity::thread_stat(d.record.pid, tid).unwrap_or_default();
            let up = v < online;
            VcpuInfo {
                vcpuid: v,
                cpu: stat.cpu,
                online: up,
                running: up && !paused && stat.runnable,
                blocked: up && !paused && !stat.runnable,
                vcpu_time_ns: stat.time_ns,
                hard_affinity: affinity::get_affinity(tid).unwrap_or_default(),
                soft_affinity: soft.get(&v).cloned().unwrap_or_else(|| every.clone()),
            }
        })
        .collect()
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

/// A domain with every state flag clear.
fn idle_info() -> DomainInfo {
    DomainInfo {
        domid: 0,
        name: String::new(),
        uuid: Default::default(),
        current_memkb: 0,
        outstanding_memkb: 0,
        vcpu_online: 0,
        running: false,
        blocked: false,
        paused: false,
        shutdown: false,
        dying: false,
        shutdown_reason: None,
        cpu_time_ns: 0,
        ssid_label: None,
        cpupool: None,
    }
}

/// What the record alone says about a domain (no live state).
fn dominfo(r: &DomainRecord) -> DomainInfo {
    DomainInfo {
        domid: r.domid,
        name: r.name.clone(),
        uuid: r.uuid.parse().unwrap_or_default(),
        current_memkb: r.memory_kib,
        vcpu_online: r.vcpus,
        ..idle_info()
    }
}

fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

/// CPU time a process has used (user + system), in ns.
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks / hz * 1e9) as u64
}

/// Facts about the host for `xl info`.
pub fn host_info() -> XlInfo {
    let uts = nix::sys::utsname::uname().ok();
    let s = |f: Option<&std::ffi::OsStr>| {
        f.map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_mib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            / 1024
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware_virt = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    let khz = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |mhz| (mhz * 1000.0) as u32);
    let nr_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    XlInfo {
        host: s(uts.as_ref().map(|u| u.nodename())),
        release: s(uts.as_ref().map(|u| u.release())),
        version: s(uts.as_ref().map(|u| u.version())),
        machine: s(uts.as_ref().map(|u| u.machine())),
        nr_cpus,
        max_cpu_id: nr_cpus.saturating_sub(1),
        nr_nodes: 1,
        cores_per_socket: nr_cpus,
        threads_per_core: 1,
        cpu_khz: khz,
        virt_caps: VirtCaps {
            hvm: true,
            // KVM's two-dimensional paging on VT-x/SVM; PVM shadows.
            hap: hardware_virt,
            shadow: !hardware_virt,
            gnttab_v1: true,
            ..Default::default()
        },
        total_memory: mem_mib("MemTotal:"),
        free_memory: mem_mib("MemAvailable:"),
        free_cpus: 0,
        xen_major: 4,
        xen_minor: 17,
        xen_extra: ".0-kxen".into(),
        xen_caps: "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64".into(),
        xen_scheduler: "kvm".into(),
        xen_pagesize: 4096,
        virt_start: 0xffff_8000_0000_0000,
        xen_changeset: concat!("kxen ", env!("CARGO_PKG_VERSION")).into(),
        xen_commandline: if hardware_virt {
            "kvm".into()
        } else {
            "kvm (pvm)".into()
        },
        cc_compiler: "rustc".into(),
        cc_compile_by: "kxen".into(),
        cc_compile_domain: "kxen".into(),
        cc_compile_date: String::new(),
        build_id: String::new(),
        ..Default::default()
    }
}

/// Remove a stale socket, or refuse if another kxend answers on it.
pub fn claim_socket(path: &Path) -> std::io::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another kxend is serving {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
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
        // PVH domains keep their PV devices.
        let s = spec("name = \"p\"\nkernel = \"/k\"\ndisk = [ \"/a.img,raw,xvda,rw\" ]\n").unwrap();
        assert!(s.virtio.is_empty());
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
