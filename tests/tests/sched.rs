//! `kxl sched-credit` and `kxl vcpu-pin` end to end: real kxl and kxend,
//! the PV test guest in service mode, and the results read where the
//! kernel keeps them (the domain's cgroup files, the vCPU threads'
//! /proc status), not from what kxl was asked.

use std::path::{Path, PathBuf};
use std::process::Output;

use kxen_tests::dom0::{show, Dom0};

fn domid_of(d: &Dom0, name: &str) -> u32 {
    d.ok(&["domid", name]).trim().parse().expect("kxl domid")
}

/// The VMM process of domain `domid`, from kxend's record.
fn vmm_pid(d: &Dom0, domid: u32) -> u32 {
    let record = std::fs::read_to_string(d.dir.join(format!("state/domains/{domid}.json")))
        .expect("kxend's record of the domain");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    record["pid"].as_u64().expect("the record names the pid") as u32
}

/// The host thread of vCPU `vcpu` of VMM `pid`.
fn vcpu_tid(pid: u32, vcpu: u32) -> u32 {
    let want = format!("vcpu{vcpu}");
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == want {
            return entry.file_name().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("kxen-vmm {pid} has no thread {want}");
}

/// The CPUs a thread may run on, as the kernel lists them.
fn cpus_allowed(pid: u32, tid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status")
        .trim()
        .to_string()
}

/// The affinity column of `name`'s vCPU `vcpu` in `kxl vcpu-list`.
fn listed_affinity(d: &Dom0, name: &str, vcpu: u32) -> String {
    let out = d.ok(&["vcpu-list", name]);
    let row = out
        .lines()
        .skip(1)
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&name) && f.get(2) == Some(&vcpu.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("no vCPU {vcpu} of {name} in:\n{out}"));
    // NAME ID VCPU CPU STATE TIME HARD / SOFT
    row.split_whitespace().skip(6).collect::<Vec<_>>().join(" ")
}

/// The domain's cgroup directory of `controller` (v1), or its v2 one.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',').any(|c| c == controller).then_some(path)
    });
    match v1 {
        Some(path) => {
            let mount = mounts
                .lines()
                .find(|l| {
                    l.split_once(" - ").is_some_and(|(_, r)| {
                        r.starts_with("cgroup ")
                            && r.rsplit(' ')
                                .next()
                                .unwrap()
                                .split(',')
                                .any(|o| o == controller)
                    })
                })
                .and_then(|l| l.split(' ').nth(4))
                .expect("a v1 hierarchy for the controller");
            Path::new(mount).join(path.trim_start_matches('/'))
        }
        None => {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let mount = mounts
                .lines()
                .find(|l| l.contains(" - cgroup2 "))
                .and_then(|l| l.split(' ').nth(4))
                .expect("a cgroup2 mount");
            Path::new(mount).join(path.trim_start_matches('/'))
        }
    }
}

fn is_v2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").exists()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// The cgroup's weight and cap in kxend's mapping: v1 (shares, quota) or
/// v2 (weight, max).
fn cpu_files(dir: &Path) -> (String, String) {
    if is_v2(dir) {
        (read(dir, "cpu.weight"), read(dir, "cpu.max"))
    } else {
        (read(dir, "cpu.shares"), read(dir, "cpu.cfs_quota_us"))
    }
}

/// Exit status 1 and stderr ending with `last` (xl's final line).
fn refused(out: &Output, last: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", show(out));
    assert_eq!(stderr.lines().last(), Some(last), "{}", show(out));
    stderr
}

fn host_cpus() -> u32 {
    let n = std::thread::available_parallelism().unwrap().get() as u32;
    assert!(
        n >= 2,
        "these tests pin vCPUs to CPU 1: the host needs 2 CPUs"
    );
    n
}

/// Start `name` from the test guest with `extra` cfg lines and wait for
/// its service loop.
fn started(d: &Dom0, name: &str, extra: &str) -> (u32, u32) {
    let cfg = d.config(name, extra);
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console(name, "kxen-testguest: service ready");
    let domid = domid_of(d, name);
    (domid, vmm_pid(d, domid))
}

#[test]
fn sched_credit_sets_weight_and_cap_in_the_domain_cgroup() {
    let d = Dom0::new("sched-credit");
    let (domid, pid) = started(&d, "cred", "");
    let cpu = cgroup_dir(pid, "cpu");
    let v2 = is_v2(&cpu);

    // Every domain, Domain-0 first, under xl's pool line and header; a
    // domain without cpu_weight or cap has Xen's defaults.
    let all = d.ok(&["sched-credit"]);
    let mut lines = all.lines();
    assert_eq!(
        lines.next(),
        Some("Cpupool Pool-0: [sched params unavailable]"),
        "{all}"
    );
    assert_eq!(
        lines.next(),
        Some("Name                                ID Weight  Cap"),
        "{all}"
    );
    assert_eq!(
        lines.next(),
        Some("Domain-0                             0    256    0"),
        "{all}"
    );
    assert_eq!(
        lines.next(),
        Some(format!("{:<33} {domid:>4}    256    0", "cred").as_str()),
        "{all}"
    );

    // Weight 512 and a cap of half a CPU reach the cgroup.
    assert_eq!(
        d.ok(&["sched-credit", "-d", "cred", "-w", "512", "-c", "50"]),
        ""
    );
    let expect = if v2 {
        ("200".to_string(), "50000 100000".to_string())
    } else {
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        ("2048".to_string(), "50000".to_string())
    };
    assert_eq!(cpu_files(&cpu), expect);
    assert_eq!(
        d.ok(&["sched-credit", "-d", "cred"]),
        format!(
            "Name                                ID Weight  Cap\n{:<33} {domid:>4}    512   50\n",
            "cred"
        )
    );

    // Long options; cap 0 lifts the limit.
    d.ok(&[
        "sched-credit",
        "--domain=cred",
        "--weight",
        "128",
        "--cap=0",
    ]);
    let expect = if v2 {
        ("50".to_string(), "max 100000".to_string())
    } else {
        ("512".to_string(), "-1".to_string())
    };
    assert_eq!(cpu_files(&cpu), expect);
    // -1 leaves a value as it is, as libxl's "default" does.
    d.ok(&["sched-credit", "-d", "cred", "-w", "300", "-c", "-1"]);
    let table = d.ok(&["sched-credit", "-d", &domid.to_string()]);
    assert!(
        table.ends_with(&format!("{:<33} {domid:>4}    300    0\n", "cred")),
        "{table}"
    );
    let settled = cpu_files(&cpu);

    // Out-of-range values: libxl's reason, xl's line, exit 1, and the
    // cgroup untouched.
    for (args, why) in [
        (
            vec!["-w", "0"],
            "Cpu weight out of range, valid values are within range from 1 to 65535",
        ),
        (
            vec!["-w", "65536"],
            "Cpu weight out of range, valid values are within range from 1 to 65535",
        ),
        (
            vec!["-c", "-5"],
            "Cpu cap out of range, valid range is from 0 to 100 for specified number of vcpus",
        ),
        (
            vec!["-c", "101"],
            "Cpu cap out of range, valid range is from 0 to 100 for specified number of vcpus",
        ),
    ] {
        let mut argv = vec!["sched-credit", "-d", "cred"];
        argv.extend(&args);
        let out = d.kxl(&argv);
        let stderr = refused(&out, "libxl_domain_sched_params_set failed.");
        assert!(
            stderr.contains(&format!("Domain {domid}:{why}")),
            "{args:?}: {stderr}"
        );
        assert_eq!(cpu_files(&cpu), settled, "{args:?} changed the cgroup");
    }
    refused(
        &d.kxl(&["sched-credit", "-w", "5"]),
        "Must specify a domain.",
    );
    refused(
        &d.kxl(&["sched-credit", "-d", "nosuch", "-w", "5"]),
        "nosuch is an invalid domain identifier (rc=-6)",
    );
    refused(
        &d.kxl(&["sched-credit", "-d", "nosuch"]),
        "nosuch is an invalid domain identifier (rc=-6)",
    );
    refused(
        &d.kxl(&["sched-credit", "-s", "-d", "cred"]),
        "Specifying a cpupool or schedparam is not allowed with domain options.",
    );
    refused(
        &d.kxl(&["sched-credit", "-t", "10"]),
        "Must specify schedparam to set schedule parameter values.",
    );
    assert_eq!(
        d.ok(&["sched-credit", "-s"]),
        "Cpupool Pool-0: [sched params unavailable]\n"
    );
    let usage = d.kxl(&["sched-credit", "-x"]);
    assert_eq!(usage.status.code(), Some(2), "{}", show(&usage));
}

#[test]
fn vcpu_pin_sets_the_vcpu_thread_affinity() {
    let nr = host_cpus();
    let d = Dom0::new("vcpu-pin");
    let (domid, pid) = started(&d, "pin", "");
    let tid = vcpu_tid(pid, 0);
    let every = format!("0-{}", nr - 1);
    assert_eq!(cpus_allowed(pid, tid), every);
    assert_eq!(listed_affinity(&d, "pin", 0), "all / all");

    // Hard affinity on CPU 1: the thread's mask says so, and vcpu-list
    // reads it back from the thread.
    assert_eq!(d.ok(&["vcpu-pin", "pin", "0", "1"]), "");
    assert_eq!(cpus_allowed(pid, tid), "1");
    assert_eq!(listed_affinity(&d, "pin", 0), "1 / all");
    // xl's list syntax, all vCPUs, and a soft affinity, which is kept
    // and shown.
    d.ok(&["vcpu-pin", &domid.to_string(), "all", "0-1,^1", "1"]);
    assert_eq!(cpus_allowed(pid, tid), "0");
    assert_eq!(listed_affinity(&d, "pin", 0), "0 / 1");
    // "-" leaves the hard affinity alone.
    d.ok(&["vcpu-pin", "pin", "0", "-", "all"]);
    assert_eq!(cpus_allowed(pid, tid), "0");
    assert_eq!(listed_affinity(&d, "pin", 0), "0 / all");

    // The VMM's seccomp filters do not mind: the pinning is kxend's
    // system call, and the domain runs on.
    let list = d.ok(&["list", "pin"]);
    assert!(
        list.lines().nth(1).is_some_and(|l| l.starts_with("pin ")),
        "{list}"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // Bad arguments: xl's messages and exit statuses; the thread keeps
    // its affinity.
    refused(
        &d.kxl(&["vcpu-pin", "pin", "x", "1"]),
        "Error: Invalid argument x as VCPU.",
    );
    refused(
        &d.kxl(&["vcpu-pin", "pin", "0", "3-1"]),
        "Invalid pcpu range: 3-1.",
    );
    refused(
        &d.kxl(&["vcpu-pin", "pin", "0", "^all"]),
        "Can't combine \"^\" and \"all\".",
    );
    refused(
        &d.kxl(&["vcpu-pin", "pin", "5", "1"]),
        "Could not set affinity for vcpu `5'.",
    );
    // A CPU the host does not have leaves no CPU at all.
    let missing = (nr + 5).to_string();
    refused(
        &d.kxl(&["vcpu-pin", "pin", "0", &missing]),
        "Could not set affinity for vcpu `0'.",
    );
    refused(
        &d.kxl(&["vcpu-pin", "nosuch", "0", "1"]),
        "nosuch is an invalid domain identifier (rc=-6)",
    );
    let usage = d.kxl(&["vcpu-pin", "pin", "0"]);
    assert_eq!(usage.status.code(), Some(2), "{}", show(&usage));
    assert_eq!(cpus_allowed(pid, tid), "0");

    // The domain's cpuset must allow the CPUs: narrowed to CPU 0, a pin
    // to CPU 1 is refused, and says why.
    let cpuset = cgroup_dir(pid, "cpuset");
    // v1 and v2 both take the list in cpuset.cpus.
    let cpus_file = "cpuset.cpus";
    let before = read(&cpuset, cpus_file);
    std::fs::write(cpuset.join(cpus_file), "0").unwrap();
    let out = d.kxl(&["vcpu-pin", "pin", "0", "1"]);
    std::fs::write(cpuset.join(cpus_file), &before).unwrap();
    let stderr = refused(&out, "Could not set affinity for vcpu `0'.");
    assert!(
        stderr.contains(&format!(
            "libxl: error: Domain {domid}:Setting vcpu affinity: Invalid argument (the domain's cpuset allows CPUs 0)"
        )),
        "{stderr}"
    );
    assert_eq!(cpus_allowed(pid, tid), "0");
}

#[test]
fn cfg_cpus_pin_at_create() {
    host_cpus();
    let d = Dom0::new("cfg-cpus");
    let cfg = d.config("early", "cpus = \"1\"\ncpus_soft = \"0\"\n");
    // Paused: the affinity is there before the guest ever runs.
    d.ok(&["create", "-p", cfg.to_str().unwrap()]);
    let pid = vmm_pid(&d, domid_of(&d, "early"));
    let tid = vcpu_tid(pid, 0);
    assert_eq!(cpus_allowed(pid, tid), "1");
    assert_eq!(listed_affinity(&d, "early", 0), "1 / 0");
    d.ok(&["unpause", "early"]);
    d.wait_console("early", "kxen-testguest: service ready");
    assert_eq!(cpus_allowed(pid, tid), "1");

    // A list xl cannot read stops xl create before anything starts.
    let bad = d.config("bad", "cpus = \"1-x\"\n");
    let out = d.kxl(&["create", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid pcpu range: 1-x."),
        "{}",
        show(&out)
    );
    let list = d.ok(&["list"]);
    assert!(!list.lines().any(|l| l.starts_with("bad ")), "{list}");
}
