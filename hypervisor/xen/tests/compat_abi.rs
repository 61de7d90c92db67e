//! Hypercalls from a vCPU outside 64-bit mode (memory_op, sched_poll,
//! set_timer_op, grant_table_op, vcpu_op): its structs come in the 32-bit ("compat") layout, as Xen
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

fn read_u64(domain: &kxen_xen::Domain, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    assert!(read_guest(domain, gpa, &mut b));
    u64::from_le_bytes(b)
}

/// GNTTABOP_setup_table from 32-bit mode: a 16-byte struct with the
/// frame-list handle at 12, and 4-byte frame numbers in the list.
#[test]
fn compat_setup_table_writes_4_byte_frames() {
    use kxen_xen::harness::DEFAULT_GRANT_GFN;
    use xen_abi::grant_table::*;
    use xen_abi::hypercall::GRANT_TABLE_OP;
    let (domain, _) = harness::domain();
    let list = 0x2000u64;
    write_guest(&domain, list, &[0xa5; 16]);
    let req = CompatSetupTable {
        dom: DOMID_SELF,
        nr_frames: 2,
        status: 99,
        frame_list: list as u32,
        ..Default::default()
    };
    write_guest(&domain, ARG, req.as_bytes());
    // Past the 16-byte compat struct: what a native read would take as
    // the frame list.
    write_guest(&domain, ARG + 16, &[0xa5; 8]);
    let rc = harness::hypercall32(
        &domain,
        GRANT_TABLE_OP,
        [GNTTABOP_SETUP_TABLE, ARG, 1, 0, 0],
    );
    assert_eq!(rc, 0);
    let mut back = [0u8; 16];
    assert!(read_guest(&domain, ARG, &mut back));
    let back = CompatSetupTable::read_from_bytes(&back).unwrap();
    assert_eq!({ back.status }, GNTST_OKAY);
    assert_eq!({ back.frame_list }, list as u32, "handle unchanged");
    assert_eq!(read_u32(&domain, list), DEFAULT_GRANT_GFN as u32);
    assert_eq!(read_u32(&domain, list + 4), DEFAULT_GRANT_GFN as u32 + 1);
    assert_eq!(
        read_u64(&domain, list + 8),
        0xa5a5_a5a5_a5a5_a5a5,
        "list ends after 2 x 4 bytes"
    );
    assert_eq!(
        read_u64(&domain, ARG + 16),
        0xa5a5_a5a5_a5a5_a5a5,
        "nothing past the struct"
    );

    // The same bytes read natively: the frame list is the sentinel.
    write_guest(&domain, ARG, req.as_bytes());
    let rc = harness::hypercall(
        &domain,
        GRANT_TABLE_OP,
        [GNTTABOP_SETUP_TABLE, ARG, 1, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(
        read_u32(&domain, ARG + 8) as u16 as i16,
        GNTST_BAD_VIRT_ADDR
    );

    // The 64-bit layout is unchanged: 8-byte frames, the handle at 16.
    write_guest(&domain, list, &[0xa5; 24]);
    let native = SetupTable {
        dom: DOMID_SELF,
        nr_frames: 2,
        status: 99,
        frame_list: list,
        ..Default::default()
    };
    write_guest(&domain, ARG, native.as_bytes());
    let rc = harness::hypercall(
        &domain,
        GRANT_TABLE_OP,
        [GNTTABOP_SETUP_TABLE, ARG, 1, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(read_u32(&domain, ARG + 8) as u16 as i16, GNTST_OKAY);
    assert_eq!(read_u64(&domain, list), DEFAULT_GRANT_GFN);
    assert_eq!(read_u64(&domain, list + 8), DEFAULT_GRANT_GFN + 1);
    assert_eq!(read_u64(&domain, list + 16), 0xa5a5_a5a5_a5a5_a5a5);
}

/// query_size, get_version and set_version have no pointer or frame
/// field: a 32-bit caller gets what a 64-bit one gets, in the same bytes.
#[test]
fn compat_query_size_and_versions_read_the_same_layout() {
    use xen_abi::grant_table::*;
    use xen_abi::hypercall::GRANT_TABLE_OP;
    let (domain, _) = harness::domain();
    let mut answers = Vec::new();
    for call in [harness::hypercall32, harness::hypercall] {
        let q = QuerySize {
            dom: DOMID_SELF,
            ..Default::default()
        };
        write_guest(&domain, ARG, q.as_bytes());
        assert_eq!(
            call(&domain, GRANT_TABLE_OP, [GNTTABOP_QUERY_SIZE, ARG, 1, 0, 0]),
            0
        );
        let mut back = [0u8; 16];
        assert!(read_guest(&domain, ARG, &mut back));
        answers.push(back);
    }
    assert_eq!(answers[0], answers[1]);
    let q = QuerySize::read_from_bytes(&answers[0]).unwrap();
    assert_eq!(q.status, GNTST_OKAY);
    assert!(q.max_nr_frames > 0);

    write_guest(&domain, ARG, SetVersion { version: 2 }.as_bytes());
    assert_eq!(
        harness::hypercall32(
            &domain,
            GRANT_TABLE_OP,
            [GNTTABOP_SET_VERSION, ARG, 1, 0, 0]
        ),
        0
    );
    let gv = GetVersion {
        dom: DOMID_SELF,
        ..Default::default()
    };
    write_guest(&domain, ARG, gv.as_bytes());
    assert_eq!(
        harness::hypercall32(
            &domain,
            GRANT_TABLE_OP,
            [GNTTABOP_GET_VERSION, ARG, 1, 0, 0]
        ),
        0
    );
    assert_eq!(read_u32(&domain, ARG + 4), 2);
}

/// GNTTABOP_copy from 32-bit mode: 24-byte ops, a 4-byte ref/gmfn union,
/// and each op's status at 20.
#[test]
fn compat_copy_uses_24_byte_ops() {
    use xen_abi::grant_table::*;
    use xen_abi::hypercall::GRANT_TABLE_OP;
    let (domain, _) = harness::domain();
    let table_gfn = 0x100u64;
    assert_eq!(harness::place_grant_frame(&domain, table_gfn), 0);
    let (src, dst) = (0x300u64, 0x301u64);
    write_guest(&domain, src << 12, &[0xaa; 4096]);
    write_guest(&domain, dst << 12, &[0; 4096]);
    let entry = GrantEntryV1 {
        flags: GTF_PERMIT_ACCESS,
        domid: 1,
        frame: dst as u32,
    };
    write_guest(&domain, (table_gfn << 12) + 11 * 8, entry.as_bytes());
    let side = |gref_or_gfn: u64, offset: u16| CompatCopyPtr {
        gref_or_gfn: gref_or_gfn as u32,
        domid: DOMID_SELF,
        offset,
    };
    let ops = [
        // Own frame -> grant 11.
        CompatCopy {
            source: side(src, 0),
            dest: side(11, 100),
            len: 16,
            flags: GNTCOPY_DEST_GREF,
            status: 99,
            _pad: 0,
        },
        // Own frame -> own frame, at the 24-byte stride.
        CompatCopy {
            source: side(src, 0),
            dest: side(dst, 4000),
            len: 8,
            flags: 0,
            status: 99,
            _pad: 0,
        },
    ];
    let uop = 0x4000u64;
    write_guest(&domain, uop, ops.as_bytes());
    let rc = harness::hypercall32(&domain, GRANT_TABLE_OP, [GNTTABOP_COPY, uop, 2, 0, 0]);
    assert_eq!(rc, 0);
    for i in 0..2 {
        let mut b = [0u8; 24];
        assert!(read_guest(&domain, uop + 24 * i, &mut b));
        let op = CompatCopy::read_from_bytes(&b).unwrap();
        assert_eq!(op.status, GNTST_OKAY, "op {i}");
        assert_eq!(op.len, ops[i as usize].len, "op {i} otherwise unchanged");
    }
    let mut page = [0u8; 4096];
    assert!(read_guest(&domain, dst << 12, &mut page));
    assert_eq!(&page[100..116], &[0xaa; 16]);
    assert_eq!(&page[4000..4008], &[0xaa; 8]);
    assert_eq!(page[116], 0);
    assert_eq!(page[99], 0);
}

/// VCPUOP_set_singleshot_timer from 32-bit mode: a 12-byte struct (a
/// 64-bit read would cross into the next page), flags at 8.
#[test]
fn compat_singleshot_timer_is_12_bytes() {
    use xen_abi::hypercall::VCPU_OP;
    use xen_abi::vcpu::*;
    let (domain, _) = harness::domain();
    // The struct's last byte is the last byte of RAM.
    let arg = RAM_BYTES - 12;
    let deadline = 0x1234_5678_9abc_u64;
    let req = CompatSetSingleshotTimer {
        timeout_abs_ns: deadline,
        flags: 0,
    };
    write_guest(&domain, arg, req.as_bytes());
    let rc = harness::hypercall32(
        &domain,
        VCPU_OP,
        [VCPUOP_SET_SINGLESHOT_TIMER, 0, arg, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(domain.lock().vcpus[0].singleshot_deadline, Some(deadline));
    // Natively the struct is 16 bytes and runs off the end of RAM.
    assert_eq!(
        harness::hypercall(
            &domain,
            VCPU_OP,
            [VCPUOP_SET_SINGLESHOT_TIMER, 0, arg, 0, 0]
        ),
        -EFAULT
    );
    // Flags are read at 8: a deadline in the past with FUTURE is -ETIME.
    let req = CompatSetSingleshotTimer {
        timeout_abs_ns: 1,
        flags: VCPU_SSHOTTMR_FUTURE,
    };
    write_guest(&domain, arg, req.as_bytes());
    assert_eq!(
        harness::hypercall32(
            &domain,
            VCPU_OP,
            [VCPUOP_SET_SINGLESHOT_TIMER, 0, arg, 0, 0]
        ),
        -ETIME
    );
}

/// VCPUOP_get_runstate_info and the runstate area from 32-bit mode: the
/// 44-byte compat layout (state_entry_time at 4, time[] at 12), and the
/// registration's pointer is the low 4 bytes of its union.
#[test]
fn compat_runstate_uses_the_44_byte_layout() {
    use xen_abi::hypercall::VCPU_OP;
    use xen_abi::vcpu::*;
    let (domain, _) = harness::domain();
    let info = 0x2000u64;
    write_guest(&domain, info, &[0xa5; 48]);
    let rc = harness::hypercall32(&domain, VCPU_OP, [VCPUOP_GET_RUNSTATE_INFO, 0, info, 0, 0]);
    assert_eq!(rc, 0);
    let compat_time = read_u64(&domain, info + 4);
    assert_eq!(read_u32(&domain, info), RUNSTATE_RUNNING);
    assert_eq!(
        read_u32(&domain, info + 44),
        0xa5a5_a5a5,
        "44 bytes written"
    );
    let rc = harness::hypercall(&domain, VCPU_OP, [VCPUOP_GET_RUNSTATE_INFO, 0, info, 0, 0]);
    assert_eq!(rc, 0);
    let native_time = read_u64(&domain, info + 8);
    assert!(
        compat_time > 0 && compat_time <= native_time,
        "entry time at 4 ({compat_time}) is the clock, native later ({native_time})"
    );

    // A 44-byte area ending at a page's end: fits in compat, crosses the
    // page natively.
    let area = 0x3000u64 + 4096 - 44;
    write_guest(&domain, area - 4, &[0xa5; 52]);
    write_guest(&domain, ARG, area.as_bytes());
    assert_eq!(
        harness::hypercall(
            &domain,
            VCPU_OP,
            [VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, ARG, 0, 0]
        ),
        -EINVAL,
        "natively 48 bytes from there cross the page"
    );
    // The union's upper half is not a 32-bit caller's.
    let arg_bytes = ((0xdead_beef_u64 << 32) | area).to_le_bytes();
    write_guest(&domain, ARG, &arg_bytes);
    let rc = harness::hypercall32(
        &domain,
        VCPU_OP,
        [VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, ARG, 0, 0],
    );
    assert_eq!(rc, 0);
    assert_eq!(
        read_u32(&domain, area - 4),
        0xa5a5_a5a5,
        "nothing before the area"
    );
    assert_eq!(read_u32(&domain, area), RUNSTATE_RUNNING);
    assert_eq!(
        read_u32(&domain, area + 44),
        0xa5a5_a5a5,
        "44 bytes written, not 48"
    );
    let entry = read_u64(&domain, area + 4);
    let rc = harness::hypercall(&domain, VCPU_OP, [VCPUOP_GET_RUNSTATE_INFO, 0, info, 0, 0]);
    assert_eq!(rc, 0);
    let now = read_u64(&domain, info + 8);
    assert!(
        native_time <= entry && entry <= now,
        "entry time at 4 ({entry:#x}) is the clock at registration"
    );
    // A later update keeps the compat layout: block and wake again (the
    // harness domain is stopping, so the block returns at once).
    use xen_abi::hypercall::SCHED_OP;
    use xen_abi::sched::SCHEDOP_BLOCK;
    assert_eq!(
        harness::hypercall32(&domain, SCHED_OP, [SCHEDOP_BLOCK, 0, 0, 0, 0]),
        0
    );
    assert_eq!(read_u32(&domain, area), RUNSTATE_RUNNING);
    assert!(read_u64(&domain, area + 4) >= entry);
    assert_eq!(read_u32(&domain, area - 4), 0xa5a5_a5a5);
    let blocked_ns = read_u64(&domain, area + 12 + 8 * RUNSTATE_BLOCKED as u64);
    assert!(
        blocked_ns < 1 << 62,
        "time[blocked] at 12 + 16: {blocked_ns:#x}"
    );

    // The 64-bit layout is unchanged: a native registration writes 48
    // bytes with the entry time at 8.
    let native_area = 0x5000u64;
    write_guest(&domain, native_area, &[0xa5; 56]);
    write_guest(&domain, ARG, native_area.as_bytes());
    assert_eq!(
        harness::hypercall(
            &domain,
            VCPU_OP,
            [VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, ARG, 0, 0]
        ),
        0
    );
    assert_eq!(read_u32(&domain, native_area + 4), 0, "padding at 4");
    assert!(read_u64(&domain, native_area + 8) >= entry);
    assert_eq!(read_u64(&domain, native_area + 48), 0xa5a5_a5a5_a5a5_a5a5);
}

/// The time-area registration from 32-bit mode takes the low 4 bytes of
/// its union; register_vcpu_info reads the same 16 bytes in both modes.
#[test]
fn compat_time_area_and_vcpu_info_registration() {
    use xen_abi::hypercall::VCPU_OP;
    use xen_abi::vcpu::*;
    let (domain, _) = harness::domain();
    let area = 0x3000u64;
    let arg_bytes = ((0xdead_beef_u64 << 32) | area).to_le_bytes();
    write_guest(&domain, ARG, &arg_bytes);
    assert_eq!(
        harness::hypercall(
            &domain,
            VCPU_OP,
            [VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA, 0, ARG, 0, 0]
        ),
        -EFAULT
    );
    assert_eq!(
        harness::hypercall32(
            &domain,
            VCPU_OP,
            [VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA, 0, ARG, 0, 0]
        ),
        0
    );
    // tsc_to_system_mul (at 24) is published there.
    assert_ne!(read_u32(&domain, area + 24), 0);

    let req = RegisterVcpuInfo {
        mfn: 0x7,
        offset: 64,
        rsvd: 0,
    };
    write_guest(&domain, ARG, req.as_bytes());
    assert_eq!(
        harness::hypercall32(&domain, VCPU_OP, [VCPUOP_REGISTER_VCPU_INFO, 0, ARG, 0, 0]),
        0
    );
    assert_eq!(domain.lock().vcpus[0].vcpu_info_gpa, Some(0x7000 + 64));
}
