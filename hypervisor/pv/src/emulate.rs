//! Privileged instructions of a 64-bit PV kernel, emulated Xen's way.
//!
//! A PV kernel runs at CPL3, so `rdmsr`, `wrmsr`, `mov` to and from
//! control registers, `clts`, `in`/`out` and friends raise #GP(0) there.
//! Xen first tries to emulate the instruction (`pv/emul-priv-op.c`) and
//! bounces the #GP to the guest only when that fails; a #UD at the
//! forced-emulation prefix `ud2; .ascii "xen"; cpuid` is emulated as a
//! CPUID with Xen's PV view (`pv/emul-inv-op.c`). This module decides both
//! from the instruction bytes and a [`PrivilegedCpu`] the executor
//! implements over the vCPU; nothing here touches a CPU.
//!
//! Facts from Xen (`arch/x86/pv/emul-priv-op.c`: `read_cr`, `write_cr`,
//! `read_msr`, `write_msr`, `guest_io_okay`/`iopl_ok`, `guest_io_read`,
//! `validate`, `cache_op`; `arch/x86/pv/emul-inv-op.c`; `arch/x86/msr.c`:
//! `guest_rdmsr`, `guest_wrmsr`, `guest_rdmsr_xen`, `guest_wrmsr_xen`;
//! `arch/x86/cpuid.c`: `guest_cpuid`, `cpuid_hypervisor_leaves`;
//! `arch/x86/cpu-policy.c` and `public/arch-x86/cpufeatureset.h` for what
//! a PV domain's default policy offers; `arch/x86/pv/domain.c`:
//! `pv_fixup_guest_cr4`; `arch/x86/traps.c`: `do_general_protection`).
//! The deviations are listed in the crate's README.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, Register};

use crate::error::MmuError;
use crate::pte::Mfn;

/// The forced-emulation prefix: `ud2` then the bytes "xen".
pub const FORCED_EMULATION_SIGNATURE: [u8; 5] = [0x0f, 0x0b, b'x', b'e', b'n'];
/// The only instruction emulated after the prefix: `cpuid`.
pub const FORCED_CPUID: [u8; 2] = [0x0f, 0xa2];
/// Bytes from the prefix's start to the instruction after the `cpuid`.
pub const FORCED_CPUID_LEN: u64 = 7;
/// An x86 instruction is at most this long.
pub const MAX_INSN_LEN: usize = 15;

/// What became of a faulting instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Emulated: the register changes were made through the
    /// [`PrivilegedCpu`]; resume the guest at `rip`.
    Emulated { rip: u64 },
    /// Bounce #GP(0) to the guest's handler (not emulated, or refused).
    BounceGp,
    /// Bounce #UD to the guest's handler.
    BounceUd,
    /// The instruction bytes end at an unreadable `address`: Xen bounces
    /// a #PF (error code 0) there.
    BouncePageFault { address: u64 },
}

/// The vCPU's register file as the emulation needs it, in hardware
/// order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
pub type GprIndex = usize;
pub const RAX: GprIndex = 0;
pub const RCX: GprIndex = 1;
pub const RDX: GprIndex = 2;
pub const RBX: GprIndex = 3;

/// The virtual privileged state Xen keeps per PV vCPU (`arch.pv.ctrlreg`,
/// `gs_base_user`, `iopl`, the MSRs it emulates), held by the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualCpu {
    /// CR0.TS as the guest set it (`clts`, `mov cr0`, fpu_taskswitch).
    pub fpu_task_switched: bool,
    /// CR2 as the guest reads it (written on #PF bounces and `mov cr2`).
    pub cr2: u64,
    /// CR4 as the guest reads it ([`fixup_guest_cr4`]).
    pub cr4: u64,
    /// The user-mode GS base (MSR_SHADOW_GS_BASE, SEGBASE_GS_USER).
    pub user_gs_base: u64,
    /// Virtual IOPL, 0..=3 (PHYSDEVOP_set_iopl).
    pub iopl: u8,
    /// VMASST_TYPE_architectural_iopl: kernel mode counts as CPL0, not 1.
    pub architectural_iopl: bool,
    /// MSR_INTEL_MISC_FEATURES_ENABLES (bit 0: CPUID faulting).
    pub misc_features_enables: u64,
}

impl VirtualCpu {
    /// A vCPU's state at creation: Xen's `pv_fixup_guest_cr4(v, 0)`, the
    /// hardware's visible CR4 bits only; everything else clear.
    pub fn new(hardware_cr4: u64) -> VirtualCpu {
        VirtualCpu {
            fpu_task_switched: false,
            cr2: 0,
            cr4: hardware_cr4 & CR4_GUEST_VISIBLE,
            user_gs_base: 0,
            iopl: 0,
            architectural_iopl: false,
            misc_features_enables: 0,
        }
    }
}

/// A segment base register the kernel's MSRs reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentBase {
    Fs,
    /// The GS base active in kernel mode.
    Gs,
}

/// What the emulation asks of the executor's vCPU.
pub trait PrivilegedCpu {
    fn vcpu_id(&self) -> u32;
    /// The vCPU is in guest kernel mode (Xen's `guest_kernel_mode`).
    fn kernel_mode(&self) -> bool;
    fn gpr(&self, index: GprIndex) -> u64;
    fn set_gpr(&mut self, index: GprIndex, value: u64);
    /// The real CR0 and CR4 the vCPU runs with (Xen's own choice).
    fn hardware_cr0(&self) -> u64;
    fn hardware_cr4(&self) -> u64;
    fn virtual_cpu(&mut self) -> &mut VirtualCpu;
    fn segment_base(&self, which: SegmentBase) -> u64;
    fn set_segment_base(&mut self, which: SegmentBase, base: u64);
    /// The vCPU's TSC now.
    fn tsc(&mut self) -> u64;
    /// The EFER the vCPU runs with.
    fn efer(&self) -> u64;
    /// The executor's CPUID values for the leaf (before the PV view).
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The highest machine frame the domain can see (CPUID 0x40000005).
    fn max_machine_frame(&self) -> Mfn;
    /// The kernel L4 (Xen's `guest_table`), if one is loaded.
    fn kernel_base_pointer(&self) -> Option<Mfn>;
    /// MMUEXT_NEW_BASEPTR to `mfn`; a refusal becomes #GP.
    fn load_kernel_base_pointer(&mut self, mfn: Mfn) -> Result<(), MmuError>;
    /// Fill `mfn` with the hypercall stubs (the Xen MSR 0x40000000); false
    /// if the frame cannot be written (not the domain's, or a table).
    fn install_hypercall_page(&mut self, mfn: Mfn) -> bool;
    /// The I/O bitmap of PHYSDEVOP_set_iobitmap permits `bytes` at `port`.
    /// kxen grants none: the default says no.
    fn io_bitmap_permits(&mut self, _port: u16, _bytes: u8) -> bool {
        false
    }
}

// ---- control registers ---------------------------------------------------

const CR0_TS: u64 = 1 << 3;
const CR4_TSD: u64 = 1 << 2;
const CR4_DE: u64 = 1 << 3;
const CR4_PAE: u64 = 1 << 5;
const CR4_MCE: u64 = 1 << 6;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4 bits a PV guest chooses (Xen's PV_CR4_GUEST_MASK).
pub const CR4_GUEST_CONTROLLED: u64 = CR4_TSD | CR4_DE | CR4_FSGSBASE | CR4_OSXSAVE;
/// CR4 bits a PV guest sees from the hardware (PV_CR4_GUEST_VISIBLE_MASK).
pub const CR4_GUEST_VISIBLE: u64 = CR4_PAE | CR4_MCE | CR4_OSFXSR | CR4_OSXMMEXCPT;

/// The guest's CR4 after it writes `value` (Xen's `pv_fixup_guest_cr4`):
/// its own bits, less those its CPUID does not offer, and the hardware's
/// visible ones. Never refused.
pub fn fixup_guest_cr4<C: PrivilegedCpu + ?Sized>(cpu: &C, value: u64) -> u64 {
    let leaf1 = pv_cpuid(cpu, 1, 0, false, 0);
    let leaf7 = pv_cpuid(cpu, 7, 0, false, 0);
    let (ecx, edx) = (leaf1[2], leaf1[3]);
    let mut refused = 0;
    if edx & (1 << 4) == 0 {
        refused |= CR4_TSD;
    }
    if edx & (1 << 2) == 0 {
        refused |= CR4_DE;
    }
    if leaf7[1] & 1 == 0 {
        refused |= CR4_FSGSBASE;
    }
    if ecx & (1 << 26) == 0 {
        refused |= CR4_OSXSAVE;
    }
    (value & !refused & CR4_GUEST_CONTROLLED) | (cpu.hardware_cr4() & CR4_GUEST_VISIBLE)
}

/// `mov %crN, reg`: `None` is Xen's X86EMUL_UNHANDLEABLE (#GP).
fn read_cr<C: PrivilegedCpu + ?Sized>(cpu: &mut C, cr: u8) -> Option<u64> {
    match cr {
        0 => {
            let ts = if cpu.virtual_cpu().fpu_task_switched {
                CR0_TS
            } else {
                0
            };
            Some((cpu.hardware_cr0() & !CR0_TS) | ts)
        }
        2 => Some(cpu.virtual_cpu().cr2),
        // A 64-bit guest's CR3 is its kernel L4 frame shifted
        // (xen_pfn_to_cr3); none loaded reads as 0, as a null guest_table.
        3 => Some(cpu.kernel_base_pointer().map_or(0, |mfn| mfn << 12)),
        4 => Some(cpu.virtual_cpu().cr4),
        _ => None,
    }
}

/// `mov reg, %crN`: false is #GP.
fn write_cr<C: PrivilegedCpu + ?Sized>(cpu: &mut C, cr: u8, value: u64) -> bool {
    match cr {
        // Only TS may change (Xen: "unmodifiable CR0 flags").
        0 => {
            if (value ^ cpu.hardware_cr0()) & !CR0_TS != 0 {
                return false;
            }
            cpu.virtual_cpu().fpu_task_switched = value & CR0_TS != 0;
            true
        }
        2 => {
            cpu.virtual_cpu().cr2 = value;
            true
        }
        // xen_cr3_to_pfn: the frame is everything above bit 12, so a set
        // bit 63 (no-flush) names no frame of the domain.
        3 => cpu.load_kernel_base_pointer(value >> 12).is_ok(),
        4 => {
            let cr4 = fixup_guest_cr4(cpu, value);
            cpu.virtual_cpu().cr4 = cr4;
            true
        }
        _ => false,
    }
}

// ---- MSRs ----------------------------------------------------------------

pub const MSR_IA32_TSC: u32 = 0x10;
/// Intel's IA32_BIOS_SIGN_ID (microcode revision) and AMD's PATCHLEVEL.
pub const MSR_IA32_UCODE_REV: u32 = 0x8b;
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const MSR_INTEL_PLATFORM_INFO: u32 = 0xce;
pub const MSR_IA32_MPERF: u32 = 0xe7;
pub const MSR_IA32_APERF: u32 = 0xe8;
pub const MSR_INTEL_MISC_FEATURES_ENABLES: u32 = 0x140;
pub const MSR_IA32_PERF_STATUS: u32 = 0x198;
pub const MSR_IA32_PERF_CTL: u32 = 0x199;
pub const MSR_IA32_THERM_CONTROL: u32 = 0x19a;
pub const MSR_IA32_THERM_STATUS: u32 = 0x19c;
pub const MSR_IA32_ENERGY_PERF_BIAS: u32 = 0x1b0;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_IA32_CR_PAT: u32 = 0x277;
pub const MSR_IA32_PERF_CAPABILITIES: u32 = 0x345;
pub const MSR_XEN_HYPERCALL_PAGE: u32 = 0x4000_0000;
pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_FS_BASE: u32 = 0xc000_0100;
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_SHADOW_GS_BASE: u32 = 0xc000_0102;
pub const MSR_K8_HWCR: u32 = 0xc001_0015;
pub const MSR_AMD64_NB_CFG: u32 = 0xc001_001f;

/// Xen's PAT, an ABI with PV guests (XEN_MSR_PAT): WB, WT, UC-, UC, WC,
/// WP, UC, UC.
pub const XEN_MSR_PAT: u64 = 0x0000_0501_0007_0406;
const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_BSP: u64 = 1 << 8;
const FEATURE_CONTROL_LOCK: u64 = 1;
/// EFER bits a guest reads (EFER_KNOWN_MASK less SVME and AIBRSE): SCE,
/// LME, LMA, NXE, FFXSE.
const EFER_GUEST_VISIBLE: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 14);

/// Whose CPU the executor's CPUID describes (leaf 0's vendor string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Hygon,
    Centaur,
    Shanghai,
    Other,
}

fn vendor<C: PrivilegedCpu + ?Sized>(cpu: &C) -> Vendor {
    let [_, b, c, d] = cpu.cpuid(0, 0);
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&b.to_le_bytes());
    name[4..8].copy_from_slice(&d.to_le_bytes());
    name[8..].copy_from_slice(&c.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        b"HygonGenuine" => Vendor::Hygon,
        b"CentaurHauls" => Vendor::Centaur,
        b"  Shanghai  " => Vendor::Shanghai,
        _ => Vendor::Other,
    }
}

/// The performance-counter MSRs Xen hands to its vPMU, which is off by
/// default: reads are 0 and writes are dropped (vpmu_do_msr's "nop").
fn is_vpmu_msr(index: u32, vendor: Vendor) -> bool {
    match vendor {
        // P6 PERFCTR0-7, EVNTSEL0-7, FIXED_CTR0-2, FIXED_CTR_CTRL ..
        // GLOBAL_OVF_CTRL.
        Vendor::Intel => {
            matches!(index, 0xc1..=0xc8 | 0x186..=0x18d | 0x309..=0x30b | 0x38d..=0x390)
        }
        // K7 EVNTSEL0-3/PERFCTR0-3, FAM15H EVNTSEL0..PERFCTR5.
        Vendor::Amd | Vendor::Hygon => {
            matches!(index, 0xc001_0000..=0xc001_0007 | 0xc001_0200..=0xc001_020b)
        }
        _ => false,
    }
}

/// AMD's P-state and FID/VID MSRs, which Xen reads as 0 and ignores
/// writes to for every domain but a cpufreq controller.
fn is_amd_pstate_msr(index: u32) -> bool {
    matches!(index, 0xc001_0041 | 0xc001_0042 | 0xc001_0061..=0xc001_006b)
}

fn guest_efer<C: PrivilegedCpu + ?Sized>(cpu: &C) -> u64 {
    cpu.efer() & EFER_GUEST_VISIBLE
}

/// MISC_ENABLE as Xen shows it to a PV guest: fast strings on (the
/// host's firmware setting, which user space cannot read, and which
/// every x86-64 firmware enables), branch-trace and PEBS unavailable,
/// xTPR messages off; performance monitoring and MONITOR/MWAIT hidden.
/// A kernel that reads fast strings as off clears ERMS but keeps FSRM,
/// and Linux 6.1's memmove then takes its `rep movsb`-only path with its
/// length checks patched out, copying far past its buffers.
const GUEST_MISC_ENABLE: u64 = MISC_ENABLE_FAST_STRING
    | MISC_ENABLE_BTS_UNAVAIL
    | MISC_ENABLE_PEBS_UNAVAIL
    | MISC_ENABLE_XTPR_DISABLE;
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
const MISC_ENABLE_BTS_UNAVAIL: u64 = 1 << 11;
const MISC_ENABLE_PEBS_UNAVAIL: u64 = 1 << 12;
const MISC_ENABLE_XTPR_DISABLE: u64 = 1 << 23;

fn intel_family(vendor: Vendor) -> bool {
    matches!(vendor, Vendor::Intel | Vendor::Centaur | Vendor::Shanghai)
}

/// `rdmsr` from the guest kernel: the value, or `None` for #GP.
pub fn read_msr<C: PrivilegedCpu + ?Sized>(cpu: &mut C, index: u32) -> Option<u64> {
    let vendor = vendor(cpu);
    let value = match index {
        MSR_APIC_BASE => {
            let bsp = if cpu.vcpu_id() == 0 { APIC_BASE_BSP } else { 0 };
            APIC_DEFAULT_BASE | APIC_BASE_ENABLE | bsp
        }
        MSR_FS_BASE => cpu.segment_base(SegmentBase::Fs),
        MSR_GS_BASE => cpu.segment_base(SegmentBase::Gs),
        MSR_SHADOW_GS_BASE => cpu.virtual_cpu().user_gs_base,
        MSR_IA32_TSC => cpu.tsc(),
        MSR_EFER => guest_efer(cpu),
        MSR_IA32_CR_PAT => XEN_MSR_PAT,
        MSR_IA32_PERF_CAPABILITIES => 0,
        // No CPUID faulting is offered (platform_info reads 0).
        MSR_INTEL_PLATFORM_INFO => 0,
        MSR_INTEL_MISC_FEATURES_ENABLES => cpu.virtual_cpu().misc_features_enables,
        MSR_IA32_FEATURE_CONTROL if intel_family(vendor) => FEATURE_CONTROL_LOCK,
        MSR_IA32_MISC_ENABLE if intel_family(vendor) => GUEST_MISC_ENABLE,
        // The microcode revision reads as 0, as Xen shows it.
        MSR_IA32_UCODE_REV if matches!(vendor, Vendor::Intel | Vendor::Amd) => 0,
        MSR_IA32_PERF_STATUS | MSR_IA32_PERF_CTL
            if matches!(vendor, Vendor::Intel | Vendor::Centaur) =>
        {
            0
        }
        MSR_IA32_THERM_STATUS if vendor == Vendor::Intel => 0,
        MSR_K8_HWCR if matches!(vendor, Vendor::Amd | Vendor::Hygon) => 0,
        i if vendor == Vendor::Amd && is_amd_pstate_msr(i) => 0,
        MSR_AMD64_NB_CFG => 0,
        // The hypercall page MSR reads as zero; the rest of Xen's range
        // is #GP.
        MSR_XEN_HYPERCALL_PAGE => 0,
        i if is_vpmu_msr(i, vendor) => 0,
        _ => return None,
    };
    Some(value)
}

fn is_canonical(address: u64) -> bool {
    ((address << 16) as i64 >> 16) as u64 == address
}

/// `wrmsr` from the guest kernel: false for #GP.
pub fn write_msr<C: PrivilegedCpu + ?Sized>(cpu: &mut C, index: u32, value: u64) -> bool {
    let vendor = vendor(cpu);
    match index {
        MSR_FS_BASE | MSR_GS_BASE | MSR_SHADOW_GS_BASE if !is_canonical(value) => false,
        MSR_FS_BASE => {
            cpu.set_segment_base(SegmentBase::Fs, value);
            true
        }
        MSR_GS_BASE => {
            cpu.set_segment_base(SegmentBase::Gs, value);
            true
        }
        MSR_SHADOW_GS_BASE => {
            cpu.virtual_cpu().user_gs_base = value;
            true
        }
        // Only the value it reads: Linux writes EFER back unchanged.
        MSR_EFER => value == guest_efer(cpu),
        // As on Xen: a write that changes nothing is accepted, any other
        // is #GP.
        MSR_IA32_MISC_ENABLE => intel_family(vendor) && value == GUEST_MISC_ENABLE,
        // Read-only, but Intel documents writing 0 before reading it back
        // after a CPUID; Xen accepts exactly that.
        MSR_IA32_UCODE_REV => vendor == Vendor::Intel && value == 0,
        MSR_INTEL_MISC_FEATURES_ENABLES => {
            // Every bit is reserved without CPUID faulting to offer.
            if value != 0 {
                return false;
            }
            cpu.virtual_cpu().misc_features_enables = value;
            true
        }
        MSR_XEN_HYPERCALL_PAGE => value & 0xfff == 0 && cpu.install_hypercall_page(value >> 12),
        MSR_IA32_PERF_CTL => matches!(vendor, Vendor::Intel | Vendor::Centaur),
        MSR_K8_HWCR => matches!(vendor, Vendor::Amd | Vendor::Hygon),
        i if is_amd_pstate_msr(i) => matches!(vendor, Vendor::Amd | Vendor::Hygon),
        MSR_AMD64_NB_CFG => true,
        MSR_IA32_MPERF | MSR_IA32_APERF => {
            matches!(vendor, Vendor::Intel | Vendor::Amd | Vendor::Hygon)
        }
        MSR_IA32_THERM_CONTROL | MSR_IA32_ENERGY_PERF_BIAS => vendor == Vendor::Intel,
        i if is_vpmu_msr(i, vendor) => true,
        _ => false,
    }
}

// ---- CPUID ----------------------------------------------------------------

/// Xen's CPUID signature "XenVMMXenVMM" as EBX, ECX, EDX.
pub const XEN_CPUID_SIGNATURE: [u32; 3] = [0x566e_6558, 0x65584d4d, 0x4d4d_566e];
pub const XEN_CPUID_BASE: u32 = 0x4000_0000;
/// XEN_CPUID_MAX_NUM_LEAVES: the Xen leaves are base..=base + 5.
pub const XEN_CPUID_LEAVES: u32 = 5;
/// Leaf 0x40000002 ECX: MMU_UPDATE_PRESERVE_AD is available (PV only).
const XEN_CPUID_FEAT1_PRESERVE_AD: u32 = 1;

/// The features a PV domain's default policy offers, per CPUID word
/// (the bits cpufeatureset.h marks 'A'); the rest are hidden. Leaf 1
/// EDX less MCE (bit 7) and MCA (bit 14): Xen offers them with its
/// virtual machine-check MSRs (vMCE), which kxen does not emulate, and a
/// kernel that sees them reads MCG_STATUS at boot (Debian's 6.1 #GPs
/// there and panics).
const PV_LEAF1_EDX: u32 = 0x1fc9_cbf5 & !(1 << 7) & !(1 << 14);
/// Leaf 1 ECX, with HYPERVISOR (bit 31); OSXSAVE is set apart.
const PV_LEAF1_ECX: u32 = 0xf6d8_3203;
const PV_LEAF7_EBX: u32 = 0xf1af_0b29;
const PV_LEAF7_ECX: u32 = 0x0240_5f43;
/// Leaf 7 EDX: FSRM, MD_CLEAR, SERIALIZE, AVX512_FP16. Xen also offers
/// IBRSB, STIBP, SSBD and ARCH_CAPS where it virtualises their MSRs;
/// kxen emulates neither MSR_SPEC_CTRL nor MSR_ARCH_CAPABILITIES, so
/// they stay hidden.
const PV_LEAF7_EDX: u32 = 0x0080_4410;
const PV_EXT1_EDX: u32 = 0xea50_0800;
const PV_EXT1_ECX: u32 = 0x4421_09e3;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF7_EBX_ERMS: u32 = 1 << 9;
const LEAF7_EDX_FSRM: u32 = 1 << 4;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// CPUID as Xen answers a PV guest (`guest_cpuid`): the executor's values
/// with the PV policy's features, Xen's hypervisor leaves, and zeros
/// past every range's maximum. `forced` is the emulated (forced-prefix)
/// CPUID, `kernel_mode` whether the kernel asked; together they decide
/// OSXSAVE as Xen's non-architectural PV rule does.
pub fn pv_cpuid<C: PrivilegedCpu + ?Sized>(
    cpu: &C,
    leaf: u32,
    subleaf: u32,
    forced: bool,
    virtual_cr4: u64,
) -> [u32; 4] {
    if (XEN_CPUID_BASE..=0x4000_ffff).contains(&leaf) {
        return hypervisor_leaf(cpu, leaf - XEN_CPUID_BASE, subleaf);
    }
    let range_max = if leaf < 0x8000_0000 {
        cpu.cpuid(0, 0)[0]
    } else if (0x8000_0000..=0x8000_ffff).contains(&leaf) {
        cpu.cpuid(0x8000_0000, 0)[0]
    } else {
        return [0; 4];
    };
    if leaf > range_max {
        return [0; 4];
    }
    let mut r = cpu.cpuid(leaf, subleaf);
    match leaf {
        1 => {
            // No APIC ID for PV (only HVM gets vcpu_id * 2).
            r[1] &= 0x00ff_ffff;
            let xsave = r[2] & LEAF1_ECX_XSAVE != 0;
            r[2] = (r[2] & PV_LEAF1_ECX & !LEAF1_ECX_OSXSAVE) | LEAF1_ECX_HYPERVISOR;
            // The guest's own CR4.OSXSAVE, or (the leak Linux depends on)
            // the hardware's, in the kernel's forced view.
            let hw_osxsave = cpu.hardware_cr4() & CR4_OSXSAVE != 0;
            if virtual_cr4 & CR4_OSXSAVE != 0 || (xsave && forced && hw_osxsave) {
                r[2] |= LEAF1_ECX_OSXSAVE;
            }
            r[3] &= PV_LEAF1_EDX;
        }
        // MONITOR is not offered; vPMU is off.
        5 | 0xa => r = [0; 4],
        7 if subleaf == 0 => {
            r[1] &= PV_LEAF7_EBX;
            r[2] &= PV_LEAF7_ECX;
            r[3] &= PV_LEAF7_EDX;
            // FSRM (fast short rep movsb) implies ERMS; a CPU offering it
            // alone sends Linux's memmove down a path with no length checks.
            if r[1] & LEAF7_EBX_ERMS == 0 {
                r[3] &= !LEAF7_EDX_FSRM;
            }
        }
        0x8000_0001 => {
            r[2] &= PV_EXT1_ECX;
            r[3] &= PV_EXT1_EDX;
        }
        // No SVM for PV guests.
        0x8000_000a => r = [0; 4],
        _ => {}
    }
    r
}

/// Xen's leaves at 0x40000000 for a PV domain (no Viridian).
fn hypervisor_leaf<C: PrivilegedCpu + ?Sized>(cpu: &C, index: u32, subleaf: u32) -> [u32; 4] {
    let [s0, s1, s2] = XEN_CPUID_SIGNATURE;
    match index {
        0 => [XEN_CPUID_BASE + XEN_CPUID_LEAVES, s0, s1, s2],
        1 => [cpu.cpuid(XEN_CPUID_BASE + 1, 0)[0], 0, 0, 0],
        2 => [1, MSR_XEN_HYPERCALL_PAGE, XEN_CPUID_FEAT1_PRESERVE_AD, 0],
        // The time leaf's three sub-leaves are the executor's clock.
        3 if subleaf <= 2 => cpu.cpuid(XEN_CPUID_BASE + 3, subleaf),
        // PV parameters: the machine address width.
        5 if subleaf == 0 => {
            let max_mfn = cpu.max_machine_frame();
            let width = 64 - max_mfn.leading_zeros() + 12;
            [0, width, 0, 0]
        }
        // Leaf 4 is HVM's; past the limit is empty.
        _ => [0; 4],
    }
}

// ---- the instructions ------------------------------------------------------

/// The CPL Xen's `iopl_ok` compares with the virtual IOPL.
fn iopl_ok<C: PrivilegedCpu + ?Sized>(cpu: &mut C) -> bool {
    let kernel = cpu.kernel_mode();
    let v = *cpu.virtual_cpu();
    let cpl = match (kernel, v.architectural_iopl) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => 3,
    };
    cpl <= v.iopl
}

/// The 64-bit register `reg` belongs to, as a [`GprIndex`] (the
/// hardware encoding order RAX..R15).
pub(crate) fn gpr_index(reg: Register) -> Option<GprIndex> {
    const ORDER: [Register; 16] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    let full = reg.full_register();
    ORDER.iter().position(|&r| r == full)
}

fn cr_number(reg: Register) -> Option<u8> {
    Some(match reg {
        Register::CR0 => 0,
        Register::CR2 => 2,
        Register::CR3 => 3,
        Register::CR4 => 4,
        Register::CR8 => 8,
        _ => return None,
    })
}

/// Write `value` to RAX as an `in` of `bytes` does: AL and AX keep the
/// rest of RAX, EAX zero-extends.
fn set_accumulator<C: PrivilegedCpu + ?Sized>(cpu: &mut C, bytes: u8, value: u32) {
    let old = cpu.gpr(RAX);
    let new = match bytes {
        1 => (old & !0xff) | u64::from(value & 0xff),
        2 => (old & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    };
    cpu.set_gpr(RAX, new);
}

/// `in`/`out` (not the string forms): the port and access size.
fn port_io(insn: &Instruction, rdx: u64) -> Option<(bool, u16, u8)> {
    let (is_in, bytes, imm) = match insn.code() {
        Code::In_AL_imm8 => (true, 1, true),
        Code::In_AX_imm8 => (true, 2, true),
        Code::In_EAX_imm8 => (true, 4, true),
        Code::In_AL_DX => (true, 1, false),
        Code::In_AX_DX => (true, 2, false),
        Code::In_EAX_DX => (true, 4, false),
        Code::Out_imm8_AL => (false, 1, true),
        Code::Out_imm8_AX => (false, 2, true),
        Code::Out_imm8_EAX => (false, 4, true),
        Code::Out_DX_AL => (false, 1, false),
        Code::Out_DX_AX => (false, 2, false),
        Code::Out_DX_EAX => (false, 4, false),
        _ => return None,
    };
    let port = if imm {
        u16::from(insn.immediate8())
    } else {
        rdx as u16
    };
    Some((is_in, port, bytes))
}

/// Decode the one instruction at `rip` from `bytes` (what the executor
/// could read there, at most 15; fewer means the next byte faults).
fn decode(rip: u64, bytes: &[u8]) -> Result<Instruction, Outcome> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    match decoder.last_error() {
        DecoderError::None => Ok(insn),
        // Cut short by an unreadable byte: Xen's instruction fetch faults.
        DecoderError::NoMoreBytes if bytes.len() < MAX_INSN_LEN => Err(Outcome::BouncePageFault {
            address: rip.wrapping_add(bytes.len() as u64),
        }),
        _ => Err(Outcome::BounceGp),
    }
}

/// A #GP(0) from the PV guest at `rip` (Xen's `pv_emulate_privileged_op`
/// from `do_general_protection`; the executor calls it only for error
/// code 0). `bytes` are the instruction bytes at `rip` as the guest can
/// read them.
pub fn emulate_privileged_op<C: PrivilegedCpu + ?Sized>(
    cpu: &mut C,
    rip: u64,
    bytes: &[u8],
) -> Outcome {
    let insn = match decode(rip, bytes) {
        Ok(insn) => insn,
        Err(outcome) => return outcome,
    };
    // A LOCK prefix is #UD on every instruction emulated here; hardware
    // would not have raised #GP, and x86_emulate refuses it.
    if insn.has_lock_prefix() {
        return Outcome::BounceGp;
    }
    let next = rip.wrapping_add(insn.len() as u64);
    let done = Outcome::Emulated { rip: next };
    let kernel = cpu.kernel_mode();
    match insn.mnemonic() {
        Mnemonic::Rdmsr if kernel => {
            let index = cpu.gpr(RCX) as u32;
            match read_msr(cpu, index) {
                Some(value) => {
                    cpu.set_gpr(RAX, value & 0xffff_ffff);
                    cpu.set_gpr(RDX, value >> 32);
                    done
                }
                None => Outcome::BounceGp,
            }
        }
        Mnemonic::Wrmsr if kernel => {
            let index = cpu.gpr(RCX) as u32;
            let value = (cpu.gpr(RDX) << 32) | (cpu.gpr(RAX) & 0xffff_ffff);
            if write_msr(cpu, index, value) {
                done
            } else {
                Outcome::BounceGp
            }
        }
        Mnemonic::Mov if kernel => {
            let (to_cr, cr, gpr) = match insn.code() {
                Code::Mov_r64_cr => (false, insn.op1_register(), insn.op0_register()),
                Code::Mov_cr_r64 => (true, insn.op0_register(), insn.op1_register()),
                _ => return Outcome::BounceGp,
            };
            let (Some(cr), Some(gpr)) = (cr_number(cr), gpr_index(gpr)) else {
                return Outcome::BounceGp;
            };
            if to_cr {
                let value = cpu.gpr(gpr);
                if !write_cr(cpu, cr, value) {
                    return Outcome::BounceGp;
                }
            } else {
                let Some(value) = read_cr(cpu, cr) else {
                    return Outcome::BounceGp;
                };
                cpu.set_gpr(gpr, value);
            }
            done
        }
        Mnemonic::Clts if kernel => {
            cpu.virtual_cpu().fpu_task_switched = false;
            done
        }
        // Without cache-flush rights Xen ignores it (Linux issues it at
        // start of day).
        Mnemonic::Wbinvd if kernel => done,
        Mnemonic::Cpuid => {
            // Only with CPUID faulting on, from user mode (never offered).
            if !kernel && cpu.virtual_cpu().misc_features_enables & 1 != 0 {
                return Outcome::BounceGp;
            }
            emulated_cpuid(cpu, false);
            done
        }
        // Allowed with the I/O privilege, and then a no-op: Xen does not
        // touch the event mask for them.
        Mnemonic::Cli | Mnemonic::Sti => {
            if iopl_ok(cpu) {
                done
            } else {
                Outcome::BounceGp
            }
        }
        Mnemonic::In | Mnemonic::Out => {
            let Some((is_in, port, size)) = port_io(&insn, cpu.gpr(RDX)) else {
                return Outcome::BounceGp;
            };
            if !iopl_ok(cpu) && !cpu.io_bitmap_permits(port, size) {
                return Outcome::BounceGp;
            }
            // kxen grants a domain no I/O ports: reads float high, writes
            // are dropped (Xen's guest_io_read/write without
            // ioports_access_permitted).
            if is_in {
                set_accumulator(cpu, size, u32::MAX);
            }
            done
        }
        _ => Outcome::BounceGp,
    }
}

/// CPUID with RAX/RCX as the leaf and sub-leaf, the result in
/// RAX/RBX/RCX/RDX (zero-extended).
fn emulated_cpuid<C: PrivilegedCpu + ?Sized>(cpu: &mut C, forced: bool) {
    let leaf = cpu.gpr(RAX) as u32;
    let subleaf = cpu.gpr(RCX) as u32;
    let cr4 = cpu.virtual_cpu().cr4;
    let forced_in_kernel = forced && cpu.kernel_mode();
    let r = pv_cpuid(cpu, leaf, subleaf, forced_in_kernel, cr4);
    cpu.set_gpr(RAX, u64::from(r[0]));
    cpu.set_gpr(RBX, u64::from(r[1]));
    cpu.set_gpr(RCX, u64::from(r[2]));
    cpu.set_gpr(RDX, u64::from(r[3]));
}

/// A #UD from the PV guest at `rip` (Xen's `pv_emulate_invalid_op`): the
/// forced-emulation prefix followed by `cpuid` is a CPUID in Xen's PV
/// view; anything else bounces the #UD.
pub fn emulate_invalid_op<C: PrivilegedCpu + ?Sized>(
    cpu: &mut C,
    rip: u64,
    bytes: &[u8],
) -> Outcome {
    let sig = FORCED_EMULATION_SIGNATURE.len();
    let matches_so_far = |want: &[u8], got: &[u8]| got.iter().zip(want).all(|(g, w)| g == w);
    let head = &bytes[..bytes.len().min(sig)];
    if !matches_so_far(&FORCED_EMULATION_SIGNATURE, head) {
        return Outcome::BounceUd;
    }
    if head.len() < sig {
        return Outcome::BouncePageFault {
            address: rip.wrapping_add(head.len() as u64),
        };
    }
    let tail = &bytes[sig..bytes.len().min(sig + FORCED_CPUID.len())];
    if !matches_so_far(&FORCED_CPUID, tail) {
        return Outcome::BounceUd;
    }
    if tail.len() < FORCED_CPUID.len() {
        return Outcome::BouncePageFault {
            address: rip.wrapping_add((sig + tail.len()) as u64),
        };
    }
    // Xen bounces #GP here when the guest enabled CPUID faulting and user
    // mode asked; kxen never lets CPUID faulting be enabled.
    if !cpu.kernel_mode() && cpu.virtual_cpu().misc_features_enables & 1 != 0 {
        return Outcome::BounceGp;
    }
    emulated_cpuid(cpu, true);
    Outcome::Emulated {
        rip: rip.wrapping_add(FORCED_CPUID_LEN),
    }
}

#[cfg(test)]
mod tests;
