//! The HVM_CONTEXT record's body: Xen's HVM save entries
//! (`public/hvm/save.h`), each an `hvm_save_descriptor` and its data, the
//! first a HEADER and the last an END. The layouts are in
//! [`xen_abi::hvm_save`]; this module frames and checks them.
use xen_abi::hvm_save::{
    fixed_entry_length, HvmMsrHeader, HvmOneMsr, HwCpuXsave, SaveDescriptor, SaveHeader,
    HVM_FILE_MAGIC, HVM_FILE_VERSION, HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_CPU_MSR,
    HVM_SAVE_CODE_CPU_XSAVE, HVM_SAVE_CODE_END, HVM_SAVE_CODE_HEADER, HVM_SAVE_CODE_MAX,
    HW_CPU_COMPAT_LEN,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{ReadError, WriteError};

/// Builds an HVM context blob entry by entry.
pub struct HvmContextBuilder {
    blob: Vec<u8>,
}

impl HvmContextBuilder {
    /// Starts a blob with its HEADER entry.
    pub fn new(header: &SaveHeader) -> HvmContextBuilder {
        let mut builder = HvmContextBuilder { blob: Vec::new() };
        builder.push(HVM_SAVE_CODE_HEADER, 0, header);
        builder
    }

    /// Appends a fixed-size entry.
    pub fn push<T: IntoBytes + Immutable>(
        &mut self,
        typecode: u16,
        instance: u16,
        entry: &T,
    ) -> &mut HvmContextBuilder {
        // Every fixed layout is far below 4 GiB.
        self.push_descriptor(typecode, instance, size_of::<T>() as u32);
        self.blob.extend_from_slice(entry.as_bytes());
        self
    }

    /// Appends an entry of any length (CPU_XSAVE with its extended area,
    /// CPU_MSR with its MSRs).
    pub fn push_bytes(
        &mut self,
        typecode: u16,
        instance: u16,
        data: &[u8],
    ) -> Result<&mut HvmContextBuilder, WriteError> {
        let length = u32::try_from(data.len()).map_err(|_| WriteError::HvmEntryTooLong {
            typecode,
            length: data.len(),
        })?;
        self.push_descriptor(typecode, instance, length);
        self.blob.extend_from_slice(data);
        Ok(self)
    }

    /// Appends a CPU_MSR entry for `vcpu`.
    pub fn push_msrs(&mut self, vcpu: u16, msrs: &[HvmOneMsr]) -> &mut HvmContextBuilder {
        let header = HvmMsrHeader {
            count: msrs.len() as u32,
            _pad: 0,
        };
        let length = size_of::<HvmMsrHeader>() + size_of_val(msrs);
        self.push_descriptor(HVM_SAVE_CODE_CPU_MSR, vcpu, length as u32);
        self.blob.extend_from_slice(header.as_bytes());
        self.blob.extend_from_slice(msrs.as_bytes());
        self
    }

    fn push_descriptor(&mut self, typecode: u16, instance: u16, length: u32) {
        let descriptor = SaveDescriptor {
            typecode,
            instance,
            length,
        };
        self.blob.extend_from_slice(descriptor.as_bytes());
    }

    /// Appends the END entry and returns the blob.
    pub fn finish(mut self) -> Vec<u8> {
        self.push_descriptor(HVM_SAVE_CODE_END, 0, 0);
        self.blob
    }
}

/// One entry of a parsed blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvmContextEntry<'a> {
    pub typecode: u16,
    pub instance: u16,
    pub data: &'a [u8],
}

impl HvmContextEntry<'_> {
    /// The data as a fixed layout `T`, which must be exactly its size.
    pub fn read_as<T: FromBytes>(&self) -> Result<T, ReadError> {
        T::read_from_bytes(self.data).map_err(|_| {
            ReadError::HvmContext(format!(
                "entry type {} is {} bytes, expected {}",
                self.typecode,
                self.data.len(),
                size_of::<T>()
            ))
        })
    }
}

/// A parsed blob: its header and the entries between it and END.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvmContext<'a> {
    pub header: SaveHeader,
    pub entries: Vec<HvmContextEntry<'a>>,
}

/// Parses and checks a blob: every descriptor's length fits what is left,
/// fixed-size entries have their size (CPU may have the older compat
/// size), variable ones their minimum, typecodes are ones Xen defines, the
/// first entry is a valid HEADER, the last is END and nothing follows it.
/// What the entries' values mean (vCPU ids in range, register values) is
/// for whoever loads them.
pub fn parse(blob: &[u8]) -> Result<HvmContext<'_>, ReadError> {
    let fail = |reason: String| Err(ReadError::HvmContext(reason));
    let mut rest = blob;
    let mut header = None;
    let mut entries = Vec::new();
    loop {
        let Ok((descriptor, after)) = SaveDescriptor::read_from_prefix(rest) else {
            return fail(format!(
                "blob ends at offset {} without an END entry",
                blob.len() - rest.len()
            ));
        };
        let length = descriptor.length as usize;
        if length > after.len() {
            return fail(format!(
                "entry type {} claims {length} bytes, {} are left",
                descriptor.typecode,
                after.len()
            ));
        }
        let (data, after) = after.split_at(length);
        rest = after;
        let typecode = descriptor.typecode;
        if typecode > HVM_SAVE_CODE_MAX {
            return fail(format!("unknown entry type {typecode}"));
        }
        check_entry_length(typecode, data)?;
        if header.is_none() {
            if typecode != HVM_SAVE_CODE_HEADER {
                return fail(format!("first entry is type {typecode}, not HEADER"));
            }
            let parsed = SaveHeader::read_from_bytes(data)
                .map_err(|_| ReadError::HvmContext("short HEADER entry".into()))?;
            if parsed.magic != HVM_FILE_MAGIC {
                return fail(format!("HEADER magic {:#x}", parsed.magic));
            }
            if parsed.version != HVM_FILE_VERSION {
                return fail(format!("HEADER version {}", parsed.version));
            }
            header = Some(parsed);
            continue;
        }
        if typecode == HVM_SAVE_CODE_HEADER {
            return fail("a second HEADER entry".into());
        }
        if typecode == HVM_SAVE_CODE_END {
            if !rest.is_empty() {
                return fail(format!("{} bytes after the END entry", rest.len()));
            }
            break;
        }
        entries.push(HvmContextEntry {
            typecode,
            instance: descriptor.instance,
            data,
        });
    }
    let Some(header) = header else {
        return fail("no HEADER entry".into());
    };
    Ok(HvmContext { header, entries })
}

fn check_entry_length(typecode: u16, data: &[u8]) -> Result<(), ReadError> {
    let length = data.len();
    let ok = match typecode {
        HVM_SAVE_CODE_CPU => {
            length == size_of::<xen_abi::hvm_save::HwCpu>() || length == HW_CPU_COMPAT_LEN
        }
        HVM_SAVE_CODE_CPU_XSAVE => length >= size_of::<HwCpuXsave>(),
        HVM_SAVE_CODE_CPU_MSR => match HvmMsrHeader::read_from_prefix(data) {
            Ok((header, msrs)) => {
                u64::from(header.count) * size_of::<HvmOneMsr>() as u64 == msrs.len() as u64
            }
            Err(_) => false,
        },
        _ => match fixed_entry_length(typecode) {
            Some(expected) => length == expected,
            // The Viridian entries: kxen keeps no layout for them, and
            // passes them on whole.
            None => true,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(ReadError::HvmContext(format!(
            "entry type {typecode} has a bad length, {length} bytes"
        )))
    }
}
