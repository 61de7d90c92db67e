//! A classic PV vCPU's exits: hypercalls (from the hypercall page, or a
//! `syscall` in kernel mode), exceptions and event interrupts reaching
//! the hypervisor's CPL0 stubs, a user-mode `syscall`, and `iret`. Each
//! is one exit to kxen-vmm (the cheapest way on PVM hosts: kxen-pv's
//! README has the measurements); kxen-pv says what it means, and this
//! module writes the bounce frame into guest memory and loads the state
//! the guest resumes in: RIP/RSP/RFLAGS through the synced registers,
//! and, only when they change, CS/SS, CR3 and the segment bases in one
//! KVM_SET_SREGS.
//!
//! Before any PV vCPU resumes, a pending event with the upcall mask
//! clear is delivered to its event callback (Xen's test_all_events on
//! every return to the guest).

use std::sync::Arc;

use tracing::{debug, error, trace, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::errno::{EFAULT, EINVAL};
use xen_abi::pv::hypercall as pv_nr;

use kxen_pv::emulate::MAX_INSN_LEN;
use kxen_pv::{Bounce, Effects, Interrupted, IretFrame, IretOutcome, SegmentLoad};
use kxen_xen::hypercall::Call;

use super::Vcpu;
use crate::perf::ExitKind;
use crate::pv::{self, PvMachine, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64};

const RFLAGS_IF: u64 = 1 << 9;
/// The RFLAGS bits a guest may hand back through R11 on a `syscall`
/// return (Xen's X86_EFLAGS_ALL less IOPL and VM), as `iret` keeps.
const RFLAGS_GUEST: u64 = 0x003f_7fd5 & !(3 << 12) & !(1 << 17);
/// Page-fault error code of a user-mode write to a present page.
const PF_USER_WRITE_PRESENT: u32 = 0x7;
const VECTOR_PF: u8 = 14;
/// Bytes of one `struct multicall_entry`: op, result, args[6].
const MULTICALL_ENTRY_SIZE: u64 = 64;
/// Xen bounds a multicall batch by preempting it; kxen has no
/// continuations, so a batch longer than this is refused.
const MULTICALL_MAX_ENTRIES: u64 = 4096;

/// What must be loaded before the guest resumes, beyond the registers.
#[derive(Debug, Default, Clone, Copy)]
struct PvLoad {
    /// The vCPU left CPL3 for a CPL0 stub: CS/SS back to Xen's ring-3
    /// kernel selectors.
    code_and_stack: bool,
    /// The vCPU changed between kernel and user mode: that mode's L4 and
    /// GS base.
    mode: bool,
    /// `set_segment_base` changed a live base.
    segments: Option<SegmentLoad>,
    /// CS/SS to load other than Xen's flat kernel ones (an `iret` to user
    /// mode on the guest GDT's selectors).
    selectors: Option<(u16, u16)>,
}

/// The general registers in the hardware encoding order (RAX..R15), as
/// kxen-pv's instruction emulations index them; RSP is the caller's
/// (the interrupted one).
pub(super) fn gprs_in_encoding_order(r: &kvm_bindings::kvm_regs, rsp: u64) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// Register `index` (hardware encoding order) of `r`, to set.
pub(super) fn gpr_in_encoding_order(
    r: &mut kvm_bindings::kvm_regs,
    index: usize,
) -> Option<&mut u64> {
    Some(match index {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        15 => &mut r.r15,
        _ => return None,
    })
}

impl Vcpu {
    /// Up to 15 bytes at `rip` as the PV kernel at CPL3 fetches them;
    /// fewer where the next page faults, none if the first does.
    pub(super) fn pv_fetch_instruction(&self, rip: u64) -> Vec<u8> {
        let mut paging = self.kvm.paging_regs();
        paging.cpl = 3;
        self.kvm.with_guest(&self.rt.memory, paging, |g| {
            let mut bytes = [0u8; MAX_INSN_LEN];
            let in_first_page = ((0x1000 - (rip & 0xfff)) as usize).min(MAX_INSN_LEN);
            if g.fetch(rip, &mut bytes[..in_first_page]).is_err() {
                return Vec::new();
            }
            let second = rip.wrapping_add(in_first_page as u64);
            let len = if g.fetch(second, &mut bytes[in_first_page..]).is_ok() {
                MAX_INSN_LEN
            } else {
                in_first_page
            };
            bytes[..len].to_vec()
        })
    }

    fn pv_machine(&self) -> Result<Arc<PvMachine>, String> {
        self.rt
            .pv
            .clone()
            .ok_or_else(|| format!("vCPU {}: PV exit in a non-PV domain", self.id))
    }

    fn pv_kernel_mode(&self, pv: &PvMachine) -> bool {
        pv.with_vcpu(self.id, |v| v.kernel_mode).unwrap_or(true)
    }

    /// A hypercall from the PV kernel through the hypercall page. From
    /// user mode the store to the transport page is a page fault the
    /// kernel gets (a user process has no hypercalls; on Xen that page
    /// is not even mapped for it).
    pub(super) fn pv_hypercall(&mut self, pv: &PvMachine) -> Result<(), String> {
        if !self.pv_kernel_mode(pv) {
            return self.pv_user_touched_transport(pv);
        }
        let regs = self.kvm.regs();
        let call = Call::native(
            regs.rax & 0xffff_ffff,
            [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
        );
        let ret = self.pv_serve_call(pv, call);
        self.kvm.regs_mut().rax = ret as u64;
        self.pv_deliver_events(pv)
    }

    /// Serve one PV hypercall (not `iret`): the vCPU's own state and the
    /// PV MMU here, `multicall` entry by entry, everything else in
    /// kxen-xen's dispatch; the 64-bit ABI always. Effects are applied
    /// before this returns.
    fn pv_serve_call(&mut self, pv: &PvMachine, call: Call) -> i64 {
        if call.nr == pv_nr::MULTICALL {
            let started = std::time::Instant::now();
            let ret = self.pv_multicall(pv, call.args[0], call.args[1]);
            self.count_hypercall(call.nr, started.elapsed());
            return ret;
        }
        let (ret, effects) = self.pv_dispatch(pv, call);
        self.apply_pv_effects(pv, &effects);
        ret
    }

    /// One call's result and effects, without applying them.
    fn pv_dispatch(&mut self, pv: &PvMachine, call: Call) -> (i64, Effects) {
        let started = std::time::Instant::now();
        let served = self.pv_dispatch_untimed(pv, call);
        self.count_hypercall(call.nr, started.elapsed());
        served
    }

    fn pv_dispatch_untimed(&mut self, pv: &PvMachine, call: Call) -> (i64, Effects) {
        let mut paging = self.kvm.paging_regs();
        // Guest accesses are the kernel's, at CPL3, even when the exit
        // came from a CPL0 stub (a `syscall` hypercall).
        paging.cpl = 3;
        let served = self.kvm.with_guest(&self.rt.memory, paging, |g| {
            pv.hypercall(self.id, g.mem, g, &call)
        });
        match served {
            Some((ret, effects)) => {
                // VCPUOP_initialise, served by the PV machine, also makes
                // the vCPU one VCPUOP_up may start.
                if ret == 0
                    && call.nr == xen_abi::hypercall::VCPU_OP
                    && call.args[0] == xen_abi::vcpu::VCPUOP_INITIALISE
                {
                    self.rt.domain.mark_initialised(call.args[1] as u32);
                }
                (ret, effects)
            }
            None => {
                let ret = self.kvm.with_mmu(&self.rt.memory, paging, |mmu| {
                    self.rt.domain.hypercall(self.id, mmu, call)
                });
                (ret, Effects::default())
            }
        }
    }

    /// `multicall(calls, nr_calls)`: each entry {op, result, args[6]}
    /// served in order, its result written back. An unreadable entry
    /// or unwritable result ends the batch with -EFAULT (Xen's). Nested
    /// multicalls and `iret` are refused per entry with -EINVAL. The
    /// PV MMU's flushes are merged and applied once at the end (the
    /// guest does not run in between, and kxen-vmm's own page walks
    /// read the tables, not a TLB); a new base pointer is loaded at
    /// once, since later entries' arguments are read through it.
    fn pv_multicall(&mut self, pv: &PvMachine, calls: u64, count: u64) -> i64 {
        if count > MULTICALL_MAX_ENTRIES {
            return -EINVAL;
        }
        let mut flush = Effects::default();
        let mut ret = 0;
        for index in 0..count {
            let entry_va = calls.wrapping_add(index * MULTICALL_ENTRY_SIZE);
            let mut bytes = [0u8; MULTICALL_ENTRY_SIZE as usize];
            let mut paging = self.kvm.paging_regs();
            paging.cpl = 3;
            if self
                .kvm
                .with_guest(&self.rt.memory, paging, |g| g.read(entry_va, &mut bytes))
                .is_err()
            {
                ret = -EFAULT;
                break;
            }
            let word = |i: usize| {
                u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default())
            };
            let op = word(0);
            let result = if op == pv_nr::MULTICALL || op == pv_nr::IRET {
                -EINVAL
            } else {
                let call = Call::native(op, [word(2), word(3), word(4), word(5), word(6)]);
                let (result, effects) = self.pv_dispatch(pv, call);
                if effects.base_changed
                    || effects.segment_load.is_some()
                    || effects.gdt_changed
                    || effects.ldt_changed
                {
                    self.apply_pv_effects(pv, &effects);
                } else if let Some(f) = effects.flush {
                    flush.add_flush(f.vcpus, f.scope);
                }
                result
            };
            let mut paging = self.kvm.paging_regs();
            paging.cpl = 3;
            if self
                .kvm
                .with_guest(&self.rt.memory, paging, |g| {
                    g.write(entry_va + 8, &(result as u64).to_le_bytes())
                })
                .is_err()
            {
                ret = -EFAULT;
                break;
            }
        }
        self.apply_pv_effects(pv, &flush);
        ret
    }

    /// A user process wrote to the hypercall transport page: the kernel
    /// gets the page fault it would get for any hypervisor address.
    fn pv_user_touched_transport(&mut self, pv: &PvMachine) -> Result<(), String> {
        let regs = self.kvm.regs();
        let mem = self.rt.memory.snapshot();
        pv.set_cr2(&mem, self.id, pv::PV_HYPERCALL_VA);
        let from = Self::pv_interrupted(regs.rip, regs.rflags, regs.rsp, &regs);
        let switched =
            self.pv_bounce_exception(pv, &mem, VECTOR_PF, Some(PF_USER_WRITE_PRESENT), &from)?;
        self.pv_enter_bounce_state(pv, false, switched)
    }

    /// The state an exception or event interrupted, as Xen shows it.
    fn pv_interrupted(
        rip: u64,
        rflags: u64,
        rsp: u64,
        regs: &kvm_bindings::kvm_regs,
    ) -> Interrupted {
        Interrupted {
            rip,
            // Xen's flat selectors (PVM pushes its own, 0x33/0x2b, for
            // the same segments); kernel and user 64-bit ones are equal.
            cs: FLAT_KERNEL_CS64,
            rflags,
            rsp,
            ss: FLAT_KERNEL_SS64,
            rcx: regs.rcx,
            r11: regs.r11,
            kernel_mode: true,
        }
    }

    /// An exception or the event interrupt reached its CPL0 exit stub.
    /// An exception is bounced to the handler the kernel registered
    /// (Xen's create_bounce_frame, in kxen-pv), from either mode; the
    /// event vector (kxen-vmm's own, acknowledged by its stub) resumes
    /// the interrupted code with the event delivered if it is due. An
    /// unhandled vector, or a frame that cannot be written, crashes the
    /// domain as on Xen. `Err` is the crash message.
    pub(super) fn pv_trap(&mut self, vector: u8) -> Result<(), String> {
        let pv = self.pv_machine()?;
        // A privileged instruction Xen would emulate is not bounced.
        if self.pv_emulate(vector)? {
            self.pv_trap_kind = Some(ExitKind::PvEmulated);
            return self.pv_deliver_events(&pv);
        }
        let (regs, sregs) = (self.kvm.regs(), self.kvm.sregs());
        let mem = self.rt.memory.snapshot();
        let hw = pv::read_hardware_frame(&mem, self.id, vector, regs.rsp)
            .filter(|hw| hw.cs & 3 == 3)
            .ok_or_else(|| {
                format!(
                    "PV vCPU {}: exception {vector} taken in the hypervisor's stub \
                     (rip {:#x}, rsp {:#x}): not from the PV guest",
                    self.id, regs.rip, regs.rsp
                )
            })?;
        if vector == pv::PV_EVENT_VECTOR {
            self.pv_trap_kind = Some(ExitKind::PvEvent);
            let r = self.kvm.regs_mut();
            r.rip = hw.rip;
            r.rsp = hw.rsp;
            r.rflags = hw.rflags | RFLAGS_IF;
            self.pv_load(
                &pv,
                PvLoad {
                    code_and_stack: true,
                    ..Default::default()
                },
            )?;
            trace!(vcpu = self.id, rip = hw.rip, "PV event interrupt");
            return self.pv_deliver_events(&pv);
        }
        if vector == VECTOR_PF {
            // A write to one of its own L1 tables: emulated, not bounced.
            if self.pv_ptwr(&pv, &mem, &hw, sregs.cr2)? {
                self.pv_trap_kind = Some(ExitKind::PvPtwr);
                self.pv_load(
                    &pv,
                    PvLoad {
                        code_and_stack: true,
                        ..Default::default()
                    },
                )?;
                return self.pv_deliver_events(&pv);
            }
            pv.set_cr2(&mem, self.id, sregs.cr2);
        }
        let from = Self::pv_interrupted(hw.rip, hw.rflags, hw.rsp, &regs);
        let switched = self.pv_bounce_exception(&pv, &mem, vector, hw.error_code, &from)?;
        trace!(vcpu = self.id, vector, rip = hw.rip, "PV exception bounced");
        self.pv_enter_bounce_state(&pv, true, switched)
    }

    /// Bounce exception `vector` through the vCPU's virtual IDT; `true` if
    /// that took the vCPU from user to kernel mode (its L4 and GS base are
    /// the caller's to load).
    fn pv_bounce_exception(
        &mut self,
        pv: &PvMachine,
        mem: &GuestMemoryMmap,
        vector: u8,
        error_code: Option<u32>,
        from: &Interrupted,
    ) -> Result<bool, String> {
        let mask = pv.upcall_mask(mem, self.id);
        let outcome = pv
            .with_vcpu(self.id, |v| v.exception(vector, error_code, from, mask))
            .ok_or_else(|| format!("PV vCPU {} has no PV state", self.id))?;
        let bounce = match outcome {
            Ok(bounce) => bounce,
            Err(e) => {
                // As Xen prints the guest's state on a crash: the top of
                // the interrupted stack holds the way back to the cause.
                let stack = self.pv_stack_words(from.rsp, 24);
                return Err(format!(
                    "PV vCPU {}: exception {vector} at rip {:#x} (error code {error_code:?}): \
                     {e}; the domain crashes, as on Xen (stack at {:#x}: {stack})",
                    self.id, from.rip, from.rsp
                ));
            }
        };
        self.pv_write_bounce(pv, mem, &bounce)?;
        Ok(bounce.switch_to_kernel)
    }

    /// Up to `count` words of the guest stack at `rsp`, read through the
    /// kernel's page tables, for a crash report.
    fn pv_stack_words(&self, rsp: u64, count: usize) -> String {
        let mut paging = self.kvm.paging_regs();
        paging.cpl = 3;
        let mut words = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let mut word = [0u8; 8];
            let va = rsp.wrapping_add(8 * i);
            if self
                .kvm
                .with_guest(&self.rt.memory, paging, |g| g.read(va, &mut word))
                .is_err()
            {
                break;
            }
            words.push(format!("{:#x}", u64::from_le_bytes(word)));
        }
        if words.is_empty() {
            "unreadable".into()
        } else {
            words.join(" ")
        }
    }

    /// Write `bounce`'s frame on the kernel stack through the kernel's
    /// page tables at CPL3 (a bounce always enters kernel mode; from
    /// user mode the frame goes on the stack_switch stack, which only the
    /// kernel L4 maps), set the upcall mask and the registers it names.
    /// The caller then loads CS/SS, CR3 and GS as [`Self::pv_load`] says.
    fn pv_write_bounce(
        &mut self,
        pv: &PvMachine,
        mem: &GuestMemoryMmap,
        bounce: &Bounce,
    ) -> Result<(), String> {
        let kernel_cr3 = pv
            .kernel_cr3(self.id)
            .ok_or_else(|| format!("PV vCPU {} has no kernel L4", self.id))?;
        let mut paging = self.kvm.paging_regs();
        paging.cpl = 3;
        paging.cr3 = kernel_cr3;
        let frame = bounce.frame_bytes();
        self.kvm
            .with_guest(&self.rt.memory, paging, |g| {
                g.write(bounce.frame_va, &frame)
            })
            .map_err(|_| {
                format!(
                    "PV vCPU {}: the bounce frame at {:#x} cannot be written (the kernel \
                     stack is not mapped writable); the domain crashes, as on Xen",
                    self.id, bounce.frame_va
                )
            })?;
        pv.set_upcall_mask(mem, self.id, bounce.upcall_mask);
        let r = self.kvm.regs_mut();
        r.rip = bounce.rip;
        r.rsp = bounce.rsp;
        r.rflags = bounce.rflags | RFLAGS_IF;
        Ok(())
    }

    /// After [`Self::pv_write_bounce`]: load what the bounce changed;
    /// `mode` when it switched the vCPU into kernel mode.
    fn pv_enter_bounce_state(
        &mut self,
        pv: &PvMachine,
        code_and_stack: bool,
        mode: bool,
    ) -> Result<(), String> {
        self.pv_load(
            pv,
            PvLoad {
                // Back from user mode: the kernel's CS/SS as well.
                code_and_stack: code_and_stack || mode,
                mode,
                ..Default::default()
            },
        )?;
        self.pv_deliver_events(pv)
    }

    /// Load CS/SS, the mode's L4 and GS base, and changed segment bases,
    /// in one KVM_SET_SREGS, only if something changed.
    fn pv_load(&mut self, pv: &PvMachine, load: PvLoad) -> Result<(), String> {
        if !load.code_and_stack && !load.mode && load.segments.is_none() && load.selectors.is_none()
        {
            return Ok(());
        }
        let (kernel_mode, gs_base, fs_base) = pv
            .with_vcpu(self.id, |v| (v.kernel_mode, v.live_gs_base(), v.fs_base))
            .ok_or_else(|| format!("PV vCPU {} has no PV state", self.id))?;
        let cr3 = if load.mode {
            Some(pv.mode_cr3(self.id, kernel_mode).ok_or_else(|| {
                format!(
                    "PV vCPU {}: no {} L4 to switch to",
                    self.id,
                    if kernel_mode { "kernel" } else { "user" }
                )
            })?)
        } else {
            None
        };
        let (cs, ss) = match load.selectors {
            Some((cs, ss)) => (
                pv::pv_segment(cs, 0xb, true),
                pv::pv_segment(ss, 0x3, false),
            ),
            None => pv::pv_kernel_segments(),
        };
        let ok = self.kvm.update_sregs(|s| {
            if load.code_and_stack || load.selectors.is_some() {
                s.cs = cs;
                s.ss = ss;
            }
            if let Some(cr3) = cr3 {
                s.cr3 = cr3;
            }
            if load.mode || load.segments == Some(SegmentLoad::Gs) {
                s.gs.base = gs_base;
            }
            if load.segments == Some(SegmentLoad::Fs) {
                s.fs.base = fs_base;
            }
        });
        if ok {
            Ok(())
        } else {
            Err(format!("PV vCPU {}: KVM_SET_SREGS failed", self.id))
        }
    }

    /// Deliver a due event: `evtchn_upcall_pending` set and the upcall
    /// mask clear, on the way back to the guest (Xen's test_all_events).
    fn pv_deliver_events(&mut self, pv: &PvMachine) -> Result<(), String> {
        let mem = self.rt.memory.snapshot();
        if !pv.event_due(&mem, self.id) {
            return Ok(());
        }
        let regs = self.kvm.regs();
        let from = Self::pv_interrupted(regs.rip, regs.rflags, regs.rsp, &regs);
        let bounce = pv
            .with_vcpu(self.id, |v| v.event_upcall(&from, 0))
            .ok_or_else(|| format!("PV vCPU {} has no PV state", self.id))?
            .map_err(|e| format!("PV vCPU {}: {e}; the domain crashes, as on Xen", self.id))?;
        self.pv_write_bounce(pv, &mem, &bounce)?;
        trace!(vcpu = self.id, rip = regs.rip, "PV event upcall");
        let mode = bounce.switch_to_kernel;
        self.pv_load(
            pv,
            PvLoad {
                code_and_stack: mode,
                mode,
                ..Default::default()
            },
        )
    }

    /// A `syscall` reached the hypervisor's entry stub (CPL0; RCX holds
    /// the return RIP, R11 the RFLAGS, RSP is the caller's). In kernel
    /// mode it is a hypercall, as on Xen (kernels without a hypercall
    /// page make them so), returning to RCX; `iret` among them reads its
    /// frame at RSP. In user mode it is bounced to the kernel's syscall
    /// callback.
    pub(super) fn pv_syscall(&mut self) -> Result<(), String> {
        let pv = self.pv_machine()?;
        let regs = self.kvm.regs();
        if !self.pv_kernel_mode(&pv) {
            let mem = self.rt.memory.snapshot();
            let from = Interrupted {
                kernel_mode: false,
                ..Self::pv_interrupted(regs.rcx, regs.r11, regs.rsp, &regs)
            };
            let mask = pv.upcall_mask(&mem, self.id);
            let bounce = pv
                .with_vcpu(self.id, |v| v.user_syscall(&from, mask))
                .ok_or_else(|| format!("PV vCPU {} has no PV state", self.id))?
                .map_err(|e| {
                    format!(
                        "PV vCPU {}: syscall from user mode at {:#x}: {e}; the domain \
                         crashes, as on Xen",
                        self.id, regs.rcx
                    )
                })?;
            self.pv_write_bounce(&pv, &mem, &bounce)?;
            return self.pv_enter_bounce_state(&pv, true, bounce.switch_to_kernel);
        }
        if regs.rax & 0xffff_ffff == pv_nr::IRET {
            return self.pv_iret_from(&pv, true);
        }
        let call = Call::native(
            regs.rax & 0xffff_ffff,
            [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
        );
        let ret = self.pv_serve_call(&pv, call);
        let r = self.kvm.regs_mut();
        r.rax = ret as u64;
        r.rip = regs.rcx;
        r.rflags = (regs.r11 & RFLAGS_GUEST) | RFLAGS_IF | 0x2;
        self.pv_load(
            &pv,
            PvLoad {
                code_and_stack: true,
                ..Default::default()
            },
        )?;
        self.pv_deliver_events(&pv)
    }

    /// The PV `iret` hypercall from the hypercall page.
    pub(super) fn pv_iret(&mut self) -> Result<(), String> {
        let pv = self.pv_machine()?;
        if !self.pv_kernel_mode(&pv) {
            return self.pv_user_touched_transport(&pv);
        }
        self.pv_iret_from(&pv, false)
    }

    /// `iret`: the iret context at RSP (pushed by the guest and the
    /// stub), applied as Xen's do_iret, perhaps to user mode (its L4 and
    /// GS base); a frame whose selectors or RIP the CPU would refuse
    /// gets the failsafe callback. A frame that cannot be read crashes
    /// the domain, as on Xen. `from_stub`: the exit came from the CPL0
    /// syscall stub, so CS/SS must be reloaded.
    fn pv_iret_from(&mut self, pv: &PvMachine, from_stub: bool) -> Result<(), String> {
        let regs = self.kvm.regs();
        let mut paging = self.kvm.paging_regs();
        paging.cpl = 3;
        let mut bytes = [0u8; 8 * IretFrame::WORDS];
        self.kvm
            .with_guest(&self.rt.memory, paging, |g| g.read(regs.rsp, &mut bytes))
            .map_err(|_| {
                format!(
                    "PV vCPU {}: iret frame at {:#x} cannot be read; the domain crashes, as on Xen",
                    self.id, regs.rsp
                )
            })?;
        let mut words = [0u64; IretFrame::WORDS];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        let frame = IretFrame::from_words(words);
        let mem = self.rt.memory.snapshot();
        let user_tables = pv.has_user_tables(self.id);
        let mask = pv.upcall_mask(&mem, self.id);
        // The guest GDT's descriptors, for an iret to its own selectors.
        let gdt_frames = pv
            .with_vcpu(self.id, |v| v.gdt_frames.clone())
            .unwrap_or_default();
        let descriptor = |selector: u16| {
            let index = u64::from(selector >> 3);
            let frame = gdt_frames.get((index / 512) as usize)?;
            mem.read_obj::<u64>(GuestAddress((frame << 12) + (index % 512) * 8))
                .ok()
        };
        let outcome = pv
            .with_vcpu(self.id, |v| {
                v.iret(&frame, user_tables, mask, [0; 4], descriptor)
            })
            .ok_or_else(|| format!("PV vCPU {} has no PV state", self.id))?
            .map_err(|e| format!("PV vCPU {}: iret: {e}; the domain crashes", self.id))?;
        match outcome {
            IretOutcome::Resume(ret) => {
                pv.set_upcall_mask(&mem, self.id, ret.upcall_mask);
                let r = self.kvm.regs_mut();
                r.rax = ret.rax;
                r.rip = ret.rip;
                r.rsp = ret.rsp;
                r.rflags = ret.rflags | RFLAGS_IF;
                if let Some((rcx, r11)) = ret.rcx_r11 {
                    r.rcx = rcx;
                    r.r11 = r11;
                }
                let flat = ret.cs == FLAT_KERNEL_CS64 && ret.ss == FLAT_KERNEL_SS64;
                self.pv_load(
                    pv,
                    PvLoad {
                        code_and_stack: from_stub || ret.switch_to_user,
                        mode: ret.switch_to_user,
                        segments: None,
                        selectors: (!flat).then_some((ret.cs, ret.ss)),
                    },
                )?;
                self.pv_deliver_events(pv)
            }
            IretOutcome::Failsafe(bounce) => {
                debug!(
                    vcpu = self.id,
                    cs = frame.cs,
                    ss = frame.ss,
                    rip = frame.rip,
                    "iret frame refused: failsafe callback"
                );
                let r = self.kvm.regs_mut();
                r.rax = frame.rax;
                r.rcx = frame.rcx;
                r.r11 = frame.r11;
                self.pv_write_bounce(pv, &mem, &bounce)?;
                self.pv_enter_bounce_state(pv, from_stub, bounce.switch_to_kernel)
            }
        }
    }

    /// MMUEXT_SET_LDT: map the new LDT's pages in the vCPU's LDT area
    /// and load LDTR (base and limit; the selector is not the guest's
    /// business in PV, which has no `lldt`).
    fn pv_load_ldt(&mut self, pv: &PvMachine) {
        let mem = self.rt.memory.snapshot();
        let memory = self.rt.memory.clone();
        let (limit, frames) = {
            let kvm = &self.kvm;
            pv.load_ldt(&mem, self.id, |va| kvm.probe_gpa(&memory, va))
        };
        pv::map_guest_ldt(&mem, self.id, &frames);
        let base = pv::ldt_area_va(self.id);
        let ok = self.kvm.update_sregs(|s| {
            s.ldt = match limit {
                Some(limit) => kvm_bindings::kvm_segment {
                    base,
                    limit,
                    selector: 0,
                    type_: 2,
                    present: 1,
                    ..Default::default()
                },
                None => kvm_bindings::kvm_segment {
                    unusable: 1,
                    ..Default::default()
                },
            };
        });
        if !ok {
            warn!(vcpu = self.id, "loading the PV LDT failed");
        }
    }

    /// What a PV call asks before the guest resumes. A new base pointer
    /// is loaded into CR3 for the mode the vCPU is in. A TLB flush, and
    /// the flush a base pointer load implies, drop KVM's shadow page
    /// tables ([`crate::memory::GuestMemory::flush_kvm_shadow_mmu`]): the
    /// PV MMU writes the guest's tables from user space, which KVM's
    /// shadow MMU does not see, and neither a CR3 load nor an INVLPG the
    /// guest cannot issue would resync it. That flush covers every vCPU
    /// and every address, more than any Xen flush asks, so one does for
    /// all scopes; and it is skipped when kxen-vmm wrote nothing since
    /// the last one ([`PvMachine::take_shadow_stale`]), e.g. a kernel
    /// reloading the L4 it runs on. A live segment base that changed is
    /// loaded.
    pub(super) fn apply_pv_effects(&mut self, pv: &PvMachine, effects: &Effects) {
        if effects.base_changed {
            let kernel_mode = self.pv_kernel_mode(pv);
            match pv.mode_cr3(self.id, kernel_mode) {
                Some(cr3) if cr3 != self.kvm.sregs().cr3 => {
                    if !self.kvm.set_cr3(cr3) {
                        warn!(
                            vcpu = self.id,
                            cr3, "loading the new PV base pointer failed"
                        );
                    }
                }
                Some(_) => {}
                None => warn!(vcpu = self.id, "PV base pointer changed to none"),
            }
        }
        if effects.gdt_changed {
            // The vCPU's GDT area now maps the guest's frames; the GDT
            // base and limit stay (the reserved entries sit at 0xe000).
            let frames = pv
                .with_vcpu(self.id, |v| v.gdt_frames.clone())
                .unwrap_or_default();
            crate::pv::map_guest_gdt(&self.rt.memory.snapshot(), self.id, &frames);
        }
        if effects.ldt_changed {
            self.pv_load_ldt(pv);
        }
        if effects.gdt_changed || effects.ldt_changed {
            pv.mark_shadow_stale();
        }
        let flush_asked = effects.flush.is_some()
            || effects.base_changed
            || effects.gdt_changed
            || effects.ldt_changed;
        // Only what kxen-vmm itself wrote can be stale in KVM's shadow.
        if flush_asked && pv.take_shadow_stale() {
            trace!(vcpu = self.id, flush = ?effects.flush, "PV TLB flush");
            self.rt.perf.shadow_flush();
            if let Err(e) = self.rt.memory.flush_kvm_shadow_mmu() {
                // The guest may now reach frames through stale entries.
                error!(
                    vcpu = self.id,
                    "PV TLB flush of KVM's shadow MMU failed: {e}"
                );
            }
        }
        if let Some(segments) = effects.segment_load {
            if let Err(e) = self.pv_load(
                pv,
                PvLoad {
                    segments: Some(segments),
                    ..Default::default()
                },
            ) {
                warn!(vcpu = self.id, "loading a PV segment base: {e}");
            }
        }
    }
}
