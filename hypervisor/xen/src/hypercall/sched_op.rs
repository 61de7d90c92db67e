//! SCHEDOP_* and set_timer_op (Xen's common/sched/core.c): yield, block,
//! poll, shutdown and the single-shot timer, all of which act on the
//! calling vCPU.

use xen_abi::errno::*;
use xen_abi::sched::*;
use xen_abi::vcpu::*;

use super::read_in_layout;
use crate::domain::Domain;
use crate::guest::GuestAccess;

impl Domain {
    /// `compat`: the caller is outside 64-bit mode (its sched_poll comes
    /// in the 32-bit layout).
    pub(super) fn sched_op(
        &self,
        vcpu: u32,
        g: &GuestAccess,
        cmd: u64,
        arg: u64,
        compat: bool,
    ) -> i64 {
        match cmd {
            SCHEDOP_YIELD => {
                std::thread::yield_now();
                0
            }
            SCHEDOP_BLOCK => {
                let mut st = self.lock();
                self.enable_event_delivery(&st, vcpu);
                self.set_runstate(&mut st, vcpu, RUNSTATE_BLOCKED);
                // Dom0 backends raise events without us: they read this
                // flag after setting pending bits, we set it before the
                // first check (a Dekker-style handshake).
                self.platform.set_blocked(vcpu, true);
                let mut st = self.wait_until(st, None, |d, s| d.upcall_pending(s, vcpu));
                self.platform.set_blocked(vcpu, false);
                self.set_runstate(&mut st, vcpu, RUNSTATE_RUNNING);
                0
            }
            SCHEDOP_SHUTDOWN => {
                let sd = read!(g, Shutdown, arg);
                if sd.reason > SHUTDOWN_MAX {
                    return -EINVAL;
                }
                // The hypercall returns 0 here, and so in the domain the
                // image is restored into; a cancelled suspend makes it 1
                // (the VMM rewrites the return, as xc_domain_resume does).
                if sd.reason == SHUTDOWN_SUSPEND {
                    self.request_suspend(vcpu);
                } else {
                    self.request_shutdown(sd.reason);
                }
                0
            }
            SCHEDOP_SHUTDOWN_CODE => {
                let sd = read!(g, Shutdown, arg);
                if sd.reason > SHUTDOWN_MAX {
                    return -EINVAL;
                }
                self.lock().shutdown_code = Some(sd.reason);
                0
            }
            SCHEDOP_POLL => self.poll(vcpu, g, arg, compat),
            // Shutting down other domains needs XSM_DM_PRIV.
            SCHEDOP_REMOTE_SHUTDOWN => -EPERM,
            _ => -ENOSYS,
        }
    }

    fn poll(&self, vcpu: u32, g: &GuestAccess, arg: u64, compat: bool) -> i64 {
        let Ok(req) = read_in_layout::<Poll, CompatPoll>(g, arg, compat) else {
            return -EFAULT;
        };
        if req.nr_ports > POLL_MAX_PORTS {
            return -EINVAL;
        }
        let mut ports = Vec::with_capacity(req.nr_ports as usize);
        for i in 0..req.nr_ports as u64 {
            let port: u32 = match g.read_elem(req.ports, i) {
                Ok(p) => p,
                Err(_) => return -EFAULT,
            };
            ports.push(port);
        }
        let mut st = self.lock();
        // Xen's do_poll: each port must be valid in the domain's table.
        if ports.iter().any(|&p| !st.ports.is_valid(p)) {
            return -EINVAL;
        }
        if ports.iter().any(|&p| self.port_is_pending(&st, p)) {
            return 0;
        }
        let deadline = (req.timeout != 0).then_some(req.timeout);
        self.set_runstate(&mut st, vcpu, RUNSTATE_BLOCKED);
        self.platform.set_blocked(vcpu, true);
        let mut st = self.wait_until(st, deadline, |d, s| {
            ports.iter().any(|&p| d.port_is_pending(s, p))
        });
        self.platform.set_blocked(vcpu, false);
        self.set_runstate(&mut st, vcpu, RUNSTATE_RUNNING);
        0
    }

    pub(super) fn set_timer_op(&self, vcpu: u32, timeout: u64) -> i64 {
        let mut st = self.lock();
        if let Some(v) = st.vcpus.get_mut(vcpu as usize) {
            v.singleshot_deadline = (timeout != 0).then_some(timeout);
        }
        self.timers_changed(&mut st);
        0
    }
}
