//! Debian's own kernel as a classic PV guest (`kxen-bench pv-stock`),
//! against the patched Linux as a PVH guest (the `linux` section, same
//! run) and against the host:
//! - `kxl create` to init's line and to the shell's first answer;
//! - dd with 1 MiB O_DIRECT on xvdb, against the host's O_DIRECT on the
//!   same file;
//! - HTTP from the guest to a namespace peer, against a veth pair;
//! - getpid, fork+exit, fork+exec+wait and first-touch page faults
//!   (`bench/guest/loops.c`, the same static binary in the guest and on
//!   the host), each with where its time goes: kxen-vmm's exits by kind
//!   and the time it spent serving them, and the instructions KVM's
//!   emulator ran (the guest's ring 0 on PVM hosts), read from the VMM's
//!   `perf-counters` before and after each loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;
use kxen_tests::linux::root_image_with;
use kxen_tests::stock::{installed_kernel, pv_initramfs};
use kxen_vmm_api::VmmClient;

use crate::devices::{filled_image, host_sequential, ratio};
use crate::linux::{
    dd_commands, guest_http_mbs, guest_timed, shell_answer, veth_http_baseline, PvhFigures,
};

const GUEST: &str = "benchpv";
const GUEST_IP: &str = "10.95.0.2";
const PEER: &str = "10.95.0.1/24";
const BRIDGE: &str = "kxpbbr0";
const DISK_MIB: u64 = 32;
const LIMIT: Duration = Duration::from_secs(600);
/// The loops and their guest iteration counts: a few seconds each in a
/// PV guest on a PVM host. The host runs ten times as many.
const LOOPS: [(&str, &str, u64); 4] = [
    ("getpid", "getpid() system call", 20_000),
    ("fork", "fork + exit + wait", 200),
    ("exec", "fork + exec + wait (static)", 100),
    ("fault", "page fault, fresh anonymous page", 20_480),
];
const HOST_FACTOR: u64 = 10;

/// Compile the loops program, static, with the host's C compiler.
fn build_loops(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("loops.c");
    std::fs::write(&src, include_str!("../guest/loops.c")).map_err(|e| e.to_string())?;
    let out = dir.join("kxen-loops");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc -static failed: {status}"));
    }
    Ok(out)
}

/// ns per operation from a `loop-result NAME ops=N ns_per_op=X` line.
fn ns_per_op(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ns_per_op="))?
        .parse()
        .ok()
}

fn host_loop(binary: &Path, name: &str, ops: u64) -> Option<f64> {
    let out = Command::new(binary)
        .args([name, &(ops * HOST_FACTOR).to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(ns_per_op)
}

/// The guest's kxen-vmm, for its perf counters.
fn vmm_client(d: &Dom0) -> Option<VmmClient> {
    let out = d.kxl(&["domid", GUEST]);
    let domid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    VmmClient::connect(&d.dir.join(format!("run/domains/{domid}.sock"))).ok()
}

type Counters = BTreeMap<String, u64>;

fn delta(after: &Counters, before: &Counters, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0) as f64 - before.get(name).copied().unwrap_or(0) as f64
}

/// Where the time of `ops` operations went, per operation: the exits to
/// kxen-vmm by kind (count, µs kxen-vmm spent), KVM's exits, and the
/// instructions its emulator ran.
fn breakdown(after: &Counters, before: &Counters, ops: f64) -> String {
    let mut kinds: Vec<(String, f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let kind = k.strip_prefix("vmm.exit.")?;
            if kind.ends_with("_ns") {
                return None;
            }
            let n = delta(after, before, k) / ops;
            let us = delta(after, before, &format!("{k}_ns")) / ops / 1e3;
            (n >= 0.01).then(|| (kind.to_string(), n, us))
        })
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let exits: f64 = kinds.iter().map(|k| k.1).sum();
    let served: f64 = kinds.iter().map(|k| k.2).sum();
    let mut text = format!(
        "{exits:.1} exits to kxen-vmm ({served:.1} µs serving them), \
         {:.1} KVM exits, {:.0} emulated instructions",
        delta(after, before, "kvm.exits") / ops,
        delta(after, before, "kvm.insn_emulation") / ops,
    );
    let flushes = delta(after, before, "vmm.shadow_flushes") / ops;
    if flushes >= 0.01 {
        text.push_str(&format!(", {flushes:.2} whole shadow-MMU flushes"));
    }
    let blocked = delta(after, before, "vmm.blocked_ns") / ops / 1e3;
    if blocked >= 0.1 {
        text.push_str(&format!(", {blocked:.1} µs of vCPUs blocked (idle)"));
    }
    for (kind, n, us) in kinds.iter().take(5) {
        text.push_str(&format!("; {kind} {n:.2} ({us:.1} µs)"));
    }
    let hypercalls: Vec<(String, f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let nr = k.strip_prefix("vmm.hypercall.")?;
            if nr.ends_with("_ns") {
                return None;
            }
            let n = delta(after, before, k) / ops;
            let us = delta(after, before, &format!("{k}_ns")) / ops / 1e3;
            (n >= 0.01).then(|| (nr.to_string(), n, us))
        })
        .collect();
    if !hypercalls.is_empty() {
        text.push_str("; hypercalls by number:");
        for (nr, n, us) in hypercalls {
            text.push_str(&format!(" {nr}×{n:.2} ({us:.1} µs)"));
        }
    }
    text
}

fn row(label: &str, base: f64, guest: f64, pvh: Option<f64>) {
    let pvh_text = pvh.map_or("-".to_string(), |p| format!("{p:.1}"));
    println!(
        "{label:<44} {base:>12.1} {guest:>12.1} {pvh_text:>12}  {}",
        ratio(guest, base)
    );
}

pub fn run(pvh: Option<&PvhFigures>) {
    let (release, vmlinuz) = match installed_kernel() {
        Ok(k) => k,
        Err(e) => {
            println!("pv-stock: no installed Debian kernel ({e}); skipped");
            return;
        }
    };
    let d = Dom0::new_in_netns("bench-pvstock");
    let prepared = (|| -> Result<(PathBuf, PathBuf, PathBuf, PathBuf), String> {
        let initrd = d.dir.join("initramfs.cpio");
        std::fs::write(&initrd, pv_initramfs(&release)?).map_err(|e| e.to_string())?;
        let loops = build_loops(&d.dir)?;
        let bytes = std::fs::read(&loops).map_err(|e| e.to_string())?;
        let root = root_image_with(&d.dir, GUEST_IP, &[("bin/kxen-loops", &bytes)]);
        let data = d.dir.join("data.img");
        filled_image(&data, DISK_MIB).ok_or("cannot write the data image")?;
        Ok((initrd, loops, root, data))
    })();
    let (initrd, loops, root, data) = match prepared {
        Ok(p) => p,
        Err(e) => {
            println!("pv-stock: {e}; skipped");
            return;
        }
    };
    let vcpus = crate::linux::vcpus();
    let cfg = d.dir.join("benchpv.cfg");
    let text = format!(
        "name = \"{GUEST}\"\ntype = \"pv\"\nkernel = \"{}\"\nramdisk = \"{}\"\n\
         extra = \"console=hvc0\"\nmemory = 512\nvcpus = {vcpus}\n\
         disk = [ '{},raw,xvda,rw', '{},raw,xvdb,rw' ]\nvif = [ 'bridge={BRIDGE}' ]\n",
        vmlinuz.display(),
        initrd.display(),
        root.display(),
        data.display()
    );
    if std::fs::write(&cfg, text).is_err() {
        return;
    }
    let started = Instant::now();
    if !d
        .kxl(&["create", cfg.to_str().unwrap_or("")])
        .status
        .success()
    {
        println!("pv-stock: kxl create failed; skipped");
        return;
    }
    d.wait_line_after(GUEST, 0, "KXEN-READY", LIMIT);
    let boot = started.elapsed().as_secs_f64();
    let shell = shell_answer(&d, GUEST, started);
    let mut vmm = vmm_client(&d);
    let mut counters = || -> Counters {
        vmm.as_mut()
            .and_then(|c| c.perf_counters().ok())
            .unwrap_or_default()
    };
    let at_shell = counters();

    println!(
        "{:<44} {:>12} {:>12} {:>12}  {:>8}",
        format!("Debian {release} as a PV guest ({vcpus} vCPUs, 512 MiB)"),
        "baseline",
        "PV",
        "PVH",
        "PV/base"
    );
    println!(
        "{:<44} {:>12} {:>11.1}s {:>11}  {:>8}",
        "kxl create to init's first line",
        "",
        boot,
        pvh.map_or("-".into(), |p| format!("{:.1}s", p.boot)),
        pvh.map_or(String::new(), |p| format!("{:.2}× PVH", p.boot / boot))
    );
    println!(
        "{:<44} {:>12} {:>11.1}s {:>11}  {:>8}",
        "kxl create to the shell's first answer",
        "",
        shell,
        pvh.map_or("-".into(), |p| format!("{:.1}s", p.shell)),
        pvh.map_or(String::new(), |p| format!("{:.2}× PVH", p.shell / shell))
    );
    println!(
        "  the boot: {}",
        breakdown(&at_shell, &Counters::new(), 1.0)
    );

    // Disk: the baseline is the host's O_DIRECT on the same file.
    let bytes = (DISK_MIB << 20) as f64;
    for (i, (label, cmd, write)) in dd_commands("xvdb", DISK_MIB).into_iter().enumerate() {
        let host = host_sequential(&data, DISK_MIB, 1 << 20, write).unwrap_or(0.0);
        let guest = guest_timed(&d, GUEST, &cmd, LIMIT).map_or(0.0, |secs| bytes / secs / 1e6);
        let pvh_dd = pvh
            .and_then(|p| p.dd)
            .map(|dd| if i == 0 { dd.write } else { dd.read });
        row(&format!("{label} (host)"), host, guest, pvh_dd);
    }
    // Network: the baseline is the same transfer over a veth pair.
    let base = veth_http_baseline(&d.dir).unwrap_or(0.0);
    let guest = guest_http_mbs(&d, GUEST, BRIDGE, PEER, GUEST_IP);
    row(
        "HTTP guest -> namespace peer, MB/s (veth)",
        base,
        guest,
        pvh.map(|p| p.http),
    );

    // The loops: µs per operation, host against PV guest.
    println!(
        "{:<44} {:>12} {:>12} {:>12}  {:>8}",
        "per operation, µs", "host", "PV", "", "PV/host"
    );
    for (name, label, ops) in LOOPS {
        let host = host_loop(&loops, name, ops).map_or(0.0, |ns| ns / 1e3);
        let before = counters();
        let line = d.guest_command(
            GUEST,
            &format!("kxen-loops {name} {ops}"),
            &format!("loop-result {name}"),
            LIMIT,
        );
        let after = counters();
        let guest = ns_per_op(&line).map_or(0.0, |ns| ns / 1e3);
        println!(
            "{label:<44} {host:>12.2} {guest:>12.2} {:>12}  {}",
            "",
            ratio(guest, host)
        );
        if !before.is_empty() && !after.is_empty() {
            println!(
                "  where it goes: {}",
                breakdown(&after, &before, ops as f64)
            );
        }
    }
    let _ = d.kxl(&["destroy", GUEST]);
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loop_results() {
        assert_eq!(
            ns_per_op("loop-result getpid ops=20000 ns_per_op=1234.5"),
            Some(1234.5)
        );
        assert_eq!(ns_per_op("loop-failed fork child"), None);
    }

    #[test]
    fn breakdown_is_per_operation() {
        let before: Counters = [("vmm.exit.pv_syscall".to_string(), 10)].into();
        let after: Counters = [
            ("vmm.exit.pv_syscall".to_string(), 210),
            ("vmm.exit.pv_syscall_ns".to_string(), 2_000_000),
            ("kvm.exits".to_string(), 400),
            ("kvm.insn_emulation".to_string(), 1000),
            ("vmm.hypercall.23".to_string(), 100),
        ]
        .into();
        let text = breakdown(&after, &before, 100.0);
        assert!(
            text.starts_with(
                "2.0 exits to kxen-vmm (20.0 µs serving them), 4.0 KVM exits, 10 emulated"
            ),
            "{text}"
        );
        assert!(text.contains("pv_syscall 2.00 (20.0 µs)"), "{text}");
        assert!(text.contains("23×1.00 (0.0 µs)"), "{text}");
    }
}
