//! `kxl migrate` between two kxen "hosts" on one machine (issue 17): two
//! kxend instances with their own state and run directories, the
//! destination reached through an `-s` command that enters its
//! environment, as `ssh HOST` would. The service-mode test guest moves
//! and goes on serving its console and xenstore on the destination, and
//! is gone from the source; one that keeps rewriting its memory moves
//! live, in several pre-copy iterations, with every page intact; a
//! migration whose pipe is cut halfway leaves the source running and
//! answering, and nothing on the destination.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::stream::verify_stream_v2;

const GUEST_LIMIT: Duration = Duration::from_secs(60);
const BOOTED: &str = "kxen-testguest: service ready";

/// Whether a kxen-vmm of this Dom0 is running.
fn vmm_running(d: &Dom0) -> bool {
    Command::new("pgrep")
        .args(["-f", &format!("kxen-vmm.*{}", d.dir.display())])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Boot the test guest `name` on `d` with a 16 MiB xvda and have it write
/// sectors 64..80 with pattern 5, acknowledged.
fn boot_with_a_written_disk(d: &Dom0, name: &str) {
    let xvda = d.dir.join("xvda.img");
    std::fs::File::create(&xvda)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let cfg = d.config(
        name,
        &format!("disk = [ '{},raw,xvda,rw' ]\n", xvda.display()),
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console(name, BOOTED);
    d.wait_line_after(name, 0, "kxen-testguest: vbd 51712 connected", GUEST_LIMIT);
    let w = d.guest_command(name, "blk write 51712 64 16 5", "blk write", GUEST_LIMIT);
    assert!(w.starts_with("blk write ok"), "{w}");
}

#[test]
fn test_guest_migrates_and_serves_on_the_destination() {
    let src = Dom0::new("migsrc");
    let dst = Dom0::new("migdst");
    src.boot_service_guest("mg");
    let before = src.guest_command("mg", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(before, "xs read ok mg", "the guest serves before migrating");
    // A node of the guest's own, which only the stream can carry over.
    let wrote = src.guest_command(
        "mg",
        "xs write data/kept moved-value",
        "xs write",
        GUEST_LIMIT,
    );
    assert_eq!(wrote, "xs write ok");

    let ssh = dst.remote_shell("ssh-dst", "");
    let started = Instant::now();
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap(), "mg", "dsthost"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kxl migrate: {}", show(&out));
    for line in [
        "migration sender: Target has acknowledged transfer.",
        "migration sender: Target reports successful startup.",
        "Migration successful.",
        "pages",
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    eprintln!("migrated in {took:.2?}:\n{stderr}");

    assert!(
        !src.is_listed("mg"),
        "the source still lists the migrated domain"
    );
    assert!(dst.is_listed("mg"), "the destination lists it");
    // Console input reaches the guest only through an event on its
    // console port, and the echo comes back through one.
    let echo = dst.guest_command("mg", "after-migrate", "echo: after-migrate", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-migrate");
    let after = dst.guest_command("mg", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(
        after, "xs read ok mg",
        "the guest serves on the destination"
    );
    // It went on rather than booting again there.
    let log = dst.console_log("mg");
    assert!(
        !log.contains(BOOTED),
        "the guest booted again on the destination:\n{log}"
    );
    // Its xenstore subtree came along, under the destination's domid.
    let kept = dst.guest_command("mg", "xs read data/kept", "xs read", GUEST_LIMIT);
    assert_eq!(
        kept, "xs read ok moved-value",
        "the guest's own node is lost"
    );
    // And its watch on control/shutdown: `kxl shutdown` reaches the guest
    // only through it, and the guest powers itself off.
    let out = dst.kxl(&["shutdown", "mg"]);
    assert!(out.status.success(), "kxl shutdown: {}", show(&out));
    dst.wait_unlisted("mg", GUEST_LIMIT);
}

/// Pages the guest rewrites during the migration (8 MiB of its 64).
const CHURN_PAGES: u32 = 2048;
/// How long it rewrites them: long enough to outlast the migration, so
/// that it checks every page again after the move.
const CHURN: Duration = Duration::from_secs(30);

/// Start the test guest's `mem LOAD` (churn or zeroing) on `src`, migrate
/// it live to `dst` while the load runs, and check that: memory went in
/// more than one live pass and then a paused one, the stream passes
/// verify-stream-v2, and the load, still running when the guest moved,
/// found every page as it had left it on the destination.
fn migrate_under_load(src: &Dom0, dst: &Dom0, name: &str, load: &str) {
    src.boot_service_guest(name);
    let from = src.console_log(name).len();
    src.console_line(
        name,
        &format!("mem {load} {CHURN_PAGES} {}", CHURN.as_millis()),
    );
    src.wait_line_after(name, from, &format!("echo: mem {load}"), GUEST_LIMIT);

    let stream = dst.dir.join("stream");
    let ssh = dst.remote_shell("ssh-load", &format!("tee '{}'", stream.display()));
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap(), name, "dsthost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kxl migrate: {}", show(&out));
    eprintln!("{stderr}");
    let iterations: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("xc: info: Iteration "))
        .collect();
    assert!(
        iterations
            .iter()
            .any(|l| l.starts_with("xc: info: Iteration 2: ")),
        "no second live iteration:\n{stderr}"
    );
    assert!(
        iterations
            .last()
            .is_some_and(|l| l.contains("(final, domain paused)")),
        "the last iteration is not the paused one:\n{stderr}"
    );
    assert!(stderr.contains("Migration successful."), "{stderr}");
    verify_stream_v2(&stream, "xl", &["Page Data records"]);
    assert!(!src.is_listed(name), "the source still lists the domain");

    let answer = dst.wait_line_after(name, 0, &format!("mem {load} "), CHURN + GUEST_LIMIT);
    assert!(
        answer.starts_with(&format!("mem {load} ok passes=")),
        "the guest's pages were wrong after the migration: {answer}"
    );
    assert!(
        !src.console_log(name).contains(&format!("mem {load} ok")),
        "the load ended before the migration did: lengthen CHURN"
    );
}

/// The guest rewrites its pages pass after pass and checks, before it
/// rewrites a page, that the page holds the previous pass's pattern: a
/// page the migration left stale on the destination fails it.
#[test]
fn guest_rewriting_its_memory_migrates_live_with_every_page_intact() {
    let src = Dom0::new("migdirtysrc");
    let dst = Dom0::new("migdirtydst");
    migrate_under_load(&src, &dst, "dy", "churn");
    let echo = dst.guest_command("dy", "after-churn", "echo: after-churn", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-churn");
    dst.ok(&["destroy", "dy"]);
}

/// Pages that go from data to all-zero while the migration copies them
/// (zero pages travel as XALLOC entries without contents, and become
/// holes in the destination's memory): the guest flips each of its pages
/// between a pattern and zero from pass to pass, checking before each
/// rewrite that the page holds what the previous pass left; a page the
/// destination kept holding data after the source zeroed it (or zero
/// after it got data back) fails it.
#[test]
fn guest_zeroing_pages_between_passes_migrates_with_them_zero() {
    let src = Dom0::new("migzerosrc");
    let dst = Dom0::new("migzerodst");
    migrate_under_load(&src, &dst, "zr", "zeroing");
    dst.ok(&["destroy", "zr"]);
}

#[test]
fn cut_migration_leaves_the_source_running() {
    let src = Dom0::new("migcutsrc");
    let dst = Dom0::new("migcutdst");
    src.boot_service_guest("ct");
    // The idle guest's stream is about 650 KB (its zero pages go as
    // XALLOC entries, without contents): 64 KiB in is the middle of the
    // page data. (A cut beyond the stream's end would not cut: `head -c`
    // then holds the handshake's small writes in its stdio buffer.)
    let ssh = dst.remote_shell("ssh-cut", "head -c 65536");
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap(), "ct", "dsthost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kxl migrate: {}", show(&out));
    assert!(
        stderr.contains("Migration failed, resuming at sender."),
        "{stderr}"
    );
    // kxend resumed the domain before kxl returned, and said so; it
    // stopped streaming when kxl gave up, rather than sending the rest
    // (and pausing the domain for a final pass) into nothing.
    assert!(!stderr.contains("did not confirm"), "{stderr}");
    let dmesg = src.ok(&["dmesg"]);
    assert!(
        dmesg.contains("kxl gave the migration up"),
        "kxend did not notice kxl giving up:\n{dmesg}"
    );

    assert!(src.is_listed("ct"), "the source lost its domain");
    let info = src.ok(&["list", "ct"]);
    assert!(
        !info.lines().nth(1).unwrap_or("").contains('p'),
        "the source domain is still paused:\n{info}"
    );
    let echo = src.guest_command("ct", "after-cut", "echo: after-cut", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-cut");
    let after = src.guest_command("ct", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(after, "xs read ok ct", "the source guest still serves");

    // The destination built nothing that stayed.
    assert!(
        dst.kxend_pid().is_some(),
        "the destination's kxend never ran"
    );
    assert!(!dst.is_listed("ct"), "a half-built domain was left");
    assert!(
        !vmm_running(&dst),
        "a destination kxen-vmm was left running"
    );
    src.ok(&["destroy", "ct"]);
}

/// `kxl migrate` killed once the source is paused for its final pass
/// (the user's Ctrl-C, or a crash): kxend loses the connection it was
/// streaming to, and resumes the source, running and serving. The
/// destination gets only the stream's first 64 KiB and then waits (the
/// rest is swallowed), so the sender has sent everything and waits for
/// an answer when it dies.
#[test]
fn killed_sender_leaves_the_source_running() {
    let src = Dom0::new("migkillsrc");
    let dst = Dom0::new("migkilldst");
    src.boot_service_guest("kl");
    let ssh = dst.remote_shell("ssh-stall", "{ head -c 65536; cat > /dev/null; }");
    let mut sender = Command::new(kxen_tests::workspace_bin("kxl"))
        .args(["migrate", "-s", ssh.to_str().unwrap(), "kl", "dsthost"])
        .env("KXEN_STATE_DIR", src.dir.join("state"))
        .env("KXEN_RUN_DIR", src.dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kxl migrate");
    let started = Instant::now();
    loop {
        let list = src.ok(&["list", "kl"]);
        if list.lines().nth(1).unwrap_or("").contains('p') {
            break;
        }
        assert!(
            sender.try_wait().unwrap().is_none(),
            "kxl migrate ended before the final pass"
        );
        assert!(
            started.elapsed() < GUEST_LIMIT,
            "the source never paused for its final pass:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.kill().unwrap();
    sender.wait().unwrap();

    let started = Instant::now();
    loop {
        let list = src.ok(&["list", "kl"]);
        if !list.lines().nth(1).unwrap_or("p").contains('p') {
            break;
        }
        assert!(
            started.elapsed() < GUEST_LIMIT,
            "the source stayed paused after its sender died:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let echo = src.guest_command("kl", "after-kill", "echo: after-kill", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-kill");
    let after = src.guest_command("kl", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(after, "xs read ok kl", "the source guest still serves");
    assert!(
        !dst.is_listed("kl"),
        "the destination kept a half-built domain"
    );
    src.ok(&["destroy", "kl"]);
}

/// A migration that fails after its final pass, when the source's
/// backends are quiesced (the disk `-C` gives the destination is a
/// directory: its kxl's checks pass, its blkback refuses it once the whole
/// stream is in, and the domain with it), leaves the
/// source running with its disk served again: requests are taken and
/// answered, and what the guest writes reaches the image.
#[test]
fn migration_failing_after_the_final_pass_resumes_the_source_disk() {
    let src = Dom0::new("migqsrc");
    let dst = Dom0::new("migqdst");
    boot_with_a_written_disk(&src, "qd");

    let missing = dst.dir.join("not-a-disk");
    std::fs::create_dir(&missing).unwrap();
    let dst_cfg = dst.config(
        "qd",
        &format!("disk = [ '{},raw,xvda,rw' ]\n", missing.display()),
    );
    let ssh = dst.remote_shell("ssh-q", "");
    let out = src.kxl(&[
        "migrate",
        "-s",
        ssh.to_str().unwrap(),
        "-C",
        dst_cfg.to_str().unwrap(),
        "qd",
        "dsthost",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kxl migrate: {}", show(&out));
    // It failed after the paused pass, so with the backends quiesced.
    assert!(
        stderr.contains("(final, domain paused)"),
        "the migration failed before its final pass:\n{stderr}"
    );
    assert!(
        stderr.contains("Migration failed, resuming at sender."),
        "{stderr}"
    );
    assert!(!dst.is_listed("qd"), "a half-built domain was left");

    let info = src.ok(&["list", "qd"]);
    assert!(
        !info.lines().nth(1).unwrap_or("").contains('p'),
        "the source domain is still paused:\n{info}"
    );
    // The disk is served again: a write goes through to the image and
    // reads back the same.
    let w = src.guest_command("qd", "blk write 51712 128 16 9", "blk write", GUEST_LIMIT);
    assert!(w.starts_with("blk write ok"), "{w}");
    let r = src.guest_command("qd", "blk read 51712 128 16", "blk read", GUEST_LIMIT);
    let crc = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("crc="))
            .map(str::to_string)
    };
    assert!(crc(&w).is_some(), "{w}");
    assert_eq!(crc(&r), crc(&w), "{r}");
    let check = src.guest_command("qd", "blk check 51712", "blk check 51712", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "{check}");
    src.ok(&["destroy", "qd"]);
}

/// What the receiving kxl writes back before it waits for "go": xl's
/// banner and its "ready" message (with its NUL).
const BANNER_AND_READY: usize = "xl migration receiver ready, send binary domain data.\n".len()
    + "domain received, ready to unpause\0".len();
/// xl's words when its final handshake breaks after "go".
const FAILED_BADLY: &str = "** Migration failed during final handshake **\nDomain state is now undefined !\nPlease CHECK AT BOTH ENDS for running instances";

/// The state column of `name`'s row in `kxl list`.
fn list_state(d: &Dom0, name: &str) -> String {
    let list = d.ok(&["list", name]);
    list.lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(4))
        .unwrap_or_else(|| panic!("no state for {name} in:\n{list}"))
        .to_string()
}

/// The handshake breaks after the sender said "go" and the destination
/// started the domain: the destination's answer never comes back (the
/// transport's return path closes right after "ready"). As xl, the sender
/// cannot know which copy runs: it says so and fails, and the source
/// stays paused (not resumed: the domain runs on the destination) until
/// the user, having checked, destroys it.
#[test]
fn handshake_broken_after_go_leaves_the_source_paused_while_the_destination_runs() {
    let src = Dom0::new("miggosrc");
    let dst = Dom0::new("miggodst");
    src.boot_service_guest("gb");
    let ssh = dst.remote_shell_running(
        "ssh-noreport",
        &format!("\"$@\" | dd bs=1 count={BANNER_AND_READY} status=none"),
    );
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap(), "gb", "dsthost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kxl migrate: {}", show(&out));
    for line in [
        "migration sender: Giving target permission to start.",
        FAILED_BADLY,
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("resuming at sender") && !stderr.contains("Migration successful"),
        "{stderr}"
    );

    // The destination got "go" and runs the domain.
    assert!(dst.is_listed("gb"), "the destination does not list it");
    assert!(
        !list_state(&dst, "gb").contains('p'),
        "the destination's copy is paused"
    );
    let echo = dst.guest_command("gb", "on-destination", "echo: on-destination", GUEST_LIMIT);
    assert_eq!(echo, "echo: on-destination");
    // The source is kept, paused: it must not run too.
    assert!(src.is_listed("gb"), "the source lost its domain");
    assert!(
        list_state(&src, "gb").contains('p'),
        "the source runs alongside the destination"
    );
    // The user keeps the destination's copy and destroys the source's.
    src.ok(&["destroy", "gb"]);
    src.wait_unlisted("gb", GUEST_LIMIT);
    assert!(!vmm_running(&src), "the source's kxen-vmm was left running");
    let after = dst.guest_command("gb", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(
        after, "xs read ok gb",
        "the destination's copy still serves"
    );
    dst.ok(&["destroy", "gb"]);
}

/// The handshake breaks at "go" and nothing runs the domain: the
/// receiving end acknowledged the whole stream, then vanished before
/// answering "go". The sender cannot tell this from the case above: the
/// source stays paused with its backends quiesced; the user, finding
/// nothing on the destination, unpauses it, and its disk is served again.
/// (The receiving end is a stand-in that swallows the stream: a domain
/// with a disk is not restored on a destination yet, its blkfront's event
/// channel is refused there.)
#[test]
fn handshake_broken_at_go_leaves_the_source_paused_until_unpaused_with_its_disk() {
    let src = Dom0::new("migunpsrc");
    boot_with_a_written_disk(&src, "up");

    // xl's banner and "ready" at once (the sender reads "ready" only
    // after it has sent the stream), then no more answers.
    let receiver = src.dir.join("vanishing-receiver");
    std::fs::write(
        &receiver,
        "#!/bin/sh\nprintf 'xl migration receiver ready, send binary domain data.\\ndomain received, ready to unpause\\000'\nexec >&-\nexec cat >/dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &receiver,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // `env` as the "ssh" command: the stand-in is exec'd, and its
    // closing stdout is the transport's.
    let out = src.kxl(&["migrate", "-s", "env", "up", receiver.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kxl migrate: {}", show(&out));
    for line in [
        "(final, domain paused)",
        "migration sender: Giving target permission to start.",
        FAILED_BADLY,
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    assert!(
        list_state(&src, "up").contains('p'),
        "the source was resumed although the destination might run it"
    );

    // The user unpauses the source: it runs, and its disk is served.
    src.ok(&["unpause", "up"]);
    assert!(!list_state(&src, "up").contains('p'));
    let echo = src.guest_command("up", "after-unpause", "echo: after-unpause", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-unpause");
    let w = src.guest_command("up", "blk write 51712 128 16 7", "blk write", GUEST_LIMIT);
    assert!(w.starts_with("blk write ok"), "{w}");
    let r = src.guest_command("up", "blk read 51712 128 16", "blk read", GUEST_LIMIT);
    let crc = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("crc="))
            .map(str::to_string)
    };
    assert!(crc(&w).is_some(), "{w}");
    assert_eq!(crc(&r), crc(&w), "{r}");
    src.ok(&["destroy", "up"]);
}

/// The sending kxl dies after it said "go" (the destination started the
/// domain and answered, but the answer never reached it): its kxend
/// learnt of the point of no return before "go" was sent, so the lost
/// connection leaves the source paused, not resumed beside the
/// destination's running copy.
#[test]
fn sender_killed_after_go_leaves_the_source_paused() {
    let src = Dom0::new("migkgsrc");
    let dst = Dom0::new("migkgdst");
    src.boot_service_guest("kg");
    // The script's parent is the sending kxl (`sh -c "exec SCRIPT ..."`).
    // The receiver has had "go" and started the domain when it ends.
    let ssh = dst.remote_shell_running(
        "ssh-killgo",
        &format!("\"$@\" | dd bs=1 count={BANNER_AND_READY} status=none\nkill -9 $PPID"),
    );
    let out = src.kxl(&["migrate", "-s", ssh.to_str().unwrap(), "kg", "dsthost"]);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "kxl migrate was not killed: {}",
        show(&out)
    );
    assert!(dst.is_listed("kg"), "the destination does not list it");
    let echo = dst.guest_command("kg", "on-destination", "echo: on-destination", GUEST_LIMIT);
    assert_eq!(echo, "echo: on-destination");

    // kxend's account of the lost connection, then the state it left.
    let log = src.dir.join("state/hypervisor.log");
    let started = Instant::now();
    let outcome = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("migration handshake broke after") || l.contains("domain resumed"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < GUEST_LIMIT,
            "kxend never acted on the lost connection:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        outcome.contains("left paused"),
        "the source was not kept paused: {outcome}"
    );
    assert!(
        list_state(&src, "kg").contains('p'),
        "the source runs alongside the destination"
    );
    src.ok(&["destroy", "kg"]);
    src.wait_unlisted("kg", GUEST_LIMIT);
    dst.ok(&["destroy", "kg"]);
}
