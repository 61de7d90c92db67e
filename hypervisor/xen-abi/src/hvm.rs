//! `hvm_op` sub-operations and HVM parameters.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const HVMOP_SET_PARAM: u64 = 0;
pub const HVMOP_GET_PARAM: u64 = 1;
pub const HVMOP_PAGETABLE_DYING: u64 = 9;
pub const HVMOP_GET_TIME: u64 = 10;
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u64 = 23;

pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
pub const HVM_PARAM_STORE_PFN: u32 = 1;
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
pub const HVM_PARAM_PAE_ENABLED: u32 = 4;
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// One past the highest parameter index.
pub const HVM_NR_PARAMS: u32 = 39;

/// Bits 63:56 of CALLBACK_IRQ select how the upcall is delivered.
pub const CALLBACK_VIA_TYPE_SHIFT: u32 = 56;
pub const CALLBACK_VIA_TYPE_GSI: u64 = 0;
pub const CALLBACK_VIA_TYPE_PCI_INTX: u64 = 1;
pub const CALLBACK_VIA_TYPE_VECTOR: u64 = 2;

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmParam {
    pub domid: u16,
    pub _pad: u16,
    pub index: u32,
    pub value: u64,
}

/// `struct xen_hvm_evtchn_upcall_vector`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnUpcallVector {
    pub vcpu: u32,
    pub vector: u8,
    pub _pad: [u8; 3],
}

/// Lowest vector a guest may ask upcalls on (below are exceptions).
pub const MIN_UPCALL_VECTOR: u8 = 0x10;
