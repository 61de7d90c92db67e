//! FIFO event channels: EVTCHNOP_init_control, expand_array and
//! set_priority, and delivery through the per-priority queues, driven
//! through the hypercall layer against a harness domain.

use kxen_xen::harness;
use kxen_xen::Domain;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use xen_abi::errno::*;
use xen_abi::event_channel::*;
use xen_abi::hypercall::EVENT_CHANNEL_OP;

/// Where hypercall arguments go.
const ARG: u64 = 0x1000;
/// Control block page (vCPU 0 at offset 0, vCPU 1 at offset 0x100).
const CONTROL_GFN: u64 = 0x10;
/// First event array page.
const ARRAY_GFN: u64 = 0x20;

const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;

fn put(d: &Domain, gpa: u64, bytes: &[u8]) {
    d.mem
        .memory()
        .write_slice(bytes, GuestAddress(gpa))
        .unwrap();
}

fn get_u32(d: &Domain, gpa: u64) -> u32 {
    d.mem.memory().read_obj(GuestAddress(gpa)).unwrap()
}

fn evtchn_op(d: &Domain, cmd: u64, arg: &[u8]) -> i64 {
    put(d, ARG, arg);
    harness::hypercall(d, EVENT_CHANNEL_OP, [cmd, ARG, 0, 0, 0])
}

fn init_control(d: &Domain, gfn: u64, offset: u32, vcpu: u32) -> i64 {
    let mut arg = [0u8; 24];
    arg[0..8].copy_from_slice(&gfn.to_le_bytes());
    arg[8..12].copy_from_slice(&offset.to_le_bytes());
    arg[12..16].copy_from_slice(&vcpu.to_le_bytes());
    evtchn_op(d, EVTCHNOP_INIT_CONTROL, &arg)
}

fn expand_array(d: &Domain, gfn: u64) -> i64 {
    evtchn_op(d, EVTCHNOP_EXPAND_ARRAY, &gfn.to_le_bytes())
}

fn set_priority(d: &Domain, port: u32, priority: u32) -> i64 {
    let mut arg = [0u8; 8];
    arg[0..4].copy_from_slice(&port.to_le_bytes());
    arg[4..8].copy_from_slice(&priority.to_le_bytes());
    evtchn_op(d, EVTCHNOP_SET_PRIORITY, &arg)
}

fn bind_ipi(d: &Domain, vcpu: u32) -> u32 {
    let mut arg = [0u8; 8];
    arg[0..4].copy_from_slice(&vcpu.to_le_bytes());
    assert_eq!(evtchn_op(d, EVTCHNOP_BIND_IPI, &arg), 0);
    get_u32(d, ARG + 4)
}

fn send(d: &Domain, port: u32) {
    assert_eq!(evtchn_op(d, EVTCHNOP_SEND, &port.to_le_bytes()), 0);
}

fn unmask(d: &Domain, port: u32) {
    assert_eq!(evtchn_op(d, EVTCHNOP_UNMASK, &port.to_le_bytes()), 0);
}

fn word_gpa(port: u32) -> u64 {
    (ARRAY_GFN << 12) + port as u64 * 4
}

fn word(d: &Domain, port: u32) -> u32 {
    get_u32(d, word_gpa(port))
}

fn head(d: &Domain, vcpu: u32, priority: u32) -> u32 {
    get_u32(
        d,
        (CONTROL_GFN << 12) + vcpu as u64 * 0x100 + 8 + priority as u64 * 4,
    )
}

fn ready(d: &Domain, vcpu: u32) -> u32 {
    get_u32(d, (CONTROL_GFN << 12) + vcpu as u64 * 0x100)
}

/// vCPU 0's evtchn_upcall_pending (its vcpu_info is in shared_info).
fn upcall_pending_gpa() -> u64 {
    harness::SPECIAL_GFN << 12
}

/// A domain switched to FIFO with vCPU 0's control block and one event
/// array page, and an upcall vector so that upcalls are recorded.
fn fifo_domain() -> (Domain, &'static harness::RecordingPlatform) {
    let (d, platform) = harness::domain();
    // HVMOP_set_evtchn_upcall_vector {vcpu 0, vector 0xf3}.
    put(&d, ARG, &[0, 0, 0, 0, 0xf3, 0, 0, 0]);
    assert_eq!(
        harness::hypercall(&d, xen_abi::hypercall::HVM_OP, [23, ARG, 0, 0, 0]),
        0
    );
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 0), 0);
    assert_eq!(expand_array(&d, ARRAY_GFN), 0);
    (d, platform)
}

fn upcalls(platform: &harness::RecordingPlatform) -> u32 {
    platform.upcalls.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn init_control_rejects_bad_arguments_and_leaves_2_level_alone() {
    let (d, platform) = harness::domain();
    // No such vCPU.
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 2), -ENOENT);
    assert_eq!(init_control(&d, CONTROL_GFN, 0, u32::MAX), -ENOENT);
    // The block must fit in its page and be 8-byte aligned.
    assert_eq!(init_control(&d, CONTROL_GFN, 4096 - 72 + 8, 0), -EINVAL);
    assert_eq!(init_control(&d, CONTROL_GFN, u32::MAX, 0), -EINVAL);
    assert_eq!(init_control(&d, CONTROL_GFN, 4, 0), -EINVAL);
    // The page must be the domain's RAM: not an overlay, not past RAM, not
    // a GFN whose shift would wrap into RAM.
    assert_eq!(init_control(&d, harness::SPECIAL_GFN, 0, 0), -EINVAL);
    assert_eq!(init_control(&d, harness::RAM_BYTES >> 12, 0, 0), -EINVAL);
    assert_eq!(init_control(&d, 1 << 52, 0, 0), -EINVAL);
    assert_eq!(init_control(&d, u64::MAX, 0, 0), -EINVAL);
    // An argument outside guest memory.
    assert_eq!(
        harness::hypercall(
            &d,
            EVENT_CHANNEL_OP,
            [EVTCHNOP_INIT_CONTROL, u64::MAX - 8, 0, 0, 0]
        ),
        -EFAULT
    );
    // Nothing before init_control.
    assert_eq!(expand_array(&d, ARRAY_GFN), -EOPNOTSUPP);
    assert_eq!(set_priority(&d, 4096, 3), -EINVAL);
    let port = bind_ipi(&d, 0);
    assert_eq!(set_priority(&d, port, 3), -ENOSYS);
    assert!(!d.uses_fifo_events());
    assert!(platform.event_abi.lock().unwrap().is_empty());
    // 2-level delivery still works.
    send(&d, port);
    let st = d.lock();
    assert!(d.port_is_pending(&st, port));
    drop(st);

    assert_eq!(init_control(&d, CONTROL_GFN, 0x100, 1), 0);
    assert_eq!(get_u32(&d, ARG + 16) & 0xff, 17, "link_bits");
    assert!(d.uses_fifo_events());
    assert_eq!(platform.event_abi.lock().unwrap().as_slice(), &[true]);
    // A vCPU registers once; others may follow.
    assert_eq!(init_control(&d, CONTROL_GFN, 0x100, 1), -EINVAL);
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 0), 0);
    assert_eq!(set_priority(&d, port, 16), -EINVAL);
    assert_eq!(set_priority(&d, 4096, 3), -EINVAL);
    assert_eq!(set_priority(&d, port, 15), 0);
}

#[test]
fn events_queue_in_order_per_priority_with_one_upcall() {
    let (d, platform) = fifo_domain();
    let a = bind_ipi(&d, 0);
    let b = bind_ipi(&d, 0);
    let c = bind_ipi(&d, 0);
    assert_eq!(set_priority(&d, b, 3), 0);
    let before = upcalls(platform);
    send(&d, a);
    send(&d, c);
    send(&d, b);
    // Default priority 7: a then c; b alone on priority 3.
    assert_eq!(head(&d, 0, 7), a);
    assert_eq!(word(&d, a), PENDING | LINKED | c);
    assert_eq!(word(&d, c), PENDING | LINKED);
    assert_eq!(head(&d, 0, 3), b);
    assert_eq!(word(&d, b), PENDING | LINKED);
    assert_eq!(ready(&d, 0), 1 << 7 | 1 << 3);
    assert_eq!(get_u32(&d, upcall_pending_gpa()) & 0xff, 1);
    // evtchn_upcall_pending went 0 -> 1 once: one upcall, on vCPU 0's vector.
    assert_eq!(upcalls(platform) - before, 1);
    assert_eq!(platform.vectors.lock().unwrap().last(), Some(&(0, 0xf3)));
}

#[test]
fn a_linked_event_is_not_linked_again_and_a_consumed_one_is() {
    let (d, platform) = fifo_domain();
    let a = bind_ipi(&d, 0);
    send(&d, a);
    send(&d, a);
    assert_eq!(head(&d, 0, 7), a);
    // Not linked onto itself.
    assert_eq!(word(&d, a), PENDING | LINKED);
    // Nor behind a later event: that would make the queue a cycle.
    let b = bind_ipi(&d, 0);
    send(&d, b);
    send(&d, a);
    assert_eq!(word(&d, a), PENDING | LINKED | b);
    assert_eq!(word(&d, b), PENDING | LINKED);
    let after_first = upcalls(platform);
    put(&d, word_gpa(b), &0u32.to_le_bytes());
    // The guest consumes it: clears the word, the READY bit and its flag.
    put(&d, word_gpa(a), &0u32.to_le_bytes());
    put(&d, (CONTROL_GFN << 12) + 8 + 7 * 4, &0u32.to_le_bytes());
    put(&d, CONTROL_GFN << 12, &0u32.to_le_bytes());
    put(&d, upcall_pending_gpa(), &[0]);
    send(&d, a);
    // The old tail is no longer LINKED: the queue starts again at the head.
    assert_eq!(head(&d, 0, 7), a);
    assert_eq!(word(&d, a), PENDING | LINKED);
    assert_eq!(ready(&d, 0), 1 << 7);
    assert_eq!(upcalls(platform), after_first + 1);
}

#[test]
fn a_masked_event_waits_for_unmask() {
    let (d, platform) = fifo_domain();
    let a = bind_ipi(&d, 0);
    put(&d, word_gpa(a), &MASKED.to_le_bytes());
    let before = upcalls(platform);
    send(&d, a);
    assert_eq!(word(&d, a), PENDING | MASKED);
    assert_eq!(head(&d, 0, 7), 0);
    assert_eq!(ready(&d, 0), 0);
    assert_eq!(upcalls(platform), before);
    unmask(&d, a);
    assert_eq!(word(&d, a), PENDING | LINKED);
    assert_eq!(head(&d, 0, 7), a);
    assert_eq!(ready(&d, 0), 1 << 7);
    assert_eq!(upcalls(platform), before + 1);
    // Unmasking an event that is not pending links nothing.
    let b = bind_ipi(&d, 0);
    put(&d, word_gpa(b), &MASKED.to_le_bytes());
    unmask(&d, b);
    assert_eq!(word(&d, b), 0);
}

#[test]
fn expand_array_stops_at_the_abi_limit() {
    let (d, _) = harness::domain();
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 0), 0);
    assert_eq!(expand_array(&d, harness::SPECIAL_GFN), -EINVAL);
    assert_eq!(expand_array(&d, u64::MAX), -EINVAL);
    assert_eq!(expand_array(&d, harness::RAM_BYTES >> 12), -EINVAL);
    for i in 0..EVTCHN_FIFO_MAX_ARRAY_PAGES as u64 {
        assert_eq!(expand_array(&d, 0x100 + i), 0, "page {i}");
    }
    assert_eq!(expand_array(&d, 0x200), -ENOSPC);
}

#[test]
fn events_raised_before_their_page_exists_arrive_with_it() {
    let (d, platform) = harness::domain();
    put(&d, ARG, &[0, 0, 0, 0, 0xf3, 0, 0, 0]);
    assert_eq!(
        harness::hypercall(&d, xen_abi::hypercall::HVM_OP, [23, ARG, 0, 0, 0]),
        0
    );
    // Pending under the 2-level ABI, carried over by the switch.
    let old = bind_ipi(&d, 0);
    send(&d, old);
    put(&d, upcall_pending_gpa(), &[0]);
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 0), 0);
    // Raised with no event array yet.
    let new = bind_ipi(&d, 0);
    send(&d, new);
    {
        let st = d.lock();
        assert!(!d.port_is_pending(&st, new));
    }
    let before = upcalls(platform);
    assert_eq!(expand_array(&d, ARRAY_GFN), 0);
    assert_eq!(head(&d, 0, 7), old);
    assert_eq!(word(&d, old), PENDING | LINKED | new);
    assert_eq!(word(&d, new), PENDING | LINKED);
    assert_eq!(upcalls(platform), before + 1);
}

#[test]
fn poll_sees_fifo_pending_words_not_2_level_bits() {
    let (d, _) = fifo_domain();
    let a = bind_ipi(&d, 0);
    // A stale 2-level pending bit means nothing in FIFO mode.
    put(
        &d,
        (harness::SPECIAL_GFN << 12) + 0x800,
        &(1u64 << a).to_le_bytes(),
    );
    {
        let st = d.lock();
        assert!(!d.port_is_pending(&st, a));
        assert!(!d.port_is_pending(&st, 1 << 20));
    }
    send(&d, a);
    let st = d.lock();
    assert!(d.port_is_pending(&st, a));
    drop(st);
    // SCHEDOP_poll on the pending port returns at once with 0.
    let mut poll = [0u8; 24];
    put(&d, ARG + 0x100, &a.to_le_bytes());
    poll[0..8].copy_from_slice(&(ARG + 0x100).to_le_bytes());
    poll[8..12].copy_from_slice(&1u32.to_le_bytes());
    put(&d, ARG, &poll);
    assert_eq!(
        harness::hypercall(&d, xen_abi::hypercall::SCHED_OP, [3, ARG, 0, 0, 0]),
        0
    );
}

#[test]
fn events_for_a_vcpu_without_control_block_stay_pending_only() {
    let (d, platform) = fifo_domain();
    let on_1 = bind_ipi(&d, 1);
    let before = upcalls(platform);
    send(&d, on_1);
    assert_eq!(word(&d, on_1), PENDING);
    assert_eq!(upcalls(platform), before);
}

#[test]
fn reset_returns_to_2_level() {
    let (d, platform) = fifo_domain();
    assert_eq!(evtchn_op(&d, EVTCHNOP_RESET, &0x7ff0u16.to_le_bytes()), 0);
    assert!(!d.uses_fifo_events());
    assert_eq!(
        platform.event_abi.lock().unwrap().as_slice(),
        &[true, false]
    );
    assert_eq!(expand_array(&d, ARRAY_GFN), -EOPNOTSUPP);
    // And may switch again.
    assert_eq!(init_control(&d, CONTROL_GFN, 0, 0), 0);
}

#[test]
fn dom0_raise_requests_reach_only_ports_bound_to_dom0() {
    let (d, platform) = fifo_domain();
    platform.dom0_unbound.lock().unwrap().push(9);
    // EVTCHNOP_bind_interdomain {remote_dom 0, remote_port 9}.
    let mut arg = [0u8; 12];
    arg[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(evtchn_op(&d, EVTCHNOP_BIND_INTERDOMAIN, &arg), 0);
    let backend = get_u32(&d, ARG + 8);
    let ipi = bind_ipi(&d, 0);
    let before = upcalls(platform);
    // A request for a port that is not Dom0's is ignored.
    d.notify_from_dom0(ipi);
    d.notify_from_dom0(1 << 20);
    assert_eq!(word(&d, ipi), 0);
    assert_eq!(upcalls(platform), before);
    d.notify_from_dom0(backend);
    assert_eq!(word(&d, backend), PENDING | LINKED);
    assert_eq!(head(&d, 0, 7), backend);
    assert_eq!(upcalls(platform), before + 1);
}

/// Copy page `gfn` of guest memory from `from` to `to` (a save's memory
/// travels beside the Xen state).
fn copy_page(from: &Domain, to: &Domain, gfn: u64) {
    let mut page = [0u8; 4096];
    from.mem
        .memory()
        .read_slice(&mut page, GuestAddress(gfn << 12))
        .unwrap();
    put(to, gfn << 12, &page);
}

#[test]
fn a_fifo_domain_is_saved_and_restored_with_its_queues() {
    let (d, _) = fifo_domain();
    let first = bind_ipi(&d, 0);
    let second = bind_ipi(&d, 0);
    assert_eq!(set_priority(&d, second, 3), 0);
    let third = bind_ipi(&d, 0);
    send(&d, first);
    assert_eq!(head(&d, 0, EVTCHN_FIFO_PRIORITY_DEFAULT), first);
    let snap = d.snapshot().expect("a FIFO domain's snapshot");
    let fifo = snap.fifo.as_ref().expect("the FIFO state is in it");
    assert_eq!(fifo.tails[0][EVTCHN_FIFO_PRIORITY_DEFAULT as usize], first);
    assert!(fifo.ports.iter().any(|p| p.0 == second && p.1 == 3));

    let (fresh, platform) = harness::domain();
    for gfn in [CONTROL_GFN, ARRAY_GFN] {
        copy_page(&d, &fresh, gfn);
    }
    fresh.load_snapshot(&snap).expect("loads");
    assert!(fresh.uses_fifo_events());
    assert_eq!(
        *platform.event_abi.lock().unwrap(),
        vec![true],
        "Dom0 learns the restored domain's ABI"
    );
    // The queue goes on from its saved tail: a new event links behind the
    // one still pending (without the tail, it would become the head).
    send(&fresh, third);
    assert_eq!(head(&fresh, 0, EVTCHN_FIFO_PRIORITY_DEFAULT), first);
    assert_eq!(word(&fresh, first), PENDING | LINKED | third);
    // The saved priority holds: this one goes on queue 3.
    send(&fresh, second);
    assert_eq!(head(&fresh, 0, 3), second);
    assert_ne!(ready(&fresh, 0) & 1 << 3, 0);
}

#[test]
fn hostile_fifo_snapshots_are_refused() {
    let (d, _) = fifo_domain();
    let port = bind_ipi(&d, 0);
    send(&d, port);
    let snap = d.snapshot().unwrap();
    type Spoil = fn(&mut kxen_xen::evtchn_fifo::FifoSnapshot);
    let cases: [(&str, Spoil); 7] = [
        ("a misaligned control block", |f| {
            f.control_blocks[0] = Some((CONTROL_GFN << 12) + 4)
        }),
        ("a control block across a page", |f| {
            f.control_blocks[0] = Some((CONTROL_GFN << 12) + 4088)
        }),
        ("an array page outside RAM", |f| f.array_pages[0] = 1 << 40),
        ("a tail past the ports", |f| f.tails[0][7] = f.nr_ports),
        ("a vCPU too many", |f| f.tails.push([0; 16])),
        ("a port priority past the lowest", |f| {
            f.ports.push((1, 16, false, 0, 7))
        }),
        ("more ports than FIFO has", |f| {
            f.nr_ports = EVTCHN_FIFO_NR_CHANNELS + 1
        }),
    ];
    for (what, spoil) in cases {
        let mut bad = snap.clone();
        spoil(bad.fifo.as_mut().unwrap());
        let (fresh, _) = harness::domain();
        assert!(fresh.load_snapshot(&bad).is_err(), "{what} was taken");
        assert!(!fresh.uses_fifo_events(), "{what} half-applied");
    }
}
