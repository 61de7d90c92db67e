//! libxl's JSON view of a domain (libxl_domain_config and its disk and nic
//! entries), as `xl create -n`, `xl list -l` and the attach dry runs print
//! it.

use serde::Serialize;

use crate::{
    config::{DomainConfig, DomainType},
    disk::DiskSpec,
    vif::VifSpec,
};

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
