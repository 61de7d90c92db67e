//! One module per fuzz target.

pub mod blkif_request;
pub mod bootloader_simple0;
pub mod bzimage;
pub mod device_state;
pub mod gnttab_copy;
pub mod hypercalls;
pub mod insn_decode;
pub mod migration_stream;
pub mod netif_tx;
pub mod page_walk;
pub mod pv_context;
pub mod pv_emulate;
pub mod pv_mmu;
pub mod pv_notes;
pub mod pv_ptwr;
pub mod pv_saved_vcpu;
pub mod pvh_note;
pub mod virtio_blk_request;
pub mod virtio_mmio_regs;
pub mod virtio_net_tx;
pub mod vmm_api_wire;
pub mod vmm_image;
pub mod xen_snapshot;
pub mod xenstore_image;
pub mod xenstore_wire;
pub mod xl_savefile;
