//! The record framing both layers share: an 8-octet header of `type` and
//! `body_length`, the body, and zero padding to the next multiple of 8
//! (libxc spec "Records", libxl spec "Record Overview").
use std::io::{self, Read, Write};

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{ReadError, WriteError, RECORD_ALIGN, REC_LENGTH_MAX};

/// `struct xc_sr_rhdr` / `libxl__sr_rec_hdr` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct WireRecordHeader {
    pub record_type: U32,
    pub body_length: U32,
}

/// Padding after a body of `length` octets.
pub(crate) fn padding_len(length: u64) -> usize {
    let rem = (length % RECORD_ALIGN as u64) as usize;
    (RECORD_ALIGN - rem) % RECORD_ALIGN
}

const ZEROES: [u8; RECORD_ALIGN] = [0; RECORD_ALIGN];

/// Writes one record whose body is `parts` back to back, so a caller can
/// frame data from several places (a header and guest pages) without
/// copying it together first. Returns the octets written.
pub(crate) fn write_record<W: Write>(
    out: &mut W,
    record_type: u32,
    parts: &[&[u8]],
) -> Result<u64, WriteError> {
    let length: u64 = parts.iter().map(|part| part.len() as u64).sum();
    if length > u64::from(REC_LENGTH_MAX) {
        return Err(WriteError::RecordTooLong {
            record_type,
            length,
        });
    }
    let header = WireRecordHeader {
        record_type: U32::new(record_type),
        body_length: U32::new(length as u32),
    };
    out.write_all(header.as_bytes())?;
    for part in parts {
        out.write_all(part)?;
    }
    let padding = padding_len(length);
    out.write_all(&ZEROES[..padding])?;
    Ok(8 + length + padding as u64)
}

/// Reads exactly `buf.len()` octets, naming `what` if the input ends first.
pub(crate) fn read_exact<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ReadError> {
    input
        .read_exact(buf)
        .map_err(|error| ReadError::from_io(error, what))
}

/// Reads a plain-data value.
pub(crate) fn read_value<R: Read, T: FromBytes + IntoBytes>(
    input: &mut R,
    what: &'static str,
) -> Result<T, ReadError> {
    let mut value = T::new_zeroed();
    read_exact(input, value.as_mut_bytes(), what)?;
    Ok(value)
}

/// A record header as read, before its body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    pub record_type: u32,
    pub body_length: u32,
}

impl RecordHeader {
    pub fn read<R: Read>(input: &mut R, layer: &'static str) -> Result<RecordHeader, ReadError> {
        let wire: WireRecordHeader = read_value(
            input,
            if layer == "libxc" {
                "libxc record header"
            } else {
                "libxl record header"
            },
        )?;
        Ok(RecordHeader {
            record_type: wire.record_type.get(),
            body_length: wire.body_length.get(),
        })
    }

    /// Refuses a body longer than `cap`.
    pub fn check_length(&self, layer: &'static str, cap: u32) -> Result<(), ReadError> {
        if self.body_length > cap {
            return Err(ReadError::RecordTooLong {
                layer,
                record_type: self.record_type,
                length: self.body_length,
                cap,
            });
        }
        Ok(())
    }
}

/// Reads a body of `length` octets that the caller has already checked
/// against its cap. The buffer grows only as octets arrive, so a length
/// that promises more than the input holds costs no more memory than the
/// input did.
pub(crate) fn read_body<R: Read>(
    input: &mut R,
    length: u32,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    input
        .take(u64::from(length))
        .read_to_end(&mut body)
        .map_err(|error| ReadError::from_io(error, what))?;
    if body.len() != length as usize {
        return Err(ReadError::Truncated { what });
    }
    Ok(body)
}

/// Reads and discards `length` octets.
pub(crate) fn skip<R: Read>(
    input: &mut R,
    length: u64,
    what: &'static str,
) -> Result<(), ReadError> {
    let copied = io::copy(&mut input.take(length), &mut io::sink())
        .map_err(|error| ReadError::from_io(error, what))?;
    if copied != length {
        return Err(ReadError::Truncated { what });
    }
    Ok(())
}

/// Reads the padding after a body of `length` octets and checks that it is
/// zero.
pub(crate) fn read_padding<R: Read>(
    input: &mut R,
    layer: &'static str,
    record_type: u32,
    length: u64,
) -> Result<(), ReadError> {
    let mut padding = [0u8; RECORD_ALIGN];
    let padding = &mut padding[..padding_len(length)];
    read_exact(input, padding, "record padding")?;
    if padding.iter().any(|&byte| byte != 0) {
        return Err(ReadError::BadPadding { layer, record_type });
    }
    Ok(())
}
