//! Xen's suspend in the hypercall layer: SCHEDOP_shutdown(SHUTDOWN_suspend)
//! keeps the domain (the platform hears it once), and a suspended
//! domain's snapshot carries no event channels or placements, loading
//! onto the new domain's own Xen state, with its fields checked.

use kxen_xen::harness;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use xen_abi::hvm::HVM_PARAM_STORE_PFN;
use xen_abi::hypercall::*;
use xen_abi::sched::{SCHEDOP_SHUTDOWN, SHUTDOWN_SUSPEND};

const ARG: u64 = 0x1000;

fn call(d: &kxen_xen::Domain, nr: u64, a1: u64, a2: u64) -> i64 {
    harness::hypercall(d, nr, [a1, a2, 0, 0, 0])
}

fn suspend(d: &kxen_xen::Domain) -> i64 {
    d.mem
        .memory()
        .write_obj(SHUTDOWN_SUSPEND, GuestAddress(ARG))
        .unwrap();
    call(d, SCHED_OP, SCHEDOP_SHUTDOWN, ARG)
}

/// Bind an IPI on vCPU 0; its port.
fn bind_ipi(d: &kxen_xen::Domain) -> u32 {
    d.mem
        .memory()
        .write_slice(&[0u8; 8], GuestAddress(ARG))
        .unwrap();
    assert_eq!(call(d, EVENT_CHANNEL_OP, 7, ARG), 0);
    d.mem.memory().read_obj(GuestAddress(ARG + 4)).unwrap()
}

#[test]
fn suspend_keeps_the_domain_and_is_reported_once() {
    let (d, platform) = harness::domain();
    assert_eq!(suspend(&d), 0, "the hypercall returns 0 where it is made");
    assert_eq!(d.suspended_by(), Some(0));
    assert_eq!(suspend(&d), 0);
    assert_eq!(
        *platform.shutdowns.lock().unwrap(),
        [SHUTDOWN_SUSPEND],
        "a second request while suspended changes nothing"
    );
    d.clear_suspended();
    assert_eq!(d.suspended_by(), None);
}

#[test]
fn a_suspended_snapshot_loads_onto_the_new_domains_own_state() {
    let (d, _) = harness::domain();
    let old_port = bind_ipi(&d);
    // A suspended guest's event state is not saved at all.
    assert_eq!(suspend(&d), 0);
    let snap = d.snapshot().expect("a suspended domain's snapshot");
    assert!(snap.suspended);
    assert!(snap.ports.is_empty() && snap.grant_frames.is_empty());
    assert!(snap.vcpus[0].initialised);

    let (fresh, _) = harness::domain();
    fresh.load_snapshot(&snap).expect("loads");
    // The guest binds its channels again, from the new domain's first
    // free port, as in a new Xen domain.
    assert_eq!(bind_ipi(&fresh), old_port);
    assert_eq!(fresh.suspended_by(), None);
}

#[test]
fn hostile_suspended_snapshots_are_refused() {
    let (d, _) = harness::domain();
    assert_eq!(suspend(&d), 0);
    let snap = d.snapshot().unwrap();

    let mut moved_ring = snap.clone();
    moved_ring.params.push((HVM_PARAM_STORE_PFN, 0x1234));
    let mut no_boot_vcpu = snap.clone();
    no_boot_vcpu.vcpus[0].initialised = false;
    let mut balloon_outside = snap.clone();
    balloon_outside.ballooned.push(u64::MAX >> 12);
    let mut too_few_vcpus = snap.clone();
    too_few_vcpus.vcpus.pop();
    for (what, bad) in [
        ("a ring frame elsewhere", moved_ring),
        ("no boot vCPU", no_boot_vcpu),
        ("a ballooned frame outside RAM", balloon_outside),
        ("a vCPU missing", too_few_vcpus),
    ] {
        let (fresh, _) = harness::domain();
        assert!(fresh.load_snapshot(&bad).is_err(), "{what} was taken");
    }
}
