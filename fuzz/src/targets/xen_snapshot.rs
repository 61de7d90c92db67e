//! kxen's Xen state from a hostile restore image: the VMM's Xen-state
//! section (magic, version, JSON snapshot, pool pages) loaded onto a
//! fresh harness domain by `Domain::load_snapshot`, and then hypercalls
//! against whatever state it accepted.

use kxen_xen::snapshot::XenSnapshot;

/// One fuzz input; panics on a broken invariant: an accepted snapshot
/// must save again with the same ports and vCPUs, the saved state must
/// load onto another fresh domain and save there as itself (fields a
/// port's kind does not use are dropped on the first load, so the first
/// save is the fixed point), and hypercalls against the loaded domain
/// must not panic. The bytes
/// after the section's JSON (where pool pages sit) are run as hypercalls.
/// True when a snapshot was accepted.
pub fn xen_snapshot(data: &[u8]) -> bool {
    let Ok((snap, rest)) = kxen_vmm::state::parse_xen_state(data) else {
        return false;
    };
    let (domain, _) = kxen_xen::harness::domain();
    if domain.load_snapshot(&snap).is_err() {
        return false;
    }
    let saved = domain.snapshot().expect("a loaded snapshot saves again");
    let ports = |s: &XenSnapshot| s.ports.iter().map(|p| (p.port, p.kind.clone())).collect();
    let mut loaded: Vec<(u32, String)> = ports(&snap);
    loaded.sort();
    assert_eq!(ports(&saved), loaded);
    assert_eq!(saved.vcpus.len(), snap.vcpus.len());
    let (other, _) = kxen_xen::harness::domain();
    if let Err(e) = other.load_snapshot(&saved) {
        panic!("the state a loaded domain saved is refused: {e}");
    }
    let resaved = other.snapshot().expect("a reloaded snapshot saves");
    assert_eq!(timeless(resaved), timeless(saved));
    kxen_xen::harness::run_bytes(&domain, rest);
    true
}

/// `snap` without what moves with the clock between two saves (system
/// time, runstate times).
fn timeless(mut snap: XenSnapshot) -> XenSnapshot {
    snap.system_time_ns = 0;
    for v in &mut snap.vcpus {
        v.runstate_entry_time = 0;
        v.runstate_time = [0; 4];
    }
    snap
}
