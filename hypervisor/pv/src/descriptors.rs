//! A 64-bit PV guest's descriptor tables: `set_gdt` and
//! `update_descriptor`, with Xen's `check_descriptor` (facts from Xen
//! 4.17's `arch/x86/pv/descriptor-tables.c`, `arch/x86/mm.c`'s segdesc
//! page type, `include/asm/desc.h`).
//!
//! A descriptor frame is held in the PV MMU's `SegDesc` type: never
//! mapped writable while it is, every descriptor checked (and fixed up)
//! when it first takes the type.

use xen_abi::errno::{EFAULT, EINVAL};

use crate::memory::MmuMemory;
use crate::mmu::{FrameType, PvMmu};
use crate::pte::Mfn;

/// Descriptors per page.
const DESCRIPTORS_PER_PAGE: u64 = 512;
/// Xen's FIRST_RESERVED_GDT_ENTRY: the guest's GDT ends where Xen's own
/// entries (selectors 0xe000 and up) begin.
pub const FIRST_RESERVED_GDT_ENTRY: u64 = 14 * DESCRIPTORS_PER_PAGE;
/// Frames a guest GDT may span.
pub const MAX_GDT_FRAMES: usize = 14;

const SEG_PRESENT: u64 = 1 << 47;
const SEG_S: u64 = 1 << 44;
const SEG_DPL_SHIFT: u32 = 45;
const SEG_DPL: u64 = 3 << SEG_DPL_SHIFT;
const SEG_TYPE_SHIFT: u32 = 40;
const SEG_TYPE: u64 = 0xf << SEG_TYPE_SHIFT;
/// The system-descriptor type of a (64-bit) call gate.
const TYPE_CALL_GATE: u64 = 0xc;

/// Xen's `check_descriptor` for a 64-bit PV domain: the descriptor as
/// it may stand (DPL of code/data segments raised to the guest kernel's
/// 3; a call gate's DPL forced to 0, so that using it faults and can be
/// emulated), or `None` for one the guest may not have (any other system
/// descriptor: a TSS, an LDT, interrupt and trap gates), or a call gate
/// whose target is not a guest code selector.
pub fn check_descriptor(desc: u64) -> Option<u64> {
    // A not-present descriptor always faults when used: harmless.
    if desc & SEG_PRESENT == 0 {
        return Some(desc);
    }
    if desc & SEG_S != 0 {
        // Code and data: fine at any base and limit, at DPL 3.
        return Some(desc | SEG_DPL);
    }
    let kind = (desc & SEG_TYPE) >> SEG_TYPE_SHIFT;
    if kind == 0 {
        // Type 0: the upper half of a 16-byte call gate.
        return Some(desc);
    }
    if kind != TYPE_CALL_GATE {
        return None;
    }
    // The gate's target selector must be the guest's own (RPL 3, not
    // one of Xen's reserved entries... other than its flat code ones).
    let target = (desc >> 16) as u16;
    if !guest_gate_selector_okay(target) {
        return None;
    }
    Some(desc & !SEG_DPL)
}

/// Xen's `guest_gate_selector_okay` for a 64-bit PV guest: the guest's
/// own GDT/LDT selectors with RPL 3, or Xen's flat ring-3 code ones.
fn guest_gate_selector_okay(selector: u16) -> bool {
    let index = u64::from(selector >> 3);
    if selector & 3 != 3 {
        return false;
    }
    if selector & 4 != 0 {
        return true; // an LDT selector
    }
    index < FIRST_RESERVED_GDT_ENTRY
        || selector == xen_abi::pv::FLAT_RING3_CS32
        || selector == xen_abi::pv::FLAT_RING3_CS64
}

/// Check (and fix up) every descriptor of frame `mfn` before it first
/// becomes a descriptor table; `false` if one is refused.
fn validate_frame<M: MmuMemory>(mem: &mut M, mfn: Mfn) -> bool {
    let mut fixed = Vec::with_capacity(DESCRIPTORS_PER_PAGE as usize);
    for index in 0..DESCRIPTORS_PER_PAGE as usize {
        match check_descriptor(mem.read_entry(mfn, index)) {
            Some(desc) => fixed.push(desc),
            None => return false,
        }
    }
    for (index, desc) in fixed.into_iter().enumerate() {
        if mem.read_entry(mfn, index) != desc {
            mem.write_entry(mfn, index, desc);
        }
    }
    true
}

/// Take a descriptor-table reference on `mfn`, validating it first when
/// the reference is its first.
pub fn get_descriptor_frame<M: MmuMemory>(
    mmu: &mut PvMmu,
    mem: &mut M,
    mfn: Mfn,
) -> Result<(), i64> {
    let info = mmu.frame(mfn).ok_or(-EINVAL)?;
    if info.reserved {
        return Err(-EINVAL);
    }
    let first = info.held_type() != Some(FrameType::SegDesc);
    if first && info.held_type().is_some() {
        // A table or a writable mapping holds it: it cannot change type.
        return Err(-EINVAL);
    }
    if first && !validate_frame(mem, mfn) {
        return Err(-EINVAL);
    }
    mmu.get_segdesc(mem, mfn).map_err(|_| -EINVAL)
}

/// `HYPERVISOR_set_gdt(frames, entries)`: `frames` read from the guest's
/// list (`None`: the list could not be read). On success the new frames
/// are held and `current` (the vCPU's old GDT) released; on failure
/// nothing changes. Returns the frames now in force.
pub fn set_gdt<M: MmuMemory>(
    mmu: &mut PvMmu,
    mem: &mut M,
    current: &[Mfn],
    frames: Option<&[Mfn]>,
    entries: u64,
) -> Result<Vec<Mfn>, i64> {
    if entries > FIRST_RESERVED_GDT_ENTRY {
        return Err(-EINVAL);
    }
    let frames = frames.ok_or(-EFAULT)?;
    let needed = entries.div_ceil(DESCRIPTORS_PER_PAGE) as usize;
    let frames = frames.get(..needed).ok_or(-EFAULT)?;
    for (taken, &mfn) in frames.iter().enumerate() {
        if let Err(errno) = get_descriptor_frame(mmu, mem, mfn) {
            for &held in &frames[..taken] {
                mmu.put_segdesc(mem, held);
            }
            return Err(errno);
        }
    }
    for &old in current {
        mmu.put_segdesc(mem, old);
    }
    Ok(frames.to_vec())
}

/// `HYPERVISOR_update_descriptor(maddr, desc)`: write one checked
/// descriptor at machine address `maddr`, which must be 8-aligned in a
/// frame of the domain that is a descriptor table or may be written (not
/// a page table).
pub fn update_descriptor<M: MmuMemory>(
    mmu: &mut PvMmu,
    mem: &mut M,
    maddr: u64,
    desc: u64,
) -> Result<(), i64> {
    if maddr & 7 != 0 {
        return Err(-EINVAL);
    }
    let mfn = maddr >> 12;
    let info = mmu.frame(mfn).ok_or(-EINVAL)?;
    if info.reserved || matches!(info.held_type(), Some(FrameType::PageTable(_))) {
        return Err(-EINVAL);
    }
    let desc = check_descriptor(desc).ok_or(-EINVAL)?;
    mem.write_entry(mfn, ((maddr & 0xfff) / 8) as usize, desc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::PvMmuConfig;
    use crate::MemFrames;

    const USER_CS64: u64 = 0x00af_fb00_0000_ffff;
    const KERNEL_CS64_DPL0: u64 = 0x00af_9b00_0000_ffff;
    const TSS: u64 = 0x0000_8900_0000_0067;

    #[test]
    fn descriptors_are_checked_as_xen_does() {
        assert_eq!(check_descriptor(0), Some(0));
        assert_eq!(check_descriptor(USER_CS64), Some(USER_CS64));
        // DPL 0 code becomes DPL 3.
        assert_eq!(check_descriptor(KERNEL_CS64_DPL0), Some(USER_CS64));
        assert_eq!(check_descriptor(TSS), None);
        // A call gate to the guest's 0x33 with DPL 3: kept, DPL forced 0.
        let gate = 0x0000_ec00_0033_0000u64 | (1 << 47);
        assert_eq!(check_descriptor(gate), Some(gate & !SEG_DPL));
        // ... to a ring-0 selector: refused.
        assert_eq!(check_descriptor(0x0000_ec00_0008_0000 | (1 << 47)), None);
    }

    fn domain() -> (PvMmu, MemFrames) {
        (
            PvMmu::new(PvMmuConfig::new(1, 64, 1)).unwrap(),
            MemFrames::new(64),
        )
    }

    #[test]
    fn set_gdt_validates_fixes_up_and_releases() {
        let (mut mmu, mut mem) = domain();
        mem.write_entry(10, 6, KERNEL_CS64_DPL0);
        let frames = set_gdt(&mut mmu, &mut mem, &[], Some(&[10]), 16).unwrap();
        assert_eq!(frames, vec![10]);
        assert_eq!(mem.read_entry(10, 6), USER_CS64, "DPL fixed up in place");
        assert_eq!(mmu.frame(10).unwrap().held_type(), Some(FrameType::SegDesc));
        // A TSS descriptor in the next GDT: refused, the old one kept.
        mem.write_entry(11, 3, TSS);
        assert_eq!(
            set_gdt(&mut mmu, &mut mem, &frames, Some(&[11]), 8),
            Err(-EINVAL)
        );
        assert_eq!(mmu.frame(11).unwrap().held_type(), None);
        assert_eq!(
            set_gdt(&mut mmu, &mut mem, &frames, Some(&[12]), 8),
            Ok(vec![12])
        );
        assert_eq!(mmu.frame(10).unwrap().held_type(), None, "released");
        assert_eq!(set_gdt(&mut mmu, &mut mem, &[12], None, 8), Err(-EFAULT));
        assert_eq!(
            set_gdt(
                &mut mmu,
                &mut mem,
                &[12],
                Some(&[13]),
                FIRST_RESERVED_GDT_ENTRY + 1
            ),
            Err(-EINVAL)
        );
        assert_eq!(
            set_gdt(&mut mmu, &mut mem, &[12], Some(&[64]), 8),
            Err(-EINVAL),
            "a frame outside the domain"
        );
        mmu.check_invariants(&mem).unwrap();
    }

    #[test]
    fn update_descriptor_checks_alignment_type_and_content() {
        let (mut mmu, mut mem) = domain();
        assert_eq!(
            update_descriptor(&mut mmu, &mut mem, (10 << 12) + 4, 0),
            Err(-EINVAL)
        );
        assert_eq!(
            update_descriptor(&mut mmu, &mut mem, 10 << 12, TSS),
            Err(-EINVAL)
        );
        update_descriptor(&mut mmu, &mut mem, (10 << 12) + 48, KERNEL_CS64_DPL0).unwrap();
        assert_eq!(mem.read_entry(10, 6), USER_CS64);
        assert_eq!(
            update_descriptor(&mut mmu, &mut mem, 64 << 12, 0),
            Err(-EINVAL)
        );
    }
}
