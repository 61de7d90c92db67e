//! libxl's domain image format, version 2
//! (`docs/specs/libxl-migration-stream.pandoc`): the header and the records
//! around the libxc stream.
//!
//! A LIBXC_CONTEXT record has no body: the libxc stream follows it in the
//! same byte stream, and libxl's records resume after libxc's END (or,
//! in a checkpointed stream, after each CHECKPOINT until libxl's
//! CHECKPOINT_END). The writers and readers of the two layers therefore
//! hand the one output or input to each other by value.
use std::io::{Read, Write};

use tracing::{debug, trace, warn};
use zerocopy::byteorder::{big_endian, little_endian};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::framing::{self, RecordHeader};
use crate::libxc::{DomainHeader, LibxcReader, LibxcResume, LibxcWriter};
use crate::{Limits, ReadError, WriteError, RECORD_TYPE_OPTIONAL};

/// Header `ident`: "LibxlFmt".
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
/// The header version this crate writes and reads.
pub const LIBXL_VERSION: u32 = 2;
/// Header `options` bit 0: the stream is big-endian.
pub const LIBXL_OPT_BIG_ENDIAN: u32 = 1 << 0;
/// Header `options` bit 1: the stream was converted from the legacy format.
pub const LIBXL_OPT_LEGACY: u32 = 1 << 1;

/// libxl record types.
pub mod record_type {
    pub const END: u32 = 0;
    pub const LIBXC_CONTEXT: u32 = 1;
    pub const EMULATOR_XENSTORE_DATA: u32 = 2;
    pub const EMULATOR_CONTEXT: u32 = 3;
    pub const CHECKPOINT_END: u32 = 4;
    pub const CHECKPOINT_STATE: u32 = 5;
}

/// The spec's name for a libxl record type, for messages.
pub fn record_name(record_type: u32) -> &'static str {
    use record_type::*;
    match record_type {
        END => "END",
        LIBXC_CONTEXT => "LIBXC_CONTEXT",
        EMULATOR_XENSTORE_DATA => "EMULATOR_XENSTORE_DATA",
        EMULATOR_CONTEXT => "EMULATOR_CONTEXT",
        CHECKPOINT_END => "CHECKPOINT_END",
        CHECKPOINT_STATE => "CHECKPOINT_STATE",
        _ => "unknown",
    }
}

/// The emulator sub-header's `emulator_id`. Xen defines 0 to 2; the rest
/// are "reserved for future emulators" and read as they are. Debian's
/// verify-stream-v2 (Xen 4.17) refuses ids other than 0 to 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatorId(pub u32);

impl EmulatorId {
    /// "Unknown (in the case of a legacy stream)".
    pub const UNKNOWN: EmulatorId = EmulatorId(0);
    pub const QEMU_TRADITIONAL: EmulatorId = EmulatorId(1);
    pub const QEMU_UPSTREAM: EmulatorId = EmulatorId(2);
}

/// CHECKPOINT_STATE `control_id`s (COLO).
pub mod checkpoint_state {
    pub const NEW: u32 = 0;
    pub const SVM_SUSPENDED: u32 = 1;
    pub const SVM_READY: u32 = 2;
    pub const SVM_RESUMED: u32 = 3;
}

/// What the libxl header says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibxlHeader {
    /// The stream was made by Xen's legacy conversion tool.
    pub legacy_converted: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireLibxlHeader {
    ident: big_endian::U64,
    version: big_endian::U32,
    options: big_endian::U32,
}

/// `libxl__sr_emulator_hdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireEmulatorHeader {
    id: little_endian::U32,
    index: little_endian::U32,
}

/// A libxl record as the reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibxlRecord {
    End,
    /// The libxc stream follows: take it with [`LibxlReader::into_libxc`].
    LibxcContext,
    /// Key/value pairs for an emulator's xenstore tree, keys relative to
    /// it.
    EmulatorXenstoreData {
        emulator: EmulatorId,
        index: u32,
        pairs: Vec<(String, String)>,
    },
    /// An emulator's opaque state.
    EmulatorContext {
        emulator: EmulatorId,
        index: u32,
        context: Vec<u8>,
    },
    /// The end of a checkpoint's libxl records; in a checkpointed stream
    /// the libxc stream continues: take it with [`LibxlReader::into_libxc`].
    CheckpointEnd,
    /// COLO's control message, one of [`checkpoint_state`].
    CheckpointState(u32),
    /// A record with the optional bit set that this reader does not know;
    /// skipped.
    UnknownOptional {
        record_type: u32,
        body_length: u32,
    },
}

/// Whether `key` is a xenstore key as the spec has them: alphanumeric ASCII
/// and `-/_@`.
fn xenstore_key_is_valid(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-/_@".contains(&byte))
}

// ---- writer -----------------------------------------------------------------

/// Where a libxl writer stands with respect to the libxc stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LibxcProgress {
    NotStarted,
    /// libxc wrote a CHECKPOINT: libxl's checkpoint records, then
    /// CHECKPOINT_END, then libxc again.
    AtCheckpoint,
    /// CHECKPOINT_END written; libxc's records come next.
    CheckpointEnded,
    Finished,
}

/// Writes a libxl stream to `out`.
pub struct LibxlWriter<W: Write> {
    out: W,
    bytes_written: u64,
    libxc: LibxcProgress,
}

impl<W: Write> LibxlWriter<W> {
    /// Writes the libxl header.
    pub fn new(mut out: W) -> Result<LibxlWriter<W>, WriteError> {
        let header = WireLibxlHeader {
            ident: big_endian::U64::new(LIBXL_IDENT),
            version: big_endian::U32::new(LIBXL_VERSION),
            options: big_endian::U32::new(0),
        };
        out.write_all(header.as_bytes())?;
        debug!("libxl stream started");
        Ok(LibxlWriter {
            out,
            bytes_written: 16,
            libxc: LibxcProgress::NotStarted,
        })
    }

    pub(crate) fn after_libxc(out: W, bytes_written: u64, at_checkpoint: bool) -> LibxlWriter<W> {
        LibxlWriter {
            out,
            bytes_written,
            libxc: if at_checkpoint {
                LibxcProgress::AtCheckpoint
            } else {
                LibxcProgress::Finished
            },
        }
    }

    /// Octets written so far, the libxc stream's included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn write_parts(&mut self, record_type: u32, parts: &[&[u8]]) -> Result<(), WriteError> {
        if self.libxc == LibxcProgress::CheckpointEnded {
            return Err(WriteError::WrongLayer(
                "after CHECKPOINT_END the libxc stream continues: use resume_libxc",
            ));
        }
        let written = framing::write_record(&mut self.out, record_type, parts)?;
        self.bytes_written += written;
        trace!(
            record = record_name(record_type),
            written,
            "libxl record written"
        );
        Ok(())
    }

    /// Writes LIBXC_CONTEXT and the libxc stream's headers, and hands the
    /// output to the libxc writer; its `finish_into_libxl` hands it back.
    pub fn begin_libxc(mut self, domain: &DomainHeader) -> Result<LibxcWriter<W>, WriteError> {
        if self.libxc != LibxcProgress::NotStarted {
            return Err(WriteError::WrongLayer(
                "a libxl stream carries one libxc stream",
            ));
        }
        self.write_parts(record_type::LIBXC_CONTEXT, &[])?;
        LibxcWriter::start(self.out, domain, Some(self.bytes_written))
    }

    /// Continues the libxc stream after a checkpoint's CHECKPOINT_END.
    pub fn resume_libxc(self) -> Result<LibxcWriter<W>, WriteError> {
        if self.libxc != LibxcProgress::CheckpointEnded {
            return Err(WriteError::WrongLayer(
                "the libxc stream resumes only after CHECKPOINT_END",
            ));
        }
        Ok(LibxcWriter::resume(self.out, self.bytes_written))
    }

    /// EMULATOR_XENSTORE_DATA: `pairs` of keys (relative to the emulator's
    /// tree) and values.
    pub fn write_emulator_xenstore_data(
        &mut self,
        emulator: EmulatorId,
        index: u32,
        pairs: &[(&str, &str)],
    ) -> Result<(), WriteError> {
        let mut data = Vec::new();
        for (key, value) in pairs {
            if !xenstore_key_is_valid(key) {
                return Err(WriteError::BadXenstoreString {
                    what: "key",
                    text: key.to_string(),
                    problem: "keys are non-empty alphanumeric ASCII and -/_@",
                });
            }
            if value.contains('\0') {
                return Err(WriteError::BadXenstoreString {
                    what: "value",
                    text: value.to_string(),
                    problem: "values cannot hold NUL",
                });
            }
            data.extend_from_slice(key.as_bytes());
            data.push(0);
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        let head = WireEmulatorHeader {
            id: little_endian::U32::new(emulator.0),
            index: little_endian::U32::new(index),
        };
        self.write_parts(
            record_type::EMULATOR_XENSTORE_DATA,
            &[head.as_bytes(), &data],
        )
    }

    /// EMULATOR_CONTEXT: an emulator's opaque state.
    pub fn write_emulator_context(
        &mut self,
        emulator: EmulatorId,
        index: u32,
        context: &[u8],
    ) -> Result<(), WriteError> {
        let head = WireEmulatorHeader {
            id: little_endian::U32::new(emulator.0),
            index: little_endian::U32::new(index),
        };
        self.write_parts(record_type::EMULATOR_CONTEXT, &[head.as_bytes(), context])
    }

    /// CHECKPOINT_END: the checkpoint's libxl records are done.
    pub fn write_checkpoint_end(&mut self) -> Result<(), WriteError> {
        if self.libxc != LibxcProgress::AtCheckpoint {
            return Err(WriteError::WrongLayer(
                "CHECKPOINT_END ends a checkpoint: the libxc stream must be at a CHECKPOINT",
            ));
        }
        self.write_parts(record_type::CHECKPOINT_END, &[])?;
        self.libxc = LibxcProgress::CheckpointEnded;
        Ok(())
    }

    /// CHECKPOINT_STATE with one of [`checkpoint_state`].
    pub fn write_checkpoint_state(&mut self, control_id: u32) -> Result<(), WriteError> {
        self.write_parts(
            record_type::CHECKPOINT_STATE,
            &[little_endian::U32::new(control_id).as_bytes()],
        )
    }

    /// Any record from its body, for records the methods above do not
    /// cover.
    pub fn write_record(&mut self, record_type: u32, body: &[u8]) -> Result<(), WriteError> {
        self.write_parts(record_type, &[body])
    }

    /// Writes END and returns the output, flushed.
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.write_parts(record_type::END, &[])?;
        self.out.flush()?;
        debug!(bytes = self.bytes_written, "libxl stream finished");
        Ok(self.out)
    }
}

// ---- reader -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderPosition {
    Records,
    /// LIBXC_CONTEXT read: the libxc stream's headers come next.
    LibxcNext,
    /// CHECKPOINT_END read inside a checkpointed stream: libxc's records
    /// come next.
    LibxcResumesNext,
    Ended,
}

/// Reads a libxl stream from `input`.
pub struct LibxlReader<R: Read> {
    input: R,
    limits: Limits,
    header: LibxlHeader,
    position: ReaderPosition,
    /// The libxc stream's state while libxl reads a checkpoint's records.
    libxc_at_checkpoint: Option<LibxcResume>,
    libxc_seen: bool,
}

impl<R: Read> LibxlReader<R> {
    /// Reads the libxl header.
    pub fn new(mut input: R, limits: Limits) -> Result<LibxlReader<R>, ReadError> {
        let wire: WireLibxlHeader = framing::read_value(&mut input, "libxl header")?;
        if wire.ident.get() != LIBXL_IDENT {
            return Err(ReadError::BadLibxlIdent(wire.ident.get()));
        }
        if wire.version.get() != LIBXL_VERSION {
            return Err(ReadError::UnsupportedLibxlVersion(wire.version.get()));
        }
        let options = wire.options.get();
        if options & LIBXL_OPT_BIG_ENDIAN != 0 {
            return Err(ReadError::BigEndian("libxl header"));
        }
        if options & !(LIBXL_OPT_BIG_ENDIAN | LIBXL_OPT_LEGACY) != 0 {
            warn!(
                options,
                "libxl header has reserved option bits set; ignored"
            );
        }
        let header = LibxlHeader {
            legacy_converted: options & LIBXL_OPT_LEGACY != 0,
        };
        debug!(?header, "libxl stream opened");
        Ok(LibxlReader {
            input,
            limits,
            header,
            position: ReaderPosition::Records,
            libxc_at_checkpoint: None,
            libxc_seen: false,
        })
    }

    pub(crate) fn after_libxc(
        input: R,
        limits: Limits,
        header: LibxlHeader,
        libxc_at_checkpoint: Option<LibxcResume>,
    ) -> LibxlReader<R> {
        LibxlReader {
            input,
            limits,
            header,
            position: ReaderPosition::Records,
            libxc_at_checkpoint,
            libxc_seen: true,
        }
    }

    pub fn header(&self) -> &LibxlHeader {
        &self.header
    }

    /// Reads the next libxl record.
    pub fn next_record(&mut self) -> Result<LibxlRecord, ReadError> {
        match self.position {
            ReaderPosition::Records => {}
            ReaderPosition::Ended => return Err(ReadError::AfterEnd { layer: "libxl" }),
            ReaderPosition::LibxcNext | ReaderPosition::LibxcResumesNext => {
                return Err(ReadError::WrongLayer(
                    "the libxc stream comes next: use into_libxc",
                ))
            }
        }
        let header = RecordHeader::read(&mut self.input, "libxl")?;
        header.check_length("libxl", self.limits.max_record_length)?;
        let name = record_name(header.record_type);
        trace!(record = name, length = header.body_length, "libxl record");

        if name == "unknown" {
            if header.record_type & RECORD_TYPE_OPTIONAL == 0 {
                return Err(ReadError::UnknownMandatoryRecord {
                    layer: "libxl",
                    record_type: header.record_type,
                });
            }
            debug!(
                record_type = header.record_type,
                "skipping an unknown optional libxl record"
            );
            framing::skip(
                &mut self.input,
                u64::from(header.body_length),
                "optional record body",
            )?;
            framing::read_padding(
                &mut self.input,
                "libxl",
                header.record_type,
                u64::from(header.body_length),
            )?;
            return Ok(LibxlRecord::UnknownOptional {
                record_type: header.record_type,
                body_length: header.body_length,
            });
        }

        header.check_length("libxl", self.limits.max_buffered_length)?;
        let body = framing::read_body(&mut self.input, header.body_length, "record body")?;
        framing::read_padding(
            &mut self.input,
            "libxl",
            header.record_type,
            u64::from(header.body_length),
        )?;
        let empty = |record: LibxlRecord| {
            if body.is_empty() {
                Ok(record)
            } else {
                Err(ReadError::malformed(name, "body must be empty"))
            }
        };
        let record = match header.record_type {
            record_type::END => {
                let record = empty(LibxlRecord::End)?;
                self.position = ReaderPosition::Ended;
                record
            }
            record_type::LIBXC_CONTEXT => {
                let record = empty(LibxlRecord::LibxcContext)?;
                if self.libxc_seen {
                    return Err(ReadError::malformed(
                        name,
                        "a libxl stream carries one libxc stream",
                    ));
                }
                self.libxc_seen = true;
                self.position = ReaderPosition::LibxcNext;
                record
            }
            record_type::CHECKPOINT_END => {
                let record = empty(LibxlRecord::CheckpointEnd)?;
                if self.libxc_at_checkpoint.is_none() {
                    // As libxl: the record only ends a checkpoint's records.
                    return Err(ReadError::malformed(
                        name,
                        "no libxc CHECKPOINT precedes it",
                    ));
                }
                self.position = ReaderPosition::LibxcResumesNext;
                record
            }
            record_type::CHECKPOINT_STATE => {
                let control_id = little_endian::U32::read_from_bytes(&body).map_err(|_| {
                    ReadError::malformed(name, format!("{} bytes, expected 4", body.len()))
                })?;
                LibxlRecord::CheckpointState(control_id.get())
            }
            record_type::EMULATOR_CONTEXT => {
                let (emulator, index, context) = split_emulator_header(name, &body)?;
                LibxlRecord::EmulatorContext {
                    emulator,
                    index,
                    context: context.to_vec(),
                }
            }
            _ => {
                let (emulator, index, data) = split_emulator_header(name, &body)?;
                LibxlRecord::EmulatorXenstoreData {
                    emulator,
                    index,
                    pairs: parse_xenstore_pairs(data)?,
                }
            }
        };
        Ok(record)
    }

    /// Takes the libxc stream that follows LIBXC_CONTEXT (reading its
    /// headers) or CHECKPOINT_END (continuing it).
    pub fn into_libxc(mut self) -> Result<LibxcReader<R>, ReadError> {
        match self.position {
            ReaderPosition::LibxcNext => {
                LibxcReader::start(self.input, self.limits, Some(self.header))
            }
            ReaderPosition::LibxcResumesNext => {
                let Some(resume) = self.libxc_at_checkpoint.take() else {
                    return Err(ReadError::WrongLayer("no libxc stream to resume"));
                };
                Ok(LibxcReader::resume(
                    self.input,
                    self.limits,
                    self.header,
                    resume,
                ))
            }
            _ => Err(ReadError::WrongLayer(
                "the libxc stream follows only LIBXC_CONTEXT or a checkpoint's CHECKPOINT_END",
            )),
        }
    }

    /// The input, wherever the reader stands.
    pub fn into_inner(self) -> R {
        self.input
    }
}

fn split_emulator_header<'a>(
    record: &'static str,
    body: &'a [u8],
) -> Result<(EmulatorId, u32, &'a [u8]), ReadError> {
    let Ok((head, rest)) = WireEmulatorHeader::read_from_prefix(body) else {
        return Err(ReadError::malformed(
            record,
            format!("{} bytes is shorter than the emulator header", body.len()),
        ));
    };
    Ok((EmulatorId(head.id.get()), head.index.get(), rest))
}

/// Parses packed NUL-terminated key and value strings.
fn parse_xenstore_pairs(data: &[u8]) -> Result<Vec<(String, String)>, ReadError> {
    const RECORD: &str = "EMULATOR_XENSTORE_DATA";
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let Some(strings) = data.strip_suffix(&[0]) else {
        return Err(ReadError::malformed(RECORD, "data not NUL-terminated"));
    };
    let strings: Vec<&[u8]> = strings.split(|&byte| byte == 0).collect();
    if !strings.len().is_multiple_of(2) {
        return Err(ReadError::malformed(
            RECORD,
            format!("{} strings, expected key and value pairs", strings.len()),
        ));
    }
    let mut pairs = Vec::with_capacity(strings.len() / 2);
    for pair in strings.chunks_exact(2) {
        let (Ok(key), Ok(value)) = (std::str::from_utf8(pair[0]), std::str::from_utf8(pair[1]))
        else {
            return Err(ReadError::malformed(RECORD, "a key or value is not UTF-8"));
        };
        if !xenstore_key_is_valid(key) {
            return Err(ReadError::malformed(
                RECORD,
                format!("{key:?} is not a xenstore key"),
            ));
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}
