//! The one place a vCPU thread calls KVM: entering the guest, the
//! registers an exit leaves behind, MSRs, FPU state, event injection and
//! guest memory seen through the vCPU's own page tables.
//!
//! Registers come from the sync-regs area KVM fills on every exit, so
//! reading them costs no ioctl; [`KvmVcpu::regs_mut`] marks them for KVM to
//! load on the next entry. Guest-virtual accesses go through the software
//! page walk of [`kxen_xen::guest::paging`], with the vCPU's CR0/CR3/CR4/
//! EFER and CPL: they fault where the vCPU itself would.

use std::cell::Cell;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use tracing::{debug, warn};

use kxen_xen::guest::paging::{PageWalker, PagingRegs};
use kxen_xen::guest::{GuestAccess, VcpuMmu};

use crate::insn::{CpuState, GuestFeatures, MAX_INSN_LEN};
use crate::memory::GuestMemory;

/// EFER.LMA: the vCPU is in long mode.
pub const EFER_LMA: u64 = 1 << 10;

thread_local! {
    /// This thread's kvm_run, so the kick signal handler can set
    /// immediate_exit and close the race with entering KVM_RUN.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal handler for vCPU kicks.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's kvm_run mapping, published by
            // `KvmVcpu::bind_to_thread` and cleared before the mapping goes
            // away; a single byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Long mode with a 64-bit code segment.
pub fn in_64bit_code(sregs: &kvm_sregs) -> bool {
    sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0
}

/// Why a KVM_RUN returned without an exit to handle.
pub enum RunError {
    /// A kick (signal or immediate_exit): nothing to do but look around.
    Interrupted,
    Failed(kvm_ioctls::Error),
}

/// What KVM reports with `KVM_EXIT_INTERNAL_ERROR`.
pub struct InternalError {
    pub suberror: u32,
    /// The `data` words KVM filled.
    pub data: Vec<u64>,
}

impl InternalError {
    /// For an emulation failure: the instruction bytes KVM tried (data[1]
    /// is the length, data[2..] the bytes).
    pub fn instruction_bytes(&self) -> Option<Vec<u8>> {
        if self.suberror != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION || self.data.len() < 3 {
            return None;
        }
        let len = (self.data[1] as usize).min(MAX_INSN_LEN);
        Some(
            self.data[2..]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take(len)
                .collect(),
        )
    }
}

pub struct KvmVcpu {
    fd: VcpuFd,
    /// The guest's MAXPHYADDR, for the page walk's reserved-bit checks.
    phys_addr_bits: u8,
    /// What the vCPU's CPUID offers of the features instructions are
    /// refused for (VMX, SVM).
    features: GuestFeatures,
}

impl KvmVcpu {
    pub fn new(fd: VcpuFd) -> Self {
        KvmVcpu {
            fd,
            phys_addr_bits: 36,
            features: GuestFeatures::default(),
        }
    }

    /// Prepare the calling thread to run this vCPU: synced registers on
    /// every exit, the kick handler's view of kvm_run, MAXPHYADDR.
    pub fn bind_to_thread(&mut self, vcpu: u32) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        match self.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
            Ok(table) => {
                self.phys_addr_bits = crate::cpuid::phys_addr_bits(&table);
                self.features = GuestFeatures::from_cpuid(
                    table
                        .as_slice()
                        .iter()
                        .map(|e| (e.function, e.index, e.ecx)),
                );
            }
            Err(e) => warn!(
                vcpu,
                "KVM_GET_CPUID2: {e}; assuming MAXPHYADDR 36 and no VMX/SVM"
            ),
        }
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
    }

    /// Undo [`Self::bind_to_thread`]'s kick registration.
    pub fn unbind_from_thread(&self) {
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    /// One KVM_RUN. After [`RunError::Interrupted`] call
    /// [`Self::clear_immediate_exit`] (the exit's borrow of kvm_run keeps
    /// this function from doing it).
    pub fn run(&mut self) -> Result<VcpuExit<'_>, RunError> {
        self.fd.run().map_err(|e| {
            if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN {
                RunError::Interrupted
            } else {
                RunError::Failed(e)
            }
        })
    }

    /// The vCPU's fd, for the state moves of a save or restore
    /// (`crate::vcpu::snapshot`), which run on this thread.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Finish the exit KVM last returned so the vCPU's state is whole: an
    /// I/O exit's instruction completes only on the next KVM_RUN, and the
    /// registers an exit's service changed are still in the synced area.
    /// One KVM_RUN with immediate_exit set does both and enters nothing.
    pub fn complete_pending_exit(&mut self) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_kvm_immediate_exit(1);
        let result = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match result {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            // Nothing entered the guest (immediate exit): an exit without
            // EINTR would be a KVM that ignores the flag.
            Ok(()) => Ok(()),
        }
    }

    /// Re-arm the kick after it interrupted KVM_RUN.
    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// The general registers KVM synced on the last exit.
    pub fn regs(&self) -> kvm_regs {
        self.fd.sync_regs().regs
    }

    /// The system registers KVM synced on the last exit.
    pub fn sregs(&self) -> kvm_sregs {
        self.fd.sync_regs().sregs
    }

    /// The registers, to change; KVM loads them on the next entry.
    pub fn regs_mut(&mut self) -> &mut kvm_regs {
        self.fd.set_sync_dirty_reg(SyncReg::Register);
        &mut self.fd.sync_regs_mut().regs
    }

    /// Load a new CR3 (a PV base pointer switch): the synced system
    /// registers with CR3 changed, written back at once so that the
    /// change cannot be lost to a later synced-register update.
    pub fn set_cr3(&mut self, cr3: u64) -> bool {
        let mut sregs = self.sregs();
        sregs.cr3 = cr3;
        let ok = self.fd.set_sregs(&sregs).is_ok();
        if ok {
            self.fd.sync_regs_mut().sregs.cr3 = cr3;
        }
        ok
    }

    /// Load CS and SS (a PV exception bounced from the CPL0 exit stub
    /// back to the PV kernel at CPL3): the synced system registers with
    /// the two segments changed, written back at once as in
    /// [`Self::set_cr3`].
    pub fn set_code_and_stack(&mut self, cs: kvm_segment, ss: kvm_segment) -> bool {
        let mut sregs = self.sregs();
        sregs.cs = cs;
        sregs.ss = ss;
        let ok = self.fd.set_sregs(&sregs).is_ok();
        if ok {
            let synced = &mut self.fd.sync_regs_mut().sregs;
            synced.cs = cs;
            synced.ss = ss;
        }
        ok
    }

    /// Change the system registers with `change` and load them at once
    /// (one KVM_SET_SREGS for a PV mode switch: CS/SS, CR3 and the
    /// segment bases together), keeping the synced copy in step.
    pub fn update_sregs(&mut self, change: impl FnOnce(&mut kvm_sregs)) -> bool {
        let mut sregs = self.sregs();
        change(&mut sregs);
        let ok = self.fd.set_sregs(&sregs).is_ok();
        if ok {
            self.fd.sync_regs_mut().sregs = sregs;
        }
        ok
    }

    /// Load system registers (a PV instruction emulated from the CPL0
    /// exit stub: CS/SS back to the kernel's, FS/GS bases), written back
    /// at once as in [`Self::set_cr3`].
    pub fn set_system_registers(&mut self, sregs: &kvm_sregs) -> bool {
        let ok = self.fd.set_sregs(sregs).is_ok();
        if ok {
            self.fd.sync_regs_mut().sregs = *sregs;
        }
        ok
    }

    /// The vCPU's CPUID table, as KVM holds it.
    pub fn cpuid_table(&self) -> Option<kvm_bindings::CpuId> {
        self.fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| warn!("KVM_GET_CPUID2: {e}"))
            .ok()
    }

    /// The privilege level the vCPU runs at.
    pub fn cpl(&self) -> u8 {
        self.sregs().ss.dpl
    }

    /// 64-bit code (long mode with a 64-bit code segment).
    pub fn in_64bit_code(&self) -> bool {
        in_64bit_code(&self.sregs())
    }

    /// The code segment's default operand size: 64, 32 or 16.
    pub fn code_bitness(&self) -> u32 {
        let sregs = self.sregs();
        if in_64bit_code(&sregs) {
            64
        } else if sregs.cs.db != 0 {
            32
        } else {
            16
        }
    }

    /// What deciding an instruction's outcome needs of this vCPU.
    pub fn cpu_state(&self) -> CpuState {
        let (r, s) = (self.regs(), self.sregs());
        let bitness = self.code_bitness();
        // In 64-bit code only FS and GS have bases.
        let flat = |base: u64| if bitness == 64 { 0 } else { base };
        CpuState {
            bitness,
            cpl: s.ss.dpl,
            cr0: s.cr0,
            cr4: s.cr4,
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            segment_bases: [
                flat(s.es.base),
                flat(s.cs.base),
                flat(s.ss.base),
                flat(s.ds.base),
                s.fs.base,
                s.gs.base,
            ],
            features: self.features,
        }
    }

    /// What the guest's page tables are walked with: the paging registers
    /// from the synced sregs (no ioctl) and the CPL.
    pub fn paging_regs(&self) -> PagingRegs {
        self.paging_regs_from(&self.sregs())
    }

    /// [`Self::paging_regs`] from system registers already read.
    pub fn paging_regs_from(&self, sregs: &kvm_sregs) -> PagingRegs {
        PagingRegs {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cpl: sregs.ss.dpl,
            phys_addr_bits: self.phys_addr_bits,
        }
    }

    /// Run `f` with the guest's memory seen through this vCPU's page
    /// tables, as `regs` say (usually [`Self::paging_regs`]).
    pub fn with_guest<R>(
        &self,
        memory: &GuestMemory,
        regs: PagingRegs,
        f: impl FnOnce(&GuestAccess) -> R,
    ) -> R {
        let mem = memory.snapshot();
        let mmu = PageWalker::new(&mem, regs);
        f(&GuestAccess {
            mem: &mem,
            mmu: &mmu,
        })
    }

    /// Run `f` with this vCPU's page-table walker as `regs` say, for a
    /// hypercall.
    pub fn with_mmu<R>(
        &self,
        memory: &GuestMemory,
        regs: PagingRegs,
        f: impl FnOnce(&dyn VcpuMmu) -> R,
    ) -> R {
        let mem = memory.snapshot();
        f(&PageWalker::new(&mem, regs))
    }

    /// Copy guest-virtual memory out as the vCPU at its CPL could read it.
    /// False if any page faults.
    pub fn read_virtual(&self, memory: &GuestMemory, gva: u64, buf: &mut [u8]) -> bool {
        self.with_guest(memory, self.paging_regs(), |g| g.read(gva, buf).is_ok())
    }

    /// Copy into guest-virtual memory; every page is checked before
    /// anything is written.
    pub fn write_virtual(&self, memory: &GuestMemory, gva: u64, data: &[u8]) -> bool {
        self.with_guest(memory, self.paging_regs(), |g| g.write(gva, data).is_ok())
    }

    /// Where `gva` lies, for the VMM's own use (no permission check, no
    /// Accessed bit).
    pub fn probe_gpa(&self, memory: &GuestMemory, gva: u64) -> Option<u64> {
        let mem = memory.snapshot();
        let walker = PageWalker::new(&mem, self.paging_regs().as_supervisor());
        walker.probe(gva).ok().map(|t| t.gpa)
    }

    /// Up to 15 bytes at CS:RIP, read as an instruction fetch; fewer if
    /// the second page faults.
    pub fn fetch_instruction(&self, memory: &GuestMemory) -> Option<Vec<u8>> {
        let rip = if self.in_64bit_code() {
            self.regs().rip
        } else {
            self.sregs().cs.base.wrapping_add(self.regs().rip) & 0xffff_ffff
        };
        self.with_guest(memory, self.paging_regs(), |g| {
            // One walk per page (at most two), not per byte: this runs on
            // every emulation exit, `clac`/`stac` on each user access.
            let mut bytes = [0u8; MAX_INSN_LEN];
            let in_first_page = ((0x1000 - (rip & 0xfff)) as usize).min(bytes.len());
            g.fetch(rip, &mut bytes[..in_first_page]).ok()?;
            let second = rip.wrapping_add(in_first_page as u64);
            let len = if g.fetch(second, &mut bytes[in_first_page..]).is_ok() {
                bytes.len()
            } else {
                in_first_page
            };
            Some(bytes[..len].to_vec())
        })
    }

    /// Read MSRs; `None` unless KVM returned all of them.
    pub fn get_msrs<const N: usize>(&self, indices: [u32; N]) -> Option<[u64; N]> {
        let entries = indices.map(|index| kvm_msr_entry {
            index,
            ..Default::default()
        });
        let mut msrs = Msrs::from_entries(&entries).ok()?;
        if self.fd.get_msrs(&mut msrs).ok()? != N {
            return None;
        }
        let mut values = [0u64; N];
        for (v, e) in values.iter_mut().zip(msrs.as_slice()) {
            *v = e.data;
        }
        Some(values)
    }

    /// Write one MSR; false (and a warning) if KVM refused.
    pub fn set_msr(&self, index: u32, data: u64) -> bool {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }]);
        match msrs.map(|m| self.fd.set_msrs(&m)) {
            Ok(Ok(1)) => true,
            other => {
                warn!(index, ?other, "KVM_SET_MSRS failed");
                false
            }
        }
    }

    /// Guest TSC minus host TSC, never more than the true difference: a
    /// guest TSC read (KVM_GET_MSRS) between two host reads is placed at
    /// the later one. An offset too high publishes a `tsc_timestamp` ahead
    /// of the guest's TSC, and a guest reading its pvclock just after then
    /// scales a negative delta as an unsigned one: Debian's PV kernel saw
    /// its clock jump 225 years (sched_clock 7094901621 s) and its vCPUs
    /// stall. Too low by the window only makes the guest's clock that many
    /// cycles early. The narrowest of several brackets wins: a thread
    /// preempted inside one (a loaded host) could have read the guest TSC
    /// anywhere in it, and the error skews the guest's pvclock against the
    /// domain's timers for good (a 20 ms SCHEDOP_poll was seen returning
    /// 0.46 ms early by the guest's clock).
    pub fn measure_tsc_offset(&self) -> i64 {
        const MSR_IA32_TSC: u32 = 0x10;
        const SAMPLES: usize = 16;
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..SAMPLES {
            let before = kxen_xen::time::host_tsc();
            let Some([guest]) = self.get_msrs([MSR_IA32_TSC]) else {
                continue;
            };
            let after = kxen_xen::time::host_tsc();
            let window = after.wrapping_sub(before);
            let offset = (guest as i64).wrapping_sub(after as i64);
            if best.is_none_or(|(narrowest, _)| window < narrowest) {
                best = Some((window, offset));
            }
        }
        best.map_or(0, |(_, offset)| offset)
    }

    pub fn get_fpu(&self) -> Option<kvm_fpu> {
        self.fd
            .get_fpu()
            .map_err(|e| warn!("KVM_GET_FPU: {e}"))
            .ok()
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> bool {
        self.fd
            .set_fpu(fpu)
            .map_err(|e| warn!("KVM_SET_FPU: {e}"))
            .is_ok()
    }

    /// Deliver a fault to the guest at the current instruction.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> bool {
        let mut events = match self.fd.get_vcpu_events() {
            Ok(ev) => ev,
            Err(e) => {
                warn!("KVM_GET_VCPU_EVENTS: {e}");
                return false;
            }
        };
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        if let Err(e) = self.fd.set_vcpu_events(&events) {
            warn!("KVM_SET_VCPU_EVENTS: {e}");
            return false;
        }
        debug!(vector, "exception injected");
        true
    }

    /// The internal-error report of the exit just taken. Only meaningful
    /// right after `KVM_EXIT_INTERNAL_ERROR`.
    pub fn internal_error(&mut self) -> InternalError {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only after KVM_RUN returned
        // KVM_EXIT_INTERNAL_ERROR, so the kernel filled the `internal`
        // member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }

    /// Put an application processor in long mode at `entry`.
    pub fn start_ap_at(&self, entry: u64) -> Result<(), crate::error::VmError> {
        crate::boot_cpu::setup_long_mode_ap(&self.fd, entry)
    }

    /// Start PV vCPU `vcpu` from its VCPUOP_initialise state.
    pub fn start_pv(
        &self,
        vcpu: u32,
        start: &crate::pv::PvStart,
    ) -> Result<(), crate::error::VmError> {
        crate::boot_cpu::setup_pv_vcpu(&self.fd, vcpu, start)
    }

    /// The registers by ioctl, for the thread's last words (the synced
    /// copy may be stale once the loop stopped).
    pub fn final_state(&self) -> Option<(kvm_regs, kvm_sregs)> {
        Some((self.fd.get_regs().ok()?, self.fd.get_sregs().ok()?))
    }
}
