//! Grant-table access for Dom0 backends (grant table v1 and v2).
//!
//! Before a backend touches a frame a guest granted, it pins the grant the
//! way Xen does. In a v1 table one compare-and-exchange on the entry's
//! `flags | domid` word checks that the entry permits access, names the
//! backend's domain, and is not read-only for a write, and sets
//! `GTF_reading` or `GTF_writing`. In a v2 table the same checks read the
//! v2 entry's header, the busy bit goes into the entry's status word, and
//! the header is read again after it (Xen's _set_status_v2): a guest that
//! changed the entry in between is caught. The frame comes from
//! `full_page`; a backend maps whole pages, so a `sub_page` or transitive
//! v2 entry is refused, as Xen refuses to map one. As in Xen's active grant table, pins are counted per
//! grant reference: the busy bit stays set until the last mapping of that
//! kind is dropped, so a frontend can tell when its page is free again. A
//! guest can change the entry concurrently; a changed entry is re-checked,
//! never trusted.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex};

use xen_abi::grant_table::*;
use xen_abi::PAGE_SIZE;

use crate::domain::ForeignDomain;
use crate::foreign::{ForeignMemory, ForeignPage};

/// How often a racing guest may change an entry under us before we give up.
const MAX_RETRIES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant reference {0} is beyond the grant table")]
    BadRef(u32),
    #[error("grant reference {0} does not permit access")]
    NotPermitted(u32),
    #[error("grant reference {0} is for domain {1}, not us")]
    WrongDomain(u32, u16),
    #[error("grant reference {0} is read-only")]
    ReadOnly(u32),
    #[error("grant reference {0} names frame {1:#x}, which is not guest memory")]
    BadFrame(u32, u64),
    #[error("grant reference {0} kept changing")]
    Busy(u32),
    /// A copy's offset and length leave the page.
    #[error("grant reference {0}: copy of {2} bytes at offset {1} leaves the page")]
    BadCopyArg(u32, usize, usize),
}

impl GrantError {
    /// The GNTST_* code Xen would report.
    pub fn status(self) -> i16 {
        match self {
            GrantError::BadRef(_) => GNTST_BAD_GNTREF,
            GrantError::NotPermitted(_) | GrantError::WrongDomain(..) | GrantError::ReadOnly(_) => {
                GNTST_PERMISSION_DENIED
            }
            GrantError::BadFrame(..) => GNTST_BAD_PAGE,
            GrantError::Busy(_) => GNTST_EAGAIN,
            GrantError::BadCopyArg(..) => GNTST_BAD_COPY_ARG,
        }
    }
}

/// Xen's active grant entries: how many mappings pin each reference.
#[derive(Default)]
pub struct PinTable {
    active: Mutex<HashMap<u32, Active>>,
}

#[derive(Clone, Copy)]
struct Active {
    readers: u32,
    writers: u32,
    /// The frame pinned first; later pins of the same reference use it.
    gfn: u64,
}

impl PinTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mappings currently pinning `gref`: (readers, writers).
    pub fn pins(&self, gref: u32) -> (u32, u32) {
        self.lock()
            .get(&gref)
            .map_or((0, 0), |a| (a.readers, a.writers))
    }
}

/// Where the table's frames are.
enum Frames {
    /// Fixed guest frames (tests, or a VMM without a routing area): the
    /// table's frames, its version and (v2) its status frames.
    Fixed {
        frames: Vec<ForeignPage>,
        version: u32,
        status: Vec<ForeignPage>,
    },
    /// Read from the domain's routing area on every access: the guest may
    /// move its frames at any time.
    Routed(Arc<ForeignDomain>),
}

/// One domain's grant table as Dom0 reaches it.
pub struct GrantTable {
    mem: Arc<ForeignMemory>,
    frames: Frames,
    /// The domain backends act as (Dom0).
    backend: u16,
    pins: Arc<PinTable>,
}

impl GrantTable {
    /// `frame_gfns` are the table's frames in order (from kxen-vmm).
    /// Frames that are not guest memory end the table there.
    pub fn new(mem: Arc<ForeignMemory>, frame_gfns: &[u64], backend: u16) -> GrantTable {
        Self::fixed(mem, frame_gfns, 1, &[], backend)
    }

    /// A v2 table: `frame_gfns` hold `grant_entry_v2`s, `status_gfns` the
    /// status words.
    pub fn new_v2(
        mem: Arc<ForeignMemory>,
        frame_gfns: &[u64],
        status_gfns: &[u64],
        backend: u16,
    ) -> GrantTable {
        Self::fixed(mem, frame_gfns, 2, status_gfns, backend)
    }

    fn fixed(
        mem: Arc<ForeignMemory>,
        frame_gfns: &[u64],
        version: u32,
        status_gfns: &[u64],
        backend: u16,
    ) -> GrantTable {
        let frames = frame_gfns.iter().map_while(|&gfn| mem.page(gfn)).collect();
        let status = status_gfns.iter().map_while(|&gfn| mem.page(gfn)).collect();
        GrantTable {
            mem,
            frames: Frames::Fixed {
                frames,
                version,
                status,
            },
            backend,
            pins: Arc::default(),
        }
    }

    /// The table of `domain`, frames located through its routing area.
    pub(crate) fn routed(domain: Arc<ForeignDomain>, backend: u16, pins: Arc<PinTable>) -> Self {
        GrantTable {
            mem: domain.memory.clone(),
            frames: Frames::Routed(domain),
            backend,
            pins,
        }
    }

    /// The pin counts shared by the mappings of this table.
    pub fn pin_table(&self) -> &PinTable {
        &self.pins
    }

    fn nr_frames(&self) -> usize {
        match &self.frames {
            Frames::Fixed { frames, .. } => frames.len(),
            Frames::Routed(d) => d.events().map_or(0, |e| e.nr_grant_frames() as usize),
        }
    }

    /// The table's version: 1 or 2.
    pub fn version(&self) -> u32 {
        match &self.frames {
            Frames::Fixed { version, .. } => *version,
            Frames::Routed(d) => d.events().map_or(1, |e| e.grant_version()),
        }
    }

    /// Number of grant references the table holds.
    pub fn len(&self) -> u32 {
        (self.nr_frames() * entries_per_frame(self.version())) as u32
    }

    pub fn is_empty(&self) -> bool {
        self.nr_frames() == 0
    }

    fn locate(&self, gref: u32) -> Result<Located, GrantError> {
        match &self.frames {
            Frames::Fixed {
                frames,
                version,
                status,
            } => locate_in(
                *version,
                gref,
                |i| frames.get(i as usize).cloned(),
                |i| status.get(i as usize).cloned(),
            ),
            Frames::Routed(d) => locate_routed(d, gref),
        }
        .ok_or(GrantError::BadRef(gref))
    }

    /// Pin `gref` for reading (or writing) and return the granted page.
    pub fn map(&self, gref: u32, write: bool) -> Result<GrantMapping, GrantError> {
        let loc = self.locate(gref)?;
        let (page, off) = (&loc.entry, loc.offset);
        let busy = if write { GTF_WRITING } else { GTF_READING };
        let busy_at = loc.busy_at(busy);
        // One pin change at a time, so counts and busy bits agree.
        let mut active = self.pins.lock();
        let current = active.get(&gref).copied();
        for _ in 0..MAX_RETRIES {
            let word = page.load_u32(off);
            let flags = word as u16;
            let domid = (word >> 16) as u16;
            // GTF_transitive is a type other than permit_access; a v2
            // sub-page grant cannot be mapped (Xen: map needs a full page).
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || (loc.v2 && flags & GTF_SUB_PAGE != 0) {
                return Err(GrantError::NotPermitted(gref));
            }
            if domid != self.backend {
                return Err(GrantError::WrongDomain(gref, domid));
            }
            if write && flags & GTF_READONLY != 0 {
                return Err(GrantError::ReadOnly(gref));
            }
            let bit_was_set = if loc.v2 {
                let was = busy_at.set();
                if page.load_u32(off) != word {
                    if !was {
                        busy_at.clear();
                    }
                    continue; // the guest changed the entry: check it again
                }
                was
            } else {
                let pinned = (flags | busy) as u32 | (domid as u32) << 16;
                if page.compare_exchange_u32(off, word, pinned).is_err() {
                    continue; // the guest changed the entry: check it again
                }
                flags & busy != 0
            };
            let had_bit = bit_was_set
                && current.is_some_and(|a| if write { a.writers } else { a.readers } > 0);
            // The frame is read after pinning: from now on the guest may
            // not change it (it must wait for the busy bits to clear). An
            // entry already pinned keeps the frame of its first pin.
            let gfn = match current {
                Some(a) => a.gfn,
                None if loc.v2 => {
                    page.load_u32(off + 8) as u64 | (page.load_u32(off + 12) as u64) << 32
                }
                None => page.load_u32(off + 4) as u64,
            };
            let Some(frame) = self.mem.page(gfn) else {
                if !had_bit {
                    busy_at.clear();
                }
                return Err(GrantError::BadFrame(gref, gfn));
            };
            let a = active.entry(gref).or_insert(Active {
                readers: 0,
                writers: 0,
                gfn,
            });
            if write {
                a.writers += 1;
                // Written directly (preadv) while mapped: dirty until the
                // mapping ends, for a live migration.
                frame.begin_writable();
            } else {
                a.readers += 1;
            }
            return Ok(GrantMapping {
                busy_at,
                busy,
                page: frame,
                writable: write,
                gref,
                pins: self.pins.clone(),
                domain: match &self.frames {
                    Frames::Routed(d) => Some(d.clone()),
                    Frames::Fixed { .. } => None,
                },
            });
        }
        Err(GrantError::Busy(gref))
    }

    /// Copy `buf.len()` bytes from offset `off` of the page granted as
    /// `gref` (Xen's GNTTABOP_copy checks: in-page range, permit, domid).
    pub fn copy_from_guest(&self, gref: u32, off: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        check_range(gref, off, buf.len())?;
        self.map(gref, false)?.read(off, buf)
    }

    /// Copy `data` to offset `off` of the page granted as `gref`, which
    /// must be writable.
    pub fn copy_to_guest(&self, gref: u32, off: usize, data: &[u8]) -> Result<(), GrantError> {
        check_range(gref, off, data.len())?;
        self.map(gref, true)?.write(off, data)
    }
}

fn entries_per_frame(version: u32) -> usize {
    if version == 2 {
        GRANT_ENTRIES_PER_FRAME_V2
    } else {
        GRANT_ENTRIES_PER_FRAME
    }
}

/// Where one grant's entry (and, in v2, its status word) is.
struct Located {
    entry: ForeignPage,
    /// Byte offset of the entry in `entry`.
    offset: usize,
    v2: bool,
    /// v2: the status frame and the word's byte offset in it.
    status: Option<(ForeignPage, usize)>,
}

impl Located {
    fn busy_at(&self, busy: u16) -> BusyAt {
        match &self.status {
            None => BusyAt {
                page: self.entry.clone(),
                offset: self.offset,
                mask: busy as u32,
            },
            // The u16 status word, reached through the aligned u32 around
            // it (little-endian: the upper half for an offset of 2 mod 4).
            Some((page, off)) => BusyAt {
                page: page.clone(),
                offset: off & !3,
                mask: (busy as u32) << (8 * (off & 3)),
            },
        }
    }
}

/// A busy bit: `mask` in the u32 at `offset` of `page`.
#[derive(Clone)]
struct BusyAt {
    page: ForeignPage,
    offset: usize,
    mask: u32,
}

impl BusyAt {
    /// Set the bit; whether it was set already.
    fn set(&self) -> bool {
        loop {
            let cur = self.page.load_u32(self.offset);
            if self
                .page
                .compare_exchange_u32(self.offset, cur, cur | self.mask)
                .is_ok()
            {
                return cur & self.mask != 0;
            }
        }
    }

    fn clear(&self) {
        self.page.fetch_and_u32(self.offset, !self.mask);
    }
}

/// Locate `gref` given the version and how to reach grant frame `i` and
/// status frame `i`.
fn locate_in(
    version: u32,
    gref: u32,
    frame: impl Fn(u32) -> Option<ForeignPage>,
    status_frame: impl Fn(u32) -> Option<ForeignPage>,
) -> Option<Located> {
    let per_frame = entries_per_frame(version) as u32;
    let entry = frame(gref / per_frame)?;
    let v2 = version == 2;
    let size = if v2 {
        GRANT_ENTRY_V2_SIZE
    } else {
        GRANT_ENTRY_V1_SIZE
    };
    let status = if v2 {
        let per_status = GRANT_STATUS_PER_FRAME as u32;
        let page = status_frame(gref / per_status)?;
        Some((page, (gref % per_status) as usize * 2))
    } else {
        None
    };
    Some(Located {
        entry,
        offset: (gref % per_frame) as usize * size,
        v2,
        status,
    })
}

/// Locate `gref` through `domain`'s routing area.
fn locate_routed(domain: &ForeignDomain, gref: u32) -> Option<Located> {
    let events = domain.events()?;
    let mem = &domain.memory;
    locate_in(
        events.grant_version(),
        gref,
        |i| mem.page_at_offset(events.grant_frame_offset(i)?),
        |i| mem.page_at_offset(events.status_frame_offset(i)?),
    )
}

fn check_range(gref: u32, off: usize, len: usize) -> Result<(), GrantError> {
    if off.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
        return Err(GrantError::BadCopyArg(gref, off, len));
    }
    Ok(())
}

/// A pinned grant: the guest's page, readable (and writable if mapped for
/// writing) until dropped.
pub struct GrantMapping {
    /// Where the busy bit was set (the entry, or its v2 status word).
    busy_at: BusyAt,
    busy: u16,
    page: ForeignPage,
    writable: bool,
    gref: u32,
    pins: Arc<PinTable>,
    /// For routed tables: where to find the entry again when unpinning
    /// (the guest may have moved the frame meanwhile; its contents, busy
    /// bits included, move with it).
    domain: Option<Arc<ForeignDomain>>,
}

impl GrantMapping {
    /// The grant reference this mapping pins.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Whether the mapping was made for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Copy out of the granted page; `off + buf.len()` must be in the page.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        if off.checked_add(buf.len()).is_none_or(|end| end > PAGE_SIZE) {
            return Err(GrantError::BadFrame(0, off as u64));
        }
        self.page.read(off, buf);
        Ok(())
    }

    /// Copy into the granted page; only for grants mapped for writing.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<(), GrantError> {
        if !self.writable {
            return Err(GrantError::ReadOnly(0));
        }
        if off
            .checked_add(data.len())
            .is_none_or(|end| end > PAGE_SIZE)
        {
            return Err(GrantError::BadFrame(0, off as u64));
        }
        self.page.write(off, data);
        Ok(())
    }
}

impl GrantMapping {
    /// The granted page for atomic access, as shared rings need for their
    /// indices; None for a read-only mapping (a ring's indices are written).
    pub fn shared_page(&self) -> Option<&ForeignPage> {
        self.writable.then_some(&self.page)
    }

    /// Where bytes `off..off + len` of the granted page lie in Dom0, so the
    /// kernel can read or write them directly (zero-copy I/O). `into_page`
    /// (the page is written) needs a mapping made for writing. The pointer
    /// is valid while `self` lives.
    pub fn io_ptr(&self, off: usize, len: usize, into_page: bool) -> Result<*mut u8, GrantError> {
        if into_page && !self.writable {
            return Err(GrantError::ReadOnly(0));
        }
        if off.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(GrantError::BadFrame(0, off as u64));
        }
        Ok(self.page.ptr(off, len))
    }

    /// Bytes `off..off + len` of the page as an `IoSlice` for `pwritev`
    /// (data flows out of the guest page).
    ///
    /// # Safety
    /// The guest may write the page concurrently (it owns it). The caller
    /// must only hand the slice to the kernel (e.g. `pwritev`/`sendmsg`)
    /// and must not rely on its contents being stable from Rust code.
    pub unsafe fn io_slice(&self, off: usize, len: usize) -> Result<IoSlice<'_>, GrantError> {
        let ptr = self.io_ptr(off, len, false)?;
        // SAFETY: in bounds of the mapped page (io_ptr), alive while
        // `self` is; the concurrency caveat is the caller's contract.
        Ok(IoSlice::new(unsafe {
            std::slice::from_raw_parts(ptr, len)
        }))
    }

    /// Bytes `off..off + len` of the page as an `IoSliceMut` for `preadv`
    /// (data flows into the guest page); needs a writable mapping.
    ///
    /// # Safety
    /// As [`GrantMapping::io_slice`]; also, no other slice of the same
    /// bytes may be in use at the same time.
    pub unsafe fn io_slice_mut(
        &self,
        off: usize,
        len: usize,
    ) -> Result<IoSliceMut<'_>, GrantError> {
        let ptr = self.io_ptr(off, len, true)?;
        // SAFETY: in bounds of the writable mapped page; exclusivity and
        // concurrency are the caller's contract.
        Ok(IoSliceMut::new(unsafe {
            std::slice::from_raw_parts_mut(ptr, len)
        }))
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        if self.writable {
            self.page.end_writable();
        }
        let mut active = self.pins.lock();
        let last = match active.get_mut(&self.gref) {
            Some(a) => {
                let count = if self.writable {
                    &mut a.writers
                } else {
                    &mut a.readers
                };
                *count = count.saturating_sub(1);
                let last = *count == 0;
                if a.readers == 0 && a.writers == 0 {
                    active.remove(&self.gref);
                }
                last
            }
            None => true,
        };
        if last {
            // The version cannot change while the bit is set (kxen-xen
            // refuses the switch), but the frames may have moved.
            let current = self
                .domain
                .as_ref()
                .and_then(|d| locate_routed(d, self.gref))
                .map(|l| l.busy_at(self.busy));
            current.as_ref().unwrap_or(&self.busy_at).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foreign::MemfdRegion;

    /// A 4-page "guest": frame 1 holds the grant table, 2 and 3 are data.
    fn guest() -> (Arc<ForeignMemory>, ForeignPage) {
        let fd = nix::sys::memfd::memfd_create(c"grant-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(4 * 4096).unwrap();
        let mem = Arc::new(
            ForeignMemory::map(
                file.into(),
                4 * 4096,
                vec![MemfdRegion {
                    gpa: 0,
                    len: 4 * 4096,
                    offset: 0,
                }],
            )
            .unwrap(),
        );
        let table = mem.page(1).unwrap();
        (mem, table)
    }

    fn grant(table: &ForeignPage, gref: usize, flags: u16, domid: u16, frame: u32) {
        table.store_u32(gref * 8, flags as u32 | (domid as u32) << 16);
        table.store_u32(gref * 8 + 4, frame);
    }

    #[test]
    fn read_and_write_grants_pin_and_unpin() {
        let (mem, t) = guest();
        grant(&t, 5, GTF_PERMIT_ACCESS, 0, 2);
        grant(&t, 6, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 3);
        let table = GrantTable::new(mem.clone(), &[1], 0);
        assert_eq!(table.len(), 512);
        {
            let m = table.map(5, true).unwrap();
            assert_eq!(t.load_u32(40) as u16 & GTF_WRITING, GTF_WRITING);
            m.write(100, b"hello").unwrap();
            let mut b = [0u8; 5];
            m.read(100, &mut b).unwrap();
            assert_eq!(&b, b"hello");
            assert!(m.write(4095, b"ab").is_err());
        }
        assert_eq!(t.load_u32(40) as u16, GTF_PERMIT_ACCESS);
        let r = table.map(6, false).unwrap();
        assert!(r.write(0, b"x").is_err());
        assert_eq!(t.load_u32(48) as u16 & GTF_READING, GTF_READING);
        drop(r);
        assert_eq!(t.load_u32(48) as u16, GTF_PERMIT_ACCESS | GTF_READONLY);
    }

    #[test]
    fn busy_bits_stay_until_the_last_mapping_drops() {
        let (mem, t) = guest();
        grant(&t, 7, GTF_PERMIT_ACCESS, 0, 2);
        let table = GrantTable::new(mem, &[1], 0);
        let r1 = table.map(7, false).unwrap();
        let r2 = table.map(7, false).unwrap();
        let w = table.map(7, true).unwrap();
        assert_eq!(table.pin_table().pins(7), (2, 1));
        let flags = |t: &ForeignPage| t.load_u32(56) as u16;
        assert_eq!(flags(&t), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
        drop(r1);
        assert_eq!(flags(&t), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
        drop(w);
        assert_eq!(flags(&t), GTF_PERMIT_ACCESS | GTF_READING);
        drop(r2);
        assert_eq!(flags(&t), GTF_PERMIT_ACCESS);
        assert_eq!(table.pin_table().pins(7), (0, 0));
    }

    #[test]
    fn copy_helpers_check_range_and_permissions() {
        let (mem, t) = guest();
        grant(&t, 1, GTF_PERMIT_ACCESS, 0, 2);
        grant(&t, 2, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 3);
        let table = GrantTable::new(mem, &[1], 0);
        table.copy_to_guest(1, 4000, b"abc").unwrap();
        let mut b = [0u8; 3];
        table.copy_from_guest(1, 4000, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        let e = table.copy_to_guest(1, 4095, b"ab").unwrap_err();
        assert_eq!(e.status(), GNTST_BAD_COPY_ARG);
        let e = table.copy_from_guest(1, usize::MAX, &mut b).unwrap_err();
        assert_eq!(e.status(), GNTST_BAD_COPY_ARG);
        let e = table.copy_to_guest(2, 0, b"x").unwrap_err();
        assert_eq!(e.status(), GNTST_PERMISSION_DENIED);
        table.copy_from_guest(2, 0, &mut b).unwrap();
        assert_eq!(
            table.copy_from_guest(9999, 0, &mut b).unwrap_err().status(),
            GNTST_BAD_GNTREF
        );
        // Nothing stays pinned.
        assert_eq!(t.load_u32(8) as u16, GTF_PERMIT_ACCESS);
        assert_eq!(t.load_u32(16) as u16, GTF_PERMIT_ACCESS | GTF_READONLY);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let (mem, t) = guest();
        grant(&t, 1, GTF_INVALID, 0, 2);
        grant(&t, 2, GTF_PERMIT_ACCESS, 7, 2);
        grant(&t, 3, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 2);
        grant(&t, 4, GTF_PERMIT_ACCESS, 0, 0x10_0000);
        grant(&t, 5, GTF_ACCEPT_TRANSFER, 0, 2);
        let table = GrantTable::new(mem, &[1], 0);
        assert_eq!(table.map(1, false).err(), Some(GrantError::NotPermitted(1)));
        assert_eq!(
            table.map(2, false).err(),
            Some(GrantError::WrongDomain(2, 7))
        );
        assert_eq!(table.map(3, true).err(), Some(GrantError::ReadOnly(3)));
        assert_eq!(
            table.map(4, false).err(),
            Some(GrantError::BadFrame(4, 0x10_0000))
        );
        assert_eq!(table.map(5, false).err(), Some(GrantError::NotPermitted(5)));
        assert_eq!(table.map(512, false).err(), Some(GrantError::BadRef(512)));
        assert_eq!(
            table.map(u32::MAX, false).err(),
            Some(GrantError::BadRef(u32::MAX))
        );
        // A refused frame leaves the entry unpinned.
        assert_eq!(t.load_u32(32) as u16, GTF_PERMIT_ACCESS);
        assert_eq!(GrantError::BadRef(9).status(), GNTST_BAD_GNTREF);
    }

    #[test]
    fn table_frames_outside_guest_memory_end_the_table() {
        let (mem, _) = guest();
        let table = GrantTable::new(mem, &[1, 0xdead_beef, 2], 0);
        assert_eq!(table.len(), 512);
        assert!(GrantTable::new(guest().0, &[], 0).is_empty());
    }

    #[test]
    fn racing_guest_cannot_slip_a_change_past_the_check() {
        let (mem, t) = guest();
        grant(&t, 9, GTF_PERMIT_ACCESS, 0, 2);
        let table = GrantTable::new(mem, &[1], 0);
        // Revoke concurrently with mapping, many times: each map either
        // fails cleanly or succeeds against a still-valid entry.
        for _ in 0..1000 {
            grant(&t, 9, GTF_PERMIT_ACCESS, 0, 2);
            let t2 = t.clone();
            let revoke = std::thread::spawn(move || t2.store_u32(72, 0));
            if let Ok(m) = table.map(9, false) {
                drop(m);
            }
            revoke.join().unwrap();
        }
    }

    /// Write v2 entry `gref` into the table page `t`.
    fn grant_v2(t: &ForeignPage, gref: usize, flags: u16, domid: u16, sub: (u16, u16), frame: u64) {
        let off = gref * GRANT_ENTRY_V2_SIZE;
        t.store_u32(off + 4, sub.0 as u32 | (sub.1 as u32) << 16);
        t.store_u32(off + 8, frame as u32);
        t.store_u32(off + 12, (frame >> 32) as u32);
        t.store_u32(off, flags as u32 | (domid as u32) << 16);
    }

    #[test]
    fn v2_grants_pin_in_the_status_word_with_v1_rigour() {
        // Frame 1 holds the v2 entries, frame 0 the status words.
        let (mem, t) = guest();
        let status = mem.page(0).unwrap();
        grant_v2(&t, 5, GTF_PERMIT_ACCESS, 0, (0, 0), 2);
        grant_v2(&t, 6, GTF_PERMIT_ACCESS | GTF_READONLY, 0, (0, 0), 3);
        let table = GrantTable::new_v2(mem.clone(), &[1], &[0], 0);
        assert_eq!((table.version(), table.len()), (2, 256));
        let word =
            |gref: usize| (status.load_u32((gref * 2) & !3) >> (8 * ((gref * 2) & 3))) as u16;
        {
            let m = table.map(5, true).unwrap();
            m.write(0, b"v2").unwrap();
            let r = table.map(6, false).unwrap();
            // The busy bits sit in the status words; the entries keep
            // their flags.
            assert_eq!(word(5), GTF_WRITING);
            assert_eq!(word(6), GTF_READING);
            assert_eq!(t.load_u32(80) as u16, GTF_PERMIT_ACCESS);
            assert_eq!(t.load_u32(96) as u16, GTF_PERMIT_ACCESS | GTF_READONLY);
            let mut b = [0u8; 2];
            mem.page(2).unwrap().read(0, &mut b);
            assert_eq!(&b, b"v2");
            drop(r);
        }
        assert_eq!((word(5), word(6)), (0, 0));
        // The v1 refusals, read from the v2 header.
        assert_eq!(table.map(6, true).err(), Some(GrantError::ReadOnly(6)));
        grant_v2(&t, 7, GTF_PERMIT_ACCESS, 4, (0, 0), 2);
        assert_eq!(
            table.map(7, false).err(),
            Some(GrantError::WrongDomain(7, 4))
        );
        grant_v2(&t, 8, GTF_TRANSITIVE, 0, (0, 0), 2);
        assert_eq!(table.map(8, false).err(), Some(GrantError::NotPermitted(8)));
        grant_v2(&t, 9, GTF_PERMIT_ACCESS | GTF_SUB_PAGE, 0, (0, 512), 2);
        assert_eq!(table.map(9, false).err(), Some(GrantError::NotPermitted(9)));
        // A 64-bit frame beyond guest memory: refused, no bit left behind.
        grant_v2(&t, 10, GTF_PERMIT_ACCESS, 0, (0, 0), 1 << 40);
        assert_eq!(
            table.map(10, false).err(),
            Some(GrantError::BadFrame(10, 1 << 40))
        );
        assert_eq!(word(10), 0);
        assert_eq!(table.map(256, false).err(), Some(GrantError::BadRef(256)));
    }
}
