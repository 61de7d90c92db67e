//! 32-bit PVH guests that turn on paging (`tests/guest32/paging.S`): 2-level
//! tables with 4 MiB (CR4.PSE) or 4 KiB pages, and PAE tables with 2 MiB or
//! 4 KiB pages.
//!
//! Where KVM runs them, each prints after CR0.PG is on (through console_io,
//! whose buffer the VMM reads through the guest's page tables, and port 0xE9)
//! and powers off. On PVM hosts KVM answers a CR0.PG write with EFER.LME
//! clear with #GP inside KVM (the kvm-pvm flight recorder shows vector 13 at
//! the `mov %eax, %cr0`, then #DF, then the triple fault; the VMM gets no
//! exit before the shutdown), so there the guest cannot run, and what is
//! checked is that the domain's crash says exactly that instead of a bare
//! "triple fault".

use std::path::{Path, PathBuf};
use std::time::Duration;

use kxen_tests::{guest32, kxen_vmm, run_with_limit};

const BEFORE: &str = "(d1) paging guest: paging off, setting it up";
const AFTER: &str = "(d1) paging guest: checks passed, powering off";

fn pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The paging guest with `layout` (an assembler symbol of paging.S) set.
fn paging_guest(layout: &str) -> PathBuf {
    guest32("paging", &layout.to_lowercase(), |s| {
        format!(".set {layout}, 1\n.set PAGING, 1\n{s}")
    })
}

/// Boot `elf`; where paging outside long mode works it must print after the
/// switch and power off, on PVM hosts it must crash at the CR0 write with
/// the diagnosis naming `mode`.
fn boots_with_paging(elf: &Path, mode: &str) {
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", elf.to_str().unwrap(), "--memory", "16"],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    assert!(!run.timed_out, "{t}");
    assert!(run.stderr.contains(BEFORE), "{t}");
    if pvm_host() {
        assert!(!run.stderr.contains(AFTER), "{t}");
        assert_eq!(run.code, Some(7), "{t}");
        let expected = format!(
            "the fault is at a mov to CR0 that sets PG (0x80000011) with EFER.LME clear: \
             the guest turned on {mode} outside long mode, which this host's KVM (PVM) \
             refuses with #GP"
        );
        assert!(run.stderr.contains(&expected), "{t}");
    } else {
        // Once through console_io and once through port 0xE9.
        assert_eq!(run.stderr.matches(AFTER).count(), 2, "{t}");
        assert_eq!(run.code, Some(0), "{t}");
    }
}

#[test]
fn pse_guest_with_4mib_pages() {
    boots_with_paging(
        &paging_guest("PSE"),
        "32-bit paging with 4 MiB pages (CR4.PSE)",
    );
}

#[test]
fn two_level_guest_with_4kib_pages() {
    boots_with_paging(&paging_guest("PSE4K"), "32-bit paging");
}

#[test]
fn pae_guest_with_2mib_pages() {
    boots_with_paging(&paging_guest("PAE"), "PAE paging");
}

#[test]
fn pae_guest_with_4kib_pages() {
    boots_with_paging(&paging_guest("PAE4K"), "PAE paging");
}

/// The same guest with paging left off runs everywhere: what fails above is
/// the paging switch, not the guest.
#[test]
fn same_guest_without_paging_runs() {
    let elf = guest32("paging", "nopaging", |s| format!(".set PAGING, 0\n{s}"));
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", elf.to_str().unwrap(), "--memory", "16"],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    assert!(run.stderr.contains(BEFORE), "{t}");
    assert_eq!(run.stderr.matches(AFTER).count(), 2, "{t}");
    assert_eq!(run.code, Some(0), "{t}");
}
