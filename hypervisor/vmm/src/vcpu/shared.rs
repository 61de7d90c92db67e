//! What a vCPU thread shares with the rest of the VMM: the domain, guest
//! memory, the device buses, the guest entry gate, the AP entry points and
//! the exit latch; nothing else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxen_xen::Domain;

use super::gate::GuestEntryGate;
use crate::ap_start::ApStarter;
use crate::debug_port::DebugConsole;
use crate::exit::{DomainExit, ExitLatch};
use crate::hvm::HvmDevices;
use crate::memory::GuestMemory;
use crate::syscall_bridge::SyscallBridge;

pub struct VcpuShared {
    pub domain: Arc<Domain>,
    pub memory: Arc<GuestMemory>,
    /// AP entry points from the ACPI MP wakeup mailbox.
    pub ap_start: Arc<ApStarter>,
    /// Emulated devices (HVM domains only).
    pub hvm: Option<Arc<HvmDevices>>,
    /// User-mode `syscall` for stock kernels (HVM domains on PVM hosts).
    pub syscall_bridge: Option<Arc<SyscallBridge>>,
    pub exit: Arc<ExitLatch>,
    /// The PV machine (PV domains only): the PV MMU hypercalls.
    pub pv: Option<Arc<crate::pv::PvMachine>>,
    /// Port 0xE9: the guest's debug console lines.
    pub debug_console: DebugConsole,
    /// Pausing: keeps the vCPUs out of guest mode.
    pub gate: Arc<GuestEntryGate>,
    /// When the process started, and how long until vCPU 0 first entered
    /// the guest.
    pub started: Instant,
    pub entry: Mutex<Option<Duration>>,
    /// Exit counters and KVM's statistics (`perf-counters`).
    pub perf: Arc<crate::perf::PerfCounters>,
}

impl VcpuShared {
    /// First caller decides how the domain ended; everyone is told to stop.
    pub fn request_exit(&self, why: DomainExit) {
        self.exit.request_exit(why);
    }

    /// Called by a vCPU about to enter the guest: registers it as in guest
    /// mode unless paused, in which case it waits. False if the domain ends.
    /// `serve` runs the save or restore jobs posted for `vcpu` meanwhile.
    pub fn enter_guest(
        &self,
        vcpu: u32,
        serve: &mut dyn FnMut(super::snapshot::VcpuJob) -> super::snapshot::VcpuJobResult,
    ) -> bool {
        self.gate.enter_serving(vcpu, serve)
    }

    pub fn leave_guest(&self) {
        self.gate.leave();
    }

    pub fn note_guest_entry(&self) {
        let mut entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        entry.get_or_insert_with(|| self.started.elapsed());
    }

    pub fn guest_entry_after(&self) -> Option<Duration> {
        *self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }
}
