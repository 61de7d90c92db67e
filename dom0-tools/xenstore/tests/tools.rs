//! The real `kxen-xenstored` binary driven by Debian's Xen tools
//! (`xenstore-*` from xenstore-utils, `test-xenstore` and `xenstore-control`
//! from xen-utils-4.17) over a temporary Unix socket. A missing tool fails
//! the test with instructions; nothing is skipped.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: &str = "apt-get update && apt-get install -y xenstore-utils xen-utils-4.17";

/// The path of a required tool, or a failed test saying how to get it.
fn tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: these tests need Debian's Xen tools ({PACKAGES})"
    );
    p
}

fn xs_tool(name: &str) -> PathBuf {
    tool(&format!("/usr/bin/{name}"))
}

/// A running kxen-xenstored on a private socket; killed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(tag: &str, extra: &[&str]) -> Daemon {
        let dir = std::env::temp_dir().join(format!("kxen-xs-tools-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Daemon::start_in(dir, extra)
    }

    fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
        let socket = dir.join("socket");
        let child = Command::new(env!("CARGO_BIN_EXE_kxen-xenstored"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("start kxen-xenstored");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "kxen-xenstored did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, dir, socket }
    }

    fn cmd(&self, prog: &Path) -> Command {
        let mut c = Command::new(prog);
        c.env("XENSTORED_PATH", &self.socket);
        c.env_remove("XENSTORED_RUNDIR");
        c
    }

    /// Run a xenstore-* tool; returns (exit code, stdout, stderr).
    fn run(&self, name: &str, args: &[&str]) -> (i32, String, String) {
        let out = self
            .cmd(&xs_tool(name))
            .args(args)
            .output()
            .expect("run tool");
        split(out)
    }

    fn ok(&self, name: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(name, args);
        assert_eq!(code, 0, "{name} {args:?} failed: {err}");
        out
    }

    /// Stop with SIGTERM (the daemon saves its state) and wait.
    fn stop(mut self) -> PathBuf {
        // SAFETY: sending a signal to our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "kxen-xenstored exited with {status}");
        let dir = std::mem::take(&mut self.dir);
        std::mem::forget(self);
        dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn split(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn xenstore_utils_read_write_list_rm() {
    let d = Daemon::start("basic", &[]);
    d.ok(
        "xenstore-write",
        &["/vm/1/name", "guest", "/vm/1/uuid", "1234"],
    );
    assert_eq!(d.ok("xenstore-read", &["/vm/1/name"]), "guest\n");
    assert_eq!(
        d.ok("xenstore-read", &["-p", "/vm/1/uuid"]),
        "/vm/1/uuid: 1234\n"
    );
    assert_eq!(d.ok("xenstore-list", &["/vm/1"]), "name\nuuid\n");
    assert_eq!(
        d.ok("xenstore-list", &["-p", "/vm/1"]),
        "/vm/1/name\n/vm/1/uuid\n"
    );
    assert_eq!(
        d.ok("xenstore-ls", &["/vm"]),
        "1 = \"\"\n name = \"guest\"\n uuid = \"1234\"\n"
    );
    assert_eq!(
        d.ok("xenstore-ls", &[]),
        "tool = \"\"\n xenstored = \"\"\nlocal = \"\"\n domain = \"\"\nvm = \"\"\n 1 = \"\"\n  name = \"guest\"\n  uuid = \"1234\"\n"
    );
    // Escapes survive the round trip (the tools sanitise values).
    d.ok("xenstore-write", &["/vm/1/esc", "tab\\there"]);
    assert_eq!(d.ok("xenstore-read", &["/vm/1/esc"]), "tab\\there\n");
    // exists: 0 when present, 1 when not.
    assert_eq!(d.run("xenstore-exists", &["/vm/1/name"]).0, 0);
    assert_eq!(d.run("xenstore-exists", &["/vm/1/nothing"]).0, 1);
    let (code, _, err) = d.run("xenstore-read", &["/vm/1/nothing"]);
    assert_eq!(code, 1);
    assert!(err.contains("couldn't read path /vm/1/nothing"), "{err}");
    d.ok("xenstore-rm", &["/vm/1/uuid"]);
    assert_eq!(d.ok("xenstore-list", &["/vm/1"]), "name\nesc\n");
    // rm -t tidies empty parents.
    d.ok("xenstore-write", &["/tidy/a/b", ""]);
    d.ok("xenstore-rm", &["-t", "/tidy/a/b"]);
    assert_eq!(d.run("xenstore-exists", &["/tidy"]).0, 1);
    d.ok("xenstore-rm", &["/vm"]);
    assert_eq!(d.run("xenstore-exists", &["/vm"]).0, 1);
    // Relative paths are under Dom0's home.
    d.ok("xenstore-write", &["rel", "x"]);
    assert_eq!(d.ok("xenstore-read", &["/local/domain/0/rel"]), "x\n");
    // Invalid paths are refused.
    assert_ne!(d.run("xenstore-write", &["/bad path", "x"]).0, 0);
}

#[test]
fn xenstore_chmod_and_permissions_listing() {
    let d = Daemon::start("chmod", &[]);
    d.ok(
        "xenstore-write",
        &["/local/domain/5/data/a", "1", "/local/domain/5/data/b", "2"],
    );
    d.ok("xenstore-chmod", &["/local/domain/5", "n0", "r5"]);
    d.ok(
        "xenstore-chmod",
        &["-r", "/local/domain/5/data", "n5", "r0"],
    );
    let ls = d.ok("xenstore-ls", &["-p", "/local/domain/5"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    assert!(
        lines[0].starts_with("data = \"\"") && lines[0].ends_with("(n5,r0)"),
        "{ls}"
    );
    assert!(
        lines[1].starts_with(" a = \"1\"") && lines[1].ends_with("(n5,r0)"),
        "{ls}"
    );
    assert!(
        lines[2].starts_with(" b = \"2\"") && lines[2].ends_with("(n5,r0)"),
        "{ls}"
    );
    // -u applies to the parents as well.
    d.ok("xenstore-write", &["/up/a/b", ""]);
    d.ok("xenstore-chmod", &["-u", "/up/a/b", "b3"]);
    let ls = d.ok("xenstore-ls", &["-p", "/up"]);
    assert!(ls.lines().all(|l| l.ends_with("(b3)")), "{ls}");
    let (code, _, _) = d.run("xenstore-chmod", &["/nope/x", "n0"]);
    assert_ne!(code, 0);
}

#[test]
fn xenstore_watch_sees_changes() {
    let d = Daemon::start("watch", &[]);
    d.ok("xenstore-write", &["/w", ""]);
    let mut child = d
        .cmd(&xs_tool("xenstore-watch"))
        .args(["-n", "4", "/w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first event is the one a new watch always fires.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    d.ok("xenstore-write", &["/w/a", "1"]);
    d.ok("xenstore-write", &["/other", "not watched"]);
    d.ok("xenstore-write", &["/w/b/c", "2"]);
    d.ok("xenstore-rm", &["/w"]);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest, vec!["/w/a", "/w/b/c", "/w"]);
    assert!(child.wait().unwrap().success());
}

#[test]
fn test_xenstore_passes() {
    let d = Daemon::start("testxs", &[]);
    let prog = tool("/usr/lib/xen-4.17/bin/test-xenstore");
    for args in [&[][..], &["-i", "20"][..], &["-r", "2"][..]] {
        let out = d.cmd(&prog).args(args).output().unwrap();
        let (code, stdout, stderr) = split(out);
        assert_eq!(
            code, 0,
            "test-xenstore {args:?} failed:\n{stdout}\n{stderr}"
        );
        assert!(!stdout.contains("failed"), "{stdout}");
    }
    // It cleans up after itself.
    assert_eq!(d.ok("xenstore-list", &["/local/domain/0"]), "");
    // And the full list of tests ran.
    let out = d.cmd(&prog).output().unwrap();
    let (_, stdout, _) = split(out);
    assert_eq!(stdout.lines().count(), 12, "{stdout}");
}

#[test]
fn xenstore_control_commands() {
    let d = Daemon::start("control", &[]);
    let prog = tool("/usr/lib/xen-4.17/bin/xenstore-control");
    let run = |args: &[&str]| split(d.cmd(&prog).args(args).output().unwrap());
    let (code, out, _) = run(&["quota"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("Quota settings:\nnodes            :     1000 Nodes per domain\n"),
        "{out}"
    );
    assert_eq!(run(&["quota", "set", "nodes", "50"]).1, "OK\n");
    assert!(run(&["quota"]).1.contains("nodes            :       50"));
    assert!(run(&["quota", "0"]).1.starts_with("Domain 0:\n"));
    assert_eq!(run(&["check"]).0, 0);
    assert!(run(&["help"])
        .1
        .contains("quota\t[set <name> <val>|<domid>]"));
    assert_ne!(run(&["live-update", "-f", "/bin/true"]).0, 0);
}

#[test]
fn state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("kxen-xs-tools-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("xenstore.state");
    let state_s = state.to_str().unwrap();
    let d = Daemon::start_in(
        dir.clone(),
        &["--state", state_s, "--save-interval-ms", "50"],
    );
    d.ok("xenstore-write", &["/local/domain/3/name", "kept"]);
    d.ok("xenstore-chmod", &["/local/domain/3", "n0", "r3"]);
    // The periodic save picks it up without a restart.
    let start = Instant::now();
    while !state.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "state never saved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok("xenstore-write", &["/local/domain/3/late", "saved at exit"]);
    let dir = d.stop();
    let d = Daemon::start_in(dir, &["--state", state_s]);
    assert_eq!(d.ok("xenstore-read", &["/local/domain/3/name"]), "kept\n");
    assert_eq!(
        d.ok("xenstore-read", &["/local/domain/3/late"]),
        "saved at exit\n"
    );
    assert!(d
        .ok("xenstore-ls", &["-p", "/local/domain"])
        .lines()
        .next()
        .unwrap()
        .ends_with("(n0,r3)"));
}
