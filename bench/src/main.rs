//! kxen benchmark runner. Every kxen figure is printed next to a baseline
//! measured in the same run, because absolute times on shared machines are
//! noisy. Run with `cargo run --release -p kxen-bench`.

mod baseline;
mod density;
mod devices;
mod hvm;
mod linux;
mod migrate;
mod pv;
mod pv_stock;
mod toolstack;
mod xenstore;

use baseline::{BaselineFeatures, LoopShape};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::{kxen_run, test_guest, vmm_of_launcher};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct GuestRun {
    entry_us: Option<f64>,
    last_line: Option<Duration>,
    bench_line: Option<String>,
    max_overhead_kib: u64,
    /// The most threads the VMM ran at once.
    max_threads: u64,
    exit: Option<i32>,
}

/// kB values of /proc/PID/status fields.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.trim_start_matches(':').trim();
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Boot the test guest, timing guest entry (reported by the VMM), the
/// guest's last line, and sampling the VMM's RSS beyond guest RAM.
fn run_guest(cmdline: &str, memory_mib: u32, vcpus: u32) -> GuestRun {
    let start = Instant::now();
    let mut child = Command::new(kxen_run())
        .arg("--kernel")
        .arg(test_guest())
        .args(["--memory", &memory_mib.to_string(), "--report-timing"])
        .args(["--vcpus", &vcpus.to_string()])
        .args(["--cmdline", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kxen-run");
    // RSS is the VMM's own: kxen-run only serves the console and xenstore.
    let pid = vmm_of_launcher(child.id(), Duration::from_secs(5)).expect("kxen-run's kxen-vmm");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("kxen-vmm: guest-entry-us=")?
                    .parse::<f64>()
                    .ok()
            })
    });
    let sampler = std::thread::spawn(move || {
        let mut max = 0;
        let mut threads = 0;
        // Guest RAM is the memfd (shared memory); the rest is the VMM.
        while let (Some(anon), Some(file)) =
            (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"))
        {
            max = max.max(anon + file);
            threads = threads.max(status_kib(pid, "Threads").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(2));
        }
        (max, threads)
    });
    let mut last_line = None;
    let mut bench_line = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.starts_with("bench: ") {
            bench_line = Some(line.clone());
        }
        if line.starts_with("kxen-testguest: ") && line.ends_with(" skipped") {
            last_line = Some(start.elapsed());
        }
    }
    let status = child.wait().expect("wait kxen-vmm");
    let (max_overhead_kib, max_threads) = sampler.join().unwrap_or((0, 0));
    GuestRun {
        entry_us: err_thread.join().ok().flatten(),
        last_line,
        bench_line,
        max_overhead_kib,
        max_threads,
        exit: status.code(),
    }
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() {
    println!("kxen benchmark (figures are medians; ratios compare with a baseline from this run)");
    println!();
    // `kxen-bench SECTION...` runs only those sections.
    let sections: Vec<String> = std::env::args().skip(1).collect();
    if !sections.is_empty() {
        for section in &sections {
            match section.as_str() {
                "core" => core(),
                "pv" => pv::run(),
                "xenstore" => xenstore::run(),
                "devices" => {
                    devices::block();
                    devices::network();
                }
                "linux" => {
                    linux::run();
                }
                "hvm" => hvm::run(None),
                "density" => density::run(),
                "linux-hvm" => hvm::run(linux::run().and_then(|f| f.dd)),
                "pv-stock" => pv_stock::run(None),
                "migrate" => migrate::run(),
                "linux-pv" => pv_stock::run(linux::run().as_ref()),
                other => eprintln!(
                    "unknown section {other:?} (core, pv, xenstore, devices, linux, hvm, \
                     linux-hvm, pv-stock, linux-pv, migrate, density)"
                ),
            }
        }
        return;
    }

    core();
    println!();
    pv::run();
    xenstore::run();

    println!();
    match toolstack::create_to_console(5) {
        Some(ms) => println!(
            "{:<44} {:>11.1} ms   (goal < 100 ms on VT-x hosts)",
            "kxl create to first console byte", ms
        ),
        None => println!("kxl create to first console byte: could not run kxl/kxend"),
    }

    println!();
    devices::block();
    devices::network();
    let pvh = linux::run();
    pv_stock::run(pvh.as_ref());
    hvm::run(pvh.and_then(|f| f.dd));

    println!();
    migrate::run();
    density::run();
}

/// Round trips against the bare-KVM baseline, start-up, the VMM's
/// footprint and thread count (`kxen-bench core`).
fn core() {
    // Hypercall round trip versus a bare KVM port-I/O exit.
    let bare: Vec<_> = (0..5)
        .filter_map(|_| {
            baseline::bare_port_io_exit(10_000, LoopShape::BareExit, BaselineFeatures::default())
                .ok()
        })
        .collect();
    let shaped: Vec<_> = (0..5)
        .filter_map(|_| {
            baseline::bare_port_io_exit(
                10_000,
                LoopShape::HypercallShaped,
                BaselineFeatures::default(),
            )
            .ok()
        })
        .collect();
    let mut hc = Vec::new();
    let mut null = Vec::new();
    let mut tsc_khz = 0.0;
    for _ in 0..5 {
        let run = run_guest("kxen.test=bench", 64, 1);
        if let Some(line) = run.bench_line {
            hc.extend(field(&line, "hypercall_cycles"));
            null.extend(field(&line, "null_exit_cycles"));
            tsc_khz = field(&line, "tsc_khz").unwrap_or(tsc_khz);
        }
    }
    let bare_cycles = median(bare.iter().map(|b| b.cycles_per_exit).collect());
    let bare_ns = median(bare.iter().map(|b| b.host_ns_per_exit).collect());
    let shaped_cycles = median(shaped.iter().map(|b| b.cycles_per_exit).collect());
    let hc = median(hc);
    let null = median(null);
    let us = |cycles: f64| {
        if tsc_khz > 0.0 {
            format!("{:8.2} us", cycles / tsc_khz * 1000.0)
        } else {
            "      n/a".into()
        }
    };
    println!(
        "{:<44} {:>14} {:>11}  {:>8}",
        "round trip (guest rdtsc)", "cycles", "time", "ratio"
    );
    println!(
        "{:<44} {:>14.0} {}  {:>8}",
        "bare KVM port-I/O exit (baseline)",
        bare_cycles,
        us(bare_cycles),
        "1.00x"
    );
    println!(
        "{:<44} {:>14.0} {}  {:>7.2}x",
        "kxen-vmm null port exit",
        null,
        us(null),
        null / bare_cycles
    );
    println!(
        "{:<44} {:>14.0} {}  {:>7.2}x   (goal <= 1.5x)",
        "kxen hypercall (xen_version)",
        hc,
        us(hc),
        hc / bare_cycles
    );
    println!(
        "{:<44} {:>14.0} {}  {:>7.2}x",
        "bare KVM, a hypercall's guest instructions",
        shaped_cycles,
        us(shaped_cycles),
        shaped_cycles / bare_cycles
    );
    println!(
        "{:<44} {:>14} {:>11}  {:>7.2}x   (kxen's own overhead)",
        "kxen hypercall / same-instruction baseline",
        "",
        "",
        hc / shaped_cycles
    );
    println!(
        "{:<44} {:>14} {:>8.2} us",
        "bare KVM exit, host wall time per exit",
        "",
        bare_ns / 1000.0
    );
    let priced = |irqchip, sync_regs| {
        let runs: Vec<f64> = (0..5)
            .filter_map(|_| {
                baseline::bare_port_io_exit(
                    10_000,
                    LoopShape::BareExit,
                    BaselineFeatures { irqchip, sync_regs },
                )
                .ok()
            })
            .map(|b| b.cycles_per_exit)
            .collect();
        median(runs)
    };
    for (label, irqchip, sync_regs) in [
        ("bare exit + in-kernel irqchip", true, false),
        ("bare exit + synced regs/sregs", false, true),
        ("bare exit + both (kxen-vmm's KVM setup)", true, true),
    ] {
        let c = priced(irqchip, sync_regs);
        println!(
            "{:<44} {:>14.0} {}  {:>7.2}x",
            label,
            c,
            us(c),
            c / bare_cycles
        );
    }
    println!();

    // Start-up, the full check run, and memory overhead.
    let mut entry = Vec::new();
    let mut last = Vec::new();
    let mut overhead = Vec::new();
    let mut threads = Vec::new();
    let mut failures = 0;
    for _ in 0..5 {
        let run = run_guest("", 64, 2);
        entry.extend(run.entry_us);
        last.extend(run.last_line.map(|d| d.as_secs_f64() * 1000.0));
        overhead.push(run.max_overhead_kib as f64);
        threads.push(run.max_threads as f64);
        if run.exit != Some(0) {
            failures += 1;
        }
    }
    println!("{:<44} {:>14}", "start-up and footprint", "median");
    println!(
        "{:<44} {:>11.2} ms   (goal < 20 ms)",
        "kxen-vmm start to guest entry",
        median(entry) / 1000.0
    );
    println!(
        "{:<44} {:>11.1} ms",
        "test guest start to last line (all checks)",
        median(last)
    );
    println!(
        "{:<44} {:>11.2} MiB  (goal < 8 MiB)",
        "VMM RSS beyond guest RAM",
        median(overhead) / 1024.0
    );
    println!(
        "{:<44} {:>11.0}      (2 vCPUs, most at once)",
        "VMM threads",
        median(threads)
    );
    if failures > 0 {
        println!("warning: {failures} of 5 full runs did not power off cleanly");
    }
}
