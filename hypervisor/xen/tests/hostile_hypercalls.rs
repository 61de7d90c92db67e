//! Hostile-guest properties of the hypercall layer, without KVM.

use kxen_xen::guest::IdentityMmu;
use kxen_xen::harness::{self, RAM_BYTES};
use kxen_xen::hypercall::Call;
use xen_abi::errno::*;
use xen_abi::hypercall::*;

fn call(d: &kxen_xen::Domain, nr: u64, args: [u64; 5]) -> i64 {
    d.hypercall(0, &IdentityMmu, Call { nr, args })
}

/// A long pseudo-random storm of hypercalls with mostly-plausible
/// arguments never panics or wedges the domain.
#[test]
fn random_hypercall_storm_never_panics() {
    let (domain, _) = harness::domain();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = Vec::new();
    for _ in 0..20_000 * 44 {
        bytes.push(next() as u8);
    }
    harness::run_bytes(&domain, &bytes);
    // Still serving sane requests afterwards.
    assert_eq!(call(&domain, XEN_VERSION, [0; 5]), 4 << 16 | 17);
}

#[test]
fn unknown_hypercalls_are_enosys() {
    let (domain, _) = harness::domain();
    for nr in [0, 1, 2, 40, 63, 64, 1000, u64::MAX] {
        assert_eq!(call(&domain, nr, [0; 5]), -ENOSYS, "hypercall {nr}");
    }
    assert_eq!(call(&domain, SYSCTL, [0; 5]), -EPERM);
}

#[test]
fn bad_pointers_are_efault() {
    let (domain, _) = harness::domain();
    let outside = RAM_BYTES + 0x1000;
    let straddle = RAM_BYTES - 4;
    // xen_version(extraversion) writes 16 bytes.
    assert_eq!(call(&domain, XEN_VERSION, [1, outside, 0, 0, 0]), -EFAULT);
    assert_eq!(call(&domain, XEN_VERSION, [1, straddle, 0, 0, 0]), -EFAULT);
    assert_eq!(
        call(&domain, XEN_VERSION, [1, u64::MAX - 3, 0, 0, 0]),
        -EFAULT
    );
    // console_io(write) of a length running off the end of RAM.
    assert_eq!(call(&domain, CONSOLE_IO, [0, 64, straddle, 0, 0]), -EFAULT);
    assert_eq!(
        call(&domain, CONSOLE_IO, [0, u32::MAX as u64, 0, 0, 0]),
        -E2BIG
    );
    // hvm_op(set_param), evtchn(bind_interdomain), memory_op(add_to_physmap)
    // and sched_op(shutdown) each read their struct first.
    for nr in [HVM_OP, EVENT_CHANNEL_OP] {
        assert_eq!(
            call(&domain, nr, [0, outside, 0, 0, 0]),
            -EFAULT,
            "hypercall {nr}"
        );
    }
    assert_eq!(call(&domain, MEMORY_OP, [7, outside, 0, 0, 0]), -EFAULT);
    // Reservation ops report the extents done instead, as Xen does.
    assert_eq!(call(&domain, MEMORY_OP, [1, outside, 0, 0, 0]), 0);
    assert_eq!(call(&domain, SCHED_OP, [2, outside, 0, 0, 0]), -EFAULT);
}

#[test]
fn out_of_range_ports_and_params_are_einval() {
    let (domain, _) = harness::domain();
    let buf = 0x1000u64;
    let mem = domain.mem.clone();
    let put = |bytes: &[u8]| {
        use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
        mem.memory().write_slice(bytes, GuestAddress(buf)).unwrap();
    };
    // EVTCHNOP_send / close / unmask on port 5000.
    put(&5000u32.to_le_bytes());
    for cmd in [4, 3, 9] {
        assert_eq!(
            call(&domain, EVENT_CHANNEL_OP, [cmd, buf, 0, 0, 0]),
            -EINVAL,
            "cmd {cmd}"
        );
    }
    // HVMOP_get_param index 1000.
    let mut p = [0u8; 16];
    p[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    p[4..8].copy_from_slice(&1000u32.to_le_bytes());
    put(&p);
    assert_eq!(call(&domain, HVM_OP, [1, buf, 0, 0, 0]), -EINVAL);
    // vcpu_op on a vCPU that does not exist.
    assert_eq!(call(&domain, VCPU_OP, [3, 99, 0, 0, 0]), -ENOENT);
}

/// Extents whose GFN range would overflow or leave guest memory are
/// refused, never wrapped.
#[test]
fn reservation_extents_cannot_overflow() {
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
    let (domain, _) = harness::domain();
    let list = 0x2000u64;
    let res = 0x1000u64;
    let put = |gpa: u64, bytes: &[u8]| {
        domain
            .mem
            .memory()
            .write_slice(bytes, GuestAddress(gpa))
            .unwrap();
    };
    // xen_memory_reservation {extent_start, nr_extents 1, order 9, domid self}.
    let mut r = [0u8; 32];
    r[0..8].copy_from_slice(&list.to_le_bytes());
    r[8..16].copy_from_slice(&1u64.to_le_bytes());
    r[16..20].copy_from_slice(&9u32.to_le_bytes());
    r[24..26].copy_from_slice(&0x7ff0u16.to_le_bytes());
    put(res, &r);
    // Wrapping past 2^64, past the guest-physical space, just past RAM.
    for gfn in [u64::MAX - 511, 1u64 << 40, RAM_BYTES >> 12] {
        put(list, &gfn.to_le_bytes());
        for cmd in [1, 6] {
            assert_eq!(
                call(&domain, MEMORY_OP, [cmd, res, 0, 0, 0]),
                0,
                "cmd {cmd} gfn {gfn:#x}"
            );
        }
    }
    // A valid 2 MiB extent still works: out, then back in.
    put(list, &512u64.to_le_bytes());
    assert_eq!(call(&domain, MEMORY_OP, [1, res, 0, 0, 0]), 1);
    assert_eq!(call(&domain, MEMORY_OP, [6, res, 0, 0, 0]), 1);
}
