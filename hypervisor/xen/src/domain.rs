//! One domain's Xen state and the services the VMM provides to it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use xen_abi::event_channel::VIRQ_TIMER;
use xen_abi::hvm::*;
use xen_abi::memory::E820Entry;
use xen_abi::sched::SHUTDOWN_SUSPEND;
use xen_abi::shared_info::*;
use xen_abi::vcpu::*;
use xen_abi::PAGE_SIZE;
use zerocopy::IntoBytes;

use crate::evtchn::EventWords;
use crate::evtchn::{self, PortState, PortTable, SharedInfoBits, VcpuEventBits};
use crate::evtchn_fifo::FifoState;
use crate::grant::GrantTable;
use crate::guest::{atomic_u32_slice, atomic_u64_slice, atomic_u8};
use crate::time::{host_tsc, Clock};

/// A page the VMM owns and maps at a guest-chosen GFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlayFrame {
    SharedInfo,
    GrantTable(u32),
    /// A v2 grant table's status frame.
    GrantStatus(u32),
}

/// What the VMM provides to the Xen layer.
pub trait Platform: Send + Sync {
    /// Inject `vector` into `vcpu` as an edge-triggered interrupt.
    fn raise_upcall(&self, vcpu: u32, vector: u8);
    /// Make `vcpu` leave guest mode soon (to notice it went offline).
    fn kick_vcpu(&self, vcpu: u32);
    /// Map `frame` at `gfn`, which lies outside RAM. Errors are -errno.
    fn map_overlay(&self, gfn: u64, frame: OverlayFrame) -> Result<(), i64>;
    /// Remove an overlay mapped earlier at `gfn`.
    fn unmap_overlay(&self, gfn: u64);
    /// Release the RAM page at `gfn` (balloon); it reads back as zeroes.
    fn discard_ram(&self, gfn: u64);
    /// The domain asked to shut down with `reason` (SHUTDOWN_*). For
    /// SHUTDOWN_suspend the domain stays: the platform must keep every
    /// vCPU out of the guest from now on (the suspending one included,
    /// once its hypercall returns) until the toolstack decides.
    fn shutdown(&self, reason: u32);
    /// Hypervisor console output (`console_io` write).
    fn console_write(&self, data: &[u8]);
    /// The domain sent an event on a port connected to Dom0's `remote_port`.
    fn notify_remote(&self, remote_dom: u16, remote_port: u32);

    // ---- event routing for Dom0 backends (all optional) -----------------

    /// shared_info or a vcpu_info is about to move: Dom0 backends raising
    /// events must retry until [`Platform::publish_event_layout`] follows.
    fn begin_event_layout_change(&self) {}
    /// Where the event words and grant frames are now.
    fn publish_event_layout(&self, _layout: &EventLayout) {}
    /// Guest `port` notifies `notify_vcpu`; `dom0_port` is the Dom0 port it
    /// is bound to, 0 if none.
    fn publish_port(&self, _port: u32, _notify_vcpu: u32, _dom0_port: u32) {}
    /// `vcpu` starts (true) or stops (false) waiting for an event inside
    /// the VMM. Must be ordered before the caller's next read of guest
    /// memory (a full fence).
    fn set_blocked(&self, _vcpu: u32, _blocked: bool) {}
    /// How `vcpu` takes upcalls changed (None: no vector yet).
    fn upcall_vector_changed(&self, _vcpu: u32, _vector: Option<u8>) {}
    /// The domain binds its new `local_port` to Dom0's `dom0_port`, which
    /// Dom0 allocated unbound for it. Errors are -errno (-EINVAL when the
    /// Dom0 port is not waiting for this domain).
    fn bind_dom0_unbound(&self, _dom0_port: u32, _local_port: u32) -> Result<(), i64> {
        Err(-xen_abi::errno::EINVAL)
    }
    /// The domain closed its end of a channel to `remote_dom`'s
    /// `remote_port`.
    fn remote_port_closed(&self, _remote_dom: u16, _remote_port: u32) {}

    /// The domain switched to the FIFO event ABI (true) or back to 2-level
    /// (false, EVTCHNOP_reset). Dom0 backends must stop setting 2-level
    /// bits for a FIFO domain and ask the VMM to raise its ports. Called
    /// after [`Platform::begin_event_layout_change`]; ends that change.
    fn event_abi_changed(&self, _fifo: bool) {}

    /// A vCPU timer was set or cleared: the VMM's timer service should
    /// call [`Domain::fire_due_timers`] to re-plan.
    fn timers_changed(&self) {}
}

/// Where a domain's event words and grant frames sit, by guest address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventLayout {
    pub shared_info_gfn: u64,
    /// GPA of each vCPU's vcpu_info (registered or the legacy slot).
    pub vcpu_info_gpa: Vec<Option<u64>>,
    /// GFN of each grant frame placed (index = frame number).
    pub grant_frames: Vec<Option<u64>>,
    /// The grant table's version (1 or 2).
    pub grant_version: u32,
    /// GFN of each status frame placed (v2 only).
    pub grant_status_frames: Vec<Option<u64>>,
    /// The layout of shared_info and the vcpu_infos (native or compat).
    pub shared_info_layout: SharedInfoLayout,
}

/// Static facts about the domain, fixed at build time.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    pub domid: u16,
    pub name: String,
    pub nr_vcpus: u32,
    /// RAM ranges as (gpa, bytes).
    pub ram: Vec<(u64, u64)>,
    /// Most pages the domain may hold (maxmem).
    pub max_pages: u64,
    /// The memory map the guest sees (also in hvm_start_info).
    pub memmap: Vec<E820Entry>,
    /// GFN where shared_info lives until the guest places it.
    pub initial_shared_info_gfn: u64,
    /// First GFN of the window for grant frames the guest did not place.
    pub default_grant_gfn: u64,
    pub xen_major: u32,
    pub xen_minor: u32,
    /// 16-byte domain handle (UUID).
    pub handle: [u8; 16],
    /// A classic 64-bit PV domain's read-only M2P, as
    /// XENMEM_machphys_mapping reports it (the VMM places it); `None` for
    /// HVM/PVH, which Xen refuses the call.
    pub pv_machphys_mapping: Option<xen_abi::memory::MachphysMapping>,
    /// The highest event channel port the domain may allocate: xl's
    /// `max_event_channels` (libxl passes it as Xen's `max_evtchn_port`).
    pub max_evtchn_port: u32,
}

impl DomainConfig {
    pub fn ram_pages(&self) -> u64 {
        self.ram.iter().map(|(_, len)| len / PAGE_SIZE as u64).sum()
    }

    pub fn is_ram(&self, gfn: u64) -> bool {
        let gpa = gfn << 12;
        self.ram
            .iter()
            .any(|&(base, len)| gpa >= base && gpa < base + len)
    }

    pub fn max_ram_gfn(&self) -> u64 {
        self.ram
            .iter()
            .map(|&(base, len)| (base + len) >> 12)
            .max()
            .unwrap_or(0)
    }
}

/// Per-vCPU Xen state.
#[derive(Default)]
pub struct VcpuState {
    /// GPA of the registered vcpu_info, if any.
    pub vcpu_info_gpa: Option<u64>,
    /// Per-vCPU upcall vector (HVMOP_set_evtchn_upcall_vector).
    pub upcall_vector: Option<u8>,
    /// Started (BSP, or an AP that has run) and not taken down.
    pub initialised: bool,
    pub online: bool,
    pub singleshot_deadline: Option<u64>,
    pub periodic: Option<(u64, u64)>,
    pub runstate: RunstateInfo,
    pub runstate_gpa: Option<u64>,
    /// The runstate area was registered from 32-bit mode: it has the
    /// 44-byte compat layout.
    pub runstate_compat: bool,
    pub time_area_gpa: Option<u64>,
    /// Guest TSC minus host TSC.
    pub tsc_offset: i64,
}

/// Mutable Xen state of the domain, under one lock.
pub struct DomainState {
    pub params: [u64; HVM_NR_PARAMS as usize],
    pub ports: PortTable,
    pub shared_info_gfn: u64,
    /// True once the guest placed shared_info outside RAM (an overlay).
    pub shared_info_overlay: bool,
    pub vcpus: Vec<VcpuState>,
    pub grants: GrantTable,
    /// RAM GFNs released by the balloon.
    pub ballooned: BTreeSet<u64>,
    pub shutdown_code: Option<u32>,
    /// The vCPU that suspended the domain (SCHEDOP_shutdown with
    /// SHUTDOWN_suspend), until the toolstack saves it or cancels the
    /// suspend. Xen keeps a suspended domain, paused, for the toolstack.
    pub suspended_by: Option<u32>,
    pub vm_assist: u64,
    /// Xen's `has_32bit_shinfo`: the layout latched from the vCPU's mode
    /// (see [`Domain::latch_shared_info_layout`]).
    pub shared_info_layout: SharedInfoLayout,
}

/// One domain as the Xen layer sees it.
pub struct Domain {
    pub cfg: DomainConfig,
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub platform: Box<dyn Platform>,
    pub clock: Clock,
    state: Mutex<DomainState>,
    /// Signalled whenever an event is raised, a vCPU comes online or the
    /// domain stops: blocked and polling vCPUs re-check their condition.
    pub wake: Condvar,
    stopping: AtomicBool,
    /// A save is collecting the vCPUs: waits inside the hypervisor
    /// (SCHEDOP_block/poll) end at once, so every vCPU reaches the paused
    /// guest entry gate with its hypercall answered (see
    /// [`Domain::release_waiters`]).
    releasing_waiters: AtomicBool,
    /// Mirror of each vCPU's `online` flag, read on every exit without
    /// taking the state lock.
    online: Vec<AtomicBool>,
    /// Hypercalls served, for statistics.
    pub hypercalls: AtomicU64,
    /// The FIFO event state once the guest switched to that ABI (None: the
    /// 2-level ABI). Taken only with the state lock held, after it.
    fifo: Mutex<Option<FifoState>>,
}

impl Domain {
    pub fn new(
        cfg: DomainConfig,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        platform: Box<dyn Platform>,
        tsc_khz: u32,
    ) -> Self {
        let cfg_vcpus = cfg.nr_vcpus;
        let mut vcpus: Vec<VcpuState> = (0..cfg.nr_vcpus).map(|_| VcpuState::default()).collect();
        vcpus[0].initialised = true;
        vcpus[0].online = true;
        for v in vcpus.iter_mut() {
            v.runstate.state = RUNSTATE_OFFLINE;
        }
        vcpus[0].runstate.state = RUNSTATE_RUNNING;
        let state = DomainState {
            params: [0; HVM_NR_PARAMS as usize],
            ports: PortTable::new(cfg.nr_vcpus, cfg.max_evtchn_port),
            shared_info_gfn: cfg.initial_shared_info_gfn,
            shared_info_overlay: false,
            vcpus,
            grants: GrantTable::default(),
            ballooned: BTreeSet::new(),
            shutdown_code: None,
            suspended_by: None,
            vm_assist: 0,
            shared_info_layout: SharedInfoLayout::Native,
        };
        let domain = Domain {
            cfg,
            mem,
            platform,
            clock: Clock::new(tsc_khz),
            state: Mutex::new(state),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            releasing_waiters: AtomicBool::new(false),
            online: (0..cfg_vcpus).map(|i| AtomicBool::new(i == 0)).collect(),
            hypercalls: AtomicU64::new(0),
            fifo: Mutex::new(None),
        };
        {
            let st = domain.lock();
            domain.write_wallclock(&st);
        }
        domain
    }

    pub fn lock(&self) -> MutexGuard<'_, DomainState> {
        // A panic while holding the lock is a VMM bug; keep serving the
        // remaining state rather than cascading panics across threads.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn domid(&self) -> u16 {
        self.cfg.domid
    }

    /// Stop the domain: wake every waiter so vCPU threads can exit.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _st = self.lock();
        self.wake.notify_all();
    }

    /// The VM assists the domain enabled (`vm_assist`).
    pub fn enabled_vm_assists(&self) -> u64 {
        self.lock().vm_assist
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// While `release` is true, a vCPU waiting in SCHEDOP_block or
    /// SCHEDOP_poll returns 0 at once, as if woken: a save needs every vCPU
    /// out of its hypercall, and Linux and the test guest treat a block
    /// that returns without an event as a spurious wake-up (they check
    /// their work and block again).
    pub fn release_waiters(&self, release: bool) {
        self.releasing_waiters.store(release, Ordering::SeqCst);
        let _st = self.lock();
        self.wake.notify_all();
    }

    /// Record the guest TSC offset of `vcpu`, measured by the VMM.
    pub fn set_tsc_offset(&self, vcpu: u32, offset: i64) {
        if let Some(v) = self.lock().vcpus.get_mut(vcpu as usize) {
            v.tsc_offset = offset;
        }
    }

    /// Set an HVM parameter from the toolstack side (no guest checks).
    pub fn set_param_privileged(&self, index: u32, value: u64) {
        if let Some(p) = self.lock().params.get_mut(index as usize) {
            *p = value;
        }
    }

    /// Bind a port of this domain to port `remote_port` of `remote_dom`
    /// (standalone mode: the VMM plays Dom0's console and xenstore ends).
    pub fn bind_remote_port(&self, remote_dom: u16, remote_port: u32) -> Result<u32, i64> {
        let mut st = self.lock();
        let port = st.ports.bind_remote(remote_dom, remote_port)?;
        self.publish_port(&st, port);
        Ok(port)
    }

    // ---- Dom0's ends of interdomain channels ------------------------------

    /// Dom0 binds its `dom0_port` to the guest's `guest_port`, which the
    /// guest allocated unbound for domain 0 (Xen's bind_interdomain from
    /// the remote side). -EINVAL if the port is not waiting for Dom0.
    pub fn dom0_bind(&self, guest_port: u32, dom0_port: u32) -> Result<(), i64> {
        let mut st = self.lock();
        st.ports.connect_unbound(guest_port, 0, dom0_port)?;
        self.publish_port(&st, guest_port);
        Ok(())
    }

    /// Dom0 closed `dom0_port`: the guest's end, if still connected to it,
    /// becomes unbound (for Dom0) again, as Xen does.
    pub fn dom0_closed(&self, guest_port: u32, dom0_port: u32) {
        let mut st = self.lock();
        if st.ports.get(guest_port).map(|p| p.state)
            == Ok(PortState::Interdomain {
                remote_dom: 0,
                remote_port: dom0_port,
            })
        {
            st.ports.remote_closed(guest_port, 0);
            self.publish_port(&st, guest_port);
        }
    }

    /// Tell the platform how `port` is routed now.
    pub fn publish_port(&self, st: &DomainState, port: u32) {
        let Ok(entry) = st.ports.get(port) else {
            return;
        };
        let dom0_port = match entry.state {
            PortState::Interdomain {
                remote_dom: 0,
                remote_port,
            } if self.cfg.domid != 0 => remote_port,
            _ => 0,
        };
        self.platform
            .publish_port(port, entry.notify_vcpu, dom0_port);
    }

    /// Tell the platform where the event words and grant frames are.
    pub fn publish_event_layout(&self, st: &DomainState) {
        let layout = EventLayout {
            shared_info_gfn: st.shared_info_gfn,
            vcpu_info_gpa: (0..self.cfg.nr_vcpus)
                .map(|v| self.vcpu_info_gpa(st, v))
                .collect(),
            grant_frames: st.grants.frames.clone(),
            grant_version: st.grants.version,
            grant_status_frames: st.grants.status_frames.clone(),
            shared_info_layout: st.shared_info_layout,
        };
        self.platform.publish_event_layout(&layout);
    }

    /// Tell the platform each vCPU's upcall vector.
    pub fn publish_upcall_vectors(&self, st: &DomainState) {
        for vcpu in 0..self.cfg.nr_vcpus {
            self.platform
                .upcall_vector_changed(vcpu, self.upcall_vector(st, vcpu));
        }
    }

    /// Publish everything the platform mirrors (after construction).
    pub fn publish_routing(&self) {
        let st = self.lock();
        self.publish_event_layout(&st);
        self.publish_upcall_vectors(&st);
        for port in 0..st.ports.len() {
            self.publish_port(&st, port);
        }
    }

    // ---- the 2-level event ABI over guest memory -------------------------

    /// One line per vCPU describing its event state (upcall flags, selector,
    /// vector), plus the first pending and mask words: for diagnosing a
    /// guest that stopped taking events.
    pub fn describe_event_state(&self) -> String {
        let st = self.lock();
        let mem = self.mem.memory();
        let mut out = String::new();
        for vcpu in 0..self.cfg.nr_vcpus {
            let gpa = self.vcpu_info_gpa(&st, vcpu);
            let byte = |off: usize| {
                gpa.and_then(|g| mem.read_obj::<u8>(GuestAddress(g + off as u64)).ok())
            };
            let layout = st.shared_info_layout;
            let sel = gpa.and_then(|g| {
                let at = GuestAddress(g + layout.vcpu_pending_sel() as u64);
                if layout.is_compat() {
                    mem.read_obj::<u32>(at).ok().map(u64::from)
                } else {
                    mem.read_obj::<u64>(at).ok()
                }
            });
            out.push_str(&format!(
                "vcpu{vcpu}: vcpu_info={gpa:x?} upcall_pending={:?} upcall_mask={:?} pending_sel={sel:x?} vector={:?}; ",
                byte(VCPU_INFO_UPCALL_PENDING),
                byte(VCPU_INFO_UPCALL_MASK),
                self.upcall_vector(&st, vcpu)
            ));
        }
        let si = st.shared_info_gfn << 12;
        let layout = st.shared_info_layout;
        let word = |off: usize| {
            let at = GuestAddress(si + off as u64);
            if layout.is_compat() {
                mem.read_obj::<u32>(at).ok().map(u64::from)
            } else {
                mem.read_obj::<u64>(at).ok()
            }
        };
        out.push_str(&format!(
            "{layout:?} layout: pending[0]={:x?} mask[0]={:x?}",
            word(layout.evtchn_pending()),
            word(layout.evtchn_mask())
        ));
        out
    }

    /// GPA of `vcpu`'s vcpu_info: the registered one, else the legacy slot
    /// in shared_info.
    /// Where `vcpu`'s vcpu_info is now (registered with
    /// VCPUOP_register_vcpu_info, or its slot in shared_info).
    pub fn vcpu_info_address(&self, vcpu: u32) -> Option<u64> {
        let st = self.lock();
        self.vcpu_info_gpa(&st, vcpu)
    }

    pub fn vcpu_info_gpa(&self, st: &DomainState, vcpu: u32) -> Option<u64> {
        let v = st.vcpus.get(vcpu as usize)?;
        v.vcpu_info_gpa.or_else(|| {
            ((vcpu as usize) < XEN_LEGACY_MAX_VCPUS).then(|| {
                (st.shared_info_gfn << 12)
                    + (OFFSET_VCPU_INFO + vcpu as usize * VCPU_INFO_SIZE) as u64
            })
        })
    }

    /// Run `f` with the 2-level event words of the domain.
    fn with_event_bits<R>(
        &self,
        st: &DomainState,
        vcpu: u32,
        f: impl FnOnce(&SharedInfoBits, Option<&VcpuEventBits>) -> R,
    ) -> Option<R> {
        let mem = self.mem.memory();
        let si_gpa = st.shared_info_gfn << 12;
        let layout = st.shared_info_layout;
        let words = |offset: usize| {
            event_words(&mem, si_gpa + offset as u64, layout, layout.evtchn_words())
        };
        let si = SharedInfoBits {
            pending: words(layout.evtchn_pending())?,
            mask: words(layout.evtchn_mask())?,
        };
        let vi_gpa = self.vcpu_info_gpa(st, vcpu);
        let vi = vi_gpa.and_then(|gpa| {
            Some(VcpuEventBits {
                upcall_pending: atomic_u8(&mem, gpa + VCPU_INFO_UPCALL_PENDING as u64)?,
                pending_sel: event_words(&mem, gpa + layout.vcpu_pending_sel() as u64, layout, 1)?,
            })
        });
        Some(f(&si, vi.as_ref()))
    }

    /// The upcall vector of `vcpu`: its own, else the CALLBACK_IRQ vector.
    pub fn upcall_vector(&self, st: &DomainState, vcpu: u32) -> Option<u8> {
        if let Some(v) = st.vcpus.get(vcpu as usize).and_then(|v| v.upcall_vector) {
            return Some(v);
        }
        let via = st.params[HVM_PARAM_CALLBACK_IRQ as usize];
        (via >> CALLBACK_VIA_TYPE_SHIFT == CALLBACK_VIA_TYPE_VECTOR).then_some(via as u8)
    }

    /// Deliver the upcall to `vcpu` and wake it if it is blocked.
    pub fn raise_upcall(&self, st: &DomainState, vcpu: u32) {
        if let Some(vector) = self.upcall_vector(st, vcpu) {
            self.platform.raise_upcall(vcpu, vector);
        }
        self.wake.notify_all();
    }

    /// Raise `port` of this domain.
    pub fn send_local(&self, st: &DomainState, port: u32) {
        let Ok(entry) = st.ports.get(port) else {
            return;
        };
        let vcpu = entry.notify_vcpu;
        if let Some(fifo) = self.fifo_lock().as_mut() {
            let mem = self.mem.memory();
            if fifo.set_pending(&mem, vcpu, port) {
                self.mark_events_pending(st, vcpu);
            } else {
                self.wake.notify_all();
            }
            return;
        }
        let raise = self
            .with_event_bits(st, vcpu, |si, vi| evtchn::set_pending(si, vi, port))
            .unwrap_or(false);
        if raise {
            self.raise_upcall(st, vcpu);
        } else {
            // A poller may be waiting for this very port.
            self.wake.notify_all();
        }
    }

    /// Dom0 (standalone: the VMM's own console/xenstore service) notifies
    /// `port` of this domain.
    pub fn notify_from_remote(&self, port: u32) {
        let st = self.lock();
        if matches!(
            st.ports.get(port).map(|p| p.state),
            Ok(PortState::Interdomain { .. })
        ) {
            self.send_local(&st, port);
        }
    }

    /// Whether `port`'s 2-level pending bit is set in shared_info.
    /// A Dom0 backend asked the VMM to raise `port` (FIFO domains): only
    /// a port bound to Dom0 is raised.
    pub fn notify_from_dom0(&self, port: u32) {
        let st = self.lock();
        if self.cfg.domid != 0
            && matches!(
                st.ports.get(port).map(|p| p.state),
                Ok(PortState::Interdomain { remote_dom: 0, .. })
            )
        {
            self.send_local(&st, port);
        }
    }

    pub(crate) fn port_is_pending_2l(&self, st: &DomainState, port: u32) -> bool {
        self.with_event_bits(st, 0, |si, _| evtchn::is_pending(si, port))
            .unwrap_or(false)
    }

    pub fn port_is_pending(&self, st: &DomainState, port: u32) -> bool {
        if let Some(fifo) = self.fifo_lock().as_ref() {
            return fifo.is_pending(&self.mem.memory(), port);
        }
        self.with_event_bits(st, 0, |si, _| evtchn::is_pending(si, port))
            .unwrap_or(false)
    }

    pub fn unmask_port(&self, st: &DomainState, port: u32) {
        let vcpu = st.ports.get(port).map(|p| p.notify_vcpu).unwrap_or(0);
        if let Some(fifo) = self.fifo_lock().as_mut() {
            if fifo.unmask(&self.mem.memory(), vcpu, port) {
                self.mark_events_pending(st, vcpu);
            }
            return;
        }
        if self
            .with_event_bits(st, vcpu, |si, vi| evtchn::unmask(si, vi, port))
            .unwrap_or(false)
        {
            self.raise_upcall(st, vcpu);
        }
    }

    pub fn clear_port(&self, st: &DomainState, port: u32) {
        if let Some(fifo) = self.fifo_lock().as_mut() {
            fifo.clear_port(&self.mem.memory(), port);
            return;
        }
        self.with_event_bits(st, 0, |si, _| evtchn::clear_port(si, port));
    }

    /// The FIFO state (None: 2-level). Callers hold the state lock.
    pub(crate) fn fifo_lock(&self) -> MutexGuard<'_, Option<FifoState>> {
        self.fifo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the domain uses the FIFO event ABI.
    pub fn uses_fifo_events(&self) -> bool {
        self.fifo_lock().is_some()
    }

    /// FIFO: a queue of `vcpu` became ready. Set its
    /// `evtchn_upcall_pending` and raise the upcall if that flag was clear,
    /// as the 2-level ABI does for its selector.
    fn mark_events_pending(&self, st: &DomainState, vcpu: u32) {
        let mem = self.mem.memory();
        let newly = self
            .vcpu_info_gpa(st, vcpu)
            .and_then(|gpa| atomic_u8(&mem, gpa + VCPU_INFO_UPCALL_PENDING as u64))
            .is_some_and(|b| b.swap(1, Ordering::SeqCst) == 0);
        if newly {
            self.raise_upcall(st, vcpu);
        } else {
            self.wake.notify_all();
        }
    }

    /// Whether `vcpu` has its upcall_pending flag set.
    pub fn upcall_pending(&self, st: &DomainState, vcpu: u32) -> bool {
        let mem = self.mem.memory();
        self.vcpu_info_gpa(st, vcpu)
            .and_then(|gpa| atomic_u8(&mem, gpa + VCPU_INFO_UPCALL_PENDING as u64))
            .is_some_and(|b| b.load(Ordering::SeqCst) != 0)
    }

    /// Whether `vcpu` has event delivery masked (`evtchn_upcall_mask`: a
    /// PV guest's virtual interrupt flag, clear).
    pub fn upcall_masked(&self, st: &DomainState, vcpu: u32) -> bool {
        let mem = self.mem.memory();
        self.vcpu_info_gpa(st, vcpu)
            .and_then(|gpa| atomic_u8(&mem, gpa + VCPU_INFO_UPCALL_MASK as u64))
            .is_some_and(|b| b.load(Ordering::SeqCst) != 0)
    }

    /// Clear `vcpu`'s upcall mask (event delivery enabled), as
    /// SCHEDOP_block does.
    pub fn enable_event_delivery(&self, st: &DomainState, vcpu: u32) {
        let mem = self.mem.memory();
        if let Some(b) = self
            .vcpu_info_gpa(st, vcpu)
            .and_then(|gpa| atomic_u8(&mem, gpa + VCPU_INFO_UPCALL_MASK as u64))
        {
            b.store(0, Ordering::SeqCst);
        }
    }

    /// Re-assert a vCPU's upcall if its flag is already set (the guest
    /// enabled delivery or changed the vector while events were waiting).
    /// Deliver `vcpu`'s upcall again if one is pending: for a vCPU whose
    /// local APIC could not take it before (an AP that was not running).
    pub fn reassert_upcall(&self, vcpu: u32) {
        let st = self.lock();
        self.recheck_upcall(&st, vcpu);
    }

    pub fn recheck_upcall(&self, st: &DomainState, vcpu: u32) {
        if self.upcall_pending(st, vcpu) {
            self.raise_upcall(st, vcpu);
        }
    }

    // ---- time ---------------------------------------------------------------

    /// Publish the pvclock record of `vcpu` (vcpu_info.time and the
    /// registered time area).
    pub fn update_vcpu_time(&self, st: &DomainState, vcpu: u32) {
        /// How far in the past the published (TSC, system time) point lies.
        const PUBLISH_MARGIN_US: u64 = 100;
        let Some(v) = st.vcpus.get(vcpu as usize) else {
            return;
        };
        // A point of the same line slightly in the past: a vCPU on another
        // host CPU whose TSC lags this one's by less than the margin still
        // reads a positive delta (a negative one scales to centuries).
        let host = host_tsc().saturating_sub(self.clock.tsc_khz as u64 * PUBLISH_MARGIN_US / 1000);
        let info = VcpuTimeInfo {
            version: 0,
            _pad0: 0,
            tsc_timestamp: (host as i64).wrapping_add(v.tsc_offset) as u64,
            system_time: self.clock.ns_at(host),
            tsc_to_system_mul: self.clock.mul,
            tsc_shift: self.clock.shift,
            flags: PVCLOCK_TSC_STABLE,
            _pad1: [0; 2],
        };
        let mem = self.mem.memory();
        let targets = [
            self.vcpu_info_gpa(st, vcpu)
                .map(|g| g + VCPU_INFO_TIME as u64),
            v.time_area_gpa,
        ];
        for gpa in targets.into_iter().flatten() {
            write_versioned(&mem, gpa, info.as_bytes());
        }
    }

    /// Publish the wallclock (and `arch.max_pfn`) in shared_info, in the
    /// domain's layout.
    pub fn write_wallclock(&self, st: &DomainState) {
        let mem = self.mem.memory();
        let base = st.shared_info_gfn << 12;
        let layout = st.shared_info_layout;
        let (wall_sec, wall_nsec) = self.clock.boot_wall();
        let sec_hi = (wall_sec >> 32) as u32;
        // wc_version precedes wc_sec and wc_nsec in both layouts: one
        // versioned record. Natively wc_sec_hi follows them; in the compat
        // layout it sits in arch_shared_info, written in the same window.
        let mut record = [0u8; 16];
        record[4..8].copy_from_slice(&(wall_sec as u32).to_le_bytes());
        record[8..12].copy_from_slice(&wall_nsec.to_le_bytes());
        let record_len = if layout.is_compat() {
            let _ = mem.write_obj(sec_hi, GuestAddress(base + layout.wc_sec_hi() as u64));
            12
        } else {
            record[12..16].copy_from_slice(&sec_hi.to_le_bytes());
            16
        };
        write_versioned(
            &mem,
            base + layout.wc_version() as u64,
            &record[..record_len],
        );
        let max_pfn = GuestAddress(base + layout.arch_max_pfn() as u64);
        let _ = if layout.is_compat() {
            mem.write_obj(self.cfg.max_ram_gfn().min(u32::MAX as u64) as u32, max_pfn)
        } else {
            mem.write_obj(self.cfg.max_ram_gfn(), max_pfn)
        };
    }

    /// Xen's `hvm_latch_shinfo_size`: when the guest writes the hypercall
    /// page MSR or sets HVM_PARAM_CALLBACK_IRQ, the vCPU's mode decides
    /// the layout of shared_info and the vcpu_infos from then on. A change
    /// rewrites the wallclock in the new layout (Xen converts nothing
    /// else), limits the 2-level port space to the layout's, and tells
    /// Dom0 backends, which set pending bits themselves.
    pub fn latch_shared_info_layout(&self, st: &mut DomainState, long_mode: bool) {
        let layout = SharedInfoLayout::for_mode(long_mode);
        if st.shared_info_layout == layout {
            return;
        }
        info!(
            domid = self.cfg.domid,
            ?layout,
            "shared_info layout latched"
        );
        self.platform.begin_event_layout_change();
        st.shared_info_layout = layout;
        if self.fifo_lock().is_none() {
            st.ports.set_abi_ports(layout.nr_2l_ports());
        }
        self.write_wallclock(st);
        self.publish_event_layout(st);
    }

    /// The layout latched so far.
    pub fn shared_info_layout(&self) -> SharedInfoLayout {
        self.lock().shared_info_layout
    }

    /// Account the runstate of `vcpu` moving to `new_state` and publish it.
    pub fn set_runstate(&self, st: &mut DomainState, vcpu: u32, new_state: u32) {
        let now = self.clock.now_ns();
        let Some(v) = st.vcpus.get_mut(vcpu as usize) else {
            return;
        };
        let rs = &mut v.runstate;
        let old = rs.state as usize;
        if old < 4 {
            rs.time[old] += now.saturating_sub(rs.state_entry_time & !XEN_RUNSTATE_UPDATE);
        }
        rs.state = new_state;
        rs.state_entry_time = now;
        self.publish_runstate(st, vcpu);
    }

    /// Write `vcpu`'s runstate to its registered area.
    pub fn publish_runstate(&self, st: &DomainState, vcpu: u32) {
        let Some(v) = st.vcpus.get(vcpu as usize) else {
            return;
        };
        let Some(gpa) = v.runstate_gpa else {
            return;
        };
        let mem = self.mem.memory();
        let flag = st.vm_assist & (1 << xen_abi::hypercall::VMASST_TYPE_RUNSTATE_UPDATE_FLAG) != 0;
        let entry_offset = if v.runstate_compat {
            COMPAT_RUNSTATE_ENTRY_TIME_OFFSET
        } else {
            RUNSTATE_ENTRY_TIME_OFFSET
        };
        let entry_gpa = gpa + entry_offset as u64;
        if flag {
            let _ = mem.write_obj(
                v.runstate.state_entry_time | XEN_RUNSTATE_UPDATE,
                GuestAddress(entry_gpa),
            );
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        let compat = CompatRunstateInfo::from(v.runstate);
        let bytes = if v.runstate_compat {
            compat.as_bytes()
        } else {
            v.runstate.as_bytes()
        };
        let _ = mem.write_slice(bytes, GuestAddress(gpa));
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Runstate of `vcpu` brought up to now (time in the current state
    /// accounted), as VCPUOP_get_runstate_info reports it.
    pub fn current_runstate(&self, st: &DomainState, vcpu: u32) -> Option<RunstateInfo> {
        let v = st.vcpus.get(vcpu as usize)?;
        let mut rs = v.runstate;
        let now = self.clock.now_ns();
        if (rs.state as usize) < 4 {
            rs.time[rs.state as usize] += now.saturating_sub(rs.state_entry_time);
        }
        rs.state_entry_time = now;
        Some(rs)
    }

    // ---- timers -------------------------------------------------------------

    /// Note that a timer changed so the VMM's timer service re-plans. The
    /// caller holds the state lock, so the re-plan (which takes it) sees
    /// the change.
    pub fn timers_changed(&self, _st: &mut DomainState) {
        self.platform.timers_changed();
    }

    /// Fire the vCPU timers that are due and return how long until the
    /// next one (None: no timer set), for the VMM's timer service, which
    /// waits on a timerfd.
    pub fn fire_due_timers(&self) -> Option<Duration> {
        let mut st = self.lock();
        let now = self.clock.now_ns();
        self.fire_timers(&mut st, now)
            .map(|deadline| Duration::from_nanos(deadline.saturating_sub(now)))
    }

    /// Fire expired timers and return the next deadline.
    fn fire_timers(&self, st: &mut DomainState, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for vcpu in 0..st.vcpus.len() {
            let mut fire = false;
            let v = &mut st.vcpus[vcpu];
            if let Some(deadline) = v.singleshot_deadline {
                if deadline <= now {
                    v.singleshot_deadline = None;
                    fire = true;
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
            if let Some((deadline, period)) = v.periodic {
                if deadline <= now {
                    // Skip missed periods rather than firing a burst.
                    let missed = (now - deadline) / period + 1;
                    let new_deadline = deadline + missed * period;
                    v.periodic = Some((new_deadline, period));
                    next = Some(next.map_or(new_deadline, |n| n.min(new_deadline)));
                    fire = true;
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
            if fire {
                let vcpu = vcpu as u32;
                self.update_vcpu_time(st, vcpu);
                self.publish_runstate(st, vcpu);
                if let Some(port) = st.ports.virq_port(VIRQ_TIMER, vcpu) {
                    self.send_local(st, port);
                }
            }
        }
        next
    }

    // ---- waiting ---------------------------------------------------------------

    /// Block the calling vCPU until `done` holds, the deadline passes or
    /// the domain stops. Returns the re-acquired state.
    ///
    /// The wait has no timeout of its own: every way `done` can become true
    /// signals [`Domain::wake`] under the state lock, which the waiter holds
    /// from its check until it sleeps, so no signal falls in between.
    /// * Events this process raises (EVTCHNOP_send, timers, unmask, Dom0's
    ///   console and xenstore ports) go through [`Domain::send_local`] or
    ///   [`Domain::raise_upcall`], which notify.
    /// * Events raised by Dom0 backends in other processes set the pending
    ///   bits in guest memory directly. They read the vCPU's blocked flag
    ///   after setting the bits, and the caller set it
    ///   ([`Platform::set_blocked`], a full fence) before calling this, so
    ///   either our first check sees the bits or the backend sees the flag
    ///   and writes the VMM's wake eventfd, whose reader notifies under
    ///   the lock.
    /// * vCPUs coming online ([`Domain::set_online`]) and [`Domain::stop`]
    ///   notify under the lock.
    ///
    /// A deadline (SCHEDOP_poll's timeout) is waited for exactly.
    pub fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, DomainState>,
        deadline_ns: Option<u64>,
        mut done: impl FnMut(&Domain, &DomainState) -> bool,
    ) -> MutexGuard<'a, DomainState> {
        loop {
            if done(self, &st)
                || self.is_stopping()
                || self.releasing_waiters.load(Ordering::SeqCst)
            {
                return st;
            }
            st = match deadline_ns {
                None => self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = self.clock.now_ns();
                    if now >= deadline {
                        return st;
                    }
                    self.wake
                        .wait_timeout(st, Duration::from_nanos(deadline - now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Called by the VMM before entering guest mode on `vcpu`: waits while
    /// the vCPU is offline (VCPUOP_down). Returns false if the domain stops.
    pub fn wait_online(&self, vcpu: u32) -> bool {
        if self
            .online
            .get(vcpu as usize)
            .is_some_and(|o| o.load(Ordering::Acquire))
        {
            return !self.is_stopping();
        }
        let st = self.lock();
        let st = self.wait_until(st, None, |_, s| {
            s.vcpus.get(vcpu as usize).is_none_or(|v| v.online)
        });
        drop(st);
        !self.is_stopping()
    }

    /// Whether `vcpu` has been started (the BSP always has).
    pub fn vcpu_initialised(&self, vcpu: u32) -> bool {
        self.lock()
            .vcpus
            .get(vcpu as usize)
            .is_some_and(|v| v.initialised)
    }

    /// An AP has been started (MP wakeup mailbox) or ran for the first time.
    pub fn vcpu_started(&self, vcpu: u32) {
        let mut st = self.lock();
        if let Some(v) = st.vcpus.get_mut(vcpu as usize) {
            if !v.initialised {
                v.initialised = true;
                self.set_online(&mut st, vcpu, true);
                self.set_runstate(&mut st, vcpu, RUNSTATE_RUNNING);
                info!(vcpu, "vCPU started");
            }
        }
        // Its clock, as Xen publishes it when a vCPU is scheduled: a PV
        // kernel reads vcpu_info's time before it asks for anything.
        self.update_vcpu_time(&st, vcpu);
    }

    /// Publish the wallclock and every vCPU's time in shared_info (a PV
    /// domain's is in place from the start; an HVM guest's once it maps
    /// it).
    pub fn publish_clock(&self) {
        let st = self.lock();
        self.write_wallclock(&st);
        for vcpu in 0..self.cfg.nr_vcpus {
            self.update_vcpu_time(&st, vcpu);
        }
    }

    /// Mark `vcpu` initialised (a PV VCPUOP_initialise, served by the
    /// VMM's PV machine): false if it already was, which Xen answers
    /// with -EEXIST. It stays offline until VCPUOP_up.
    pub fn mark_initialised(&self, vcpu: u32) -> bool {
        let mut st = self.lock();
        match st.vcpus.get_mut(vcpu as usize) {
            Some(v) if !v.initialised => {
                v.initialised = true;
                true
            }
            _ => false,
        }
    }

    /// Bring a vCPU online or offline (VCPUOP_up/down, AP start).
    pub fn set_online(&self, st: &mut DomainState, vcpu: u32, online: bool) {
        if let Some(v) = st.vcpus.get_mut(vcpu as usize) {
            v.online = online;
        }
        if let Some(flag) = self.online.get(vcpu as usize) {
            flag.store(online, Ordering::Release);
        }
        self.wake.notify_all();
    }

    /// The guest suspended itself on `vcpu` (SCHEDOP_shutdown with
    /// SHUTDOWN_suspend): record it and tell the VMM, which pauses the
    /// domain before the vCPU runs another instruction. A second request
    /// while suspended changes nothing.
    pub fn request_suspend(&self, vcpu: u32) {
        {
            let mut st = self.lock();
            if st.suspended_by.is_some() {
                return;
            }
            st.suspended_by = Some(vcpu);
        }
        info!(domid = self.cfg.domid, vcpu, "domain suspended itself");
        self.platform.shutdown(SHUTDOWN_SUSPEND);
    }

    /// The vCPU whose SCHEDOP_shutdown(SHUTDOWN_suspend) suspended the
    /// domain, while it is suspended.
    pub fn suspended_by(&self) -> Option<u32> {
        self.lock().suspended_by
    }

    /// The suspend is over in this domain: it was cancelled (a checkpoint,
    /// or a save or migration that failed), and the guest resumes in place.
    pub fn clear_suspended(&self) {
        self.lock().suspended_by = None;
    }

    /// Record a shutdown request from the guest and tell the VMM.
    pub fn request_shutdown(&self, reason: u32) {
        info!(domid = self.cfg.domid, reason, "domain shutdown requested");
        self.platform.shutdown(reason);
    }

    /// Warn once about a guest doing something we do not model.
    pub fn guest_warn(&self, what: &str) {
        warn!(domid = self.cfg.domid, "{what}");
    }
}

/// Write a record whose first u32 is a version: bump to odd, write the
/// body, bump to even, as pvclock readers expect.
/// `count` event words at `gpa` in `layout`'s word size.
fn event_words(
    mem: &GuestMemoryMmap,
    gpa: u64,
    layout: SharedInfoLayout,
    count: usize,
) -> Option<EventWords<'_>> {
    Some(if layout.is_compat() {
        EventWords::Compat(atomic_u32_slice(mem, gpa, count)?)
    } else {
        EventWords::Native(atomic_u64_slice(mem, gpa, count)?)
    })
}

fn write_versioned(mem: &GuestMemoryMmap, gpa: u64, record: &[u8]) {
    let version: u32 = mem.read_obj(GuestAddress(gpa)).unwrap_or(0);
    let odd = (version | 1).wrapping_add(if version & 1 == 1 { 2 } else { 0 });
    let _ = mem.write_obj(odd, GuestAddress(gpa));
    std::sync::atomic::fence(Ordering::SeqCst);
    let _ = mem.write_slice(&record[4..], GuestAddress(gpa + 4));
    std::sync::atomic::fence(Ordering::SeqCst);
    let _ = mem.write_obj(odd.wrapping_add(1), GuestAddress(gpa));
}
