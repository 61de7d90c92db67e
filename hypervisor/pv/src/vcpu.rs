//! One 64-bit PV vCPU's own state beyond its page tables: its mode
//! (guest kernel or guest user), the callbacks and kernel stack it
//! registered, its segment bases, and its virtual IDT; and what each
//! transition between the modes means.
//!
//! Facts from Xen 4.17: `arch/x86/pv/callback.c` (register/unregister,
//! set_callbacks, stack_switch), `arch/x86/pv/misc-hypercalls.c`
//! (set_segment_base), `arch/x86/x86_64/entry.S` (lstar_enter,
//! switch_to_kernel, test_all_events/process_guest_events,
//! create_bounce_frame), `arch/x86/domain.c` (load_segments' failsafe
//! frame), `arch/x86/pv/iret.c` and `arch/x86/pv/domain.c`
//! (toggle_guest_mode: the L4 and the GS bases change together).
//!
//! Like the rest of this crate nothing here touches a CPU. The executor
//! reads the hypercall's arguments, calls these functions, writes the
//! [`Bounce`] frame on the guest's stack, and loads what the vCPU's mode
//! asks for: the kernel or user L4 and [`PvVcpu::live_gs_base`].

use xen_abi::errno::{EINVAL, ENOSYS};
use xen_abi::pv::{
    CALLBACKF_MASK_EVENTS, CALLBACKTYPE_EVENT, CALLBACKTYPE_FAILSAFE, CALLBACKTYPE_NMI,
    CALLBACKTYPE_SYSCALL, CALLBACKTYPE_SYSCALL32, CALLBACKTYPE_SYSENTER, FLAT_RING3_CS64,
    FLAT_RING3_SS64, SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL,
    VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_SYSCALL_DISABLES_EVENTS,
};

use crate::traps::{
    self, create_bounce_frame, is_canonical, Bounce, Interrupted, IretFrame, IretReturn, TrapError,
    TrapTable,
};

/// `#UD`: what a user-mode `syscall` gets when the kernel registered no
/// syscall callback (Xen's lstar_enter injects it).
pub const VECTOR_UD: u8 = 6;

/// A PV vCPU's registered state and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvVcpu {
    /// The virtual IDT (`set_trap_table`).
    pub traps: TrapTable,
    /// Guest kernel mode (else guest user mode). Both run at CPL3; the
    /// mode decides the L4, the GS base and where bounces push frames.
    pub kernel_mode: bool,
    /// `stack_switch`: the stack bounces from user mode push onto.
    pub kernel_ss: u16,
    pub kernel_sp: u64,
    /// Callback addresses (0: none registered).
    pub event_callback: u64,
    pub failsafe_callback: u64,
    pub syscall_callback: u64,
    pub syscall32_callback: u64,
    pub sysenter_callback: u64,
    pub nmi_callback: u64,
    /// `VGCF_failsafe_disables_events` / `VGCF_syscall_disables_events`.
    pub vgc_flags: u64,
    pub syscall32_disables_events: bool,
    pub sysenter_disables_events: bool,
    /// Segment bases: FS is the same in both modes; GS has one per mode.
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
    /// The user-mode GS selector (`SEGBASE_GS_USER_SEL`).
    pub gs_sel_user: u16,
    /// The guest's GDT (`set_gdt`): its frames and entries.
    pub gdt_frames: Vec<u64>,
    pub gdt_entries: u64,
    /// The LDT's pages the executor holds as descriptor frames (`None`:
    /// a page left out).
    pub ldt_frames: Vec<Option<u64>>,
    /// Virtual IOPL (PHYSDEVOP_set_iopl), 0..=3.
    pub iopl: u8,
    /// Virtual CR0.TS (`fpu_taskswitch`, `clts`, `mov cr0`). kxen keeps
    /// the FPU loaded eagerly: TS is what the guest reads back, and no
    /// #NM follows it (Xen's lazy-FPU #NM is not modelled).
    pub fpu_ts: bool,
    /// Debug registers DR0-DR3, DR6, DR7 as `set_debugreg` left them.
    pub debugreg: [u64; 8],
    /// The CS and SS user mode runs with (from its last `iret`): Xen's
    /// flat ones or the guest GDT's (Linux's 0x33/0x2b).
    pub user_cs: u16,
    pub user_ss: u16,
}

impl Default for PvVcpu {
    fn default() -> Self {
        PvVcpu {
            traps: TrapTable::default(),
            kernel_mode: true,
            kernel_ss: 0,
            kernel_sp: 0,
            event_callback: 0,
            failsafe_callback: 0,
            syscall_callback: 0,
            syscall32_callback: 0,
            sysenter_callback: 0,
            nmi_callback: 0,
            vgc_flags: 0,
            syscall32_disables_events: false,
            sysenter_disables_events: false,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            gs_sel_user: 0,
            gdt_frames: Vec::new(),
            gdt_entries: 0,
            ldt_frames: Vec::new(),
            iopl: 0,
            fpu_ts: false,
            // DR6's and DR7's architectural reset values.
            debugreg: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            user_cs: FLAT_RING3_CS64,
            user_ss: FLAT_RING3_SS64,
        }
    }
}

/// What `set_segment_base` changed that the executor must load now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentLoad {
    /// Nothing live changed (the other mode's GS base).
    None,
    /// Load [`PvVcpu::fs_base`].
    Fs,
    /// Load [`PvVcpu::live_gs_base`] (and the user GS selector when in
    /// user mode).
    Gs,
}

/// How an `iret` ends: resume (perhaps in user mode), or the frame's
/// selectors could not be loaded and the failsafe callback runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IretOutcome {
    Resume(IretReturn),
    /// The bounce to the failsafe callback (already in kernel mode).
    Failsafe(Bounce),
}

impl PvVcpu {
    /// The GS base of the vCPU's current mode.
    pub fn live_gs_base(&self) -> u64 {
        if self.kernel_mode {
            self.gs_base_kernel
        } else {
            self.gs_base_user
        }
    }

    /// `from` as the vCPU's current mode sees it: its mode, and in user
    /// mode the selectors user mode runs with.
    fn in_current_mode(&self, from: &Interrupted) -> Interrupted {
        if self.kernel_mode {
            Interrupted {
                kernel_mode: true,
                ..*from
            }
        } else {
            Interrupted {
                cs: self.user_cs,
                ss: self.user_ss,
                kernel_mode: false,
                ..*from
            }
        }
    }

    /// `PHYSDEVOP_set_iopl`: the virtual IOPL the privileged-instruction
    /// emulation checks port I/O against; above 3 is -EINVAL.
    pub fn set_iopl(&mut self, iopl: u32) -> i64 {
        match u8::try_from(iopl) {
            Ok(iopl) if iopl <= 3 => {
                self.iopl = iopl;
                0
            }
            _ => -EINVAL,
        }
    }

    /// `set_debugreg(reg, value)` (Xen's set_debugreg for a PV vCPU):
    /// DR0-DR3 must be guest addresses (-EPERM in Xen's hypervisor range
    /// or non-canonical); DR6 and DR7 keep their fixed bits; DR4/DR5 and
    /// others are -EINVAL. The values are kept, not loaded into the CPU
    /// (kxen gives PV guests no hardware breakpoints).
    pub fn set_debugreg(&mut self, reg: u64, value: u64) -> i64 {
        const HYPERVISOR_RANGE: std::ops::Range<u64> = 0xffff_8000_0000_0000..0xffff_8800_0000_0000;
        match reg {
            0..=3 => {
                if !is_canonical(value) || HYPERVISOR_RANGE.contains(&value) {
                    return -xen_abi::errno::EPERM;
                }
                self.debugreg[reg as usize] = value;
            }
            // DR6: the reserved-1 bits stay set, the upper half clear.
            6 => self.debugreg[6] = (value & 0xe00f) | 0xffff_0ff0,
            // DR7: bits 32-63 must be clear; bit 10 reads as 1.
            7 if value >> 32 != 0 => return -EINVAL,
            7 => self.debugreg[7] = (value & 0xffff_2bff) | 0x400,
            _ => return -EINVAL,
        }
        0
    }

    /// `get_debugreg(reg)`: the value, or -EINVAL for DR4/DR5 and others.
    pub fn get_debugreg(&self, reg: u64) -> i64 {
        match reg {
            0..=3 | 6 | 7 => self.debugreg[reg as usize] as i64,
            _ => -EINVAL,
        }
    }

    /// `HYPERVISOR_stack_switch(ss, sp)`. Xen stores both unchecked (a
    /// bad stack shows when a bounce cannot write its frame, which
    /// crashes the domain); the selector's RPL is raised to the kernel's.
    pub fn stack_switch(&mut self, ss: u64, sp: u64) -> i64 {
        self.kernel_ss = (ss as u16) | 3;
        self.kernel_sp = sp;
        0
    }

    /// `CALLBACKOP_register`: `type`, `flags`, `address`.
    pub fn register_callback(&mut self, kind: u16, flags: u16, address: u64) -> i64 {
        if !is_canonical(address) {
            return -EINVAL;
        }
        let mask = flags & CALLBACKF_MASK_EVENTS != 0;
        let set_flag = |vgc: &mut u64, bit: u64| {
            if mask {
                *vgc |= bit;
            } else {
                *vgc &= !bit;
            }
        };
        match kind {
            CALLBACKTYPE_EVENT => self.event_callback = address,
            CALLBACKTYPE_FAILSAFE => {
                self.failsafe_callback = address;
                set_flag(&mut self.vgc_flags, VGCF_FAILSAFE_DISABLES_EVENTS);
            }
            CALLBACKTYPE_SYSCALL => {
                self.syscall_callback = address;
                set_flag(&mut self.vgc_flags, VGCF_SYSCALL_DISABLES_EVENTS);
            }
            CALLBACKTYPE_SYSCALL32 => {
                self.syscall32_callback = address;
                self.syscall32_disables_events = mask;
            }
            CALLBACKTYPE_SYSENTER => {
                self.sysenter_callback = address;
                self.sysenter_disables_events = mask;
            }
            CALLBACKTYPE_NMI => self.nmi_callback = address,
            _ => return -ENOSYS,
        }
        0
    }

    /// `CALLBACKOP_unregister`: only the NMI callback can be removed;
    /// the others are -EINVAL, unknown types -ENOSYS (as Xen).
    pub fn unregister_callback(&mut self, kind: u16) -> i64 {
        match kind {
            CALLBACKTYPE_EVENT
            | CALLBACKTYPE_FAILSAFE
            | CALLBACKTYPE_SYSCALL
            | CALLBACKTYPE_SYSCALL32
            | CALLBACKTYPE_SYSENTER => -EINVAL,
            CALLBACKTYPE_NMI => {
                self.nmi_callback = 0;
                0
            }
            _ => -ENOSYS,
        }
    }

    /// `HYPERVISOR_set_callbacks(event, failsafe, syscall)`, the 64-bit
    /// form: three registrations without flags. Xen ignores their
    /// results and returns 0, so a non-canonical address leaves that
    /// callback as it was.
    pub fn set_callbacks(&mut self, event: u64, failsafe: u64, syscall: u64) -> i64 {
        self.register_callback(CALLBACKTYPE_EVENT, 0, event);
        self.register_callback(CALLBACKTYPE_FAILSAFE, 0, failsafe);
        self.register_callback(CALLBACKTYPE_SYSCALL, 0, syscall);
        0
    }

    /// `HYPERVISOR_set_segment_base(which, base)`.
    pub fn set_segment_base(&mut self, which: u64, base: u64) -> Result<SegmentLoad, i64> {
        match which {
            SEGBASE_FS | SEGBASE_GS_USER | SEGBASE_GS_KERNEL if !is_canonical(base) => Err(-EINVAL),
            SEGBASE_FS => {
                self.fs_base = base;
                Ok(SegmentLoad::Fs)
            }
            SEGBASE_GS_USER => {
                self.gs_base_user = base;
                Ok(if self.kernel_mode {
                    SegmentLoad::None
                } else {
                    SegmentLoad::Gs
                })
            }
            SEGBASE_GS_KERNEL => {
                self.gs_base_kernel = base;
                Ok(if self.kernel_mode {
                    SegmentLoad::Gs
                } else {
                    SegmentLoad::None
                })
            }
            SEGBASE_GS_USER_SEL => {
                // Loading a selector loads its descriptor's base: 0 for
                // Xen's flat selectors, the only ones a guest without
                // its own GDT has. Any other selector fails to load,
                // and Xen's fixup loads the null selector instead.
                let selector = base as u16;
                let flat = matches!(selector | 3, FLAT_RING3_SS64 | FLAT_RING3_CS64);
                self.gs_sel_user = if flat { selector | 3 } else { 0 };
                self.gs_base_user = 0;
                Ok(if self.kernel_mode {
                    SegmentLoad::None
                } else {
                    SegmentLoad::Gs
                })
            }
            _ => Err(-EINVAL),
        }
    }

    /// Exception `vector` in the current mode: Xen's bounce through the
    /// virtual IDT. From user mode the vCPU switches to kernel mode.
    pub fn exception(
        &mut self,
        vector: u8,
        error_code: Option<u32>,
        from: &Interrupted,
        upcall_mask: u8,
    ) -> Result<Bounce, TrapError> {
        let from = self.in_current_mode(from);
        let bounce = traps::bounce(
            &self.traps,
            vector,
            error_code,
            &from,
            upcall_mask,
            self.kernel_sp,
        )?;
        self.kernel_mode = true;
        Ok(bounce)
    }

    /// A `syscall` instruction in guest user mode (Xen's lstar_enter and
    /// switch_to_kernel): a bounce to the syscall callback on the kernel
    /// stack, RCX/R11 saved in the frame, events masked if the callback
    /// was registered so; without a callback, #UD is bounced instead.
    /// `from` is the user state: RIP = RCX (the next instruction), RFLAGS
    /// = R11. A `syscall` in kernel mode is a hypercall, not this.
    pub fn user_syscall(
        &mut self,
        from: &Interrupted,
        upcall_mask: u8,
    ) -> Result<Bounce, TrapError> {
        debug_assert!(!self.kernel_mode);
        if self.syscall_callback == 0 {
            let from = Interrupted {
                kernel_mode: false,
                ..*from
            };
            return self.exception(VECTOR_UD, None, &from, upcall_mask);
        }
        let from = self.in_current_mode(from);
        let bounce = create_bounce_frame(
            self.syscall_callback,
            self.vgc_flags & VGCF_SYSCALL_DISABLES_EVENTS != 0,
            &[],
            &from,
            upcall_mask,
            self.kernel_sp,
        );
        self.kernel_mode = true;
        Ok(bounce)
    }

    /// An event upcall (Xen's process_guest_events): the caller found
    /// `evtchn_upcall_pending` set with the upcall mask clear. Always
    /// masks events on entry. Without an event callback Xen crashes the
    /// domain (a null bounce address).
    pub fn event_upcall(
        &mut self,
        from: &Interrupted,
        upcall_mask: u8,
    ) -> Result<Bounce, PvVcpuError> {
        if self.event_callback == 0 {
            return Err(PvVcpuError::NoEventCallback);
        }
        let from = self.in_current_mode(from);
        let bounce = create_bounce_frame(
            self.event_callback,
            true,
            &[],
            &from,
            upcall_mask,
            self.kernel_sp,
        );
        self.kernel_mode = true;
        Ok(bounce)
    }

    /// The `iret` hypercall (Xen's do_iret), plus what the CPU's own
    /// `iretq` would refuse: a CS or SS that is not a selector the guest
    /// can load (Xen's flat 64-bit ones, its only GDT entries here), or a
    /// non-canonical RIP. Xen's return to the guest faults on those and
    /// the guest gets its failsafe callback with the frame it asked for
    /// and its data selectors (null here: 64-bit PV kernels keep them
    /// so); without a failsafe callback the domain crashes. `user_tables`:
    /// whether the vCPU has a user L4.
    pub fn iret(
        &mut self,
        frame: &IretFrame,
        user_tables: bool,
        upcall_mask: u8,
        data_selectors: [u16; 4],
        guest_descriptor: impl Fn(u16) -> Option<u64>,
    ) -> Result<IretOutcome, PvVcpuError> {
        // Only the selectors' 16 bits load: the CS slot's upper half
        // carries the saved upcall mask of a bounce frame handed back.
        let (cs, ss) = (frame.cs as u16 | 3, frame.ss as u16 | 3);
        let selectors_ok = (cs == FLAT_RING3_CS64
            || self.guest_selector_is(cs, &guest_descriptor, DescriptorKind::Code64))
            && (ss == FLAT_RING3_SS64
                || self.guest_selector_is(ss, &guest_descriptor, DescriptorKind::WritableData));
        if !selectors_ok || !is_canonical(frame.rip) {
            if self.failsafe_callback == 0 {
                return Err(PvVcpuError::BadIretNoFailsafe {
                    cs: frame.cs,
                    ss: frame.ss,
                    rip: frame.rip,
                });
            }
            // The failsafe frame describes the state iret was loading,
            // which is kernel mode's stack when the target was kernel
            // mode; a user-mode target bounces onto kernel_sp. Xen has
            // already restored RAX/RCX/R11 from the iret context.
            let from = Interrupted {
                rip: frame.rip,
                cs: frame.cs as u16,
                rflags: frame.rflags,
                rsp: frame.rsp,
                ss: frame.ss as u16,
                rcx: frame.rcx,
                r11: frame.r11,
                kernel_mode: frame.cs & 3 != 3,
            };
            let extra = data_selectors.map(u64::from);
            let bounce = create_bounce_frame(
                self.failsafe_callback,
                self.vgc_flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0,
                &extra,
                &from,
                upcall_mask,
                self.kernel_sp,
            );
            self.kernel_mode = true;
            return Ok(IretOutcome::Failsafe(bounce));
        }
        let ret = traps::iret(frame, user_tables)?;
        if ret.switch_to_user {
            self.kernel_mode = false;
            self.user_cs = ret.cs;
            self.user_ss = ret.ss;
        }
        Ok(IretOutcome::Resume(ret))
    }

    /// Whether `selector` names a descriptor of the guest's GDT (below
    /// Xen's reserved entries, within `gdt_entries`; no LDT selectors
    /// here) that is present, DPL 3 and of `kind`.
    fn guest_selector_is(
        &self,
        selector: u16,
        descriptor: &impl Fn(u16) -> Option<u64>,
        kind: DescriptorKind,
    ) -> bool {
        if selector & 4 != 0 || u64::from(selector >> 3) >= self.gdt_entries {
            return false;
        }
        let Some(desc) = descriptor(selector) else {
            return false;
        };
        let present = desc & (1 << 47) != 0;
        let user = (desc >> 45) & 3 == 3 && desc & (1 << 44) != 0;
        let ty = (desc >> 40) & 0xf;
        let fits = match kind {
            // Code (type bit 3) with L set and D clear: 64-bit code.
            DescriptorKind::Code64 => ty & 8 != 0 && desc & (1 << 53) != 0 && desc & (1 << 54) == 0,
            // Data (bit 3 clear), writable (bit 1).
            DescriptorKind::WritableData => ty & 8 == 0 && ty & 2 != 0,
        };
        present && user && fits
    }
}

/// What an `iret` selector must name.
#[derive(Debug, Clone, Copy)]
enum DescriptorKind {
    Code64,
    WritableData,
}

/// Why a PV vCPU transition cannot complete: the domain crashes, as on
/// Xen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvVcpuError {
    #[error("an event upcall is due and no event callback is registered")]
    NoEventCallback,
    #[error(
        "iret to cs {cs:#x} ss {ss:#x} rip {rip:#x} cannot be loaded and no failsafe \
         callback is registered"
    )]
    BadIretNoFailsafe { cs: u64, ss: u64, rip: u64 },
    #[error(transparent)]
    Trap(#[from] TrapError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::errno::EINVAL;

    fn user_state() -> Interrupted {
        Interrupted {
            rip: 0x40_1000,
            cs: FLAT_RING3_CS64,
            rflags: 0x246,
            rsp: 0x7fff_f000,
            ss: FLAT_RING3_SS64,
            rcx: 0x40_1000,
            r11: 0x246,
            kernel_mode: false,
        }
    }

    #[test]
    fn callbacks_register_with_flags_and_refuse_bad_input() {
        let mut v = PvVcpu::default();
        assert_eq!(
            v.register_callback(CALLBACKTYPE_SYSCALL, 1, 0xffff_ffff_8000_0100),
            0
        );
        assert_eq!(v.syscall_callback, 0xffff_ffff_8000_0100);
        assert_ne!(v.vgc_flags & VGCF_SYSCALL_DISABLES_EVENTS, 0);
        assert_eq!(
            v.register_callback(CALLBACKTYPE_SYSCALL, 0, 0xffff_ffff_8000_0100),
            0
        );
        assert_eq!(v.vgc_flags & VGCF_SYSCALL_DISABLES_EVENTS, 0);
        assert_eq!(v.register_callback(CALLBACKTYPE_EVENT, 0, 1 << 50), -EINVAL);
        assert_eq!(v.event_callback, 0);
        assert_eq!(v.register_callback(99, 0, 0x1000), -ENOSYS);
        assert_eq!(v.unregister_callback(CALLBACKTYPE_EVENT), -EINVAL);
        assert_eq!(v.register_callback(CALLBACKTYPE_NMI, 0, 0x2000), 0);
        assert_eq!(v.unregister_callback(CALLBACKTYPE_NMI), 0);
        assert_eq!(v.nmi_callback, 0);
        assert_eq!(v.unregister_callback(99), -ENOSYS);
        assert_eq!(v.set_callbacks(0x10, 1 << 60, 0x30), 0);
        assert_eq!((v.event_callback, v.failsafe_callback), (0x10, 0));
    }

    #[test]
    fn segment_bases_follow_the_mode() {
        let mut v = PvVcpu::default();
        assert_eq!(
            v.set_segment_base(SEGBASE_GS_KERNEL, 0x1000),
            Ok(SegmentLoad::Gs)
        );
        assert_eq!(
            v.set_segment_base(SEGBASE_GS_USER, 0x2000),
            Ok(SegmentLoad::None)
        );
        assert_eq!(v.live_gs_base(), 0x1000);
        v.kernel_mode = false;
        assert_eq!(v.live_gs_base(), 0x2000);
        assert_eq!(v.set_segment_base(SEGBASE_FS, 1 << 55), Err(-EINVAL));
        assert_eq!(v.set_segment_base(9, 0), Err(-EINVAL));
        assert_eq!(
            v.set_segment_base(SEGBASE_GS_USER_SEL, 0x1234),
            Ok(SegmentLoad::Gs)
        );
        assert_eq!((v.gs_sel_user, v.gs_base_user), (0, 0));
    }

    #[test]
    fn user_syscall_bounces_to_the_kernel_stack() {
        let mut v = PvVcpu {
            kernel_mode: false,
            kernel_sp: 0xffff_ffff_8010_0008,
            syscall_callback: 0xffff_ffff_8000_0200,
            ..Default::default()
        };
        let b = v.user_syscall(&user_state(), 0).unwrap();
        assert!(v.kernel_mode && b.switch_to_kernel);
        assert_eq!(b.rip, 0xffff_ffff_8000_0200);
        // Aligned down to 16, seven words: RCX R11 RIP CS RFLAGS RSP SS.
        assert_eq!(b.frame_va, 0xffff_ffff_8010_0000 - 7 * 8);
        assert_eq!(b.frame[0], 0x40_1000);
        assert_eq!(
            b.frame[3],
            u64::from(FLAT_RING3_CS64),
            "user context: RPL 3"
        );
        assert_eq!(b.upcall_mask, 0, "callback registered without masking");
    }

    #[test]
    fn user_syscall_without_callback_is_ud() {
        let mut v = PvVcpu {
            kernel_mode: false,
            ..Default::default()
        };
        assert_eq!(
            v.user_syscall(&user_state(), 0),
            Err(TrapError::NoHandler { vector: VECTOR_UD })
        );
    }

    #[test]
    fn event_upcall_masks_and_needs_a_callback() {
        let mut v = PvVcpu::default();
        let from = Interrupted {
            kernel_mode: true,
            ..user_state()
        };
        assert_eq!(v.event_upcall(&from, 0), Err(PvVcpuError::NoEventCallback));
        v.event_callback = 0xffff_ffff_8000_0300;
        let b = v.event_upcall(&from, 0).unwrap();
        assert_eq!((b.rip, b.upcall_mask), (0xffff_ffff_8000_0300, 1));
        assert!(!b.switch_to_kernel);
    }

    fn iret_frame(cs: u64, ss: u64) -> IretFrame {
        IretFrame {
            rax: 1,
            r11: 2,
            rcx: 3,
            flags: 0,
            rip: 0x40_2000,
            cs,
            rflags: 0x202,
            rsp: 0x7fff_e000,
            ss,
        }
    }

    #[test]
    fn iret_to_user_switches_mode() {
        let mut v = PvVcpu::default();
        let frame = iret_frame(0xe033, 0xe02b);
        match v.iret(&frame, true, 1, [0; 4], |_| None).unwrap() {
            IretOutcome::Resume(r) => assert!(r.switch_to_user),
            other => panic!("{other:?}"),
        }
        assert!(!v.kernel_mode);
    }

    #[test]
    fn iret_with_bad_selector_takes_the_failsafe_callback() {
        let mut v = PvVcpu {
            kernel_sp: 0x9000,
            ..Default::default()
        };
        let frame = iret_frame(0x1233, 0xe02b);
        assert!(matches!(
            v.iret(&frame, true, 0, [0; 4], |_| None),
            Err(PvVcpuError::BadIretNoFailsafe { .. })
        ));
        assert_eq!(
            v.register_callback(CALLBACKTYPE_FAILSAFE, CALLBACKF_MASK_EVENTS, 0x5000),
            0
        );
        let IretOutcome::Failsafe(b) = v.iret(&frame, true, 0, [0; 4], |_| None).unwrap() else {
            panic!("expected the failsafe callback");
        };
        // RCX R11 DS ES FS GS RIP CS RFLAGS RSP SS, below kernel_sp.
        assert_eq!(b.frame.len(), 11);
        assert_eq!(b.frame_va, 0x9000 - 11 * 8);
        assert_eq!(b.frame[6], 0x40_2000);
        assert_eq!(b.frame[7] & 0xffff, 0x1233);
        assert_eq!((b.rip, b.upcall_mask), (0x5000, 1));
        assert!(v.kernel_mode);
        // A non-canonical RIP is refused the same way.
        let mut frame = iret_frame(0xe033, 0xe02b);
        frame.rip = 1 << 60;
        assert!(matches!(
            v.iret(&frame, true, 0, [0; 4], |_| None),
            Ok(IretOutcome::Failsafe(_))
        ));
    }

    #[test]
    fn iret_accepts_the_guest_gdt_user_selectors() {
        let mut v = PvVcpu {
            gdt_entries: 16,
            ..Default::default()
        };
        // Linux's __USER_CS (0x33, 64-bit code DPL3) and __USER_DS (0x2b).
        let gdt = |sel: u16| match sel >> 3 {
            6 => Some(0x00af_fb00_0000_ffff),
            5 => Some(0x00cf_f300_0000_ffff),
            4 => Some(0x00cf_fb00_0000_ffff), // 32-bit code: not for 64-bit iret
            _ => None,
        };
        let frame = iret_frame(0x33, 0x2b);
        let IretOutcome::Resume(r) = v.iret(&frame, true, 1, [0; 4], gdt).unwrap() else {
            panic!("refused Linux's user selectors");
        };
        assert_eq!((r.cs, r.ss, v.user_cs, v.user_ss), (0x33, 0x2b, 0x33, 0x2b));
        // A user-mode bounce records them.
        v.syscall_callback = 0x1000;
        let b = v.user_syscall(&user_state(), 0).unwrap();
        assert_eq!(b.frame[3] & 0xffff, 0x33);
        // The 32-bit code selector, or one past gdt_entries: failsafe.
        v.failsafe_callback = 0x2000;
        assert!(matches!(
            v.iret(&iret_frame(0x23, 0x2b), true, 1, [0; 4], gdt),
            Ok(IretOutcome::Failsafe(_))
        ));
        v.gdt_entries = 6;
        assert!(matches!(
            v.iret(&iret_frame(0x33, 0x2b), true, 1, [0; 4], gdt),
            Ok(IretOutcome::Failsafe(_))
        ));
    }

    #[test]
    fn exception_from_user_mode_switches_to_kernel() {
        let mut v = PvVcpu {
            kernel_mode: false,
            kernel_sp: 0x8000,
            ..Default::default()
        };
        let table_addr = 0x1000u64;
        let words = [14u64 | (0xe033 << 16), 0x7000, 0, 0];
        v.traps
            .set_trap_table(table_addr, |va| {
                words.get(((va - table_addr) / 8) as usize).copied()
            })
            .unwrap();
        let b = v.exception(14, Some(6), &user_state(), 0).unwrap();
        assert!(b.switch_to_kernel && v.kernel_mode);
        assert_eq!(b.frame_va, 0x8000 - 8 * 8);
        assert_eq!(b.frame[2], 6, "error code");
    }
}
