//! A PV vCPU as a save image carries it (issue 17): Xen's migration
//! stream puts each vCPU of a PV domain in an X86_PV_VCPU_BASIC record (a
//! 64-bit `struct vcpu_guest_context`, what XEN_DOMCTL_getvcpucontext
//! returns) and an X86_PV_VCPU_EXTENDED record (`struct
//! xen_domctl_ext_vcpucontext`: the 32-bit syscall and sysenter
//! callbacks). [`SavedVcpu`] writes both from kxen's [`PvVcpu`] and the
//! vCPU's registers, and reads them back.
//!
//! The bytes on a restore come from an untrusted image: every address is
//! checked as Xen's `arch_set_info_guest` checks it, the GDT and LDT sizes
//! against Xen's limits, and nothing is taken before all of it passed.
//! The page-table frames, GDT frames and LDT are checked later, by the PV
//! MMU, when the executor takes references on them (as Xen does).

use xen_abi::pv::{
    FLAT_RING3_CS64, FLAT_RING3_SS64, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_I387_VALID,
    VGCF_IN_KERNEL, VGCF_ONLINE, VGCF_SYSCALL_DISABLES_EVENTS,
};

use crate::context::{
    half, word, CONTEXT_SIZE, CTRLREG, EVENT_CALLBACK, FAILSAFE_CALLBACK, FLAGS, FS_BASE, GDT_ENTS,
    GS_BASE_KERNEL, GS_BASE_USER, KERNEL_SP, KERNEL_SS, LDT_ENTS, MAX_GDT_ENTS, MAX_LDT_ENTS,
    REGS_CS, REGS_RFLAGS, REGS_RIP, REGS_RSP, REGS_SS, SYSCALL_CALLBACK, TRAP_CTXT, USER_REGS,
};
use crate::traps::{is_canonical, TrapTable, NR_VECTORS};
use crate::vcpu::PvVcpu;

/// `ldt_base`, and `gdt_frames[16]` after `ldt_ents`.
const LDT_BASE: usize = 4816;
const GDT_FRAMES: usize = 4832;
const MAX_GDT_FRAMES: usize = 16;
const DEBUGREG: usize = 5048;
/// `cpu_user_regs`' data selectors, after `ss`.
const REGS_ES: usize = 168;
const REGS_DS: usize = 176;
const REGS_FS: usize = 184;
const REGS_GS: usize = 192;
/// CR0 as Xen reports a 64-bit PV vCPU's (PE, MP, ET, NE, WP, AM, PG);
/// only TS is the guest's.
const PV_CR0: u64 = 0x8005_0033;
const CR0_TS: u64 = 1 << 3;
const DESCRIPTORS_PER_PAGE: u64 = 512;

/// Bytes of the X86_PV_VCPU_EXTENDED body kxen writes: `vcpu`, `size`,
/// the syscall32 and sysenter callbacks, their selectors and
/// event-masking flags, and `mcg_cap` (zero: no machine checks).
pub const EXTENDED_SIZE: usize = 40;
const EXT_SYSCALL32_EIP: usize = 8;
const EXT_SYSENTER_EIP: usize = 16;
const EXT_SYSCALL32_DISABLES: usize = 28;
const EXT_SYSENTER_DISABLES: usize = 29;
/// The extended record's smallest body that holds the callbacks.
const EXTENDED_MIN: usize = 30;

/// The registers of `cpu_user_regs` a saved vCPU carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedRegs {
    /// r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx,
    /// rsi, rdi ([`crate::context::GPR_ORDER`]).
    pub gprs: [u64; 15],
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
}

/// One PV vCPU's whole PV state: its [`PvVcpu`], its registers, the
/// L4 tables it runs on and its LDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVcpu {
    pub state: PvVcpu,
    pub regs: SavedRegs,
    /// The kernel and user L4 frames (None: no table loaded).
    pub kernel_l4: Option<u64>,
    pub user_l4: Option<u64>,
    /// MMUEXT_SET_LDT's linear base and entry count (0: no LDT).
    pub ldt_base: u64,
    pub ldt_entries: u32,
    /// The FXSAVE image (`fpu_ctxt`, VGCF_i387_valid), when the saver had
    /// it: kxen's vCPU state carries the whole XSAVE area besides.
    pub fpu: Option<Box<[u8; FPU_SIZE]>>,
}

/// Bytes of `fpu_ctxt`, the context's first field (an FXSAVE image).
pub const FPU_SIZE: usize = 512;

/// Why a saved vCPU's records were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedVcpuError {
    #[error("X86_PV_VCPU_BASIC is {0} bytes, not {CONTEXT_SIZE}")]
    BasicSize(usize),
    #[error("X86_PV_VCPU_EXTENDED is {0} bytes, under {EXTENDED_MIN}")]
    ExtendedSize(usize),
    #[error("the context is not marked online")]
    Offline,
    #[error("{what} {value:#x} is not a canonical address")]
    NonCanonical { what: &'static str, value: u64 },
    #[error("{0} GDT entries reach Xen's reserved ones")]
    GdtEntries(u64),
    #[error("{0} LDT entries is more than 8192")]
    LdtEntries(u64),
    #[error("the trap table has a non-canonical handler")]
    TrapTable,
    #[error("the vCPU has no kernel L4")]
    NoKernelTables,
}

fn put(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn canonical(what: &'static str, value: u64) -> Result<u64, SavedVcpuError> {
    if is_canonical(value) {
        Ok(value)
    } else {
        Err(SavedVcpuError::NonCanonical { what, value })
    }
}

impl SavedVcpu {
    /// The X86_PV_VCPU_BASIC body: a 64-bit `vcpu_guest_context` as
    /// Xen's `arch_get_info_guest` fills it for an online PV vCPU, with
    /// the FXSAVE image and VGCF_i387_valid when [`SavedVcpu::fpu`] has one.
    pub fn encode_basic(&self) -> Vec<u8> {
        let s = &self.state;
        let mut b = vec![0u8; CONTEXT_SIZE];
        let mut flags = VGCF_ONLINE
            | (s.vgc_flags & (VGCF_FAILSAFE_DISABLES_EVENTS | VGCF_SYSCALL_DISABLES_EVENTS));
        if s.kernel_mode {
            flags |= VGCF_IN_KERNEL;
        }
        if let Some(fpu) = &self.fpu {
            b[..FPU_SIZE].copy_from_slice(&fpu[..]);
            flags |= VGCF_I387_VALID;
        }
        put(&mut b, FLAGS, flags);
        let r = &self.regs;
        for (i, gpr) in r.gprs.iter().enumerate() {
            put(&mut b, USER_REGS + 8 * i, *gpr);
        }
        put(&mut b, USER_REGS + REGS_RIP, r.rip);
        put16(&mut b, USER_REGS + REGS_CS, r.cs);
        // Xen shows the virtual IOPL in the saved RFLAGS.
        let rflags = (r.rflags & !0x3000) | (u64::from(s.iopl & 3) << 12);
        put(&mut b, USER_REGS + REGS_RFLAGS, rflags);
        put(&mut b, USER_REGS + REGS_RSP, r.rsp);
        put16(&mut b, USER_REGS + REGS_SS, r.ss);
        put16(&mut b, USER_REGS + REGS_ES, r.es);
        put16(&mut b, USER_REGS + REGS_DS, r.ds);
        put16(&mut b, USER_REGS + REGS_FS, r.fs);
        put16(&mut b, USER_REGS + REGS_GS, s.gs_sel_user);
        for (vector, (flags, cs, address)) in s.traps.context_entries().into_iter().enumerate() {
            let at = TRAP_CTXT + 16 * vector;
            b[at] = vector as u8;
            b[at + 1] = flags;
            put16(&mut b, at + 2, cs);
            put(&mut b, at + 8, address);
        }
        put(&mut b, LDT_BASE, self.ldt_base);
        put(&mut b, LDT_ENTS, u64::from(self.ldt_entries));
        for (i, frame) in s.gdt_frames.iter().take(MAX_GDT_FRAMES).enumerate() {
            put(&mut b, GDT_FRAMES + 8 * i, *frame);
        }
        put(&mut b, GDT_ENTS, s.gdt_entries);
        put(&mut b, KERNEL_SS, u64::from(s.kernel_ss));
        put(&mut b, KERNEL_SP, s.kernel_sp);
        let ts = if s.fpu_ts { CR0_TS } else { 0 };
        put(&mut b, CTRLREG, PV_CR0 | ts);
        put(&mut b, CTRLREG + 8, self.user_l4.map_or(0, |mfn| mfn << 12));
        put(
            &mut b,
            CTRLREG + 3 * 8,
            self.kernel_l4.map_or(0, |mfn| mfn << 12),
        );
        for (i, value) in s.debugreg.iter().enumerate() {
            put(&mut b, DEBUGREG + 8 * i, *value);
        }
        put(&mut b, EVENT_CALLBACK, s.event_callback);
        put(&mut b, FAILSAFE_CALLBACK, s.failsafe_callback);
        put(&mut b, SYSCALL_CALLBACK, s.syscall_callback);
        put(&mut b, FS_BASE, s.fs_base);
        put(&mut b, GS_BASE_KERNEL, s.gs_base_kernel);
        put(&mut b, GS_BASE_USER, s.gs_base_user);
        b
    }

    /// The X86_PV_VCPU_EXTENDED body for vCPU `vcpu`.
    pub fn encode_extended(&self, vcpu: u32) -> Vec<u8> {
        let s = &self.state;
        let mut b = vec![0u8; EXTENDED_SIZE];
        b[0..4].copy_from_slice(&vcpu.to_le_bytes());
        b[4..8].copy_from_slice(&(EXTENDED_SIZE as u32).to_le_bytes());
        put(&mut b, EXT_SYSCALL32_EIP, s.syscall32_callback);
        put(&mut b, EXT_SYSENTER_EIP, s.sysenter_callback);
        // The selectors: Xen's flat 32-bit ring-3 code selector, the only
        // one a 64-bit PV kernel's callbacks run on.
        put16(&mut b, 24, xen_abi::pv::FLAT_RING3_CS32);
        put16(&mut b, 26, xen_abi::pv::FLAT_RING3_CS32);
        b[EXT_SYSCALL32_DISABLES] = u8::from(s.syscall32_disables_events);
        b[EXT_SYSENTER_DISABLES] = u8::from(s.sysenter_disables_events);
        b
    }

    /// Read a vCPU back from its two records (hostile bytes).
    pub fn parse(basic: &[u8], extended: &[u8]) -> Result<SavedVcpu, SavedVcpuError> {
        if basic.len() != CONTEXT_SIZE {
            return Err(SavedVcpuError::BasicSize(basic.len()));
        }
        if extended.len() < EXTENDED_MIN {
            return Err(SavedVcpuError::ExtendedSize(extended.len()));
        }
        let flags = word(basic, FLAGS);
        if flags & VGCF_ONLINE == 0 {
            return Err(SavedVcpuError::Offline);
        }
        let kernel_mode = flags & VGCF_IN_KERNEL != 0;
        let reg = |off: usize| word(basic, USER_REGS + off);
        let sel = |off: usize| half(basic, USER_REGS + off);
        let mut gprs = [0u64; 15];
        for (i, gpr) in gprs.iter_mut().enumerate() {
            *gpr = reg(8 * i);
        }
        let regs = SavedRegs {
            gprs,
            rip: canonical("rip", reg(REGS_RIP))?,
            rsp: canonical("rsp", reg(REGS_RSP))?,
            // IOPL is virtual (below); the rest is the CPU's.
            rflags: reg(REGS_RFLAGS) & !0x3000,
            cs: sel(REGS_CS),
            ss: sel(REGS_SS),
            ds: sel(REGS_DS),
            es: sel(REGS_ES),
            fs: sel(REGS_FS),
            gs: sel(REGS_GS),
        };
        let gdt_entries = word(basic, GDT_ENTS);
        if gdt_entries > MAX_GDT_ENTS {
            return Err(SavedVcpuError::GdtEntries(gdt_entries));
        }
        let ldt_entries = word(basic, LDT_ENTS);
        if ldt_entries > MAX_LDT_ENTS {
            return Err(SavedVcpuError::LdtEntries(ldt_entries));
        }
        let gdt_frames = (0..gdt_entries.div_ceil(DESCRIPTORS_PER_PAGE) as usize)
            .map(|i| word(basic, GDT_FRAMES + 8 * i))
            .collect();
        let mut entries = vec![(0u8, 0u16, 0u64); NR_VECTORS];
        for (vector, entry) in entries.iter_mut().enumerate() {
            let at = TRAP_CTXT + 16 * vector;
            *entry = (basic[at + 1], half(basic, at + 2), word(basic, at + 8));
        }
        let traps = TrapTable::from_context(&entries).map_err(|_| SavedVcpuError::TrapTable)?;
        // Frame 0 reads as "no table": a saved CR3 of 0 is how Xen writes
        // a vCPU without one.
        let frame_of = |cr3: u64| (cr3 >> 12 != 0).then_some(cr3 >> 12);
        let kernel_l4 =
            frame_of(word(basic, CTRLREG + 3 * 8)).ok_or(SavedVcpuError::NoKernelTables)?;
        let user_l4 = frame_of(word(basic, CTRLREG + 8));
        let mut debugreg = [0u64; 8];
        for (i, value) in debugreg.iter_mut().enumerate() {
            *value = word(basic, DEBUGREG + 8 * i);
        }
        for value in &debugreg[..4] {
            canonical("a debug address", *value)?;
        }
        let state = PvVcpu {
            traps,
            kernel_mode,
            kernel_ss: half(basic, KERNEL_SS) | 3,
            kernel_sp: canonical("kernel_sp", word(basic, KERNEL_SP))?,
            event_callback: canonical("event callback", word(basic, EVENT_CALLBACK))?,
            failsafe_callback: canonical("failsafe callback", word(basic, FAILSAFE_CALLBACK))?,
            syscall_callback: canonical("syscall callback", word(basic, SYSCALL_CALLBACK))?,
            syscall32_callback: canonical("syscall32 callback", word(extended, EXT_SYSCALL32_EIP))?,
            sysenter_callback: canonical("sysenter callback", word(extended, EXT_SYSENTER_EIP))?,
            vgc_flags: flags & (VGCF_FAILSAFE_DISABLES_EVENTS | VGCF_SYSCALL_DISABLES_EVENTS),
            syscall32_disables_events: extended[EXT_SYSCALL32_DISABLES] != 0,
            sysenter_disables_events: extended[EXT_SYSENTER_DISABLES] != 0,
            fs_base: canonical("fs_base", word(basic, FS_BASE))?,
            gs_base_kernel: canonical("gs_base_kernel", word(basic, GS_BASE_KERNEL))?,
            gs_base_user: canonical("gs_base_user", word(basic, GS_BASE_USER))?,
            gs_sel_user: regs.gs,
            gdt_frames,
            gdt_entries,
            // Taken by the executor when it loads the LDT.
            ldt_frames: Vec::new(),
            iopl: ((reg(REGS_RFLAGS) >> 12) & 3) as u8,
            fpu_ts: word(basic, CTRLREG) & CR0_TS != 0,
            debugreg,
            // User mode's selectors are the live ones while in user mode;
            // in kernel mode the next iret to user mode sets them.
            user_cs: if kernel_mode {
                FLAT_RING3_CS64
            } else {
                regs.cs
            },
            user_ss: if kernel_mode {
                FLAT_RING3_SS64
            } else {
                regs.ss
            },
            // Xen keeps no NMI callback in a saved context either.
            nmi_callback: 0,
        };
        let fpu = (flags & VGCF_I387_VALID != 0).then(|| {
            let mut image = Box::new([0u8; FPU_SIZE]);
            image.copy_from_slice(&basic[..FPU_SIZE]);
            image
        });
        Ok(SavedVcpu {
            state,
            regs,
            kernel_l4: Some(kernel_l4),
            user_l4,
            ldt_base: canonical("ldt_base", word(basic, LDT_BASE))?,
            ldt_entries: ldt_entries as u32,
            fpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedVcpu {
        let mut state = PvVcpu {
            kernel_mode: false,
            kernel_ss: 0xe02b,
            kernel_sp: 0xffff_c900_0000_4000,
            event_callback: 0xffff_ffff_8100_0000,
            failsafe_callback: 0xffff_ffff_8100_0100,
            syscall_callback: 0xffff_ffff_8100_0200,
            syscall32_callback: 0xffff_ffff_8100_0300,
            sysenter_callback: 0xffff_ffff_8100_0400,
            vgc_flags: VGCF_SYSCALL_DISABLES_EVENTS,
            syscall32_disables_events: true,
            fs_base: 0x7f00_0000_1000,
            gs_base_kernel: 0xffff_8880_0fc0_0000,
            gs_base_user: 0x7f00_0000_2000,
            gs_sel_user: 0x2b,
            gdt_frames: vec![0x1234],
            gdt_entries: 32,
            iopl: 1,
            fpu_ts: true,
            user_cs: 0x33,
            user_ss: 0x2b,
            ..PvVcpu::default()
        };
        state.debugreg[0] = 0x40_1000;
        let entries: Vec<(u8, u16, u64)> = (0..NR_VECTORS)
            .map(|v| {
                if v == 14 {
                    (0, 0xe033, 0xffff_ffff_8100_0e00)
                } else {
                    (0, 0, 0)
                }
            })
            .collect();
        state.traps = TrapTable::from_context(&entries).unwrap();
        SavedVcpu {
            state,
            regs: SavedRegs {
                gprs: core::array::from_fn(|i| i as u64 * 3),
                rip: 0x40_1234,
                rsp: 0x7ffe_0000,
                rflags: 0x246,
                cs: 0x33,
                ss: 0x2b,
                gs: 0x2b,
                ..SavedRegs::default()
            },
            kernel_l4: Some(0x2000),
            user_l4: Some(0x2001),
            ldt_base: 0x7f00_0001_0000,
            ldt_entries: 16,
            fpu: Some(Box::new([0x5a; FPU_SIZE])),
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let saved = sample();
        let basic = saved.encode_basic();
        let extended = saved.encode_extended(1);
        assert_eq!((basic.len(), extended.len()), (CONTEXT_SIZE, EXTENDED_SIZE));
        assert_eq!(
            word(&basic, USER_REGS + REGS_RFLAGS) & 0x3000,
            0x1000,
            "IOPL shown"
        );
        assert_eq!(SavedVcpu::parse(&basic, &extended), Ok(saved));
    }

    #[test]
    fn hostile_records_are_refused() {
        let saved = sample();
        let (basic, extended) = (saved.encode_basic(), saved.encode_extended(0));
        assert_eq!(
            SavedVcpu::parse(&basic[..100], &extended),
            Err(SavedVcpuError::BasicSize(100))
        );
        assert_eq!(
            SavedVcpu::parse(&basic, &extended[..8]),
            Err(SavedVcpuError::ExtendedSize(8))
        );
        let cases: [(usize, u64, SavedVcpuError); 6] = [
            (FLAGS, VGCF_IN_KERNEL, SavedVcpuError::Offline),
            (
                USER_REGS + REGS_RIP,
                1 << 60,
                SavedVcpuError::NonCanonical {
                    what: "rip",
                    value: 1 << 60,
                },
            ),
            (
                GDT_ENTS,
                MAX_GDT_ENTS + 1,
                SavedVcpuError::GdtEntries(MAX_GDT_ENTS + 1),
            ),
            (LDT_ENTS, 8193, SavedVcpuError::LdtEntries(8193)),
            (TRAP_CTXT + 16 * 14 + 8, 1 << 50, SavedVcpuError::TrapTable),
            (CTRLREG + 24, 0, SavedVcpuError::NoKernelTables),
        ];
        for (at, value, error) in cases {
            let mut bad = basic.clone();
            put(&mut bad, at, value);
            assert_eq!(SavedVcpu::parse(&bad, &extended), Err(error));
        }
        let mut bad = extended.clone();
        put(&mut bad, EXT_SYSENTER_EIP, 1 << 62);
        assert!(matches!(
            SavedVcpu::parse(&basic, &bad),
            Err(SavedVcpuError::NonCanonical { .. })
        ));
    }

    #[test]
    fn any_bytes_parse_or_fail_cleanly() {
        let saved = sample();
        let (basic, extended) = (saved.encode_basic(), saved.encode_extended(0));
        // Flip every byte of the basic record in turn: never a panic.
        for at in (0..CONTEXT_SIZE).step_by(7) {
            let mut bad = basic.clone();
            bad[at] ^= 0xa5;
            let _ = SavedVcpu::parse(&bad, &extended);
        }
    }
}
