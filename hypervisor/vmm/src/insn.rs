//! What a CPU would do with an instruction KVM's emulator gave up on.
//!
//! On PVM hosts KVM's instruction emulator runs guest ring-0 code and gives
//! up on instructions a guest is entitled to: the MXCSR/FXSAVE group a
//! stock kernel uses, x87 control forms such as `fnop` and `fldcw`,
//! prefixed `int3` (`67 cc`), and instructions the vCPU was never offered
//! (VMX). The instruction is decoded with `iced-x86`, a complete x86
//! decoder, and [`decide`] maps it to an [`Action`]: its effect, or the
//! exception the architecture raises (#UD for an instruction CPUID does
//! not offer or that does not exist, #GP(0) for a privileged instruction
//! at CPL > 0, #NM where CR0 says the x87/SSE state is not available).
//! [`Unanswered`] is left for instructions with no answer here; only those
//! end the domain. `vcpu::pvm` carries the actions out.

use iced_x86::{Code, CpuidFeature, Decoder, DecoderError, DecoderOptions, Instruction};
use iced_x86::{Mnemonic, Register};
use kvm_bindings::kvm_fpu;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

pub const EXCEPTION_DB: u8 = 1;
pub const EXCEPTION_BP: u8 = 3;
pub const EXCEPTION_UD: u8 = 6;
pub const EXCEPTION_NM: u8 = 7;
pub const EXCEPTION_GP: u8 = 13;
pub const EXCEPTION_MF: u8 = 16;

const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;

/// The CPUID features an instruction may need that the vCPU may lack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestFeatures {
    /// Leaf 1 ECX bit 5.
    pub vmx: bool,
    /// Leaf 0x8000_0001 ECX bit 2.
    pub svm: bool,
}

impl GuestFeatures {
    /// From a vCPU's CPUID entries as (function, index, ecx) triples.
    pub fn from_cpuid(entries: impl IntoIterator<Item = (u32, u32, u32)>) -> Self {
        let mut f = GuestFeatures::default();
        for (function, _, ecx) in entries {
            match function {
                1 => f.vmx = ecx & (1 << 5) != 0,
                0x8000_0001 => f.svm = ecx & (1 << 2) != 0,
                _ => {}
            }
        }
        f
    }

    /// Whether the vCPU was offered `feature`; `None` for features this
    /// table does not track (the instruction is then not refused for it).
    fn offers(self, feature: CpuidFeature) -> Option<bool> {
        match feature {
            CpuidFeature::VMX => Some(self.vmx),
            CpuidFeature::SVM | CpuidFeature::SKINIT_or_SVM => Some(self.svm),
            _ => None,
        }
    }
}

/// The vCPU state an instruction's decoding and checks need.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuState {
    /// 16, 32 or 64: the code segment's default size.
    pub bitness: u32,
    pub cpl: u8,
    pub cr0: u64,
    pub cr4: u64,
    /// The 16 general registers in encoding order (rax, rcx, rdx, rbx,
    /// rsp, rbp, rsi, rdi, r8..r15).
    pub gpr: [u64; 16],
    /// RIP (an offset in CS) of the instruction.
    pub rip: u64,
    /// ES, CS, SS, DS, FS, GS bases; in 64-bit code the first four are 0.
    pub segment_bases: [u64; 6],
    pub features: GuestFeatures,
}

/// What decoded `0f ae` instruction operates on the FXSAVE state.
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

/// An x87 control or no-op instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X87Op {
    /// `fnop`: nothing, after the pending-exception check.
    Nop,
    /// `fwait`/`wait`: only the pending-exception check.
    Wait,
    /// `fninit`: the power-on control, status and tag words.
    Init,
    /// `fnclex`: clear the exception flags, ES and B.
    Clex,
    /// `fldcw m16` at this address.
    Ldcw(u64),
    /// `fnstcw m16` at this address.
    Stcw(u64),
    /// `fnstsw m16` at this address, or `fnstsw %ax` (`None`).
    Stsw(Option<u64>),
}

impl X87Op {
    /// Waiting forms check for a pending unmasked x87 exception first.
    fn waits(self) -> bool {
        matches!(self, X87Op::Nop | X87Op::Wait | X87Op::Ldcw(_))
    }
}

/// The answer to one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// An x87 control instruction of `len` bytes; [`x87_execute`] gives its
    /// effect on the FPU state.
    X87 { op: X87Op, len: usize },
    /// The FXSAVE group on the operand at `address` (guest-virtual).
    Fxsr { op: FpuOp, address: u64, len: usize },
    /// `clac` (`set` false) or `stac`: RFLAGS.AC.
    SetAc { set: bool, len: usize },
    /// A trap: RIP moves past the whole instruction (prefixes included),
    /// then `vector` is delivered without an error code (`int3`, `int1`,
    /// `int n` below 32).
    Trap { vector: u8, len: usize },
    /// A fault: RIP stays at the instruction.
    Fault { vector: u8, error_code: Option<u32> },
    /// `iretd` in 32-bit protected-mode code: [`iret32`] decides it from
    /// the 12-byte frame (EIP, CS, EFLAGS) at SS:ESP.
    Iret32,
}

/// Why [`decide`] has no answer: the domain ends, and says this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    /// The bytes end inside an instruction (the fetch stopped at a page
    /// the vCPU cannot read).
    #[error("instruction truncated after {0} bytes")]
    Truncated(usize),
    /// A valid instruction the VMM does not emulate.
    #[error("{mnemonic} ({code}) is not emulated")]
    NotEmulated { mnemonic: String, code: String },
}

/// How an instruction reads in the log: `popcnt (Popcnt_r32_rm32)`.
pub fn describe(bytes: &[u8], bitness: u32) -> String {
    let insn = decode(bytes, bitness, 0);
    match insn {
        Ok(i) => format!("{} ({:?})", mnemonic_name(i.mnemonic()), i.code()),
        Err(DecoderError::NoMoreBytes) => "truncated".to_string(),
        Err(_) => "an invalid encoding".to_string(),
    }
}

fn mnemonic_name(m: Mnemonic) -> String {
    format!("{m:?}").to_ascii_lowercase()
}

fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Result<Instruction, DecoderError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let bitness = match bitness {
        16 | 32 | 64 => bitness,
        _ => 64,
    };
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    match decoder.last_error() {
        DecoderError::None => Ok(insn),
        e => Err(e),
    }
}

/// Instructions that are privileged only through IOPL; KVM decides those.
fn iopl_sensitive(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::In
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Out
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
            | Mnemonic::Cli
            | Mnemonic::Sti
    )
}

/// The guest-virtual address of the instruction's memory operand.
fn operand_address(insn: &Instruction, cpu: &CpuState) -> Option<u64> {
    let address = insn.virtual_address(0, 0, |reg, _, _| {
        let segment = [
            Register::ES,
            Register::CS,
            Register::SS,
            Register::DS,
            Register::FS,
            Register::GS,
        ]
        .iter()
        .position(|&s| s == reg);
        if let Some(s) = segment {
            return Some(cpu.segment_bases[s]);
        }
        let full = reg.full_register();
        if full.is_gpr64() {
            let n = full as usize - Register::RAX as usize;
            return cpu.gpr.get(n).copied();
        }
        None
    })?;
    // Outside 64-bit code linear addresses are 32 bits wide.
    Some(if cpu.bitness == 64 {
        address
    } else {
        address & 0xffff_ffff
    })
}

/// What the CPU does with `bytes` (the instruction at `cpu.rip`), or why
/// there is no answer here.
pub fn decide(bytes: &[u8], cpu: &CpuState) -> Result<Action, Unanswered> {
    let ud = Action::Fault {
        vector: EXCEPTION_UD,
        error_code: None,
    };
    let gp0 = Action::Fault {
        vector: EXCEPTION_GP,
        error_code: Some(0),
    };
    let nm = Action::Fault {
        vector: EXCEPTION_NM,
        error_code: None,
    };
    let insn = match decode(bytes, cpu.bitness, cpu.rip) {
        Ok(insn) => insn,
        Err(DecoderError::NoMoreBytes) => {
            return Err(Unanswered::Truncated(bytes.len().min(MAX_INSN_LEN)))
        }
        // No such instruction (or a LOCK where none is allowed): #UD.
        Err(_) => return Ok(ud),
    };
    let len = insn.len();
    // Not offered by CPUID: #UD before any other check (VMX instructions
    // with CR4.VMXE impossible to set, SVM with EFER.SVME likewise).
    if insn
        .cpuid_features()
        .iter()
        .any(|&f| cpu.features.offers(f) == Some(false))
    {
        return Ok(ud);
    }
    // #UD by definition (ud0/ud1/ud2), and clac/stac outside ring 0
    // (#UD, not the #GP of other ring-0 instructions).
    let always_ud = matches!(
        insn.mnemonic(),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2
    );
    let smap_outside_ring0 = matches!(insn.code(), Code::Clac | Code::Stac) && cpu.cpl > 0;
    if always_ud || smap_outside_ring0 {
        return Ok(ud);
    }
    if cpu.cpl > 0 && insn.is_privileged() && !iopl_sensitive(insn.mnemonic()) {
        return Ok(gp0);
    }
    let x87 = |op: X87Op| {
        // CR0.EM or CR0.TS: #NM for x87 instructions; WAIT only with
        // CR0.MP and CR0.TS together.
        let unavailable = if op == X87Op::Wait {
            cpu.cr0 & (CR0_MP | CR0_TS) == (CR0_MP | CR0_TS)
        } else {
            cpu.cr0 & (CR0_EM | CR0_TS) != 0
        };
        Ok(if unavailable {
            nm
        } else {
            Action::X87 { op, len }
        })
    };
    let memory = || operand_address(&insn, cpu);
    let fxsr = |op: FpuOp| {
        // SSE state needs CR0.EM clear and, for the MXCSR forms,
        // CR4.OSFXSR; CR0.TS makes it unavailable.
        let sse = matches!(op, FpuOp::Ldmxcsr | FpuOp::Stmxcsr);
        if cpu.cr0 & CR0_EM != 0 || (sse && cpu.cr4 & CR4_OSFXSR == 0) {
            return Ok(ud);
        }
        if cpu.cr0 & CR0_TS != 0 {
            return Ok(nm);
        }
        match memory() {
            Some(address) => Ok(Action::Fxsr { op, address, len }),
            None => Err(not_emulated(&insn)),
        }
    };
    match insn.code() {
        Code::Int3 => Ok(Action::Trap {
            vector: EXCEPTION_BP,
            len,
        }),
        Code::Int1 => Ok(Action::Trap {
            vector: EXCEPTION_DB,
            len,
        }),
        // int n below 32 is delivered like an exception without an error
        // code; higher vectors need a software-interrupt injection this
        // path does not make.
        Code::Int_imm8 if insn.immediate8() < 32 && cpu.cpl == 0 => Ok(Action::Trap {
            vector: insn.immediate8(),
            len,
        }),
        Code::Wait => x87(X87Op::Wait),
        Code::Fnop => x87(X87Op::Nop),
        Code::Fninit => x87(X87Op::Init),
        Code::Fnclex => x87(X87Op::Clex),
        Code::Fnstsw_AX => x87(X87Op::Stsw(None)),
        Code::Fldcw_m2byte | Code::Fnstcw_m2byte | Code::Fnstsw_m2byte => {
            let Some(address) = memory() else {
                return Err(not_emulated(&insn));
            };
            x87(match insn.code() {
                Code::Fldcw_m2byte => X87Op::Ldcw(address),
                Code::Fnstcw_m2byte => X87Op::Stcw(address),
                _ => X87Op::Stsw(Some(address)),
            })
        }
        Code::Fxsave_m512byte => fxsr(FpuOp::Fxsave { rex_w: false }),
        Code::Fxsave64_m512byte => fxsr(FpuOp::Fxsave { rex_w: true }),
        Code::Fxrstor_m512byte => fxsr(FpuOp::Fxrstor { rex_w: false }),
        Code::Fxrstor64_m512byte => fxsr(FpuOp::Fxrstor { rex_w: true }),
        Code::Ldmxcsr_m32 => fxsr(FpuOp::Ldmxcsr),
        Code::Stmxcsr_m32 => fxsr(FpuOp::Stmxcsr),
        // KVM's emulator on PVM hosts fails a 32-bit iretd, which every
        // 32-bit guest that takes interrupts runs.
        Code::Iretd if cpu.bitness == 32 => Ok(Action::Iret32),
        Code::Clac => Ok(Action::SetAc { set: false, len }),
        Code::Stac => Ok(Action::SetAc { set: true, len }),
        _ => Err(not_emulated(&insn)),
    }
}

/// EFLAGS bits.
const EFLAGS_FIXED: u32 = 1 << 1;
const EFLAGS_IF: u32 = 1 << 9;
const EFLAGS_IOPL: u32 = 3 << 12;
const EFLAGS_NT: u32 = 1 << 14;
const EFLAGS_VM: u32 = 1 << 17;
const EFLAGS_VIF: u32 = 1 << 19;
const EFLAGS_VIP: u32 = 1 << 20;
/// The bits an `iret` may load: CF, PF, AF, ZF, SF, TF, IF, DF, OF, IOPL,
/// NT, RF, AC, VIF, VIP, ID (VM is refused before).
const EFLAGS_LOADABLE: u32 = 0x003f_7fd5 & !EFLAGS_VM;

/// What [`iret32`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IretStep {
    /// Return to `eip` in the code segment `cs` (its descriptor still to
    /// be loaded and checked with [`code_segment_for_return`]), with these
    /// flags; the frame's 12 bytes are popped.
    Return { eip: u32, cs: u16, eflags: u32 },
    /// The exception the CPU raises instead.
    Fault { vector: u8, error_code: u32 },
    /// A form this path does not take: a task return (NT), a return to
    /// virtual-8086 mode or to an outer privilege level.
    Unanswered(&'static str),
}

/// Protected-mode `iretd` from 32-bit code at `cpl` with the flags
/// `rflags`, given the 12 bytes at SS:ESP (EIP, CS, EFLAGS), as the SDM's
/// IRET pseudo-code does it for a return to the same privilege level.
pub fn iret32(frame: &[u8; 12], cpl: u8, rflags: u64) -> IretStep {
    let old = rflags as u32;
    if old & EFLAGS_NT != 0 {
        return IretStep::Unanswered("a task return (EFLAGS.NT)");
    }
    let eip = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let cs = u16::from_le_bytes([frame[4], frame[5]]);
    let new = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
    if new & EFLAGS_VM != 0 && cpl == 0 {
        return IretStep::Unanswered("a return to virtual-8086 mode");
    }
    if cs & !3 == 0 {
        return IretStep::Fault {
            vector: EXCEPTION_GP,
            error_code: 0,
        };
    }
    let rpl = (cs & 3) as u8;
    if rpl < cpl {
        return IretStep::Fault {
            vector: EXCEPTION_GP,
            error_code: u32::from(cs & !3),
        };
    }
    if rpl > cpl {
        return IretStep::Unanswered("a return to an outer privilege level");
    }
    // IOPL only at CPL 0, IF only at CPL <= IOPL, VIF/VIP only at CPL 0.
    let iopl = ((old & EFLAGS_IOPL) >> 12) as u8;
    let mut loadable = EFLAGS_LOADABLE;
    if cpl > 0 {
        loadable &= !(EFLAGS_IOPL | EFLAGS_VIF | EFLAGS_VIP);
    }
    if cpl > iopl {
        loadable &= !EFLAGS_IF;
    }
    IretStep::Return {
        eip,
        cs,
        eflags: (old & !loadable) | (new & loadable) | EFLAGS_FIXED,
    }
}

/// The code segment an `iret` to the same privilege level loads from the
/// 8-byte descriptor `raw` for `selector`, checked as the CPU checks it:
/// a code segment (else #GP(selector)) whose DPL is the selector's RPL,
/// or at most it for a conforming one (else #GP(selector)), present (else
/// #NP(selector)), and `eip` within its limit (else #GP(0)).
pub fn code_segment_for_return(
    selector: u16,
    raw: u64,
    eip: u32,
) -> Result<kvm_bindings::kvm_segment, (u8, u32)> {
    const EXCEPTION_NP: u8 = 11;
    let type_ = ((raw >> 40) & 0xf) as u8;
    let s = ((raw >> 44) & 1) as u8;
    let dpl = ((raw >> 45) & 3) as u8;
    let present = ((raw >> 47) & 1) as u8;
    let gp_sel = (EXCEPTION_GP, u32::from(selector & !3));
    let code = s == 1 && type_ & 0x8 != 0;
    if !code {
        return Err(gp_sel);
    }
    let rpl = (selector & 3) as u8;
    let conforming = type_ & 0x4 != 0;
    if (conforming && dpl > rpl) || (!conforming && dpl != rpl) {
        return Err(gp_sel);
    }
    if present == 0 {
        return Err((EXCEPTION_NP, u32::from(selector & !3)));
    }
    let g = ((raw >> 55) & 1) as u8;
    let raw_limit = ((raw & 0xffff) | ((raw >> 32) & 0xf_0000)) as u32;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    if eip > limit {
        return Err((EXCEPTION_GP, 0));
    }
    let base = ((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24);
    Ok(kvm_bindings::kvm_segment {
        base,
        limit,
        selector,
        // Loading a descriptor sets its accessed bit.
        type_: type_ | 1,
        present,
        dpl,
        db: ((raw >> 54) & 1) as u8,
        s,
        l: ((raw >> 53) & 1) as u8,
        g,
        avl: ((raw >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    })
}

fn not_emulated(insn: &Instruction) -> Unanswered {
    Unanswered::NotEmulated {
        mnemonic: mnemonic_name(insn.mnemonic()),
        code: format!("{:?}", insn.code()),
    }
}

/// FSW bits: exception flags (IE..PE) and the stack fault, ES, B.
const FSW_EXCEPTIONS: u16 = 0x3f;
const FSW_SF: u16 = 1 << 6;
const FSW_ES: u16 = 1 << 7;
const FSW_B: u16 = 1 << 15;
/// FCW after `fninit`: all exceptions masked, 64-bit precision, nearest.
pub const FCW_INIT: u16 = 0x037f;

/// What an x87 control instruction leaves for its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X87Step {
    /// Done; `fpu` holds the new state (load it if `changed`).
    Done { changed: bool },
    /// Store this word at the instruction's memory operand.
    Store { address: u64, value: u16 },
    /// `fnstsw %ax`: put this word in AX.
    ToAx(u16),
    /// A pending unmasked x87 exception: #MF at the instruction.
    Fault(u8),
}

/// The effect of `op` on the FPU state; `loaded` is the word `fldcw` read
/// from memory (ignored otherwise).
pub fn x87_execute(op: X87Op, fpu: &mut kvm_fpu, cr0: u64, loaded: u16) -> X87Step {
    // With CR0.NE clear a pending exception signals FERR# to an external
    // interrupt controller instead, which the platform does not wire: the
    // instruction then goes on.
    if op.waits() && fpu.fsw & FSW_ES != 0 && cr0 & CR0_NE != 0 {
        return X87Step::Fault(EXCEPTION_MF);
    }
    match op {
        X87Op::Nop | X87Op::Wait => X87Step::Done { changed: false },
        X87Op::Init => {
            fpu.fcw = FCW_INIT;
            fpu.fsw = 0;
            // The abridged tag word: 0 is "all empty".
            fpu.ftwx = 0;
            fpu.last_opcode = 0;
            fpu.last_ip = 0;
            fpu.last_dp = 0;
            X87Step::Done { changed: true }
        }
        X87Op::Clex => {
            fpu.fsw &= !(FSW_EXCEPTIONS | FSW_SF | FSW_ES | FSW_B);
            X87Step::Done { changed: true }
        }
        X87Op::Ldcw(_) => {
            fpu.fcw = loaded;
            // An exception flag the new mask unmasks becomes pending.
            let pending = fpu.fsw & FSW_EXCEPTIONS & !loaded != 0;
            if pending {
                fpu.fsw |= FSW_ES | FSW_B;
            } else {
                fpu.fsw &= !(FSW_ES | FSW_B);
            }
            X87Step::Done { changed: true }
        }
        X87Op::Stcw(address) => X87Step::Store {
            address,
            value: fpu.fcw,
        },
        X87Op::Stsw(Some(address)) => X87Step::Store {
            address,
            value: fpu.fsw,
        },
        X87Op::Stsw(None) => X87Step::ToAx(fpu.fsw),
    }
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
mod tests;
