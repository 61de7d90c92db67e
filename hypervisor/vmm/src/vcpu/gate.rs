//! The door between the vCPU threads and guest mode: pausing the domain
//! closes it and waits until every vCPU is out.
//!
//! A vCPU passes [`GuestEntryGate::enter`] before each KVM_RUN and
//! [`GuestEntryGate::leave`] once it has served the exit KVM_RUN returned,
//! so a paused domain has no exit half served (a hypercall it trapped
//! before the pause is answered before `pause` returns, never after). A
//! vCPU that waits inside the hypervisor for an event (SCHEDOP_block,
//! SCHEDOP_poll) leaves for the wait and [`GuestEntryGate::resume`]s after
//! it, so a blocked domain pauses at once. Each is one atomic update and
//! one load while the domain runs. [`GuestEntryGate::pause`] closes the
//! gate, kicks the vCPUs out of KVM_RUN and sleeps on a condition variable
//! that the last vCPU to leave signals; nothing polls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

use super::snapshot::{VcpuJob, VcpuJobResult};

/// How long [`GuestEntryGate::pause`] waits for the vCPUs to leave.
const PAUSE_DEADLINE: Duration = Duration::from_secs(1);
/// If the vCPUs are not all out after this long, kick them again: a vCPU
/// thread that had not yet registered for kicks when the first went out
/// would otherwise sit in KVM_RUN until its next exit.
const REKICK_AFTER: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    /// The domain is ending: waiting vCPUs give up instead of entering.
    stopping: bool,
    /// Work for paused vCPUs (a save or restore), by vCPU.
    jobs: BTreeMap<u32, VcpuJob>,
    /// Their answers, until [`GuestEntryGate::run_jobs`] collects them.
    results: BTreeMap<u32, VcpuJobResult>,
}

/// Why [`GuestEntryGate::run_jobs`] got no answer from every vCPU.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("the domain is not paused")]
    NotPaused,
    #[error("the domain is stopping")]
    Stopping,
    #[error("vCPU {0} did not reach the paused entry gate within {1:?}")]
    Timeout(u32, Duration),
}

#[derive(Debug)]
pub struct GuestEntryGate {
    state: Mutex<GateState>,
    /// Mirror of `state.paused`, read without the lock on every entry.
    paused_fast: AtomicBool,
    /// vCPUs inside KVM_RUN, about to enter it, or serving its exit.
    in_guest: AtomicU32,
    /// Signalled when the pause lifts or the domain stops (vCPUs wait).
    opened: Condvar,
    /// Signalled when the last vCPU leaves guest mode while paused.
    drained: Condvar,
    /// Signalled when a vCPU has answered its job.
    served: Condvar,
}

impl GuestEntryGate {
    pub fn new(paused: bool) -> Self {
        GuestEntryGate {
            state: Mutex::new(GateState {
                paused,
                ..Default::default()
            }),
            paused_fast: AtomicBool::new(paused),
            in_guest: AtomicU32::new(0),
            opened: Condvar::new(),
            drained: Condvar::new(),
            served: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a vCPU as in guest mode, waiting while the domain is
    /// paused. False once the domain is stopping.
    pub fn enter(&self) -> bool {
        self.enter_serving(u32::MAX, &mut |_| Err("no job service".into()))
    }

    /// [`Self::enter`] for vCPU `vcpu`, which runs with `serve` the jobs
    /// [`Self::run_jobs`] posts for it while it waits.
    pub fn enter_serving(
        &self,
        vcpu: u32,
        serve: &mut dyn FnMut(VcpuJob) -> VcpuJobResult,
    ) -> bool {
        loop {
            self.in_guest.fetch_add(1, Ordering::SeqCst);
            // Ordered against pause(): it sets the flag, then reads
            // in_guest. One of the two sees the other's write.
            if !self.paused_fast.load(Ordering::SeqCst) {
                return true;
            }
            self.leave();
            let mut st = self.lock();
            while st.paused && !st.stopping {
                if let Some(job) = st.jobs.remove(&vcpu) {
                    // The job makes ioctls: not under the gate's lock.
                    drop(st);
                    let result = serve(job);
                    st = self.lock();
                    st.results.insert(vcpu, result);
                    self.served.notify_all();
                    continue;
                }
                st = self.opened.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stopping {
                return false;
            }
        }
    }

    /// Give each vCPU its job and wait up to `deadline` for all answers.
    /// The domain must be paused; a vCPU that is not at the gate (offline,
    /// or still inside a hypercall) makes this time out, and its job is
    /// withdrawn.
    pub fn run_jobs(
        &self,
        jobs: Vec<(u32, VcpuJob)>,
        deadline: Duration,
    ) -> Result<BTreeMap<u32, VcpuJobResult>, JobError> {
        let until = Instant::now() + deadline;
        let mut st = self.lock();
        if !st.paused {
            return Err(JobError::NotPaused);
        }
        let wanted: Vec<u32> = jobs.iter().map(|(vcpu, _)| *vcpu).collect();
        st.results.clear();
        st.jobs = jobs.into_iter().collect();
        self.opened.notify_all();
        loop {
            if st.stopping {
                st.jobs.clear();
                return Err(JobError::Stopping);
            }
            if let Some(missing) = wanted.iter().find(|v| !st.results.contains_key(v)) {
                let now = Instant::now();
                if now >= until {
                    let missing = *missing;
                    st.jobs.clear();
                    st.results.clear();
                    return Err(JobError::Timeout(missing, deadline));
                }
                st = self
                    .served
                    .wait_timeout(st, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                return Ok(std::mem::take(&mut st.results));
            }
        }
    }

    /// A vCPU that left to wait inside the hypervisor for an event goes
    /// on serving its exit. It does not wait for the gate: it answers the
    /// hypercall it is in (what it writes is the hypervisor's, as when Xen
    /// delivers to a paused domain) and stops at its next `enter`.
    pub fn resume(&self) {
        self.in_guest.fetch_add(1, Ordering::SeqCst);
    }

    /// The vCPU has served its exit from KVM_RUN, or starts waiting inside
    /// the hypervisor.
    pub fn leave(&self) {
        if self.in_guest.fetch_sub(1, Ordering::SeqCst) == 1
            && self.paused_fast.load(Ordering::SeqCst)
        {
            // Under the lock, so pause() cannot miss it between its check
            // of in_guest and its wait.
            let _st = self.lock();
            self.drained.notify_all();
        }
    }

    /// Close the gate and wait until no vCPU is in guest mode. `kick_all`
    /// forces the vCPUs out of KVM_RUN. False if one is still inside after
    /// [`PAUSE_DEADLINE`] (stuck in the kernel); the pause holds anyway.
    pub fn pause(&self, kick_all: impl Fn()) -> bool {
        {
            let mut st = self.lock();
            st.paused = true;
            self.paused_fast.store(true, Ordering::SeqCst);
        }
        kick_all();
        let deadline = Instant::now() + PAUSE_DEADLINE;
        let mut st = self.lock();
        loop {
            if self.in_guest.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                warn!(
                    in_guest = self.in_guest.load(Ordering::SeqCst),
                    "pause: vCPUs still in guest mode after {PAUSE_DEADLINE:?}"
                );
                return false;
            }
            let (guard, waited) = self
                .drained
                .wait_timeout(st, (deadline - now).min(REKICK_AFTER))
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            if waited.timed_out() && self.in_guest.load(Ordering::SeqCst) != 0 {
                drop(st);
                kick_all();
                st = self.lock();
            }
        }
    }

    /// Close the gate without waiting for the vCPUs to leave: for a vCPU
    /// thread that must not return to the guest (the domain suspended
    /// itself in its hypercall) and cannot wait for itself. Waiting is
    /// left to the next [`Self::pause`].
    pub fn close(&self) {
        let mut st = self.lock();
        st.paused = true;
        self.paused_fast.store(true, Ordering::SeqCst);
    }

    pub fn unpause(&self) {
        let mut st = self.lock();
        st.paused = false;
        // A stopping domain keeps its vCPUs on the slow path (see stop).
        self.paused_fast.store(st.stopping, Ordering::SeqCst);
        self.opened.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// The domain is ending: release every waiting vCPU for good.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        self.served.notify_all();
        // And send a vCPU about to enter the guest down the slow path,
        // where it sees `stopping`: once the domain's end is requested (a
        // SCHEDOP_shutdown, say, which never returns on Xen) no vCPU runs
        // another guest instruction.
        self.paused_fast.store(true, Ordering::SeqCst);
        self.opened.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_waits_for_the_vcpu_to_leave_and_unpause_lets_it_back() {
        let gate = Arc::new(GuestEntryGate::new(false));
        assert!(gate.enter());
        // A "vCPU" that leaves guest mode when kicked.
        let (kick_tx, kick_rx) = std::sync::mpsc::channel::<()>();
        let vcpu_gate = gate.clone();
        let vcpu = std::thread::spawn(move || {
            kick_rx.recv().expect("kick");
            vcpu_gate.leave();
            // Blocks until unpause.
            vcpu_gate.enter()
        });
        let kicks = std::sync::atomic::AtomicU32::new(0);
        assert!(gate.pause(|| {
            if kicks.fetch_add(1, Ordering::SeqCst) == 0 {
                kick_tx.send(()).expect("vCPU alive");
            }
        }));
        assert_eq!(gate.in_guest.load(Ordering::SeqCst), 0);
        assert!(gate.is_paused());
        gate.unpause();
        assert!(vcpu.join().expect("vCPU thread"));
        assert_eq!(gate.in_guest.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stopped_domain_lets_no_vcpu_back_into_the_guest() {
        let gate = GuestEntryGate::new(false);
        assert!(gate.enter());
        // The vCPU serves a shutdown hypercall: the domain's end is
        // requested while it is out of KVM_RUN.
        gate.leave();
        gate.stop();
        assert!(!gate.enter(), "a running vCPU must not re-enter");
        // Nor after an unpause that raced with the stop.
        gate.unpause();
        assert!(!gate.enter());
    }

    #[test]
    fn a_vcpu_blocked_in_the_hypervisor_does_not_hold_up_pause() {
        let gate = GuestEntryGate::new(false);
        assert!(gate.enter());
        // SCHEDOP_block: the vCPU waits inside the hypervisor.
        gate.leave();
        assert!(gate.pause(|| {}));
        // Woken while paused: it finishes the hypercall, then stops at
        // the gate.
        gate.resume();
        assert_eq!(gate.in_guest.load(Ordering::SeqCst), 1);
        gate.leave();
        assert_eq!(gate.in_guest.load(Ordering::SeqCst), 0);
        assert!(gate.is_paused());
    }

    #[test]
    fn stop_releases_a_paused_vcpu() {
        let gate = Arc::new(GuestEntryGate::new(true));
        let vcpu_gate = gate.clone();
        let vcpu = std::thread::spawn(move || vcpu_gate.enter());
        gate.stop();
        assert!(!vcpu.join().expect("vCPU thread"));
        assert_eq!(gate.in_guest.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_vcpu_that_closed_the_gate_in_its_exit_stops_at_its_next_entry() {
        let gate = Arc::new(GuestEntryGate::new(false));
        assert!(gate.enter());
        // It serves SCHEDOP_shutdown(SHUTDOWN_suspend) and closes the gate.
        gate.close();
        assert!(gate.is_paused());
        gate.leave();
        assert!(gate.pause(|| {}), "nothing left in the guest");
        let vcpu_gate = gate.clone();
        let vcpu = std::thread::spawn(move || vcpu_gate.enter());
        gate.unpause();
        assert!(vcpu.join().expect("vCPU thread"));
    }

    #[test]
    fn pause_with_no_vcpu_inside_returns_at_once() {
        let gate = GuestEntryGate::new(false);
        let start = Instant::now();
        assert!(gate.pause(|| {}));
        assert!(start.elapsed() < PAUSE_DEADLINE);
    }
}
