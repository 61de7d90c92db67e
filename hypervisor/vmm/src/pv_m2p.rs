//! A PV domain's read-only machine-to-phys table (M2P), executed: the
//! frames kxen-pv's [`M2pLayout`] lays out, backed by a memory slot of
//! kxen-vmm's own memory outside the domain's RAM, written once at build
//! time and kept in step with MMU_MACHPHYS_UPDATE.
//!
//! The guest reads the table where XENMEM_machphys_mapping says,
//! kxen-pv's `M2P_VIRT_START` (L4 slot 257: Xen's slot 256 faults on PVM
//! hosts, see kxen-pv's m2p.rs), through an L4 entry the PV MMU writes into
//! every L4 it validates and never lets the guest change. It cannot write the table (no RW bit at any level) nor
//! reach its frames any other way: they lie above the domain's frames,
//! where the PV MMU refuses every mapping (kxen-pv's `MmioNotPermitted`),
//! and kxen-vmm refuses overlays there. Reads past the domain's entries
//! (the M2P hole) find no present entry: a #PF the guest kernel gets
//! bounced, as on Xen.

use std::sync::atomic::Ordering;

use tracing::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use kxen_pv::m2p::M2P_L4_SLOT;
use kxen_pv::{M2pLayout, M2pLayoutError, Mfn, PvMmuConfig};

use crate::pv::PvSetupError;

/// First frame of the M2P block: in the hole below 4 GiB, above the end
/// of low RAM (3 GiB) and of the virtio-mmio window (0xd0000000, HVM
/// only), below the IOAPIC (0xfec00000), the default grant window, the PV
/// transport pages and the special pages.
pub const PV_M2P_BASE_GFN: u64 = 0xf0000;
/// Frames the block may take: up to 0xfe000000 (224 MiB, the M2P of 28
/// million frames; a PV domain's RAM is its low 3 GiB, 786432 frames).
pub const PV_M2P_WINDOW_PAGES: u64 = 0xe000;
const _: () = assert!((PV_M2P_BASE_GFN + PV_M2P_WINDOW_PAGES) << 12 <= 0xfec0_0000);
const _: () = assert!(PV_M2P_BASE_GFN << 12 >= 0xd000_0000 + (1 << 24));

/// Why a domain's M2P cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum M2pError {
    #[error("laying out the M2P: {0}")]
    Layout(#[from] M2pLayoutError),
    #[error("the M2P of {nr_frames} frames needs {pages} frames, more than its window's {PV_M2P_WINDOW_PAGES}")]
    TooLarge { nr_frames: u64, pages: u64 },
}

/// Where the M2P of a domain of `nr_frames` frames lives.
pub fn layout(nr_frames: u64) -> Result<M2pLayout, M2pError> {
    let layout = M2pLayout::new(nr_frames, PV_M2P_BASE_GFN)?;
    if layout.total_pages() > PV_M2P_WINDOW_PAGES {
        return Err(M2pError::TooLarge {
            nr_frames,
            pages: layout.total_pages(),
        });
    }
    Ok(layout)
}

/// Write the M2P of `config`'s domain (the identity, and
/// INVALID_M2P_ENTRY past its frames) and the tables that map it into
/// the block (which [`crate::memory::GuestMemory::map_pv_m2p`] backed),
/// and give every L4 the PV MMU validates their entry in slot 256.
pub fn install(mem: &GuestMemoryMmap, config: &mut PvMmuConfig) -> Result<(), PvSetupError> {
    // The builder laid the block out already (and said why it could not);
    // failing here means the block is not what was backed.
    let layout = layout(config.nr_frames).map_err(|e| {
        debug!("PV M2P: {e}");
        PvSetupError::HypervisorTables(PV_M2P_BASE_GFN)
    })?;
    let frame_error = |gfn: u64| move |_| PvSetupError::HypervisorTables(gfn);
    let mut page = [0u8; xen_abi::PAGE_SIZE];
    for data_page in 0..layout.data_pages() {
        for (index, word) in page.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&layout.initial_entry(data_page, index).to_le_bytes());
        }
        let gfn = layout.base_gfn() + data_page;
        mem.write_slice(&page, GuestAddress(gfn << 12))
            .map_err(frame_error(gfn))?;
    }
    for (gfn, entries) in layout.tables() {
        for (word, entry) in page.chunks_exact_mut(8).zip(&entries) {
            word.copy_from_slice(&entry.to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(gfn << 12))
            .map_err(frame_error(gfn))?;
    }
    config.hypervisor_l4_slots[M2P_L4_SLOT - *xen_abi::pv::HYPERVISOR_L4_SLOTS.start()] =
        layout.l4_entry();
    info!(
        nr_frames = config.nr_frames,
        base_gfn = format_args!("{:#x}", layout.base_gfn()),
        pages = layout.total_pages(),
        mapped_end = format_args!("{:#x}", layout.mapped_end_va()),
        "PV read-only M2P"
    );
    Ok(())
}

/// MMU_MACHPHYS_UPDATE set `mfn`'s entry to `pfn`: store it where the
/// guest reads it. kxen-pv passes only the domain's frames; anything else
/// is ignored. One 8-byte store, so a guest reading the entry meanwhile
/// sees the old or the new value, never a mix.
pub fn update_entry(mem: &GuestMemoryMmap, mfn: Mfn, pfn: u64) {
    let Some(gpa) = mfn
        .checked_mul(8)
        .and_then(|offset| (PV_M2P_BASE_GFN << 12).checked_add(offset))
        .filter(|&gpa| gpa < (PV_M2P_BASE_GFN + PV_M2P_WINDOW_PAGES) << 12)
    else {
        debug!(mfn, "M2P update outside the M2P window");
        return;
    };
    if mem
        .store(pfn, GuestAddress(gpa), Ordering::Release)
        .is_err()
    {
        debug!(mfn, gpa, "M2P update outside the M2P's memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_fit_their_window() {
        // The largest PV domain kxen builds: 3 GiB of low RAM.
        let l = layout(0xc0000).unwrap();
        assert!(l.total_pages() <= PV_M2P_WINDOW_PAGES);
        assert_eq!(l.base_gfn(), PV_M2P_BASE_GFN);
        assert!(matches!(
            layout(kxen_pv::MAX_FRAMES),
            Err(M2pError::TooLarge { .. })
        ));
        assert!(matches!(layout(0), Err(M2pError::Layout(_))));
    }

    #[test]
    fn install_and_update_over_anonymous_memory() {
        let nr = 1000;
        let l = layout(nr).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(
            GuestAddress(PV_M2P_BASE_GFN << 12),
            (l.total_pages() as usize) << 12,
        )])
        .unwrap();
        let mut config = PvMmuConfig::new(1, nr, 1);
        install(&mem, &mut config).unwrap();
        assert_eq!(config.hypervisor_l4_slots[M2P_L4_SLOT - 256], l.l4_entry());
        assert_eq!(config.hypervisor_l4_slots[0], 0, "slot 256 stays empty");
        let entry = |mfn: u64| -> u64 {
            mem.read_obj(GuestAddress((PV_M2P_BASE_GFN << 12) + mfn * 8))
                .unwrap()
        };
        assert_eq!(entry(0), 0);
        assert_eq!(entry(999), 999);
        assert_eq!(entry(1000), kxen_pv::m2p::INVALID_M2P_ENTRY);
        update_entry(&mem, 7, 0x1234);
        assert_eq!(entry(7), 0x1234);
        // Out of the window or the memory: ignored, no panic.
        update_entry(&mem, u64::MAX, 1);
        update_entry(&mem, 1 << 40, 1);
        update_entry(&mem, (l.total_pages() << 9) + 1, 1);
        // Memory that does not back the block: refused, naming a frame.
        let small =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(PV_M2P_BASE_GFN << 12), 4096)]).unwrap();
        let mut config = PvMmuConfig::new(1, nr, 1);
        assert!(matches!(
            install(&small, &mut config),
            Err(PvSetupError::HypervisorTables(_))
        ));
    }
}
