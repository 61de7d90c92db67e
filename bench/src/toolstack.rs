//! `kxl create` to the test guest's first console byte, through a real
//! kxend (started before the clock runs, as it would be on a host).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::{test_guest, workspace_bin};

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

/// Median ms from `kxl create` to the first console byte, over `runs`.
pub fn create_to_console(runs: usize) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("kxen-bench-create-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    // Start kxend outside the measurement.
    if !kxl(&dir, &["list"]) {
        return None;
    }
    let mut times = Vec::new();
    for i in 0..runs {
        let name = format!("bench{i}");
        let cfg = dir.join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 64\ncmdline = \"kxen.mode=service\"\n",
                test_guest().display()
            ),
        )
        .ok()?;
        let log = dir.join(format!("state/console/guest-{name}.log"));
        let start = Instant::now();
        if !kxl(&dir, &["create", cfg.to_str()?]) {
            break;
        }
        while std::fs::metadata(&log).map_or(0, |m| m.len()) == 0 {
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        kxl(&dir, &["destroy", &name]);
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("run/kxend.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times.get(times.len() / 2).copied()
}
