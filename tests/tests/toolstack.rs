//! kxl and kxend end to end: real binaries, real KVM, the PV test guest in
//! service mode, an isolated kxend per test (its own state and run dirs).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::{process_exited, workspace_bin};

/// The row of `name` in `kxl list` output.
fn row<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

fn domid_of(d: &Dom0, name: &str) -> String {
    d.ok(&["domid", name]).trim().to_string()
}

/// Wait until `ready` holds, polling; fail with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(d: &Dom0, name: &str) {
    let start = Instant::now();
    while row(&d.ok(&["list"]), name).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not go away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn domain_lifecycle_through_kxl() {
    let d = Dom0::new("life");
    let cfg = d.config("life", "on_reboot = \"restart\"\n");
    let out = d.kxl(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Parsing config from"));
    d.wait_console("life", "kxen-testguest: service ready");

    // list: Domain-0 first, then the guest, xl's columns.
    let list = d.ok(&["list"]);
    let mut lines = list.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("Name                                        ID   Mem VCPUs\tState\tTime(s)"));
    assert!(lines.next().unwrap().starts_with("Domain-0 "), "{list}");
    let r = row(&list, "life").unwrap_or_else(|| panic!("{list}"));
    let cols: Vec<&str> = r.split_whitespace().collect();
    assert_eq!(cols[2], "64", "{r}");
    assert_eq!(cols[3], "1", "{r}");
    let first_id = domid_of(&d, "life");
    assert_eq!(d.ok(&["domname", &first_id]).trim(), "life");

    // pause / unpause show in the state flags.
    d.ok(&["pause", "life"]);
    assert!(
        row(&d.ok(&["list"]), "life").unwrap().contains("--p---"),
        "{}",
        d.ok(&["list"])
    );
    d.ok(&["unpause", "life"]);
    assert!(!row(&d.ok(&["list"]), "life").unwrap().contains("p"));

    // console: input reaches the guest, its echo comes back; Ctrl-] detaches.
    let _ = d.kxl_stdin(&["console", "life"], b"hello kxen\r\x1d");
    d.wait_console("life", "echo: hello kxen");

    // reboot: on_reboot=restart brings it back under a new domid.
    d.ok(&["reboot", "life"]);
    let start = Instant::now();
    loop {
        let list = d.ok(&["list"]);
        if let Some(r) = row(&list, "life") {
            let id = r.split_whitespace().nth(1).unwrap().to_string();
            if id != first_id {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no reboot: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d
        .console_log("life")
        .contains("kxen-testguest: shutdown reboot"));

    // shutdown -w: a clean poweroff through control/shutdown.
    d.wait_console_count("life", "kxen-testguest: service ready", 2);
    let out = d.kxl(&["shutdown", "-w", "life"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(row(&d.ok(&["list"]), "life").is_none());
    assert!(d
        .console_log("life")
        .contains("kxen-testguest: shutdown poweroff"));

    // destroy.
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.ok(&["destroy", "life"]);
    wait_gone(&d, "life");

    // Unknown domains get xl's message and a failure status.
    let out = d.kxl(&["destroy", "nosuch"]);
    assert!(!out.status.success());
}

/// Killing one domain's VMM is that domain's crash only.
#[test]
fn vmm_crash_is_contained() {
    let d = Dom0::new("crash");
    let a = d.config("crash-a", "");
    let b = d.config("crash-b", "");
    d.ok(&["create", a.to_str().unwrap()]);
    d.ok(&["create", b.to_str().unwrap()]);
    d.wait_console("crash-a", "service ready");
    d.wait_console("crash-b", "service ready");
    let victim = Command::new("pgrep")
        .args(["-f", "kxen-vmm.*--name=crash-a"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&victim.stdout)
        .trim()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    wait_gone(&d, "crash-a");
    let list = d.ok(&["list"]);
    assert!(row(&list, "crash-b").is_some(), "{list}");
    // The crash is logged as such, and handled by on_crash.
    let dmesg = d.ok(&["dmesg"]);
    assert!(
        dmesg.contains("(crash-a) killed by SIGKILL; on_crash = destroy"),
        "{dmesg}"
    );
    // crash-b still answers on its console.
    let _ = d.kxl_stdin(&["console", "crash-b"], b"still here\r\x1d");
    d.wait_console("crash-b", "echo: still here");
}

/// A console attached before the domain is unpaused shows everything from
/// the first byte, live, and `kxl console` ends when the domain dies.
#[test]
fn console_from_first_byte_until_death() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    let d = Dom0::new("console");
    let cfg = d.config("early", "");
    d.ok(&["create", "-p", cfg.to_str().unwrap()]);
    assert!(row(&d.ok(&["list"]), "early").unwrap().contains("--p---"));
    // The paused guest has printed nothing. An attach opens with a replay
    // of the console log, so a marker put there now proves, once `kxl
    // console` shows it, that the console is attached; everything after
    // it came live.
    let log = d.dir.join("state/console/guest-early.log");
    assert_eq!(std::fs::read(&log).unwrap(), b"", "output before unpause");
    const MARKER: &str = "-- test: console attached --\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(MARKER.as_bytes())
        .unwrap();
    let mut console = Command::new(workspace_bin("kxl"))
        .args(["console", "early"])
        .env("KXEN_STATE_DIR", d.dir.join("state"))
        .env("KXEN_RUN_DIR", d.dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let mut stdout = console.stdout.take().unwrap();
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    wait_until(
        Duration::from_secs(30),
        "kxl console never attached",
        || text().starts_with(MARKER),
    );
    d.ok(&["unpause", "early"]);
    d.wait_console("early", "service ready");
    d.ok(&["shutdown", "early"]);
    wait_until(
        Duration::from_secs(30),
        "kxl console outlived its domain",
        || console.try_wait().unwrap().is_some(),
    );
    reader.join().unwrap();
    let status = console.wait().unwrap();
    let text = text();
    assert!(status.success(), "{status:?}\n{text}");
    let live = text
        .strip_prefix(MARKER)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(live.starts_with("kxen-testguest: start"), "{text}");
    assert!(live.contains("kxen-testguest: shutdown poweroff"), "{text}");
}

/// Debian's xenstore tools and test-xenstore work against kxend's own
/// xenstored, and see a running domain's nodes.
#[test]
fn xenstore_tools_against_kxend() {
    let d = Dom0::new("xstools");
    let cfg = d.config("xsguest", "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("xsguest", "watching control/shutdown");
    let id = domid_of(&d, "xsguest");
    let socket = d.dir.join("run/xenstored.sock");
    let tool = |name: &str, args: &[&str]| -> String {
        let path = if name.starts_with('/') {
            name.to_string()
        } else {
            format!("/usr/bin/{name}")
        };
        assert!(
            Path::new(&path).exists(),
            "{path} is missing: apt-get install xenstore-utils xen-utils-4.17"
        );
        let out = Command::new(&path)
            .args(args)
            .env("XENSTORED_PATH", &socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let home = format!("/local/domain/{id}");
    assert_eq!(
        tool("xenstore-read", &[&format!("{home}/name")]).trim(),
        "xsguest"
    );
    // What the guest itself wrote through its ring.
    assert_eq!(
        tool(
            "xenstore-read",
            &[&format!("{home}/control/feature-poweroff")]
        )
        .trim(),
        "1"
    );
    // The rings as kxen-vmm reported them, not placeholders.
    for node in [
        "console/port",
        "console/ring-ref",
        "store/port",
        "store/ring-ref",
    ] {
        let v: u64 = tool("xenstore-read", &[&format!("{home}/{node}")])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert!(v > 0, "{node} = {v}");
    }
    let listing = tool("xenstore-ls", &[&home]);
    assert!(
        listing.contains("console") && listing.contains("control"),
        "{listing}"
    );
    tool("xenstore-write", &["/tool/kxen-test", "value"]);
    assert_eq!(tool("xenstore-read", &["/tool/kxen-test"]).trim(), "value");
    tool("xenstore-rm", &["/tool/kxen-test"]);
    let perms = tool("xenstore-ls", &["-p", &home]);
    assert!(perms.contains(&format!("r{id}")), "{perms}");
    // Xen's own xenstore test suite, against the daemon serving guests.
    let out = tool("/usr/lib/xen-4.17/bin/test-xenstore", &[]);
    assert!(!out.contains("failed"), "{out}");
    // A shutdown request written by a plain xenstore client reaches the guest.
    tool(
        "xenstore-write",
        &[&format!("{home}/control/shutdown"), "poweroff"],
    );
    wait_gone(&d, "xsguest");
    assert!(d
        .console_log("xsguest")
        .contains("kxen-testguest: shutdown poweroff"));
}
/// kxend restarts, finds its domains, and xenstore keeps its contents.
#[test]
fn kxend_restart_reattaches() {
    let d = Dom0::new("restart");
    let cfg = d.config("survivor", "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("survivor", "watching control/shutdown");
    // kxend saves xenstore (nodes and guests' watches) on a timer: wait
    // until the saved state holds the guest's watch (its token), which the
    // next kxend must give back for `shutdown -w` below to work.
    let state = d.dir.join("state/xenstore.state");
    let token: &[u8] = b"kxen-testguest-shutdown";
    wait_until(
        Duration::from_secs(10),
        "the guest's watch never reached the saved xenstore state",
        || std::fs::read(&state).is_ok_and(|saved| saved.windows(token.len()).any(|w| w == token)),
    );
    let id = domid_of(&d, "survivor");
    let pid = d.kxend_pid().expect("kxend runs");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    // Only once it is dead is its socket closed, so that kxl starts anew.
    wait_until(Duration::from_secs(10), "kxend survived kill -9", || {
        process_exited(pid)
    });
    // kxl starts a new kxend on demand, which re-attaches.
    let list = d.ok(&["list"]);
    let r = row(&list, "survivor").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(r.split_whitespace().nth(1), Some(id.as_str()));
    assert_ne!(d.kxend_pid(), Some(pid));
    // The console still works, and control/shutdown still reaches it.
    let _ = d.kxl_stdin(&["console", "survivor"], b"after restart\r\x1d");
    d.wait_console("survivor", "echo: after restart");
    d.ok(&["shutdown", "-w", "survivor"]);
}

/// xl's messages: unknown domains, bad arguments, config errors with the
/// file, line and key, and unknown keys as warnings.
#[test]
fn xl_messages_and_config_errors() {
    let d = Dom0::new("msgs");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = d.kxl(&["destroy", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("nosuch is an invalid domain identifier (rc=-6)"),
        "{}",
        show(&out)
    );
    let out = d.kxl(&["domid", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Can't get domid of domain name 'nosuch'"),
        "{}",
        show(&out)
    );

    // A bad command line: the command's usage, exit status 2.
    let out = d.kxl(&["pause"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("pause"), "{}", show(&out));

    // A bad value names the file, the line and the key.
    let bad = d.dir.join("bad.cfg");
    std::fs::write(&bad, "name = \"bad\"\ntype = \"pvh\"\nmemory = \"lots\"\n").unwrap();
    let out = d.kxl(&["create", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("bad.cfg:3") && err.contains("memory"), "{err}");
    // An unreadable file is xl's status 3.
    let out = d.kxl(&["create", "/nonexistent/x.cfg"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));

    // Unknown keys warn, and the domain is still created.
    let cfg = d.config("warned", "colour = \"blue\"\n");
    let out = d.kxl(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("colour"), "{}", show(&out));
    d.ok(&["destroy", "warned"]);
}

/// `kxl dmesg` lines carry wall-clock time as Xen's console lines do with
/// `console_timestamps=datems`: `(XEN) [YYYY-MM-DD HH:MM:SS.mmm] text`.
#[test]
fn dmesg_lines_carry_wall_clock_time() {
    // UTC, as Xen's wallclock; this format sorts as the time does.
    let utc_now = || {
        let out = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M:%S"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let before = utc_now();
    let d = Dom0::new("dmesg");
    // A kernel kxen-vmm refuses: its failure is logged too.
    let junk = d.dir.join("junk-kernel");
    std::fs::write(&junk, b"not a kernel\n").unwrap();
    let bad = d.dir.join("bad.cfg");
    std::fs::write(
        &bad,
        format!(
            "name = \"gone\"\ntype = \"pvh\"\nkernel = \"{}\"\n",
            junk.display()
        ),
    )
    .unwrap();
    assert_eq!(
        d.kxl(&["create", bad.to_str().unwrap()]).status.code(),
        Some(1)
    );
    let dmesg = d.ok(&["dmesg"]);
    let after = utc_now();
    assert!(dmesg.contains("] kxend started\n"), "{dmesg}");
    assert!(dmesg.contains("(gone) not created: kernel "), "{dmesg}");
    // '9' stands for any digit.
    let shape = "(XEN) [9999-99-99 99:99:99.999] ";
    for line in dmesg.lines() {
        let fits = line.len() > shape.len()
            && line.bytes().zip(shape.bytes()).all(|(c, s)| match s {
                b'9' => c.is_ascii_digit(),
                _ => c == s,
            });
        assert!(fits, "not Xen's datems stamp: {line:?}\n{dmesg}");
        let second = &line["(XEN) [".len().."(XEN) [9999-99-99 99:99:99".len()];
        assert!(
            before.as_str() <= second && second <= after.as_str(),
            "{second} is not between {before} and {after}: {line}"
        );
    }
}
