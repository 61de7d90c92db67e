//! The PV test guest under the real kxen-vmm on real KVM.

use std::path::Path;

use kxen_tests::{
    boot_test_guest, failed_checks, guest_summary, repo_root, skipped_checks, Finished,
    GuestSummary,
};

/// The checks a run without `kxen.test=` must report, in registry order:
/// the `c("name", ...)` entries of `CHECKS` in the guest's source (the
/// `special(...)` ones run only when named).
fn registered_checks() -> Vec<String> {
    let path = repo_root().join("tests/guest/src/checks/mod.rs");
    let source = std::fs::read_to_string(&path).expect("read the guest's check registry");
    let start = source
        .find("pub static CHECKS")
        .expect("CHECKS in the registry");
    let registry = &source[start..];
    let mut names = Vec::new();
    let mut rest = registry;
    while let Some(at) = rest.find("c(") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + 2..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `special(` or another call ending in c(
        }
        let Some(quoted) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let name = &quoted[..quoted.find('"').expect("closing quote")];
        names.push(name.to_string());
    }
    assert!(
        names.len() > 100 && names.iter().any(|n| n == "sched_op.shutdown_code"),
        "registry parse of {} found only {names:?}",
        path.display()
    );
    names
}

/// The one check this host cannot run, with the reason it must give: on
/// PVM hosts ring 3 runs with IOPL 0, so the ring-3 hypercall attempt
/// takes #GP in the CPU and never reaches kxen-vmm's CPL check.
fn expected_skips() -> Vec<&'static str> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        vec!["hostile.ring3_hypercall"]
    } else {
        vec![]
    }
}

/// `run` reports every check in `names` as passed, except the expected
/// skips, which it reports as skipped with the #GP reason; nothing else.
fn assert_all_pass(run: &Finished, names: &[String]) {
    let t = run.transcript();
    assert!(run.stdout.contains("kxen-testguest: start"), "{t}");
    assert!(failed_checks(&run.stdout).is_empty(), "{t}");
    let skips: Vec<&str> = expected_skips()
        .into_iter()
        .filter(|s| names.iter().any(|n| n == s))
        .collect();
    let skipped = skipped_checks(&run.stdout);
    assert_eq!(skipped.len(), skips.len(), "skips: expected {skips:?}\n{t}");
    for (line, name) in skipped.iter().zip(&skips) {
        let reason = line
            .trim()
            .strip_prefix(&format!("SKIP {name}: "))
            .unwrap_or_else(|| panic!("unexpected skip {line:?}\n{t}"));
        assert!(reason.contains("#GP"), "skip reason {reason:?}\n{t}");
    }
    for name in names {
        if skips.contains(&name.as_str()) {
            continue;
        }
        let passes = run
            .stdout
            .lines()
            .filter(|l| l.trim() == format!("PASS {name}"))
            .count();
        assert_eq!(passes, 1, "PASS {name} lines\n{t}");
    }
    assert_eq!(
        guest_summary(&run.stdout),
        Some(GuestSummary {
            passed: (names.len() - skips.len()) as u32,
            failed: 0,
            skipped: skips.len() as u32,
        }),
        "{t}"
    );
}

/// Every registered check of the test guest passes (the one check this
/// host cannot run is skipped, and said so) and the domain powers off.
#[test]
fn all_guest_checks_pass() {
    let run = boot_test_guest("", 2);
    assert_all_pass(&run, &registered_checks());
    assert_eq!(
        run.code,
        Some(0),
        "poweroff must exit 0\n{}",
        run.transcript()
    );
}

/// `kxen.test=NAME` runs exactly that check.
#[test]
fn single_check_runs_alone() {
    assert_only_check_passes("xen_version.version");
}

/// Boot the guest with `kxen.test=NAME`: that check, and only it, passes.
fn assert_only_check_passes(name: &str) {
    let run = boot_test_guest(&format!("kxen.test={name}"), 1);
    let t = run.transcript();
    assert!(run.stdout.contains(&format!("PASS {name}")), "{t}");
    assert_eq!(
        guest_summary(&run.stdout),
        Some(GuestSummary {
            passed: 1,
            failed: 0,
            skipped: 0
        }),
        "{t}"
    );
    assert_eq!(run.code, Some(0), "{t}");
}

/// The hostile-input checks, run as their own group.
#[test]
fn hostile_guest_checks_pass() {
    let run = boot_test_guest("kxen.test=hostile.*", 1);
    let hostile: Vec<String> = registered_checks()
        .into_iter()
        .filter(|n| n.starts_with("hostile."))
        .collect();
    assert_eq!(hostile.len(), 5, "hostile checks: {hostile:?}");
    assert_all_pass(&run, &hostile);
    assert_eq!(run.code, Some(0), "{}", run.transcript());
}

/// The grant table v2 checks, run as their own group (issue 18 item 9):
/// each switches the table to v2 and back.
#[test]
fn grant_v2_guest_checks_pass() {
    let run = boot_test_guest("kxen.test=gnttab.v2.*", 1);
    let v2: Vec<String> = registered_checks()
        .into_iter()
        .filter(|n| n.starts_with("gnttab.v2."))
        .collect();
    assert_eq!(v2.len(), 3, "grant v2 checks: {v2:?}");
    assert_all_pass(&run, &v2);
    assert_eq!(run.code, Some(0), "{}", run.transcript());
}

/// EVTCHNOP_reset (a special check: it closes the console's and
/// xenstore's ports too, so it runs alone): every port is closed
/// afterwards and sends on them fail with -EINVAL.
#[test]
fn evtchn_reset_closes_every_port() {
    assert_only_check_passes("evtchn.reset");
}

/// FIFO event channels from the test guest: init_control and
/// expand_array on its own pages, a self-IPI queued with its upcall, a
/// masked event linked by EVTCHNOP_unmask (alone: it leaves 2-level).
#[test]
fn evtchn_fifo_queues_a_self_ipi() {
    assert_only_check_passes("evtchn.fifo");
}

/// An unknown check name makes the guest crash itself: SHUTDOWN_crash is
/// reported as exit status 4.
#[test]
fn guest_crash_is_reported() {
    let run = boot_test_guest("kxen.test=no.such.check", 1);
    let t = run.transcript();
    assert_eq!(run.code, Some(4), "{t}");
    assert!(run.stderr.contains("shutdown: crash"), "{t}");
}

/// A triple fault ends the domain with a clear reason and status 7.
#[test]
fn triple_fault_ends_the_domain() {
    let run = boot_test_guest("kxen.test=triple_fault", 1);
    let t = run.transcript();
    assert_eq!(run.code, Some(7), "{t}");
    assert!(run.stderr.contains("triple fault"), "{t}");
}

/// An instruction KVM cannot emulate ends the domain, it does not wedge
/// the VMM.
#[test]
fn emulation_failure_ends_the_domain() {
    let run = boot_test_guest("kxen.test=bad_insn", 1);
    let t = run.transcript();
    assert_eq!(run.code, Some(7), "{t}");
    assert!(run.stderr.contains("instruction emulation failed"), "{t}");
    assert!(!run.stdout.contains("bad_insn not trapped"), "{t}");
}
