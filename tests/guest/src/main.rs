//! kxen-testguest: a freestanding Xen PVH guest that checks kxen's
//! implementation of the Xen hypercall ABI.
//!
//! Ring 0 ([`boot`]) is a few hundred lines of assembly; the checks run in
//! ring 3 and reach the hypervisor through a DPL-3 hypercall gate. See
//! README.md for the output protocol and the command line.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]
// Check failures carry their message inline (there is no heap to box it in).
#![allow(clippy::result_large_err)]

mod boot;
mod cell;
mod checks;
mod churn;
mod console;
mod env;
mod events;
mod front;
mod grants;
mod hypercall;
mod mem;
mod pages;
mod peer;
mod service;
mod setup;
mod time;
mod xen;
mod xenstore;

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use checks::{Kind, CHECKS};
use xen_abi::sched::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);
/// Index into CHECKS of the running check (usize::MAX: none).
static CURRENT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Failures so far (the last check uses it to pick the shutdown reason).
pub fn failed_so_far() -> u32 {
    FAILED.load(Ordering::Acquire)
}

/// The shutdown reason for the result so far.
pub fn final_reason() -> u32 {
    if failed_so_far() == 0 {
        SHUTDOWN_POWEROFF
    } else {
        SHUTDOWN_CRASH
    }
}

fn run_check(i: usize) {
    let check = &CHECKS[i];
    CURRENT.store(i, Ordering::Release);
    match (check.run)() {
        Ok(()) => {
            PASSED.fetch_add(1, Ordering::AcqRel);
            println!("PASS {}", check.name);
        }
        Err(f) if f.is_skip() => {
            SKIPPED.fetch_add(1, Ordering::AcqRel);
            println!("SKIP {}: {}", check.name, f);
        }
        Err(f) => {
            FAILED.fetch_add(1, Ordering::AcqRel);
            println!("FAIL {}: {}", check.name, f);
        }
    }
    CURRENT.store(usize::MAX, Ordering::Release);
}

/// Print the summary and shut down: poweroff if nothing failed, else crash.
fn finish() -> ! {
    println!(
        "kxen-testguest: {} passed, {} failed, {} skipped",
        PASSED.load(Ordering::Acquire),
        FAILED.load(Ordering::Acquire),
        SKIPPED.load(Ordering::Acquire)
    );
    let rc = xen::shutdown(final_reason());
    println!("kxen-testguest: SCHEDOP_shutdown returned {}", rc);
    // Still running: end the domain the hard way.
    hypercall::service(boot::SVC_TRIPLE_FAULT, 0);
    loop {
        xen::sched_yield();
    }
}

fn fail_unknown(name: &str) -> ! {
    FAILED.fetch_add(1, Ordering::AcqRel);
    println!("FAIL {}: no such check", name);
    finish()
}

/// Ring-3 entry from the boot code.
extern "C" fn kmain(start_info: u64) -> ! {
    env::init(start_info);
    setup::console();
    println!("kxen-testguest: start");
    setup::platform();

    match env::cmdline_value(b"kxen.mode") {
        None => {}
        Some(b"service") => service::run(),
        Some(b"peer") => peer::run(),
        Some(other) => {
            let mode = core::str::from_utf8(other).unwrap_or("<non-UTF-8 mode>");
            FAILED.fetch_add(1, Ordering::AcqRel);
            println!("FAIL kxen.mode={}: no such mode", mode);
            finish()
        }
    }

    match env::cmdline_value(b"kxen.test") {
        None => {
            for (i, c) in CHECKS.iter().enumerate() {
                if c.kind == Kind::Normal {
                    run_check(i);
                }
            }
        }
        Some(raw) => {
            let name = core::str::from_utf8(raw).unwrap_or("<non-UTF-8 name>");
            if let Some(prefix) = name.strip_suffix('*') {
                let mut any = false;
                for (i, c) in CHECKS.iter().enumerate() {
                    if c.kind == Kind::Normal && c.name.starts_with(prefix) {
                        any = true;
                        run_check(i);
                    }
                }
                if !any {
                    fail_unknown(name);
                }
            } else {
                match CHECKS.iter().position(|c| c.name == name) {
                    Some(i) => run_check(i),
                    None => fail_unknown(name),
                }
            }
        }
    }
    finish()
}

/// Ring-3 continuation of an exception taken in ring 3 (see boot.rs).
extern "C" fn user_exception(info: *const boot::ExcInfo) -> ! {
    // SAFETY: ring 0 filled EXC_INFO and then switched here; nothing writes
    // it again (EXC_ACTIVE stays set).
    let info = unsafe { &*info };
    let current = CURRENT.load(Ordering::Acquire);
    if let Some(check) = CHECKS.get(current) {
        FAILED.fetch_add(1, Ordering::AcqRel);
        println!(
            "FAIL {}: exception vector={} error={:#x} rip={:#x} cr2={:#x} rsp={:#x}",
            check.name, info.vector, info.error, info.rip, info.cr2, info.rsp
        );
    } else {
        FAILED.fetch_add(1, Ordering::AcqRel);
        println!(
            "kxen-testguest: exception outside a check: vector={} error={:#x} rip={:#x} cr2={:#x}",
            info.vector, info.error, info.rip, info.cr2
        );
    }
    finish()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    FAILED.fetch_add(1, Ordering::AcqRel);
    match CHECKS.get(CURRENT.load(Ordering::Acquire)) {
        Some(check) => println!("FAIL {}: panic: {}", check.name, info),
        None => println!("kxen-testguest: panic: {}", info),
    }
    finish()
}
