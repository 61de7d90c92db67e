//! Hypercall dispatch: the entry point a vCPU's hypercall exit lands in.
//!
//! Semantics follow Xen 4.17 for an unprivileged PVH/HVM domU. Each handler
//! reads its argument struct from guest memory, validates every field, and
//! answers with Xen's error code. Comments name the Xen rule where a code
//! is not obvious. The handlers are split by hypercall family, one module
//! each, as Xen's own tree splits them; this module holds the dispatch, the
//! calls with no handler of their own (physdev_op, sysctl, domctl), and the
//! guest-memory helpers the handlers share.

use std::sync::atomic::Ordering;

use tracing::trace;
use vm_memory::GuestAddressSpace;
use xen_abi::errno::*;
use xen_abi::hypercall::*;
use xen_abi::DOMID_SELF;

use crate::domain::Domain;
use crate::guest::{Fault, GuestAccess, VcpuMmu};
use zerocopy::{FromBytes, IntoBytes};

// The handler modules below use these two, so they are defined before the
// `mod` lines (a macro is in scope only after its definition).

/// Read a `$ty` from guest virtual address `$gva`, or answer -EFAULT.
macro_rules! read {
    ($g:expr, $ty:ty, $gva:expr) => {
        match $g.read_obj::<$ty>($gva) {
            Ok(v) => v,
            Err(_) => return -EFAULT,
        }
    };
}

/// Write `$value` at guest virtual address `$gva`, or answer -EFAULT.
macro_rules! write {
    ($g:expr, $gva:expr, $value:expr) => {
        if $g.write_obj($gva, $value).is_err() {
            return -EFAULT;
        }
    };
}

/// Read a struct the caller passes in its mode's layout: the native one,
/// or (`compat`, a vCPU outside 64-bit mode) the 32-bit layout `C`,
/// translated to the native request as Xen's compat layer does.
fn read_in_layout<N, C>(g: &GuestAccess, gva: u64, compat: bool) -> Result<N, Fault>
where
    N: FromBytes + IntoBytes,
    C: FromBytes + IntoBytes + Into<N>,
{
    if compat {
        g.read_obj::<C>(gva).map(Into::into)
    } else {
        g.read_obj::<N>(gva)
    }
}

mod console_io;
mod event_channel_op;
mod grant_table_op;
mod hvm_op;
mod memory_op;
mod sched_op;
mod vcpu_op;
mod vm_assist;
mod xen_version;

/// One hypercall as the vCPU made it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub nr: u64,
    pub args: [u64; 5],
    /// The vCPU was outside 64-bit mode (not EFER.LMA with CS.L): its
    /// arguments are 32 bits and its structs come in the compat layout.
    pub compat: bool,
}

impl Call {
    /// A call from a vCPU in 64-bit mode.
    pub fn native(nr: u64, args: [u64; 5]) -> Self {
        Call {
            nr,
            args,
            compat: false,
        }
    }

    /// A call from a vCPU in 32-bit mode: only the registers' low halves
    /// are its arguments.
    pub fn compat(nr: u64, args: [u64; 5]) -> Self {
        Call {
            nr: nr & 0xffff_ffff,
            args: args.map(|a| a & 0xffff_ffff),
            compat: true,
        }
    }
}

impl Domain {
    /// Serve hypercall `call` made by `vcpu`, whose page tables `mmu` walks.
    /// Returns the value for RAX.
    pub fn hypercall(&self, vcpu: u32, mmu: &dyn VcpuMmu, call: Call) -> i64 {
        self.hypercalls.fetch_add(1, Ordering::Relaxed);
        // A 32-bit caller cannot pass more than 32 bits, whatever the
        // registers' upper halves hold.
        let call = if call.compat {
            Call::compat(call.nr, call.args)
        } else {
            call
        };
        let mem = self.mem.memory();
        let g = GuestAccess { mem: &mem, mmu };
        let [a1, a2, a3, _, _] = call.args;
        let ret = match call.nr {
            XEN_VERSION => self.xen_version(&g, a1, a2),
            CONSOLE_IO => self.console_io(&g, a1, a2, a3),
            SCHED_OP => self.sched_op(vcpu, &g, a1, a2, call.compat),
            MEMORY_OP => self.memory_op(&g, a1, a2, call.compat),
            HVM_OP => self.hvm_op(&g, a1, a2, call.compat),
            VCPU_OP => self.vcpu_op(vcpu, &g, a1, a2, a3, call.compat),
            // The 32-bit ABI splits the 64-bit deadline: low half in the
            // first argument, high half in the second.
            SET_TIMER_OP if call.compat => self.set_timer_op(vcpu, a1 | a2 << 32),
            SET_TIMER_OP => self.set_timer_op(vcpu, a1),
            EVENT_CHANNEL_OP => self.event_channel_op(&g, a1, a2),
            GRANT_TABLE_OP => self.grant_table_op(&g, a1, a2, a3, call.compat),
            VM_ASSIST => self.vm_assist(a1, a2),
            // A PVH domU has no physical IRQs: Xen's hvm_physdev_op
            // answers -ENOSYS to every command without pirq support.
            PHYSDEV_OP => -ENOSYS,
            // Control-domain operations: XSM denies them to a domU.
            SYSCTL | DOMCTL => -EPERM,
            _ => -ENOSYS,
        };
        trace!(vcpu, nr = call.nr, ?call.args, ret, "hypercall");
        ret
    }

    fn is_self(&self, domid: u16) -> bool {
        domid == DOMID_SELF || domid == self.cfg.domid
    }
}
