//! Domain system time, the pvclock record and the wallclock.
//!
//! System time is derived from the host TSC, scaled with the same (mul,
//! shift) pair the guest receives in vcpu_time_info, so the guest's pvclock
//! and our timer deadlines agree to the nanosecond. Guest TSC = host TSC +
//! a per-vCPU offset the VMM measures once.

use std::time::{SystemTime, UNIX_EPOCH};

use xen_abi::shared_info::{pvclock_parameters, pvclock_scale_delta};

/// Read the host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub struct Clock {
    /// Host TSC at system time 0.
    tsc_base: u64,
    pub tsc_khz: u32,
    pub mul: u32,
    pub shift: i8,
    /// Wall-clock time at system time 0.
    pub boot_wall_sec: u64,
    pub boot_wall_nsec: u32,
}

impl Clock {
    pub fn new(tsc_khz: u32) -> Self {
        let (mul, shift) = pvclock_parameters(tsc_khz as u64 * 1000);
        let tsc_base = host_tsc();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            tsc_base,
            tsc_khz,
            mul,
            shift,
            boot_wall_sec: wall.as_secs(),
            boot_wall_nsec: wall.subsec_nanos(),
        }
    }

    /// System time (ns since the domain was built) at host TSC `tsc`.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        pvclock_scale_delta(tsc.saturating_sub(self.tsc_base), self.mul, self.shift)
    }

    pub fn now_ns(&self) -> u64 {
        self.ns_at(host_tsc())
    }
}
