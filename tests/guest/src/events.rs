//! The 2-level event-channel machinery, done in ring 3.
//!
//! Ring 0 only acknowledges the upcall vector and counts it
//! ([`crate::boot::UPCALL_COUNT`]). [`drain`] does what a guest's upcall
//! handler does: clear `evtchn_upcall_pending`, take `evtchn_pending_sel`,
//! and for each selected word clear the pending, unmasked ports, recording
//! them in a "seen" bitmap that the checks consume with [`take_seen`].
//! Masked ports stay pending, as they would in a real guest.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};

use xen_abi::shared_info::{
    EVTCHN_WORDS, OFFSET_EVTCHN_MASK, OFFSET_EVTCHN_PENDING, VCPU_INFO_PENDING_SEL,
    VCPU_INFO_UPCALL_PENDING,
};

use crate::boot::UPCALL_COUNT;
use crate::time::Deadline;
use crate::xen;

const NR_PORTS: u32 = (EVTCHN_WORDS * 64) as u32;

static SHARED_INFO: AtomicPtr<u8> = AtomicPtr::new(null_mut());
static REGISTERED_VCPU_INFO: AtomicPtr<u8> = AtomicPtr::new(null_mut());
/// The VIRQ_TIMER port of vCPU 0 (0 = not bound).
pub static TIMER_PORT: AtomicU32 = AtomicU32::new(0);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static SEEN: [AtomicU64; EVTCHN_WORDS] = [ZERO; EVTCHN_WORDS];

pub fn set_shared_info(p: *mut u8) {
    SHARED_INFO.store(p, Ordering::Release);
}

pub fn shared_info() -> Option<*mut u8> {
    let p = SHARED_INFO.load(Ordering::Acquire);
    (!p.is_null()).then_some(p)
}

/// Switch to a vcpu_info registered with VCPUOP_register_vcpu_info.
pub fn set_registered_vcpu_info(p: *mut u8) {
    REGISTERED_VCPU_INFO.store(p, Ordering::Release);
}

pub fn registered_vcpu_info() -> Option<*mut u8> {
    let p = REGISTERED_VCPU_INFO.load(Ordering::Acquire);
    (!p.is_null()).then_some(p)
}

/// vCPU 0's live vcpu_info: the registered one, else slot 0 of shared_info.
pub fn vcpu_info() -> Option<*mut u8> {
    registered_vcpu_info().or_else(shared_info)
}

fn word_at(base: *mut u8, offset: usize, word: usize) -> &'static AtomicU64 {
    // SAFETY: `base` is the mapped shared_info page (4 KiB, page aligned,
    // alive for the guest's lifetime) and offset + 8 * word stays inside its
    // pending or mask bitmap; the hypervisor updates it concurrently, so it
    // is only accessed atomically.
    unsafe { AtomicU64::from_ptr(base.add(offset + 8 * word) as *mut u64) }
}

fn bit(port: u32, offset: usize) -> Option<(&'static AtomicU64, u64)> {
    if port >= NR_PORTS {
        return None;
    }
    let si = shared_info()?;
    Some((
        word_at(si, offset, (port / 64) as usize),
        1u64 << (port % 64),
    ))
}

pub fn is_pending(port: u32) -> bool {
    bit(port, OFFSET_EVTCHN_PENDING).is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
}

pub fn is_masked(port: u32) -> bool {
    bit(port, OFFSET_EVTCHN_MASK).is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
}

pub fn clear_pending(port: u32) {
    if let Some((w, b)) = bit(port, OFFSET_EVTCHN_PENDING) {
        w.fetch_and(!b, Ordering::AcqRel);
    }
}

pub fn set_mask(port: u32) {
    if let Some((w, b)) = bit(port, OFFSET_EVTCHN_MASK) {
        w.fetch_or(b, Ordering::AcqRel);
    }
}

pub fn clear_mask(port: u32) {
    if let Some((w, b)) = bit(port, OFFSET_EVTCHN_MASK) {
        w.fetch_and(!b, Ordering::AcqRel);
    }
}

fn upcall_pending_cell(vi: *mut u8) -> &'static AtomicU8 {
    // SAFETY: `vi` is a live 64-byte vcpu_info; byte 0 is upcall_pending.
    unsafe { AtomicU8::from_ptr(vi.add(VCPU_INFO_UPCALL_PENDING)) }
}

fn pending_sel_cell(vi: *mut u8) -> &'static AtomicU64 {
    // SAFETY: `vi` is a live, 8-byte aligned vcpu_info; bytes 8..16 are
    // evtchn_pending_sel.
    unsafe { AtomicU64::from_ptr(vi.add(VCPU_INFO_PENDING_SEL) as *mut u64) }
}

/// `evtchn_upcall_pending` of the vcpu_info at `vi`.
pub fn upcall_pending_at(vi: *mut u8) -> u8 {
    upcall_pending_cell(vi).load(Ordering::Acquire)
}

/// This vCPU's `evtchn_upcall_pending`, as the hypervisor and Dom0 left
/// it (false before a vcpu_info is known).
pub fn upcall_pending() -> bool {
    vcpu_info().is_some_and(|vi| upcall_pending_at(vi) != 0)
}

/// `evtchn_pending_sel` of the vcpu_info at `vi`.
pub fn pending_sel_at(vi: *mut u8) -> u64 {
    pending_sel_cell(vi).load(Ordering::Acquire)
}

/// Process pending events like a guest's upcall handler would.
pub fn drain() {
    let Some(vi) = vcpu_info() else { return };
    let Some(si) = shared_info() else { return };
    upcall_pending_cell(vi).store(0, Ordering::SeqCst);
    let mut sel = pending_sel_cell(vi).swap(0, Ordering::AcqRel);
    while sel != 0 {
        let w = sel.trailing_zeros() as usize;
        sel &= sel - 1;
        let pending = word_at(si, OFFSET_EVTCHN_PENDING, w);
        let mask = word_at(si, OFFSET_EVTCHN_MASK, w);
        let ready = pending.load(Ordering::Acquire) & !mask.load(Ordering::Acquire);
        if ready != 0 {
            pending.fetch_and(!ready, Ordering::AcqRel);
            SEEN[w].fetch_or(ready, Ordering::AcqRel);
        }
    }
}

/// Whether `port` fired since the last call (clears the record).
pub fn take_seen(port: u32) -> bool {
    if port >= NR_PORTS {
        return false;
    }
    let b = 1u64 << (port % 64);
    SEEN[(port / 64) as usize].fetch_and(!b, Ordering::AcqRel) & b != 0
}

/// Forget anything `port` did so far: drain, then drop its seen/pending bits.
pub fn forget(port: u32) {
    drain();
    take_seen(port);
    clear_pending(port);
}

/// Wait until `port` fires (drained and seen), at most `ms` milliseconds.
pub fn wait_seen(port: u32, ms: u64) -> bool {
    let mut d = Deadline::after_ms(ms);
    loop {
        drain();
        if take_seen(port) {
            return true;
        }
        if d.expired() {
            return false;
        }
        xen::sched_yield();
    }
}

/// Upcalls taken so far.
pub fn upcalls() -> u64 {
    UPCALL_COUNT.load(Ordering::Acquire)
}

/// Wait until the upcall count exceeds `before`, at most `ms` milliseconds.
pub fn wait_upcall(before: u64, ms: u64) -> bool {
    let mut d = Deadline::after_ms(ms);
    loop {
        if upcalls() > before {
            return true;
        }
        if d.expired() {
            return false;
        }
        xen::sched_yield();
    }
}
