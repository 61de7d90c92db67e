//! `sched_op` sub-operations.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const SCHEDOP_YIELD: u64 = 0;
pub const SCHEDOP_BLOCK: u64 = 1;
pub const SCHEDOP_SHUTDOWN: u64 = 2;
pub const SCHEDOP_POLL: u64 = 3;
pub const SCHEDOP_REMOTE_SHUTDOWN: u64 = 4;
pub const SCHEDOP_SHUTDOWN_CODE: u64 = 5;
pub const SCHEDOP_WATCHDOG: u64 = 6;

/// Shutdown reasons (`SHUTDOWN_*`).
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;
pub const SHUTDOWN_WATCHDOG: u32 = 4;
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
pub const SHUTDOWN_MAX: u32 = SHUTDOWN_SOFT_RESET;

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Shutdown {
    pub reason: u32,
}

/// `struct sched_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Poll {
    /// Guest pointer to an array of `u32` ports.
    pub ports: u64,
    pub nr_ports: u32,
    pub _pad: u32,
    /// Absolute system time in ns; 0 means no timeout.
    pub timeout: u64,
}

/// Compat (32-bit) `struct sched_poll`: a 4-byte port handle, so
/// `nr_ports` sits at 4 and `timeout` at 8; 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatPoll {
    /// Guest pointer to an array of `u32` ports.
    pub ports: u32,
    pub nr_ports: u32,
    pub timeout: u64,
}

impl From<CompatPoll> for Poll {
    fn from(c: CompatPoll) -> Self {
        Poll {
            ports: c.ports.into(),
            nr_ports: c.nr_ports,
            _pad: 0,
            timeout: c.timeout,
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<Poll>() == 24);
    assert!(core::mem::offset_of!(Poll, nr_ports) == 8);
    assert!(core::mem::offset_of!(Poll, timeout) == 16);
    assert!(core::mem::size_of::<CompatPoll>() == 16);
    assert!(core::mem::offset_of!(CompatPoll, nr_ports) == 4);
    assert!(core::mem::offset_of!(CompatPoll, timeout) == 8);
};

/// Most ports one poll may name (Xen caps it at the 2-level port count).
pub const POLL_MAX_PORTS: u32 = 128;
