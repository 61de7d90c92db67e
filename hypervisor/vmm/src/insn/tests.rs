use super::*;

const CR0_PE_PG_NE: u64 = 0x8000_0021;

fn cpu() -> CpuState {
    let mut c = CpuState {
        bitness: 64,
        cr0: CR0_PE_PG_NE | CR0_MP,
        cr4: CR4_OSFXSR,
        rip: 0xffff_ffff_8100_0000,
        ..Default::default()
    };
    for (i, g) in c.gpr.iter_mut().enumerate() {
        *g = 0x1000 * (i as u64 + 1);
    }
    c.segment_bases[4] = 0x7000_0000;
    c.segment_bases[5] = 0xffff_8880_0000_0000;
    c
}

/// `bytes` followed by nops, as a fetch of 15 bytes gives them.
fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(MAX_INSN_LEN, 0x90);
    v
}

fn fault(vector: u8, error_code: Option<u32>) -> Result<Action, Unanswered> {
    Ok(Action::Fault { vector, error_code })
}

#[test]
fn ldmxcsr_rsp_disp8() {
    // ldmxcsr 0x4(%rsp): the instruction Debian's kernel_fpu_begin runs.
    let a = decide(&[0x0f, 0xae, 0x54, 0x24, 0x04], &cpu());
    assert_eq!(
        a,
        Ok(Action::Fxsr {
            op: FpuOp::Ldmxcsr,
            address: 0x5000 + 4,
            len: 5
        })
    );
}

#[test]
fn fxsr_addressing_forms() {
    let c = cpu();
    let addr = |bytes: &[u8]| match decide(bytes, &c) {
        Ok(Action::Fxsr { address, len, .. }) => (address, len),
        other => panic!("{bytes:02x?}: {other:?}"),
    };
    // stmxcsr -0x100(%rbp)
    assert_eq!(
        addr(&[0x0f, 0xae, 0x9d, 0x00, 0xff, 0xff, 0xff]),
        (0x6000 - 0x100, 7)
    );
    // fxsaveq (%r12)
    assert_eq!(
        decide(&[0x49, 0x0f, 0xae, 0x04, 0x24], &c),
        Ok(Action::Fxsr {
            op: FpuOp::Fxsave { rex_w: true },
            address: 0xd000,
            len: 5
        })
    );
    // ldmxcsr 0x10(%rax,%rcx,8), and with REX.X (r9 as the index).
    assert_eq!(
        addr(&[0x0f, 0xae, 0x54, 0xc8, 0x10]),
        (0x1000 + (0x2000 << 3) + 0x10, 5)
    );
    assert_eq!(
        addr(&[0x42, 0x0f, 0xae, 0x54, 0xc8, 0x10]),
        (0x1000 + (0xa000 << 3) + 0x10, 6)
    );
    // Absolute through a SIB without base or index.
    assert_eq!(
        addr(&[0x0f, 0xae, 0x14, 0x25, 0x34, 0x12, 0, 0]),
        (0x1234, 8)
    );
    // stmxcsr 0x10(%rip): from the next instruction.
    assert_eq!(
        addr(&[0x0f, 0xae, 0x1d, 0x10, 0, 0, 0]),
        (c.rip + 7 + 0x10, 7)
    );
    // %gs:0x20(%rax)
    assert_eq!(
        addr(&[0x65, 0x0f, 0xae, 0x50, 0x20]),
        (c.segment_bases[5] + 0x1000 + 0x20, 5)
    );
    // fxrstor (%rdi)
    assert_eq!(
        decide(&[0x0f, 0xae, 0x0f], &c),
        Ok(Action::Fxsr {
            op: FpuOp::Fxrstor { rex_w: false },
            address: 0x8000,
            len: 3
        })
    );
}

#[test]
fn x87_control_and_no_op_forms() {
    let c = cpu();
    let x87 = |op, len| Ok(Action::X87 { op, len });
    assert_eq!(decide(&[0xd9, 0xd0], &c), x87(X87Op::Nop, 2));
    assert_eq!(decide(&[0x9b], &c), x87(X87Op::Wait, 1));
    assert_eq!(decide(&[0xdb, 0xe3], &c), x87(X87Op::Init, 2));
    assert_eq!(decide(&[0xdb, 0xe2], &c), x87(X87Op::Clex, 2));
    assert_eq!(decide(&[0xdf, 0xe0], &c), x87(X87Op::Stsw(None), 2));
    // fldcw (%rax), fnstcw 8(%rsp), fnstsw (%rbx)
    assert_eq!(decide(&[0xd9, 0x28], &c), x87(X87Op::Ldcw(0x1000), 2));
    assert_eq!(
        decide(&[0xd9, 0x7c, 0x24, 0x08], &c),
        x87(X87Op::Stcw(0x5008), 4)
    );
    assert_eq!(decide(&[0xdd, 0x3b], &c), x87(X87Op::Stsw(Some(0x4000)), 2));
    // `wait; fnstcw` is two instructions: the first one alone.
    assert_eq!(decide(&[0x9b, 0xd9, 0x38], &c), x87(X87Op::Wait, 1));
}

#[test]
fn x87_unavailable_raises_nm_as_cr0_says() {
    let mut c = cpu();
    c.cr0 |= CR0_TS;
    // TS with MP: #NM for everything, wait included.
    assert_eq!(decide(&[0xd9, 0xd0], &c), fault(EXCEPTION_NM, None));
    assert_eq!(decide(&[0x9b], &c), fault(EXCEPTION_NM, None));
    // TS without MP: wait runs, fnop does not.
    c.cr0 &= !CR0_MP;
    assert!(matches!(decide(&[0x9b], &c), Ok(Action::X87 { .. })));
    assert_eq!(decide(&[0xd9, 0xd0], &c), fault(EXCEPTION_NM, None));
    // EM alone: x87 #NM, wait untouched, the SSE group #UD.
    let mut c = cpu();
    c.cr0 |= CR0_EM;
    assert_eq!(decide(&[0xdb, 0xe3], &c), fault(EXCEPTION_NM, None));
    assert!(matches!(decide(&[0x9b], &c), Ok(Action::X87 { .. })));
    assert_eq!(decide(&[0x0f, 0xae, 0x10], &c), fault(EXCEPTION_UD, None));
    // The MXCSR forms need CR4.OSFXSR; TS makes fxsave #NM.
    let mut c = cpu();
    c.cr4 = 0;
    assert_eq!(decide(&[0x0f, 0xae, 0x10], &c), fault(EXCEPTION_UD, None));
    c.cr4 = CR4_OSFXSR;
    c.cr0 |= CR0_TS;
    assert_eq!(decide(&[0x0f, 0xae, 0x00], &c), fault(EXCEPTION_NM, None));
}

#[test]
fn prefixed_int3_is_a_trap_past_the_whole_instruction() {
    let c = cpu();
    for (bytes, len) in [
        (&[0xcc][..], 1),
        (&[0x67, 0xcc], 2),
        (&[0x66, 0xcc], 2),
        (&[0xf3, 0xcc], 2),
        (&[0x2e, 0x67, 0x66, 0xcc], 4),
    ] {
        assert_eq!(
            decide(bytes, &c),
            Ok(Action::Trap {
                vector: EXCEPTION_BP,
                len
            }),
            "{bytes:02x?}"
        );
    }
    // int $3 and int1 (icebp).
    assert_eq!(
        decide(&[0xcd, 0x03], &c),
        Ok(Action::Trap {
            vector: EXCEPTION_BP,
            len: 2
        })
    );
    assert_eq!(
        decide(&[0xf1], &c),
        Ok(Action::Trap {
            vector: EXCEPTION_DB,
            len: 1
        })
    );
    // int $0x80 needs a software-interrupt injection: no answer here.
    assert!(matches!(
        decide(&[0xcd, 0x80], &c),
        Err(Unanswered::NotEmulated { .. })
    ));
}

#[test]
fn vmx_and_svm_without_cpuid_are_ud() {
    let c = cpu();
    for bytes in [
        &[0x66, 0x0f, 0xc7, 0x30][..], // vmclear (%rax)
        &[0x0f, 0xc7, 0x30],           // vmptrld (%rax)
        &[0xf3, 0x0f, 0xc7, 0x30],     // vmxon (%rax)
        &[0x0f, 0x01, 0xc2],           // vmlaunch
        &[0x0f, 0x01, 0xc4],           // vmxoff
        &[0x0f, 0x78, 0xc1],           // vmread %rax, %rcx
        &[0x0f, 0x01, 0xd8],           // vmrun
        &[0x0f, 0x01, 0xdd],           // clgi
        &[0x0f, 0x01, 0xde],           // skinit
    ] {
        assert_eq!(decide(bytes, &c), fault(EXCEPTION_UD, None), "{bytes:02x?}");
    }
    // Offered VMX: vmclear is then not refused for CPUID (and is not
    // emulated).
    let mut c = cpu();
    c.features.vmx = true;
    assert!(matches!(
        decide(&[0x66, 0x0f, 0xc7, 0x30], &c),
        Err(Unanswered::NotEmulated { .. })
    ));
}

#[test]
fn privileged_instructions_at_cpl3_are_gp0() {
    let mut c = cpu();
    c.cpl = 3;
    for bytes in [
        &[0x0f, 0x01, 0xca][..], // clac is #UD, below
        &[0x0f, 0x20, 0xc0],     // mov %cr0, %rax
        &[0x0f, 0x30],           // wrmsr
        &[0xf4],                 // hlt
        &[0x0f, 0x01, 0x10],     // lgdt (%rax)
        &[0x0f, 0x09],           // wbinvd
    ]
    .into_iter()
    .skip(1)
    {
        assert_eq!(
            decide(bytes, &c),
            fault(EXCEPTION_GP, Some(0)),
            "{bytes:02x?}"
        );
    }
    assert_eq!(decide(&[0x0f, 0x01, 0xca], &c), fault(EXCEPTION_UD, None));
    // IOPL-sensitive ones stay KVM's: no answer from here.
    assert!(decide(&[0xfa], &c).is_err());
    // VMX without CPUID is #UD even at CPL3.
    assert_eq!(
        decide(&[0x66, 0x0f, 0xc7, 0x30], &c),
        fault(EXCEPTION_UD, None)
    );
    // At CPL0 clac/stac set AC.
    let c = cpu();
    assert_eq!(
        decide(&[0x0f, 0x01, 0xcb], &c),
        Ok(Action::SetAc { set: true, len: 3 })
    );
}

#[test]
fn invalid_truncated_and_unknown() {
    let c = cpu();
    // ud2 and ud0 are #UD by definition; so are invalid encodings
    // (0f 04 names nothing), a lock on an instruction without a memory
    // operand, and into in 64-bit code.
    for bytes in [
        &[0x0f, 0x0b][..],
        &[0x0f, 0xff, 0xc0],
        &[0x0f, 0x04],
        &[0xf0, 0x90],
        &[0xce],
    ] {
        assert_eq!(
            decide(&padded(bytes), &c),
            fault(EXCEPTION_UD, None),
            "{bytes:02x?}"
        );
    }
    for bytes in [&[][..], &[0x0f], &[0x0f, 0xae], &[0x0f, 0xae, 0x94, 0x24]] {
        assert_eq!(
            decide(bytes, &c),
            Err(Unanswered::Truncated(bytes.len())),
            "{bytes:02x?}"
        );
    }
    // Fifteen prefixes and nothing else: too long, #UD on a CPU (#GP);
    // either way never a panic.
    let _ = decide(&[0x64; 20], &c);
    // popcnt is offered (PVM cannot hide it) and not emulated: the
    // domain ends with its name.
    let e = decide(&[0xf3, 0x0f, 0xb8, 0xc8], &c).unwrap_err();
    assert!(e.to_string().starts_with("popcnt"), "{e}");
    assert_eq!(describe(&[0xd9, 0xd0], 64), "fnop (Fnop)");
}

#[test]
fn thirty_two_bit_code_uses_segment_bases() {
    let mut c = cpu();
    c.bitness = 32;
    c.segment_bases = [0, 0, 0, 0x1000_0000, 0, 0];
    // fnstcw 8(%eax): DS base + eax + 8, within 4 GiB.
    assert_eq!(
        decide(&[0xd9, 0x78, 0x08], &c),
        Ok(Action::X87 {
            op: X87Op::Stcw(0x1000_1008),
            len: 3
        })
    );
    // into exists outside 64-bit code; not emulated (the emulator has it).
    assert!(decide(&[0xce], &c).is_err());
}

#[test]
fn x87_execute_follows_the_fpu_rules() {
    let mut fpu = kvm_fpu {
        fcw: 0x0040,
        fsw: 0x3881,
        ftwx: 0xff,
        last_ip: 5,
        ..Default::default()
    };
    let ne = CR0_PE_PG_NE;
    // A pending unmasked exception (ES set): #MF for the waiting forms,
    // only with CR0.NE.
    assert_eq!(
        x87_execute(X87Op::Nop, &mut fpu, ne, 0),
        X87Step::Fault(EXCEPTION_MF)
    );
    assert_eq!(
        x87_execute(X87Op::Wait, &mut fpu, ne, 0),
        X87Step::Fault(EXCEPTION_MF)
    );
    assert_eq!(
        x87_execute(X87Op::Wait, &mut fpu, ne & !CR0_NE, 0),
        X87Step::Done { changed: false }
    );
    // The no-wait forms go on: fnstsw sees it, fnclex clears it.
    assert_eq!(
        x87_execute(X87Op::Stsw(None), &mut fpu, ne, 0),
        X87Step::ToAx(0x3881)
    );
    assert_eq!(
        x87_execute(X87Op::Clex, &mut fpu, ne, 0),
        X87Step::Done { changed: true }
    );
    assert_eq!(fpu.fsw, 0x3800, "TOP and C-bits stay");
    assert_eq!(
        x87_execute(X87Op::Nop, &mut fpu, ne, 0),
        X87Step::Done { changed: false }
    );
    // fldcw that unmasks a flagged exception makes it pending.
    fpu.fsw |= 0x1; // IE flagged, masked by the default FCW
    x87_execute(X87Op::Ldcw(0), &mut fpu, ne, 0x037e);
    assert_eq!(fpu.fcw, 0x037e);
    assert_eq!(fpu.fsw & 0x8080, 0x8080);
    x87_execute(X87Op::Ldcw(0), &mut fpu, ne & !CR0_NE, 0x037f);
    assert_eq!(fpu.fsw & 0x8080, 0);
    assert_eq!(
        x87_execute(X87Op::Stcw(0x40), &mut fpu, ne, 0),
        X87Step::Store {
            address: 0x40,
            value: 0x037f
        }
    );
    // fninit: the power-on words.
    x87_execute(X87Op::Init, &mut fpu, ne, 0);
    assert_eq!(
        (fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_ip),
        (FCW_INIT, 0, 0, 0)
    );
}

#[test]
fn guest_features_from_cpuid() {
    let f = GuestFeatures::from_cpuid([(1, 0, 1 << 5), (0x8000_0001, 0, 0)]);
    assert_eq!(
        f,
        GuestFeatures {
            vmx: true,
            svm: false
        }
    );
    let f = GuestFeatures::from_cpuid([(1, 0, 0x8000_0000), (0x8000_0001, 0, 1 << 2)]);
    assert_eq!(
        f,
        GuestFeatures {
            vmx: false,
            svm: true
        }
    );
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

/// EIP, CS, EFLAGS as an `iretd` frame.
fn iret_frame(eip: u32, cs: u16, eflags: u32) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[0..4].copy_from_slice(&eip.to_le_bytes());
    f[4..6].copy_from_slice(&cs.to_le_bytes());
    f[8..12].copy_from_slice(&eflags.to_le_bytes());
    f
}

#[test]
fn iretd_in_32bit_code_is_answered() {
    let c = CpuState {
        bitness: 32,
        rip: 0x10_0329,
        ..cpu()
    };
    assert_eq!(decide(&padded(&[0xcf]), &c), Ok(Action::Iret32));
    // 64-bit code (iretd with a 32-bit frame there) is KVM's, not ours.
    assert!(decide(&padded(&[0xcf]), &cpu()).is_err());
}

#[test]
fn iret32_same_level_returns_and_loads_flags_by_privilege() {
    // CPL 0: IF, IOPL and the arithmetic flags come from the frame; bit 1
    // is always set.
    let frame = iret_frame(0x10_0400, 0x08, 0x3246);
    assert_eq!(
        iret32(&frame, 0, 0x2),
        IretStep::Return {
            eip: 0x10_0400,
            cs: 0x08,
            eflags: 0x3246
        }
    );
    // CPL 3 with IOPL 0: neither IF nor IOPL changes.
    let frame = iret_frame(0x40_0000, 0x1b, 0x3203 | 0x80);
    assert_eq!(
        iret32(&frame, 3, 0x2),
        IretStep::Return {
            eip: 0x40_0000,
            cs: 0x1b,
            eflags: 0x83
        }
    );
    // Reserved bits (3, 5, 15, above 21) never load.
    let frame = iret_frame(0, 0x08, 0xffc0_8028);
    assert_eq!(
        iret32(&frame, 0, 0x2),
        IretStep::Return {
            eip: 0,
            cs: 0x08,
            eflags: 0x2
        }
    );
}

#[test]
fn iret32_refusals_and_faults() {
    let gp = |error_code| IretStep::Fault {
        vector: EXCEPTION_GP,
        error_code,
    };
    // A null selector: #GP(0); RPL below CPL: #GP(selector).
    assert_eq!(iret32(&iret_frame(0, 0x03, 0x2), 3, 0x2), gp(0));
    assert_eq!(iret32(&iret_frame(0, 0x08, 0x2), 3, 0x2), gp(0x08));
    // Forms this path leaves out end the domain, as before.
    assert!(matches!(
        iret32(&iret_frame(0, 0x1b, 0x2), 0, 0x2),
        IretStep::Unanswered(_)
    ));
    assert!(matches!(
        iret32(&iret_frame(0, 0x08, 0x2_0002), 0, 0x2),
        IretStep::Unanswered(_)
    ));
    assert!(matches!(
        iret32(&iret_frame(0, 0x08, 0x2), 0, 0x4002),
        IretStep::Unanswered(_)
    ));
}

#[test]
fn code_segment_for_return_checks_the_descriptor() {
    const FLAT_CODE: u64 = 0x00cf_9a00_0000_ffff;
    let s = code_segment_for_return(0x08, FLAT_CODE, 0xffff_fff0).unwrap();
    assert_eq!(
        (s.base, s.limit, s.selector, s.type_, s.present, s.dpl, s.db, s.s, s.g),
        (0, 0xffff_ffff, 0x08, 0xb, 1, 0, 1, 1, 1)
    );
    // A data segment, a DPL that is not the RPL: #GP(selector).
    assert_eq!(
        code_segment_for_return(0x10, 0x00cf_9200_0000_ffff, 0),
        Err((EXCEPTION_GP, 0x10))
    );
    assert_eq!(
        code_segment_for_return(0x0b, FLAT_CODE, 0),
        Err((EXCEPTION_GP, 0x08))
    );
    // Not present: #NP(selector).
    assert_eq!(
        code_segment_for_return(0x08, FLAT_CODE & !(1 << 47), 0),
        Err((11, 0x08))
    );
    // Byte granularity, limit 0xffff: EIP past it is #GP(0).
    let small = FLAT_CODE & !(1 << 55) & !(0xf << 48);
    assert!(code_segment_for_return(0x08, small, 0xffff).is_ok());
    assert_eq!(
        code_segment_for_return(0x08, small, 0x1_0000),
        Err((EXCEPTION_GP, 0))
    );
    // A base spread over the descriptor.
    let based = FLAT_CODE | (0x12_3456 << 16) | (0x78 << 56);
    assert_eq!(
        code_segment_for_return(0x08, based, 0).unwrap().base,
        0x7812_3456
    );
}
