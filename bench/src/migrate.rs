//! Save, restore and live migration (`kxen-bench migrate`; issue 17),
//! between two kxend instances on this machine, the destination reached
//! through an `-s` script as `ssh HOST` would be:
//! - `kxl migrate` of an idle 256 MiB test guest and of one rewriting
//!   8 MiB of its memory as fast as it can: downtime, total time and the
//!   bytes that went over the pipe, against memory size over the pipe's
//!   bandwidth, measured through the same script in the same run;
//! - `kxl save` and `kxl restore` of the idle guest against writing and
//!   reading the same number of bytes with dd.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;

const MEMORY_MIB: u64 = 256;
const CHURN_PAGES: u32 = 2048;
const CHURN: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(120);

/// MB/s of `MEMORY_MIB` of zeroes through `script` (an `-s` command)
/// into `cat` on the "destination".
fn pipe_bandwidth(script: &Path) -> Option<f64> {
    let mut child = Command::new(script)
        .args(["dsthost", "sh", "-c", "cat > /dev/null"])
        .stdin(Stdio::piped())
        .spawn()
        .ok()?;
    let chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take()?;
        for _ in 0..MEMORY_MIB {
            stdin.write_all(&chunk).ok()?;
        }
    }
    child.wait().ok()?.success().then_some(())?;
    Some((MEMORY_MIB << 20) as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// A number after `key` in `text` (`downtime 6.6 ms` → 6.6).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

fn boot_guest(d: &Dom0, name: &str) {
    let cfg = d.config(name, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap_or_default()
        .replace("memory = 64", &format!("memory = {MEMORY_MIB}"));
    let _ = std::fs::write(&cfg, text);
    d.ok(&["create", cfg.to_str().unwrap_or("")]);
    d.wait_console(name, kxen_tests::dom0::SERVICE_READY);
}

/// Migrate `name` from `src` to `dst`; print its figures against the
/// pipe's bandwidth.
fn migrate(src: &Dom0, dst: &Dom0, name: &str, label: &str, bandwidth: f64) {
    let stream = dst.dir.join(format!("{name}.stream"));
    let ssh = dst.remote_shell(
        &format!("ssh-{name}"),
        &format!("tee '{}'", stream.display()),
    );
    let started = Instant::now();
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap_or(""), name, "dsthost"]);
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        println!("{label}: kxl migrate failed:\n{stderr}");
        return;
    }
    let bytes = std::fs::metadata(&stream).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&stream);
    let iterations = stderr
        .lines()
        .filter(|l| l.starts_with("xc: info: Iteration "))
        .count()
        + 1;
    let downtime = number_after(&stderr, "downtime ").unwrap_or(f64::NAN);
    let total = number_after(&stderr, "total time ").map_or(wall, |ms| ms / 1e3);
    let ideal = (MEMORY_MIB << 20) as f64 / 1e6 / bandwidth;
    println!("{label}");
    println!(
        "  downtime {downtime:.1} ms (goal < 100 ms idle); total {:.0} ms in {iterations} \
         iterations = {:.2}× memory over the pipe's bandwidth ({:.0} ms; goal 1.5×)",
        total * 1e3,
        total / ideal,
        ideal * 1e3
    );
    println!(
        "  {:.1} MB over the pipe = {:.2}× memory",
        bytes as f64 / 1e6,
        bytes as f64 / (MEMORY_MIB << 20) as f64
    );
    if let Some(rate) = stderr
        .lines()
        .filter(|l| l.starts_with("xc: info: Iteration "))
        .filter_map(|l| number_after(l, "dirty rate "))
        .reduce(f64::max)
    {
        println!("  highest dirty rate seen {rate:.0} pages/s");
    }
    let _ = dst.kxl(&["destroy", name]);
}

/// Seconds `dd` takes to write (or read) `bytes` to (from) `file`.
fn dd_secs(file: &Path, bytes: u64, write: bool) -> Option<f64> {
    let count = bytes.div_ceil(1 << 20).to_string();
    let path = file.to_str()?;
    let (input, output) = if write {
        ("/dev/zero".to_string(), path.to_string())
    } else {
        (path.to_string(), "/dev/null".to_string())
    };
    let started = Instant::now();
    let status = Command::new("dd")
        .args([
            format!("if={input}"),
            format!("of={output}"),
            "bs=1M".into(),
            format!("count={count}"),
        ])
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| started.elapsed().as_secs_f64())
}

fn save_restore(d: &Dom0, name: &str) {
    let file = d.dir.join("saved");
    let started = Instant::now();
    let saved = d.kxl(&["save", name, file.to_str().unwrap_or("")]);
    let save = started.elapsed().as_secs_f64();
    if !saved.status.success() {
        println!(
            "kxl save failed: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
        return;
    }
    let bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
    let started = Instant::now();
    let restored = d.kxl(&["restore", file.to_str().unwrap_or("")]);
    let restore = started.elapsed().as_secs_f64();
    if !restored.status.success() {
        println!(
            "kxl restore failed: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        return;
    }
    let scratch = d.dir.join("dd-scratch");
    let dd_write = dd_secs(&scratch, bytes, true).unwrap_or(f64::NAN);
    let dd_read = dd_secs(&scratch, bytes, false).unwrap_or(f64::NAN);
    let memory = MEMORY_MIB << 20;
    let dd_write_memory = dd_secs(&scratch, memory, true).unwrap_or(f64::NAN);
    let dd_read_memory = dd_secs(&scratch, memory, false).unwrap_or(f64::NAN);
    let _ = std::fs::remove_file(&scratch);
    let _ = std::fs::remove_file(&file);
    println!(
        "{:<44} {:>10.0} ms  dd of the same {:.1} MB {:>8.0} ms  {:>6.2}×",
        format!("kxl save ({MEMORY_MIB} MiB idle guest)"),
        save * 1e3,
        bytes as f64 / 1e6,
        dd_write * 1e3,
        save / dd_write
    );
    println!(
        "{:<44} {:>10.0} ms  dd read of the same    {:>8.0} ms  {:>6.2}×",
        "kxl restore",
        restore * 1e3,
        dd_read * 1e3,
        restore / dd_read
    );
    println!(
        "  (zero pages go without contents; dd of the guest's whole {MEMORY_MIB} MiB: \
         write {:.0} ms, read {:.0} ms)",
        dd_write_memory * 1e3,
        dd_read_memory * 1e3
    );
    let _ = d.kxl(&["destroy", name]);
}

pub fn run() {
    let src = Dom0::new("bench-migsrc");
    let dst = Dom0::new("bench-migdst");
    // The same script and stdin filter the migrations go through.
    let sink = dst.dir.join("bandwidth.stream");
    let counter = dst.remote_shell("ssh-bandwidth", &format!("tee '{}'", sink.display()));
    let bandwidth = pipe_bandwidth(&counter);
    let _ = std::fs::remove_file(&sink);
    let Some(bandwidth) = bandwidth else {
        println!("migrate: the -s pipe did not carry data; skipped");
        return;
    };
    println!(
        "Save, restore and live migration ({MEMORY_MIB} MiB test guest; the -s pipe carries \
         {bandwidth:.0} MB/s)"
    );
    boot_guest(&src, "idle");
    migrate(&src, &dst, "idle", "kxl migrate, idle guest", bandwidth);

    boot_guest(&src, "churn");
    let from = src.console_log("churn").len();
    src.console_line(
        "churn",
        &format!("mem churn {CHURN_PAGES} {}", CHURN.as_millis()),
    );
    src.wait_line_after("churn", from, "echo: mem churn", LIMIT);
    migrate(
        &src,
        &dst,
        "churn",
        "kxl migrate, guest rewriting 8 MiB as fast as it can",
        bandwidth,
    );

    boot_guest(&src, "saved");
    save_restore(&src, "saved");
    println!();
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn reads_the_figures_kxl_prints() {
        let line = "migration sender: downtime 6.6 ms (content check 0.4 ms, 0 final pages \
                    sent in 0.1 ms, stream end to the target's startup 3.0 ms), total time 389.5 ms";
        assert_eq!(number_after(line, "downtime "), Some(6.6));
        assert_eq!(number_after(line, "total time "), Some(389.5));
        assert_eq!(
            number_after(
                "xc: info: Iteration 2: 10 dirty pages to send, dirty rate 512 pages/s",
                "dirty rate "
            ),
            Some(512.0)
        );
        assert_eq!(number_after("nothing", "downtime "), None);
    }
}
