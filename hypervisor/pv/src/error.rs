//! Why the PV MMU refused a request, and the Xen error code for each.

use xen_abi::errno;

use crate::mmu::FrameType;
use crate::pte::{Mfn, PtLevel};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmuError {
    /// A frame that is not this domain's RAM where a page table, a base
    /// pointer or a page to clear/copy/update was expected.
    #[error("machine frame {mfn:#x} is not RAM of this domain")]
    BadFrame { mfn: Mfn },
    /// An L1 entry mapping a frame outside the domain's RAM: Xen treats it
    /// as MMIO, which needs I/O rights this domain lacks.
    #[error("L1 entry maps frame {mfn:#x} outside RAM, and the domain has no I/O rights")]
    MmioNotPermitted { mfn: Mfn },
    /// An L1 entry mapping a frame the hypervisor keeps for itself.
    #[error("frame {mfn:#x} belongs to the hypervisor and cannot be mapped")]
    HypervisorFrame { mfn: Mfn },
    #[error("{level} entry {entry:#x} sets bits {bits:#x} a PV guest may not set")]
    DisallowedBits {
        level: PtLevel,
        entry: u64,
        bits: u64,
    },
    /// The frame is in use as another type (a table where another level is
    /// expected, a writable page where a table is, ...).
    #[error("frame {mfn:#x} is in use as {have:?}, not {want:?}")]
    TypeConflict {
        mfn: Mfn,
        have: FrameType,
        want: FrameType,
    },
    /// A writable mapping of a frame in use as a page table or descriptor
    /// table: Xen's core invariant.
    #[error("frame {mfn:#x} is in use as {have:?} and cannot be mapped writable")]
    WritableMappingRefused { mfn: Mfn, have: FrameType },
    #[error("type count of frame {mfn:#x} would overflow")]
    CountOverflow { mfn: Mfn },
    #[error("L4 slot {slot} belongs to the hypervisor")]
    HypervisorSlot { slot: usize },
    #[error("frame {mfn:#x} is already pinned")]
    AlreadyPinned { mfn: Mfn },
    #[error("frame {mfn:#x} is not pinned")]
    NotPinned { mfn: Mfn },
    /// An entry update aimed at a frame that is neither a page table nor a
    /// plain writable page (a descriptor table).
    #[error("frame {mfn:#x} ({have:?}) takes no entry updates")]
    NotUpdatable { mfn: Mfn, have: FrameType },
    /// A frame that had to become writable (clear or copy destination, a
    /// plain entry write) is in use as a table.
    #[error("frame {mfn:#x} is in use as {have:?} and cannot be written")]
    NotWritable { mfn: Mfn, have: FrameType },
    #[error("no L1 page table maps {va:#x} in the current L4")]
    NoL1ForAddress { va: u64 },
    #[error("{va:#x} is not an address a PV guest may use")]
    BadAddress { va: u64 },
    #[error("bad LDT: base {base:#x}, {entries} entries")]
    BadLdt { base: u64, entries: u32 },
    #[error("reading the guest's arguments at {va:#x} faulted")]
    GuestFault { va: u64 },
    #[error("the vCPU bitmap at {va:#x} cannot be read")]
    BadVcpuMask { va: u64 },
    #[error("the domain may not flush caches")]
    CacheFlushNotPermitted,
    #[error("the domain has no rights over domain {domid:#x}")]
    ForeignDomain { domid: u32 },
    #[error("a domain may not name itself ({domid:#x}) as the foreign domain")]
    SelfAsForeign { domid: u32 },
    #[error("no domain {domid:#x}")]
    NoSuchDomain { domid: u32 },
    #[error("mmuext command {cmd} is not supported")]
    Unsupported { cmd: u32 },
    #[error("unknown command {cmd}")]
    UnknownCommand { cmd: u64 },
    #[error("vCPU {vcpu} does not exist")]
    NoSuchVcpu { vcpu: usize },
}

impl MmuError {
    /// The positive errno Xen returns (negated) for this refusal.
    pub fn errno(&self) -> i64 {
        match self {
            MmuError::BadFrame { .. }
            | MmuError::DisallowedBits { .. }
            | MmuError::TypeConflict { .. }
            | MmuError::CountOverflow { .. }
            | MmuError::HypervisorSlot { .. }
            | MmuError::AlreadyPinned { .. }
            | MmuError::NotPinned { .. }
            | MmuError::NotUpdatable { .. }
            | MmuError::NotWritable { .. }
            | MmuError::NoL1ForAddress { .. }
            | MmuError::BadAddress { .. }
            | MmuError::BadLdt { .. }
            | MmuError::BadVcpuMask { .. }
            | MmuError::NoSuchVcpu { .. } => errno::EINVAL,
            MmuError::MmioNotPermitted { .. } | MmuError::ForeignDomain { .. } => errno::EPERM,
            MmuError::HypervisorFrame { .. } | MmuError::WritableMappingRefused { .. } => {
                errno::EBUSY
            }
            MmuError::GuestFault { .. } => errno::EFAULT,
            MmuError::CacheFlushNotPermitted => errno::EACCES,
            MmuError::SelfAsForeign { .. } | MmuError::NoSuchDomain { .. } => errno::ESRCH,
            MmuError::Unsupported { .. } => errno::EOPNOTSUPP,
            MmuError::UnknownCommand { .. } => errno::ENOSYS,
        }
    }

    /// The hypercall's return value: `-errno`.
    pub fn to_return_value(&self) -> i64 {
        -self.errno()
    }
}
