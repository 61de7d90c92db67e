//! `kxl save` and `kxl restore` of the PVH test guest in service mode
//! (issue 17): the image is xl's savefile that Debian's verify-stream-v2
//! accepts, and the restored guest goes on serving its console and
//! xenstore, which needs its event channels, its rings and their Dom0
//! bindings, its upcall vector and its clock to have come through. A
//! truncated or corrupt image is refused with exit status 1 and no domain
//! is left behind.

use std::time::Duration;

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::stream::verify_stream_v2;

const GUEST_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn saved_test_guest_is_verified_and_serves_after_restore() {
    let d = Dom0::new("saverestore");
    d.boot_service_guest("sv");
    let before = d.guest_command("sv", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(before, "xs read ok sv", "the guest serves before the save");
    // A node of the guest's own, which only the image can bring back.
    let wrote = d.guest_command(
        "sv",
        "xs write data/kept saved-value",
        "xs write",
        GUEST_LIMIT,
    );
    assert_eq!(wrote, "xs write ok");

    let image = d.dir.join("sv.save");
    let out = d.kxl(&["save", "sv", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    assert!(!d.is_listed("sv"), "save without -c destroys the domain");
    verify_stream_v2(
        &image,
        "xl",
        &[
            "Page Data records",
            "Libxc Record: HVM context",
            "Libxl Record: Emulator context",
        ],
    );

    let out = d.kxl(&["restore", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl restore: {}", show(&out));
    assert!(d.is_listed("sv"), "restored domain is listed");
    // Console input reaches the guest only through an event on its
    // console port, and the echo reaches us only through one back.
    let echo = d.guest_command("sv", "after-restore", "echo: after-restore", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-restore");
    // A xenstore request and its answer: the store ring and its channel.
    let after = d.guest_command("sv", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(after, "xs read ok sv", "the guest serves after the restore");
    // The same guest went on: a fresh boot of the kernel would have
    // started over.
    let log = d.console_log("sv");
    assert_eq!(
        log.matches("kxen-testguest: service ready").count(),
        1,
        "the restored guest booted again instead of going on:\n{log}"
    );
    // Its xenstore subtree came with it, under the new domid.
    let kept = d.guest_command("sv", "xs read data/kept", "xs read", GUEST_LIMIT);
    assert_eq!(
        kept, "xs read ok saved-value",
        "the guest's own node is lost"
    );
    // And its watch on control/shutdown: `kxl shutdown` reaches the guest
    // only through it, and the guest powers itself off.
    let out = d.kxl(&["shutdown", "sv"]);
    assert!(out.status.success(), "kxl shutdown: {}", show(&out));
    d.wait_unlisted("sv", GUEST_LIMIT);
}

#[test]
fn truncated_and_corrupt_images_are_refused() {
    let d = Dom0::new("savebad");
    d.boot_service_guest("bad");
    let image = d.dir.join("bad.save");
    let out = d.kxl(&["save", "bad", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    let bytes = std::fs::read(&image).unwrap();

    let truncated = d.dir.join("truncated.save");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // The Xen state lies in the last record: a flipped byte in it.
    let corrupt = d.dir.join("corrupt.save");
    let mut flipped = bytes.clone();
    let at = bytes.len() - 64;
    flipped[at] ^= 0x5a;
    std::fs::write(&corrupt, &flipped).unwrap();
    let not_xl = d.dir.join("notxl.save");
    std::fs::write(&not_xl, b"this is not a savefile").unwrap();

    for (file, why) in [
        (&truncated, "bad image"),
        (&corrupt, "Xen state"),
        (&not_xl, "savefile"),
    ] {
        let out = d.kxl(&["restore", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            file.display(),
            show(&out)
        );
        assert!(
            stderr.contains(why),
            "{}: the error does not say {why:?}: {stderr}",
            file.display()
        );
        assert!(!d.is_listed("bad"), "a refused image leaves no domain");
    }
}

/// `kxl save DOMAIN FILE CFG` stores CFG in the file instead of the
/// domain's config, and `kxl restore CFG FILE` makes the domain with CFG
/// instead of the stored one (here: other names, which the guest then
/// reads from its own xenstore directory). A CFG the image does not fit
/// (less memory than was saved) is refused, and no domain is left.
#[test]
fn save_and_restore_take_a_replacement_config() {
    let d = Dom0::new("savecfg");
    d.boot_service_guest("cf");
    let image = d.dir.join("cf.save");
    let stored = d.config("cf-stored", "");
    let out = d.kxl(&[
        "save",
        "cf",
        image.to_str().unwrap(),
        stored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "kxl save with CFG: {}", show(&out));
    let out = d.kxl(&["restore", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl restore: {}", show(&out));
    assert!(d.is_listed("cf-stored"), "the stored config named it");
    let name = d.guest_command("cf-stored", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(name, "xs read ok cf-stored");

    let out = d.kxl(&["save", "cf-stored", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    let smaller = d.config("cf-smaller", "");
    let text = std::fs::read_to_string(&smaller).unwrap();
    std::fs::write(&smaller, text.replace("memory = 64", "memory = 32")).unwrap();
    let out = d.kxl(&[
        "restore",
        smaller.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        !d.is_listed("cf-smaller"),
        "a refused restore left a domain"
    );

    let renamed = d.config("cf-renamed", "");
    let out = d.kxl(&[
        "restore",
        renamed.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "kxl restore with CFG: {}", show(&out));
    assert!(d.is_listed("cf-renamed"), "the replacement config named it");
    let name = d.guest_command("cf-renamed", "xs read name", "xs read", GUEST_LIMIT);
    assert_eq!(name, "xs read ok cf-renamed");
    d.ok(&["destroy", "cf-renamed"]);
}

/// A guest that offers Xen's suspend protocol (`control/feature-suspend`,
/// which Linux writes at boot) is asked to suspend itself rather than
/// paused. One that then ignores the request gets libxl's treatment: the
/// request is withdrawn after the limit, the save fails with a clear
/// error and no image, and the domain runs on. (The test guest offers the
/// protocol here but answers "suspend" with "unknown shutdown request".)
#[test]
fn guest_ignoring_the_suspend_request_fails_the_save_and_runs_on() {
    let d = Dom0::new("ignoresuspend").with_kxend_env("KXEN_SUSPEND_TIMEOUT", "2");
    d.boot_service_guest("is");
    let offered = d.guest_command(
        "is",
        "xs write control/feature-suspend 1",
        "xs write",
        GUEST_LIMIT,
    );
    assert_eq!(offered, "xs write ok");

    let image = d.dir.join("is.save");
    let out = d.kxl(&["save", "is", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "kxl save: {}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("guest didn't acknowledge suspend, cancelling request"),
        "{}",
        show(&out)
    );
    assert!(!image.exists(), "a failed save leaves no image");
    // The request reached the guest, which ignored it.
    d.wait_console("is", "unknown shutdown request suspend");
    // It was withdrawn, and the domain runs on, unpaused.
    let node = d.guest_command("is", "xs read control/shutdown", "xs read", GUEST_LIMIT);
    assert!(node.starts_with("xs read FAIL"), "still requested: {node}");
    assert!(d.is_listed("is"));
    let list = d.ok(&["list", "is"]);
    assert!(
        !list.contains("--p") && !list.contains("s-"),
        "left paused or suspended: {list}"
    );
    let echo = d.guest_command("is", "after-refusal", "echo: after-refusal", GUEST_LIMIT);
    assert_eq!(echo, "echo: after-refusal");
    let out = d.kxl(&["destroy", "is"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// Everything domain `name` printed on console_io (the VMM logs of each
/// domain it ran as), where the FIFO check writes once it leaves the
/// 2-level ABI the console ring's notifications use.
fn console_io(d: &Dom0, name: &str) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(d.dir.join("state/logs")) {
        let mut files: Vec<_> = entries
            .flatten()
            .filter(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                file.starts_with("vmm-") && file.ends_with(&format!("-{name}.log"))
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    all
}

/// Wait until `name`'s console_io has `needle`; a FAIL line fails the test.
fn wait_console_io(d: &Dom0, name: &str, needle: &str) -> String {
    wait_console_io_for(d, name, needle, |log| log.contains(needle))
}

/// Wait until `name`'s console_io satisfies `done` (`what` names it for
/// the failure), within the guest limit; a FAIL line fails the test.
fn wait_console_io_for(d: &Dom0, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let log = console_io(d, name);
        assert!(!log.contains("FAIL "), "{log}");
        if done(&log) {
            return log;
        }
        assert!(
            start.elapsed() < GUEST_LIMIT,
            "no {what:?} from {name}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A guest on FIFO event channels that does not take part in the suspend
/// protocol is saved transparently and restored mid-check: the test guest
/// (`kxen.test=evtchn.fifo_save`) switches to FIFO, leaves an event
/// pending and sets a port's priority, waits at its save point while the
/// test pauses, saves (verify-stream-v2 checks the image) and restores it;
/// in the new domain a new event links behind the pending one, which
/// needs the queue's tail the hypervisor kept, and the prioritised port's
/// event goes on its queue. Before, such a save was refused.
#[test]
fn fifo_guest_is_saved_and_restored_with_its_queues() {
    saved_at_its_save_point("savefifo", "fifo", "evtchn.fifo_save");
}

/// A guest paused mid-exchange with xenstore is saved transparently and
/// its exchange finishes in the new domain: the test guest
/// (`kxen.test=xenstore.save`) leaves a reply longer than the ring half
/// delivered (the rest queued in kxend's daemon) and a write half sent
/// (the daemon holding its header and part of its body), then waits at
/// its save point. After the restore it reads the whole reply and sends
/// the write's rest, which must be acknowledged and stored. Before, the
/// restore reset the ring and both were lost.
#[test]
fn xenstore_exchange_in_flight_survives_a_save() {
    saved_at_its_save_point("savexs", "xsflight", "xenstore.save");
}

/// A guest that names a suspend event channel in
/// `device/suspend/event-channel` is asked to suspend through it, as
/// libxl asks: the test guest (`kxen.test=suspend.evtchn`) offers neither
/// `control/feature-suspend` nor a watch on `control/shutdown`, so only
/// the channel can reach it. A checkpoint makes its suspend return 1 and
/// it waits on the channel again (kxend bound it for the occasion, and
/// binds it again); a save and restore makes it return 0 in the new
/// domain. Before, kxend paused such a guest and saved it transparently.
#[test]
fn a_guest_is_asked_to_suspend_through_its_suspend_event_channel() {
    let d = Dom0::new("suspendevtchn");
    let name = "evtchnsuspend";
    create_at_special(&d, name, "suspend.evtchn");
    wait_console_io(&d, name, "suspend.evtchn: waiting on port");
    let checkpoint = d.dir.join("checkpoint.save");
    let out = d.kxl(&["save", "-c", name, checkpoint.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save -c: {}", show(&out));
    let log = wait_console_io(&d, name, "suspend.evtchn: suspend returned 1");
    assert!(!log.contains("suspend returned 0"), "{log}");
    verify_stream_v2(
        &checkpoint,
        "xl",
        &["Page Data records", "Libxc Record: HVM context"],
    );
    let dmesg = d.ok(&["dmesg"]);
    assert!(
        dmesg.contains("suspended itself on request (suspend event channel)"),
        "{dmesg}"
    );
    // Asked again, through a fresh binding of the same port.
    let waiting = "suspend.evtchn: waiting on port";
    wait_console_io_for(&d, name, "a second wait on the port", |log| {
        log.matches(waiting).count() >= 2
    });
    let image = d.dir.join("evtchn.save");
    let out = d.kxl(&["save", name, image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    let out = d.kxl(&["restore", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl restore: {}", show(&out));
    let log = wait_console_io(&d, name, "PASS suspend.evtchn");
    assert!(log.contains("suspend.evtchn: suspend returned 0"), "{log}");
}

/// Create the test guest (PVH, one vCPU) running its `special` check.
fn create_at_special(d: &Dom0, name: &str, special: &str) {
    let cfg = d.guest_config(name, &format!("kxen.test={special}"), "");
    d.ok(&["create", cfg.to_str().unwrap()]);
}

/// Boot the test guest on its `special` check, which waits at a save
/// point; pause it there, save it (verify-stream-v2 checks the image),
/// restore it, and wait for the check to pass in the new domain.
fn saved_at_its_save_point(dir: &str, name: &str, special: &str) {
    let d = Dom0::new(dir);
    create_at_special(&d, name, special);
    wait_console_io(&d, name, &format!("{special}: at the save point"));
    d.ok(&["pause", name]);
    let log = console_io(&d, name);
    assert!(
        !log.contains("after the save point"),
        "the guest left its save window before the pause:\n{log}"
    );
    let image = d.dir.join(format!("{name}.save"));
    let out = d.kxl(&["save", name, image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    verify_stream_v2(
        &image,
        "xl",
        &["Page Data records", "Libxc Record: HVM context"],
    );
    let out = d.kxl(&["restore", image.to_str().unwrap()]);
    assert!(out.status.success(), "kxl restore: {}", show(&out));
    let log = wait_console_io(&d, name, &format!("PASS {special}"));
    assert!(
        log.contains(&format!("{special}: after the save point")),
        "{log}"
    );
}
