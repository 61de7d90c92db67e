//! A domain's memory as Dom0 sees it: the memfd kxen-vmm hands over,
//! mapped shared. This is kxen's "foreign mapping".

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use xen_abi::PAGE_SIZE;

use crate::dirty::{self, Dom0Dirty};

/// Where a guest-physical range lives in the memfd (from kxen-vmm).
pub use kxen_vmm_api::MemfdRegion;

pub struct ForeignMemory {
    base: NonNull<u8>,
    len: usize,
    regions: Vec<MemfdRegion>,
    /// Kept open so other mappers (virtio's vm-memory view) can map it too.
    memfd: OwnedFd,
    /// Dom0's writes, for a live migration (shared by every mapping of
    /// this memfd in the process).
    dirty: Arc<Dom0Dirty>,
}

// SAFETY: the mapping is plain shared memory; all access goes through
// atomics or volatile copies, so it can be used from any thread.
unsafe impl Send for ForeignMemory {}
// SAFETY: as above; no interior state besides the mapping itself.
unsafe impl Sync for ForeignMemory {}

impl ForeignMemory {
    pub fn map(memfd: OwnedFd, size: u64, regions: Vec<MemfdRegion>) -> std::io::Result<Self> {
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        let nz =
            std::num::NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty memfd"))?;
        kxen_vmm_api::memfd::check_regions(&regions, size).map_err(std::io::Error::other)?;
        let dirty = dirty::for_memfd(&memfd, size)?;
        // SAFETY: a fresh shared mapping of the whole memfd; nothing else
        // in this process aliases it, and it is unmapped in Drop.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                memfd.as_fd(),
                0,
            )
        }?;
        Ok(ForeignMemory {
            base: ptr.cast(),
            len,
            regions,
            memfd,
            dirty,
        })
    }

    /// The page holding guest frame `gfn`, if it is backed.
    pub fn page(self: &Arc<Self>, gfn: u64) -> Option<ForeignPage> {
        let gpa = gfn.checked_mul(PAGE_SIZE as u64)?;
        let offset = self.regions.iter().find_map(|r| r.offset_of_page(gpa))?;
        let offset = usize::try_from(offset).ok()?;
        (offset + PAGE_SIZE <= self.len).then(|| ForeignPage {
            mem: self.clone(),
            offset,
        })
    }
}

impl ForeignMemory {
    /// Size of the mapping (the whole memfd).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd holding the domain's RAM.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// Where each guest-physical range lives in the memfd.
    pub fn regions(&self) -> &[MemfdRegion] {
        &self.regions
    }

    /// The page at memfd offset `offset` (page-aligned), wherever in the
    /// memfd it is: grant frames and vcpu_info pages move at run time, so
    /// kxen-vmm publishes memfd offsets rather than guest frames.
    pub fn page_at_offset(self: &Arc<Self>, offset: u64) -> Option<ForeignPage> {
        let offset = usize::try_from(offset).ok()?;
        (offset.is_multiple_of(PAGE_SIZE) && offset.checked_add(PAGE_SIZE)? <= self.len).then(
            || ForeignPage {
                mem: self.clone(),
                offset,
            },
        )
    }

    /// The log of Dom0's writes to this memfd.
    pub fn dirty(&self) -> &Arc<Dom0Dirty> {
        &self.dirty
    }

    /// In-bounds pointer for an atomic the caller may write: the page is
    /// marked dirty now, before the write (see [`crate::dirty`] on why
    /// the migration's final pass covers that order).
    fn checked(&self, offset: u64, size: usize) -> Option<*mut u8> {
        let offset = usize::try_from(offset).ok()?;
        if !offset.is_multiple_of(size) || offset.checked_add(size)? > self.len {
            return None;
        }
        self.dirty.mark_offset(offset);
        // SAFETY: offset + size lies within the mapping (checked above).
        Some(unsafe { self.base.as_ptr().add(offset) })
    }

    /// The u8 at memfd offset `offset`, for atomic access.
    pub fn atomic_u8(&self, offset: u64) -> Option<&AtomicU8> {
        let ptr = self.checked(offset, 1)?;
        // SAFETY: in bounds; shared memory only accessed atomically; lives
        // as long as `self`.
        Some(unsafe { AtomicU8::from_ptr(ptr) })
    }

    /// The u32 at memfd offset `offset` (4-byte aligned).
    pub fn atomic_u32(&self, offset: u64) -> Option<&AtomicU32> {
        let ptr = self.checked(offset, 4)?;
        // SAFETY: in bounds and aligned (page-aligned base); as atomic_u8.
        Some(unsafe { AtomicU32::from_ptr(ptr.cast()) })
    }

    /// The u64 at memfd offset `offset` (8-byte aligned).
    pub fn atomic_u64(&self, offset: u64) -> Option<&AtomicU64> {
        let ptr = self.checked(offset, 8)?;
        // SAFETY: in bounds and aligned (page-aligned base); as atomic_u8.
        Some(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }

    /// `count` consecutive u32s from memfd offset `offset` (the compat
    /// shared_info layout's event words).
    pub fn atomic_u32_slice(&self, offset: u64, count: usize) -> Option<&[AtomicU32]> {
        let bytes = count.checked_mul(4)?;
        let end = offset.checked_add(bytes as u64)?;
        if end > self.len as u64 {
            return None;
        }
        let ptr = self.checked(offset, 4)?;
        // SAFETY: `count` aligned u32s in bounds (checked above); shared
        // memory only accessed atomically; lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU32>(), count) })
    }

    /// `count` consecutive u64s from memfd offset `offset`.
    pub fn atomic_u64_slice(&self, offset: u64, count: usize) -> Option<&[AtomicU64]> {
        let bytes = count.checked_mul(8)?;
        let end = offset.checked_add(bytes as u64)?;
        if end > self.len as u64 {
            return None;
        }
        let ptr = self.checked(offset, 8)?;
        // SAFETY: `count` aligned u64s in bounds (checked above); shared
        // memory only accessed atomically; lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), count) })
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping made in `map`, and no
        // ForeignPage outlives us (each holds an Arc).
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// One 4 KiB page of a domain's memory.
#[derive(Clone)]
pub struct ForeignPage {
    mem: Arc<ForeignMemory>,
    offset: usize,
}

impl ForeignPage {
    /// Memfd page index of this page (for the dirty log).
    fn page_index(&self) -> usize {
        self.offset / PAGE_SIZE
    }

    /// This page was written (after the write).
    fn written(&self) {
        self.mem.dirty.mark(self.page_index());
    }

    /// A writable grant mapping of this page begins.
    pub(crate) fn begin_writable(&self) {
        self.mem.dirty.map_writable(self.page_index());
    }

    /// A writable grant mapping of this page ends, its writes done.
    pub(crate) fn end_writable(&self) {
        self.mem.dirty.unmap_writable(self.page_index());
    }

    pub(crate) fn ptr(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off + len <= PAGE_SIZE, "access beyond the page");
        // SAFETY: offset + off + len lies within the mapping (checked at
        // construction and just above).
        unsafe { self.mem.base.as_ptr().add(self.offset + off) }
    }

    pub fn load_u32(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4), "unaligned ring index");
        // SAFETY: in bounds (ptr checks), 4-byte aligned (page aligned base
        // plus aligned offset), shared memory accessed atomically only.
        unsafe { AtomicU32::from_ptr(self.ptr(off, 4) as *mut u32) }.load(Ordering::Acquire)
    }

    /// Compare-and-exchange a u32 (for grant entry flags).
    pub fn compare_exchange_u32(&self, off: usize, old: u32, new: u32) -> Result<u32, u32> {
        assert!(off.is_multiple_of(4), "unaligned atomic");
        // SAFETY: as in load_u32.
        let result = unsafe { AtomicU32::from_ptr(self.ptr(off, 4) as *mut u32) }.compare_exchange(
            old,
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if result.is_ok() {
            self.written();
        }
        result
    }

    /// Atomically clear bits of a u32.
    pub fn fetch_and_u32(&self, off: usize, mask: u32) -> u32 {
        assert!(off.is_multiple_of(4), "unaligned atomic");
        // SAFETY: as in load_u32.
        let was = unsafe { AtomicU32::from_ptr(self.ptr(off, 4) as *mut u32) }
            .fetch_and(mask, Ordering::AcqRel);
        self.written();
        was
    }

    pub fn store_u32(&self, off: usize, value: u32) {
        assert!(off.is_multiple_of(4), "unaligned ring index");
        // SAFETY: as in load_u32.
        unsafe { AtomicU32::from_ptr(self.ptr(off, 4) as *mut u32) }
            .store(value, Ordering::Release);
        self.written();
    }

    pub fn read(&self, off: usize, buf: &mut [u8]) {
        let src = self.ptr(off, buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds; volatile because the guest writes concurrently.
            *b = unsafe { std::ptr::read_volatile(src.add(i)) };
        }
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        let dst = self.ptr(off, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds; volatile because the guest reads concurrently.
            unsafe { std::ptr::write_volatile(dst.add(i), *b) };
        }
        self.written();
    }
}
