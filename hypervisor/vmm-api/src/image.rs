//! The VMM's part of a saved domain, as `save-state` hands it over and
//! `load-state` takes it back (issue 17): a small container of sections
//! that kxend turns into the migration stream's records and back.
//!
//! ```text
//! magic "KXENVMM\0" | version u32 = 1 | count u32
//! count x { kind u32 | reserved u32 = 0 | length u64 | body | zeroes to 8 }
//! ```
//!
//! All little-endian. Each kind appears at most once:
//!
//! | kind | body | stream record |
//! |---|---|---|
//! | 1 | an HVM context (`hvm_save_descriptor` + entry ..., END) | libxc HVM_CONTEXT |
//! | 2 | HVM params: (index u64, value u64) pairs | libxc HVM_PARAMS |
//! | 3 | TSC info: mode u32, khz u32, nsec u64, incarnation u32, 0 u32 | libxc X86_TSC_INFO |
//! | 4 | kxen's Xen state, opaque to Dom0 | libxl EMULATOR_CONTEXT |
//!
//! [`parse`] is written for hostile bytes (a restore file is untrusted).

/// The container's magic.
pub const MAGIC: &[u8; 8] = b"KXENVMM\0";
/// The version [`encode`] writes and [`parse`] reads.
pub const VERSION: u32 = 1;
/// The most bytes [`parse`] takes (the Xen state holds at most 73 pool
/// pages; the HVM context a few KiB per vCPU).
pub const MAX_IMAGE: usize = 16 << 20;

/// What a section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SectionKind {
    HvmContext = 1,
    HvmParams = 2,
    TscInfo = 3,
    XenState = 4,
}

impl SectionKind {
    fn from_u32(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => SectionKind::HvmContext,
            2 => SectionKind::HvmParams,
            3 => SectionKind::TscInfo,
            4 => SectionKind::XenState,
            _ => return None,
        })
    }
}

/// The libxc X86_TSC_INFO fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscInfo {
    pub mode: u32,
    pub khz: u32,
    pub nsec: u64,
    pub incarnation: u32,
}

/// A parsed (or to-be-written) image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmmImage {
    pub hvm_context: Vec<u8>,
    pub hvm_params: Vec<(u64, u64)>,
    pub tsc: TscInfo,
    pub xen_state: Vec<u8>,
}

/// Why bytes are not an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("VMM state: {0} bytes is more than the {MAX_IMAGE} allowed")]
    TooLarge(usize),
    #[error("VMM state: truncated in {0}")]
    Truncated(&'static str),
    #[error("VMM state: bad magic")]
    Magic,
    #[error("VMM state: version {0} (this kxen reads {VERSION})")]
    Version(u32),
    #[error("VMM state: unknown section kind {0}")]
    Kind(u32),
    #[error("VMM state: section {0:?} appears twice")]
    Duplicate(SectionKind),
    #[error("VMM state: section {0:?} is missing")]
    Missing(SectionKind),
    #[error("VMM state: section {0:?} is malformed")]
    Malformed(SectionKind),
    #[error("VMM state: non-zero reserved field or padding")]
    Reserved,
    #[error("VMM state: {0} bytes after the last section")]
    Trailing(usize),
}

fn push_section(out: &mut Vec<u8>, kind: SectionKind, body: &[u8]) {
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// The image's bytes.
pub fn encode(image: &VmmImage) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&4u32.to_le_bytes());
    push_section(&mut out, SectionKind::HvmContext, &image.hvm_context);
    let params: Vec<u8> = image
        .hvm_params
        .iter()
        .flat_map(|(i, v)| i.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    push_section(&mut out, SectionKind::HvmParams, &params);
    let mut tsc = Vec::with_capacity(24);
    tsc.extend_from_slice(&image.tsc.mode.to_le_bytes());
    tsc.extend_from_slice(&image.tsc.khz.to_le_bytes());
    tsc.extend_from_slice(&image.tsc.nsec.to_le_bytes());
    tsc.extend_from_slice(&image.tsc.incarnation.to_le_bytes());
    tsc.extend_from_slice(&0u32.to_le_bytes());
    push_section(&mut out, SectionKind::TscInfo, &tsc);
    push_section(&mut out, SectionKind::XenState, &image.xen_state);
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ImageError> {
        if self.0.len() < n {
            return Err(ImageError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ImageError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ImageError> {
        let lo = self.u32(what)? as u64;
        let hi = self.u32(what)? as u64;
        Ok(lo | hi << 32)
    }
}

/// Read an image, checking every length against the bytes present.
pub fn parse(bytes: &[u8]) -> Result<VmmImage, ImageError> {
    if bytes.len() > MAX_IMAGE {
        return Err(ImageError::TooLarge(bytes.len()));
    }
    let mut c = Cursor(bytes);
    if c.take(8, "the magic")? != MAGIC {
        return Err(ImageError::Magic);
    }
    let version = c.u32("the version")?;
    if version != VERSION {
        return Err(ImageError::Version(version));
    }
    let count = c.u32("the section count")?;
    let mut image = VmmImage::default();
    let mut seen = Vec::new();
    for _ in 0..count {
        let raw_kind = c.u32("a section header")?;
        let kind = SectionKind::from_u32(raw_kind).ok_or(ImageError::Kind(raw_kind))?;
        if c.u32("a section header")? != 0 {
            return Err(ImageError::Reserved);
        }
        let len = c.u64("a section header")?;
        let len = usize::try_from(len).map_err(|_| ImageError::Truncated("a section body"))?;
        let body = c.take(len, "a section body")?;
        let pad = len.next_multiple_of(8) - len;
        if c.take(pad, "a section's padding")?.iter().any(|&b| b != 0) {
            return Err(ImageError::Reserved);
        }
        if seen.contains(&kind) {
            return Err(ImageError::Duplicate(kind));
        }
        seen.push(kind);
        match kind {
            SectionKind::HvmContext => image.hvm_context = body.to_vec(),
            SectionKind::XenState => image.xen_state = body.to_vec(),
            SectionKind::HvmParams => {
                if len % 16 != 0 {
                    return Err(ImageError::Malformed(kind));
                }
                let mut p = Cursor(body);
                for _ in 0..len / 16 {
                    let index = p.u64("HVM params")?;
                    let value = p.u64("HVM params")?;
                    image.hvm_params.push((index, value));
                }
            }
            SectionKind::TscInfo => {
                if len != 24 {
                    return Err(ImageError::Malformed(kind));
                }
                let mut t = Cursor(body);
                image.tsc = TscInfo {
                    mode: t.u32("TSC info")?,
                    khz: t.u32("TSC info")?,
                    nsec: t.u64("TSC info")?,
                    incarnation: t.u32("TSC info")?,
                };
                if t.u32("TSC info")? != 0 {
                    return Err(ImageError::Reserved);
                }
            }
        }
    }
    if !c.0.is_empty() {
        return Err(ImageError::Trailing(c.0.len()));
    }
    for kind in [
        SectionKind::HvmContext,
        SectionKind::HvmParams,
        SectionKind::TscInfo,
        SectionKind::XenState,
    ] {
        if !seen.contains(&kind) {
            return Err(ImageError::Missing(kind));
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmmImage {
        VmmImage {
            hvm_context: vec![1, 2, 3],
            hvm_params: vec![(1, 2), (18, 0xfeff1)],
            tsc: TscInfo {
                mode: 0,
                khz: 2_000_000,
                nsec: 12345,
                incarnation: 0,
            },
            xen_state: b"state".to_vec(),
        }
    }

    #[test]
    fn images_round_trip() {
        assert_eq!(parse(&encode(&sample())), Ok(sample()));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = encode(&sample());
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(parse(&bad), Err(ImageError::Magic));
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(parse(&bad), Err(ImageError::Version(9)));
        // A section length far past the end.
        let mut bad = good.clone();
        bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(ImageError::Truncated(_))));
        // An unknown kind.
        let mut bad = good.clone();
        bad[16] = 77;
        assert_eq!(parse(&bad), Err(ImageError::Kind(77)));
        // Trailing bytes.
        let mut bad = good;
        bad.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&bad), Err(ImageError::Trailing(8)));
    }
}
