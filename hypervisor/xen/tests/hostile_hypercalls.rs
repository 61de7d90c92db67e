//! Hostile-guest properties of the hypercall layer, without KVM.

use kxen_xen::harness::{self, RAM_BYTES};
use xen_abi::errno::*;
use xen_abi::hypercall::*;

fn call(d: &kxen_xen::Domain, nr: u64, args: [u64; 5]) -> i64 {
    harness::hypercall(d, nr, args)
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

mod gnttab_copy {
    use super::*;
    use kxen_xen::Domain;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
    use xen_abi::grant_table::*;
    use xen_abi::memory::{AddToPhysmap, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};
    use xen_abi::DOMID_SELF;
    use zerocopy::{FromBytes, IntoBytes};

    /// Grant frame 0 sits at this RAM GFN.
    const TABLE_GFN: u64 = 0x100;
    /// Where the ops array goes.
    const OPS: u64 = 0x20_0000;
    const SRC: u64 = 0x300;
    const DST: u64 = 0x301;
    const OWN: u16 = 1; // the harness domain

    fn setup() -> Domain {
        let (d, _) = harness::domain();
        let xatp = AddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 0,
            gpfn: TABLE_GFN,
        };
        d.mem
            .memory()
            .write_slice(xatp.as_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            call(&d, MEMORY_OP, [XENMEM_ADD_TO_PHYSMAP, 0x1000, 0, 0, 0]),
            0
        );
        let m = d.mem.memory();
        m.write_slice(&[0xaa; 4096], GuestAddress(SRC << 12))
            .unwrap();
        m.write_slice(&[0; 4096], GuestAddress(DST << 12)).unwrap();
        drop(m);
        d
    }

    fn grant(d: &Domain, gref: u64, flags: u16, domid: u16, frame: u64) {
        let e = GrantEntryV1 {
            flags,
            domid,
            frame: frame as u32,
        };
        d.mem
            .memory()
            .write_slice(e.as_bytes(), GuestAddress((TABLE_GFN << 12) + gref * 8))
            .unwrap();
    }

    fn flags(d: &Domain, gref: u64) -> u16 {
        d.mem
            .memory()
            .read_obj(GuestAddress((TABLE_GFN << 12) + gref * 8))
            .unwrap()
    }

    fn side(gref_or_gfn: u64, domid: u16, offset: u16) -> CopyPtr {
        CopyPtr {
            gref_or_gfn,
            domid,
            offset,
            _pad: 0,
        }
    }

    fn op(source: CopyPtr, dest: CopyPtr, len: u16, flags: u16) -> Copy {
        Copy {
            source,
            dest,
            len,
            flags,
            status: 99,
            _pad: 0,
        }
    }

    /// Run `ops`; return the call's result and each op's status.
    fn run(d: &Domain, ops: &[Copy]) -> (i64, Vec<i16>) {
        let m = d.mem.memory();
        for (i, o) in ops.iter().enumerate() {
            m.write_slice(o.as_bytes(), GuestAddress(OPS + 40 * i as u64))
                .unwrap();
        }
        drop(m);
        let rc = call(
            d,
            GRANT_TABLE_OP,
            [GNTTABOP_COPY, OPS, ops.len() as u64, 0, 0],
        );
        let m = d.mem.memory();
        let st = (0..ops.len())
            .map(|i| {
                let mut b = [0u8; 40];
                m.read_slice(&mut b, GuestAddress(OPS + 40 * i as u64))
                    .unwrap();
                Copy::read_from_bytes(&b).unwrap().status
            })
            .collect();
        (rc, st)
    }

    #[test]
    fn copies_between_grants_and_own_frames() {
        let d = setup();
        grant(&d, 10, GTF_PERMIT_ACCESS | GTF_READONLY, OWN, SRC);
        grant(&d, 11, GTF_PERMIT_ACCESS, OWN, DST);
        let ops = [
            // gref -> gref
            op(side(10, DOMID_SELF, 0), side(11, OWN, 100), 16, 3),
            // gfn -> gref, to the end of the page
            op(
                side(SRC, DOMID_SELF, 4000),
                side(11, DOMID_SELF, 4088),
                8,
                2,
            ),
            // gref -> gfn, zero length
            op(side(10, DOMID_SELF, 4096), side(DST, DOMID_SELF, 0), 0, 1),
        ];
        let (rc, st) = run(&d, &ops);
        assert_eq!(rc, 0);
        assert_eq!(st, vec![GNTST_OKAY; 3]);
        let mut page = [0u8; 4096];
        d.mem
            .memory()
            .read_slice(&mut page, GuestAddress(DST << 12))
            .unwrap();
        assert!(page[100..116].iter().all(|&b| b == 0xaa));
        assert!(page[4088..].iter().all(|&b| b == 0xaa));
        assert!(page[..100].iter().all(|&b| b == 0));
        assert_eq!(page[116], 0);
        // Busy bits are dropped after the copy.
        assert_eq!(flags(&d, 10), GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(flags(&d, 11), GTF_PERMIT_ACCESS);
    }

    #[test]
    fn hostile_ops_get_xen_status_codes() {
        let d = setup();
        grant(&d, 10, GTF_PERMIT_ACCESS | GTF_READONLY, OWN, SRC);
        grant(&d, 11, GTF_PERMIT_ACCESS, OWN, DST);
        grant(&d, 12, GTF_PERMIT_ACCESS, 0, DST); // granted to Dom0
        grant(&d, 13, GTF_INVALID, OWN, DST);
        grant(&d, 14, GTF_PERMIT_ACCESS, OWN, 0xfff_ffff); // no such frame
        grant(&d, 15, GTF_ACCEPT_TRANSFER, OWN, DST);
        let s = |g| side(g, DOMID_SELF, 0);
        let cases: Vec<(Copy, i16)> = vec![
            (op(s(10), s(11), 4097, 3), GNTST_BAD_COPY_ARG),
            (
                op(side(10, DOMID_SELF, 4095), s(11), 2, 3),
                GNTST_BAD_COPY_ARG,
            ),
            (
                op(s(10), side(11, DOMID_SELF, 0xffff), 1, 3),
                GNTST_BAD_COPY_ARG,
            ),
            (op(s(11), s(10), 8, 3), GNTST_PERMISSION_DENIED), // read-only dest
            (op(s(12), s(11), 8, 3), GNTST_PERMISSION_DENIED), // not for us
            (op(s(13), s(11), 8, 3), GNTST_PERMISSION_DENIED), // invalid
            (op(s(15), s(11), 8, 3), GNTST_PERMISSION_DENIED), // transfer
            (op(s(14), s(11), 8, 3), GNTST_BAD_PAGE),
            (op(s(600), s(11), 8, 3), GNTST_BAD_GNTREF), // frame 1 not placed
            (op(s(u64::MAX), s(11), 8, 3), GNTST_BAD_GNTREF),
            (op(side(10, 0, 0), s(11), 8, 3), GNTST_BAD_DOMAIN),
            (op(side(10, 7, 0), s(11), 8, 3), GNTST_BAD_DOMAIN),
            // Frames only with DOMID_SELF, even our own numeric id.
            (op(side(SRC, OWN, 0), s(11), 8, 2), GNTST_PERMISSION_DENIED),
            (op(side(SRC, 0, 0), s(11), 8, 2), GNTST_PERMISSION_DENIED),
            (op(s(u64::MAX), s(11), 8, 2), GNTST_BAD_PAGE),
            (op(s(RAM_BYTES >> 12), s(11), 8, 2), GNTST_BAD_PAGE),
        ];
        let ops: Vec<Copy> = cases.iter().map(|c| c.0).collect();
        let (rc, st) = run(&d, &ops);
        assert_eq!(rc, 0);
        for (i, ((_, want), got)) in cases.iter().zip(st).enumerate() {
            assert_eq!(got, *want, "op {i}");
        }
        // Nothing was written and no entry stays pinned.
        let mut page = [0u8; 4096];
        d.mem
            .memory()
            .read_slice(&mut page, GuestAddress(DST << 12))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0));
        for (gref, f) in [
            (10, GTF_PERMIT_ACCESS | GTF_READONLY),
            (11, GTF_PERMIT_ACCESS),
        ] {
            assert_eq!(flags(&d, gref), f, "gref {gref}");
        }
    }

    #[test]
    fn bad_counts_and_arrays() {
        let d = setup();
        // Negative counts are -EINVAL; zero does nothing.
        assert_eq!(
            call(
                &d,
                GRANT_TABLE_OP,
                [GNTTABOP_COPY, OPS, u32::MAX as u64, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(call(&d, GRANT_TABLE_OP, [GNTTABOP_COPY, OPS, 0, 0, 0]), 0);
        // An array running off guest memory faults at the first bad op.
        let last = RAM_BYTES - 40;
        assert_eq!(
            call(&d, GRANT_TABLE_OP, [GNTTABOP_COPY, last, 2, 0, 0]),
            -EFAULT
        );
        assert_eq!(
            call(&d, GRANT_TABLE_OP, [GNTTABOP_COPY, u64::MAX - 10, 1, 0, 0]),
            -EFAULT
        );
        // A huge count over a bad array does not loop for long.
        assert_eq!(
            call(
                &d,
                GRANT_TABLE_OP,
                [GNTTABOP_COPY, RAM_BYTES, i32::MAX as u64, 0, 0]
            ),
            -EFAULT
        );
    }
}
