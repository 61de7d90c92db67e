//! A domain's life as kxend runs it: create (checks, VMM launch, attach,
//! devices), the VMM's end through its pidfd and the on_* actions, the
//! re-attach after a kxend restart, shutdown, pause, and waiting for a
//! domain to go.

use super::*;

/// Loads a saved image through a new VMM's control socket (`kxl restore`);
/// returns what the image says of the domain's part of the store.
pub(super) type RestoreLoader<'a> = dyn Fn(&Path) -> Result<Restored, String> + 'a;

/// How a restored domain was stopped for its image, and so what kxend
/// does with its part of the store.
pub(super) enum Restored {
    /// Paused: its own nodes and watches came with it.
    Paused(kxen_xenstore::image::DomainImage),
    /// It suspended itself (Xen's protocol): it reconnects to the store
    /// on resume, and it keeps using the protocol.
    Suspended,
}

impl Daemon {
    /// Create and start a domain; returns its domid.
    pub fn create(
        self: &Arc<Self>,
        config: DomainConfig,
        paused: bool,
    ) -> Result<u32, CreateError> {
        self.create_with(config, paused, None)
    }

    /// [`Self::create`]; `restore`, given the new VMM's control socket,
    /// loads a saved image onto the domain before Dom0 attaches to its
    /// rings (`kxl restore`).
    pub(super) fn create_with(
        self: &Arc<Self>,
        mut config: DomainConfig,
        paused: bool,
        restore: Option<&RestoreLoader<'_>>,
    ) -> Result<u32, CreateError> {
        config
            .fill_defaults()
            .map_err(|e| CreateError::Config(e.to_string()))?;
        // A bootloader picks the kernel from the domain's disk; its copies
        // live until the domain is built (this function's end). The record
        // keeps the config as written, so a restart runs it again.
        let boot_files = match &config.bootloader {
            Some(_) if config.domain_type != DomainType::Hvm => Some(self.run_bootloader(&config)?),
            _ => None,
        };
        let spec = match &boot_files {
            Some(files) => LaunchSpec::from_config(&DomainConfig {
                kernel: Some(files.kernel.clone()),
                ramdisk: files.ramdisk.clone(),
                cmdline: files.cmdline.clone(),
                ..config.clone()
            }),
            None => LaunchSpec::from_config(&config),
        }
        .map_err(CreateError::Config)?;
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
                .and_then(|()| match restore {
                    Some(load) => load(&record.control)
                        .map(Some)
                        .map_err(CreateError::Restore),
                    None => Ok(None),
                })
                .and_then(|saved_store| {
                    Domain::attach(record.clone(), self.store.clone(), ATTACH_LIMIT, false)
                        .map(|d| (d, saved_store))
                        .map_err(|e| vmm_gone_or(&mut child, &vmm_log_path, vmm_log_start, e))
                });
        // kxen-vmm read the kernel and initrd before it opened its control
        // socket: the bootloader's copies are done with (as libxl unlinks
        // them once it has them open).
        let kernel_source = match (&boot_files, &record.config.bootloader) {
            (Some(_), Some(bootloader)) => format!("kernel from bootloader {bootloader}"),
            _ => format!("kernel {}", spec.kernel),
        };
        drop(boot_files);
        let (domain, saved_store) = match attached {
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
        let plugged = if spec.is_hvm() {
            self.attach_virtio(&domain)
        } else {
            self.attach_config_devices(&domain)
                .map_err(|e| e.to_string())
        };
        let ready = plugged
            .map_err(CreateError::Devices)
            .and_then(|()| pin_config_vcpus(&domain).map_err(CreateError::Affinity))
            .and_then(|()| match &saved_store {
                // After the toolstack's nodes and the devices': those stay
                // as written for the new domain.
                Some(Restored::Paused(saved)) => self.restore_store_part(domid, saved),
                Some(Restored::Suspended) => {
                    self.mark_suspend_capable(&domain);
                    Ok(())
                }
                None => Ok(()),
            });
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
            "domain {domid} ({}) created: {} MiB, {} vCPU(s), {kernel_source}",
            spec.name, spec.memory_mib, spec.vcpus
        ));
        self.monitor(domain.clone(), Some(child));
        if !paused {
            domain
                .unpause()
                .map_err(|e| CreateError::Unpause(e.to_string()))?;
        }
        Ok(domid)
    }

    /// Run `config`'s bootloader on its first disk (a PV or PVH domain
    /// with `bootloader =`), logging what it chose or why it failed.
    fn run_bootloader(
        &self,
        config: &DomainConfig,
    ) -> Result<crate::bootloader::BootFiles, CreateError> {
        let log = self
            .state_dir
            .join(format!("logs/bootloader-{}.log", config.name));
        crate::bootloader::run(
            config,
            &self.state_dir.join("bootloader"),
            &log,
            self.bootloader_limit,
        )
        .map_err(|e| {
            self.log(&format!("domain {} not created: {e}", config.name));
            CreateError::Bootloader(e)
        })
    }

    /// The device set of a domain, made on first use.
    pub(super) fn devices_of(&self, domid: u32) -> Arc<DomainDevices> {
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
    pub(super) fn attach_virtio(&self, d: &Domain) -> Result<(), String> {
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
        // A save's or a migration's final pass quiesces them with the
        // domain's other backends.
        self.devices_of(domid)
            .set_virtio_controls(virtio.quiesce_controls());
        self.virtio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, virtio);
        Ok(())
    }

    /// Stop a domain's virtio devices (their TAPs go away).
    pub(super) fn drop_virtio(&self, domid: u32) {
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
    pub(super) fn attach_config_devices(&self, d: &Domain) -> Result<(), DeviceError> {
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

    /// Bring back a restored domain's own nodes and watches (saved with it
    /// when it was paused rather than suspended).
    fn restore_store_part(
        &self,
        domid: u32,
        saved: &kxen_xenstore::image::DomainImage,
    ) -> Result<(), CreateError> {
        let (nodes, watches) = self
            .store
            .xenstored()
            .import_domain(domid, saved)
            .map_err(|e| CreateError::Restore(format!("restoring its xenstore nodes: {e}")))?;
        self.log(&format!(
            "domain {domid}: {nodes} xenstore node(s) and {watches} watch(es) restored from domain {}",
            saved.domid
        ));
        Ok(())
    }

    /// A guest restored from an image it suspended itself for uses Xen's
    /// suspend protocol, but Linux writes `control/feature-suspend` once,
    /// at boot, into the store of the domain it booted in. Write it for the
    /// new domain, as the guest's own node, so that its next save or
    /// migration asks it to suspend again rather than pausing it (which a
    /// guest with PV devices cannot be saved through).
    fn mark_suspend_capable(&self, d: &Domain) {
        let path = format!("/local/domain/{}/control/feature-suspend", d.record.domid);
        self.store.write(&path, b"1");
        self.store
            .set_perms(&path, &[format!("n{}", d.record.domid)]);
    }

    /// The xenstore layout libxl gives a new domain.
    pub(super) fn write_domain_nodes(&self, d: &Domain) {
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
        // As libxl: empty, for a guest that gives a suspend event channel.
        let suspend_channel = format!("{dom}/device/suspend/event-channel");
        s.write(&suspend_channel, b"");
        s.set_perms(&suspend_channel, &rw);
        for v in 0..r.vcpus {
            let path = format!("{dom}/cpu/{v}/availability");
            s.write(&path, b"online");
            s.set_perms(&path, &rw);
        }
    }

    /// Watch a domain's VMM process from the event loop through a pidfd
    /// (readable once the process has ended, whether or not it is our
    /// child); its end is handled on the domain pool.
    pub(super) fn monitor(
        self: &Arc<Self>,
        domain: Arc<Domain>,
        child: Option<std::process::Child>,
    ) {
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
    pub(super) fn vmm_ended(
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
    pub(super) fn vmm_killed(&self, domain: &Domain, signal: i32) {
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
    pub(super) fn domain_died(self: &Arc<Self>, domid: u32, wait_code: Option<i32>) {
        let Some(record) = self
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domid)
            .map(|d| d.record.clone())
        else {
            return;
        };
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
        let cfg = &record.config;
        let (key, action) = match reason {
            0 => ("on_poweroff", cfg.on_poweroff),
            1 => ("on_reboot", cfg.on_reboot),
            4 => ("on_watchdog", cfg.on_watchdog),
            5 => ("on_soft_reset", cfg.on_soft_reset),
            _ => ("on_crash", cfg.on_crash),
        };
        // Out of the running domains and, if it is kept, into the
        // preserved ones in one step (both locks, in their usual order):
        // `kxl list` in between must not find it in neither.
        let preserved = match action {
            _ if reason == u32::MAX => None,
            Action::Preserve => Some(record.clone()),
            Action::RenameRestart => {
                let mut old = record.clone();
                old.name = format!("{}--incoming", record.name);
                Some(old)
            }
            _ => None,
        };
        // The dmesg line is written as the domain leaves the list, so a
        // `kxl list` that no longer shows it is never ahead of `kxl dmesg`.
        let ended = if reason == u32::MAX {
            format!("domain {domid} ({}) destroyed", record.name)
        } else {
            format!(
                "domain {domid} ({}) {why}; {key} = {}",
                record.name,
                action.as_str()
            )
        };
        let domain = {
            let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
            let Some(domain) = domains.remove(&domid) else {
                return;
            };
            if code == 7 || code == 1 {
                error!(domid, "domain {} crashed: {why}", record.name);
            }
            self.log(&ended);
            if let Some(kept) = preserved {
                self.preserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        domid,
                        Preserved {
                            record: kept,
                            reason,
                        },
                    );
            }
            domain
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
        self.store.release(domid);
        self.store.rm(&format!("/local/domain/{domid}"));
        self.store.rm(&format!("/vm/{}", record.uuid));
        let _ = std::fs::remove_file(self.record_path(domid));
        let _ = std::fs::remove_file(&record.exit_file);
        let _ = std::fs::remove_file(&record.control);
        crate::jail::cleanup(domid);
        if reason == u32::MAX {
            return;
        }
        match action {
            // kxen writes no core dumps: the coredump-* actions behave as
            // their plain forms. Preserved domains were kept above.
            Action::Destroy | Action::CoredumpDestroy | Action::Preserve => {}
            Action::Restart
            | Action::RenameRestart
            | Action::CoredumpRestart
            | Action::SoftReset => match self.create(record.config.clone(), false) {
                Ok(new) => self.log(&format!("domain {} restarted as {new}", record.name)),
                Err(e) => self.log(&format!("restarting {} failed: {e}", record.name)),
            },
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

    pub(super) fn control_shutdown(&self, domain: &str, what: &str) -> Reply {
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

    pub(super) fn pause(&self, domain: &str, pause: bool) -> Reply {
        match self.resolve(domain).and_then(|id| self.live(id)) {
            None => Reply::unknown_domain(domain),
            Some(d) => {
                if !pause {
                    self.resume_quiesced_backends(d.record.domid);
                    // A guest that suspended itself for a migration whose
                    // handshake then broke resumes in place: its suspend
                    // is cancelled, as xc_domain_resume does.
                    if d.info().is_ok_and(|i| i.suspended) {
                        return match self.resume_after_image(
                            &d,
                            super::suspend::Stopped::Suspended,
                            false,
                        ) {
                            Ok(()) => Reply::ok(),
                            Err(e) => Reply::error(e),
                        };
                    }
                }
                match if pause { d.pause() } else { d.unpause() } {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
        }
    }

    /// Before a user's unpause: backends a migration left quiesced (its
    /// handshake broke after "go", so the domain was kept paused; the
    /// user, having checked the destination, chose this copy) serve
    /// again, before the guest runs and posts to their rings.
    fn resume_quiesced_backends(&self, domid: u32) {
        let devices = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domid)
            .cloned();
        if let Some(devices) = devices.filter(|d| d.is_quiesced()) {
            devices.resume();
            self.log(&format!(
                "domain {domid}: backends quiesced by a migration serve again before the unpause"
            ));
        }
    }

    /// Wait until `domid` is no longer running.
    pub(super) fn wait_gone(&self, domid: u32, limit: Duration) -> bool {
        let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let (_domains, waited) = self
            .domain_left
            .wait_timeout_while(domains, limit, |d| d.contains_key(&domid))
            .unwrap_or_else(|e| e.into_inner());
        !waited.timed_out()
    }
}

/// A descriptor that becomes readable when process `pid` ends.
pub(super) fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
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
pub(super) fn await_control_socket(
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
pub(super) fn vmm_gone_or(
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
