//! `vcpu_op` sub-operations and the runstate area.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const VCPUOP_INITIALISE: u64 = 0;
pub const VCPUOP_UP: u64 = 1;
pub const VCPUOP_DOWN: u64 = 2;
pub const VCPUOP_IS_UP: u64 = 3;
pub const VCPUOP_GET_RUNSTATE_INFO: u64 = 4;
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
pub const VCPUOP_SET_PERIODIC_TIMER: u64 = 6;
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;
pub const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;
pub const VCPUOP_SEND_NMI: u64 = 11;
pub const VCPUOP_GET_PHYSID: u64 = 12;
pub const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u64 = 13;

/// `struct vcpu_register_vcpu_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterVcpuInfo {
    /// Guest frame holding the vcpu_info.
    pub mfn: u64,
    /// Byte offset of the vcpu_info within that frame.
    pub offset: u32,
    pub rsvd: u32,
}

/// `struct vcpu_set_periodic_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetPeriodicTimer {
    pub period_ns: u64,
}

/// `struct vcpu_set_singleshot_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetSingleshotTimer {
    pub timeout_abs_ns: u64,
    pub flags: u32,
    pub _pad: u32,
}
/// Fail with -ETIME if the timeout is already in the past.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1;
pub const ETIME: i64 = 62;
/// Xen refuses periodic timers faster than this.
pub const MIN_PERIODIC_PERIOD_NS: u64 = 1_000_000;

/// `struct vcpu_register_runstate_memory_area` / `_time_memory_area`: one guest
/// virtual address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterMemoryArea {
    pub addr: u64,
}

/// `struct vcpu_runstate_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RunstateInfo {
    pub state: u32,
    pub _pad: u32,
    /// System time of the last state change; bit 63 set while being updated.
    pub state_entry_time: u64,
    /// Time spent in each state, in ns.
    pub time: [u64; 4],
}

pub const RUNSTATE_RUNNING: u32 = 0;
pub const RUNSTATE_RUNNABLE: u32 = 1;
pub const RUNSTATE_BLOCKED: u32 = 2;
pub const RUNSTATE_OFFLINE: u32 = 3;
/// Set in `state_entry_time` while the area is updated (runstate_update_flag).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

// ---- 32-bit ("compat") layouts ----------------------------------------------
//
// On i386 a `uint64_t` is only 4-byte aligned, so structs with one move
// their later fields and shrink. vcpu_register_vcpu_info and
// vcpu_set_periodic_timer read the same in both modes (Xen's
// CHECK_vcpu_* asserts it); the runstate and time-area registrations
// carry a 4-byte pointer in the low half of their 8-byte union.

/// Compat `struct vcpu_set_singleshot_timer`: `flags` at 8, no tail
/// padding; 12 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatSetSingleshotTimer {
    pub timeout_abs_ns: u64,
    pub flags: u32,
}

impl From<CompatSetSingleshotTimer> for SetSingleshotTimer {
    fn from(c: CompatSetSingleshotTimer) -> Self {
        SetSingleshotTimer {
            timeout_abs_ns: c.timeout_abs_ns,
            flags: c.flags,
            _pad: 0,
        }
    }
}

/// Compat `struct vcpu_runstate_info`: `state_entry_time` at 4 and `time`
/// at 12; 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatRunstateInfo {
    pub state: u32,
    pub state_entry_time: u64,
    pub time: [u64; 4],
}

impl From<RunstateInfo> for CompatRunstateInfo {
    fn from(n: RunstateInfo) -> Self {
        CompatRunstateInfo {
            state: n.state,
            state_entry_time: n.state_entry_time,
            time: n.time,
        }
    }
}

/// Offset of `state_entry_time` in the native runstate area.
pub const RUNSTATE_ENTRY_TIME_OFFSET: usize = 8;
/// Offset of `state_entry_time` in the compat runstate area.
pub const COMPAT_RUNSTATE_ENTRY_TIME_OFFSET: usize = 4;

const _: () = {
    assert!(core::mem::size_of::<RunstateInfo>() == 48);
    assert!(core::mem::offset_of!(RunstateInfo, state_entry_time) == RUNSTATE_ENTRY_TIME_OFFSET);
    assert!(core::mem::size_of::<CompatSetSingleshotTimer>() == 12);
    assert!(core::mem::offset_of!(CompatSetSingleshotTimer, flags) == 8);
    assert!(core::mem::size_of::<CompatRunstateInfo>() == 44);
    assert!(
        core::mem::offset_of!(CompatRunstateInfo, state_entry_time)
            == COMPAT_RUNSTATE_ENTRY_TIME_OFFSET
    );
    assert!(core::mem::offset_of!(CompatRunstateInfo, time) == 12);
    assert!(core::mem::size_of::<RegisterVcpuInfo>() == 16);
    assert!(core::mem::size_of::<SetPeriodicTimer>() == 8);
};
