//! KVM's XSAVE area and XCR0 ↔ Xen's CPU_XSAVE save record
//! (`struct hvm_hw_cpu_xsave`, one per vCPU, variable length).
//!
//! The record is `xfeature_mask` (ignored on restore; kxen writes 0),
//! `xcr0`, `xcr0_accum` (every XCR0 bit the guest has used) and the XSAVE
//! area in its standard, uncompacted form: the 512-byte legacy region,
//! the 64-byte header, then each extended component at the offset CPUID
//! leaf 0xD gives it. The descriptor's length is the fixed 24 bytes plus
//! the area up to the end of the last component `xcr0_accum` names.
//! KVM_GET_XSAVE returns the same uncompacted form in 4 KiB.
//!
//! KVM does not track `xcr0_accum`; kxen saves `xcr0 | xstate_bv`, which
//! covers every component that holds non-initial state, the ones the
//! guest may return to. Components past 4 KiB (AMX tile data) need
//! KVM_CAP_XSAVE2, which kxen does not enable: such a state is refused on
//! save and on load.
//!
//! On load, the checks Xen's restore makes on the XCR values and the
//! header: x87 enabled, AVX only with SSE, the three AVX-512 components
//! together and only with AVX, `xcr0` within `xcr0_accum`, `xcr0_accum`
//! within what the target vCPU's CPUID offers (KVM_SET_XCRS would refuse
//! the rest), `xstate_bv` within `xcr0_accum`, `xcomp_bv` and the header's
//! reserved words 0; the record long enough for `xcr0_accum`'s area, and
//! anything past it zero.
use kvm_bindings::{kvm_xsave, CpuId};
use thiserror::Error;
use xen_abi::hvm_save::HwCpuXsave;
use zerocopy::{FromBytes, IntoBytes};

/// Bytes of the record before the XSAVE area.
pub const RECORD_HEAD: usize = 24;
/// The legacy region plus the XSAVE header.
pub const AREA_MIN: usize = 576;
/// The XSAVE area KVM_GET_XSAVE and KVM_SET_XSAVE move.
pub const KVM_AREA: usize = 4096;
pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const YMM: u64 = 1 << 2;
pub const AVX512: u64 = 0b111 << 5;

/// Where each XSAVE component lives in the uncompacted area, and the
/// XCR0 bits a vCPU may set: CPUID leaf 0xD as the vCPU sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XstateLayout {
    /// CPUID.(0xD,0):EDX:EAX.
    pub supported_xcr0: u64,
    /// (offset, size) of component `i` (from CPUID.(0xD,i)), for i ≥ 2.
    pub components: [(u32, u32); 64],
}

impl XstateLayout {
    /// The layout a vCPU with this CPUID has.
    pub fn from_cpuid(cpuid: &CpuId) -> Self {
        let mut layout = XstateLayout {
            supported_xcr0: 0,
            components: [(0, 0); 64],
        };
        for entry in cpuid
            .as_slice()
            .iter()
            .filter(|entry| entry.function == 0xd)
        {
            match entry.index {
                0 => layout.supported_xcr0 = u64::from(entry.eax) | u64::from(entry.edx) << 32,
                2..=63 => layout.components[entry.index as usize] = (entry.ebx, entry.eax),
                _ => {}
            }
        }
        layout
    }

    /// The uncompacted area's size for the components in `mask`.
    pub fn area_size(&self, mask: u64) -> usize {
        (2..64)
            .filter(|component| mask & (1 << component) != 0)
            .map(|component| {
                let (offset, size) = self.components[component];
                offset as usize + size as usize
            })
            .fold(AREA_MIN, usize::max)
    }
}

/// XSAVE state the record cannot carry.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XsaveSaveError {
    #[error("the XSAVE area for {0:#x} is {1} bytes, past KVM_GET_XSAVE's 4 KiB")]
    AreaTooLarge(u64, usize),
    #[error("KVM returned a compacted XSAVE area (xcomp_bv {0:#x})")]
    Compacted(u64),
}

/// A CPU_XSAVE record refused on load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XsaveLoadError {
    #[error("CPU_XSAVE record is {0} bytes, shorter than {1}")]
    Truncated(usize, usize),
    #[error("bad XCR0 {xcr0:#x} (accumulated {accum:#x}): {reason}")]
    BadXcr0 {
        xcr0: u64,
        accum: u64,
        reason: &'static str,
    },
    #[error("XCR0 bits {0:#x} are not offered by the vCPU's CPUID")]
    Unsupported(u64),
    #[error("xstate_bv {0:#x} names components outside xcr0_accum {1:#x}")]
    BadXstateBv(u64, u64),
    #[error("xcomp_bv {0:#x}: the area must be uncompacted")]
    Compacted(u64),
    #[error("the XSAVE header's reserved words are not zero")]
    HeaderReserved,
    #[error("the XSAVE area for {0:#x} is {1} bytes, past KVM_SET_XSAVE's 4 KiB")]
    AreaTooLarge(u64, usize),
    #[error("the CPU_XSAVE record has non-zero bytes past its area's end ({0})")]
    TrailingData(usize),
}

fn kvm_area(xsave: &kvm_xsave) -> [u8; KVM_AREA] {
    let mut area = [0; KVM_AREA];
    area.copy_from_slice(xsave.region.as_bytes());
    area
}

/// KVM's XSAVE area and XCR0 as the CPU_XSAVE record's bytes.
pub fn save(
    xsave: &kvm_xsave,
    xcr0: u64,
    layout: &XstateLayout,
) -> Result<Vec<u8>, XsaveSaveError> {
    let area = kvm_area(xsave);
    let header = HwCpuXsave::read_from_bytes(&[&[0; RECORD_HEAD][..], &area[..AREA_MIN]].concat())
        .expect("the fixed part is 600 bytes");
    if header.xcomp_bv != 0 {
        return Err(XsaveSaveError::Compacted(header.xcomp_bv));
    }
    let accum = xcr0 | header.xstate_bv;
    let size = layout.area_size(accum);
    if size > KVM_AREA {
        return Err(XsaveSaveError::AreaTooLarge(accum, size));
    }
    let mut record = Vec::with_capacity(RECORD_HEAD + size);
    record.extend_from_slice(&0u64.to_le_bytes());
    record.extend_from_slice(&xcr0.to_le_bytes());
    record.extend_from_slice(&accum.to_le_bytes());
    record.extend_from_slice(&area[..size]);
    Ok(record)
}

fn check_xcr0(xcr0: u64, accum: u64) -> Result<(), XsaveLoadError> {
    let refuse = |reason| XsaveLoadError::BadXcr0 {
        xcr0,
        accum,
        reason,
    };
    for value in [xcr0, accum] {
        if value & X87 == 0 {
            return Err(refuse("x87 state disabled"));
        }
        if value & YMM != 0 && value & SSE == 0 {
            return Err(refuse("AVX without SSE"));
        }
        if value & AVX512 != 0 && (value & AVX512 != AVX512 || value & YMM == 0) {
            return Err(refuse("AVX-512 components partly enabled or without AVX"));
        }
    }
    if xcr0 & !accum != 0 {
        return Err(refuse("xcr0 has bits xcr0_accum lacks"));
    }
    Ok(())
}

/// The CPU_XSAVE record's bytes (the descriptor's whole length) as KVM's
/// XSAVE area and XCR0, for a vCPU with `layout`.
pub fn load(record: &[u8], layout: &XstateLayout) -> Result<(kvm_xsave, u64), XsaveLoadError> {
    let fixed = std::mem::size_of::<HwCpuXsave>();
    let head = record
        .get(..fixed)
        .and_then(|bytes| HwCpuXsave::read_from_bytes(bytes).ok())
        .ok_or(XsaveLoadError::Truncated(record.len(), fixed))?;
    let (xcr0, accum) = (head.xcr0, head.xcr0_accum);
    check_xcr0(xcr0, accum)?;
    let unsupported = accum & !layout.supported_xcr0;
    if unsupported != 0 {
        return Err(XsaveLoadError::Unsupported(unsupported));
    }
    if head.xstate_bv & !accum != 0 {
        return Err(XsaveLoadError::BadXstateBv(head.xstate_bv, accum));
    }
    if head.xcomp_bv != 0 {
        return Err(XsaveLoadError::Compacted(head.xcomp_bv));
    }
    if head.xsave_hdr_reserved != [0; 6] {
        return Err(XsaveLoadError::HeaderReserved);
    }
    let size = layout.area_size(accum);
    if size > KVM_AREA {
        return Err(XsaveLoadError::AreaTooLarge(accum, size));
    }
    let area = &record[RECORD_HEAD..];
    if area.len() < size {
        return Err(XsaveLoadError::Truncated(record.len(), RECORD_HEAD + size));
    }
    if let Some(offset) = area[size..].iter().position(|&byte| byte != 0) {
        return Err(XsaveLoadError::TrailingData(RECORD_HEAD + size + offset));
    }
    let mut xsave = kvm_xsave::default();
    xsave.region.as_mut_bytes()[..size].copy_from_slice(&area[..size]);
    Ok((xsave, xcr0))
}
