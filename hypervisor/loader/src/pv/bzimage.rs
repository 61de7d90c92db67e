//! The ELF kernel inside a bzImage.
//!
//! A bzImage is real-mode setup code, then a protected-mode part whose
//! `payload_offset`/`payload_length` (setup header, boot protocol 2.08 and
//! later) locate the compressed `vmlinux` ELF. The kernel's build appends
//! the uncompressed size as a little-endian u32 after the compressed stream;
//! decoders here stop at the end of their stream and use that trailer only
//! as an allocation hint. Decompressed output is capped at
//! [`MAX_KERNEL_SIZE`], so a hostile image cannot exhaust memory.

use std::borrow::Cow;
use std::io::Read;

use super::elf::{u16_at, u32_at};

/// The largest uncompressed kernel accepted. Distribution kernels are
/// 40-70 MiB.
pub const MAX_KERNEL_SIZE: usize = 256 << 20;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER: usize = 0x1f1;
/// The oldest boot protocol with payload_offset/payload_length.
const MIN_PROTOCOL: u16 = 0x0208;
const ELF_MAGIC: &[u8] = b"\x7fELF";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// The legacy LZ4 frame (`lz4 -l`), as the kernel's build writes it.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Uncompressed size of each legacy LZ4 block but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Largest compressed legacy LZ4 block (LZ4_COMPRESSBOUND of a full one).
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
/// xz dictionaries the kernel's build uses are 32 MiB at most.
const XZ_MAX_DICT: usize = 64 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    #[error("neither an ELF image nor a bzImage (no \"HdrS\" setup header)")]
    NotAKernel,
    #[error("bzImage boot protocol {0:#06x} is older than 2.08 and has no payload fields")]
    OldBootProtocol(u16),
    #[error("bzImage payload ({offset:#x}+{len:#x}) lies outside the {image_len:#x}-byte file")]
    PayloadOutsideImage {
        offset: u64,
        len: u64,
        image_len: usize,
    },
    #[error("bzImage payload is compressed with {0}, which this loader does not decompress")]
    UnsupportedCompression(&'static str),
    #[error("bzImage payload has an unknown format (first bytes {0:02x?})")]
    UnknownPayload(Vec<u8>),
    #[error("{format} payload is corrupt: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("decompressed kernel exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bzImage payload decompressed to something that is not an ELF image")]
    PayloadNotElf,
}

fn corrupt(format: &'static str, reason: impl std::fmt::Display) -> BzImageError {
    BzImageError::Corrupt {
        format,
        reason: reason.to_string(),
    }
}

/// The payload's format, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Elf,
    Gzip,
    Xz,
    Lz4Legacy,
    Zstd,
}

impl PayloadFormat {
    pub fn detect(payload: &[u8]) -> Result<PayloadFormat, BzImageError> {
        let starts = |magic: &[u8]| payload.starts_with(magic);
        if starts(ELF_MAGIC) {
            Ok(PayloadFormat::Elf)
        } else if starts(GZIP_MAGIC) {
            Ok(PayloadFormat::Gzip)
        } else if starts(XZ_MAGIC) {
            Ok(PayloadFormat::Xz)
        } else if starts(ZSTD_MAGIC) {
            Ok(PayloadFormat::Zstd)
        } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Ok(PayloadFormat::Lz4Legacy)
        } else if starts(b"BZh") {
            Err(BzImageError::UnsupportedCompression("bzip2"))
        } else if starts(&[0x5d, 0, 0]) {
            Err(BzImageError::UnsupportedCompression("lzma"))
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Err(BzImageError::UnsupportedCompression("lzo"))
        } else {
            Err(BzImageError::UnknownPayload(
                payload[..payload.len().min(8)].to_vec(),
            ))
        }
    }
}

/// The ELF kernel in `image`: the image itself when it is an ELF file, else
/// its bzImage payload, decompressed.
pub fn extract_elf(image: &[u8]) -> Result<Cow<'_, [u8]>, BzImageError> {
    if image.starts_with(ELF_MAGIC) {
        return Ok(Cow::Borrowed(image));
    }
    let payload = payload(image)?;
    let elf = decompress(payload, MAX_KERNEL_SIZE)?;
    if !elf.starts_with(ELF_MAGIC) {
        return Err(BzImageError::PayloadNotElf);
    }
    Ok(elf)
}

/// The compressed payload of a bzImage, located through its setup header.
pub fn payload(image: &[u8]) -> Result<&[u8], BzImageError> {
    if image.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(BzImageError::NotAKernel);
    }
    let version = u16_at(image, 0x206).ok_or(BzImageError::NotAKernel)?;
    if version < MIN_PROTOCOL {
        return Err(BzImageError::OldBootProtocol(version));
    }
    // setup_sects counts 512-byte sectors after the boot sector; 0 means 4.
    let setup_sects = match image[SETUP_HEADER] {
        0 => 4,
        n => u64::from(n),
    };
    let payload_offset = u32_at(image, 0x248).ok_or(BzImageError::NotAKernel)?;
    let payload_length = u32_at(image, 0x24c).ok_or(BzImageError::NotAKernel)?;
    let offset = (setup_sects + 1) * 512 + u64::from(payload_offset);
    let len = u64::from(payload_length);
    super::elf::slice_at(image, offset, len).ok_or(BzImageError::PayloadOutsideImage {
        offset,
        len,
        image_len: image.len(),
    })
}

/// Decompress a payload of any supported format into at most `limit` bytes.
/// A plain ELF payload is returned as is.
pub fn decompress(payload: &[u8], limit: usize) -> Result<Cow<'_, [u8]>, BzImageError> {
    let format = PayloadFormat::detect(payload)?;
    // The build's size trailer, trusted only as far as the cap.
    let size_hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| u32_at(payload, at))
        .map_or(0, |size| (size as usize).min(limit));
    let out = match format {
        PayloadFormat::Elf => {
            if payload.len() > limit {
                return Err(BzImageError::TooLarge { limit });
            }
            return Ok(Cow::Borrowed(payload));
        }
        PayloadFormat::Gzip => read_bounded(
            "gzip",
            flate2::read::GzDecoder::new(payload),
            limit,
            size_hint,
        )?,
        PayloadFormat::Zstd => {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| corrupt("zstd", e))?;
            read_bounded("zstd", decoder, limit, size_hint)?
        }
        PayloadFormat::Xz => xz(payload, limit, size_hint)?,
        PayloadFormat::Lz4Legacy => lz4_legacy(payload, limit, size_hint)?,
    };
    tracing::debug!(
        ?format,
        compressed = payload.len(),
        uncompressed = out.len(),
        "bzImage payload decompressed"
    );
    Ok(Cow::Owned(out))
}

/// Read all of `reader`, failing once it yields more than `limit` bytes.
fn read_bounded(
    format: &'static str,
    reader: impl Read,
    limit: usize,
    size_hint: usize,
) -> Result<Vec<u8>, BzImageError> {
    let mut out = Vec::with_capacity(size_hint);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(format, e))?;
    if out.len() > limit {
        return Err(BzImageError::TooLarge { limit });
    }
    Ok(out)
}

fn xz(payload: &[u8], limit: usize, size_hint: usize) -> Result<Vec<u8>, BzImageError> {
    use xz4rust::{XzDecoder, XzNextBlockResult};
    let mut decoder = XzDecoder::in_heap_with_alloc_dict_size(64 << 10, XZ_MAX_DICT);
    let mut out = Vec::with_capacity(size_hint);
    let mut chunk = vec![0u8; 64 << 10];
    let mut input = payload;
    loop {
        let step = decoder
            .decode(input, &mut chunk)
            .map_err(|e| corrupt("xz", format!("{e:?}")))?;
        input = input.get(step.input_consumed()..).unwrap_or_default();
        let produced = chunk.get(..step.output_produced()).unwrap_or_default();
        if out.len() + produced.len() > limit {
            return Err(BzImageError::TooLarge { limit });
        }
        out.extend_from_slice(produced);
        match step {
            XzNextBlockResult::EndOfStream(..) => return Ok(out),
            XzNextBlockResult::NeedMoreData(..) if !step.made_progress() => {
                return Err(corrupt("xz", "stream ends early"));
            }
            XzNextBlockResult::NeedMoreData(..) => {}
        }
    }
}

fn lz4_legacy(payload: &[u8], limit: usize, size_hint: usize) -> Result<Vec<u8>, BzImageError> {
    let mut out = Vec::with_capacity(size_hint);
    let mut block = Vec::new();
    let mut at = 4; // past the magic
    while let Some(chunk_size) = u32_at(payload, at) {
        at += 4;
        if chunk_size == LZ4_LEGACY_MAGIC {
            // Concatenated frames each start with the magic again.
            continue;
        }
        if at == payload.len() {
            // The last word is the build's size trailer, not a block.
            break;
        }
        let chunk_size = chunk_size as usize;
        if chunk_size > LZ4_LEGACY_MAX_COMPRESSED {
            return Err(corrupt("lz4", "block larger than the legacy format allows"));
        }
        let compressed = payload
            .get(at..at + chunk_size)
            .ok_or_else(|| corrupt("lz4", "block runs past the payload"))?;
        at += chunk_size;
        // A block holds at most 8 MiB, LZ4 expands at most 255-fold, and
        // output past the limit is refused anyway: size the buffer by the
        // least of the three, so small hostile blocks stay cheap.
        let room = limit - out.len();
        let buffer = LZ4_LEGACY_BLOCK
            .min(chunk_size.saturating_mul(255).saturating_add(64))
            .min(room.saturating_add(1));
        block.resize(buffer, 0);
        let n = match lz4_flex::block::decompress_into(compressed, &mut block) {
            Ok(n) => n,
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if buffer > room => {
                return Err(BzImageError::TooLarge { limit });
            }
            Err(e) => return Err(corrupt("lz4", e)),
        };
        if n > room {
            return Err(BzImageError::TooLarge { limit });
        }
        out.extend_from_slice(&block[..n]);
    }
    if out.is_empty() {
        return Err(corrupt("lz4", "no blocks"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::elf::test_image::{elf, note, Seg};
    use super::*;
    use std::io::Write;

    /// A tiny PV-looking ELF kernel: one segment and a few notes.
    pub(crate) fn sample_elf() -> Vec<u8> {
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"Xen\0", 3, &0xffff_ffff_8000_0000u64.to_le_bytes()));
        notes.extend(note(b"Xen\0", 1, &0xffff_ffff_8100_0000u64.to_le_bytes()));
        let text: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        elf(
            &[Seg {
                vaddr: 0xffff_ffff_8100_0000,
                paddr: 0x100_0000,
                data: text,
                memsz: 0x4000,
            }],
            &notes,
            false,
        )
    }

    /// [`sample_elf`] compressed with `xz --check=crc32 --x86 --lzma2`, the
    /// filter chain the kernel's build uses (xz4rust must undo the BCJ).
    const SAMPLE_ELF_XZ: &str = include_str!("testdata/sample_elf.xz.hex");

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn with_trailer(mut compressed: Vec<u8>, size: usize) -> Vec<u8> {
        compressed.extend((size as u32).to_le_bytes());
        compressed
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// The legacy LZ4 frame, split into blocks of `block` bytes.
    fn lz4_legacy_frame(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for piece in data.chunks(block) {
            let c = lz4_flex::block::compress(piece);
            out.extend((c.len() as u32).to_le_bytes());
            out.extend(c);
        }
        out
    }

    /// A bzImage around `payload`: boot sector, `setup_sects` setup
    /// sectors, then the protected-mode part with the payload at
    /// `payload_offset`.
    pub(crate) fn bzimage(payload: &[u8], setup_sects: u8, version: u16) -> Vec<u8> {
        let payload_offset = 0x3c0usize;
        let pm_start = (usize::from(setup_sects.max(1)) + 1) * 512;
        let mut image = vec![0u8; pm_start + payload_offset];
        image[SETUP_HEADER] = setup_sects;
        image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend(payload);
        image.extend([0xcc; 64]); // the rest of the protected-mode code
        image
    }

    #[test]
    fn every_codec_round_trips_through_a_bzimage() {
        let elf = sample_elf();
        let payloads = [
            ("elf", elf.clone()),
            ("gzip", with_trailer(gzip(&elf), elf.len())),
            ("xz", with_trailer(unhex(SAMPLE_ELF_XZ), elf.len())),
            ("zstd", with_trailer(zstd(&elf), elf.len())),
            ("lz4", with_trailer(lz4_legacy_frame(&elf, 1024), elf.len())),
        ];
        for (name, payload) in payloads {
            let image = bzimage(&payload, 27, 0x020f);
            let out = extract_elf(&image).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&out[..], &elf[..], "{name}");
        }
        // A bare ELF file passes through untouched, without a copy.
        assert!(matches!(extract_elf(&elf), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn lz4_without_trailer_and_with_repeated_magic() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let mut frame = lz4_legacy_frame(&data[..6000], 4096);
        // A second frame concatenated: its magic is skipped.
        frame.extend(&lz4_legacy_frame(&data[6000..], 4096));
        assert_eq!(&decompress(&frame, 1 << 20).unwrap()[..], &data[..]);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let elf = sample_elf();
        let image = bzimage(&elf, 0, 0x0208);
        // bzimage() laid the payload out for one setup sector; with the
        // field 0 (four sectors) the loader must look 3 sectors further.
        assert!(extract_elf(&image).is_err());
        let mut image = vec![0u8; 5 * 512 + 0x3c0];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x0208u16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&0x3c0u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(elf.len() as u32).to_le_bytes());
        image.extend(&elf);
        assert_eq!(&extract_elf(&image).unwrap()[..], &elf[..]);
    }

    #[test]
    fn hostile_images_are_errors() {
        let elf = sample_elf();
        assert_eq!(extract_elf(b"MZ\0\0"), Err(BzImageError::NotAKernel));
        assert_eq!(extract_elf(&[]), Err(BzImageError::NotAKernel));
        assert_eq!(
            extract_elf(&bzimage(&elf, 4, 0x0207)),
            Err(BzImageError::OldBootProtocol(0x0207))
        );
        // payload_length past the end of the file.
        let mut long = bzimage(&elf, 4, 0x020f);
        long[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_elf(&long),
            Err(BzImageError::PayloadOutsideImage { .. })
        ));
        // Formats that are recognised but not decoded, and garbage.
        for (payload, expected) in [
            (
                &b"BZh91AY"[..],
                BzImageError::UnsupportedCompression("bzip2"),
            ),
            (
                &[0x89, b'L', b'Z', b'O', 0][..],
                BzImageError::UnsupportedCompression("lzo"),
            ),
        ] {
            assert_eq!(extract_elf(&bzimage(payload, 4, 0x020f)), Err(expected));
        }
        assert!(matches!(
            extract_elf(&bzimage(b"\x00\x01\x02\x03", 4, 0x020f)),
            Err(BzImageError::UnknownPayload(_))
        ));
        // Decompresses fine, but not to an ELF image.
        let text = gzip(b"hello, not an elf");
        assert_eq!(
            extract_elf(&bzimage(&text, 4, 0x020f)),
            Err(BzImageError::PayloadNotElf)
        );
        // Truncated streams of each codec.
        for payload in [gzip(&elf), unhex(SAMPLE_ELF_XZ), zstd(&elf)] {
            let cut = &payload[..payload.len() / 2];
            assert!(
                matches!(decompress(cut, 1 << 20), Err(BzImageError::Corrupt { .. })),
                "{:?}",
                decompress(cut, 1 << 20).map(|v| v.len())
            );
        }
        let mut lz4 = lz4_legacy_frame(&elf, 1024);
        lz4.truncate(lz4.len() - 10);
        assert!(matches!(
            decompress(&lz4, 1 << 20),
            Err(BzImageError::Corrupt { .. })
        ));
    }

    #[test]
    fn output_is_capped() {
        // 1 MiB of zeros compresses to almost nothing: a decompression bomb
        // in miniature, against a 64 KiB cap.
        let zeros = vec![0u8; 1 << 20];
        let limit = 64 << 10;
        for payload in [
            gzip(&zeros),
            zstd(&zeros),
            lz4_legacy_frame(&zeros, 1 << 20),
        ] {
            assert_eq!(
                decompress(&payload, limit),
                Err(BzImageError::TooLarge { limit })
            );
        }
        let elf = sample_elf();
        assert_eq!(
            decompress(&unhex(SAMPLE_ELF_XZ), 100),
            Err(BzImageError::TooLarge { limit: 100 })
        );
        assert_eq!(
            decompress(&elf, 100),
            Err(BzImageError::TooLarge { limit: 100 })
        );
    }
}
