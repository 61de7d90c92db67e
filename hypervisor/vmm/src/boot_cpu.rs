//! Where the vCPUs start: the register state of the boot processor for
//! each boot protocol, and of an AP the MP wakeup mailbox started.

use kvm_bindings::{kvm_segment, kvm_sregs};

use crate::error::VmError;
use crate::pv;

fn flat_segment(selector: u16, kind: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: kind,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Load `code` into CS, flat data segments with `data_selector` into the
/// others, and a TSS descriptor at the selector after them (the guest
/// loads its own tables; these are the hidden parts KVM enters with).
fn load_flat_segments(sregs: &mut kvm_sregs, code: kvm_segment, data_selector: u16) {
    sregs.cs = code;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = flat_segment(data_selector, 0x3);
    }
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: data_selector + 8,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
}

/// Put vCPU 0 at the PVH entry: 32-bit protected mode, paging off.
pub fn setup_pvh_bsp(fd: &kvm_ioctls::VcpuFd, entry: u64, start_info: u64) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs()?;
    load_flat_segments(&mut sregs, flat_segment(0x10, 0xb), 0x18);
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    fd.set_sregs(&sregs)?;
    let mut regs = fd.get_regs()?;
    regs.rip = entry;
    regs.rbx = start_info;
    regs.rflags = 0x2;
    fd.set_regs(&regs)?;
    Ok(())
}

/// Where vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
pub enum BspEntry {
    /// PVH: 32-bit protected mode, EBX = hvm_start_info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux's 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { entry: u64, boot_params: u64 },
    /// A classic PV kernel: long mode at CPL3, RSI = start_info's virtual
    /// address (set up by [`setup_pv_bsp`]).
    Pv { entry: u64, start_info_va: u64 },
}

impl BspEntry {
    pub fn entry(&self) -> u64 {
        match *self {
            BspEntry::Pvh { entry, .. }
            | BspEntry::Linux64 { entry, .. }
            | BspEntry::Pv { entry, .. } => entry,
        }
    }
}

/// Put vCPU 0 at a Linux kernel's 64-bit entry: long mode on the identity
/// page tables, the boot GDT's `__BOOT_CS`/`__BOOT_DS`, RSI = zero page,
/// interrupts off.
pub fn setup_linux64_bsp(
    fd: &kvm_ioctls::VcpuFd,
    entry: u64,
    boot_params: u64,
) -> Result<(), VmError> {
    use kxen_loader::linux::{BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_GDT_GPA, BOOT_STACK_TOP};
    let mut sregs = fd.get_sregs()?;
    let code64 = kvm_segment {
        l: 1,
        db: 0,
        ..flat_segment(BOOT_CS, 0xb)
    };
    load_flat_segments(&mut sregs, code64, BOOT_DS);
    sregs.gdt.base = BOOT_GDT_GPA;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    identity_long_mode(&mut sregs);
    fd.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rsi: boot_params,
        rsp: BOOT_STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    Ok(())
}

/// Long mode with paging on the loader's identity page tables: where both
/// a Linux 64-bit boot and an MP-wakeup AP start.
fn identity_long_mode(sregs: &mut kvm_sregs) {
    sregs.cr0 = 0x8000_0031; // PG | NE | ET | PE
    sregs.cr3 = kxen_loader::acpi::AP_PAGE_TABLES_GPA;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LME | LMA
}

/// Put an AP at the entry point the guest gave the MP wakeup mailbox:
/// 64-bit mode, paging on the identity-mapped AP page tables, as the ACPI
/// specification promises the OS. The AP loads its own GDT and IDT.
pub fn setup_long_mode_ap(fd: &kvm_ioctls::VcpuFd, entry: u64) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs()?;
    let code64 = kvm_segment {
        l: 1,
        db: 0,
        ..flat_segment(0x08, 0xb)
    };
    load_flat_segments(&mut sregs, code64, 0x10);
    identity_long_mode(&mut sregs);
    fd.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    })?;
    enable_local_apic(fd)?;
    Ok(())
}

/// Offset of the spurious-interrupt vector register in the local APIC page.
const APIC_SVR: usize = 0xf0;
const APIC_SVR_ENABLE: u32 = 1 << 8;

/// Software-enable a vCPU's local APIC, as firmware leaves it. Xen guests
/// register their event upcall vector before their kernel sets the APIC up,
/// and a software-disabled APIC drops the fixed interrupts that carry it.
pub fn enable_local_apic(fd: &kvm_ioctls::VcpuFd) -> Result<(), VmError> {
    let mut lapic = fd.get_lapic()?;
    let mut svr = [0u8; 4];
    for (dst, src) in svr.iter_mut().zip(&lapic.regs[APIC_SVR..APIC_SVR + 4]) {
        *dst = *src as u8;
    }
    let value = u32::from_le_bytes(svr) | APIC_SVR_ENABLE | 0xff;
    for (dst, src) in lapic.regs[APIC_SVR..APIC_SVR + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
    fd.set_lapic(&lapic)?;
    Ok(())
}

/// A PV vCPU's `syscall` goes to the hypervisor's CPL0 entry stub with
/// TF/IF/DF/AC/NT cleared: LSTAR, STAR and SFMASK.
pub fn pv_syscall_msrs(fd: &kvm_ioctls::VcpuFd) -> Result<(), VmError> {
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_SFMASK: u32 = 0xc000_0084;
    let entries = [
        (MSR_STAR, pv::PV_MSR_STAR),
        (MSR_LSTAR, pv::pv_lstar()),
        (MSR_SFMASK, pv::PV_MSR_SFMASK),
    ]
    .map(|(index, data)| kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    let msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|e| VmError::Setup(format!("PV syscall MSRs: {e:?}")))?;
    let written = fd.set_msrs(&msrs)?;
    if written != entries.len() {
        return Err(VmError::Setup(format!(
            "KVM took {written} of the {} PV syscall MSRs",
            entries.len()
        )));
    }
    Ok(())
}

/// Put vCPU 0 at the PV kernel's entry: RIP = ENTRY, RSI = start_info,
/// RSP = the boot stack's top, on the builder's L4 (events are masked in
/// vcpu_info by the caller).
pub fn setup_pv_bsp(
    fd: &kvm_ioctls::VcpuFd,
    boot: &kxen_loader::pv::PvBootState,
) -> Result<(), VmError> {
    let mut gprs = [0u64; 15];
    gprs[13] = boot.start_info_va; // rsi
    let start = pv::PvStart {
        cr3: boot.cr3,
        gprs,
        rip: boot.entry,
        rsp: boot.stack_top,
        rflags: 0x2,
        fs_base: 0,
        gs_base: 0,
    };
    setup_pv_vcpu(fd, 0, &start)
}

/// Put PV vCPU `vcpu` where `start` says: long mode, paging on its
/// kernel L4, CPL3 with Xen's flat kernel selectors; the hypervisor's
/// GDT, IDT and the vCPU's own TSS (special pages, supervisor-only), so
/// that exceptions at CPL3 reach the exit stubs at CPL0; the syscall
/// MSRs; its local APIC enabled for the event vector; runnable.
/// The hypervisor's TSS, GDT area and IDT a PV vCPU runs with.
fn pv_system_tables(sregs: &mut kvm_bindings::kvm_sregs, vcpu: u32) {
    sregs.tr = kvm_segment {
        base: pv::tss_va(vcpu),
        limit: 0x67,
        selector: pv::HV_TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = pv::gdt_area_va(vcpu);
    sregs.gdt.limit = pv::GDT_LIMIT;
    sregs.idt.base = pv::hv_page_va(pv::IDT_PAGE);
    sregs.idt.limit = 0xfff;
}

/// The MSRs besides the syscall ones that decide where a PV vCPU enters
/// CPL0 (compat-mode `syscall` and `sysenter`): what a load must not
/// take from an image. [`kept_entry_msrs`] reads them before the load,
/// [`confine_restored_pv_vcpu`] writes them back.
const PV_ENTRY_MSRS: [u32; 4] = [0xc000_0083, 0x174, 0x175, 0x176];

/// This vCPU's [`PV_ENTRY_MSRS`] as kxen set them (before a load).
pub fn kept_entry_msrs(fd: &kvm_ioctls::VcpuFd) -> Result<kvm_bindings::Msrs, VmError> {
    let entries = PV_ENTRY_MSRS.map(|index| kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    });
    let mut msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|e| VmError::Setup(format!("PV entry MSRs: {e:?}")))?;
    let read = fd.get_msrs(&mut msrs)?;
    if read != PV_ENTRY_MSRS.len() {
        return Err(VmError::Setup(format!(
            "KVM gave {read} of the {} PV entry MSRs",
            PV_ENTRY_MSRS.len()
        )));
    }
    Ok(msrs)
}

/// Hold a restored PV vCPU to what kxen runs PV vCPUs with, whatever
/// the image said: Xen's CPU state of a PV vCPU is the hypervisor's, and
/// only the guest's registers, selectors and bases come from a save. Its
/// code and stack must be at CPL3 (guest kernel and user alike); its
/// control registers, EFER, GDT, IDT, TSS and syscall MSRs are set as at
/// boot, CR3 to the L4 its PV MMU state validated, and the compat
/// syscall and sysenter MSRs back to `kept` (read before the load).
pub fn confine_restored_pv_vcpu(
    fd: &kvm_ioctls::VcpuFd,
    vcpu: u32,
    cr3: u64,
    ldt_limit: Option<u32>,
    kept: &kvm_bindings::Msrs,
) -> Result<(), VmError> {
    if vcpu >= pv::MAX_PV_VCPUS {
        return Err(VmError::Setup(format!("PV vCPU {vcpu}: out of range")));
    }
    let mut sregs = fd.get_sregs()?;
    let code = sregs.cs.s == 1 && sregs.cs.type_ & 0x8 != 0;
    if !code || sregs.cs.dpl != 3 || sregs.ss.dpl != 3 || sregs.cs.selector & 3 != 3 {
        return Err(VmError::Setup(format!(
            "PV vCPU {vcpu}: the image puts it at CPL {} (a PV vCPU runs at 3)",
            sregs.cs.dpl
        )));
    }
    pv_system_tables(&mut sregs, vcpu);
    // The LDT is the vCPU's LDT area, which maps only the descriptor
    // frames its restored MMU state took.
    sregs.ldt = match ldt_limit {
        Some(limit) => kvm_segment {
            base: pv::ldt_area_va(vcpu),
            limit,
            type_: 2,
            present: 1,
            ..Default::default()
        },
        None => kvm_segment {
            unusable: 1,
            ..Default::default()
        },
    };
    sregs.cr0 = 0x8001_0033;
    sregs.cr3 = cr3;
    sregs.cr4 = 0x6a0;
    sregs.efer = 0xd01;
    fd.set_sregs(&sregs)?;
    pv_syscall_msrs(fd)?;
    if fd.set_msrs(kept)? != PV_ENTRY_MSRS.len() {
        return Err(VmError::Setup("KVM refused the PV entry MSRs".into()));
    }
    // IF set and IOPL 0, as every PV vCPU runs (its IOPL is virtual).
    let mut regs = fd.get_regs()?;
    regs.rflags = (regs.rflags | 0x200) & !0x3000;
    fd.set_regs(&regs)?;
    Ok(())
}

pub fn setup_pv_vcpu(
    fd: &kvm_ioctls::VcpuFd,
    vcpu: u32,
    start: &pv::PvStart,
) -> Result<(), VmError> {
    if vcpu >= pv::MAX_PV_VCPUS {
        return Err(VmError::Setup(format!(
            "PV vCPU {vcpu}: at most {} PV vCPUs",
            pv::MAX_PV_VCPUS
        )));
    }
    let mut sregs = fd.get_sregs()?;
    (sregs.cs, sregs.ss) = pv::pv_kernel_segments();
    for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs] {
        *seg = kvm_segment {
            selector: pv::FLAT_KERNEL_DS64,
            ..pv::pv_segment(pv::FLAT_KERNEL_DS64, 0x3, false)
        };
    }
    sregs.fs.base = start.fs_base;
    sregs.gs.base = start.gs_base;
    pv_system_tables(&mut sregs, vcpu);
    sregs.cr0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
    sregs.cr3 = start.cr3;
    sregs.cr4 = 0x6a0; // OSXMMEXCPT | OSFXSR | PGE | PAE
    sregs.efer = 0xd01; // NXE | LMA | LME | SCE
    fd.set_sregs(&sregs)?;
    pv_syscall_msrs(fd)?;
    // IF set: the hypervisor's event vector must reach the vCPU whenever
    // it runs guest code. The guest's own interrupt flag is the upcall
    // mask in vcpu_info; at CPL3 it cannot clear IF.
    fd.set_regs(&start.regs())?;
    if vcpu != 0 {
        fd.set_mp_state(kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
        })?;
        enable_local_apic(fd)?;
    }
    Ok(())
}
