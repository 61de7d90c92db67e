//! How many event channel ports a domain gets: xl's `max_event_channels`
//! in the cfg limits both event ABIs, and the FIFO ABI reaches past the
//! 2-level ABI's 4,096 ports. The PV test guest (`tests/guest`) runs one
//! special check per domain under the real kxend; `kxen.evtchn_max=N`
//! tells it the limit the cfg set.

use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::test_guest;

/// Write a cfg that runs check `check` with `max_event_channels = max`.
fn config(d: &Dom0, name: &str, check: &str, max: u32) -> std::path::PathBuf {
    let path = d.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 64\nvcpus = 1\n\
             cmdline = \"kxen.test={check} kxen.evtchn_max={max}\"\nmax_event_channels = {max}\n",
            test_guest().display()
        ),
    )
    .unwrap();
    path
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
