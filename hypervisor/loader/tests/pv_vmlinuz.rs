//! The PV kernel path on a real distribution kernel: Debian's stock
//! `vmlinuz` (an xz-compressed bzImage with CONFIG_XEN_PV=y), when this
//! machine has one. Where it has none the test says so on stderr and checks
//! only that the absence is real; the synthetic images in the unit tests
//! cover every codec either way.

use std::path::Path;
use std::time::Instant;

use kxen_loader::pv::{build, bzimage, notes::NotesKind, PvKernel, PvLayout, StartInfoParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const DEBIAN_KERNEL: &str = "/boot/vmlinuz-6.1.0-57-amd64";

#[test]
fn debian_vmlinuz_extracts_and_carries_pv_notes() {
    let path = Path::new(DEBIAN_KERNEL);
    let image = match std::fs::read(path) {
        Ok(image) => image,
        Err(e) => {
            eprintln!(
                "SKIPPED the real-kernel check: {DEBIAN_KERNEL} cannot be read ({e}); \
                 only synthetic images were tested"
            );
            assert!(
                !path.exists(),
                "{DEBIAN_KERNEL} exists but cannot be read: {e}"
            );
            return;
        }
    };
    let started = Instant::now();
    let payload = bzimage::payload(&image).expect("bzImage payload");
    assert_eq!(
        bzimage::PayloadFormat::detect(payload),
        Ok(bzimage::PayloadFormat::Xz),
        "Debian's 6.1 kernels are xz-compressed"
    );
    let kernel = PvKernel::from_image(&image).expect("Debian's vmlinuz is a PV kernel");
    let elapsed = started.elapsed();
    let notes = &kernel.notes;
    eprintln!(
        "{DEBIAN_KERNEL}: {} compressed -> {} byte ELF, {} load segments, extracted and \
         parsed in {elapsed:.2?}; notes: {notes:?}",
        image.len(),
        kernel.elf.len(),
        kernel.segments.len()
    );
    // The build's size trailer matches what came out.
    let trailer = u32::from_le_bytes(payload[payload.len() - 4..].try_into().unwrap());
    assert_eq!(kernel.elf.len(), trailer as usize);
    assert_eq!(notes.kind(), NotesKind::Pv);
    assert_eq!(notes.guest_os.as_deref(), Some("linux"));
    assert_eq!(notes.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(notes.loader.as_deref(), Some("generic"));
    assert_eq!(notes.virt_base, Some(0xffff_ffff_8000_0000));
    assert_eq!(notes.init_p2m, Some(0x80_0000_0000));
    assert!(notes.mod_start_pfn);
    assert!(
        notes.phys32_entry.is_some(),
        "Debian's kernel also boots PVH"
    );
    let entry = notes.entry.expect("ENTRY note");
    assert!(entry >= 0xffff_ffff_8100_0000, "entry {entry:#x}");
    // The FEATURES string names writable_page_tables (with '!') and
    // pae_pgdir_above_4gb.
    assert_eq!(notes.features.required, 1 << 0);
    assert_eq!(notes.features.supported, 1 << 4);
    // The entry lies inside a loaded segment.
    assert!(kernel
        .segments
        .iter()
        .any(|s| (s.vaddr..s.vaddr + s.memsz).contains(&entry)));

    // Lay it out and build it into 512 MiB of guest RAM with Debian's
    // initrd beside it (or a stand-in, if that is missing).
    let initrd =
        std::fs::read("/boot/initrd.img-6.1.0-57-amd64").unwrap_or_else(|_| vec![7; 1 << 20]);
    let nr_pages = (512u64 << 20) >> 12;
    let started = Instant::now();
    let layout = PvLayout::compute(&kernel, nr_pages, initrd.len() as u64).expect("layout");
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 512 << 20)]).unwrap();
    let params = StartInfoParams {
        cmdline: "console=hvc0",
        ..StartInfoParams::default()
    };
    let boot = build(&mem, &layout, &kernel, &initrd, &params).expect("build");
    eprintln!(
        "layout and build into 512 MiB with a {} byte initrd in {:.2?}: {} pages mapped, \
         {} page-table frames, initrd at pfn {:#x} (mapped: {})",
        initrd.len(),
        started.elapsed(),
        layout.mapped_pages,
        boot.page_table_frames.end - boot.page_table_frames.start,
        layout.initrd.start,
        layout.initrd_mapped
    );
    assert_eq!(boot.entry, entry);
    assert!(
        !layout.initrd_mapped,
        "MOD_START_PFN puts the initrd after the mapping"
    );
    assert_eq!(layout.mapped_pages % 1024, 0);
}
