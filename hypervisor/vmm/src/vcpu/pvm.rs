//! What a vCPU needs from the VMM only on PVM hosts (KVM without VT-x or
//! SVM, where guest ring 0 runs in KVM's instruction emulator): the
//! instructions the emulator lacks, and the syscall bridge of
//! [`crate::syscall_bridge`]. Everything sits behind
//! [`PvmWorkarounds::handle`], and the vCPU installs this hook only on
//! such hosts; elsewhere an emulation failure simply ends the domain.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tracing::{debug, info, trace, warn};
use vm_memory::{Bytes, GuestAddress};

use crate::insn::{
    self, fpu_from_fxsave, fxsave_image, Action, CpuState, FpuOp, IretStep, X87Op, X87Step,
    EXCEPTION_GP, MXCSR_MASK,
};
use crate::memory::GuestMemory;
use crate::syscall_bridge::{
    self, syscall_entry_state, FaultFrame, SyscallBridge, MSR_LSTAR, MSR_SYSCALL_MASK,
};

use super::kvm::KvmVcpu;

const RFLAGS_AC: u64 = 1 << 18;
const INT3: u8 = 0xcc;

/// What happened on the vCPU that the hook may take care of.
#[derive(Debug, Clone, Copy)]
pub enum PvmEvent {
    /// KVM's emulator failed on an instruction.
    EmulationFailure,
    /// The guest's write of `MSR_LSTAR`, which the MSR filter sends here
    /// (only installed with the syscall bridge), passed the canonical check.
    LstarWrite(u64),
}

/// The PVM-host hook of one vCPU.
pub struct PvmWorkarounds {
    vcpu: u32,
    memory: Arc<GuestMemory>,
    /// User-mode `syscall` for stock kernels (HVM domains only).
    bridge: Option<Arc<SyscallBridge>>,
}

/// Whether this host runs guest ring 0 in KVM's emulator (asked once).
pub fn host_is_pvm() -> bool {
    static PVM: OnceLock<bool> = OnceLock::new();
    *PVM.get_or_init(syscall_bridge::host_needs_bridge)
}

impl PvmWorkarounds {
    /// The hook for `vcpu`, or `None` on hosts with VT-x or SVM.
    pub fn for_this_host(
        vcpu: u32,
        memory: Arc<GuestMemory>,
        bridge: Option<Arc<SyscallBridge>>,
    ) -> Option<Self> {
        host_is_pvm().then_some(PvmWorkarounds {
            vcpu,
            memory,
            bridge,
        })
    }

    /// The single entry point: true if the event was dealt with and the
    /// vCPU may go on, false if it stays what it was (an emulation failure
    /// then ends the domain).
    pub fn handle(&self, kvm: &mut KvmVcpu, event: PvmEvent) -> bool {
        match event {
            PvmEvent::EmulationFailure => self.emulate_failed_instruction(kvm),
            PvmEvent::LstarWrite(lstar) => {
                self.write_lstar_and_plant(kvm, lstar);
                true
            }
        }
    }

    /// Do what the CPU would with the instruction the emulator gave up
    /// on (see [`crate::insn`]), or step the syscall bridge. False only
    /// where there is no architectural answer: the domain then ends.
    fn emulate_failed_instruction(&self, kvm: &mut KvmVcpu) -> bool {
        if kvm.internal_error().instruction_bytes().is_none() {
            return false;
        }
        // The bridge needs only RIP: settle it before reading any bytes.
        self.refresh_syscall_bridge();
        if self.syscall_bridge_hit(kvm) {
            return true;
        }
        // The bytes KVM reports are not always those at RIP (PVM hands back
        // a stale fetch), so read the instruction from guest memory.
        let Some(bytes) = kvm.fetch_instruction(&self.memory) else {
            return false;
        };
        let cpu = kvm.cpu_state();
        match insn::decide(&bytes, &cpu) {
            Ok(action) => {
                trace!(
                    vcpu = self.vcpu,
                    ?action,
                    "answering an instruction the emulator lacks"
                );
                self.carry_out(kvm, &cpu, action)
            }
            Err(why) => {
                warn!(
                    vcpu = self.vcpu,
                    rip = format_args!("{:#x}", cpu.rip),
                    bytes = format_args!("{bytes:02x?}"),
                    "no architectural answer: {why}"
                );
                false
            }
        }
    }

    /// Do what [`insn::decide`] said.
    fn carry_out(&self, kvm: &mut KvmVcpu, cpu: &CpuState, action: Action) -> bool {
        match action {
            Action::Fault { vector, error_code } => {
                debug!(
                    vcpu = self.vcpu,
                    vector,
                    ?error_code,
                    rip = cpu.rip,
                    "fault for an instruction"
                );
                kvm.inject_exception(vector, error_code)
            }
            // A trap: delivered with RIP past the whole instruction.
            Action::Trap { vector, len } => {
                kvm.regs_mut().rip = cpu.rip.wrapping_add(len as u64);
                kvm.inject_exception(vector, None)
            }
            Action::SetAc { set, len } => {
                let regs = kvm.regs_mut();
                if set {
                    regs.rflags |= RFLAGS_AC;
                } else {
                    regs.rflags &= !RFLAGS_AC;
                }
                regs.rip = cpu.rip.wrapping_add(len as u64);
                true
            }
            Action::X87 { op, len } => self.emulate_x87(kvm, cpu, op, len),
            Action::Fxsr { op, address, len } => self.emulate_fxsr(kvm, op, address, len),
            Action::Iret32 => self.emulate_iret32(kvm, cpu),
        }
    }

    /// `iretd` from 32-bit protected-mode code to the same privilege
    /// level (see [`insn::iret32`]): pop EIP, CS and EFLAGS from SS:ESP,
    /// load CS from its descriptor with the CPU's checks. A frame or
    /// descriptor the vCPU cannot read, and the forms `iret32` leaves
    /// out, end the domain as before.
    fn emulate_iret32(&self, kvm: &mut KvmVcpu, cpu: &CpuState) -> bool {
        let (regs, sregs) = (kvm.regs(), kvm.sregs());
        // SS:ESP, or SS:SP with a 16-bit stack segment.
        let stack_mask: u64 = if sregs.ss.db != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        let sp = regs.rsp & stack_mask;
        let frame_at = sregs.ss.base.wrapping_add(sp) & 0xffff_ffff;
        let mut frame = [0u8; 12];
        if !kvm.read_virtual(&self.memory, frame_at, &mut frame) {
            warn!(
                vcpu = self.vcpu,
                frame_at, "iretd: the frame on the stack is unreadable"
            );
            return false;
        }
        let (eip, cs, eflags) = match insn::iret32(&frame, cpu.cpl, regs.rflags) {
            IretStep::Return { eip, cs, eflags } => (eip, cs, eflags),
            IretStep::Fault { vector, error_code } => {
                return kvm.inject_exception(vector, Some(error_code))
            }
            IretStep::Unanswered(what) => {
                warn!(vcpu = self.vcpu, "iretd: {what} is not emulated");
                return false;
            }
        };
        // The descriptor from the GDT, or the LDT for a TI selector, read
        // as the CPU reads descriptor tables (a supervisor access).
        let gp_selector = Some(u32::from(cs & !3));
        let (table_base, table_limit) = if cs & 4 != 0 {
            if sregs.ldt.unusable != 0 || sregs.ldt.present == 0 {
                return kvm.inject_exception(EXCEPTION_GP, gp_selector);
            }
            (sregs.ldt.base, u64::from(sregs.ldt.limit))
        } else {
            (sregs.gdt.base, u64::from(sregs.gdt.limit))
        };
        let offset = u64::from(cs & !7);
        if offset + 7 > table_limit {
            return kvm.inject_exception(EXCEPTION_GP, gp_selector);
        }
        let mut raw = [0u8; 8];
        let as_cpu = kvm.paging_regs().as_supervisor();
        let at = table_base.wrapping_add(offset) & 0xffff_ffff;
        if !kvm.with_guest(&self.memory, as_cpu, |g| g.read(at, &mut raw).is_ok()) {
            warn!(
                vcpu = self.vcpu,
                at, "iretd: the code segment's descriptor is unreadable"
            );
            return false;
        }
        let segment = match insn::code_segment_for_return(cs, u64::from_le_bytes(raw), eip) {
            Ok(segment) => segment,
            Err((vector, error_code)) => return kvm.inject_exception(vector, Some(error_code)),
        };
        if segment != sregs.cs && !kvm.update_sregs(|s| s.cs = segment) {
            return false;
        }
        let r = kvm.regs_mut();
        r.rip = u64::from(eip);
        r.rflags = u64::from(eflags);
        r.rsp = (regs.rsp & !stack_mask) | (sp.wrapping_add(12) & stack_mask);
        trace!(vcpu = self.vcpu, eip, cs, eflags, "emulated iretd");
        true
    }

    /// x87 control instructions on KVM's FPU state (KVM_GET/SET_FPU),
    /// memory operands through the guest's page tables.
    fn emulate_x87(&self, kvm: &mut KvmVcpu, cpu: &CpuState, op: X87Op, len: usize) -> bool {
        let Some(mut fpu) = kvm.get_fpu() else {
            return false;
        };
        let mut loaded = 0u16;
        if let X87Op::Ldcw(address) = op {
            let mut raw = [0u8; 2];
            if !kvm.read_virtual(&self.memory, address, &mut raw) {
                return false;
            }
            loaded = u16::from_le_bytes(raw);
        }
        let done = match insn::x87_execute(op, &mut fpu, cpu.cr0, loaded) {
            X87Step::Fault(vector) => return kvm.inject_exception(vector, None),
            X87Step::Done { changed: false } => true,
            X87Step::Done { changed: true } => kvm.set_fpu(&fpu),
            X87Step::Store { address, value } => {
                kvm.write_virtual(&self.memory, address, &value.to_le_bytes())
            }
            X87Step::ToAx(value) => {
                let regs = kvm.regs_mut();
                regs.rax = (regs.rax & !0xffff) | u64::from(value);
                true
            }
        };
        if done {
            kvm.regs_mut().rip = cpu.rip.wrapping_add(len as u64);
            trace!(vcpu = self.vcpu, ?op, "emulated x87");
        }
        done
    }

    /// The guest set its `syscall` entry point: do the write KVM left to
    /// us, then put the syscall bridge's breakpoint on the page-fault
    /// handler (see [`crate::syscall_bridge`]).
    fn write_lstar_and_plant(&self, kvm: &mut KvmVcpu, lstar: u64) {
        if !kvm.set_msr(MSR_LSTAR, lstar) {
            return;
        }
        let Some(bridge) = self.bridge.as_ref() else {
            return;
        };
        let (idt_base, idt_limit) = (kvm.sregs().idt.base, kvm.sregs().idt.limit);
        let Some(gate_at) = syscall_bridge::page_fault_gate(idt_limit) else {
            warn!(
                vcpu = self.vcpu,
                idt_limit, "syscall bridge: no page-fault gate yet"
            );
            return;
        };
        let mut gate = [0u8; 16];
        // The CPU reads the IDT as a supervisor, whatever the CPL.
        let as_cpu = kvm.paging_regs().as_supervisor();
        let gate_va = idt_base.wrapping_add(gate_at);
        if !kvm.with_guest(&self.memory, as_cpu, |g| g.read(gate_va, &mut gate).is_ok()) {
            warn!(vcpu = self.vcpu, idt_base, "syscall bridge: IDT unreadable");
            return;
        }
        let handler = syscall_bridge::gate_offset(&gate);
        if bridge.planted().is_some_and(|p| p.handler == handler) {
            return;
        }
        // The VMM's own breakpoint goes into kernel text, which the guest
        // maps read-only: where the page lies, not what the guest may do.
        let Some(gpa) = kvm.probe_gpa(&self.memory, handler) else {
            warn!(
                vcpu = self.vcpu,
                handler, "syscall bridge: handler unmapped"
            );
            return;
        };
        let mem = self.memory.snapshot();
        let mut head = [0u8; 8];
        if mem.read_slice(&mut head, GuestAddress(gpa)).is_err() {
            return;
        }
        if syscall_bridge::Displaced::decode(&head).is_none() {
            warn!(vcpu = self.vcpu, handler, ?head, "syscall bridge: handler starts with an instruction we do not step over; user-mode syscalls will fault");
            return;
        }
        let planted = syscall_bridge::Planted {
            handler,
            gpa,
            original: head[0],
        };
        if bridge.plant(planted) && mem.write_obj(INT3, GuestAddress(gpa)).is_err() {
            warn!(
                vcpu = self.vcpu,
                gpa, "syscall bridge: cannot write the breakpoint"
            );
        }
    }

    /// Put the bridge's breakpoint back if the guest wrote over it.
    fn refresh_syscall_bridge(&self) {
        let Some(bridge) = self.bridge.as_ref() else {
            return;
        };
        let Some(planted) = bridge.planted() else {
            return;
        };
        let mem = self.memory.snapshot();
        match mem.read_obj::<u8>(GuestAddress(planted.gpa)) {
            Ok(INT3) | Err(_) => {}
            Ok(byte) => {
                bridge.overwritten(byte);
                if mem.write_obj(INT3, GuestAddress(planted.gpa)).is_ok() {
                    debug!(
                        vcpu = self.vcpu,
                        byte, "syscall bridge: breakpoint put back"
                    );
                }
            }
        }
    }

    /// The vCPU stopped at the syscall bridge's breakpoint (its `int3`,
    /// or the instruction the guest wrote over it): a page fault entering
    /// its handler. A user-mode fetch at `MSR_LSTAR` becomes the system
    /// call it was; any other fault runs the displaced instruction and
    /// continues into the handler. False if this is not our breakpoint.
    fn syscall_bridge_hit(&self, kvm: &mut KvmVcpu) -> bool {
        let Some(bridge) = self.bridge.as_ref() else {
            return false;
        };
        let Some(planted) = bridge.planted() else {
            return false;
        };
        let (rip, rsp) = (kvm.regs().rip, kvm.regs().rsp);
        if rip != planted.handler {
            return false;
        }
        // What the handler starts with, as the guest wrote it.
        let mut head = [0u8; 8];
        if self
            .memory
            .snapshot()
            .read_slice(&mut head, GuestAddress(planted.gpa))
            .is_err()
        {
            return false;
        }
        if head[0] == INT3 {
            head[0] = planted.original;
        }
        let Some(displaced) = syscall_bridge::Displaced::decode(&head) else {
            warn!(
                vcpu = self.vcpu,
                ?head,
                "syscall bridge: cannot step over the handler's first instruction"
            );
            return false;
        };
        let mut raw = [0u8; FaultFrame::LEN];
        let msrs = kvm.get_msrs([MSR_LSTAR, MSR_SYSCALL_MASK]);
        // Without the frame or the MSRs, treat it as an ordinary fault.
        let frame = (msrs.is_some() && kvm.read_virtual(&self.memory, rsp, &mut raw))
            .then(|| FaultFrame::parse(&raw));
        let [lstar, fmask] = msrs.unwrap_or_default();
        let regs = kvm.regs_mut();
        match frame {
            Some(frame) if frame.is_stranded_syscall(lstar) => {
                let (rip, rsp, rflags, r11) = syscall_entry_state(&frame, lstar, fmask);
                regs.rip = rip;
                regs.rsp = rsp;
                regs.rflags = rflags;
                regs.r11 = r11;
                if bridge.bridged.fetch_add(1, Ordering::Relaxed) == 0 {
                    info!(
                        vcpu = self.vcpu,
                        "syscall bridge: first user-mode syscall bridged"
                    );
                }
                trace!(vcpu = self.vcpu, nr = regs.rax, "syscall bridged");
            }
            _ => {
                let (rip, rflags) = displaced.step(regs.rip, regs.rflags);
                regs.rip = rip;
                regs.rflags = rflags;
            }
        }
        true
    }

    /// `ldmxcsr`, `stmxcsr`, `fxsave` and `fxrstor` (`0f ae /0-/3` with a
    /// memory operand): KVM's emulator has none of them, and a stock
    /// kernel runs them in `kernel_fpu_begin` and on every context switch
    /// once XSAVE is off. The state goes through KVM_GET/SET_FPU and the
    /// operand through the guest's page tables.
    fn emulate_fxsr(&self, kvm: &mut KvmVcpu, op: FpuOp, address: u64, len: usize) -> bool {
        if !address.is_multiple_of(op.alignment()) {
            return kvm.inject_exception(EXCEPTION_GP, Some(0));
        }
        let Some(mut fpu) = kvm.get_fpu() else {
            return false;
        };
        let mem = &self.memory;
        let done = match op {
            FpuOp::Stmxcsr => kvm.write_virtual(mem, address, &fpu.mxcsr.to_le_bytes()),
            FpuOp::Fxsave { rex_w } => kvm.write_virtual(mem, address, &fxsave_image(&fpu, rex_w)),
            FpuOp::Ldmxcsr => {
                let mut raw = [0u8; 4];
                if !kvm.read_virtual(mem, address, &mut raw) {
                    return false;
                }
                let value = u32::from_le_bytes(raw);
                if value & !MXCSR_MASK != 0 {
                    return kvm.inject_exception(EXCEPTION_GP, Some(0));
                }
                fpu.mxcsr = value;
                kvm.set_fpu(&fpu)
            }
            FpuOp::Fxrstor { rex_w } => {
                let mut img = [0u8; 512];
                if !kvm.read_virtual(mem, address, &mut img) {
                    return false;
                }
                match fpu_from_fxsave(&img, rex_w) {
                    Some(loaded) => kvm.set_fpu(&loaded),
                    None => return kvm.inject_exception(EXCEPTION_GP, Some(0)),
                }
            }
        };
        if done {
            kvm.regs_mut().rip += len as u64;
            trace!(vcpu = self.vcpu, ?op, address, "emulated");
        }
        done
    }
}
