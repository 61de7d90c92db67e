//! Checks that run only when named exactly: they end the domain or disturb
//! everything after them.

use core::sync::atomic::Ordering;

use xen_abi::cpuid::XEN_CPUID_BASE;
use xen_abi::errno::{EINVAL, ESRCH};
use xen_abi::event_channel::{Reset, EVTCHNOP_RESET, EVTCHNSTAT_CLOSED};
use xen_abi::DOMID_SELF;

use super::{neg, ok, rc_is, R};
use crate::boot::{
    kxen_ring3_pf_probe, RING3_PF_PROBE_DONE, RING3_PF_PROBE_VA, SVC_BENCH_CR3,
    SVC_BENCH_HYPERCALL, SVC_BENCH_NULL_EXIT, SVC_TRIPLE_FAULT,
};
use crate::hypercall::{cpuid, event_channel_op, hypercall5, rdtsc, service};
use crate::setup::CONSOLE_PORT;
use crate::time::Deadline;
use crate::{bail, console, events, println, xen};

/// EVTCHNOP_reset closes every port, the console's and xenstore's included,
/// so it runs only alone (`kxen.test=evtchn.reset`); output continues on the
/// ring without notifications and on console_io.
pub fn evtchn_reset() -> R {
    // event_channel.c: unknown domain -> -ESRCH.
    rc_is(
        "EVTCHNOP_reset(dom 5)",
        event_channel_op(EVTCHNOP_RESET, &mut Reset { dom: 5 }),
        neg(ESRCH),
    )?;
    let u = ok("alloc_unbound", xen::alloc_unbound(DOMID_SELF, DOMID_SELF))?;
    let ipi = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    // Open ports take sends: an unbound one drops them silently, an IPI
    // one raises itself (event_channel.c evtchn_send).
    rc_is("send(unbound) before reset", xen::send(u), 0)?;
    rc_is("send(ipi) before reset", xen::send(ipi), 0)?;
    events::forget(ipi);
    console::mirror_to_console_io();
    rc_is(
        "EVTCHNOP_reset(DOMID_SELF)",
        event_channel_op(EVTCHNOP_RESET, &mut Reset { dom: DOMID_SELF }),
        0,
    )?;
    let timer = events::TIMER_PORT.swap(0, Ordering::AcqRel);
    let console_port = CONSOLE_PORT.load(Ordering::Acquire);
    for (port, what) in [
        (u, "unbound port"),
        (ipi, "IPI port"),
        (timer, "VIRQ_TIMER port"),
        (console_port, "console port"),
    ] {
        if port != 0 {
            let s = ok("EVTCHNOP_status", xen::status(port))?;
            if s.status != EVTCHNSTAT_CLOSED {
                bail!(
                    "{} {} after reset: expected state closed, got {}",
                    what,
                    port,
                    s.status
                );
            }
        }
    }
    // event_channel.c evtchn_send: a closed (free) port -> -EINVAL, and
    // nothing is raised.
    for (port, what) in [
        (u, "send(unbound) after reset"),
        (ipi, "send(ipi) after reset"),
    ] {
        rc_is(what, xen::send(port), neg(EINVAL))?;
    }
    if events::is_pending(ipi) {
        bail!("IPI port {} pending after a send on it once closed", ipi);
    }
    // Allocation works again afterwards.
    let v = ok(
        "alloc_unbound after reset",
        xen::alloc_unbound(DOMID_SELF, DOMID_SELF),
    )?;
    rc_is("close", xen::close(v), 0)
}

/// Empty IDT + fault in ring 0: the VMM must end the domain with a non-zero
/// status.
pub fn triple_fault() -> R {
    println!("kxen-testguest: triple_fault: loading an empty IDT and faulting in ring 0");
    let rc = service(SVC_TRIPLE_FAULT, 0);
    bail!(
        "still running after the triple fault (service returned {})",
        rc as i64
    )
}

/// `popcnt` with a memory operand in MMIO space: KVM must emulate the access
/// and its emulator has no popcnt -> KVM_EXIT_INTERNAL_ERROR; the VMM must
/// end the domain.
pub fn bad_insn() -> R {
    println!("kxen-testguest: bad_insn: popcnt from MMIO at 0xfed00000");
    let out: u64;
    // SAFETY: a read of MMIO space no device claims; if the VMM somehow
    // completes it, the result is just a number.
    unsafe {
        core::arch::asm!(
            "popcnt {out}, qword ptr [{addr}]",
            out = out(reg) out,
            addr = in(reg) 0xfed0_0000u64,
            options(nostack, readonly),
        );
    }
    println!("kxen-testguest: bad_insn not trapped");
    bail!("execution continued after the popcnt (result {})", out)
}

/// Ring-0 cost of a hypercall through the page, and of a bare port exit.
pub fn bench() -> R {
    const N: u64 = 10_000;
    let hc = service(SVC_BENCH_HYPERCALL, N) as i64;
    if hc < 0 {
        bail!("hypercall benchmark failed: {}", super::Rc(hc));
    }
    let null = service(SVC_BENCH_NULL_EXIT, N) as i64;
    if null < 0 {
        bail!("null-exit benchmark failed: {}", super::Rc(null));
    }
    let max = cpuid(XEN_CPUID_BASE, 0)[0];
    let khz = if max >= XEN_CPUID_BASE + 3 {
        cpuid(XEN_CPUID_BASE + 3, 0)[2]
    } else {
        0
    };
    println!(
        "bench: hypercall_cycles={} null_exit_cycles={} tsc_khz={}",
        hc as u64 / N,
        null as u64 / N,
        khz
    );
    Ok(())
}

/// The PVH side of kxen-bench's `pv` section: each operation the PV test
/// kernel (tests/guestpv) times, done the way this PVH guest does it.
/// Ring 0 is emulated on PVM hosts, so ring-3 loops go through the int3
/// gate exactly as every check here does.
pub fn bench_pv() -> R {
    const N: u64 = 2_000;
    // An out-of-range hypercall number: the gate answers -ENOSYS in ring 0
    // without a hypercall, so this is a bare ring 3 -> ring 0 -> ring 3
    // round trip (int3, six gate instructions, iretq).
    const GATE_ENOSYS: u64 = 255;
    // Ring-0 loops (a PVH kernel's own view).
    let hc = service(SVC_BENCH_HYPERCALL, N) as i64;
    if hc < 0 {
        bail!("hypercall benchmark failed: {}", super::Rc(hc));
    }
    let cr3 = service(SVC_BENCH_CR3, N) as i64;
    if cr3 < 0 {
        bail!("CR3 benchmark failed: {}", super::Rc(cr3));
    }

    // Ring 3 -> ring 0 -> ring 3 through the gate.
    let t0 = rdtsc();
    for _ in 0..N {
        // SAFETY: no pointer arguments; the gate refuses the number.
        let rc = unsafe { hypercall5(GATE_ENOSYS, 0, 0, 0, 0, 0) };
        if rc != neg(xen_abi::errno::ENOSYS) {
            bail!(
                "gate with hypercall {}: expected -ENOSYS, got {}",
                GATE_ENOSYS,
                super::Rc(rc)
            );
        }
    }
    let gate = rdtsc() - t0;

    // xen_version(0) from ring 3: the gate plus a hypercall.
    let t0 = rdtsc();
    for _ in 0..N {
        let rc = crate::hypercall::xen_version_null(0);
        if rc < 0 {
            bail!("xen_version(0) from ring 3: {}", super::Rc(rc));
        }
    }
    let gate_hc = rdtsc() - t0;

    // A ring-3 page fault handled in ring 0 and returned from.
    let t0 = rdtsc();
    for _ in 0..N {
        // SAFETY: the probe loads one byte from an unmapped user address;
        // ring 0 steps over the faulting load and returns a marker.
        let rax = unsafe { kxen_ring3_pf_probe(RING3_PF_PROBE_VA) };
        if rax != RING3_PF_PROBE_DONE {
            bail!(
                "page-fault probe returned {:#x}, not the ring-0 marker",
                rax
            );
        }
    }
    let pf = rdtsc() - t0;

    // EVTCHNOP_send to an IPI port of our own, until its upcall is taken
    // (vector 0xf3, ring 0 EOIs and counts), then the pending state
    // cleared as an upcall handler does.
    let ipi = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    events::forget(ipi);
    let mut deadline = Deadline::after_ms(10_000);
    let t0 = rdtsc();
    for _ in 0..N {
        let before = events::upcalls();
        rc_is("EVTCHNOP_send(ipi)", xen::send(ipi), 0)?;
        while events::upcalls() == before {
            if deadline.expired() {
                bail!("no upcall for a send to IPI port {} within 10 s", ipi);
            }
            core::hint::spin_loop();
        }
        events::drain();
        if !events::take_seen(ipi) {
            bail!("upcall taken but IPI port {} not pending", ipi);
        }
    }
    let upcall = rdtsc() - t0;
    rc_is("close(ipi)", xen::close(ipi), 0)?;

    let max = cpuid(XEN_CPUID_BASE, 0)[0];
    let khz = if max >= XEN_CPUID_BASE + 3 {
        cpuid(XEN_CPUID_BASE + 3, 0)[2]
    } else {
        0
    };
    println!(
        "bench.pv: calls={} hypercall_cycles={} cr3_cycles={} gate_cycles={} \
         gate_hypercall_cycles={} page_fault_cycles={} evtchn_upcall_cycles={} tsc_khz={}",
        N,
        hc as u64 / N,
        cr3 as u64 / N,
        gate / N,
        gate_hc / N,
        pf / N,
        upcall / N,
        khz
    );
    Ok(())
}

/// A page-aligned page of guest RAM the hypervisor writes too (the guest
/// runs identity-mapped, so its address is its guest-physical address).
#[repr(C, align(4096))]
struct SharedPage([core::sync::atomic::AtomicU32; 1024]);

static FIFO_CONTROL: SharedPage =
    SharedPage([const { core::sync::atomic::AtomicU32::new(0) }; 1024]);
static FIFO_ARRAY: SharedPage = SharedPage([const { core::sync::atomic::AtomicU32::new(0) }; 1024]);

/// FIFO event channels (`kxen.test=evtchn.fifo`): the domain switches to
/// the FIFO ABI, which this guest's 2-level upcall handler does not read,
/// so it runs only alone; output continues on console_io. A self-IPI is
/// queued on vCPU 0's priority-7 queue and raises the upcall; a masked
/// one waits for EVTCHNOP_unmask and is then linked behind it.
pub fn evtchn_fifo() -> R {
    use xen_abi::errno::EOPNOTSUPP;
    use xen_abi::event_channel::*;
    const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
    const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
    const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;

    console::mirror_to_console_io();
    // event_fifo.c evtchn_fifo_expand_array: no FIFO yet -> -EOPNOTSUPP.
    rc_is(
        "EVTCHNOP_expand_array before init_control",
        expand_array_call(&FIFO_ARRAY),
        neg(EOPNOTSUPP),
    )?;
    let link_bits = init_control_vcpu0(&FIFO_CONTROL)?;
    if link_bits != EVTCHN_FIFO_LINK_BITS {
        bail!("init_control: link_bits {}, expected 17", link_bits);
    }
    // event_fifo.c map_control_block: a vCPU registers once -> -EINVAL.
    rc_is(
        "EVTCHNOP_init_control(vCPU 0 again)",
        init_control_call(&FIFO_CONTROL).0,
        neg(EINVAL),
    )?;
    rc_is("EVTCHNOP_expand_array", expand_array_call(&FIFO_ARRAY), 0)?;
    let ipi = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    let mut prio = SetPriority {
        port: ipi,
        priority: 16,
    };
    rc_is(
        "EVTCHNOP_set_priority(16)",
        event_channel_op(EVTCHNOP_SET_PRIORITY, &mut prio),
        neg(EINVAL),
    )?;
    let before = events::upcalls();
    rc_is("send(ipi)", xen::send(ipi), 0)?;
    let word = FIFO_ARRAY.0[ipi as usize].load(Ordering::SeqCst);
    if word != PENDING | LINKED {
        bail!("event word of port {} after send: {:#x}", ipi, word);
    }
    let head = FIFO_CONTROL.0[2 + 7].load(Ordering::SeqCst);
    if head != ipi {
        bail!("HEAD[7] {} after sending on port {}", head, ipi);
    }
    if FIFO_CONTROL.0[0].load(Ordering::SeqCst) & 1 << 7 == 0 {
        bail!("READY bit 7 clear after the send");
    }
    if !events::wait_upcall(before, 1000) {
        bail!("no upcall for the FIFO self-IPI");
    }
    // Masked: pending only; EVTCHNOP_unmask links it behind the first.
    let masked = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    FIFO_ARRAY.0[masked as usize].store(MASKED, Ordering::SeqCst);
    rc_is("send(masked ipi)", xen::send(masked), 0)?;
    let word = FIFO_ARRAY.0[masked as usize].load(Ordering::SeqCst);
    if word != PENDING | MASKED {
        bail!("masked port {} after send: {:#x}", masked, word);
    }
    rc_is("EVTCHNOP_unmask", xen::unmask(masked), 0)?;
    let word = FIFO_ARRAY.0[masked as usize].load(Ordering::SeqCst);
    if word != PENDING | LINKED {
        bail!("port {} after unmask: {:#x}", masked, word);
    }
    let first = FIFO_ARRAY.0[ipi as usize].load(Ordering::SeqCst);
    if first != PENDING | LINKED | masked {
        bail!("port {} does not link to {}: {:#x}", ipi, masked, first);
    }
    Ok(())
}

/// EVTCHNOP_init_control for vCPU 0, its control block at the start of
/// `page`: the switch to the FIFO ABI. Returns the link bits Xen
/// reports.
fn init_control_vcpu0(page: &SharedPage) -> Result<u8, super::Fail> {
    let (rc, link_bits) = init_control_call(page);
    rc_is("EVTCHNOP_init_control(vCPU 0)", rc, 0)?;
    Ok(link_bits)
}

/// EVTCHNOP_expand_array with `page` as the next event array page: the
/// return code.
fn expand_array_call(page: &SharedPage) -> i64 {
    use xen_abi::event_channel::{ExpandArray, EVTCHNOP_EXPAND_ARRAY};
    let mut expand = ExpandArray {
        array_gfn: page.0.as_ptr() as u64 >> 12,
    };
    event_channel_op(EVTCHNOP_EXPAND_ARRAY, &mut expand)
}

/// EVTCHNOP_init_control for vCPU 0 on `page`, as it is: the return
/// code and the link bits the call wrote back.
fn init_control_call(page: &SharedPage) -> (i64, u8) {
    use xen_abi::event_channel::{InitControl, EVTCHNOP_INIT_CONTROL};
    let mut init = InitControl {
        control_gfn: page.0.as_ptr() as u64 >> 12,
        offset: 0,
        vcpu: 0,
        link_bits: 0,
        _pad: [0; 7],
    };
    let rc = event_channel_op(EVTCHNOP_INIT_CONTROL, &mut init);
    (rc, init.link_bits)
}

/// How long [`evtchn_fifo_save`] waits at its save point (guest time,
/// which a restore continues from where the save left it).
const SAVE_WINDOW_MS: u64 = 5000;

/// FIFO state across a save (`kxen.test=evtchn.fifo_save`, issue 17):
/// the domain switches to FIFO, leaves a self-IPI pending on vCPU 0's
/// default queue and gives a second port priority 3, then says it is at
/// its save point and waits (the test pauses, saves and restores the
/// domain meanwhile). Afterwards a third event must link behind the
/// pending one, which takes the queue's tail the hypervisor kept (the
/// guest cannot see it), and the second port's event must go on queue 3.
pub fn evtchn_fifo_save() -> R {
    use xen_abi::event_channel::*;
    const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
    const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;

    console::mirror_to_console_io();
    init_control_vcpu0(&FIFO_CONTROL)?;
    rc_is("EVTCHNOP_expand_array", expand_array_call(&FIFO_ARRAY), 0)?;
    let first = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    let second = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    let third = ok("bind_ipi(0)", xen::bind_ipi(0))?;
    let mut prio = SetPriority {
        port: second,
        priority: 3,
    };
    rc_is(
        "EVTCHNOP_set_priority(3)",
        event_channel_op(EVTCHNOP_SET_PRIORITY, &mut prio),
        0,
    )?;
    rc_is("send(first)", xen::send(first), 0)?;
    // Under Dom0, ports raised before the switch may be queued ahead of
    // it; `first` is the queue's tail now.
    let word = FIFO_ARRAY.0[first as usize].load(Ordering::SeqCst);
    if word != PENDING | LINKED {
        bail!("port {first} after its send: {word:#x}");
    }
    println!("evtchn.fifo_save: at the save point");
    crate::time::sleep_ms(SAVE_WINDOW_MS);
    println!("evtchn.fifo_save: after the save point");
    rc_is("send(third)", xen::send(third), 0)?;
    // Follow the queue from `first`: events Dom0 raised after the restore
    // (the console's, xenstore's) may sit between it and `third`, but all
    // on the one queue, linked from the tail the hypervisor kept.
    let mut at = first;
    for _ in 0..8 {
        let word = FIFO_ARRAY.0[at as usize].load(Ordering::SeqCst);
        let next = word & EVTCHN_FIFO_LINK_MASK;
        if word & LINKED == 0 || next == 0 {
            bail!("port {third} is not queued behind pending port {first}: port {at}'s word {word:#x}");
        }
        if next == third {
            break;
        }
        at = next;
    }
    if FIFO_ARRAY.0[at as usize].load(Ordering::SeqCst) & EVTCHN_FIFO_LINK_MASK != third {
        bail!("port {third} not found within 8 links of port {first}");
    }
    rc_is("send(second)", xen::send(second), 0)?;
    if FIFO_CONTROL.0[2 + 3].load(Ordering::SeqCst) != second {
        bail!("port {second}'s event is not on its priority-3 queue");
    }
    if FIFO_CONTROL.0[0].load(Ordering::SeqCst) & 1 << 3 == 0 {
        bail!("READY bit 3 clear after the send on port {second}");
    }
    Ok(())
}

/// The xenstore ring across a save (`kxen.test=xenstore.save`, issue 17):
/// the domain leaves its ring mid-exchange, then says it is at its save
/// point and waits (the test pauses, saves and restores it meanwhile).
/// Two exchanges are open: the reply to a read of a value longer than the
/// response ring, which fills the ring with the rest still queued in
/// Dom0's daemon, and a write the daemon has taken only the header and
/// part of the body of. Afterwards both must finish as if nothing had
/// happened: the whole value read back, and the write's rest sent and
/// acknowledged.
pub fn xenstore_save() -> R {
    use crate::xenstore::{self, Reply};
    use kxen_testguest::xswire::{self, HEADER_LEN};
    use xen_abi::xenstore::{PAYLOAD_MAX, RING_SIZE, XS_READ, XS_WRITE};

    const BIG: usize = 1500;
    const BIG_PATH: &[u8] = b"data/xs-save-big\0";
    const WRITE_PATH: &[u8] = b"data/xs-save-moved\0";
    const WRITE_VALUE: &[u8] = b"across the save";
    console::mirror_to_console_io();
    let ring = match xenstore::ring() {
        Ok(ring) => ring,
        Err(e) => bail!("xenstore ring: {e}"),
    };
    let mut reply = Reply::empty();
    // Messages longer than the ring go in pieces, each taken before the
    // next fits.
    let send_all = |bytes: &[u8]| -> R {
        let mut rest = bytes;
        let mut d = Deadline::after_ms(2_000);
        while !rest.is_empty() {
            rest = &rest[ring.put_raw(rest)..];
            if d.expired() {
                bail!("xenstore: request ring did not drain");
            }
            xen::sched_yield();
        }
        Ok(())
    };
    let message = |kind: u32, id: u32, parts: &[&[u8]], out: &mut [u8]| -> usize {
        let Some(h) = xswire::request_header(kind, id, parts) else {
            return 0;
        };
        out[..HEADER_LEN].copy_from_slice(&h.to_bytes());
        let mut at = HEADER_LEN;
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        at
    };
    let mut buf = [0u8; HEADER_LEN + PAYLOAD_MAX];
    let value = [b'v'; BIG];
    let id = xenstore::next_req_id();
    let n = message(XS_WRITE, id, &[BIG_PATH, &value], &mut buf);
    send_all(&buf[..n])?;
    if let Err(e) = xenstore::wait_reply(&ring, id, Deadline::after_ms(2_000), &mut reply) {
        bail!("XS_WRITE of {BIG} bytes: {e}");
    }
    if reply.kind != XS_WRITE {
        bail!("XS_WRITE of {BIG} bytes: reply type {}", reply.kind);
    }
    // The read whose reply is longer than the ring: not taken yet.
    let read_id = xenstore::next_req_id();
    let n = message(XS_READ, read_id, &[BIG_PATH], &mut buf);
    send_all(&buf[..n])?;
    let mut d = Deadline::after_ms(2_000);
    while ring.responses_waiting() < RING_SIZE {
        if d.expired() {
            bail!(
                "the read's reply did not fill the ring: {} bytes",
                ring.responses_waiting()
            );
        }
        xen::sched_yield();
    }
    // The write, half sent; the daemon takes what is there.
    let write_id = xenstore::next_req_id();
    let n = message(XS_WRITE, write_id, &[WRITE_PATH, WRITE_VALUE], &mut buf);
    let half = HEADER_LEN + WRITE_PATH.len() / 2;
    send_all(&buf[..half])?;
    let mut d = Deadline::after_ms(2_000);
    while !ring.requests_taken() {
        if d.expired() {
            bail!("the daemon did not take the partial request");
        }
        xen::sched_yield();
    }
    println!("xenstore.save: at the save point");
    crate::time::sleep_ms(SAVE_WINDOW_MS);
    println!("xenstore.save: after the save point");
    if let Err(e) = xenstore::wait_reply(&ring, read_id, Deadline::after_ms(2_000), &mut reply) {
        bail!("the read's reply after the save: {e}");
    }
    if reply.kind != XS_READ || reply.payload() != value {
        bail!(
            "the read's reply after the save: type {}, {} bytes",
            reply.kind,
            reply.len
        );
    }
    send_all(&buf[half..n])?;
    if let Err(e) = xenstore::wait_reply(&ring, write_id, Deadline::after_ms(2_000), &mut reply) {
        bail!("the write's reply after the save: {e}");
    }
    if reply.kind != XS_WRITE {
        bail!(
            "the write finished after the save: reply type {} ({:?})",
            reply.kind,
            core::str::from_utf8(reply.text())
        );
    }
    let r = xenstore::request(XS_READ, &[WRITE_PATH], &mut reply);
    if r.is_err() || reply.text() != WRITE_VALUE {
        bail!(
            "the value written across the save reads back as {:?}",
            core::str::from_utf8(reply.text())
        );
    }
    Ok(())
}

/// How long [`suspend_evtchn`] waits for each suspend request (guest
/// time).
const SUSPEND_WAIT_MS: u64 = 60_000;

/// Xen's suspend event channel (`kxen.test=suspend.evtchn`, issue 17):
/// the guest allocates a port unbound for Dom0 and names it in
/// `device/suspend/event-channel`. It offers no `control/feature-suspend`
/// and watches no `control/shutdown`, so the channel is the only way the
/// toolstack can ask it to suspend. On each event there it suspends
/// (SCHEDOP_shutdown(SHUTDOWN_suspend)). Returning 1 (a checkpoint:
/// resumed in place) it waits for the next request; returning 0 it runs
/// in a new domain, whose event channels are all closed, and the check
/// ends there (its lines go out through console_io).
pub fn suspend_evtchn() -> R {
    use crate::xenstore::{self, Reply};
    use xen_abi::sched::SHUTDOWN_SUSPEND;
    use xen_abi::xenstore::XS_WRITE;

    console::mirror_to_console_io();
    let port = ok("alloc_unbound(remote 0)", xen::alloc_unbound(DOMID_SELF, 0))?;
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = port;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut reply = Reply::empty();
    let written = xenstore::request(
        XS_WRITE,
        &[b"device/suspend/event-channel\0", &digits[at..]],
        &mut reply,
    );
    if written.is_err() || reply.kind != XS_WRITE {
        bail!(
            "writing device/suspend/event-channel: {:?} (reply type {})",
            written.err(),
            reply.kind
        );
    }
    for _ in 0..4 {
        println!("suspend.evtchn: waiting on port {}", port);
        if !events::wait_seen(port, SUSPEND_WAIT_MS) {
            bail!(
                "no suspend request on port {} within {} ms",
                port,
                SUSPEND_WAIT_MS
            );
        }
        let rc = xen::shutdown(SHUTDOWN_SUSPEND);
        println!("suspend.evtchn: suspend returned {}", rc);
        match rc {
            1 => continue,
            0 => return Ok(()),
            rc => bail!("SCHEDOP_shutdown(SHUTDOWN_suspend) returned {}", rc),
        }
    }
    bail!("more than 4 checkpoints")
}

/// The highest port the domain may use, from `kxen.evtchn_max=N` (the
/// cfg's max_event_channels the test set).
fn expected_max_port() -> Result<u32, super::Fail> {
    let value = crate::env::cmdline_value(b"kxen.evtchn_max");
    match value.and_then(kxen_testguest::cmd::parse_u64) {
        Some(n) if n < u32::MAX as u64 => Ok(n as u32),
        _ => bail!("no kxen.evtchn_max=N on the command line"),
    }
}

/// Allocate unbound ports (for ourselves) until EVTCHNOP_alloc_unbound
/// fails; the highest port allocated and the error. Xen hands out the
/// lowest free port each time (get_free_port).
fn fill_ports(allocated: &mut [u32]) -> Result<(usize, u32, i64), super::Fail> {
    let mut n = 0;
    let mut highest = 0;
    loop {
        match xen::alloc_unbound(DOMID_SELF, DOMID_SELF) {
            Ok(port) => {
                if port <= highest {
                    bail!("alloc_unbound gave port {port} after {highest}");
                }
                highest = port;
                if n == allocated.len() {
                    bail!("more than {} ports allocated", allocated.len());
                }
                allocated[n] = port;
                n += 1;
            }
            Err(rc) => return Ok((n, highest, rc)),
        }
    }
}

/// Ports allocated by the limit checks (the most any of them fills).
static mut FILLED: [u32; 5120] = [0; 5120];

/// `max_event_channels` under the 2-level ABI
/// (`kxen.test=evtchn.port_limit kxen.evtchn_max=N`, N small): ports are
/// handed out up to N and the next allocation gets -ENOSPC, as Xen's
/// evtchn_allocate_port answers a port above max_evtchn_port; a closed
/// port is handed out again.
pub fn evtchn_port_limit() -> R {
    use xen_abi::errno::ENOSPC;
    console::mirror_to_console_io();
    let max = expected_max_port()?;
    // SAFETY: special checks run alone on vCPU 0; nothing else touches it.
    let filled = unsafe { &mut *core::ptr::addr_of_mut!(FILLED) };
    let (n, highest, rc) = fill_ports(filled)?;
    println!("evtchn.port_limit: {n} ports up to {highest}, then {rc}");
    let r = (|| {
        if highest != max || rc != neg(ENOSPC) {
            bail!("highest port {highest} then {rc}: expected {max} then -ENOSPC");
        }
        rc_is("close(a middle port)", xen::close(filled[n / 2]), 0)?;
        let again = ok(
            "alloc_unbound after a close",
            xen::alloc_unbound(DOMID_SELF, DOMID_SELF),
        )?;
        if again != filled[n / 2] {
            bail!("alloc_unbound after closing {} gave {again}", filled[n / 2]);
        }
        Ok(())
    })();
    for &port in &filled[..n] {
        xen::close(port);
    }
    r
}

/// Event array pages for [`evtchn_fifo_ports`]: ports 0-5119.
static FIFO_PORTS_ARRAY: [SharedPage; 5] =
    [const { SharedPage([const { core::sync::atomic::AtomicU32::new(0) }; 1024]) }; 5];
static FIFO_PORTS_CONTROL: SharedPage =
    SharedPage([const { core::sync::atomic::AtomicU32::new(0) }; 1024]);

/// FIFO ports beyond the 2-level ABI's 4096
/// (`kxen.test=evtchn.fifo_ports kxen.evtchn_max=N`, 4096 < N < 5120):
/// after init_control and enough expand_array pages, ports are handed out
/// up to N (-ENOSPC after, max_event_channels again), and a loopback
/// channel between the two highest ports delivers in both directions: the
/// event word of a port above 4096 gets PENDING|LINKED, heads its
/// priority's queue, and the upcall comes.
pub fn evtchn_fifo_ports() -> R {
    use xen_abi::errno::ENOSPC;
    use xen_abi::event_channel::*;
    const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
    const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;

    console::mirror_to_console_io();
    let max = expected_max_port()?;
    if !(NR_EVENT_CHANNELS_2L..5 * EVTCHN_FIFO_WORDS_PER_PAGE).contains(&max) {
        bail!("kxen.evtchn_max={max}: this check needs 4096..5119");
    }
    init_control_vcpu0(&FIFO_PORTS_CONTROL)?;
    let pages = (max / EVTCHN_FIFO_WORDS_PER_PAGE + 1) as usize;
    for page in &FIFO_PORTS_ARRAY[..pages] {
        rc_is("EVTCHNOP_expand_array", expand_array_call(page), 0)?;
    }
    let word = |port: u32| {
        FIFO_PORTS_ARRAY[(port / EVTCHN_FIFO_WORDS_PER_PAGE) as usize].0
            [(port % EVTCHN_FIFO_WORDS_PER_PAGE) as usize]
            .load(Ordering::SeqCst)
    };
    // SAFETY: special checks run alone on vCPU 0; nothing else touches it.
    let filled = unsafe { &mut *core::ptr::addr_of_mut!(FILLED) };
    let (n, highest, rc) = fill_ports(filled)?;
    println!("evtchn.fifo_ports: {n} ports up to {highest}, then {rc}");
    if highest != max || rc != neg(ENOSPC) {
        bail!("highest port {highest} then {rc}: expected {max} then -ENOSPC");
    }
    // The two highest become a loopback pair: a (max - 1) <-> b (max).
    rc_is("close(max - 1)", xen::close(max - 1), 0)?;
    rc_is("close(max)", xen::close(max), 0)?;
    let a = ok(
        "alloc_unbound(self)",
        xen::alloc_unbound(DOMID_SELF, DOMID_SELF),
    )?;
    let b = ok(
        "bind_interdomain(self, a)",
        super::evtchn::bind_interdomain(DOMID_SELF, a),
    )?;
    if (a, b) != (max - 1, max) {
        bail!("loopback pair ({a}, {b}), expected ({}, {max})", max - 1);
    }
    // Queues of their own (the console's events wait on the default 7,
    // which this check does not consume): each becomes its queue's head.
    for (port, priority) in [(a, 2), (b, 3)] {
        let mut prio = SetPriority { port, priority };
        rc_is(
            "EVTCHNOP_set_priority",
            event_channel_op(EVTCHNOP_SET_PRIORITY, &mut prio),
            0,
        )?;
    }
    for (from, to, queue) in [(b, a, 2), (a, b, 3)] {
        // Clear evtchn_upcall_pending, as a FIFO upcall handler does first;
        // the next ready queue sets it (and interrupts) again.
        events::drain();
        let before = events::upcalls();
        rc_is("send", xen::send(from), 0)?;
        let w = word(to);
        if w & (PENDING | LINKED) != PENDING | LINKED {
            bail!("event word of port {to} after send on {from}: {w:#x}");
        }
        let head = FIFO_PORTS_CONTROL.0[2 + queue].load(Ordering::SeqCst);
        if head != to {
            bail!("HEAD[{queue}] {head} after raising port {to}");
        }
        if !events::wait_upcall(before, 1000) {
            bail!("no upcall for port {to}");
        }
    }
    if crate::env::cmdline_value(b"kxen.dom0_wait") == Some(b"1") {
        fifo_dom0_port_past_4096(max - 2, &word)?;
    }
    Ok(())
}

/// With `kxen.dom0_wait=1` (a test acting as Dom0 through the control
/// socket): allocate `port` (above 4096) unbound for Dom0 on a queue of
/// its own, say its number, and wait for Dom0's notification to link it
/// and raise the upcall.
fn fifo_dom0_port_past_4096(port: u32, word: &dyn Fn(u32) -> u32) -> R {
    use xen_abi::event_channel::*;
    const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
    rc_is("close(a filled port)", xen::close(port), 0)?;
    let dom0 = ok("alloc_unbound(dom0)", xen::alloc_unbound(DOMID_SELF, 0))?;
    if dom0 != port {
        bail!("alloc_unbound(dom0) gave {dom0}, expected {port}");
    }
    let mut prio = SetPriority {
        port: dom0,
        priority: 4,
    };
    rc_is(
        "EVTCHNOP_set_priority(dom0 port, 4)",
        event_channel_op(EVTCHNOP_SET_PRIORITY, &mut prio),
        0,
    )?;
    events::drain();
    println!("evtchn.fifo_ports: dom0 port {dom0}");
    // Other upcalls come too (the console backend answers the line above):
    // wait upcall by upcall until the port is pending. The count is read
    // before the check, so an upcall between the two is not waited for.
    let mut upcalls_seen = 0;
    loop {
        let before = events::upcalls();
        if word(dom0) & PENDING != 0 {
            break;
        }
        upcalls_seen += 1;
        if upcalls_seen > 100 || !events::wait_upcall(before, 60_000) {
            bail!(
                "port {dom0} not pending after {upcalls_seen} upcalls: no notification from Dom0"
            );
        }
    }
    let head = FIFO_PORTS_CONTROL.0[2 + 4].load(Ordering::SeqCst);
    if head != dom0 {
        bail!("HEAD[4] {head} after Dom0 raised port {dom0}");
    }
    Ok(())
}
