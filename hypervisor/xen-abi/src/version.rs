//! `xen_version` sub-operations and results.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const XENVER_VERSION: u64 = 0;
pub const XENVER_EXTRAVERSION: u64 = 1;
pub const XENVER_COMPILE_INFO: u64 = 2;
pub const XENVER_CAPABILITIES: u64 = 3;
pub const XENVER_CHANGESET: u64 = 4;
pub const XENVER_PLATFORM_PARAMETERS: u64 = 5;
pub const XENVER_GET_FEATURES: u64 = 6;
pub const XENVER_PAGESIZE: u64 = 7;
pub const XENVER_GUEST_HANDLE: u64 = 8;
pub const XENVER_COMMANDLINE: u64 = 9;
pub const XENVER_BUILD_ID: u64 = 10;

/// What `XENVER_capabilities` answers every domain, and `xl info` shows as
/// `xen_caps`: the guest ABIs the hypervisor runs, the same whatever the
/// caller's own type (Xen's `xen_cap_info`, built once at boot). 64-bit
/// PV first, then HVM's; no `xen-3.0-x86_32p`, as kxen runs no 32-bit PV
/// guests. Xen ends each name with a space; kxen does not.
pub const XEN_CAPABILITIES: &str = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64";

pub const EXTRAVERSION_LEN: usize = 16;
pub const CAPABILITIES_LEN: usize = 1024;
pub const CHANGESET_LEN: usize = 64;
pub const DOMAIN_HANDLE_LEN: usize = 16;
pub const COMMANDLINE_LEN: usize = 1024;

/// `xen_compile_info_t`.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompileInfo {
    pub compiler: [u8; 64],
    pub compile_by: [u8; 16],
    pub compile_domain: [u8; 32],
    pub compile_date: [u8; 32],
}

/// `xen_platform_parameters_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PlatformParameters {
    pub virt_start: u64,
}

/// `xen_feature_info_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FeatureInfo {
    pub submap_idx: u32,
    pub submap: u32,
}

/// XENFEAT_* bit numbers (submap 0).
pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
/// PV: MMU_PT_UPDATE_PRESERVE_AD is served.
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
/// PV: the highmem mapping assist (32-bit PAE guests' kmap batching).
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
/// PV: grant mappings may carry the PTE's available bits.
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
pub const XENFEAT_HVM_PIRQS: u32 = 10;
pub const XENFEAT_DOM0: u32 = 11;
pub const XENFEAT_LINUX_RSDP_UNRESTRICTED: u32 = 15;
