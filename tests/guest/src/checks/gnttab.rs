//! grant_table_op (v1; GNTTABOP_copy comes later).

use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, ESRCH};
use xen_abi::grant_table::*;
use xen_abi::hypercall::GRANT_TABLE_OP;
use xen_abi::memory::{AddToPhysmap, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};
use xen_abi::DOMID_SELF;

use super::version::BAD_PTR;
use super::{eq, neg, rc_is, R};
use crate::hypercall::{grant_table_op, hypercall3, memory_op};
use crate::{ensure, grants};

fn raw(cmd: u64, addr: u64, count: u32) -> i64 {
    // SAFETY: used with unmapped addresses (the hypervisor must fail without
    // writing) or with a count it must reject before touching memory.
    unsafe { hypercall3(GRANT_TABLE_OP, cmd, addr, count as u64) }
}

fn query(dom: u16) -> Result<QuerySize, super::Fail> {
    let mut q = QuerySize {
        dom,
        ..Default::default()
    };
    rc_is(
        "GNTTABOP_query_size",
        grant_table_op(GNTTABOP_QUERY_SIZE, &mut q, 1),
        0,
    )?;
    Ok(q)
}

/// Place grant frame `idx` at `gfn` (XENMEM_add_to_physmap).
fn place_frame(idx: u64, gfn: u64) -> R {
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx,
        gpfn: gfn,
    };
    rc_is(
        "add_to_physmap(XENMAPSPACE_grant_table)",
        memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp),
        0,
    )
}

pub fn query_size() -> R {
    let q = query(DOMID_SELF)?;
    eq("query_size.status", q.status, GNTST_OKAY)?;
    // grant_table.c: max_nr_frames is the domain's max_grant_frames, by
    // default opt_max_grant_frames (64), as kxen configures every domain.
    eq("query_size.max_nr_frames", q.max_nr_frames, 64)?;
    // nr_frames: grant_table_init grows a new table to
    // INITIAL_NR_GRANT_FRAMES (1 on x86), and placing frame i grows it to
    // i + 1 for good. What earlier checks placed decides the value here,
    // so only the floor is known (exact when this check runs alone).
    ensure!(
        q.nr_frames >= 1,
        "query_size.nr_frames: expected at least the initial frame, got {}",
        q.nr_frames
    );
    // Grow the table to a known size: frame 15, at the GFN the guest's
    // grant code would give it (its last frame; nothing else goes that
    // high), makes it 16 frames exactly...
    const LAST_IDX: u64 = 15;
    place_frame(LAST_IDX, grants::FRAME_GFN0 + LAST_IDX)?;
    eq(
        "query_size.nr_frames after placing frame 15",
        query(DOMID_SELF)?.nr_frames,
        16,
    )?;
    // ...and placing a lower frame again does not shrink it.
    place_frame(0, grants::FRAME_GFN0)?;
    eq(
        "query_size.nr_frames after placing frame 0 again",
        query(DOMID_SELF)?.nr_frames,
        16,
    )?;
    // grant_table.c gnttab_query_size: Dom0 exists, but XSM_TARGET keeps
    // a domU out of its table -> status GNTST_permission_denied; an
    // unknown domain -> GNTST_bad_domain. The call returns 0 either way.
    let q0 = query(0)?;
    eq(
        "query_size(dom 0).status",
        q0.status,
        GNTST_PERMISSION_DENIED,
    )?;
    let q5 = query(5)?;
    eq("query_size(dom 5).status", q5.status, GNTST_BAD_DOMAIN)
}

fn setup(nr_frames: u32, frame_list: u64) -> (i64, i16) {
    let mut s = SetupTable {
        dom: DOMID_SELF,
        _pad: 0,
        nr_frames,
        status: 0x5a5a,
        _pad2: [0; 6],
        frame_list,
    };
    let rc = grant_table_op(GNTTABOP_SETUP_TABLE, &mut s, 1);
    (rc, s.status)
}

pub fn setup_table() -> R {
    const SENTINEL: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    let max = query(DOMID_SELF)?.max_nr_frames;
    // grant_table.c gnttab_setup_table: for a translated guest frame_list
    // gets the GFN each frame is mapped at (gnttab_shared_gfn). Put frame
    // 0 where the guest's own grant code keeps it first, so the answer is
    // known whichever checks ran before.
    let frame0 = grants::FRAME_GFN0;
    place_frame(0, frame0)?;
    let mut frames = [SENTINEL; 1];
    let (rc, status) = setup(1, frames.as_mut_ptr() as u64);
    rc_is("GNTTABOP_setup_table(1 frame)", rc, 0)?;
    eq("setup_table(1).status", status, GNTST_OKAY)?;
    eq("setup_table(1).frame_list[0] (GFN)", frames[0], frame0)?;
    // grant_table.c gnttab_setup_table: nr_frames > max -> status
    // GNTST_general_error, call returns 0.
    let mut big = [SENTINEL; 2];
    let (rc, status) = setup(max + 1, big.as_mut_ptr() as u64);
    rc_is("GNTTABOP_setup_table(max + 1 frames)", rc, 0)?;
    eq("setup_table(max + 1).status", status, GNTST_GENERAL_ERROR)?;
    // grant_table.c: an unwritable frame_list -> status GNTST_bad_virt_addr.
    let (rc, status) = setup(1, BAD_PTR);
    rc_is("GNTTABOP_setup_table(unmapped frame_list)", rc, 0)?;
    eq(
        "setup_table(unmapped frame_list).status",
        status,
        GNTST_BAD_VIRT_ADDR,
    )
}

fn do_set_version(version: u32) -> (i64, u32) {
    let mut v = SetVersion { version };
    let rc = grant_table_op(GNTTABOP_SET_VERSION, &mut v, 1);
    (rc, v.version)
}

pub fn set_version() -> R {
    let (rc, v) = do_set_version(1);
    rc_is("GNTTABOP_set_version(1)", rc, 0)?;
    eq("set_version(1) reports version", v, 1)?;
    // Xen 4.17 offers v2 (gnttab_max_version defaults to 2); the switch
    // succeeds while no grant is in use. The gnttab.v2.* checks go further.
    let (rc, v) = do_set_version(2);
    rc_is("GNTTABOP_set_version(2)", rc, 0)?;
    eq("set_version(2) reports version", v, 2)?;
    // grant_table.c gnttab_set_version: version not 1 or 2 -> -EINVAL.
    let (rc, v) = do_set_version(3);
    rc_is("GNTTABOP_set_version(3)", rc, neg(EINVAL))?;
    eq("set_version(3) reports version", v, 2)?;
    let (rc, v) = do_set_version(1);
    rc_is("GNTTABOP_set_version(1) again", rc, 0)?;
    eq("version after switching back", v, 1)
}

fn do_get_version(dom: u16) -> (i64, u32) {
    let mut g = GetVersion {
        dom,
        _pad: 0,
        version: 0,
    };
    let rc = grant_table_op(GNTTABOP_GET_VERSION, &mut g, 1);
    (rc, g.version)
}

pub fn get_version() -> R {
    let (rc, v) = do_get_version(DOMID_SELF);
    rc_is("GNTTABOP_get_version", rc, 0)?;
    eq("get_version.version", v, 1)?;
    // grant_table.c gnttab_get_version: unknown domain -> -ESRCH.
    let (rc, _) = do_get_version(5);
    rc_is("GNTTABOP_get_version(dom 5)", rc, neg(ESRCH))
}

pub fn bad_args() -> R {
    let mut q = QuerySize {
        dom: DOMID_SELF,
        ..Default::default()
    };
    // grant_table.c gnttab_query_size: count != 1 -> -EINVAL.
    rc_is(
        "GNTTABOP_query_size, count 2",
        grant_table_op(GNTTABOP_QUERY_SIZE, &mut q, 2),
        neg(EINVAL),
    )?;
    // do_grant_table_op: (int)count < 0 -> -EINVAL.
    rc_is(
        "GNTTABOP_query_size, count 0xffffffff",
        raw(
            GNTTABOP_QUERY_SIZE,
            &mut q as *mut QuerySize as u64,
            u32::MAX,
        ),
        neg(EINVAL),
    )?;
    // copy_from_guest of the op fails -> -EFAULT.
    for (cmd, name) in [
        (GNTTABOP_QUERY_SIZE, "GNTTABOP_query_size"),
        (GNTTABOP_SETUP_TABLE, "GNTTABOP_setup_table"),
        (GNTTABOP_SET_VERSION, "GNTTABOP_set_version"),
        (GNTTABOP_GET_VERSION, "GNTTABOP_get_version"),
    ] {
        rc_is(name, raw(cmd, BAD_PTR, 1), neg(EFAULT))?;
    }
    Ok(())
}

pub fn unknown_cmd() -> R {
    let mut buf = [0u64; 8];
    // hvm/hypercall.c hvm_grant_table_op: anything outside the HVM list
    // (dump_table, transfer, ...) -> -ENOSYS; do_grant_table_op default too.
    rc_is(
        "GNTTABOP_dump_table",
        grant_table_op(GNTTABOP_DUMP_TABLE, &mut buf, 1),
        neg(ENOSYS),
    )?;
    rc_is(
        "grant_table_op(99)",
        grant_table_op(99, &mut buf, 1),
        neg(ENOSYS),
    )
}
