//! A PV kernel's direct write to one of its L1 page tables (Xen's
//! writable page tables): the #PF it takes on the read-only table is
//! emulated, the new entry checked and written by the PV MMU as an
//! `mmu_update` would, and the kernel resumes after the instruction.
//! kxen-pv's `ptwr` decides what the instruction writes; a write the PV
//! MMU refuses, or an instruction it does not emulate, leaves the #PF to
//! be bounced to the guest, as on Xen.

use tracing::{debug, trace};
use vm_memory::GuestMemoryMmap;

use kxen_pv::ptwr::{emulate_pt_write, Gprs};

use super::pv_exits::{gpr_in_encoding_order, gprs_in_encoding_order};
use super::Vcpu;
use crate::pv::{HardwareFrame, PvMachine};

/// Page-fault error code bits: present, write.
const PF_PRESENT_WRITE: u32 = 0x3;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_IF: u64 = 1 << 9;

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
        let bytes = self.pv_fetch_instruction(hw.rip);
        let gprs: Gprs = gprs_in_encoding_order(&self.kvm.regs(), hw.rsp);
        let outcome = pv.page_table_write(mem, self.id, gpa, |old| {
            emulate_pt_write(&bytes, hw.rip, cr2, &gprs, old)
        });
        let (write, effects) = match outcome {
            Some(done) => done,
            None => {
                debug!(
                    vcpu = self.id,
                    rip = format_args!("{:#x}", hw.rip),
                    cr2 = format_args!("{cr2:#x}"),
                    gpa = format_args!("{gpa:#x}"),
                    "kernel write fault left to the guest"
                );
                return Ok(false);
            }
        };
        let r = self.kvm.regs_mut();
        if let Some((reg, value)) = write.load {
            // RSP as an xchg operand is the interrupted stack pointer.
            if let Some(slot) = gpr_in_encoding_order(r, reg) {
                *slot = value;
            }
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
