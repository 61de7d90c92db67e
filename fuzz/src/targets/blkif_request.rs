//! blkback's request decoder on arbitrary ring slots and indirect pages:
//! it must never panic, and whatever it accepts must be within the limits
//! it was given.

use kxen_blkback::request::{
    extent_fits, parse_indirect_page, parse_request, BlkRequest, Limits, Segments,
};

/// One fuzz input; panics on any broken invariant. True when the input
/// was accepted as a request (and so went through every check).
pub fn blkif_request(data: &[u8]) -> bool {
    if data.len() < 4 {
        return false;
    }
    // The first bytes pick the device; the rest is the slot, then an
    // indirect page.
    let limits = Limits {
        capacity: u64::from(u16::from_le_bytes([data[0], data[1]])) * 8,
        max_indirect_segments: u16::from_le_bytes([data[2], data[3]]) % 4097,
    };
    let slot = &data[4..];
    let Ok(p) = parse_request(slot, &limits) else {
        return false;
    };
    let (sector, segments) = match p.request {
        BlkRequest::Read { sector, segments }
        | BlkRequest::Write {
            sector, segments, ..
        } => (sector, segments),
        BlkRequest::Discard {
            sector, nr_sectors, ..
        } => {
            assert!(extent_fits(sector, nr_sectors, limits.capacity));
            return true;
        }
        BlkRequest::Flush => return true,
    };
    match segments {
        Segments::Direct { segs, count } => {
            assert!(count <= 11);
            let total: u64 = segs[..count as usize].iter().map(|s| s.sectors()).sum();
            assert!(extent_fits(sector, total, limits.capacity));
            for s in &segs[..count as usize] {
                assert!(s.first_sect <= s.last_sect && s.last_sect < 8);
                assert!(s.byte_offset() + s.byte_len() <= 4096);
            }
        }
        Segments::Indirect {
            nr_pages, count, ..
        } => {
            assert!(count >= 1 && count <= limits.max_indirect_segments);
            assert!(nr_pages as usize <= 8);
            // The bytes after the slot stand in for the indirect pages.
            let pages = slot.get(112..).unwrap_or(&[]);
            let mut out = Vec::new();
            let mut left = count as usize;
            for page in pages.chunks(4096).take(nr_pages as usize) {
                let before = out.len();
                if parse_indirect_page(page, left, &mut out).is_err() {
                    return true;
                }
                left -= out.len() - before;
            }
            assert!(out.len() <= count as usize);
            for s in &out {
                assert!(s.first_sect <= s.last_sect && s.last_sect < 8);
            }
        }
    }
    true
}
