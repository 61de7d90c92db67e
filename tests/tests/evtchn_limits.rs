//! How many event channel ports a domain gets: xl's `max_event_channels`
//! in the cfg limits both event ABIs, and the FIFO ABI reaches past the
//! 2-level ABI's 4,096 ports. The PV test guest (`tests/guest`) runs one
//! special check per domain under the real kxend; `kxen.evtchn_max=N`
//! tells it the limit the cfg set. The last test runs the guest under
//! kxen-run and plays Dom0 itself, to raise a port above 4096.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use kxen_foreign::domain::ForeignDomain;
use kxen_tests::dom0::{show, Dom0};
use kxen_tests::{package_bin, test_guest};

/// Write a cfg that runs check `check` with `max_event_channels = max`.
fn config(d: &Dom0, name: &str, check: &str, max: u32) -> std::path::PathBuf {
    d.guest_config(
        name,
        &format!("kxen.test={check} kxen.evtchn_max={max}"),
        &format!("max_event_channels = {max}\n"),
    )
}

/// Everything the domain printed: its console log and the VMM's log,
/// where console_io output lands (the checks mirror to it once they leave
/// the 2-level ABI the console ring's notifications use).
fn output(d: &Dom0, name: &str) -> String {
    let mut all = d.console_log(name);
    if let Ok(entries) = std::fs::read_dir(d.dir.join("state/logs")) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with("vmm-") && file.ends_with(&format!("-{name}.log")) {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    all
}

/// Create the domain and wait for its verdict on `check`.
fn run_check(d: &Dom0, name: &str, check: &str, max: u32) -> String {
    let cfg = config(d, name, check, max);
    let out = d.kxl(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let start = Instant::now();
    loop {
        let log = output(d, name);
        if log.contains(&format!("PASS {check}")) {
            return log;
        }
        assert!(
            !log.contains(&format!("FAIL {check}")),
            "{check} failed:\n{log}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no verdict on {check}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `max_event_channels = 40` in the cfg: the 2-level guest gets ports up
/// to 40 and -ENOSPC (-28) for the next, as under xl.
#[test]
fn max_event_channels_in_the_cfg_limits_ports() {
    let d = Dom0::new("evtchn-limit");
    let log = run_check(&d, "evlimit", "evtchn.port_limit", 40);
    assert!(log.contains("up to 40, then -28"), "{log}");
}

/// FIFO: with `max_event_channels = 4200` the guest adds five event array
/// pages, gets ports up to 4200 (past the 2-level ABI's 4095) and -ENOSPC
/// after, and a loopback channel on ports 4199 and 4200 delivers both
/// ways.
#[test]
fn fifo_ports_reach_past_4096_up_to_the_cfg_limit() {
    let d = Dom0::new("evtchn-fifo-ports");
    let log = run_check(&d, "evfifo", "evtchn.fifo_ports", 4200);
    assert!(log.contains("up to 4200, then -28"), "{log}");
}

/// Dom0 raises a FIFO guest's port above 4096: the test guest
/// (`kxen.test=evtchn.fifo_ports`, max_event_channels 4200) fills its
/// ports, allocates one past 4096 for Dom0 and waits; this side binds it
/// with kxen-foreign, as kxend's backends do, and notifies. A FIFO
/// domain's ports are raised by the VMM on request, through the routing
/// area's raise-request bitmap, which must cover that port.
#[test]
fn dom0_raises_a_fifo_port_past_4096() {
    let socket = std::env::temp_dir().join(format!("kxen-fifo-hi-{}.sock", std::process::id()));
    let mut child = Command::new(package_bin("kxen-run", "kxen-run"))
        .env("KXEN_VMM", package_bin("kxen-vmm", "kxen-vmm"))
        .arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "64", "--vcpus", "1", "--name", "fifohi"])
        .args(["--domid", "7", "--max-event-channels", "4200"])
        .args([
            "--cmdline",
            "kxen.test=evtchn.fifo_ports kxen.evtchn_max=4200 kxen.dom0_wait=1",
        ])
        .arg("--control-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kxen-run");
    // The console (stdout) and console_io (stderr) lines, in one stream.
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let mut transcript = String::new();
    let mut wait_for_line = |needle: &str, transcript: &mut String| -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("no {needle:?} line:\n{transcript}");
            };
            transcript.push_str(&line);
            transcript.push('\n');
            assert!(!line.contains("FAIL evtchn.fifo_ports"), "{transcript}");
            if line.contains(needle) {
                return line;
            }
        }
    };
    let line = wait_for_line("evtchn.fifo_ports: dom0 port ", &mut transcript);
    let port: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(port > 4096, "{line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let domain = loop {
        match ForeignDomain::connect(7, &socket) {
            Ok(d) => break d,
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let ch = domain
        .bind_interdomain(port)
        .unwrap_or_else(|e| panic!("bind guest port {port}: {e}"));
    assert_eq!(ch.guest_port(), port);
    ch.notify();
    wait_for_line("PASS evtchn.fifo_ports", &mut transcript);
    drop(ch);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
}
