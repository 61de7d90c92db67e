//! What the Xen layer tells the platform for Dom0's event routing: the
//! event layout, each port's Dom0 binding, blocked vCPUs and upcall
//! vectors; and interdomain channels to Dom0 in both directions.

use kxen_xen::harness::{self, write_guest};
use xen_abi::errno::EINVAL;
use xen_abi::event_channel::*;
use xen_abi::hvm::{EvtchnUpcallVector, HVMOP_SET_EVTCHN_UPCALL_VECTOR};
use xen_abi::hypercall::*;
use xen_abi::memory::{AddToPhysmap, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP};
use xen_abi::sched::SCHEDOP_BLOCK;
use xen_abi::vcpu::{RegisterVcpuInfo, VCPUOP_REGISTER_VCPU_INFO};
use xen_abi::DOMID_SELF;
use zerocopy::{FromBytes, IntoBytes};

const ARG: u64 = 0x1000;

fn call(d: &kxen_xen::Domain, nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    harness::hypercall(d, nr, [a1, a2, a3, 0, 0])
}

/// Make an event_channel_op with `arg`; return the rc and the struct back.
fn evtchn<T: IntoBytes + FromBytes + zerocopy::Immutable>(
    d: &kxen_xen::Domain,
    cmd: u64,
    arg: T,
) -> (i64, T) {
    write_guest(d, ARG, arg.as_bytes());
    let rc = call(d, EVENT_CHANNEL_OP, cmd, ARG, 0);
    let mut buf = vec![0u8; core::mem::size_of::<T>()];
    harness::read_guest(d, ARG, &mut buf);
    (rc, T::read_from_bytes(&buf).unwrap())
}

fn alloc_unbound_for_dom0(d: &kxen_xen::Domain) -> u32 {
    let (rc, a) = evtchn(
        d,
        EVTCHNOP_ALLOC_UNBOUND,
        AllocUnbound {
            dom: DOMID_SELF,
            remote_dom: 0,
            port: 0,
        },
    );
    assert_eq!(rc, 0);
    a.port
}

fn status(d: &kxen_xen::Domain, port: u32) -> Status {
    let (rc, s) = evtchn(
        d,
        EVTCHNOP_STATUS,
        Status {
            dom: DOMID_SELF,
            port,
            ..Default::default()
        },
    );
    assert_eq!(rc, 0);
    s
}

#[test]
fn dom0_binds_a_guest_port_and_closes_it() {
    let (d, p) = harness::domain();
    let port = alloc_unbound_for_dom0(&d);
    assert_eq!(p.ports.lock().unwrap()[&port], (0, 0));
    d.dom0_bind(port, 40).unwrap();
    assert_eq!(p.ports.lock().unwrap()[&port], (0, 40));
    let s = status(&d, port);
    assert_eq!((s.status, s.u[0], s.u[1]), (EVTCHNSTAT_INTERDOMAIN, 0, 40));
    // Bound already, or not waiting for Dom0: -EINVAL.
    assert_eq!(d.dom0_bind(port, 41), Err(-EINVAL));
    assert_eq!(d.dom0_bind(4095, 41), Err(-EINVAL));
    assert_eq!(d.dom0_bind(1 << 20, 41), Err(-EINVAL));
    // The guest's sends go to Dom0's port.
    let (rc, _) = evtchn(&d, EVTCHNOP_SEND, PortArg { port });
    assert_eq!(rc, 0);
    assert_eq!(p.remote_notified.lock().unwrap().last(), Some(&(0, 40)));
    // Dom0 closes: unbound for Dom0 again, routing cleared.
    d.dom0_closed(port, 40);
    let s = status(&d, port);
    assert_eq!((s.status, s.u[0]), (EVTCHNSTAT_UNBOUND, 0));
    assert_eq!(p.ports.lock().unwrap()[&port], (0, 0));
    // A stale close for another Dom0 port changes nothing.
    d.dom0_bind(port, 42).unwrap();
    d.dom0_closed(port, 40);
    assert_eq!(status(&d, port).status, EVTCHNSTAT_INTERDOMAIN);
    // The guest closes its end: Dom0 is told, routing cleared.
    let (rc, _) = evtchn(&d, EVTCHNOP_CLOSE, PortArg { port });
    assert_eq!(rc, 0);
    assert_eq!(p.remote_closed.lock().unwrap().last(), Some(&(0, 42)));
    assert_eq!(p.ports.lock().unwrap()[&port], (0, 0));
}

#[test]
fn guest_binds_a_dom0_allocated_port() {
    let (d, p) = harness::domain();
    p.dom0_unbound.lock().unwrap().push(77);
    let bind = |remote_port| {
        evtchn(
            &d,
            EVTCHNOP_BIND_INTERDOMAIN,
            BindInterdomain {
                remote_dom: 0,
                _pad: 0,
                remote_port,
                local_port: 0,
            },
        )
    };
    assert_eq!(bind(78).0, -EINVAL, "a Dom0 port never allocated");
    let (rc, b) = bind(77);
    assert_eq!(rc, 0);
    let local = b.local_port;
    assert_eq!(p.dom0_bound.lock().unwrap().as_slice(), &[(77, local)]);
    assert_eq!(p.ports.lock().unwrap()[&local], (0, 77));
    let s = status(&d, local);
    assert_eq!((s.status, s.u[0], s.u[1]), (EVTCHNSTAT_INTERDOMAIN, 0, 77));
    assert_eq!(bind(77).0, -EINVAL, "bound twice");
    // The failed binds left no port behind.
    let (rc, _) = evtchn(&d, EVTCHNOP_CLOSE, PortArg { port: local + 1 });
    assert_eq!(rc, -EINVAL);
    // bind_vcpu moves the notification; the routing follows.
    let (rc, _) = evtchn(
        &d,
        EVTCHNOP_BIND_VCPU,
        BindVcpu {
            port: local,
            vcpu: 1,
        },
    );
    assert_eq!(rc, 0);
    assert_eq!(p.ports.lock().unwrap()[&local], (1, 77));
}

#[test]
fn layout_vectors_and_blocking_are_published() {
    let (d, p) = harness::domain();
    d.publish_routing();
    let layout = p.layout.lock().unwrap().clone().unwrap();
    assert_eq!(layout.shared_info_gfn, harness::SPECIAL_GFN);
    assert_eq!(
        layout.vcpu_info_gpa[1],
        Some((harness::SPECIAL_GFN << 12) + 64)
    );
    // shared_info moves into RAM: a change is begun and the new place
    // published, legacy vcpu_info slots with it.
    let xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: 0x200,
    };
    write_guest(&d, ARG, xatp.as_bytes());
    let begun = p.layout_changes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(call(&d, MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, ARG, 0), 0);
    assert!(p.layout_changes.load(std::sync::atomic::Ordering::SeqCst) > begun);
    let layout = p.layout.lock().unwrap().clone().unwrap();
    assert_eq!(layout.shared_info_gfn, 0x200);
    assert_eq!(layout.vcpu_info_gpa[0], Some(0x200 << 12));
    // A registered vcpu_info is published.
    let reg = RegisterVcpuInfo {
        mfn: 0x300,
        offset: 128,
        rsvd: 0,
    };
    write_guest(&d, ARG, reg.as_bytes());
    assert_eq!(call(&d, VCPU_OP, VCPUOP_REGISTER_VCPU_INFO, 0, ARG), 0);
    let layout = p.layout.lock().unwrap().clone().unwrap();
    assert_eq!(layout.vcpu_info_gpa[0], Some((0x300 << 12) + 128));
    // Upcall vectors.
    let uv = EvtchnUpcallVector {
        vcpu: 1,
        vector: 0xf3,
        _pad: [0; 3],
    };
    write_guest(&d, ARG, uv.as_bytes());
    assert_eq!(call(&d, HVM_OP, HVMOP_SET_EVTCHN_UPCALL_VECTOR, ARG, 0), 0);
    assert_eq!(
        p.vector_changes.lock().unwrap().last(),
        Some(&(1, Some(0xf3)))
    );
    // SCHEDOP_block flags the vCPU blocked, then not (the harness domain
    // is stopped, so it returns at once).
    p.blocked.lock().unwrap().clear();
    assert_eq!(call(&d, SCHED_OP, SCHEDOP_BLOCK, 0, 0), 0);
    assert_eq!(
        p.blocked.lock().unwrap().as_slice(),
        &[(0, true), (0, false)]
    );
}
