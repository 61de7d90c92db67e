//! The Xen guest ABI as kxen implements it.
//!
//! Everything here is a fact of the public Xen interface (`xen/include/public`):
//! hypercall numbers, sub-operation numbers, error codes and the `#[repr(C)]`
//! layouts that cross the guest boundary. The crate is `no_std` so that the VMM,
//! the Dom0 tools and the freestanding PV test guest share one definition.
//!
//! Structs derive zerocopy's traits, so a hypervisor reads them out of guest
//! memory as plain bytes with no `unsafe`, and a layout change that introduces
//! hidden padding fails to compile.
#![no_std]

pub mod console;
pub mod cpuid;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hvm_save;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod pv;
pub mod pvh;
pub mod sched;
pub mod shared_info;
pub mod transport;
pub mod vcpu;
pub mod version;
pub mod xenstore;

/// Guest page size on x86.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A domain id.
pub type DomId = u16;
/// "The calling domain", accepted wherever a domid is.
pub const DOMID_SELF: DomId = 0x7ff0;
/// The first domid that does not name a real domain.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;

/// Layout checks shared by the modules' tests.
#[cfg(test)]
mod layout_tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn shared_info_layout() {
        assert_eq!(size_of::<shared_info::VcpuInfo>(), 64);
        assert_eq!(size_of::<shared_info::VcpuTimeInfo>(), 32);
        assert_eq!(offset_of!(shared_info::VcpuInfo, time), 32);
        assert_eq!(size_of::<vcpu::RunstateInfo>(), 48);
    }

    #[test]
    fn hypercall_argument_layouts() {
        assert_eq!(size_of::<memory::AddToPhysmap>(), 24);
        assert_eq!(size_of::<memory::AddToPhysmapBatch>(), 32);
        assert_eq!(size_of::<memory::MemoryReservation>(), 32);
        assert_eq!(size_of::<memory::MemoryMap>(), 16);
        assert_eq!(size_of::<memory::E820Entry>(), 20);
        assert_eq!(size_of::<hvm::HvmParam>(), 16);
        assert_eq!(size_of::<event_channel::Status>(), 24);
        assert_eq!(size_of::<event_channel::BindVirq>(), 12);
        assert_eq!(size_of::<event_channel::BindInterdomain>(), 12);
        assert_eq!(size_of::<grant_table::SetupTable>(), 24);
        assert_eq!(size_of::<grant_table::QuerySize>(), 16);
        assert_eq!(size_of::<grant_table::Copy>(), 40);
        assert_eq!(size_of::<sched::Poll>(), 24);
        assert_eq!(size_of::<vcpu::SetSingleshotTimer>(), 16);
        assert_eq!(size_of::<version::CompileInfo>(), 144);
        assert_eq!(size_of::<pvh::StartInfo>(), 56);
        assert_eq!(size_of::<pvh::MemmapEntry>(), 24);
        assert_eq!(size_of::<pvh::ModlistEntry>(), 32);
        assert_eq!(size_of::<xenstore::MessageHeader>(), 16);
    }
}
