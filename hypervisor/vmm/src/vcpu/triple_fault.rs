//! Saying why a vCPU triple-faulted, where the VMM can tell from the state
//! it is left with.
//!
//! KVM reports a triple fault as a bare shutdown: the faults that led to it
//! stay inside KVM. One cause is worth naming because it is a limit of the
//! host, not a guest bug: on PVM hosts (KVM without VT-x or SVM) KVM answers
//! a write that sets CR0.PG with EFER.LME clear, that is 32-bit paging with
//! or without PAE, with #GP. A guest with no IDT yet (a PVH kernel turning
//! on paging in its first instructions) then triple-faults on the very
//! `mov %reg, %cr0`, which is still at RIP since it never retired.

use iced_x86::{Code, Decoder, DecoderOptions, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;

/// A refused switch to paging outside long mode, as seen at a triple fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagingOutsideLongMode {
    /// The value the guest tried to load into CR0.
    pub new_cr0: u64,
    /// CR4 at the time, which says which 32-bit paging mode it asked for.
    pub cr4: u64,
}

impl PagingOutsideLongMode {
    /// The paging mode the guest asked for, in the SDM's words.
    pub fn mode(&self) -> &'static str {
        match (self.cr4 & CR4_PAE != 0, self.cr4 & CR4_PSE != 0) {
            (true, _) => "PAE paging",
            (false, true) => "32-bit paging with 4 MiB pages (CR4.PSE)",
            (false, false) => "32-bit paging",
        }
    }
}

impl std::fmt::Display for PagingOutsideLongMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the fault is at a mov to CR0 that sets PG ({:#x}) with EFER.LME clear: \
             the guest turned on {} outside long mode",
            self.new_cr0,
            self.mode()
        )
    }
}

/// The low 32 bits of general register `register` (any width names it).
fn gpr32(regs: &kvm_regs, register: Register) -> Option<u64> {
    let value = match register.full_register() {
        Register::RAX => regs.rax,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RBX => regs.rbx,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        _ => return None,
    };
    Some(value & 0xffff_ffff)
}

/// Whether the instruction at RIP (`insn`) is a `mov r32, %cr0` that turns
/// on paging while the vCPU is out of long mode with paging off. Only legacy
/// (non-64-bit) code is looked at: in long mode PG is already set.
pub fn paging_outside_long_mode(
    insn: &[u8],
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Option<PagingOutsideLongMode> {
    if sregs.efer & EFER_LME != 0 || sregs.cr0 & CR0_PG != 0 {
        return None;
    }
    let bitness = if sregs.cs.db != 0 { 32 } else { 16 };
    let mov = Decoder::new(bitness, insn, DecoderOptions::NONE).decode();
    if mov.code() != Code::Mov_cr_r32 || mov.op0_register() != Register::CR0 {
        return None;
    }
    let new_cr0 = gpr32(regs, mov.op1_register())?;
    (new_cr0 & CR0_PG != 0).then_some(PagingOutsideLongMode {
        new_cr0,
        cr4: sregs.cr4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected_mode(cr4: u64) -> kvm_sregs {
        kvm_sregs {
            cr0: 0x11,
            cr4,
            ..Default::default()
        }
    }

    #[test]
    fn mov_eax_to_cr0_with_pg_is_recognised_for_each_32_bit_mode() {
        let regs = kvm_regs {
            rax: 0x8000_0011,
            ..Default::default()
        };
        for (cr4, mode) in [
            (0, "32-bit paging"),
            (CR4_PSE, "32-bit paging with 4 MiB pages (CR4.PSE)"),
            (CR4_PAE, "PAE paging"),
            (CR4_PAE | CR4_PSE, "PAE paging"),
        ] {
            let found = paging_outside_long_mode(&[0x0f, 0x22, 0xc0], &regs, &protected_mode(cr4))
                .expect("recognised");
            assert_eq!(found.new_cr0, 0x8000_0011);
            assert_eq!(found.mode(), mode);
            assert!(found.to_string().contains(mode));
        }
    }

    #[test]
    fn the_source_register_comes_from_modrm_rm() {
        let regs = kvm_regs {
            rax: 0x11,
            rdi: 0xffff_ffff_8000_0011,
            ..Default::default()
        };
        let sregs = protected_mode(CR4_PSE);
        // mov %edi, %cr0: upper half of RDI is not part of the value.
        let found = paging_outside_long_mode(&[0x0f, 0x22, 0xc7], &regs, &sregs).unwrap();
        assert_eq!(found.new_cr0, 0x8000_0011);
        // mov %eax, %cr0 with PG clear in EAX is not a paging switch.
        assert_eq!(
            paging_outside_long_mode(&[0x0f, 0x22, 0xc0], &regs, &sregs),
            None
        );
    }

    #[test]
    fn other_instructions_and_states_are_not_blamed() {
        let regs = kvm_regs {
            rax: 0x8000_0011,
            ..Default::default()
        };
        let sregs = protected_mode(0);
        // mov %eax, %cr3 and mov %cr0, %eax.
        assert_eq!(
            paging_outside_long_mode(&[0x0f, 0x22, 0xd8], &regs, &sregs),
            None
        );
        assert_eq!(
            paging_outside_long_mode(&[0x0f, 0x20, 0xc0], &regs, &sregs),
            None
        );
        assert_eq!(paging_outside_long_mode(&[0x0f], &regs, &sregs), None);
        // Entering long mode (EFER.LME set) is not this case.
        let long = kvm_sregs {
            efer: EFER_LME,
            ..sregs
        };
        assert_eq!(
            paging_outside_long_mode(&[0x0f, 0x22, 0xc0], &regs, &long),
            None
        );
        // Paging already on: the write did not turn it on.
        let paged = kvm_sregs {
            cr0: 0x8000_0011,
            ..sregs
        };
        assert_eq!(
            paging_outside_long_mode(&[0x0f, 0x22, 0xc0], &regs, &paged),
            None
        );
    }
}
