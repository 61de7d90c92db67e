//! `event_channel_op` sub-operations (2-level ABI and the FIFO ABI's structures).
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
pub const EVTCHNOP_BIND_VIRQ: u64 = 1;
pub const EVTCHNOP_BIND_PIRQ: u64 = 2;
pub const EVTCHNOP_CLOSE: u64 = 3;
pub const EVTCHNOP_SEND: u64 = 4;
pub const EVTCHNOP_STATUS: u64 = 5;
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
pub const EVTCHNOP_BIND_IPI: u64 = 7;
pub const EVTCHNOP_BIND_VCPU: u64 = 8;
pub const EVTCHNOP_UNMASK: u64 = 9;
pub const EVTCHNOP_RESET: u64 = 10;
pub const EVTCHNOP_INIT_CONTROL: u64 = 11;
pub const EVTCHNOP_EXPAND_ARRAY: u64 = 12;
pub const EVTCHNOP_SET_PRIORITY: u64 = 13;

/// Ports in the 2-level ABI for a 64-bit guest: 64 words of 64 bits.
pub const NR_EVENT_CHANNELS_2L: u32 = 64 * 64;

/// `EVTCHNSTAT_*`.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
pub const EVTCHNSTAT_PIRQ: u32 = 3;
pub const EVTCHNSTAT_VIRQ: u32 = 4;
pub const EVTCHNSTAT_IPI: u32 = 5;

/// Virtual IRQs.
pub const VIRQ_TIMER: u32 = 0;
pub const VIRQ_DEBUG: u32 = 1;
pub const VIRQ_CONSOLE: u32 = 2;
pub const VIRQ_DOM_EXC: u32 = 3;
pub const VIRQ_TBUF: u32 = 4;
pub const VIRQ_DEBUGGER: u32 = 6;
pub const VIRQ_XENOPROF: u32 = 7;
pub const VIRQ_CON_RING: u32 = 8;
pub const VIRQ_PCPU_STATE: u32 = 9;
pub const VIRQ_MEM_EVENT: u32 = 10;
pub const VIRQ_ARGO: u32 = 11;
pub const VIRQ_ENOMEM: u32 = 12;
pub const VIRQ_XENPMU: u32 = 13;
pub const NR_VIRQS: u32 = 24;

/// VIRQs that exist once per vCPU; the others are global and bind to vCPU 0.
pub fn virq_is_per_vcpu(virq: u32) -> bool {
    matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    /// Out.
    pub port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BindInterdomain {
    pub remote_dom: u16,
    pub _pad: u16,
    pub remote_port: u32,
    /// Out.
    pub local_port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BindVirq {
    pub virq: u32,
    pub vcpu: u32,
    /// Out.
    pub port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BindIpi {
    pub vcpu: u32,
    /// Out.
    pub port: u32,
}

/// Argument of close, send and unmask.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PortArg {
    pub port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Status {
    pub dom: u16,
    pub _pad: u16,
    pub port: u32,
    /// Out: `EVTCHNSTAT_*`.
    pub status: u32,
    /// Out: the vCPU notified.
    pub vcpu: u32,
    /// Out, by status: unbound {dom u16}, interdomain {dom u16, pad, port u32},
    /// virq u32.
    pub u: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BindVcpu {
    pub port: u32,
    pub vcpu: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Reset {
    pub dom: u16,
}

// ---- FIFO ABI (public/event_channel.h) --------------------------------------

/// Width of an event word's LINK field, reported by init_control.
pub const EVTCHN_FIFO_LINK_BITS: u8 = 17;
/// Ports the FIFO ABI can address.
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;
/// Event word bits.
pub const EVTCHN_FIFO_PENDING: u32 = 31;
pub const EVTCHN_FIFO_MASKED: u32 = 30;
pub const EVTCHN_FIFO_LINKED: u32 = 29;
pub const EVTCHN_FIFO_BUSY: u32 = 28;
pub const EVTCHN_FIFO_LINK_MASK: u32 = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
/// Priorities: 0 is the highest, 15 the lowest.
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
pub const EVTCHN_FIFO_MAX_QUEUES: usize = 16;
/// Event words (u32) in one event array page.
pub const EVTCHN_FIFO_WORDS_PER_PAGE: u32 = 4096 / 4;
/// Event array pages a domain may add (the whole FIFO port space).
pub const EVTCHN_FIFO_MAX_ARRAY_PAGES: u32 = EVTCHN_FIFO_NR_CHANNELS / EVTCHN_FIFO_WORDS_PER_PAGE;
/// `evtchn_fifo_control_block`: `ready` (u32), a reserved u32, then
/// `head[16]` (u32 each).
pub const EVTCHN_FIFO_CONTROL_BLOCK_SIZE: u32 = 8 + 4 * EVTCHN_FIFO_MAX_QUEUES as u32;
pub const EVTCHN_FIFO_CONTROL_READY: u64 = 0;
pub const EVTCHN_FIFO_CONTROL_HEAD: u64 = 8;

/// `evtchn_init_control` (same layout for 32-bit callers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitControl {
    pub control_gfn: u64,
    pub offset: u32,
    pub vcpu: u32,
    /// Out.
    pub link_bits: u8,
    pub _pad: [u8; 7],
}

/// `evtchn_expand_array`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExpandArray {
    pub array_gfn: u64,
}

/// `evtchn_set_priority`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetPriority {
    pub port: u32,
    pub priority: u32,
}
