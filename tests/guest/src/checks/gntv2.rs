//! Grant table v2 (Xen 4.17's grant_table.c): the version switch, status
//! frames the guest places itself (an HVM/PVH guest may not ask for them
//! with GNTTABOP_get_status_frames), the reserved entries that survive a
//! switch, and GNTTABOP_copy over v2 entries.
//!
//! Every check leaves the table at v1, as the frontends in `grants` expect.

use core::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use xen_abi::errno::{EINVAL, ENOSYS};
use xen_abi::grant_table::*;
use xen_abi::memory::{
    AddToPhysmap, XENMAPIDX_GRANT_TABLE_STATUS, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP,
};
use xen_abi::DOMID_SELF;

use super::{eq, neg, rc_is, Fail, R};
use crate::hypercall::{grant_table_op, memory_op};
use crate::{bail, ensure, env, grants, pages};

/// Where status frame 0 goes (outside RAM, clear of the GFNs the other
/// checks and the frontends use).
const STATUS_GFN: u64 = 0xf3000;
/// The references the copy check grants (in frame 0, past the reserved ones).
const SRC_REF: u64 = 100;
const DST_REF: u64 = 101;
const SUB_REF: u64 = 102;
const TRANS_REF: u64 = 103;
/// The reserved entry the switch check writes while it is free.
const RESERVED_REF: u64 = 7;

fn set_version(version: u32) -> (i64, u32) {
    let mut v = SetVersion { version };
    let rc = grant_table_op(GNTTABOP_SET_VERSION, &mut v, 1);
    (rc, v.version)
}

fn get_version() -> Result<u32, Fail> {
    let mut g = GetVersion {
        dom: DOMID_SELF,
        _pad: 0,
        version: 0,
    };
    rc_is(
        "GNTTABOP_get_version",
        grant_table_op(GNTTABOP_GET_VERSION, &mut g, 1),
        0,
    )?;
    Ok(g.version)
}

fn switch_to(version: u32) -> R {
    let (rc, v) = set_version(version);
    rc_is("GNTTABOP_set_version", rc, 0)?;
    eq("set_version reports the version", v, version)
}

fn place(idx: u64, gfn: u64) -> i64 {
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx,
        gpfn: gfn,
    };
    memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp)
}

/// Grant frame 0 where the frontends keep it, so the entries are at a
/// known address whichever checks ran before.
fn place_frame0() -> R {
    rc_is(
        "add_to_physmap(grant frame 0)",
        place(0, grants::FRAME_GFN0),
        0,
    )
}

/// The two 8-byte words of v2 entry `gref` in frame 0: the header
/// (`flags | domid << 16`, then `page_off`/`length`) and the frame.
fn v2_words(gref: u64) -> (&'static AtomicU64, &'static AtomicU64) {
    let base = (grants::FRAME_GFN0 << 12) + gref * GRANT_ENTRY_V2_SIZE as u64;
    // SAFETY: grant frame 0 is mapped at FRAME_GFN0 (identity-mapped) by
    // `place_frame0`; a v2 entry is 16 aligned bytes in it, shared with the
    // hypervisor, hence accessed atomically.
    unsafe {
        (
            AtomicU64::from_ptr(base as *mut u64),
            AtomicU64::from_ptr((base + 8) as *mut u64),
        )
    }
}

fn write_v2(gref: u64, flags: u16, domid: u16, page_off: u16, length: u16, frame: u64) {
    let (head, frame_word) = v2_words(gref);
    // The frame first, then the flags that make the entry valid.
    frame_word.store(frame, Ordering::SeqCst);
    let head_value =
        flags as u64 | (domid as u64) << 16 | (page_off as u64) << 32 | (length as u64) << 48;
    head.store(head_value, Ordering::SeqCst);
}

fn v2_flags(gref: u64) -> u16 {
    v2_words(gref).0.load(Ordering::SeqCst) as u16
}

/// Status word `gref` of status frame 0, placed at STATUS_GFN.
fn status(gref: u64) -> u16 {
    let addr = (STATUS_GFN << 12) + gref * 2;
    // SAFETY: status frame 0 is mapped at STATUS_GFN (identity-mapped) by
    // the check before it reads; the word is shared with the hypervisor.
    unsafe { AtomicU16::from_ptr(addr as *mut u16) }.load(Ordering::SeqCst)
}

/// The v1 entry `gref` of frame 0 as one word.
fn v1_word(gref: u64) -> &'static AtomicU64 {
    let addr = (grants::FRAME_GFN0 << 12) + gref * GRANT_ENTRY_V1_SIZE as u64;
    // SAFETY: as in `v2_words`, for an 8-byte v1 entry.
    unsafe { AtomicU64::from_ptr(addr as *mut u64) }
}

pub fn version() -> R {
    place_frame0()?;
    switch_to(2)?;
    eq("get_version after set_version(2)", get_version()?, 2)?;
    // gnttab_set_version: the same version again changes nothing.
    switch_to(2)?;
    // Not 1 or 2 -> -EINVAL, and the version in force is reported.
    let (rc, v) = set_version(3);
    rc_is("GNTTABOP_set_version(3) on a v2 table", rc, neg(EINVAL))?;
    eq("set_version(3) reports version", v, 2)?;
    // hvm_grant_table_op: get_status_frames is not an HVM/PVH op, v2 or not.
    let mut gsf = GetStatusFrames {
        nr_frames: 1,
        dom: DOMID_SELF,
        status: 0x5a5a,
        frame_list: 0,
    };
    rc_is(
        "GNTTABOP_get_status_frames",
        grant_table_op(GNTTABOP_GET_STATUS_FRAMES, &mut gsf, 1),
        neg(ENOSYS),
    )?;
    // The guest places its status frames itself: one covers a table of up
    // to 8 grant frames, so 8 cover the 64 a table may have.
    rc_is(
        "add_to_physmap(status frame 0)",
        place(XENMAPIDX_GRANT_TABLE_STATUS, STATUS_GFN),
        0,
    )?;
    rc_is(
        "add_to_physmap(status frame 8)",
        place(XENMAPIDX_GRANT_TABLE_STATUS | 8, STATUS_GFN + 1),
        neg(EINVAL),
    )?;
    switch_to(1)?;
    eq("get_version after set_version(1)", get_version()?, 1)?;
    // gnttab_map_frame: in v1 the status bit is part of the index, far
    // beyond any grant frame.
    rc_is(
        "add_to_physmap(status frame 0) on a v1 table",
        place(XENMAPIDX_GRANT_TABLE_STATUS, STATUS_GFN),
        neg(EINVAL),
    )
}

pub fn reserved_entries() -> R {
    place_frame0()?;
    let v1 = v1_word(RESERVED_REF);
    if v1.load(Ordering::SeqCst) != 0 {
        bail!("reserved entry {} is in use", RESERVED_REF);
    }
    // A toolstack-style grant to Dom0 of a frame that fits 32 bits.
    let entry = GTF_PERMIT_ACCESS as u64 | 0x1234_5678 << 32;
    v1.store(entry, Ordering::SeqCst);
    // A non-reserved entry, which the switch clears.
    v1_word(SRC_REF).store(entry, Ordering::SeqCst);
    switch_to(2)?;
    let (head, frame) = v2_words(RESERVED_REF);
    eq(
        "reserved entry after v1 -> v2: flags and domid",
        head.load(Ordering::SeqCst) as u32,
        GTF_PERMIT_ACCESS as u32,
    )?;
    eq(
        "reserved entry after v1 -> v2: full_page.frame",
        frame.load(Ordering::SeqCst),
        0x1234_5678,
    )?;
    // v1 entry SRC_REF's bytes are the first half of v2 entry SRC_REF / 2.
    let cleared = v2_words(SRC_REF / 2);
    eq(
        "non-reserved bytes after the switch",
        (
            cleared.0.load(Ordering::SeqCst),
            cleared.1.load(Ordering::SeqCst),
        ),
        (0, 0),
    )?;
    switch_to(1)?;
    eq(
        "reserved entry after v2 -> v1",
        v1.load(Ordering::SeqCst),
        entry,
    )?;
    v1.store(0, Ordering::SeqCst);
    Ok(())
}

fn copy_op(source: u64, dest: u64, offset: u16, len: u16, flags: u16) -> Copy {
    let side = |gref_or_gfn| CopyPtr {
        gref_or_gfn,
        domid: DOMID_SELF,
        offset,
        _pad: 0,
    };
    Copy {
        source: side(source),
        dest: side(dest),
        len,
        flags,
        status: 0x5a5a,
        _pad: 0,
    }
}

fn copy_status(mut c: Copy) -> Result<i16, Fail> {
    rc_is("GNTTABOP_copy", grant_table_op(GNTTABOP_COPY, &mut c, 1), 0)?;
    Ok(c.status)
}

fn byte(p: *mut u8, i: usize) -> u8 {
    // SAFETY: `p` is one of our pages and i < 4096.
    unsafe { p.add(i).read_volatile() }
}

pub fn copy() -> R {
    let Some(me) = env::domid() else {
        bail!("CPUID gives no domid");
    };
    let (Some(src), Some(dst)) = (pages::alloc(), pages::alloc()) else {
        bail!("no free pages");
    };
    for i in 0..4096 {
        // SAFETY: `src` and `dst` are whole pages we own (identity-mapped).
        unsafe {
            src.add(i).write_volatile((i % 251) as u8);
            dst.add(i).write_volatile(0);
        }
    }
    let (src_gfn, dst_gfn) = (src as u64 >> 12, dst as u64 >> 12);
    place_frame0()?;
    switch_to(2)?;
    rc_is(
        "add_to_physmap(status frame 0)",
        place(XENMAPIDX_GRANT_TABLE_STATUS, STATUS_GFN),
        0,
    )?;
    let result = copy_checks(me, src, dst, src_gfn, dst_gfn);
    for gref in [SRC_REF, DST_REF, SUB_REF, TRANS_REF] {
        write_v2(gref, 0, 0, 0, 0, 0);
    }
    let back = switch_to(1);
    result.and(back)
}

fn copy_checks(me: u16, src: *mut u8, dst: *mut u8, src_gfn: u64, dst_gfn: u64) -> R {
    write_v2(SRC_REF, GTF_PERMIT_ACCESS | GTF_READONLY, me, 0, 0, src_gfn);
    write_v2(DST_REF, GTF_PERMIT_ACCESS, me, 0, 0, dst_gfn);
    // full_page grant -> full_page grant.
    let st = copy_status(copy_op(
        SRC_REF,
        DST_REF,
        64,
        128,
        GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF,
    ))?;
    eq("v2 gref -> gref status", st, GNTST_OKAY)?;
    for i in 64..192 {
        eq("copied byte", byte(dst, i), byte(src, i))?;
    }
    eq("byte after the copy", byte(dst, 192), 0)?;
    // The busy bits lived in the status words and are gone; the entries'
    // own flags were never touched.
    eq("status word of the source", status(SRC_REF), 0)?;
    eq("status word of the destination", status(DST_REF), 0)?;
    eq(
        "source flags",
        v2_flags(SRC_REF),
        GTF_PERMIT_ACCESS | GTF_READONLY,
    )?;
    eq("destination flags", v2_flags(DST_REF), GTF_PERMIT_ACCESS)?;

    // A sub_page grant of bytes 1024..1536: copies inside the window only
    // (gnttab_copy_buf: GNTST_general_error outside).
    write_v2(
        SUB_REF,
        GTF_PERMIT_ACCESS | GTF_READONLY | GTF_SUB_PAGE,
        me,
        1024,
        512,
        src_gfn,
    );
    let st = copy_status(copy_op(SUB_REF, dst_gfn, 1024, 512, GNTCOPY_SOURCE_GREF))?;
    eq("sub_page copy inside the window", st, GNTST_OKAY)?;
    eq("sub_page copied byte", byte(dst, 1535), byte(src, 1535))?;
    for (offset, len) in [(1020u16, 8u16), (1500, 64)] {
        let st = copy_status(copy_op(SUB_REF, dst_gfn, offset, len, GNTCOPY_SOURCE_GREF))?;
        eq("sub_page copy leaving the window", st, GNTST_GENERAL_ERROR)?;
    }
    eq("status word of the sub_page grant", status(SUB_REF), 0)?;

    // The same refusals as a v1 entry: writing through a read-only grant,
    // a grant for another domain, an entry that grants nothing, a frame
    // outside guest memory.
    let st = copy_status(copy_op(src_gfn, SRC_REF, 0, 8, GNTCOPY_DEST_GREF))?;
    eq(
        "copy into a read-only v2 grant",
        st,
        GNTST_PERMISSION_DENIED,
    )?;
    write_v2(DST_REF, GTF_PERMIT_ACCESS, me ^ 1, 0, 0, dst_gfn);
    let st = copy_status(copy_op(src_gfn, DST_REF, 0, 8, GNTCOPY_DEST_GREF))?;
    eq(
        "copy via another domain's grant",
        st,
        GNTST_PERMISSION_DENIED,
    )?;
    write_v2(DST_REF, 0, me, 0, 0, dst_gfn);
    let st = copy_status(copy_op(src_gfn, DST_REF, 0, 8, GNTCOPY_DEST_GREF))?;
    eq("copy via an invalid entry", st, GNTST_PERMISSION_DENIED)?;
    write_v2(DST_REF, GTF_PERMIT_ACCESS, me, 0, 0, 1 << 40);
    let st = copy_status(copy_op(src_gfn, DST_REF, 0, 8, GNTCOPY_DEST_GREF))?;
    eq("copy to a frame beyond memory", st, GNTST_BAD_PAGE)?;
    // A transitive grant back to ourselves: Xen refuses self-reference.
    write_v2(TRANS_REF, GTF_TRANSITIVE, me, me, 0, SRC_REF);
    let st = copy_status(copy_op(TRANS_REF, dst_gfn, 0, 8, GNTCOPY_SOURCE_GREF))?;
    eq("copy via a transitive grant", st, GNTST_GENERAL_ERROR)?;
    ensure!(
        status(SRC_REF) == 0 && status(DST_REF) == 0,
        "a refused copy left a busy bit"
    );
    Ok(())
}
