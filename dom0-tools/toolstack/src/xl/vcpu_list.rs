//! `xl vcpu-list` (xl_vcpu.c: vcpulist, print_vcpuinfo): one line per vCPU
//! with its state, time and CPU affinities.

use serde::{Deserialize, Serialize};

use super::list::seconds;

/// One vCPU (libxl_vcpuinfo). Affinities list the physical CPUs allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    pub vcpuid: u32,
    /// The physical CPU it runs (or last ran) on.
    pub cpu: u32,
    pub online: bool,
    pub running: bool,
    pub blocked: bool,
    pub vcpu_time_ns: u64,
    pub hard_affinity: Vec<u32>,
    pub soft_affinity: Vec<u32>,
}

/// The header of `xl vcpu-list`.
pub fn vcpu_list_header() -> String {
    format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} {}\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)"
    )
}

/// A CPU set as xl prints it (print_bitmap): `all` when every one of the
/// `nr_cpus` CPUs is in it, `none` when none is, else ranges: `0-3,6`.
pub fn cpumap_to_string(cpus: &[u32], nr_cpus: u32) -> String {
    let set = |c: u32| cpus.contains(&c);
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut c = 0;
    while c < nr_cpus {
        if set(c) {
            let start = c;
            while c + 1 < nr_cpus && set(c + 1) {
                c += 1;
            }
            runs.push((start, c));
        }
        c += 1;
    }
    match runs.as_slice() {
        [] => "none".to_string(),
        [(0, last)] if *last == nr_cpus - 1 => "all".to_string(),
        _ => runs
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// One line of `xl vcpu-list`; `nr_cpus` is the host's `max_cpu_id + 1`.
pub fn vcpu_list_row(name: &str, domid: u32, v: &VcpuInfo, nr_cpus: u32) -> String {
    let mut s = format!("{name:<32} {domid:>5} {:>5}", v.vcpuid);
    if v.online {
        s.push_str(&format!(
            "{:>5} {:>3}{}- ",
            v.cpu,
            if v.running { 'r' } else { '-' },
            if v.blocked { 'b' } else { '-' },
        ));
    } else {
        s.push_str(&format!("{:>5} {:>3}{}p ", '-', '-', '-'));
    }
    s.push_str(&format!("{:>9.1}  ", seconds(v.vcpu_time_ns)));
    s.push_str(&cpumap_to_string(&v.hard_affinity, nr_cpus));
    s.push_str(" / ");
    s.push_str(&cpumap_to_string(&v.soft_affinity, nr_cpus));
    s.push('\n');
    s
}
