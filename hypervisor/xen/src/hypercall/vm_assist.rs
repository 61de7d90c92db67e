//! VMASST_* (Xen's common/kernel.c `do_vm_assist`): the VM assists an HVM
//! guest may switch on and off.

use xen_abi::errno::*;
use xen_abi::hypercall::*;

use crate::domain::Domain;

impl Domain {
    pub(super) fn vm_assist(&self, cmd: u64, kind: u64) -> i64 {
        if kind >= 64 || HVM_VM_ASSIST_MASK & (1 << kind) == 0 {
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
