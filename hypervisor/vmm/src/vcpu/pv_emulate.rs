//! A PV kernel's privileged instruction, emulated before its #GP (or the
//! forced-emulation #UD) is bounced: kxen-pv's `emulate` decides, this
//! executes. The exception has reached the hypervisor's CPL0 exit stub,
//! so the guest's RIP, RSP and RFLAGS are in the hardware frame on the
//! trap stack and every other general register is still the guest's.
//! An emulated instruction resumes the kernel at CPL3 after it; anything
//! else falls through to [`Vcpu::pv_trap`]'s bounce of the original
//! exception.

use std::cell::OnceCell;

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use tracing::trace;
use vm_memory::GuestMemoryMmap;

use kxen_pv::emulate::{
    emulate_invalid_op, emulate_privileged_op, GprIndex, Outcome, PrivilegedCpu, SegmentBase,
    VirtualCpu,
};
use kxen_pv::{Effects, Mfn, MmuError};

use super::kvm::KvmVcpu;
use super::pv_exits::{gpr_in_encoding_order, gprs_in_encoding_order};
use super::Vcpu;
use crate::pv::PvMachine;

const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;
const RFLAGS_RF: u64 = 1 << 16;
const MSR_IA32_TSC: u32 = 0x10;

/// The vCPU as kxen-pv's emulation sees it: copies of its registers
/// (RSP the interrupted one), changed in place and loaded afterwards.
struct VcpuPrivileged<'a> {
    id: u32,
    regs: kvm_regs,
    sregs: kvm_sregs,
    virt: VirtualCpu,
    kvm: &'a KvmVcpu,
    pv: &'a PvMachine,
    mem: &'a GuestMemoryMmap,
    cpuid: OnceCell<Option<CpuId>>,
    /// What a CR3 load asks before the guest resumes.
    effects: Effects,
    /// The vCPU's PV mode (kxen-pv's `PvVcpu`).
    kernel_mode: bool,
}

impl PrivilegedCpu for VcpuPrivileged<'_> {
    fn vcpu_id(&self) -> u32 {
        self.id
    }

    fn kernel_mode(&self) -> bool {
        self.kernel_mode
    }

    fn gpr(&self, index: GprIndex) -> u64 {
        gprs_in_encoding_order(&self.regs, self.regs.rsp)
            .get(index)
            .copied()
            .unwrap_or(0)
    }

    fn set_gpr(&mut self, index: GprIndex, value: u64) {
        if let Some(slot) = gpr_in_encoding_order(&mut self.regs, index) {
            *slot = value;
        }
    }

    fn hardware_cr0(&self) -> u64 {
        self.sregs.cr0
    }

    fn hardware_cr4(&self) -> u64 {
        self.sregs.cr4
    }

    fn virtual_cpu(&mut self) -> &mut VirtualCpu {
        &mut self.virt
    }

    fn segment_base(&self, which: SegmentBase) -> u64 {
        match which {
            SegmentBase::Fs => self.sregs.fs.base,
            SegmentBase::Gs => self.sregs.gs.base,
        }
    }

    fn set_segment_base(&mut self, which: SegmentBase, base: u64) {
        match which {
            SegmentBase::Fs => self.sregs.fs.base = base,
            SegmentBase::Gs => self.sregs.gs.base = base,
        }
    }

    fn tsc(&mut self) -> u64 {
        self.kvm.get_msrs([MSR_IA32_TSC]).map_or(0, |[tsc]| tsc)
    }

    fn efer(&self) -> u64 {
        self.sregs.efer
    }

    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let table = self.cpuid.get_or_init(|| self.kvm.cpuid_table());
        let Some(table) = table else {
            return [0; 4];
        };
        table
            .as_slice()
            .iter()
            .find(|e| {
                e.function == leaf
                    && (e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                        || e.index == subleaf)
            })
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }

    fn max_machine_frame(&self) -> Mfn {
        self.pv.max_frame()
    }

    fn kernel_base_pointer(&self) -> Option<Mfn> {
        self.pv.kernel_cr3(self.id).map(|cr3| cr3 >> 12)
    }

    fn load_kernel_base_pointer(&mut self, mfn: Mfn) -> Result<(), MmuError> {
        let effects = self.pv.load_kernel_base(self.mem, self.id, mfn)?;
        self.effects.merge(effects);
        Ok(())
    }

    fn install_hypercall_page(&mut self, mfn: Mfn) -> bool {
        self.pv.install_hypercall_page_msr(self.mem, mfn)
    }
}

impl Vcpu {
    /// Emulate the privileged instruction behind exception `vector` (a
    /// #GP with error code 0, or a #UD) as Xen does before bouncing it.
    /// `Ok(true)`: emulated, the kernel resumes after it. `Ok(false)`:
    /// not emulated; [`Vcpu::pv_trap`] bounces the exception (and judges
    /// a frame that is not the kernel's). `Err` crashes the domain.
    pub(super) fn pv_emulate(&mut self, vector: u8) -> Result<bool, String> {
        if vector != VECTOR_GP && vector != VECTOR_UD {
            return Ok(false);
        }
        let Some(pv) = self.rt.pv.clone() else {
            return Ok(false);
        };
        let (regs, sregs) = (self.kvm.regs(), self.kvm.sregs());
        let mem = self.rt.memory.snapshot();
        let Some(hw) = crate::pv::read_hardware_frame(&mem, self.id, vector, regs.rsp)
            .filter(|hw| hw.cs & 3 == 3)
        else {
            return Ok(false);
        };
        // Xen emulates only a #GP with error code 0 (do_general_protection).
        if vector == VECTOR_GP && hw.error_code != Some(0) {
            return Ok(false);
        }
        // The instruction as the kernel at CPL3 can read it: up to 15
        // bytes, fewer where the next page faults.
        let bytes = self.pv_fetch_instruction(hw.rip);
        let mut virt = *self
            .pv_virtual
            .get_or_insert_with(|| VirtualCpu::new(sregs.cr4));
        // The segment bases are the PV vCPU's (set_segment_base and mode
        // switches keep them there); the emulation sees the same values.
        let (kernel_mode, user_gs_base, iopl, fpu_ts) = pv
            .with_vcpu(self.id, |v| {
                (v.kernel_mode, v.gs_base_user, v.iopl, v.fpu_ts)
            })
            .unwrap_or((true, 0, 0, false));
        virt.user_gs_base = user_gs_base;
        virt.fpu_task_switched = fpu_ts;
        // PHYSDEVOP_set_iopl and VMASST_TYPE_architectural_iopl decide
        // the I/O checks.
        virt.iopl = iopl;
        virt.architectural_iopl = self.rt.domain.enabled_vm_assists()
            & (1 << xen_abi::hypercall::VMASST_TYPE_ARCHITECTURAL_IOPL)
            != 0;
        let mut guest_regs = regs;
        guest_regs.rsp = hw.rsp;
        let mut cpu = VcpuPrivileged {
            id: self.id,
            regs: guest_regs,
            sregs,
            virt,
            kvm: &self.kvm,
            pv: &pv,
            mem: &mem,
            cpuid: OnceCell::new(),
            effects: Effects::default(),
            kernel_mode,
        };
        let outcome = if vector == VECTOR_GP {
            emulate_privileged_op(&mut cpu, hw.rip, &bytes)
        } else {
            emulate_invalid_op(&mut cpu, hw.rip, &bytes)
        };
        let Outcome::Emulated { rip } = outcome else {
            // A refusal, or a #PF at an unreadable instruction byte, which
            // is bounced as the original exception until #PF bounces
            // carry CR2 (the lead's page-fault work).
            trace!(
                vcpu = self.id,
                vector,
                rip = hw.rip,
                ?outcome,
                "PV privileged op not emulated"
            );
            return Ok(false);
        };
        let VcpuPrivileged {
            regs: mut new_regs,
            sregs: new_sregs,
            virt,
            effects,
            ..
        } = cpu;
        self.pv_virtual = Some(virt);
        pv.with_vcpu(self.id, |v| {
            v.fpu_ts = virt.fpu_task_switched;
            v.fs_base = new_sregs.fs.base;
            if v.kernel_mode {
                v.gs_base_kernel = new_sregs.gs.base;
                v.gs_base_user = virt.user_gs_base;
            } else {
                v.gs_base_user = new_sregs.gs.base;
            }
        });
        // A new base pointer: CR3 loaded and KVM's shadow MMU flushed, as
        // for the NEW_BASEPTR hypercall.
        self.apply_pv_effects(&pv, &effects);
        // Back to the kernel at CPL3 with the FS/GS bases it may have set,
        // on the CR3 the effects may just have loaded.
        let mut load = self.kvm.sregs();
        // Back in the mode it trapped from, with that mode's selectors.
        let (cs, ss) = match pv.with_vcpu(self.id, |v| {
            (!v.kernel_mode).then_some((v.user_cs, v.user_ss))
        }) {
            Some(Some((cs, ss))) => (
                crate::pv::pv_segment(cs, 0xb, true),
                crate::pv::pv_segment(ss, 0x3, false),
            ),
            _ => crate::pv::pv_kernel_segments(),
        };
        load.cs = cs;
        load.ss = ss;
        load.fs.base = new_sregs.fs.base;
        load.gs.base = new_sregs.gs.base;
        if !self.kvm.set_system_registers(&load) {
            return Err(format!(
                "PV vCPU {}: reloading CS/SS after an emulated instruction failed",
                self.id
            ));
        }
        new_regs.rip = rip;
        // The instruction retired: RF is clear, as after x86_emulate.
        new_regs.rflags = hw.rflags & !RFLAGS_RF;
        *self.kvm.regs_mut() = new_regs;
        trace!(
            vcpu = self.id,
            vector,
            from = hw.rip,
            rip,
            "PV privileged op emulated"
        );
        Ok(true)
    }
}
