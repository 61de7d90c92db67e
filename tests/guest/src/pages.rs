//! Page allocator for the frontends: ring pages, data buffers and packet
//! buffers come from the RAM above the kernel image.
//!
//! There is no heap. Pages are carved from `[end of image, end of RAM below
//! 4 GiB)` (identity-mapped, like everything else) and handed back to a free
//! list threaded through the freed pages themselves.

use core::sync::atomic::Ordering;

use crate::cell::Single;
use crate::env;

extern "C" {
    /// End of the loaded image including .bss (link.ld).
    static __image_end: u8;
}

const PAGE: u64 = 4096;

struct Pool {
    /// Next never-used page (0 = not initialised).
    next: u64,
    end: u64,
    /// Head of the free list (0 = empty); each free page stores the next.
    free: u64,
    in_use: u64,
}

static POOL: Single<Pool> = Single::new(Pool {
    next: 0,
    end: 0,
    free: 0,
    in_use: 0,
});

fn init(p: &mut Pool) {
    if p.next != 0 {
        return;
    }
    // Only the address of the linker symbol is taken.
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    p.next = (image_end + PAGE - 1) & !(PAGE - 1);
    p.end = env::ram_end_below_4g() & !(PAGE - 1);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// A zeroed, page-aligned 4 KiB page, or `None` when RAM is exhausted.
pub fn alloc() -> Option<*mut u8> {
    let page = POOL.with(|p| {
        init(p);
        let page = if p.free != 0 {
            let page = p.free;
            // SAFETY: `page` is a free page of ours; its first word holds
            // the next free page (written by `free`).
            p.free = unsafe { (page as *const u64).read_volatile() };
            page
        } else if p.next + PAGE <= p.end {
            let page = p.next;
            p.next += PAGE;
            page
        } else {
            return None;
        };
        p.in_use += 1;
        Some(page)
    })?;
    // SAFETY: the page is RAM inside the identity map that nobody else
    // uses (it was free or never handed out).
    unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE as usize) };
    Some(page as *mut u8)
}

/// Give back a page from [`alloc`]. The caller no longer uses it and has
/// revoked any grant of it.
pub fn free(page: *mut u8) {
    POOL.with(|p| {
        // SAFETY: `page` came from `alloc` and is no longer used; its first
        // word now links the free list.
        unsafe { (page as *mut u64).write_volatile(p.free) };
        p.free = page as u64;
        p.in_use -= 1;
    });
}

/// Pages handed out and not yet freed.
#[allow(dead_code)]
pub fn in_use() -> u64 {
    POOL.with(|p| p.in_use)
}

/// `n` zeroed pages at consecutive addresses (never from the free list),
/// or `None` when RAM is exhausted. Free them one by one with [`free`].
pub fn alloc_contig(n: usize) -> Option<*mut u8> {
    let base = POOL.with(|p| {
        init(p);
        let bytes = n as u64 * PAGE;
        if n == 0 || p.next + bytes > p.end {
            return None;
        }
        let base = p.next;
        p.next += bytes;
        p.in_use += n as u64;
        Some(base)
    })?;
    // SAFETY: the range was never handed out and lies in identity-mapped RAM.
    unsafe { core::ptr::write_bytes(base as *mut u8, 0, n * PAGE as usize) };
    Some(base as *mut u8)
}

/// Pages needed for a `T`.
pub const fn pages_for<T>() -> usize {
    core::mem::size_of::<T>().div_ceil(PAGE as usize)
}

/// A `T` in fresh zeroed pages, living until [`free_zeroed`].
///
/// # Safety
/// All-zero bytes must be a valid `T`.
pub unsafe fn alloc_zeroed<T>() -> Option<&'static mut T> {
    let p = alloc_contig(pages_for::<T>())? as *mut T;
    // SAFETY: the pages are zeroed, page aligned (enough for any T here),
    // exclusively ours, and zero is a valid T (caller's contract).
    Some(unsafe { &mut *p })
}

/// Give back the pages of a `T` from [`alloc_zeroed`].
pub fn free_zeroed<T>(t: &'static mut T) {
    let base = t as *mut T as *mut u8;
    for i in 0..pages_for::<T>() {
        free(base.wrapping_add(i * PAGE as usize));
    }
}
