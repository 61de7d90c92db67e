//! Hypercall numbers (RAX) for 64-bit guests.
//! Arguments go in RDI, RSI, RDX, R10 and R8; the result comes back in RAX.

pub const MEMORY_OP: u64 = 12;
pub const SET_TIMER_OP: u64 = 15;
pub const XEN_VERSION: u64 = 17;
pub const CONSOLE_IO: u64 = 18;
pub const GRANT_TABLE_OP: u64 = 20;
pub const VM_ASSIST: u64 = 21;
pub const VCPU_OP: u64 = 24;
pub const SCHED_OP: u64 = 29;
pub const EVENT_CHANNEL_OP: u64 = 32;
pub const PHYSDEV_OP: u64 = 33;
pub const HVM_OP: u64 = 34;
pub const SYSCTL: u64 = 35;
pub const DOMCTL: u64 = 36;

/// Size of one hypercall stub in the hypercall page.
pub const STUB_SIZE: usize = 32;
/// Number of stubs in the one-page hypercall page.
pub const STUB_COUNT: usize = crate::PAGE_SIZE / STUB_SIZE;

/// `console_io` commands.
pub const CONSOLEIO_WRITE: u64 = 0;
pub const CONSOLEIO_READ: u64 = 1;

/// `vm_assist` commands and types.
pub const VMASST_CMD_ENABLE: u64 = 0;
pub const VMASST_CMD_DISABLE: u64 = 1;
pub const VMASST_TYPE_4GB_SEGMENTS: u64 = 0;
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u64 = 2;
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u64 = 5;
pub const VMASST_TYPE_M2P_STRICT: u64 = 32;
/// The only assist Xen offers HVM/PVH guests.
pub const HVM_VM_ASSIST_MASK: u64 = 1 << VMASST_TYPE_RUNSTATE_UPDATE_FLAG;
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u64 = 1;
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u64 = 3;
/// A PV kernel's IOPL checks treat it as ring 0 (else ring 1).
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u64 = 4;
/// What a 64-bit PV domain may enable (Xen's NATIVE_VM_ASSIST_VALID).
pub const PV_VM_ASSIST_MASK: u64 = (1 << VMASST_TYPE_4GB_SEGMENTS)
    | (1 << VMASST_TYPE_4GB_SEGMENTS_NOTIFY)
    | (1 << VMASST_TYPE_WRITABLE_PAGETABLES)
    | (1 << VMASST_TYPE_PAE_EXTENDED_CR3)
    | (1 << VMASST_TYPE_ARCHITECTURAL_IOPL)
    | (1 << VMASST_TYPE_RUNSTATE_UPDATE_FLAG)
    | (1 << VMASST_TYPE_M2P_STRICT);
/// `set_debugreg(reg, value)` / `get_debugreg(reg)`.
pub const SET_DEBUGREG: u64 = 8;
pub const GET_DEBUGREG: u64 = 9;

/// `physdev_op` commands a PVH guest might try.
pub const PHYSDEVOP_EOI: u64 = 12;
pub const PHYSDEVOP_IRQ_STATUS_QUERY: u64 = 5;
pub const PHYSDEVOP_SET_IOPL: u64 = 6;
pub const PHYSDEVOP_MAP_PIRQ: u64 = 13;
pub const PHYSDEVOP_UNMAP_PIRQ: u64 = 14;
pub const PHYSDEVOP_GET_FREE_PIRQ: u64 = 23;
