//! Guest requests decoded: a pure function from a ring slot's bytes to a
//! typed request, so hostile input is checked in one place and can be
//! fuzzed without a guest.
//!
//! The caller copies the slot out of the shared page first; nothing here
//! reads guest memory twice.

use xen_abi::io::blkif::*;
use zerocopy::FromBytes;

/// One data segment: sectors `first_sect..=last_sect` of a granted page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
}

impl Segment {
    /// Check a wire segment: the range must be non-empty and in the page.
    pub fn from_wire(w: &RequestSegment) -> Result<Segment, &'static str> {
        if w.first_sect > w.last_sect {
            return Err("segment first_sect > last_sect");
        }
        if w.last_sect >= SECTORS_PER_PAGE {
            return Err("segment last_sect beyond the page");
        }
        Ok(Segment {
            gref: w.gref,
            first_sect: w.first_sect,
            last_sect: w.last_sect,
        })
    }

    /// 512-byte sectors this segment moves.
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }

    /// Where the data starts in the granted page.
    pub fn byte_offset(&self) -> usize {
        usize::from(self.first_sect) * SECTOR_SIZE
    }

    pub fn byte_len(&self) -> usize {
        self.sectors() as usize * SECTOR_SIZE
    }
}

/// Where a read or write finds its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segments {
    /// In the request itself (at most 11, already checked).
    Direct {
        segs: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
        count: u8,
    },
    /// In `nr_pages` granted indirect pages, still to be read and checked
    /// with [`parse_indirect_page`].
    Indirect {
        pages: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
        nr_pages: u8,
        count: u16,
    },
}

impl Segments {
    pub fn count(&self) -> usize {
        match *self {
            Segments::Direct { count, .. } => count.into(),
            Segments::Indirect { count, .. } => count.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkRequest {
    Read {
        sector: u64,
        segments: Segments,
    },
    /// A write; `barrier` orders it after all earlier writes and before
    /// all later ones (it may have no segments: a pure barrier).
    Write {
        sector: u64,
        segments: Segments,
        barrier: bool,
    },
    Flush,
    Discard {
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    },
}

/// A well-formed request: answer it with `id` and `operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub id: u64,
    /// The operation to echo in the response (for indirect requests, the
    /// inner read/write, as Linux's backends answer).
    pub operation: u8,
    pub request: BlkRequest,
}

/// A request refused without touching the disk or any grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub id: u64,
    pub operation: u8,
    /// BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP.
    pub status: i16,
    pub reason: &'static str,
}

/// What the backend serves, for checks that depend on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// The most segments an indirect request may carry (0: no indirect).
    pub max_indirect_segments: u16,
}

/// True if `sectors` sectors from `sector` lie on a disk of `capacity`.
pub fn extent_fits(sector: u64, sectors: u64, capacity: u64) -> bool {
    sector
        .checked_add(sectors)
        .is_some_and(|end| end <= capacity)
}

/// Decode one request slot ([`ENTRY_SIZE`] bytes; shorter input is
/// rejected, longer is ignored past the slot).
pub fn parse_request(slot: &[u8], limits: &Limits) -> Result<Parsed, Rejected> {
    let operation = slot.first().copied().unwrap_or(0xff);
    let id = slot
        .get(8..16)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let reject = |status, reason| Rejected {
        id,
        operation,
        status,
        reason,
    };
    let error = |reason| reject(BLKIF_RSP_ERROR, reason);
    let Some(slot) = slot.get(..ENTRY_SIZE) else {
        return Err(error("short request slot"));
    };
    match operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER => {
            let (req, _) = Request::read_from_prefix(slot).map_err(|_| error("short request"))?;
            let n = usize::from(req.nr_segments);
            let barrier = operation == BLKIF_OP_WRITE_BARRIER;
            if n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                return Err(error("too many segments"));
            }
            if n == 0 && !barrier {
                return Err(error("read/write without segments"));
            }
            let mut segs = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            let mut sectors = 0u64;
            for (dst, w) in segs.iter_mut().zip(&req.seg[..n]) {
                *dst = Segment::from_wire(w).map_err(error)?;
                sectors += dst.sectors();
            }
            if !extent_fits(req.sector_number, sectors, limits.capacity) {
                return Err(error("beyond the end of the disk"));
            }
            let segments = Segments::Direct {
                segs,
                count: req.nr_segments,
            };
            let sector = req.sector_number;
            let request = if operation == BLKIF_OP_READ {
                BlkRequest::Read { sector, segments }
            } else {
                BlkRequest::Write {
                    sector,
                    segments,
                    barrier,
                }
            };
            Ok(Parsed {
                id,
                operation,
                request,
            })
        }
        BLKIF_OP_FLUSH_DISKCACHE => Ok(Parsed {
            id,
            operation,
            request: BlkRequest::Flush,
        }),
        BLKIF_OP_DISCARD => {
            let (req, _) =
                RequestDiscard::read_from_prefix(slot).map_err(|_| error("short request"))?;
            if !extent_fits(req.sector_number, req.nr_sectors, limits.capacity) {
                return Err(error("discard beyond the end of the disk"));
            }
            Ok(Parsed {
                id,
                operation,
                request: BlkRequest::Discard {
                    sector: req.sector_number,
                    nr_sectors: req.nr_sectors,
                    secure: req.flag & BLKIF_DISCARD_SECURE != 0,
                },
            })
        }
        BLKIF_OP_INDIRECT => {
            if limits.max_indirect_segments == 0 {
                return Err(reject(
                    BLKIF_RSP_EOPNOTSUPP,
                    "indirect requests not offered",
                ));
            }
            let (req, _) =
                RequestIndirect::read_from_prefix(slot).map_err(|_| error("short request"))?;
            let inner = req.indirect_op;
            let error = |reason| Rejected {
                id,
                operation: inner,
                status: BLKIF_RSP_ERROR,
                reason,
            };
            if inner != BLKIF_OP_READ && inner != BLKIF_OP_WRITE {
                return Err(error("indirect request is neither read nor write"));
            }
            let count = req.nr_segments;
            if count == 0 || count > limits.max_indirect_segments {
                return Err(error("indirect segment count out of range"));
            }
            let nr_pages = indirect_pages(count.into());
            if nr_pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(error("too many indirect pages"));
            }
            // Each segment moves at least one sector: a request that
            // cannot fit even so is refused before any page is mapped.
            if !extent_fits(req.sector_number, count.into(), limits.capacity) {
                return Err(error("beyond the end of the disk"));
            }
            let segments = Segments::Indirect {
                pages: req.indirect_grefs,
                nr_pages: nr_pages as u8,
                count,
            };
            let sector = req.sector_number;
            let request = if inner == BLKIF_OP_READ {
                BlkRequest::Read { sector, segments }
            } else {
                BlkRequest::Write {
                    sector,
                    segments,
                    barrier: false,
                }
            };
            Ok(Parsed {
                id,
                operation: inner,
                request,
            })
        }
        _ => Err(reject(BLKIF_RSP_EOPNOTSUPP, "unknown operation")),
    }
}

/// Append the first `count` segment descriptors of indirect page `page`
/// (a copy of the granted page) to `out`, checking each. `count` is capped
/// at one page's worth.
pub fn parse_indirect_page(
    page: &[u8],
    count: usize,
    out: &mut Vec<Segment>,
) -> Result<(), &'static str> {
    let count = count.min(SEGMENTS_PER_INDIRECT_FRAME);
    let bytes = page
        .get(..count * SEGMENT_SIZE)
        .ok_or("indirect page too short")?;
    for chunk in bytes.chunks_exact(SEGMENT_SIZE) {
        let (w, _) =
            RequestSegment::read_from_prefix(chunk).map_err(|_| "indirect segment too short")?;
        out.push(Segment::from_wire(&w)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    const LIMITS: Limits = Limits {
        capacity: 1000,
        max_indirect_segments: 256,
    };

    fn rw(op: u8, n: u8, sector: u64) -> Request {
        let mut r = Request {
            operation: op,
            nr_segments: n,
            id: 0xabc,
            sector_number: sector,
            ..Default::default()
        };
        for s in &mut r.seg {
            s.last_sect = 7;
        }
        r
    }

    #[test]
    fn read_write_and_barrier() {
        let p = parse_request(rw(BLKIF_OP_READ, 2, 10).as_bytes(), &LIMITS).unwrap();
        assert_eq!(p.id, 0xabc);
        match p.request {
            BlkRequest::Read {
                sector: 10,
                segments,
            } => assert_eq!(segments.count(), 2),
            other => panic!("{other:?}"),
        }
        let p = parse_request(rw(BLKIF_OP_WRITE_BARRIER, 0, 0).as_bytes(), &LIMITS).unwrap();
        assert!(matches!(p.request, BlkRequest::Write { barrier: true, .. }));
        // Exactly up to the end of the disk is fine, one more is not.
        assert!(parse_request(rw(BLKIF_OP_WRITE, 1, 992).as_bytes(), &LIMITS).is_ok());
        let e = parse_request(rw(BLKIF_OP_WRITE, 1, 993).as_bytes(), &LIMITS).unwrap_err();
        assert_eq!(e.status, BLKIF_RSP_ERROR);
        assert_eq!(e.id, 0xabc);
        let e = parse_request(rw(BLKIF_OP_READ, 1, u64::MAX - 2).as_bytes(), &LIMITS);
        assert!(e.is_err());
    }

    #[test]
    fn bad_segments_are_errors() {
        assert!(parse_request(rw(BLKIF_OP_READ, 0, 0).as_bytes(), &LIMITS).is_err());
        assert!(parse_request(rw(BLKIF_OP_READ, 12, 0).as_bytes(), &LIMITS).is_err());
        let mut r = rw(BLKIF_OP_READ, 1, 0);
        r.seg[0].first_sect = 5;
        r.seg[0].last_sect = 4;
        assert!(parse_request(r.as_bytes(), &LIMITS).is_err());
        r.seg[0].first_sect = 0;
        r.seg[0].last_sect = 8;
        assert!(parse_request(r.as_bytes(), &LIMITS).is_err());
        assert!(parse_request(&r.as_bytes()[..100], &LIMITS).is_err());
        assert!(parse_request(&[], &LIMITS).is_err());
    }

    #[test]
    fn unknown_ops_are_unsupported() {
        for op in [BLKIF_OP_RESERVED_1, 7, 0xff] {
            let e = parse_request(rw(op, 1, 0).as_bytes(), &LIMITS).unwrap_err();
            assert_eq!(e.status, BLKIF_RSP_EOPNOTSUPP);
            assert_eq!(e.operation, op);
        }
    }

    #[test]
    fn discard_and_indirect() {
        let d = RequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            id: 7,
            sector_number: 8,
            nr_sectors: 16,
            ..Default::default()
        };
        let mut slot = [0u8; ENTRY_SIZE];
        slot[..32].copy_from_slice(d.as_bytes());
        let p = parse_request(&slot, &LIMITS).unwrap();
        assert_eq!(
            p.request,
            BlkRequest::Discard {
                sector: 8,
                nr_sectors: 16,
                secure: true
            }
        );
        let mut d2 = d;
        d2.nr_sectors = u64::MAX;
        slot[..32].copy_from_slice(d2.as_bytes());
        assert!(parse_request(&slot, &LIMITS).is_err());

        let ind = RequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 513,
            id: 9,
            sector_number: 0,
            ..Default::default()
        };
        slot = [0; ENTRY_SIZE];
        slot[..64].copy_from_slice(ind.as_bytes());
        let p = parse_request(&slot, &LIMITS).unwrap_err();
        assert_eq!((p.id, p.operation), (9, BLKIF_OP_WRITE));
        let big = Limits {
            max_indirect_segments: 4096,
            ..LIMITS
        };
        let p = parse_request(&slot, &big).unwrap();
        assert_eq!(p.operation, BLKIF_OP_WRITE);
        match p.request {
            BlkRequest::Write {
                segments:
                    Segments::Indirect {
                        nr_pages, count, ..
                    },
                ..
            } => assert_eq!((nr_pages, count), (2, 513)),
            other => panic!("{other:?}"),
        }
        let off = Limits {
            max_indirect_segments: 0,
            ..LIMITS
        };
        assert_eq!(
            parse_request(&slot, &off).unwrap_err().status,
            BLKIF_RSP_EOPNOTSUPP
        );
    }

    #[test]
    fn indirect_pages_are_checked() {
        let mut page = vec![0u8; 4096];
        let seg = RequestSegment {
            gref: 3,
            first_sect: 1,
            last_sect: 6,
            _pad: [0; 2],
        };
        page[..8].copy_from_slice(seg.as_bytes());
        page[8..16].copy_from_slice(seg.as_bytes());
        let mut out = Vec::new();
        parse_indirect_page(&page, 2, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].sectors(), 6);
        assert_eq!(out[0].byte_offset(), 512);
        page[4] = 7;
        assert!(parse_indirect_page(&page, 1, &mut out).is_err());
        assert!(parse_indirect_page(&page[..10], 2, &mut out).is_err());
    }
}
