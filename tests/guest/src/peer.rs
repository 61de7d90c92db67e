//! Peer mode (`kxen.mode=peer`): the guest is the far end of Dom0's
//! interdomain tests.
//!
//! It grants Dom0 two pages (one read-write, one read-only, with known
//! contents) and a third to domain 5, allocates two ports unbound for
//! Dom0, prints
//! `kxen-testguest: peer port=P port2=Q gref=G rogref=R fgref=F`
//! and then serves commands Dom0 writes into the read-write page. Each
//! command is announced by an event on `port`; the guest answers in the
//! page and sends an event back on `port`.
//!
//! Page layout (u32 words): 0 command sequence (Dom0 writes it last), 4
//! command, 8 argument, 12 done sequence (the guest writes it last), 16
//! result, 20 result2, 24 result3, 28 count of pings, 32 count of pings
//! whose notification arrived as an upcall. Bytes 64..128 hold Dom0's ping
//! payload; bytes 1024..2048 the pattern `i % 251` at start.
//!
//! Dom0 sets the port's pending bits in guest memory itself and interrupts
//! the vCPU through an irqfd (or kxen-vmm's relay). A guest that polls the
//! pending bits would see the bits without the interrupt, so before it
//! answers a command the guest waits (bounded) for both: `port` fired *and*
//! an upcall was taken since its previous answer. A ping reports how many
//! upcalls it took; 0 means the notification never interrupted the guest.

use core::sync::atomic::{AtomicU32, Ordering};

use xen_abi::event_channel::{self as ec, BindInterdomain};
use xen_abi::memory::{
    AddToPhysmap, XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP,
};
use xen_abi::sched::SHUTDOWN_POWEROFF;
use xen_abi::DOMID_SELF;

use crate::hypercall::{event_channel_op, memory_op};
use crate::{events, grants, pages, println, time, xen};

const CMD_SEQ: usize = 0;
const CMD: usize = 4;
const ARG: usize = 8;
const DONE_SEQ: usize = 12;
const RESULT: usize = 16;
const RESULT2: usize = 20;
const RESULT3: usize = 24;
const PINGS: usize = 28;
const KICKED_PINGS: usize = 32;
const PAYLOAD: usize = 64;

/// Read payload word 0, answer it + 1 in RESULT, the upcalls this ping's
/// notification took in RESULT2 (0: none arrived), count the ping.
const PING: u32 = 1;
/// Wait mode: ARG 0 = SCHEDOP_block, 1 = spin in ring 3 (no hypercalls).
const MODE: u32 = 2;
/// Bind Dom0's port ARG; RESULT = our port (or the negative rc); then
/// send on the new port.
const BIND: u32 = 3;
/// EVTCHNOP_status of port ARG: RESULT status, RESULT2 u[0], RESULT3 u[1].
const STATUS: u32 = 4;
/// Close port ARG; RESULT = rc.
const CLOSE: u32 = 5;
/// RESULT = 1 if port ARG fired since the last ask (drained), else 0.
const SEEN: u32 = 6;
/// End grant ARG: RESULT 0 ended, 1 still busy (Dom0 has it mapped), 2 error.
const END_GRANT: u32 = 7;
/// Power off.
const EXIT: u32 = 8;
/// Move shared_info to a fresh RAM page; RESULT = rc, RESULT2 = its GFN.
const MOVE_SHARED_INFO: u32 = 9;
/// Move grant frame 0 to GFN ARG (0: a fresh RAM page); RESULT = rc,
/// RESULT2 = the GFN.
const MOVE_GRANT_FRAME: u32 = 10;

/// Spins between checks for an upcall in spin mode.
const SPIN_ROUNDS: u32 = 1 << 16;

/// How long the guest waits for the notification of a command it has
/// already read (Dom0 writes the command first, then notifies).
const KICK_WAIT_NS: u64 = 1_000_000_000;
/// The same bound in spins, should pvclock be unavailable.
const KICK_WAIT_SPINS: u64 = 1 << 28;

fn word(page: *mut u8, off: usize) -> &'static AtomicU32 {
    // SAFETY: `page` is our command page (4 KiB, page aligned, never
    // freed) and `off` a 4-byte aligned offset inside it; Dom0 accesses it
    // concurrently, so only atomically.
    unsafe { AtomicU32::from_ptr(page.add(off) as *mut u32) }
}

fn fill(page: *mut u8, tag: &[u8]) {
    for i in 0..4096 {
        // SAFETY: a page of ours.
        unsafe { page.add(i).write_volatile(0) };
    }
    for (i, b) in tag.iter().enumerate() {
        // SAFETY: as above; tags are short.
        unsafe { page.add(i + 512).write_volatile(*b) };
    }
    for i in 1024..2048 {
        // SAFETY: as above.
        unsafe { page.add(i).write_volatile((i % 251) as u8) };
    }
}

fn bind_dom0(dom0_port: u32) -> Result<u32, i64> {
    let mut b = BindInterdomain {
        remote_dom: 0,
        _pad: 0,
        remote_port: dom0_port,
        local_port: 0,
    };
    match event_channel_op(ec::EVTCHNOP_BIND_INTERDOMAIN, &mut b) {
        0 => Ok(b.local_port),
        rc => Err(rc),
    }
}

/// XENMEM_add_to_physmap of `space` index `idx` at `gfn`.
fn place(space: u32, idx: u64, gfn: u64) -> i64 {
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space,
        idx,
        gpfn: gfn,
    };
    memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp)
}

/// A fresh page's GFN, 0 if none is left.
fn fresh_gfn() -> u64 {
    pages::alloc().map_or(0, |p| p as u64 >> 12)
}

/// Whether the notification of the command just read arrived as an event:
/// `port` fired and an upcall was taken after `answered_at` (the upcall
/// count when the previous answer was published). `fired` says whether the
/// port was already seen. Waits for both, at most [`KICK_WAIT_NS`], without
/// a hypercall: a spinning guest must be reached by the interrupt alone.
fn await_kick(port: u32, answered_at: u64, mut fired: bool) -> bool {
    let end = time::now_ns().map(|t| t + KICK_WAIT_NS);
    let mut spins = 0u64;
    loop {
        events::drain();
        fired |= events::take_seen(port);
        if fired && events::upcalls() > answered_at {
            return true;
        }
        spins += 1;
        let expired = match (end, time::now_ns()) {
            (Some(end), Some(now)) => now >= end,
            _ => spins >= KICK_WAIT_SPINS,
        };
        if expired {
            return false;
        }
        core::hint::spin_loop();
    }
}

pub fn run() -> ! {
    let (Some(rw), Some(ro), Some(other)) = (pages::alloc(), pages::alloc(), pages::alloc()) else {
        println!("FAIL peer: no free pages");
        crate::finish()
    };
    fill(rw, b"kxen peer rw page");
    fill(ro, b"kxen peer ro page");
    fill(other, b"kxen peer page for domain 5");
    let grant = |p: *mut u8, dom: u16, readonly: bool| grants::grant(dom, p as u64 >> 12, readonly);
    let (Ok(gref), Ok(rogref), Ok(fgref)) = (
        grant(rw, 0, false),
        grant(ro, 0, true),
        grant(other, 5, false),
    ) else {
        println!("FAIL peer: cannot grant pages");
        crate::finish()
    };
    let (Ok(port), Ok(port2)) = (
        xen::alloc_unbound(xen_abi::DOMID_SELF, 0),
        xen::alloc_unbound(xen_abi::DOMID_SELF, 0),
    ) else {
        println!("FAIL peer: cannot allocate ports");
        crate::finish()
    };
    println!(
        "kxen-testguest: peer port={} port2={} gref={} rogref={} fgref={}",
        port, port2, gref, rogref, fgref
    );
    let mut spin = false;
    let mut last_seq = 0u32;
    // Dom0 notifies once per command, after writing it and only once it
    // has seen the previous answer: every upcall after `answered_at`
    // belongs to the next command.
    let mut answered_at = events::upcalls();
    let mut port_fired = false;
    loop {
        // Other ports stay recorded as seen until SEEN asks about them.
        events::drain();
        port_fired |= events::take_seen(port);
        let seq = word(rw, CMD_SEQ).load(Ordering::Acquire);
        if seq != last_seq {
            last_seq = seq;
            let kicked = await_kick(port, answered_at, port_fired);
            let upcalls = if kicked {
                (events::upcalls() - answered_at) as u32
            } else {
                0
            };
            let arg = word(rw, ARG).load(Ordering::Acquire);
            let (mut r1, mut r2, mut r3) = (0u32, 0u32, 0u32);
            let mut bound = None;
            match word(rw, CMD).load(Ordering::Acquire) {
                PING => {
                    r1 = word(rw, PAYLOAD).load(Ordering::Acquire).wrapping_add(1);
                    r2 = upcalls;
                    word(rw, PINGS).fetch_add(1, Ordering::AcqRel);
                    if kicked {
                        word(rw, KICKED_PINGS).fetch_add(1, Ordering::AcqRel);
                    }
                }
                MODE => spin = arg == 1,
                BIND => match bind_dom0(arg) {
                    Ok(p) => {
                        r1 = p;
                        bound = Some(p);
                    }
                    Err(rc) => r1 = rc as u32,
                },
                STATUS => match xen::status(arg) {
                    Ok(s) => {
                        r1 = s.status;
                        r2 = s.u[0];
                        r3 = s.u[1];
                    }
                    Err(rc) => r1 = rc as u32,
                },
                CLOSE => r1 = xen::close(arg) as u32,
                SEEN => {
                    events::drain();
                    r1 = events::take_seen(arg) as u32;
                }
                END_GRANT => {
                    r1 = match grants::end(arg) {
                        Ok(()) => 0,
                        Err(grants::GrantError::Busy) => 1,
                        Err(_) => 2,
                    }
                }
                MOVE_SHARED_INFO => {
                    let gfn = fresh_gfn();
                    let rc = place(XENMAPSPACE_SHARED_INFO, 0, gfn);
                    if rc == 0 {
                        // Identity-mapped RAM: the GFN is the address.
                        events::set_shared_info((gfn << 12) as *mut u8);
                    }
                    r1 = rc as u32;
                    r2 = gfn as u32;
                }
                MOVE_GRANT_FRAME => {
                    let gfn = if arg == 0 { fresh_gfn() } else { arg as u64 };
                    r1 = place(XENMAPSPACE_GRANT_TABLE, 0, gfn) as u32;
                    r2 = gfn as u32;
                }
                EXIT => {
                    println!("kxen-testguest: peer done");
                    xen::shutdown(SHUTDOWN_POWEROFF);
                }
                _ => r1 = u32::MAX,
            }
            word(rw, RESULT).store(r1, Ordering::Release);
            word(rw, RESULT2).store(r2, Ordering::Release);
            word(rw, RESULT3).store(r3, Ordering::Release);
            // Before the answer is visible: Dom0's next notification may
            // follow it at once.
            port_fired = false;
            answered_at = events::upcalls();
            word(rw, DONE_SEQ).store(seq, Ordering::Release);
            xen::send(port);
            if let Some(p) = bound {
                xen::send(p);
            }
            continue;
        }
        if spin {
            // Wait for the next upcall without any hypercall: Dom0's kicks
            // must reach us through the irqfd alone.
            let before = events::upcalls();
            for _ in 0..SPIN_ROUNDS {
                if events::upcalls() != before {
                    break;
                }
                core::hint::spin_loop();
            }
        } else {
            xen::block();
        }
    }
}
