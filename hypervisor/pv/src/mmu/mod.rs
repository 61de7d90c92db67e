//! The PV MMU: Xen's page-type tracking and the hypercalls built on it.
//!
//! Every frame of the domain has a type (none, an L1..L4 page table, a
//! writable page, a descriptor-table page) and a count of the references
//! that hold it in that type. A frame only changes type when its count is
//! zero, so a frame referenced as a page table (by a higher-level table,
//! a pin or a vCPU's base pointer) can never be mapped writable, and a
//! frame mapped writable anywhere can never become a page table. Taking
//! the first page-table reference validates the frame's entries, taking
//! references on what they point at in turn (four levels at most);
//! dropping the last one releases them again.

mod ops;
#[cfg(test)]
mod tests;

use xen_abi::pv::{PTE_RW, PT_ENTRIES};

use crate::effects::{Effects, FlushScope, VcpuMask, MAX_VCPUS};
use crate::error::MmuError;
use crate::memory::MmuMemory;
use crate::pte::{
    adjust_entry, disallowed_bits, entry_mfn, is_hypervisor_l4_slot, is_present, Mfn, PtLevel,
};

/// Most frames a PV domain may have (256 GiB): the frame table costs 16
/// bytes a frame.
pub const MAX_FRAMES: u64 = 1 << 26;

/// `(PADDR_MASK >> PAGE_SHIFT)` for 52-bit physical addresses: the frame
/// Xen reads as "no frame" in an L1 entry, refused as invalid rather than
/// as a privilege problem.
const INVALID_MFN_IN_ENTRY: Mfn = (1 << 40) - 1;

/// The type a frame is held in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Never typed, or last typed so long ago that nothing holds it.
    #[default]
    None,
    PageTable(PtLevel),
    /// Mapped writable by at least one L1 entry (or being written by the
    /// hypervisor on the guest's behalf).
    Writable,
    /// Holds a GDT or LDT the guest registered.
    SegDesc,
}

/// What the MMU knows about one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// The frame's type. With `count` zero it is only the last type it had
    /// (so that a change away from a writable or table type flushes TLBs).
    pub ty: FrameType,
    /// References holding the frame in `ty`.
    pub count: u32,
    /// The guest pinned it (one of the `count` references).
    pub pinned: bool,
    /// The hypervisor keeps this frame: the guest can neither map it nor
    /// use it as a table.
    pub reserved: bool,
}

impl FrameInfo {
    /// The type that references currently hold, if any.
    pub fn held_type(&self) -> Option<FrameType> {
        (self.count > 0).then_some(self.ty)
    }
}

/// One vCPU's MMU state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuMmuState {
    /// The kernel L4 (Xen's guest_table), loaded in kernel mode.
    pub kernel_base: Option<Mfn>,
    /// The user L4 (guest_table_user), loaded in user mode; none until the
    /// guest sets one.
    pub user_base: Option<Mfn>,
    /// LDT linear base (page aligned) and entry count; 0 entries = no LDT.
    pub ldt_base: u64,
    pub ldt_entries: u32,
}

/// A domain's PV MMU parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvMmuConfig {
    /// This domain's id, which it may not name as a foreign domain.
    pub domid: u16,
    /// Frames `0..nr_frames` are the domain's RAM (identity P2M).
    pub nr_frames: u64,
    /// vCPUs of the domain, at most [`MAX_VCPUS`].
    pub max_vcpus: usize,
    /// Xen's `cache_flush_permitted`: the domain has I/O resources, so it
    /// may set cache attributes in L1 entries and flush caches.
    pub cache_flush_permitted: bool,
    /// What every validated L4 holds in the hypervisor's slots 256-271
    /// (e.g. the read-only M2P mapping); the guest's own values there are
    /// overwritten, never validated.
    pub hypervisor_l4_slots: [u64; 16],
    /// Frames outside the domain's RAM that Xen shares with it and lets
    /// it map, writable too (shared_info: Xen's `share_xen_page_with_guest`
    /// pages). They take no type reference and can never be tables.
    pub shared_frames: Vec<Mfn>,
}

impl PvMmuConfig {
    /// A domain of `nr_frames` frames and `max_vcpus` vCPUs, without I/O
    /// rights, with an empty hypervisor region.
    pub fn new(domid: u16, nr_frames: u64, max_vcpus: usize) -> PvMmuConfig {
        PvMmuConfig {
            domid,
            nr_frames,
            max_vcpus,
            cache_flush_permitted: false,
            hypervisor_l4_slots: [0; 16],
            shared_frames: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvMmuConfigError {
    #[error("{0} frames: a PV domain has 1 to {MAX_FRAMES}")]
    FrameCount(u64),
    #[error("{0} vCPUs: a PV domain has 1 to {MAX_VCPUS}")]
    VcpuCount(usize),
    #[error("frame {0:#x} cannot be reserved: it is outside the domain or in use")]
    Reserve(Mfn),
}

/// The result of one call: success or Xen's error, and what the executor
/// must do either way (a failed batch may have applied earlier requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<(), MmuError>,
    pub effects: Effects,
}

impl Outcome {
    /// The hypercall's return value: 0 or `-errno`.
    pub fn return_value(&self) -> i64 {
        self.result
            .as_ref()
            .map_or_else(MmuError::to_return_value, |()| 0)
    }
}

/// The result of a batch (`mmu_update`, `mmuext_op`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    pub result: Result<(), MmuError>,
    /// Requests completed, for the guest's `done` pointer (success count);
    /// `None` when Xen refuses before the batch starts and leaves it as
    /// it was.
    pub done: Option<u32>,
    pub effects: Effects,
}

impl BatchOutcome {
    pub fn return_value(&self) -> i64 {
        self.result
            .as_ref()
            .map_or_else(MmuError::to_return_value, |()| 0)
    }
}

/// The PV MMU state of one domain.
#[derive(Clone, Debug)]
pub struct PvMmu {
    config: PvMmuConfig,
    frames: Vec<FrameInfo>,
    m2p: Vec<u64>,
    vcpus: Vec<VcpuMmuState>,
    /// A frame changed type away from writable or page table since the
    /// last call: every vCPU may hold stale translations through it.
    flush_all_pending: bool,
}

impl PvMmu {
    pub fn new(config: PvMmuConfig) -> Result<PvMmu, PvMmuConfigError> {
        if config.nr_frames == 0 || config.nr_frames > MAX_FRAMES {
            return Err(PvMmuConfigError::FrameCount(config.nr_frames));
        }
        if config.max_vcpus == 0 || config.max_vcpus > MAX_VCPUS {
            return Err(PvMmuConfigError::VcpuCount(config.max_vcpus));
        }
        // In bounds: nr_frames <= MAX_FRAMES fits usize.
        let nr = config.nr_frames as usize;
        Ok(PvMmu {
            frames: vec![FrameInfo::default(); nr],
            // The identity P2M makes the initial M2P the identity too.
            m2p: (0..config.nr_frames).collect(),
            vcpus: vec![VcpuMmuState::default(); config.max_vcpus],
            flush_all_pending: false,
            config,
        })
    }

    pub fn config(&self) -> &PvMmuConfig {
        &self.config
    }

    /// Keep `mfn` for the hypervisor (before the guest uses it).
    pub fn reserve_frame(&mut self, mfn: Mfn) -> Result<(), PvMmuConfigError> {
        match self.frame_index(mfn) {
            Some(i) if self.frames[i].count == 0 => {
                self.frames[i].reserved = true;
                Ok(())
            }
            _ => Err(PvMmuConfigError::Reserve(mfn)),
        }
    }

    pub fn frame(&self, mfn: Mfn) -> Option<FrameInfo> {
        self.frame_index(mfn).map(|i| self.frames[i])
    }

    pub fn vcpu(&self, vcpu: usize) -> Option<&VcpuMmuState> {
        self.vcpus.get(vcpu)
    }

    /// The guest's M2P entry for `mfn` (the pseudo-physical frame it last
    /// set with MMU_MACHPHYS_UPDATE; the identity until then).
    pub fn m2p(&self, mfn: Mfn) -> Option<u64> {
        self.frame_index(mfn).map(|i| self.m2p[i])
    }

    /// The frames held as page tables, with their level and whether the
    /// guest pinned them: what a save's PAGE_DATA types say of each frame
    /// (a restore pins the pinned ones again, which revalidates the whole
    /// tree under them, as libxc's restore does on Xen).
    pub fn page_tables(&self) -> Vec<(Mfn, PtLevel, bool)> {
        self.frames
            .iter()
            .enumerate()
            .filter_map(|(mfn, info)| match info.held_type() {
                Some(FrameType::PageTable(level)) => Some((mfn as Mfn, level, info.pinned)),
                _ => None,
            })
            .collect()
    }

    /// The M2P entries the guest changed from the identity
    /// (MMU_MACHPHYS_UPDATE), as (mfn, pfn).
    pub fn m2p_changes(&self) -> Vec<(Mfn, u64)> {
        self.m2p
            .iter()
            .enumerate()
            .filter(|&(mfn, &pfn)| mfn as u64 != pfn)
            .map(|(mfn, &pfn)| (mfn as Mfn, pfn))
            .collect()
    }

    /// A new MMU of the same domain, with nothing typed, pinned or loaded
    /// and the identity M2P, but the same frames reserved: what a restore
    /// builds the saved domain's tables on.
    pub fn emptied(&self) -> PvMmu {
        let mut fresh = PvMmu {
            frames: vec![FrameInfo::default(); self.frames.len()],
            m2p: (0..self.config.nr_frames).collect(),
            vcpus: vec![VcpuMmuState::default(); self.config.max_vcpus],
            flush_all_pending: true,
            config: self.config.clone(),
        };
        for (fresh, old) in fresh.frames.iter_mut().zip(&self.frames) {
            fresh.reserved = old.reserved;
        }
        fresh
    }

    fn frame_index(&self, mfn: Mfn) -> Option<usize> {
        (mfn < self.config.nr_frames).then_some(mfn as usize)
    }

    /// The index of a frame of guest RAM (not reserved), or BadFrame.
    fn ram_frame(&self, mfn: Mfn) -> Result<usize, MmuError> {
        match self.frame_index(mfn) {
            Some(i) if !self.frames[i].reserved => Ok(i),
            _ => Err(MmuError::BadFrame { mfn }),
        }
    }

    fn all_vcpus(&self) -> VcpuMask {
        VcpuMask::first(self.config.max_vcpus)
    }

    /// Hand a pending type-change flush to `effects`.
    fn take_pending_flush(&mut self, effects: &mut Effects) {
        if std::mem::take(&mut self.flush_all_pending) {
            effects.add_flush(self.all_vcpus(), FlushScope::Full);
        }
    }

    // ---- type references ---------------------------------------------------

    /// Take one reference holding `mfn` as `want`, validating it when it
    /// becomes a page table.
    fn get_type<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        mfn: Mfn,
        want: FrameType,
    ) -> Result<(), MmuError> {
        let i = self.ram_frame(mfn)?;
        let info = self.frames[i];
        if info.count > 0 {
            if info.ty != want {
                return Err(MmuError::TypeConflict {
                    mfn,
                    have: info.ty,
                    want,
                });
            }
            self.frames[i].count = info
                .count
                .checked_add(1)
                .ok_or(MmuError::CountOverflow { mfn })?;
            return Ok(());
        }
        if info.ty != want && matches!(info.ty, FrameType::Writable | FrameType::PageTable(_)) {
            self.flush_all_pending = true;
        }
        self.frames[i].ty = want;
        self.frames[i].count = 1;
        if let FrameType::PageTable(level) = want {
            if let Err(error) = self.validate(mem, mfn, level) {
                self.frames[i].count = 0;
                self.frames[i].ty = FrameType::None;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Drop one reference to `mfn`'s type; the last one of a page table
    /// releases what its entries reference.
    fn put_type<M: MmuMemory>(&mut self, mem: &mut M, mfn: Mfn) {
        let Some(i) = self.frame_index(mfn) else {
            tracing::error!(
                mfn,
                "PV MMU: type reference dropped on a frame outside the domain"
            );
            return;
        };
        let info = self.frames[i];
        if info.count == 0 {
            tracing::error!(mfn, ?info.ty, "PV MMU: type reference dropped below zero");
            return;
        }
        self.frames[i].count -= 1;
        if self.frames[i].count == 0 {
            self.frames[i].pinned = false;
            if let FrameType::PageTable(level) = info.ty {
                self.devalidate(mem, mfn, level);
            }
        }
    }

    /// Take the references that one present entry of a `level` table
    /// needs: the next-level table type for L2-L4, the writable type of the
    /// mapped frame for a writable L1 entry.
    fn get_entry_ref<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        level: PtLevel,
        entry: u64,
    ) -> Result<(), MmuError> {
        let bits = entry & disallowed_bits(level, self.config.cache_flush_permitted);
        if bits != 0 {
            return Err(MmuError::DisallowedBits { level, entry, bits });
        }
        let mfn = entry_mfn(entry);
        match level.child() {
            Some(child) => self.get_type(mem, mfn, FrameType::PageTable(child)),
            None if self.config.shared_frames.contains(&mfn) => Ok(()),
            None => {
                let Some(i) = self.frame_index(mfn) else {
                    // Not RAM: Xen's MMIO path, closed to a domain without
                    // I/O rights.
                    return Err(if mfn == INVALID_MFN_IN_ENTRY {
                        MmuError::BadFrame { mfn }
                    } else {
                        MmuError::MmioNotPermitted { mfn }
                    });
                };
                if self.frames[i].reserved {
                    return Err(MmuError::HypervisorFrame { mfn });
                }
                if entry & PTE_RW == 0 {
                    return Ok(());
                }
                self.get_type(mem, mfn, FrameType::Writable)
                    .map_err(|error| match error {
                        MmuError::TypeConflict { mfn, have, .. } => {
                            MmuError::WritableMappingRefused { mfn, have }
                        }
                        other => other,
                    })
            }
        }
    }

    /// Release what [`Self::get_entry_ref`] took for `entry`.
    fn put_entry_ref<M: MmuMemory>(&mut self, mem: &mut M, level: PtLevel, entry: u64) {
        if !is_present(entry) {
            return;
        }
        let mfn = entry_mfn(entry);
        match level.child() {
            Some(_) => self.put_type(mem, mfn),
            None if entry & PTE_RW != 0
                && self
                    .frame_index(mfn)
                    .is_some_and(|i| !self.frames[i].reserved) =>
            {
                self.put_type(mem, mfn);
            }
            None => {}
        }
    }

    /// Whether entry `index` of a `level` table is the guest's (and so
    /// validated and referenced).
    fn is_guest_slot(level: PtLevel, index: usize) -> bool {
        level != PtLevel::L4 || !is_hypervisor_l4_slot(index)
    }

    /// Validate a frame that just became a `level` table: reference what
    /// every present entry points at, or release what was taken and fail.
    /// On success the accepted entries are rewritten adjusted, and an L4
    /// gets the hypervisor's slots.
    fn validate<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        mfn: Mfn,
        level: PtLevel,
    ) -> Result<(), MmuError> {
        let entries = mem.read_table(mfn);
        for (index, &entry) in entries.iter().enumerate() {
            if !Self::is_guest_slot(level, index) {
                continue;
            }
            if !is_present(entry) {
                continue;
            }
            if let Err(error) = self.get_entry_ref(mem, level, entry) {
                tracing::debug!(mfn, %level, index, entry, %error, "PV MMU: table refused");
                for undo in (0..index).rev() {
                    if Self::is_guest_slot(level, undo) {
                        let taken = mem.read_entry(mfn, undo);
                        self.put_entry_ref(mem, level, taken);
                    }
                }
                return Err(error);
            }
            let adjusted = adjust_entry(level, entry);
            if adjusted != entry {
                mem.write_entry(mfn, index, adjusted);
            }
        }
        if level == PtLevel::L4 {
            for (slot, &value) in self.config.hypervisor_l4_slots.iter().enumerate() {
                mem.write_entry(mfn, *xen_abi::pv::HYPERVISOR_L4_SLOTS.start() + slot, value);
            }
        }
        Ok(())
    }

    /// Release the references of a table whose last type reference went.
    fn devalidate<M: MmuMemory>(&mut self, mem: &mut M, mfn: Mfn, level: PtLevel) {
        let entries = mem.read_table(mfn);
        for (index, &entry) in entries.iter().enumerate() {
            if Self::is_guest_slot(level, index) {
                self.put_entry_ref(mem, level, entry);
            }
        }
    }

    /// Hold `mfn` as a descriptor-table page (for set_gdt and the LDT);
    /// Xen answers -EINVAL when it cannot be.
    pub fn get_segdesc<M: MmuMemory>(&mut self, mem: &mut M, mfn: Mfn) -> Result<(), MmuError> {
        self.get_type(mem, mfn, FrameType::SegDesc)
    }

    /// Drop a reference taken by [`Self::get_segdesc`].
    pub fn put_segdesc<M: MmuMemory>(&mut self, mem: &mut M, mfn: Mfn) {
        if self.frame(mfn).and_then(|f| f.held_type()) == Some(FrameType::SegDesc) {
            self.put_type(mem, mfn);
        }
    }

    // ---- checking ----------------------------------------------------------

    /// Recount every reference from the tables, pins and base pointers and
    /// compare with the frame table: the invariants the fuzz target and the
    /// tests check after every operation. Descriptor-table references are
    /// the executor's, so those frames are only checked not to be mapped
    /// writable.
    pub fn check_invariants<M: MmuMemory>(&self, mem: &M) -> Result<(), String> {
        let nr = self.frames.len();
        let mut table_refs = vec![0u64; nr];
        let mut writable_refs = vec![0u64; nr];
        for (i, info) in self.frames.iter().enumerate() {
            if info.pinned {
                if info.count == 0 || !matches!(info.ty, FrameType::PageTable(_)) {
                    return Err(format!("frame {i:#x} pinned but holds {info:?}"));
                }
                table_refs[i] += 1;
            }
            let Some(FrameType::PageTable(level)) = info.held_type() else {
                continue;
            };
            if info.reserved {
                return Err(format!("reserved frame {i:#x} is a page table"));
            }
            for index in 0..PT_ENTRIES {
                if !Self::is_guest_slot(level, index) {
                    continue;
                }
                let entry = mem.read_entry(i as Mfn, index);
                if !is_present(entry) {
                    continue;
                }
                if entry & disallowed_bits(level, self.config.cache_flush_permitted) != 0 {
                    return Err(format!("{level} {i:#x}[{index}] = {entry:#x} has bad bits"));
                }
                if adjust_entry(level, entry) != entry {
                    return Err(format!("{level} {i:#x}[{index}] = {entry:#x} not adjusted"));
                }
                let target = entry_mfn(entry);
                let Some(t) = self.frame_index(target) else {
                    return Err(format!("{level} {i:#x}[{index}] points outside the domain"));
                };
                match level.child() {
                    Some(child) => {
                        if self.frames[t].held_type() != Some(FrameType::PageTable(child)) {
                            return Err(format!(
                                "{level} {i:#x}[{index}] -> {t:#x}, held as {:?}",
                                self.frames[t].held_type()
                            ));
                        }
                        table_refs[t] += 1;
                    }
                    None if entry & PTE_RW != 0 => writable_refs[t] += 1,
                    None => {}
                }
            }
        }
        for vcpu in &self.vcpus {
            for base in [vcpu.kernel_base, vcpu.user_base].into_iter().flatten() {
                let Some(b) = self.frame_index(base) else {
                    return Err(format!("base pointer {base:#x} outside the domain"));
                };
                if self.frames[b].held_type() != Some(FrameType::PageTable(PtLevel::L4)) {
                    return Err(format!("base pointer {base:#x} is not a held L4"));
                }
                table_refs[b] += 1;
            }
        }
        for (i, info) in self.frames.iter().enumerate() {
            let (tables, writable) = (table_refs[i], writable_refs[i]);
            match info.held_type() {
                Some(FrameType::PageTable(_)) => {
                    if writable != 0 {
                        return Err(format!("table {i:#x} mapped writable {writable} times"));
                    }
                    if u64::from(info.count) != tables {
                        return Err(format!(
                            "table {i:#x}: count {} but {tables} refs",
                            info.count
                        ));
                    }
                }
                Some(FrameType::Writable) if u64::from(info.count) != writable || tables != 0 => {
                    return Err(format!(
                        "writable {i:#x}: count {} but {writable} writable and {tables} table refs",
                        info.count
                    ));
                }
                Some(FrameType::SegDesc) if writable != 0 || tables != 0 => {
                    return Err(format!(
                        "descriptor frame {i:#x} is mapped writable or as a table"
                    ));
                }
                None if writable != 0 || tables != 0 => {
                    return Err(format!("untyped frame {i:#x} has {writable}+{tables} refs"));
                }
                _ => {}
            }
            if info.reserved && (writable != 0 || tables != 0 || info.count != 0) {
                return Err(format!("reserved frame {i:#x} is referenced"));
            }
        }
        Ok(())
    }
}
