//! Density: N idle test-guest domains (service mode, 16 MiB each) under
//! one private kxend. Reports how long creating them takes, how idle the
//! host stays once they have settled, kxend's thread count and memory
//! before and after, and each domain's idle CPU and memory cost in its
//! VMM and in kxend (`kxen-bench density`; N from KXEN_BENCH_DOMAINS,
//! default 100).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::{test_guest, workspace_bin};

/// How long the settled host is watched.
const WINDOW: Duration = Duration::from_secs(30);
/// How long the host is watched before any domain exists.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// How long all guests together get to print their first console byte.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn kxl(dir: &Path, args: &[&str]) -> bool {
    Command::new(workspace_bin("kxl"))
        .args(args)
        .env("KXEN_STATE_DIR", dir.join("state"))
        .env("KXEN_RUN_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// (idle, total) jiffies of all CPUs together, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, total))
}

/// How idle the whole host is over `window`, in percent.
fn host_idle_pct(window: Duration) -> f64 {
    let (idle0, total0) = cpu_jiffies().unwrap_or((0, 0));
    // A measurement window, not a wait for a condition.
    std::thread::sleep(window);
    let (idle1, total1) = cpu_jiffies().unwrap_or((0, 0));
    100.0 * idle1.saturating_sub(idle0) as f64 / total1.saturating_sub(total0).max(1) as f64
}

/// A /proc/PID/status field in KiB (or a count).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// The VMM pids kxend recorded.
fn vmm_pids(state: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(state.join("domains")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            // The record is kxend's JSON; its "pid" is a plain number.
            let text = std::fs::read_to_string(e.path()).ok()?;
            let (_, after) = text.split_once("\"pid\":")?;
            let digits: String = after
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

fn kxend_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("run/kxend.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = kxend_pid(&self.0) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

pub fn run() {
    let n: usize = std::env::var("KXEN_BENCH_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    println!("density: {n} idle test-guest domains (service mode, 16 MiB) under one kxend");
    let dir = std::env::temp_dir().join(format!("kxen-bench-density-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() || !kxl(&dir, &["list"]) {
        println!("  could not start kxend");
        return;
    }
    let _cleanup = Cleanup(dir.clone());
    let Some(kxend) = kxend_pid(&dir) else {
        println!("  kxend wrote no pid file");
        return;
    };
    // The baseline: the same host with kxend running and no domain.
    let host_idle_before = host_idle_pct(BASELINE_WINDOW);
    let threads_before = status_field(kxend, "Threads").unwrap_or(0);
    let rss_before = status_field(kxend, "VmRSS").unwrap_or(0);
    let guest = test_guest();

    let start = Instant::now();
    let mut created = 0;
    for i in 0..n {
        let name = format!("dens{i}");
        let cfg = dir.join(format!("{name}.cfg"));
        let text = format!(
            "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 16\ncmdline = \"kxen.mode=service\"\n",
            guest.display()
        );
        if std::fs::write(&cfg, text).is_err() || !kxl(&dir, &["create", &cfg.to_string_lossy()]) {
            println!("  create {name} failed after {created} domains");
            break;
        }
        created += 1;
        if created % 100 == 0 {
            println!(
                "  {created} created in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let create_s = start.elapsed().as_secs_f64();
    // Settled: every guest has printed its first console byte.
    let logs: Vec<PathBuf> = (0..created)
        .map(|i| dir.join(format!("state/console/guest-dens{i}.log")))
        .collect();
    let booted = loop {
        let up = logs
            .iter()
            .filter(|l| std::fs::metadata(l).is_ok_and(|m| m.len() > 0))
            .count();
        if up == created || start.elapsed() > BOOT_LIMIT {
            break up;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let boot_s = start.elapsed().as_secs_f64();
    let pids = vmm_pids(&dir.join("state"));

    let (idle0, total0) = cpu_jiffies().unwrap_or((0, 0));
    let kxend0 = cpu_ticks(kxend);
    // A measurement window, not a wait for a condition.
    let vmm0: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let secs = t0.elapsed().as_secs_f64();
    let (idle1, total1) = cpu_jiffies().unwrap_or((0, 0));
    let kxend1 = cpu_ticks(kxend);
    let vmm1: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();

    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle_pct = 100.0 * (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64;
    // The share of the host's CPU time kxen itself took (kxend with its
    // xenstored, and every VMM, user and system time): what the host would
    // have left idle without other work running beside the benchmark.
    let kxen_ticks = (kxend1 - kxend0) + (vmm1 - vmm0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let kxen_pct = 100.0 * kxen_ticks as f64 / hz / secs / cores;
    let core_pct = |ticks: u64| 100.0 * ticks as f64 / hz / secs;
    let threads_after = status_field(kxend, "Threads").unwrap_or(0);
    let rss_after = status_field(kxend, "VmRSS").unwrap_or(0);
    let vmm_rss: Vec<u64> = pids
        .iter()
        .filter_map(|&p| status_field(p, "VmRSS"))
        .collect();
    let vmm_anon: Vec<u64> = pids
        .iter()
        .filter_map(|&p| status_field(p, "RssAnon"))
        .collect();
    let vmm_threads: Vec<u64> = pids
        .iter()
        .filter_map(|&p| status_field(p, "Threads"))
        .collect();
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let per = created.max(1) as f64;

    println!(
        "  {:<46} {:>9.1} s   (goal < 60 s; {created} of {n})",
        "created", create_s
    );
    println!(
        "  {:<46} {:>9.1} s   ({booted} printed)",
        "all consoles live", boot_s
    );
    println!(
        "  {:<46} {:>9.1} %   ({:.0} s window; baseline)",
        "host idle, kxend and no domain",
        host_idle_before,
        BASELINE_WINDOW.as_secs_f64()
    );
    println!(
        "  {:<46} {:>9.1} %   (goal >= 97 %, {:.0} s window)",
        "host idle, settled", idle_pct, secs
    );
    println!(
        "  {:<46} {:>9.2} %   (kxend and all VMMs; the rest is other work)",
        "host CPU taken by kxen, settled", kxen_pct
    );
    println!(
        "  {:<46} {:>5} -> {:<5} (goal: not growing with domains)",
        "kxend threads, before -> after", threads_before, threads_after
    );
    println!(
        "  {:<46} {:>9.1} % of a core",
        "kxend idle CPU, all domains",
        core_pct(kxend1 - kxend0)
    );
    println!(
        "  {:<46} {:>9.1} KiB   ({} -> {} KiB)",
        "kxend RSS per domain",
        (rss_after as f64 - rss_before as f64) / per,
        rss_before,
        rss_after
    );
    println!(
        "  {:<46} {:>9.3} % of a core",
        "VMM idle CPU per domain",
        core_pct(vmm1 - vmm0) / pids.len().max(1) as f64
    );
    println!(
        "  {:<46} {:>9.0} KiB   (anon {:.0} KiB; guest RAM 16384 KiB, touched pages count)",
        "VMM RSS per domain",
        avg(&vmm_rss),
        avg(&vmm_anon)
    );
    println!(
        "  {:<46} {:>9.1}",
        "VMM threads per domain",
        avg(&vmm_threads)
    );

    let start = Instant::now();
    for i in 0..created {
        kxl(&dir, &["destroy", &format!("dens{i}")]);
    }
    println!(
        "  {:<46} {:>9.1} s",
        "destroyed all",
        start.elapsed().as_secs_f64()
    );
    let threads_end = status_field(kxend, "Threads").unwrap_or(0);
    println!("  {:<46} {:>9}", "kxend threads at the end", threads_end);
}
