//! A PV kernel's direct write to one of its L1 page tables (Xen's
//! writable page tables): the #PF it takes on the read-only table is
//! emulated, the new entry checked and written by the PV MMU as an
//! `mmu_update` would, and the kernel resumes after the instruction.
//! kxen-pv's `ptwr` decides what the instruction writes; a write the PV
//! MMU refuses, or an instruction it does not emulate, leaves the #PF to
//! be bounced to the guest, as on Xen.

use tracing::trace;
use vm_memory::GuestMemoryMmap;

use kxen_pv::ptwr::{emulate_pt_write, Gprs};

use super::Vcpu;
use crate::pv::{HardwareFrame, PvMachine};

/// Page-fault error code bits: present, write.
const PF_PRESENT_WRITE: u32 = 0x3;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_IF: u64 = 1 << 9;
const MAX_INSN_LEN: usize = 15;

impl Vcpu {
    /// Try to emulate the kernel-mode write fault `hw` at `cr2` as a
    /// page-table update. `Ok(true)`: done, the vCPU resumes after the
    /// instruction.
    pub(super) fn pv_ptwr(
        &mut self,
        pv: &PvMachine,
        mem: &GuestMemoryMmap,
        hw: &HardwareFrame,
        cr2: u64,
    ) -> Result<bool, String> {
        let kernel_mode = pv.with_vcpu(self.id, |v| v.kernel_mode).unwrap_or(false);
        if !kernel_mode || hw.error_code.unwrap_or(0) & PF_PRESENT_WRITE != PF_PRESENT_WRITE {
            return Ok(false);
        }
        let Some(gpa) = self.kvm.probe_gpa(&self.rt.memory, cr2) else {
            return Ok(false);
        };
        let mut paging = self.kvm.paging_regs();
        paging.cpl = 3;
        let bytes = self.kvm.with_guest(&self.rt.memory, paging, |g| {
            let mut bytes = [0u8; MAX_INSN_LEN];
            let in_first_page = ((0x1000 - (hw.rip & 0xfff)) as usize).min(MAX_INSN_LEN);
            if g.fetch(hw.rip, &mut bytes[..in_first_page]).is_err() {
                return Vec::new();
            }
            let len = if g
                .fetch(
                    hw.rip.wrapping_add(in_first_page as u64),
                    &mut bytes[in_first_page..],
                )
                .is_ok()
            {
                MAX_INSN_LEN
            } else {
                in_first_page
            };
            bytes[..len].to_vec()
        });
        let regs = self.kvm.regs();
        let gprs: Gprs = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, hw.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
            regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        let outcome = pv.page_table_write(mem, self.id, gpa, |old| {
            emulate_pt_write(&bytes, hw.rip, cr2, &gprs, old)
        });
        let (write, effects) = match outcome {
            Some(done) => done,
            None => return Ok(false),
        };
        let r = self.kvm.regs_mut();
        if let Some((reg, value)) = write.load {
            let slot = match reg {
                0 => &mut r.rax,
                1 => &mut r.rcx,
                2 => &mut r.rdx,
                3 => &mut r.rbx,
                5 => &mut r.rbp,
                6 => &mut r.rsi,
                7 => &mut r.rdi,
                8 => &mut r.r8,
                9 => &mut r.r9,
                10 => &mut r.r10,
                11 => &mut r.r11,
                12 => &mut r.r12,
                13 => &mut r.r13,
                14 => &mut r.r14,
                15 => &mut r.r15,
                // RSP as an xchg operand: the interrupted stack pointer.
                _ => &mut r.rsp,
            };
            *slot = value;
        }
        r.rip = hw.rip.wrapping_add(write.len as u64);
        if write.load.map(|(reg, _)| reg) != Some(4) {
            r.rsp = hw.rsp;
        }
        let mut rflags = hw.rflags | RFLAGS_IF;
        match write.zf {
            Some(true) => rflags |= RFLAGS_ZF,
            Some(false) => rflags &= !RFLAGS_ZF,
            None => {}
        }
        r.rflags = rflags;
        trace!(
            vcpu = self.id,
            cr2,
            gpa,
            ?write,
            "PV page-table write emulated"
        );
        self.apply_pv_effects(pv, &effects);
        Ok(true)
    }
}
