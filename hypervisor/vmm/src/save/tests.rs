//! Round trips KVM → Xen → KVM, packed fields against values worked out by
//! hand from the SDM and Xen's definitions, and hostile records.
use kvm_bindings::{kvm_dtable, kvm_segment};
use xen_abi::hvm_save::{HwCpu, XEN_X86_FPU_INITIALISED};

use super::cpu::{self, KvmVcpuState, LoadError, SaveError, SavedMsrs};
use super::lapic::{self, LapicLoadError};

fn segment(selector: u16, base: u64, limit: u32, type_: u8, flags: &str) -> kvm_segment {
    let has = |flag| u8::from(flags.contains(flag));
    let present = has('p');
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present,
        dpl: if flags.contains('3') { 3 } else { 0 },
        db: has('d'),
        s: has('s'),
        l: has('l'),
        g: has('g'),
        avl: has('a'),
        unusable: 1 - present,
        padding: 0,
    }
}

fn set_lapic_register(state: &mut KvmVcpuState, offset: usize, value: u32) {
    for (index, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.lapic.regs[offset + index] = byte as std::os::raw::c_char;
    }
}

/// A state with every carried field distinct and non-zero where it can be.
fn common(seed: u64) -> KvmVcpuState {
    let mut state = KvmVcpuState::default();
    let r = &mut state.regs;
    (r.rax, r.rbx, r.rcx, r.rdx) = (seed + 1, seed + 2, seed + 3, seed + 4);
    (r.rsi, r.rdi, r.rsp, r.rbp) = (seed + 5, seed + 6, seed + 7, seed + 8);
    (r.r8, r.r9, r.r10, r.r11) = (seed + 9, seed + 10, seed + 11, seed + 12);
    (r.r12, r.r13, r.r14, r.r15) = (seed + 13, seed + 14, seed + 15, u64::MAX - seed);
    r.rflags = 0x246;
    state.fpu.fcw = 0x27f;
    state.fpu.fsw = 0x3800;
    state.fpu.ftwx = 0x81;
    state.fpu.last_opcode = 0x7ff;
    state.fpu.last_ip = 0x1234_5678_9abc;
    state.fpu.last_dp = 0xdead_beef_0000;
    state.fpu.mxcsr = 0x1fa0;
    for (index, register) in state.fpu.fpr.iter_mut().enumerate() {
        register[..10].fill(index as u8 + 0x10);
    }
    for (index, register) in state.fpu.xmm.iter_mut().enumerate() {
        register.fill((index as u8).wrapping_add(0x40).wrapping_add(seed as u8));
    }
    state.debugregs.db = [0x1000, 0x2000, 0x3000, 0x4000 + seed];
    state.debugregs.dr6 = 0xffff_0ff1;
    state.debugregs.dr7 = 0x0000_0403;
    state.sregs.cr2 = 0x7fff_0000 + seed;
    state.sregs.apic_base = 0xfee0_0900;
    state.msrs = SavedMsrs {
        sysenter_cs: 0x10,
        sysenter_esp: 0xffff_8800_0000_1000,
        sysenter_eip: 0xffff_ffff_8100_0000,
        tsc_aux: seed,
        tsc: 0x1_0000_0000 * seed + 77,
        tsc_deadline: 0,
        ..Default::default()
    };
    set_lapic_register(&mut state, 0x20, 3 << 24);
    set_lapic_register(&mut state, 0x80, 0x20);
    state.sregs.cr8 = 2;
    set_lapic_register(&mut state, 0xf0, 0x1ff);
    set_lapic_register(&mut state, 0x3e0, 0xb);
    state
}

fn long_mode() -> KvmVcpuState {
    let mut state = common(100);
    state.regs.rip = 0xffff_ffff_8100_1234;
    let s = &mut state.sregs;
    s.cs = segment(0x10, 0, 0xffff_ffff, 0xb, "pslg");
    s.ds = segment(0x18, 0, 0xffff_ffff, 0x3, "psdg");
    s.es = segment(0, 0, 0, 0, "");
    s.ss = segment(0x18, 0, 0xffff_ffff, 0x3, "psdg");
    s.fs = segment(0, 0x7f00_1234_5000, 0xffff_ffff, 0x3, "psdg");
    s.gs = segment(0, 0xffff_8880_0000_0000, 0xffff_ffff, 0x3, "psdg");
    s.tr = segment(0x40, 0xffff_fe00_0000_3000, 0x4087, 0xb, "p");
    s.ldt = segment(0, 0, 0, 0, "");
    s.gdt = kvm_dtable {
        base: 0xffff_fe00_0000_1000,
        limit: 0x7f,
        padding: [0; 3],
    };
    s.idt = kvm_dtable {
        base: 0xffff_fe00_0000_0000,
        limit: 0xfff,
        padding: [0; 3],
    };
    s.cr0 = 0x8005_0033;
    s.cr3 = 0x1_2345_6000;
    s.cr4 = 0x3706f0;
    s.efer = 0xd01;
    state.msrs.star = 0x0023_0010_0000_0000;
    state.msrs.lstar = 0xffff_ffff_8100_2000;
    state.msrs.cstar = 0xffff_ffff_8100_3000;
    state.msrs.sfmask = 0x4_7700;
    state.msrs.kernel_gs_base = 0x7f00_0000_8000;
    // A page fault being delivered, with its error code (a write).
    state.events.exception.injected = 1;
    state.events.exception.nr = 14;
    state.events.exception.has_error_code = 1;
    state.events.exception.error_code = 2;
    state
}

fn protected_mode() -> KvmVcpuState {
    let mut state = common(200);
    state.regs.rip = 0xc010_0000;
    let s = &mut state.sregs;
    s.cs = segment(0x08, 0, 0xffff_ffff, 0xb, "psdg");
    for data in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs] {
        *data = segment(0x23, 0x1000, 0xf_ffff, 0x3, "psd3a");
    }
    s.ss = segment(0x10, 0, 0xffff_ffff, 0x3, "psdg");
    s.tr = segment(0x28, 0xc020_0000, 0x67, 0xb, "p");
    s.ldt = segment(0x30, 0xc030_0000, 0xff, 0x2, "p");
    s.gdt = kvm_dtable {
        base: 0xc000_1000,
        limit: 0x3f,
        padding: [0; 3],
    };
    s.idt.limit = 0x7ff;
    s.cr0 = 0x11;
    // An external interrupt being delivered.
    state.events.interrupt.injected = 1;
    state.events.interrupt.nr = 0x30;
    state
}

fn real_mode() -> KvmVcpuState {
    let mut state = common(300);
    state.regs.rip = 0xfff0;
    let s = &mut state.sregs;
    s.cs = segment(0xf000, 0xffff_0000, 0xffff, 0xb, "ps");
    for data in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *data = segment(0, 0, 0xffff, 0x3, "ps");
    }
    s.tr = segment(0, 0, 0xffff, 0xb, "p");
    s.ldt = segment(0, 0, 0xffff, 0x2, "p");
    s.idt.limit = 0x3ff;
    s.gdt.limit = 0xffff;
    s.cr0 = 0x6000_0010;
    state.events.nmi.injected = 1;
    state
}

fn software_interrupt() -> KvmVcpuState {
    let mut state = protected_mode();
    state.events.interrupt.nr = 0x80;
    state.events.interrupt.soft = 1;
    state
}

fn x2apic() -> KvmVcpuState {
    let mut state = long_mode();
    state.events = Default::default();
    state.sregs.apic_base = 0xfee0_0d00;
    set_lapic_register(&mut state, 0x20, 7 << 24);
    state.msrs.tsc_deadline = 0x55_0000;
    state
}

#[test]
fn kvm_state_survives_the_cpu_and_lapic_records() {
    for (name, state) in [
        ("long mode", long_mode()),
        ("protected mode", protected_mode()),
        ("real mode", real_mode()),
        ("software interrupt", software_interrupt()),
        ("x2APIC", x2apic()),
    ] {
        let records = cpu::save(&state).unwrap_or_else(|error| panic!("{name}: {error}"));
        let loaded = cpu::load(&records).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(loaded, state, "{name}");
        // And Xen's side is a fixed point too.
        assert_eq!(cpu::save(&loaded).unwrap(), records, "{name}");
    }
}

#[test]
fn packed_fields_match_the_sdm_and_xen() {
    let records = cpu::save(&long_mode()).unwrap();
    let cpu = &records.cpu;
    // 64-bit code: type 0xb (execute/read, accessed), S, DPL 0, P, L, G.
    assert_eq!(cpu.cs_arbytes, 0xb | 1 << 4 | 1 << 7 | 1 << 9 | 1 << 11);
    assert_eq!(cpu.cs_arbytes, 0xa9b);
    // Flat 32-bit data: type 3, S, P, D/B, G.
    assert_eq!(cpu.ds_arbytes, 0xc93);
    // Busy 64-bit TSS: type 0xb, system, present, byte granular.
    assert_eq!(cpu.tr_arbytes, 0x8b);
    // Unusable segments are saved not present.
    assert_eq!(cpu.ldtr_arbytes, 0);
    // #PF with an error code: valid, type 3 (hardware exception), error
    // code valid, vector 14.
    assert_eq!(cpu.pending_event, 0x8000_0b0e);
    assert_eq!(cpu.error_code, 2);
    assert_eq!(cpu.flags, XEN_X86_FPU_INITIALISED);
    assert_eq!(cpu.pad0, 0);
    // The FXSAVE image: FCW, abridged FTW, FIP, MXCSR, MXCSR_MASK, ST0,
    // XMM15, Xen's word-size byte.
    assert_eq!(cpu.fpu_regs[0..2], [0x7f, 0x02]);
    assert_eq!(cpu.fpu_regs[4], 0x81);
    assert_eq!(cpu.fpu_regs[8..16], 0x1234_5678_9abcu64.to_le_bytes());
    assert_eq!(cpu.fpu_regs[24..28], 0x1fa0u32.to_le_bytes());
    assert_eq!(cpu.fpu_regs[28..32], 0xffffu32.to_le_bytes());
    assert_eq!(cpu.fpu_regs[32], 0x10);
    assert_eq!(cpu.fpu_regs[400], 0x40 + 15 + 100);
    assert_eq!(cpu.fpu_regs[511], 8);
    // LAPIC: TDCR 0xb divides by 1; enabled in hardware and software.
    assert_eq!(records.lapic.timer_divisor, 1);
    assert_eq!(records.lapic.disabled, 0);
    assert_eq!(records.lapic.apic_base_msr, 0xfee0_0900);
    assert_eq!(records.lapic_regs.data[0x23], 3, "xAPIC ID in bits 31:24");

    let real = cpu::save(&real_mode()).unwrap();
    assert_eq!(real.cpu.cs_arbytes, 0x9b);
    assert_eq!(real.cpu.ds_arbytes, 0x93);
    assert_eq!(real.cpu.pending_event, 0x8000_0202, "NMI: type 2, vector 2");
    let interrupt = cpu::save(&protected_mode()).unwrap();
    assert_eq!(interrupt.cpu.pending_event, 0x8000_0030);
    assert_eq!(interrupt.cpu.ds_arbytes, 0x4f3 | 1 << 8, "DPL 3, AVL, D/B");
    let soft = cpu::save(&software_interrupt()).unwrap();
    assert_eq!(soft.cpu.pending_event, 0x8000_0480);

    let x2 = cpu::save(&x2apic()).unwrap();
    assert_eq!(x2.lapic_regs.data[0x20..0x24], [7, 0, 0, 0], "x2APIC ID");
    assert_eq!(x2.lapic.tdt_msr, 0x55_0000);
}

#[test]
fn divisors_follow_the_divide_configuration_register() {
    let expected = [2, 4, 8, 16, 32, 64, 128, 1];
    for (index, divisor) in expected.into_iter().enumerate() {
        let index = index as u32;
        let tdcr = (index & 3) | ((index & 4) << 1);
        assert_eq!(lapic::timer_divisor(tdcr), divisor, "TDCR {tdcr:#x}");
    }
}

#[test]
fn old_vmx_style_attributes_are_unfolded() {
    let mut records = cpu::save(&long_mode()).unwrap();
    // The layout old Xen saved from the VMCS: G, D/B, L, AVL in 15:12.
    records.cpu.cs_arbytes = 0xa09b;
    assert_eq!(cpu::load(&records).unwrap().sregs.cs, long_mode().sregs.cs);
}

fn refused(change: impl Fn(&mut HwCpu)) -> LoadError {
    let mut records = cpu::save(&long_mode()).unwrap();
    change(&mut records.cpu);
    cpu::load(&records).expect_err("a hostile record was accepted")
}

#[test]
fn hostile_cpu_records_are_refused() {
    assert!(matches!(
        refused(|cpu| cpu.cs_arbytes |= 1 << 12 | 1 << 8),
        LoadError::BadSegmentAttributes("CS", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.ss_sel = 0x1_0000),
        LoadError::BadSelector("SS", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.gdtr_limit = 0x1_0000),
        LoadError::BadTableLimit("GDTR", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.fs_base = 0x8000_0000_0000),
        LoadError::NonCanonical("FS base", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.msr_lstar = 0x0001_0000_0000_0000),
        LoadError::NonCanonical("LSTAR", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.rip = 0x0000_8000_0000_0000),
        LoadError::NonCanonical("RIP", _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr4 |= 1 << 13),
        LoadError::BadCr4(_, 0x2000)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr4 |= 1 << 14),
        LoadError::BadCr4(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr4 |= 1 << 40),
        LoadError::BadCr4(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr0 &= !0x10),
        LoadError::BadCr0(_)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr0 |= 1 << 32),
        LoadError::BadCr0(_)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr0 = 0x8000_0010),
        LoadError::BadCr0(_)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr3 |= 1 << 60),
        LoadError::BadCr3(_)
    ));
    assert!(matches!(
        refused(|cpu| cpu.msr_efer |= 1 << 12),
        LoadError::BadEfer(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.msr_efer &= !0x400),
        LoadError::BadEfer(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.cr4 &= !0x20),
        LoadError::BadEfer(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.dr7 |= 1 << 40),
        LoadError::BadDebugRegister(7, _)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pad0 = 1),
        LoadError::NonZeroPadding(1)
    ));
    assert!(matches!(
        refused(|cpu| cpu.flags = 2),
        LoadError::UnknownFlags(2)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pending_event = 0x8000_010e),
        LoadError::BadPendingEvent(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pending_event = 0x8000_0830),
        LoadError::BadPendingEvent(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pending_event = 0x8001_0030),
        LoadError::BadPendingEvent(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pending_event = 0x8000_0240),
        LoadError::BadPendingEvent(..)
    ));
    assert!(matches!(
        refused(|cpu| cpu.pending_event = 0x8000_0340),
        LoadError::BadPendingEvent(..)
    ));

    let mut records = cpu::save(&long_mode()).unwrap();
    records.lapic.apic_base_msr = 0xfee0_0401;
    assert_eq!(
        cpu::load(&records),
        Err(LoadError::Lapic(LapicLoadError::BadApicBase(0xfee0_0401)))
    );
    let mut records = cpu::save(&x2apic()).unwrap();
    records.lapic_regs.data[0x21] = 1;
    assert!(matches!(
        cpu::load(&records),
        Err(LoadError::Lapic(LapicLoadError::X2apicIdTooWide(0x107)))
    ));
}

#[test]
fn an_uninitialised_fpu_loads_as_reset() {
    let mut records = cpu::save(&real_mode()).unwrap();
    records.cpu.flags = 0;
    let fpu = cpu::load(&records).unwrap().fpu;
    assert_eq!((fpu.fcw, fpu.mxcsr, fpu.ftwx), (0x37f, 0x1f80, 0));
    assert_eq!(fpu.xmm, [[0; 16]; 16]);
}

#[test]
fn several_injected_events_are_refused() {
    let mut state = long_mode();
    state.events.nmi.injected = 1;
    assert!(matches!(
        cpu::save(&state),
        Err(SaveError::SeveralInjectedEvents(_))
    ));
}

/// Arbitrary bytes as a CPU record never panic the loader.
#[test]
fn arbitrary_records_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = cpu::save(&long_mode()).unwrap();
    for _ in 0..2000 {
        let mut records = base;
        let bytes = zerocopy::IntoBytes::as_mut_bytes(&mut records.cpu);
        for _ in 0..4 {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        let _ = cpu::load(&records);
    }
}
