//! memory_op: add_to_physmap (shared_info, grant table), the batch form,
//! memory maps and reservations.

use core::sync::atomic::{AtomicU32, Ordering};

use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, ESRCH};
use xen_abi::grant_table::{QuerySize, GNTTABOP_QUERY_SIZE};
use xen_abi::hypercall::{MEMORY_OP, XEN_VERSION};
use xen_abi::memory::*;
use xen_abi::shared_info::OFFSET_WC_VERSION;
use xen_abi::version::{EXTRAVERSION_LEN, XENVER_EXTRAVERSION};
use xen_abi::DOMID_SELF;

use super::version::BAD_PTR;
use super::{eq, neg, rc_is, Fail, Rc, R};
use crate::boot::Page;
use crate::hypercall::{grant_table_op, hypercall2, memory_op, op_raw};
use crate::setup::SHARED_INFO_RC;
use crate::{bail, ensure, env, events, pages, time, xen};

/// GFNs outside RAM where grant frames get mapped (GPA 0xf000_0000...).
pub const GNT_GFN0: u64 = 0xf0000;

/// A page to be ballooned out and back in.
static BALLOON_PAGE: Page = Page::new();
/// A page that must never be replaced (target of mappings that must fail).
static SCRATCH_PAGE: Page = Page::new();

fn add_to_physmap(space: u32, idx: u64, gpfn: u64) -> i64 {
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space,
        idx,
        gpfn,
    };
    memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp)
}

pub fn max_grant_frames() -> Result<u32, Fail> {
    let mut q = QuerySize {
        dom: DOMID_SELF,
        ..Default::default()
    };
    rc_is(
        "grant_table_op(GNTTABOP_query_size)",
        grant_table_op(GNTTABOP_QUERY_SIZE, &mut q, 1),
        0,
    )?;
    eq("query_size.status", q.status, 0)?;
    Ok(q.max_nr_frames)
}

/// Write and read back a word in guest frame `gfn`, then restore it.
fn poke_frame(gfn: u64) -> R {
    let p = ((gfn << 12) + 0xff8) as *mut u64;
    // SAFETY: the frame was just mapped by add_to_physmap inside our 4 GiB
    // identity map; the last 8 bytes of a grant frame (the last v1 entry)
    // are unused by anyone, and the old value is put back.
    unsafe {
        let old = p.read_volatile();
        p.write_volatile(0x1122_3344_5566_7788);
        let back = p.read_volatile();
        p.write_volatile(old);
        ensure!(
            back == 0x1122_3344_5566_7788,
            "frame {:#x}: wrote 0x1122334455667788, read back {:#x}",
            gfn,
            back
        );
    }
    Ok(())
}

pub fn shared_info() -> R {
    rc_is(
        "setup: add_to_physmap(XENMAPSPACE_shared_info, idx 0)",
        SHARED_INFO_RC.load(Ordering::Acquire),
        0,
    )?;
    let Some(si) = events::shared_info() else {
        bail!("shared_info not mapped");
    };
    // SAFETY: offset 0xc00 of the mapped shared_info page is wc_version.
    let wc = unsafe { AtomicU32::from_ptr(si.add(OFFSET_WC_VERSION) as *mut u32) };
    let wc_version = wc.load(Ordering::Acquire);
    ensure!(
        wc_version % 2 == 0,
        "wc_version: expected even, got {}",
        wc_version
    );
    let Some(c1) = time::clock() else {
        bail!("vcpu_info[0].time: never stable, or tsc_to_system_mul is 0");
    };
    ensure!(
        c1.version != 0 && c1.version % 2 == 0,
        "vcpu_info[0].time.version: expected even and non-zero, got {}",
        c1.version
    );
    let t1 = time::now_ns().unwrap_or(0);
    for _ in 0..20 {
        xen::sched_yield();
    }
    let t2 = time::now_ns().unwrap_or(0);
    ensure!(
        t2 > t1 && t2 - t1 < 10_000_000_000,
        "system time (pvclock) did not advance sensibly over 20 yields: {} -> {}",
        t1,
        t2
    );
    Ok(())
}

pub fn shared_info_bad_idx() -> R {
    // arch/x86/mm.c xenmem_add_to_physmap_one: shared_info has only idx 0,
    // anything else leaves the MFN invalid -> -EINVAL.
    rc_is(
        "add_to_physmap(XENMAPSPACE_shared_info, idx 1)",
        add_to_physmap(XENMAPSPACE_SHARED_INFO, 1, SCRATCH_PAGE.pfn()),
        neg(EINVAL),
    )
}

pub fn grant_table() -> R {
    rc_is(
        "add_to_physmap(XENMAPSPACE_grant_table, idx 0, gfn 0xf0000)",
        add_to_physmap(XENMAPSPACE_GRANT_TABLE, 0, GNT_GFN0),
        0,
    )?;
    poke_frame(GNT_GFN0)
}

pub fn grant_table_bad_idx() -> R {
    let max = max_grant_frames()?;
    // grant_table.c gnttab_get_shared_frame_mfn: idx >= max_grant_frames
    // cannot grow the table -> -EINVAL.
    rc_is(
        "add_to_physmap(XENMAPSPACE_grant_table, idx max_nr_frames)",
        add_to_physmap(XENMAPSPACE_GRANT_TABLE, max as u64, GNT_GFN0 + 0x10),
        neg(EINVAL),
    )
}

pub fn add_to_physmap_bad_pointer() -> R {
    // memory.c: copy_from_guest of the argument fails -> -EFAULT.
    rc_is(
        "memory_op(XENMEM_add_to_physmap, unmapped)",
        op_raw(MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, BAD_PTR),
        neg(EFAULT),
    )
}

pub fn add_to_physmap_batch() -> R {
    let max = max_grant_frames()?;
    let mut idxs = [1u64, 2, max as u64];
    let mut gpfns = [GNT_GFN0 + 1, GNT_GFN0 + 2, GNT_GFN0 + 0x11];
    let mut errs = [0x7777i32; 3];
    let mut b = AddToPhysmapBatch {
        domid: DOMID_SELF,
        space: XENMAPSPACE_GRANT_TABLE as u16,
        size: 3,
        foreign_domid: 0,
        idxs: idxs.as_mut_ptr() as u64,
        gpfns: gpfns.as_mut_ptr() as u64,
        errs: errs.as_mut_ptr() as u64,
    };
    // memory.c: per-entry results go to errs; the call itself returns 0.
    rc_is(
        "memory_op(XENMEM_add_to_physmap_batch, grant idx 1, 2, max)",
        memory_op(XENMEM_ADD_TO_PHYSMAP_BATCH, &mut b),
        0,
    )?;
    // Entry 2: idx == max_nr_frames -> -EINVAL, as for add_to_physmap.
    eq("errs", errs, [0, 0, -(EINVAL as i32)])?;
    poke_frame(GNT_GFN0 + 1)?;
    poke_frame(GNT_GFN0 + 2)
}

pub fn memory_map() -> R {
    let mut map = [E820Entry::default(); 32];
    let mut mm = MemoryMap {
        nr_entries: map.len() as u32,
        _pad: 0,
        buffer: map.as_mut_ptr() as u64,
    };
    rc_is(
        "memory_op(XENMEM_memory_map, 32 entries)",
        memory_op(XENMEM_MEMORY_MAP, &mut mm),
        0,
    )?;
    let n = mm.nr_entries as usize;
    ensure!(
        (1..=map.len()).contains(&n),
        "memory_map.nr_entries: expected 1..=32, got {}",
        n
    );
    let got = &map[..n];
    let has = |addr: u64, size: u64| {
        got.iter().any(|e| {
            let (a, s, k) = (e.addr, e.size, e.kind);
            a == addr && s == size && k == E820_RAM
        })
    };
    let mut ram = 0;
    for e in env::memmap().filter(|e| e.kind == E820_RAM) {
        ram += 1;
        ensure!(
            has(e.addr, e.size),
            "start_info RAM [{:#x}, +{:#x}) missing from XENMEM_memory_map",
            e.addr,
            e.size
        );
    }
    ensure!(ram > 0, "start_info has no RAM entries");
    for e in got {
        let (a, s, k) = (e.addr, e.size, e.kind);
        if k == E820_RAM {
            ensure!(
                env::memmap().any(|m| m.kind == E820_RAM && m.addr == a && m.size == s),
                "XENMEM_memory_map RAM [{:#x}, +{:#x}) is not in start_info's memmap",
                a,
                s
            );
        }
    }

    // Truncation: room for one entry -> exactly one written.
    let sentinel = E820Entry {
        addr: 0x5a5a,
        size: 0x5a5a,
        kind: 0x5a5a,
    };
    let mut small = [sentinel; 2];
    let mut mm1 = MemoryMap {
        nr_entries: 1,
        _pad: 0,
        buffer: small.as_mut_ptr() as u64,
    };
    rc_is(
        "memory_op(XENMEM_memory_map, 1 entry)",
        memory_op(XENMEM_MEMORY_MAP, &mut mm1),
        0,
    )?;
    eq("nr_entries after a 1-entry request", mm1.nr_entries, 1)?;
    let (a0, s0, k0) = (small[0].addr, small[0].size, small[0].kind);
    let (a1, s1, k1) = (small[1].addr, small[1].size, small[1].kind);
    let (fa, fs, fk) = (map[0].addr, map[0].size, map[0].kind);
    eq("truncated entry 0", (a0, s0, k0), (fa, fs, fk))?;
    eq(
        "entry past the limit",
        (a1, s1, k1),
        (0x5a5a, 0x5a5a, 0x5a5a),
    )
}

pub fn machine_memory_map() -> R {
    let mut map = [E820Entry::default(); 4];
    let mut mm = MemoryMap {
        nr_entries: map.len() as u32,
        _pad: 0,
        buffer: map.as_mut_ptr() as u64,
    };
    // hvm/hypercall.c hvm_memory_op: XENMEM_machine_memory_map -> -ENOSYS.
    rc_is(
        "memory_op(XENMEM_machine_memory_map)",
        memory_op(XENMEM_MACHINE_MEMORY_MAP, &mut mm),
        neg(ENOSYS),
    )
}

pub fn maximum_ram_page() -> R {
    // SAFETY: XENMEM_maximum_ram_page takes no argument.
    let rc = unsafe { hypercall2(MEMORY_OP, XENMEM_MAXIMUM_RAM_PAGE, 0) };
    let ram = env::ram_pages() as i64;
    ensure!(
        rc >= ram && ram > 0,
        "memory_op(XENMEM_maximum_ram_page): expected >= {} (RAM pages), got {}",
        ram,
        Rc(rc)
    );
    Ok(())
}

fn reservation_of(cmd: u64, domid: u16) -> i64 {
    let mut d = domid;
    memory_op(cmd, &mut d)
}

fn current_reservation() -> Result<i64, Fail> {
    let rc = reservation_of(XENMEM_CURRENT_RESERVATION, DOMID_SELF);
    ensure!(
        rc > 0,
        "memory_op(XENMEM_current_reservation): expected > 0, got {}",
        Rc(rc)
    );
    Ok(rc)
}

pub fn reservation() -> R {
    let cur = current_reservation()?;
    let max = reservation_of(XENMEM_MAXIMUM_RESERVATION, DOMID_SELF);
    ensure!(
        max >= cur,
        "memory_op(XENMEM_maximum_reservation): expected >= {} (current), got {}",
        cur,
        Rc(max)
    );
    let ram = env::ram_pages() as i64;
    let slack = (ram / 16).max(1024);
    ensure!(
        (cur - ram).abs() <= slack,
        "current_reservation {} is not close to the {} RAM pages of the memory map",
        cur,
        ram
    );
    // memory.c: rcu_lock_domain_by_any_id fails for a non-existent domain.
    rc_is(
        "memory_op(XENMEM_current_reservation, domid 5)",
        reservation_of(XENMEM_CURRENT_RESERVATION, 5),
        neg(ESRCH),
    )
}

pub fn reservation_bad_pointer() -> R {
    // memory.c: copy_from_guest of the domid fails -> -EFAULT.
    rc_is(
        "memory_op(XENMEM_current_reservation, unmapped)",
        op_raw(MEMORY_OP, XENMEM_CURRENT_RESERVATION, BAD_PTR),
        neg(EFAULT),
    )?;
    rc_is(
        "memory_op(XENMEM_maximum_reservation, unmapped)",
        op_raw(MEMORY_OP, XENMEM_MAXIMUM_RESERVATION, BAD_PTR),
        neg(EFAULT),
    )
}

fn reservation_op(cmd: u64, extents: &mut [u64]) -> i64 {
    let mut r = MemoryReservation {
        extent_start: extents.as_mut_ptr() as u64,
        nr_extents: extents.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 6],
    };
    memory_op(cmd, &mut r)
}

pub fn decrease_populate() -> R {
    let page = BALLOON_PAGE.ptr() as *mut u64;
    for i in 0..512 {
        // SAFETY: i < 512 words of the 4 KiB page we own.
        unsafe { page.add(i).write_volatile(0xa5a5_a5a5_a5a5_a5a5) };
    }
    let before = current_reservation()?;
    let mut extents = [BALLOON_PAGE.pfn()];
    // memory.c: returns the number of extents done.
    rc_is(
        "memory_op(XENMEM_decrease_reservation, 1 page)",
        reservation_op(XENMEM_DECREASE_RESERVATION, &mut extents),
        1,
    )?;
    let during = current_reservation()?;
    eq("current_reservation after decrease", during, before - 1)?;
    // Do not touch the page until it is populated again.
    let mut extents = [BALLOON_PAGE.pfn()];
    rc_is(
        "memory_op(XENMEM_populate_physmap, 1 page)",
        reservation_op(XENMEM_POPULATE_PHYSMAP, &mut extents),
        1,
    )?;
    let after = current_reservation()?;
    eq("current_reservation after populate", after, before)?;
    for i in 0..512 {
        // SAFETY: the page is populated again; i < 512 words.
        let v = unsafe { page.add(i).read_volatile() };
        ensure!(
            v == 0,
            "repopulated page word {}: expected 0, got {:#x}",
            i,
            v
        );
    }
    // And usable.
    // SAFETY: as above.
    unsafe {
        page.write_volatile(42);
        ensure!(
            page.read_volatile() == 42,
            "repopulated page is not writable"
        );
    }
    Ok(())
}

pub fn decrease_bad_extents() -> R {
    let before = current_reservation()?;
    let mut r = MemoryReservation {
        extent_start: BAD_PTR,
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 6],
    };
    // memory.c decrease_reservation: an unreadable extent list stops the
    // loop; the call returns the number done (0).
    rc_is(
        "memory_op(XENMEM_decrease_reservation, unmapped extent list)",
        memory_op(XENMEM_DECREASE_RESERVATION, &mut r),
        0,
    )?;
    eq(
        "current_reservation afterwards",
        current_reservation()?,
        before,
    )
}

pub fn decrease_bad_struct() -> R {
    // memory.c do_memory_op: for increase/decrease/populate a failed
    // copy_from_guest of the reservation returns start_extent (0), not
    // -EFAULT.
    rc_is(
        "memory_op(XENMEM_decrease_reservation, unmapped struct)",
        op_raw(MEMORY_OP, XENMEM_DECREASE_RESERVATION, BAD_PTR),
        0,
    )
}

pub fn unknown_subop() -> R {
    // x86 arch_memory_op/subarch_memory_op: default is -ENOSYS.
    rc_is("memory_op(63)", op_raw(MEMORY_OP, 63, 0), neg(ENOSYS))
}

extern "C" {
    /// The page-directory-pointer table under PML4 entry 0 (boot.rs). Its
    /// entries 0-3 identity-map the first 4 GiB; the rest are free.
    static mut kxen_pdpt: [u64; 512];
}

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;

/// PDPT entry of the window [`page_permissions`] maps: 5 GiB, above the
/// identity map, so nothing else uses it.
const WINDOW_PDPT_INDEX: usize = 5;
const WINDOW_VA: u64 = (WINDOW_PDPT_INDEX as u64) << 30;
/// What the target pages hold before each hypercall.
const FILL: u8 = 0xa5;

/// Fill a page we own with `byte`.
fn fill(page: *mut u8, byte: u8) {
    // SAFETY: `page` is a whole page from pages::alloc, identity-mapped
    // and ours alone.
    unsafe { core::ptr::write_bytes(page, byte, 4096) };
}

/// Whether every byte of the page at `page` is still `byte`.
fn holds_only(page: *const u8, byte: u8) -> bool {
    // SAFETY: as in `fill`; volatile, because the hypervisor writes it.
    (0..4096).all(|i| unsafe { page.add(i).read_volatile() } == byte)
}

/// The mappings of the window, in a page table of our own.
struct Window {
    pd: *mut u64,
    pt: *mut u64,
    writable: *mut u8,
    read_only: *mut u8,
}

impl Window {
    /// PDPT[5] -> PD -> PT: PT[0] maps `writable` read/write, PT[1] maps
    /// `read_only` read-only, PT[2] is not present. Ring 3 edits the page
    /// tables through the identity map (the boot code made them U/S and
    /// R/W). It never touches the window itself, so no TLB entry needs
    /// flushing; only the hypervisor's walk uses these mappings.
    fn map() -> Result<Window, Fail> {
        // SAFETY: reading an entry of the boot page tables, identity-mapped.
        let in_use = unsafe {
            let pdpt = core::ptr::addr_of_mut!(kxen_pdpt) as *mut u64;
            pdpt.add(WINDOW_PDPT_INDEX).read_volatile() != 0
        };
        if in_use {
            bail!("PDPT entry {} is already in use", WINDOW_PDPT_INDEX);
        }
        let (Some(pd), Some(pt), Some(writable), Some(read_only)) = (
            pages::alloc(),
            pages::alloc(),
            pages::alloc(),
            pages::alloc(),
        ) else {
            bail!("no free pages");
        };
        let (pd, pt) = (pd as *mut u64, pt as *mut u64);
        let table = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
        // SAFETY: the pages are ours (zeroed by alloc); the PDPT entry is
        // free (checked above) and only this check uses it.
        unsafe {
            let pdpt = core::ptr::addr_of_mut!(kxen_pdpt) as *mut u64;
            let slot = pdpt.add(WINDOW_PDPT_INDEX);
            pt.write_volatile(writable as u64 | PTE_PRESENT | PTE_WRITABLE | PTE_USER);
            pt.add(1)
                .write_volatile(read_only as u64 | PTE_PRESENT | PTE_USER);
            pd.write_volatile(pt as u64 | table);
            slot.write_volatile(pd as u64 | table);
        }
        Ok(Window {
            pd,
            pt,
            writable,
            read_only,
        })
    }

    fn pte(&self, index: usize) -> u64 {
        // SAFETY: `pt` is our page table page; index < 512.
        unsafe { self.pt.add(index).read_volatile() }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the entry was set by `map`; clearing it unmaps the window
        // (never used by this CPU, so nothing is cached for it).
        unsafe {
            let pdpt = core::ptr::addr_of_mut!(kxen_pdpt) as *mut u64;
            pdpt.add(WINDOW_PDPT_INDEX).write_volatile(0);
        }
        for page in [
            self.pd as *mut u8,
            self.pt as *mut u8,
            self.writable,
            self.read_only,
        ] {
            pages::free(page);
        }
    }
}

/// Xen's copy_to_guest walks the caller's page tables as its kernel would
/// access them: a hypercall may not write a page the guest mapped
/// read-only (CR0.WP is set) or one that is not present. Both fail with
/// -EFAULT and leave memory as it was; a write that would straddle into a
/// read-only page writes nothing at all. The control (the same call
/// through a writable mapping of the window) succeeds and marks the page
/// table entry accessed and dirty, as the CPU's own walk would.
pub fn page_permissions() -> R {
    let w = Window::map()?;
    let extraversion = |va: u64| op_raw(XEN_VERSION, XENVER_EXTRAVERSION, va);

    // Control: the writable mapping is written, and A/D are set.
    fill(w.writable, FILL);
    rc_is(
        "xen_version(XENVER_extraversion, writable page)",
        extraversion(WINDOW_VA),
        0,
    )?;
    let mut want = [0u8; EXTRAVERSION_LEN];
    rc_is(
        "xen_version(XENVER_extraversion, identity-mapped buffer)",
        crate::hypercall::xen_version_buf(XENVER_EXTRAVERSION, &mut want),
        0,
    )?;
    for (i, &b) in want.iter().enumerate() {
        // SAFETY: i < 16, inside the page we own.
        let got = unsafe { w.writable.add(i).read_volatile() };
        ensure!(
            got == b,
            "writable page byte {}: expected {:#x} (the extraversion), got {:#x}",
            i,
            b,
            got
        );
    }
    let pte = w.pte(0);
    ensure!(
        pte & (PTE_ACCESSED | PTE_DIRTY) == PTE_ACCESSED | PTE_DIRTY,
        "the writable page's PTE after a hypercall wrote it: expected A and D set, got {:#x}",
        pte
    );

    // Read-only: refused, nothing written, the PTE untouched.
    fill(w.read_only, FILL);
    let ro_pte = w.pte(1);
    rc_is(
        "xen_version(XENVER_extraversion, read-only page)",
        extraversion(WINDOW_VA + 0x1000),
        neg(EFAULT),
    )?;
    ensure!(
        holds_only(w.read_only, FILL),
        "the read-only page was written by a hypercall that failed"
    );
    eq("read-only PTE after the refused write", w.pte(1), ro_pte)?;

    // Straddling: the last 8 bytes of the writable page, then 8 of the
    // read-only one. Every page is checked before the first byte goes in.
    fill(w.writable, FILL);
    rc_is(
        "xen_version(XENVER_extraversion, writable page into read-only page)",
        extraversion(WINDOW_VA + 0x1000 - 8),
        neg(EFAULT),
    )?;
    ensure!(
        holds_only(w.writable, FILL) && holds_only(w.read_only, FILL),
        "a hypercall write that straddles into a read-only page wrote part of it"
    );

    // Not present (PT[2] is zero): refused.
    rc_is(
        "xen_version(XENVER_extraversion, not-present page)",
        extraversion(WINDOW_VA + 0x2000),
        neg(EFAULT),
    )?;
    ensure!(
        holds_only(w.writable, FILL) && holds_only(w.read_only, FILL),
        "a refused write changed a page"
    );
    Ok(())
}
