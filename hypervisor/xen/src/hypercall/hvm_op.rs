//! HVMOP_* (Xen's arch/x86/hvm/hvm.c `do_hvm_op`): HVM parameters with
//! Xen's per-parameter guest access rules, the per-vCPU upcall vector and
//! the guest-visible time.

use xen_abi::errno::*;
use xen_abi::hvm::*;

use crate::domain::Domain;
use crate::guest::GuestAccess;

/// What a guest may do with an HVM parameter of its own domain
/// (Xen 4.17's hvm_allow_set_param / hvm_allow_get_param on x86).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamAccess {
    /// Readable and writable by the guest.
    GuestWritable,
    /// Readable by the guest, set by the toolstack only.
    GuestReadable,
    /// Neither: -EPERM.
    Hidden,
    /// Gone from the interface: -EINVAL both ways.
    Deprecated,
}

fn param_access(index: u32) -> ParamAccess {
    const VM86_TSS: u32 = 15;
    const ACPI_IOPORTS_LOCATION: u32 = 19;
    const VM_GENERATION_ID_ADDR: u32 = 34;
    const ALTP2M: u32 = 35;
    const X87_FIP_WIDTH: u32 = 36;
    const VM86_TSS_SIZED: u32 = 37;
    // PAE_ENABLED, DM_DOMAIN and the MEMORY_EVENT_* family.
    const DEPRECATED: [u32; 8] = [4, 13, 20, 21, 22, 23, 25, 30];
    match index {
        HVM_PARAM_CALLBACK_IRQ
        | VM86_TSS
        | VM86_TSS_SIZED
        | ACPI_IOPORTS_LOCATION
        | VM_GENERATION_ID_ADDR
        | HVM_PARAM_STORE_EVTCHN
        | HVM_PARAM_CONSOLE_EVTCHN
        | X87_FIP_WIDTH => ParamAccess::GuestWritable,
        HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN | ALTP2M => ParamAccess::GuestReadable,
        i if DEPRECATED.contains(&i) => ParamAccess::Deprecated,
        _ => ParamAccess::Hidden,
    }
}

impl Domain {
    /// `compat`: the caller is outside 64-bit mode (for the shared_info
    /// layout latch).
    pub(super) fn hvm_op(&self, g: &GuestAccess, cmd: u64, arg: u64, compat: bool) -> i64 {
        match cmd {
            HVMOP_SET_PARAM | HVMOP_GET_PARAM => {
                let mut p = read!(g, HvmParam, arg);
                if !self.is_self(p.domid) {
                    return -ESRCH;
                }
                if p.index >= HVM_NR_PARAMS {
                    return -EINVAL;
                }
                let access = param_access(p.index);
                if access == ParamAccess::Deprecated {
                    return -EINVAL;
                }
                let mut st = self.lock();
                if cmd == HVMOP_GET_PARAM {
                    if access == ParamAccess::Hidden {
                        return -EPERM;
                    }
                    p.value = st.params[p.index as usize];
                    drop(st);
                    write!(g, arg, &p);
                    return 0;
                }
                if access != ParamAccess::GuestWritable {
                    return -EPERM;
                }
                st.params[p.index as usize] = p.value;
                if p.index == HVM_PARAM_CALLBACK_IRQ {
                    self.latch_shared_info_layout(&mut st, !compat);
                    self.publish_upcall_vectors(&st);
                    for vcpu in 0..self.cfg.nr_vcpus {
                        self.recheck_upcall(&st, vcpu);
                    }
                }
                0
            }
            HVMOP_SET_EVTCHN_UPCALL_VECTOR => {
                let req = read!(g, EvtchnUpcallVector, arg);
                if req.vector < MIN_UPCALL_VECTOR {
                    return -EINVAL;
                }
                let mut st = self.lock();
                let Some(v) = st.vcpus.get_mut(req.vcpu as usize) else {
                    return -ENOENT;
                };
                v.upcall_vector = Some(req.vector);
                self.platform
                    .upcall_vector_changed(req.vcpu, Some(req.vector));
                self.recheck_upcall(&st, req.vcpu);
                0
            }
            HVMOP_GET_TIME => {
                write!(g, arg, &self.clock.now_ns());
                0
            }
            // kxen keeps no shadow page tables to drop.
            HVMOP_PAGETABLE_DYING => -ENOSYS,
            _ => -ENOSYS,
        }
    }
}
