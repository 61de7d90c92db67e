//! hvm_op: parameters, the upcall vector, pagetable_dying.

use core::sync::atomic::Ordering;

use xen_abi::errno::{EFAULT, EINVAL, ENOENT, ENOSYS, EPERM, ESRCH};
use xen_abi::hvm::*;
use xen_abi::hypercall::HVM_OP;

use super::version::BAD_PTR;
use super::{eq, neg, ok, rc_is, R};
use crate::hypercall::{hvm_op, op_raw};
use crate::setup::{CALLBACK_VECTOR_VALUE, UPCALL_VECTOR, UPCALL_VECTOR_RC};
use crate::{ensure, env, events, xen};

/// HVM_PARAM_IDENT_PT: exists, but a guest may not read it.
const HVM_PARAM_IDENT_PT: u32 = 12;

pub fn callback_irq() -> R {
    rc_is(
        "set_param(CALLBACK_IRQ, 2<<56 | 0xf3)",
        xen::set_param(HVM_PARAM_CALLBACK_IRQ, CALLBACK_VECTOR_VALUE),
        0,
    )?;
    let v = ok(
        "get_param(CALLBACK_IRQ)",
        xen::get_param(HVM_PARAM_CALLBACK_IRQ),
    )?;
    eq("CALLBACK_IRQ read back", v, CALLBACK_VECTOR_VALUE)
}

fn special_page(pfn_param: u32, port_param: u32, what: &str) -> R {
    let pfn = ok(what, xen::get_param(pfn_param))?;
    let port = ok(what, xen::get_param(port_param))?;
    ensure!(pfn != 0, "{}: pfn is 0", what);
    ensure!(
        port != 0 && port < 4096,
        "{}: bad event channel {}",
        what,
        port
    );
    ensure!(
        env::in_reserved(pfn << 12, 4096),
        "{}: pfn {:#x} is not inside a reserved range of the memory map",
        what,
        pfn
    );
    Ok(())
}

pub fn store_params() -> R {
    special_page(
        HVM_PARAM_STORE_PFN,
        HVM_PARAM_STORE_EVTCHN,
        "get_param(STORE_PFN/STORE_EVTCHN)",
    )
}

pub fn console_params() -> R {
    special_page(
        HVM_PARAM_CONSOLE_PFN,
        HVM_PARAM_CONSOLE_EVTCHN,
        "get_param(CONSOLE_PFN/CONSOLE_EVTCHN)",
    )
}

pub fn bad_index() -> R {
    // hvm.c hvmop_get_param/hvmop_set_param: index >= HVM_NR_PARAMS -> -EINVAL.
    rc_is(
        "get_param(39)",
        xen::get_param(HVM_NR_PARAMS).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    rc_is(
        "get_param(0xffffffff)",
        xen::get_param(u32::MAX).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    rc_is(
        "set_param(39)",
        xen::set_param(HVM_NR_PARAMS, 0),
        neg(EINVAL),
    )
}

pub fn set_store_pfn_denied() -> R {
    // hvm.c hvm_allow_set_param: STORE_PFN/CONSOLE_PFN are not guest-settable
    // -> -EPERM for the domain itself. (The value written is the current one,
    // so a wrongly accepted write changes nothing.)
    let pfn = xen::get_param(HVM_PARAM_STORE_PFN).unwrap_or(0);
    rc_is(
        "set_param(STORE_PFN)",
        xen::set_param(HVM_PARAM_STORE_PFN, pfn),
        neg(EPERM),
    )?;
    let pfn = xen::get_param(HVM_PARAM_CONSOLE_PFN).unwrap_or(0);
    rc_is(
        "set_param(CONSOLE_PFN)",
        xen::set_param(HVM_PARAM_CONSOLE_PFN, pfn),
        neg(EPERM),
    )
}

pub fn get_denied() -> R {
    // hvm.c hvm_allow_get_param: IDENT_PT is not guest-readable -> -EPERM.
    rc_is(
        "get_param(IDENT_PT)",
        xen::get_param(HVM_PARAM_IDENT_PT).err().unwrap_or(0),
        neg(EPERM),
    )
}

pub fn deprecated() -> R {
    // hvm.c hvm_allow_{get,set}_param: PAE_ENABLED is deprecated -> -EINVAL.
    rc_is(
        "get_param(PAE_ENABLED)",
        xen::get_param(HVM_PARAM_PAE_ENABLED).err().unwrap_or(0),
        neg(EINVAL),
    )?;
    rc_is(
        "set_param(PAE_ENABLED)",
        xen::set_param(HVM_PARAM_PAE_ENABLED, 1),
        neg(EINVAL),
    )
}

pub fn other_domain() -> R {
    // hvm.c: rcu_lock_domain_by_any_id(5) finds no domain -> -ESRCH.
    rc_is(
        "get_param(domid 5, CONSOLE_PFN)",
        xen::get_param_dom(5, HVM_PARAM_CONSOLE_PFN)
            .err()
            .unwrap_or(0),
        neg(ESRCH),
    )?;
    rc_is(
        "set_param(domid 5, CALLBACK_IRQ)",
        xen::set_param_dom(5, HVM_PARAM_CALLBACK_IRQ, CALLBACK_VECTOR_VALUE),
        neg(ESRCH),
    )
}

pub fn bad_pointer() -> R {
    // hvm.c: copy_from_guest of xen_hvm_param fails -> -EFAULT.
    rc_is(
        "hvm_op(HVMOP_get_param, unmapped)",
        op_raw(HVM_OP, HVMOP_GET_PARAM, BAD_PTR),
        neg(EFAULT),
    )?;
    rc_is(
        "hvm_op(HVMOP_set_param, unmapped)",
        op_raw(HVM_OP, HVMOP_SET_PARAM, BAD_PTR),
        neg(EFAULT),
    )
}

fn set_upcall_vector(vcpu: u32, vector: u8) -> i64 {
    let mut uv = EvtchnUpcallVector {
        vcpu,
        vector,
        _pad: [0; 3],
    };
    hvm_op(HVMOP_SET_EVTCHN_UPCALL_VECTOR, &mut uv)
}

pub fn upcall_vector() -> R {
    rc_is(
        "setup: set_evtchn_upcall_vector(vcpu 0, 0xf3)",
        UPCALL_VECTOR_RC.load(Ordering::Acquire),
        0,
    )?;
    // hvm.c hvmop_set_evtchn_upcall_vector: vector < 0x10 -> -EINVAL.
    let low = set_upcall_vector(0, 0x0f);
    // Put it back at once in case it was wrongly accepted.
    let again = set_upcall_vector(0, UPCALL_VECTOR);
    rc_is("set_evtchn_upcall_vector(vcpu 0, 0x0f)", low, neg(EINVAL))?;
    // hvm.c: domain_vcpu(d, 99) is NULL -> -ENOENT.
    rc_is(
        "set_evtchn_upcall_vector(vcpu 99, 0xf3)",
        set_upcall_vector(99, UPCALL_VECTOR),
        neg(ENOENT),
    )?;
    rc_is("set_evtchn_upcall_vector(vcpu 0, 0xf3) again", again, 0)?;
    // And the vector is used: an IPI to ourselves raises an upcall.
    let port = ok("bind_ipi(vcpu 0)", xen::bind_ipi(0))?;
    events::drain();
    let before = events::upcalls();
    let sent = xen::send(port);
    let arrived = events::wait_upcall(before, 1_000);
    events::forget(port);
    xen::close(port);
    rc_is("send(ipi port)", sent, 0)?;
    ensure!(
        arrived,
        "no upcall on vector 0xf3 within 1 s of an IPI send"
    );
    Ok(())
}

pub fn pagetable_dying() -> R {
    #[repr(C)]
    struct PagetableDying {
        domid: u16,
        pad: [u16; 3],
        gpa: u64,
    }
    let mut a = PagetableDying {
        domid: xen_abi::DOMID_SELF,
        pad: [0; 3],
        gpa: 0,
    };
    // kxen: no shadow paging, so HVMOP_pagetable_dying is -ENOSYS (what
    // Linux expects from hypervisors without it).
    rc_is(
        "hvm_op(HVMOP_pagetable_dying)",
        hvm_op(HVMOP_PAGETABLE_DYING, &mut a),
        neg(ENOSYS),
    )
}

pub fn unknown_op() -> R {
    // hvm.c do_hvm_op: default is -ENOSYS.
    rc_is("hvm_op(0x7f)", op_raw(HVM_OP, 0x7f, 0), neg(ENOSYS))
}
