//! Reading and writing a [`KvmVcpuState`], the XSAVE area and the MTRRs
//! through a vCPU's fd, and the in-kernel irqchip and PIT through the VM's:
//! the only part of [`crate::save`] that makes ioctls.
use kvm_bindings::{
    kvm_ioapic_state, kvm_irqchip, kvm_msr_entry, kvm_pic_state, kvm_pit_state2, kvm_xcrs,
    kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;

use super::cpu::{msr_index, KvmVcpuState, SavedMsrs};
use super::mtrr::{mtrr_msr_indices, MtrrMsrs, MSR_MTRR_CAP, MTRR_MSR_COUNT};

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

/// The VM-wide state KVM's in-kernel irqchip and PIT hold.
#[derive(Clone, Copy, Default)]
pub struct KvmPlatformState {
    /// The master PIC, then the slave.
    pub pics: [kvm_pic_state; 2],
    pub ioapic: kvm_ioapic_state,
    pub pit: kvm_pit_state2,
}

/// A KVM ioctl that failed while moving VM-wide state.
#[derive(Debug, Error)]
pub enum PlatformStateError {
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
}

fn irqchip(chip_id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id,
        ..Default::default()
    }
}

/// The in-kernel PICs, IOAPIC and PIT of a VM whose vCPUs are stopped.
pub fn read_platform_state(vm: &VmFd) -> Result<KvmPlatformState, PlatformStateError> {
    let ioctl = |name| move |error| PlatformStateError::Ioctl(name, error);
    let mut state = KvmPlatformState::default();
    for (pic, chip_id) in state
        .pics
        .iter_mut()
        .zip([KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE])
    {
        let mut chip = irqchip(chip_id);
        vm.get_irqchip(&mut chip)
            .map_err(ioctl("KVM_GET_IRQCHIP (PIC)"))?;
        // SAFETY: KVM filled the union's PIC member for a PIC chip_id; it
        // is plain bytes, any pattern valid.
        *pic = unsafe { chip.chip.pic };
    }
    let mut chip = irqchip(KVM_IRQCHIP_IOAPIC);
    vm.get_irqchip(&mut chip)
        .map_err(ioctl("KVM_GET_IRQCHIP (IOAPIC)"))?;
    // SAFETY: as above, the IOAPIC member for the IOAPIC's chip_id.
    state.ioapic = unsafe { chip.chip.ioapic };
    state.pit = vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
    Ok(state)
}

/// Gives a VM's in-kernel PICs, IOAPIC and PIT `state`. The PIT goes last:
/// KVM_SET_PIT2 restarts its channels' counts from the host's clock.
pub fn write_platform_state(vm: &VmFd, state: &KvmPlatformState) -> Result<(), PlatformStateError> {
    let ioctl = |name| move |error| PlatformStateError::Ioctl(name, error);
    for (pic, chip_id) in state
        .pics
        .iter()
        .zip([KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE])
    {
        let mut chip = irqchip(chip_id);
        chip.chip.pic = *pic;
        vm.set_irqchip(&chip)
            .map_err(ioctl("KVM_SET_IRQCHIP (PIC)"))?;
    }
    let mut chip = irqchip(KVM_IRQCHIP_IOAPIC);
    chip.chip.ioapic = state.ioapic;
    vm.set_irqchip(&chip)
        .map_err(ioctl("KVM_SET_IRQCHIP (IOAPIC)"))?;
    vm.set_pit2(&state.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    Ok(())
}

const XCR0: u32 = 0;

/// A stopped vCPU's XSAVE area and XCR0.
pub fn read_xsave(vcpu: &VcpuFd) -> Result<(kvm_xsave, u64), VcpuStateError> {
    let ioctl = |name| move |error| VcpuStateError::Ioctl(name, error);
    let xsave = vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
    let xcr0 = xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())]
        .iter()
        .find(|xcr| xcr.xcr == XCR0)
        .map_or(1, |xcr| xcr.value);
    Ok((xsave, xcr0))
}

/// Gives a stopped vCPU an XSAVE area and XCR0: XCR0 first, as it is
/// what the area's components are checked against. Call it after
/// [`write_vcpu_state`], whose KVM_SET_FPU would overwrite the legacy
/// region.
pub fn write_xsave(vcpu: &VcpuFd, xsave: &kvm_xsave, xcr0: u64) -> Result<(), VcpuStateError> {
    let ioctl = |name| move |error| VcpuStateError::Ioctl(name, error);
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = XCR0;
    xcrs.xcrs[0].value = xcr0;
    vcpu.set_xcrs(&xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    // SAFETY: kxen never enables KVM_CAP_XSAVE2, so KVM reads exactly the
    // 4 KiB `kvm_xsave` holds.
    unsafe { vcpu.set_xsave(xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    Ok(())
}

fn mtrr_list(values: &MtrrMsrs, with_cap: bool) -> Result<Msrs, VcpuStateError> {
    let entries: Vec<kvm_msr_entry> = mtrr_msr_indices()
        .iter()
        .zip(values)
        .filter(|(&index, _)| with_cap || index != MSR_MTRR_CAP)
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|error| VcpuStateError::MsrList(format!("{error:?}")))
}

fn check_mtrrs_moved(msrs: &Msrs, moved: usize) -> Result<(), VcpuStateError> {
    let wanted = msrs.as_slice().len();
    if moved == wanted {
        Ok(())
    } else {
        Err(VcpuStateError::Msrs {
            moved,
            wanted,
            refused: msrs.as_slice()[moved.min(wanted - 1)].index,
        })
    }
}

/// A stopped vCPU's PAT and MTRRs, MTRRcap included.
pub fn read_mtrr_msrs(vcpu: &VcpuFd) -> Result<MtrrMsrs, VcpuStateError> {
    let mut msrs = mtrr_list(&[0; MTRR_MSR_COUNT], true)?;
    let moved = vcpu
        .get_msrs(&mut msrs)
        .map_err(|error| VcpuStateError::Ioctl("KVM_GET_MSRS", error))?;
    check_mtrrs_moved(&msrs, moved)?;
    let mut values = [0; MTRR_MSR_COUNT];
    for (value, entry) in values.iter_mut().zip(msrs.as_slice()) {
        *value = entry.data;
    }
    Ok(values)
}

/// Gives a stopped vCPU its PAT and MTRRs; MTRRcap is read-only and is
/// not written.
pub fn write_mtrr_msrs(vcpu: &VcpuFd, values: &MtrrMsrs) -> Result<(), VcpuStateError> {
    let msrs = mtrr_list(values, false)?;
    let moved = vcpu
        .set_msrs(&msrs)
        .map_err(|error| VcpuStateError::Ioctl("KVM_SET_MSRS", error))?;
    check_mtrrs_moved(&msrs, moved)
}
