//! `xl info` (xl_info.c: print_info and output_*): the host, hypervisor
//! and toolstack lines, whole or filtered to one key.

use serde::{Deserialize, Serialize};

/// Virtualisation capabilities (the `virt_caps` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtCaps {
    pub pv: bool,
    pub hvm: bool,
    /// Device passthrough (printed as `hvm_directio` and/or `pv_directio`).
    pub directio: bool,
    pub hap: bool,
    pub shadow: bool,
    pub iommu_hap_pt_share: bool,
    pub vmtrace: bool,
    pub vpmu: bool,
    pub gnttab_v1: bool,
    pub gnttab_v2: bool,
}

impl VirtCaps {
    /// The flags as xl prints them, each preceded by a space.
    pub fn flags(&self) -> String {
        let mut s = String::new();
        for (set, name) in [
            (self.pv, " pv"),
            (self.hvm, " hvm"),
            (self.hvm && self.directio, " hvm_directio"),
            (self.pv && self.directio, " pv_directio"),
            (self.hap, " hap"),
            (self.shadow, " shadow"),
            (self.iommu_hap_pt_share, " iommu_hap_pt_share"),
            (self.vmtrace, " vmtrace"),
            (self.vpmu, " vpmu"),
            (self.gnttab_v1, " gnttab-v1"),
            (self.gnttab_v2, " gnttab-v2"),
        ] {
            if set {
                s.push_str(name);
            }
        }
        s
    }
}

/// Everything `xl info` prints. Memory figures are in MiB (xl converts
/// pages); `free_memory` is free minus outstanding claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XlInfo {
    // uname(2)
    pub host: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    // physical host
    pub nr_cpus: u32,
    pub max_cpu_id: u32,
    pub nr_nodes: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub cpu_khz: u32,
    pub hw_caps: [u32; 8],
    pub virt_caps: VirtCaps,
    pub total_memory: u64,
    pub free_memory: u64,
    pub sharing_freed_memory: u64,
    pub sharing_used_memory: u64,
    pub outstanding_claims: u64,
    pub free_cpus: u32,
    // hypervisor
    pub xen_major: u32,
    pub xen_minor: u32,
    /// Such as `.0` or `-unstable` (printed right after the minor number).
    pub xen_extra: String,
    pub xen_caps: String,
    pub xen_scheduler: String,
    pub xen_pagesize: u32,
    pub virt_start: u64,
    pub xen_changeset: String,
    pub xen_commandline: String,
    pub cc_compiler: String,
    pub cc_compile_by: String,
    pub cc_compile_domain: String,
    pub cc_compile_date: String,
    pub build_id: String,
    /// Printed with `xl info -x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xenstore_features: Option<u32>,
}

/// The value xl prints for `xend_config_format`.
pub const XEND_CONFIG_FORMAT: u32 = 4;

fn info_line(key: &str, value: impl std::fmt::Display) -> String {
    format!("{key:<23}: {value}\n")
}

/// The lines of `xl info` (each ending in `\n`); `xenstore` adds the
/// `xenstore_features` line of `xl info -x`.
pub fn info_lines(i: &XlInfo, xenstore: bool) -> Vec<String> {
    let mut v = vec![
        info_line("host", &i.host),
        info_line("release", &i.release),
        info_line("version", &i.version),
        info_line("machine", &i.machine),
        info_line("nr_cpus", i.nr_cpus),
        info_line("max_cpu_id", i.max_cpu_id),
        info_line("nr_nodes", i.nr_nodes),
        info_line("cores_per_socket", i.cores_per_socket),
        info_line("threads_per_core", i.threads_per_core),
        info_line(
            "cpu_mhz",
            format!("{}.{:03}", i.cpu_khz / 1000, i.cpu_khz % 1000),
        ),
        info_line(
            "hw_caps",
            i.hw_caps
                .iter()
                .map(|c| format!("{c:08x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        format!("{:<23}:{}\n", "virt_caps", i.virt_caps.flags()),
        info_line("total_memory", i.total_memory),
        info_line("free_memory", i.free_memory),
        info_line("sharing_freed_memory", i.sharing_freed_memory),
        info_line("sharing_used_memory", i.sharing_used_memory),
        info_line("outstanding_claims", i.outstanding_claims),
        info_line("free_cpus", i.free_cpus),
        info_line("xen_major", i.xen_major),
        info_line("xen_minor", i.xen_minor),
        info_line("xen_extra", &i.xen_extra),
        info_line(
            "xen_version",
            format!("{}.{}{}", i.xen_major, i.xen_minor, i.xen_extra),
        ),
        info_line("xen_caps", &i.xen_caps),
        info_line("xen_scheduler", &i.xen_scheduler),
        info_line("xen_pagesize", i.xen_pagesize),
        info_line(
            "platform_params",
            format!("virt_start=0x{:x}", i.virt_start),
        ),
        info_line("xen_changeset", &i.xen_changeset),
        info_line("xen_commandline", &i.xen_commandline),
        info_line("cc_compiler", &i.cc_compiler),
        info_line("cc_compile_by", &i.cc_compile_by),
        info_line("cc_compile_domain", &i.cc_compile_domain),
        info_line("cc_compile_date", &i.cc_compile_date),
        info_line("build_id", &i.build_id),
    ];
    if xenstore {
        v.push(info_line(
            "xenstore_features",
            format!("0x{:08x}", i.xenstore_features.unwrap_or(0)),
        ));
    }
    v.push(info_line("xend_config_format", XEND_CONFIG_FORMAT));
    v
}

/// `xl info [-x]`.
pub fn info(i: &XlInfo, xenstore: bool) -> String {
    info_lines(i, xenstore).concat()
}

/// `xl info NAME`: the values of the lines whose key starts with `name`
/// (xl matches a prefix), without their keys.
pub fn info_filtered(i: &XlInfo, xenstore: bool, name: &str) -> String {
    info_lines(i, xenstore)
        .iter()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let colon = l.find(':')?;
            l[colon + 1..].strip_prefix(' ')
        })
        .collect()
}
