//! The shared_info page and per-vCPU vcpu_info: the x86_64 layout, and the
//! 32-bit ("compat") layout Xen uses for a domain it latched as 32-bit.
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

/// The compat (32-bit x86) layout, where `xen_ulong_t` is 4 bytes: the
/// 2-level bitmaps are 32 words of 32 bits, the selector is a u32 at 4,
/// and `wc_sec_hi` moved into `arch_shared_info` (after six u32 fields).
/// vcpu_info is 64 bytes with its time record at 32 in both layouts.
pub const COMPAT_OFFSET_EVTCHN_PENDING: usize = 0x800;
pub const COMPAT_OFFSET_EVTCHN_MASK: usize = 0x880;
pub const COMPAT_OFFSET_WC_VERSION: usize = 0x900;
pub const COMPAT_OFFSET_WC_SEC: usize = 0x904;
pub const COMPAT_OFFSET_WC_NSEC: usize = 0x908;
pub const COMPAT_OFFSET_ARCH_MAX_PFN: usize = 0x90c;
pub const COMPAT_OFFSET_WC_SEC_HI: usize = 0x924;
/// u32 words in each of the compat pending and mask bitmaps.
pub const COMPAT_EVTCHN_WORDS: usize = 32;
pub const COMPAT_VCPU_INFO_PENDING_SEL: usize = 4;

/// Which shared_info/vcpu_info layout a domain's guest reads. Xen starts
/// every HVM/PVH domain with the native one and latches the layout from
/// the vCPU's mode when the guest writes the hypercall page MSR or sets
/// HVM_PARAM_CALLBACK_IRQ (`hvm_latch_shinfo_size`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharedInfoLayout {
    #[default]
    Native,
    Compat,
}

impl SharedInfoLayout {
    /// The layout a vCPU in 64-bit mode (`long_mode` true) latches.
    pub const fn for_mode(long_mode: bool) -> Self {
        if long_mode {
            SharedInfoLayout::Native
        } else {
            SharedInfoLayout::Compat
        }
    }

    pub const fn is_compat(self) -> bool {
        matches!(self, SharedInfoLayout::Compat)
    }

    /// Bits in one word of the 2-level bitmaps and of the selector.
    pub const fn bits_per_word(self) -> u32 {
        match self {
            SharedInfoLayout::Native => 64,
            SharedInfoLayout::Compat => 32,
        }
    }

    /// Words in each 2-level bitmap.
    pub const fn evtchn_words(self) -> usize {
        match self {
            SharedInfoLayout::Native => EVTCHN_WORDS,
            SharedInfoLayout::Compat => COMPAT_EVTCHN_WORDS,
        }
    }

    /// Ports the 2-level ABI addresses in this layout (4096 or 1024).
    pub const fn nr_2l_ports(self) -> u32 {
        self.bits_per_word() * self.bits_per_word()
    }

    pub const fn evtchn_pending(self) -> usize {
        match self {
            SharedInfoLayout::Native => OFFSET_EVTCHN_PENDING,
            SharedInfoLayout::Compat => COMPAT_OFFSET_EVTCHN_PENDING,
        }
    }

    pub const fn evtchn_mask(self) -> usize {
        match self {
            SharedInfoLayout::Native => OFFSET_EVTCHN_MASK,
            SharedInfoLayout::Compat => COMPAT_OFFSET_EVTCHN_MASK,
        }
    }

    /// `wc_version`, followed by `wc_sec` and `wc_nsec` in both layouts.
    pub const fn wc_version(self) -> usize {
        match self {
            SharedInfoLayout::Native => OFFSET_WC_VERSION,
            SharedInfoLayout::Compat => COMPAT_OFFSET_WC_VERSION,
        }
    }

    pub const fn wc_sec_hi(self) -> usize {
        match self {
            SharedInfoLayout::Native => OFFSET_WC_SEC_HI,
            SharedInfoLayout::Compat => COMPAT_OFFSET_WC_SEC_HI,
        }
    }

    /// `arch.max_pfn`: a u64 natively, a u32 in the compat layout.
    pub const fn arch_max_pfn(self) -> usize {
        match self {
            SharedInfoLayout::Native => OFFSET_ARCH_MAX_PFN,
            SharedInfoLayout::Compat => COMPAT_OFFSET_ARCH_MAX_PFN,
        }
    }

    /// `evtchn_pending_sel` inside vcpu_info.
    pub const fn vcpu_pending_sel(self) -> usize {
        match self {
            SharedInfoLayout::Native => VCPU_INFO_PENDING_SEL,
            SharedInfoLayout::Compat => COMPAT_VCPU_INFO_PENDING_SEL,
        }
    }
}

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
    fn compat_layout_fits_where_xen_puts_it() {
        let c = SharedInfoLayout::Compat;
        // 32 vcpu_info, then 32 u32 pending and 32 u32 mask words.
        assert_eq!(c.evtchn_pending(), XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE);
        assert_eq!(
            c.evtchn_mask(),
            c.evtchn_pending() + COMPAT_EVTCHN_WORDS * 4
        );
        assert_eq!(c.wc_version(), c.evtchn_mask() + COMPAT_EVTCHN_WORDS * 4);
        // wc_version, wc_sec, wc_nsec, then arch: max_pfn, the frame list
        // list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation, wc_sec_hi.
        assert_eq!(c.arch_max_pfn(), c.wc_version() + 12);
        assert_eq!(c.wc_sec_hi(), c.arch_max_pfn() + 6 * 4);
        assert_eq!(c.nr_2l_ports(), 1024);
        assert_eq!(SharedInfoLayout::Native.nr_2l_ports(), 4096);
        assert_eq!(SharedInfoLayout::for_mode(false), c);
    }

    #[test]
    fn pvclock_round_trip() {
        for hz in [1_000_000_000u64, 2_400_000_000, 3_192_000_000, 100_000_000] {
            let (mul, shift) = pvclock_parameters(hz);
            let ns = pvclock_scale_delta(hz, mul, shift);
            assert!((999_999_000..=1_000_001_000).contains(&ns), "{hz}: {ns}");
        }
    }
}
