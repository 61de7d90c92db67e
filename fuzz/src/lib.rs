//! The fuzz targets' bodies, one public function per target (each
//! `fuzz_targets/NAME.rs` is a one-line `fuzz_target!` around `NAME`), and
//! the setup they share. Each function takes one input and panics on any
//! broken invariant; `tests/replay.rs` runs them all over a fixed corpus so
//! that the ordinary test suite exercises every target.

mod targets;

pub use targets::blkif_request::blkif_request;
pub use targets::bootloader_simple0::bootloader_simple0;
pub use targets::bzimage::bzimage;
pub use targets::device_state::device_state;
pub use targets::gnttab_copy::{gnttab_copy, gnttab_copy_v2};
pub use targets::hypercalls::hypercalls;
pub use targets::insn_decode::insn_decode;
pub use targets::migration_stream::migration_stream;
pub use targets::netif_tx::netif_tx;
pub use targets::page_walk::page_walk;
pub use targets::pv_context::pv_context;
pub use targets::pv_emulate::pv_emulate;
pub use targets::pv_mmu::pv_mmu;
pub use targets::pv_notes::pv_notes;
pub use targets::pv_ptwr::pv_ptwr;
pub use targets::pv_saved_vcpu::pv_saved_vcpu;
pub use targets::pvh_note::pvh_note;
pub use targets::virtio_blk_request::virtio_blk_request;
pub use targets::virtio_mmio_regs::virtio_mmio_regs;
pub use targets::virtio_net_tx::virtio_net_tx;
pub use targets::vmm_api_wire::vmm_api_wire;
pub use targets::vmm_image::vmm_image;
pub use targets::xen_snapshot::xen_snapshot;
pub use targets::xenstore_image::xenstore_image;
pub use targets::xenstore_wire::xenstore_wire;
pub use targets::xl_savefile::xl_savefile;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of the low RAM region: descriptor table at 0, avail ring at
/// 0x100, used ring at 0x200, and whatever the descriptors point at.
const LOW: usize = 0x2000;
/// A second, one-page RAM region above a hole, so that chains can point
/// past the end of one region or into the hole.
const HIGH: u64 = 0x10_0000;

/// A hostile virtio driver's guest RAM and a 16-entry split queue in it,
/// straight from fuzz input: the first byte is a flags byte (bit 0 turns
/// on VIRTIO_F_EVENT_IDX; the other bits are the target's), the next
/// 0x2000 bytes fill low RAM and the next page the high region. Returns
/// `(flags, memory, queue)`, or `None` for empty input.
pub fn virtio_queue(data: &[u8]) -> Option<(u8, GuestMemoryMmap<()>, Queue)> {
    let (&flags, data) = data.split_first()?;
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH), 0x1000)])
            .unwrap();
    let (low, high) = data.split_at(data.len().min(LOW));
    mem.write_slice(low, GuestAddress(0)).unwrap();
    mem.write_slice(&high[..high.len().min(0x1000)], GuestAddress(HIGH))
        .unwrap();
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    Some((flags, mem, q))
}
