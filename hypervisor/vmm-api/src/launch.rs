//! kxen-vmm's command line. [`LaunchArgs`] is both clap's definition of it
//! (kxen-vmm parses its arguments with it) and what a launcher fills in
//! and renders with [`LaunchArgs::to_args`], so the two cannot drift.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};

/// xl's default `max_event_channels` (libxl's `event_channels`).
pub const DEFAULT_MAX_EVENT_CHANNELS: u32 = 1023;

/// Most `--virtio` slots.
pub const MAX_VIRTIO_SLOTS: usize = 8;

/// The kind of domain kxen-vmm builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum GuestType {
    /// A PVH ELF kernel entered at its Xen PHYS32_ENTRY note.
    #[default]
    Pvh,
    /// A Linux bzImage or vmlinux, Linux boot protocol, emulated devices.
    Hvm,
    /// A classic 64-bit Xen PV kernel (ELF or bzImage with Xen's PV ELF
    /// notes), built by the PV domain builder and run deprivileged at CPL3.
    Pv,
}

/// A virtio-mmio device kind for an HVM slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VirtioKind {
    Blk,
    Net,
}

/// Where an HVM domain's COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Dropped.
    Null,
    /// Dom0's end of a stream socket, fetched with the `serial` request.
    Dom0,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad destination {0:?}: use stdio, null, dom0 or file:PATH")]
pub struct BadDestination(String);

impl FromStr for SerialMode {
    type Err = BadDestination;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialMode::Stdio),
            "null" => Ok(SerialMode::Null),
            "dom0" => Ok(SerialMode::Dom0),
            _ => s
                .strip_prefix("file:")
                .map(|p| SerialMode::File(PathBuf::from(p)))
                .ok_or_else(|| BadDestination(s.into())),
        }
    }
}

impl fmt::Display for SerialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialMode::Stdio => f.write_str("stdio"),
            SerialMode::Null => f.write_str("null"),
            SerialMode::Dom0 => f.write_str("dom0"),
            SerialMode::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Run one Xen domain (PVH, or HVM with emulated devices) on KVM. Its PV
/// console and xenstore rings are served by Dom0 (kxend, or kxen-run for a
/// domain of its own) through the control socket.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "kxen-vmm", version)]
pub struct LaunchArgs {
    /// Kernel: for PVH an ELF with the Xen PHYS32_ENTRY note (32- or
    /// 64-bit); for HVM a bzImage or a vmlinux ELF.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest type.
    #[arg(long = "type", value_enum, default_value_t = GuestType::Pvh)]
    pub guest_type: GuestType,
    /// HVM: where COM1 (0x3f8) goes: stdio, null, file:PATH, or dom0.
    #[arg(long, default_value = "stdio")]
    pub serial: SerialMode,
    /// HVM: show the Xen CPUID leaves and the Xen platform PCI device.
    #[arg(long)]
    pub xen_platform_pci: bool,
    /// HVM: a virtio-mmio device; repeat for more (slot i is the i-th, at
    /// most 8). kxend serves it after "virtio-attach".
    #[arg(long = "virtio", value_enum)]
    pub virtio: Vec<VirtioKind>,
    /// Initial ramdisk, passed as module 0.
    #[arg(long)]
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// Most RAM the guest may balloon up to, in MiB (default: --memory).
    #[arg(long)]
    pub maxmem: Option<u64>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Event channels the guest may use: its highest port (xl's
    /// `max_event_channels`, Xen's `max_evtchn_port`).
    #[arg(long, default_value_t = DEFAULT_MAX_EVENT_CHANNELS)]
    pub max_event_channels: u32,
    /// Domain id the guest sees.
    #[arg(long, default_value_t = 1)]
    pub domid: u16,
    /// Domain name.
    #[arg(long, default_value = "domU")]
    pub name: String,
    /// Print "kxen-vmm: guest-entry-us=N" on stderr when the domain ends.
    #[arg(long)]
    pub report_timing: bool,
    /// Build the domain but keep its vCPUs paused until an "unpause".
    #[arg(long)]
    pub paused: bool,
    /// Serve the control protocol (see the kxen-vmm-api crate) on this
    /// Unix socket.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Write "CODE REASON" to this file when the domain ends.
    #[arg(long)]
    pub exit_file: Option<PathBuf>,
    /// An inherited descriptor of the hypervisor log (`kxl dmesg`), open
    /// for appending: the guest's port 0xE9 lines go there too.
    #[arg(long)]
    pub hypervisor_log_fd: Option<i32>,
}

impl LaunchArgs {
    /// Defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        LaunchArgs {
            kernel: kernel.into(),
            guest_type: GuestType::Pvh,
            serial: SerialMode::Stdio,
            xen_platform_pci: false,
            virtio: Vec::new(),
            ramdisk: None,
            cmdline: String::new(),
            memory: 128,
            maxmem: None,
            vcpus: 1,
            max_event_channels: DEFAULT_MAX_EVENT_CHANNELS,
            domid: 1,
            name: "domU".into(),
            report_timing: false,
            paused: false,
            control_socket: None,
            exit_file: None,
            hypervisor_log_fd: None,
        }
    }

    /// The command line (without the program name) that parses back to
    /// `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        // `--flag=value` in one word: a value that starts with a dash
        // (a command line, a name) is never taken for a flag.
        let mut pair = |flag: &str, value: OsString| {
            let mut word = OsString::from(flag);
            word.push("=");
            word.push(value);
            args.push(word);
        };
        pair("--kernel", self.kernel.clone().into());
        let guest_type = match self.guest_type {
            GuestType::Pvh => "pvh",
            GuestType::Hvm => "hvm",
            GuestType::Pv => "pv",
        };
        pair("--type", guest_type.into());
        pair("--serial", self.serial.to_string().into());
        for kind in &self.virtio {
            let kind = match kind {
                VirtioKind::Blk => "blk",
                VirtioKind::Net => "net",
            };
            pair("--virtio", kind.into());
        }
        if let Some(ramdisk) = &self.ramdisk {
            pair("--ramdisk", ramdisk.clone().into());
        }
        pair("--cmdline", self.cmdline.clone().into());
        pair("--memory", self.memory.to_string().into());
        if let Some(maxmem) = self.maxmem {
            pair("--maxmem", maxmem.to_string().into());
        }
        pair("--vcpus", self.vcpus.to_string().into());
        pair(
            "--max-event-channels",
            self.max_event_channels.to_string().into(),
        );
        pair("--domid", self.domid.to_string().into());
        pair("--name", self.name.clone().into());
        if let Some(path) = &self.control_socket {
            pair("--control-socket", path.clone().into());
        }
        if let Some(path) = &self.exit_file {
            pair("--exit-file", path.clone().into());
        }
        if let Some(fd) = self.hypervisor_log_fd {
            pair("--hypervisor-log-fd", fd.to_string().into());
        }
        for (set, flag) in [
            (self.xen_platform_pci, "--xen-platform-pci"),
            (self.report_timing, "--report-timing"),
            (self.paused, "--paused"),
        ] {
            if set {
                args.push(flag.into());
            }
        }
        args
    }

    /// Most RAM in MiB, never below `memory`.
    pub fn maxmem_mib(&self) -> u64 {
        self.maxmem.unwrap_or(self.memory).max(self.memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: Vec<OsString>) -> LaunchArgs {
        let mut argv = vec![OsString::from("kxen-vmm")];
        argv.extend(args);
        LaunchArgs::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_round_trip() {
        let args = LaunchArgs::new("/boot/k");
        assert_eq!(parse(args.to_args()), args);
        assert_eq!(parse(vec!["--kernel".into(), "/boot/k".into()]), args);
    }

    #[test]
    fn every_field_round_trips() {
        let args = LaunchArgs {
            kernel: "/k".into(),
            guest_type: GuestType::Hvm,
            serial: SerialMode::File("/var/log/odd name --memory 3".into()),
            xen_platform_pci: true,
            virtio: vec![VirtioKind::Blk, VirtioKind::Net, VirtioKind::Blk],
            ramdisk: Some("/initrd".into()),
            cmdline: "--console=hvc0 quiet".into(),
            memory: 512,
            maxmem: Some(1024),
            vcpus: 4,
            max_event_channels: 5000,
            domid: 65000,
            name: "-dash".into(),
            report_timing: true,
            paused: true,
            control_socket: Some("/run/kxen/d.sock".into()),
            exit_file: Some("/run/kxen/d.exit".into()),
            hypervisor_log_fd: Some(3),
        };
        assert_eq!(parse(args.to_args()), args);
    }

    #[test]
    fn pv_type_round_trips() {
        let args = LaunchArgs {
            guest_type: GuestType::Pv,
            ..LaunchArgs::new("/boot/pv")
        };
        assert_eq!(parse(args.to_args()), args);
        let argv = ["--kernel", "/boot/pv", "--type", "pv"].map(OsString::from);
        assert_eq!(parse(argv.to_vec()), args);
    }

    #[test]
    fn bad_values_are_refused_by_clap() {
        for bad in [
            ["--type", "hvm-pv"],
            ["--serial", "tty"],
            ["--virtio", "gpu"],
            ["--vcpus", "-1"],
        ] {
            let argv = ["kxen-vmm", "--kernel", "/k", bad[0], bad[1]];
            assert!(LaunchArgs::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
