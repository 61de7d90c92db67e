//! kxen-vmm: run one Xen domain on KVM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use tracing_subscriber::EnvFilter;

use kxen_devices::virtio_mmio::DeviceType;
use kxen_vmm::hvm::HvmConfig;
use kxen_vmm::standalone::ConsoleMode;
use kxen_vmm::vm::{self, VmConfig};

/// Run one Xen domain (PVH, or HVM with emulated devices) on KVM.
#[derive(Parser, Debug)]
#[command(name = "kxen-vmm", version)]
struct Args {
    /// Kernel: for PVH an ELF with the Xen PHYS32_ENTRY note (32- or
    /// 64-bit); for HVM a bzImage or a vmlinux ELF.
    #[arg(long)]
    kernel: PathBuf,
    /// Guest type: pvh, or hvm (Linux boot protocol, emulated devices).
    #[arg(long = "type", default_value = "pvh")]
    guest_type: String,
    /// HVM: where COM1 (0x3f8) goes, as for --console. Default: the
    /// --console destination, and then the PV console is dropped.
    #[arg(long)]
    serial: Option<String>,
    /// HVM: show the Xen CPUID leaves and the Xen platform PCI device.
    #[arg(long)]
    xen_platform_pci: bool,
    /// HVM: a virtio-mmio device, blk or net; repeat for more (slot i is
    /// the i-th, at most 8). kxend serves it after "virtio-attach".
    #[arg(long = "virtio", value_name = "blk|net")]
    virtio: Vec<DeviceType>,
    /// Initial ramdisk, passed as module 0.
    #[arg(long)]
    ramdisk: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Most RAM the guest may balloon up to, in MiB (default: --memory).
    #[arg(long)]
    maxmem: Option<u64>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Domain id the guest sees.
    #[arg(long, default_value_t = 1)]
    domid: u16,
    /// Domain name.
    #[arg(long, default_value = "domU")]
    name: String,
    /// PV console destination: stdio, null, file:PATH, or dom0 (kxend
    /// serves the console and xenstore rings).
    #[arg(long, default_value = "stdio")]
    console: String,
    /// Print "kxen-vmm: guest-entry-us=N" on stderr when the domain ends.
    #[arg(long)]
    report_timing: bool,
    /// Build the domain but keep its vCPUs paused until an "unpause".
    #[arg(long)]
    paused: bool,
    /// Serve the control protocol (info, pause, unpause, destroy, memfd)
    /// on this Unix socket.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Write "CODE REASON" to this file when the domain ends.
    #[arg(long)]
    exit_file: Option<PathBuf>,
}

fn parse_console(s: &str) -> Result<ConsoleMode, String> {
    match s {
        "stdio" => Ok(ConsoleMode::Stdio),
        "null" => Ok(ConsoleMode::Null),
        "dom0" => Ok(ConsoleMode::Dom0),
        _ => s
            .strip_prefix("file:")
            .map(|p| ConsoleMode::File(PathBuf::from(p)))
            .ok_or_else(|| format!("bad --console {s:?}: use stdio, null, dom0 or file:PATH")),
    }
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let logger = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // Parsing a filter costs milliseconds at start-up: only when asked.
    match EnvFilter::try_from_env("KXEN_LOG") {
        Ok(filter) => logger.with_env_filter(filter).init(),
        Err(_) => logger.with_max_level(tracing::Level::WARN).init(),
    }
    let args = Args::parse();
    let mut console = match parse_console(&args.console) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kxen-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    if args.virtio.len() > kxen_vmm::virtio::MAX_SLOTS {
        eprintln!(
            "kxen-vmm: at most {} --virtio devices",
            kxen_vmm::virtio::MAX_SLOTS
        );
        return ExitCode::from(1);
    }
    let hvm = match args.guest_type.as_str() {
        "pvh" if !args.virtio.is_empty() => {
            eprintln!("kxen-vmm: --virtio needs --type hvm");
            return ExitCode::from(1);
        }
        "pvh" => None,
        "hvm" => {
            let serial = match args.serial.as_deref() {
                Some(s) => match parse_console(s) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("kxen-vmm: {e}");
                        return ExitCode::from(1);
                    }
                },
                // The serial line takes the console's place.
                None => std::mem::replace(&mut console, ConsoleMode::Null),
            };
            Some(HvmConfig {
                serial,
                xen_platform_pci: args.xen_platform_pci,
                virtio: args.virtio,
            })
        }
        other => {
            eprintln!("kxen-vmm: bad --type {other:?}: use pvh or hvm");
            return ExitCode::from(1);
        }
    };
    let cfg = VmConfig {
        kernel: args.kernel,
        ramdisk: args.ramdisk,
        cmdline: args.cmdline,
        memory_mib: args.memory,
        maxmem_mib: args.maxmem.unwrap_or(args.memory),
        vcpus: args.vcpus,
        domid: args.domid,
        name: args.name.clone(),
        console,
        start_paused: args.paused,
        control_socket: args.control_socket,
        exit_file: args.exit_file,
        hvm,
    };
    match vm::run(cfg, started, args.report_timing) {
        Ok(exit) => {
            let code = exit.exit_code();
            if code != 0 {
                eprintln!("kxen-vmm: domain {} {}", args.name, exit.describe());
            }
            ExitCode::from(code as u8)
        }
        Err(e) => {
            error!("{e}");
            eprintln!("kxen-vmm: {e}");
            ExitCode::from(1)
        }
    }
}
