//! The PV MMU hypercalls: `mmu_update`, `mmuext_op`, `update_va_mapping`
//! (and its `_otherdomain` form), each as Xen's x86 `mm.c` behaves for a
//! 64-bit PV domain without privileges over others.

use xen_abi::pv::{
    MmuUpdate, MmuextOp, MAX_LDT_ENTRIES, MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_FLUSH_CACHE,
    MMUEXT_FLUSH_CACHE_GLOBAL, MMUEXT_INVLPG_ALL, MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI,
    MMUEXT_MARK_SUPER, MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE,
    MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE, MMUEXT_SET_LDT,
    MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI, MMUEXT_UNMARK_SUPER,
    MMUEXT_UNPIN_TABLE, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_NO_TRANSLATE,
    MMU_PT_UPDATE_PRESERVE_AD, MMU_UPDATE_CMD_MASK, PTE_ACCESSED, PTE_DIRTY, PTE_PRESENT, PTE_PSE,
    UVMF_ALL, UVMF_FLUSHTYPE_MASK, UVMF_INVLPG, UVMF_LOCAL, UVMF_TLB_FLUSH,
};
use xen_abi::DOMID_SELF;

use super::{BatchOutcome, FrameType, Outcome, PvMmu};
use crate::effects::{Effects, FlushScope, VcpuMask};
use crate::error::MmuError;
use crate::memory::MmuMemory;
use crate::pte::{
    adjust_entry, disallowed_bits, entry_mfn, is_canonical, is_guest_address,
    is_hypervisor_l4_slot, is_present, Mfn, PtLevel,
};

const MMU_UPDATE_SIZE: u64 = 16;
const MMUEXT_OP_SIZE: u64 = 24;

/// Who a batch acts for, from its `foreigndom` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The calling domain.
    This,
    /// Another domain: we hold no privileges over any, so the first
    /// request is refused as Xen's XSM check refuses it.
    Other(u32),
}

impl PvMmu {
    /// Xen's `get_pg_owner`: DOMID_SELF is the caller, the caller's own id
    /// is refused (-ESRCH), anything else is another domain.
    fn page_owner(&self, domid: u16) -> Result<Owner, MmuError> {
        if domid == self.config.domid {
            Err(MmuError::SelfAsForeign {
                domid: u32::from(domid),
            })
        } else if domid == DOMID_SELF {
            Ok(Owner::This)
        } else {
            Ok(Owner::Other(u32::from(domid)))
        }
    }

    fn check_vcpu(&self, vcpu: usize) -> Result<(), MmuError> {
        if vcpu < self.vcpus.len() {
            Ok(())
        } else {
            Err(MmuError::NoSuchVcpu { vcpu })
        }
    }

    /// Xen's `guest_handle_okay` for an array of `count` elements of
    /// `size` bytes at `va`.
    fn array_ok(va: u64, count: u32, size: u64) -> bool {
        u64::from(count).checked_mul(size).is_some() && is_guest_address(va)
    }

    // ---- entry updates -----------------------------------------------------

    /// Write `new` into entry `index` of the `level` table `table`, checked
    /// as Xen's `mod_lN_entry`: refuse bad bits and anything the new entry
    /// cannot reference, adjust it, keep A/D when asked, then release what
    /// the old entry referenced.
    fn mod_entry<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        table: Mfn,
        level: PtLevel,
        index: usize,
        new: u64,
        preserve_ad: bool,
    ) -> Result<(), MmuError> {
        if level == PtLevel::L4 && is_hypervisor_l4_slot(index) {
            return Err(MmuError::HypervisorSlot { slot: index });
        }
        let old = mem.read_entry(table, index);
        let mut new = new;
        if is_present(new) {
            let bits = new & disallowed_bits(level, self.config.cache_flush_permitted);
            if bits != 0 {
                return Err(MmuError::DisallowedBits {
                    level,
                    entry: new,
                    bits,
                });
            }
            new = adjust_entry(level, new);
            self.get_entry_ref(mem, level, new)?;
        }
        if preserve_ad {
            new |= old & (PTE_ACCESSED | PTE_DIRTY);
        }
        if level == PtLevel::L1 {
            mem.write_leaf_entry(table, index, new, old);
        } else {
            mem.write_entry(table, index, new);
        }
        self.put_entry_ref(mem, level, old);
        Ok(())
    }

    /// One `mmu_update` request. `flush_tables` is set when an L2-L4 entry
    /// changed, which makes Xen flush every vCPU's TLB at the end.
    fn mmu_update_request<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        req: MmuUpdate,
        flush_tables: &mut bool,
    ) -> Result<(), MmuError> {
        tracing::trace!(ptr = req.ptr, val = req.val, "mmu_update request");
        let cmd = req.ptr & MMU_UPDATE_CMD_MASK;
        match cmd {
            MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD | MMU_PT_UPDATE_NO_TRANSLATE => {
                let entry_addr = req.ptr & !MMU_UPDATE_CMD_MASK;
                let mfn = entry_addr >> 12;
                let index = ((entry_addr & 0xfff) >> 3) as usize;
                let i = self.ram_frame(mfn)?;
                let info = self.frames[i];
                let preserve_ad = cmd == MMU_PT_UPDATE_PRESERVE_AD;
                match info.held_type() {
                    Some(FrameType::PageTable(level)) => {
                        self.mod_entry(mem, mfn, level, index, req.val, preserve_ad)?;
                        if level != PtLevel::L1 {
                            *flush_tables = true;
                        }
                        Ok(())
                    }
                    Some(FrameType::Writable) => {
                        mem.write_entry(mfn, index, req.val);
                        Ok(())
                    }
                    Some(have) => Err(MmuError::NotUpdatable { mfn, have }),
                    // Nothing holds the frame: Xen takes a writable
                    // reference for the write and drops it again.
                    None => {
                        self.get_type(mem, mfn, FrameType::Writable)?;
                        mem.write_entry(mfn, index, req.val);
                        self.put_type(mem, mfn);
                        Ok(())
                    }
                }
            }
            MMU_MACHPHYS_UPDATE => {
                let mfn = req.ptr >> 12;
                let i = self.ram_frame(mfn)?;
                // With kxen's identity P2M the M2P is only what the guest
                // reads back: nothing here translates through it.
                self.m2p[i] = req.val;
                mem.m2p_updated(mfn, req.val);
                Ok(())
            }
            _ => Err(MmuError::UnknownCommand { cmd }),
        }
    }

    /// Apply one `mmu_update` request outside a batch: an executor's
    /// emulated write to a page table, or an in-guest fast path.
    pub fn mmu_update_one<M: MmuMemory>(&mut self, mem: &mut M, req: MmuUpdate) -> Outcome {
        let mut flush_tables = false;
        let result = self.mmu_update_request(mem, req, &mut flush_tables);
        let mut effects = Effects::default();
        if flush_tables {
            effects.add_flush(self.all_vcpus(), FlushScope::Full);
        }
        self.take_pending_flush(&mut effects);
        Outcome { result, effects }
    }

    /// `mmu_update(ureqs, count, done, foreigndom)` from `vcpu`: `count`
    /// requests read from guest-virtual `ureqs`, stopping at the first
    /// failure; `done` says how many succeeded.
    pub fn mmu_update<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        ureqs: u64,
        count: u32,
        foreigndom: u32,
    ) -> BatchOutcome {
        let refused = |error| BatchOutcome {
            result: Err(error),
            done: None,
            effects: Effects::default(),
        };
        if let Err(error) = self.check_vcpu(vcpu) {
            return refused(error);
        }
        if !Self::array_ok(ureqs, count, MMU_UPDATE_SIZE) {
            return refused(MmuError::GuestFault { va: ureqs });
        }
        // Bits 31:16 name the page-table owner plus one (0: the caller),
        // bits 15:0 the data page owner.
        let table_owner = match foreigndom >> 16 {
            0 => Owner::This,
            id if id - 1 == u32::from(self.config.domid) => Owner::This,
            id => Owner::Other(id - 1),
        };
        let page_owner = match self.page_owner(foreigndom as u16) {
            Ok(owner) => owner,
            Err(error) => return refused(error),
        };
        let mut effects = Effects::default();
        let mut flush_tables = false;
        let mut done = 0u32;
        let mut result = Ok(());
        for i in 0..count {
            let at = ureqs.wrapping_add(u64::from(i) * MMU_UPDATE_SIZE);
            let req = match (
                mem.read_guest_u64(at),
                mem.read_guest_u64(at.wrapping_add(8)),
            ) {
                (Some(ptr), Some(val)) => MmuUpdate { ptr, val },
                _ => {
                    result = Err(MmuError::GuestFault { va: at });
                    break;
                }
            };
            if let Owner::Other(domid) = table_owner.min_other(page_owner) {
                result = Err(MmuError::ForeignDomain { domid });
                break;
            }
            if let Err(error) = self.mmu_update_request(mem, req, &mut flush_tables) {
                tracing::debug!(vcpu, i, ptr = req.ptr, val = req.val, %error, "mmu_update refused");
                result = Err(error);
                break;
            }
            done += 1;
        }
        if flush_tables {
            effects.add_flush(self.all_vcpus(), FlushScope::Full);
        }
        self.take_pending_flush(&mut effects);
        BatchOutcome {
            result,
            done: Some(done),
            effects,
        }
    }

    // ---- mmuext_op ---------------------------------------------------------

    /// Read the vCPU bitmap at `va` as Xen does: one 64-bit word per 64
    /// vCPUs, no further than the domain's vCPU count.
    fn read_vcpumask<M: MmuMemory>(&self, mem: &mut M, va: u64) -> Option<VcpuMask> {
        let mut mask = VcpuMask::default();
        let nr = self.config.max_vcpus;
        for word in 0..nr.div_ceil(64) {
            let bits = mem.read_guest_u64(va.wrapping_add(8 * word as u64))?;
            for bit in 0..64 {
                let vcpu = word * 64 + bit;
                if vcpu < nr && bits & (1 << bit) != 0 {
                    mask.insert(vcpu);
                }
            }
        }
        Some(mask)
    }

    /// Pin `mfn` as a `level` table (MMUEXT_PIN_Ln_TABLE).
    pub fn pin<M: MmuMemory>(&mut self, mem: &mut M, level: PtLevel, mfn: Mfn) -> Outcome {
        let result = self.pin_table(mem, level, mfn);
        self.finish(result, Effects::default())
    }

    fn pin_table<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        level: PtLevel,
        mfn: Mfn,
    ) -> Result<(), MmuError> {
        let i = self.ram_frame(mfn)?;
        self.get_type(mem, mfn, FrameType::PageTable(level))?;
        if self.frames[i].pinned {
            self.put_type(mem, mfn);
            return Err(MmuError::AlreadyPinned { mfn });
        }
        self.frames[i].pinned = true;
        Ok(())
    }

    fn unpin_table<M: MmuMemory>(&mut self, mem: &mut M, mfn: Mfn) -> Result<(), MmuError> {
        let i = self.ram_frame(mfn)?;
        if !self.frames[i].pinned {
            return Err(MmuError::NotPinned { mfn });
        }
        self.frames[i].pinned = false;
        self.put_type(mem, mfn);
        Ok(())
    }

    /// MMUEXT_NEW_BASEPTR: `mfn` becomes the vCPU's kernel L4.
    fn new_baseptr<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        mfn: Mfn,
        effects: &mut Effects,
    ) -> Result<(), MmuError> {
        let old = self.vcpus[vcpu].kernel_base;
        if old == Some(mfn) {
            // Xen reloads CR3 all the same.
            effects.base_changed = true;
            return Ok(());
        }
        self.get_type(mem, mfn, FrameType::PageTable(PtLevel::L4))?;
        self.vcpus[vcpu].kernel_base = Some(mfn);
        if let Some(old) = old {
            self.put_type(mem, old);
        }
        effects.base_changed = true;
        Ok(())
    }

    /// MMUEXT_NEW_USER_BASEPTR: `mfn` (0: none) becomes the user L4.
    fn new_user_baseptr<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        mfn: Mfn,
        effects: &mut Effects,
    ) -> Result<(), MmuError> {
        let old = self.vcpus[vcpu].user_base;
        let new = (mfn != 0).then_some(mfn);
        if old == new {
            return Ok(());
        }
        if let Some(new) = new {
            self.get_type(mem, new, FrameType::PageTable(PtLevel::L4))?;
        }
        self.vcpus[vcpu].user_base = new;
        if let Some(old) = old {
            self.put_type(mem, old);
        }
        effects.base_changed = true;
        Ok(())
    }

    /// Take a frame as writable for the hypervisor's own write
    /// (CLEAR_PAGE, COPY_PAGE destination); Xen answers -EINVAL.
    fn get_writable_for_write<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        mfn: Mfn,
    ) -> Result<(), MmuError> {
        self.get_type(mem, mfn, FrameType::Writable)
            .map_err(|error| match error {
                MmuError::TypeConflict { mfn, have, .. } => MmuError::NotWritable { mfn, have },
                other => other,
            })
    }

    fn mmuext_request<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        op: MmuextOp,
        effects: &mut Effects,
    ) -> Result<(), MmuError> {
        tracing::trace!(
            vcpu,
            cmd = op.cmd,
            arg1 = op.arg1,
            arg2 = op.arg2,
            "mmuext request"
        );
        let this_vcpu = VcpuMask::single(vcpu);
        match op.cmd {
            MMUEXT_PIN_L1_TABLE..=MMUEXT_PIN_L4_TABLE => {
                let level = match op.cmd {
                    MMUEXT_PIN_L1_TABLE => PtLevel::L1,
                    MMUEXT_PIN_L2_TABLE => PtLevel::L2,
                    MMUEXT_PIN_L3_TABLE => PtLevel::L3,
                    _ => PtLevel::L4,
                };
                self.pin_table(mem, level, op.arg1)
            }
            MMUEXT_UNPIN_TABLE => self.unpin_table(mem, op.arg1),
            MMUEXT_NEW_BASEPTR => self.new_baseptr(mem, vcpu, op.arg1, effects),
            MMUEXT_NEW_USER_BASEPTR => self.new_user_baseptr(mem, vcpu, op.arg1, effects),
            MMUEXT_TLB_FLUSH_LOCAL => {
                effects.add_flush(this_vcpu, FlushScope::Full);
                Ok(())
            }
            MMUEXT_INVLPG_LOCAL => {
                if is_canonical(op.arg1) {
                    effects.add_flush(this_vcpu, FlushScope::Pages(vec![op.arg1]));
                }
                Ok(())
            }
            MMUEXT_TLB_FLUSH_MULTI | MMUEXT_INVLPG_MULTI => {
                let mask = self
                    .read_vcpumask(mem, op.arg2)
                    .ok_or(MmuError::BadVcpuMask { va: op.arg2 })?;
                if op.cmd == MMUEXT_TLB_FLUSH_MULTI {
                    effects.add_flush(mask, FlushScope::Full);
                } else if is_guest_address(op.arg1) {
                    effects.add_flush(mask, FlushScope::Pages(vec![op.arg1]));
                }
                Ok(())
            }
            MMUEXT_TLB_FLUSH_ALL => {
                effects.add_flush(self.all_vcpus(), FlushScope::Full);
                Ok(())
            }
            MMUEXT_INVLPG_ALL => {
                if is_guest_address(op.arg1) {
                    effects.add_flush(self.all_vcpus(), FlushScope::Pages(vec![op.arg1]));
                }
                Ok(())
            }
            MMUEXT_FLUSH_CACHE | MMUEXT_FLUSH_CACHE_GLOBAL => {
                if !self.config.cache_flush_permitted {
                    return Err(MmuError::CacheFlushNotPermitted);
                }
                effects.flush_cache = true;
                Ok(())
            }
            MMUEXT_SET_LDT => {
                // The entry count is the low half of the 8-byte union.
                let entries = op.arg2 as u32;
                let base = if entries == 0 { 0 } else { op.arg1 };
                if entries > MAX_LDT_ENTRIES
                    || (entries != 0 && (base & 0xfff != 0 || !is_guest_address(base)))
                {
                    return Err(MmuError::BadLdt { base, entries });
                }
                let state = &mut self.vcpus[vcpu];
                if state.ldt_base != base || state.ldt_entries != entries {
                    state.ldt_base = base;
                    state.ldt_entries = entries;
                    effects.ldt_changed = true;
                }
                Ok(())
            }
            MMUEXT_CLEAR_PAGE => {
                let mfn = op.arg1;
                self.ram_frame(mfn)?;
                self.get_writable_for_write(mem, mfn)?;
                mem.clear_frame(mfn);
                self.put_type(mem, mfn);
                Ok(())
            }
            MMUEXT_COPY_PAGE => {
                let (dst, src) = (op.arg1, op.arg2);
                self.ram_frame(src)?;
                self.ram_frame(dst)?;
                self.get_writable_for_write(mem, dst)?;
                mem.copy_frame(dst, src);
                self.put_type(mem, dst);
                Ok(())
            }
            MMUEXT_MARK_SUPER | MMUEXT_UNMARK_SUPER => Err(MmuError::Unsupported { cmd: op.cmd }),
            cmd => Err(MmuError::UnknownCommand {
                cmd: u64::from(cmd),
            }),
        }
    }

    /// Apply one `mmuext_op` outside a batch (the executor's own setup,
    /// e.g. pinning the boot L4 and loading it, or an in-guest path).
    pub fn mmuext_one<M: MmuMemory>(&mut self, mem: &mut M, vcpu: usize, op: MmuextOp) -> Outcome {
        let mut effects = Effects::default();
        let result = self
            .check_vcpu(vcpu)
            .and_then(|()| self.mmuext_request(mem, vcpu, op, &mut effects));
        self.finish(result, effects)
    }

    /// `mmuext_op(uops, count, done, foreigndom)` from `vcpu`.
    pub fn mmuext_op<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        uops: u64,
        count: u32,
        foreigndom: u32,
    ) -> BatchOutcome {
        let refused = |error| BatchOutcome {
            result: Err(error),
            done: None,
            effects: Effects::default(),
        };
        if let Err(error) = self.check_vcpu(vcpu) {
            return refused(error);
        }
        if !Self::array_ok(uops, count, MMUEXT_OP_SIZE) {
            return refused(MmuError::GuestFault { va: uops });
        }
        match self.page_owner(foreigndom as u16) {
            Ok(Owner::This) => {}
            Ok(Owner::Other(domid)) => return refused(MmuError::ForeignDomain { domid }),
            Err(error) => return refused(error),
        }
        let mut effects = Effects::default();
        let mut done = 0u32;
        let mut result = Ok(());
        for i in 0..count {
            let at = uops.wrapping_add(u64::from(i) * MMUEXT_OP_SIZE);
            let words = (
                mem.read_guest_u64(at),
                mem.read_guest_u64(at.wrapping_add(8)),
                mem.read_guest_u64(at.wrapping_add(16)),
            );
            let (Some(first), Some(arg1), Some(arg2)) = words else {
                result = Err(MmuError::GuestFault { va: at });
                break;
            };
            let op = MmuextOp {
                cmd: first as u32,
                pad: (first >> 32) as u32,
                arg1,
                arg2,
            };
            if let Err(error) = self.mmuext_request(mem, vcpu, op, &mut effects) {
                tracing::debug!(vcpu, i, cmd = op.cmd, arg1, arg2, %error, "mmuext_op refused");
                result = Err(error);
                break;
            }
            done += 1;
        }
        self.take_pending_flush(&mut effects);
        BatchOutcome {
            result,
            done: Some(done),
            effects,
        }
    }

    fn finish(&mut self, result: Result<(), MmuError>, mut effects: Effects) -> Outcome {
        self.take_pending_flush(&mut effects);
        Outcome { result, effects }
    }

    // ---- update_va_mapping ---------------------------------------------------

    /// The L1 table and index that map `va` in the vCPU's kernel L4, found
    /// by walking the validated tables in software as Xen's linear map
    /// does: every level present, no superpage, and an L1 that is held as
    /// one.
    fn l1_for_address<M: MmuMemory>(
        &self,
        mem: &M,
        vcpu: usize,
        va: u64,
    ) -> Result<(Mfn, usize), MmuError> {
        let missing = MmuError::NoL1ForAddress { va };
        if !is_guest_address(va) {
            return Err(MmuError::BadAddress { va });
        }
        let mut table = self.vcpus[vcpu].kernel_base.ok_or(missing.clone())?;
        for level in [PtLevel::L4, PtLevel::L3, PtLevel::L2] {
            if self.frame_index(table).is_none() {
                return Err(missing);
            }
            let entry = mem.read_entry(table, level.index_of(va));
            if entry & (PTE_PRESENT | PTE_PSE) != PTE_PRESENT {
                return Err(missing);
            }
            table = entry_mfn(entry);
        }
        match self.frame(table).and_then(|f| f.held_type()) {
            Some(FrameType::PageTable(PtLevel::L1)) => Ok((table, PtLevel::L1.index_of(va))),
            _ => Err(missing),
        }
    }

    /// `update_va_mapping(va, val, flags)` from `vcpu`.
    pub fn update_va_mapping<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        va: u64,
        val: u64,
        flags: u64,
    ) -> Outcome {
        let mut effects = Effects::default();
        let result = self.update_va_mapping_inner(mem, vcpu, va, val, flags, &mut effects);
        self.finish(result, effects)
    }

    fn update_va_mapping_inner<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        va: u64,
        val: u64,
        flags: u64,
        effects: &mut Effects,
    ) -> Result<(), MmuError> {
        self.check_vcpu(vcpu)?;
        let (l1, index) = self.l1_for_address(mem, vcpu, va)?;
        self.mod_entry(mem, l1, PtLevel::L1, index, val, false)?;
        let scope = match flags & UVMF_FLUSHTYPE_MASK {
            UVMF_TLB_FLUSH => FlushScope::Full,
            UVMF_INVLPG => FlushScope::Pages(vec![va]),
            // UVMF_NONE, and 3, which Xen also ignores.
            _ => return Ok(()),
        };
        let vcpus = match flags & !UVMF_FLUSHTYPE_MASK {
            UVMF_LOCAL => VcpuMask::single(vcpu),
            UVMF_ALL => self.all_vcpus(),
            // Any other value is the address of a vCPU bitmap. If it cannot
            // be read, the entry stays updated and the call fails.
            bitmap => self
                .read_vcpumask(mem, bitmap)
                .ok_or(MmuError::GuestFault { va: bitmap })?,
        };
        effects.add_flush(vcpus, scope);
        Ok(())
    }

    /// `update_va_mapping_otherdomain(va, val, flags, domid)`. DOMID_SELF
    /// acts as `update_va_mapping`; the caller's own id is refused with
    /// -ESRCH as Xen's `get_pg_owner` does; another domain is refused with
    /// -EPERM (Xen's XSM answer for a domain without privileges over it)
    /// when `other_domain_exists`, else -ESRCH.
    #[allow(clippy::too_many_arguments)]
    pub fn update_va_mapping_otherdomain<M: MmuMemory>(
        &mut self,
        mem: &mut M,
        vcpu: usize,
        va: u64,
        val: u64,
        flags: u64,
        domid: u16,
        other_domain_exists: bool,
    ) -> Outcome {
        match self.page_owner(domid) {
            Ok(Owner::This) => self.update_va_mapping(mem, vcpu, va, val, flags),
            Ok(Owner::Other(domid)) => Outcome {
                result: Err(if other_domain_exists {
                    MmuError::ForeignDomain { domid }
                } else {
                    MmuError::NoSuchDomain { domid }
                }),
                effects: Effects::default(),
            },
            Err(error) => Outcome {
                result: Err(error),
                effects: Effects::default(),
            },
        }
    }
}

impl Owner {
    /// The first foreign owner of the two, if either is one.
    fn min_other(self, other: Owner) -> Owner {
        match (self, other) {
            (Owner::Other(domid), _) | (_, Owner::Other(domid)) => Owner::Other(domid),
            _ => Owner::This,
        }
    }
}
