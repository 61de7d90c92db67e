//! One vCPU thread: enter the guest, decode the exit, serve it.
//!
//! Hypercalls arrive as `out %eax, $HYPERCALL_PORT` (KVM_EXIT_IO). The
//! arguments are read from the synced registers KVM copies into kvm_run on
//! every exit, and the result goes back the same way, so a hypercall costs
//! one KVM_RUN round trip and no extra register ioctls.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_run, Msrs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use tracing::{debug, error, info, trace, warn};
use vm_memory::{Bytes, GuestAddress};
use xen_abi::cpuid::XEN_HYPERCALL_MSR;
use xen_abi::hypercall::STUB_COUNT;
use xen_abi::transport::{hypercall_stub, HYPERCALL_PORT};

use kxen_devices::PlatformRequest;
use kxen_loader::acpi;
use kxen_xen::guest::paging::{PageWalker, PagingRegs};
use kxen_xen::guest::GuestAccess;
use kxen_xen::hypercall::Call;

use crate::insn::{decode_fpu_insn, fpu_from_fxsave, fxsave_image, DecodeRegs, FpuOp, MXCSR_MASK};
use crate::syscall_bridge::{self, syscall_entry_state, FaultFrame, MSR_LSTAR, MSR_SYSCALL_MASK};
use crate::vm::{DomainExit, Runtime};

/// A port the guest may write to for a bare exit (benchmark baseline).
pub const NULL_PORT: u16 = 0x59;
const MSR_IA32_TSC: u32 = 0x10;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_AC: u64 = 1 << 18;
const EXCEPTION_BP: u8 = 3;
const EXCEPTION_GP: u8 = 13;

thread_local! {
    /// This thread's kvm_run, so the kick signal handler can set
    /// immediate_exit and close the race with entering KVM_RUN.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Whether `addr` is canonical for a `va_bits`-wide virtual address space.
fn is_canonical(addr: u64, va_bits: u32) -> bool {
    let shift = 64 - va_bits;
    ((addr << shift) as i64 >> shift) as u64 == addr
}

/// A port read no emulated device claimed.
fn unclaimed_port_read(vcpu: u32, port: u16, data: &mut [u8]) {
    if port == acpi::SLEEP_STATUS_PORT {
        data.fill(0);
    } else {
        // Nothing decodes here: reads of a floating bus.
        data.fill(0xff);
        trace!(vcpu, port, "unclaimed port read");
    }
}

/// How a device's request ends the domain.
fn platform_exit(vcpu: u32, request: PlatformRequest) -> DomainExit {
    info!(vcpu, ?request, "platform request from a device");
    match request {
        PlatformRequest::Reset => DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_REBOOT),
        PlatformRequest::PowerOff => DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_POWEROFF),
    }
}

/// Signal handler for vCPU kicks.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's kvm_run mapping, published by
            // the vCPU loop and cleared before the mapping goes away; a
            // single byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

pub struct Vcpu {
    pub id: u32,
    pub fd: VcpuFd,
    pub rt: Arc<Runtime>,
    started: bool,
    /// The guest's MAXPHYADDR, for the page walk's reserved-bit checks.
    phys_addr_bits: u8,
}

impl Vcpu {
    pub fn new(id: u32, fd: VcpuFd, rt: Arc<Runtime>) -> Self {
        Vcpu {
            id,
            fd,
            rt,
            started: id == 0,
            phys_addr_bits: 36,
        }
    }

    /// Measure guest TSC minus host TSC.
    pub fn measure_tsc_offset(&self) -> i64 {
        let mut msrs = match Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }]) {
            Ok(m) => m,
            Err(_) => return 0,
        };
        let before = kxen_xen::time::host_tsc();
        let ok = self.fd.get_msrs(&mut msrs).is_ok();
        let after = kxen_xen::time::host_tsc();
        if !ok {
            return 0;
        }
        let guest = msrs.as_slice()[0].data;
        (guest as i64).wrapping_sub((before / 2 + after / 2) as i64)
    }

    /// The vCPU thread body.
    pub fn run(mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        match self.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
            Ok(table) => self.phys_addr_bits = crate::cpuid::phys_addr_bits(&table),
            Err(e) => warn!(
                vcpu = self.id,
                "KVM_GET_CPUID2: {e}; assuming MAXPHYADDR 36"
            ),
        }
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        // A VMM bug must end this domain, not leave the others waiting.
        let exit = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()))
        {
            Ok(exit) => exit,
            Err(_) => Some(DomainExit::Crashed(format!(
                "kxen-vmm internal error on vCPU {}",
                self.id
            ))),
        };
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        if let Some(exit) = exit {
            self.rt.request_exit(exit);
        }
        if let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            debug!(
                vcpu = self.id,
                rip = format_args!("{:#x}", regs.rip),
                rsp = format_args!("{:#x}", regs.rsp),
                cr0 = format_args!("{:#x}", sregs.cr0),
                cr2 = format_args!("{:#x}", sregs.cr2),
                efer = format_args!("{:#x}", sregs.efer),
                "vCPU thread exits"
            );
        }
    }

    fn run_loop(&mut self) -> Option<DomainExit> {
        let domain = self.rt.domain.clone();
        let mut entered = false;
        loop {
            if domain.is_stopping() || !domain.wait_online(self.id) {
                return None;
            }
            if !entered && self.id == 0 {
                entered = true;
                self.rt.note_guest_entry();
            }
            // Only an AP that has never run can have a mailbox entry point;
            // the exit loop proper takes no lock for it.
            if let Some(entry) = (!self.started)
                .then(|| self.rt.ap_start.take(self.id))
                .flatten()
            {
                if let Err(e) = crate::vm::setup_long_mode_ap(&self.fd, entry) {
                    return Some(DomainExit::Crashed(format!(
                        "starting vCPU {} at {entry:#x}: {e}",
                        self.id
                    )));
                }
                // An upcall raised while the AP was not running was dropped.
                domain.reassert_upcall(self.id);
            }
            if !self.rt.enter_guest() {
                return None;
            }
            let result = self.fd.run();
            self.rt.leave_guest();
            let exit = match result {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => return Some(DomainExit::Crashed(format!("KVM_RUN failed: {e}"))),
            };
            if !self.started {
                self.started = true;
                domain.vcpu_started(self.id);
            }
            match exit {
                VcpuExit::IoOut(port, data) => {
                    // A copy, so that the exit's borrow of the vCPU ends.
                    let mut bytes = [0u8; 8];
                    let len = data.len().min(bytes.len());
                    bytes[..len].copy_from_slice(&data[..len]);
                    let data = &bytes[..len];
                    let claimed = self
                        .rt
                        .hvm
                        .as_ref()
                        .and_then(|d| d.pio.write(port as u64, data));
                    match claimed {
                        Some(Some(request)) => return Some(platform_exit(self.id, request)),
                        Some(None) => {}
                        None => {
                            if let Some(exit) = self.port_write(port, data) {
                                return Some(exit);
                            }
                        }
                    }
                }
                VcpuExit::IoIn(port, data) => {
                    let claimed = self
                        .rt
                        .hvm
                        .as_ref()
                        .is_some_and(|d| d.pio.read(port as u64, data));
                    if !claimed {
                        unclaimed_port_read(self.id, port, data);
                    }
                }
                VcpuExit::MmioRead(addr, data) => {
                    if self
                        .rt
                        .hvm
                        .as_ref()
                        .is_some_and(|d| d.mmio.read(addr, data))
                    {
                        continue;
                    }
                    data.fill(0xff);
                    trace!(vcpu = self.id, addr, "unclaimed MMIO read");
                }
                VcpuExit::MmioWrite(addr, data) => {
                    match self.rt.hvm.as_ref().and_then(|d| d.mmio.write(addr, data)) {
                        Some(Some(request)) => return Some(platform_exit(self.id, request)),
                        Some(None) => {}
                        None => trace!(vcpu = self.id, addr, "unclaimed MMIO write"),
                    }
                }
                VcpuExit::X86Wrmsr(msr) => {
                    let (index, data) = (msr.index, msr.data);
                    let lstar = index == MSR_LSTAR && self.rt.syscall_bridge.is_some();
                    let ok = if lstar {
                        // 5-level paging is not offered to guests.
                        is_canonical(data, 48)
                    } else {
                        index == XEN_HYPERCALL_MSR
                            && install_hypercall_page(&self.rt, self.id, data)
                    };
                    if !ok {
                        debug!(vcpu = self.id, index, data, "refused MSR write: #GP");
                        *msr.error = 1;
                    } else if lstar {
                        self.write_lstar_and_plant(data);
                    }
                }
                VcpuExit::X86Rdmsr(msr) => {
                    debug!(vcpu = self.id, index = msr.index, "MSR read: #GP");
                    *msr.error = 1;
                }
                VcpuExit::Hlt => {
                    // The in-kernel LAPIC handles HLT; only reached if a
                    // vCPU halts with interrupts it can never get.
                    return Some(DomainExit::Crashed(format!(
                        "vCPU {} halted with no way to wake",
                        self.id
                    )));
                }
                VcpuExit::Shutdown => {
                    let rip = self.fd.sync_regs().regs.rip;
                    return Some(DomainExit::Crashed(format!(
                        "triple fault on vCPU {} (rip {rip:#x})",
                        self.id
                    )));
                }
                VcpuExit::InternalError => {
                    if !self.emulate_failed_instruction() {
                        return Some(DomainExit::Crashed(self.describe_internal_error()));
                    }
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return Some(DomainExit::Crashed(format!(
                        "VM entry failed on vCPU {} (hardware reason {reason:#x}, cpu {cpu})",
                        self.id
                    )));
                }
                VcpuExit::SystemEvent(kind, _) => {
                    info!(vcpu = self.id, kind, "system event");
                    let reason = match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => xen_abi::sched::SHUTDOWN_REBOOT,
                        kvm_bindings::KVM_SYSTEM_EVENT_CRASH => xen_abi::sched::SHUTDOWN_CRASH,
                        _ => xen_abi::sched::SHUTDOWN_POWEROFF,
                    };
                    return Some(DomainExit::Shutdown(reason));
                }
                VcpuExit::Intr => {}
                other => {
                    warn!(vcpu = self.id, exit = ?other, "unexpected exit");
                    return Some(DomainExit::Crashed(format!(
                        "unexpected exit on vCPU {}: {other:?}",
                        self.id
                    )));
                }
            }
        }
    }

    /// A port write no emulated device claimed: the hypercall port, the
    /// benchmark port and the ACPI fixed registers.
    fn port_write(&mut self, port: u16, data: &[u8]) -> Option<DomainExit> {
        match port {
            HYPERCALL_PORT => self.hypercall(),
            NULL_PORT => {}
            acpi::SLEEP_CONTROL_PORT => {
                match acpi::decode_sleep_control(data.first().copied().unwrap_or(0)) {
                    Some(acpi::SleepRequest::SoftOff) => {
                        info!(vcpu = self.id, "ACPI soft-off (S5)");
                        return Some(DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_POWEROFF));
                    }
                    Some(acpi::SleepRequest::Unsupported(kind)) => {
                        debug!(vcpu = self.id, kind, "ACPI sleep type not supported");
                    }
                    None => {}
                }
            }
            // Bit 2 of the reset control register resets the CPU.
            acpi::RESET_PORT if data.first().is_some_and(|v| v & 0x4 != 0) => {
                info!(vcpu = self.id, "reset through the reset register");
                return Some(DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_REBOOT));
            }
            _ => trace!(vcpu = self.id, port, "unclaimed port write"),
        }
        None
    }

    /// Serve the hypercall whose number the guest wrote to the port.
    fn hypercall(&mut self) {
        let sync = self.fd.sync_regs();
        let regs = sync.regs;
        let sregs = sync.sregs;
        // Xen refuses hypercalls from guest user mode (hvm_hypercall).
        let cpl = sregs.ss.dpl;
        let result = if cpl != 0 {
            -xen_abi::errno::EPERM
        } else {
            let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0;
            let call = if long_mode {
                Call {
                    nr: regs.rax & 0xffff_ffff,
                    args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
                }
            } else {
                let m = 0xffff_ffff;
                Call {
                    nr: regs.rax & m,
                    args: [
                        regs.rbx & m,
                        regs.rcx & m,
                        regs.rdx & m,
                        regs.rsi & m,
                        regs.rdi & m,
                    ],
                }
            };
            let mem = self.rt.memory.snapshot();
            let mmu = PageWalker::new(&mem, self.paging_regs());
            let r = self.rt.domain.hypercall(self.id, &mmu, call);
            if long_mode {
                r
            } else {
                r as i32 as u32 as i64
            }
        };
        self.fd.sync_regs_mut().regs.rax = result as u64;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    /// The instruction bytes KVM reports with an emulation failure.
    fn failed_instruction(&mut self) -> Option<Vec<u8>> {
        let run = self.fd.get_kvm_run();
        // SAFETY: only called on KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        if internal.suberror != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION || n < 3 {
            return None;
        }
        // data[0] = flags, data[1] = instruction length, data[2..] = bytes.
        let len = (internal.data[1] as usize).min(15);
        Some(
            internal.data[2..n]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take(len)
                .collect(),
        )
    }

    /// Hosts without VT-x (PVM) run guest ring 0 in KVM's instruction
    /// emulator, which lacks a few instructions a stock kernel uses. Do
    /// what the CPU would for those (int3, fwait, clac/stac and the
    /// MXCSR/FXSAVE group); anything else stays an emulation failure (the
    /// domain crashes, nothing else does).
    fn emulate_failed_instruction(&mut self) -> bool {
        if self.failed_instruction().is_none() {
            return false;
        }
        // The bridge needs only RIP: settle it before reading any bytes.
        self.refresh_syscall_bridge();
        if self.syscall_bridge_hit() {
            return true;
        }
        // The bytes KVM reports are not always those at RIP (PVM hands back
        // a stale fetch), so read the instruction from guest memory.
        let Some(bytes) = self.fetch_instruction() else {
            return false;
        };
        match bytes.first() {
            // int3: a trap, so #BP is delivered with RIP past the opcode.
            Some(0xcc) => {
                self.fd.sync_regs_mut().regs.rip += 1;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
                self.inject_exception(EXCEPTION_BP, None)
            }
            // fwait: no x87 exception is ever pending for us to raise.
            Some(0x9b) => {
                self.fd.sync_regs_mut().regs.rip += 1;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
                debug!(vcpu = self.id, "emulated fwait");
                true
            }
            // clac / stac: clear or set RFLAGS.AC (SMAP entry code).
            Some(0x0f)
                if bytes.len() >= 3 && bytes[1] == 0x01 && matches!(bytes[2], 0xca | 0xcb) =>
            {
                let regs = &mut self.fd.sync_regs_mut().regs;
                if bytes[2] == 0xca {
                    regs.rflags &= !RFLAGS_AC;
                } else {
                    regs.rflags |= RFLAGS_AC;
                }
                regs.rip += 3;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
                true
            }
            _ => self.emulate_fpu_insn(&bytes),
        }
    }

    /// The guest set its `syscall` entry point: do the write KVM left to
    /// us, then put the syscall bridge's breakpoint on the page-fault
    /// handler (see [`crate::syscall_bridge`]).
    fn write_lstar_and_plant(&mut self, lstar: u64) {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_LSTAR,
            data: lstar,
            ..Default::default()
        }]);
        match msrs.map(|m| self.fd.set_msrs(&m)) {
            Ok(Ok(1)) => {}
            other => {
                warn!(vcpu = self.id, ?other, "KVM_SET_MSRS (LSTAR) failed");
                return;
            }
        }
        let Some(bridge) = self.rt.syscall_bridge.clone() else {
            return;
        };
        let sregs = &self.fd.sync_regs().sregs;
        let (idt_base, idt_limit) = (sregs.idt.base, sregs.idt.limit);
        let Some(gate_at) = syscall_bridge::page_fault_gate(idt_limit) else {
            warn!(
                vcpu = self.id,
                idt_limit, "syscall bridge: no page-fault gate yet"
            );
            return;
        };
        let mut gate = [0u8; 16];
        let as_cpu = self.paging_regs().as_supervisor();
        if !self.read_guest_virtual_as(as_cpu, idt_base.wrapping_add(gate_at), &mut gate) {
            warn!(vcpu = self.id, idt_base, "syscall bridge: IDT unreadable");
            return;
        }
        let handler = syscall_bridge::gate_offset(&gate);
        if bridge.planted().is_some_and(|p| p.handler == handler) {
            return;
        }
        let mem = self.rt.memory.snapshot();
        // The VMM's own breakpoint goes into kernel text, which the guest
        // maps read-only: where the page lies, not what the guest may do.
        let walker = PageWalker::new(&mem, self.paging_regs().as_supervisor());
        let Ok(gpa) = walker.probe(handler).map(|t| t.gpa) else {
            warn!(vcpu = self.id, handler, "syscall bridge: handler unmapped");
            return;
        };
        let mut head = [0u8; 8];
        if mem.read_slice(&mut head, GuestAddress(gpa)).is_err() {
            return;
        }
        if syscall_bridge::Displaced::decode(&head).is_none() {
            warn!(vcpu = self.id, handler, ?head, "syscall bridge: handler starts with an instruction we do not step over; user-mode syscalls will fault");
            return;
        }
        let planted = syscall_bridge::Planted {
            handler,
            gpa,
            original: head[0],
        };
        if bridge.plant(planted) && mem.write_obj(0xccu8, GuestAddress(gpa)).is_err() {
            warn!(
                vcpu = self.id,
                gpa, "syscall bridge: cannot write the breakpoint"
            );
        }
    }

    /// Put the bridge's breakpoint back if the guest wrote over it.
    fn refresh_syscall_bridge(&self) {
        let Some(bridge) = self.rt.syscall_bridge.as_ref() else {
            return;
        };
        let Some(planted) = bridge.planted() else {
            return;
        };
        let mem = self.rt.memory.snapshot();
        match mem.read_obj::<u8>(GuestAddress(planted.gpa)) {
            Ok(0xcc) | Err(_) => {}
            Ok(byte) => {
                bridge.overwritten(byte);
                if mem.write_obj(0xccu8, GuestAddress(planted.gpa)).is_ok() {
                    debug!(vcpu = self.id, byte, "syscall bridge: breakpoint put back");
                }
            }
        }
    }

    /// The vCPU stopped at the syscall bridge's breakpoint (its `int3`,
    /// or the instruction the guest wrote over it): a page fault entering
    /// its handler. A user-mode fetch at `MSR_LSTAR` becomes the system
    /// call it was; any other fault runs the displaced instruction and
    /// continues into the handler. False if this is not our breakpoint.
    fn syscall_bridge_hit(&mut self) -> bool {
        let Some(planted) = self.rt.syscall_bridge.as_ref().and_then(|b| b.planted()) else {
            return false;
        };
        let regs = self.fd.sync_regs().regs;
        if regs.rip != planted.handler {
            return false;
        }
        // What the handler starts with, as the guest wrote it.
        let mut head = [0u8; 8];
        if self
            .rt
            .memory
            .snapshot()
            .read_slice(&mut head, GuestAddress(planted.gpa))
            .is_err()
        {
            return false;
        }
        if head[0] == 0xcc {
            head[0] = planted.original;
        }
        let Some(displaced) = syscall_bridge::Displaced::decode(&head) else {
            warn!(
                vcpu = self.id,
                ?head,
                "syscall bridge: cannot step over the handler's first instruction"
            );
            return false;
        };
        let mut raw = [0u8; FaultFrame::LEN];
        let mut msrs = match Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_LSTAR,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_SYSCALL_MASK,
                ..Default::default()
            },
        ]) {
            Ok(m) => m,
            Err(_) => return false,
        };
        let frame = (self.read_guest_virtual(regs.rsp, &mut raw)
            && matches!(self.fd.get_msrs(&mut msrs), Ok(2)))
        .then(|| FaultFrame::parse(&raw));
        let (lstar, fmask) = (msrs.as_slice()[0].data, msrs.as_slice()[1].data);
        let regs = &mut self.fd.sync_regs_mut().regs;
        match frame {
            Some(frame) if frame.is_stranded_syscall(lstar) => {
                let (rip, rsp, rflags, r11) = syscall_entry_state(&frame, lstar, fmask);
                regs.rip = rip;
                regs.rsp = rsp;
                regs.rflags = rflags;
                regs.r11 = r11;
                if let Some(b) = self.rt.syscall_bridge.as_ref() {
                    if b.bridged.fetch_add(1, Ordering::Relaxed) == 0 {
                        info!(
                            vcpu = self.id,
                            "syscall bridge: first user-mode syscall bridged"
                        );
                    }
                }
                trace!(vcpu = self.id, nr = regs.rax, "syscall bridged");
            }
            _ => {
                let (rip, rflags) = displaced.step(regs.rip, regs.rflags);
                regs.rip = rip;
                regs.rflags = rflags;
            }
        }
        self.fd.set_sync_dirty_reg(SyncReg::Register);
        true
    }

    /// `ldmxcsr`, `stmxcsr`, `fxsave` and `fxrstor` (`0f ae /0-/3` with a
    /// memory operand): KVM's emulator has none of them, and a stock
    /// kernel runs them in `kernel_fpu_begin` and on every context switch
    /// once XSAVE is off. The state goes through KVM_GET/SET_FPU and the
    /// operand through the guest's page tables.
    fn emulate_fpu_insn(&mut self, bytes: &[u8]) -> bool {
        let sync = self.fd.sync_regs();
        // 64-bit code only: the decoder knows no other addressing.
        if sync.sregs.efer & EFER_LMA == 0 || sync.sregs.cs.l == 0 {
            return false;
        }
        let r = &sync.regs;
        let regs = DecodeRegs {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            fs_base: sync.sregs.fs.base,
            gs_base: sync.sregs.gs.base,
        };
        let Ok(insn) = decode_fpu_insn(bytes, &regs) else {
            return false;
        };
        if !insn.address.is_multiple_of(insn.op.alignment()) {
            return self.inject_exception(EXCEPTION_GP, Some(0));
        }
        let mut fpu = match self.fd.get_fpu() {
            Ok(f) => f,
            Err(e) => {
                warn!(vcpu = self.id, "KVM_GET_FPU: {e}");
                return false;
            }
        };
        let done = match insn.op {
            FpuOp::Stmxcsr => self.write_guest_virtual(insn.address, &fpu.mxcsr.to_le_bytes()),
            FpuOp::Fxsave { rex_w } => {
                self.write_guest_virtual(insn.address, &fxsave_image(&fpu, rex_w))
            }
            FpuOp::Ldmxcsr => {
                let mut raw = [0u8; 4];
                if !self.read_guest_virtual(insn.address, &mut raw) {
                    return false;
                }
                let value = u32::from_le_bytes(raw);
                if value & !MXCSR_MASK != 0 {
                    return self.inject_exception(EXCEPTION_GP, Some(0));
                }
                fpu.mxcsr = value;
                self.set_fpu(&fpu)
            }
            FpuOp::Fxrstor { rex_w } => {
                let mut img = [0u8; 512];
                if !self.read_guest_virtual(insn.address, &mut img) {
                    return false;
                }
                match fpu_from_fxsave(&img, rex_w) {
                    Some(loaded) => self.set_fpu(&loaded),
                    None => return self.inject_exception(EXCEPTION_GP, Some(0)),
                }
            }
        };
        if done {
            self.fd.sync_regs_mut().regs.rip += insn.len as u64;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            trace!(vcpu = self.id, op = ?insn.op, address = insn.address, "emulated");
        }
        done
    }

    fn set_fpu(&self, fpu: &kvm_fpu) -> bool {
        match self.fd.set_fpu(fpu) {
            Ok(()) => true,
            Err(e) => {
                warn!(vcpu = self.id, "KVM_SET_FPU: {e}");
                false
            }
        }
    }

    /// Deliver a fault to the guest at the current instruction.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) -> bool {
        let mut events = match self.fd.get_vcpu_events() {
            Ok(ev) => ev,
            Err(e) => {
                warn!(vcpu = self.id, "KVM_GET_VCPU_EVENTS: {e}");
                return false;
            }
        };
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        if let Err(e) = self.fd.set_vcpu_events(&events) {
            warn!(vcpu = self.id, "KVM_SET_VCPU_EVENTS: {e}");
            return false;
        }
        debug!(vcpu = self.id, vector, "exception injected");
        true
    }

    /// What the guest's page tables are walked with: the vCPU's paging
    /// registers from the synced sregs (no ioctl) and its CPL.
    fn paging_regs(&self) -> PagingRegs {
        let sregs = &self.fd.sync_regs().sregs;
        PagingRegs {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cpl: sregs.ss.dpl,
            phys_addr_bits: self.phys_addr_bits,
        }
    }

    /// Copy guest-virtual memory out through the guest's page tables, as
    /// the vCPU at its CPL could read it. False if any page faults (the
    /// caller then leaves the instruction as an emulation failure: the
    /// domain crashes, not the VMM).
    fn read_guest_virtual(&self, gva: u64, buf: &mut [u8]) -> bool {
        self.read_guest_virtual_as(self.paging_regs(), gva, buf)
    }

    /// [`Self::read_guest_virtual`] with the access made as `regs` say
    /// (a supervisor access for the CPU's own reads, such as the IDT).
    fn read_guest_virtual_as(&self, regs: PagingRegs, gva: u64, buf: &mut [u8]) -> bool {
        let mem = self.rt.memory.snapshot();
        let mmu = PageWalker::new(&mem, regs);
        GuestAccess {
            mem: &mem,
            mmu: &mmu,
        }
        .read(gva, buf)
        .is_ok()
    }

    /// Copy into guest-virtual memory; see [`Self::read_guest_virtual`].
    /// Every page is checked before anything is written, so a fault part
    /// way leaves memory as it was.
    fn write_guest_virtual(&self, gva: u64, data: &[u8]) -> bool {
        let mem = self.rt.memory.snapshot();
        let mmu = PageWalker::new(&mem, self.paging_regs());
        GuestAccess {
            mem: &mem,
            mmu: &mmu,
        }
        .write(gva, data)
        .is_ok()
    }

    /// Up to 15 bytes at CS:RIP, read through the guest's page tables as
    /// an instruction fetch; fewer if the second page faults.
    fn fetch_instruction(&self) -> Option<Vec<u8>> {
        let sync = self.fd.sync_regs();
        let long_mode = sync.sregs.efer & EFER_LMA != 0 && sync.sregs.cs.l != 0;
        let rip = if long_mode {
            sync.regs.rip
        } else {
            sync.sregs.cs.base.wrapping_add(sync.regs.rip) & 0xffff_ffff
        };
        let mem = self.rt.memory.snapshot();
        let mmu = PageWalker::new(&mem, self.paging_regs());
        let g = GuestAccess {
            mem: &mem,
            mmu: &mmu,
        };
        // One walk per page (at most two), not per byte: this runs on
        // every emulation exit, `clac`/`stac` on each user access.
        let mut bytes = [0u8; 15];
        let in_first_page = ((0x1000 - (rip & 0xfff)) as usize).min(bytes.len());
        g.fetch(rip, &mut bytes[..in_first_page]).ok()?;
        let len = if g
            .fetch(
                rip.wrapping_add(in_first_page as u64),
                &mut bytes[in_first_page..],
            )
            .is_ok()
        {
            bytes.len()
        } else {
            in_first_page
        };
        Some(bytes[..len].to_vec())
    }

    fn describe_internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data = &internal.data[..n];
        let rip = self.fd.sync_regs().regs.rip;
        let mut msg = format!(
            "KVM internal error on vCPU {} (suberror {}{}) at rip {rip:#x}",
            self.id,
            internal.suberror,
            if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                ": instruction emulation failed"
            } else {
                ""
            }
        );
        if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && n >= 3 {
            // data[1] = instruction length, data[2..] = instruction bytes.
            let len = (data[1] as usize).min(15);
            let bytes: Vec<u8> = data[2..]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take(len)
                .collect();
            msg.push_str(&format!(", insn bytes {bytes:02x?}"));
            if let Some(at_rip) = self.fetch_instruction() {
                msg.push_str(&format!(", bytes at rip {at_rip:02x?}"));
            }
        } else {
            msg.push_str(&format!(", data {data:#x?}"));
        }
        error!("{msg}");
        msg
    }
}

/// Fill the hypercall page at the GPA written to the MSR (low 12 bits:
/// page index, and we have one page).
fn install_hypercall_page(rt: &Runtime, vcpu: u32, value: u64) -> bool {
    if value & 0xfff != 0 {
        return false;
    }
    let gpa = value & !0xfff;
    let mut page = vec![0xccu8; xen_abi::PAGE_SIZE];
    for nr in 0..STUB_COUNT {
        let stub = hypercall_stub(nr as u32);
        page[nr * stub.len()..(nr + 1) * stub.len()].copy_from_slice(&stub);
    }
    let ok = rt
        .memory
        .snapshot()
        .write_slice(&page, GuestAddress(gpa))
        .is_ok();
    info!(vcpu, gpa, ok, "hypercall page");
    ok
}
