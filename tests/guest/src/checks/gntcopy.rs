//! GNTTABOP_copy between our own grants and frames.

use xen_abi::errno::{EFAULT, EINVAL};
use xen_abi::grant_table::*;
use xen_abi::hypercall::GRANT_TABLE_OP;
use xen_abi::DOMID_SELF;

use super::version::BAD_PTR;
use super::{eq, neg, rc_is, Fail, R};
use crate::hypercall::{grant_table_op, hypercall3};
use crate::{bail, ensure, env, grants, pages};

/// A page we own: its pointer and its gfn.
type Page = (*mut u8, u64);

/// Two fresh pages; the source is filled with `i % 251`.
fn two_pages() -> Result<(Page, Page), Fail> {
    let (Some(a), Some(b)) = (pages::alloc(), pages::alloc()) else {
        bail!("no free pages");
    };
    for i in 0..4096 {
        // SAFETY: `a` and `b` are whole pages we own (identity-mapped).
        unsafe {
            a.add(i).write_volatile((i % 251) as u8);
            b.add(i).write_volatile(0);
        }
    }
    Ok(((a, a as u64 >> 12), (b, b as u64 >> 12)))
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
        status: 0x5a5a,
        _pad: 0,
    }
}

fn byte(p: *mut u8, i: usize) -> u8 {
    // SAFETY: `p` is one of our pages and i < 4096.
    unsafe { p.add(i).read_volatile() }
}

fn own_domid() -> Result<u16, Fail> {
    match env::domid() {
        Some(d) => Ok(d),
        None => bail!("CPUID gives no domid"),
    }
}

pub fn copy() -> R {
    let me = own_domid()?;
    let ((src, src_gfn), (dst, dst_gfn)) = two_pages()?;
    let (Ok(sref), Ok(dref)) = (
        grants::grant(me, src_gfn, true),
        grants::grant(me, dst_gfn, false),
    ) else {
        bail!("cannot grant our own pages");
    };
    let mut ops = [
        // gref -> gref
        op(
            side(sref as u64, DOMID_SELF, 10),
            side(dref as u64, me, 100),
            32,
            3,
        ),
        // frame -> gref, up to the end of the page
        op(
            side(src_gfn, DOMID_SELF, 0),
            side(dref as u64, DOMID_SELF, 4090),
            6,
            2,
        ),
        // gref -> frame
        op(
            side(sref as u64, me, 200),
            side(dst_gfn, DOMID_SELF, 0),
            16,
            1,
        ),
    ];
    let n = ops.len() as u32;
    rc_is(
        "GNTTABOP_copy",
        grant_table_op(GNTTABOP_COPY, &mut ops, n),
        0,
    )?;
    for (i, o) in ops.iter().enumerate() {
        ensure!(o.status == GNTST_OKAY, "op {}: status {}", i, { o.status });
    }
    for i in 0..32 {
        eq(
            "copied byte (gref->gref)",
            byte(dst, 100 + i),
            byte(src, 10 + i),
        )?;
    }
    for i in 0..6 {
        eq(
            "copied byte (frame->gref)",
            byte(dst, 4090 + i),
            byte(src, i),
        )?;
    }
    for i in 0..16 {
        eq(
            "copied byte (gref->frame)",
            byte(dst, i),
            byte(src, 200 + i),
        )?;
    }
    eq("byte after the copy", byte(dst, 132), 0)?;
    // The busy bits are gone: the grants end cleanly.
    ensure!(grants::end(sref).is_ok(), "source grant still busy");
    ensure!(grants::end(dref).is_ok(), "destination grant still busy");
    Ok(())
}

pub fn copy_hostile() -> R {
    let me = own_domid()?;
    let ((_src, src_gfn), (dst, dst_gfn)) = two_pages()?;
    let (Ok(ro), Ok(rw), Ok(dom0)) = (
        grants::grant(me, src_gfn, true),
        grants::grant(me, dst_gfn, false),
        grants::grant(0, dst_gfn, false),
    ) else {
        bail!("cannot grant our own pages");
    };
    let (ro, rw, dom0) = (ro as u64, rw as u64, dom0 as u64);
    let s = |g| side(g, DOMID_SELF, 0);
    let cases = [
        (op(s(ro), s(rw), 4097, 3), GNTST_BAD_COPY_ARG),
        (
            op(side(ro, DOMID_SELF, 4000), s(rw), 97, 3),
            GNTST_BAD_COPY_ARG,
        ),
        (
            op(s(ro), s(rw), 8, 3).with_dest_offset(4092),
            GNTST_BAD_COPY_ARG,
        ),
        (op(s(rw), s(ro), 8, 3), GNTST_PERMISSION_DENIED),
        (op(s(dom0), s(rw), 8, 3), GNTST_PERMISSION_DENIED),
        (op(s(1 << 20), s(rw), 8, 3), GNTST_BAD_GNTREF),
        (op(side(ro, 0, 0), s(rw), 8, 3), GNTST_BAD_DOMAIN),
        (
            op(side(src_gfn, me, 0), s(rw), 8, 2),
            GNTST_PERMISSION_DENIED,
        ),
        (op(s(1 << 40), s(rw), 8, 2), GNTST_BAD_PAGE),
    ];
    let mut ops = [op(s(0), s(0), 0, 0); 9];
    for (o, c) in ops.iter_mut().zip(cases.iter()) {
        *o = c.0;
    }
    let n = ops.len() as u32;
    rc_is(
        "GNTTABOP_copy (hostile ops)",
        grant_table_op(GNTTABOP_COPY, &mut ops, n),
        0,
    )?;
    for (i, (o, c)) in ops.iter().zip(cases.iter()).enumerate() {
        ensure!(
            o.status == c.1,
            "op {}: expected status {}, got {}",
            i,
            c.1,
            { o.status }
        );
    }
    for i in 0..4096 {
        if byte(dst, i) != 0 {
            bail!("refused copies wrote byte {}", i);
        }
    }
    // do_grant_table_op: (int)count < 0 -> -EINVAL; unreadable ops -EFAULT.
    rc_is(
        "GNTTABOP_copy count -1",
        grant_table_op(GNTTABOP_COPY, &mut ops, u32::MAX),
        neg(EINVAL),
    )?;
    // SAFETY: BAD_PTR is unmapped; the hypervisor must fail without writing.
    let rc = unsafe { hypercall3(GRANT_TABLE_OP, GNTTABOP_COPY, BAD_PTR, 1) };
    rc_is("GNTTABOP_copy on an unmapped array", rc, neg(EFAULT))?;
    for g in [ro, rw, dom0] {
        ensure!(grants::end(g as u32).is_ok(), "grant {} left busy", g);
    }
    Ok(())
}

trait WithDest {
    fn with_dest_offset(self, offset: u16) -> Self;
}

impl WithDest for Copy {
    fn with_dest_offset(mut self, offset: u16) -> Self {
        self.dest.offset = offset;
        self
    }
}
