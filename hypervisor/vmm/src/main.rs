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
        GuestType::Pvh | GuestType::Pv if !args.virtio.is_empty() => {
            eprintln!("kxen-vmm: --virtio needs --type hvm");
            return ExitCode::from(1);
        }
        GuestType::Pvh | GuestType::Pv => None,
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
        max_event_channels: args.max_event_channels,
        domid: args.domid,
        name: args.name.clone(),
        start_paused: args.paused,
        control_socket: args.control_socket.clone(),
        exit_file: args.exit_file.clone(),
        hypervisor_log: match args
            .hypervisor_log_fd
            .map(|fd| inherited_log(fd).map(std::sync::Arc::new))
            .transpose()
        {
            Ok(log) => log,
            Err(e) => {
                eprintln!("kxen-vmm: --hypervisor-log-fd: {e}");
                return ExitCode::from(1);
            }
        },
        hvm,
        pv: args.guest_type == GuestType::Pv,
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

/// Take ownership of the hypervisor log descriptor our parent left open.
fn inherited_log(fd: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the descriptor's flags; it tells us
    // whether `fd` is open at all before anything takes ownership of it.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not an open file we may own"),
        ));
    }
    // SAFETY: `fd` is open (checked above), not stdin/stdout/stderr, and
    // nothing else in this process owns it: it was inherited for us.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // Not handed on to anything we might start.
    // SAFETY: F_SETFD on a descriptor we own; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(file)
}
