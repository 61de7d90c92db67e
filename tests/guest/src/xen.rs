//! Typed wrappers for the hypercalls the guest uses as infrastructure.

use xen_abi::errno::ENOENT;
use xen_abi::event_channel::{self as ec, AllocUnbound, BindIpi, BindVirq, PortArg, Status};
use xen_abi::hvm::{HvmParam, HVMOP_GET_PARAM, HVMOP_SET_PARAM};
use xen_abi::sched::{Shutdown, SCHEDOP_BLOCK, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD};
use xen_abi::vcpu::VCPUOP_IS_UP;
use xen_abi::DOMID_SELF;

use crate::hypercall::{event_channel_op, hvm_op, hypercall2, sched_op, vcpu_op_null};

pub fn sched_yield() -> i64 {
    // SAFETY: SCHEDOP_yield takes no memory argument.
    unsafe { hypercall2(xen_abi::hypercall::SCHED_OP, SCHEDOP_YIELD, 0) }
}

/// SCHEDOP_block: sleep until an event is pending for this vCPU.
pub fn block() -> i64 {
    // SAFETY: SCHEDOP_block takes no memory argument.
    unsafe { hypercall2(xen_abi::hypercall::SCHED_OP, SCHEDOP_BLOCK, 0) }
}

pub fn shutdown(reason: u32) -> i64 {
    let mut arg = Shutdown { reason };
    sched_op(SCHEDOP_SHUTDOWN, &mut arg)
}

pub fn get_param_dom(domid: u16, index: u32) -> Result<u64, i64> {
    let mut p = HvmParam {
        domid,
        _pad: 0,
        index,
        value: 0,
    };
    match hvm_op(HVMOP_GET_PARAM, &mut p) {
        0 => Ok(p.value),
        rc => Err(rc),
    }
}

pub fn get_param(index: u32) -> Result<u64, i64> {
    get_param_dom(DOMID_SELF, index)
}

pub fn set_param_dom(domid: u16, index: u32, value: u64) -> i64 {
    let mut p = HvmParam {
        domid,
        _pad: 0,
        index,
        value,
    };
    hvm_op(HVMOP_SET_PARAM, &mut p)
}

pub fn set_param(index: u32, value: u64) -> i64 {
    set_param_dom(DOMID_SELF, index, value)
}

pub fn send(port: u32) -> i64 {
    event_channel_op(ec::EVTCHNOP_SEND, &mut PortArg { port })
}

pub fn close(port: u32) -> i64 {
    event_channel_op(ec::EVTCHNOP_CLOSE, &mut PortArg { port })
}

pub fn unmask(port: u32) -> i64 {
    event_channel_op(ec::EVTCHNOP_UNMASK, &mut PortArg { port })
}

pub fn alloc_unbound(dom: u16, remote_dom: u16) -> Result<u32, i64> {
    let mut a = AllocUnbound {
        dom,
        remote_dom,
        port: 0,
    };
    match event_channel_op(ec::EVTCHNOP_ALLOC_UNBOUND, &mut a) {
        0 => Ok(a.port),
        rc => Err(rc),
    }
}

pub fn bind_ipi(vcpu: u32) -> Result<u32, i64> {
    let mut b = BindIpi { vcpu, port: 0 };
    match event_channel_op(ec::EVTCHNOP_BIND_IPI, &mut b) {
        0 => Ok(b.port),
        rc => Err(rc),
    }
}

pub fn bind_virq(virq: u32, vcpu: u32) -> Result<u32, i64> {
    let mut b = BindVirq {
        virq,
        vcpu,
        port: 0,
    };
    match event_channel_op(ec::EVTCHNOP_BIND_VIRQ, &mut b) {
        0 => Ok(b.port),
        rc => Err(rc),
    }
}

pub fn status_dom(dom: u16, port: u32) -> Result<Status, i64> {
    let mut s = Status {
        dom,
        port,
        ..Default::default()
    };
    match event_channel_op(ec::EVTCHNOP_STATUS, &mut s) {
        0 => Ok(s),
        rc => Err(rc),
    }
}

pub fn status(port: u32) -> Result<Status, i64> {
    status_dom(DOMID_SELF, port)
}

/// SCHEDOP_poll on `ports` with an absolute timeout (0 = none).
pub fn poll(ports: &mut [u32], timeout_ns: u64) -> i64 {
    let mut p = xen_abi::sched::Poll {
        ports: ports.as_mut_ptr() as u64,
        nr_ports: ports.len() as u32,
        _pad: 0,
        timeout: timeout_ns,
    };
    sched_op(xen_abi::sched::SCHEDOP_POLL, &mut p)
}

/// Highest vCPU count [`nr_vcpus`] looks for.
const MAX_VCPUS_PROBED: u32 = 1024;

/// Whether the domain has vCPU `id`. Xen's do_vcpu_op answers -ENOENT for
/// a vCPU the domain does not have (domain_vcpu() is NULL) before it looks
/// at the sub-op, so VCPUOP_is_up tells.
pub fn vcpu_exists(id: u32) -> bool {
    vcpu_op_null(VCPUOP_IS_UP, id) != -ENOENT
}

/// How many vCPUs the domain has (their ids are 0..n).
pub fn nr_vcpus() -> u32 {
    (1..MAX_VCPUS_PROBED)
        .find(|&v| !vcpu_exists(v))
        .unwrap_or(MAX_VCPUS_PROBED)
}
