//! Writable page tables (Xen's `ptwr`, `arch/x86/pv/ro-page-fault.c`):
//! a PV kernel may write an entry of one of its L1 page tables directly.
//! The table is mapped read-only, so the write faults; the hypervisor
//! decodes the instruction, checks the new entry as `mmu_update` would,
//! writes it and resumes after the instruction. Linux's early page-table
//! setup (`xen_set_pte_init`) relies on it.
//!
//! This module decides what the faulting instruction writes; the
//! executor applies the value through the PV MMU (which refuses what it
//! must, in which case the #PF is bounced to the guest as on Xen).
//! Supported, as 8-byte accesses to the faulting entry: `mov` from a
//! register or an immediate, `xchg`, `cmpxchg`, and `and`/`or`/`xor`/
//! `btr`/`bts`/`btc`, all with or without `lock`. Anything else (another
//! width, an unaligned or page-crossing access, a string instruction) is
//! not emulated: the guest gets its #PF.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

use crate::emulate::gpr_index;

/// The general registers in the hardware encoding order (RAX..R15).
pub type Gprs = [u64; 16];

/// What the emulated instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtWrite {
    /// The entry's new value; `None` when nothing is written (a failed
    /// `cmpxchg`).
    pub new: Option<u64>,
    /// The register the instruction loads, and its value (`xchg`'s
    /// register, `cmpxchg`'s RAX on a mismatch).
    pub load: Option<(usize, u64)>,
    /// RFLAGS.ZF after a `cmpxchg`; `None` for other instructions
    /// (flags of the logic ones are not modelled: kernels use them as
    /// plain writes).
    pub zf: Option<bool>,
    /// The instruction's length.
    pub len: usize,
}

/// Why the write is not emulated (the #PF goes to the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PtwrError {
    #[error("the instruction could not be decoded")]
    Undecodable,
    #[error("the instruction is not a write kxen emulates to a page table")]
    Unsupported,
    #[error("the write is not one aligned 8-byte entry")]
    BadAccess,
}

/// The source operand's value: a 64-bit register or a sign-extended
/// immediate.
fn source(insn: &Instruction, index: u32, gprs: &Gprs) -> Result<u64, PtwrError> {
    match insn.op_kind(index) {
        OpKind::Register => {
            let reg = insn.op_register(index);
            if reg.size() != 8 {
                return Err(PtwrError::BadAccess);
            }
            gpr_index(reg)
                .map(|i| gprs[i])
                .ok_or(PtwrError::Unsupported)
        }
        OpKind::Immediate8to64 | OpKind::Immediate32to64 => Ok(insn.immediate64()),
        OpKind::Immediate8 => Ok(u64::from(insn.immediate8())),
        _ => Err(PtwrError::Unsupported),
    }
}

/// Decode the instruction at `rip` (`bytes`, up to 15) that faulted
/// writing to `fault_addr`, whose entry holds `old`, and say what it
/// writes there.
pub fn emulate_pt_write(
    bytes: &[u8],
    rip: u64,
    fault_addr: u64,
    gprs: &Gprs,
    old: u64,
) -> Result<PtWrite, PtwrError> {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(PtwrError::Undecodable);
    }
    let len = insn.len();
    // One 8-byte, aligned memory destination: the entry that faulted.
    if insn.op_count() == 0
        || insn.op0_kind() != OpKind::Memory
        || insn.memory_size().size() != 8
        || fault_addr & 7 != 0
        || insn.has_rep_prefix()
        || insn.has_repne_prefix()
    {
        return Err(PtwrError::BadAccess);
    }
    let plain = |new| PtWrite {
        new: Some(new),
        load: None,
        zf: None,
        len,
    };
    match insn.mnemonic() {
        Mnemonic::Mov => Ok(plain(source(&insn, 1, gprs)?)),
        Mnemonic::Xchg => {
            let reg = gpr_index(insn.op1_register()).ok_or(PtwrError::Unsupported)?;
            Ok(PtWrite {
                new: Some(gprs[reg]),
                load: Some((reg, old)),
                zf: None,
                len,
            })
        }
        Mnemonic::Cmpxchg => {
            let reg = gpr_index(insn.op1_register()).ok_or(PtwrError::Unsupported)?;
            if gprs[0] == old {
                Ok(PtWrite {
                    new: Some(gprs[reg]),
                    load: None,
                    zf: Some(true),
                    len,
                })
            } else {
                Ok(PtWrite {
                    new: None,
                    load: Some((0, old)),
                    zf: Some(false),
                    len,
                })
            }
        }
        Mnemonic::And => Ok(plain(old & source(&insn, 1, gprs)?)),
        Mnemonic::Or => Ok(plain(old | source(&insn, 1, gprs)?)),
        Mnemonic::Xor => Ok(plain(old ^ source(&insn, 1, gprs)?)),
        Mnemonic::Btr | Mnemonic::Bts | Mnemonic::Btc => {
            let bit = source(&insn, 1, gprs)? & 63;
            let mask = 1u64 << bit;
            let new = match insn.mnemonic() {
                Mnemonic::Btr => old & !mask,
                Mnemonic::Bts => old | mask,
                _ => old ^ mask,
            };
            Ok(plain(new))
        }
        _ => Err(PtwrError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIP: u64 = 0xffff_ffff_8100_0000;
    const ENTRY: u64 = 0xffff_8880_0000_1008;

    fn regs() -> Gprs {
        let mut g = [0u64; 16];
        g[0] = 0x1111; // rax
        g[3] = ENTRY; // rbx
        g[5] = 0x8000_0000_0009_f063; // rbp
        g
    }

    #[test]
    fn linux_set_pte_init_store() {
        // mov %rbp,(%rbx)
        let w = emulate_pt_write(&[0x48, 0x89, 0x2b], RIP, ENTRY, &regs(), 0).unwrap();
        assert_eq!((w.new, w.len), (Some(0x8000_0000_0009_f063), 3));
    }

    #[test]
    fn cmpxchg_matches_or_loads_rax() {
        // lock cmpxchg %rbp,(%rbx)
        let bytes = [0xf0, 0x48, 0x0f, 0xb1, 0x2b];
        let w = emulate_pt_write(&bytes, RIP, ENTRY, &regs(), 0x1111).unwrap();
        assert_eq!((w.new, w.zf), (Some(0x8000_0000_0009_f063), Some(true)));
        let w = emulate_pt_write(&bytes, RIP, ENTRY, &regs(), 0x2222).unwrap();
        assert_eq!(
            (w.new, w.load, w.zf),
            (None, Some((0, 0x2222)), Some(false))
        );
    }

    #[test]
    fn xchg_and_bit_ops() {
        // xchg %rax,(%rbx)
        let w = emulate_pt_write(&[0x48, 0x87, 0x03], RIP, ENTRY, &regs(), 0x55).unwrap();
        assert_eq!((w.new, w.load), (Some(0x1111), Some((0, 0x55))));
        // lock btrq $5,(%rbx): clear Accessed
        let w = emulate_pt_write(
            &[0xf0, 0x48, 0x0f, 0xba, 0x33, 0x05],
            RIP,
            ENTRY,
            &regs(),
            0x63,
        )
        .unwrap();
        assert_eq!(w.new, Some(0x43));
    }

    #[test]
    fn refusals() {
        // movl %ebp,(%rbx): 4 bytes.
        assert_eq!(
            emulate_pt_write(&[0x89, 0x2b], RIP, ENTRY, &regs(), 0),
            Err(PtwrError::BadAccess)
        );
        // Unaligned.
        assert_eq!(
            emulate_pt_write(&[0x48, 0x89, 0x2b], RIP, ENTRY + 1, &regs(), 0),
            Err(PtwrError::BadAccess)
        );
        // A load from the entry is not a write.
        assert_eq!(
            emulate_pt_write(&[0x48, 0x8b, 0x2b], RIP, ENTRY, &regs(), 0),
            Err(PtwrError::BadAccess)
        );
        assert_eq!(
            emulate_pt_write(&[0x0f, 0xff], RIP, ENTRY, &regs(), 0),
            Err(PtwrError::Undecodable)
        );
        assert_eq!(
            emulate_pt_write(&[0x48, 0x01, 0x2b], RIP, ENTRY, &regs(), 0),
            Err(PtwrError::Unsupported),
            "add is not emulated"
        );
    }
}
