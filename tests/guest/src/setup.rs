//! What every run does before its checks: find the console, map
//! shared_info, route upcalls to vector 0xf3 and bind VIRQ_TIMER.
//! The checks verify the results recorded here.

use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use xen_abi::event_channel::VIRQ_TIMER;
use xen_abi::hvm::{
    EvtchnUpcallVector, CALLBACK_VIA_TYPE_SHIFT, CALLBACK_VIA_TYPE_VECTOR,
    HVMOP_SET_EVTCHN_UPCALL_VECTOR, HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CONSOLE_EVTCHN,
    HVM_PARAM_CONSOLE_PFN,
};
use xen_abi::memory::{AddToPhysmap, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP};
use xen_abi::DOMID_SELF;

use crate::boot::{Page, HCALL_READY};
use crate::hypercall::{hvm_op, memory_op, service};
use crate::{boot, console, events, println, xen};

/// The vector upcalls arrive on.
pub const UPCALL_VECTOR: u8 = 0xf3;
/// CALLBACK_IRQ value selecting [`UPCALL_VECTOR`].
pub const CALLBACK_VECTOR_VALUE: u64 =
    (CALLBACK_VIA_TYPE_VECTOR << CALLBACK_VIA_TYPE_SHIFT) | UPCALL_VECTOR as u64;

/// The page shared_info is mapped over.
pub static SHARED_INFO_PAGE: Page = Page::new();

const NOT_RUN: i64 = i64::MIN;
/// memory_op(add_to_physmap, shared_info) result.
pub static SHARED_INFO_RC: AtomicI64 = AtomicI64::new(NOT_RUN);
/// hvm_op(set_evtchn_upcall_vector) result.
pub static UPCALL_VECTOR_RC: AtomicI64 = AtomicI64::new(NOT_RUN);
/// bind_virq(VIRQ_TIMER, 0) result (the port on success).
pub static TIMER_BIND_RC: AtomicI64 = AtomicI64::new(NOT_RUN);
/// The console event channel (0 if unknown).
pub static CONSOLE_PORT: AtomicU32 = AtomicU32::new(0);

pub fn console() {
    if HCALL_READY.load(Ordering::Acquire) == 0 {
        // No hypercall page: nothing can be printed or shut down from ring 3.
        // Triple-fault so the VMM ends the domain with an error.
        service(boot::SVC_TRIPLE_FAULT, 0);
    }
    let pfn = xen::get_param(HVM_PARAM_CONSOLE_PFN);
    let port = xen::get_param(HVM_PARAM_CONSOLE_EVTCHN);
    match (pfn, port) {
        (Ok(pfn), Ok(port)) if pfn != 0 && pfn < 1 << 20 && port != 0 && port < 4096 => {
            CONSOLE_PORT.store(port as u32, Ordering::Release);
            console::use_ring(pfn << 12, port as u32);
        }
        (pfn, port) => {
            // Stay on console_io; `platform` reports this after the start line.
            CONSOLE_PARAMS.store(
                [pfn, port].iter().find_map(|r| r.err()).unwrap_or(0),
                Ordering::Release,
            );
            CONSOLE_MISSING.store(1, Ordering::Release);
        }
    }
}

/// Set when the PV console could not be used (and why: a get_param rc).
static CONSOLE_MISSING: AtomicU32 = AtomicU32::new(0);
static CONSOLE_PARAMS: AtomicI64 = AtomicI64::new(0);

pub fn platform() {
    if CONSOLE_MISSING.load(Ordering::Acquire) != 0 {
        println!(
            "kxen-testguest: note: setup: no usable PV console (get_param rc {}); output goes to console_io",
            CONSOLE_PARAMS.load(Ordering::Acquire)
        );
    }
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: SHARED_INFO_PAGE.pfn(),
    };
    let rc = memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp);
    SHARED_INFO_RC.store(rc, Ordering::Release);
    if rc == 0 {
        events::set_shared_info(SHARED_INFO_PAGE.ptr());
    } else {
        println!("kxen-testguest: note: setup: add_to_physmap(shared_info) returned {rc}");
    }

    let mut uv = EvtchnUpcallVector {
        vcpu: 0,
        vector: UPCALL_VECTOR,
        _pad: [0; 3],
    };
    let rc = hvm_op(HVMOP_SET_EVTCHN_UPCALL_VECTOR, &mut uv);
    UPCALL_VECTOR_RC.store(rc, Ordering::Release);
    if rc != 0 {
        println!("kxen-testguest: note: setup: set_evtchn_upcall_vector returned {rc}; using CALLBACK_IRQ");
        xen::set_param(HVM_PARAM_CALLBACK_IRQ, CALLBACK_VECTOR_VALUE);
    }

    match xen::bind_virq(VIRQ_TIMER, 0) {
        Ok(port) => {
            TIMER_BIND_RC.store(port as i64, Ordering::Release);
            events::TIMER_PORT.store(port, Ordering::Release);
        }
        Err(rc) => {
            TIMER_BIND_RC.store(rc, Ordering::Release);
            println!("kxen-testguest: note: setup: bind_virq(VIRQ_TIMER) returned {rc}");
        }
    }
    events::drain();
}
