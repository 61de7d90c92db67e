//! Reading and writing a [`KvmVcpuState`] through a vCPU's fd: the only
//! part of [`crate::save`] that makes ioctls.
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

use super::cpu::{msr_index, KvmVcpuState, SavedMsrs};

/// A KVM ioctl that failed while moving a vCPU's state.
#[derive(Debug, Error)]
pub enum VcpuStateError {
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    #[error("building the MSR list: {0}")]
    MsrList(String),
    #[error("KVM moved {moved} of the {wanted} MSRs (the first it refused is {refused:#x})")]
    Msrs {
        moved: usize,
        wanted: usize,
        refused: u32,
    },
}

const SAVED_MSRS: [u32; 11] = [
    msr_index::STAR,
    msr_index::LSTAR,
    msr_index::CSTAR,
    msr_index::SFMASK,
    msr_index::KERNEL_GS_BASE,
    msr_index::SYSENTER_CS,
    msr_index::SYSENTER_ESP,
    msr_index::SYSENTER_EIP,
    msr_index::TSC_AUX,
    msr_index::TSC,
    msr_index::TSC_DEADLINE,
];

fn msr_values(msrs: &SavedMsrs) -> [u64; 11] {
    [
        msrs.star,
        msrs.lstar,
        msrs.cstar,
        msrs.sfmask,
        msrs.kernel_gs_base,
        msrs.sysenter_cs,
        msrs.sysenter_esp,
        msrs.sysenter_eip,
        msrs.tsc_aux,
        msrs.tsc,
        msrs.tsc_deadline,
    ]
}

fn msr_list(values: &[u64; 11]) -> Result<Msrs, VcpuStateError> {
    let entries: Vec<kvm_msr_entry> = SAVED_MSRS
        .iter()
        .zip(values)
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|error| VcpuStateError::MsrList(format!("{error:?}")))
}

fn check_moved(moved: usize) -> Result<(), VcpuStateError> {
    if moved == SAVED_MSRS.len() {
        Ok(())
    } else {
        Err(VcpuStateError::Msrs {
            moved,
            wanted: SAVED_MSRS.len(),
            refused: SAVED_MSRS[moved.min(SAVED_MSRS.len() - 1)],
        })
    }
}

/// A stopped vCPU's state, as the save records need it.
pub fn read_vcpu_state(vcpu: &VcpuFd) -> Result<KvmVcpuState, VcpuStateError> {
    let ioctl = |name| move |error| VcpuStateError::Ioctl(name, error);
    let mut msrs = msr_list(&[0; 11])?;
    let moved = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
    check_moved(moved)?;
    let data: Vec<u64> = msrs.as_slice().iter().map(|entry| entry.data).collect();
    Ok(KvmVcpuState {
        regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
        fpu: vcpu.get_fpu().map_err(ioctl("KVM_GET_FPU"))?,
        debugregs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
        events: vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
        lapic: vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
        msrs: SavedMsrs {
            star: data[0],
            lstar: data[1],
            cstar: data[2],
            sfmask: data[3],
            kernel_gs_base: data[4],
            sysenter_cs: data[5],
            sysenter_esp: data[6],
            sysenter_eip: data[7],
            tsc_aux: data[8],
            tsc: data[9],
            tsc_deadline: data[10],
        },
    })
}

/// Gives a stopped vCPU `state`. The special registers go first (they set
/// the APIC base and the mode the rest is read in), the LAPIC page after
/// them (KVM_SET_SREGS writes CR8 into the TPR), the MSRs after the LAPIC
/// (the TSC deadline needs the timer's mode), the injected event last.
pub fn write_vcpu_state(vcpu: &VcpuFd, state: &KvmVcpuState) -> Result<(), VcpuStateError> {
    let ioctl = |name| move |error| VcpuStateError::Ioctl(name, error);
    vcpu.set_sregs(&state.sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_fpu(&state.fpu).map_err(ioctl("KVM_SET_FPU"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(ioctl("KVM_SET_LAPIC"))?;
    let msrs = msr_list(&msr_values(&state.msrs))?;
    check_moved(vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?)?;
    vcpu.set_vcpu_events(&state.events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
