use std::collections::HashMap;

use super::*;

const RIP: u64 = 0xffff_ffff_8000_1000;
const HW_CR0: u64 = 0x8005_0033;
const HW_CR4: u64 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE | CR4_FSGSBASE;
const L4: Mfn = 0x42;

/// A vCPU for the tests: Intel CPUID with XSAVE, FSGSBASE and VMX, a
/// kernel L4 at frame 0x42, and the frames below 0x100 loadable as L4s.
struct TestCpu {
    gpr: [u64; 16],
    kernel: bool,
    virt: VirtualCpu,
    fs: u64,
    gs: u64,
    efer: u64,
    leaves: HashMap<(u32, u32), [u32; 4]>,
    base: Option<Mfn>,
    hypercall_page: Option<Mfn>,
    bitmap_ports: Vec<u16>,
}

fn vendor_leaf(name: &[u8; 12], max: u32) -> [u32; 4] {
    let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
    [max, word(0), word(8), word(4)]
}

impl TestCpu {
    fn new() -> TestCpu {
        let mut leaves = HashMap::new();
        leaves.insert((0, 0), vendor_leaf(b"GenuineIntel", 0xd));
        // ECX: VMX (5), MONITOR (3), X2APIC (21), XSAVE (26), OSXSAVE (27),
        // SSE3 (0). EDX: FPU, DE, TSC, MTRR (12), PGE (13), DS (21).
        leaves.insert(
            (1, 0),
            [
                0x000906ea,
                0x0a10_0800,
                (1 << 5) | (1 << 3) | (1 << 21) | (1 << 26) | (1 << 27) | 1,
                0x1 | 0x4 | 0x10 | (1 << 12) | (1 << 13) | (1 << 21),
            ],
        );
        leaves.insert((5, 0), [0x40, 0x40, 3, 0x1120]);
        // EBX: FSGSBASE (0), SMEP (7), INVPCID (10); EDX: IBRSB (26).
        leaves.insert((7, 0), [0, 1 | (1 << 7) | (1 << 10), 0, 1 << 26]);
        leaves.insert((0xa, 0), [0x0704_3004, 0, 0, 0x603]);
        leaves.insert((0x8000_0000, 0), [0x8000_0008, 0, 0, 0]);
        // EDX: SYSCALL (11), NX (20), PAGE1GB (26), LM (29).
        leaves.insert(
            (0x8000_0001, 0),
            [0, 0, 1, (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29)],
        );
        leaves.insert((XEN_CPUID_BASE + 1, 0), [0x0004_0011, 0, 0, 0]);
        leaves.insert((XEN_CPUID_BASE + 3, 0), [0, 0, 2_600_000, 0]);
        leaves.insert((XEN_CPUID_BASE + 3, 2), [2_600_000, 0, 0, 0]);
        TestCpu {
            gpr: [0; 16],
            kernel: true,
            virt: VirtualCpu::new(HW_CR4),
            fs: 0,
            gs: 0,
            efer: 0xd01,
            leaves,
            base: Some(L4),
            hypercall_page: None,
            bitmap_ports: Vec::new(),
        }
    }
}

impl PrivilegedCpu for TestCpu {
    fn vcpu_id(&self) -> u32 {
        0
    }
    fn kernel_mode(&self) -> bool {
        self.kernel
    }
    fn gpr(&self, index: GprIndex) -> u64 {
        self.gpr[index]
    }
    fn set_gpr(&mut self, index: GprIndex, value: u64) {
        self.gpr[index] = value;
    }
    fn hardware_cr0(&self) -> u64 {
        HW_CR0
    }
    fn hardware_cr4(&self) -> u64 {
        HW_CR4
    }
    fn virtual_cpu(&mut self) -> &mut VirtualCpu {
        &mut self.virt
    }
    fn segment_base(&self, which: SegmentBase) -> u64 {
        match which {
            SegmentBase::Fs => self.fs,
            SegmentBase::Gs => self.gs,
        }
    }
    fn set_segment_base(&mut self, which: SegmentBase, base: u64) {
        match which {
            SegmentBase::Fs => self.fs = base,
            SegmentBase::Gs => self.gs = base,
        }
    }
    fn tsc(&mut self) -> u64 {
        0x1234_5678_9abc
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.leaves.get(&(leaf, subleaf)).copied().unwrap_or([0; 4])
    }
    fn max_machine_frame(&self) -> Mfn {
        0x3ffff
    }
    fn kernel_base_pointer(&self) -> Option<Mfn> {
        self.base
    }
    fn load_kernel_base_pointer(&mut self, mfn: Mfn) -> Result<(), MmuError> {
        if mfn < 0x100 {
            self.base = Some(mfn);
            Ok(())
        } else {
            Err(MmuError::BadFrame { mfn })
        }
    }
    fn install_hypercall_page(&mut self, mfn: Mfn) -> bool {
        if mfn < 0x100 {
            self.hypercall_page = Some(mfn);
            true
        } else {
            false
        }
    }
    fn io_bitmap_permits(&mut self, port: u16, _bytes: u8) -> bool {
        self.bitmap_ports.contains(&port)
    }
}

fn run_gp(cpu: &mut TestCpu, bytes: &[u8]) -> Outcome {
    emulate_privileged_op(cpu, RIP, bytes)
}

fn emulated(len: u64) -> Outcome {
    Outcome::Emulated { rip: RIP + len }
}

const RDMSR: [u8; 2] = [0x0f, 0x32];
const WRMSR: [u8; 2] = [0x0f, 0x30];

fn rdmsr(cpu: &mut TestCpu, index: u32) -> Outcome {
    cpu.gpr[RCX] = u64::from(index) | 0xdead_0000_0000_0000;
    cpu.gpr[RAX] = u64::MAX;
    cpu.gpr[RDX] = u64::MAX;
    run_gp(cpu, &RDMSR)
}

fn rdmsr_value(cpu: &mut TestCpu, index: u32) -> u64 {
    assert_eq!(rdmsr(cpu, index), emulated(2), "rdmsr {index:#x}");
    // Both halves zero-extended.
    assert_eq!(cpu.gpr[RAX] >> 32, 0);
    assert_eq!(cpu.gpr[RDX] >> 32, 0);
    (cpu.gpr[RDX] << 32) | cpu.gpr[RAX]
}

fn wrmsr(cpu: &mut TestCpu, index: u32, value: u64) -> Outcome {
    cpu.gpr[RCX] = u64::from(index);
    cpu.gpr[RAX] = (value & 0xffff_ffff) | 0xffff_ffff_0000_0000;
    cpu.gpr[RDX] = value >> 32;
    run_gp(cpu, &WRMSR)
}

#[test]
fn rdmsr_of_emulated_msrs() {
    let mut cpu = TestCpu::new();
    cpu.fs = 0x7000_1000;
    cpu.gs = 0xffff_8880_0000_0000;
    cpu.virt.user_gs_base = 0x5555;
    assert_eq!(rdmsr_value(&mut cpu, MSR_FS_BASE), 0x7000_1000);
    assert_eq!(rdmsr_value(&mut cpu, MSR_GS_BASE), 0xffff_8880_0000_0000);
    assert_eq!(rdmsr_value(&mut cpu, MSR_SHADOW_GS_BASE), 0x5555);
    assert_eq!(rdmsr_value(&mut cpu, MSR_APIC_BASE), 0xfee0_0900);
    assert_eq!(rdmsr_value(&mut cpu, MSR_IA32_TSC), 0x1234_5678_9abc);
    // SVME and unknown bits hidden.
    cpu.efer = 0xd01 | (1 << 12) | (1 << 30);
    assert_eq!(rdmsr_value(&mut cpu, MSR_EFER), 0xd01);
    assert_eq!(
        rdmsr_value(&mut cpu, MSR_IA32_CR_PAT),
        0x0000_0501_0007_0406
    );
    assert_eq!(rdmsr_value(&mut cpu, MSR_IA32_FEATURE_CONTROL), 1);
    assert_eq!(rdmsr_value(&mut cpu, MSR_XEN_HYPERCALL_PAGE), 0);
    // vPMU off: Intel counters read 0.
    assert_eq!(rdmsr_value(&mut cpu, 0xc1), 0);
    assert_eq!(rdmsr_value(&mut cpu, 0x38f), 0);
}

#[test]
fn rdmsr_refusals_bounce_gp_and_leave_registers() {
    let mut cpu = TestCpu::new();
    for index in [
        0x1234_5678,
        0x4000_0001,
        MSR_K8_HWCR, // AMD's, on Intel
        0xc001_0000, // AMD counter, on Intel
        0x48,        // SPEC_CTRL: not emulated
        0xc000_0081, // STAR
    ] {
        assert_eq!(rdmsr(&mut cpu, index), Outcome::BounceGp, "{index:#x}");
        assert_eq!(cpu.gpr[RAX], u64::MAX);
        assert_eq!(cpu.gpr[RDX], u64::MAX);
    }
    // On AMD the AMD ones are emulated and the Intel ones refused.
    cpu.leaves.insert((0, 0), vendor_leaf(b"AuthenticAMD", 0xd));
    assert_eq!(rdmsr_value(&mut cpu, MSR_K8_HWCR), 0);
    assert_eq!(rdmsr_value(&mut cpu, 0xc001_0004), 0);
    assert_eq!(rdmsr(&mut cpu, MSR_IA32_FEATURE_CONTROL), Outcome::BounceGp);
    assert_eq!(rdmsr(&mut cpu, 0xc1), Outcome::BounceGp);
}

#[test]
fn wrmsr_segment_bases() {
    let mut cpu = TestCpu::new();
    assert_eq!(wrmsr(&mut cpu, MSR_FS_BASE, 0x1234_5000), emulated(2));
    assert_eq!(cpu.fs, 0x1234_5000);
    assert_eq!(
        wrmsr(&mut cpu, MSR_GS_BASE, 0xffff_8000_0000_1000),
        emulated(2)
    );
    assert_eq!(cpu.gs, 0xffff_8000_0000_1000);
    assert_eq!(
        wrmsr(&mut cpu, MSR_SHADOW_GS_BASE, 0x7fff_0000),
        emulated(2)
    );
    assert_eq!(cpu.virt.user_gs_base, 0x7fff_0000);
    assert_eq!(cpu.gs, 0xffff_8000_0000_1000);
    // Non-canonical: #GP, nothing changes.
    for msr in [MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE] {
        assert_eq!(
            wrmsr(&mut cpu, msr, 0x0000_8000_0000_0000),
            Outcome::BounceGp
        );
    }
    assert_eq!(cpu.fs, 0x1234_5000);
    assert_eq!(cpu.virt.user_gs_base, 0x7fff_0000);
}

#[test]
fn wrmsr_efer_only_unchanged() {
    let mut cpu = TestCpu::new();
    assert_eq!(wrmsr(&mut cpu, MSR_EFER, 0xd01), emulated(2));
    assert_eq!(wrmsr(&mut cpu, MSR_EFER, 0x501), Outcome::BounceGp);
    assert_eq!(
        wrmsr(&mut cpu, MSR_EFER, 0xd01 | (1 << 12)),
        Outcome::BounceGp
    );
}

#[test]
fn misc_enable_shows_fast_strings_and_takes_only_its_value() {
    let mut cpu = TestCpu::new();
    let value = rdmsr_value(&mut cpu, MSR_IA32_MISC_ENABLE);
    assert_eq!(value & 1, 1, "fast strings on, or Linux drops ERMS");
    assert_eq!(value & (1 << 7), 0, "performance monitoring hidden");
    assert_eq!(value & (1 << 18), 0, "MONITOR/MWAIT hidden");
    assert_eq!(wrmsr(&mut cpu, MSR_IA32_MISC_ENABLE, value), emulated(2));
    assert_eq!(
        wrmsr(&mut cpu, MSR_IA32_MISC_ENABLE, value & !1),
        Outcome::BounceGp
    );
    cpu.leaves.insert((0, 0), vendor_leaf(b"AuthenticAMD", 0xd));
    assert_eq!(rdmsr(&mut cpu, MSR_IA32_MISC_ENABLE), Outcome::BounceGp);
    assert_eq!(
        wrmsr(&mut cpu, MSR_IA32_MISC_ENABLE, value),
        Outcome::BounceGp
    );
}

#[test]
fn microcode_revision_reads_zero_and_takes_intels_zero_write() {
    let mut cpu = TestCpu::new();
    assert_eq!(rdmsr_value(&mut cpu, MSR_IA32_UCODE_REV), 0);
    assert_eq!(wrmsr(&mut cpu, MSR_IA32_UCODE_REV, 0), emulated(2));
    assert_eq!(
        wrmsr(&mut cpu, MSR_IA32_UCODE_REV, 1 << 32),
        Outcome::BounceGp
    );
    cpu.leaves.insert((0, 0), vendor_leaf(b"AuthenticAMD", 0xd));
    assert_eq!(rdmsr_value(&mut cpu, MSR_IA32_UCODE_REV), 0);
    assert_eq!(wrmsr(&mut cpu, MSR_IA32_UCODE_REV, 0), Outcome::BounceGp);
}

#[test]
fn fsrm_is_offered_only_with_erms() {
    let mut cpu = TestCpu::new();
    // ERMS (EBX 9) and FSRM (EDX 4) together: both shown.
    cpu.leaves.insert((7, 0), [0, 1 << 9, 0, 1 << 4]);
    let l7 = forced_cpuid(&mut cpu, 7, 0);
    assert_eq!((l7[1] & (1 << 9), l7[3] & (1 << 4)), (1 << 9, 1 << 4));
    // FSRM alone: hidden.
    cpu.leaves.insert((7, 0), [0, 0, 0, 1 << 4]);
    assert_eq!(forced_cpuid(&mut cpu, 7, 0)[3] & (1 << 4), 0);
}

#[test]
fn wrmsr_others() {
    let mut cpu = TestCpu::new();
    // The hypercall page MSR: page index 0 and a writable frame only.
    assert_eq!(
        wrmsr(&mut cpu, MSR_XEN_HYPERCALL_PAGE, 0x20_000),
        emulated(2)
    );
    assert_eq!(cpu.hypercall_page, Some(0x20));
    assert_eq!(
        wrmsr(&mut cpu, MSR_XEN_HYPERCALL_PAGE, 0x20_001),
        Outcome::BounceGp
    );
    assert_eq!(
        wrmsr(&mut cpu, MSR_XEN_HYPERCALL_PAGE, 0x1_000_000),
        Outcome::BounceGp
    );
    // Ignored writes.
    for msr in [
        MSR_IA32_PERF_CTL,
        MSR_IA32_MPERF,
        MSR_IA32_THERM_CONTROL,
        MSR_AMD64_NB_CFG,
        0x186,
    ] {
        assert_eq!(wrmsr(&mut cpu, msr, 5), emulated(2), "{msr:#x}");
    }
    // CPUID faulting is not offered.
    assert_eq!(
        wrmsr(&mut cpu, MSR_INTEL_MISC_FEATURES_ENABLES, 0),
        emulated(2)
    );
    assert_eq!(
        wrmsr(&mut cpu, MSR_INTEL_MISC_FEATURES_ENABLES, 1),
        Outcome::BounceGp
    );
    for msr in [
        0x1234_5678,
        MSR_IA32_CR_PAT,
        MSR_APIC_BASE,
        MSR_IA32_TSC,
        MSR_K8_HWCR,
    ] {
        assert_eq!(wrmsr(&mut cpu, msr, 0), Outcome::BounceGp, "{msr:#x}");
    }
}

#[test]
fn msr_access_from_user_mode_bounces() {
    let mut cpu = TestCpu::new();
    cpu.kernel = false;
    assert_eq!(rdmsr(&mut cpu, MSR_FS_BASE), Outcome::BounceGp);
    assert_eq!(wrmsr(&mut cpu, MSR_FS_BASE, 0), Outcome::BounceGp);
}

/// `mov %crN, %reg` and back, encoded with REX for r8-r15.
fn mov_from_cr(cr: u8, reg: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if reg >= 8 {
        v.push(0x41);
    }
    v.extend([0x0f, 0x20, 0xc0 | (cr << 3) | (reg & 7)]);
    v
}

fn mov_to_cr(cr: u8, reg: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if reg >= 8 {
        v.push(0x41);
    }
    v.extend([0x0f, 0x22, 0xc0 | (cr << 3) | (reg & 7)]);
    v
}

#[test]
fn control_register_reads() {
    let mut cpu = TestCpu::new();
    let run = |cpu: &mut TestCpu, cr, reg: usize| {
        let insn = mov_from_cr(cr, reg as u8);
        let len = insn.len() as u64;
        assert_eq!(run_gp(cpu, &insn), emulated(len));
        cpu.gpr[reg]
    };
    assert_eq!(run(&mut cpu, 0, RAX), HW_CR0);
    cpu.virt.fpu_task_switched = true;
    assert_eq!(run(&mut cpu, 0, 9), HW_CR0 | CR0_TS);
    cpu.virt.cr2 = 0xdead_b000;
    assert_eq!(run(&mut cpu, 2, RBX), 0xdead_b000);
    assert_eq!(run(&mut cpu, 3, 15), L4 << 12);
    // The initial CR4: the hardware's visible bits only.
    assert_eq!(run(&mut cpu, 4, RDX), CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT);
    // CR8 (REX.R) is not emulated.
    assert_eq!(
        run_gp(&mut cpu, &[0x44, 0x0f, 0x20, 0xc0]),
        Outcome::BounceGp
    );
}

#[test]
fn control_register_writes() {
    let mut cpu = TestCpu::new();
    // CR0: TS only.
    cpu.gpr[RAX] = HW_CR0 | CR0_TS;
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(0, 0)), emulated(3));
    assert!(cpu.virt.fpu_task_switched);
    cpu.gpr[RAX] = HW_CR0 & !(1 << 16); // WP cleared
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(0, 0)), Outcome::BounceGp);
    assert!(cpu.virt.fpu_task_switched);
    // clts.
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0x06]), emulated(2));
    assert!(!cpu.virt.fpu_task_switched);
    // CR2.
    cpu.gpr[12] = 0x1234;
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(2, 12)), emulated(4));
    assert_eq!(cpu.virt.cr2, 0x1234);
    // CR3: NEW_BASEPTR; the low bits are not part of the frame.
    cpu.gpr[RBX] = (0x50 << 12) | 0x18;
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(3, RBX as u8)), emulated(3));
    assert_eq!(cpu.base, Some(0x50));
    // A frame the MMU refuses, or bit 63 set: #GP, base unchanged.
    for bad in [0x1000 << 12, (1 << 63) | (0x50 << 12)] {
        cpu.gpr[RBX] = bad;
        assert_eq!(
            run_gp(&mut cpu, &mov_to_cr(3, RBX as u8)),
            Outcome::BounceGp
        );
        assert_eq!(cpu.base, Some(0x50));
    }
    // CR4: the guest's bits its CPUID offers, plus the hardware's visible
    // ones; everything else dropped, never a #GP.
    cpu.gpr[RAX] = CR4_TSD | CR4_DE | CR4_FSGSBASE | CR4_OSXSAVE | (1 << 7) | (1 << 20);
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(4, 0)), emulated(3));
    assert_eq!(
        cpu.virt.cr4,
        CR4_TSD | CR4_DE | CR4_FSGSBASE | CR4_OSXSAVE | CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    );
    // Without FSGSBASE or XSAVE in CPUID those bits are dropped.
    cpu.leaves.insert((7, 0), [0; 4]);
    cpu.leaves.get_mut(&(1, 0)).unwrap()[2] &= !(1 << 26);
    cpu.gpr[RAX] = CR4_FSGSBASE | CR4_OSXSAVE;
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(4, 0)), emulated(3));
    assert_eq!(cpu.virt.cr4, CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT);
}

#[test]
fn control_registers_from_user_mode_bounce() {
    let mut cpu = TestCpu::new();
    cpu.kernel = false;
    assert_eq!(run_gp(&mut cpu, &mov_from_cr(3, 0)), Outcome::BounceGp);
    assert_eq!(run_gp(&mut cpu, &mov_to_cr(3, 0)), Outcome::BounceGp);
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0x06]), Outcome::BounceGp);
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0x09]), Outcome::BounceGp);
    assert_eq!(cpu.base, Some(L4));
}

#[test]
fn port_io_needs_virtual_iopl_or_bitmap() {
    let mut cpu = TestCpu::new();
    let ins: [&[u8]; 6] = [
        &[0xe6, 0x80], // out %al, $0x80
        &[0xe4, 0x71], // in $0x71, %al
        &[0xec],       // in (%dx), %al
        &[0x66, 0xed], // in (%dx), %ax
        &[0xef],       // out %eax, (%dx)
        &[0xfa],       // cli
    ];
    for insn in ins {
        assert_eq!(run_gp(&mut cpu, insn), Outcome::BounceGp, "{insn:02x?}");
    }
    // IOPL 1 is enough for the kernel (it counts as CPL1).
    cpu.virt.iopl = 1;
    cpu.gpr[RAX] = 0x1111_2222_3333_4444;
    assert_eq!(run_gp(&mut cpu, &[0xe4, 0x71]), emulated(2));
    assert_eq!(cpu.gpr[RAX], 0x1111_2222_3333_44ff);
    cpu.gpr[RDX] = 0xcfc;
    assert_eq!(run_gp(&mut cpu, &[0x66, 0xed]), emulated(2));
    assert_eq!(cpu.gpr[RAX], 0x1111_2222_3333_ffff);
    assert_eq!(run_gp(&mut cpu, &[0xed]), emulated(1));
    assert_eq!(cpu.gpr[RAX], 0xffff_ffff);
    assert_eq!(run_gp(&mut cpu, &[0xef]), emulated(1));
    assert_eq!(run_gp(&mut cpu, &[0xfb]), emulated(1));
    // User mode needs IOPL 3.
    cpu.kernel = false;
    assert_eq!(run_gp(&mut cpu, &[0xec]), Outcome::BounceGp);
    cpu.virt.iopl = 3;
    assert_eq!(run_gp(&mut cpu, &[0xec]), emulated(1));
    // With the architectural_iopl assist the kernel counts as CPL0.
    cpu.kernel = true;
    cpu.virt.iopl = 0;
    cpu.virt.architectural_iopl = true;
    assert_eq!(run_gp(&mut cpu, &[0xe6, 0x80]), emulated(2));
    // The I/O bitmap grants ports, not cli/sti.
    cpu.virt.architectural_iopl = false;
    cpu.bitmap_ports.push(0x80);
    assert_eq!(run_gp(&mut cpu, &[0xe6, 0x80]), emulated(2));
    assert_eq!(run_gp(&mut cpu, &[0xe6, 0x81]), Outcome::BounceGp);
    assert_eq!(run_gp(&mut cpu, &[0xfa]), Outcome::BounceGp);
    // String I/O is not emulated.
    cpu.virt.iopl = 3;
    assert_eq!(run_gp(&mut cpu, &[0x6e]), Outcome::BounceGp);
}

#[test]
fn other_instructions_and_garbage_bounce_gp() {
    let mut cpu = TestCpu::new();
    for insn in [
        &[0x0f, 0x01, 0xf8][..], // swapgs
        &[0xf4],                 // hlt
        &[0x0f, 0x21, 0xc0],     // mov %dr0, %rax
        &[0xf0, 0x0f, 0x32],     // lock rdmsr
        &[0x0f, 0x01, 0xd1],     // xsetbv
        &[0xcd, 0x80],           // int $0x80
        &[0x06],                 // invalid in 64-bit mode
        &[
            0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff,
        ],
    ] {
        // Followed by readable bytes, as the executor fetches 15.
        let mut padded = insn.to_vec();
        padded.resize(MAX_INSN_LEN, 0x90);
        assert_eq!(run_gp(&mut cpu, &padded), Outcome::BounceGp, "{insn:02x?}");
    }
    // wbinvd is ignored.
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0x09]), emulated(2));
}

#[test]
fn truncated_instruction_is_a_page_fault_at_its_end() {
    let mut cpu = TestCpu::new();
    assert_eq!(
        run_gp(&mut cpu, &[0x0f]),
        Outcome::BouncePageFault { address: RIP + 1 }
    );
    assert_eq!(
        run_gp(&mut cpu, &[]),
        Outcome::BouncePageFault { address: RIP }
    );
}

const FORCED: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];

fn forced_cpuid(cpu: &mut TestCpu, leaf: u32, subleaf: u32) -> [u32; 4] {
    cpu.gpr[RAX] = u64::from(leaf) | 0xffff_0000_0000_0000;
    cpu.gpr[RCX] = u64::from(subleaf);
    assert_eq!(emulate_invalid_op(cpu, RIP, &FORCED), emulated(7));
    [RAX, RBX, RCX, RDX].map(|r| {
        assert_eq!(cpu.gpr[r] >> 32, 0);
        cpu.gpr[r] as u32
    })
}

#[test]
fn forced_cpuid_xen_leaves() {
    let mut cpu = TestCpu::new();
    let sig = forced_cpuid(&mut cpu, 0x4000_0000, 0);
    assert_eq!(sig[0], 0x4000_0005);
    let mut name = Vec::new();
    for w in &sig[1..] {
        name.extend(w.to_le_bytes());
    }
    assert_eq!(&name, b"XenVMMXenVMM");
    assert_eq!(
        forced_cpuid(&mut cpu, 0x4000_0001, 0),
        [0x0004_0011, 0, 0, 0]
    );
    assert_eq!(
        forced_cpuid(&mut cpu, 0x4000_0002, 0),
        [1, 0x4000_0000, 1, 0]
    );
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0003, 0), [0, 0, 2_600_000, 0]);
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0003, 2), [2_600_000, 0, 0, 0]);
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0004, 0), [0; 4]);
    // 0x3ffff is 18 bits: 30-bit machine addresses.
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0005, 0), [0, 30, 0, 0]);
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0006, 0), [0; 4]);
    assert_eq!(forced_cpuid(&mut cpu, 0x4000_0100, 0), [0; 4]);
}

#[test]
fn forced_cpuid_pv_view_of_features() {
    let mut cpu = TestCpu::new();
    let l0 = forced_cpuid(&mut cpu, 0, 0);
    assert_eq!(l0, vendor_leaf(b"GenuineIntel", 0xd));
    let l1 = forced_cpuid(&mut cpu, 1, 0);
    assert_eq!(l1[1] >> 24, 0, "no APIC ID");
    // VMX, MONITOR, X2APIC hidden; XSAVE, SSE3, HYPERVISOR shown.
    assert_eq!(l1[2] & ((1 << 5) | (1 << 3) | (1 << 21)), 0);
    assert_ne!(l1[2] & (1 << 26), 0);
    assert_ne!(l1[2] & 1, 0);
    assert_ne!(l1[2] & (1 << 31), 0);
    // OSXSAVE: leaked to the kernel's forced view (the hardware has it).
    assert_ne!(l1[2] & (1 << 27), 0);
    // MTRR, PGE, DS hidden; FPU, DE, TSC shown.
    assert_eq!(l1[3] & ((1 << 12) | (1 << 13) | (1 << 21)), 0);
    assert_eq!(l1[3] & 0x15, 0x15);
    let l7 = forced_cpuid(&mut cpu, 7, 0);
    assert_eq!(l7[1], 1, "FSGSBASE only: SMEP and INVPCID hidden");
    assert_eq!(l7[3], 0, "IBRSB hidden");
    assert_eq!(forced_cpuid(&mut cpu, 5, 0), [0; 4]);
    assert_eq!(forced_cpuid(&mut cpu, 0xa, 0), [0; 4]);
    // Past the basic maximum: zeros, not the last leaf.
    assert_eq!(forced_cpuid(&mut cpu, 0xe, 0), [0; 4]);
    let e1 = forced_cpuid(&mut cpu, 0x8000_0001, 0);
    assert_eq!(
        e1[3],
        (1 << 11) | (1 << 20) | (1 << 29),
        "1 GiB pages hidden"
    );
    assert_eq!(forced_cpuid(&mut cpu, 0x8000_0009, 0), [0; 4]);
    assert_eq!(forced_cpuid(&mut cpu, 0xc000_0000, 0), [0; 4]);
}

#[test]
fn native_cpuid_on_gp_has_no_osxsave_leak() {
    let mut cpu = TestCpu::new();
    cpu.gpr[RAX] = 1;
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0xa2]), emulated(2));
    assert_eq!(cpu.gpr[RCX] & (1 << 27), 0);
    // Once the guest sets its own CR4.OSXSAVE it shows.
    cpu.virt.cr4 |= CR4_OSXSAVE;
    cpu.gpr[RAX] = 1;
    assert_eq!(run_gp(&mut cpu, &[0x0f, 0xa2]), emulated(2));
    assert_ne!(cpu.gpr[RCX] & (1 << 27), 0);
}

#[test]
fn forced_prefix_refusals() {
    let mut cpu = TestCpu::new();
    cpu.gpr[RAX] = 0x77;
    // A plain ud2, another signature, another instruction after it.
    for bytes in [
        &[0x0f, 0x0b, 0x90, 0x90][..],
        &[0x0f, 0x0b, b'x', b'e', b'N', 0x0f, 0xa2],
        &[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0x31],
        &[0x0f, 0x0b, b'x', b'e', b'n', 0x90],
    ] {
        assert_eq!(emulate_invalid_op(&mut cpu, RIP, bytes), Outcome::BounceUd);
    }
    assert_eq!(cpu.gpr[RAX], 0x77);
    // Cut short where a byte cannot be read: #PF at that byte.
    assert_eq!(
        emulate_invalid_op(&mut cpu, RIP, &FORCED[..3]),
        Outcome::BouncePageFault { address: RIP + 3 }
    );
    assert_eq!(
        emulate_invalid_op(&mut cpu, RIP, &FORCED[..6]),
        Outcome::BouncePageFault { address: RIP + 6 }
    );
    // ... but a mismatch before the cut is still a #UD.
    assert_eq!(
        emulate_invalid_op(&mut cpu, RIP, &[0x0f, 0x0b, b'y']),
        Outcome::BounceUd
    );
    assert_eq!(cpu.gpr[RAX], 0x77);
    // Trailing bytes after the cpuid do not matter; user mode may use it.
    cpu.kernel = false;
    let mut long = FORCED.to_vec();
    long.extend([0xcc; 8]);
    assert_eq!(emulate_invalid_op(&mut cpu, RIP, &long), emulated(7));
}
