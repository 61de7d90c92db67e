//! Hypercalls from a vCPU outside 64-bit mode (memory_op, sched_poll,
//! set_timer_op): its structs come in the 32-bit ("compat") layout, as Xen
//! reads them, and translate to the native request. The same bytes from a
//! 64-bit caller mean something else.

use kxen_xen::harness::{self, read_guest, write_guest, RAM_BYTES};
use xen_abi::errno::*;
use xen_abi::hypercall::MEMORY_OP;
use xen_abi::memory::*;
use xen_abi::DOMID_SELF;
use zerocopy::{FromBytes, IntoBytes};

/// Where the tests put the hypercall's argument struct.
const ARG: u64 = 0x1000;
/// A RAM frame for shared_info.
const SHINFO_GFN: u64 = 0x200;
/// Offsets in vcpu_info[0] that are the same in both layouts: the time
/// record's version and tsc_to_system_mul.
const TIME_VERSION: u64 = 32;
const TIME_MUL: u64 = 32 + 24;

fn read_u32(domain: &kxen_xen::Domain, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(read_guest(domain, gpa, &mut b));
    u32::from_le_bytes(b)
}

fn current_reservation(
    domain: &kxen_xen::Domain,
    call: fn(&kxen_xen::Domain, u64, [u64; 5]) -> i64,
) -> i64 {
    write_guest(domain, 0x800, DOMID_SELF.as_bytes());
    call(
        domain,
        MEMORY_OP,
        [XENMEM_CURRENT_RESERVATION, 0x800, 0, 0, 0],
    )
}

#[test]
fn compat_add_to_physmap_places_shared_info() {
    let (domain, _) = harness::domain();
    let xatp = CompatAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: SHINFO_GFN as u32,
    };
    write_guest(&domain, ARG, xatp.as_bytes());
    // Read natively, idx would take the compat gpfn's bytes: -EINVAL, the
    // 32-bit guests' "Failed to map shared_info: -22".
    let native = harness::hypercall(&domain, MEMORY_OP, [XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]);
    assert_eq!(native, -EINVAL);
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]);
    assert_eq!(rc, 0);
    let base = SHINFO_GFN << 12;
    assert_eq!(read_u32(&domain, base + TIME_VERSION) % 2, 0);
    assert_ne!(
        read_u32(&domain, base + TIME_MUL),
        0,
        "time record published"
    );
}

/// The registers' upper halves are not a 32-bit caller's: an argument
/// pointer above 4 GiB cannot exist in compat mode.
#[test]
fn compat_arguments_are_32_bits() {
    let (domain, _) = harness::domain();
    let xatp = CompatAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: SHINFO_GFN as u32,
    };
    write_guest(&domain, ARG, xatp.as_bytes());
    let high = (0xdead_u64 << 32) | ARG;
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_ADD_TO_PHYSMAP, high, 0, 0, 0]);
    assert_eq!(rc, 0);
    // A command's upper half is dropped the same way.
    let cmd = (1u64 << 40) | XENMEM_ADD_TO_PHYSMAP;
    assert_eq!(
        harness::hypercall32(&domain, MEMORY_OP, [cmd, ARG, 0, 0, 0]),
        0
    );
}

#[test]
fn compat_memory_map_writes_entries_and_count_only() {
    let (domain, _) = harness::domain();
    let buffer = 0x3000u64;
    let map = CompatMemoryMap {
        nr_entries: 4,
        buffer: buffer as u32,
    };
    write_guest(&domain, ARG, map.as_bytes());
    // A sentinel right after the 8-byte compat struct stays untouched.
    write_guest(&domain, ARG + 8, &[0xa5; 8]);
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_MEMORY_MAP, ARG, 0, 0, 0]);
    assert_eq!(rc, 0);
    let mut back = [0u8; 16];
    assert!(read_guest(&domain, ARG, &mut back));
    assert_eq!(u32::from_le_bytes(back[..4].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_le_bytes(back[4..8].try_into().unwrap()),
        buffer as u32
    );
    assert_eq!(&back[8..], &[0xa5; 8]);
    let mut entry = [0u8; 20];
    assert!(read_guest(&domain, buffer, &mut entry));
    let entry = E820Entry::read_from_bytes(&entry).unwrap();
    let (addr, size, kind) = (entry.addr, entry.size, entry.kind);
    assert_eq!((addr, size, kind), (0, RAM_BYTES, E820_RAM));

    // A buffer at the top of the 32-bit space is outside RAM: -EFAULT.
    let map = CompatMemoryMap {
        nr_entries: 4,
        buffer: 0xffff_fff0,
    };
    write_guest(&domain, ARG, map.as_bytes());
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_MEMORY_MAP, ARG, 0, 0, 0]);
    assert_eq!(rc, -EFAULT);
}

#[test]
fn compat_reservations_use_4_byte_extents() {
    let (domain, _) = harness::domain();
    let before = current_reservation(&domain, harness::hypercall32);
    assert_eq!(before, (RAM_BYTES / 4096) as i64);
    assert_eq!(before, current_reservation(&domain, harness::hypercall));
    let list = 0x2000u64;
    write_guest(&domain, list, [0x100u32, 0x101].as_bytes());
    let res = CompatMemoryReservation {
        extent_start: list as u32,
        nr_extents: 2,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 2],
    };
    write_guest(&domain, ARG, res.as_bytes());
    let rc = harness::hypercall32(
        &domain,
        MEMORY_OP,
        [XENMEM_DECREASE_RESERVATION, ARG, 0, 0, 0],
    );
    assert_eq!(rc, 2);
    assert_eq!(
        current_reservation(&domain, harness::hypercall32),
        before - 2
    );
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_POPULATE_PHYSMAP, ARG, 0, 0, 0]);
    assert_eq!(rc, 2);
    assert_eq!(current_reservation(&domain, harness::hypercall32), before);

    // A hostile count: the walk stops at the first extent it cannot read
    // (the list runs off the end of RAM), as a native walk does.
    let tail = RAM_BYTES - 8;
    write_guest(&domain, tail, [0x102u32, 0x103].as_bytes());
    let res = CompatMemoryReservation {
        extent_start: tail as u32,
        nr_extents: u32::MAX,
        ..res
    };
    write_guest(&domain, ARG, res.as_bytes());
    let rc = harness::hypercall32(
        &domain,
        MEMORY_OP,
        [XENMEM_DECREASE_RESERVATION, ARG, 0, 0, 0],
    );
    assert_eq!(rc, 2);
    // A too-large order is refused before any extent, as natively.
    let res = CompatMemoryReservation {
        extent_order: 10,
        ..res
    };
    write_guest(&domain, ARG, res.as_bytes());
    let rc = harness::hypercall32(&domain, MEMORY_OP, [XENMEM_POPULATE_PHYSMAP, ARG, 0, 0, 0]);
    assert_eq!(rc, 0);
}

#[test]
fn compat_batch_and_remove_use_4_byte_fields() {
    let (domain, _) = harness::domain();
    let (idxs, gpfns, errs) = (0x2000u64, 0x2100u64, 0x2200u64);
    write_guest(&domain, idxs, 0u32.as_bytes());
    write_guest(&domain, gpfns, (SHINFO_GFN as u32).as_bytes());
    write_guest(&domain, errs, (-1i32).as_bytes());
    let batch = CompatAddToPhysmapBatch {
        domid: DOMID_SELF,
        space: XENMAPSPACE_SHARED_INFO as u16,
        size: 1,
        foreign_domid: 0,
        idxs: idxs as u32,
        gpfns: gpfns as u32,
        errs: errs as u32,
    };
    write_guest(&domain, ARG, batch.as_bytes());
    let rc = harness::hypercall32(
        &domain,
        MEMORY_OP,
        [XENMEM_ADD_TO_PHYSMAP_BATCH, ARG, 0, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(read_u32(&domain, errs), 0);
    assert_ne!(read_u32(&domain, (SHINFO_GFN << 12) + TIME_MUL), 0);

    let before = current_reservation(&domain, harness::hypercall32);
    let xrfp = CompatRemoveFromPhysmap {
        domid: DOMID_SELF,
        _pad: 0,
        gpfn: 0x150,
    };
    write_guest(&domain, ARG, xrfp.as_bytes());
    let rc = harness::hypercall32(
        &domain,
        MEMORY_OP,
        [XENMEM_REMOVE_FROM_PHYSMAP, ARG, 0, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(
        current_reservation(&domain, harness::hypercall32),
        before - 1
    );
}

/// The layout follows the caller's mode at each call: a native call after
/// compat ones reads the native struct.
#[test]
fn layout_is_chosen_per_call() {
    let (domain, _) = harness::domain();
    let map = MemoryMap {
        nr_entries: 1,
        _pad: 0,
        buffer: 0x3000,
    };
    write_guest(&domain, ARG, map.as_bytes());
    assert_eq!(
        harness::hypercall(&domain, MEMORY_OP, [XENMEM_MEMORY_MAP, ARG, 0, 0, 0]),
        0
    );
    let compat = CompatMemoryMap {
        nr_entries: 1,
        buffer: 0x4000,
    };
    write_guest(&domain, ARG, compat.as_bytes());
    assert_eq!(
        harness::hypercall32(&domain, MEMORY_OP, [XENMEM_MEMORY_MAP, ARG, 0, 0, 0]),
        0
    );
    for buffer in [0x3000, 0x4000] {
        assert_eq!(
            read_u32(&domain, buffer + 16),
            E820_RAM,
            "entry at {buffer:#x}"
        );
    }
}

/// sched_poll from 32-bit mode: a 4-byte port-list handle, nr_ports at 4
/// and the timeout at 8. (The harness domain is stopping, so a poll that
/// would block returns at once.)
#[test]
fn compat_sched_poll_reads_the_32_bit_layout() {
    use xen_abi::hypercall::SCHED_OP;
    use xen_abi::sched::{CompatPoll, SCHEDOP_POLL};
    let (domain, _) = harness::domain();
    let list = 0x2000u64;
    let poll = |port: u32, nr_ports: u32| {
        write_guest(&domain, list, port.as_bytes());
        let req = CompatPoll {
            ports: list as u32,
            nr_ports,
            timeout: 1,
        };
        write_guest(&domain, ARG, req.as_bytes());
        harness::hypercall32(&domain, SCHED_OP, [SCHEDOP_POLL, ARG, 0, 0, 0])
    };
    // A port beyond the 2-level range is found in the list: -EINVAL. Read
    // natively, the list pointer would take nr_ports' bytes: -EFAULT.
    assert_eq!(poll(5000, 1), -EINVAL);
    assert_eq!(
        harness::hypercall(&domain, SCHED_OP, [SCHEDOP_POLL, ARG, 0, 0, 0]),
        -EFAULT
    );
    assert_eq!(poll(1, 129), -EINVAL, "more ports than Xen allows");
    assert_eq!(poll(1, 1), 0);
}

/// set_timer_op from 32-bit mode passes the 64-bit deadline in two
/// registers, low half first.
#[test]
fn compat_set_timer_op_joins_the_two_halves() {
    use xen_abi::hypercall::SET_TIMER_OP;
    let (domain, _) = harness::domain();
    let deadline = 0x7fff_0000_89ab_cdef_u64;
    let rc = harness::hypercall32(
        &domain,
        SET_TIMER_OP,
        [deadline & 0xffff_ffff, deadline >> 32, 0, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(domain.lock().vcpus[0].singleshot_deadline, Some(deadline));
    // Natively the first argument is the whole deadline.
    assert_eq!(
        harness::hypercall(&domain, SET_TIMER_OP, [deadline, 1, 0, 0, 0]),
        0
    );
    assert_eq!(domain.lock().vcpus[0].singleshot_deadline, Some(deadline));
}
