//! xl's output formats and messages, so that `kxl` prints what `xl` prints.
//!
//! Everything here is a pure function over plain structs that kxend and kxl
//! fill in; nothing talks to a domain. Each item says which part of xl
//! (tools/xl in the Xen tree) it mirrors. Functions that produce output
//! lines end them with `\n`. Messages are what kxl passes to `eprintln!`:
//! without xl's final newline, but ending in `\n` where xl adds an empty
//! line after the message.
//!
//! One module per job: the command outputs `list`, `info`, `vcpu_list`,
//! `sched` (sched-credit, vcpu-pin), `uptime` and `devices`; `json` (libxl's JSON view); `messages`; and
//! `commands` (the command table and help). This module holds the exit
//! statuses and the one-line outputs, and re-exports every public item so
//! `xl::X` paths are unchanged.

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

mod commands;
mod devices;
mod info;
mod json;
mod list;
mod messages;
mod sched;
mod uptime;
mod vcpu_list;

pub use commands::{cmd_lookup, help, CmdSpec, COMMANDS};
pub use devices::{
    block_list_header, block_list_row, network_list_header, network_list_row, BlockInfo, NicInfo,
};
pub use info::{info, info_filtered, info_lines, VirtCaps, XlInfo, XEND_CONFIG_FORMAT};
pub use json::{
    block_attach_dryrun, dryrun_json, libxl_domain_config_json, list_long, network_attach_dryrun,
};
pub use list::{
    list, list_header, list_row, vm_list_header, vm_list_row, DomainInfo, ListOptions,
    ShutdownReason,
};
pub use messages::{
    cannot_set_memory_max, cannot_set_memory_target, cant_get_domid, cant_get_domname, cant_rename,
    config_error_report, device_not_connected, domain_does_not_exist, invalid_domain,
    invalid_domain_no_rc, invalid_memory_size, no_pv_control, op_failed, option_not_supported,
    parsing_config_from, rebooting, requires_arguments, shutting_down, unknown_device,
    COMMAND_NOT_IMPLEMENTED, FAILED_TO_PARSE_CONFIG, INVALID_DOMAIN_ID, NOT_DESTROYING_DOM0,
    NO_DRYRUN, PYTHON_CONFIG_WARNING, SPECIFY_ALL_OR_DOMAIN, UNABLE_TO_ATTACH_CONSOLE,
    UNKNOWN_GLOBAL_OPTION,
};
pub use sched::{
    check_credit_params, could_not_set_affinity, libxl_error, parse_cpurange, parse_vcpu_selector,
    sched_credit_header, sched_credit_pool_unavailable, sched_credit_row, sched_option_value,
    unknown_cpupool, CreditParams, VcpuSelector, COULD_NOT_SET_AFFINITY_ALL,
    CREDIT_PARAMS_GET_FAILED, DEFAULT_WEIGHT, MUST_SPECIFY_DOMAIN, MUST_SPECIFY_SCHEDPARAM,
    NO_POOL_WITH_DOMAIN_OPTIONS, PARAM_UNCHANGED, POOL0, SCHED_PARAMS_SET_FAILED,
};
pub use uptime::{uptime_header, uptime_row, uptime_short_row, uptime_to_string};
pub use vcpu_list::{cpumap_to_string, vcpu_list_header, vcpu_list_row, VcpuInfo};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Uuid;
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
