//! Guest physical memory: one memfd holding RAM, the special pages and a
//! pool of Xen-owned frames, mapped into KVM memory slots.
//!
//! memfd layout:  [ RAM | special pages | frame pool | event routing area ]
//! The memfd is what Dom0 maps to reach the domain ("foreign mapping"), so
//! every byte a guest can share lives in it.
//!
//! Guest-physical layout:
//! * RAM from 0 up to 3 GiB, the rest from 4 GiB;
//! * the special pages (initial shared_info, xenstore and console rings) at
//!   [`SPECIAL_BASE_GFN`], reserved in the memory map;
//! * overlay slots: single pool frames (shared_info, grant frames) mapped
//!   at whatever GFN outside RAM the guest picks;
//! * a PV domain's read-only M2P and its page tables (`crate::pv_m2p`):
//!   kxen-vmm's own anonymous memory, never shared with Dom0, in a slot
//!   of its own below 4 GiB.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use nix::fcntl::{fallocate, FallocateFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use xen_abi::memory::{E820Entry, E820_RAM, E820_RESERVED};
use xen_abi::PAGE_SIZE;

use kxen_xen::OverlayFrame;

/// First GFN of the special pages window (below the 4 GiB boundary, as Xen
/// puts its HVM special pages).
pub const SPECIAL_BASE_GFN: u64 = 0xfeff0;
pub const SPECIAL_PAGES: u64 = 16;
/// Special page indexes.
pub const SPECIAL_SHARED_INFO: u64 = 0;
pub const SPECIAL_XENSTORE: u64 = 1;
pub const SPECIAL_CONSOLE: u64 = 2;
/// Three pages: the hypervisor's own page tables of a PV domain (its
/// hypercall transport mapping, see `crate::pv`).
pub const SPECIAL_PV_TABLES: u64 = 3;
/// Default GFNs for grant frames the guest did not place (`setup_table`).
pub const DEFAULT_GRANT_GFN: u64 = 0xfef00;
/// Frames in the pool: shared_info, 64 grant frames and the 8 status
/// frames of a v2 table.
const POOL_PAGES: u64 =
    1 + kxen_xen::grant::MAX_GRANT_FRAMES as u64 + kxen_xen::grant::MAX_STATUS_FRAMES as u64;
/// Low RAM ends here; the rest of RAM is mapped from 4 GiB.
const LOW_RAM_END: u64 = 0xc000_0000;
const HIGH_RAM_START: u64 = 0x1_0000_0000;

const SLOT_LOW_RAM: u32 = 0;
const SLOT_HIGH_RAM: u32 = 1;
const SLOT_SPECIAL: u32 = 2;
const FIRST_OVERLAY_SLOT: u32 = 3;
/// The slot [`GuestMemory::flush_kvm_shadow_mmu`] creates and deletes at
/// once, after the overlay slots.
const SLOT_SHADOW_FLUSH: u32 = FIRST_OVERLAY_SLOT + 2 * POOL_PAGES as u32;
/// The slot of a PV domain's M2P block ([`GuestMemory::map_pv_m2p`]).
const SLOT_PV_M2P: u32 = SLOT_SHADOW_FLUSH + 1;
/// Where that slot goes: a frame far above the RAM of most domains (or the
/// first frame above RAM for a bigger one), the next frames up if a guest
/// put an overlay there.
const SHADOW_FLUSH_GFN: u64 = 0x7f_ffff;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd: {0}")]
    Memfd(nix::Error),
    #[error("sizing guest memory: {0}")]
    Resize(std::io::Error),
    #[error("mapping guest memory: {0}")]
    Mmap(vm_memory::mmap::MmapRegionError),
    #[error("guest memory layout: {0}")]
    Layout(String),
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM_GET_DIRTY_LOG: {0}")]
    DirtyLog(kvm_ioctls::Error),
    #[error("guest memory size {0} MiB is out of range")]
    Size(u64),
}

/// Where each kind of guest memory lives.
#[derive(Debug, Clone)]
pub struct Layout {
    /// RAM ranges as (gpa, bytes).
    pub ram: Vec<(u64, u64)>,
    pub ram_bytes: u64,
}

impl Layout {
    pub fn new(ram_bytes: u64) -> Result<Self, MemoryError> {
        if ram_bytes < 2 << 20 || !ram_bytes.is_multiple_of(PAGE_SIZE as u64) || ram_bytes > 1 << 40
        {
            return Err(MemoryError::Size(ram_bytes >> 20));
        }
        let low = ram_bytes.min(LOW_RAM_END);
        let mut ram = vec![(0, low)];
        if ram_bytes > low {
            ram.push((HIGH_RAM_START, ram_bytes - low));
        }
        Ok(Layout { ram, ram_bytes })
    }

    fn special_offset(&self) -> u64 {
        self.ram_bytes
    }

    /// memfd offset of a pool frame.
    pub fn pool_offset(&self, frame: OverlayFrame) -> u64 {
        let index = match frame {
            OverlayFrame::SharedInfo => 0,
            OverlayFrame::GrantTable(i) => 1 + i as u64,
            OverlayFrame::GrantStatus(i) => 1 + kxen_xen::grant::MAX_GRANT_FRAMES as u64 + i as u64,
        };
        self.ram_bytes + SPECIAL_PAGES * PAGE_SIZE as u64 + index * PAGE_SIZE as u64
    }

    /// memfd offset of the event routing area (never mapped into the guest).
    pub fn routing_offset(&self) -> u64 {
        self.ram_bytes + (SPECIAL_PAGES + POOL_PAGES) * PAGE_SIZE as u64
    }

    fn memfd_size(&self) -> u64 {
        self.routing_offset() + kxen_vmm_api::routing::ROUTING_AREA_SIZE as u64
    }

    /// memfd offset of a RAM GFN.
    pub fn ram_offset(&self, gfn: u64) -> Option<u64> {
        let gpa = gfn << 12;
        let mut offset = 0;
        for &(base, len) in &self.ram {
            if gpa >= base && gpa < base + len {
                return Some(offset + gpa - base);
            }
            offset += len;
        }
        None
    }

    /// The guest's E820 map: low memory, RAM above 1 MiB, the special pages.
    /// RAM below and above 4 GiB, in bytes.
    pub fn ram_split(&self) -> (u64, u64) {
        let low = self.ram_bytes.min(LOW_RAM_END);
        (low, self.ram_bytes - low)
    }

    pub fn memmap(&self) -> Vec<E820Entry> {
        let mut map = vec![E820Entry {
            addr: 0,
            size: 0x9_f000,
            kind: E820_RAM,
        }];
        for &(base, len) in &self.ram {
            let start = base.max(0x10_0000);
            if start < base + len {
                map.push(E820Entry {
                    addr: start,
                    size: base + len - start,
                    kind: E820_RAM,
                });
            }
        }
        // ACPI tables, AP page tables and the MP wakeup mailbox.
        map.push(E820Entry {
            addr: kxen_loader::acpi::FIRMWARE_BASE,
            size: kxen_loader::acpi::FIRMWARE_SIZE,
            kind: E820_RESERVED,
        });
        map.push(E820Entry {
            addr: SPECIAL_BASE_GFN << 12,
            size: SPECIAL_PAGES * PAGE_SIZE as u64,
            kind: E820_RESERVED,
        });
        map.sort_by_key(|e| e.addr);
        map
    }
}

struct Overlay {
    slot: u32,
    frame: OverlayFrame,
}

/// The domain's guest memory.
pub struct GuestMemory {
    pub layout: Layout,
    pub memfd: File,
    pub atomic: GuestMemoryAtomic<GuestMemoryMmap>,
    vm: Arc<VmFd>,
    /// Overlays by GFN.
    overlays: Mutex<BTreeMap<u64, Overlay>>,
    /// The GFNs of a PV domain's M2P block, once mapped.
    pv_m2p: OnceLock<Range<u64>>,
    /// Whether KVM logs guest writes to the memfd slots (a live
    /// migration's pre-copy is running).
    dirty_logging: Mutex<bool>,
}

fn region(file: &File, offset: u64, gpa: u64, len: u64) -> Result<GuestRegionMmap, MemoryError> {
    let file = file.try_clone().map_err(MemoryError::Resize)?;
    let mapping = MmapRegion::from_file(FileOffset::new(file, offset), len as usize)
        .map_err(MemoryError::Mmap)?;
    GuestRegionMmap::new(mapping, GuestAddress(gpa))
        .ok_or_else(|| MemoryError::Layout(format!("region at {gpa:#x} overflows")))
}

impl GuestMemory {
    pub fn new(vm: Arc<VmFd>, ram_bytes: u64) -> Result<Self, MemoryError> {
        let layout = Layout::new(ram_bytes)?;
        let fd = nix::sys::memfd::memfd_create(
            c"kxen-guest-ram",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(MemoryError::Memfd)?;
        let memfd = File::from(fd);
        memfd
            .set_len(layout.memfd_size())
            .map_err(MemoryError::Resize)?;

        let mut regions = Vec::new();
        let mut offset = 0;
        for &(base, len) in &layout.ram {
            regions.push(region(&memfd, offset, base, len)?);
            offset += len;
        }
        regions.push(region(
            &memfd,
            layout.special_offset(),
            SPECIAL_BASE_GFN << 12,
            SPECIAL_PAGES * PAGE_SIZE as u64,
        )?);
        let map = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Layout(e.to_string()))?;

        let memory = GuestMemory {
            layout,
            memfd,
            atomic: GuestMemoryAtomic::new(map.clone()),
            vm,
            overlays: Mutex::new(BTreeMap::new()),
            pv_m2p: OnceLock::new(),
            dirty_logging: Mutex::new(false),
        };
        for (i, r) in map.iter().enumerate() {
            let slot = match (i, r.start_addr().0) {
                (_, a) if a == SPECIAL_BASE_GFN << 12 => SLOT_SPECIAL,
                (0, _) => SLOT_LOW_RAM,
                _ => SLOT_HIGH_RAM,
            };
            memory.set_slot(slot, r.start_addr().0, r.len(), r.as_ptr() as u64)?;
        }
        Ok(memory)
    }

    fn set_slot(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), MemoryError> {
        self.set_slot_flags(slot, gpa, len, host, 0)
    }

    /// The memfd slots (RAM and the special window), in [`Self::regions`]
    /// order: (slot, guest-physical start, length, host address).
    fn memfd_slots(&self) -> Result<Vec<(u32, u64, u64, u64)>, MemoryError> {
        let map = self.atomic.memory();
        self.regions()
            .iter()
            .map(|r| {
                let slot = if r.gpa == SPECIAL_BASE_GFN << 12 {
                    SLOT_SPECIAL
                } else if r.gpa == 0 {
                    SLOT_LOW_RAM
                } else {
                    SLOT_HIGH_RAM
                };
                let host = map
                    .get_host_address(GuestAddress(r.gpa))
                    .map_err(|e| MemoryError::Layout(e.to_string()))?;
                Ok((slot, r.gpa, r.len, host as u64))
            })
            .collect()
    }

    /// Start or stop KVM's dirty logging on the memfd slots (RAM and the
    /// special window), for a live migration's pre-copy. Starting clears
    /// nothing: the first [`Self::take_dirty_log`] reports every write
    /// since the start.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), MemoryError> {
        let mut logging = self.dirty_logging.lock().unwrap_or_else(|e| e.into_inner());
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for (slot, gpa, len, host) in self.memfd_slots()? {
            self.set_slot_flags(slot, gpa, len, host, flags)?;
        }
        *logging = on;
        Ok(())
    }

    /// The pages the guest wrote since dirty logging started or since the
    /// last call, and clear KVM's log: one bitmap per memfd region, in
    /// [`Self::regions`] order, a bit per page (bit i of word w is page
    /// 64w + i of the region). KVM sees only the guest's writes; kxen-vmm's
    /// and Dom0's own writes through the memfd are not in it.
    pub fn take_dirty_log(&self) -> Result<Vec<Vec<u64>>, MemoryError> {
        let logging = self.dirty_logging.lock().unwrap_or_else(|e| e.into_inner());
        if !*logging {
            return Err(MemoryError::Layout("dirty logging is off".into()));
        }
        self.memfd_slots()?
            .into_iter()
            .map(|(slot, _, len, _)| {
                self.vm
                    .get_dirty_log(slot, len as usize)
                    .map_err(MemoryError::DirtyLog)
            })
            .collect()
    }

    fn set_slot_flags(
        &self,
        slot: u32,
        gpa: u64,
        len: u64,
        host: u64,
        flags: u32,
    ) -> Result<(), MemoryError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host` is the start of a mapping of `len` bytes that stays
        // alive as long as any GuestMemoryMmap snapshot holding its region
        // exists; we keep one in `self.atomic` until the slot is deleted
        // (len 0), and KVM only touches the memory through this slot.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(MemoryError::Kvm)
    }

    /// Where RAM and the special pages live in the memfd, for Dom0.
    pub fn regions(&self) -> Vec<kxen_vmm_api::MemfdRegion> {
        let mut out = Vec::new();
        let mut offset = 0;
        for &(gpa, len) in &self.layout.ram {
            out.push(kxen_vmm_api::MemfdRegion { gpa, len, offset });
            offset += len;
        }
        out.push(kxen_vmm_api::MemfdRegion {
            gpa: SPECIAL_BASE_GFN << 12,
            len: SPECIAL_PAGES * PAGE_SIZE as u64,
            offset: self.layout.special_offset(),
        });
        out
    }

    /// The VM, for the in-kernel irqchip and PIT state of a save.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    pub fn snapshot(&self) -> vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap> {
        self.atomic.memory()
    }

    pub fn is_ram(&self, gfn: u64) -> bool {
        self.layout.ram_offset(gfn).is_some()
    }

    /// memfd offset of guest-physical address `gpa`: RAM, the special
    /// window or a pool frame mapped as an overlay.
    pub fn memfd_offset(&self, gpa: u64) -> Option<u64> {
        let gfn = gpa >> 12;
        let in_page = gpa & (PAGE_SIZE as u64 - 1);
        if let Some(off) = self.layout.ram_offset(gfn) {
            return Some(off + in_page);
        }
        if (SPECIAL_BASE_GFN..SPECIAL_BASE_GFN + SPECIAL_PAGES).contains(&gfn) {
            return Some(self.layout.special_offset() + (gpa - (SPECIAL_BASE_GFN << 12)));
        }
        let overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        overlays
            .get(&gfn)
            .map(|o| self.layout.pool_offset(o.frame) + in_page)
    }

    /// Map a pool frame at `gfn` (outside RAM, the special window and a
    /// PV domain's M2P block).
    pub fn map_overlay(&self, gfn: u64, frame: OverlayFrame) -> Result<(), i64> {
        let special = SPECIAL_BASE_GFN..SPECIAL_BASE_GFN + SPECIAL_PAGES;
        let in_m2p = self.pv_m2p.get().is_some_and(|m2p| m2p.contains(&gfn));
        if self.is_ram(gfn) || special.contains(&gfn) || in_m2p {
            return Err(-xen_abi::errno::EINVAL);
        }
        let mut overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = overlays.get(&gfn) {
            return if existing.frame == frame {
                Ok(())
            } else {
                Err(-xen_abi::errno::EBUSY)
            };
        }
        let used: Vec<u32> = overlays.values().map(|o| o.slot).collect();
        let slot = (FIRST_OVERLAY_SLOT..FIRST_OVERLAY_SLOT + 2 * POOL_PAGES as u32)
            .find(|s| !used.contains(s))
            .ok_or(-xen_abi::errno::ENOSPC)?;
        let gpa = gfn << 12;
        let region = region(
            &self.memfd,
            self.layout.pool_offset(frame),
            gpa,
            PAGE_SIZE as u64,
        )
        .map_err(|_| -xen_abi::errno::ENOMEM)?;
        let host = region.as_ptr() as u64;
        {
            let guard = self.atomic.lock().map_err(|_| -xen_abi::errno::EBUSY)?;
            let current = (*self.atomic.memory()).clone();
            let updated = current
                .insert_region(Arc::new(region))
                .map_err(|_| -xen_abi::errno::EINVAL)?;
            guard.replace(updated);
        }
        self.set_slot(slot, gpa, PAGE_SIZE as u64, host)
            .map_err(|_| -xen_abi::errno::ENOMEM)?;
        overlays.insert(gfn, Overlay { slot, frame });
        Ok(())
    }

    pub fn unmap_overlay(&self, gfn: u64) {
        let mut overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        let Some(overlay) = overlays.remove(&gfn) else {
            return;
        };
        let _ = self.set_slot(overlay.slot, gfn << 12, 0, 0);
        if let Ok(guard) = self.atomic.lock() {
            let current = (*self.atomic.memory()).clone();
            if let Ok((updated, _)) =
                current.remove_region(GuestAddress(gfn << 12), PAGE_SIZE as u64)
            {
                guard.replace(updated);
            }
        }
    }

    /// Back `pages` frames from `base_gfn` with zeroed memory of
    /// kxen-vmm's own, for a PV domain's read-only M2P and its page
    /// tables (`crate::pv_m2p`). Not in the memfd: the block is not the
    /// domain's memory and Dom0 never maps it. Once per domain; the block
    /// must lie outside RAM and the special window.
    pub fn map_pv_m2p(&self, base_gfn: u64, pages: u64) -> Result<(), MemoryError> {
        let end = base_gfn
            .checked_add(pages)
            .filter(|&end| pages > 0 && end <= 1 << (52 - 12))
            .ok_or_else(|| {
                MemoryError::Layout(format!("M2P block of {pages} frames at {base_gfn:#x}"))
            })?;
        let clashes = |start: u64, len: u64| start < end << 12 && base_gfn << 12 < start + len;
        let special = (SPECIAL_BASE_GFN << 12, SPECIAL_PAGES * PAGE_SIZE as u64);
        if let Some(&(start, _)) = self
            .layout
            .ram
            .iter()
            .chain([&special])
            .find(|&&(start, len)| clashes(start, len))
        {
            return Err(MemoryError::Layout(format!(
                "M2P block {base_gfn:#x}..{end:#x} overlaps guest memory at {start:#x}"
            )));
        }
        // Hold the overlay lock: no overlay may appear in the block
        // before map_overlay can see it.
        let overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        if overlays.range(base_gfn..end).next().is_some() {
            return Err(MemoryError::Layout(format!(
                "M2P block {base_gfn:#x}..{end:#x} overlaps an overlay"
            )));
        }
        if self.pv_m2p.set(base_gfn..end).is_err() {
            return Err(MemoryError::Layout(
                "the M2P block is mapped already".into(),
            ));
        }
        let len = pages * PAGE_SIZE as u64;
        let mapping = MmapRegion::new(len as usize).map_err(MemoryError::Mmap)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(base_gfn << 12))
            .ok_or_else(|| MemoryError::Layout(format!("M2P block at {base_gfn:#x} overflows")))?;
        let host = region.as_ptr() as u64;
        {
            let guard = self
                .atomic
                .lock()
                .map_err(|e| MemoryError::Layout(format!("guest memory lock: {e}")))?;
            let current = (*self.atomic.memory()).clone();
            let updated = current
                .insert_region(Arc::new(region))
                .map_err(|e| MemoryError::Layout(e.to_string()))?;
            guard.replace(updated);
        }
        drop(overlays);
        self.set_slot(SLOT_PV_M2P, base_gfn << 12, len, host)
    }

    /// Make KVM drop every shadow page table it built from this domain's
    /// page tables, on every vCPU. On hosts where KVM shadows the guest's
    /// paging (PVM), KVM keeps a shadow entry in step with a guest
    /// page-table entry only by trapping guest writes to the table; a PV
    /// MMU write that kxen-vmm makes from user space is not seen, and no
    /// CR3 or CR0/CR4 load through KVM_SET_SREGS resyncs it (measured:
    /// kxen-pv README). Deleting a memory slot does: with KVM's default
    /// KVM_X86_QUIRK_SLOT_ZAP_ALL it marks every shadow page obsolete and
    /// makes each vCPU load fresh roots before it next enters the guest,
    /// which then refaults its translations from the tables as they are
    /// now. So a one-page slot that maps nothing the guest uses is created
    /// and deleted.
    pub fn flush_kvm_shadow_mmu(&self) -> Result<(), MemoryError> {
        // Held across both ioctls: no overlay may take the frame meanwhile.
        let overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        // Above every RAM frame (a domain may be given more than the
        // default frame's 32 GiB), and clear of the guest's overlays.
        let ram_top = self
            .layout
            .ram
            .iter()
            .map(|&(start, len)| (start + len) >> 12)
            .max()
            .unwrap_or(0);
        let gfn = (SHADOW_FLUSH_GFN.max(ram_top)..)
            .find(|gfn| !overlays.contains_key(gfn))
            .unwrap_or(SHADOW_FLUSH_GFN);
        let host = self
            .atomic
            .memory()
            .get_host_address(GuestAddress(SPECIAL_BASE_GFN << 12))
            .map_err(|e| MemoryError::Layout(e.to_string()))? as u64;
        // The slot aliases the first special page; it is gone before any
        // vCPU could touch it (nothing maps its frame anyway).
        self.set_slot(SLOT_SHADOW_FLUSH, gfn << 12, PAGE_SIZE as u64, host)?;
        self.set_slot(SLOT_SHADOW_FLUSH, gfn << 12, 0, 0)
    }

    /// Return a RAM page to the host; it reads back as zeroes.
    pub fn discard_ram(&self, gfn: u64) {
        if let Some(offset) = self.layout.ram_offset(gfn) {
            let _ = fallocate(
                &self.memfd,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                PAGE_SIZE as i64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_above_3g() {
        let l = Layout::new(4 << 30).unwrap();
        assert_eq!(l.ram, vec![(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)]);
        assert_eq!(l.ram_offset(0x10_0000), Some(0xc000_0000));
        assert_eq!(l.ram_offset(0xc_0000), None);
        assert!(Layout::new(1 << 20).is_err());
        assert!(Layout::new((64 << 20) + 1).is_err());
    }

    #[test]
    fn memmap_reserves_special_pages() {
        let map = Layout::new(64 << 20).unwrap().memmap();
        let special = map
            .iter()
            .find(|e| e.addr == SPECIAL_BASE_GFN << 12)
            .unwrap();
        assert_eq!({ special.kind }, E820_RESERVED);
        // The firmware window (ACPI tables, AP page tables, MP mailbox)
        // sits between low memory and RAM above 1 MiB.
        assert_eq!({ map[1].addr }, kxen_loader::acpi::FIRMWARE_BASE);
        assert_eq!({ map[1].kind }, E820_RESERVED);
        assert_eq!({ map[2].addr }, 0x10_0000);
        assert_eq!({ map[2].size }, (64 << 20) - 0x10_0000);
    }
}
