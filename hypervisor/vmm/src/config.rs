//! What kxen-vmm is asked to build (from [`kxen_vmm_api::LaunchArgs`]).

use std::path::PathBuf;

use crate::hvm::HvmConfig;

pub const XEN_MAJOR: u32 = 4;
pub const XEN_MINOR: u32 = 17;
/// Dom0-side ports of the console and xenstore rings.
pub const DOM0_CONSOLE_PORT: u32 = 1;
pub const DOM0_XENSTORE_PORT: u32 = 2;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    /// The highest event channel port the guest may allocate.
    pub max_event_channels: u32,
    pub domid: u16,
    pub name: String,
    /// Build the domain paused (`xl create -p`).
    pub start_paused: bool,
    /// Serve the control protocol on this Unix socket.
    pub control_socket: Option<PathBuf>,
    /// Write "CODE REASON" here when the domain ends, for a toolstack that
    /// is not our parent (kxend after a restart).
    pub exit_file: Option<PathBuf>,
    /// kxend's hypervisor log (`kxl dmesg`), for the guest's port 0xE9
    /// lines; inherited as an fd, since the sandbox opens no files.
    pub hypervisor_log: Option<std::sync::Arc<std::fs::File>>,
    /// An HVM domain (Linux boot protocol, emulated devices) rather than
    /// PVH.
    pub hvm: Option<HvmConfig>,
    /// A classic PV domain: the kernel is built by the PV domain builder
    /// and runs deprivileged at CPL3 (`hvm` is then `None`).
    pub pv: bool,
}
