//! `struct vcpu_guest_context` (64-bit layout, public/arch-x86/xen.h and
//! xen-x86_64.h), as VCPUOP_initialise passes it, and what Xen's
//! `arch_set_info_guest` (arch/x86/domain.c) accepts of it for a 64-bit
//! PV vCPU.
//!
//! The bytes come from the guest: every field is range-checked, and a
//! refusal is Xen's errno with nothing applied.

use xen_abi::errno::EINVAL;
use xen_abi::pv::{VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_IN_KERNEL, VGCF_SYSCALL_DISABLES_EVENTS};

use crate::traps::{is_canonical, TrapTable, NR_VECTORS};
use crate::vcpu::PvVcpu;

/// Bytes of the 64-bit `vcpu_guest_context`.
pub const CONTEXT_SIZE: usize = 5168;

// Field offsets (64-bit layout).
pub(crate) const FLAGS: usize = 512;
pub(crate) const USER_REGS: usize = 520;
pub(crate) const TRAP_CTXT: usize = 720;
pub(crate) const LDT_ENTS: usize = 4824;
pub(crate) const GDT_ENTS: usize = 4960;
pub(crate) const KERNEL_SS: usize = 4968;
pub(crate) const KERNEL_SP: usize = 4976;
pub(crate) const CTRLREG: usize = 4984;
pub(crate) const EVENT_CALLBACK: usize = 5112;
pub(crate) const FAILSAFE_CALLBACK: usize = 5120;
pub(crate) const SYSCALL_CALLBACK: usize = 5128;
pub(crate) const FS_BASE: usize = 5144;
pub(crate) const GS_BASE_KERNEL: usize = 5152;
pub(crate) const GS_BASE_USER: usize = 5160;
/// `cpu_user_regs` offsets, relative to USER_REGS.
pub(crate) const REGS_RIP: usize = 128;
pub(crate) const REGS_CS: usize = 136;
pub(crate) const REGS_RFLAGS: usize = 144;
pub(crate) const REGS_RSP: usize = 152;
pub(crate) const REGS_SS: usize = 160;
/// Xen's FIRST_RESERVED_GDT_ENTRY: a guest GDT may not reach Xen's
/// selectors (0xe000 and up).
pub(crate) const MAX_GDT_ENTS: u64 = 14 * 512;
/// An LDT has at most 8192 descriptors.
pub(crate) const MAX_LDT_ENTS: u64 = 8192;

/// The general registers of `cpu_user_regs`, in its order: r15, r14,
/// r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi.
pub const GPR_ORDER: [&str; 15] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi",
];

/// A parsed, validated context: the new vCPU's PV state and where it
/// starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestContext {
    pub state: PvVcpu,
    /// The general registers in [`GPR_ORDER`].
    pub gprs: [u64; 15],
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// `ctrlreg[3]` and `ctrlreg[1]` as frames (the kernel and user L4;
    /// 0 for no user L4).
    pub kernel_l4: u64,
    pub user_l4: u64,
}

pub(crate) fn word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

pub(crate) fn half(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

impl GuestContext {
    /// Parse and check a context as Xen does for a 64-bit PV vCPU.
    /// Deviations: the vCPU must start in kernel mode (VGCF_in_kernel);
    /// a guest GDT/LDT is range-checked but not loaded (kxen's PV vCPUs
    /// run on Xen's flat selectors only).
    pub fn parse(bytes: &[u8]) -> Result<GuestContext, i64> {
        if bytes.len() < CONTEXT_SIZE {
            return Err(-EINVAL);
        }
        let flags = word(bytes, FLAGS);
        if flags & VGCF_IN_KERNEL == 0 {
            return Err(-EINVAL);
        }
        let regs = |off: usize| word(bytes, USER_REGS + off);
        let mut gprs = [0u64; 15];
        for (i, gpr) in gprs.iter_mut().enumerate() {
            *gpr = regs(8 * i);
        }
        let (rip, rsp) = (regs(REGS_RIP), regs(REGS_RSP));
        let kernel_sp = word(bytes, KERNEL_SP);
        let callbacks = [
            word(bytes, EVENT_CALLBACK),
            word(bytes, FAILSAFE_CALLBACK),
            word(bytes, SYSCALL_CALLBACK),
        ];
        let bases = [
            word(bytes, FS_BASE),
            word(bytes, GS_BASE_KERNEL),
            word(bytes, GS_BASE_USER),
        ];
        let addresses = [rip, rsp, kernel_sp]
            .into_iter()
            .chain(callbacks)
            .chain(bases);
        if addresses.into_iter().any(|a| !is_canonical(a)) {
            return Err(-EINVAL);
        }
        if word(bytes, GDT_ENTS) > MAX_GDT_ENTS || word(bytes, LDT_ENTS) > MAX_LDT_ENTS {
            return Err(-EINVAL);
        }
        let mut entries = vec![(0u8, 0u16, 0u64); NR_VECTORS];
        for (vector, entry) in entries.iter_mut().enumerate() {
            let at = TRAP_CTXT + 16 * vector;
            *entry = (bytes[at + 1], half(bytes, at + 2), word(bytes, at + 8));
        }
        let traps = TrapTable::from_context(&entries).map_err(|_| -EINVAL)?;
        // ctrlreg[3]/[1] hold xen_pfn_to_cr3 values: the frame shifted.
        let kernel_l4 = word(bytes, CTRLREG + 3 * 8) >> 12;
        let user_l4 = word(bytes, CTRLREG + 8) >> 12;
        let state = PvVcpu {
            traps,
            kernel_mode: true,
            kernel_ss: half(bytes, KERNEL_SS) | 3,
            kernel_sp,
            event_callback: callbacks[0],
            failsafe_callback: callbacks[1],
            syscall_callback: callbacks[2],
            vgc_flags: flags & (VGCF_FAILSAFE_DISABLES_EVENTS | VGCF_SYSCALL_DISABLES_EVENTS),
            fs_base: bases[0],
            gs_base_kernel: bases[1],
            gs_base_user: bases[2],
            // Xen takes the vCPU's virtual IOPL from the context's
            // RFLAGS.IOPL (Linux starts secondary vCPUs with IOPL 1, its
            // boot vCPU gets it from PHYSDEVOP_set_iopl); the real RFLAGS
            // never carries it.
            iopl: ((regs(REGS_RFLAGS) >> 12) & 3) as u8,
            ..PvVcpu::default()
        };
        // CS/SS are Xen's flat ones whatever the context says (the vCPU
        // has no other selectors to load); RFLAGS keeps the guest's
        // arithmetic flags only.
        let _ = (
            half(bytes, USER_REGS + REGS_CS),
            half(bytes, USER_REGS + REGS_SS),
        );
        Ok(GuestContext {
            state,
            gprs,
            rip,
            rsp,
            rflags: (regs(REGS_RFLAGS) & 0x0000_0cd5) | 0x2,
            kernel_l4,
            user_l4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Vec<u8> {
        let mut b = vec![0u8; CONTEXT_SIZE];
        let put =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut b, FLAGS, VGCF_IN_KERNEL | VGCF_SYSCALL_DISABLES_EVENTS);
        put(&mut b, USER_REGS + REGS_RIP, 0xffff_ffff_8000_1000);
        put(&mut b, USER_REGS + REGS_RSP, 0xffff_ffff_8010_0000);
        put(&mut b, USER_REGS + 13 * 8, 0x1234); // rsi
        put(&mut b, USER_REGS + REGS_RFLAGS, 0x1000); // IOPL 1, as Linux
        put(&mut b, KERNEL_SP, 0xffff_ffff_8020_0000);
        put(&mut b, CTRLREG + 24, 0x42 << 12);
        put(&mut b, EVENT_CALLBACK, 0xffff_ffff_8000_2000);
        // #PF's handler.
        let at = TRAP_CTXT + 16 * 14;
        b[at + 2..at + 4].copy_from_slice(&0xe030u16.to_le_bytes());
        put(&mut b, at + 8, 0xffff_ffff_8000_3000);
        b
    }

    #[test]
    fn parses_a_kernel_context() {
        let c = GuestContext::parse(&context()).unwrap();
        assert_eq!(c.rip, 0xffff_ffff_8000_1000);
        assert_eq!((c.state.iopl, c.rflags & 0x3000), (1, 0), "IOPL is virtual");
        assert_eq!(c.gprs[13], 0x1234);
        assert_eq!((c.kernel_l4, c.user_l4), (0x42, 0));
        assert_eq!(c.state.event_callback, 0xffff_ffff_8000_2000);
        assert_eq!(c.state.kernel_sp, 0xffff_ffff_8020_0000);
        assert_ne!(c.state.vgc_flags & VGCF_SYSCALL_DISABLES_EVENTS, 0);
        let pf = c.state.traps.handler(14).unwrap();
        assert_eq!((pf.cs, pf.address), (0xe033, 0xffff_ffff_8000_3000));
    }

    #[test]
    fn refuses_what_xen_refuses() {
        assert_eq!(GuestContext::parse(&[0u8; 16]), Err(-EINVAL));
        let mut b = context();
        b[FLAGS] = 0;
        assert_eq!(GuestContext::parse(&b), Err(-EINVAL), "not in kernel mode");
        let mut b = context();
        b[USER_REGS + REGS_RIP..USER_REGS + REGS_RIP + 8]
            .copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(GuestContext::parse(&b), Err(-EINVAL), "non-canonical rip");
        let mut b = context();
        b[GDT_ENTS..GDT_ENTS + 8].copy_from_slice(&(MAX_GDT_ENTS + 1).to_le_bytes());
        assert_eq!(GuestContext::parse(&b), Err(-EINVAL), "GDT into Xen's");
        let mut b = context();
        let at = TRAP_CTXT + 16 * 3 + 8;
        b[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert_eq!(GuestContext::parse(&b), Err(-EINVAL), "bad trap handler");
    }
}
