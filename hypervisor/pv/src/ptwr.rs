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
//! Supported: `mov` from a register or an immediate, `xchg`,
//! `cmpxchg`, and `and`/`or`/`xor`/`btr`/`bts`/`btc`, with or without
//! `lock` (or the `ds` prefix Linux patches it to on one CPU), of 1, 2, 4
//! or 8 bytes naturally aligned inside the entry: a narrower write is
//! merged into the entry and the whole entry checked, as Xen does (Linux's
//! `ptep_set_wrprotect` clears RW with a one-byte `and`). Anything else
//! (an access straddling entries, a string instruction) is not emulated:
//! the guest gets its #PF.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

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
    #[error("the write is not 1, 2, 4 or 8 bytes aligned inside one entry")]
    BadAccess,
}

/// A general register's value as the instruction reads it: the full
/// register for RAX..R15 and their low parts, bits 15:8 for AH..BH (the
/// caller truncates to the operand size).
fn register_value(reg: Register, gprs: &Gprs) -> Result<u64, PtwrError> {
    let index = gpr_index(reg.full_register()).ok_or(PtwrError::Unsupported)?;
    let value = gprs[index];
    Ok(if is_high_byte(reg) { value >> 8 } else { value })
}

fn is_high_byte(reg: Register) -> bool {
    matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    )
}

/// The register's full 64-bit value after the instruction writes its
/// `size`-byte part with `value`: a 4-byte write zero-extends, narrower
/// ones keep the other bits, as the architecture does in 64-bit mode.
fn register_after_write(
    reg: Register,
    gprs: &Gprs,
    size: u64,
    value: u64,
) -> Result<(usize, u64), PtwrError> {
    let index = gpr_index(reg.full_register()).ok_or(PtwrError::Unsupported)?;
    let before = gprs[index];
    let after = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        2 => (before & !0xffff) | (value & 0xffff),
        _ if is_high_byte(reg) => (before & !0xff00) | ((value & 0xff) << 8),
        _ => (before & !0xff) | (value & 0xff),
    };
    Ok((index, after))
}

/// The source operand's value: a register or an immediate, sign-extended
/// as the encoding says (the caller truncates to the operand size).
fn source(insn: &Instruction, index: u32, gprs: &Gprs) -> Result<u64, PtwrError> {
    match insn.op_kind(index) {
        OpKind::Register => register_value(insn.op_register(index), gprs),
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Ok(insn.immediate(index)),
        _ => Err(PtwrError::Unsupported),
    }
}

/// Decode the instruction at `rip` (`bytes`, up to 15) that faulted
/// writing to `fault_addr`, inside the entry holding `old`, and say what
/// the entry holds afterwards.
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
    let size = insn.memory_size().size() as u64;
    let offset = fault_addr & 7;
    // One naturally aligned 1/2/4/8-byte destination inside the entry
    // that faulted.
    if insn.op_count() == 0
        || insn.op0_kind() != OpKind::Memory
        || !matches!(size, 1 | 2 | 4 | 8)
        || !offset.is_multiple_of(size)
        || insn.has_rep_prefix()
        || insn.has_repne_prefix()
    {
        return Err(PtwrError::BadAccess);
    }
    let shift = offset * 8;
    let part_mask = if size == 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    };
    let old_part = (old >> shift) & part_mask;
    // The entry with its accessed part replaced by `part`.
    let merged = |part: u64| (old & !(part_mask << shift)) | ((part & part_mask) << shift);
    let plain = |part: u64| PtWrite {
        new: Some(merged(part)),
        load: None,
        zf: None,
        len,
    };
    match insn.mnemonic() {
        Mnemonic::Mov => Ok(plain(source(&insn, 1, gprs)?)),
        Mnemonic::Xchg => {
            let reg = insn.op1_register();
            let written = register_value(reg, gprs)?;
            Ok(PtWrite {
                new: Some(merged(written)),
                load: Some(register_after_write(reg, gprs, size, old_part)?),
                zf: None,
                len,
            })
        }
        Mnemonic::Cmpxchg => {
            let accumulator = match size {
                8 => Register::RAX,
                4 => Register::EAX,
                2 => Register::AX,
                _ => Register::AL,
            };
            let expected = register_value(accumulator, gprs)? & part_mask;
            if expected == old_part {
                Ok(PtWrite {
                    new: Some(merged(source(&insn, 1, gprs)?)),
                    load: None,
                    zf: Some(true),
                    len,
                })
            } else {
                Ok(PtWrite {
                    new: None,
                    load: Some(register_after_write(accumulator, gprs, size, old_part)?),
                    zf: Some(false),
                    len,
                })
            }
        }
        Mnemonic::And => Ok(plain(old_part & source(&insn, 1, gprs)?)),
        Mnemonic::Or => Ok(plain(old_part | source(&insn, 1, gprs)?)),
        Mnemonic::Xor => Ok(plain(old_part ^ source(&insn, 1, gprs)?)),
        Mnemonic::Btr | Mnemonic::Bts | Mnemonic::Btc => {
            // The faulting address is the unit the bit lives in, so the
            // bit is its offset inside that unit for a register source
            // too.
            let bit = source(&insn, 1, gprs)? & (size * 8 - 1);
            let mask = 1u64 << bit;
            let part = match insn.mnemonic() {
                Mnemonic::Btr => old_part & !mask,
                Mnemonic::Bts => old_part | mask,
                _ => old_part ^ mask,
            };
            Ok(plain(part))
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
    fn narrow_writes_merge_into_the_entry() {
        let old = 0x8000_0000_0009_f067;
        // ds andb $0xfd,(%r12): Linux's ptep_set_wrprotect on one CPU.
        let w = emulate_pt_write(
            &[0x3e, 0x41, 0x80, 0x24, 0x24, 0xfd],
            RIP,
            ENTRY,
            &regs(),
            old,
        )
        .unwrap();
        assert_eq!((w.new, w.len), (Some(0x8000_0000_0009_f065), 6));
        // lock andb on the entry's high byte (NX) at offset 7.
        let w = emulate_pt_write(&[0xf0, 0x80, 0x23, 0x7f], RIP, ENTRY + 7, &regs(), old).unwrap();
        assert_eq!(w.new, Some(0x0000_0000_0009_f067));
        // movl %ebp,(%rbx) into the low half; movw $0x1234 into bits 47:32.
        let w = emulate_pt_write(&[0x89, 0x2b], RIP, ENTRY, &regs(), old).unwrap();
        assert_eq!(w.new, Some(0x8000_0000_0009_f063));
        let w = emulate_pt_write(
            &[0x66, 0xc7, 0x03, 0x34, 0x12],
            RIP,
            ENTRY + 4,
            &regs(),
            old,
        )
        .unwrap();
        assert_eq!(w.new, Some(0x8000_1234_0009_f067));
        // lock btrl $1 at offset 0 and orb %ah at offset 1.
        let w =
            emulate_pt_write(&[0xf0, 0x0f, 0xba, 0x33, 0x01], RIP, ENTRY, &regs(), old).unwrap();
        assert_eq!(w.new, Some(0x8000_0000_0009_f065));
        let w = emulate_pt_write(&[0x08, 0x23], RIP, ENTRY + 1, &regs(), 0).unwrap();
        assert_eq!(w.new, Some(0x1100), "AH of RAX=0x1111 into byte 1");
        // xchg %eax,(%rbx): EAX gets the old low half, zero-extended.
        let mut g = regs();
        g[0] = 0xdead_beef_0000_0001;
        let w = emulate_pt_write(&[0x87, 0x03], RIP, ENTRY, &g, old).unwrap();
        assert_eq!(w.new, Some(0x8000_0000_0000_0001));
        assert_eq!(w.load, Some((0, 0x0009_f067)));
        // cmpxchgb %cl,(%rbx) at offset 0, AL mismatching: AL loads, the
        // rest of RAX stays.
        let w = emulate_pt_write(&[0x0f, 0xb0, 0x0b], RIP, ENTRY, &g, old).unwrap();
        assert_eq!(
            (w.new, w.load, w.zf),
            (None, Some((0, 0xdead_beef_0000_0067)), Some(false))
        );
    }

    #[test]
    fn refusals() {
        // A 4-byte write at offset 2, and an 8-byte one at offset 1.
        assert_eq!(
            emulate_pt_write(&[0x89, 0x2b], RIP, ENTRY + 2, &regs(), 0),
            Err(PtwrError::BadAccess)
        );
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
