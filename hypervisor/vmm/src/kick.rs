//! Getting vCPU threads out of KVM_RUN: the kicker (a signal to the
//! thread) and pausing (the guest entry gate closed, then a kick to each).

use std::sync::{Arc, Mutex};

use vmm_sys_util::signal::SIGRTMIN;

use crate::vcpu::gate::GuestEntryGate;

/// Kicks vCPU threads out of KVM_RUN.
#[derive(Default)]
pub struct Kicker {
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl Kicker {
    pub fn kick(&self, vcpu: u32) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(tid)) = threads.get(vcpu as usize) {
            // SAFETY: `tid` names a live vCPU thread: entries are cleared
            // before the thread is joined. The signal's handler only sets a
            // flag.
            unsafe { libc::pthread_kill(*tid, SIGRTMIN()) };
        }
    }

    /// vCPU `vcpu`'s thread (threads register in vCPU order).
    pub fn register(&self, vcpu: u32, thread: libc::pthread_t) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let index = vcpu as usize;
        if threads.len() <= index {
            threads.resize(index + 1, None);
        }
        threads[index] = Some(thread);
    }

    /// Forget vCPU `vcpu`'s thread, before it is joined.
    pub fn forget(&self, vcpu: u32) {
        if let Some(slot) = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(vcpu as usize)
        {
            *slot = None;
        }
    }
}

/// Pausing and unpausing the whole domain (`xl pause`).
pub struct Pauser {
    pub gate: Arc<GuestEntryGate>,
    pub kicker: Arc<Kicker>,
    pub nr_vcpus: u32,
}

impl Pauser {
    /// Stop every vCPU from running guest code; returns once none is in
    /// guest mode (or after a second, if one is stuck in the kernel).
    pub fn pause(&self) {
        self.gate.pause(|| {
            for vcpu in 0..self.nr_vcpus {
                self.kicker.kick(vcpu);
            }
        });
    }

    pub fn unpause(&self) {
        self.gate.unpause();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }
}
