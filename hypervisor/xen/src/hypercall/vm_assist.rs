//! VMASST_* (Xen's common/kernel.c `do_vm_assist`): the VM assists an HVM
//! guest may switch on and off.

use xen_abi::errno::*;
use xen_abi::hypercall::*;

use crate::domain::Domain;

impl Domain {
    pub(super) fn vm_assist(&self, cmd: u64, kind: u64) -> i64 {
        // A PV domain has Xen's native set; HVM/PVH only the runstate flag.
        let valid = if self.cfg.pv_machphys_mapping.is_some() {
            PV_VM_ASSIST_MASK
        } else {
            HVM_VM_ASSIST_MASK
        };
        if kind >= 64 || valid & (1 << kind) == 0 {
            return -EINVAL;
        }
        let mut st = self.lock();
        match cmd {
            VMASST_CMD_ENABLE => st.vm_assist |= 1 << kind,
            VMASST_CMD_DISABLE => st.vm_assist &= !(1 << kind),
            _ => return -ENOSYS,
        }
        0
    }
}
