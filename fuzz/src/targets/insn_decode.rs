//! Instruction bytes and registers from a guest whose `0f ae` instruction
//! KVM's emulator gave up on: kxen-vmm's decoder and its FXSAVE-image
//! loader must accept or refuse them, never panic, and never claim more
//! bytes than it was given.

use kxen_vmm::insn::{decode_fpu_insn, fpu_from_fxsave, DecodeRegs};

/// One fuzz input; panics on any broken invariant. True when the input
/// decoded as an instruction kxen-vmm emulates.
pub fn insn_decode(data: &[u8]) -> bool {
    if data.len() < 8 * 19 {
        return false;
    }
    let (reg_bytes, rest) = data.split_at(8 * 19);
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&reg_bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let mut regs = DecodeRegs::default();
    for (i, g) in regs.gpr.iter_mut().enumerate() {
        *g = word(i);
    }
    regs.rip = word(16);
    regs.fs_base = word(17);
    regs.gs_base = word(18);
    let decoded = decode_fpu_insn(rest, &regs);
    if let Ok(insn) = &decoded {
        assert!(insn.len <= rest.len().min(15));
        assert!(insn.op.operand_len() == 4 || insn.op.operand_len() == 512);
    }
    if rest.len() >= 512 {
        let mut img = [0u8; 512];
        img.copy_from_slice(&rest[..512]);
        let _ = fpu_from_fxsave(&img, rest[0] & 1 == 1);
    }
    decoded.is_ok()
}
