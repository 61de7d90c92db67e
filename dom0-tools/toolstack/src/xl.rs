//! xl's output formats and messages, so that `kxl` prints what `xl` prints.
//!
//! Everything here is a pure function over plain structs that kxend and kxl
//! fill in; nothing talks to a domain. Each item says which part of xl
//! (tools/xl in the Xen tree) it mirrors. Functions that produce output
//! lines end them with `\n`. Messages are what kxl passes to `eprintln!`:
//! without xl's final newline, but ending in `\n` where xl adds an empty
//! line after the message.

use serde::{Deserialize, Serialize};

use crate::{
    config::{ConfigError, DomainConfig, DomainType, Uuid},
    disk::DiskSpec,
    vif::VifSpec,
};

// ===========================================================================
// Exit statuses

/// Success.
pub const EXIT_SUCCESS: i32 = 0;
/// Most failures (`EXIT_FAILURE`).
pub const EXIT_FAILURE: i32 = 1;
/// Bad command line: missing arguments or an unknown option.
pub const EXIT_USAGE: i32 = 2;
/// `xl create` when the config file cannot be read (it returns
/// `-ERROR_FAIL`).
pub const EXIT_CREATE_READ_FAILED: i32 = 3;

/// libxl's `ERROR_INVAL`, which xl prints in "invalid domain identifier".
pub const ERROR_INVAL: i32 = -6;
/// libxl's `ERROR_FAIL`.
pub const ERROR_FAIL: i32 = -3;
/// libxl's `ERROR_DOMAIN_NOTFOUND`.
pub const ERROR_DOMAIN_NOTFOUND: i32 = -21;

// ===========================================================================
// xl list (xl_info.c: list_domains, list_domains_details)

/// Why a domain shut down (libxl_shutdown_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    Unknown,
}

impl ShutdownReason {
    /// The numeric code (SHUTDOWN_* in Xen's sched.h; -1 for unknown).
    pub fn code(self) -> i32 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Suspend => 2,
            ShutdownReason::Crash => 3,
            ShutdownReason::Watchdog => 4,
            ShutdownReason::SoftReset => 5,
            ShutdownReason::Unknown => -1,
        }
    }

    pub fn from_code(code: i32) -> ShutdownReason {
        match code {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            _ => ShutdownReason::Unknown,
        }
    }

    /// The letter in the fifth state column of `xl list`: `-` poweroff,
    /// `r` reboot, `s` suspend, `c` crash, `w` watchdog, `S` soft reset,
    /// `?` anything else.
    pub fn letter(self) -> char {
        match self {
            ShutdownReason::Poweroff => '-',
            ShutdownReason::Reboot => 'r',
            ShutdownReason::Suspend => 's',
            ShutdownReason::Crash => 'c',
            ShutdownReason::Watchdog => 'w',
            ShutdownReason::SoftReset => 'S',
            ShutdownReason::Unknown => '?',
        }
    }
}

/// What `xl list` shows about one domain (libxl_dominfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub domid: u32,
    pub name: String,
    pub uuid: Uuid,
    /// Memory the domain has now, in KiB.
    pub current_memkb: u64,
    /// Memory claimed but not yet allocated, in KiB.
    #[serde(default)]
    pub outstanding_memkb: u64,
    /// Online vCPUs.
    pub vcpu_online: u32,
    /// A vCPU is running on a physical CPU.
    pub running: bool,
    /// All vCPUs are blocked (waiting for an event).
    pub blocked: bool,
    pub paused: bool,
    /// The domain has shut down (see `shutdown_reason`).
    pub shutdown: bool,
    /// The domain is being destroyed.
    pub dying: bool,
    /// Meaningful when `shutdown` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_reason: Option<ShutdownReason>,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// XSM security label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssid_label: Option<String>,
    /// CPU pool name (`xl list -c`); Xen's default pool is `Pool-0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpupool: Option<String>,
}

impl DomainInfo {
    /// The six state letters: running, blocked, paused, shutdown, shutdown
    /// reason, dying; `-` where a flag is clear.
    pub fn state(&self) -> String {
        let reason = if self.shutdown {
            self.shutdown_reason.unwrap_or(ShutdownReason::Unknown)
        } else {
            ShutdownReason::Poweroff
        };
        let flag = |set: bool, c: char| if set { c } else { '-' };
        [
            flag(self.running, 'r'),
            flag(self.blocked, 'b'),
            flag(self.paused, 'p'),
            flag(self.shutdown, 's'),
            reason.letter(),
            flag(self.dying, 'd'),
        ]
        .iter()
        .collect()
    }

    /// The shutdown reason code `xl list -v` prints (0 when running).
    fn reason_code(&self) -> i32 {
        if self.shutdown {
            self.shutdown_reason
                .unwrap_or(ShutdownReason::Unknown)
                .code()
        } else {
            0
        }
    }
}

/// `xl list` options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-v`: UUID, shutdown reason code and security label.
    pub verbose: bool,
    /// `-Z`: security label.
    pub context: bool,
    /// `-c`: CPU pool.
    pub cpupool: bool,
}

/// The header line of `xl list`.
pub fn list_header(opts: ListOptions) -> String {
    let mut s =
        String::from("Name                                        ID   Mem VCPUs\tState\tTime(s)");
    if opts.verbose {
        s.push_str("   UUID                            Reason-Code\tSecurity Label");
    }
    if opts.context && !opts.verbose {
        s.push_str("   Security Label");
    }
    if opts.cpupool {
        s.push_str("         Cpupool");
    }
    s.push('\n');
    s
}

/// C's `(float)ns / 1e9`: xl narrows the time to a float before dividing.
fn seconds(ns: u64) -> f64 {
    f64::from(ns as f32) / 1e9
}

/// One line of `xl list`.
pub fn list_row(d: &DomainInfo, opts: ListOptions) -> String {
    let mut s = format!(
        "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
        d.name,
        d.domid,
        (d.current_memkb + d.outstanding_memkb) / 1024,
        d.vcpu_online,
        d.state(),
        seconds(d.cpu_time_ns),
    );
    if opts.verbose {
        s.push_str(&format!(" {}", d.uuid));
        if d.shutdown {
            s.push_str(&format!(" {:>8x}", d.reason_code()));
        } else {
            s.push_str(&format!(" {:>8}", "-"));
        }
    }
    if opts.verbose || opts.context {
        s.push_str(&format!(" {:>16}", d.ssid_label.as_deref().unwrap_or("-")));
    }
    if opts.cpupool {
        s.push_str(&format!("{:>16}", d.cpupool.as_deref().unwrap_or("Pool-0")));
    }
    s.push('\n');
    s
}

/// The whole `xl list` output, domains in domid order (Domain-0 first).
pub fn list(domains: &[DomainInfo], opts: ListOptions) -> String {
    let mut sorted: Vec<&DomainInfo> = domains.iter().collect();
    sorted.sort_by_key(|d| d.domid);
    let mut s = list_header(opts);
    for d in sorted {
        s.push_str(&list_row(d, opts));
    }
    s
}

/// `xl list -l`: a JSON array with one `{"domid": .., "config": {..}}`
/// object per domain, `config` in libxl_domain_config's shape (see
/// [`libxl_domain_config_json`]). Domains without a stored configuration
/// (Domain-0) are simply not passed in, as xl skips them.
pub fn list_long(entries: &[(u32, &DomainConfig)]) -> String {
    let array = entries
        .iter()
        .map(|(domid, cfg)| {
            let mut o = Obj::default();
            o.put("domid", domid);
            o.obj("config", libxl_config(cfg));
            Json::Obj(o)
        })
        .collect();
    pretty(&Json::Arr(array))
}

/// `xl create -n` / `xl -N create`: the configuration as libxl JSON.
pub fn dryrun_json(cfg: &DomainConfig) -> String {
    libxl_domain_config_json(cfg)
}

/// A [`DomainConfig`] as pretty-printed JSON in the shape of libxl's
/// `libxl_domain_config` (`c_info`, `b_info` with `type.<type>`, `disks`,
/// `nics`, `on_*`, in libxl's key order), leaving out, as libxl does, what
/// is at its default. Sizes are in KiB there.
pub fn libxl_domain_config_json(cfg: &DomainConfig) -> String {
    pretty(&Json::Obj(libxl_config(cfg)))
}

/// JSON built in a fixed key order (serde_json's own map sorts its keys).
enum Json {
    Leaf(serde_json::Value),
    Obj(Obj),
    Arr(Vec<Json>),
}

#[derive(Default)]
struct Obj(Vec<(String, Json)>);

impl Obj {
    fn put(&mut self, key: &str, v: impl Serialize) {
        let v = serde_json::to_value(v).expect("plain values always serialize");
        self.0.push((key.to_string(), Json::Leaf(v)));
    }

    fn put_opt<T: Serialize>(&mut self, key: &str, v: Option<T>) {
        if let Some(v) = v {
            self.put(key, v);
        }
    }

    fn obj(&mut self, key: &str, o: Obj) {
        self.0.push((key.to_string(), Json::Obj(o)));
    }

    fn arr(&mut self, key: &str, a: Vec<Json>) {
        self.0.push((key.to_string(), Json::Arr(a)));
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Leaf(v) => v.serialize(s),
            Json::Obj(o) => {
                let mut m = s.serialize_map(Some(o.0.len()))?;
                for (k, v) in &o.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Json::Arr(a) => {
                let mut q = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    q.serialize_element(v)?;
                }
                q.end()
            }
        }
    }
}

/// Pretty-printed as libxl's JSON generator lays it out (four-space
/// indent), with a final newline.
fn pretty(j: &Json) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    j.serialize(&mut ser).expect("JSON values always serialize");
    let mut s = String::from_utf8(out).expect("serde_json writes UTF-8");
    s.push('\n');
    s
}

/// `xl -N block-attach DOMAIN SPEC...`: the device as libxl JSON, after
/// `disk: ` (xl_block.c).
pub fn block_attach_dryrun(disk: &DiskSpec) -> String {
    format!("disk: {}", pretty(&libxl_disk(disk)))
}

/// `xl -N network-attach DOMAIN SETTING...`: the device as libxl JSON,
/// after `vif: ` (xl_nic.c).
pub fn network_attach_dryrun(vif: &VifSpec) -> String {
    format!("vif: {}", pretty(&libxl_nic(vif)))
}

/// libxl's JSON for a defbool.
fn defbool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn libxl_disk(d: &DiskSpec) -> Json {
    let mut m = Obj::default();
    m.put_opt("backend_domname", d.backend.as_deref());
    m.put_opt("pdev_path", d.target.as_deref());
    m.put("vdev", &d.vdev);
    m.put_opt("backend", d.backendtype.map(|b| b.as_str()));
    m.put("format", d.format.as_str());
    m.put_opt("script", d.script.as_deref());
    if d.removable {
        m.put("removable", 1);
    }
    if d.readwrite {
        m.put("readwrite", 1);
    }
    if d.is_cdrom {
        m.put("is_cdrom", 1);
    }
    if d.direct_io_safe {
        m.put("direct_io_safe", true);
    }
    m.put_opt("discard_enable", d.discard.map(defbool));
    m.put_opt("specification", d.specification.map(|s| s.as_str()));
    m.put_opt("colo_enable", d.colo.map(defbool));
    m.put_opt("colo_host", d.colo_host.as_deref());
    m.put_opt("colo_port", d.colo_port);
    m.put_opt("colo_export", d.colo_export.as_deref());
    m.put_opt("active_disk", d.active_disk.as_deref());
    m.put_opt("hidden_disk", d.hidden_disk.as_deref());
    m.put_opt("trusted", d.trusted.map(defbool));
    m.put_opt("grant_usage", d.grant_usage.map(defbool));
    Json::Obj(m)
}

fn libxl_nic(v: &VifSpec) -> Json {
    let mut m = Obj::default();
    m.put_opt("backend_domname", v.backend.as_deref());
    m.put_opt("devid", v.devid);
    m.put_opt("mtu", v.mtu.filter(|&m| m != 0));
    m.put_opt("vlan", v.vlan.as_deref());
    m.put_opt("model", v.model.as_deref());
    m.put_opt("mac", v.mac.map(|m| m.to_string()));
    m.put_opt("ip", v.ip.as_deref());
    m.put_opt("bridge", v.bridge.as_deref());
    m.put_opt("ifname", v.vifname.as_deref());
    if v.script.is_some() {
        m.put("script", v.script_path());
    }
    m.put_opt(
        "nictype",
        v.nictype.map(|t| match t {
            crate::vif::NicType::Vif => "vif",
            crate::vif::NicType::Ioemu => "vif_ioemu",
        }),
    );
    if let Some(r) = v.rate {
        m.put("rate_bytes_per_interval", r.bytes_per_interval);
        m.put("rate_interval_usecs", r.interval_usecs);
    }
    m.put_opt("gatewaydev", v.gatewaydev.as_deref());
    for (k, val) in &v.colo {
        let key = if k == "forwarddev" {
            "coloft_forwarddev"
        } else {
            k.as_str()
        };
        m.put(key, val);
    }
    m.put_opt("trusted", v.trusted.map(defbool));
    Json::Obj(m)
}

fn libxl_config(cfg: &DomainConfig) -> Obj {
    let mut c_info = Obj::default();
    c_info.put("type", cfg.domain_type.as_str());
    c_info.put("name", &cfg.name);
    c_info.put_opt("uuid", cfg.uuid.map(|u| u.to_string()));
    c_info.put("run_hotplug_scripts", "True");

    let mut b_info = Obj::default();
    b_info.put("max_vcpus", cfg.maxvcpus);
    b_info.put("avail_vcpus", (0..cfg.vcpus).collect::<Vec<_>>());
    b_info.put("max_memkb", cfg.maxmem_kib());
    b_info.put("target_memkb", cfg.memory_kib());
    if cfg.nomigrate {
        b_info.put("disable_migrate", "True");
    }
    b_info.put_opt("max_grant_frames", cfg.max_grant_frames);
    b_info.put_opt("max_maptrack_frames", cfg.max_maptrack_frames);
    let mut sched = Obj::default();
    sched.put_opt("weight", cfg.cpu_weight);
    sched.put_opt("cap", cfg.cap);
    b_info.obj("sched_params", sched);
    b_info.put_opt("event_channels", cfg.max_event_channels);
    b_info.put_opt("kernel", cfg.kernel.as_deref());
    b_info.put_opt("cmdline", cfg.cmdline.as_deref());
    b_info.put_opt("ramdisk", cfg.ramdisk.as_deref());
    b_info.put_opt("bootloader", cfg.bootloader.as_deref());
    if !cfg.bootloader_args.is_empty() {
        b_info.put("bootloader_args", &cfg.bootloader_args);
    }
    let mut by_type = Obj::default();
    if cfg.domain_type == DomainType::Hvm && !cfg.serial.is_empty() {
        by_type.put("serial_list", &cfg.serial);
    }
    b_info.obj(&format!("type.{}", cfg.domain_type.as_str()), by_type);

    let mut top = Obj::default();
    top.obj("c_info", c_info);
    top.obj("b_info", b_info);
    if !cfg.disks.is_empty() {
        top.arr("disks", cfg.disks.iter().map(libxl_disk).collect());
    }
    if !cfg.vifs.is_empty() {
        top.arr("nics", cfg.vifs.iter().map(libxl_nic).collect());
    }
    top.put("on_poweroff", cfg.on_poweroff.libxl_name());
    top.put("on_reboot", cfg.on_reboot.libxl_name());
    top.put("on_watchdog", cfg.on_watchdog.libxl_name());
    top.put("on_crash", cfg.on_crash.libxl_name());
    top.put("on_soft_reset", cfg.on_soft_reset.libxl_name());
    top
}

/// `xl vm-list` (xl_info.c: list_vm): header.
pub fn vm_list_header() -> String {
    "UUID                                  ID    name\n".to_string()
}

/// `xl vm-list`: one guest (Domain-0 is not listed).
pub fn vm_list_row(uuid: &Uuid, domid: u32, name: &str) -> String {
    format!("{uuid}  {domid}    {name:<30}\n")
}

// ===========================================================================
// xl info (xl_info.c: print_info and output_*)

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

// ===========================================================================
// xl vcpu-list (xl_vcpu.c: vcpulist, print_vcpuinfo)

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

// ===========================================================================
// xl uptime (xl_info.c: print_uptime, uptime_to_string)

/// Uptime as xl writes it: `2:03:04`, `1 day,  2:03:04`,
/// `3 days, 12:00:00`; `short` drops the seconds (`xl uptime -s`).
pub fn uptime_to_string(secs: u64, short: bool) -> String {
    let day = secs / 86400;
    let hour = secs % 86400 / 3600;
    let min = secs % 3600 / 60;
    let sec = secs % 60;
    let days = match day {
        0 => String::new(),
        1 => "1 day, ".to_string(),
        d => format!("{d} days, "),
    };
    if short {
        format!("{days}{hour:>2}:{min:02}")
    } else {
        format!("{days}{hour:>2}:{min:02}:{sec:02}")
    }
}

/// The header of `xl uptime`.
pub fn uptime_header() -> String {
    format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime")
}

/// One line of `xl uptime`.
pub fn uptime_row(name: &str, domid: u32, secs: u64) -> String {
    format!("{name:<33} {domid:>4} {}\n", uptime_to_string(secs, false))
}

/// One line of `xl uptime -s`; `now` is the local time as `HH:MM:SS`.
pub fn uptime_short_row(now: &str, name: &str, domid: u32, secs: u64) -> String {
    format!(
        " {now} up {}, {name} ({domid})\n",
        uptime_to_string(secs, true)
    )
}

// ===========================================================================
// Device lists (xl_block.c, xl_nic.c)

/// The header of `xl block-list`.
pub fn block_list_header() -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )
}

/// One virtual block device as `xl block-list` shows it (libxl_diskinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub devid: u32,
    pub backend_id: u32,
    pub frontend_id: u32,
    /// XenbusState.
    pub state: i32,
    pub evtch: i32,
    pub rref: i32,
    /// Backend xenstore path.
    pub backend: String,
}

/// One line of `xl block-list`.
pub fn block_list_row(b: &BlockInfo) -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
        b.devid, b.backend_id, b.frontend_id, b.state, b.evtch, b.rref, b.backend
    )
}

/// The header of `xl network-list`.
pub fn network_list_header() -> String {
    format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}\n",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    )
}

/// One network device as `xl network-list` shows it (libxl_nicinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub devid: u32,
    pub backend_id: u32,
    pub mac: crate::vif::MacAddr,
    pub state: i32,
    pub evtch: i32,
    pub rref_tx: i32,
    pub rref_rx: i32,
    pub backend: String,
}

/// One line of `xl network-list`.
pub fn network_list_row(n: &NicInfo) -> String {
    format!(
        "{:<3} {:<2} {}{:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}\n",
        n.devid, n.backend_id, n.mac, n.devid, n.state, n.evtch, n.rref_tx, n.rref_rx, n.backend
    )
}

// ===========================================================================
// Small outputs

/// `xl domid NAME`.
pub fn domid_output(domid: u32) -> String {
    format!("{domid}\n")
}

/// `xl domname ID`.
pub fn domname_output(name: &str) -> String {
    format!("{name}\n")
}

/// `xl mem-set`/`mem-max` sizes (xl_parse.c: parse_mem_size_kb): a number
/// with an optional unit `b`, `k`, `m` (the default), `g` or `t`, in either
/// case; the result in KiB. `None` for anything else.
pub fn parse_mem_size_kb(mem: &str) -> Option<u64> {
    let digits_end = {
        let b = mem.as_bytes();
        let mut i = 0;
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') {
            i += 1;
        }
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        i
    };
    let n: i64 = mem[..digits_end].trim_start().parse().ok()?;
    if n < 0 {
        return None;
    }
    let n = n as u64;
    let unit = &mem[digits_end..];
    if unit.len() > 1 {
        return None;
    }
    let kb = match unit.to_ascii_lowercase().as_str() {
        "t" => n.checked_mul(1 << 30)?,
        "g" => n.checked_mul(1 << 20)?,
        "" | "m" => n.checked_mul(1 << 10)?,
        "k" => n,
        "b" => n >> 10,
        _ => return None,
    };
    Some(kb)
}

// ===========================================================================
// Messages

/// `xl create` prints this on stderr before parsing (xl_vmcontrol.c:
/// create_domain), unless `-q`.
pub fn parsing_config_from(source: &str) -> String {
    format!("Parsing config from {source}")
}

/// After a config syntax error xl prints this and exits 1 (xl_parse.c:
/// parse_config_data; the text is `strerror(EINVAL)`).
pub const FAILED_TO_PARSE_CONFIG: &str = "Failed to parse config: Invalid argument";

/// Printed after a syntax error when the file looks like Python
/// (libxlu_cfg.c).
pub const PYTHON_CONFIG_WARNING: &str =
    "warning: Config file looks like it contains Python code.\n\
warning:  Arbitrary Python is no longer supported.\n\
warning:  See https://wiki.xen.org/wiki/PythonInXlConfig";

/// Everything kxl should print (stderr) for a config error from `xl
/// create`, and the exit status xl uses.
pub fn config_error_report(err: &ConfigError) -> (String, i32) {
    match err {
        ConfigError::Read { .. } => (err.to_string(), EXIT_CREATE_READ_FAILED),
        ConfigError::Syntax { likely_python, .. } => {
            let mut s = err.to_string();
            if *likely_python {
                s.push('\n');
                s.push_str(PYTHON_CONFIG_WARNING);
            }
            s.push('\n');
            s.push_str(FAILED_TO_PARSE_CONFIG);
            (s, EXIT_FAILURE)
        }
        _ => (err.to_string(), EXIT_FAILURE),
    }
}

/// A domain name or id that matches no domain (xl_utils.c: find_domain;
/// libxl answers `ERROR_INVAL` for an unknown name). xl exits 1.
/// `xl destroy nosuch` prints `nosuch is an invalid domain identifier (rc=-6)`.
pub fn invalid_domain(qualifier: &str) -> String {
    format!("{qualifier} is an invalid domain identifier (rc={ERROR_INVAL})")
}

/// `xl block-list`/`xl block-attach` with a bad domain (xl_block.c), which
/// omit the rc.
pub fn invalid_domain_no_rc(qualifier: &str) -> String {
    format!("{qualifier} is an invalid domain identifier")
}

/// `xl list ID` for a numeric id that is not a domain (xl_info.c:
/// main_list); exit 1.
pub fn domain_does_not_exist(qualifier: &str) -> String {
    format!("Error: Domain '{qualifier}' does not exist.")
}

/// `xl domid NAME` for an unknown name (xl_info.c: main_domid); exit 1.
pub fn cant_get_domid(name: &str) -> String {
    format!("Can't get domid of domain name '{name}', maybe this domain does not exist.")
}

/// `xl domname ID` for an unknown id (xl_info.c: main_domname); exit 1.
pub fn cant_get_domname(domid: u32) -> String {
    format!("Can't get domain name of domain id '{domid}', maybe this domain does not exist.")
}

/// `xl domname X` when X has no digits (xl_info.c: main_domname; xl adds
/// an empty line); exit 1.
pub const INVALID_DOMAIN_ID: &str = "Invalid domain id.\n";

/// `xl destroy 0` without `-f` (xl_vmcontrol.c: destroy_domain); exit 1.
pub const NOT_DESTROYING_DOM0: &str = "Not destroying domain 0; use -f to force.\n\
This can only be done when using a disaggregated hardware domain and toolstack.\n";

/// A failed libxl operation, e.g. `destroy failed (rc=-21)`
/// (xl_vmcontrol.c); `what` is `destroy`, `shutdown`, `reboot`, ...
pub fn op_failed(what: &str, rc: i32) -> String {
    format!("{what} failed (rc={rc})")
}

/// `xl shutdown` (xl_vmcontrol.c: shutdown_domain), before asking.
pub fn shutting_down(domid: u32) -> String {
    format!("Shutting down domain {domid}")
}

/// `xl reboot` (xl_vmcontrol.c: reboot_domain), before asking.
pub fn rebooting(domid: u32) -> String {
    format!("Rebooting domain {domid}")
}

/// `xl shutdown`/`reboot` with neither `-a` nor a domain; exit 1 (xl adds
/// an empty line).
pub const SPECIFY_ALL_OR_DOMAIN: &str = "You must specify -a or a domain id.\n";

/// `xl shutdown`/`reboot` of a guest without PV drivers and without `-F`
/// (xl_vmcontrol.c); `reboot` selects the wording.
pub fn no_pv_control(reboot: bool) -> String {
    let (what, event) = if reboot {
        ("reboot", "reset")
    } else {
        ("shutdown", "power")
    };
    format!(
        "PV control interface not available: external graceful {what} not possible.\n\
         Use \"-F\" to fallback to ACPI {event} event."
    )
}

/// `xl mem-set`/`mem-max` with a size [`parse_mem_size_kb`] rejects
/// (xl_mem.c); exit 1.
pub fn invalid_memory_size(mem: &str) -> String {
    format!("invalid memory size: {mem}")
}

/// `xl mem-set` failure (xl_mem.c: set_memory_target); exit 1.
pub fn cannot_set_memory_target(domid: u32, mem: &str) -> String {
    format!("cannot set domid {domid} dynamic max memory to : {mem}")
}

/// `xl mem-max` failure (xl_mem.c: set_memory_max); exit 1.
pub fn cannot_set_memory_max(domid: u32, mem: &str) -> String {
    format!("cannot set domid {domid} static max memory to : {mem}")
}

/// `xl rename` failure (xl_misc.c); exit 1.
pub fn cant_rename(domain: &str) -> String {
    format!("Can't rename domain '{domain}'.")
}

/// `xl console` failure (xl_console.c); exit 1.
pub const UNABLE_TO_ATTACH_CONSOLE: &str = "Unable to attach console";

/// `xl network-detach` with a device that is not there (xl_nic.c); exit 1.
pub fn unknown_device(dev: &str) -> String {
    format!("Unknown device {dev}.")
}

/// `xl block-detach` with a device that is not there (xl_block.c); exit 1.
pub fn device_not_connected(dev: &str) -> String {
    format!("Error: Device {dev} not connected.")
}

/// An unknown subcommand (xl.c: main); exit 1.
pub const COMMAND_NOT_IMPLEMENTED: &str = "command not implemented";

/// An unknown option before the subcommand (xl.c: main); exit 1.
pub const UNKNOWN_GLOBAL_OPTION: &str = "unknown global option";

/// A subcommand option that does not exist (xl_utils.c: def_getopt); exit
/// [`EXIT_USAGE`].
pub fn option_not_supported(opt: char) -> String {
    format!("option `{opt}' not supported.")
}

/// Too few arguments (xl_utils.c: def_getopt): this line, an empty line,
/// then [`help`] for the command; exit [`EXIT_USAGE`].
pub fn requires_arguments(command: &str, n: usize) -> String {
    format!(
        "'xl {command}' requires at least {n} argument{}.\n",
        if n > 1 { "s" } else { "" }
    )
}

/// `xl -N CMD` for a command without a dry-run mode (xl.c); exit 1.
pub const NO_DRYRUN: &str = "command does not implement -N (dryrun) option";

// ===========================================================================
// Commands and help (xl_cmdtable.c, xl.c: help)

/// One subcommand, as xl's command table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdSpec {
    pub name: &'static str,
    /// Supports the global `-N` (dry run).
    pub can_dryrun: bool,
    /// Changes state, so the global `-f` applies.
    pub modifies: bool,
    pub desc: &'static str,
    pub usage: &'static str,
    pub options: Option<&'static str>,
}

const fn cmd(
    name: &'static str,
    can_dryrun: bool,
    modifies: bool,
    desc: &'static str,
    usage: &'static str,
    options: Option<&'static str>,
) -> CmdSpec {
    CmdSpec {
        name,
        can_dryrun,
        modifies,
        desc,
        usage,
        options,
    }
}

/// The subcommands kxl offers, in xl's order, with xl's synopses.
pub const COMMANDS: &[CmdSpec] = &[
    cmd(
        "create",
        true,
        true,
        "Create a domain from a configuration file",
        "<ConfigFile> [options] [vars]",
        Some(
            "-c                      Attach to the console once the domain exists.\n\
             -d                      Print debugging messages.\n\
             -e                      Do not stay in the background watching the domain.\n\
             -F                      Stay in the foreground until the domain dies.\n\
             -f FILE, --defconfig=FILE\n                     Read the configuration from FILE.\n\
             -h                      Show this help.\n\
             -n, --dryrun            Only print the configuration that would be used\n\
             \x20                        (the global -N option does the same).\n\
             -p                      Leave the new domain paused.\n\
             -q, --quiet             Print less.\n\
             -V, --vncviewer         Start a VNC viewer once the domain exists.\n\
             -A, --vncviewer-autopass\n\
             \x20                       Give the VNC password to the viewer on stdin.\n\
             --ignore-global-affinity-masks Ignore the affinity masks of xl.conf.",
        ),
    ),
    cmd(
        "list",
        false,
        false,
        "List all domains, or some",
        "[options] [Domain]\n",
        Some(
            "-l, --long              Print each domain's full configuration\n\
             -v, --verbose           Add UUIDs, shutdown reasons and security labels\n\
             -Z, --context           Add security labels\n\
             -c, --cpupool           Add each domain's CPU pool\n\
             -n, --numa              Add NUMA node affinity",
        ),
    ),
    cmd(
        "destroy",
        false,
        true,
        "Kill a domain at once",
        "[options] <Domain>\n",
        Some(
            "-f                      Allow destroying domain 0 (only meaningful with a\n\
             \x20                       disaggregated toolstack and hardware domain).",
        ),
    ),
    cmd(
        "shutdown",
        false,
        true,
        "Ask a domain to shut down",
        "[options] <-a|Domain>",
        Some(
            "-a, --all               Shut down every guest domain.\n\
             -h                      Show this help.\n\
             -F                      For HVM guests without PV drivers, press the\n\
             \x20                       virtual ACPI power button instead.\n\
             -w, --wait              Wait until the domain(s) have shut down.\n",
        ),
    ),
    cmd(
        "reboot",
        false,
        true,
        "Ask a domain to reboot",
        "[options] <-a|Domain>",
        Some(
            "-a, --all               Reboot every guest domain.\n\
             -h                      Show this help.\n\
             -F                      For HVM guests without PV drivers, send a\n\
             \x20                       virtual ACPI reset instead.\n\
             -w, --wait              Wait until the domain(s) have rebooted.\n",
        ),
    ),
    cmd(
        "pause",
        false,
        true,
        "Stop running a domain's vCPUs",
        "<Domain>",
        None,
    ),
    cmd(
        "unpause",
        false,
        true,
        "Let a paused domain run again",
        "<Domain>",
        None,
    ),
    cmd(
        "console",
        false,
        false,
        "Connect to a domain's console",
        "[options] <Domain>\n\
         -t <type>       console type, pv , serial or vuart\n\
         -n <number>     console number\n\
         -e <escape>     escape character",
        None,
    ),
    cmd(
        "mem-max",
        false,
        true,
        "Set the most memory a domain may have",
        "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
        None,
    ),
    cmd(
        "mem-set",
        false,
        true,
        "Set the memory a domain should use now",
        "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
        None,
    ),
    cmd(
        "vcpu-list",
        false,
        false,
        "List the vCPUs of all domains, or some",
        "[Domain, ...]",
        None,
    ),
    cmd(
        "vcpu-set",
        false,
        true,
        "Set how many vCPUs a domain has online",
        "[option] <Domain> <vCPUs>",
        Some("-i, --ignore-host  Allow more vCPUs than the host has CPUs"),
    ),
    cmd(
        "vm-list",
        false,
        false,
        "List guest domains (not Domain-0 or helper domains)",
        "",
        None,
    ),
    cmd(
        "info",
        false,
        false,
        "Show information about the host and hypervisor",
        "-n, --numa         List host NUMA topology information",
        None,
    ),
    cmd(
        "domid",
        false,
        false,
        "Print the id of the domain with a given name",
        "<DomainName>",
        None,
    ),
    cmd(
        "domname",
        false,
        false,
        "Print the name of the domain with a given id",
        "<DomainId>",
        None,
    ),
    cmd(
        "rename",
        false,
        true,
        "Give a domain a new name",
        "<Domain> <NewDomainName>",
        None,
    ),
    cmd(
        "trigger",
        false,
        true,
        "Send a trigger (NMI, reset, ...) to a domain",
        "<Domain> <nmi|reset|init|power|sleep|s3resume> [<VCPU>]",
        None,
    ),
    cmd(
        "sysrq",
        false,
        true,
        "Send a SysRq key to a domain",
        "<Domain> <letter>",
        None,
    ),
    cmd(
        "dmesg",
        false,
        false,
        "Print the hypervisor's message buffer, optionally clearing it",
        "[-c]",
        Some("  -c                        Clear the buffer after printing it"),
    ),
    cmd(
        "network-attach",
        true,
        true,
        "Add a virtual network device to a domain",
        "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] [script=<script>] \
         [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [model=<model>] \
         [accel=<accel>] [mtu=<mtu>]",
        None,
    ),
    cmd(
        "network-list",
        false,
        false,
        "List a domain's virtual network devices",
        "<Domain(s)>",
        None,
    ),
    cmd(
        "network-detach",
        false,
        true,
        "Remove a virtual network device from a domain",
        "<Domain> <DevId|mac>",
        None,
    ),
    cmd(
        "block-attach",
        true,
        true,
        "Add a virtual block device to a domain",
        "<Domain> <disk-spec-component(s)>...",
        None,
    ),
    cmd(
        "block-list",
        false,
        false,
        "List a domain's virtual block devices",
        "<Domain(s)>",
        None,
    ),
    cmd(
        "block-detach",
        false,
        true,
        "Remove a virtual block device from a domain",
        "[option] <Domain> <DevId>",
        Some("-f, --force        do not wait for the guest to let go of the device"),
    ),
    cmd(
        "uptime",
        false,
        false,
        "Print how long domains have been running",
        "[-s] [Domain]",
        None,
    ),
];

/// Finds a subcommand as xl does: an exact name, or a prefix of exactly
/// one name (`xl li` is `list`).
pub fn cmd_lookup(name: &str) -> Option<&'static CmdSpec> {
    if let Some(c) = COMMANDS.iter().find(|c| c.name == name) {
        return Some(c);
    }
    let mut matches = COMMANDS.iter().filter(|c| c.name.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// `xl help [COMMAND]` / `xl COMMAND -h` (xl.c: help), printed on stdout.
/// Without a command (or with `help`): the list of subcommands.
pub fn help(command: Option<&str>) -> String {
    match command {
        None | Some("help") => {
            let mut s = String::from(
                "Usage xl [-vfNtT] <subcommand> [args]\n\nxl full list of subcommands:\n\n",
            );
            for c in COMMANDS {
                s.push_str(&format!(" {:<19} ", c.name));
                if c.name.len() > 19 {
                    s.push_str(&format!("\n {:<19} ", ""));
                }
                s.push_str(c.desc);
                s.push('\n');
            }
            s
        }
        Some(name) => match cmd_lookup(name) {
            Some(c) => {
                let mut s = format!(
                    "Usage: xl [-vtT{}{}] {} {}\n\n{}.\n\n",
                    if c.modifies { "f" } else { "" },
                    if c.can_dryrun { "N" } else { "" },
                    c.name,
                    c.usage,
                    c.desc
                );
                if let Some(o) = c.options {
                    s.push_str(&format!("Options:\n\n{o}\n"));
                }
                s
            }
            None => format!("command \"{name}\" not implemented\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Action};

    fn dom(domid: u32, name: &str, memkb: u64, vcpus: u32, cpu_ns: u64) -> DomainInfo {
        DomainInfo {
            domid,
            name: name.into(),
            uuid: Uuid::NIL,
            current_memkb: memkb,
            outstanding_memkb: 0,
            vcpu_online: vcpus,
            running: false,
            blocked: false,
            paused: false,
            shutdown: false,
            dying: false,
            shutdown_reason: None,
            cpu_time_ns: cpu_ns,
            ssid_label: None,
            cpupool: None,
        }
    }

    // Expected strings below were produced by C printf with xl's format
    // strings (see the comments) on glibc.

    #[test]
    fn list_format() {
        let mut d0 = dom(0, "Domain-0", 4096 * 1024, 4, 1_234_567_890_123);
        d0.running = true;
        let mut g = dom(7, "guest-with-a-long-name", 262_144, 2, 5_000_000);
        g.blocked = true;
        g.paused = true;
        let out = list(&[g.clone(), d0.clone()], ListOptions::default());
        assert_eq!(
            out,
            "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
             Domain-0                                     0  4096     4     r-----    1234.6\n\
             guest-with-a-long-name                       7   256     2     -bp---       0.0\n"
        );
        let mut s = dom(12, "crashed", 1024 * 1024 + 512, 1, 99_950_000_000);
        s.shutdown = true;
        s.shutdown_reason = Some(ShutdownReason::Crash);
        s.dying = true;
        s.outstanding_memkb = 1024;
        assert_eq!(
            list_row(&s, ListOptions::default()),
            "crashed                                     12  1025     1     ---scd     100.0\n"
        );
        for (reason, letter) in [
            (ShutdownReason::Poweroff, '-'),
            (ShutdownReason::Reboot, 'r'),
            (ShutdownReason::Suspend, 's'),
            (ShutdownReason::Crash, 'c'),
            (ShutdownReason::Watchdog, 'w'),
            (ShutdownReason::SoftReset, 'S'),
            (ShutdownReason::Unknown, '?'),
        ] {
            s.shutdown_reason = Some(reason);
            assert_eq!(s.state(), format!("---s{letter}d"));
        }
    }

    #[test]
    fn list_verbose_and_context() {
        let mut g = dom(3, "web", 524_288, 2, 61_500_000_000);
        g.uuid = "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab".parse().unwrap();
        let v = ListOptions {
            verbose: true,
            ..Default::default()
        };
        assert_eq!(
            list_header(v),
            "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n"
        );
        assert_eq!(
            list_row(&g, v),
            "web                                          3   512     2     ------      61.5 5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab        -                -\n"
        );
        g.shutdown = true;
        g.shutdown_reason = Some(ShutdownReason::Reboot);
        g.ssid_label = Some("system_u:system_r:domU_t".into());
        assert_eq!(
            list_row(&g, v),
            "web                                          3   512     2     ---sr-      61.5 5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab        1 system_u:system_r:domU_t\n"
        );
        g.shutdown_reason = Some(ShutdownReason::Unknown);
        assert!(list_row(&g, v).contains(" ffffffff "));
        let z = ListOptions {
            context: true,
            ..Default::default()
        };
        assert_eq!(
            list_header(z),
            "Name                                        ID   Mem VCPUs\tState\tTime(s)   Security Label\n"
        );
        g.shutdown = false;
        g.ssid_label = None;
        assert_eq!(
            list_row(&g, z),
            "web                                          3   512     2     ------      61.5                -\n"
        );
        let c = ListOptions {
            cpupool: true,
            ..Default::default()
        };
        assert_eq!(
            list_header(c),
            "Name                                        ID   Mem VCPUs\tState\tTime(s)         Cpupool\n"
        );
        assert_eq!(
            list_row(&g, c),
            "web                                          3   512     2     ------      61.5          Pool-0\n"
        );
    }

    #[test]
    fn list_long_shape() {
        let (cfg, _) = parse_str(
            "name = \"web\"\ntype = \"pvh\"\nkernel = \"/k\"\ncmdline = \"console=hvc0\"\n\
             memory = 256\nvcpus = 2\nuuid = \"5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab\"\n\
             disk = [ '/img,raw,xvda,rw' ]\nvif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]\n\
             on_crash = \"preserve\"\n",
            "web.cfg",
        )
        .unwrap();
        let out = list_long(&[(5, &cfg)]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "domid": 5,
                "config": {
                    "c_info": {
                        "type": "pvh",
                        "name": "web",
                        "uuid": "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab",
                        "run_hotplug_scripts": "True"
                    },
                    "b_info": {
                        "max_vcpus": 2,
                        "avail_vcpus": [0, 1],
                        "max_memkb": 262144,
                        "target_memkb": 262144,
                        "sched_params": {},
                        "kernel": "/k",
                        "cmdline": "console=hvc0",
                        "type.pvh": {}
                    },
                    "disks": [{
                        "pdev_path": "/img",
                        "vdev": "xvda",
                        "format": "raw",
                        "readwrite": 1
                    }],
                    "nics": [{
                        "devid": 0,
                        "mac": "00:16:3e:00:00:01",
                        "bridge": "xenbr0"
                    }],
                    "on_poweroff": "destroy",
                    "on_reboot": "restart",
                    "on_watchdog": "destroy",
                    "on_crash": "preserve",
                    "on_soft_reset": "soft_reset"
                }
            }])
        );
        // keys keep libxl's order
        assert!(out.find("\"c_info\"").unwrap() < out.find("\"b_info\"").unwrap());
        assert!(out.find("\"domid\"").unwrap() < out.find("\"config\"").unwrap());
        assert!(out.ends_with("]\n"));
        assert_eq!(list_long(&[]), "[]\n");
        let d = dryrun_json(&cfg);
        assert!(d.starts_with("{\n    \"c_info\": {\n        \"type\": \"pvh\",\n"));
        let mut cfg = cfg;
        cfg.on_reboot = Action::RenameRestart;
        let j: serde_json::Value = serde_json::from_str(&libxl_domain_config_json(&cfg)).unwrap();
        assert_eq!(j["on_reboot"], serde_json::json!("restart_rename"));
    }

    #[test]
    fn vm_list_format() {
        // printf("UUID                                  ID    name\n");
        // printf(LIBXL_UUID_FMT "  %d    %-30s\n", ...)
        assert_eq!(
            vm_list_header(),
            "UUID                                  ID    name\n"
        );
        let u: Uuid = "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab".parse().unwrap();
        assert_eq!(
            vm_list_row(&u, 3, "web"),
            "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab  3    web                           \n"
        );
    }

    fn sample_info() -> XlInfo {
        XlInfo {
            host: "box".into(),
            release: "6.1.0-18-amd64".into(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)".into(),
            machine: "x86_64".into(),
            nr_cpus: 8,
            max_cpu_id: 7,
            nr_nodes: 1,
            cores_per_socket: 4,
            threads_per_core: 2,
            cpu_khz: 2_904_012,
            hw_caps: [
                0xbfebfbff, 0x7ffafbff, 0x2c100800, 0x00000121, 0x0000000f, 0x029c67af, 0,
                0x00000100,
            ],
            virt_caps: VirtCaps {
                pv: true,
                hvm: true,
                directio: true,
                hap: true,
                gnttab_v1: true,
                ..Default::default()
            },
            total_memory: 16_222,
            free_memory: 11_018,
            sharing_freed_memory: 0,
            sharing_used_memory: 0,
            outstanding_claims: 0,
            free_cpus: 0,
            xen_major: 4,
            xen_minor: 17,
            xen_extra: ".3".into(),
            xen_caps: "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64".into(),
            xen_scheduler: "credit2".into(),
            xen_pagesize: 4096,
            virt_start: 0xffff800000000000,
            xen_changeset: "".into(),
            xen_commandline: "placeholder dom0_mem=2G".into(),
            cc_compiler: "gcc (Debian 12.2.0-14) 12.2.0".into(),
            cc_compile_by: "kxen".into(),
            cc_compile_domain: "example.org".into(),
            cc_compile_date: "Thu Jan  1 00:00:00 UTC 2024".into(),
            build_id: "0123abcd".into(),
            xenstore_features: Some(1),
        }
    }

    #[test]
    fn info_format() {
        let out = info(&sample_info(), false);
        assert_eq!(
            out,
            "host                   : box\n\
             release                : 6.1.0-18-amd64\n\
             version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\n\
             machine                : x86_64\n\
             nr_cpus                : 8\n\
             max_cpu_id             : 7\n\
             nr_nodes               : 1\n\
             cores_per_socket       : 4\n\
             threads_per_core       : 2\n\
             cpu_mhz                : 2904.012\n\
             hw_caps                : bfebfbff:7ffafbff:2c100800:00000121:0000000f:029c67af:00000000:00000100\n\
             virt_caps              : pv hvm hvm_directio pv_directio hap gnttab-v1\n\
             total_memory           : 16222\n\
             free_memory            : 11018\n\
             sharing_freed_memory   : 0\n\
             sharing_used_memory    : 0\n\
             outstanding_claims     : 0\n\
             free_cpus              : 0\n\
             xen_major              : 4\n\
             xen_minor              : 17\n\
             xen_extra              : .3\n\
             xen_version            : 4.17.3\n\
             xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64\n\
             xen_scheduler          : credit2\n\
             xen_pagesize           : 4096\n\
             platform_params        : virt_start=0xffff800000000000\n\
             xen_changeset          : \n\
             xen_commandline        : placeholder dom0_mem=2G\n\
             cc_compiler            : gcc (Debian 12.2.0-14) 12.2.0\n\
             cc_compile_by          : kxen\n\
             cc_compile_domain      : example.org\n\
             cc_compile_date        : Thu Jan  1 00:00:00 UTC 2024\n\
             build_id               : 0123abcd\n\
             xend_config_format     : 4\n"
        );
        let x = info(&sample_info(), true);
        assert!(x.contains("build_id               : 0123abcd\nxenstore_features      : 0x00000001\nxend_config_format     : 4\n"));
        let none = XlInfo::default();
        assert!(info(&none, false).contains("\nvirt_caps              :\n"));
    }

    #[test]
    fn info_filter() {
        let i = sample_info();
        assert_eq!(info_filtered(&i, false, "free_memory"), "11018\n");
        assert_eq!(info_filtered(&i, false, "xen_version"), "4.17.3\n");
        // a prefix selects every line it starts
        assert_eq!(info_filtered(&i, false, "xen_m"), "4\n17\n");
        assert_eq!(info_filtered(&i, false, "nosuch"), "");
        // virt_caps has no space after its colon, but its flags start with one
        assert_eq!(
            info_filtered(&i, false, "virt_caps"),
            "pv hvm hvm_directio pv_directio hap gnttab-v1\n"
        );
        assert_eq!(info_filtered(&XlInfo::default(), false, "virt_caps"), "");
    }

    #[test]
    fn vcpu_list_format() {
        // printf("%-32s %5s %5s %5s %5s %9s %s\n", "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)");
        assert_eq!(
            vcpu_list_header(),
            "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n"
        );
        let v = VcpuInfo {
            vcpuid: 0,
            cpu: 3,
            online: true,
            running: true,
            blocked: false,
            vcpu_time_ns: 12_345_678_901,
            hard_affinity: (0..8).collect(),
            soft_affinity: (0..8).collect(),
        };
        assert_eq!(
            vcpu_list_row("Domain-0", 0, &v, 8),
            "Domain-0                             0     0    3   r--      12.3  all / all\n"
        );
        let v = VcpuInfo {
            vcpuid: 1,
            cpu: 0,
            online: false,
            running: false,
            blocked: false,
            vcpu_time_ns: 0,
            hard_affinity: vec![0, 1, 2, 5, 7],
            soft_affinity: vec![],
        };
        assert_eq!(
            vcpu_list_row("web", 4, &v, 8),
            "web                                  4     1    -   --p       0.0  0-2,5,7 / none\n"
        );
        let v = VcpuInfo {
            online: true,
            blocked: true,
            cpu: 6,
            ..v
        };
        assert_eq!(
            vcpu_list_row("web", 4, &v, 8),
            "web                                  4     1    6   -b-       0.0  0-2,5,7 / none\n"
        );
    }

    #[test]
    fn cpumaps() {
        assert_eq!(cpumap_to_string(&[], 4), "none");
        assert_eq!(cpumap_to_string(&[0, 1, 2, 3], 4), "all");
        assert_eq!(cpumap_to_string(&[0, 1, 2], 4), "0-2");
        assert_eq!(cpumap_to_string(&[1, 2, 3], 4), "1-3");
        assert_eq!(cpumap_to_string(&[3], 4), "3");
        assert_eq!(cpumap_to_string(&[0, 2, 3, 5, 6, 7], 8), "0,2-3,5-7");
        // CPUs beyond the host's are not shown
        assert_eq!(cpumap_to_string(&[0, 1, 9], 2), "all");
        assert_eq!(cpumap_to_string(&[0], 1), "all");
        assert_eq!(cpumap_to_string(&[0], 0), "none");
    }

    #[test]
    fn uptime_format() {
        // printf("%-33s %4s %s\n", "Name", "ID", "Uptime");
        assert_eq!(
            uptime_header(),
            "Name                                ID Uptime\n"
        );
        assert_eq!(uptime_to_string(0, false), " 0:00:00");
        assert_eq!(uptime_to_string(7384, false), " 2:03:04");
        assert_eq!(uptime_to_string(86400 + 7384, false), "1 day,  2:03:04");
        assert_eq!(
            uptime_to_string(3 * 86400 + 43200, false),
            "3 days, 12:00:00"
        );
        assert_eq!(uptime_to_string(7384, true), " 2:03");
        assert_eq!(uptime_to_string(86400 + 7384, true), "1 day,  2:03");
        assert_eq!(uptime_to_string(2 * 86400 + 36000, true), "2 days, 10:00");
        assert_eq!(
            uptime_row("Domain-0", 0, 93784),
            "Domain-0                             0 1 day,  2:03:04\n"
        );
        assert_eq!(
            uptime_row("web", 12, 59),
            "web                                 12  0:00:59\n"
        );
        assert_eq!(
            uptime_short_row("14:05:09", "web", 12, 7384),
            " 14:05:09 up  2:03, web (12)\n"
        );
    }

    #[test]
    fn device_lists() {
        assert_eq!(
            block_list_header(),
            "Vdev  BE  handle state evt-ch ring-ref BE-path                       \n"
        );
        let b = BlockInfo {
            devid: 51712,
            backend_id: 0,
            frontend_id: 3,
            state: 4,
            evtch: 18,
            rref: 8,
            backend: "/local/domain/0/backend/vbd/3/51712".into(),
        };
        assert_eq!(
            block_list_row(&b),
            "51712 0   3      4     18     8        /local/domain/0/backend/vbd/3/51712\n"
        );
        assert_eq!(
            network_list_header(),
            "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       \n"
        );
        let n = NicInfo {
            devid: 0,
            backend_id: 0,
            mac: "00:16:3e:5f:48:e4".parse().unwrap(),
            state: 4,
            evtch: 19,
            rref_tx: 768,
            rref_rx: 769,
            backend: "/local/domain/0/backend/vif/3/0".into(),
        };
        assert_eq!(
            network_list_row(&n),
            "0   0  00:16:3e:5f:48:e4     0     4     19   768/769         /local/domain/0/backend/vif/3/0\n"
        );
    }

    #[test]
    fn small_outputs_and_messages() {
        assert_eq!(domid_output(3), "3\n");
        assert_eq!(domname_output("web"), "web\n");
        assert_eq!(
            parsing_config_from("web.cfg"),
            "Parsing config from web.cfg"
        );
        assert_eq!(
            invalid_domain("nosuch"),
            "nosuch is an invalid domain identifier (rc=-6)"
        );
        assert_eq!(
            domain_does_not_exist("42"),
            "Error: Domain '42' does not exist."
        );
        assert_eq!(
            op_failed("destroy", ERROR_DOMAIN_NOTFOUND),
            "destroy failed (rc=-21)"
        );
        assert_eq!(
            requires_arguments("destroy", 1),
            "'xl destroy' requires at least 1 argument.\n"
        );
        assert_eq!(
            requires_arguments("rename", 2),
            "'xl rename' requires at least 2 arguments.\n"
        );
        assert_eq!(option_not_supported('z'), "option `z' not supported.");
        assert_eq!(
            no_pv_control(false),
            "PV control interface not available: external graceful shutdown not possible.\n\
             Use \"-F\" to fallback to ACPI power event."
        );
        assert_eq!(
            cant_get_domid("x"),
            "Can't get domid of domain name 'x', maybe this domain does not exist."
        );
    }

    #[test]
    fn config_error_reports() {
        let err = parse_str("memory = (128)\n", "g.cfg").unwrap_err();
        let (text, code) = config_error_report(&err);
        assert_eq!(
            text,
            "g.cfg:1: config parsing error near `(128)': lexical error\n\
             warning: Config file looks like it contains Python code.\n\
             warning:  Arbitrary Python is no longer supported.\n\
             warning:  See https://wiki.xen.org/wiki/PythonInXlConfig\n\
             Failed to parse config: Invalid argument"
        );
        assert_eq!(code, 1);
        let err = crate::config::parse_file("/nonexistent/kxen.cfg").unwrap_err();
        assert_eq!(
            config_error_report(&err),
            (
                "Failed to read config file: /nonexistent/kxen.cfg: No such file or directory"
                    .to_string(),
                3
            )
        );
        let err = parse_str("name = 'x'\nkernel='/k'\nmemory = 'lots'\n", "g.cfg").unwrap_err();
        assert_eq!(
            config_error_report(&err),
            ("g.cfg:3: memory: expected an integer".to_string(), 1)
        );
    }

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem_size_kb("256"), Some(256 * 1024));
        assert_eq!(parse_mem_size_kb("256m"), Some(256 * 1024));
        assert_eq!(parse_mem_size_kb("256M"), Some(256 * 1024));
        assert_eq!(parse_mem_size_kb("2g"), Some(2 * 1024 * 1024));
        assert_eq!(parse_mem_size_kb("1T"), Some(1 << 30));
        assert_eq!(parse_mem_size_kb("512k"), Some(512));
        assert_eq!(parse_mem_size_kb("1048576b"), Some(1024));
        assert_eq!(parse_mem_size_kb("1000b"), Some(0));
        for bad in ["", "m", "12x", "12mb", "-5", "1.5g"] {
            assert_eq!(parse_mem_size_kb(bad), None, "{bad}");
        }
    }

    #[test]
    fn commands_and_help() {
        assert_eq!(cmd_lookup("list").unwrap().name, "list");
        assert_eq!(cmd_lookup("li").unwrap().name, "list");
        assert_eq!(cmd_lookup("cr").unwrap().name, "create");
        // ambiguous prefixes match nothing; exact names beat longer ones
        assert!(cmd_lookup("network-").is_none());
        assert_eq!(cmd_lookup("domid").unwrap().name, "domid");
        assert!(cmd_lookup("dom").is_none());
        assert!(cmd_lookup("frobnicate").is_none());
        assert_eq!(
            help(Some("pause")),
            "Usage: xl [-vtTf] pause <Domain>\n\nStop running a domain's vCPUs.\n\n"
        );
        assert_eq!(
            help(Some("domid")),
            "Usage: xl [-vtT] domid <DomainName>\n\nPrint the id of the domain with a given name.\n\n"
        );
        let create = help(Some("create"));
        assert!(create.starts_with("Usage: xl [-vtTfN] create <ConfigFile> [options] [vars]\n\n"));
        assert!(create.contains("\nOptions:\n\n-c "));
        assert_eq!(help(Some("nosuch")), "command \"nosuch\" not implemented\n");
        let all = help(None);
        assert!(all.starts_with(
            "Usage xl [-vfNtT] <subcommand> [args]\n\nxl full list of subcommands:\n\n"
        ));
        assert!(all.contains("\n create              Create a domain from a configuration file\n"));
        assert_eq!(help(Some("help")), all);
    }
}
