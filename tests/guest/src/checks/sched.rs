//! sched_op: yield, block, poll, shutdown_code and argument errors.

use xen_abi::errno::{EFAULT, EINVAL, ENOSYS};
use xen_abi::hypercall::SCHED_OP;
use xen_abi::sched::*;

use super::version::BAD_PTR;
use super::{ok, rc_is, Rc, R};
use crate::hypercall::{op_raw, sched_op};
use crate::time::now_ns;
use crate::{bail, ensure, events, xen};

fn timer_port() -> Result<u32, super::Fail> {
    match events::TIMER_PORT.load(core::sync::atomic::Ordering::Acquire) {
        0 => bail!("VIRQ_TIMER is not bound (see setup note)"),
        p => Ok(p),
    }
}

fn now() -> Result<u64, super::Fail> {
    match now_ns() {
        Some(t) => Ok(t),
        None => bail!("no pvclock time"),
    }
}

/// Whether an event arrived for vCPU 0 (upcall_pending set).
fn upcall_pending() -> bool {
    events::vcpu_info().is_some_and(|vi| events::upcall_pending_at(vi) != 0)
}

/// Run a poll that must fail on its arguments. Xen's do_poll returns 0 early
/// when an event is already deliverable, so drain first and retry if an
/// unrelated event slipped in.
fn poll_error(mut call: impl FnMut() -> i64) -> i64 {
    let mut rc = 0;
    for _ in 0..3 {
        events::drain();
        rc = call();
        if rc != 0 || !upcall_pending() {
            break;
        }
    }
    rc
}

pub fn yield_() -> R {
    rc_is("sched_op(SCHEDOP_yield)", xen::sched_yield(), 0)
}

pub fn block() -> R {
    // schedule.c SCHEDOP_block: the vCPU sleeps until an event is pending
    // for it (local_events_need_delivery), then returns 0. The only event
    // armed here is a timer: block must not come back before its deadline.
    const TIMER_NS: u64 = 5_000_000;
    // pvclock and the hypervisor's timer read the same clock; allow for
    // rounding in the scaling only.
    const SLACK_NS: u64 = 100_000;
    let port = timer_port()?;
    events::forget(port);
    let deadline = now()? + TIMER_NS;
    rc_is(
        "set_timer_op(now + 5 ms)",
        crate::hypercall::set_timer_op(deadline),
        0,
    )?;
    // Another port's event (the console's, xenstore's) may end a block
    // early, as in Xen; then block again.
    for _ in 0..10 {
        events::drain();
        // SAFETY: SCHEDOP_block takes no argument.
        let rc = unsafe { crate::hypercall::hypercall2(SCHED_OP, SCHEDOP_BLOCK, 0) };
        let woke = now()?;
        let early = deadline.saturating_sub(woke);
        rc_is("sched_op(SCHEDOP_block)", rc, 0)?;
        ensure!(
            upcall_pending(),
            "SCHEDOP_block returned {} ns before the timer's deadline with no event pending",
            early
        );
        events::drain();
        if events::take_seen(port) {
            ensure!(
                early <= SLACK_NS,
                "SCHEDOP_block returned {} ns before the timer's deadline, VIRQ_TIMER already pending",
                early
            );
            return Ok(());
        }
    }
    bail!("SCHEDOP_block returned 10 times for other events; VIRQ_TIMER never fired")
}

pub fn poll_pending() -> R {
    let p = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    events::forget(p);
    let sent = xen::send(p);
    let t0 = now_ns();
    let deadline = t0.map_or(0, |t| t + 1_000_000_000);
    let rc = xen::poll(&mut [p], deadline);
    let t1 = now_ns();
    let was_pending = events::is_pending(p);
    events::forget(p);
    xen::close(p);
    rc_is("send(ipi)", sent, 0)?;
    ensure!(was_pending, "IPI port not pending after send");
    rc_is("sched_op(SCHEDOP_poll, pending port)", rc, 0)?;
    if let (Some(a), Some(b)) = (t0, t1) {
        ensure!(
            b - a < 100_000_000,
            "poll on a pending port took {} ns",
            b - a
        );
    }
    Ok(())
}

pub fn poll_timeout() -> R {
    let p = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    events::forget(p);
    let r = (|| -> R {
        let t0 = now()?;
        let target = t0 + 20_000_000;
        let mut calls = 0;
        loop {
            events::drain();
            calls += 1;
            rc_is(
                "sched_op(SCHEDOP_poll, idle port, timeout now + 20 ms)",
                xen::poll(&mut [p], target),
                0,
            )?;
            let t = now()?;
            if t + 200_000 >= target {
                ensure!(
                    t - t0 < 1_000_000_000,
                    "poll with a 20 ms timeout returned after {} ns",
                    t - t0
                );
                return Ok(());
            }
            if calls == 5 {
                bail!(
                    "poll returned before its timeout 5 times (last {} ns early)",
                    target - t
                );
            }
        }
    })();
    xen::close(p);
    r
}

pub fn poll_too_many_ports() -> R {
    let port = timer_port()?;
    let mut ports = [port; POLL_MAX_PORTS as usize + 1];
    // sched/core.c do_poll: nr_ports > 128 -> -EINVAL.
    let rc = xen::poll(&mut ports, now_ns().unwrap_or(0) + 1_000_000);
    rc_is("SCHEDOP_poll with 129 ports", rc, -EINVAL)
}

pub fn poll_bad_port() -> R {
    let t = now()? + 1_000_000;
    // sched/core.c do_poll -> evtchn_port_poll: invalid port -> -EINVAL.
    let rc = poll_error(|| xen::poll(&mut [4096], t));
    rc_is("SCHEDOP_poll on port 4096", rc, -EINVAL)
}

pub fn poll_bad_pointer() -> R {
    let t = now()? + 1_000_000;
    // sched/core.c do_poll: the port list cannot be read -> -EFAULT.
    let rc = poll_error(|| {
        let mut p = Poll {
            ports: BAD_PTR,
            nr_ports: 1,
            _pad: 0,
            timeout: t,
        };
        sched_op(SCHEDOP_POLL, &mut p)
    });
    rc_is("SCHEDOP_poll with an unmapped port list", rc, -EFAULT)?;
    // sched/core.c: the sched_poll struct itself unreadable -> -EFAULT.
    rc_is(
        "SCHEDOP_poll with an unmapped argument",
        op_raw(SCHED_OP, SCHEDOP_POLL, BAD_PTR),
        -EFAULT,
    )
}

pub fn shutdown_bad_reason() -> R {
    // kxen: reasons above SHUTDOWN_MAX are refused with -EINVAL (Xen 4.17
    // would record them); nothing must be shut down.
    let mut s = Shutdown { reason: 99 };
    let rc = sched_op(SCHEDOP_SHUTDOWN, &mut s);
    rc_is("SCHEDOP_shutdown(reason 99)", rc, -EINVAL)
}

pub fn shutdown_bad_pointer() -> R {
    // sched/core.c: copy_from_guest of sched_shutdown fails -> -EFAULT.
    rc_is(
        "SCHEDOP_shutdown, unmapped argument",
        op_raw(SCHED_OP, SCHEDOP_SHUTDOWN, BAD_PTR),
        -EFAULT,
    )?;
    rc_is(
        "SCHEDOP_shutdown_code, unmapped argument",
        op_raw(SCHED_OP, SCHEDOP_SHUTDOWN_CODE, BAD_PTR),
        -EFAULT,
    )
}

pub fn unknown_subop() -> R {
    // sched/core.c do_sched_op: default -> -ENOSYS.
    rc_is("sched_op(99)", op_raw(SCHED_OP, 99, 0), -ENOSYS)
}

pub fn shutdown_code() -> R {
    // Recorded now; the final SCHEDOP_shutdown uses it (sched/core.c and
    // domain.c: the first recorded code wins). So record the reason the run
    // is going to end with.
    let reason = crate::final_reason();
    let mut s = Shutdown { reason };
    let rc = sched_op(SCHEDOP_SHUTDOWN_CODE, &mut s);
    ensure!(
        rc == 0,
        "SCHEDOP_shutdown_code({}): expected 0, got {}",
        reason,
        Rc(rc)
    );
    Ok(())
}
