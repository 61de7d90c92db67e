//! Why building or running a domain failed.

use std::path::PathBuf;

use crate::memory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    #[error("guest memory: {0}")]
    Memory(#[from] memory::MemoryError),
    #[error("kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: kxen_loader::LoaderError,
    },
    #[error("PV kernel {path}: {source}")]
    PvKernel {
        path: PathBuf,
        source: kxen_loader::pv::PvImageError,
    },
    #[error("PV kernel {path}: reading it: {source}")]
    PvKernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PV domain layout: {0}")]
    PvLayout(#[from] kxen_loader::pv::LayoutError),
    #[error("PV machine: {0}")]
    PvSetup(#[from] crate::pv::PvSetupError),
    #[error("PV M2P: {0}")]
    PvM2p(#[from] crate::pv_m2p::M2pError),
    #[error("ramdisk {path}: {source}")]
    Ramdisk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ramdisk does not fit in guest RAM")]
    RamdiskTooLarge,
    #[error("boot block: {0}")]
    Boot(kxen_loader::LoaderError),
    #[error("CPUID table: {0:?}")]
    Cpuid(vmm_sys_util::fam::Error),
    #[error("{0}")]
    Setup(String),
}
