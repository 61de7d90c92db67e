//! xl's scheduling commands on live domains (`sched-credit`, `vcpu-pin`),
//! xl.cfg's `cpus`/`cpus_soft` at create, and what `vcpu-list` shows: the
//! domain's cgroup and its VMM's vCPU threads, seen from kxend.

use super::*;

impl Daemon {
    /// `xl sched-credit -d DOMAIN -w WEIGHT -c CAP`: libxl's checks, then
    /// the domain's cgroup; the new values go into its record.
    pub(super) fn sched_credit(
        &self,
        domain: &str,
        weight: Option<i64>,
        cap: Option<i64>,
    ) -> Reply {
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
    pub(super) fn vcpu_pin(
        &self,
        domain: &str,
        vcpu: &str,
        hard: &str,
        soft: Option<&str>,
    ) -> Reply {
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
pub(super) fn config_affinity(
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
pub(super) fn pin_config_vcpus(d: &Domain) -> Result<(), String> {
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
pub(super) fn vcpu_infos(d: &Domain, online: u32, paused: bool) -> Vec<VcpuInfo> {
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
