//! Instruction bytes and vCPU state from a guest whose instruction KVM's
//! emulator gave up on: kxen-vmm's answer ([`kxen_vmm::insn::decide`],
//! built on iced-x86) must be an action, an exception or a refusal, never
//! a panic; an action never claims more bytes than it was given, and the
//! x87 and FXSAVE-image state changes keep their invariants.

use kvm_bindings::kvm_fpu;
use kxen_vmm::insn::{
    decide, describe, fpu_from_fxsave, x87_execute, Action, CpuState, GuestFeatures, Unanswered,
    X87Op, X87Step, FCW_INIT, MAX_INSN_LEN,
};

/// Registers (16 GPRs, rip, fs and gs base), then one control byte: bits
/// 0-1 the code size (64, 32, 16, 64), bits 2-3 the CPL, bit 4 VMX
/// offered, bit 5 SVM offered, bit 6 CR0.TS, bit 7 CR0.EM.
pub const HEADER_LEN: usize = 8 * 19 + 1;

/// One fuzz input; panics on any broken invariant. True when the bytes
/// held a whole instruction (answered or refused by name).
pub fn insn_decode(data: &[u8]) -> bool {
    if data.len() < HEADER_LEN {
        return false;
    }
    let (header, rest) = data.split_at(HEADER_LEN);
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let control = header[8 * 19];
    let mut cpu = CpuState {
        bitness: [64, 32, 16, 64][usize::from(control & 3)],
        cpl: (control >> 2) & 3,
        // PE, MP, NE, PG, and TS/EM from the control byte.
        cr0: 0x8000_0023 | (u64::from(control >> 6 & 1) << 3) | (u64::from(control >> 7) << 2),
        cr4: 1 << 9,
        rip: word(16),
        features: GuestFeatures {
            vmx: control & 0x10 != 0,
            svm: control & 0x20 != 0,
        },
        ..Default::default()
    };
    for (i, g) in cpu.gpr.iter_mut().enumerate() {
        *g = word(i);
    }
    cpu.segment_bases[4] = word(17);
    cpu.segment_bases[5] = word(18);
    let _ = describe(rest, cpu.bitness);
    let given = rest.len().min(MAX_INSN_LEN);
    let answer = decide(rest, &cpu);
    match answer {
        Ok(Action::X87 { len, .. })
        | Ok(Action::Fxsr { len, .. })
        | Ok(Action::SetAc { len, .. })
        | Ok(Action::Trap { len, .. }) => assert!((1..=given).contains(&len), "len {len}"),
        Ok(Action::Fault { vector, error_code }) => {
            // #UD, #NM: no error code; #GP(0) for privilege.
            assert!(matches!(
                (vector, error_code),
                (6, None) | (7, None) | (13, Some(0))
            ));
        }
        // Only 32-bit code's iretd is handed to iret32.
        Ok(Action::Iret32) => assert_eq!(cpu.bitness, 32),
        Err(_) => {}
    }
    if let Ok(Action::Fxsr { op, .. }) = answer {
        assert!(op.operand_len() == 4 || op.operand_len() == 512);
    }
    if rest.len() >= 512 {
        let mut img = [0u8; 512];
        img.copy_from_slice(&rest[..512]);
        if let Some(mut fpu) = fpu_from_fxsave(&img, rest[0] & 1 == 1) {
            x87_state_invariants(&mut fpu, cpu.cr0, u16::from_le_bytes([rest[0], rest[1]]));
        }
    }
    !matches!(answer, Err(Unanswered::Truncated(_)))
}

/// The x87 control forms on a state loaded from the input.
fn x87_state_invariants(fpu: &mut kvm_fpu, cr0: u64, word: u16) {
    let before = *fpu;
    let mut f = before;
    if let X87Step::Done { .. } = x87_execute(X87Op::Ldcw(0), &mut f, cr0, word) {
        assert_eq!(f.fcw, word);
        // ES and B say whether a flagged exception is now unmasked.
        let pending = f.fsw & 0x3f & !word != 0;
        assert_eq!(f.fsw & 0x8080 == 0x8080, pending);
        assert_eq!(f.fsw & 0x8080 == 0, !pending);
    }
    let mut f = before;
    assert_eq!(
        x87_execute(X87Op::Clex, &mut f, cr0, 0),
        X87Step::Done { changed: true }
    );
    assert_eq!(f.fsw & 0x80ff, 0);
    assert_eq!(f.fsw & 0x7f00, before.fsw & 0x7f00);
    let mut f = before;
    x87_execute(X87Op::Init, &mut f, cr0, 0);
    assert_eq!((f.fcw, f.fsw, f.ftwx), (FCW_INIT, 0, 0));
    assert_eq!(f.mxcsr, before.mxcsr, "fninit leaves SSE alone");
    *fpu = f;
}
