//! A domain over anonymous memory with a recording, no-op platform: lets
//! unit tests and fuzz targets drive the hypercall layer without KVM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use xen_abi::memory::{E820Entry, E820_RAM};

use crate::domain::{Domain, DomainConfig, EventLayout, OverlayFrame, Platform};
use crate::grant::{MAX_GRANT_FRAMES, MAX_STATUS_FRAMES};
use crate::guest::IdentityMmu;
use crate::hypercall::Call;

/// RAM size of the harness domain.
pub const RAM_BYTES: u64 = 16 << 20;
/// Where the harness puts its special pages (initial shared_info).
pub const SPECIAL_GFN: u64 = 0xfeff0;
/// First GFN of the default grant frame window (status frames follow).
pub const DEFAULT_GRANT_GFN: u64 = 0xfef00;

/// Records what the Xen layer asked of the platform.
#[derive(Default)]
pub struct RecordingPlatform {
    pub upcalls: AtomicU32,
    /// (vCPU, vector) of every upcall, oldest first (capped).
    pub vectors: Mutex<Vec<(u32, u8)>>,
    pub shutdowns: Mutex<Vec<u32>>,
    pub console: Mutex<Vec<u8>>,
    /// The last event layout published.
    pub layout: Mutex<Option<EventLayout>>,
    /// Layout changes begun (begin_event_layout_change calls).
    pub layout_changes: AtomicU32,
    /// Each port's last published (notify vCPU, Dom0 port).
    pub ports: Mutex<BTreeMap<u32, (u32, u32)>>,
    /// set_blocked calls, in order.
    pub blocked: Mutex<Vec<(u32, bool)>>,
    /// upcall_vector_changed calls, in order.
    pub vector_changes: Mutex<Vec<(u32, Option<u8>)>>,
    /// Dom0 ports a guest may bind (bind_dom0_unbound consumes them).
    pub dom0_unbound: Mutex<Vec<u32>>,
    /// Guest ports bound through bind_dom0_unbound: (Dom0 port, guest port).
    pub dom0_bound: Mutex<Vec<(u32, u32)>>,
    /// remote_port_closed and notify_remote calls.
    pub remote_closed: Mutex<Vec<(u16, u32)>>,
    pub remote_notified: Mutex<Vec<(u16, u32)>>,
    /// event_abi_changed calls (true: FIFO), in order.
    pub event_abi: Mutex<Vec<bool>>,
}

impl Platform for &'static RecordingPlatform {
    fn raise_upcall(&self, vcpu: u32, vector: u8) {
        self.upcalls.fetch_add(1, Ordering::SeqCst);
        let mut vectors = self.vectors.lock().unwrap();
        if vectors.len() < 1024 {
            vectors.push((vcpu, vector));
        }
    }
    fn kick_vcpu(&self, _vcpu: u32) {}
    fn map_overlay(&self, gfn: u64, _frame: OverlayFrame) -> Result<(), i64> {
        // Only the default window has memory behind it (standing in for
        // the VMM's pool frames); nothing else can be mapped.
        let window =
            DEFAULT_GRANT_GFN..DEFAULT_GRANT_GFN + (MAX_GRANT_FRAMES + MAX_STATUS_FRAMES) as u64;
        if window.contains(&gfn) {
            Ok(())
        } else {
            Err(-xen_abi::errno::ENOMEM)
        }
    }
    fn unmap_overlay(&self, _gfn: u64) {}
    fn discard_ram(&self, _gfn: u64) {}
    fn shutdown(&self, reason: u32) {
        self.shutdowns.lock().unwrap().push(reason);
    }
    fn console_write(&self, data: &[u8]) {
        let mut console = self.console.lock().unwrap();
        if console.len() < 1 << 16 {
            console.extend_from_slice(data);
        }
    }
    fn notify_remote(&self, remote_dom: u16, remote_port: u32) {
        self.remote_notified
            .lock()
            .unwrap()
            .push((remote_dom, remote_port));
    }
    fn begin_event_layout_change(&self) {
        self.layout_changes.fetch_add(1, Ordering::SeqCst);
    }
    fn publish_event_layout(&self, layout: &EventLayout) {
        *self.layout.lock().unwrap() = Some(layout.clone());
    }
    fn publish_port(&self, port: u32, notify_vcpu: u32, dom0_port: u32) {
        self.ports
            .lock()
            .unwrap()
            .insert(port, (notify_vcpu, dom0_port));
    }
    fn set_blocked(&self, vcpu: u32, blocked: bool) {
        self.blocked.lock().unwrap().push((vcpu, blocked));
    }
    fn upcall_vector_changed(&self, vcpu: u32, vector: Option<u8>) {
        self.vector_changes.lock().unwrap().push((vcpu, vector));
    }
    fn bind_dom0_unbound(&self, dom0_port: u32, local_port: u32) -> Result<(), i64> {
        let mut free = self.dom0_unbound.lock().unwrap();
        let i = free
            .iter()
            .position(|&p| p == dom0_port)
            .ok_or(-xen_abi::errno::EINVAL)?;
        free.remove(i);
        self.dom0_bound
            .lock()
            .unwrap()
            .push((dom0_port, local_port));
        Ok(())
    }
    fn event_abi_changed(&self, fifo: bool) {
        self.event_abi.lock().unwrap().push(fifo);
    }
    fn remote_port_closed(&self, remote_dom: u16, remote_port: u32) {
        self.remote_closed
            .lock()
            .unwrap()
            .push((remote_dom, remote_port));
    }
}

/// A two-vCPU domain over 16 MiB of RAM at GPA 0.
pub fn domain() -> (Domain, &'static RecordingPlatform) {
    domain_of_type(false)
}

/// Where the harness's PV domain says its M2P is (kxen-vmm's place).
pub const PV_MACHPHYS_MAPPING: xen_abi::memory::MachphysMapping =
    xen_abi::memory::MachphysMapping {
        v_start: 0xffff_8080_0000_0000,
        v_end: 0xffff_80c0_0000_0000,
        max_mfn: (1 << 35) - 1,
    };

/// The same domain as a classic PV one, with a read-only M2P.
pub fn pv_domain() -> (Domain, &'static RecordingPlatform) {
    domain_of_type(true)
}

fn domain_of_type(pv: bool) -> (Domain, &'static RecordingPlatform) {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), RAM_BYTES as usize),
        // The default window for grant and status frames (the VMM maps
        // pool frames there; here it is plain memory).
        (
            GuestAddress(DEFAULT_GRANT_GFN << 12),
            (MAX_GRANT_FRAMES + MAX_STATUS_FRAMES) as usize * 4096,
        ),
        (GuestAddress(SPECIAL_GFN << 12), 16 * 4096),
    ])
    .expect("anonymous guest memory");
    let platform: &'static RecordingPlatform = Box::leak(Box::default());
    let cfg = DomainConfig {
        domid: 1,
        name: "harness".into(),
        nr_vcpus: 2,
        ram: vec![(0, RAM_BYTES)],
        max_pages: RAM_BYTES / 4096,
        memmap: vec![E820Entry {
            addr: 0,
            size: RAM_BYTES,
            kind: E820_RAM,
        }],
        initial_shared_info_gfn: SPECIAL_GFN,
        default_grant_gfn: DEFAULT_GRANT_GFN,
        xen_major: 4,
        xen_minor: 17,
        handle: [0; 16],
        pv_machphys_mapping: pv.then_some(PV_MACHPHYS_MAPPING),
        // Room for every FIFO port, as the harness's tests expect.
        max_evtchn_port: xen_abi::event_channel::EVTCHN_FIFO_NR_CHANNELS - 1,
    };
    let domain = Domain::new(
        cfg,
        GuestMemoryAtomic::new(mem),
        Box::new(platform),
        1_000_000,
    );
    // Blocking calls (block, poll, down) return at once once stopping.
    domain.stop();
    (domain, platform)
}

/// Decode fuzzer bytes into hypercalls and run them; must never panic.
pub fn run_bytes(domain: &Domain, data: &[u8]) {
    for chunk in data.chunks(44) {
        if chunk.len() < 44 {
            return;
        }
        let word = |i: usize| u64::from_le_bytes(chunk[4 + i * 8..12 + i * 8].try_into().unwrap());
        let nr = u32::from_le_bytes(chunk[..4].try_into().unwrap()) as u64 % 64;
        let mut args = [word(0), word(1), word(2), word(3), word(4)];
        // Bias pointers into RAM so handlers get past the first copy.
        for a in args.iter_mut().skip(1) {
            if *a & 1 == 0 {
                *a %= RAM_BYTES;
            }
        }
        args[0] %= 32;
        let vcpu = (chunk[3] & 1) as u32;
        let call = if chunk[3] & 2 != 0 {
            Call::compat(nr, args)
        } else {
            Call::native(nr, args)
        };
        domain.hypercall(vcpu, &IdentityMmu, call);
    }
}

/// Write `data` at guest-physical `gpa` (false if it is not all backed).
pub fn write_guest(domain: &Domain, gpa: u64, data: &[u8]) -> bool {
    use vm_memory::{Bytes, GuestAddressSpace};
    domain
        .mem
        .memory()
        .write_slice(data, GuestAddress(gpa))
        .is_ok()
}

/// Read `buf.len()` bytes at guest-physical `gpa`.
pub fn read_guest(domain: &Domain, gpa: u64, buf: &mut [u8]) -> bool {
    use vm_memory::{Bytes, GuestAddressSpace};
    domain
        .mem
        .memory()
        .read_slice(buf, GuestAddress(gpa))
        .is_ok()
}

/// Place grant frame 0 at RAM frame `gfn` (XENMEM_add_to_physmap); the
/// hypercall's argument goes at GPA 0.
pub fn place_grant_frame(domain: &Domain, gfn: u64) -> i64 {
    use zerocopy::IntoBytes;
    let xatp = xen_abi::memory::AddToPhysmap {
        domid: xen_abi::DOMID_SELF,
        size: 0,
        space: xen_abi::memory::XENMAPSPACE_GRANT_TABLE,
        idx: 0,
        gpfn: gfn,
    };
    write_guest(domain, 0, xatp.as_bytes());
    hypercall(
        domain,
        xen_abi::hypercall::MEMORY_OP,
        [xen_abi::memory::XENMEM_ADD_TO_PHYSMAP, 0, 0, 0, 0],
    )
}

/// Hypercall `nr` from vCPU 0, its pointers guest-physical (the harness
/// domain runs with paging off).
pub fn hypercall(domain: &Domain, nr: u64, args: [u64; 5]) -> i64 {
    domain.hypercall(0, &IdentityMmu, Call::native(nr, args))
}

/// Hypercall `nr` from vCPU 0 in 32-bit mode: compat struct layouts.
pub fn hypercall32(domain: &Domain, nr: u64, args: [u64; 5]) -> i64 {
    domain.hypercall(0, &IdentityMmu, Call::compat(nr, args))
}
