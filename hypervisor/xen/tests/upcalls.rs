//! Upcall delivery: the per-vCPU vector and the CALLBACK_IRQ vector.

use kxen_xen::harness;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use xen_abi::hypercall::*;

const ARG: u64 = 0x1000;

fn call(d: &kxen_xen::Domain, nr: u64, a1: u64, a2: u64) -> i64 {
    harness::hypercall(d, nr, [a1, a2, 0, 0, 0])
}

fn put(d: &kxen_xen::Domain, bytes: &[u8]) {
    d.mem
        .memory()
        .write_slice(bytes, GuestAddress(ARG))
        .unwrap();
}

/// Bind an IPI on vCPU 0 and send it; returns the port.
fn send_ipi(d: &kxen_xen::Domain) -> u32 {
    put(d, &[0u8; 8]);
    assert_eq!(call(d, EVENT_CHANNEL_OP, 7, ARG), 0);
    let port: u32 = d.mem.memory().read_obj(GuestAddress(ARG + 4)).unwrap();
    put(d, &port.to_le_bytes());
    assert_eq!(call(d, EVENT_CHANNEL_OP, 4, ARG), 0);
    port
}

#[test]
fn callback_irq_vector_delivers_events() {
    let (d, platform) = harness::domain();
    // HVMOP_set_param(CALLBACK_IRQ = vector 0xe9).
    let mut p = [0u8; 16];
    p[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    p[8..16].copy_from_slice(&(2u64 << 56 | 0xe9).to_le_bytes());
    put(&d, &p);
    assert_eq!(call(&d, HVM_OP, 0, ARG), 0);
    platform.vectors.lock().unwrap().clear();
    send_ipi(&d);
    assert_eq!(platform.vectors.lock().unwrap().as_slice(), &[(0, 0xe9)]);
}

#[test]
fn per_vcpu_vector_takes_precedence() {
    let (d, platform) = harness::domain();
    let mut p = [0u8; 16];
    p[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    p[8..16].copy_from_slice(&(2u64 << 56 | 0xe9).to_le_bytes());
    put(&d, &p);
    assert_eq!(call(&d, HVM_OP, 0, ARG), 0);
    // HVMOP_set_evtchn_upcall_vector {vcpu 0, vector 0xf3}.
    put(&d, &[0, 0, 0, 0, 0xf3, 0, 0, 0]);
    assert_eq!(call(&d, HVM_OP, 23, ARG), 0);
    platform.vectors.lock().unwrap().clear();
    send_ipi(&d);
    assert_eq!(platform.vectors.lock().unwrap().as_slice(), &[(0, 0xf3)]);
}

#[test]
fn no_upcall_while_the_port_is_masked() {
    let (d, platform) = harness::domain();
    put(&d, &[0, 0, 0, 0, 0xf3, 0, 0, 0]);
    assert_eq!(call(&d, HVM_OP, 23, ARG), 0);
    // Mask every port in shared_info (still at its initial GFN), then send.
    let mask = (harness::SPECIAL_GFN << 12) + 0xa00;
    d.mem
        .memory()
        .write_slice(&[0xff; 512], GuestAddress(mask))
        .unwrap();
    platform.vectors.lock().unwrap().clear();
    let port = send_ipi(&d);
    assert!(platform.vectors.lock().unwrap().is_empty());
    // EVTCHNOP_unmask raises it.
    put(&d, &port.to_le_bytes());
    assert_eq!(call(&d, EVENT_CHANNEL_OP, 9, ARG), 0);
    assert_eq!(platform.vectors.lock().unwrap().as_slice(), &[(0, 0xf3)]);
}
