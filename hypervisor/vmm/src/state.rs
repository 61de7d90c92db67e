//! `save-state` and `load-state` (issue 17): the paused domain's vCPU,
//! platform and Xen state as a [`kxen_vmm_api::image`], and back.
//!
//! Memory is not here: Dom0 copies it through the guest memfd. What the
//! guest cannot see in its RAM is: the in-kernel irqchip and PIT, each
//! vCPU's registers (collected on the vCPU threads, see
//! [`crate::vcpu::snapshot`]), and kxen's Xen state, which goes in the
//! image's Xen-state section in this format (version 1):
//!
//! ```text
//! magic "KXENXST\0" | version u32 = 1 | json length u32 | JSON | pool pages
//! ```
//!
//! The JSON is a [`kxen_xen::snapshot::XenSnapshot`]; after it come the
//! contents of the pool frames the domain placed outside RAM, 4096 bytes
//! each, in this order: shared_info (if placed), then the grant frames,
//! then the status frames, each in index order. Every field is checked by
//! [`kxen_xen::Domain::load_snapshot`] before anything changes.
//!
//! An HVM domain's device models follow the pool pages as a
//! [`kxen_devices::state`] section (the UART, i8042, ACPI PM, PCI
//! configuration, the virtio-mmio transports with their queues' positions,
//! and the syscall bridge's breakpoint on a PVM host); its CMOS clock is
//! Xen's RTC record in the HVM context. A PVH domain has neither.
//!
//! A classic PV domain's M2P changes follow the pool pages instead
//! ([`encode_pv_tail`]), and its PV state goes in the image's own
//! sections: each vCPU as Xen's X86_PV_VCPU_BASIC and _EXTENDED records
//! (`kxen_pv::saved`) and its page tables as PAGE_DATA types. Its vCPUs'
//! KVM state is in the HVM context as for the others. A load pins the
//! saved tables again through the PV MMU, which validates them, and holds
//! each vCPU to what a PV vCPU may be ([`crate::pv::PvMachine::restore`],
//! `boot_cpu::confine_restored_pv_vcpu`).

use std::os::unix::fs::FileExt;
use std::time::Duration;

use kxen_devices::state::BridgeBreakpoint;
use kxen_stream::hvm_context::{self, HvmContextBuilder};
use kxen_vmm_api::image::{self, TscInfo, VmmImage};
use kxen_xen::snapshot::XenSnapshot;
use kxen_xen::OverlayFrame;
use xen_abi::hvm_save::*;
use zerocopy::IntoBytes;

use crate::control::ControlHandles;
use crate::save::kvm::{read_platform_state, write_platform_state, KvmPlatformState};
use crate::save::{irq, platform, rtc};
use crate::vcpu::snapshot::{VcpuEntry, VcpuJob};

const XEN_STATE_MAGIC: &[u8; 8] = b"KXENXST\0";
const XEN_STATE_VERSION: u32 = 1;
/// How long a save waits for every vCPU to come out of the guest.
const VCPU_DEADLINE: Duration = Duration::from_secs(5);
const PAGE: usize = 4096;

/// Why a save or load failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the domain must be paused")]
    NotPaused,
    #[error("the domain has not suspended itself")]
    NotSuspended,
    #[error("{0}")]
    Vcpus(#[from] crate::vcpu::gate::JobError),
    #[error("vCPU {0}: {1}")]
    Vcpu(u32, String),
    #[error("irqchip/PIT: {0}")]
    Platform(String),
    #[error("{0}")]
    Image(#[from] kxen_vmm_api::image::ImageError),
    #[error("HVM context: {0}")]
    Context(String),
    #[error("Xen state: {0}")]
    XenState(String),
    #[error("Xen state: {0}")]
    Snapshot(#[from] kxen_xen::snapshot::SnapshotError),
    #[error("the image's TSC runs at {image} kHz, this host's at {host} kHz")]
    TscRate { image: u32, host: u32 },
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
    #[error("{0}")]
    Devices(#[from] kxen_devices::state::DeviceStateError),
    #[error("RTC record: {0}")]
    Rtc(#[from] rtc::RtcLoadError),
    #[error("PV state: {0}")]
    Pv(String),
    #[error("PV state: {0}")]
    PvRestore(#[from] crate::pv::PvRestoreError),
    #[error("virtio slot {slot} queue {queue}: its used ring at {gpa:#x} is not in guest RAM")]
    UsedRing { slot: usize, queue: usize, gpa: u64 },
}

/// The used ring's index of a queue whose ring starts at `used` (the
/// `idx` field after `flags`), read from guest memory.
fn used_index(h: &ControlHandles, used: u64) -> Option<u16> {
    let gpa = used.checked_add(2)?;
    // Both bytes in one page (the ring is 4-byte aligned in a sane guest).
    if gpa & 0xfff == 0xfff {
        return None;
    }
    let offset = h.memory.memfd_offset(gpa)?;
    let mut idx = [0u8; 2];
    h.memory.memfd.read_exact_at(&mut idx, offset).ok()?;
    Some(u16::from_le_bytes(idx))
}

/// The HVM device models' section, with each running virtio queue's
/// positions. kxend quiesced its backends before this save: every request
/// they took is answered, so the next avail entry to take and the next used
/// entry to fill are both the used ring's index.
fn save_devices(h: &ControlHandles, hvm: &crate::hvm::HvmDevices) -> Result<Vec<u8>, StateError> {
    let mut state = hvm.save_devices();
    for (slot, saved) in state.virtio.iter_mut() {
        if !saved.activated {
            continue;
        }
        let slot = usize::from(*slot);
        for (queue, q) in saved.queues.iter_mut().enumerate() {
            if !q.ready {
                continue;
            }
            let idx = used_index(h, q.device).ok_or(StateError::UsedRing {
                slot,
                queue,
                gpa: q.device,
            })?;
            q.indices = kxen_devices::virtio_mmio::QueueIndices {
                next_avail: idx,
                next_used: idx,
            };
        }
    }
    state.syscall_bridge = h
        .syscall_bridge
        .as_ref()
        .and_then(|b| b.planted())
        .map(|p| BridgeBreakpoint {
            handler: p.handler,
            gpa: p.gpa,
            original: p.original,
        });
    Ok(kxen_devices::state::encode(&state))
}

/// Check a saved syscall-bridge breakpoint against the loaded guest
/// memory (hostile input: the address and the byte are the image's): the
/// handler's first bytes, the displaced byte back in place, must lie in
/// RAM and start with an instruction the bridge steps over.
fn check_breakpoint(h: &ControlHandles, b: &BridgeBreakpoint) -> Result<(), StateError> {
    let bad = |why: &str| StateError::XenState(format!("syscall bridge at {:#x}: {why}", b.gpa));
    let mut head = [0u8; 8];
    if b.gpa & 0xfff > 0x1000 - head.len() as u64 || !h.memory.is_ram(b.gpa >> 12) {
        return Err(bad("not in guest RAM"));
    }
    let offset = h
        .memory
        .memfd_offset(b.gpa)
        .ok_or_else(|| bad("not in guest RAM"))?;
    h.memory
        .memfd
        .read_exact_at(&mut head, offset)
        .map_err(StateError::Memory)?;
    head[0] = b.original;
    if crate::syscall_bridge::Displaced::decode(&head).is_none() {
        return Err(bad(
            "the handler starts with an instruction the bridge does not step over",
        ));
    }
    Ok(())
}

/// Give the bridge the source's breakpoint; a domain without a bridge
/// (a host with VT-x or SVM) gets the displaced byte back instead.
fn restore_breakpoint(h: &ControlHandles, b: &BridgeBreakpoint) -> Result<(), StateError> {
    const INT3: u8 = 0xcc;
    let offset = h
        .memory
        .memfd_offset(b.gpa)
        .ok_or_else(|| StateError::XenState("syscall bridge: not in guest RAM".into()))?;
    let byte = match &h.syscall_bridge {
        Some(bridge) => {
            bridge.restore(crate::syscall_bridge::Planted {
                handler: b.handler,
                gpa: b.gpa,
                original: b.original,
            });
            INT3
        }
        None => b.original,
    };
    h.memory
        .memfd
        .write_all_at(&[byte], offset)
        .map_err(StateError::Memory)
}

/// The pool frames a snapshot has contents for, in image order.
fn pool_frames(snap: &XenSnapshot, is_ram: impl Fn(u64) -> bool) -> Vec<OverlayFrame> {
    let mut out = Vec::new();
    if snap.shared_info_overlay {
        out.push(OverlayFrame::SharedInfo);
    }
    out.extend(
        snap.grant_frames
            .iter()
            .filter(|(_, gfn)| !is_ram(*gfn))
            .map(|(i, _)| OverlayFrame::GrantTable(*i)),
    );
    out.extend(
        snap.grant_status_frames
            .iter()
            .filter(|(_, gfn)| !is_ram(*gfn))
            .map(|(i, _)| OverlayFrame::GrantStatus(*i)),
    );
    out
}

/// vCPUs with KVM state: those that have been started.
fn started_vcpus(h: &ControlHandles) -> Vec<u32> {
    let st = h.domain.lock();
    st.vcpus
        .iter()
        .enumerate()
        .filter(|(_, v)| v.initialised)
        .map(|(i, _)| i as u32)
        .collect()
}

/// `resume-suspended`: cancel the paused guest's suspend, as Xen's
/// xc_domain_resume does for a checkpoint or a failed save: the suspending
/// vCPU's SCHEDOP_shutdown returns 1 ("cancelled"), so the guest resumes
/// in place with its Xen state and its devices as they were.
pub fn cancel_suspend(h: &ControlHandles) -> Result<(), StateError> {
    if !h.pauser.is_paused() {
        return Err(StateError::NotPaused);
    }
    let vcpu = h.domain.suspended_by().ok_or(StateError::NotSuspended)?;
    // Make sure the suspending vCPU left its hypercall for the gate.
    h.pauser.pause();
    h.domain.release_waiters(true);
    let results = h
        .pauser
        .gate
        .run_jobs(vec![(vcpu, VcpuJob::SetHypercallReturn(1))], VCPU_DEADLINE);
    h.domain.release_waiters(false);
    for (vcpu, result) in results? {
        result.map_err(|e| StateError::Vcpu(vcpu, e))?;
    }
    h.domain.clear_suspended();
    Ok(())
}

/// The paused domain's state.
pub fn save(h: &ControlHandles) -> Result<Vec<u8>, StateError> {
    if !h.pauser.is_paused() {
        return Err(StateError::NotPaused);
    }
    // Every vCPU out of its hypercall and at the gate, then the vCPUs'
    // own state from their threads.
    h.domain.release_waiters(true);
    let jobs = started_vcpus(h)
        .into_iter()
        .map(|v| (v, VcpuJob::Save))
        .collect();
    let results = h.pauser.gate.run_jobs(jobs, VCPU_DEADLINE);
    h.domain.release_waiters(false);
    let mut per_vcpu: Vec<(u32, Vec<VcpuEntry>)> = Vec::new();
    for (vcpu, result) in results? {
        per_vcpu.push((vcpu, result.map_err(|e| StateError::Vcpu(vcpu, e))?));
    }
    let xen = h.domain.snapshot()?;
    let pv_vcpus = match &h.pv {
        Some(pv) => pv_vcpu_records(pv, &per_vcpu)?,
        None => Vec::new(),
    };

    let kvm_platform =
        read_platform_state(h.memory.vm()).map_err(|e| StateError::Platform(e.to_string()))?;
    let mut entries: Vec<(u16, u16, Vec<u8>)> = Vec::new();
    for (vcpu, list) in per_vcpu {
        for (code, body) in list {
            entries.push((code, vcpu as u16, body));
        }
    }
    for chip in 0..2 {
        let pic = platform::save_pic(&kvm_platform.pics[chip], chip)
            .map_err(|e| StateError::Platform(e.to_string()))?;
        entries.push((HVM_SAVE_CODE_PIC, chip as u16, pic.as_bytes().to_vec()));
    }
    let ioapic = platform::save_ioapic(&kvm_platform.ioapic);
    entries.push((HVM_SAVE_CODE_IOAPIC, 0, ioapic.as_bytes().to_vec()));
    let pit =
        platform::save_pit(&kvm_platform.pit).map_err(|e| StateError::Platform(e.to_string()))?;
    entries.push((HVM_SAVE_CODE_PIT, 0, pit.as_bytes().to_vec()));
    let (pci_irqs, isa_irqs, pci_link) = irq::save_irq_records();
    entries.push((HVM_SAVE_CODE_PCI_IRQ, 0, pci_irqs.as_bytes().to_vec()));
    entries.push((HVM_SAVE_CODE_ISA_IRQ, 0, isa_irqs.as_bytes().to_vec()));
    entries.push((HVM_SAVE_CODE_PCI_LINK, 0, pci_link.as_bytes().to_vec()));
    if let Some(hvm) = &h.hvm {
        let clock = hvm
            .cmos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save_clock();
        let record = rtc::save_rtc(&clock);
        entries.push((HVM_SAVE_CODE_RTC, 0, record.as_bytes().to_vec()));
    }
    // Xen writes them by type, then instance.
    entries.sort_by_key(|(code, instance, _)| (*code, *instance));
    let tsc_khz = h.domain.clock.tsc_khz;
    let mut builder = HvmContextBuilder::new(&SaveHeader {
        magic: HVM_FILE_MAGIC,
        version: HVM_FILE_VERSION,
        changeset: 0,
        cpuid: host_cpuid_signature(),
        gtsc_khz: tsc_khz,
    });
    for (code, instance, body) in &entries {
        builder
            .push_bytes(*code, *instance, body)
            .map_err(|e| StateError::Context(e.to_string()))?;
    }

    let mut xen_state = encode_xen_state(&xen)?;
    for frame in pool_frames(&xen, |gfn| h.memory.is_ram(gfn)) {
        let mut page = [0u8; PAGE];
        h.memory
            .memfd
            .read_exact_at(&mut page, h.memory.layout.pool_offset(frame))
            .map_err(StateError::Memory)?;
        xen_state.extend_from_slice(&page);
    }
    if let Some(hvm) = &h.hvm {
        xen_state.extend_from_slice(&save_devices(h, hvm)?);
    }
    let mut pv_page_types = Vec::new();
    if let Some(pv) = &h.pv {
        xen_state.extend_from_slice(&encode_pv_tail(&pv.m2p_changes()));
        pv_page_types = page_type_entries(pv);
    }
    Ok(image::encode(&VmmImage {
        pv_vcpus,
        pv_page_types,
        hvm_context: builder.finish(),
        hvm_params: xen.params.iter().map(|&(i, v)| (i as u64, v)).collect(),
        tsc: TscInfo {
            mode: 0,
            khz: tsc_khz,
            nsec: xen.system_time_ns,
            incarnation: 0,
        },
        xen_state,
    }))
}

/// The PV section after the pool pages (a classic PV domain's only):
/// the M2P entries the guest changed from the identity.
///
/// ```text
/// magic "KXENPV\0\0" | count u32 | 0 u32 | count x (mfn u64, pfn u64)
/// ```
const PV_TAIL_MAGIC: &[u8; 8] = b"KXENPV\0\0";

fn encode_pv_tail(m2p: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 16 * m2p.len());
    out.extend_from_slice(PV_TAIL_MAGIC);
    out.extend_from_slice(&(m2p.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (mfn, pfn) in m2p {
        out.extend_from_slice(&mfn.to_le_bytes());
        out.extend_from_slice(&pfn.to_le_bytes());
    }
    out
}

/// The M2P changes of a PV tail (hostile bytes), each entry a frame of
/// the domain's (checked again by the PV MMU).
fn parse_pv_tail(bytes: &[u8], nr_frames: u64) -> Result<Vec<(u64, u64)>, StateError> {
    let bad = |why: String| StateError::Pv(why);
    if bytes.len() < 16 || &bytes[..8] != PV_TAIL_MAGIC {
        return Err(bad("no PV section after the pool pages".into()));
    }
    let count = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    if bytes[12..16] != [0; 4] {
        return Err(bad("reserved bits set in the PV section".into()));
    }
    let body = &bytes[16..];
    if body.len() != count.saturating_mul(16) || count as u64 > nr_frames {
        return Err(bad(format!("{count} M2P entries in {} bytes", body.len())));
    }
    Ok(body
        .chunks_exact(16)
        .map(|e| {
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
            (word(&e[..8]), word(&e[8..]))
        })
        .collect())
}

/// The most frames a PV domain here has (its PV MMU's frame count).
fn pv_max_frames(h: &ControlHandles) -> u64 {
    h.pv.as_ref().map_or(0, |pv| pv.max_frame())
}

/// A page table as a PAGE_DATA pfn entry: the frame, and its level in
/// bits 63:60, with bit 63 set when the guest pinned it (libxc's
/// XEN_DOMCTL_PFINFO_LPINTAB).
fn page_type_entry(mfn: u64, level: kxen_pv::PtLevel, pinned: bool) -> u64 {
    let level = match level {
        kxen_pv::PtLevel::L1 => 1u64,
        kxen_pv::PtLevel::L2 => 2,
        kxen_pv::PtLevel::L3 => 3,
        kxen_pv::PtLevel::L4 => 4,
    };
    mfn | (level | if pinned { 8 } else { 0 }) << 60
}

/// The PV domain's page tables as PAGE_DATA entries.
pub fn page_type_entries(pv: &crate::pv::PvMachine) -> Vec<u64> {
    pv.page_tables()
        .into_iter()
        .map(|(mfn, level, pinned)| page_type_entry(mfn, level, pinned))
        .collect()
}

/// The pinned tables of a restore's PAGE_DATA types (hostile: the frames
/// are checked when the PV MMU pins them).
fn pinned_tables(entries: &[u64]) -> Vec<(u64, kxen_pv::PtLevel)> {
    entries
        .iter()
        .filter_map(|&e| {
            let level = match e >> 60 {
                0x9 => kxen_pv::PtLevel::L1,
                0xa => kxen_pv::PtLevel::L2,
                0xb => kxen_pv::PtLevel::L3,
                0xc => kxen_pv::PtLevel::L4,
                _ => return None,
            };
            Some((e & ((1 << 52) - 1), level))
        })
        .collect()
}

/// Each saved vCPU's X86_PV_VCPU_BASIC and _EXTENDED records, with the
/// registers from its CPU entry.
fn pv_vcpu_records(
    pv: &crate::pv::PvMachine,
    per_vcpu: &[(u32, Vec<VcpuEntry>)],
) -> Result<Vec<image::PvVcpuRecords>, StateError> {
    use zerocopy::FromBytes;
    let mut out = Vec::new();
    for (vcpu, entries) in per_vcpu {
        let cpu = entries
            .iter()
            .find(|(code, _)| *code == HVM_SAVE_CODE_CPU)
            .and_then(|(_, body)| HwCpu::read_from_bytes(body).ok())
            .ok_or_else(|| StateError::Vcpu(*vcpu, "no CPU entry".into()))?;
        let regs = kxen_pv::SavedRegs {
            gprs: [
                cpu.r15, cpu.r14, cpu.r13, cpu.r12, cpu.rbp, cpu.rbx, cpu.r11, cpu.r10, cpu.r9,
                cpu.r8, cpu.rax, cpu.rcx, cpu.rdx, cpu.rsi, cpu.rdi,
            ],
            rip: cpu.rip,
            rsp: cpu.rsp,
            rflags: cpu.rflags,
            cs: cpu.cs_sel as u16,
            ss: cpu.ss_sel as u16,
            ds: cpu.ds_sel as u16,
            es: cpu.es_sel as u16,
            fs: cpu.fs_sel as u16,
            gs: cpu.gs_sel as u16,
        };
        let saved = pv
            .saved_vcpu(*vcpu, regs, &cpu.fpu_regs)
            .ok_or_else(|| StateError::Vcpu(*vcpu, "no PV state".into()))?;
        out.push(image::PvVcpuRecords {
            vcpu: *vcpu,
            basic: saved.encode_basic(),
            extended: saved.encode_extended(*vcpu),
        });
    }
    Ok(out)
}

/// Tell the resuming PV guest where its rings are in this new domain,
/// as libxc's restore does: in the start_info page the suspending vCPU
/// named (its rdx at SCHEDOP_shutdown, `start_info_pfn`), the xenstore
/// and console frames and event channels, and shared_info's address.
fn update_start_info(
    h: &ControlHandles,
    pv: &crate::pv::PvMachine,
    start_info_pfn: u64,
) -> Result<(), StateError> {
    use xen_abi::hvm::{
        HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN,
        HVM_PARAM_STORE_PFN,
    };
    use xen_abi::pv::StartInfo;
    use zerocopy::FromBytes;
    if !h.memory.is_ram(start_info_pfn) {
        return Err(StateError::Pv(format!(
            "start_info frame {start_info_pfn:#x} is not RAM"
        )));
    }
    let param = |index: u32| {
        h.domain
            .lock()
            .params
            .get(index as usize)
            .copied()
            .unwrap_or(0)
    };
    let offset = h
        .memory
        .memfd_offset(start_info_pfn << 12)
        .ok_or_else(|| StateError::Pv(format!("start_info frame {start_info_pfn:#x}")))?;
    let mut page = [0u8; PAGE];
    h.memory
        .memfd
        .read_exact_at(&mut page, offset)
        .map_err(StateError::Memory)?;
    let size = std::mem::size_of::<StartInfo>();
    let mut info = StartInfo::read_from_bytes(&page[..size])
        .map_err(|_| StateError::Pv("start_info".into()))?;
    info.shared_info = pv.shared_info_gpa();
    info.store_mfn = param(HVM_PARAM_STORE_PFN);
    info.store_evtchn = param(HVM_PARAM_STORE_EVTCHN) as u32;
    info.console_mfn = param(HVM_PARAM_CONSOLE_PFN);
    info.console_evtchn = param(HVM_PARAM_CONSOLE_EVTCHN) as u32;
    h.memory
        .memfd
        .write_all_at(info.as_bytes(), offset)
        .map_err(StateError::Memory)?;
    Ok(())
}

fn host_cpuid_signature() -> u32 {
    core::arch::x86_64::__cpuid(1).eax
}

/// The Xen-state section's header and JSON for `snap`; the pool pages
/// go after it.
pub fn encode_xen_state(snap: &XenSnapshot) -> Result<Vec<u8>, StateError> {
    let json = serde_json::to_vec(snap).map_err(|e| StateError::XenState(e.to_string()))?;
    let json_len = u32::try_from(json.len())
        .map_err(|_| StateError::XenState("the snapshot's JSON is over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(16 + json.len());
    out.extend_from_slice(XEN_STATE_MAGIC);
    out.extend_from_slice(&XEN_STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Split the Xen-state section (hostile: from a restore image) into the
/// snapshot and its pool pages.
pub fn parse_xen_state(bytes: &[u8]) -> Result<(XenSnapshot, &[u8]), StateError> {
    let bad = |why: &str| StateError::XenState(why.to_string());
    if bytes.len() < 16 || &bytes[..8] != XEN_STATE_MAGIC {
        return Err(bad("bad magic or truncated header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != XEN_STATE_VERSION {
        return Err(StateError::XenState(format!(
            "version {version} (this kxen reads {XEN_STATE_VERSION})"
        )));
    }
    let json_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()) as usize;
    let json = bytes
        .get(16..16usize.saturating_add(json_len))
        .ok_or_else(|| bad("the JSON runs past the section"))?;
    let snap: XenSnapshot =
        serde_json::from_slice(json).map_err(|e| StateError::XenState(e.to_string()))?;
    Ok((snap, &bytes[16 + json_len..]))
}

/// Load `bytes` onto the paused, never-run domain.
pub fn load(h: &ControlHandles, bytes: &[u8]) -> Result<(), StateError> {
    if !h.pauser.is_paused() {
        return Err(StateError::NotPaused);
    }
    let image = image::parse(bytes)?;
    let host_khz = h.domain.clock.tsc_khz;
    if image.tsc.khz != host_khz {
        return Err(StateError::TscRate {
            image: image.tsc.khz,
            host: host_khz,
        });
    }
    let (snap, pages) = parse_xen_state(&image.xen_state)?;
    let frames = pool_frames(&snap, |gfn| h.memory.is_ram(gfn));
    if pages.len() < frames.len() * PAGE {
        return Err(StateError::XenState(format!(
            "{} bytes of pool pages for {} frames",
            pages.len(),
            frames.len()
        )));
    }
    let (pages, device_section) = pages.split_at(frames.len() * PAGE);
    // An HVM domain's device models come with it; a PVH domain has none.
    let devices = match (&h.hvm, device_section.is_empty()) {
        (Some(hvm), false) => {
            let state = kxen_devices::state::parse(device_section)?;
            hvm.check_devices(&state)?;
            if let Some(b) = &state.syscall_bridge {
                check_breakpoint(h, b)?;
            }
            Some(state)
        }
        (Some(_), true) => {
            return Err(StateError::XenState(
                "no device state for an HVM domain".into(),
            ))
        }
        (None, true) => None,
        (None, false) if h.pv.is_some() => None,
        (None, false) => {
            return Err(StateError::XenState(format!(
                "{} bytes after the pool pages of a domain without device models",
                device_section.len()
            )))
        }
    };
    // A classic PV domain's own state: the M2P changes after the pool
    // pages, each vCPU's PV records, the pinned tables. All of it is
    // parsed here; the PV MMU checks the frames when it takes them.
    let pv_state = match (&h.pv, image.is_pv()) {
        (Some(_), true) => {
            let m2p = parse_pv_tail(device_section, pv_max_frames(h))?;
            let mut vcpus = Vec::new();
            for records in &image.pv_vcpus {
                let saved = kxen_pv::SavedVcpu::parse(&records.basic, &records.extended)
                    .map_err(|e| StateError::Vcpu(records.vcpu, e.to_string()))?;
                vcpus.push((records.vcpu, saved));
            }
            Some((m2p, vcpus, pinned_tables(&image.pv_page_types)))
        }
        (None, false) => None,
        (Some(_), false) => return Err(StateError::Pv("the image is not a PV domain's".into())),
        (None, true) => return Err(StateError::Pv("the image is a PV domain's".into())),
    };
    let mut clock = None;
    let context =
        hvm_context::parse(&image.hvm_context).map_err(|e| StateError::Context(e.to_string()))?;
    if context.header.magic != HVM_FILE_MAGIC || context.header.version != HVM_FILE_VERSION {
        return Err(StateError::Context("bad header magic or version".into()));
    }
    let nr_vcpus = h.domain.cfg.nr_vcpus;
    let mut per_vcpu: Vec<Vec<VcpuEntry>> = vec![Vec::new(); nr_vcpus as usize];
    let mut kvm_platform = KvmPlatformState::default();
    let mut seen_platform = Vec::new();
    let platform_err = |e: &dyn std::fmt::Display| StateError::Platform(e.to_string());
    for entry in &context.entries {
        let code = entry.typecode;
        match code {
            HVM_SAVE_CODE_CPU
            | HVM_SAVE_CODE_LAPIC
            | HVM_SAVE_CODE_LAPIC_REGS
            | HVM_SAVE_CODE_MTRR
            | HVM_SAVE_CODE_CPU_XSAVE => {
                let list = per_vcpu.get_mut(entry.instance as usize).ok_or_else(|| {
                    StateError::Context(format!(
                        "entry type {code} for vCPU {} of a {nr_vcpus}-vCPU domain",
                        entry.instance
                    ))
                })?;
                list.push((code, entry.data.to_vec()));
                continue;
            }
            _ => {}
        }
        if seen_platform.contains(&(code, entry.instance)) {
            return Err(StateError::Context(format!(
                "entry type {code} instance {} twice",
                entry.instance
            )));
        }
        seen_platform.push((code, entry.instance));
        fn read<T: zerocopy::FromBytes>(
            entry: &hvm_context::HvmContextEntry<'_>,
            what: &str,
        ) -> Result<T, StateError> {
            entry
                .read_as()
                .map_err(|e| StateError::Context(format!("{what}: {e}")))
        }
        match (code, entry.instance) {
            (HVM_SAVE_CODE_PIC, chip @ (0 | 1)) => {
                kvm_platform.pics[chip as usize] =
                    platform::load_pic(&read(entry, "PIC")?, chip as usize)
                        .map_err(|e| platform_err(&e))?;
            }
            (HVM_SAVE_CODE_IOAPIC, 0) => {
                kvm_platform.ioapic =
                    platform::load_ioapic(&read(entry, "IOAPIC")?).map_err(|e| platform_err(&e))?;
            }
            (HVM_SAVE_CODE_PIT, 0) => {
                kvm_platform.pit =
                    platform::load_pit(&read(entry, "PIT")?).map_err(|e| platform_err(&e))?;
            }
            (HVM_SAVE_CODE_PCI_IRQ | HVM_SAVE_CODE_ISA_IRQ | HVM_SAVE_CODE_PCI_LINK, 0) => {}
            (HVM_SAVE_CODE_RTC, 0) if h.hvm.is_some() => {
                clock = Some(rtc::load_rtc_entry(entry.data)?);
            }
            (code, instance) => {
                return Err(StateError::Context(format!(
                    "unexpected entry type {code} instance {instance}"
                )))
            }
        }
    }
    let irq_entry = |code| {
        context
            .entries
            .iter()
            .find(|e| e.typecode == code)
            .ok_or_else(|| StateError::Context(format!("no entry of type {code}")))
    };
    irq::load_irq_records(
        &irq_entry(HVM_SAVE_CODE_PCI_IRQ)?
            .read_as()
            .map_err(|e| StateError::Context(e.to_string()))?,
        &irq_entry(HVM_SAVE_CODE_ISA_IRQ)?
            .read_as()
            .map_err(|e| StateError::Context(e.to_string()))?,
        &irq_entry(HVM_SAVE_CODE_PCI_LINK)?
            .read_as()
            .map_err(|e| StateError::Context(e.to_string()))?,
    )
    .map_err(|e| StateError::Context(e.to_string()))?;
    for code in [HVM_SAVE_CODE_PIC, HVM_SAVE_CODE_IOAPIC, HVM_SAVE_CODE_PIT] {
        if !seen_platform.iter().any(|(c, _)| *c == code) {
            return Err(StateError::Context(format!("no entry of type {code}")));
        }
    }
    if h.hvm.is_some() && clock.is_none() {
        return Err(StateError::Context(format!(
            "no entry of type {HVM_SAVE_CODE_RTC} for an HVM domain"
        )));
    }
    // vCPUs the image started must have their state; the others must not.
    for (vcpu, v) in snap.vcpus.iter().enumerate() {
        let has = !per_vcpu.get(vcpu).is_none_or(Vec::is_empty);
        if v.initialised != has {
            return Err(StateError::Context(format!(
                "vCPU {vcpu}: started {} but {} CPU state",
                v.initialised,
                if has { "has" } else { "has no" }
            )));
        }
    }
    for entries in &per_vcpu {
        if entries.is_empty() {
            continue;
        }
        // Each kind once, checked again by the vCPU before any write.
        let xsave = entries
            .iter()
            .find(|(c, _)| *c == HVM_SAVE_CODE_CPU_XSAVE)
            .map(|(_, b)| b.len());
        if xsave.is_some_and(|len| len < std::mem::size_of::<HwCpuXsave>()) {
            return Err(StateError::Context("CPU_XSAVE entry too short".into()));
        }
    }

    // Checked as far as it can be without KVM: the Xen state (which checks
    // itself before changing anything), then the vCPU (KVM's own checks),
    // then the platform and the pool pages.
    if let Some((_, vcpus, _)) = &pv_state {
        // Each started vCPU has its PV records, and only those.
        for (vcpu, entries) in per_vcpu.iter().enumerate() {
            let has = vcpus.iter().any(|(v, _)| *v == vcpu as u32);
            if has == entries.is_empty() {
                return Err(StateError::Vcpu(
                    vcpu as u32,
                    "its PV records and CPU state do not match".into(),
                ));
            }
        }
        if !vcpus.iter().any(|(v, _)| *v == 0) {
            return Err(StateError::Pv("no state for vCPU 0".into()));
        }
    }
    h.domain.load_snapshot(&snap)?;
    let jobs = match (&h.pv, &pv_state) {
        (Some(pv), Some((m2p, vcpus, pinned))) => {
            let memory = h.memory.snapshot();
            pv.restore(&memory, pinned, m2p, vcpus)?;
            let mut jobs = Vec::new();
            for (vcpu, list) in per_vcpu.into_iter().enumerate() {
                let vcpu = vcpu as u32;
                let Some((_, saved)) = vcpus.iter().find(|(v, _)| *v == vcpu) else {
                    continue;
                };
                let cr3 = pv
                    .mode_cr3(vcpu, saved.state.kernel_mode)
                    .ok_or_else(|| StateError::Vcpu(vcpu, "no L4 for its mode".into()))?;
                let ldt_limit = (saved.ldt_entries > 0).then(|| saved.ldt_entries * 8 - 1);
                jobs.push((
                    vcpu,
                    VcpuJob::LoadPv {
                        entries: list,
                        vcpu,
                        cr3,
                        ldt_limit,
                    },
                ));
            }
            jobs
        }
        _ => per_vcpu
            .into_iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(vcpu, list)| (vcpu as u32, VcpuJob::Load(list)))
            .collect(),
    };
    for (vcpu, result) in h.pauser.gate.run_jobs(jobs, VCPU_DEADLINE)? {
        result.map_err(|e| StateError::Vcpu(vcpu, e))?;
    }
    write_platform_state(h.memory.vm(), &kvm_platform).map_err(|e| platform_err(&e))?;
    for (frame, page) in frames.iter().zip(pages.chunks_exact(PAGE)) {
        h.memory
            .memfd
            .write_all_at(page, h.memory.layout.pool_offset(*frame))
            .map_err(StateError::Memory)?;
    }
    if let (Some(hvm), Some(devices)) = (&h.hvm, &devices) {
        hvm.load_devices(devices)?;
        if let Some(b) = &devices.syscall_bridge {
            restore_breakpoint(h, b)?;
        }
        if let Some(clock) = &clock {
            hvm.cmos
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .load_clock(clock);
        }
    }
    if let (Some(pv), Some((_, vcpus, _)), true) = (&h.pv, &pv_state, snap.suspended) {
        // vCPU 0 suspended the domain: its rdx is the start_info frame
        // (Linux's HYPERVISOR_suspend passes it, as Xen's tools require).
        let start_info = vcpus
            .iter()
            .find(|(v, _)| *v == 0)
            .map_or(0, |(_, saved)| saved.regs.gprs[12]);
        update_start_info(h, pv, start_info)?;
    }
    // The guest's clock records and upcalls as of now.
    h.domain.publish_clock();
    for vcpu in 0..nr_vcpus {
        h.domain.reassert_upcall(vcpu);
    }
    Ok(())
}

#[cfg(test)]
mod pv_tests {
    use super::*;

    #[test]
    fn the_pv_tail_reads_back_and_refuses_damage() {
        let m2p = [(3, 7), (9, 1)];
        let tail = encode_pv_tail(&m2p);
        assert_eq!(parse_pv_tail(&tail, 16).unwrap(), m2p.to_vec());
        assert!(
            parse_pv_tail(&tail[..tail.len() - 1], 16).is_err(),
            "truncated"
        );
        assert!(parse_pv_tail(&tail, 1).is_err(), "more entries than frames");
        let mut bad = tail.clone();
        bad[0] ^= 1;
        assert!(parse_pv_tail(&bad, 16).is_err(), "magic");
        let mut bad = tail;
        bad[12] = 1;
        assert!(parse_pv_tail(&bad, 16).is_err(), "reserved");
        assert!(parse_pv_tail(&[], 16).is_err(), "missing");
    }

    #[test]
    fn page_types_are_xen_s_and_only_pinned_tables_are_pinned_again() {
        use kxen_pv::PtLevel;
        let entries = [
            page_type_entry(0x10, PtLevel::L4, true),
            page_type_entry(0x11, PtLevel::L3, false),
            page_type_entry(0x12, PtLevel::L1, true),
        ];
        assert_eq!(
            entries[0],
            0x10 | 0xc << 60,
            "XEN_DOMCTL_PFINFO_L4TAB | LPINTAB"
        );
        assert_eq!(entries[1], 0x11 | 0x3 << 60);
        assert_eq!(
            pinned_tables(&entries),
            vec![(0x10, PtLevel::L4), (0x12, PtLevel::L1)]
        );
        // Types that are no table's (XALLOC, BROKEN, 0x5-0x8) pin nothing.
        let other = [0x20 | 0xe << 60, 0x21 | 0xd << 60, 0x22 | 0x5 << 60, 0x23];
        assert!(pinned_tables(&other).is_empty());
    }
}
