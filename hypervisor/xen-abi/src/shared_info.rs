//! The shared_info page and per-vCPU vcpu_info (x86_64 layout).
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// vcpu_info slots embedded in shared_info.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
pub const VCPU_INFO_SIZE: usize = 64;

pub const OFFSET_VCPU_INFO: usize = 0x000;
pub const OFFSET_EVTCHN_PENDING: usize = 0x800;
pub const OFFSET_EVTCHN_MASK: usize = 0xa00;
pub const OFFSET_WC_VERSION: usize = 0xc00;
pub const OFFSET_WC_SEC: usize = 0xc04;
pub const OFFSET_WC_NSEC: usize = 0xc08;
pub const OFFSET_WC_SEC_HI: usize = 0xc0c;
pub const OFFSET_ARCH_MAX_PFN: usize = 0xc10;
/// u64 words in each of the pending and mask bitmaps.
pub const EVTCHN_WORDS: usize = 64;

/// Offsets inside one vcpu_info.
pub const VCPU_INFO_UPCALL_PENDING: usize = 0;
pub const VCPU_INFO_UPCALL_MASK: usize = 1;
pub const VCPU_INFO_PENDING_SEL: usize = 8;
pub const VCPU_INFO_TIME: usize = 32;

/// `struct vcpu_time_info`: the pvclock record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    /// Odd while the hypervisor updates the record.
    pub version: u32,
    pub _pad0: u32,
    pub tsc_timestamp: u64,
    /// Nanoseconds since the domain started, at `tsc_timestamp`.
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub _pad1: [u8; 2],
}
/// `XEN_PVCLOCK_TSC_STABLE_BIT`: the TSC is constant and synchronised.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;

/// `struct vcpu_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    pub evtchn_upcall_pending: u8,
    pub evtchn_upcall_mask: u8,
    pub _pad: [u8; 6],
    pub evtchn_pending_sel: u64,
    pub arch_cr2: u64,
    pub arch_pad: u64,
    pub time: VcpuTimeInfo,
}

/// Scale a TSC delta to nanoseconds as guests do with vcpu_time_info.
pub fn pvclock_scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let delta = if shift < 0 {
        delta >> (-shift as u32)
    } else {
        delta << shift as u32
    };
    ((delta as u128 * mul as u128) >> 32) as u64
}

/// Compute (mul, shift) such that `pvclock_scale_delta(tsc, mul, shift)` turns
/// TSC ticks at `tsc_hz` into nanoseconds.
pub fn pvclock_parameters(tsc_hz: u64) -> (u32, i8) {
    let mut shift: i8 = 0;
    let mut base = tsc_hz;
    // With base = tsc_hz * 2^shift, mul = 1e9 * 2^32 / base fits in 32 bits
    // once base lies in (1e9, 2e9].
    while base > 2_000_000_000 {
        base /= 2;
        shift -= 1;
    }
    while base <= 1_000_000_000 {
        base *= 2;
        shift += 1;
    }
    let mul = ((1_000_000_000u128 << 32) / base as u128) as u32;
    (mul, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvclock_round_trip() {
        for hz in [1_000_000_000u64, 2_400_000_000, 3_192_000_000, 100_000_000] {
            let (mul, shift) = pvclock_parameters(hz);
            let ns = pvclock_scale_delta(hz, mul, shift);
            assert!((999_999_000..=1_000_001_000).contains(&ns), "{hz}: {ns}");
        }
    }
}
