//! Access to guest memory on behalf of a hypercall.
//!
//! Hypercall pointers are guest virtual addresses. They are translated one
//! page at a time through the calling vCPU's page tables ([`VcpuMmu`], in a
//! VMM the software walk of [`paging`]), so an object that straddles two
//! pages is read correctly, and a page the guest could not access itself
//! (not present, read-only for a write, supervisor-only from user mode)
//! fails the call with `-EFAULT` before anything is written.

pub mod paging;

use std::sync::atomic::{AtomicU64, AtomicU8};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xen_abi::errno::EFAULT;
use xen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// What a guest-memory access does to the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    /// An instruction fetch (the VMM's emulation reading code).
    Fetch,
}

/// Translates the calling vCPU's virtual addresses.
pub trait VcpuMmu {
    /// The guest-physical address of `gva` and whether the calling vCPU may
    /// write it, or `None` if it may not even read it. A query: it changes
    /// nothing in the guest.
    fn translate(&self, gva: u64) -> Option<(u64, bool)>;

    /// The guest-physical address for an access of `kind` to `gva`, or
    /// [`Fault`] where the vCPU itself would take a page fault. An MMU that
    /// models the guest's Accessed/Dirty bits sets them here.
    fn access(&self, gva: u64, kind: AccessKind) -> Result<u64, Fault> {
        match self.translate(gva) {
            Some((gpa, writable)) if kind != AccessKind::Write || writable => Ok(gpa),
            _ => Err(Fault),
        }
    }
}

/// An MMU for guests that run with paging off, or for Dom0 tools that pass
/// guest-physical addresses: the identity map.
pub struct IdentityMmu;

impl VcpuMmu for IdentityMmu {
    fn translate(&self, gva: u64) -> Option<(u64, bool)> {
        Some((gva, true))
    }
}

/// A hypercall's view of guest memory: physical memory plus the caller's MMU.
pub struct GuestAccess<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub mmu: &'a dyn VcpuMmu,
}

/// A guest access failed; hypercalls turn this into `-EFAULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

impl From<Fault> for i64 {
    fn from(_: Fault) -> i64 {
        -EFAULT
    }
}

impl GuestAccess<'_> {
    /// Walk `[gva, gva + len)` page by page, giving each piece's GPA range.
    fn for_each_page(
        &self,
        gva: u64,
        len: usize,
        kind: AccessKind,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < len {
            let va = gva.checked_add(done as u64).ok_or(Fault)?;
            let in_page = PAGE_SIZE - (va as usize & (PAGE_SIZE - 1));
            let chunk = in_page.min(len - done);
            let gpa = self.mmu.access(va, kind)?;
            f(gpa, done, chunk)?;
            done += chunk;
        }
        Ok(())
    }

    /// Copy `buf.len()` bytes from guest virtual address `gva`.
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let len = buf.len();
        self.for_each_page(gva, len, AccessKind::Read, |gpa, off, chunk| {
            self.mem
                .read_slice(&mut buf[off..off + chunk], GuestAddress(gpa))
                .map_err(|_| Fault)
        })
    }

    /// Read instruction bytes at `gva` (an access that honours NX).
    pub fn fetch(&self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let len = buf.len();
        self.for_each_page(gva, len, AccessKind::Fetch, |gpa, off, chunk| {
            self.mem
                .read_slice(&mut buf[off..off + chunk], GuestAddress(gpa))
                .map_err(|_| Fault)
        })
    }

    /// Copy `data` to guest virtual address `gva`. Every page is checked
    /// before the first byte is written.
    pub fn write(&self, gva: u64, data: &[u8]) -> Result<(), Fault> {
        self.for_each_page(gva, data.len(), AccessKind::Write, |gpa, _, chunk| {
            // Probe that the whole piece is backed before writing anything.
            self.mem
                .get_slice(GuestAddress(gpa), chunk)
                .map(|_| ())
                .map_err(|_| Fault)
        })?;
        self.for_each_page(gva, data.len(), AccessKind::Write, |gpa, off, chunk| {
            self.mem
                .write_slice(&data[off..off + chunk], GuestAddress(gpa))
                .map_err(|_| Fault)
        })
    }

    /// Read one ABI struct.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gva: u64) -> Result<T, Fault> {
        let mut value = T::new_zeroed();
        self.read(gva, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Write one ABI struct.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gva: u64, value: &T) -> Result<(), Fault> {
        self.write(gva, value.as_bytes())
    }

    /// Read element `index` of a guest array of `T` at `base`.
    pub fn read_elem<T: FromBytes + IntoBytes>(&self, base: u64, index: u64) -> Result<T, Fault> {
        let offset = index
            .checked_mul(core::mem::size_of::<T>() as u64)
            .ok_or(Fault)?;
        self.read_obj(base.checked_add(offset).ok_or(Fault)?)
    }

    /// Write element `index` of a guest array of `T` at `base`.
    pub fn write_elem<T: IntoBytes + Immutable>(
        &self,
        base: u64,
        index: u64,
        value: &T,
    ) -> Result<(), Fault> {
        let offset = index
            .checked_mul(core::mem::size_of::<T>() as u64)
            .ok_or(Fault)?;
        self.write_obj(base.checked_add(offset).ok_or(Fault)?, value)
    }
}

/// An aligned `u64` of guest-physical memory, for lock-free bit operations
/// shared with the guest (and, through the memfd, with Dom0).
pub fn atomic_u64(mem: &GuestMemoryMmap, gpa: u64) -> Option<&AtomicU64> {
    if !gpa.is_multiple_of(8) {
        return None;
    }
    // Make sure all 8 bytes lie in one region.
    mem.get_slice(GuestAddress(gpa), 8).ok()?;
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: `ptr` points into a live mapping of guest memory owned by
    // `mem` for at least 8 bytes (checked above) and is 8-byte aligned
    // because guest regions are page aligned and `gpa` is. Guest memory is
    // shared with other threads and processes, so it must only be accessed
    // atomically or volatilely, which AtomicU64 guarantees.
    Some(unsafe { AtomicU64::from_ptr(ptr as *mut u64) })
}

/// `count` consecutive aligned `u64`s of guest-physical memory (one region).
pub fn atomic_u64_slice(mem: &GuestMemoryMmap, gpa: u64, count: usize) -> Option<&[AtomicU64]> {
    if !gpa.is_multiple_of(8) {
        return None;
    }
    mem.get_slice(GuestAddress(gpa), count.checked_mul(8)?)
        .ok()?;
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: the `count * 8` bytes at `ptr` lie in one live mapping owned
    // by `mem` (checked by get_slice above) and are 8-byte aligned; shared
    // guest memory is only accessed atomically through the returned slice.
    Some(unsafe { std::slice::from_raw_parts(ptr as *const AtomicU64, count) })
}

/// `count` consecutive aligned `u32`s of guest-physical memory (one region):
/// the compat layout's event words.
pub fn atomic_u32_slice(
    mem: &GuestMemoryMmap,
    gpa: u64,
    count: usize,
) -> Option<&[std::sync::atomic::AtomicU32]> {
    if !gpa.is_multiple_of(4) {
        return None;
    }
    mem.get_slice(GuestAddress(gpa), count.checked_mul(4)?)
        .ok()?;
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: the `count * 4` bytes at `ptr` lie in one live mapping owned
    // by `mem` (checked by get_slice above) and are 4-byte aligned; shared
    // guest memory is only accessed atomically through the returned slice.
    Some(unsafe { std::slice::from_raw_parts(ptr as *const std::sync::atomic::AtomicU32, count) })
}

/// A byte of guest-physical memory, accessed atomically.
pub fn atomic_u8(mem: &GuestMemoryMmap, gpa: u64) -> Option<&AtomicU8> {
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: `ptr` points at one byte of a live mapping owned by `mem`;
    // AtomicU8 has no alignment requirement beyond 1.
    Some(unsafe { AtomicU8::from_ptr(ptr) })
}

/// An aligned `u32` of guest-physical memory, accessed atomically (grant
/// entry flags and domid).
pub fn atomic_u32(mem: &GuestMemoryMmap, gpa: u64) -> Option<&std::sync::atomic::AtomicU32> {
    if !gpa.is_multiple_of(4) {
        return None;
    }
    mem.get_slice(GuestAddress(gpa), 4).ok()?;
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: 4 bytes of one live mapping owned by `mem` (checked above),
    // 4-byte aligned (page-aligned regions, aligned gpa); shared memory is
    // only accessed atomically through the reference.
    Some(unsafe { std::sync::atomic::AtomicU32::from_ptr(ptr as *mut u32) })
}

/// An aligned `u16` of guest-physical memory, accessed atomically (a v2
/// grant's status word).
pub fn atomic_u16(mem: &GuestMemoryMmap, gpa: u64) -> Option<&std::sync::atomic::AtomicU16> {
    if !gpa.is_multiple_of(2) {
        return None;
    }
    mem.get_slice(GuestAddress(gpa), 2).ok()?;
    let ptr = mem.get_host_address(GuestAddress(gpa)).ok()?;
    // SAFETY: 2 bytes of one live mapping owned by `mem` (checked above),
    // 2-byte aligned (page-aligned regions, aligned gpa); shared memory is
    // only accessed atomically through the reference.
    Some(unsafe { std::sync::atomic::AtomicU16::from_ptr(ptr as *mut u16) })
}

/// Read one ABI struct at a guest-physical address (zeroes if it is not
/// guest memory).
pub fn read_phys<T: FromBytes + IntoBytes>(mem: &GuestMemoryMmap, gpa: u64) -> T {
    let mut value = T::new_zeroed();
    if mem
        .read_slice(value.as_mut_bytes(), GuestAddress(gpa))
        .is_err()
    {
        value = T::new_zeroed();
    }
    value
}

/// Write one ABI struct at a guest-physical address; false if it is not
/// guest memory.
pub fn write_phys<T: IntoBytes + Immutable>(mem: &GuestMemoryMmap, gpa: u64, value: &T) -> bool {
    mem.write_slice(value.as_bytes(), GuestAddress(gpa)).is_ok()
}
