//! Dom0's writes to a domain's memory, logged for live migration.
//!
//! KVM's dirty log sees only the guest's own writes. Dom0's backends
//! write guest pages through the memfd (ring indices and responses,
//! blkback's reads, netback's received frames), and a page written after
//! the migration sent it must be sent again, or the destination's guest
//! reads stale data. So every Dom0 write path in this crate marks the
//! page in the domain's [`Dom0Dirty`], which the migration's passes take
//! and merge with KVM's log:
//!
//! * the copies and atomics of [`ForeignPage`](crate::foreign::ForeignPage)
//!   mark the page after they wrote it;
//! * a grant mapped for writing, whose page the kernel writes directly
//!   (`preadv` into it), counts as dirty for as long as it is mapped
//!   ([`Dom0Dirty::take`] reports every such page in every pass) and is
//!   marked again when it is unmapped, after its last write;
//! * [`ForeignMemory`](crate::foreign::ForeignMemory)'s atomics (event
//!   bits) mark the page when they are handed out, before the write;
//!   the migration's final pass compares what it sent with what is there
//!   for the pages no log named, which covers that order and every writer
//!   outside Dom0's paths (kxen-vmm's own).
//!
//! Marking after the write is what makes a pass safe: a pass first takes
//! (and clears) the marks, then reads the pages; a write whose mark it
//! took is already in memory, and a mark set after the take stays for the
//! next pass.
//!
//! There is one log per memfd in this process (keyed by the memfd's
//! device and inode), so every mapping of the same domain (the console's,
//! each backend's) feeds the same log.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use xen_abi::PAGE_SIZE;

/// The log of one domain's memfd: a bit per memfd page, and how many
/// writable grant mappings each page has now.
pub struct Dom0Dirty {
    bits: Vec<AtomicU64>,
    writable_maps: Vec<AtomicU32>,
}

impl Dom0Dirty {
    fn new(pages: usize) -> Self {
        Dom0Dirty {
            bits: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            writable_maps: (0..pages).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Pages of the memfd the log covers.
    pub fn pages(&self) -> usize {
        self.writable_maps.len()
    }

    /// Page `page` (memfd offset / 4096) was written; after the write.
    pub fn mark(&self, page: usize) {
        if let Some(word) = self.bits.get(page / 64) {
            word.fetch_or(1 << (page % 64), Ordering::Release);
        }
    }

    /// The memfd page holding byte `offset`, marked.
    pub fn mark_offset(&self, offset: usize) {
        self.mark(offset / PAGE_SIZE);
    }

    /// A grant on `page` was mapped for writing.
    pub fn map_writable(&self, page: usize) {
        if let Some(count) = self.writable_maps.get(page) {
            count.fetch_add(1, Ordering::AcqRel);
        }
        self.mark(page);
    }

    /// A writable grant mapping of `page` ends; its writes are done.
    pub fn unmap_writable(&self, page: usize) {
        // Marked before the count drops: a pass that no longer sees the
        // mapping sees the mark.
        self.mark(page);
        if let Some(count) = self.writable_maps.get(page) {
            let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
        }
    }

    /// The pages written since the previous take, and every page mapped
    /// writable now: a bit per memfd page (bit i of word w is page
    /// 64w + i). The marks are cleared.
    pub fn take(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .bits
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect();
        for (page, count) in self.writable_maps.iter().enumerate() {
            if count.load(Ordering::Acquire) > 0 {
                out[page / 64] |= 1 << (page % 64);
            }
        }
        out
    }
}

type Registry = Mutex<HashMap<(u64, u64), Weak<Dom0Dirty>>>;

fn registry() -> &'static Registry {
    static LOGS: OnceLock<Registry> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The log of the memfd `fd` (`size` bytes), shared by every mapping of
/// it in this process; made on first use.
pub fn for_memfd(fd: impl AsFd, size: u64) -> std::io::Result<Arc<Dom0Dirty>> {
    let stat = nix::sys::stat::fstat(fd.as_fd())?;
    let key = (stat.st_dev, stat.st_ino);
    let pages = usize::try_from(size / PAGE_SIZE as u64).map_err(std::io::Error::other)?;
    let mut logs = registry().lock().unwrap_or_else(|e| e.into_inner());
    logs.retain(|_, log| log.strong_count() > 0);
    if let Some(log) = logs.get(&key).and_then(Weak::upgrade) {
        if log.pages() >= pages {
            return Ok(log);
        }
    }
    let log = Arc::new(Dom0Dirty::new(pages));
    logs.insert(key, Arc::downgrade(&log));
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(pages: u64) -> std::fs::File {
        let fd = nix::sys::memfd::memfd_create(c"dirty-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(pages * PAGE_SIZE as u64).unwrap();
        f
    }

    #[test]
    fn marks_are_taken_once_and_writable_maps_every_time() {
        let f = memfd(130);
        let log = for_memfd(&f, 130 * 4096).unwrap();
        log.mark(3);
        log.mark(129);
        log.mark(4000); // beyond the memfd: ignored
        log.map_writable(70);
        let first = log.take();
        assert_eq!(first, vec![1 << 3, 1 << 6, 1 << 1]);
        // The mapped page is still reported; the marks are gone.
        assert_eq!(log.take(), vec![0, 1 << 6, 0]);
        log.unmap_writable(70);
        assert_eq!(log.take(), vec![0, 1 << 6, 0], "marked at unmap");
        assert_eq!(log.take(), vec![0, 0, 0]);
    }

    /// Writes through a mapping mark the page in the memfd's one log,
    /// which a second mapping (another backend's) shares; reads do not.
    #[test]
    fn foreign_writes_are_logged() {
        use crate::foreign::{ForeignMemory, MemfdRegion};
        let f = memfd(8);
        let regions = vec![MemfdRegion {
            gpa: 0x1000,
            len: 8 * 4096,
            offset: 0,
        }];
        let mem = Arc::new(
            ForeignMemory::map(f.try_clone().unwrap().into(), 8 * 4096, regions.clone()).unwrap(),
        );
        let other = ForeignMemory::map(f.into(), 8 * 4096, regions).unwrap();
        let log = other.dirty().clone();
        assert_eq!(log.take(), vec![0]);
        let page = mem.page(3).unwrap(); // gfn 3 is memfd page 2
        page.read(0, &mut [0u8; 16]);
        assert_eq!(page.load_u32(0), 0);
        assert_eq!(log.take(), vec![0], "reads are not writes");
        page.write(100, b"data");
        assert_eq!(log.take(), vec![1 << 2]);
        page.store_u32(8, 1);
        assert_eq!(page.compare_exchange_u32(8, 1, 2), Ok(1));
        assert_eq!(log.take(), vec![1 << 2]);
        mem.page(8).unwrap().fetch_and_u32(0, 0);
        assert_eq!(log.take(), vec![1 << 7]);
    }

    #[test]
    fn one_log_per_memfd() {
        let f = memfd(8);
        let g = memfd(8);
        let a = for_memfd(&f, 8 * 4096).unwrap();
        let dup = f.try_clone().unwrap();
        let b = for_memfd(&dup, 8 * 4096).unwrap();
        let c = for_memfd(&g, 8 * 4096).unwrap();
        a.mark(1);
        assert_eq!(b.take(), vec![2]);
        c.mark(2);
        assert_eq!(a.take(), vec![0]);
    }
}
