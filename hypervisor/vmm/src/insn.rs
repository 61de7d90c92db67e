//! Decoding of the few memory-operand instructions the VMM emulates itself.
//!
//! On PVM hosts KVM's instruction emulator runs guest ring-0 code and gives
//! up on some instructions a stock kernel uses (the MXCSR and FXSAVE group,
//! `0f ae /0../3`). This module turns their bytes into an operation and a
//! guest-virtual operand address; `vcpu` does the access. The decoder is
//! deliberately narrow: 64-bit code, the legacy prefixes that can appear
//! on these opcodes, REX, ModRM/SIB/displacement. Anything else is refused
//! and stays an emulation failure.

use kvm_bindings::kvm_fpu;

/// Register file as the decoder needs it: the 16 general registers in
/// ModRM order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15), RIP of
/// the instruction, and the FS/GS bases.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeRegs {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

/// What a decoded `0f ae` instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpuOp {
    /// `fxsave` (REX.W: `fxsave64`): store 512 bytes of x87/SSE state.
    Fxsave { rex_w: bool },
    /// `fxrstor` (REX.W: `fxrstor64`): load 512 bytes of x87/SSE state.
    Fxrstor { rex_w: bool },
    /// `ldmxcsr m32`.
    Ldmxcsr,
    /// `stmxcsr m32`.
    Stmxcsr,
}

impl FpuOp {
    /// Bytes of the memory operand.
    pub fn operand_len(self) -> usize {
        match self {
            FpuOp::Fxsave { .. } | FpuOp::Fxrstor { .. } => 512,
            FpuOp::Ldmxcsr | FpuOp::Stmxcsr => 4,
        }
    }

    /// Alignment the CPU requires of the operand (#GP otherwise).
    pub fn alignment(self) -> u64 {
        match self {
            FpuOp::Fxsave { .. } | FpuOp::Fxrstor { .. } => 16,
            FpuOp::Ldmxcsr | FpuOp::Stmxcsr => 1,
        }
    }
}

/// A decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub op: FpuOp,
    /// Guest-virtual address of the memory operand.
    pub address: u64,
    /// Instruction length in bytes.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("instruction truncated")]
    Truncated,
    #[error("not an instruction the VMM emulates")]
    Unsupported,
}

const MAX_INSN_LEN: usize = 15;

/// Decode a 64-bit-mode `0f ae /0-/3` with a memory operand.
pub fn decode_fpu_insn(bytes: &[u8], regs: &DecodeRegs) -> Result<Decoded, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut at = 0;
    let mut segment_base = 0u64;
    // Legacy prefixes. 0x66/0xf2/0xf3 would select other instructions of
    // the 0f ae group (or are undefined on these), as would 0x67 change
    // the address size: refuse them.
    loop {
        match *bytes.get(at).ok_or(DecodeError::Truncated)? {
            // es, cs, ss, ds overrides: base 0 in 64-bit mode.
            0x26 | 0x2e | 0x36 | 0x3e => segment_base = 0,
            0x64 => segment_base = regs.fs_base,
            0x65 => segment_base = regs.gs_base,
            _ => break,
        }
        at += 1;
    }
    let mut rex = 0u8;
    if let Some(&b) = bytes.get(at) {
        if b & 0xf0 == 0x40 {
            rex = b;
            at += 1;
        }
    }
    let rex_w = rex & 0x8 != 0;
    let rex_r = rex & 0x4 != 0;
    let rex_x = (rex & 0x2) >> 1;
    let rex_b = rex & 0x1;
    if bytes.get(at) != Some(&0x0f) || bytes.get(at + 1) != Some(&0xae) {
        return if bytes.len() <= at + 1 {
            Err(DecodeError::Truncated)
        } else {
            Err(DecodeError::Unsupported)
        };
    }
    at += 2;
    let modrm = *bytes.get(at).ok_or(DecodeError::Truncated)?;
    at += 1;
    let mode = modrm >> 6;
    let reg = (modrm >> 3) & 7;
    let rm = modrm & 7;
    // mod == 3 encodes the fence and fs/gs-base instructions; REX.R on the
    // reg field would name no instruction of this group.
    if mode == 3 || rex_r {
        return Err(DecodeError::Unsupported);
    }
    let op = match reg {
        0 => FpuOp::Fxsave { rex_w },
        1 => FpuOp::Fxrstor { rex_w },
        2 => FpuOp::Ldmxcsr,
        3 => FpuOp::Stmxcsr,
        _ => return Err(DecodeError::Unsupported),
    };

    let gpr = |n: u8| regs.gpr[usize::from(n & 0xf)];
    let mut rip_relative = false;
    let mut base_value = 0u64;
    let mut index_value = 0u64;
    let disp_len;
    if rm == 4 {
        let sib = *bytes.get(at).ok_or(DecodeError::Truncated)?;
        at += 1;
        let scale = sib >> 6;
        let index = ((sib >> 3) & 7) | (rex_x << 3);
        let base = sib & 7;
        // Index 4 without REX.X (rsp) means no index.
        if index != 4 {
            index_value = gpr(index) << scale;
        }
        if base == 5 && mode == 0 {
            disp_len = 4;
        } else {
            base_value = gpr(base | (rex_b << 3));
            disp_len = [0, 1, 4][usize::from(mode)];
        }
    } else if rm == 5 && mode == 0 {
        rip_relative = true;
        disp_len = 4;
    } else {
        base_value = gpr(rm | (rex_b << 3));
        disp_len = [0, 1, 4][usize::from(mode)];
    }
    let disp: i64 = match disp_len {
        0 => 0,
        1 => i64::from(*bytes.get(at).ok_or(DecodeError::Truncated)? as i8),
        _ => {
            let raw = bytes.get(at..at + 4).ok_or(DecodeError::Truncated)?;
            i64::from(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
        }
    };
    at += disp_len;
    let len = at;
    let offset = if rip_relative {
        // RIP-relative addresses count from the next instruction.
        regs.rip.wrapping_add(len as u64)
    } else {
        base_value.wrapping_add(index_value)
    }
    .wrapping_add(disp as u64);
    Ok(Decoded {
        op,
        address: segment_base.wrapping_add(offset),
        len,
    })
}

/// MXCSR bits the emulated FXSAVE reports as writable (no reserved bits
/// below 16, DAZ supported), and that LDMXCSR accepts.
pub const MXCSR_MASK: u32 = 0xffff;

/// Bytes of the FXSAVE image the processor writes; 416..512 are reserved
/// or left to software, and FXSAVE leaves them untouched.
pub const FXSAVE_WRITTEN: usize = 416;

/// The FXSAVE image of KVM's FPU state (its first [`FXSAVE_WRITTEN`] bytes).
/// `rex_w` picks the 64-bit layout of the last instruction and operand
/// pointers; without it they are 32-bit offsets with zero selectors.
pub fn fxsave_image(fpu: &kvm_fpu, rex_w: bool) -> [u8; FXSAVE_WRITTEN] {
    let mut img = [0u8; FXSAVE_WRITTEN];
    img[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    img[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    img[4] = fpu.ftwx;
    img[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    if rex_w {
        img[8..16].copy_from_slice(&fpu.last_ip.to_le_bytes());
        img[16..24].copy_from_slice(&fpu.last_dp.to_le_bytes());
    } else {
        img[8..12].copy_from_slice(&(fpu.last_ip as u32).to_le_bytes());
        img[16..20].copy_from_slice(&(fpu.last_dp as u32).to_le_bytes());
    }
    img[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    img[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        // ST(i) is 80 bits in a 16-byte slot; the rest reads as zero.
        img[32 + i * 16..32 + i * 16 + 10].copy_from_slice(&st[..10]);
    }
    for (i, xmm) in fpu.xmm.iter().enumerate() {
        img[160 + i * 16..176 + i * 16].copy_from_slice(xmm);
    }
    img
}

/// KVM's FPU state loaded from an FXSAVE image, as FXRSTOR would; `None`
/// where the image's MXCSR sets reserved bits (the CPU raises #GP).
pub fn fpu_from_fxsave(img: &[u8; 512], rex_w: bool) -> Option<kvm_fpu> {
    let u16_at = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let mxcsr = u32_at(24);
    if mxcsr & !MXCSR_MASK != 0 {
        return None;
    }
    let mut fpu = kvm_fpu {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftwx: img[4],
        last_opcode: u16_at(6) & 0x7ff,
        last_ip: if rex_w {
            u64_at(8)
        } else {
            u64::from(u32_at(8))
        },
        last_dp: if rex_w {
            u64_at(16)
        } else {
            u64::from(u32_at(16))
        },
        mxcsr,
        ..Default::default()
    };
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        st[..10].copy_from_slice(&img[32 + i * 16..32 + i * 16 + 10]);
    }
    for (i, xmm) in fpu.xmm.iter_mut().enumerate() {
        xmm.copy_from_slice(&img[160 + i * 16..176 + i * 16]);
    }
    Some(fpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> DecodeRegs {
        let mut r = DecodeRegs::default();
        for (i, g) in r.gpr.iter_mut().enumerate() {
            *g = 0x1000 * (i as u64 + 1);
        }
        r.rip = 0xffff_ffff_8100_0000;
        r.fs_base = 0x7000_0000;
        r.gs_base = 0xffff_8880_0000_0000;
        r
    }

    #[test]
    fn ldmxcsr_rsp_disp8() {
        // ldmxcsr 0x4(%rsp): the instruction Debian's kernel_fpu_begin runs.
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x54, 0x24, 0x04], &regs()).unwrap();
        assert_eq!(d.op, FpuOp::Ldmxcsr);
        assert_eq!(d.address, 0x5000 + 4);
        assert_eq!(d.len, 5);
    }

    #[test]
    fn stmxcsr_rbp_disp32_negative() {
        // stmxcsr -0x100(%rbp)
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x9d, 0x00, 0xff, 0xff, 0xff], &regs()).unwrap();
        assert_eq!(d.op, FpuOp::Stmxcsr);
        assert_eq!(d.address, 0x6000 - 0x100);
        assert_eq!(d.len, 7);
    }

    #[test]
    fn fxsave64_with_rex_b() {
        // fxsaveq (%r12): 49 0f ae 04 24 (r12 needs a SIB with base 4).
        let d = decode_fpu_insn(&[0x49, 0x0f, 0xae, 0x04, 0x24], &regs()).unwrap();
        assert_eq!(d.op, FpuOp::Fxsave { rex_w: true });
        assert_eq!(d.address, 0xd000);
        assert_eq!(d.len, 5);
    }

    #[test]
    fn fxrstor_plain_register() {
        // fxrstor (%rdi)
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x0f], &regs()).unwrap();
        assert_eq!(d.op, FpuOp::Fxrstor { rex_w: false });
        assert_eq!(d.address, 0x8000);
        assert_eq!(d.len, 3);
    }

    #[test]
    fn sib_with_index_and_scale() {
        // ldmxcsr 0x10(%rax,%rcx,8)
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x54, 0xc8, 0x10], &regs()).unwrap();
        assert_eq!(d.address, 0x1000 + (0x2000 << 3) + 0x10);
        // rex.x selects r9 as the index.
        let d = decode_fpu_insn(&[0x42, 0x0f, 0xae, 0x54, 0xc8, 0x10], &regs()).unwrap();
        assert_eq!(d.address, 0x1000 + (0xa000 << 3) + 0x10);
    }

    #[test]
    fn sib_without_base_or_index() {
        // ldmxcsr 0x1234 (absolute through SIB, base 5, mod 0, index none)
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x14, 0x25, 0x34, 0x12, 0, 0], &regs()).unwrap();
        assert_eq!(d.address, 0x1234);
        assert_eq!(d.len, 8);
    }

    #[test]
    fn rip_relative_and_segment_override() {
        // stmxcsr 0x10(%rip)
        let r = regs();
        let d = decode_fpu_insn(&[0x0f, 0xae, 0x1d, 0x10, 0, 0, 0], &r).unwrap();
        assert_eq!(d.address, r.rip + 7 + 0x10);
        // %gs:0x20(%rax)
        let d = decode_fpu_insn(&[0x65, 0x0f, 0xae, 0x50, 0x20], &r).unwrap();
        assert_eq!(d.address, r.gs_base + 0x1000 + 0x20);
        assert_eq!(d.len, 5);
    }

    #[test]
    fn refuses_what_it_does_not_emulate() {
        let r = regs();
        // lfence (mod 3), xsave (/4), clflush (/7), operand-size prefix.
        for bytes in [
            &[0x0f, 0xae, 0xe8][..],
            &[0x0f, 0xae, 0x20],
            &[0x0f, 0xae, 0x38],
            &[0x66, 0x0f, 0xae, 0x10],
            &[0x0f, 0x0b],
        ] {
            assert_eq!(
                decode_fpu_insn(bytes, &r),
                Err(DecodeError::Unsupported),
                "{bytes:02x?}"
            );
        }
        for bytes in [&[][..], &[0x0f], &[0x0f, 0xae], &[0x0f, 0xae, 0x94, 0x24]] {
            assert_eq!(
                decode_fpu_insn(bytes, &r),
                Err(DecodeError::Truncated),
                "{bytes:02x?}"
            );
        }
        // Fifteen prefixes and nothing else.
        assert!(decode_fpu_insn(&[0x64; 20], &r).is_err());
    }

    #[test]
    fn fxsave_image_round_trips() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0x81,
            last_opcode: 0x5a5,
            last_ip: 0xffff_ffff_8123_4567,
            last_dp: 0xffff_8880_0000_1000,
            mxcsr: 0x1fa0,
            ..Default::default()
        };
        for (i, st) in fpu.fpr.iter_mut().enumerate() {
            st[..10].fill(i as u8 + 1);
        }
        for (i, x) in fpu.xmm.iter_mut().enumerate() {
            x.fill(0x40 + i as u8);
        }
        let img = fxsave_image(&fpu, true);
        assert_eq!(&img[24..32], &[0xa0, 0x1f, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(img[160], 0x40);
        assert_eq!(img[160 + 15 * 16], 0x4f);
        let mut full = [0u8; 512];
        full[..FXSAVE_WRITTEN].copy_from_slice(&img);
        let back = fpu_from_fxsave(&full, true).unwrap();
        assert_eq!(back.fcw, fpu.fcw);
        assert_eq!(back.fsw, fpu.fsw);
        assert_eq!(back.ftwx, fpu.ftwx);
        assert_eq!(back.last_opcode, fpu.last_opcode);
        assert_eq!(back.last_ip, fpu.last_ip);
        assert_eq!(back.last_dp, fpu.last_dp);
        assert_eq!(back.mxcsr, fpu.mxcsr);
        assert_eq!(back.fpr, fpu.fpr);
        assert_eq!(back.xmm, fpu.xmm);
        // The 32-bit layout keeps only the low halves of the pointers.
        let img32 = fxsave_image(&fpu, false);
        full[..FXSAVE_WRITTEN].copy_from_slice(&img32);
        let back32 = fpu_from_fxsave(&full, false).unwrap();
        assert_eq!(back32.last_ip, 0x8123_4567);
        // Reserved MXCSR bits: #GP, nothing loaded.
        full[26] = 1;
        assert!(fpu_from_fxsave(&full, false).is_none());
    }
}
