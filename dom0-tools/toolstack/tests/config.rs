//! xl.cfg files through to `DomainConfig`: defaults, errors, warnings and
//! command-line overrides, as xl applies them.

use kxen_toolstack::{
    config::{
        parse_file, parse_file_with_overrides, parse_str, parse_str_with_overrides, Action,
        ConfigError, ConfigWarning, DomainConfig, DomainType, Uuid, WarningKind,
    },
    disk::DiskFormat,
    vif::MacAddr,
};

fn ok(text: &str) -> (DomainConfig, Vec<ConfigWarning>) {
    parse_str(text, "t.cfg").unwrap_or_else(|e| panic!("{e}"))
}

fn cfg(text: &str) -> DomainConfig {
    let (c, w) = ok(text);
    assert!(w.is_empty(), "unexpected warnings: {w:?}");
    c
}

fn err(text: &str) -> String {
    parse_str(text, "t.cfg").expect_err(text).to_string()
}

const PVH: &str = "name = \"g\"\ntype = \"pvh\"\nkernel = \"/boot/k\"\n";

#[test]
fn minimal_config_gets_xl_defaults() {
    let c = cfg(PVH);
    let mut want = DomainConfig::new("g", DomainType::Pvh);
    want.kernel = Some("/boot/k".into());
    assert_eq!(c, want);
    assert_eq!(c.memory, 32);
    assert_eq!(c.maxmem, 32);
    assert_eq!(c.vcpus, 1);
    assert_eq!(c.maxvcpus, 1);
    assert_eq!(c.on_poweroff, Action::Destroy);
    assert_eq!(c.on_reboot, Action::Restart);
    assert_eq!(c.on_watchdog, Action::Destroy);
    assert_eq!(c.on_crash, Action::Destroy);
    assert_eq!(c.on_soft_reset, Action::SoftReset);
    assert_eq!(c.uuid, None);
}

#[test]
fn a_typical_file() {
    let text = r#"
# A PVH guest
name    = "web01"
type    = "pvh"
uuid    = "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab"
kernel  = "/var/lib/kxen/vmlinuz"
ramdisk = "/var/lib/kxen/initrd.img"
cmdline = "console=hvc0 root=/dev/xvda1 ro"
memory  = 1024
maxmem  = 2048
vcpus   = 2
maxvcpus = 4
on_poweroff = "destroy"
on_reboot   = "restart"
on_crash    = "preserve"
on_watchdog = "rename-restart"
disk = [ 'format=raw, vdev=xvda, access=rw, target=/srv/web01.img',
         '/srv/data.qcow2,qcow2,xvdb,rw',
         'phy:/dev/vg0/swap,xvdc,w',
       ]
vif = [ 'mac=00:16:3e:12:34:56,bridge=xenbr0', 'bridge=xenbr1,rate=10Mb/s', ]
serial = "pty"
cpu_weight = 512
cap = 50
max_grant_frames = 64
nomigrate = 1
"#;
    let c = cfg(text);
    assert_eq!(c.name, "web01");
    assert_eq!(c.domain_type, DomainType::Pvh);
    assert_eq!(
        c.uuid,
        Some(
            "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab"
                .parse::<Uuid>()
                .unwrap()
        )
    );
    assert_eq!(c.ramdisk.as_deref(), Some("/var/lib/kxen/initrd.img"));
    assert_eq!(
        c.cmdline.as_deref(),
        Some("console=hvc0 root=/dev/xvda1 ro")
    );
    assert_eq!(
        (c.memory, c.maxmem, c.vcpus, c.maxvcpus),
        (1024, 2048, 2, 4)
    );
    assert_eq!((c.memory_kib(), c.maxmem_kib()), (1024 * 1024, 2048 * 1024));
    assert_eq!(c.on_crash, Action::Preserve);
    assert_eq!(c.on_watchdog, Action::RenameRestart);
    assert_eq!(c.disks.len(), 3);
    assert_eq!(c.disks[0].target.as_deref(), Some("/srv/web01.img"));
    assert_eq!(c.disks[0].devid(), 51712);
    assert_eq!(c.disks[1].format, DiskFormat::Qcow2);
    assert_eq!(c.disks[2].target.as_deref(), Some("/dev/vg0/swap"));
    assert_eq!(c.vifs.len(), 2);
    assert_eq!(c.vifs[0].devid, Some(0));
    assert_eq!(
        c.vifs[0].mac,
        Some(MacAddr([0x00, 0x16, 0x3e, 0x12, 0x34, 0x56]))
    );
    assert_eq!(c.vifs[1].devid, Some(1));
    assert_eq!(c.vifs[1].bridge.as_deref(), Some("xenbr1"));
    assert_eq!(c.serial, ["pty"]);
    assert_eq!((c.cpu_weight, c.cap), (Some(512), Some(50)));
    assert_eq!(c.max_grant_frames, Some(64));
    assert!(c.nomigrate);
}

#[test]
fn memory_defaults() {
    let m = |extra: &str| {
        let c = cfg(&format!("{PVH}{extra}"));
        (c.memory, c.maxmem)
    };
    assert_eq!(m(""), (32, 32));
    assert_eq!(m("memory = 256\n"), (256, 256));
    assert_eq!(m("maxmem = 512\n"), (512, 512));
    assert_eq!(m("memory = 256\nmaxmem = 512\n"), (256, 512));
    assert_eq!(m("memory = 0x100\n"), (256, 256));
    assert_eq!(m("memory = 0400\n"), (256, 256));
    assert_eq!(m("memory = \"256\"\n"), (256, 256));
    assert_eq!(m("memory = 128\nmemory = 256\n"), (256, 256));
    assert_eq!(
        err(&format!("{PVH}memory = 512\nmaxmem = 256\n")),
        "t.cfg:5: maxmem: maxmem (256) is less than memory (512)"
    );
}

#[test]
fn vcpu_defaults() {
    let v = |extra: &str| {
        let c = cfg(&format!("{PVH}{extra}"));
        (c.vcpus, c.maxvcpus)
    };
    assert_eq!(v(""), (1, 1));
    assert_eq!(v("vcpus = 0\n"), (1, 1));
    assert_eq!(v("vcpus = 3\n"), (3, 3));
    assert_eq!(v("vcpus = 2\nmaxvcpus = 8\n"), (2, 8));
    assert_eq!(v("maxvcpus = 0\nvcpus = 2\n"), (2, 2));
    assert_eq!(
        err(&format!("{PVH}vcpus = 4\nmaxvcpus = 2\n")),
        "t.cfg:5: maxvcpus: maxvcpus < vcpus"
    );
}

#[test]
fn domain_types() {
    let t = |text: &str| cfg(text).domain_type;
    let base = "name = 'g'\nkernel = '/k'\n";
    assert_eq!(t(base), DomainType::Pv, "xl's default on x86");
    for (v, want) in [
        ("pvh", DomainType::Pvh),
        ("pv", DomainType::Pv),
        ("p", DomainType::Pv),
        ("hvm", DomainType::Hvm),
        ("h", DomainType::Hvm),
    ] {
        assert_eq!(t(&format!("{base}type = '{v}'\n")), want, "{v}");
    }
    assert_eq!(t(&format!("{base}builder = 'generic'\n")), DomainType::Pv);
    assert_eq!(t(&format!("{base}builder = 'hvm'\n")), DomainType::Hvm);
    assert_eq!(
        t(&format!("{base}builder = 'hvm'\ntype = 'hvm'\n")),
        DomainType::Hvm
    );
    assert_eq!(
        err(&format!("{base}type = 'pvhx'\n")),
        "t.cfg:3: type: invalid domain type \"pvhx\""
    );
    assert_eq!(
        err(&format!("{base}builder = 'linux'\n")),
        "t.cfg:3: builder: invalid domain type \"linux\""
    );
    assert_eq!(
        err(&format!("{base}type = 'pvh'\nbuilder = 'hvm'\n")),
        "t.cfg:4: builder: contradicting \"builder\" and \"type\" options specified"
    );
}

#[test]
fn kernel_or_bootloader_required_except_hvm() {
    assert_eq!(
        err("name = 'g'\ntype = 'pvh'\n"),
        "t.cfg: kernel: neither kernel nor bootloader specified"
    );
    let c = cfg(
        "name = 'g'\ntype = 'pv'\nbootloader = 'pygrub'\nbootloader_args = ['-q', '--entry=0']\n",
    );
    assert_eq!(c.bootloader.as_deref(), Some("pygrub"));
    assert_eq!(c.bootloader_args, ["-q", "--entry=0"]);
    let c = cfg("name = 'g'\ntype = 'hvm'\n");
    assert_eq!(c.kernel, None);
}

#[test]
fn name_is_required() {
    assert_eq!(
        err("type = 'pvh'\nkernel = '/k'\n"),
        "t.cfg: name: domain name must be specified"
    );
    assert_eq!(
        err("name = ''\nkernel = '/k'\n"),
        "t.cfg:1: name: domain name must not be empty"
    );
    // xl reads any atom as a string
    assert_eq!(cfg("name = 42\nkernel = '/k'\n").name, "42");
}

#[test]
fn command_line_from_root_and_extra() {
    let c = |extra: &str| cfg(&format!("{PVH}{extra}")).cmdline;
    assert_eq!(c(""), None);
    assert_eq!(
        c("root = '/dev/xvda1 ro'\n"),
        Some("root=/dev/xvda1 ro".into())
    );
    assert_eq!(c("extra = 'console=hvc0'\n"), Some("console=hvc0".into()));
    assert_eq!(
        c("root = '/dev/xvda1'\nextra = 'console=hvc0 quiet'\n"),
        Some("root=/dev/xvda1 console=hvc0 quiet".into())
    );
    let (conf, warnings) = ok(&format!("{PVH}root = '/dev/xvda'\ncmdline = 'quiet'\n"));
    assert_eq!(conf.cmdline.as_deref(), Some("quiet"));
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].to_string(),
        "t.cfg:5: warning: cmdline: ignoring root= and extra= in favour of cmdline="
    );
}

#[test]
fn actions() {
    for a in [
        "destroy",
        "restart",
        "rename-restart",
        "preserve",
        "coredump-destroy",
        "coredump-restart",
        "soft-reset",
    ] {
        let c = cfg(&format!(
            "{PVH}on_poweroff = '{a}'\non_soft_reset = '{a}'\n"
        ));
        assert_eq!(c.on_poweroff.as_str(), a);
        assert_eq!(c.on_soft_reset.as_str(), a);
    }
    assert_eq!(
        err(&format!("{PVH}on_crash = 'explode'\n")),
        "t.cfg:4: on_crash: unknown variant `explode`, expected one of `destroy`, `restart`, \
         `rename-restart`, `preserve`, `coredump-destroy`, `coredump-restart`, `soft-reset`"
    );
}

#[test]
fn unknown_and_unsupported_keys_warn() {
    let text = format!("{PVH}colour = 'blue'\nvnc = 1\nacpi = 1\ncolour = 'red'\nserial = ['pty', 'file:/tmp/s']\n");
    let (c, w) = ok(&text);
    assert_eq!(c.serial, ["pty", "file:/tmp/s"]);
    let summary: Vec<_> = w
        .iter()
        .map(|w| (w.line, w.key.as_str(), w.kind.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (5, "vnc", WarningKind::Unsupported),
            (6, "acpi", WarningKind::Unsupported),
            (7, "colour", WarningKind::UnknownKey),
        ]
    );
    assert_eq!(
        w[2].to_string(),
        "t.cfg:7: warning: unknown parameter `colour' ignored"
    );
    assert_eq!(
        w[0].to_string(),
        "t.cfg:5: warning: parameter `vnc' is not supported by kxen, ignored"
    );
}

#[test]
fn vif_notes_are_warnings() {
    let (c, w) = ok(&format!("{PVH}vif = [ 'netdev=eth0' ]\n"));
    assert_eq!(c.vifs[0].gatewaydev.as_deref(), Some("eth0"));
    assert_eq!(
        w[0].to_string(),
        "t.cfg:4: warning: vif: the netdev parameter is deprecated, please use gatewaydev instead"
    );
}

#[test]
fn bad_values_name_file_line_and_key() {
    let e = |extra: &str| err(&format!("{PVH}{extra}"));
    assert_eq!(
        e("memory = 'lots'\n"),
        "t.cfg:4: memory: expected an integer"
    );
    assert_eq!(
        e("memory = 12abc\n"),
        "t.cfg:4: memory: expected an integer"
    );
    assert_eq!(e("memory = 08\n"), "t.cfg:4: memory: expected an integer");
    assert_eq!(
        e("memory = [256]\n"),
        "t.cfg:4: memory: expected a single value, not a list"
    );
    assert_eq!(
        e("vcpus = 99999999999\n"),
        "t.cfg:4: vcpus: value out of range"
    );
    assert_eq!(e("vcpus = '-1'\n"), "t.cfg:4: vcpus: value out of range");
    assert_eq!(
        e("memory = 99999999999999999999\n"),
        "t.cfg:4: memory: value out of range"
    );
    assert_eq!(
        e("memory = 1\nmemory += 2\n"),
        "t.cfg:5: memory: can't use += with numbers"
    );
    assert_eq!(
        e("kernel = ['/a']\n"),
        "t.cfg:4: kernel: expected a single value, not a list"
    );
    assert_eq!(
        e("disk = '/img,,xvda'\n"),
        "t.cfg:4: disk: expected a list, not a single value"
    );
    assert_eq!(
        e("disk = [\n  '/img,,xvda',\n  ['/nested,,xvdb'],\n]\n"),
        "t.cfg:6: disk: expected a single value, not a list"
    );
    assert_eq!(
        e("uuid = 'not-a-uuid'\n"),
        "t.cfg:4: uuid: failed to parse UUID: not-a-uuid"
    );
    assert_eq!(
        e("memory = 'x'\nvcpus = 'y'\n"),
        "t.cfg:4: memory: expected an integer",
        "the first bad setting in the file is reported"
    );
}

#[test]
fn bad_devices_name_their_line() {
    let e = |extra: &str| parse_str(&format!("{PVH}{extra}"), "t.cfg").unwrap_err();
    let err = e("disk = [ '/a,,xvda',\n         '/b,,hdz' ]\n");
    assert_eq!(
        err.to_string(),
        "t.cfg:5: disk: invalid or unsupported virtual disk identifier: near `hdz' in `/b,,hdz'"
    );
    assert!(matches!(err, ConfigError::Disk { line: 5, .. }));
    assert_eq!(
        e("disk = ['/a,,xvda', '/b,,51712']\n").to_string(),
        "t.cfg:4: disk: virtual device `51712' is the same device as `xvda'"
    );
    let err = e("vif = [\n'bridge=br0',\n'mac=00:16:3e:zz:00:01'\n]\n");
    assert_eq!(
        err.to_string(),
        "t.cfg:6: vif: invalid MAC address `00:16:3e:zz:00:01'"
    );
    assert!(matches!(err, ConfigError::Vif { line: 6, .. }));
    assert_eq!(
        e("vif = ['devid=1', 'bridge=x']\n").to_string(),
        "t.cfg:4: vif: devid 1 used twice"
    );
    assert_eq!(
        e("vif = ['rate=fast']\n").to_string(),
        "t.cfg:4: vif: invalid rate in `fast'"
    );
}

#[test]
fn lists_append_with_plus_equals() {
    let c = cfg(&format!(
        "{PVH}disk = ['/a,,xvda']\ndisk += ['/b,,xvdb']\nextra = 'a'\nextra += ' b'\n"
    ));
    let vdevs: Vec<_> = c.disks.iter().map(|d| d.vdev.as_str()).collect();
    assert_eq!(vdevs, ["xvda", "xvdb"]);
    assert_eq!(c.cmdline.as_deref(), Some("a b"));
}

#[test]
fn command_line_overrides() {
    let file = format!("{PVH}memory = 128\ndisk = ['/a,,xvda']\n");
    let (c, _) = parse_str_with_overrides(
        &file,
        "t.cfg",
        &[
            "memory=512",
            "name=web",
            "disk+=['/b,,xvdb']",
            "extra=console=hvc0 quiet",
        ],
    )
    .unwrap();
    assert_eq!(c.memory, 512);
    assert_eq!(c.name, "web");
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.cmdline.as_deref(), Some("console=hvc0 quiet"));
    // xl's own quoting works too
    let (c, _) = parse_str_with_overrides(&file, "t.cfg", &["name=\"q\""]).unwrap();
    assert_eq!(c.name, "q");
    // line numbers run on past the file (5 lines, then an empty one)
    let e = parse_str_with_overrides(&file, "t.cfg", &["vcpus=2", "memory=lots"]).unwrap_err();
    assert_eq!(e.to_string(), "t.cfg:8: memory: expected an integer");
    // a file without a final newline is fine
    let (c, _) = parse_str_with_overrides("name='a'\nkernel='/k'", "t.cfg", &["vcpus=2"]).unwrap();
    assert_eq!(c.vcpus, 2);
    // only overrides (xl create /dev/null name=... kernel=...)
    let (c, _) = parse_str_with_overrides("", "/dev/null", &["name=x", "kernel=/k"]).unwrap();
    assert_eq!(c.name, "x");
    assert_eq!(c.kernel.as_deref(), Some("/k"));
}

#[test]
fn syntax_errors_stop_parsing() {
    assert_eq!(
        err("name = 'g'\nkernel = /boot/k\n"),
        "t.cfg:2: config parsing error near `/boot/k': lexical error"
    );
    match parse_str(
        "name = 'g'\nmemory = 128 * 2\nkernel = os.path.join('a', 'b')\n",
        "t.cfg",
    ) {
        Err(ConfigError::Syntax {
            line,
            likely_python,
            ..
        }) => {
            assert_eq!(line, 2);
            assert!(likely_python, "python further down the file is noticed");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn files_and_overrides_from_disk() {
    let dir = std::env::temp_dir().join(format!("kxen-toolstack-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.cfg");
    std::fs::write(&path, PVH).unwrap();
    let (c, w) = parse_file(&path).unwrap();
    assert_eq!(c.name, "g");
    assert!(w.is_empty());
    let (c, _) = parse_file_with_overrides(&path, &["vcpus=3"]).unwrap();
    assert_eq!(c.vcpus, 3);
    std::fs::write(&path, "name = 'g'\nmemory = 'x'\n").unwrap();
    let e = parse_file(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:2: memory: expected an integer", path.display())
    );
    let missing = dir.join("missing.cfg");
    assert_eq!(
        parse_file(&missing).unwrap_err().to_string(),
        format!(
            "Failed to read config file: {}: No such file or directory",
            missing.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_round_trip_for_kxend() {
    let c = cfg(&format!(
        "{PVH}memory = 256\nvcpus = 2\ncmdline = 'console=hvc0'\nramdisk = '/i'\n\
         disk = ['/img,,xvda']\nvif = ['bridge=xenbr0']\non_reboot = 'destroy'\n"
    ));
    let json = serde_json::to_value(&c).unwrap();
    // the keys kxend reads
    assert_eq!(json["name"], "g");
    assert_eq!(json["type"], "pvh");
    assert_eq!(json["kernel"], "/boot/k");
    assert_eq!(json["ramdisk"], "/i");
    assert_eq!(json["cmdline"], "console=hvc0");
    assert_eq!(json["memory"], 256);
    assert_eq!(json["maxmem"], 256);
    assert_eq!(json["vcpus"], 2);
    assert_eq!(json["on_reboot"], "destroy");
    assert_eq!(json["disks"][0]["vdev"], "xvda");
    assert_eq!(json["vifs"][0]["bridge"], "xenbr0");
    let back: DomainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn creation_defaults() {
    let mut c = cfg(&format!("{PVH}vif = ['', 'mac=00:16:3e:00:00:07']\n"));
    c.fill_defaults().unwrap();
    assert!(c.uuid.is_some());
    let mac = c.vifs[0].mac.unwrap();
    assert_eq!(&mac.0[..3], &[0x00, 0x16, 0x3e]);
    assert_eq!(c.vifs[1].mac.unwrap().to_string(), "00:16:3e:00:00:07");
    assert_eq!(c.vifs[0].bridge.as_deref(), Some("xenbr0"));
    assert_eq!(c.vifs[0].script.as_deref(), Some("vif-bridge"));
    let uuid = c.uuid;
    c.fill_defaults().unwrap();
    assert_eq!(c.uuid, uuid, "filling defaults twice changes nothing");
    assert_eq!(c.vifs[0].mac, Some(mac));
}

#[test]
fn vcpu_affinity_keys() {
    use kxen_toolstack::config::VcpuAffinity;
    let c = cfg(&format!(
        "{PVH}cpus = \"0-3,^2\"\ncpus_soft = [\"1\", \"2-3\"]\n"
    ));
    assert_eq!(c.cpus, Some(VcpuAffinity::Every("0-3,^2".into())));
    let soft = c.cpus_soft.clone().unwrap();
    assert_eq!(soft, VcpuAffinity::PerVcpu(vec!["1".into(), "2-3".into()]));
    assert_eq!(soft.for_vcpu(1), Some("2-3"));
    assert_eq!(
        soft.for_vcpu(2),
        None,
        "vCPUs past the list keep the default"
    );
    assert_eq!(c.cpus.as_ref().unwrap().for_vcpu(7), Some("0-3,^2"));
    // Round trip through kxend's JSON.
    let back: DomainConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    // A list xl cannot read is refused with xl's words, at its line.
    let err = parse_str(&format!("{PVH}cpus = \"1-x\"\n"), "t.cfg").unwrap_err();
    assert!(
        err.to_string().contains("Invalid pcpu range: 1-x."),
        "{err}"
    );
}
