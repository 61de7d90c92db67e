//! Domain system time, the pvclock record and the wallclock.
//!
//! System time is derived from the host TSC, scaled with the same (mul,
//! shift) pair the guest receives in vcpu_time_info, so the guest's pvclock
//! and our timer deadlines agree to the nanosecond. Guest TSC = host TSC +
//! a per-vCPU offset the VMM measures once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use xen_abi::shared_info::{pvclock_parameters, pvclock_scale_delta};

/// Read the host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub struct Clock {
    /// Host TSC at system time 0. Moves only when a restored domain takes
    /// over its saved system time ([`Clock::continue_from`]).
    tsc_base: AtomicU64,
    pub tsc_khz: u32,
    pub mul: u32,
    pub shift: i8,
    /// Wall-clock time at system time 0, in ns since the epoch (moves
    /// with `tsc_base`).
    boot_wall_ns: AtomicU64,
}

impl Clock {
    pub fn new(tsc_khz: u32) -> Self {
        let (mul, shift) = pvclock_parameters(tsc_khz as u64 * 1000);
        let tsc_base = host_tsc();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            tsc_base: AtomicU64::new(tsc_base),
            tsc_khz,
            mul,
            shift,
            boot_wall_ns: AtomicU64::new(wall.as_nanos() as u64),
        }
    }

    /// Wall-clock time at system time 0: (seconds, nanoseconds).
    pub fn boot_wall(&self) -> (u64, u32) {
        let ns = self.boot_wall_ns.load(Ordering::Relaxed);
        (ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
    }

    /// A restored domain: system time goes on from `system_ns` (the time
    /// it was saved at) instead of restarting at 0, and the wallclock is
    /// the host's again (the domain did not see the time it spent saved).
    /// Called before any vCPU of the domain runs.
    pub fn continue_from(&self, system_ns: u64) {
        let now = host_tsc();
        // The TSC ticks that `system_ns` takes, by the inverse of the
        // pvclock scale (tsc_khz ticks per ms).
        let ticks = (system_ns as u128 * self.tsc_khz as u128 / 1_000_000) as u64;
        self.tsc_base
            .store(now.saturating_sub(ticks), Ordering::Relaxed);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let system_now = self.now_ns();
        self.boot_wall_ns
            .store(wall.saturating_sub(system_now), Ordering::Relaxed);
    }

    /// System time (ns since the domain was built) at host TSC `tsc`.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        pvclock_scale_delta(
            tsc.saturating_sub(self.tsc_base.load(Ordering::Relaxed)),
            self.mul,
            self.shift,
        )
    }

    pub fn now_ns(&self) -> u64 {
        self.ns_at(host_tsc())
    }
}
