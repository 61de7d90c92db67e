//! Linux as a PVH guest (guest-kernel-patches/): boot time to init, dd on
//! a xen-blkfront disk against the same file read and written on the host
//! with O_DIRECT, and an HTTP transfer from the guest to a namespace peer
//! against the same transfer over a veth pair, all in one run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;
use kxen_tests::linux::{guest_kernel, root_image, CMDLINE};

use crate::devices::{filled_image, host_sequential, ratio, VethPair};

const LIMIT: Duration = Duration::from_secs(600);
const GUEST: &str = "benchlinux";
const DISK_MIB: u64 = 32;
const NET_MIB: u64 = 16;
/// vCPUs of the benchmark guest (`KXEN_BENCH_LINUX_VCPUS`, default 2).
pub(crate) fn vcpus() -> u32 {
    std::env::var("KXEN_BENCH_LINUX_VCPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Guest seconds between two readings of /proc/uptime in an
/// `elapsed A B` answer.
fn elapsed_secs(line: &str) -> Option<f64> {
    let mut words = line.split_whitespace().skip(1);
    let a: f64 = words.next()?.parse().ok()?;
    let b: f64 = words.next()?.parse().ok()?;
    (b > a).then_some(b - a)
}

/// Run `cmd` in `guest`'s shell, timed by the guest's /proc/uptime
/// (10 ms resolution; busybox dd prints no rate).
pub(crate) fn guest_timed(d: &Dom0, guest: &str, cmd: &str, limit: Duration) -> Option<f64> {
    let line = d.guest_command(
        guest,
        &format!(
            "a=$(cut -d' ' -f1 /proc/uptime); {cmd} >/dev/null 2>&1; \
             b=$(cut -d' ' -f1 /proc/uptime); echo elapsed $a $b"
        ),
        "elapsed ",
        limit,
    );
    elapsed_secs(&line)
}

fn netns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Whether a socket in namespace `ns` listens on TCP `port` within
/// `limit` (read from the namespace's /proc/net/tcp and tcp6: state 0A is LISTEN).
fn tcp_listening(ns: &str, port: u16, limit: Duration) -> bool {
    let local = format!(":{port:04X}");
    let start = Instant::now();
    while start.elapsed() < limit {
        let listening = netns(ns, &["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout).lines().any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
                })
            })
            .unwrap_or(false);
        if listening {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Fetch `url` from inside `ns` with busybox wget; MB/s by the wall clock.
fn wget_mbs(ns: &str, url: &str, bytes: u64) -> Option<f64> {
    let start = Instant::now();
    let out = netns(ns, &["busybox", "wget", "-q", "-O", "/dev/null", url])
        .output()
        .ok()?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        println!(
            "  wget {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(bytes as f64 / secs / 1e6)
}

/// The same HTTP transfer over a veth pair between two fresh namespaces,
/// served by busybox httpd from the host's page cache: the baseline.
pub(crate) fn veth_http_baseline(dir: &std::path::Path) -> Option<f64> {
    let www = dir.join("www");
    let file = vec![0u8; (NET_MIB << 20) as usize];
    if std::fs::create_dir_all(&www).is_err() || std::fs::write(www.join("big"), file).is_err() {
        return None;
    }
    let pair = VethPair::new("kxl", "10.97.0.2/24", "10.97.0.1/24")?;
    let (a, b) = (pair.a.as_str(), pair.b.as_str());
    let result = (|| {
        let mut server = netns(a, &["busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if !tcp_listening(a, 8080, Duration::from_secs(10)) {
            println!("veth baseline: busybox httpd never listened on 8080");
            let _ = server.kill();
            let _ = server.wait();
            return None;
        }
        let mbs = wget_mbs(b, "http://10.97.0.2:8080/big", NET_MIB << 20);
        let _ = server.kill();
        let _ = server.wait();
        mbs
    })();
    drop(pair);
    result
}

/// The PVH guest's dd figures on xen-blkfront (MB/s), for the HVM
/// section's comparison of the two guest interfaces of one backend.
#[derive(Debug, Clone, Copy)]
pub struct BlkfrontDd {
    pub write: f64,
    pub read: f64,
}

/// The PVH guest's figures, for the sections that compare with it.
#[derive(Debug, Clone, Copy)]
pub struct PvhFigures {
    /// `kxl create` to init's line, and to the shell's first answer (s).
    pub boot: f64,
    pub shell: f64,
    pub dd: Option<BlkfrontDd>,
    /// Guest to namespace peer over HTTP, MB/s.
    pub http: f64,
}

/// Seconds from `started` to the answer of the guest's shell to its first
/// command (init's line has come already).
pub(crate) fn shell_answer(d: &Dom0, guest: &str, started: Instant) -> f64 {
    d.guest_command(guest, "echo shell-$((6 * 7))", "shell-42", LIMIT);
    started.elapsed().as_secs_f64()
}

/// HTTP from `guest` (its eth0 at `guest_ip` on `bridge` in the Dom0's
/// namespace) to the namespace: the guest serves a tmpfs file with busybox
/// httpd and the namespace fetches it. MB/s.
pub(crate) fn guest_http_mbs(
    d: &Dom0,
    guest: &str,
    bridge: &str,
    peer: &str,
    guest_ip: &str,
) -> f64 {
    let ns = d.netns.clone().unwrap_or_default();
    let _ = d.in_netns(&["ip", "addr", "add", peer, "dev", bridge]);
    let _ = d.in_netns(&["ip", "link", "set", bridge, "up"]);
    d.guest_command(
        guest,
        &format!(
            "mkdir -p /www && mount -t tmpfs tmpfs /www && \
             dd if=/dev/zero of=/www/big bs=1M count={NET_MIB} 2>/dev/null && \
             httpd -p 8080 -h /www && echo httpd-up"
        ),
        "httpd-up",
        LIMIT,
    );
    wget_mbs(&ns, &format!("http://{guest_ip}:8080/big"), NET_MIB << 20).unwrap_or(0.0)
}

/// `dd` lines of both Linux sections: (label, command, write), with the
/// device and size filled in.
pub(crate) fn dd_commands(dev: &str, mib: u64) -> [(String, String, bool); 2] {
    [
        (
            format!("dd {dev} write, 1 MiB O_DIRECT, MB/s"),
            format!("dd if=/dev/zero of=/dev/{dev} bs=1M count={mib} oflag=direct"),
            true,
        ),
        (
            format!("dd {dev} read, 1 MiB O_DIRECT, MB/s"),
            format!("dd if=/dev/{dev} of=/dev/null bs=1M count={mib} iflag=direct"),
            false,
        ),
    ]
}

pub fn run() -> Option<PvhFigures> {
    let vcpus = vcpus();
    let kernel = match std::panic::catch_unwind(guest_kernel) {
        Ok(k) => k,
        Err(_) => {
            println!("linux: the guest kernel did not build; skipped");
            return None;
        }
    };
    let d = Dom0::new_in_netns("bench-linux");
    let root = root_image(&d.dir, "10.98.0.2");
    let data = d.dir.join("data.img");
    if filled_image(&data, DISK_MIB).is_none() {
        println!("linux: cannot write a {DISK_MIB} MiB image; skipped");
        return None;
    }
    let cfg = d.dir.join("benchlinux.cfg");
    let text = format!(
        "name = \"{GUEST}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 256\nvcpus = {vcpus}\n\
         cmdline = \"{CMDLINE}\"\n\
         disk = [ '{},raw,xvda,rw', '{},raw,xvdb,rw' ]\nvif = [ 'bridge=kxlbbr0' ]\n",
        kernel.display(),
        root.display(),
        data.display()
    );
    if std::fs::write(&cfg, text).is_err() {
        return None;
    }
    let started = Instant::now();
    if !d
        .kxl(&["create", cfg.to_str().unwrap_or("")])
        .status
        .success()
    {
        println!("linux: kxl create failed; skipped");
        return None;
    }
    d.wait_line_after(GUEST, 0, "KXEN-READY", LIMIT);
    let boot = started.elapsed().as_secs_f64();
    let shell = shell_answer(&d, GUEST, started);
    println!(
        "{:<44} {:>12} {:>12}  {:>8}",
        format!("Linux PVH guest ({vcpus} vCPUs, 256 MiB)"),
        "host",
        "kxen",
        "ratio"
    );
    println!(
        "{:<44} {:>12} {:>11.1}s  {:>8}",
        "kxl create to init's first line", "", boot, ""
    );
    println!(
        "{:<44} {:>12} {:>11.1}s  {:>8}",
        "kxl create to the shell's first answer", "", shell, ""
    );

    let bytes = (DISK_MIB << 20) as f64;
    let mut figures = Vec::new();
    for (label, cmd, write) in dd_commands("xvdb", DISK_MIB) {
        let host = host_sequential(&data, DISK_MIB, 1 << 20, write).unwrap_or(0.0);
        let guest = guest_timed(&d, GUEST, &cmd, LIMIT).map_or(0.0, |secs| bytes / secs / 1e6);
        figures.push(guest);
        println!(
            "{:<44} {:>12.1} {:>12.1}  {}",
            label,
            host,
            guest,
            ratio(guest, host)
        );
    }

    // Guest to peer: the guest serves a file from tmpfs with busybox
    // httpd and the namespace peer fetches it.
    let base = veth_http_baseline(&d.dir).unwrap_or(0.0);
    let guest = guest_http_mbs(&d, GUEST, "kxlbbr0", "10.98.0.1/24", "10.98.0.2");
    println!(
        "{:<44} {:>12.1} {:>12.1}  {}",
        "HTTP guest -> namespace peer (veth), MB/s",
        base,
        guest,
        ratio(guest, base)
    );
    let _ = d.kxl(&["destroy", GUEST]);
    println!();
    let dd = match figures[..] {
        [write, read] => Some(BlkfrontDd { write, read }),
        _ => None,
    };
    Some(PvhFigures {
        boot,
        shell,
        dd,
        http: guest,
    })
}

#[cfg(test)]
mod tests {
    use super::elapsed_secs;

    #[test]
    fn parses_elapsed_answer() {
        assert_eq!(elapsed_secs("elapsed 10.00 12.50"), Some(2.5));
        assert_eq!(elapsed_secs("elapsed 10.00 10.00"), None);
        assert_eq!(elapsed_secs("garbage"), None);
    }
}
