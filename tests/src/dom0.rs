//! An isolated Dom0 for end-to-end tests: a private kxend (its own state
//! and run directories, optionally inside its own network namespace)
//! driven through the real kxl.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{budget, test_guest, workspace_bin};

/// An isolated kxend instance, stopped (with its domains) on drop.
pub struct Dom0 {
    pub dir: PathBuf,
    /// The network namespace kxend runs in, when the test asked for one.
    pub netns: Option<String>,
    /// The namespace is another Dom0's ([`Dom0::new_beside`]): not ours
    /// to delete.
    borrowed_netns: bool,
    /// Environment for every kxl run, and so for the kxend a kxl starts
    /// on demand (see [`Dom0::with_kxend_env`]).
    pub kxend_env: Vec<(String, String)>,
}

impl Dom0 {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kxen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        Dom0 {
            dir,
            netns: None,
            borrowed_netns: false,
            kxend_env: Vec::new(),
        }
    }

    /// Set `key=value` in the environment of the kxend this Dom0's first
    /// kxl command starts (kxl starts kxend on demand, passing its own
    /// environment on).
    pub fn with_kxend_env(mut self, key: &str, value: &str) -> Self {
        self.kxend_env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn kxl(&self, args: &[&str]) -> Output {
        self.kxl_stdin(args, b"")
    }

    /// `kxl migrate -s SSH GUEST dsthost` from this Dom0 (SSH: a
    /// [`Dom0::remote_shell`] of the destination's), killed past `limit`.
    pub fn migrate_within(&self, ssh: &Path, guest: &str, limit: Duration) -> Output {
        let child = Command::new(workspace_bin("kxl"))
            .args(["migrate", "-s"])
            .arg(ssh)
            .args([guest, "dsthost"])
            .env("KXEN_STATE_DIR", self.dir.join("state"))
            .env("KXEN_RUN_DIR", self.dir.join("run"))
            .envs(self.kxend_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kxl migrate");
        wait_output(child, limit)
    }

    pub fn kxl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(workspace_bin("kxl"))
            .args(args)
            .env("KXEN_STATE_DIR", self.dir.join("state"))
            .env("KXEN_RUN_DIR", self.dir.join("run"))
            .envs(self.kxend_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kxl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        wait_output(child, Duration::from_secs(60))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kxl(args);
        assert!(out.status.success(), "kxl {args:?} failed: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The test guest in service mode (PVH, 64 MiB, one vCPU), with
    /// `extra` cfg lines.
    pub fn config(&self, name: &str, extra: &str) -> PathBuf {
        self.guest_config(name, "kxen.mode=service", extra)
    }

    /// The test guest (PVH, 64 MiB, one vCPU) with kernel command line
    /// `cmdline` and `extra` cfg lines.
    pub fn guest_config(&self, name: &str, cmdline: &str, extra: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.cfg"));
        std::fs::write(
            &path,
            format!(
                "# kxen test guest\nname = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 64\nvcpus = 1\ncmdline = \"{cmdline}\"\n{extra}",
                test_guest().display()
            ),
        )
        .unwrap();
        path
    }

    /// A script that stands in for `ssh` to this Dom0 as another "host"
    /// (`kxl migrate -s SCRIPT HOST`): it drops HOST, enters this Dom0's
    /// environment (its state and run directories, the built kxl first
    /// in PATH) and runs the rest of its arguments there, with its stdin
    /// passed through `stdin_filter` (a shell pipeline stage such as
    /// `head -c 4096`, or empty for none).
    pub fn remote_shell(&self, name: &str, stdin_filter: &str) -> PathBuf {
        let run = if stdin_filter.is_empty() {
            "exec \"$@\"".to_string()
        } else {
            format!("{stdin_filter} | \"$@\"")
        };
        self.remote_shell_running(name, &run)
    }

    /// As [`Dom0::remote_shell`], with `run` as the script's last lines:
    /// shell code that runs the remote command `"$@"` in this Dom0's
    /// environment however a test needs (its stdin and stdout are the
    /// transport's).
    pub fn remote_shell_running(&self, name: &str, run: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin_dir = workspace_bin("kxl").parent().unwrap().to_path_buf();
        let script = self.dir.join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# {name}: ssh to the Dom0 in {dir}\nshift\nexport KXEN_STATE_DIR='{dir}/state' KXEN_RUN_DIR='{dir}/run' PATH='{bin}':\"$PATH\"\n{run}\n",
                dir = self.dir.display(),
                bin = bin_dir.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// The running kxend of this instance (from its pid file).
    pub fn kxend_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("run/kxend.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    pub fn console_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("state/console/guest-{name}.log")))
            .unwrap_or_default()
    }

    pub fn wait_console(&self, name: &str, needle: &str) {
        let start = Instant::now();
        while !self.console_log(name).contains(needle) {
            budget::check(format_args!("{name} to print {needle:?}"));
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} never printed {needle:?}; console:\n{}",
                self.console_log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dom0 {
    fn drop(&mut self) {
        // Domains run in their own process groups: end them explicitly.
        let _ = Command::new("pkill")
            .args(["-f", &format!("kxen-vmm.*{}", self.dir.display())])
            .status();
        if let Some(pid) = self.kxend_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(ns) = self.netns.as_ref().filter(|_| !self.borrowed_netns) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // Keep the logs of a failed test for a look; tidy up otherwise.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The whole lines of console text that end after byte `from`. A whole
/// line starts at the beginning of the log or after a '\n' and is ended by
/// a '\n'. The last line of a log that is still being written has no
/// '\n' yet and is left out: matching it would read half an answer (hvm_stock
/// once asserted on `3 packets transmitted, 3 packe`). A line that `from`
/// falls inside is taken from its start, not from `from`.
pub fn whole_lines_after(log: &str, from: usize) -> std::str::Lines<'_> {
    let bytes = log.as_bytes();
    let from = from.min(bytes.len());
    // Both ends sit just after a '\n' (or at 0), so they are char boundaries.
    let after_newline = |b: &[u8]| b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    let start = after_newline(&bytes[..from]);
    let end = after_newline(bytes);
    log[start..end].lines()
}

pub fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit || budget::remaining() == Some(Duration::ZERO) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            budget::check(format_args!("a command to finish: {}", show(&out)));
            return out;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Dom0 {
    /// A Dom0 whose kxend runs in a fresh network namespace, so the TAP
    /// devices and bridges it makes live there, never in the host's.
    pub fn new_in_netns(tag: &str) -> Self {
        let mut d = Dom0::new(tag);
        let ns = format!("kxt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {ns} failed");
        d.netns = Some(ns.clone());
        d.start_kxend_in(&ns);
        d
    }

    /// A second kxen "host" on the same network segment as `other`: its
    /// own kxend (state and run directories) in `other`'s namespace, so
    /// a vif bridged there reaches the same peers, as two hosts on one
    /// LAN do. Its domain IDs start at `first_domid`, so its TAP devices
    /// (vifDOMID.N) never clash with `other`'s in the shared namespace.
    /// The namespace stays `other`'s: this one's drop leaves it.
    pub fn new_beside(tag: &str, other: &Dom0, first_domid: u32) -> Self {
        let ns = other.netns.clone().expect("a Dom0 with a namespace");
        let mut d = Dom0::new(tag);
        std::fs::write(d.dir.join("state/next-domid"), first_domid.to_string()).unwrap();
        d.start_kxend_in(&ns);
        d.netns = Some(ns);
        d.borrowed_netns = true;
        d
    }

    fn start_kxend_in(&self, ns: &str) {
        let log = std::fs::File::create(self.dir.join("kxend.log")).unwrap();
        // kxend outlives this handle: Drop stops it through its pid file,
        // and as a daemon it is reaped by whoever inherits it.
        #[allow(clippy::zombie_processes)]
        let _kxend = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(workspace_bin("kxend"))
            .arg("--foreground")
            .env("KXEN_STATE_DIR", self.dir.join("state"))
            .env("KXEN_RUN_DIR", self.dir.join("run"))
            .envs(self.kxend_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kxend in its namespace");
        let start = Instant::now();
        while !self.dir.join("run/kxend.sock").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "kxend did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a command inside this Dom0's network namespace.
    pub fn in_netns(&self, args: &[&str]) -> Output {
        let ns = self.netns.as_deref().expect("a Dom0 with a namespace");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        wait_output(child, Duration::from_secs(60))
    }

    /// Type a line on the guest's console (then detach with Ctrl-]).
    pub fn console_line(&self, name: &str, line: &str) {
        let mut input = line.as_bytes().to_vec();
        input.extend_from_slice(b"\r\x1d");
        // A console that could not be attached took none of the line: say
        // so here rather than as a missing answer later.
        let out = self.kxl_stdin(&["console", name], &input);
        assert!(
            out.status.success(),
            "kxl console {name} (typing {line:?}): {}",
            show(&out)
        );
    }

    /// Wait for a whole console line starting with `prefix` that ends
    /// after byte `from` of the log; returns that line.
    pub fn wait_line_after(
        &self,
        name: &str,
        from: usize,
        prefix: &str,
        limit: Duration,
    ) -> String {
        let start = Instant::now();
        loop {
            let log = self.console_log(name);
            if let Some(line) =
                whole_lines_after(&log, from).find(|l| l.trim_start().starts_with(prefix))
            {
                return line.trim().to_string();
            }
            budget::check(format_args!("{name} to print a line starting {prefix:?}"));
            assert!(
                start.elapsed() < limit,
                "{name} never printed a line starting {prefix:?}; console:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Type a command on the guest console and return the guest's answer:
    /// the first line after it starting with `answer`.
    pub fn guest_command(&self, name: &str, line: &str, answer: &str, limit: Duration) -> String {
        let from = self.console_log(name).len();
        self.console_line(name, line);
        self.wait_line_after(name, from, answer, limit)
    }
}

impl Dom0 {
    /// Wait until `needle` appeared `count` times on the console.
    pub fn wait_console_count(&self, name: &str, needle: &str, count: usize) {
        let start = Instant::now();
        while self.console_log(name).matches(needle).count() < count {
            budget::check(format_args!("{name} to print {needle:?} {count} times"));
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                self.console_log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the test guest in service mode prints once it watches
/// control/shutdown, i.e. serves.
pub const SERVICE_READY: &str = "kxen-testguest: service: watching control/shutdown";

impl Dom0 {
    /// Whether `kxl list` shows a domain called `name`.
    pub fn is_listed(&self, name: &str) -> bool {
        self.ok(&["list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    /// Wait until `kxl list` no longer shows `name`, within `limit`.
    pub fn wait_unlisted(&self, name: &str, limit: Duration) {
        let start = Instant::now();
        while self.is_listed(name) {
            budget::check(format_args!("{name} to leave the domain list"));
            assert!(
                start.elapsed() < limit,
                "{name} is still listed after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Boot the service-mode test guest as `name` and wait until it serves.
    pub fn boot_service_guest(&self, name: &str) {
        let cfg = self.config(name, "");
        self.ok(&["create", cfg.to_str().unwrap()]);
        self.wait_console(name, SERVICE_READY);
    }
}

#[cfg(test)]
mod tests {
    use super::whole_lines_after;

    fn lines(log: &str, from: usize) -> Vec<&str> {
        whole_lines_after(log, from).collect()
    }

    #[test]
    fn a_line_without_its_newline_is_not_a_line_yet() {
        let log = "ping\r\n3 packets transmitted, 3 packe";
        assert_eq!(lines(log, 0), ["ping"]);
        assert_eq!(lines("3 packets transmitted", 0), Vec::<&str>::new());
        let done = "ping\r\n3 packets transmitted, 3 packets received\r\n/ # ";
        assert_eq!(
            lines(done, 6),
            ["3 packets transmitted, 3 packets received"]
        );
    }

    #[test]
    fn a_line_that_from_cuts_is_taken_whole() {
        let log = "old\n/ # echo kxen-42\r\nkxen-42\r\n";
        assert_eq!(lines(log, 8), ["/ # echo kxen-42", "kxen-42"]);
        assert_eq!(lines(log, 4), ["/ # echo kxen-42", "kxen-42"]);
        assert_eq!(lines(log, log.len()), Vec::<&str>::new());
        assert_eq!(lines(log, log.len() + 10), Vec::<&str>::new());
        // A `from` inside a multi-byte character is no trouble either.
        assert_eq!(lines("é\n", 1), ["é"]);
    }
}
