//! A domain's RAM as vm-memory sees it: one `GuestRegionMmap` per region
//! of the memfd kxen-vmm hands over (kxen-vmm-api's `memfd` request),
//! mapped shared, so virtio-queue and the devices read and write the
//! guest's own pages.

use std::fs::File;
use std::os::fd::BorrowedFd;

use kxen_vmm_api::MemfdRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::error::VirtioError;

/// Guest memory for the virtio data plane.
pub type GuestMem = GuestMemoryMmap<()>;

/// Map each region of `memfd` at its guest-physical address.
pub fn guest_memory(
    memfd: BorrowedFd<'_>,
    regions: &[MemfdRegion],
) -> Result<GuestMem, VirtioError> {
    let file = File::from(
        memfd
            .try_clone_to_owned()
            .map_err(|e| VirtioError::Memory(format!("dup memfd: {e}")))?,
    );
    let file = std::sync::Arc::new(file);
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| r.gpa);
    let ranges = sorted
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| {
            let len = usize::try_from(r.len)
                .map_err(|_| VirtioError::Memory(format!("region {:#x} too large", r.gpa)))?;
            Ok((
                GuestAddress(r.gpa),
                len,
                Some(FileOffset::from_arc(file.clone(), r.offset)),
            ))
        })
        .collect::<Result<Vec<_>, VirtioError>>()?;
    if ranges.is_empty() {
        return Err(VirtioError::Memory("no RAM regions".into()));
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| VirtioError::Memory(e.to_string()))
}
