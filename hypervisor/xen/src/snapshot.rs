//! A domain's Xen state as a value that outlives the process (issue 17):
//! event channels and their bindings, where shared_info, each vcpu_info,
//! the runstate and time areas and the grant frames sit, the vCPU timers
//! and runstates, the HVM params, the balloon and the VM assists.
//!
//! [`XenSnapshot`] is plain data with serde derives; the VMM frames it
//! (version, length) in the image. [`Domain::load_snapshot`] treats it as
//! hostile: every number is checked against this domain before anything
//! changes, and a refusal says which field was wrong.

use serde::{Deserialize, Serialize};
use xen_abi::hvm::{HVM_NR_PARAMS, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_PFN};
use xen_abi::vcpu::{RunstateInfo, RUNSTATE_OFFLINE, RUNSTATE_RUNNING};

use crate::domain::Domain;
use crate::evtchn::{Port, PortState, PortTable};
use crate::grant::{MAX_GRANT_FRAMES, MAX_STATUS_FRAMES};

/// One event channel in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSnapshot {
    pub port: u32,
    pub notify_vcpu: u32,
    /// "unbound", "interdomain", "virq" or "ipi".
    pub kind: String,
    #[serde(default)]
    pub remote_dom: u16,
    #[serde(default)]
    pub remote_port: u32,
    #[serde(default)]
    pub virq: u32,
}

/// One vCPU's Xen state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuSnapshot {
    pub vcpu_info_gpa: Option<u64>,
    pub upcall_vector: Option<u8>,
    pub initialised: bool,
    pub online: bool,
    pub singleshot_deadline: Option<u64>,
    pub periodic: Option<(u64, u64)>,
    pub runstate_state: u32,
    pub runstate_entry_time: u64,
    pub runstate_time: [u64; 4],
    pub runstate_gpa: Option<u64>,
    pub runstate_compat: bool,
    pub time_area_gpa: Option<u64>,
}

/// The whole of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XenSnapshot {
    /// System time (ns) when the domain was saved.
    pub system_time_ns: u64,
    pub nr_vcpus: u32,
    /// Non-zero HVM params as (index, value).
    pub params: Vec<(u32, u64)>,
    pub ports: Vec<PortSnapshot>,
    pub shared_info_gfn: u64,
    pub shared_info_overlay: bool,
    pub vcpus: Vec<VcpuSnapshot>,
    pub grant_version: u32,
    /// (frame index, GFN) of each grant frame placed.
    pub grant_frames: Vec<(u32, u64)>,
    /// (frame index, GFN) of each v2 status frame placed.
    pub grant_status_frames: Vec<(u32, u64)>,
    pub ballooned: Vec<u64>,
    pub vm_assist: u64,
    /// The guest had suspended itself (Xen's suspend protocol). Such a
    /// guest sets up its Xen state again when it resumes, as in a new Xen
    /// domain: only the vCPUs' started flags, the HVM params and the
    /// balloon travel; the rest of this record is empty.
    #[serde(default)]
    pub suspended: bool,
    /// The FIFO event state of a domain that switched to the FIFO ABI.
    #[serde(default)]
    pub fifo: Option<crate::evtchn_fifo::FifoSnapshot>,
}

/// Why a snapshot cannot be taken or loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("FIFO event channels: {0}")]
    Fifo(#[from] crate::evtchn_fifo::FifoSnapshotError),
    #[error("the image is for {image} vCPUs, this domain has {domain}")]
    VcpuCount { image: u32, domain: u32 },
    #[error("HVM param {0} is out of range")]
    ParamIndex(u32),
    #[error("event channel {port}: {why}")]
    Port { port: u32, why: String },
    #[error("vCPU {vcpu}: {why}")]
    Vcpu { vcpu: u32, why: String },
    #[error("grant table: {0}")]
    Grants(String),
    #[error("shared_info at GFN {0:#x} is neither RAM nor placeable")]
    SharedInfo(u64),
    #[error("ballooned GFN {0:#x} is not RAM")]
    Balloon(u64),
    #[error("HVM param {param}: the image's guest has its ring at GFN {image:#x}, this domain at {here:#x}")]
    RingFrame { param: u32, image: u64, here: u64 },
}

/// The params that are set, as (index, value).
fn nonzero_params(params: &[u64]) -> Vec<(u32, u64)> {
    params
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0)
        .map(|(i, v)| (i as u32, *v))
        .collect()
}

fn port_snapshot(port: u32, entry: Port) -> PortSnapshot {
    let mut out = PortSnapshot {
        port,
        notify_vcpu: entry.notify_vcpu,
        kind: String::new(),
        remote_dom: 0,
        remote_port: 0,
        virq: 0,
    };
    out.kind = match entry.state {
        PortState::Unbound { remote_dom } => {
            out.remote_dom = remote_dom;
            "unbound"
        }
        PortState::Interdomain {
            remote_dom,
            remote_port,
        } => {
            out.remote_dom = remote_dom;
            out.remote_port = remote_port;
            "interdomain"
        }
        PortState::Virq { virq } => {
            out.virq = virq;
            "virq"
        }
        PortState::Ipi => "ipi",
        PortState::Free | PortState::Reserved => "free",
    }
    .to_string();
    out
}

fn port_state(p: &PortSnapshot) -> Result<PortState, SnapshotError> {
    Ok(match p.kind.as_str() {
        "unbound" => PortState::Unbound {
            remote_dom: p.remote_dom,
        },
        "interdomain" => PortState::Interdomain {
            remote_dom: p.remote_dom,
            remote_port: p.remote_port,
        },
        "virq" => PortState::Virq { virq: p.virq },
        "ipi" => PortState::Ipi,
        other => {
            return Err(SnapshotError::Port {
                port: p.port,
                why: format!("unknown kind {other:?}"),
            })
        }
    })
}

/// A guest-physical address of a `len`-byte area the domain registered:
/// it must lie in RAM (the special window included) in one page.
fn check_area(
    domain: &Domain,
    vcpu: u32,
    what: &str,
    gpa: u64,
    len: u64,
) -> Result<(), SnapshotError> {
    let in_page = gpa & 0xfff;
    let fits = in_page.checked_add(len).is_some_and(|end| end <= 0x1000);
    if !fits || gpa >> 12 > (1 << 40) || !domain.is_guest_memory(gpa >> 12) {
        return Err(SnapshotError::Vcpu {
            vcpu,
            why: format!("{what} at {gpa:#x} is not inside one page of guest memory"),
        });
    }
    Ok(())
}

impl Domain {
    /// The domain's Xen state. The caller has paused the domain, and every
    /// vCPU is out of the hypervisor ([`Domain::release_waiters`]).
    pub fn snapshot(&self) -> Result<XenSnapshot, SnapshotError> {
        if self.suspended_by().is_some() {
            return Ok(self.suspended_snapshot());
        }
        let st = self.lock();
        let fifo = self.fifo_lock().as_ref().map(|f| f.snapshot());
        let vcpus = (0..self.cfg.nr_vcpus)
            .map(|vcpu| {
                let rs = self.current_runstate(&st, vcpu).unwrap_or_default();
                let v = &st.vcpus[vcpu as usize];
                VcpuSnapshot {
                    vcpu_info_gpa: v.vcpu_info_gpa,
                    upcall_vector: v.upcall_vector,
                    initialised: v.initialised,
                    online: v.online,
                    singleshot_deadline: v.singleshot_deadline,
                    periodic: v.periodic,
                    runstate_state: rs.state,
                    runstate_entry_time: rs.state_entry_time,
                    runstate_time: rs.time,
                    runstate_gpa: v.runstate_gpa,
                    runstate_compat: v.runstate_compat,
                    time_area_gpa: v.time_area_gpa,
                }
            })
            .collect();
        let placed = |frames: &[Option<u64>]| {
            frames
                .iter()
                .enumerate()
                .filter_map(|(i, gfn)| gfn.map(|g| (i as u32, g)))
                .collect()
        };
        Ok(XenSnapshot {
            system_time_ns: self.clock.now_ns(),
            nr_vcpus: self.cfg.nr_vcpus,
            params: nonzero_params(&st.params),
            ports: st
                .ports
                .entries()
                .map(|(p, e)| port_snapshot(p, e))
                .collect(),
            shared_info_gfn: st.shared_info_gfn,
            shared_info_overlay: st.shared_info_overlay,
            vcpus,
            grant_version: st.grants.version,
            grant_frames: placed(&st.grants.frames),
            grant_status_frames: placed(&st.grants.status_frames),
            fifo,
            ballooned: st.ballooned.iter().copied().collect(),
            vm_assist: st.vm_assist,
            suspended: false,
        })
    }

    /// A suspended domain's snapshot (see [`XenSnapshot::suspended`]).
    fn suspended_snapshot(&self) -> XenSnapshot {
        let st = self.lock();
        XenSnapshot {
            system_time_ns: self.clock.now_ns(),
            nr_vcpus: self.cfg.nr_vcpus,
            params: nonzero_params(&st.params),
            vcpus: st
                .vcpus
                .iter()
                .map(|v| VcpuSnapshot {
                    initialised: v.initialised,
                    online: v.online,
                    ..Default::default()
                })
                .collect(),
            ballooned: st.ballooned.iter().copied().collect(),
            suspended: true,
            ..Default::default()
        }
    }

    /// Take over a suspended domain's snapshot: this new domain keeps the
    /// Xen state it was built with (the xenstore and console channels and
    /// their params, nothing else bound or placed), which is what the
    /// resuming guest expects of a new Xen domain; the vCPUs the image
    /// started are started here. The rings' frames must be where the
    /// image's guest has them mapped.
    fn load_suspended(&self, snap: &XenSnapshot) -> Result<(), SnapshotError> {
        let mut st = self.lock();
        for index in [HVM_PARAM_STORE_PFN, HVM_PARAM_CONSOLE_PFN] {
            let image = snap
                .params
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(0, |(_, v)| *v);
            let here = st.params.get(index as usize).copied().unwrap_or(0);
            if image != here {
                return Err(SnapshotError::RingFrame {
                    param: index,
                    image,
                    here,
                });
            }
        }
        if let Some(gfn) = snap.ballooned.iter().find(|g| !self.cfg.is_ram(**g)) {
            return Err(SnapshotError::Balloon(*gfn));
        }
        if !snap.vcpus.first().is_some_and(|v| v.initialised) {
            return Err(SnapshotError::Vcpu {
                vcpu: 0,
                why: "the boot vCPU is not started".into(),
            });
        }
        st.ballooned = snap.ballooned.iter().copied().collect();
        // The guest's timers and clock readings are in the system time it
        // suspended at: it goes on from there, not from this domain's
        // start (a minute back, for a guest saved a minute after boot).
        self.clock.continue_from(snap.system_time_ns);
        for (i, v) in snap.vcpus.iter().enumerate() {
            st.vcpus[i].initialised = v.initialised;
            let online = v.initialised && v.online;
            self.set_online(&mut st, i as u32, online);
            let state = if online {
                RUNSTATE_RUNNING
            } else {
                RUNSTATE_OFFLINE
            };
            self.set_runstate(&mut st, i as u32, state);
        }
        Ok(())
    }

    /// Whether `gfn` is RAM or the VMM's special window (a registered
    /// area may sit in either).
    fn is_guest_memory(&self, gfn: u64) -> bool {
        use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend};
        self.mem.memory().address_in_range(GuestAddress(gfn << 12))
    }

    /// Take over a saved domain's Xen state, before any vCPU runs. Every
    /// field is checked first; on an error nothing has changed.
    /// Overlays (shared_info and grant frames outside RAM) are mapped
    /// through the platform; the caller fills their contents afterwards.
    /// A channel to Dom0 must be one this new domain already has, port for
    /// port (the console's and xenstore's, which the VMM sets up at build):
    /// Dom0's other ends did not move with the image.
    pub fn load_snapshot(&self, snap: &XenSnapshot) -> Result<(), SnapshotError> {
        let current: Vec<(u32, Port)> = self.lock().ports.entries().collect();
        let dom0_port_ok = |port: u32, dom0_port: u32| {
            current.iter().any(|(p, e)| {
                *p == port
                    && e.state
                        == PortState::Interdomain {
                            remote_dom: 0,
                            remote_port: dom0_port,
                        }
            })
        };
        if snap.nr_vcpus != self.cfg.nr_vcpus || snap.vcpus.len() != self.cfg.nr_vcpus as usize {
            return Err(SnapshotError::VcpuCount {
                image: snap.vcpus.len() as u32,
                domain: self.cfg.nr_vcpus,
            });
        }
        if snap.suspended {
            return self.load_suspended(snap);
        }
        let mut params = [0u64; HVM_NR_PARAMS as usize];
        for &(index, value) in &snap.params {
            *params
                .get_mut(index as usize)
                .ok_or(SnapshotError::ParamIndex(index))? = value;
        }
        let mut ports = PortTable::new(self.cfg.nr_vcpus, self.cfg.max_evtchn_port);
        // A FIFO domain's ports go past the 2-level ABI's.
        let fifo = match &snap.fifo {
            Some(fifo) => {
                ports.set_abi_ports(xen_abi::event_channel::EVTCHN_FIFO_NR_CHANNELS);
                let is_ram = |gfn| gfn < self.cfg.max_ram_gfn() && self.cfg.is_ram(gfn);
                let state =
                    crate::evtchn_fifo::FifoState::from_snapshot(fifo, self.cfg.nr_vcpus, is_ram)?;
                if fifo.nr_ports < ports.limit() {
                    return Err(
                        crate::evtchn_fifo::FifoSnapshotError::PortCount(fifo.nr_ports).into(),
                    );
                }
                Some(state)
            }
            None => None,
        };
        for p in &snap.ports {
            let state = port_state(p)?;
            if let PortState::Interdomain {
                remote_dom,
                remote_port,
            } = state
            {
                let ok = if remote_dom == self.cfg.domid {
                    true
                } else {
                    remote_dom == 0 && dom0_port_ok(p.port, remote_port)
                };
                if !ok {
                    return Err(SnapshotError::Port {
                        port: p.port,
                        why: format!(
                            "bound to domain {remote_dom} port {remote_port}, which this host has not set up"
                        ),
                    });
                }
            }
            ports
                .restore_entry(
                    p.port,
                    Port {
                        state,
                        notify_vcpu: p.notify_vcpu,
                    },
                )
                .map_err(|errno| SnapshotError::Port {
                    port: p.port,
                    why: format!("refused (errno {errno})"),
                })?;
        }
        // Loopback channels must point at each other.
        for p in &snap.ports {
            if p.kind == "interdomain" && p.remote_dom == self.cfg.domid {
                let back = ports.get(p.remote_port).map(|e| e.state);
                if back
                    != Ok(PortState::Interdomain {
                        remote_dom: self.cfg.domid,
                        remote_port: p.port,
                    })
                {
                    return Err(SnapshotError::Port {
                        port: p.port,
                        why: "loopback peer does not point back".into(),
                    });
                }
            }
        }
        if snap.grant_version != 1 && snap.grant_version != 2 {
            return Err(SnapshotError::Grants(format!(
                "version {}",
                snap.grant_version
            )));
        }
        let frames = |list: &[(u32, u64)], max: u32, what: &str| {
            let mut out = vec![None; max as usize];
            for &(index, gfn) in list {
                let slot = out.get_mut(index as usize).ok_or_else(|| {
                    SnapshotError::Grants(format!("{what} frame {index} out of range"))
                })?;
                if gfn >= 1 << 40 {
                    return Err(SnapshotError::Grants(format!(
                        "{what} frame {index} at GFN {gfn:#x}"
                    )));
                }
                *slot = Some(gfn);
            }
            Ok(out)
        };
        let grant_frames = frames(&snap.grant_frames, MAX_GRANT_FRAMES, "grant")?;
        let status_frames = frames(&snap.grant_status_frames, MAX_STATUS_FRAMES, "status")?;
        if snap.grant_version == 1 && status_frames.iter().any(Option::is_some) {
            return Err(SnapshotError::Grants("status frames in a v1 table".into()));
        }
        if !snap.shared_info_overlay && !self.is_guest_memory(snap.shared_info_gfn) {
            return Err(SnapshotError::SharedInfo(snap.shared_info_gfn));
        }
        if snap.shared_info_overlay && snap.shared_info_gfn >= 1 << 40 {
            return Err(SnapshotError::SharedInfo(snap.shared_info_gfn));
        }
        for &gfn in &snap.ballooned {
            if !self.cfg.is_ram(gfn) {
                return Err(SnapshotError::Balloon(gfn));
            }
        }
        for (i, v) in snap.vcpus.iter().enumerate() {
            let vcpu = i as u32;
            let bad = |why: &str| SnapshotError::Vcpu {
                vcpu,
                why: why.into(),
            };
            if let Some(gpa) = v.vcpu_info_gpa {
                check_area(
                    self,
                    vcpu,
                    "vcpu_info",
                    gpa,
                    xen_abi::shared_info::VCPU_INFO_SIZE as u64,
                )?;
            }
            if let Some(gpa) = v.runstate_gpa {
                check_area(self, vcpu, "runstate area", gpa, 48)?;
            }
            if let Some(gpa) = v.time_area_gpa {
                check_area(self, vcpu, "time area", gpa, 32)?;
            }
            if v.runstate_state > 3 {
                return Err(bad("runstate out of range"));
            }
            if v.upcall_vector.is_some_and(|vector| vector < 0x10) {
                return Err(bad("upcall vector below 0x10"));
            }
            if v.online && !v.initialised {
                return Err(bad("online but never started"));
            }
            if vcpu == 0 && !v.initialised {
                return Err(bad("the boot vCPU is not started"));
            }
            if v.periodic.is_some_and(|(_, period)| period == 0) {
                return Err(bad("periodic timer with period 0"));
            }
        }

        // Checked: apply.
        let mut st = self.lock();
        self.clock.continue_from(snap.system_time_ns);
        self.platform.begin_event_layout_change();
        if st.shared_info_overlay {
            self.platform.unmap_overlay(st.shared_info_gfn);
        }
        for gfn in st
            .grants
            .frames
            .iter()
            .chain(&st.grants.status_frames)
            .flatten()
        {
            self.platform.unmap_overlay(*gfn);
        }
        let map = |gfn: u64, frame| {
            self.platform.map_overlay(gfn, frame).map_err(|errno| {
                SnapshotError::Grants(format!("placing a frame at GFN {gfn:#x}: errno {errno}"))
            })
        };
        if snap.shared_info_overlay {
            map(snap.shared_info_gfn, crate::OverlayFrame::SharedInfo)
                .map_err(|_| SnapshotError::SharedInfo(snap.shared_info_gfn))?;
        }
        for (i, gfn) in grant_frames.iter().enumerate() {
            if let Some(gfn) = gfn.filter(|g| !self.cfg.is_ram(*g)) {
                map(gfn, crate::OverlayFrame::GrantTable(i as u32))?;
            }
        }
        for (i, gfn) in status_frames.iter().enumerate() {
            if let Some(gfn) = gfn.filter(|g| !self.cfg.is_ram(*g)) {
                map(gfn, crate::OverlayFrame::GrantStatus(i as u32))?;
            }
        }
        st.params = params;
        st.ports = ports;
        st.shared_info_gfn = snap.shared_info_gfn;
        st.shared_info_overlay = snap.shared_info_overlay;
        st.grants.version = snap.grant_version;
        st.grants.frames = grant_frames;
        st.grants.status_frames = status_frames;
        st.ballooned = snap.ballooned.iter().copied().collect();
        st.vm_assist = snap.vm_assist;
        let was_fifo = self.uses_fifo_events();
        let is_fifo = fifo.is_some();
        *self.fifo_lock() = fifo;
        if was_fifo != is_fifo {
            // Dom0's backends raise this domain's events by its ABI.
            self.platform.event_abi_changed(is_fifo);
        }
        for (i, v) in snap.vcpus.iter().enumerate() {
            let target = &mut st.vcpus[i];
            target.vcpu_info_gpa = v.vcpu_info_gpa;
            target.upcall_vector = v.upcall_vector;
            target.initialised = v.initialised;
            target.singleshot_deadline = v.singleshot_deadline;
            target.periodic = v.periodic;
            target.runstate = RunstateInfo {
                state: v.runstate_state,
                _pad: 0,
                state_entry_time: v.runstate_entry_time,
                time: v.runstate_time,
            };
            target.runstate_gpa = v.runstate_gpa;
            target.runstate_compat = v.runstate_compat;
            target.time_area_gpa = v.time_area_gpa;
            self.set_online(&mut st, i as u32, v.online);
        }
        self.timers_changed(&mut st);
        drop(st);
        self.publish_routing();
        Ok(())
    }
}
