//! How a domain's memory lies in the memfd kxen-vmm hands Dom0 (`memfd`
//! request): guest RAM first, then the special pages, then the event
//! routing area ([`crate::routing`]).

use serde::{Deserialize, Serialize};

/// Guest page size, the unit of every region.
pub const PAGE_SIZE: usize = 4096;

/// One guest-physical range and where it lives in the memfd.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemfdRegion {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the first byte in the memfd.
    pub offset: u64,
}

/// Why a region list cannot describe a memfd of a given size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("memfd region at gpa {gpa:#x} overflows the address space")]
    Overflow { gpa: u64 },
    #[error("memfd region at gpa {gpa:#x} ends past the memfd's {size} bytes")]
    PastEnd { gpa: u64, size: u64 },
}

impl MemfdRegion {
    /// One past the last guest-physical address, if it fits in u64.
    pub fn gpa_end(&self) -> Option<u64> {
        self.gpa.checked_add(self.len)
    }

    /// memfd offset of the page at `gpa`, if this region holds all of it.
    pub fn offset_of_page(&self, gpa: u64) -> Option<u64> {
        let page_end = gpa.checked_add(PAGE_SIZE as u64)?;
        (gpa >= self.gpa && page_end <= self.gpa_end()?).then(|| self.offset + (gpa - self.gpa))
    }
}

/// Check that every region lies inside a memfd of `size` bytes and names
/// a guest range that does not wrap: what a mapper must know before it
/// trusts the list.
pub fn check_regions(regions: &[MemfdRegion], size: u64) -> Result<(), LayoutError> {
    for r in regions {
        r.gpa_end().ok_or(LayoutError::Overflow { gpa: r.gpa })?;
        match r.offset.checked_add(r.len) {
            Some(end) if end <= size => {}
            _ => return Err(LayoutError::PastEnd { gpa: r.gpa, size }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked_against_the_memfd() {
        let ram = MemfdRegion {
            gpa: 0,
            len: 1 << 20,
            offset: 0,
        };
        assert_eq!(check_regions(&[ram], 1 << 20), Ok(()));
        assert!(matches!(
            check_regions(&[ram], (1 << 20) - 1),
            Err(LayoutError::PastEnd { .. })
        ));
        let wraps = MemfdRegion {
            gpa: u64::MAX - 10,
            len: 4096,
            offset: 0,
        };
        assert_eq!(
            check_regions(&[wraps], 1 << 20),
            Err(LayoutError::Overflow { gpa: u64::MAX - 10 })
        );
        let huge_offset = MemfdRegion {
            gpa: 0,
            len: 2,
            offset: u64::MAX,
        };
        assert!(check_regions(&[huge_offset], u64::MAX).is_err());
    }

    #[test]
    fn page_lookup_stays_inside_the_region() {
        let r = MemfdRegion {
            gpa: 0x10_0000,
            len: 0x2000,
            offset: 0x5000,
        };
        assert_eq!(r.offset_of_page(0x10_1000), Some(0x6000));
        assert_eq!(r.offset_of_page(0x10_2000), None);
        assert_eq!(r.offset_of_page(0xf_f000), None);
        assert_eq!(r.offset_of_page(u64::MAX), None);
    }
}
