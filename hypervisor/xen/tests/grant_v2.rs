//! Grant table v2 against Xen 4.17's grant_table.c: set_version and its
//! refusals, get_status_frames (not an HVM/PVH op), status frames placed with
//! XENMAPIDX_grant_table_status, and GNTTABOP_copy over v2 entries whose
//! busy bits live in the status frame.

use kxen_xen::harness::{self, DEFAULT_GRANT_GFN};
use xen_abi::errno::*;
use xen_abi::grant_table::*;
use xen_abi::hypercall::{GRANT_TABLE_OP, MEMORY_OP};
use xen_abi::memory::*;
use xen_abi::DOMID_SELF;
use zerocopy::{FromBytes, IntoBytes};

/// Where hypercall arguments go.
const ARG: u64 = 0x1000;
/// Where get_status_frames writes its frame list.
const LIST: u64 = 0x2000;
/// The grant frame the tests place, and the pages they grant.
const GRANT_GFN: u64 = 0x30;
const SRC_GFN: u64 = 0x40;
const DST_GFN: u64 = 0x41;
/// Status frame 0's default GFN: after the 64 grant frames' window.
const STATUS_GFN: u64 = DEFAULT_GRANT_GFN + 64;
/// The harness domain's id.
const DOMID: u16 = 1;

fn op<T: IntoBytes + FromBytes + zerocopy::Immutable>(
    d: &kxen_xen::Domain,
    cmd: u64,
    arg: &mut T,
) -> i64 {
    assert!(harness::write_guest(d, ARG, arg.as_bytes()));
    let rc = harness::hypercall(d, GRANT_TABLE_OP, [cmd, ARG, 1, 0, 0]);
    assert!(harness::read_guest(d, ARG, arg.as_mut_bytes()));
    rc
}

fn set_version(d: &kxen_xen::Domain, version: u32) -> (i64, u32) {
    let mut v = SetVersion { version };
    let rc = op(d, GNTTABOP_SET_VERSION, &mut v);
    (rc, v.version)
}

/// GNTTABOP_get_status_frames, which an HVM or PVH guest may not make.
fn get_status_frames(d: &kxen_xen::Domain) -> i64 {
    let mut req = GetStatusFrames {
        nr_frames: 1,
        dom: DOMID_SELF,
        status: 0x77,
        frame_list: LIST,
    };
    op(d, GNTTABOP_GET_STATUS_FRAMES, &mut req)
}

fn add_to_physmap(d: &kxen_xen::Domain, idx: u64, gpfn: u64) -> i64 {
    let xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx,
        gpfn,
    };
    assert!(harness::write_guest(d, ARG, xatp.as_bytes()));
    harness::hypercall(d, MEMORY_OP, [XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0])
}

fn write_v2(d: &kxen_xen::Domain, gref: u64, e: GrantEntryV2) {
    assert!(harness::write_guest(
        d,
        (GRANT_GFN << 12) + gref * 16,
        e.as_bytes()
    ));
}

fn status_word(d: &kxen_xen::Domain, gref: u64) -> u16 {
    let mut w = [0u8; 2];
    assert!(harness::read_guest(
        d,
        (STATUS_GFN << 12) + gref * 2,
        &mut w
    ));
    u16::from_le_bytes(w)
}

/// Copy `len` bytes from grant `src_gref` at `src_off` to frame DST_GFN.
fn copy_from_grant(d: &kxen_xen::Domain, src_gref: u64, src_off: u16, len: u16) -> i16 {
    let mut c = Copy {
        source: CopyPtr {
            gref_or_gfn: src_gref,
            domid: DOMID_SELF,
            offset: src_off,
            _pad: 0,
        },
        dest: CopyPtr {
            gref_or_gfn: DST_GFN,
            domid: DOMID_SELF,
            offset: src_off,
            _pad: 0,
        },
        len,
        flags: GNTCOPY_SOURCE_GREF,
        status: 0x77,
        _pad: 0,
    };
    assert_eq!(op(d, GNTTABOP_COPY, &mut c), 0);
    c.status
}

#[test]
fn set_version_accepts_1_and_2_only_and_reports_the_version_in_force() {
    let (d, _) = harness::domain();
    assert_eq!(set_version(&d, 3), (-EINVAL, 1));
    assert_eq!(set_version(&d, 0), (-EINVAL, 1));
    assert_eq!(set_version(&d, 1), (0, 1));
    assert_eq!(set_version(&d, 2), (0, 2));
    let mut v = GetVersion {
        dom: DOMID_SELF,
        ..Default::default()
    };
    assert_eq!(op(&d, GNTTABOP_GET_VERSION, &mut v), 0);
    assert_eq!(v.version, 2);
    assert_eq!(set_version(&d, 2), (0, 2));
    assert_eq!(set_version(&d, 1), (0, 1));
}

#[test]
fn status_frames_exist_in_v2_only_and_the_guest_places_them() {
    let (d, _) = harness::domain();
    // hvm_grant_table_op: not an op an HVM/PVH guest may make, v1 or v2.
    assert_eq!(get_status_frames(&d), -ENOSYS);
    // XENMAPIDX_grant_table_status names no frame in a v1 table.
    assert_eq!(
        add_to_physmap(&d, XENMAPIDX_GRANT_TABLE_STATUS, 0x50),
        -EINVAL
    );
    assert_eq!(harness::place_grant_frame(&d, GRANT_GFN), 0);
    assert_eq!(set_version(&d, 2), (0, 2));
    assert_eq!(get_status_frames(&d), -ENOSYS);
    // One grant frame of 256 entries: one status frame, which the guest
    // may place where it likes.
    assert_eq!(add_to_physmap(&d, XENMAPIDX_GRANT_TABLE_STATUS, 0x50), 0);
    // Beyond the 8 status frames of a 64-frame table.
    assert_eq!(
        add_to_physmap(&d, XENMAPIDX_GRANT_TABLE_STATUS | 8, 0x51),
        -EINVAL
    );
    // Back to v1: the status frames are gone, the bit names nothing again.
    assert_eq!(set_version(&d, 1), (0, 1));
    assert_eq!(
        add_to_physmap(&d, XENMAPIDX_GRANT_TABLE_STATUS, 0x52),
        -EINVAL
    );
}

#[test]
fn v2_grants_are_copied_with_busy_bits_in_the_status_frame() {
    let (d, _) = harness::domain();
    assert_eq!(harness::place_grant_frame(&d, GRANT_GFN), 0);
    assert_eq!(set_version(&d, 2), (0, 2));
    assert!(harness::write_guest(&d, SRC_GFN << 12, &[0xab; 4096]));
    let full = GrantEntryV2 {
        flags: GTF_PERMIT_ACCESS | GTF_READONLY,
        domid: DOMID,
        frame: SRC_GFN,
        ..Default::default()
    };
    write_v2(&d, 10, full);
    assert_eq!(copy_from_grant(&d, 10, 0, 4096), GNTST_OKAY);
    let mut out = [0u8; 4096];
    assert!(harness::read_guest(&d, DST_GFN << 12, &mut out));
    assert!(out.iter().all(|&b| b == 0xab));
    // The busy bit was set in the status word and cleared again; the
    // entry's own flags were never touched.
    assert_eq!(status_word(&d, 10), 0);
    let mut flags = [0u8; 2];
    assert!(harness::read_guest(&d, (GRANT_GFN << 12) + 160, &mut flags));
    assert_eq!(u16::from_le_bytes(flags), GTF_PERMIT_ACCESS | GTF_READONLY);

    // A sub-page grant: only its window may be copied.
    let sub = GrantEntryV2 {
        flags: GTF_PERMIT_ACCESS | GTF_SUB_PAGE,
        domid: DOMID,
        page_off: 256,
        length: 512,
        frame: SRC_GFN,
    };
    write_v2(&d, 11, sub);
    assert_eq!(copy_from_grant(&d, 11, 256, 512), GNTST_OKAY);
    assert_eq!(copy_from_grant(&d, 11, 255, 16), GNTST_GENERAL_ERROR);
    assert_eq!(copy_from_grant(&d, 11, 700, 100), GNTST_GENERAL_ERROR);
    assert_eq!(status_word(&d, 11), 0);

    // The same rigour as v1: wrong domain, no access, write to read-only,
    // a frame outside guest memory, transitive grants.
    write_v2(&d, 12, GrantEntryV2 { domid: 7, ..full });
    assert_eq!(copy_from_grant(&d, 12, 0, 8), GNTST_PERMISSION_DENIED);
    write_v2(&d, 13, GrantEntryV2 { flags: 0, ..full });
    assert_eq!(copy_from_grant(&d, 13, 0, 8), GNTST_PERMISSION_DENIED);
    write_v2(
        &d,
        14,
        GrantEntryV2 {
            frame: 1 << 40,
            ..full
        },
    );
    assert_eq!(copy_from_grant(&d, 14, 0, 8), GNTST_BAD_PAGE);
    write_v2(
        &d,
        15,
        GrantEntryV2 {
            flags: GTF_TRANSITIVE,
            ..full
        },
    );
    assert_eq!(copy_from_grant(&d, 15, 0, 8), GNTST_GENERAL_ERROR);
    let mut to_ro = Copy {
        source: CopyPtr {
            gref_or_gfn: SRC_GFN,
            domid: DOMID_SELF,
            ..Default::default()
        },
        dest: CopyPtr {
            gref_or_gfn: 10,
            domid: DOMID_SELF,
            ..Default::default()
        },
        len: 8,
        flags: GNTCOPY_DEST_GREF,
        ..Default::default()
    };
    assert_eq!(op(&d, GNTTABOP_COPY, &mut to_ro), 0);
    assert_eq!(to_ro.status, GNTST_PERMISSION_DENIED);
    // Beyond the table (256 entries per v2 frame).
    assert_eq!(copy_from_grant(&d, 256, 0, 8), GNTST_BAD_GNTREF);
}

#[test]
fn a_pinned_grant_blocks_the_switch_and_reserved_entries_survive_it() {
    let (d, _) = harness::domain();
    assert_eq!(harness::place_grant_frame(&d, GRANT_GFN), 0);
    // A v1 reserved entry (the console's) and an ordinary one.
    let reserved = GrantEntryV1 {
        flags: GTF_PERMIT_ACCESS,
        domid: 0,
        frame: 0x1234,
    };
    assert!(harness::write_guest(
        &d,
        (GRANT_GFN << 12) + 8,
        reserved.as_bytes()
    ));
    let pinned = GrantEntryV1 {
        flags: GTF_PERMIT_ACCESS | GTF_READING,
        domid: 0,
        frame: 0x99,
    };
    assert!(harness::write_guest(
        &d,
        (GRANT_GFN << 12) + 8 * 9,
        pinned.as_bytes()
    ));
    // grant_table.c gnttab_set_version: entries past the reserved ones in
    // use -> -EBUSY, version unchanged.
    assert_eq!(set_version(&d, 2), (-EBUSY, 1));
    assert!(harness::write_guest(&d, (GRANT_GFN << 12) + 8 * 9, &[0; 8]));
    assert_eq!(set_version(&d, 2), (0, 2));
    let mut e = [0u8; 16];
    assert!(harness::read_guest(&d, (GRANT_GFN << 12) + 16, &mut e));
    let v2 = GrantEntryV2::read_from_bytes(&e).unwrap();
    assert_eq!(
        (v2.flags, v2.domid, v2.frame),
        (GTF_PERMIT_ACCESS, 0, 0x1234)
    );
    // Now pin a v2 entry through its status word: the switch back fails.
    assert!(harness::write_guest(
        &d,
        (STATUS_GFN << 12) + 2 * 20,
        &GTF_WRITING.to_le_bytes()
    ));
    assert_eq!(set_version(&d, 1), (-EBUSY, 2));
    assert!(harness::write_guest(
        &d,
        (STATUS_GFN << 12) + 2 * 20,
        &[0; 2]
    ));
    // A reserved entry v1 cannot hold (frame above 32 bits) -> -ERANGE.
    write_v2(
        &d,
        2,
        GrantEntryV2 {
            flags: GTF_PERMIT_ACCESS,
            domid: 0,
            frame: 1 << 33,
            ..Default::default()
        },
    );
    assert_eq!(set_version(&d, 1), (-ERANGE, 2));
    write_v2(&d, 2, GrantEntryV2::default());
    assert_eq!(set_version(&d, 1), (0, 1));
    let mut e = [0u8; 8];
    assert!(harness::read_guest(&d, (GRANT_GFN << 12) + 8, &mut e));
    assert_eq!(e, *reserved.as_bytes());
}
