//! One vCPU thread: an explicit state machine around KVM_RUN.
//!
//! A vCPU is [`VcpuState::Offline`] until the guest brings it up,
//! [`VcpuState::Starting`] before its first entry (an AP loads the entry
//! point the ACPI mailbox gave it), then [`VcpuState::Running`], and
//! [`VcpuState::Stopped`] once the domain ends. Each exit is decoded in one
//! place, [`Vcpu::handle_exit`], and answered with an [`ExitOutcome`]: go
//! on, or stop the domain with a reason. KVM itself is reached only
//! through [`kvm::KvmVcpu`]; what only PVM hosts need sits behind the
//! [`pvm::PvmWorkarounds`] hook.
//!
//! Hypercalls arrive as `out %eax, $HYPERCALL_PORT` (KVM_EXIT_IO). The
//! arguments are read from the synced registers KVM copies into kvm_run on
//! every exit, and the result goes back the same way, so a hypercall costs
//! one KVM_RUN round trip and no extra register ioctls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use tracing::{debug, error, info, trace, warn};
use vm_memory::{Bytes, GuestAddress};
use xen_abi::cpuid::XEN_HYPERCALL_MSR;
use xen_abi::hypercall::STUB_COUNT;
use xen_abi::transport::{hypercall_stub, HYPERCALL_PORT};

use kxen_devices::PlatformRequest;
use kxen_loader::acpi;
use kxen_xen::hypercall::Call;

use crate::exit::DomainExit;
use crate::perf::ExitKind;
use crate::syscall_bridge::MSR_LSTAR;

pub mod gate;
pub mod kvm;
mod pv_emulate;
mod pv_exits;
mod pv_ptwr;
pub mod pvm;
pub mod shared;
pub mod snapshot;
pub mod triple_fault;

use shared::VcpuShared;

pub use kvm::kick_handler;
use kvm::{KvmVcpu, RunError};
use pvm::{PvmEvent, PvmWorkarounds};

/// A port the guest may write to for a bare exit (benchmark baseline).
pub const NULL_PORT: u16 = 0x59;

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

/// What a write to an emulated device's bus did.
enum BusWrite {
    /// No device decodes the address.
    Unclaimed,
    Done,
    /// The device asks for a reset or power-off.
    Platform(PlatformRequest),
}

impl BusWrite {
    /// From the device bus's answer (claimed, and maybe a request).
    fn from_bus(answer: Option<Option<PlatformRequest>>) -> Self {
        match answer {
            None => BusWrite::Unclaimed,
            Some(None) => BusWrite::Done,
            Some(Some(request)) => BusWrite::Platform(request),
        }
    }
}

/// Where a vCPU is in its life.
#[derive(Debug)]
pub enum VcpuState {
    /// Waiting to be brought online (an AP before its start), or offline.
    Offline,
    /// Online and never run: load the mailbox entry point, if any.
    Starting,
    /// Entering the guest and serving its exits.
    Running,
    /// The thread ends; `Some` if this vCPU decided how the domain ends.
    Stopped(Option<DomainExit>),
}

/// The answer to one exit.
#[derive(Debug)]
pub enum ExitOutcome {
    /// Served: enter the guest again.
    Continue,
    /// The domain ends, for this reason.
    Stop(DomainExit),
}

/// Work an exit leaves for after its borrow of kvm_run ends: it needs the
/// vCPU's registers or other KVM calls.
enum Deferred {
    Hypercall,
    /// A PV exception stub's exit, with the vector.
    PvTrap(u8),
    /// A PV guest's `iret` hypercall.
    PvIret,
    /// A PV vCPU's `syscall` reached the hypervisor's entry stub.
    PvSyscall,
    LstarWrite(u64),
    /// The hypercall page MSR was written (the mode decides the
    /// shared_info layout).
    HypercallPageWritten,
    EmulationFailure,
    TripleFault,
}

impl Deferred {
    /// The exit kind it is counted as (a PV trap may say more once served).
    fn kind(&self) -> ExitKind {
        match self {
            Deferred::Hypercall => ExitKind::Hypercall,
            Deferred::PvTrap(_) => ExitKind::PvBounce,
            Deferred::PvIret => ExitKind::PvIret,
            Deferred::PvSyscall => ExitKind::PvSyscall,
            Deferred::LstarWrite(_) | Deferred::HypercallPageWritten => ExitKind::Msr,
            Deferred::EmulationFailure => ExitKind::EmulationFailure,
            Deferred::TripleFault => ExitKind::Other,
        }
    }
}

/// The exit kind an exit served without the vCPU is counted as.
fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => ExitKind::PortIo,
        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => ExitKind::Mmio,
        VcpuExit::X86Rdmsr(_) | VcpuExit::X86Wrmsr(_) => ExitKind::Msr,
        _ => ExitKind::Other,
    }
}

pub struct Vcpu {
    pub id: u32,
    kvm: KvmVcpu,
    rt: Arc<VcpuShared>,
    /// Only installed on hosts without VT-x/SVM.
    pvm: Option<PvmWorkarounds>,
    /// Has entered the guest at least once.
    started: bool,
    /// vCPU 0 has reported its first entry.
    entry_noted: bool,
    /// A PV vCPU's virtual CR0.TS/CR2/CR4, user GS base and IOPL
    /// (`pv_emulate`); set on its first emulated instruction.
    pv_virtual: Option<kxen_pv::emulate::VirtualCpu>,
    /// What the PV trap being served turned out to be, for the counters.
    pv_trap_kind: Option<ExitKind>,
    /// Time the exit being served spent in SCHEDOP hypercalls: mostly the
    /// vCPU blocked, waiting for an event, which is idle time and not the
    /// cost of the exit.
    blocked_in_exit: Duration,
}

impl Vcpu {
    pub fn new(id: u32, fd: kvm_ioctls::VcpuFd, rt: Arc<VcpuShared>) -> Self {
        let pvm = PvmWorkarounds::for_this_host(id, rt.memory.clone(), rt.syscall_bridge.clone());
        Vcpu {
            id,
            kvm: KvmVcpu::new(fd),
            rt,
            pvm,
            started: id == 0,
            entry_noted: false,
            pv_virtual: None,
            pv_trap_kind: None,
            blocked_in_exit: Duration::ZERO,
        }
    }

    /// Count hypercall `nr`, served in `spent`.
    fn count_hypercall(&mut self, nr: u64, spent: Duration) {
        self.rt.perf.hypercall(self.id, nr, spent);
        if nr == xen_abi::hypercall::SCHED_OP {
            self.blocked_in_exit += spent;
        }
    }

    /// Measure guest TSC minus host TSC.
    pub fn measure_tsc_offset(&self) -> i64 {
        self.kvm.measure_tsc_offset()
    }

    /// The vCPU thread body.
    pub fn run(mut self) {
        self.kvm.bind_to_thread(self.id);
        // A VMM bug must end this domain, not leave the others waiting.
        let exit = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_state_machine()
        })) {
            Ok(exit) => exit,
            Err(_) => Some(DomainExit::Crashed(format!(
                "kxen-vmm internal error on vCPU {}",
                self.id
            ))),
        };
        self.kvm.unbind_from_thread();
        if let Some(exit) = exit {
            self.rt.request_exit(exit);
        }
        if let Some((regs, sregs)) = self.kvm.final_state() {
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

    fn run_state_machine(&mut self) -> Option<DomainExit> {
        let mut state = VcpuState::Offline;
        loop {
            state = match state {
                VcpuState::Offline => self.offline(),
                VcpuState::Starting => self.starting(),
                VcpuState::Running => self.running(),
                VcpuState::Stopped(exit) => return exit,
            };
        }
    }

    /// Wait until the vCPU is online.
    fn offline(&mut self) -> VcpuState {
        let domain = &self.rt.domain;
        if domain.is_stopping() || !domain.wait_online(self.id) {
            return VcpuState::Stopped(None);
        }
        if !self.entry_noted && self.id == 0 {
            self.entry_noted = true;
            self.rt.note_guest_entry();
        }
        if self.started {
            VcpuState::Running
        } else {
            VcpuState::Starting
        }
    }

    /// An AP about to run for the first time: the ACPI mailbox may have
    /// given it an entry point (the exit loop proper takes no lock for it).
    fn starting(&mut self) -> VcpuState {
        if let Some(pv) = self.rt.pv.clone() {
            // A PV vCPU starts where VCPUOP_initialise said.
            if let Some(start) = pv.take_start(self.id) {
                if let Err(e) = self.kvm.start_pv(self.id, &start) {
                    return VcpuState::Stopped(Some(DomainExit::Crashed(format!(
                        "starting PV vCPU {}: {e}",
                        self.id
                    ))));
                }
            }
            return VcpuState::Running;
        }
        if let Some(entry) = self.rt.ap_start.take(self.id) {
            if let Err(e) = self.kvm.start_ap_at(entry) {
                return VcpuState::Stopped(Some(DomainExit::Crashed(format!(
                    "starting vCPU {} at {entry:#x}: {e}",
                    self.id
                ))));
            }
            // An upcall raised while the AP was not running was dropped.
            self.rt.domain.reassert_upcall(self.id);
        }
        VcpuState::Running
    }

    /// One trip into the guest and back.
    fn running(&mut self) -> VcpuState {
        let domain = &self.rt.domain;
        if domain.is_stopping() {
            return VcpuState::Stopped(None);
        }
        if !domain.wait_online(self.id) {
            return VcpuState::Stopped(None);
        }
        let rt = self.rt.clone();
        let has_run = self.started;
        let kvm = &mut self.kvm;
        if !rt.enter_guest(self.id, &mut |job| snapshot::run_job(kvm, has_run, job)) {
            return VcpuState::Stopped(None);
        }
        let state = self.run_and_serve_exit();
        // Out only once the exit is served: a pause that returned while a
        // hypercall this vCPU had trapped was still to be served would
        // report the domain paused and then see it act.
        self.rt.leave_guest();
        state
    }

    /// KVM_RUN, then serve the exit it returned.
    fn run_and_serve_exit(&mut self) -> VcpuState {
        let entered = Instant::now();
        let run = self.kvm.run();
        let returned = Instant::now();
        self.rt.perf.ran(self.id, returned - entered);
        let exit = match run {
            Ok(exit) => exit,
            Err(RunError::Interrupted) => {
                self.kvm.clear_immediate_exit();
                self.rt
                    .perf
                    .exit(self.id, ExitKind::Other, returned.elapsed(), Duration::ZERO);
                return VcpuState::Running;
            }
            Err(RunError::Failed(e)) => {
                return VcpuState::Stopped(Some(DomainExit::Crashed(format!(
                    "KVM_RUN failed: {e}"
                ))))
            }
        };
        if !self.started {
            self.started = true;
            self.rt.domain.vcpu_started(self.id);
        }
        let mut kind = exit_kind(&exit);
        let outcome = match Self::decode_exit(self.id, &self.rt, self.pvm.is_some(), exit) {
            Ok(outcome) => outcome,
            Err(deferred) => {
                kind = deferred.kind();
                let outcome = self.finish(deferred);
                kind = self.pv_trap_kind.take().unwrap_or(kind);
                outcome
            }
        };
        let blocked = std::mem::take(&mut self.blocked_in_exit);
        self.rt
            .perf
            .exit(self.id, kind, returned.elapsed(), blocked);
        match outcome {
            ExitOutcome::Continue => VcpuState::Running,
            ExitOutcome::Stop(exit) => VcpuState::Stopped(Some(exit)),
        }
    }

    /// Decode one exit and serve what needs only the exit's own data;
    /// what needs the vCPU's registers comes back as [`Deferred`].
    fn decode_exit(
        vcpu: u32,
        rt: &VcpuShared,
        pvm_host: bool,
        exit: VcpuExit<'_>,
    ) -> Result<ExitOutcome, Deferred> {
        let stop = |exit| Ok(ExitOutcome::Stop(exit));
        match exit {
            VcpuExit::IoOut(port, data) => {
                let answer = rt.hvm.as_ref().and_then(|d| d.pio.write(port as u64, data));
                match BusWrite::from_bus(answer) {
                    BusWrite::Platform(request) => return stop(platform_exit(vcpu, request)),
                    BusWrite::Done => {}
                    BusWrite::Unclaimed if port == HYPERCALL_PORT => {
                        return Err(Deferred::Hypercall)
                    }
                    BusWrite::Unclaimed if port == crate::debug_port::DEBUG_PORT => {
                        rt.debug_console.write(data)
                    }
                    BusWrite::Unclaimed => {
                        if let Some(exit) = unclaimed_port_write(vcpu, port, data) {
                            return stop(exit);
                        }
                    }
                }
            }
            VcpuExit::IoIn(port, data) => {
                let claimed = rt
                    .hvm
                    .as_ref()
                    .is_some_and(|d| d.pio.read(port as u64, data));
                if !claimed {
                    unclaimed_port_read(vcpu, port, data);
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                if !rt.hvm.as_ref().is_some_and(|d| d.mmio.read(addr, data)) {
                    data.fill(0xff);
                    trace!(vcpu, addr, "unclaimed MMIO read");
                }
            }
            VcpuExit::MmioWrite(addr, data)
                if addr == crate::pv::PV_HYPERCALL_GPA && rt.pv.is_some() =>
            {
                let nr = data.first_chunk::<4>().map(|b| u32::from_le_bytes(*b));
                if nr == Some(crate::pv::HYPERCALL_IRET) {
                    return Err(Deferred::PvIret);
                }
                return Err(Deferred::Hypercall);
            }
            VcpuExit::MmioWrite(addr, data)
                if addr == crate::pv::PV_TRAP_EXIT_GPA && rt.pv.is_some() =>
            {
                return Err(Deferred::PvTrap(data.first().copied().unwrap_or(0)))
            }
            VcpuExit::MmioWrite(addr, _)
                if addr == crate::pv::PV_SYSCALL_EXIT_GPA && rt.pv.is_some() =>
            {
                return Err(Deferred::PvSyscall)
            }
            VcpuExit::MmioWrite(addr, data) => {
                let answer = rt.hvm.as_ref().and_then(|d| d.mmio.write(addr, data));
                match BusWrite::from_bus(answer) {
                    BusWrite::Platform(request) => return stop(platform_exit(vcpu, request)),
                    BusWrite::Done => {}
                    BusWrite::Unclaimed => trace!(vcpu, addr, "unclaimed MMIO write"),
                }
            }
            VcpuExit::X86Wrmsr(msr) => {
                let (index, data) = (msr.index, msr.data);
                // Only filtered with the syscall bridge, a PVM-host hook.
                let lstar = index == MSR_LSTAR && pvm_host && rt.syscall_bridge.is_some();
                let ok = if lstar {
                    // 5-level paging is not offered to guests.
                    is_canonical(data, 48)
                } else {
                    index == XEN_HYPERCALL_MSR && install_hypercall_page(rt, vcpu, data)
                };
                if !ok {
                    debug!(vcpu, index, data, "refused MSR write: #GP");
                    *msr.error = 1;
                } else if lstar {
                    return Err(Deferred::LstarWrite(data));
                } else if rt.pv.is_none() {
                    // Xen latches the shared_info layout from the vCPU's
                    // mode when the hypercall page is written.
                    return Err(Deferred::HypercallPageWritten);
                }
            }
            VcpuExit::X86Rdmsr(msr) => {
                debug!(vcpu, index = msr.index, "MSR read: #GP");
                *msr.error = 1;
            }
            VcpuExit::Hlt => {
                // The in-kernel LAPIC handles HLT; only reached if a vCPU
                // halts with interrupts it can never get.
                return stop(DomainExit::Crashed(format!(
                    "vCPU {vcpu} halted with no way to wake"
                )));
            }
            VcpuExit::Shutdown => return Err(Deferred::TripleFault),
            VcpuExit::InternalError => return Err(Deferred::EmulationFailure),
            VcpuExit::FailEntry(reason, cpu) => {
                return stop(DomainExit::Crashed(format!(
                    "VM entry failed on vCPU {vcpu} (hardware reason {reason:#x}, cpu {cpu})"
                )));
            }
            VcpuExit::SystemEvent(kind, _) => {
                info!(vcpu, kind, "system event");
                let reason = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => xen_abi::sched::SHUTDOWN_REBOOT,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => xen_abi::sched::SHUTDOWN_CRASH,
                    _ => xen_abi::sched::SHUTDOWN_POWEROFF,
                };
                return stop(DomainExit::Shutdown(reason));
            }
            VcpuExit::Intr => {}
            other => {
                warn!(vcpu, exit = ?other, "unexpected exit");
                return stop(DomainExit::Crashed(format!(
                    "unexpected exit on vCPU {vcpu}: {other:?}"
                )));
            }
        }
        Ok(ExitOutcome::Continue)
    }

    /// The part of an exit that needs the vCPU itself.
    fn finish(&mut self, deferred: Deferred) -> ExitOutcome {
        match deferred {
            Deferred::Hypercall => match self.rt.pv.clone() {
                // A bounce or event delivery that cannot complete after
                // a PV hypercall crashes the domain, as on Xen.
                Some(pv) => match self.pv_hypercall(&pv) {
                    Ok(()) => ExitOutcome::Continue,
                    Err(msg) => ExitOutcome::Stop(DomainExit::Crashed(msg)),
                },
                None => {
                    self.hypercall();
                    ExitOutcome::Continue
                }
            },
            Deferred::PvTrap(vector) => match self.pv_trap(vector) {
                Ok(()) => ExitOutcome::Continue,
                Err(msg) => ExitOutcome::Stop(DomainExit::Crashed(msg)),
            },
            Deferred::PvIret => match self.pv_iret() {
                Ok(()) => ExitOutcome::Continue,
                Err(msg) => ExitOutcome::Stop(DomainExit::Crashed(msg)),
            },
            Deferred::PvSyscall => match self.pv_syscall() {
                Ok(()) => ExitOutcome::Continue,
                Err(msg) => ExitOutcome::Stop(DomainExit::Crashed(msg)),
            },
            Deferred::LstarWrite(lstar) => {
                if let Some(pvm) = &self.pvm {
                    pvm.handle(&mut self.kvm, PvmEvent::LstarWrite(lstar));
                }
                ExitOutcome::Continue
            }
            Deferred::HypercallPageWritten => {
                let long_mode = kvm::in_64bit_code(&self.kvm.sregs());
                let domain = &self.rt.domain;
                let mut st = domain.lock();
                domain.latch_shared_info_layout(&mut st, long_mode);
                ExitOutcome::Continue
            }
            Deferred::EmulationFailure => {
                let handled = self
                    .pvm
                    .as_ref()
                    .is_some_and(|pvm| pvm.handle(&mut self.kvm, PvmEvent::EmulationFailure));
                if handled {
                    ExitOutcome::Continue
                } else {
                    ExitOutcome::Stop(DomainExit::Crashed(self.describe_internal_error()))
                }
            }
            Deferred::TripleFault => {
                let rip = self.kvm.regs().rip;
                let mut msg = format!("triple fault on vCPU {} (rip {rip:#x})", self.id);
                if let Some(refused) =
                    self.kvm
                        .fetch_instruction(&self.rt.memory)
                        .and_then(|insn| {
                            triple_fault::paging_outside_long_mode(
                                &insn,
                                &self.kvm.regs(),
                                &self.kvm.sregs(),
                            )
                        })
                {
                    msg.push_str(&format!(": {refused}"));
                    if self.pvm.is_some() {
                        // Measured: every CR0.PG write without EFER.LME gets
                        // #GP inside KVM on PVM hosts, with no exit to us.
                        msg.push_str(
                            ", which this host's KVM (PVM) refuses with #GP; \
                             32-bit paging guests cannot run on PVM hosts",
                        );
                    }
                }
                ExitOutcome::Stop(DomainExit::Crashed(msg))
            }
        }
    }

    /// Serve the hypercall whose number the guest wrote to the port.
    fn hypercall(&mut self) {
        let started = Instant::now();
        let (regs, sregs) = (self.kvm.regs(), self.kvm.sregs());
        // Xen refuses hypercalls from guest user mode (hvm_hypercall).
        let result = if sregs.ss.dpl != 0 {
            -xen_abi::errno::EPERM
        } else {
            let long_mode = kvm::in_64bit_code(&sregs);
            // Xen's two hypercall ABIs: 64-bit passes rdi, rsi, rdx, r10,
            // r8; 32-bit passes ebx, ecx, edx, esi, edi, and its structs
            // in the compat layout. The mode now decides, per call.
            let call = if long_mode {
                Call::native(
                    regs.rax & 0xffff_ffff,
                    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
                )
            } else {
                Call::compat(regs.rax, [regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi])
            };
            let paging = self.kvm.paging_regs_from(&sregs);
            let r = self.kvm.with_mmu(&self.rt.memory, paging, |mmu| {
                self.rt.domain.hypercall(self.id, mmu, call)
            });
            if long_mode {
                r
            } else {
                r as i32 as u32 as i64
            }
        };
        self.kvm.regs_mut().rax = result as u64;
        self.count_hypercall(regs.rax & 0xffff_ffff, started.elapsed());
    }

    fn describe_internal_error(&mut self) -> String {
        let internal = self.kvm.internal_error();
        let rip = self.kvm.regs().rip;
        let emulation = internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
        let mut msg = format!(
            "KVM internal error on vCPU {} (suberror {}{}) at rip {rip:#x}",
            self.id,
            internal.suberror,
            if emulation {
                ": instruction emulation failed"
            } else {
                ""
            }
        );
        match internal.instruction_bytes() {
            Some(bytes) => {
                msg.push_str(&format!(", insn bytes {bytes:02x?}"));
                if let Some(at_rip) = self.kvm.fetch_instruction(&self.rt.memory) {
                    let decoded = crate::insn::describe(&at_rip, self.kvm.code_bitness());
                    msg.push_str(&format!(
                        ", bytes at rip {at_rip:02x?} ({decoded}): no architectural answer"
                    ));
                }
            }
            None => msg.push_str(&format!(", data {:#x?}", internal.data)),
        }
        error!("{msg}");
        msg
    }
}

/// A port write no emulated device claimed (other than the hypercall
/// port): the benchmark port and the ACPI fixed registers.
fn unclaimed_port_write(vcpu: u32, port: u16, data: &[u8]) -> Option<DomainExit> {
    match port {
        NULL_PORT => {}
        acpi::SLEEP_CONTROL_PORT => {
            match acpi::decode_sleep_control(data.first().copied().unwrap_or(0)) {
                Some(acpi::SleepRequest::SoftOff) => {
                    info!(vcpu, "ACPI soft-off (S5)");
                    return Some(DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_POWEROFF));
                }
                Some(acpi::SleepRequest::Unsupported(kind)) => {
                    debug!(vcpu, kind, "ACPI sleep type not supported");
                }
                None => {}
            }
        }
        // Bit 2 of the reset control register resets the CPU.
        acpi::RESET_PORT if data.first().is_some_and(|v| v & 0x4 != 0) => {
            info!(vcpu, "reset through the reset register");
            return Some(DomainExit::Shutdown(xen_abi::sched::SHUTDOWN_REBOOT));
        }
        _ => trace!(vcpu, port, "unclaimed port write"),
    }
    None
}

/// Fill the hypercall page at the GPA written to the MSR (low 12 bits:
/// page index, and we have one page).
fn install_hypercall_page(rt: &VcpuShared, vcpu: u32, value: u64) -> bool {
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
