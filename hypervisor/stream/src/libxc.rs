//! libxc's domain image format, versions 2 and 3
//! (`docs/specs/libxc-migration-stream.pandoc`): the image header, the
//! domain header and the records.
use std::io::{Read, Write};

use tracing::{debug, trace, warn};
use zerocopy::byteorder::{big_endian, little_endian};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::framing::{self, RecordHeader};
use crate::libxl::{LibxlHeader, LibxlReader, LibxlWriter};
use crate::{Limits, ReadError, WriteError, MAX_BATCH_SIZE, PAGE_SHIFT, PAGE_SIZE, PFN_FIELD_MASK};

/// Image header `marker`: all ones, which no legacy image starts with.
pub const IHDR_MARKER: u64 = u64::MAX;
/// Image header `id`: "XENF".
pub const IHDR_ID: u32 = 0x5845_4e46;
/// The version this crate writes. Version 2 is read too.
pub const IHDR_VERSION: u32 = 3;
/// Image header `options` bit 0: the stream is big-endian.
pub const IHDR_OPT_BIG_ENDIAN: u16 = 1 << 0;

/// libxc record types ("Records", the `type` field).
pub mod record_type {
    pub const END: u32 = 0x00;
    pub const PAGE_DATA: u32 = 0x01;
    pub const X86_PV_INFO: u32 = 0x02;
    pub const X86_PV_P2M_FRAMES: u32 = 0x03;
    pub const X86_PV_VCPU_BASIC: u32 = 0x04;
    pub const X86_PV_VCPU_EXTENDED: u32 = 0x05;
    pub const X86_PV_VCPU_XSAVE: u32 = 0x06;
    pub const SHARED_INFO: u32 = 0x07;
    pub const X86_TSC_INFO: u32 = 0x08;
    pub const HVM_CONTEXT: u32 = 0x09;
    pub const HVM_PARAMS: u32 = 0x0a;
    /// Obsolete: the spec says it should not be used; readers refuse it.
    pub const TOOLSTACK: u32 = 0x0b;
    pub const X86_PV_VCPU_MSRS: u32 = 0x0c;
    pub const VERIFY: u32 = 0x0d;
    pub const CHECKPOINT: u32 = 0x0e;
    pub const CHECKPOINT_DIRTY_PFN_LIST: u32 = 0x0f;
    pub const STATIC_DATA_END: u32 = 0x10;
    pub const X86_CPUID_POLICY: u32 = 0x11;
    pub const X86_MSR_POLICY: u32 = 0x12;
}

/// The spec's name for a record type, for messages.
pub fn record_name(record_type: u32) -> &'static str {
    use record_type::*;
    match record_type {
        END => "END",
        PAGE_DATA => "PAGE_DATA",
        X86_PV_INFO => "X86_PV_INFO",
        X86_PV_P2M_FRAMES => "X86_PV_P2M_FRAMES",
        X86_PV_VCPU_BASIC => "X86_PV_VCPU_BASIC",
        X86_PV_VCPU_EXTENDED => "X86_PV_VCPU_EXTENDED",
        X86_PV_VCPU_XSAVE => "X86_PV_VCPU_XSAVE",
        SHARED_INFO => "SHARED_INFO",
        X86_TSC_INFO => "X86_TSC_INFO",
        HVM_CONTEXT => "HVM_CONTEXT",
        HVM_PARAMS => "HVM_PARAMS",
        TOOLSTACK => "TOOLSTACK",
        X86_PV_VCPU_MSRS => "X86_PV_VCPU_MSRS",
        VERIFY => "VERIFY",
        CHECKPOINT => "CHECKPOINT",
        CHECKPOINT_DIRTY_PFN_LIST => "CHECKPOINT_DIRTY_PFN_LIST",
        STATIC_DATA_END => "STATIC_DATA_END",
        X86_CPUID_POLICY => "X86_CPUID_POLICY",
        X86_MSR_POLICY => "X86_MSR_POLICY",
        _ => "unknown",
    }
}

// ---- wire layouts -----------------------------------------------------------

/// The image header: big-endian whatever the options say.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireImageHeader {
    marker: big_endian::U64,
    id: big_endian::U32,
    version: big_endian::U32,
    options: big_endian::U16,
    reserved16: big_endian::U16,
    reserved32: big_endian::U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireDomainHeader {
    guest_type: little_endian::U32,
    page_shift: little_endian::U16,
    reserved: little_endian::U16,
    xen_major: little_endian::U32,
    xen_minor: little_endian::U32,
}

/// The head of PAGE_DATA, X86_PV_P2M_FRAMES, the PV vCPU records and
/// HVM_PARAMS: two 32-bit fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WirePair {
    first: little_endian::U32,
    second: little_endian::U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireX86PvInfo {
    guest_width: u8,
    pt_levels: u8,
    reserved16: little_endian::U16,
    reserved32: little_endian::U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireTscInfo {
    mode: little_endian::U32,
    khz: little_endian::U32,
    nsec: little_endian::U64,
    incarnation: little_endian::U32,
    reserved: little_endian::U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireHvmParam {
    index: little_endian::U64,
    value: little_endian::U64,
}

/// `xen_cpuid_leaf_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireCpuidLeaf {
    leaf: little_endian::U32,
    subleaf: little_endian::U32,
    a: little_endian::U32,
    b: little_endian::U32,
    c: little_endian::U32,
    d: little_endian::U32,
}

/// `xen_msr_entry_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireMsrEntry {
    index: little_endian::U32,
    flags: little_endian::U32,
    value: little_endian::U64,
}

// ---- public values ----------------------------------------------------------

/// The domain header's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestType {
    X86Pv = 1,
    X86Hvm = 2,
}

/// The domain header. `page_shift` is always 12 on x86 and is not a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainHeader {
    pub guest_type: GuestType,
    /// The hypervisor version that saved the image; 0 means the image was
    /// converted from the legacy format (and `xen_minor` is the converter's
    /// version).
    pub xen_major: u32,
    pub xen_minor: u32,
}

/// A PAGE_DATA pfn's type, `XEN_DOMCTL_PFINFO_*` >> 28 (bits 63:60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// An ordinary page.
    NoTab = 0x0,
    L1Tab = 0x1,
    L2Tab = 0x2,
    L3Tab = 0x3,
    L4Tab = 0x4,
    L1TabPinned = 0x9,
    L2TabPinned = 0xa,
    L3TabPinned = 0xb,
    L4TabPinned = 0xc,
    /// A page the source found broken; no contents.
    Broken = 0xd,
    /// Allocate the frame, no contents.
    XAlloc = 0xe,
    /// The frame is invalid (e.g. ballooned out during migration); no
    /// contents.
    XTab = 0xf,
}

impl PageType {
    /// The type from the 4-bit field; `None` for the reserved 0x5..=0x8,
    /// which the spec says a restore must fail on.
    pub fn from_bits(bits: u8) -> Option<PageType> {
        use PageType::*;
        Some(match bits {
            0x0 => NoTab,
            0x1 => L1Tab,
            0x2 => L2Tab,
            0x3 => L3Tab,
            0x4 => L4Tab,
            0x9 => L1TabPinned,
            0xa => L2TabPinned,
            0xb => L3TabPinned,
            0xc => L4TabPinned,
            0xd => Broken,
            0xe => XAlloc,
            0xf => XTab,
            _ => return None,
        })
    }

    /// Whether a page of this type has contents in the record: ordinary
    /// pages and page tables do; BROKEN, XALLOC and XTAB do not.
    pub fn has_contents(self) -> bool {
        !matches!(self, PageType::Broken | PageType::XAlloc | PageType::XTab)
    }
}

/// Bit position of the type in a PAGE_DATA pfn entry.
pub const PAGE_TYPE_SHIFT: u32 = 60;
/// Reserved bits 59:52 of a PAGE_DATA pfn entry.
const PFN_ENTRY_RESERVED_MASK: u64 = ((1 << PAGE_TYPE_SHIFT) - 1) & !PFN_FIELD_MASK;

/// One PAGE_DATA pfn entry as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnEntry {
    pub pfn: u64,
    pub page_type: PageType,
}

impl PfnEntry {
    fn encode(self) -> u64 {
        self.pfn | (u64::from(self.page_type as u8) << PAGE_TYPE_SHIFT)
    }
}

/// One page to write: its frame, type, and contents when the type has
/// them.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    pub pfn: u64,
    pub page_type: PageType,
    pub contents: Option<&'a [u8; PAGE_SIZE]>,
}

/// X86_PV_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86PvInfo {
    /// Guest width in octets: 4 or 8.
    pub guest_width: u8,
    /// Page-table levels: 3 or 4.
    pub pt_levels: u8,
}

/// Which of the four PV vCPU records (same layout, different accessors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvVcpuKind {
    Basic,
    Extended,
    Xsave,
    Msrs,
}

impl PvVcpuKind {
    fn record_type(self) -> u32 {
        match self {
            PvVcpuKind::Basic => record_type::X86_PV_VCPU_BASIC,
            PvVcpuKind::Extended => record_type::X86_PV_VCPU_EXTENDED,
            PvVcpuKind::Xsave => record_type::X86_PV_VCPU_XSAVE,
            PvVcpuKind::Msrs => record_type::X86_PV_VCPU_MSRS,
        }
    }
}

/// X86_TSC_INFO: `XEN_DOMCTL_{get,set}tscinfo`'s values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscInfo {
    /// `TSC_MODE_*`.
    pub mode: u32,
    pub khz: u32,
    /// Elapsed time, in nanoseconds.
    pub nsec: u64,
    pub incarnation: u32,
}

/// One HVM_PARAMS entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmParamEntry {
    pub index: u64,
    pub value: u64,
}

/// One X86_CPUID_POLICY entry (`xen_cpuid_leaf_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidLeaf {
    pub leaf: u32,
    pub subleaf: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

/// One X86_MSR_POLICY entry (`xen_msr_entry_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrEntry {
    pub index: u32,
    pub flags: u32,
    pub value: u64,
}

/// A record as the reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibxcRecord {
    /// The stream's last record.
    End,
    /// The pfns of one PAGE_DATA record. The contents of the entries whose
    /// type [has contents](PageType::has_contents) follow, in order; read
    /// each with [`LibxcReader::read_page`] (the next record skips any not
    /// read).
    PageData(Vec<PfnEntry>),
    X86PvInfo(X86PvInfo),
    X86PvP2mFrames {
        start_pfn: u32,
        end_pfn: u32,
        frames: Vec<u64>,
    },
    X86PvVcpu {
        kind: PvVcpuKind,
        vcpu_id: u32,
        context: Vec<u8>,
    },
    /// The shared info page, exactly one page.
    SharedInfo(Vec<u8>),
    X86TscInfo(TscInfo),
    /// The HVM context blob; parse it with [`crate::hvm_context`].
    HvmContext(Vec<u8>),
    HvmParams(Vec<HvmParamEntry>),
    Verify,
    /// A consistent point. In a stream inside libxl's, the libxl layer
    /// takes over ([`LibxcReader::into_libxl`]).
    Checkpoint,
    CheckpointDirtyPfnList(Vec<u64>),
    StaticDataEnd,
    X86CpuidPolicy(Vec<CpuidLeaf>),
    X86MsrPolicy(Vec<MsrEntry>),
    /// A record with the optional bit set that this reader does not know;
    /// its body has been skipped, as the spec allows.
    UnknownOptional {
        record_type: u32,
        body_length: u32,
    },
}

// ---- writer -----------------------------------------------------------------

/// Writes a libxc stream (version 3) to `out`, one record per call.
pub struct LibxcWriter<W: Write> {
    out: W,
    /// Set when this stream is the body of a libxl LIBXC_CONTEXT record.
    inside_libxl: bool,
    static_data_ended: bool,
    bytes_written: u64,
}

impl<W: Write> LibxcWriter<W> {
    /// Starts a stream on its own: writes the image and domain headers.
    pub fn new(out: W, domain: &DomainHeader) -> Result<LibxcWriter<W>, WriteError> {
        Self::start(out, domain, None)
    }

    /// Writes the headers; `libxl_bytes_before` is the libxl stream's
    /// length so far when this stream is inside one.
    pub(crate) fn start(
        mut out: W,
        domain: &DomainHeader,
        libxl_bytes_before: Option<u64>,
    ) -> Result<LibxcWriter<W>, WriteError> {
        let image = WireImageHeader {
            marker: big_endian::U64::new(IHDR_MARKER),
            id: big_endian::U32::new(IHDR_ID),
            version: big_endian::U32::new(IHDR_VERSION),
            options: big_endian::U16::new(0),
            reserved16: big_endian::U16::new(0),
            reserved32: big_endian::U32::new(0),
        };
        let domain_wire = WireDomainHeader {
            guest_type: little_endian::U32::new(domain.guest_type as u32),
            page_shift: little_endian::U16::new(PAGE_SHIFT as u16),
            reserved: little_endian::U16::new(0),
            xen_major: little_endian::U32::new(domain.xen_major),
            xen_minor: little_endian::U32::new(domain.xen_minor),
        };
        out.write_all(image.as_bytes())?;
        out.write_all(domain_wire.as_bytes())?;
        debug!(?domain, "libxc stream started");
        Ok(LibxcWriter {
            out,
            inside_libxl: libxl_bytes_before.is_some(),
            static_data_ended: false,
            bytes_written: libxl_bytes_before.unwrap_or(0) + 40,
        })
    }

    pub(crate) fn resume(out: W, bytes_written: u64) -> LibxcWriter<W> {
        LibxcWriter {
            out,
            inside_libxl: true,
            static_data_ended: true,
            bytes_written,
        }
    }

    /// Octets written so far, headers included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Writes any record from its body. The typed methods below are the
    /// usual way; this one is for records they do not cover.
    pub fn write_record(&mut self, record_type: u32, body: &[u8]) -> Result<(), WriteError> {
        self.write_parts(record_type, &[body])
    }

    fn write_parts(&mut self, record_type: u32, parts: &[&[u8]]) -> Result<(), WriteError> {
        let written = framing::write_record(&mut self.out, record_type, parts)?;
        self.bytes_written += written;
        trace!(
            record = record_name(record_type),
            written,
            "libxc record written"
        );
        Ok(())
    }

    fn require_static_data_end(&self, record: &'static str) -> Result<(), WriteError> {
        if !self.static_data_ended {
            return Err(WriteError::OutOfOrder {
                record,
                rule: "a version 3 stream needs STATIC_DATA_END before memory contents",
            });
        }
        Ok(())
    }

    /// Writes `pages` as PAGE_DATA records of at most [`MAX_BATCH_SIZE`]
    /// pages each, the contents going straight from the caller's buffers.
    pub fn write_pages(&mut self, pages: &[Page<'_>]) -> Result<(), WriteError> {
        self.require_static_data_end("PAGE_DATA")?;
        for batch in pages.chunks(MAX_BATCH_SIZE as usize) {
            let mut pfn_entries = Vec::with_capacity(batch.len());
            let mut contents: Vec<&[u8]> = Vec::with_capacity(batch.len() + 2);
            for page in batch {
                if page.pfn > PFN_FIELD_MASK {
                    return Err(WriteError::PfnTooWide(page.pfn));
                }
                match (page.page_type.has_contents(), page.contents) {
                    (true, Some(data)) => contents.push(data.as_slice()),
                    (false, None) => {}
                    (true, None) => {
                        return Err(WriteError::PageContents {
                            pfn: page.pfn,
                            page_type: page.page_type,
                            problem: "needs its contents",
                        })
                    }
                    (false, Some(_)) => {
                        return Err(WriteError::PageContents {
                            pfn: page.pfn,
                            page_type: page.page_type,
                            problem: "carries no contents in the stream",
                        })
                    }
                }
                pfn_entries.push(little_endian::U64::new(
                    PfnEntry {
                        pfn: page.pfn,
                        page_type: page.page_type,
                    }
                    .encode(),
                ));
            }
            let head = WirePair {
                first: little_endian::U32::new(batch.len() as u32),
                second: little_endian::U32::new(0),
            };
            let mut parts: Vec<&[u8]> = Vec::with_capacity(contents.len() + 2);
            parts.push(head.as_bytes());
            parts.push(pfn_entries.as_bytes());
            parts.extend(contents);
            self.write_parts(record_type::PAGE_DATA, &parts)?;
        }
        Ok(())
    }

    pub fn write_x86_pv_info(&mut self, info: &X86PvInfo) -> Result<(), WriteError> {
        let wire = WireX86PvInfo {
            guest_width: info.guest_width,
            pt_levels: info.pt_levels,
            reserved16: little_endian::U16::new(0),
            reserved32: little_endian::U32::new(0),
        };
        self.write_record(record_type::X86_PV_INFO, wire.as_bytes())
    }

    /// X86_PV_P2M_FRAMES: the frames holding the guest's p2m for pfns
    /// `start_pfn..=end_pfn`.
    pub fn write_x86_pv_p2m_frames(
        &mut self,
        start_pfn: u32,
        end_pfn: u32,
        frames: &[u64],
    ) -> Result<(), WriteError> {
        self.require_static_data_end("X86_PV_P2M_FRAMES")?;
        let head = WirePair {
            first: little_endian::U32::new(start_pfn),
            second: little_endian::U32::new(end_pfn),
        };
        let frames: Vec<little_endian::U64> = frames
            .iter()
            .map(|&frame| little_endian::U64::new(frame))
            .collect();
        self.write_parts(
            record_type::X86_PV_P2M_FRAMES,
            &[head.as_bytes(), frames.as_bytes()],
        )
    }

    pub fn write_x86_pv_vcpu(
        &mut self,
        kind: PvVcpuKind,
        vcpu_id: u32,
        context: &[u8],
    ) -> Result<(), WriteError> {
        let head = WirePair {
            first: little_endian::U32::new(vcpu_id),
            second: little_endian::U32::new(0),
        };
        self.write_parts(kind.record_type(), &[head.as_bytes(), context])
    }

    pub fn write_shared_info(&mut self, page: &[u8; PAGE_SIZE]) -> Result<(), WriteError> {
        self.write_record(record_type::SHARED_INFO, page)
    }

    pub fn write_tsc_info(&mut self, tsc: &TscInfo) -> Result<(), WriteError> {
        let wire = WireTscInfo {
            mode: little_endian::U32::new(tsc.mode),
            khz: little_endian::U32::new(tsc.khz),
            nsec: little_endian::U64::new(tsc.nsec),
            incarnation: little_endian::U32::new(tsc.incarnation),
            reserved: little_endian::U32::new(0),
        };
        self.write_record(record_type::X86_TSC_INFO, wire.as_bytes())
    }

    /// HVM_CONTEXT, from a blob built with
    /// [`crate::hvm_context::HvmContextBuilder`].
    pub fn write_hvm_context(&mut self, blob: &[u8]) -> Result<(), WriteError> {
        self.write_record(record_type::HVM_CONTEXT, blob)
    }

    /// HVM_PARAMS. The spec has this precede HVM_CONTEXT.
    pub fn write_hvm_params(&mut self, params: &[HvmParamEntry]) -> Result<(), WriteError> {
        let head = WirePair {
            first: little_endian::U32::new(params.len() as u32),
            second: little_endian::U32::new(0),
        };
        let entries: Vec<WireHvmParam> = params
            .iter()
            .map(|param| WireHvmParam {
                index: little_endian::U64::new(param.index),
                value: little_endian::U64::new(param.value),
            })
            .collect();
        self.write_parts(
            record_type::HVM_PARAMS,
            &[head.as_bytes(), entries.as_bytes()],
        )
    }

    pub fn write_verify(&mut self) -> Result<(), WriteError> {
        self.write_record(record_type::VERIFY, &[])
    }

    pub fn write_checkpoint_dirty_pfn_list(&mut self, pfns: &[u64]) -> Result<(), WriteError> {
        let pfns: Vec<little_endian::U64> = pfns
            .iter()
            .map(|&pfn| little_endian::U64::new(pfn))
            .collect();
        self.write_record(record_type::CHECKPOINT_DIRTY_PFN_LIST, pfns.as_bytes())
    }

    /// STATIC_DATA_END: ends the static records (policies, PV info) and
    /// must come before any memory contents.
    pub fn write_static_data_end(&mut self) -> Result<(), WriteError> {
        if self.static_data_ended {
            return Err(WriteError::OutOfOrder {
                record: "STATIC_DATA_END",
                rule: "a stream has one STATIC_DATA_END",
            });
        }
        self.write_record(record_type::STATIC_DATA_END, &[])?;
        self.static_data_ended = true;
        Ok(())
    }

    pub fn write_x86_cpuid_policy(&mut self, leaves: &[CpuidLeaf]) -> Result<(), WriteError> {
        let wire: Vec<WireCpuidLeaf> = leaves
            .iter()
            .map(|leaf| WireCpuidLeaf {
                leaf: little_endian::U32::new(leaf.leaf),
                subleaf: little_endian::U32::new(leaf.subleaf),
                a: little_endian::U32::new(leaf.a),
                b: little_endian::U32::new(leaf.b),
                c: little_endian::U32::new(leaf.c),
                d: little_endian::U32::new(leaf.d),
            })
            .collect();
        self.write_record(record_type::X86_CPUID_POLICY, wire.as_bytes())
    }

    pub fn write_x86_msr_policy(&mut self, msrs: &[MsrEntry]) -> Result<(), WriteError> {
        let wire: Vec<WireMsrEntry> = msrs
            .iter()
            .map(|msr| WireMsrEntry {
                index: little_endian::U32::new(msr.index),
                flags: little_endian::U32::new(msr.flags),
                value: little_endian::U64::new(msr.value),
            })
            .collect();
        self.write_record(record_type::X86_MSR_POLICY, wire.as_bytes())
    }

    /// CHECKPOINT on a stream of its own: the reader sees a consistent
    /// state here and more records follow.
    pub fn write_checkpoint(&mut self) -> Result<(), WriteError> {
        if self.inside_libxl {
            return Err(WriteError::WrongLayer(
                "inside a libxl stream a CHECKPOINT hands over to libxl: use checkpoint_into_libxl",
            ));
        }
        self.write_record(record_type::CHECKPOINT, &[])
    }

    /// END on a stream of its own; returns the output.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if self.inside_libxl {
            return Err(WriteError::WrongLayer(
                "inside a libxl stream END hands back to libxl: use finish_into_libxl",
            ));
        }
        self.write_record(record_type::END, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// END of a stream inside libxl's; libxl's records follow.
    pub fn finish_into_libxl(mut self) -> Result<LibxlWriter<W>, WriteError> {
        if !self.inside_libxl {
            return Err(WriteError::WrongLayer(
                "this libxc stream is not inside a libxl stream",
            ));
        }
        self.write_record(record_type::END, &[])?;
        Ok(LibxlWriter::after_libxc(
            self.out,
            self.bytes_written,
            false,
        ))
    }

    /// CHECKPOINT of a stream inside libxl's: libxl writes its records up
    /// to CHECKPOINT_END, then [`LibxlWriter::resume_libxc`] continues this
    /// stream.
    pub fn checkpoint_into_libxl(mut self) -> Result<LibxlWriter<W>, WriteError> {
        if !self.inside_libxl {
            return Err(WriteError::WrongLayer(
                "this libxc stream is not inside a libxl stream",
            ));
        }
        self.write_record(record_type::CHECKPOINT, &[])?;
        Ok(LibxlWriter::after_libxc(self.out, self.bytes_written, true))
    }
}

// ---- reader -----------------------------------------------------------------

/// Where a reader is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    Records,
    /// Just read a CHECKPOINT inside a libxl stream: libxl's turn.
    CheckpointInsideLibxl,
    Ended,
}

/// What a libxc stream's reader keeps across a checkpoint, while the libxl
/// layer reads its records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LibxcResume {
    version: u32,
    domain: DomainHeader,
    seen_static_data_end: bool,
}

/// Reads a libxc stream from `input`, one record per call, checking every
/// field against [`Limits`] before using it.
pub struct LibxcReader<R: Read> {
    input: R,
    limits: Limits,
    version: u32,
    domain: DomainHeader,
    seen_static_data_end: bool,
    /// Page contents of the last PAGE_DATA record not yet read.
    pages_pending: u32,
    position: Position,
    /// The libxl header, when this stream is inside libxl's.
    libxl: Option<LibxlHeader>,
}

impl<R: Read> LibxcReader<R> {
    /// Reads the image and domain headers of a stream on its own.
    pub fn new(input: R, limits: Limits) -> Result<LibxcReader<R>, ReadError> {
        Self::start(input, limits, None)
    }

    pub(crate) fn start(
        mut input: R,
        limits: Limits,
        libxl: Option<LibxlHeader>,
    ) -> Result<LibxcReader<R>, ReadError> {
        let image: WireImageHeader = framing::read_value(&mut input, "libxc image header")?;
        if image.marker.get() != IHDR_MARKER {
            return Err(ReadError::BadImageMarker(image.marker.get()));
        }
        if image.id.get() != IHDR_ID {
            return Err(ReadError::BadImageId(image.id.get()));
        }
        let version = image.version.get();
        if !(2..=3).contains(&version) {
            return Err(ReadError::UnsupportedLibxcVersion(version));
        }
        let options = image.options.get();
        if options & IHDR_OPT_BIG_ENDIAN != 0 {
            return Err(ReadError::BigEndian("libxc image header"));
        }
        // The spec has reserved fields ignored on restore.
        if options & !IHDR_OPT_BIG_ENDIAN != 0
            || image.reserved16.get() != 0
            || image.reserved32.get() != 0
        {
            warn!(options, "libxc image header has reserved bits set; ignored");
        }

        let domain_wire: WireDomainHeader = framing::read_value(&mut input, "libxc domain header")?;
        let guest_type = match domain_wire.guest_type.get() {
            1 => GuestType::X86Pv,
            2 => GuestType::X86Hvm,
            other => return Err(ReadError::UnknownDomainType(other)),
        };
        let page_shift = domain_wire.page_shift.get();
        if u32::from(page_shift) != PAGE_SHIFT {
            return Err(ReadError::BadPageShift(page_shift));
        }
        let domain = DomainHeader {
            guest_type,
            xen_major: domain_wire.xen_major.get(),
            xen_minor: domain_wire.xen_minor.get(),
        };
        debug!(version, ?domain, "libxc stream opened");
        Ok(LibxcReader {
            input,
            limits,
            version,
            domain,
            seen_static_data_end: false,
            pages_pending: 0,
            position: Position::Records,
            libxl,
        })
    }

    pub(crate) fn resume(
        input: R,
        limits: Limits,
        libxl: LibxlHeader,
        state: LibxcResume,
    ) -> LibxcReader<R> {
        LibxcReader {
            input,
            limits,
            version: state.version,
            domain: state.domain,
            seen_static_data_end: state.seen_static_data_end,
            pages_pending: 0,
            position: Position::Records,
            libxl: Some(libxl),
        }
    }

    /// The image header's version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn domain(&self) -> &DomainHeader {
        &self.domain
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Page contents of the last PAGE_DATA record still to be read.
    pub fn pages_pending(&self) -> u32 {
        self.pages_pending
    }

    /// Reads the next page's contents from the last PAGE_DATA record, in
    /// the order of its entries that have contents.
    pub fn read_page(&mut self, page: &mut [u8; PAGE_SIZE]) -> Result<(), ReadError> {
        if self.pages_pending == 0 {
            return Err(ReadError::NoPagePending);
        }
        framing::read_exact(&mut self.input, page, "PAGE_DATA page contents")?;
        self.pages_pending -= 1;
        Ok(())
    }

    /// Reads the next record.
    pub fn next_record(&mut self) -> Result<LibxcRecord, ReadError> {
        match self.position {
            Position::Records => {}
            Position::Ended => return Err(ReadError::AfterEnd { layer: "libxc" }),
            Position::CheckpointInsideLibxl => {
                return Err(ReadError::WrongLayer(
                    "after a CHECKPOINT the libxl layer reads next: use into_libxl",
                ))
            }
        }
        if self.pages_pending > 0 {
            let unread = u64::from(self.pages_pending) * PAGE_SIZE as u64;
            framing::skip(&mut self.input, unread, "PAGE_DATA page contents")?;
            self.pages_pending = 0;
        }

        let header = RecordHeader::read(&mut self.input, "libxc")?;
        header.check_length("libxc", self.limits.max_record_length)?;
        let name = record_name(header.record_type);
        trace!(record = name, length = header.body_length, "libxc record");

        let record = if header.record_type == record_type::PAGE_DATA {
            // PAGE_DATA's body is a multiple of 8, so it has no padding;
            // its page contents stay in the input for read_page.
            self.read_page_data_head(header.body_length)?
        } else if header.record_type & crate::RECORD_TYPE_OPTIONAL != 0 {
            debug!(
                record_type = header.record_type,
                "skipping an unknown optional libxc record"
            );
            framing::skip(
                &mut self.input,
                u64::from(header.body_length),
                "optional record body",
            )?;
            framing::read_padding(
                &mut self.input,
                "libxc",
                header.record_type,
                u64::from(header.body_length),
            )?;
            LibxcRecord::UnknownOptional {
                record_type: header.record_type,
                body_length: header.body_length,
            }
        } else {
            if record_name(header.record_type) == "unknown" {
                return Err(ReadError::UnknownMandatoryRecord {
                    layer: "libxc",
                    record_type: header.record_type,
                });
            }
            header.check_length("libxc", self.limits.max_buffered_length)?;
            let body = framing::read_body(&mut self.input, header.body_length, "record body")?;
            framing::read_padding(
                &mut self.input,
                "libxc",
                header.record_type,
                u64::from(header.body_length),
            )?;
            self.parse_record(header.record_type, body)?
        };

        match record {
            LibxcRecord::End => self.position = Position::Ended,
            LibxcRecord::Checkpoint if self.libxl.is_some() => {
                self.position = Position::CheckpointInsideLibxl
            }
            _ => {}
        }
        Ok(record)
    }

    fn require_v3(&self, record: &'static str) -> Result<(), ReadError> {
        if self.version < 3 {
            return Err(ReadError::RecordNeedsV3 {
                record,
                version: self.version,
            });
        }
        Ok(())
    }

    /// A version 3 stream has STATIC_DATA_END before memory; a version 2
    /// stream implies it at the first memory record (spec, "v3 compat with
    /// v2").
    fn enter_memory_records(&mut self, record: &'static str) -> Result<(), ReadError> {
        if !self.seen_static_data_end {
            if self.version >= 3 {
                return Err(ReadError::BeforeStaticDataEnd { record });
            }
            self.seen_static_data_end = true;
        }
        Ok(())
    }

    fn check_pfn(&self, record: &'static str, pfn: u64) -> Result<(), ReadError> {
        if pfn > self.limits.max_pfn {
            return Err(ReadError::PfnBeyondMax {
                record,
                pfn,
                max_pfn: self.limits.max_pfn,
            });
        }
        Ok(())
    }

    fn read_page_data_head(&mut self, body_length: u32) -> Result<LibxcRecord, ReadError> {
        self.enter_memory_records("PAGE_DATA")?;
        let body_length = u64::from(body_length);
        if body_length < 8 {
            return Err(ReadError::malformed(
                "PAGE_DATA",
                format!("{body_length}-byte body is shorter than its count"),
            ));
        }
        let head: WirePair = framing::read_value(&mut self.input, "PAGE_DATA header")?;
        let count = head.first.get();
        if count == 0 {
            return Err(ReadError::malformed("PAGE_DATA", "count is 0"));
        }
        if count > self.limits.max_pfns_per_batch {
            return Err(ReadError::TooManyPfns {
                count,
                cap: self.limits.max_pfns_per_batch,
            });
        }
        if head.second.get() != 0 {
            warn!("PAGE_DATA reserved field set; ignored");
        }
        let pfn_list_length = 8 * u64::from(count);
        if body_length < 8 + pfn_list_length {
            return Err(ReadError::malformed(
                "PAGE_DATA",
                format!("{body_length}-byte body cannot hold {count} pfns"),
            ));
        }
        // count is capped above, so this allocation is bounded.
        let mut raw = vec![little_endian::U64::new(0); count as usize];
        framing::read_exact(&mut self.input, raw.as_mut_bytes(), "PAGE_DATA pfn list")?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut pages_with_contents = 0u32;
        for raw_entry in &raw {
            let raw_entry = raw_entry.get();
            let pfn = raw_entry & PFN_FIELD_MASK;
            let type_bits = (raw_entry >> PAGE_TYPE_SHIFT) as u8;
            let page_type = PageType::from_bits(type_bits).ok_or(ReadError::BadPageType {
                pfn,
                page_type: type_bits,
            })?;
            if raw_entry & PFN_ENTRY_RESERVED_MASK != 0 {
                warn!(pfn, "PAGE_DATA pfn entry has reserved bits set; ignored");
            }
            self.check_pfn("PAGE_DATA", pfn)?;
            if page_type.has_contents() {
                pages_with_contents += 1;
            }
            entries.push(PfnEntry { pfn, page_type });
        }
        let expected = 8 + pfn_list_length + u64::from(pages_with_contents) * PAGE_SIZE as u64;
        if body_length != expected {
            return Err(ReadError::malformed(
                "PAGE_DATA",
                format!(
                    "{body_length}-byte body, but {count} pfns with {pages_with_contents} pages of contents make {expected}"
                ),
            ));
        }
        self.pages_pending = pages_with_contents;
        Ok(LibxcRecord::PageData(entries))
    }

    fn parse_record(&mut self, record_type: u32, body: Vec<u8>) -> Result<LibxcRecord, ReadError> {
        use record_type::*;
        let name = record_name(record_type);
        let empty = |record: LibxcRecord| {
            if body.is_empty() {
                Ok(record)
            } else {
                Err(ReadError::malformed(name, "body must be empty"))
            }
        };
        Ok(match record_type {
            END => empty(LibxcRecord::End)?,
            VERIFY => empty(LibxcRecord::Verify)?,
            CHECKPOINT => empty(LibxcRecord::Checkpoint)?,
            STATIC_DATA_END => {
                self.require_v3(name)?;
                if self.seen_static_data_end {
                    return Err(ReadError::DuplicateStaticDataEnd);
                }
                let record = empty(LibxcRecord::StaticDataEnd)?;
                self.seen_static_data_end = true;
                record
            }
            TOOLSTACK => return Err(ReadError::ObsoleteToolstackRecord),
            X86_PV_INFO => {
                let wire = exact::<WireX86PvInfo>(name, &body)?;
                if !matches!(wire.guest_width, 4 | 8) {
                    return Err(ReadError::malformed(
                        name,
                        format!("guest width {} (4 or 8)", wire.guest_width),
                    ));
                }
                if !matches!(wire.pt_levels, 3 | 4) {
                    return Err(ReadError::malformed(
                        name,
                        format!("{} page-table levels (3 or 4)", wire.pt_levels),
                    ));
                }
                LibxcRecord::X86PvInfo(X86PvInfo {
                    guest_width: wire.guest_width,
                    pt_levels: wire.pt_levels,
                })
            }
            X86_PV_P2M_FRAMES => {
                self.enter_memory_records(name)?;
                let (head, frames) = head_and_array::<WirePair, little_endian::U64>(name, &body)?;
                let (start_pfn, end_pfn) = (head.first.get(), head.second.get());
                if start_pfn > end_pfn {
                    return Err(ReadError::malformed(
                        name,
                        format!("start pfn {start_pfn:#x} after end pfn {end_pfn:#x}"),
                    ));
                }
                let frames: Vec<u64> = frames.iter().map(|frame| frame.get()).collect();
                for &frame in &frames {
                    self.check_pfn(name, frame)?;
                }
                LibxcRecord::X86PvP2mFrames {
                    start_pfn,
                    end_pfn,
                    frames,
                }
            }
            X86_PV_VCPU_BASIC | X86_PV_VCPU_EXTENDED | X86_PV_VCPU_XSAVE | X86_PV_VCPU_MSRS => {
                let kind = match record_type {
                    X86_PV_VCPU_BASIC => PvVcpuKind::Basic,
                    X86_PV_VCPU_EXTENDED => PvVcpuKind::Extended,
                    X86_PV_VCPU_XSAVE => PvVcpuKind::Xsave,
                    _ => PvVcpuKind::Msrs,
                };
                let Some((head, context)) = WirePair::read_from_prefix(&body).ok() else {
                    return Err(ReadError::malformed(name, "body shorter than its vcpu id"));
                };
                LibxcRecord::X86PvVcpu {
                    kind,
                    vcpu_id: head.first.get(),
                    context: context.to_vec(),
                }
            }
            SHARED_INFO => {
                if body.len() != PAGE_SIZE {
                    return Err(ReadError::malformed(
                        name,
                        format!("{} bytes, expected one page", body.len()),
                    ));
                }
                LibxcRecord::SharedInfo(body)
            }
            X86_TSC_INFO => {
                let wire = exact::<WireTscInfo>(name, &body)?;
                LibxcRecord::X86TscInfo(TscInfo {
                    mode: wire.mode.get(),
                    khz: wire.khz.get(),
                    nsec: wire.nsec.get(),
                    incarnation: wire.incarnation.get(),
                })
            }
            HVM_CONTEXT => {
                if body.is_empty() {
                    return Err(ReadError::malformed(name, "empty body"));
                }
                LibxcRecord::HvmContext(body)
            }
            HVM_PARAMS => {
                // Erratum 1: Xen 4.6 to 4.8 could write an empty HVM_PARAMS.
                if body.is_empty() {
                    return Ok(LibxcRecord::HvmParams(Vec::new()));
                }
                let (head, entries) = head_and_array::<WirePair, WireHvmParam>(name, &body)?;
                if head.first.get() as usize != entries.len() {
                    return Err(ReadError::malformed(
                        name,
                        format!(
                            "count {} but the body holds {} entries",
                            head.first.get(),
                            entries.len()
                        ),
                    ));
                }
                LibxcRecord::HvmParams(
                    entries
                        .iter()
                        .map(|entry| HvmParamEntry {
                            index: entry.index.get(),
                            value: entry.value.get(),
                        })
                        .collect(),
                )
            }
            CHECKPOINT_DIRTY_PFN_LIST => {
                let pfns = array::<little_endian::U64>(name, &body)?;
                let pfns: Vec<u64> = pfns.iter().map(|pfn| pfn.get()).collect();
                for &pfn in &pfns {
                    self.check_pfn(name, pfn)?;
                }
                LibxcRecord::CheckpointDirtyPfnList(pfns)
            }
            X86_CPUID_POLICY => {
                self.require_v3(name)?;
                let leaves = array::<WireCpuidLeaf>(name, &body)?;
                LibxcRecord::X86CpuidPolicy(
                    leaves
                        .iter()
                        .map(|leaf| CpuidLeaf {
                            leaf: leaf.leaf.get(),
                            subleaf: leaf.subleaf.get(),
                            a: leaf.a.get(),
                            b: leaf.b.get(),
                            c: leaf.c.get(),
                            d: leaf.d.get(),
                        })
                        .collect(),
                )
            }
            X86_MSR_POLICY => {
                self.require_v3(name)?;
                let msrs = array::<WireMsrEntry>(name, &body)?;
                LibxcRecord::X86MsrPolicy(
                    msrs.iter()
                        .map(|msr| MsrEntry {
                            index: msr.index.get(),
                            flags: msr.flags.get(),
                            value: msr.value.get(),
                        })
                        .collect(),
                )
            }
            other => {
                return Err(ReadError::UnknownMandatoryRecord {
                    layer: "libxc",
                    record_type: other,
                })
            }
        })
    }

    /// Hands the input back to the libxl layer after this stream's END or
    /// a CHECKPOINT.
    pub fn into_libxl(self) -> Result<LibxlReader<R>, ReadError> {
        let Some(libxl) = self.libxl else {
            return Err(ReadError::WrongLayer(
                "this libxc stream is not inside a libxl stream",
            ));
        };
        let resume = match self.position {
            Position::Ended => None,
            Position::CheckpointInsideLibxl => Some(LibxcResume {
                version: self.version,
                domain: self.domain,
                seen_static_data_end: self.seen_static_data_end,
            }),
            Position::Records => {
                return Err(ReadError::WrongLayer(
                    "the libxc stream has not reached END or CHECKPOINT",
                ))
            }
        };
        Ok(LibxlReader::after_libxc(
            self.input,
            self.limits,
            libxl,
            resume,
        ))
    }

    /// The input, wherever the reader stands.
    pub fn into_inner(self) -> R {
        self.input
    }
}

/// A body that is exactly one `T`.
fn exact<T: FromBytes + Copy>(record: &'static str, body: &[u8]) -> Result<T, ReadError> {
    T::read_from_bytes(body).map_err(|_| {
        ReadError::malformed(
            record,
            format!("{} bytes, expected {}", body.len(), size_of::<T>()),
        )
    })
}

/// A body that is a whole number of `T`s.
fn array<'a, T: FromBytes + Immutable + KnownLayout>(
    record: &'static str,
    body: &'a [u8],
) -> Result<&'a [T], ReadError> {
    <[T]>::ref_from_bytes(body).map_err(|_| {
        ReadError::malformed(
            record,
            format!(
                "{} bytes is not a whole number of {}-byte entries",
                body.len(),
                size_of::<T>()
            ),
        )
    })
}

/// A body that is one `H` then a whole number of `T`s.
fn head_and_array<'a, H, T>(record: &'static str, body: &'a [u8]) -> Result<(H, &'a [T]), ReadError>
where
    H: FromBytes + Copy,
    T: FromBytes + Immutable + KnownLayout,
{
    let Ok((head, rest)) = H::read_from_prefix(body) else {
        return Err(ReadError::malformed(
            record,
            format!("{} bytes is shorter than its header", body.len()),
        ));
    };
    Ok((head, array::<T>(record, rest)?))
}
