//! VCPUOP_* (Xen's common/domain.c `do_vcpu_op`): bringing vCPUs up and
//! down, their timers, and the per-vCPU areas the guest registers
//! (vcpu_info, runstate, time).

use std::mem::size_of;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};
use xen_abi::errno::*;
use xen_abi::sched::*;
use xen_abi::shared_info::{VcpuInfo, VCPU_INFO_SIZE, VCPU_INFO_UPCALL_PENDING};
use xen_abi::vcpu::*;
use xen_abi::PAGE_SIZE;

use super::read_in_layout;
use crate::domain::Domain;
use crate::guest::{Fault, GuestAccess};

/// Read the guest pointer a runstate or time-area registration carries:
/// the whole 8-byte union natively, its low 4 bytes (the 32-bit handle)
/// from a caller outside 64-bit mode, as Xen's compat layer reads it.
fn read_area_addr(g: &GuestAccess, arg: u64, compat: bool) -> Result<u64, Fault> {
    if compat {
        g.read_obj::<u32>(arg).map(u64::from)
    } else {
        g.read_obj::<RegisterMemoryArea>(arg).map(|a| a.addr)
    }
}

impl Domain {
    /// `compat`: the caller is outside 64-bit mode, so set_singleshot_timer,
    /// the runstate registration and get_runstate_info use the 32-bit
    /// layouts (the other structs read the same in both modes).
    pub(super) fn vcpu_op(
        &self,
        current: u32,
        g: &GuestAccess,
        cmd: u64,
        vcpuid: u64,
        arg: u64,
        compat: bool,
    ) -> i64 {
        if vcpuid >= self.cfg.nr_vcpus as u64 {
            return -ENOENT;
        }
        let target = vcpuid as u32;
        match cmd {
            VCPUOP_REGISTER_VCPU_INFO => {
                let req = read!(g, RegisterVcpuInfo, arg);
                self.register_vcpu_info(current, target, req)
            }
            VCPUOP_IS_UP => {
                let st = self.lock();
                let v = &st.vcpus[target as usize];
                (v.initialised && v.online) as i64
            }
            VCPUOP_UP => {
                let mut st = self.lock();
                let v = &mut st.vcpus[target as usize];
                // Xen: a vCPU must have been initialised before it can run.
                if !v.initialised {
                    return -EINVAL;
                }
                if !v.online {
                    self.set_online(&mut st, target, true);
                    self.set_runstate(&mut st, target, RUNSTATE_RUNNING);
                }
                0
            }
            VCPUOP_DOWN => {
                let mut st = self.lock();
                let others_up = st
                    .vcpus
                    .iter()
                    .enumerate()
                    .any(|(i, v)| i as u32 != target && v.online && v.initialised);
                if !others_up {
                    // Xen: taking the last vCPU down powers the domain off.
                    drop(st);
                    self.request_shutdown(SHUTDOWN_POWEROFF);
                    return 0;
                }
                if st.vcpus[target as usize].online {
                    self.set_online(&mut st, target, false);
                    self.set_runstate(&mut st, target, RUNSTATE_OFFLINE);
                    if target != current {
                        self.platform.kick_vcpu(target);
                    }
                }
                0
            }
            VCPUOP_SET_PERIODIC_TIMER => {
                let req = read!(g, SetPeriodicTimer, arg);
                if req.period_ns < MIN_PERIODIC_PERIOD_NS || req.period_ns > u32::MAX as u64 * 1000
                {
                    return -EINVAL;
                }
                let mut st = self.lock();
                let now = self.clock.now_ns();
                st.vcpus[target as usize].periodic = Some((now + req.period_ns, req.period_ns));
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_STOP_PERIODIC_TIMER => {
                let mut st = self.lock();
                st.vcpus[target as usize].periodic = None;
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_SET_SINGLESHOT_TIMER => {
                // Xen: only a vCPU's own singleshot timer can be set.
                if target != current {
                    return -EINVAL;
                }
                let Ok(req) =
                    read_in_layout::<SetSingleshotTimer, CompatSetSingleshotTimer>(g, arg, compat)
                else {
                    return -EFAULT;
                };
                if req.flags & VCPU_SSHOTTMR_FUTURE != 0 && req.timeout_abs_ns < self.clock.now_ns()
                {
                    return -ETIME;
                }
                let mut st = self.lock();
                st.vcpus[target as usize].singleshot_deadline = Some(req.timeout_abs_ns);
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_STOP_SINGLESHOT_TIMER => {
                if target != current {
                    return -EINVAL;
                }
                let mut st = self.lock();
                st.vcpus[target as usize].singleshot_deadline = None;
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
                let Ok(addr) = read_area_addr(g, arg, compat) else {
                    return -EFAULT;
                };
                let len = if compat {
                    size_of::<CompatRunstateInfo>()
                } else {
                    size_of::<RunstateInfo>()
                };
                let gpa = match self.area_gpa(g, addr, len) {
                    Ok(gpa) => gpa,
                    Err(e) => return e,
                };
                let mut st = self.lock();
                // Xen writes the area in the layout of the registration
                // (its compat path keeps a compat handle).
                st.vcpus[target as usize].runstate_gpa = gpa;
                st.vcpus[target as usize].runstate_compat = compat;
                if let Some(rs) = self.current_runstate(&st, target) {
                    st.vcpus[target as usize].runstate = rs;
                }
                self.publish_runstate(&st, target);
                0
            }
            VCPUOP_GET_RUNSTATE_INFO => {
                let rs = {
                    let st = self.lock();
                    self.current_runstate(&st, target).unwrap_or_default()
                };
                if compat {
                    write!(g, arg, &CompatRunstateInfo::from(rs));
                } else {
                    write!(g, arg, &rs);
                }
                0
            }
            VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA => {
                // vcpu_time_info has the same layout in both modes.
                let Ok(addr) = read_area_addr(g, arg, compat) else {
                    return -EFAULT;
                };
                let gpa =
                    match self.area_gpa(g, addr, size_of::<xen_abi::shared_info::VcpuTimeInfo>()) {
                        Ok(gpa) => gpa,
                        Err(e) => return e,
                    };
                let mut st = self.lock();
                st.vcpus[target as usize].time_area_gpa = gpa;
                self.update_vcpu_time(&st, target);
                0
            }
            // Only the hardware domain may learn physical CPU ids.
            VCPUOP_GET_PHYSID => -EINVAL,
            _ => -ENOSYS,
        }
    }

    /// Translate a registered area (runstate, time) once. Address 0
    /// unregisters. The area must not cross a page.
    fn area_gpa(&self, g: &GuestAccess, gva: u64, len: usize) -> Result<Option<u64>, i64> {
        if gva == 0 {
            return Ok(None);
        }
        if (gva as usize & (PAGE_SIZE - 1)) + len > PAGE_SIZE {
            return Err(-EINVAL);
        }
        match g.mmu.translate(gva) {
            Some((gpa, true)) if g.mem.get_slice(GuestAddress(gpa), len).is_ok() => Ok(Some(gpa)),
            _ => Err(-EFAULT),
        }
    }

    fn register_vcpu_info(&self, current: u32, target: u32, req: RegisterVcpuInfo) -> i64 {
        // map_vcpu_info checks the offset before anything else: the
        // struct must fit in the page and sit at its natural alignment in
        // the domain's layout (8 bytes natively, 4 in the compat layout,
        // whose 64-bit fields are 4-aligned), or -ENXIO.
        let mut st = self.lock();
        let layout = st.shared_info_layout;
        let align = if layout.is_compat() {
            4
        } else {
            std::mem::align_of::<VcpuInfo>()
        };
        if req.offset as usize > PAGE_SIZE - VCPU_INFO_SIZE
            || !(req.offset as usize).is_multiple_of(align)
        {
            return -ENXIO;
        }
        let v = &st.vcpus[target as usize];
        // Only once per vCPU, and only on yourself or an offline vCPU.
        if v.vcpu_info_gpa.is_some() || (target != current && v.online && v.initialised) {
            return -EINVAL;
        }
        let Some(gpa) = req
            .mfn
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|base| base.checked_add(req.offset as u64))
        else {
            return -EINVAL;
        };
        let mem = self.mem.memory();
        if mem.get_slice(GuestAddress(gpa), VCPU_INFO_SIZE).is_err() {
            return -EINVAL;
        }
        // Carry the old contents over, then mark everything pending so the
        // guest rescans (as Xen does).
        let mut old = [0u8; VCPU_INFO_SIZE];
        self.platform.begin_event_layout_change();
        if let Some(old_gpa) = self.vcpu_info_gpa(&st, target) {
            let _ = mem.read_slice(&mut old, GuestAddress(old_gpa));
        }
        if mem.write_slice(&old, GuestAddress(gpa)).is_err() {
            self.publish_event_layout(&st);
            return -EINVAL;
        }
        let sel = GuestAddress(gpa + layout.vcpu_pending_sel() as u64);
        let _ = if layout.is_compat() {
            mem.write_obj(u32::MAX, sel)
        } else {
            mem.write_obj(u64::MAX, sel)
        };
        let _ = mem.write_obj(1u8, GuestAddress(gpa + VCPU_INFO_UPCALL_PENDING as u64));
        st.vcpus[target as usize].vcpu_info_gpa = Some(gpa);
        self.publish_event_layout(&st);
        self.update_vcpu_time(&st, target);
        self.raise_upcall(&st, target);
        0
    }
}
