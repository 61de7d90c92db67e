//! Linux as a PVH guest (guest-kernel-patches/): boot time to init, dd on
//! a xen-blkfront disk against the same file read and written on the host
//! with O_DIRECT, and TCP from the guest to a namespace peer against the
//! same busybox pipeline over a veth pair, all in one run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;
use kxen_tests::linux::{guest_kernel, root_image, CMDLINE};

use crate::devices::{filled_image, host_sequential, ratio};

const LIMIT: Duration = Duration::from_secs(600);
const GUEST: &str = "benchlinux";
const DISK_MIB: u64 = 256;
const NET_MIB: u64 = 64;

/// MB/s from busybox dd's summary: "... copied, 1.23 seconds, 217.9MB/s".
fn dd_mbs(line: &str, bytes: u64) -> Option<f64> {
    let secs: f64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" seconds"))?
        .trim()
        .parse()
        .ok()?;
    (secs > 0.0).then(|| bytes as f64 / secs / 1e6)
}

fn netns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// A busybox TCP sink in `ns`, discarding what it receives.
fn tcp_sink(ns: &str) -> Option<Child> {
    let child = netns(ns, &["busybox", "nc", "-l", "-p", "5001"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(child)
}

/// `dd | nc` over a veth pair between two fresh namespaces: the baseline.
fn veth_tcp_baseline() -> Option<f64> {
    let a = format!("kxl-a-{}", std::process::id());
    let b = format!("kxl-b-{}", std::process::id());
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = ip(&["netns", "add", &a])
        && ip(&["netns", "add", &b])
        && ip(&[
            "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ])
        && ip(&["-n", &a, "addr", "add", "10.97.0.2/24", "dev", "va"])
        && ip(&["-n", &b, "addr", "add", "10.97.0.1/24", "dev", "vb"])
        && ip(&["-n", &a, "link", "set", "va", "up"])
        && ip(&["-n", &b, "link", "set", "vb", "up"]);
    let result = ok
        .then(|| {
            let mut sink = tcp_sink(&b)?;
            let out = netns(
                &a,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "busybox dd if=/dev/zero bs=64k count={} | busybox nc 10.97.0.1 5001",
                        NET_MIB * 16
                    ),
                ],
            )
            .output()
            .ok()?;
            let _ = sink.kill();
            let _ = sink.wait();
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            text.lines().find_map(|l| dd_mbs(l, NET_MIB << 20))
        })
        .flatten();
    ip(&["netns", "del", &a]);
    ip(&["netns", "del", &b]);
    result
}

pub fn run() {
    let kernel = match std::panic::catch_unwind(guest_kernel) {
        Ok(k) => k,
        Err(_) => {
            println!("linux: the guest kernel did not build; skipped");
            return;
        }
    };
    let d = Dom0::new_in_netns("bench-linux");
    let root = root_image(&d.dir, "10.98.0.2");
    let data = d.dir.join("data.img");
    if filled_image(&data, DISK_MIB).is_none() {
        println!("linux: cannot write a {DISK_MIB} MiB image; skipped");
        return;
    }
    let cfg = d.dir.join("benchlinux.cfg");
    let text = format!(
        "name = \"{GUEST}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 256\nvcpus = 2\n\
         cmdline = \"{CMDLINE}\"\n\
         disk = [ '{},raw,xvda,rw', '{},raw,xvdb,rw' ]\nvif = [ 'bridge=kxlbbr0' ]\n",
        kernel.display(),
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
        println!("linux: kxl create failed; skipped");
        return;
    }
    d.wait_line_after(GUEST, 0, "KXEN-READY", LIMIT);
    let boot = started.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>12} {:>12}  {:>8}",
        "Linux PVH guest (2 vCPUs, 256 MiB)", "host", "kxen", "ratio"
    );
    println!(
        "{:<44} {:>12} {:>11.1}s  {:>8}",
        "kxl create to init's first line", "", boot, ""
    );

    let bytes = DISK_MIB << 20;
    for (label, cmd, write) in [
        (
            "dd xvdb write, 1 MiB O_DIRECT, MB/s",
            format!("dd if=/dev/zero of=/dev/xvdb bs=1M count={DISK_MIB} oflag=direct"),
            true,
        ),
        (
            "dd xvdb read, 1 MiB O_DIRECT, MB/s",
            format!("dd if=/dev/xvdb of=/dev/null bs=1M count={DISK_MIB} iflag=direct"),
            false,
        ),
    ] {
        let host = host_sequential(&data, DISK_MIB, 1 << 20, write).unwrap_or(0.0);
        let line = d.guest_command(GUEST, &cmd, &format!("{bytes} bytes"), LIMIT);
        let guest = dd_mbs(&line, bytes).unwrap_or(0.0);
        println!(
            "{:<44} {:>12.1} {:>12.1}  {}",
            label,
            host,
            guest,
            ratio(guest, host)
        );
    }

    let base = veth_tcp_baseline().unwrap_or(0.0);
    let ns = d.netns.clone().unwrap_or_default();
    let _ = d.in_netns(&["ip", "addr", "add", "10.98.0.1/24", "dev", "kxlbbr0"]);
    let _ = d.in_netns(&["ip", "link", "set", "kxlbbr0", "up"]);
    let guest = tcp_sink(&ns)
        .map(|mut sink| {
            let line = d.guest_command(
                GUEST,
                &format!(
                    "dd if=/dev/zero bs=64k count={} | nc 10.98.0.1 5001",
                    NET_MIB * 16
                ),
                &format!("{} bytes", NET_MIB << 20),
                LIMIT,
            );
            let _ = sink.kill();
            let _ = sink.wait();
            dd_mbs(&line, NET_MIB << 20).unwrap_or(0.0)
        })
        .unwrap_or(0.0);
    println!(
        "{:<44} {:>12.1} {:>12.1}  {}",
        "TCP to a namespace peer (dd | nc), MB/s",
        base,
        guest,
        ratio(guest, base)
    );
    let _ = d.kxl(&["destroy", GUEST]);
    println!();
}

#[cfg(test)]
mod tests {
    use super::dd_mbs;

    #[test]
    fn parses_busybox_dd_summary() {
        let line = "268435456 bytes (256.0MB) copied, 2.000000 seconds, 128.0MB/s";
        let mbs = dd_mbs(line, 268_435_456).unwrap();
        assert!((mbs - 134.217728).abs() < 1e-6);
        assert_eq!(dd_mbs("garbage", 1), None);
    }
}
