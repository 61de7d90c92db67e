//! vcpu_op (vcpu_info, up/is_up, timers, runstate, time area) and
//! set_timer_op.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_abi::errno::{EINVAL, ENOENT, ENOSYS, ENXIO};
use xen_abi::shared_info::{VcpuTimeInfo, VCPU_INFO_SIZE};
use xen_abi::vcpu::*;

use super::{eq, neg, rc_is, Fail, Rc, R};
use crate::boot::Page;
use crate::hypercall::{rdtsc, set_timer_op, vcpu_op, vcpu_op_null};
use crate::time::{self, now_ns, Deadline};
use crate::{bail, ensure, events, xen};

/// Where vCPU 0's vcpu_info gets registered: this page, offset 64.
static VCPU_INFO_PAGE: Page = Page::new();
const VCPU_INFO_OFFSET: u32 = 64;
/// Target of registrations that must fail.
static SCRATCH_PAGE: Page = Page::new();

/// A 64-byte aligned area the hypervisor writes (runstate, time).
#[repr(C, align(64))]
struct Area<T>(UnsafeCell<T>);
// SAFETY: accessed only through raw pointers with volatile/atomic reads; the
// hypervisor is the only writer.
unsafe impl<T> Sync for Area<T> {}

static RUNSTATE: Area<RunstateInfo> = Area(UnsafeCell::new(RunstateInfo {
    state: 0,
    _pad: 0,
    state_entry_time: 0,
    time: [0; 4],
}));
static TIME_AREA: Area<VcpuTimeInfo> = Area(UnsafeCell::new(VcpuTimeInfo {
    version: 0,
    _pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    _pad1: [0; 2],
}));

fn register(page: &Page, offset: u32) -> i64 {
    let mut info = RegisterVcpuInfo {
        mfn: page.pfn(),
        offset,
        rsvd: 0,
    };
    vcpu_op(VCPUOP_REGISTER_VCPU_INFO, 0, &mut info)
}

/// Register vCPU 0's vcpu_info (once) and switch the event code to it.
fn ensure_registered() -> R {
    if events::registered_vcpu_info().is_some() {
        return Ok(());
    }
    events::drain();
    rc_is(
        "register_vcpu_info(vcpu 0, page, offset 64)",
        register(&VCPU_INFO_PAGE, VCPU_INFO_OFFSET),
        0,
    )?;
    // SAFETY: offset 64 + 64 bytes is inside the 4 KiB page.
    let vi = unsafe { VCPU_INFO_PAGE.ptr().add(VCPU_INFO_OFFSET as usize) };
    events::set_registered_vcpu_info(vi);
    Ok(())
}

fn timer_port() -> Result<u32, Fail> {
    match events::TIMER_PORT.load(Ordering::Acquire) {
        0 => bail!("VIRQ_TIMER is not bound (see setup note)"),
        p => Ok(p),
    }
}

fn now() -> Result<u64, Fail> {
    match now_ns() {
        Some(t) => Ok(t),
        None => bail!("no pvclock time (shared_info/vcpu_info time unusable)"),
    }
}

pub fn register_vcpu_info() -> R {
    ensure!(
        events::registered_vcpu_info().is_none(),
        "vcpu_info already registered"
    );
    // The shared_info slot stops being used once registered.
    let old = events::vcpu_info();
    ensure_registered()?;
    let vi = events::registered_vcpu_info().unwrap_or(core::ptr::null_mut());
    // domain.c map_vcpu_info: the new copy starts with upcall_pending = 1
    // and every pending_sel bit set, so nothing pending is lost.
    let up = events::upcall_pending_at(vi);
    let sel = events::pending_sel_at(vi);
    eq("registered evtchn_upcall_pending", up, 1)?;
    eq("registered evtchn_pending_sel", sel, u64::MAX)?;
    let Some(c) = time::clock() else {
        bail!("registered vcpu_info has no valid time record");
    };
    ensure!(
        c.version % 2 == 0,
        "registered time.version is odd ({})",
        c.version
    );
    events::drain();

    // Events now land in the registered copy only.
    let p = crate::checks::ok("bind_ipi(0)", xen::bind_ipi(0))?;
    events::forget(p);
    if let Some(o) = old {
        // SAFETY: `o` is shared_info's vcpu_info[0] (mapped page).
        unsafe { core::sync::atomic::AtomicU8::from_ptr(o).store(0, Ordering::SeqCst) };
    }
    let rc = xen::send(p);
    let up = events::upcall_pending_at(vi);
    let sel = events::pending_sel_at(vi);
    let old_up = old.map_or(0, events::upcall_pending_at);
    events::forget(p);
    xen::close(p);
    rc_is("send(ipi)", rc, 0)?;
    eq("registered upcall_pending after send", up, 1)?;
    ensure!(
        sel & (1 << (p / 64)) != 0,
        "registered pending_sel {:#x} lacks bit {} for port {}",
        sel,
        p / 64,
        p
    );
    eq(
        "shared_info vcpu_info[0].upcall_pending after send",
        old_up,
        0,
    )
}

pub fn register_vcpu_info_twice() -> R {
    ensure_registered()?;
    // domain.c map_vcpu_info: vcpu_info_mfn already set -> -EINVAL.
    rc_is(
        "register_vcpu_info a second time",
        register(&SCRATCH_PAGE, VCPU_INFO_OFFSET),
        neg(EINVAL),
    )
}

pub fn register_vcpu_info_bad_offset() -> R {
    ensure_registered()?;
    // domain.c map_vcpu_info checks the offset before anything else, so
    // this vCPU's registration does not hide it: offset > PAGE_SIZE -
    // sizeof(vcpu_info) -> -ENXIO, and an offset off vcpu_info's 8-byte
    // alignment -> -ENXIO.
    let past_end = (4096 - VCPU_INFO_SIZE + 8) as u32;
    rc_is(
        "register_vcpu_info(offset 4040)",
        register(&SCRATCH_PAGE, past_end),
        neg(ENXIO),
    )?;
    rc_is(
        "register_vcpu_info(offset 4, misaligned)",
        register(&SCRATCH_PAGE, 4),
        neg(ENXIO),
    )
}

pub fn is_up() -> R {
    // domain.c VCPUOP_is_up: !(pause_flags & VPF_down).
    eq("is_up(vcpu 0)", Rc(vcpu_op_null(VCPUOP_IS_UP, 0)), Rc(1))?;
    // The domain has vCPUs 0..n (n from is_up probing: the first -ENOENT).
    // Every vCPU but 0 exists and was never started.
    let n = xen::nr_vcpus();
    for v in 1..n {
        let rc = vcpu_op_null(VCPUOP_IS_UP, v);
        ensure!(
            rc == 0,
            "is_up(vcpu {}) of {} vCPUs: expected 0 (never started), got {}",
            v,
            n,
            Rc(rc)
        );
    }
    // Cross-check the count through two other paths: do_vcpu_op refuses
    // vCPU n before looking at the sub-op, and event_channel.c
    // evtchn_bind_ipi looks the vCPU up too (-ENOENT both).
    let mut info = RunstateInfo::default();
    rc_is(
        "get_runstate_info(vcpu n) where is_up(n) said -ENOENT",
        vcpu_op(VCPUOP_GET_RUNSTATE_INFO, n, &mut info),
        neg(ENOENT),
    )?;
    match xen::bind_ipi(n) {
        Err(rc) => rc_is(
            "bind_ipi(vcpu n) where is_up(n) said -ENOENT",
            rc,
            neg(ENOENT),
        )?,
        Ok(p) => {
            xen::close(p);
            bail!(
                "bind_ipi(vcpu {}) bound port {}, but is_up({}) said -ENOENT",
                n,
                p,
                n
            );
        }
    }
    if n > 1 {
        rc_is(
            "get_runstate_info(vcpu n - 1)",
            vcpu_op(VCPUOP_GET_RUNSTATE_INFO, n - 1, &mut info),
            0,
        )?;
    }
    Ok(())
}

pub fn is_up_bad_vcpu() -> R {
    // domain.c do_vcpu_op: domain_vcpu() is NULL -> -ENOENT.
    rc_is(
        "is_up(vcpu 99)",
        vcpu_op_null(VCPUOP_IS_UP, 99),
        neg(ENOENT),
    )?;
    rc_is(
        "is_up(vcpu 0xffffffff)",
        vcpu_op_null(VCPUOP_IS_UP, u32::MAX),
        neg(ENOENT),
    )
}

pub fn up_uninitialised() -> R {
    if xen::vcpu_exists(1) {
        // domain.c VCPUOP_up: !v->is_initialised -> -EINVAL.
        rc_is("up(vcpu 1)", vcpu_op_null(VCPUOP_UP, 1), neg(EINVAL))?;
    } else {
        // One vCPU: do_vcpu_op finds no vCPU 1 -> -ENOENT.
        rc_is(
            "up(vcpu 1) in a 1-vCPU domain",
            vcpu_op_null(VCPUOP_UP, 1),
            neg(ENOENT),
        )?;
    }
    rc_is("up(vcpu 99)", vcpu_op_null(VCPUOP_UP, 99), neg(ENOENT))
}

fn set_periodic(period_ns: u64) -> i64 {
    vcpu_op(
        VCPUOP_SET_PERIODIC_TIMER,
        0,
        &mut SetPeriodicTimer { period_ns },
    )
}

pub fn periodic_timer() -> R {
    let port = timer_port()?;
    events::forget(port);
    rc_is(
        "set_periodic_timer(1 ms)",
        set_periodic(MIN_PERIODIC_PERIOD_NS),
        0,
    )?;
    let start = now_ns();
    let mut got = 0;
    for _ in 0..5 {
        if !events::wait_seen(port, 200) {
            break;
        }
        got += 1;
    }
    let elapsed = match (start, now_ns()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => u64::MAX,
    };
    let stop = vcpu_op_null(VCPUOP_STOP_PERIODIC_TIMER, 0);
    // Let anything in flight land, then expect silence.
    time::sleep_ms(5);
    events::forget(port);
    let after = events::wait_seen(port, 30);
    ensure!(
        got == 5,
        "periodic 1 ms timer: {} of 5 events within 200 ms each",
        got
    );
    ensure!(
        elapsed >= 3_000_000,
        "5 periodic 1 ms events arrived in {} ns",
        elapsed
    );
    rc_is("stop_periodic_timer", stop, 0)?;
    ensure!(!after, "VIRQ_TIMER still fires after stop_periodic_timer");
    Ok(())
}

pub fn periodic_timer_too_fast() -> R {
    // domain.c VCPUOP_set_periodic_timer: period < 1 ms -> -EINVAL.
    let rc = set_periodic(MIN_PERIODIC_PERIOD_NS - 1);
    if rc == 0 {
        vcpu_op_null(VCPUOP_STOP_PERIODIC_TIMER, 0);
    }
    rc_is("set_periodic_timer(999999 ns)", rc, neg(EINVAL))
}

fn set_singleshot(vcpu: u32, timeout_abs_ns: u64, flags: u32) -> i64 {
    vcpu_op(
        VCPUOP_SET_SINGLESHOT_TIMER,
        vcpu,
        &mut SetSingleshotTimer {
            timeout_abs_ns,
            flags,
            _pad: 0,
        },
    )
}

/// Wait for `port`; return the time it was seen.
fn wait_time(port: u32, ms: u64) -> Option<u64> {
    events::wait_seen(port, ms).then(|| now_ns().unwrap_or(0))
}

pub fn singleshot_timer() -> R {
    let port = timer_port()?;
    events::forget(port);
    let t = now()? + 1_000_000;
    rc_is(
        "set_singleshot_timer(now + 1 ms)",
        set_singleshot(0, t, 0),
        0,
    )?;
    let Some(seen) = wait_time(port, 1_000) else {
        bail!("singleshot timer did not fire within 1 s");
    };
    ensure!(
        seen + 500_000 >= t,
        "singleshot timer fired {} ns before its deadline",
        t - seen
    );
    ensure!(
        !events::wait_seen(port, 30),
        "singleshot timer fired a second time"
    );
    Ok(())
}

pub fn singleshot_timer_past() -> R {
    let port = timer_port()?;
    events::forget(port);
    let past = now()?.saturating_sub(1_000_000).max(1);
    // kxen follows Xen 4.17.0 domain.c: VCPU_SSHOTTMR_future with a timeout
    // already in the past -> -ETIME, timer untouched.
    rc_is(
        "set_singleshot_timer(past, VCPU_SSHOTTMR_future)",
        set_singleshot(0, past, VCPU_SSHOTTMR_FUTURE),
        -ETIME,
    )?;
    ensure!(
        !events::wait_seen(port, 20),
        "VIRQ_TIMER fired after a refused (-ETIME) singleshot timer"
    );
    // Without the flag a past timeout fires at once.
    rc_is(
        "set_singleshot_timer(past, no flags)",
        set_singleshot(0, past, 0),
        0,
    )?;
    ensure!(
        events::wait_seen(port, 200),
        "a singleshot timer in the past did not fire within 200 ms"
    );
    Ok(())
}

pub fn stop_singleshot_timer() -> R {
    let port = timer_port()?;
    events::forget(port);
    let t = now()? + 20_000_000;
    rc_is(
        "set_singleshot_timer(now + 20 ms)",
        set_singleshot(0, t, 0),
        0,
    )?;
    rc_is(
        "stop_singleshot_timer",
        vcpu_op_null(VCPUOP_STOP_SINGLESHOT_TIMER, 0),
        0,
    )?;
    ensure!(
        !events::wait_seen(port, 60),
        "stopped singleshot timer fired anyway"
    );
    Ok(())
}

pub fn singleshot_other_vcpu() -> R {
    let t = now()? + 1_000_000_000;
    // domain.c: singleshot timers may only be set/stopped on the calling
    // vCPU -> -EINVAL for vCPU 1. In a 1-vCPU domain do_vcpu_op finds no
    // vCPU 1 first -> -ENOENT.
    let (set, stop, want) = if xen::vcpu_exists(1) {
        (
            "set_singleshot_timer(vcpu 1)",
            "stop_singleshot_timer(vcpu 1)",
            neg(EINVAL),
        )
    } else {
        (
            "set_singleshot_timer(vcpu 1) in a 1-vCPU domain",
            "stop_singleshot_timer(vcpu 1) in a 1-vCPU domain",
            neg(ENOENT),
        )
    };
    rc_is(set, set_singleshot(1, t, 0), want)?;
    rc_is(stop, vcpu_op_null(VCPUOP_STOP_SINGLESHOT_TIMER, 1), want)
}

fn read_runstate(p: *mut RunstateInfo) -> Option<RunstateInfo> {
    let p = p as *mut u8;
    // SAFETY: `p` is our 48-byte, 64-aligned runstate area; the hypervisor
    // writes it concurrently, so fields are read atomically.
    let state = unsafe { AtomicU32::from_ptr(p as *mut u32) };
    // SAFETY: as above, offset 8.
    let entry = unsafe { AtomicU64::from_ptr(p.add(8) as *mut u64) };
    for _ in 0..10_000 {
        let e1 = entry.load(Ordering::Acquire);
        if e1 & XEN_RUNSTATE_UPDATE != 0 {
            core::hint::spin_loop();
            continue;
        }
        let mut t = [0u64; 4];
        for (i, v) in t.iter_mut().enumerate() {
            // SAFETY: as above, offsets 16..48.
            *v = unsafe { AtomicU64::from_ptr(p.add(16 + 8 * i) as *mut u64) }
                .load(Ordering::Acquire);
        }
        let s = state.load(Ordering::Acquire);
        if entry.load(Ordering::Acquire) == e1 {
            return Some(RunstateInfo {
                state: s,
                _pad: 0,
                state_entry_time: e1,
                time: t,
            });
        }
    }
    None
}

pub fn runstate() -> R {
    let area = RUNSTATE.0.get();
    let mut reg = RegisterMemoryArea { addr: area as u64 };
    rc_is(
        "register_runstate_memory_area",
        vcpu_op(VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, &mut reg),
        0,
    )?;
    xen::sched_yield();
    let Some(r0) = read_runstate(area) else {
        bail!("runstate area never consistent");
    };
    eq("runstate.state", r0.state, RUNSTATE_RUNNING)?;
    // Run ~2 ms of ring-3 code, then block briefly so the hypervisor
    // accounts the running time.
    let spin = Deadline::after_ms(2);
    if let Some(end) = spin.end_ns() {
        while now_ns().is_some_and(|n| n < end) {
            core::hint::spin_loop();
        }
    }
    let mut ports = [timer_port().unwrap_or(0)];
    let wake = now_ns().map_or(0, |n| n + 2_000_000);
    xen::poll(&mut ports, wake);
    xen::sched_yield();
    let Some(r1) = read_runstate(area) else {
        bail!("runstate area never consistent");
    };
    eq("runstate.state after blocking", r1.state, RUNSTATE_RUNNING)?;
    ensure!(
        r1.time[0] > r0.time[0],
        "runstate.time[running] did not grow: {} -> {}",
        r0.time[0],
        r1.time[0]
    );
    let mut info = RunstateInfo::default();
    rc_is(
        "get_runstate_info(vcpu 0)",
        vcpu_op(VCPUOP_GET_RUNSTATE_INFO, 0, &mut info),
        0,
    )?;
    eq("get_runstate_info.state", info.state, RUNSTATE_RUNNING)?;
    ensure!(
        info.time[0] >= r1.time[0] && info.time[0] > 0,
        "get_runstate_info.time[running] = {}, area said {}",
        info.time[0],
        r1.time[0]
    );
    Ok(())
}

pub fn time_memory_area() -> R {
    let area = TIME_AREA.0.get();
    let mut reg = RegisterMemoryArea { addr: area as u64 };
    rc_is(
        "register_vcpu_time_memory_area",
        vcpu_op(VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA, 0, &mut reg),
        0,
    )?;
    xen::sched_yield();
    let Some(c) = time::read_pvclock(area as *const u8) else {
        bail!("time area never consistent");
    };
    ensure!(
        c.version != 0 && c.version % 2 == 0,
        "time area version: expected even and non-zero, got {}",
        c.version
    );
    ensure!(c.mul != 0, "time area tsc_to_system_mul is 0");
    let mine = c.at(rdtsc());
    let Some(main) = now_ns() else {
        bail!("no vcpu_info time to compare with");
    };
    ensure!(
        mine.abs_diff(main) < 10_000_000,
        "time area says {} ns, vcpu_info says {} ns",
        mine,
        main
    );
    Ok(())
}

pub fn unknown_subop() -> R {
    // domain.c common_vcpu_op: default -> -ENOSYS.
    rc_is("vcpu_op(99, vcpu 0)", vcpu_op_null(99, 0), neg(ENOSYS))
}

pub fn set_timer_fires() -> R {
    let port = timer_port()?;
    events::forget(port);
    let t = now()? + 1_000_000;
    rc_is("set_timer_op(now + 1 ms)", set_timer_op(t), 0)?;
    let Some(seen) = wait_time(port, 1_000) else {
        bail!("set_timer_op timer did not fire within 1 s");
    };
    ensure!(
        seen + 500_000 >= t,
        "set_timer_op timer fired {} ns early",
        t - seen
    );
    Ok(())
}

pub fn set_timer_cancel() -> R {
    let port = timer_port()?;
    events::forget(port);
    let t = now()? + 20_000_000;
    rc_is("set_timer_op(now + 20 ms)", set_timer_op(t), 0)?;
    // sched/core.c do_set_timer_op: 0 stops the timer.
    rc_is("set_timer_op(0)", set_timer_op(0), 0)?;
    ensure!(
        !events::wait_seen(port, 60),
        "timer fired after set_timer_op(0)"
    );
    Ok(())
}
