//! The classic x86_64 PV domain builder, KVM-free.
//!
//! The steps, in the order a toolstack runs them:
//! 1. [`bzimage::extract_elf`]: a distribution `vmlinuz` (bzImage) or a bare
//!    ELF file in, the uncompressed 64-bit ELF kernel out.
//! 2. [`PvKernel::parse`]: that ELF's loadable segments and its Xen ELF notes
//!    ([`notes::PvNotes`]); a kernel that only carries the PVH entry note is
//!    refused with a message that names `type = "pvh"`.
//! 3. [`layout::PvLayout::compute`]: where everything goes, from VIRT_BASE up.
//! 4. [`layout::build`]: writes the kernel, the initrd, the P2M list,
//!    start_info and the bootstrap page tables into guest memory and returns
//!    the registers and pinned page-table frames the PV machine starts from
//!    ([`layout::PvBootState`]).
//!
//! Everything read from the image is hostile: every offset and length is
//! checked, and a bad image is an error, never a panic.

pub mod bzimage;
pub mod elf;
pub mod layout;
pub mod notes;

pub use bzimage::{extract_elf, BzImageError};
pub use elf::{ElfError, LoadSegment};
pub use layout::{build, LayoutError, PvBootState, PvLayout, StartInfoParams};
pub use notes::{NotesError, PvNotes};

/// Why an image cannot be booted as a PV kernel.
#[derive(Debug, thiserror::Error)]
pub enum PvImageError {
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Notes(#[from] NotesError),
    #[error(
        "this kernel carries only PVH notes (XEN_ELFNOTE_PHYS32_ENTRY) and no PV \
         notes (ENTRY, VIRT_BASE, GUEST_OS); use type = \"pvh\""
    )]
    PvhOnly,
    #[error("this kernel carries no Xen ELF notes: it cannot boot as a Xen PV guest")]
    NoXenNotes,
    #[error("the PV notes lack {0}, which a 64-bit PV kernel must give")]
    MissingNote(&'static str),
}

/// A PV kernel ready for the layout step: its ELF bytes, its loadable
/// segments and its notes.
#[derive(Debug, Clone)]
pub struct PvKernel {
    /// The uncompressed ELF image the segments point into.
    pub elf: Vec<u8>,
    /// PT_LOAD segments with a non-zero memory size, in file order.
    pub segments: Vec<LoadSegment>,
    pub notes: PvNotes,
}

impl PvKernel {
    /// Take a kernel file as given (bzImage or ELF), extract the ELF, parse
    /// it and its notes, and check that it is a 64-bit PV kernel.
    pub fn from_image(image: &[u8]) -> Result<PvKernel, PvImageError> {
        let elf = bzimage::extract_elf(image)?.into_owned();
        PvKernel::parse(elf)
    }

    /// Parse an uncompressed ELF kernel.
    pub fn parse(elf: Vec<u8>) -> Result<PvKernel, PvImageError> {
        let parsed = elf::Elf64::parse(&elf)?;
        let notes = notes::parse(&parsed)?;
        match notes.kind() {
            notes::NotesKind::Pv => {}
            notes::NotesKind::PvhOnly => return Err(PvImageError::PvhOnly),
            notes::NotesKind::None => return Err(PvImageError::NoXenNotes),
        }
        if notes.entry.is_none() {
            return Err(PvImageError::MissingNote("ENTRY"));
        }
        if notes.virt_base.is_none() {
            return Err(PvImageError::MissingNote("VIRT_BASE"));
        }
        let segments = parsed.load_segments();
        tracing::debug!(
            segments = segments.len(),
            entry = notes.entry,
            virt_base = notes.virt_base,
            "PV kernel parsed"
        );
        Ok(PvKernel {
            segments,
            notes,
            elf,
        })
    }
}
