use xen_abi::errno::{EACCES, EBUSY, EFAULT, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ESRCH};
use xen_abi::pv::*;
use xen_abi::DOMID_SELF;

use super::*;
use crate::effects::TlbFlush;
use crate::memory::MemFrames;

const DOMID: u16 = 5;
const NR_FRAMES: u64 = 64;
const L4: Mfn = 1;
const L3: Mfn = 2;
const L2: Mfn = 3;
const L1: Mfn = 4;
/// A data frame the tree maps writable, and one it maps read-only.
const DATA_RW: Mfn = 10;
const DATA_RO: Mfn = 11;
/// The address the tree maps: L4 slot 511, L3 slot 510, L2 slot 0.
const KERNEL_VA: u64 = 0xffff_ffff_8000_0000;
/// Where the tests place hypercall arguments in guest-virtual memory.
const ARGS: u64 = 0x4000_0000;

fn entry(mfn: Mfn, flags: u64) -> u64 {
    (mfn << 12) | flags
}

fn rw() -> u64 {
    PTE_PRESENT | PTE_RW
}

fn ro() -> u64 {
    PTE_PRESENT
}

struct Dom {
    mmu: PvMmu,
    mem: MemFrames,
}

impl Dom {
    fn new() -> Dom {
        Dom::with_config(PvMmuConfig::new(DOMID, NR_FRAMES, 2))
    }

    fn with_config(config: PvMmuConfig) -> Dom {
        let mem = MemFrames::new(config.nr_frames as usize);
        Dom {
            mmu: PvMmu::new(config).unwrap(),
            mem,
        }
    }

    /// Write the four-level tree mapping KERNEL_VA (+0x1000) to DATA_RW
    /// (writable) and DATA_RO, as a guest builds it before pinning.
    fn build_tree(&mut self) {
        self.mem.write_entry(L4, 511, entry(L3, rw()));
        self.mem.write_entry(L3, 510, entry(L2, rw()));
        self.mem.write_entry(L2, 0, entry(L1, rw()));
        self.mem.write_entry(L1, 0, entry(DATA_RW, rw()));
        self.mem.write_entry(L1, 1, entry(DATA_RO, ro()));
        // Page tables mapped read-only, as the builder maps them.
        for (i, table) in [L4, L3, L2, L1].into_iter().enumerate() {
            self.mem.write_entry(L1, 2 + i, entry(table, ro()));
        }
    }

    fn pinned_tree() -> Dom {
        let mut dom = Dom::new();
        dom.build_tree();
        dom.ok(dom_pin(PtLevel::L4, L4));
        dom
    }

    fn ext(&mut self, op: MmuextOp) -> Outcome {
        let outcome = self.mmu.mmuext_one(&mut self.mem, 0, op);
        self.check();
        outcome
    }

    fn ok(&mut self, op: MmuextOp) -> Effects {
        let outcome = self.ext(op);
        assert_eq!(outcome.result, Ok(()), "{op:?}");
        outcome.effects
    }

    fn errno(&mut self, op: MmuextOp) -> i64 {
        let outcome = self.ext(op);
        -outcome.return_value()
    }

    fn update(&mut self, ptr: u64, val: u64) -> Outcome {
        let outcome = self
            .mmu
            .mmu_update_one(&mut self.mem, MmuUpdate { ptr, val });
        self.check();
        outcome
    }

    fn uvm(&mut self, va: u64, val: u64, flags: u64) -> Outcome {
        let outcome = self.mmu.update_va_mapping(&mut self.mem, 0, va, val, flags);
        self.check();
        outcome
    }

    fn info(&self, mfn: Mfn) -> FrameInfo {
        self.mmu.frame(mfn).unwrap()
    }

    fn check(&self) {
        self.mmu.check_invariants(&self.mem).unwrap();
    }
}

fn op(cmd: u32, arg1: u64, arg2: u64) -> MmuextOp {
    MmuextOp {
        cmd,
        pad: 0,
        arg1,
        arg2,
    }
}

fn dom_pin(level: PtLevel, mfn: Mfn) -> MmuextOp {
    let cmd = match level {
        PtLevel::L1 => MMUEXT_PIN_L1_TABLE,
        PtLevel::L2 => MMUEXT_PIN_L2_TABLE,
        PtLevel::L3 => MMUEXT_PIN_L3_TABLE,
        PtLevel::L4 => MMUEXT_PIN_L4_TABLE,
    };
    op(cmd, mfn, 0)
}

fn entry_ptr(table: Mfn, index: usize, cmd: u64) -> u64 {
    (table << 12) | (index as u64 * 8) | cmd
}

fn held(level: PtLevel) -> Option<FrameType> {
    Some(FrameType::PageTable(level))
}

// ---- pinning and validation ---------------------------------------------------

#[test]
fn pinning_an_l4_validates_the_tree_and_adjusts_entries() {
    let mut config = PvMmuConfig::new(DOMID, NR_FRAMES, 2);
    config.hypervisor_l4_slots[0] = 0x1234_5000 | PTE_PRESENT;
    let mut dom = Dom::with_config(config);
    dom.build_tree();
    // Junk in a hypervisor slot is neither validated nor kept.
    dom.mem.write_entry(L4, 260, entry(DATA_RW, rw()));
    dom.ok(dom_pin(PtLevel::L4, L4));

    assert_eq!(
        dom.info(L4),
        FrameInfo {
            ty: FrameType::PageTable(PtLevel::L4),
            count: 1,
            pinned: true,
            reserved: false
        }
    );
    assert_eq!(dom.info(L3).held_type(), held(PtLevel::L3));
    assert_eq!(dom.info(L2).held_type(), held(PtLevel::L2));
    assert_eq!(dom.info(L1).held_type(), held(PtLevel::L1));
    assert_eq!(dom.info(DATA_RW).held_type(), Some(FrameType::Writable));
    assert_eq!(
        dom.info(DATA_RO).held_type(),
        None,
        "read-only mappings take no type"
    );

    // Every present entry became User; L4 entries also Accessed; the
    // kernel-only L1 entries carry the guest-kernel bit and no Global.
    assert_eq!(
        dom.mem.read_entry(L4, 511),
        entry(L3, rw() | PTE_USER | PTE_ACCESSED)
    );
    assert_eq!(dom.mem.read_entry(L3, 510), entry(L2, rw() | PTE_USER));
    assert_eq!(dom.mem.read_entry(L2, 0), entry(L1, rw() | PTE_USER));
    assert_eq!(
        dom.mem.read_entry(L1, 0),
        entry(DATA_RW, rw() | PTE_USER | PTE_GUEST_KERNEL)
    );
    // The hypervisor's slots hold the configured entries.
    assert_eq!(dom.mem.read_entry(L4, 256), 0x1234_5000 | PTE_PRESENT);
    assert_eq!(dom.mem.read_entry(L4, 260), 0);
    assert_eq!(dom.info(DATA_RW).count, 1);
}

#[test]
fn user_l1_entries_become_global() {
    let mut dom = Dom::new();
    dom.mem.write_entry(L1, 7, entry(DATA_RO, ro() | PTE_USER));
    dom.ok(dom_pin(PtLevel::L1, L1));
    assert_eq!(
        dom.mem.read_entry(L1, 7),
        entry(DATA_RO, ro() | PTE_USER | PTE_GLOBAL)
    );
}

#[test]
fn pinning_a_table_that_maps_itself_writable_is_refused() {
    let mut dom = Dom::new();
    dom.mem.write_entry(L1, 0, entry(DATA_RW, rw()));
    dom.mem.write_entry(L1, 9, entry(L1, rw()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, L1)), EBUSY);
    // Everything taken before the bad entry was released.
    assert_eq!(dom.info(L1).held_type(), None);
    assert_eq!(dom.info(DATA_RW).held_type(), None);
    // Indirectly: an L2 whose L1 maps the L2 writable.
    let mut dom = Dom::new();
    dom.mem.write_entry(L2, 0, entry(L1, rw()));
    dom.mem.write_entry(L1, 0, entry(L2, rw()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L2, L2)), EBUSY);
    assert_eq!(dom.info(L1).held_type(), None);
    assert_eq!(dom.info(L2).held_type(), None);
}

#[test]
fn a_writable_frame_cannot_become_a_table() {
    let mut dom = Dom::pinned_tree();
    // DATA_RW is mapped writable by the pinned tree.
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, DATA_RW)), EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_NEW_BASEPTR, DATA_RW, 0)), EINVAL);
    assert_eq!(dom.info(DATA_RW).held_type(), Some(FrameType::Writable));
}

#[test]
fn wrong_levels_and_linear_tables_are_refused() {
    let mut dom = Dom::pinned_tree();
    // An L3 entry naming an L1, an L4 entry naming itself (a linear map).
    assert_eq!(
        dom.update(entry_ptr(L3, 0, 0), entry(L1, rw()))
            .return_value(),
        -EINVAL
    );
    assert_eq!(
        dom.update(entry_ptr(L4, 0, 0), entry(L4, ro()))
            .return_value(),
        -EINVAL
    );
    // Pinning a held table at another level.
    assert_eq!(dom.errno(dom_pin(PtLevel::L2, L1)), EINVAL);
}

#[test]
fn superpages_and_bad_bits_are_refused() {
    for (level, table) in [(PtLevel::L2, L2), (PtLevel::L3, L3)] {
        let mut dom = Dom::new();
        dom.mem
            .write_entry(table, 0, entry(DATA_RO, ro() | PTE_PSE));
        assert_eq!(dom.errno(dom_pin(level, table)), EINVAL, "{level}");
    }
    let mut dom = Dom::pinned_tree();
    assert_eq!(
        dom.update(entry_ptr(L2, 5, 0), entry(DATA_RO, ro() | PTE_PSE))
            .return_value(),
        -EINVAL
    );
    assert_eq!(
        dom.update(entry_ptr(L3, 5, 0), entry(L2, ro() | PTE_GLOBAL))
            .return_value(),
        -EINVAL
    );
    // Cache attributes need I/O rights; the grant bit is never the guest's.
    assert_eq!(
        dom.update(entry_ptr(L1, 20, 0), entry(DATA_RO, ro() | PTE_PCD))
            .return_value(),
        -EINVAL
    );
    assert_eq!(
        dom.update(entry_ptr(L1, 20, 0), entry(DATA_RO, ro() | PTE_GNTTAB))
            .return_value(),
        -EINVAL
    );
    assert_eq!(
        dom.update(entry_ptr(L1, 20, 0), entry(DATA_RO, ro() | PTE_GLOBAL))
            .return_value(),
        0
    );
    let mut config = PvMmuConfig::new(DOMID, NR_FRAMES, 1);
    config.cache_flush_permitted = true;
    let mut io = Dom::with_config(config);
    io.mem
        .write_entry(L1, 0, entry(DATA_RO, ro() | PTE_PCD | PTE_PWT));
    io.ok(dom_pin(PtLevel::L1, L1));
}

#[test]
fn frames_outside_the_domain_or_reserved() {
    let mut dom = Dom::new();
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, NR_FRAMES)), EINVAL);
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, u64::MAX)), EINVAL);
    // An L1 entry beyond RAM is MMIO to Xen: a privilege error; the
    // all-ones frame is just invalid.
    dom.mem.write_entry(L1, 0, entry(NR_FRAMES + 5, ro()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, L1)), EPERM);
    dom.mem.write_entry(L1, 0, entry((1 << 40) - 1, ro()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, L1)), EINVAL);
    // Beyond RAM above L1: invalid.
    dom.mem.write_entry(L2, 0, entry(NR_FRAMES, ro()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L2, L2)), EINVAL);
    // Frames the hypervisor keeps: no mapping, no table.
    dom.mmu.reserve_frame(30).unwrap();
    dom.mem.write_entry(L1, 0, entry(30, ro()));
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, L1)), EBUSY);
    assert_eq!(dom.errno(dom_pin(PtLevel::L1, 30)), EINVAL);
    assert_eq!(dom.update(entry_ptr(30, 0, 0), 0).return_value(), -EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_CLEAR_PAGE, 30, 0)), EINVAL);
    assert_eq!(
        dom.mmu.reserve_frame(NR_FRAMES),
        Err(PvMmuConfigError::Reserve(NR_FRAMES))
    );
}

#[test]
fn pin_and_unpin_errors() {
    let mut dom = Dom::pinned_tree();
    assert_eq!(
        dom.errno(dom_pin(PtLevel::L4, L4)),
        EINVAL,
        "already pinned"
    );
    assert_eq!(
        dom.info(L4).count,
        1,
        "the failed pin dropped its reference"
    );
    assert_eq!(
        dom.errno(op(MMUEXT_UNPIN_TABLE, L3, 0)),
        EINVAL,
        "not pinned"
    );
    assert_eq!(dom.errno(op(MMUEXT_UNPIN_TABLE, NR_FRAMES, 0)), EINVAL);
    // Unpinning the tree releases every level and the writable mapping.
    dom.ok(op(MMUEXT_UNPIN_TABLE, L4, 0));
    for frame in [L4, L3, L2, L1, DATA_RW] {
        assert_eq!(dom.info(frame).held_type(), None, "frame {frame}");
    }
    // Now the former tables may be mapped writable.
    dom.ok(dom_pin(PtLevel::L1, 20));
    dom.mem.write_entry(20, 0, entry(L4, rw()));
    dom.ok(op(MMUEXT_UNPIN_TABLE, 20, 0));
    dom.ok(dom_pin(PtLevel::L1, 20));
}

#[test]
fn unpinning_the_current_base_keeps_it_held() {
    let mut dom = Dom::pinned_tree();
    let effects = dom.ok(op(MMUEXT_NEW_BASEPTR, L4, 0));
    assert!(effects.base_changed);
    assert_eq!(dom.mmu.vcpu(0).unwrap().kernel_base, Some(L4));
    assert_eq!(dom.info(L4).count, 2);
    // Xen lets the guest unpin its CR3: the base pointer still holds it.
    dom.ok(op(MMUEXT_UNPIN_TABLE, L4, 0));
    assert_eq!(dom.info(L4).held_type(), held(PtLevel::L4));
    assert!(!dom.info(L4).pinned);
    // So its frames stay protected.
    assert_eq!(
        dom.update(entry_ptr(L1, 30, 0), entry(L2, rw()))
            .return_value(),
        -EBUSY
    );
    // Loading another L4 lets go of the whole old tree.
    dom.mem.write_entry(40, 0, 0);
    dom.ok(op(MMUEXT_NEW_BASEPTR, 40, 0));
    for frame in [L4, L3, L2, L1, DATA_RW] {
        assert_eq!(dom.info(frame).held_type(), None, "frame {frame}");
    }
}

#[test]
fn base_pointers() {
    let mut dom = Dom::new();
    dom.build_tree();
    // A base that does not validate leaves the vCPU as it was.
    // An L4 whose L3 points back at the L4 as an L2: a type conflict.
    dom.mem.write_entry(40, 3, entry(DATA_RO, rw()));
    dom.mem.write_entry(DATA_RO, 0, entry(40, rw()));
    assert_eq!(dom.errno(op(MMUEXT_NEW_BASEPTR, 40, 0)), EINVAL);
    assert_eq!(dom.mmu.vcpu(0).unwrap().kernel_base, None);
    assert_eq!(dom.info(DATA_RO).held_type(), None);
    // Loading an unpinned L4 validates it.
    let effects = dom.ok(op(MMUEXT_NEW_BASEPTR, L4, 0));
    assert!(effects.base_changed);
    assert_eq!(dom.info(L4).count, 1);
    // Reloading the same base is a CR3 reload, nothing more.
    assert!(dom.ok(op(MMUEXT_NEW_BASEPTR, L4, 0)).base_changed);
    assert_eq!(dom.info(L4).count, 1);
    // The user base: an L4 too, 0 meaning none.
    let effects = dom.ok(op(MMUEXT_NEW_USER_BASEPTR, 41, 0));
    assert!(effects.base_changed);
    assert_eq!(dom.mmu.vcpu(0).unwrap().user_base, Some(41));
    assert!(
        !dom.ok(op(MMUEXT_NEW_USER_BASEPTR, 41, 0)).base_changed,
        "same base: nothing"
    );
    assert_eq!(dom.errno(op(MMUEXT_NEW_USER_BASEPTR, DATA_RW, 0)), EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_NEW_USER_BASEPTR, NR_FRAMES, 0)), EINVAL);
    dom.ok(op(MMUEXT_NEW_USER_BASEPTR, 0, 0));
    assert_eq!(dom.mmu.vcpu(0).unwrap().user_base, None);
    assert_eq!(dom.info(41).held_type(), None);
    // Another vCPU has its own bases; a vCPU that does not exist is refused.
    let outcome = dom
        .mmu
        .mmuext_one(&mut dom.mem, 1, op(MMUEXT_NEW_BASEPTR, L4, 0));
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(dom.info(L4).count, 2);
    let outcome = dom
        .mmu
        .mmuext_one(&mut dom.mem, 2, op(MMUEXT_NEW_BASEPTR, L4, 0));
    assert_eq!(outcome.return_value(), -EINVAL);
    dom.check();
}

// ---- mmu_update ------------------------------------------------------------------

#[test]
fn entry_updates_take_and_release_references() {
    let mut dom = Dom::pinned_tree();
    // Remap the writable entry to another frame: the old one is released.
    let outcome = dom.update(entry_ptr(L1, 0, MMU_NORMAL_PT_UPDATE), entry(12, rw()));
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(
        outcome.effects.flush, None,
        "L1 updates leave flushing to the guest"
    );
    assert_eq!(dom.info(DATA_RW).held_type(), None);
    assert_eq!(dom.info(12).held_type(), Some(FrameType::Writable));
    assert_eq!(
        dom.mem.read_entry(L1, 0),
        entry(12, rw() | PTE_USER | PTE_GUEST_KERNEL)
    );
    // A writable mapping of a pinned table anywhere is refused.
    for table in [L4, L3, L2, L1] {
        let outcome = dom.update(entry_ptr(L1, 40, 0), entry(table, rw()));
        assert_eq!(outcome.return_value(), -EBUSY, "table {table}");
    }
    // Read-only is fine.
    assert_eq!(
        dom.update(entry_ptr(L1, 40, 0), entry(L3, ro())).result,
        Ok(())
    );
    // A new L2 entry validates a fresh L1 and flushes every vCPU.
    dom.mem.write_entry(20, 0, entry(21, rw()));
    let outcome = dom.update(entry_ptr(L2, 1, 0), entry(20, rw()));
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(
        outcome.effects.flush,
        Some(TlbFlush {
            vcpus: VcpuMask::first(2),
            scope: FlushScope::Full
        })
    );
    assert_eq!(dom.info(20).held_type(), held(PtLevel::L1));
    assert_eq!(dom.info(21).held_type(), Some(FrameType::Writable));
    // Clearing it releases both.
    assert_eq!(dom.update(entry_ptr(L2, 1, 0), 0).result, Ok(()));
    assert_eq!(dom.info(20).held_type(), None);
    assert_eq!(dom.info(21).held_type(), None);
}

#[test]
fn hypervisor_l4_slots_cannot_be_written() {
    let mut dom = Dom::pinned_tree();
    for slot in [256, 263, 271] {
        let outcome = dom.update(entry_ptr(L4, slot, 0), 0);
        assert_eq!(outcome.return_value(), -EINVAL, "slot {slot}");
        assert_eq!(outcome.result, Err(MmuError::HypervisorSlot { slot }));
    }
    assert_eq!(dom.update(entry_ptr(L4, 255, 0), 0).result, Ok(()));
    assert_eq!(dom.update(entry_ptr(L4, 272, 0), 0).result, Ok(()));
}

#[test]
fn preserve_ad_keeps_accessed_and_dirty() {
    let mut dom = Dom::pinned_tree();
    // The hardware set A and D in the live entry.
    let live = dom.mem.read_entry(L1, 1) | PTE_ACCESSED | PTE_DIRTY;
    dom.mem.write_entry(L1, 1, live);
    let outcome = dom.update(
        entry_ptr(L1, 1, MMU_PT_UPDATE_PRESERVE_AD),
        entry(DATA_RO, ro() | PTE_NX),
    );
    assert_eq!(outcome.result, Ok(()));
    let now = dom.mem.read_entry(L1, 1);
    assert_eq!(now & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED | PTE_DIRTY);
    assert_ne!(now & PTE_NX, 0);
    // A normal update drops them.
    dom.update(entry_ptr(L1, 1, MMU_NORMAL_PT_UPDATE), entry(DATA_RO, ro()));
    assert_eq!(dom.mem.read_entry(L1, 1) & (PTE_ACCESSED | PTE_DIRTY), 0);
}

#[test]
fn updates_to_frames_that_are_not_tables() {
    let mut dom = Dom::pinned_tree();
    // An untyped frame or a writable one is written as plain memory.
    assert_eq!(dom.update(entry_ptr(30, 3, 0), 0xdead).result, Ok(()));
    assert_eq!(dom.mem.read_entry(30, 3), 0xdead);
    assert_eq!(dom.info(30).held_type(), None);
    assert_eq!(dom.update(entry_ptr(DATA_RW, 4, 0), 0xbeef).result, Ok(()));
    assert_eq!(dom.mem.read_entry(DATA_RW, 4), 0xbeef);
    // A descriptor-table frame takes no updates.
    dom.mmu.get_segdesc(&mut dom.mem, 31).unwrap();
    assert_eq!(dom.update(entry_ptr(31, 0, 0), 1).return_value(), -EINVAL);
    // Unknown commands (4..7 in the low bits).
    assert_eq!(dom.update(entry_ptr(30, 0, 4), 0).return_value(), -ENOSYS);
    assert_eq!(dom.update(entry_ptr(30, 0, 7), 0).return_value(), -ENOSYS);
}

#[test]
fn machphys_update() {
    struct Recorder(MemFrames, Vec<(Mfn, u64)>);
    impl MmuMemory for Recorder {
        fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
            self.0.read_entry(mfn, index)
        }
        fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
            self.0.write_entry(mfn, index, value)
        }
        fn clear_frame(&mut self, mfn: Mfn) {
            self.0.clear_frame(mfn)
        }
        fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
            self.0.copy_frame(dst, src)
        }
        fn read_guest_u64(&mut self, va: u64) -> Option<u64> {
            self.0.read_guest_u64(va)
        }
        fn m2p_updated(&mut self, mfn: Mfn, pfn: u64) {
            self.1.push((mfn, pfn));
        }
    }
    let mut mmu = PvMmu::new(PvMmuConfig::new(DOMID, NR_FRAMES, 1)).unwrap();
    let mut mem = Recorder(MemFrames::new(NR_FRAMES as usize), Vec::new());
    assert_eq!(mmu.m2p(7), Some(7), "identity to start with");
    // Any address inside the frame names it.
    let req = MmuUpdate {
        ptr: (7 << 12) | 0x8a8 | MMU_MACHPHYS_UPDATE,
        val: 0x99,
    };
    assert_eq!(mmu.mmu_update_one(&mut mem, req).result, Ok(()));
    assert_eq!(mmu.m2p(7), Some(0x99));
    assert_eq!(mem.1, vec![(7, 0x99)]);
    let bad = MmuUpdate {
        ptr: (NR_FRAMES << 12) | MMU_MACHPHYS_UPDATE,
        val: 1,
    };
    assert_eq!(mmu.mmu_update_one(&mut mem, bad).return_value(), -EINVAL);
    mmu.check_invariants(&mem).unwrap();
}

#[test]
fn mmu_update_batches_stop_at_the_first_failure() {
    let mut dom = Dom::pinned_tree();
    dom.mem.poke_guest_words(
        ARGS,
        &[
            entry_ptr(L1, 50, 0),
            entry(12, rw()),
            entry_ptr(L1, 51, MMU_PT_UPDATE_PRESERVE_AD),
            entry(13, ro()),
            entry_ptr(L1, 52, 0),
            entry(L2, rw()), // a writable mapping of a table: refused
            entry_ptr(L1, 53, 0),
            entry(14, rw()),
        ],
    );
    let outcome = dom
        .mmu
        .mmu_update(&mut dom.mem, 0, ARGS, 4, u32::from(DOMID_SELF));
    assert_eq!(outcome.result.as_ref().map_err(MmuError::errno), Err(EBUSY));
    assert_eq!(outcome.done, Some(2));
    assert_eq!(dom.info(12).held_type(), Some(FrameType::Writable));
    assert_eq!(
        dom.mem.read_entry(L1, 53),
        0,
        "nothing after the failure ran"
    );
    dom.check();
    // A batch that runs off the readable arguments fails with -EFAULT.
    let outcome = dom
        .mmu
        .mmu_update(&mut dom.mem, 0, ARGS + 48, 2, u32::from(DOMID_SELF));
    assert_eq!((outcome.return_value(), outcome.done), (-EFAULT, Some(1)));
    // An empty batch succeeds; an argument array in the hypervisor hole
    // is refused before it starts.
    let outcome = dom
        .mmu
        .mmu_update(&mut dom.mem, 0, ARGS, 0, u32::from(DOMID_SELF));
    assert_eq!((outcome.result, outcome.done), (Ok(()), Some(0)));
    let outcome = dom.mmu.mmu_update(
        &mut dom.mem,
        0,
        HYPERVISOR_VIRT_START,
        1,
        u32::from(DOMID_SELF),
    );
    assert_eq!((outcome.return_value(), outcome.done), (-EFAULT, None));
    dom.check();
}

#[test]
fn foreign_domains_are_refused() {
    let mut dom = Dom::pinned_tree();
    dom.mem
        .poke_guest_words(ARGS, &[entry_ptr(L1, 50, 0), entry(12, ro())]);
    let own = dom
        .mmu
        .mmu_update(&mut dom.mem, 0, ARGS, 1, u32::from(DOMID));
    assert_eq!((own.return_value(), own.done), (-ESRCH, None));
    let other = dom.mmu.mmu_update(&mut dom.mem, 0, ARGS, 1, 9);
    assert_eq!((other.return_value(), other.done), (-EPERM, Some(0)));
    // A foreign page-table owner (bits 31:16, plus one).
    let tables = dom
        .mmu
        .mmu_update(&mut dom.mem, 0, ARGS, 1, (10 << 16) | u32::from(DOMID_SELF));
    assert_eq!(tables.return_value(), -EPERM);
    // Naming itself as the table owner is fine.
    let ok = dom.mmu.mmu_update(
        &mut dom.mem,
        0,
        ARGS,
        1,
        ((u32::from(DOMID) + 1) << 16) | u32::from(DOMID_SELF),
    );
    assert_eq!((ok.result, ok.done), (Ok(()), Some(1)));
    let ext = dom.mmu.mmuext_op(&mut dom.mem, 0, ARGS, 1, 9);
    assert_eq!((ext.return_value(), ext.done), (-EPERM, None));
    let ext = dom
        .mmu
        .mmuext_op(&mut dom.mem, 0, ARGS, 1, u32::from(DOMID));
    assert_eq!(ext.return_value(), -ESRCH);
    dom.check();
}

// ---- mmuext_op -------------------------------------------------------------------

#[test]
fn flush_commands() {
    let mut dom = Dom::with_config(PvMmuConfig::new(DOMID, NR_FRAMES, 70));
    let local = |scope| {
        Some(TlbFlush {
            vcpus: VcpuMask::single(0),
            scope,
        })
    };
    assert_eq!(
        dom.ok(op(MMUEXT_TLB_FLUSH_LOCAL, 0, 0)).flush,
        local(FlushScope::Full)
    );
    assert_eq!(
        dom.ok(op(MMUEXT_INVLPG_LOCAL, 0x5000, 0)).flush,
        local(FlushScope::Pages(vec![0x5000]))
    );
    assert_eq!(
        dom.ok(op(MMUEXT_INVLPG_LOCAL, 1 << 47, 0)).flush,
        None,
        "non-canonical: nothing"
    );
    let all = VcpuMask::first(70);
    assert_eq!(
        dom.ok(op(MMUEXT_TLB_FLUSH_ALL, 0, 0)).flush,
        Some(TlbFlush {
            vcpus: all,
            scope: FlushScope::Full
        })
    );
    assert_eq!(
        dom.ok(op(MMUEXT_INVLPG_ALL, 0x7000, 0)).flush,
        Some(TlbFlush {
            vcpus: all,
            scope: FlushScope::Pages(vec![0x7000])
        })
    );
    assert_eq!(
        dom.ok(op(MMUEXT_INVLPG_ALL, HYPERVISOR_VIRT_START, 0))
            .flush,
        None
    );
    // A vCPU bitmap: two words for 70 vCPUs; bits past the count ignored.
    dom.mem.poke_guest_words(ARGS, &[0b101, u64::MAX]);
    let flush = dom.ok(op(MMUEXT_TLB_FLUSH_MULTI, 0, ARGS)).flush.unwrap();
    assert_eq!(
        flush.vcpus.iter().collect::<Vec<_>>(),
        [0, 2].into_iter().chain(64..70).collect::<Vec<_>>()
    );
    let flush = dom.ok(op(MMUEXT_INVLPG_MULTI, 0x9000, ARGS)).flush.unwrap();
    assert_eq!(flush.scope, FlushScope::Pages(vec![0x9000]));
    // An unreadable bitmap.
    assert_eq!(dom.errno(op(MMUEXT_TLB_FLUSH_MULTI, 0, ARGS + 8)), EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_INVLPG_MULTI, 0, 0xdead_0000)), EINVAL);
    // Cache flushes need I/O rights.
    assert_eq!(dom.errno(op(MMUEXT_FLUSH_CACHE, 0, 0)), EACCES);
    assert_eq!(dom.errno(op(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0)), EACCES);
    let mut config = PvMmuConfig::new(DOMID, NR_FRAMES, 1);
    config.cache_flush_permitted = true;
    assert!(
        Dom::with_config(config)
            .ok(op(MMUEXT_FLUSH_CACHE, 0, 0))
            .flush_cache
    );
}

#[test]
fn set_ldt_bounds() {
    let mut dom = Dom::new();
    let effects = dom.ok(op(MMUEXT_SET_LDT, 0x7f00_0000_0000, 8192));
    assert!(effects.ldt_changed);
    let state = dom.mmu.vcpu(0).unwrap();
    assert_eq!(
        (state.ldt_base, state.ldt_entries),
        (0x7f00_0000_0000, 8192)
    );
    assert!(
        !dom.ok(op(MMUEXT_SET_LDT, 0x7f00_0000_0000, 8192))
            .ldt_changed,
        "unchanged"
    );
    assert_eq!(
        dom.errno(op(MMUEXT_SET_LDT, 0x7f00_0000_0000, 8193)),
        EINVAL
    );
    assert_eq!(dom.errno(op(MMUEXT_SET_LDT, 0x7f00_0000_0008, 1)), EINVAL);
    assert_eq!(
        dom.errno(op(MMUEXT_SET_LDT, HYPERVISOR_VIRT_START, 1)),
        EINVAL
    );
    assert_eq!(dom.errno(op(MMUEXT_SET_LDT, 1 << 47, 1)), EINVAL);
    // The count is the low 32 bits of arg2.
    assert_eq!(
        dom.errno(op(MMUEXT_SET_LDT, 0x1000, (1 << 32) | 8193)),
        EINVAL
    );
    // No entries: any base, and the LDT is gone.
    assert!(dom.ok(op(MMUEXT_SET_LDT, 0x1234, 0)).ldt_changed);
    let state = dom.mmu.vcpu(0).unwrap();
    assert_eq!((state.ldt_base, state.ldt_entries), (0, 0));
}

#[test]
fn clear_and_copy_page() {
    let mut dom = Dom::pinned_tree();
    dom.mem.write_entry(30, 0, 0xaa);
    dom.ok(op(MMUEXT_COPY_PAGE, 31, 30));
    assert_eq!(dom.mem.read_entry(31, 0), 0xaa);
    // Copying from a table is fine; into one is not.
    dom.ok(op(MMUEXT_COPY_PAGE, 32, L3));
    assert_eq!(dom.mem.read_entry(32, 510), dom.mem.read_entry(L3, 510));
    assert_eq!(dom.errno(op(MMUEXT_COPY_PAGE, L1, 30)), EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_COPY_PAGE, 31, NR_FRAMES)), EINVAL);
    assert_eq!(dom.errno(op(MMUEXT_COPY_PAGE, NR_FRAMES, 30)), EINVAL);
    dom.ok(op(MMUEXT_CLEAR_PAGE, 31, 0));
    assert_eq!(dom.mem.read_entry(31, 0), 0);
    // A writable-mapped frame can be cleared; a table cannot.
    dom.ok(op(MMUEXT_CLEAR_PAGE, DATA_RW, 0));
    assert_eq!(
        dom.info(DATA_RW).count,
        1,
        "the mapping's reference remains"
    );
    assert_eq!(dom.errno(op(MMUEXT_CLEAR_PAGE, L2, 0)), EINVAL);
    assert_ne!(dom.mem.read_entry(L2, 0), 0);
}

#[test]
fn unsupported_and_unknown_commands() {
    let mut dom = Dom::new();
    assert_eq!(dom.errno(op(MMUEXT_MARK_SUPER, 0, 0)), EOPNOTSUPP);
    assert_eq!(dom.errno(op(MMUEXT_UNMARK_SUPER, 0, 0)), EOPNOTSUPP);
    assert_eq!(dom.errno(op(14, 0, 0)), ENOSYS);
    assert_eq!(dom.errno(op(21, 0, 0)), ENOSYS);
    assert_eq!(dom.errno(op(u32::MAX, 0, 0)), ENOSYS);
}

#[test]
fn mmuext_batches_read_ops_and_count_done() {
    let mut dom = Dom::new();
    dom.build_tree();
    let words = [
        u64::from(MMUEXT_PIN_L4_TABLE),
        L4,
        0,
        u64::from(MMUEXT_NEW_BASEPTR),
        L4,
        0,
        // The high half of the first word is padding, ignored.
        (0xffff_ffff << 32) | u64::from(MMUEXT_INVLPG_LOCAL),
        KERNEL_VA,
        0,
        u64::from(MMUEXT_UNPIN_TABLE),
        L3,
        0, // not pinned: stops here
        u64::from(MMUEXT_TLB_FLUSH_ALL),
        0,
        0,
    ];
    dom.mem.poke_guest_words(ARGS, &words);
    let outcome = dom
        .mmu
        .mmuext_op(&mut dom.mem, 0, ARGS, 5, u32::from(DOMID_SELF));
    assert_eq!((outcome.return_value(), outcome.done), (-EINVAL, Some(3)));
    assert!(outcome.effects.base_changed);
    assert_eq!(
        outcome.effects.flush,
        Some(TlbFlush {
            vcpus: VcpuMask::single(0),
            scope: FlushScope::Pages(vec![KERNEL_VA])
        })
    );
    assert_eq!(dom.info(L4).count, 2);
    dom.check();
    let outcome = dom
        .mmu
        .mmuext_op(&mut dom.mem, 0, ARGS + 9 * 8, 2, u32::from(DOMID_SELF));
    assert_eq!((outcome.return_value(), outcome.done), (-EINVAL, Some(0)));
    let outcome = dom
        .mmu
        .mmuext_op(&mut dom.mem, 0, ARGS + 12 * 8, 2, u32::from(DOMID_SELF));
    assert_eq!((outcome.return_value(), outcome.done), (-EFAULT, Some(1)));
    let outcome = dom
        .mmu
        .mmuext_op(&mut dom.mem, 7, ARGS, 1, u32::from(DOMID_SELF));
    assert_eq!((outcome.return_value(), outcome.done), (-EINVAL, None));
}

#[test]
fn type_changes_away_from_writable_flush_every_vcpu() {
    let mut dom = Dom::pinned_tree();
    // DATA_RW loses its writable mapping, then becomes an L1: a vCPU may
    // still cache the writable translation.
    dom.update(entry_ptr(L1, 0, 0), 0);
    let outcome = dom.ext(dom_pin(PtLevel::L1, DATA_RW));
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(
        outcome.effects.flush,
        Some(TlbFlush {
            vcpus: VcpuMask::first(2),
            scope: FlushScope::Full
        })
    );
    // A frame never mapped writable needs no flush.
    assert_eq!(dom.ok(dom_pin(PtLevel::L1, 33)).flush, None);
}

#[test]
fn descriptor_pages() {
    let mut dom = Dom::pinned_tree();
    // A frame mapped writable cannot hold descriptors, and vice versa.
    assert_eq!(
        dom.mmu
            .get_segdesc(&mut dom.mem, DATA_RW)
            .map_err(|e| e.errno()),
        Err(EINVAL)
    );
    dom.mmu.get_segdesc(&mut dom.mem, 35).unwrap();
    assert_eq!(
        dom.update(entry_ptr(L1, 60, 0), entry(35, rw()))
            .return_value(),
        -EBUSY
    );
    assert_eq!(
        dom.update(entry_ptr(L1, 60, 0), entry(35, ro())).result,
        Ok(())
    );
    dom.mmu.put_segdesc(&mut dom.mem, 35);
    assert_eq!(dom.info(35).held_type(), None);
    dom.mmu.put_segdesc(&mut dom.mem, 35); // a stray put changes nothing
    assert_eq!(
        dom.update(entry_ptr(L1, 61, 0), entry(35, rw())).result,
        Ok(())
    );
}

// ---- update_va_mapping -----------------------------------------------------------

#[test]
fn update_va_mapping_walks_the_current_l4() {
    let mut dom = Dom::pinned_tree();
    // No base yet: nothing maps anything.
    assert_eq!(dom.uvm(KERNEL_VA, 0, 0).return_value(), -EINVAL);
    dom.ok(op(MMUEXT_NEW_BASEPTR, L4, 0));
    let outcome = dom.uvm(KERNEL_VA + 0x5000, entry(12, rw()), UVMF_INVLPG);
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(
        outcome.effects.flush,
        Some(TlbFlush {
            vcpus: VcpuMask::single(0),
            scope: FlushScope::Pages(vec![KERNEL_VA + 0x5000])
        })
    );
    assert_eq!(
        dom.mem.read_entry(L1, 5),
        entry(12, rw() | PTE_USER | PTE_GUEST_KERNEL)
    );
    assert_eq!(dom.info(12).held_type(), Some(FrameType::Writable));
    let all = dom.uvm(KERNEL_VA + 0x5000, 0, UVMF_TLB_FLUSH | UVMF_ALL);
    assert_eq!(
        all.effects.flush,
        Some(TlbFlush {
            vcpus: VcpuMask::first(2),
            scope: FlushScope::Full
        })
    );
    assert_eq!(dom.info(12).held_type(), None);
    assert_eq!(dom.uvm(KERNEL_VA, 0, UVMF_NONE).effects.flush, None);
    // Flush type 3 is no flush at all.
    assert_eq!(dom.uvm(KERNEL_VA, 0, 3).effects.flush, None);
    // A bitmap pointer: read it, or fail with -EFAULT after the update.
    dom.mem.poke_guest(ARGS, 0b10);
    let multi = dom.uvm(KERNEL_VA + 0x6000, entry(13, ro()), UVMF_TLB_FLUSH | ARGS);
    assert_eq!(multi.effects.flush.unwrap().vcpus, VcpuMask::single(1));
    let fault = dom.uvm(
        KERNEL_VA + 0x7000,
        entry(14, ro()),
        UVMF_INVLPG | (ARGS + 0x100),
    );
    assert_eq!(fault.return_value(), -EFAULT);
    assert_eq!(
        dom.mem.read_entry(L1, 7),
        entry(14, ro() | PTE_USER | PTE_GUEST_KERNEL)
    );
    // The same checks as mmu_update.
    assert_eq!(
        dom.uvm(KERNEL_VA + 0x8000, entry(L2, rw()), 0)
            .return_value(),
        -EBUSY
    );
    assert_eq!(
        dom.uvm(KERNEL_VA + 0x8000, entry(15, ro() | PTE_PCD), 0)
            .return_value(),
        -EINVAL
    );
}

#[test]
fn update_va_mapping_needs_an_l1_for_the_address() {
    let mut dom = Dom::pinned_tree();
    dom.ok(op(MMUEXT_NEW_BASEPTR, L4, 0));
    // Unmapped at L4, L3 and L2.
    for va in [0x1000, 0xffff_ffff_0000_0000, KERNEL_VA + (1 << 21)] {
        assert_eq!(
            dom.uvm(va, 0, 0).result,
            Err(MmuError::NoL1ForAddress { va }),
            "{va:#x}"
        );
    }
    // The hypervisor's hole and non-canonical addresses.
    for va in [HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END - 1, 1 << 47] {
        assert_eq!(dom.uvm(va, 0, 0).return_value(), -EINVAL, "{va:#x}");
    }
    let otherdomain = |dom: &mut Dom, domid, exists| {
        dom.mmu
            .update_va_mapping_otherdomain(
                &mut dom.mem,
                0,
                KERNEL_VA + 0x9000,
                entry(16, ro()),
                0,
                domid,
                exists,
            )
            .return_value()
    };
    assert_eq!(otherdomain(&mut dom, DOMID, true), -ESRCH);
    assert_eq!(otherdomain(&mut dom, 9, true), -EPERM);
    assert_eq!(otherdomain(&mut dom, 9, false), -ESRCH);
    assert_eq!(dom.mem.read_entry(L1, 9), 0);
    assert_eq!(otherdomain(&mut dom, DOMID_SELF, false), 0);
    assert_eq!(
        dom.mem.read_entry(L1, 9),
        entry(16, ro() | PTE_USER | PTE_GUEST_KERNEL)
    );
    dom.check();
}

#[test]
fn configs_are_bounded() {
    assert_eq!(
        PvMmu::new(PvMmuConfig::new(1, 0, 1)).unwrap_err(),
        PvMmuConfigError::FrameCount(0)
    );
    assert_eq!(
        PvMmu::new(PvMmuConfig::new(1, MAX_FRAMES + 1, 1)).unwrap_err(),
        PvMmuConfigError::FrameCount(MAX_FRAMES + 1)
    );
    assert_eq!(
        PvMmu::new(PvMmuConfig::new(1, 8, 0)).unwrap_err(),
        PvMmuConfigError::VcpuCount(0)
    );
    assert_eq!(
        PvMmu::new(PvMmuConfig::new(1, 8, MAX_VCPUS + 1)).unwrap_err(),
        PvMmuConfigError::VcpuCount(MAX_VCPUS + 1)
    );
}

#[test]
fn error_codes() {
    // The mapping that the executor turns into the hypercall's return.
    let cases = [
        (MmuError::BadFrame { mfn: 1 }, EINVAL),
        (MmuError::MmioNotPermitted { mfn: 1 }, EPERM),
        (MmuError::HypervisorFrame { mfn: 1 }, EBUSY),
        (
            MmuError::WritableMappingRefused {
                mfn: 1,
                have: FrameType::SegDesc,
            },
            EBUSY,
        ),
        (MmuError::GuestFault { va: 0 }, EFAULT),
        (MmuError::CacheFlushNotPermitted, EACCES),
        (MmuError::SelfAsForeign { domid: 1 }, ESRCH),
        (MmuError::Unsupported { cmd: 19 }, EOPNOTSUPP),
        (MmuError::UnknownCommand { cmd: 4 }, ENOSYS),
    ];
    for (error, errno) in cases {
        assert_eq!(error.to_return_value(), -errno, "{error}");
    }
}
