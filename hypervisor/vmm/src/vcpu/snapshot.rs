//! A vCPU's part of a save or restore (issue 17), run on the vCPU's own
//! thread while the domain is paused: that thread owns the vCPU fd and its
//! synced registers, and KVM wants the last exit finished before the state
//! is read.
//!
//! The control thread posts a [`VcpuJob`] through the guest entry gate
//! ([`super::gate::GuestEntryGate::run_jobs`]); the vCPU thread, waiting
//! there, runs it with [`run_job`] and hands back the vCPU's HVM save
//! entries (CPU, LAPIC, LAPIC_REGS, MTRR, CPU_XSAVE) or loads them.

use kvm_ioctls::VcpuFd;
use xen_abi::hvm_save::{
    HwCpu, HwLapic, HwLapicRegs, HwMtrr, HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_CPU_XSAVE,
    HVM_SAVE_CODE_LAPIC, HVM_SAVE_CODE_LAPIC_REGS, HVM_SAVE_CODE_MTRR,
};
use zerocopy::{FromBytes, IntoBytes};

use super::kvm::KvmVcpu;
use crate::save::kvm::{
    read_mtrr_msrs, read_vcpu_state, read_xsave, write_mtrr_msrs, write_vcpu_state, write_xsave,
};
use crate::save::xsave::XstateLayout;
use crate::save::{cpu, mtrr, xsave, XenVcpuRecords};

/// One HVM save entry of a vCPU: its typecode and body.
pub type VcpuEntry = (u16, Vec<u8>);

/// What the control thread asks of a paused vCPU.
#[derive(Debug)]
pub enum VcpuJob {
    /// Hand back the vCPU's save entries.
    Save,
    /// Take these entries (one of each kind [`VcpuJob::Save`] gives).
    Load(Vec<VcpuEntry>),
    /// Take these entries onto a classic PV vCPU, then hold it to what a
    /// PV vCPU may be (its privileged state is kxen's, not the image's):
    /// `cr3` is the L4 its restored PV MMU state says it runs on.
    LoadPv {
        entries: Vec<VcpuEntry>,
        vcpu: u32,
        cr3: u64,
        /// The LDT's byte limit (None: no LDT).
        ldt_limit: Option<u32>,
    },
    /// Make the hypercall the vCPU last returned from return this instead
    /// (rax): a cancelled suspend's SCHEDOP_shutdown returns 1.
    SetHypercallReturn(u64),
}

/// The answer: the entries for a save, nothing for a load, or why not.
pub type VcpuJobResult = Result<Vec<VcpuEntry>, String>;

fn layout(fd: &VcpuFd) -> Result<XstateLayout, String> {
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_CPUID2: {e}"))?;
    Ok(XstateLayout::from_cpuid(&cpuid))
}

fn save(kvm: &mut KvmVcpu, has_run: bool) -> VcpuJobResult {
    if has_run {
        kvm.complete_pending_exit()
            .map_err(|e| format!("finishing the last exit: {e}"))?;
    }
    let fd = kvm.fd();
    let state = read_vcpu_state(fd).map_err(|e| e.to_string())?;
    let records = cpu::save(&state).map_err(|e| e.to_string())?;
    let (area, xcr0) = read_xsave(fd).map_err(|e| e.to_string())?;
    let xsave_entry = xsave::save(&area, xcr0, &layout(fd)?).map_err(|e| e.to_string())?;
    let mtrrs = read_mtrr_msrs(fd).map_err(|e| e.to_string())?;
    Ok(vec![
        (HVM_SAVE_CODE_CPU, records.cpu.as_bytes().to_vec()),
        (HVM_SAVE_CODE_LAPIC, records.lapic.as_bytes().to_vec()),
        (
            HVM_SAVE_CODE_LAPIC_REGS,
            records.lapic_regs.as_bytes().to_vec(),
        ),
        (HVM_SAVE_CODE_MTRR, mtrr::save(&mtrrs).as_bytes().to_vec()),
        (HVM_SAVE_CODE_CPU_XSAVE, xsave_entry),
    ])
}

/// The one entry of `code`, which must be there exactly once.
fn entry(entries: &[VcpuEntry], code: u16) -> Result<&[u8], String> {
    let mut found = entries.iter().filter(|(c, _)| *c == code);
    match (found.next(), found.next()) {
        (Some((_, body)), None) => Ok(body),
        (None, _) => Err(format!("no save entry of type {code}")),
        (Some(_), Some(_)) => Err(format!("two save entries of type {code}")),
    }
}

fn read_entry<T: FromBytes>(entries: &[VcpuEntry], code: u16) -> Result<T, String> {
    let body = entry(entries, code)?;
    T::read_from_bytes(body).map_err(|_| {
        format!(
            "save entry of type {code} is {} bytes, expected {}",
            body.len(),
            std::mem::size_of::<T>()
        )
    })
}

fn load(kvm: &KvmVcpu, entries: &[VcpuEntry]) -> VcpuJobResult {
    let records = XenVcpuRecords {
        cpu: read_entry::<HwCpu>(entries, HVM_SAVE_CODE_CPU)?,
        lapic: read_entry::<HwLapic>(entries, HVM_SAVE_CODE_LAPIC)?,
        lapic_regs: read_entry::<HwLapicRegs>(entries, HVM_SAVE_CODE_LAPIC_REGS)?,
    };
    let fd = kvm.fd();
    // Everything is checked before the first write.
    let state = cpu::load(&records).map_err(|e| e.to_string())?;
    let (area, xcr0) = xsave::load(entry(entries, HVM_SAVE_CODE_CPU_XSAVE)?, &layout(fd)?)
        .map_err(|e| e.to_string())?;
    let cap = read_mtrr_msrs(fd).map_err(|e| e.to_string())?[mtrr::MTRR_MSR_COUNT - 2];
    let mtrrs = mtrr::load(&read_entry::<HwMtrr>(entries, HVM_SAVE_CODE_MTRR)?, cap)
        .map_err(|e| e.to_string())?;
    write_vcpu_state(fd, &state).map_err(|e| e.to_string())?;
    write_xsave(fd, &area, xcr0).map_err(|e| e.to_string())?;
    write_mtrr_msrs(fd, &mtrrs).map_err(|e| e.to_string())?;
    // A started vCPU runs: an AP of a new domain waits for INIT/SIPI in
    // KVM until told otherwise, and Xen's CPU record has no such state.
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    })
    .map_err(|e| format!("KVM_SET_MP_STATE: {e}"))?;
    Ok(Vec::new())
}

fn set_hypercall_return(kvm: &mut KvmVcpu, has_run: bool, value: u64) -> VcpuJobResult {
    if has_run {
        kvm.complete_pending_exit()
            .map_err(|e| format!("finishing the last exit: {e}"))?;
    }
    let fd = kvm.fd();
    let mut regs = fd.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rax = value;
    fd.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    Ok(Vec::new())
}

/// Run `job` on the vCPU whose thread calls this. `has_run`: the vCPU has
/// been in KVM_RUN (so an exit may be unfinished).
pub fn run_job(kvm: &mut KvmVcpu, has_run: bool, job: VcpuJob) -> VcpuJobResult {
    match job {
        VcpuJob::Save => save(kvm, has_run),
        VcpuJob::Load(entries) => load(kvm, &entries),
        VcpuJob::LoadPv {
            entries,
            vcpu,
            cr3,
            ldt_limit,
        } => {
            let kept = crate::boot_cpu::kept_entry_msrs(kvm.fd()).map_err(|e| e.to_string())?;
            load(kvm, &entries)?;
            crate::boot_cpu::confine_restored_pv_vcpu(kvm.fd(), vcpu, cr3, ldt_limit, &kept)
                .map(|()| Vec::new())
                .map_err(|e| e.to_string())
        }
        VcpuJob::SetHypercallReturn(value) => set_hypercall_return(kvm, has_run, value),
    }
}
