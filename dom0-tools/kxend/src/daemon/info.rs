//! What `list`, `info` and `vcpu-list` show: domain entries from records
//! and live state, Dom0's own entry, and the host's facts.

use super::*;

impl Daemon {
    pub(super) fn entry_of(&self, d: &Domain) -> DomainEntry {
        let info = d.info().ok();
        let memory_kib = info.as_ref().map_or(d.record.memory_kib, |i| i.memory_kib);
        // A guest that suspended itself waits, paused, for the toolstack:
        // xl shows it shut down for "suspend" ('s').
        let suspended = info.as_ref().is_some_and(|i| i.suspended);
        let paused = d.paused.load(std::sync::atomic::Ordering::SeqCst) || suspended;
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
                shutdown: suspended,
                shutdown_reason: suspended.then_some(kxen_toolstack::xl::ShutdownReason::Suspend),
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

    pub(super) fn dom0_entry(&self) -> DomainEntry {
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

    pub(super) fn list(&self) -> Vec<DomainEntry> {
        let mut out = vec![self.dom0_entry()];
        // One snapshot of both maps (locked in their usual order), so a
        // domain moving from running to preserved is listed once.
        let (domains, preserved): (Vec<Arc<Domain>>, Vec<Preserved>) = {
            let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
            let preserved = self.preserved.lock().unwrap_or_else(|e| e.into_inner());
            (
                domains.values().cloned().collect(),
                preserved.values().cloned().collect(),
            )
        };
        out.extend(domains.iter().map(|d| self.entry_of(d)));
        for p in &preserved {
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
}

/// A domain with every state flag clear.
pub(super) fn idle_info() -> DomainInfo {
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
pub(super) fn dominfo(r: &DomainRecord) -> DomainInfo {
    DomainInfo {
        domid: r.domid,
        name: r.name.clone(),
        uuid: r.uuid.parse().unwrap_or_default(),
        current_memkb: r.memory_kib,
        vcpu_online: r.vcpus,
        ..idle_info()
    }
}

/// CPU time a process has used (user + system), in ns.
pub(super) fn process_cpu_ns(pid: u32) -> u64 {
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
            // Classic 64-bit PV (type = "pv") beside PVH/HVM.
            pv: true,
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
        // What XENVER_capabilities answers every guest: Xen's order, the
        // PV ABI first, then HVM's (no xen-3.0-x86_32p: 64-bit PV only).
        xen_caps: xen_abi::version::XEN_CAPABILITIES.into(),
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
