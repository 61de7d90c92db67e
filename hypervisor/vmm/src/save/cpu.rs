//! KVM's vCPU state ↔ Xen's `struct hvm_hw_cpu` (the CPU save record).
//!
//! Field by field, as Xen's `hvm_save_cpu_ctxt` fills the record and
//! `hvm_load_cpu_ctxt` reads it:
//!
//! * general registers, `rip`, `rflags`: `kvm_regs` as they are;
//! * `cr0`, `cr2`, `cr3`, `cr4`, `msr_efer`: `kvm_sregs` (the guest's view,
//!   which is what Xen saves from `guest_cr[]` and `guest_efer`);
//! * `dr0`-`dr3`, `dr6`, `dr7`: `kvm_debugregs`;
//! * segments: selector, base and byte-granular limit as they are; the
//!   attributes in Xen's packed `segment_attributes_t` form ([`segment_attr`]);
//!   KVM's `unusable` is Xen's not-present, as Xen's VMX code folds them;
//! * `idtr_*`, `gdtr_*`: `kvm_dtable`;
//! * the MSRs (`shadow_gs` is KERNEL_GS_BASE, `msr_syscall_mask` SFMASK,
//!   `tsc` the guest's IA32_TSC, `msr_tsc_aux` TSC_AUX): [`SavedMsrs`];
//! * `fpu_regs`: the 512-byte FXSAVE image in its 64-bit form, built from
//!   `kvm_fpu`, with Xen's word-size byte (offset 511) set to 8; `flags`
//!   says `XEN_X86_FPU_INITIALISED`, as KVM always has FPU state;
//! * `pending_event`, `error_code`: the one event being injected, in VMX's
//!   interruption-information encoding, from `kvm_vcpu_events`;
//! * `msr_flags`: obsolete, written 0 and ignored; `pad0`: 0, refused
//!   otherwise, as Xen does.
//!
//! What the record does not carry (NMI masking and a latched NMI, the
//! STI/MOV SS shadow, SIPI vector, SMM state, the pending-but-not-injected
//! exception of `KVM_CAP_EXCEPTION_PAYLOAD`) is left at its reset value on
//! load; kxen will carry it in its emulator-context record.
use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
};
use thiserror::Error;
use xen_abi::hvm_save::{
    HwCpu, HwLapic, HwLapicRegs, PENDING_EVENT_ERROR_VALID, PENDING_EVENT_TYPE_MASK,
    PENDING_EVENT_TYPE_SHIFT, PENDING_EVENT_VALID, PENDING_EVENT_VECTOR_MASK,
    XEN_X86_FPU_INITIALISED,
};
use zerocopy::FromZeros;

use super::lapic::{self, LapicHidden};

/// The MSRs a vCPU's save records carry (besides EFER, which is in
/// `kvm_sregs`, and the APIC base, which is in `kvm_sregs` and the LAPIC
/// record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedMsrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    /// IA32_FMASK (Xen's `msr_syscall_mask`).
    pub sfmask: u64,
    /// IA32_KERNEL_GS_BASE (Xen's `shadow_gs`).
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub tsc_aux: u64,
    /// IA32_TIME_STAMP_COUNTER: what RDTSC returns in the guest.
    pub tsc: u64,
    /// IA32_TSC_DEADLINE (the LAPIC record's `tdt_msr`).
    pub tsc_deadline: u64,
}

/// MSR numbers of [`SavedMsrs`]' fields.
pub mod msr_index {
    pub const TSC: u32 = 0x10;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// One vCPU's state as KVM holds it: what `KVM_GET_*` return and
/// `KVM_SET_*` take.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvmVcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub debugregs: kvm_debugregs,
    pub events: kvm_vcpu_events,
    pub msrs: SavedMsrs,
    pub lapic: kvm_bindings::kvm_lapic_state,
}

/// One vCPU's three per-vCPU save records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenVcpuRecords {
    pub cpu: HwCpu,
    pub lapic: HwLapic,
    pub lapic_regs: HwLapicRegs,
}

/// KVM state that Xen's record cannot express.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SaveError {
    #[error("more than one event is being injected ({0}); Xen's record carries one")]
    SeveralInjectedEvents(&'static str),
}

/// A save record refused on load: what Xen's `hvm_load_cpu_ctxt` refuses,
/// and what KVM would refuse or fail to enter with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("CPU record padding is {0:#x}, not 0")]
    NonZeroPadding(u32),
    #[error("unknown CPU record flags {0:#x}")]
    UnknownFlags(u32),
    #[error("bad CR0 {0:#x}: reserved bits, ET clear, or PG without PE")]
    BadCr0(u64),
    #[error("bad CR3 {0:#x}: bits above physical address bit 51")]
    BadCr3(u64),
    #[error("bad CR4 {0:#x}: bits {1:#x} are reserved or not offered to HVM guests")]
    BadCr4(u64, u64),
    #[error("bad EFER {0:#x}: {1}")]
    BadEfer(u64, &'static str),
    #[error("bad TSC_AUX {0:#x}: wider than 32 bits")]
    BadTscAux(u64),
    #[error("bad DR{0} {1:#x}: bits 63:32 set")]
    BadDebugRegister(u8, u64),
    #[error("{0} attributes {1:#x} have reserved bits set")]
    BadSegmentAttributes(&'static str, u32),
    #[error("{0} selector {1:#x} is wider than 16 bits")]
    BadSelector(&'static str, u32),
    #[error("{0} limit {1:#x} is wider than 16 bits")]
    BadTableLimit(&'static str, u32),
    #[error("{0} {1:#x} is not canonical")]
    NonCanonical(&'static str, u64),
    #[error("bad pending event {0:#x}: {1}")]
    BadPendingEvent(u32, &'static str),
    #[error(transparent)]
    Lapic(#[from] lapic::LapicLoadError),
}

// Xen's event types (VMX interruption-information types).
const EVENT_EXTERNAL_INTERRUPT: u32 = 0;
const EVENT_NMI: u32 = 2;
const EVENT_HARDWARE_EXCEPTION: u32 = 3;
const EVENT_SOFTWARE_INTERRUPT: u32 = 4;
const EVENT_PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5;
const EVENT_SOFTWARE_EXCEPTION: u32 = 6;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
/// PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG: everything else is reserved
/// (Xen's `HVM_CR0_GUEST_RESERVED_BITS`).
const CR0_VALID: u64 = 0x1f | (1 << 5) | (1 << 16) | (1 << 18) | (7 << 29);
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
/// The CR4 bits an HVM guest may hold: VME through UMIP, LA57, FSGSBASE,
/// PCIDE, OSXSAVE, SMEP, SMAP, PKE, CET, PKS. VMXE (no nested
/// virtualisation), SMXE (never offered by Xen), KL and the reserved bits
/// are refused.
const CR4_VALID: u64 = 0xfff | CR4_LA57 | (1 << 16) | (1 << 17) | (1 << 18) | (0x1f << 20);
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const EFER_FFXSR: u64 = 1 << 14;
const EFER_TCE: u64 = 1 << 15;
/// SVME is refused: kxen offers no nested virtualisation.
const EFER_VALID: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_FFXSR | EFER_TCE;

/// Xen's byte in the FXSAVE image saying which form FIP/FDP are in.
const FPU_WORD_SIZE_OFFSET: usize = 511;
/// What `MXCSR_MASK` reads on every CPU with DAZ; `kvm_fpu` lacks it.
const MXCSR_MASK: u32 = 0xffff;
const FCW_RESET: u16 = 0x37f;
const MXCSR_RESET: u32 = 0x1f80;

/// A segment's attributes in Xen's `segment_attributes_t` packing: type in
/// bits 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11. An unusable
/// segment is saved not present, as Xen's VMX code does.
pub fn segment_attr(segment: &kvm_segment) -> u32 {
    let present = segment.present != 0 && segment.unusable == 0;
    u32::from(segment.type_ & 0xf)
        | u32::from(segment.s & 1) << 4
        | u32::from(segment.dpl & 3) << 5
        | u32::from(present) << 7
        | u32::from(segment.avl & 1) << 8
        | u32::from(segment.l & 1) << 9
        | u32::from(segment.db & 1) << 10
        | u32::from(segment.g & 1) << 11
}

/// The inverse of [`segment_attr`], after Xen's compatibility fix for old
/// images that saved VMX's access-rights layout (bits 15:12 instead of
/// 11:8). Any bit above 11 left is refused.
fn segment_from_xen(
    name: &'static str,
    selector: u32,
    base: u64,
    limit: u32,
    attr: u32,
) -> Result<kvm_segment, LoadError> {
    let mut attr = attr;
    if attr & 0xf000 != 0 && attr & 0x0f00 == 0 {
        attr = (attr & 0xff) | ((attr >> 4) & 0xf00);
    }
    if attr & !0xfff != 0 {
        return Err(LoadError::BadSegmentAttributes(name, attr));
    }
    let selector = u16::try_from(selector).map_err(|_| LoadError::BadSelector(name, selector))?;
    let present = (attr >> 7) & 1 != 0;
    Ok(kvm_segment {
        base,
        limit,
        selector,
        type_: (attr & 0xf) as u8,
        s: ((attr >> 4) & 1) as u8,
        dpl: ((attr >> 5) & 3) as u8,
        present: u8::from(present),
        avl: ((attr >> 8) & 1) as u8,
        l: ((attr >> 9) & 1) as u8,
        db: ((attr >> 10) & 1) as u8,
        g: ((attr >> 11) & 1) as u8,
        unusable: u8::from(!present),
        padding: 0,
    })
}

fn dtable_from_xen(name: &'static str, base: u64, limit: u32) -> Result<kvm_dtable, LoadError> {
    Ok(kvm_dtable {
        base,
        limit: u16::try_from(limit).map_err(|_| LoadError::BadTableLimit(name, limit))?,
        padding: [0; 3],
    })
}

/// Whether `address` is canonical for the paging mode `cr4` selects.
fn is_canonical(address: u64, cr4: u64) -> bool {
    let bits = if cr4 & CR4_LA57 != 0 { 57 } else { 48 };
    let shift = 64 - bits;
    (((address << shift) as i64) >> shift) as u64 == address
}

/// The 512-byte FXSAVE image (64-bit form) of KVM's FPU state.
pub fn fxsave_image(fpu: &kvm_fpu) -> [u8; 512] {
    let mut image = [0u8; 512];
    image[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    image[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    image[4] = fpu.ftwx;
    image[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    image[8..16].copy_from_slice(&fpu.last_ip.to_le_bytes());
    image[16..24].copy_from_slice(&fpu.last_dp.to_le_bytes());
    image[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    image[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (index, register) in fpu.fpr.iter().enumerate() {
        image[32 + 16 * index..48 + 16 * index].copy_from_slice(register);
    }
    for (index, register) in fpu.xmm.iter().enumerate() {
        image[160 + 16 * index..176 + 16 * index].copy_from_slice(register);
    }
    image[FPU_WORD_SIZE_OFFSET] = 8;
    image
}

/// KVM's FPU state from an FXSAVE image. FIP and FDP are read as 64-bit
/// either way: in the 32-bit form that puts FCS/FDS in bits 47:32, which
/// is where `kvm_fpu` keeps them too.
pub fn fpu_from_fxsave(image: &[u8; 512]) -> kvm_fpu {
    let u16_at = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap_or([0; 8]));
    let mut fpu = kvm_fpu {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftwx: image[4],
        last_opcode: u16_at(6),
        last_ip: u64_at(8),
        last_dp: u64_at(16),
        mxcsr: u32_at(24),
        ..Default::default()
    };
    for (index, register) in fpu.fpr.iter_mut().enumerate() {
        register.copy_from_slice(&image[32 + 16 * index..48 + 16 * index]);
    }
    for (index, register) in fpu.xmm.iter_mut().enumerate() {
        register.copy_from_slice(&image[160 + 16 * index..176 + 16 * index]);
    }
    fpu
}

/// The injected event in Xen's encoding: (pending_event, error_code).
fn pending_event(events: &kvm_vcpu_events) -> Result<(u32, u32), SaveError> {
    let injected = [
        events.exception.injected != 0,
        events.interrupt.injected != 0,
        events.nmi.injected != 0,
    ];
    if injected.iter().filter(|&&is| is).count() > 1 {
        return Err(SaveError::SeveralInjectedEvents(
            "of an exception, an interrupt and an NMI",
        ));
    }
    let encode = |kind: u32, vector: u8| {
        PENDING_EVENT_VALID | (kind << PENDING_EVENT_TYPE_SHIFT) | u32::from(vector)
    };
    if events.exception.injected != 0 {
        // KVM does not say whether #BP/#OF came from INT3/INTO; it injects
        // every exception it reports as a hardware one, and so does Xen
        // with a type-3 event.
        let mut event = encode(EVENT_HARDWARE_EXCEPTION, events.exception.nr);
        let mut error_code = 0;
        if events.exception.has_error_code != 0 {
            event |= PENDING_EVENT_ERROR_VALID;
            error_code = events.exception.error_code;
        }
        Ok((event, error_code))
    } else if events.interrupt.injected != 0 {
        let kind = if events.interrupt.soft != 0 {
            EVENT_SOFTWARE_INTERRUPT
        } else {
            EVENT_EXTERNAL_INTERRUPT
        };
        Ok((encode(kind, events.interrupt.nr), 0))
    } else if events.nmi.injected != 0 {
        Ok((encode(EVENT_NMI, 2), 0))
    } else {
        Ok((0, 0))
    }
}

/// KVM's injected event from Xen's encoding.
fn events_from_xen(event: u32, error_code: u32) -> Result<kvm_vcpu_events, LoadError> {
    let mut events = kvm_vcpu_events::default();
    if event & PENDING_EVENT_VALID == 0 {
        return Ok(events);
    }
    let known_bits = PENDING_EVENT_VALID
        | PENDING_EVENT_ERROR_VALID
        | PENDING_EVENT_TYPE_MASK
        | PENDING_EVENT_VECTOR_MASK;
    if event & !known_bits != 0 {
        return Err(LoadError::BadPendingEvent(event, "reserved bits set"));
    }
    let vector = (event & PENDING_EVENT_VECTOR_MASK) as u8;
    let kind = (event & PENDING_EVENT_TYPE_MASK) >> PENDING_EVENT_TYPE_SHIFT;
    let has_error_code = event & PENDING_EVENT_ERROR_VALID != 0;
    let is_exception = matches!(
        kind,
        EVENT_HARDWARE_EXCEPTION | EVENT_PRIVILEGED_SOFTWARE_EXCEPTION | EVENT_SOFTWARE_EXCEPTION
    );
    if has_error_code && !is_exception {
        return Err(LoadError::BadPendingEvent(
            event,
            "an error code on an event that is not an exception",
        ));
    }
    match kind {
        _ if is_exception => {
            if vector >= 32 {
                return Err(LoadError::BadPendingEvent(
                    event,
                    "exception vector over 31",
                ));
            }
            events.exception.injected = 1;
            events.exception.nr = vector;
            events.exception.has_error_code = u8::from(has_error_code);
            events.exception.error_code = if has_error_code { error_code } else { 0 };
        }
        EVENT_EXTERNAL_INTERRUPT | EVENT_SOFTWARE_INTERRUPT => {
            events.interrupt.injected = 1;
            events.interrupt.nr = vector;
            events.interrupt.soft = u8::from(kind == EVENT_SOFTWARE_INTERRUPT);
        }
        EVENT_NMI => {
            if vector != 2 {
                return Err(LoadError::BadPendingEvent(event, "an NMI not on vector 2"));
            }
            events.nmi.injected = 1;
        }
        _ => return Err(LoadError::BadPendingEvent(event, "reserved event type")),
    }
    Ok(events)
}

/// KVM's vCPU state as Xen's per-vCPU records (CPU, LAPIC, LAPIC_REGS).
pub fn save(state: &KvmVcpuState) -> Result<XenVcpuRecords, SaveError> {
    let regs = &state.regs;
    let sregs = &state.sregs;
    let mut cpu = HwCpu::new_zeroed();
    cpu.fpu_regs = fxsave_image(&state.fpu);
    cpu.flags = XEN_X86_FPU_INITIALISED;
    (cpu.rax, cpu.rbx, cpu.rcx, cpu.rdx) = (regs.rax, regs.rbx, regs.rcx, regs.rdx);
    (cpu.rbp, cpu.rsi, cpu.rdi, cpu.rsp) = (regs.rbp, regs.rsi, regs.rdi, regs.rsp);
    (cpu.r8, cpu.r9, cpu.r10, cpu.r11) = (regs.r8, regs.r9, regs.r10, regs.r11);
    (cpu.r12, cpu.r13, cpu.r14, cpu.r15) = (regs.r12, regs.r13, regs.r14, regs.r15);
    (cpu.rip, cpu.rflags) = (regs.rip, regs.rflags);
    (cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4) = (sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4);
    let debug = &state.debugregs;
    (cpu.dr0, cpu.dr1, cpu.dr2, cpu.dr3) = (debug.db[0], debug.db[1], debug.db[2], debug.db[3]);
    (cpu.dr6, cpu.dr7) = (debug.dr6, debug.dr7);

    macro_rules! save_segment {
        ($segment:ident, $sel:ident, $limit:ident, $base:ident, $arbytes:ident) => {
            cpu.$sel = u32::from(sregs.$segment.selector);
            cpu.$limit = sregs.$segment.limit;
            cpu.$base = sregs.$segment.base;
            cpu.$arbytes = segment_attr(&sregs.$segment);
        };
    }
    save_segment!(cs, cs_sel, cs_limit, cs_base, cs_arbytes);
    save_segment!(ds, ds_sel, ds_limit, ds_base, ds_arbytes);
    save_segment!(es, es_sel, es_limit, es_base, es_arbytes);
    save_segment!(fs, fs_sel, fs_limit, fs_base, fs_arbytes);
    save_segment!(gs, gs_sel, gs_limit, gs_base, gs_arbytes);
    save_segment!(ss, ss_sel, ss_limit, ss_base, ss_arbytes);
    save_segment!(tr, tr_sel, tr_limit, tr_base, tr_arbytes);
    save_segment!(ldt, ldtr_sel, ldtr_limit, ldtr_base, ldtr_arbytes);
    (cpu.idtr_base, cpu.idtr_limit) = (sregs.idt.base, u32::from(sregs.idt.limit));
    (cpu.gdtr_base, cpu.gdtr_limit) = (sregs.gdt.base, u32::from(sregs.gdt.limit));

    let msrs = &state.msrs;
    cpu.msr_efer = sregs.efer;
    (cpu.sysenter_cs, cpu.sysenter_esp, cpu.sysenter_eip) =
        (msrs.sysenter_cs, msrs.sysenter_esp, msrs.sysenter_eip);
    cpu.shadow_gs = msrs.kernel_gs_base;
    (cpu.msr_star, cpu.msr_lstar, cpu.msr_cstar) = (msrs.star, msrs.lstar, msrs.cstar);
    cpu.msr_syscall_mask = msrs.sfmask;
    cpu.msr_tsc_aux = msrs.tsc_aux;
    cpu.tsc = msrs.tsc;
    (cpu.pending_event, cpu.error_code) = pending_event(&state.events)?;

    let (lapic, lapic_regs) = lapic::save(
        &state.lapic,
        &LapicHidden {
            apic_base: sregs.apic_base,
            tsc_deadline: msrs.tsc_deadline,
        },
    );
    Ok(XenVcpuRecords {
        cpu,
        lapic,
        lapic_regs,
    })
}

/// The checks on the control registers and EFER, as Xen's
/// `hvm_load_cpu_ctxt` and `hvm_efer_valid` make them, plus the long-mode
/// rule KVM_SET_SREGS enforces (LMA needs PAE).
fn check_control_registers(cpu: &HwCpu) -> Result<(), LoadError> {
    if cpu.cr0 & !CR0_VALID != 0 || cpu.cr0 & CR0_ET == 0 || cpu.cr0 & (CR0_PE | CR0_PG) == CR0_PG {
        return Err(LoadError::BadCr0(cpu.cr0));
    }
    if cpu.cr3 >> 52 != 0 {
        return Err(LoadError::BadCr3(cpu.cr3));
    }
    if cpu.cr4 & !CR4_VALID != 0 {
        return Err(LoadError::BadCr4(cpu.cr4, cpu.cr4 & !CR4_VALID));
    }
    let efer = cpu.msr_efer;
    if efer & !EFER_VALID != 0 {
        return Err(LoadError::BadEfer(efer, "reserved or unsupported bits"));
    }
    let paging = cpu.cr0 & CR0_PG != 0;
    if efer & EFER_LMA != 0 && (efer & EFER_LME == 0 || !paging) {
        return Err(LoadError::BadEfer(efer, "LMA without LME and CR0.PG"));
    }
    if efer & (EFER_LME | EFER_LMA) == EFER_LME && paging {
        return Err(LoadError::BadEfer(efer, "LME and CR0.PG without LMA"));
    }
    if efer & EFER_LMA != 0 && cpu.cr4 & CR4_PAE == 0 {
        return Err(LoadError::BadEfer(efer, "long mode without CR4.PAE"));
    }
    for (index, value) in [(6, cpu.dr6), (7, cpu.dr7)] {
        if value >> 32 != 0 {
            return Err(LoadError::BadDebugRegister(index, value));
        }
    }
    Ok(())
}

/// Xen's per-vCPU records as KVM's vCPU state. Every value KVM would
/// refuse, or enter the guest with and fail, is refused here first.
pub fn load(records: &XenVcpuRecords) -> Result<KvmVcpuState, LoadError> {
    let cpu = &records.cpu;
    if cpu.pad0 != 0 {
        return Err(LoadError::NonZeroPadding(cpu.pad0));
    }
    if cpu.flags & !XEN_X86_FPU_INITIALISED != 0 {
        return Err(LoadError::UnknownFlags(cpu.flags));
    }
    check_control_registers(cpu)?;
    if cpu.msr_tsc_aux >> 32 != 0 {
        return Err(LoadError::BadTscAux(cpu.msr_tsc_aux));
    }
    for (name, address) in [
        ("FS base", cpu.fs_base),
        ("GS base", cpu.gs_base),
        ("TR base", cpu.tr_base),
        ("LDTR base", cpu.ldtr_base),
        ("GDTR base", cpu.gdtr_base),
        ("IDTR base", cpu.idtr_base),
        ("KERNEL_GS_BASE", cpu.shadow_gs),
        ("LSTAR", cpu.msr_lstar),
        ("CSTAR", cpu.msr_cstar),
        ("SYSENTER_ESP", cpu.sysenter_esp),
        ("SYSENTER_EIP", cpu.sysenter_eip),
    ] {
        if !is_canonical(address, cpu.cr4) {
            return Err(LoadError::NonCanonical(name, address));
        }
    }

    let mut state = KvmVcpuState::default();
    let regs = &mut state.regs;
    (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (cpu.rax, cpu.rbx, cpu.rcx, cpu.rdx);
    (regs.rbp, regs.rsi, regs.rdi, regs.rsp) = (cpu.rbp, cpu.rsi, cpu.rdi, cpu.rsp);
    (regs.r8, regs.r9, regs.r10, regs.r11) = (cpu.r8, cpu.r9, cpu.r10, cpu.r11);
    (regs.r12, regs.r13, regs.r14, regs.r15) = (cpu.r12, cpu.r13, cpu.r14, cpu.r15);
    (regs.rip, regs.rflags) = (cpu.rip, cpu.rflags);

    let sregs = &mut state.sregs;
    sregs.cs = segment_from_xen("CS", cpu.cs_sel, cpu.cs_base, cpu.cs_limit, cpu.cs_arbytes)?;
    sregs.ds = segment_from_xen("DS", cpu.ds_sel, cpu.ds_base, cpu.ds_limit, cpu.ds_arbytes)?;
    sregs.es = segment_from_xen("ES", cpu.es_sel, cpu.es_base, cpu.es_limit, cpu.es_arbytes)?;
    sregs.fs = segment_from_xen("FS", cpu.fs_sel, cpu.fs_base, cpu.fs_limit, cpu.fs_arbytes)?;
    sregs.gs = segment_from_xen("GS", cpu.gs_sel, cpu.gs_base, cpu.gs_limit, cpu.gs_arbytes)?;
    sregs.ss = segment_from_xen("SS", cpu.ss_sel, cpu.ss_base, cpu.ss_limit, cpu.ss_arbytes)?;
    sregs.tr = segment_from_xen("TR", cpu.tr_sel, cpu.tr_base, cpu.tr_limit, cpu.tr_arbytes)?;
    sregs.ldt = segment_from_xen(
        "LDTR",
        cpu.ldtr_sel,
        cpu.ldtr_base,
        cpu.ldtr_limit,
        cpu.ldtr_arbytes,
    )?;
    sregs.idt = dtable_from_xen("IDTR", cpu.idtr_base, cpu.idtr_limit)?;
    sregs.gdt = dtable_from_xen("GDTR", cpu.gdtr_base, cpu.gdtr_limit)?;
    (sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4) = (cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4);
    sregs.efer = cpu.msr_efer;
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 && !is_canonical(cpu.rip, cpu.cr4) {
        return Err(LoadError::NonCanonical("RIP", cpu.rip));
    }

    state.fpu = if cpu.flags & XEN_X86_FPU_INITIALISED != 0 {
        fpu_from_fxsave(&cpu.fpu_regs)
    } else {
        // Never-used FPU state: what FNINIT and a reset MXCSR give.
        kvm_fpu {
            fcw: FCW_RESET,
            mxcsr: MXCSR_RESET,
            ..Default::default()
        }
    };
    state.debugregs.db = [cpu.dr0, cpu.dr1, cpu.dr2, cpu.dr3];
    (state.debugregs.dr6, state.debugregs.dr7) = (cpu.dr6, cpu.dr7);
    state.events = events_from_xen(cpu.pending_event, cpu.error_code)?;

    let hidden = lapic::load(&records.lapic, &records.lapic_regs, &mut state.lapic)?;
    state.sregs.apic_base = hidden.apic_base;
    // CR8 is the TPR's priority class; KVM_SET_SREGS writes it into the
    // LAPIC, so it must agree with the register page.
    state.sregs.cr8 = u64::from(lapic::task_priority(&state.lapic) >> 4);
    state.msrs = SavedMsrs {
        star: cpu.msr_star,
        lstar: cpu.msr_lstar,
        cstar: cpu.msr_cstar,
        sfmask: cpu.msr_syscall_mask,
        kernel_gs_base: cpu.shadow_gs,
        sysenter_cs: cpu.sysenter_cs,
        sysenter_esp: cpu.sysenter_esp,
        sysenter_eip: cpu.sysenter_eip,
        tsc_aux: cpu.msr_tsc_aux,
        tsc: cpu.tsc,
        tsc_deadline: hidden.tsc_deadline,
    };
    Ok(state)
}
