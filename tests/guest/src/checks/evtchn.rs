//! event_channel_op (2-level ABI).

use core::sync::atomic::Ordering;

use xen_abi::errno::{EEXIST, EFAULT, EINVAL, ENOENT, ENOSYS, EOPNOTSUPP, ESRCH};
use xen_abi::event_channel::*;
use xen_abi::hvm::HVM_PARAM_STORE_EVTCHN;
use xen_abi::hypercall::EVENT_CHANNEL_OP;
use xen_abi::DOMID_SELF;

use super::version::BAD_PTR;
use super::{eq, neg, ok, rc_is, Fail, R};
use crate::hypercall::{event_channel_op, op_raw};
use crate::setup::{CONSOLE_PORT, TIMER_BIND_RC};
use crate::{bail, ensure, env, events, xen};

/// A port nobody allocates (the highest 2-level port).
const FREE_PORT: u32 = NR_EVENT_CHANNELS_2L - 1;

pub fn my_domid() -> Result<u16, Fail> {
    match env::domid() {
        Some(d) => Ok(d),
        None => bail!("CPUID leaf 0x40000004 does not report our domid"),
    }
}

fn expect_status(port: u32, state: u32, vcpu: u32) -> Result<Status, Fail> {
    let s = ok("EVTCHNOP_status", xen::status(port))?;
    ensure!(
        s.status == state && s.vcpu == vcpu,
        "status(port {}): expected state {} on vcpu {}, got state {} on vcpu {}",
        port,
        state,
        vcpu,
        s.status,
        s.vcpu
    );
    Ok(s)
}

pub fn bind_interdomain(remote_dom: u16, remote_port: u32) -> Result<u32, i64> {
    let mut b = BindInterdomain {
        remote_dom,
        _pad: 0,
        remote_port,
        local_port: 0,
    };
    match event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, &mut b) {
        0 => Ok(b.local_port),
        rc => Err(rc),
    }
}

fn bind_vcpu_op(port: u32, vcpu: u32) -> i64 {
    event_channel_op(EVTCHNOP_BIND_VCPU, &mut BindVcpu { port, vcpu })
}

pub fn alloc_unbound() -> R {
    let me = my_domid()?;
    let p = ok(
        "alloc_unbound(DOMID_SELF, DOMID_SELF)",
        xen::alloc_unbound(DOMID_SELF, DOMID_SELF),
    )?;
    ensure!(
        p != 0 && p < NR_EVENT_CHANNELS_2L,
        "alloc_unbound: port {}",
        p
    );
    let s = expect_status(p, EVTCHNSTAT_UNBOUND, 0)?;
    // event_channel.c: remote DOMID_SELF is recorded as our own domid.
    eq("unbound.dom", s.u[0] & 0xffff, me as u32)?;
    // Any remote domid may be named (it need not exist yet).
    let q = ok(
        "alloc_unbound(DOMID_SELF, remote 0)",
        xen::alloc_unbound(DOMID_SELF, 0),
    )?;
    let s2 = expect_status(q, EVTCHNSTAT_UNBOUND, 0)?;
    eq("unbound.dom (remote 0)", s2.u[0] & 0xffff, 0)?;
    ensure!(q != p, "alloc_unbound returned port {} twice", p);
    rc_is("close", xen::close(p), 0)?;
    rc_is("close", xen::close(q), 0)
}

pub fn alloc_unbound_other_dom() -> R {
    // event_channel.c evtchn_alloc_unbound: dom 5 does not exist ->
    // -ESRCH (rcu_lock_domain_by_any_id fails before XSM is asked).
    rc_is(
        "alloc_unbound(dom 5)",
        xen::alloc_unbound(5, DOMID_SELF).err().unwrap_or(0),
        neg(ESRCH),
    )
}

pub fn bind_interdomain_loopback() -> R {
    let me = my_domid()?;
    let a = ok(
        "alloc_unbound(DOMID_SELF, DOMID_SELF)",
        xen::alloc_unbound(DOMID_SELF, DOMID_SELF),
    )?;
    let b = match bind_interdomain(DOMID_SELF, a) {
        Ok(b) => b,
        Err(rc) => {
            xen::close(a);
            return rc_is("bind_interdomain(DOMID_SELF, unbound port)", rc, 0);
        }
    };
    let r = (|| -> R {
        ensure!(b != a, "bind_interdomain returned the remote port {}", a);
        let sa = expect_status(a, EVTCHNSTAT_INTERDOMAIN, 0)?;
        eq(
            "status(a).interdomain (dom, port)",
            (sa.u[0] & 0xffff, sa.u[1]),
            (me as u32, b),
        )?;
        let sb = expect_status(b, EVTCHNSTAT_INTERDOMAIN, 0)?;
        eq(
            "status(b).interdomain (dom, port)",
            (sb.u[0] & 0xffff, sb.u[1]),
            (me as u32, a),
        )?;
        // Binding marks the new local port pending (lost-notification fixup);
        // start from clean state.
        events::forget(a);
        events::forget(b);
        rc_is("send(b)", xen::send(b), 0)?;
        ensure!(
            events::wait_seen(a, 1_000),
            "send on b: a never became pending"
        );
        ensure!(!events::take_seen(b), "send on b also signalled b itself");
        rc_is("send(a)", xen::send(a), 0)?;
        ensure!(
            events::wait_seen(b, 1_000),
            "send on a: b never became pending"
        );
        // event_channel.c evtchn_close: closing one end leaves the other
        // unbound, waiting for us again.
        rc_is("close(a)", xen::close(a), 0)?;
        let sb = expect_status(b, EVTCHNSTAT_UNBOUND, 0)?;
        eq(
            "status(b).unbound.dom after close(a)",
            sb.u[0] & 0xffff,
            me as u32,
        )
    })();
    xen::close(a);
    xen::close(b);
    r
}

pub fn bind_interdomain_errors() -> R {
    let ipi = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    // event_channel.c evtchn_bind_interdomain: the remote port must be
    // unbound -> -EINVAL otherwise; invalid port -> -EINVAL; unknown remote
    // domain -> -ESRCH.
    let r1 = bind_interdomain(DOMID_SELF, ipi).err().unwrap_or(0);
    let r2 = bind_interdomain(DOMID_SELF, NR_EVENT_CHANNELS_2L)
        .err()
        .unwrap_or(0);
    let r3 = bind_interdomain(5, 1).err().unwrap_or(0);
    xen::close(ipi);
    rc_is("bind_interdomain(DOMID_SELF, ipi port)", r1, neg(EINVAL))?;
    rc_is("bind_interdomain(DOMID_SELF, port 4096)", r2, neg(EINVAL))?;
    rc_is("bind_interdomain(dom 5)", r3, neg(ESRCH))
}

pub fn bind_virq() -> R {
    let rc = TIMER_BIND_RC.load(Ordering::Acquire);
    ensure!(
        rc > 0,
        "setup: bind_virq(VIRQ_TIMER, vcpu 0): expected a port, got {}",
        super::Rc(rc)
    );
    let s = expect_status(rc as u32, EVTCHNSTAT_VIRQ, 0)?;
    eq("status(timer port).virq", s.u[0], VIRQ_TIMER)?;
    // A global VIRQ binds on vCPU 0.
    let p = ok(
        "bind_virq(VIRQ_DEBUGGER, vcpu 0)",
        xen::bind_virq(VIRQ_DEBUGGER, 0),
    )?;
    let r = expect_status(p, EVTCHNSTAT_VIRQ, 0).and_then(|s| eq("virq", s.u[0], VIRQ_DEBUGGER));
    let c = xen::close(p);
    r?;
    rc_is("close(virq port)", c, 0)
}

pub fn bind_virq_errors() -> R {
    // event_channel.c evtchn_bind_virq:
    // virq >= NR_VIRQS -> -EINVAL
    rc_is(
        "bind_virq(24, vcpu 0)",
        xen::bind_virq(NR_VIRQS, 0).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    // already bound on that vCPU -> -EEXIST (setup bound VIRQ_TIMER)
    rc_is(
        "bind_virq(VIRQ_TIMER, vcpu 0) again",
        xen::bind_virq(VIRQ_TIMER, 0).err().unwrap_or(0),
        neg(EEXIST),
    )?;
    // a global VIRQ on a vCPU other than 0 -> -EINVAL. Xen checks this
    // before it looks the vCPU up, so a vCPU that does not exist gets
    // -EINVAL too (vCPU 99 always; vCPU 1 in a 1-vCPU domain).
    rc_is(
        "bind_virq(VIRQ_DOM_EXC, vcpu 1)",
        xen::bind_virq(VIRQ_DOM_EXC, 1).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    rc_is(
        "bind_virq(VIRQ_DOM_EXC, vcpu 99)",
        xen::bind_virq(VIRQ_DOM_EXC, 99).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    if !xen::vcpu_exists(1) {
        // a per-vCPU VIRQ on the missing vCPU 1 -> -ENOENT
        rc_is(
            "bind_virq(VIRQ_TIMER, vcpu 1) in a 1-vCPU domain",
            xen::bind_virq(VIRQ_TIMER, 1).err().unwrap_or(0),
            neg(ENOENT),
        )?;
    }
    // no such vCPU -> -ENOENT
    rc_is(
        "bind_virq(VIRQ_TIMER, vcpu 99)",
        xen::bind_virq(VIRQ_TIMER, 99).err().unwrap_or(0),
        neg(ENOENT),
    )
}

pub fn bind_ipi() -> R {
    let p = ok("bind_ipi(vcpu 0)", xen::bind_ipi(0))?;
    let r = (|| -> R {
        expect_status(p, EVTCHNSTAT_IPI, 0)?;
        events::forget(p);
        let before = events::upcalls();
        rc_is("send(ipi)", xen::send(p), 0)?;
        ensure!(events::wait_seen(p, 1_000), "IPI port never became pending");
        ensure!(
            events::wait_upcall(before, 1_000),
            "IPI send raised no upcall (count stayed {})",
            before
        );
        Ok(())
    })();
    xen::close(p);
    r?;
    // event_channel.c evtchn_bind_ipi: no such vCPU -> -ENOENT.
    rc_is(
        "bind_ipi(vcpu 99)",
        xen::bind_ipi(99).err().unwrap_or(0),
        neg(ENOENT),
    )
}

pub fn bind_vcpu() -> R {
    let u = ok("alloc_unbound", xen::alloc_unbound(DOMID_SELF, DOMID_SELF))?;
    let ipi = match xen::bind_ipi(0) {
        Ok(p) => p,
        Err(rc) => {
            xen::close(u);
            return rc_is("bind_ipi(0)", rc, 0);
        }
    };
    let r = (|| -> R {
        // event_channel.c evtchn_bind_vcpu:
        rc_is("bind_vcpu(unbound port, vcpu 0)", bind_vcpu_op(u, 0), 0)?;
        expect_status(u, EVTCHNSTAT_UNBOUND, 0)?;
        // no such vCPU -> -ENOENT
        rc_is(
            "bind_vcpu(unbound port, vcpu 99)",
            bind_vcpu_op(u, 99),
            neg(ENOENT),
        )?;
        // IPI ports cannot move -> -EINVAL
        rc_is(
            "bind_vcpu(ipi port, vcpu 0)",
            bind_vcpu_op(ipi, 0),
            neg(EINVAL),
        )?;
        // per-vCPU VIRQs cannot move -> -EINVAL
        let timer = events::TIMER_PORT.load(Ordering::Acquire);
        if timer != 0 {
            rc_is(
                "bind_vcpu(VIRQ_TIMER port, vcpu 0)",
                bind_vcpu_op(timer, 0),
                neg(EINVAL),
            )?;
        }
        // invalid port -> -EINVAL
        rc_is(
            "bind_vcpu(port 4096, vcpu 0)",
            bind_vcpu_op(NR_EVENT_CHANNELS_2L, 0),
            neg(EINVAL),
        )
    })();
    xen::close(u);
    xen::close(ipi);
    r
}

pub fn send_unbound() -> R {
    let u = ok("alloc_unbound", xen::alloc_unbound(DOMID_SELF, DOMID_SELF))?;
    events::forget(u);
    // event_channel.c evtchn_send: ECS_UNBOUND silently drops -> 0.
    let rc = xen::send(u);
    events::drain();
    let fired = events::take_seen(u) || events::is_pending(u);
    xen::close(u);
    rc_is("send(unbound port)", rc, 0)?;
    ensure!(!fired, "send on an unbound port made it pending");
    Ok(())
}

pub fn send_invalid() -> R {
    // event_channel.c evtchn_send: free/reserved port -> -EINVAL (default
    // case); beyond the valid ports -> -EINVAL.
    rc_is("send(port 0)", xen::send(0), neg(EINVAL))?;
    rc_is(
        "send(never-allocated port 4095)",
        xen::send(FREE_PORT),
        neg(EINVAL),
    )?;
    rc_is(
        "send(port 4096)",
        xen::send(NR_EVENT_CHANNELS_2L),
        neg(EINVAL),
    )?;
    rc_is("send(port 0xffffffff)", xen::send(u32::MAX), neg(EINVAL))
}

pub fn close() -> R {
    let u = ok("alloc_unbound", xen::alloc_unbound(DOMID_SELF, DOMID_SELF))?;
    rc_is("close(unbound port)", xen::close(u), 0)?;
    expect_status(u, EVTCHNSTAT_CLOSED, 0)?;
    // event_channel.c evtchn_close: ECS_FREE/ECS_RESERVED -> -EINVAL;
    // invalid port -> -EINVAL.
    rc_is("close(same port again)", xen::close(u), neg(EINVAL))?;
    rc_is("close(port 0)", xen::close(0), neg(EINVAL))?;
    rc_is(
        "close(never-allocated port 4095)",
        xen::close(FREE_PORT),
        neg(EINVAL),
    )?;
    rc_is(
        "close(port 4096)",
        xen::close(NR_EVENT_CHANNELS_2L),
        neg(EINVAL),
    )
}

pub fn status() -> R {
    // Port 0 is reserved, reported closed (event_channel.c evtchn_status).
    let s = ok("status(port 0)", xen::status(0))?;
    eq("status(port 0).status", s.status, EVTCHNSTAT_CLOSED)?;
    // Invalid port -> -EINVAL; unknown domain -> -ESRCH.
    rc_is(
        "status(port 4096)",
        xen::status(NR_EVENT_CHANNELS_2L).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    rc_is(
        "status(dom 5, port 1)",
        xen::status_dom(5, 1).err().unwrap_or(0),
        neg(ESRCH),
    )?;
    // Our domid is accepted as well as DOMID_SELF.
    let me = my_domid()?;
    let timer = events::TIMER_PORT.load(Ordering::Acquire);
    if timer != 0 {
        let s = ok("status(own domid, timer port)", xen::status_dom(me, timer))?;
        eq(
            "status(own domid, timer port).status",
            s.status,
            EVTCHNSTAT_VIRQ,
        )?;
    }
    Ok(())
}

pub fn mask_unmask() -> R {
    let p = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    // Keep the backends' notifications from raising unrelated upcalls while
    // we look for the absence of one.
    let quiet = [
        CONSOLE_PORT.load(Ordering::Acquire),
        xen::get_param(HVM_PARAM_STORE_EVTCHN).unwrap_or(0) as u32,
    ];
    for &q in quiet.iter().filter(|&&q| q != 0 && q != p) {
        events::set_mask(q);
    }
    let r = (|| -> R {
        events::forget(p);
        events::set_mask(p);
        events::drain();
        let before = events::upcalls();
        rc_is("send(masked ipi port)", xen::send(p), 0)?;
        let early = events::wait_upcall(before, 30);
        ensure!(
            events::is_pending(p),
            "masked port is not pending after send"
        );
        ensure!(!early, "an upcall fired for a masked port");
        // event_channel.c evtchn_unmask -> 2l unmask: clears the mask and,
        // since the port is pending, re-raises pending_sel and the upcall.
        rc_is("unmask(port)", xen::unmask(p), 0)?;
        ensure!(
            !events::is_masked(p),
            "mask bit still set after EVTCHNOP_unmask"
        );
        ensure!(
            events::wait_upcall(before, 1_000),
            "unmasking a pending port raised no upcall"
        );
        ensure!(
            events::wait_seen(p, 1_000),
            "port not delivered after unmask"
        );
        Ok(())
    })();
    for &q in quiet.iter().filter(|&&q| q != 0 && q != p) {
        events::clear_mask(q);
    }
    events::clear_mask(p);
    xen::close(p);
    r?;
    rc_is(
        "unmask(port 4096)",
        xen::unmask(NR_EVENT_CHANNELS_2L),
        neg(EINVAL),
    )
}

pub fn fifo_ops() -> R {
    // kxen offers the FIFO ABI; this guest stays on 2-level, so only the
    // refusals that leave the domain's ABI alone are checked here
    // (event_fifo.c evtchn_fifo_init_control / expand_array).
    // evtchn_init_control: control_gfn, offset | vcpu << 32, link_bits.
    let mut init = [0u64, 0, 0];
    init[1] = 0xffff_ffff << 32;
    rc_is(
        "EVTCHNOP_init_control(no such vCPU)",
        event_channel_op(EVTCHNOP_INIT_CONTROL, &mut init),
        neg(ENOENT),
    )?;
    init[1] = 4;
    rc_is(
        "EVTCHNOP_init_control(unaligned offset)",
        event_channel_op(EVTCHNOP_INIT_CONTROL, &mut init),
        neg(EINVAL),
    )?;
    init[1] = 4096 - 64;
    rc_is(
        "EVTCHNOP_init_control(block crosses the page)",
        event_channel_op(EVTCHNOP_INIT_CONTROL, &mut init),
        neg(EINVAL),
    )?;
    init[0] = 1 << 40;
    init[1] = 0;
    rc_is(
        "EVTCHNOP_init_control(GFN outside RAM)",
        event_channel_op(EVTCHNOP_INIT_CONTROL, &mut init),
        neg(EINVAL),
    )?;
    let mut expand = [0u64; 1]; // evtchn_expand_array: array_gfn
    rc_is(
        "EVTCHNOP_expand_array(before init_control)",
        event_channel_op(EVTCHNOP_EXPAND_ARRAY, &mut expand),
        neg(EOPNOTSUPP),
    )?;
    // event_channel.c evtchn_port_set_priority: 2-level has no priorities
    // -> -ENOSYS for a valid port.
    let timer = events::TIMER_PORT.load(Ordering::Acquire);
    let mut prio = [timer, 0u32]; // evtchn_set_priority: port, priority
    rc_is(
        "EVTCHNOP_set_priority(valid port)",
        event_channel_op(EVTCHNOP_SET_PRIORITY, &mut prio),
        neg(ENOSYS),
    )
}

pub fn unknown_cmd() -> R {
    let mut buf = [0u64; 4];
    // event_channel.c do_event_channel_op: default -> -ENOSYS.
    rc_is(
        "event_channel_op(99)",
        event_channel_op(99, &mut buf),
        neg(ENOSYS),
    )
}

pub fn bad_pointer() -> R {
    // event_channel.c: copy_from_guest failure -> -EFAULT.
    for (cmd, name) in [
        (EVTCHNOP_SEND, "EVTCHNOP_send"),
        (EVTCHNOP_STATUS, "EVTCHNOP_status"),
        (EVTCHNOP_ALLOC_UNBOUND, "EVTCHNOP_alloc_unbound"),
        (EVTCHNOP_BIND_VIRQ, "EVTCHNOP_bind_virq"),
    ] {
        rc_is(name, op_raw(EVENT_CHANNEL_OP, cmd, BAD_PTR), neg(EFAULT))?;
    }
    Ok(())
}
