//! What kxl prints: kxend's replies rendered with xl's formats and
//! messages (kxen_toolstack::xl).

use kxen_toolstack::config::{self, DomainConfig};
use kxen_toolstack::protocol::{DomainEntry, Reply};
use kxen_toolstack::xl::{self, ListOptions, VcpuInfo, XlInfo};

/// A parsed config ready for kxend, and the warnings xl would print.
pub struct LoadedConfig {
    pub config: DomainConfig,
    pub warnings: Vec<String>,
}

/// Parse CFG with command-line overrides; on error, xl's report and exit
/// status.
pub fn load_config(path: &str, overrides: &[String]) -> Result<LoadedConfig, (String, i32)> {
    match config::parse_file_with_overrides(path, overrides) {
        Ok((mut config, warnings)) => Ok(LoadedConfig {
            config: {
                absolutize(&mut config);
                config
            },
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
        }),
        Err(e) => Err(xl::config_error_report(&e)),
    }
}

/// kxend runs elsewhere: relative kernel and ramdisk paths are taken from
/// kxl's working directory, where the user wrote them.
fn absolutize(config: &mut DomainConfig) {
    let Ok(cwd) = std::env::current_dir() else {
        return;
    };
    for disk in &mut config.disks {
        absolutize_disk(disk);
    }
    for path in [&mut config.kernel, &mut config.ramdisk]
        .into_iter()
        .flatten()
    {
        // An empty path stays empty: kxend then says there is no kernel,
        // rather than trying to boot the working directory.
        if !path.is_empty() && std::path::Path::new(path.as_str()).is_relative() {
            *path = cwd.join(&*path).display().to_string();
        }
    }
}

/// What starts a line in kxl's own words, as `xl: ` does xl's.
pub const OWN_PREFIX: &str = "kxl: ";

/// A failed `create`, in one line: kxend names the domain and the reason
/// (`domain NAME: cannot read kernel PATH: No such file or directory`).
pub fn create_error_message(reply: &Reply) -> String {
    format!("{OWN_PREFIX}{}", error_message(reply))
}

pub fn error_message(reply: &Reply) -> String {
    if let Some(d) = &reply.unknown_domain {
        return xl::invalid_domain(d);
    }
    reply
        .error
        .clone()
        .unwrap_or_else(|| "operation failed".into())
}

pub fn unknown_domain(domain: &str) -> String {
    xl::invalid_domain(domain)
}

pub fn list(entries: &[DomainEntry], long: bool, verbose: bool) -> String {
    if long {
        let with_config: Vec<(u32, &DomainConfig)> = entries
            .iter()
            .filter_map(|e| e.config.as_ref().map(|c| (e.info.domid, c)))
            .collect();
        return xl::list_long(&with_config);
    }
    let infos: Vec<xl::DomainInfo> = entries.iter().map(|e| e.info.clone()).collect();
    xl::list(
        &infos,
        ListOptions {
            verbose,
            ..Default::default()
        },
    )
}

pub fn info(host: &XlInfo) -> String {
    xl::info(host, false)
}

/// The host's CPUs (configured, as affinity masks count them; kxl's own
/// affinity does not narrow it).
fn host_cpus() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Each vCPU as kxend read it from its host thread; Domain-0 (whose
/// "vCPUs" are the host's CPUs) one per CPU, free to run anywhere.
pub fn vcpu_list(entries: &[DomainEntry]) -> String {
    let nr_cpus = host_cpus();
    let all: Vec<u32> = (0..nr_cpus).collect();
    let mut out = xl::vcpu_list_header();
    for e in entries {
        if let Some(vcpus) = &e.vcpus {
            for v in vcpus {
                out += &xl::vcpu_list_row(&e.info.name, e.info.domid, v, nr_cpus);
            }
            continue;
        }
        let n = e.info.vcpu_online.max(1);
        for v in 0..e.info.vcpu_online {
            let info = VcpuInfo {
                vcpuid: v,
                cpu: v % nr_cpus,
                online: true,
                running: e.info.running,
                blocked: e.info.blocked,
                vcpu_time_ns: e.info.cpu_time_ns / n as u64,
                hard_affinity: all.clone(),
                soft_affinity: all.clone(),
            };
            out += &xl::vcpu_list_row(&e.info.name, e.info.domid, &info, nr_cpus);
        }
    }
    out
}

/// `xl sched-credit`'s table of `entries` (those kxend reports settings
/// for).
pub fn sched_credit(entries: &[DomainEntry]) -> String {
    let mut out = xl::sched_credit_header();
    for e in entries {
        if let Some(p) = &e.sched {
            out += &xl::sched_credit_row(&e.info.name, e.info.domid, p);
        }
    }
    out
}

pub fn uptime(entries: &[DomainEntry], short: bool) -> String {
    if short {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .map(|t| t.tv_sec() as u64 % 86400)
            .unwrap_or(0);
        let now = format!("{:02}:{:02}:{:02}", now / 3600, now / 60 % 60, now % 60);
        return entries
            .iter()
            .map(|e| xl::uptime_short_row(&now, &e.info.name, e.info.domid, e.uptime_s))
            .collect();
    }
    let mut out = xl::uptime_header();
    for e in entries {
        out += &xl::uptime_row(&e.info.name, e.info.domid, e.uptime_s);
    }
    out
}

pub fn top(entries: &[DomainEntry]) -> String {
    list(entries, false, false)
}

/// kxend runs elsewhere: a disk image named relative to kxl's directory
/// becomes absolute.
pub fn absolutize_disk(disk: &mut kxen_toolstack::disk::DiskSpec) {
    let Ok(cwd) = std::env::current_dir() else {
        return;
    };
    if let Some(target) = disk.target.as_mut() {
        if !target.is_empty() && std::path::Path::new(target.as_str()).is_relative() {
            *target = cwd.join(&*target).display().to_string();
        }
    }
}

/// `xl block-list` for one domain, with kxen's backend counters after the
/// table when `stats` is asked for.
pub fn block_list(devices: &[kxen_toolstack::protocol::DeviceEntry], stats: bool) -> String {
    let mut out = xl::block_list_header();
    for d in devices {
        if let Some(b) = &d.block {
            out += &xl::block_list_row(b);
        }
    }
    if stats {
        out += &stats_table(devices, |d| d.block.as_ref().map(|b| b.devid));
    }
    out
}

/// `xl network-list` for one domain, followed by each vif's counters.
pub fn network_list(devices: &[kxen_toolstack::protocol::DeviceEntry]) -> String {
    let mut out = xl::network_list_header();
    for d in devices {
        if let Some(n) = &d.nic {
            out += &xl::network_list_row(n);
        }
    }
    out += &stats_table(devices, |d| d.nic.as_ref().map(|n| n.devid));
    out
}

/// Counters as a table: one row per device, one column per counter name.
fn stats_table(
    devices: &[kxen_toolstack::protocol::DeviceEntry],
    id: impl Fn(&kxen_toolstack::protocol::DeviceEntry) -> Option<u32>,
) -> String {
    let mut names: Vec<&String> = devices.iter().flat_map(|d| d.stats.keys()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let mut out = format!("{:<5}", "Idx");
    for n in &names {
        out += &format!(" {:>12}", n);
    }
    out.push('\n');
    for d in devices {
        let Some(devid) = id(d) else { continue };
        out += &format!("{devid:<5}");
        for n in &names {
            out += &format!(" {:>12}", d.stats.get(*n).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    out
}
