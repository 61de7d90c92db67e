//! The PV kernel's Xen ELF notes, and the layout computed from them.
//!
//! The input is read twice: as one raw note area (as a PT_NOTE segment
//! holds it) and as a whole ELF image. When the image parses as a PV
//! kernel, its layout is computed for a fixed RAM size and checked:
//! mapping end on a 4 MiB boundary inside RAM, regions in order, ENTRY
//! inside the kernel.

use kxen_loader::pv::notes::{self, NotesKind, PvNotes};
use kxen_loader::pv::{PvKernel, PvLayout};

/// 64 MiB of guest RAM.
const NR_PAGES: u64 = 16384;

/// One fuzz input; panics on any broken invariant. True when the input
/// held at least one Xen note.
pub fn pv_notes(data: &[u8]) -> bool {
    let mut area_notes = PvNotes::default();
    let in_area = notes::parse_area(data, &mut area_notes).unwrap_or(false);
    if in_area {
        let _ = area_notes.kind();
        let _ = area_notes.declared_features();
    }

    let Ok(image_notes) = notes::parse_image(data) else {
        return in_area;
    };
    let in_image = image_notes.kind() != NotesKind::None;
    let Ok(kernel) = PvKernel::parse(data.to_vec()) else {
        return in_area || in_image;
    };
    assert_eq!(kernel.notes, image_notes);
    assert_eq!(kernel.notes.kind(), NotesKind::Pv);
    if let Ok(layout) = PvLayout::compute(&kernel, NR_PAGES, 0x1234) {
        assert_eq!(layout.mapped_pages % 1024, 0);
        assert!(layout.mapped_pages <= NR_PAGES);
        assert!(layout.kernel.end <= layout.p2m.start);
        assert!(layout.p2m.end <= layout.start_info);
        assert!(layout.start_info < layout.page_tables.start);
        assert_eq!(layout.boot_stack, layout.page_tables.end);
        assert!(layout.boot_stack < layout.mapped_pages);
        let kernel_va = layout.va(layout.kernel.start)..layout.va(layout.kernel.end);
        assert!(kernel_va.contains(&layout.entry));
        assert!(layout.initrd.end <= NR_PAGES);
    }
    true
}
