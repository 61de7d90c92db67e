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
//! | 5 | PV vCPUs: count u32, 0 u32, then per vCPU: id u32, basic length u32, extended length u32, 0 u32, the two bodies, zeroes to 8 | libxc X86_PV_VCPU_BASIC and X86_PV_VCPU_EXTENDED |
//! | 6 | PV page types: PAGE_DATA pfn entries (pfn, type in bits 63:60) of the page tables | the types of libxc PAGE_DATA |
//!
//! Kinds 5 and 6 are a classic PV domain's only (both optional).
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
    PvVcpus = 5,
    PvPageTypes = 6,
}

impl SectionKind {
    fn from_u32(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => SectionKind::HvmContext,
            2 => SectionKind::HvmParams,
            3 => SectionKind::TscInfo,
            4 => SectionKind::XenState,
            5 => SectionKind::PvVcpus,
            6 => SectionKind::PvPageTypes,
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

/// One PV vCPU's records: Xen's X86_PV_VCPU_BASIC body (a 64-bit
/// `vcpu_guest_context`) and X86_PV_VCPU_EXTENDED body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PvVcpuRecords {
    pub vcpu: u32,
    pub basic: Vec<u8>,
    pub extended: Vec<u8>,
}

/// The most PV vCPU records an image holds (kxen-vmm's PV vCPU limit is
/// lower).
pub const MAX_PV_VCPUS: usize = 128;

/// A parsed (or to-be-written) image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmmImage {
    pub hvm_context: Vec<u8>,
    pub hvm_params: Vec<(u64, u64)>,
    pub tsc: TscInfo,
    pub xen_state: Vec<u8>,
    /// A classic PV domain's vCPUs (empty for others).
    pub pv_vcpus: Vec<PvVcpuRecords>,
    /// A classic PV domain's page tables, as PAGE_DATA pfn entries.
    pub pv_page_types: Vec<u64>,
}

impl VmmImage {
    /// Whether this is a classic PV domain's image.
    pub fn is_pv(&self) -> bool {
        !self.pv_vcpus.is_empty()
    }
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
    let pv = image.is_pv();
    out.extend_from_slice(&(if pv { 6u32 } else { 4 }).to_le_bytes());
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
    if pv {
        let mut body = Vec::new();
        body.extend_from_slice(&(image.pv_vcpus.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for v in &image.pv_vcpus {
            body.extend_from_slice(&v.vcpu.to_le_bytes());
            body.extend_from_slice(&(v.basic.len() as u32).to_le_bytes());
            body.extend_from_slice(&(v.extended.len() as u32).to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(&v.basic);
            body.extend_from_slice(&v.extended);
            body.resize(body.len().next_multiple_of(8), 0);
        }
        push_section(&mut out, SectionKind::PvVcpus, &body);
        let types: Vec<u8> = image
            .pv_page_types
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        push_section(&mut out, SectionKind::PvPageTypes, &types);
    }
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
            SectionKind::PvVcpus => image.pv_vcpus = parse_pv_vcpus(body)?,
            SectionKind::PvPageTypes => {
                if len % 8 != 0 {
                    return Err(ImageError::Malformed(kind));
                }
                image.pv_page_types = body
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
                    .collect();
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

fn parse_pv_vcpus(body: &[u8]) -> Result<Vec<PvVcpuRecords>, ImageError> {
    let malformed = ImageError::Malformed(SectionKind::PvVcpus);
    let mut c = Cursor(body);
    let count = c.u32("PV vCPUs")? as usize;
    if c.u32("PV vCPUs")? != 0 {
        return Err(ImageError::Reserved);
    }
    if count == 0 || count > MAX_PV_VCPUS {
        return Err(malformed);
    }
    let mut vcpus = Vec::with_capacity(count);
    for _ in 0..count {
        let vcpu = c.u32("a PV vCPU")?;
        let basic_len = c.u32("a PV vCPU")? as usize;
        let extended_len = c.u32("a PV vCPU")? as usize;
        if c.u32("a PV vCPU")? != 0 {
            return Err(ImageError::Reserved);
        }
        let basic = c.take(basic_len, "a PV vCPU's basic record")?.to_vec();
        let extended = c
            .take(extended_len, "a PV vCPU's extended record")?
            .to_vec();
        let pad = (basic_len + extended_len).next_multiple_of(8) - (basic_len + extended_len);
        if c.take(pad, "a PV vCPU's padding")?.iter().any(|&b| b != 0) {
            return Err(ImageError::Reserved);
        }
        if vcpus.iter().any(|v: &PvVcpuRecords| v.vcpu == vcpu) {
            return Err(malformed);
        }
        vcpus.push(PvVcpuRecords {
            vcpu,
            basic,
            extended,
        });
    }
    if !c.0.is_empty() {
        return Err(malformed);
    }
    Ok(vcpus)
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
            ..VmmImage::default()
        }
    }

    fn pv_sample() -> VmmImage {
        VmmImage {
            pv_vcpus: vec![
                PvVcpuRecords {
                    vcpu: 0,
                    basic: vec![7; 13],
                    extended: vec![8; 5],
                },
                PvVcpuRecords {
                    vcpu: 1,
                    basic: vec![9; 16],
                    extended: Vec::new(),
                },
            ],
            pv_page_types: vec![0x42 | 0xc << 60, 0x43 | 0x1 << 60],
            ..sample()
        }
    }

    #[test]
    fn images_round_trip() {
        assert_eq!(parse(&encode(&sample())), Ok(sample()));
        assert_eq!(parse(&encode(&pv_sample())), Ok(pv_sample()));
    }

    #[test]
    fn every_truncation_is_refused() {
        for image in [sample(), pv_sample()] {
            let bytes = encode(&image);
            for len in 0..bytes.len() {
                assert!(parse(&bytes[..len]).is_err(), "truncated at {len}");
            }
        }
    }

    #[test]
    fn hostile_pv_vcpus_are_refused() {
        let mut twice = pv_sample();
        twice.pv_vcpus[1].vcpu = 0;
        assert_eq!(
            parse(&encode(&twice)),
            Err(ImageError::Malformed(SectionKind::PvVcpus))
        );
        // A record length past the section.
        let good = encode(&pv_sample());
        let at = good
            .windows(13)
            .position(|w| w == [7; 13])
            .expect("the first basic record");
        let mut bad = good.clone();
        bad[at - 12..at - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&bad).is_err());
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
