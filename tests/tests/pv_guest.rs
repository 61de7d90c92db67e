//! The PV test guest under the real kxen-vmm on real KVM.

use kxen_tests::{boot_test_guest, failed_checks, guest_summary};

/// Every check of the test guest passes and the domain powers off.
#[test]
fn all_guest_checks_pass() {
    let run = boot_test_guest("", 2);
    let t = run.transcript();
    assert!(run.stdout.contains("kxen-testguest: start"), "{t}");
    let (passed, failed) = guest_summary(&run.stdout).unwrap_or_else(|| panic!("no verdict\n{t}"));
    assert!(failed_checks(&run.stdout).is_empty(), "{t}");
    assert_eq!(failed, 0, "{t}");
    assert!(passed >= 111, "only {passed} checks ran\n{t}");
    assert_eq!(run.code, Some(0), "poweroff must exit 0\n{t}");
}

/// `kxen.test=NAME` runs exactly that check.
#[test]
fn single_check_runs_alone() {
    let run = boot_test_guest("kxen.test=xen_version.version", 1);
    let t = run.transcript();
    assert_eq!(guest_summary(&run.stdout), Some((1, 0)), "{t}");
    assert!(run.stdout.contains("PASS xen_version.version"), "{t}");
    assert_eq!(run.code, Some(0), "{t}");
}

/// The hostile-input checks, run as their own group.
#[test]
fn hostile_guest_checks_pass() {
    let run = boot_test_guest("kxen.test=hostile.*", 1);
    let t = run.transcript();
    let (passed, failed) = guest_summary(&run.stdout).unwrap_or_else(|| panic!("no verdict\n{t}"));
    assert!(passed >= 4 && failed == 0, "{t}");
    assert_eq!(run.code, Some(0), "{t}");
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
