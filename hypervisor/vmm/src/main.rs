//! kxen-vmm: run one Xen domain on KVM. The command line is
//! [`kxen_vmm_api::LaunchArgs`], shared with the launchers (kxend, kxen-run).

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use tracing_subscriber::EnvFilter;

use kxen_devices::virtio_mmio::DeviceType;
use kxen_vmm::hvm::HvmConfig;
use kxen_vmm::vm::{self, VmConfig};
use kxen_vmm_api::launch::{GuestType, VirtioKind};
use kxen_vmm_api::LaunchArgs;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let logger = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // Parsing a filter costs milliseconds at start-up: only when asked.
    match EnvFilter::try_from_env("KXEN_LOG") {
        Ok(filter) => logger.with_env_filter(filter).init(),
        Err(_) => logger.with_max_level(tracing::Level::WARN).init(),
    }
    let args = LaunchArgs::parse();
    // The control socket hands out guest memory and the exit file says how
    // the domain ended: both are the owner's alone.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let seccomp = match kxen_vmm::seccomp::SeccompMode::from_env() {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("kxen-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = kxen_vmm::seccomp::configure(seccomp) {
        eprintln!("kxen-vmm: {e}");
        return ExitCode::from(1);
    }
    if args.virtio.len() > kxen_vmm::virtio::MAX_SLOTS {
        eprintln!(
            "kxen-vmm: at most {} --virtio devices",
            kxen_vmm::virtio::MAX_SLOTS
        );
        return ExitCode::from(1);
    }
    let hvm = match args.guest_type {
        GuestType::Pvh if !args.virtio.is_empty() => {
            eprintln!("kxen-vmm: --virtio needs --type hvm");
            return ExitCode::from(1);
        }
        GuestType::Pvh => None,
        GuestType::Hvm => Some(HvmConfig {
            serial: args.serial.clone(),
            xen_platform_pci: args.xen_platform_pci,
            virtio: args
                .virtio
                .iter()
                .map(|kind| match kind {
                    VirtioKind::Blk => DeviceType::Blk,
                    VirtioKind::Net => DeviceType::Net,
                })
                .collect(),
        }),
    };
    let cfg = VmConfig {
        kernel: args.kernel.clone(),
        ramdisk: args.ramdisk.clone(),
        cmdline: args.cmdline.clone(),
        memory_mib: args.memory,
        maxmem_mib: args.maxmem_mib(),
        vcpus: args.vcpus,
        domid: args.domid,
        name: args.name.clone(),
        start_paused: args.paused,
        control_socket: args.control_socket.clone(),
        exit_file: args.exit_file.clone(),
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
