//! kxend: kxen's Dom0 control process.
//!
//! It owns xenstore (served on a Unix socket for libxenstore clients and on
//! every domain's ring), the PV consoles, and one supervised kxen-vmm per
//! domain. `kxl` talks to it on `$KXEN_RUN_DIR/kxend.sock` and starts it on
//! demand; `kxend --foreground` is for service managers.

mod affinity;
mod backends;
mod bootloader;
mod cgroup;
mod console;
mod daemon;
mod devices;
mod domain;
mod jail;
mod peer;
mod preflight;
mod reactor;
mod store;
mod xenstore_glue;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kxen_toolstack::protocol;
use tracing::error;
use tracing_subscriber::EnvFilter;

/// kxen's Dom0 daemon.
#[derive(Parser, Debug)]
#[command(name = "kxend", version)]
struct Args {
    /// Stay in the foreground and log to stderr.
    #[arg(long)]
    foreground: bool,
    /// State directory (default $KXEN_STATE_DIR or /var/lib/kxen).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Runtime directory for sockets (default $KXEN_RUN_DIR or /run/kxen).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The kxen-vmm binary (default: next to kxend).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Start VMMs as plain children with kxend's privileges instead of
    /// jailed (own uid, no capabilities, private namespaces and root).
    /// Also set by KXEN_NO_JAIL=1.
    #[arg(long)]
    no_jail: bool,
    /// Domain N's jailed VMM runs as uid and gid BASE+N.
    #[arg(long, default_value_t = jail::DEFAULT_UID_BASE)]
    vmm_uid_base: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let state_dir = args.state_dir.clone().unwrap_or_else(protocol::state_dir);
    let run_dir = args.run_dir.clone().unwrap_or_else(protocol::run_dir);
    if let Err(e) = std::fs::create_dir_all(&state_dir).and(std::fs::create_dir_all(&run_dir)) {
        eprintln!("kxend: {e}");
        return ExitCode::FAILURE;
    }
    if !args.foreground {
        return detach(&state_dir, &run_dir);
    }
    let logger = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match EnvFilter::try_from_env("KXEN_LOG") {
        Ok(f) => logger.with_env_filter(f).init(),
        Err(_) => logger.with_max_level(tracing::Level::INFO).init(),
    }
    let vmm = args.vmm.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("kxen-vmm")))
            .unwrap_or_else(|| "kxen-vmm".into())
    });
    let no_jail = args.no_jail || std::env::var_os("KXEN_NO_JAIL").is_some_and(|v| v == "1");
    if no_jail {
        tracing::warn!("--no-jail: VMMs run with kxend's privileges");
        jail::configure(None);
    } else {
        match jail::JailConfig::new(&run_dir, args.vmm_uid_base) {
            Ok(config) => jail::configure(Some(config)),
            Err(e) => {
                error!("{e} (--no-jail runs VMMs unconfined)");
                return ExitCode::FAILURE;
            }
        }
    }
    let socket_path = run_dir.join(protocol::SOCKET_NAME);
    let listener = match daemon::claim_socket(&socket_path) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // kxend.sock creates and destroys domains: root's alone (and each
    // client's credentials are checked as it connects).
    if let Err(e) = std::fs::set_permissions(
        &socket_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    ) {
        error!("{}: {e}", socket_path.display());
        return ExitCode::FAILURE;
    }
    let store = match xenstore_glue::XenstoreGlue::start(&state_dir, &run_dir) {
        Ok(s) => s,
        Err(e) => {
            error!("xenstored: {e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match daemon::Daemon::new(state_dir, run_dir, vmm, store, backends::factory()) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::fs::write(
        daemon.run_dir.join("kxend.pid"),
        format!("{}\n", std::process::id()),
    );
    daemon.log("kxend started");
    daemon.recover();
    daemon.serve_forever(listener);
    ExitCode::SUCCESS
}

/// Start `kxend --foreground` in the background and wait for its socket.
fn detach(state_dir: &std::path::Path, run_dir: &std::path::Path) -> ExitCode {
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("kxend.log"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kxend: log: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "kxend".into());
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    let spawned = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("kxend: {e}");
        return ExitCode::FAILURE;
    }
    let socket = run_dir.join(protocol::SOCKET_NAME);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "kxend: did not come up; see {}",
        state_dir.join("kxend.log").display()
    );
    ExitCode::FAILURE
}
