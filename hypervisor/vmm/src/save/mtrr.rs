//! The MTRR MSRs and IA32_PAT ↔ Xen's MTRR save record
//! (`struct hvm_hw_mtrr`, one per vCPU).
//!
//! The record is the MSRs' values as they are: PAT, the 8 variable-range
//! PHYSBASE/PHYSMASK pairs, the 11 fixed-range MSRs, MTRRcap and
//! MTRRdefType. MTRRcap is read-only (KVM reports its own: 8 variable
//! ranges, fixed ranges, write-combining), so it is saved and checked on
//! load but never written: a record claiming more variable ranges than
//! KVM's vCPU has, with one of the extra ranges enabled, is refused. The
//! other checks are the SDM's, the ones Xen's MSR writes make on load:
//! memory types 0, 1, 4, 5, 6 (PAT also 7), reserved bits clear. Bits
//! beyond the guest's physical address width are left to KVM, which
//! refuses the MSR write (kxen reports which MSR).
use thiserror::Error;
use xen_abi::hvm_save::{HwMtrr, MTRR_VCNT, NUM_FIXED_MSR};

pub const MSR_MTRR_CAP: u32 = 0xfe;
pub const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
pub const MSR_PAT: u32 = 0x277;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// The fixed-range MTRRs in the record's order.
pub const FIXED_MSRS: [u32; NUM_FIXED_MSR] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
const DEF_TYPE_VALID: u64 = 0xff | (1 << 10) | (1 << 11);
const VAR_BASE_RESERVED_LOW: u64 = 0xf00;
const VAR_MASK_RESERVED_LOW: u64 = 0x7ff;
const VAR_MASK_VALID: u64 = 1 << 11;

/// The MSRs the MTRR record carries, in [`mtrr_msr_indices`]' order.
pub type MtrrMsrs = [u64; MTRR_MSR_COUNT];
/// PAT, the variable pairs, the fixed ranges, MTRRcap, MTRRdefType.
pub const MTRR_MSR_COUNT: usize = 1 + 2 * MTRR_VCNT + NUM_FIXED_MSR + 2;

/// The MSR numbers of [`MtrrMsrs`], in the record's field order.
pub fn mtrr_msr_indices() -> [u32; MTRR_MSR_COUNT] {
    let mut indices = [0; MTRR_MSR_COUNT];
    indices[0] = MSR_PAT;
    for (slot, index) in indices[1..=2 * MTRR_VCNT]
        .iter_mut()
        .zip(MSR_MTRR_PHYS_BASE0..)
    {
        *slot = index;
    }
    indices[1 + 2 * MTRR_VCNT..1 + 2 * MTRR_VCNT + NUM_FIXED_MSR].copy_from_slice(&FIXED_MSRS);
    indices[MTRR_MSR_COUNT - 2] = MSR_MTRR_CAP;
    indices[MTRR_MSR_COUNT - 1] = MSR_MTRR_DEF_TYPE;
    indices
}

/// An MTRR record refused on load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MtrrLoadError {
    #[error("PAT {0:#x} has an undefined memory type or reserved bits")]
    BadPat(u64),
    #[error("MTRRdefType {0:#x} has an undefined memory type or reserved bits")]
    BadDefType(u64),
    #[error("fixed-range MTRR {index:#x} = {value:#x} has an undefined memory type")]
    BadFixed { index: u32, value: u64 },
    #[error("variable-range MTRR {index:#x} = {value:#x} has reserved bits or a bad type")]
    BadVariable { index: u32, value: u64 },
    #[error("variable range {0} is enabled but the vCPU has {1} (MTRRcap {2:#x})")]
    RangeBeyondCap(usize, u64, u64),
}

fn valid_mtrr_type(memory_type: u64) -> bool {
    matches!(memory_type, 0 | 1 | 4 | 5 | 6)
}

/// Whether every byte of `value` is a memory type PAT accepts.
pub fn valid_pat(value: u64) -> bool {
    value
        .to_le_bytes()
        .iter()
        .all(|&entry| matches!(entry, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The MSRs as the MTRR record.
pub fn save(msrs: &MtrrMsrs) -> HwMtrr {
    let mut record = HwMtrr {
        msr_pat_cr: msrs[0],
        ..Default::default()
    };
    record
        .msr_mtrr_var
        .copy_from_slice(&msrs[1..=2 * MTRR_VCNT]);
    record
        .msr_mtrr_fixed
        .copy_from_slice(&msrs[1 + 2 * MTRR_VCNT..1 + 2 * MTRR_VCNT + NUM_FIXED_MSR]);
    record.msr_mtrr_cap = msrs[MTRR_MSR_COUNT - 2];
    record.msr_mtrr_def_type = msrs[MTRR_MSR_COUNT - 1];
    record
}

/// The MTRR record as the MSRs to write, checked against the target
/// vCPU's MTRRcap (`vcpu_cap`). MTRRcap's slot keeps `vcpu_cap`: it is
/// read-only and [`super::kvm`] does not write it.
pub fn load(record: &HwMtrr, vcpu_cap: u64) -> Result<MtrrMsrs, MtrrLoadError> {
    if !valid_pat(record.msr_pat_cr) {
        return Err(MtrrLoadError::BadPat(record.msr_pat_cr));
    }
    let def_type = record.msr_mtrr_def_type;
    if def_type & !DEF_TYPE_VALID != 0 || !valid_mtrr_type(def_type & 0xff) {
        return Err(MtrrLoadError::BadDefType(def_type));
    }
    for (&index, &value) in FIXED_MSRS.iter().zip(&record.msr_mtrr_fixed) {
        if !value
            .to_le_bytes()
            .iter()
            .all(|&t| valid_mtrr_type(t.into()))
        {
            return Err(MtrrLoadError::BadFixed { index, value });
        }
    }
    let vcpu_ranges = vcpu_cap & 0xff;
    for (pair, range) in record.msr_mtrr_var.chunks_exact(2).enumerate() {
        let (base, mask) = (range[0], range[1]);
        let base_index = MSR_MTRR_PHYS_BASE0 + 2 * pair as u32;
        if base & VAR_BASE_RESERVED_LOW != 0 || !valid_mtrr_type(base & 0xff) {
            return Err(MtrrLoadError::BadVariable {
                index: base_index,
                value: base,
            });
        }
        if mask & VAR_MASK_RESERVED_LOW != 0 {
            return Err(MtrrLoadError::BadVariable {
                index: base_index + 1,
                value: mask,
            });
        }
        if mask & VAR_MASK_VALID != 0 && pair as u64 >= vcpu_ranges {
            return Err(MtrrLoadError::RangeBeyondCap(pair, vcpu_ranges, vcpu_cap));
        }
    }
    let mut msrs = [0; MTRR_MSR_COUNT];
    msrs[0] = record.msr_pat_cr;
    msrs[1..=2 * MTRR_VCNT].copy_from_slice(&record.msr_mtrr_var);
    msrs[1 + 2 * MTRR_VCNT..1 + 2 * MTRR_VCNT + NUM_FIXED_MSR]
        .copy_from_slice(&record.msr_mtrr_fixed);
    msrs[MTRR_MSR_COUNT - 2] = vcpu_cap;
    msrs[MTRR_MSR_COUNT - 1] = def_type;
    Ok(msrs)
}
