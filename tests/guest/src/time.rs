//! Guest time from the pvclock record in vcpu_info (`vcpu_time_info`), and
//! bounded waits.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use xen_abi::shared_info::{pvclock_scale_delta, VCPU_INFO_TIME};

use crate::{events, hypercall, xen};

/// A consistent snapshot of a `vcpu_time_info` record.
#[derive(Clone, Copy, Debug)]
pub struct Pvclock {
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub mul: u32,
    pub shift: i8,
}

impl Pvclock {
    /// System time (ns) at TSC value `tsc`.
    pub fn at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        self.system_time
            .wrapping_add(pvclock_scale_delta(delta, self.mul, self.shift))
    }
}

/// Read the `vcpu_time_info` at `p` with the version protocol (retry while
/// odd or changed). `None` if it never settles.
pub fn read_pvclock(p: *const u8) -> Option<Pvclock> {
    // SAFETY: `p` points at a live, 8-byte
    // aligned vcpu_time_info in a page that stays mapped for the guest's
    // lifetime (shared_info, a registered vcpu_info or a time area); the
    // hypervisor writes it concurrently, hence atomics.
    let version = unsafe { AtomicU32::from_ptr(p as *mut u32) };
    // SAFETY: as above, offset 8.
    let tsc_ts = unsafe { AtomicU64::from_ptr(p.add(8) as *mut u64) };
    // SAFETY: as above, offset 16.
    let sys = unsafe { AtomicU64::from_ptr(p.add(16) as *mut u64) };
    // SAFETY: as above, offset 24.
    let mul = unsafe { AtomicU32::from_ptr(p.add(24) as *mut u32) };
    // SAFETY: as above, offset 28 (one byte).
    let shift = unsafe { AtomicU8::from_ptr(p.add(28) as *mut u8) };
    for _ in 0..10_000 {
        let v1 = version.load(Ordering::Acquire);
        if v1 & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        fence(Ordering::Acquire);
        let snap = Pvclock {
            version: v1,
            tsc_timestamp: tsc_ts.load(Ordering::Relaxed),
            system_time: sys.load(Ordering::Relaxed),
            mul: mul.load(Ordering::Relaxed),
            shift: shift.load(Ordering::Relaxed) as i8,
        };
        fence(Ordering::Acquire);
        if version.load(Ordering::Acquire) == v1 {
            return Some(snap);
        }
    }
    None
}

/// The current vCPU's pvclock, if shared_info is mapped and the record is
/// initialised (non-zero multiplier).
pub fn clock() -> Option<Pvclock> {
    let vi = events::vcpu_info()?;
    // SAFETY: vcpu_info + 32 is inside the 64-byte vcpu_info.
    let c = read_pvclock(unsafe { vi.add(VCPU_INFO_TIME) })?;
    (c.mul != 0).then_some(c)
}

/// Guest system time in ns.
pub fn now_ns() -> Option<u64> {
    clock().map(|c| c.at(hypercall::rdtsc()))
}

/// A bounded wait: pvclock time when available, else an iteration count.
pub struct Deadline {
    end: Option<u64>,
    spins_left: u64,
}

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Self::after_ns(ms * 1_000_000)
    }

    pub fn after_ns(ns: u64) -> Self {
        // The spin bound only matters if pvclock is missing or stops working;
        // each spin is at least one hypercall (tens of microseconds).
        let spins_left = ns / 20_000 + 1_000;
        Deadline {
            end: now_ns().map(|n| n + ns),
            spins_left,
        }
    }

    /// The absolute end time, if pvclock works.
    pub fn end_ns(&self) -> Option<u64> {
        self.end
    }

    pub fn expired(&mut self) -> bool {
        if self.spins_left == 0 {
            return true;
        }
        self.spins_left -= 1;
        match (self.end, now_ns()) {
            (Some(end), Some(now)) => now >= end,
            _ => false,
        }
    }
}

/// Wait about `ms` milliseconds, yielding the vCPU.
pub fn sleep_ms(ms: u64) {
    let mut d = Deadline::after_ms(ms);
    while !d.expired() {
        xen::sched_yield();
    }
}
