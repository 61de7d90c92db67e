//! kxen-run: one domain without kxend. It starts kxen-vmm with the same
//! arguments, attaches to it over the control protocol as kxend does
//! (memfd, `dom0-ports`), and serves what Dom0 would: the PV console on
//! stdio (or a file, or nowhere) and a xenstore holding the domain's own
//! nodes. It exits with kxen-vmm's exit status.

mod services;

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use kxen_vmm_api::launch::GuestType;
use kxen_vmm_api::{ClientError, LaunchArgs, VmmClient};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use tracing_subscriber::EnvFilter;

use crate::services::{ConsoleDest, Services};

/// How long kxen-vmm may take to open its control socket: it builds the
/// domain first (kxend allows the same).
const ATTACH_LIMIT: Duration = Duration::from_secs(60);

/// Run one Xen domain under kxen-vmm, serving its PV console and xenstore.
#[derive(Parser, Debug)]
#[command(name = "kxen-run", version)]
struct RunArgs {
    /// PV console destination: stdio, null or file:PATH (default: stdio;
    /// null for HVM, whose console is COM1, see --serial).
    #[arg(long)]
    console: Option<ConsoleDest>,
    /// The kxen-vmm binary (default: $KXEN_VMM, else next to kxen-run).
    #[arg(long)]
    vmm: Option<PathBuf>,
    #[command(flatten)]
    launch: LaunchArgs,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kxen-vmm did not open its control socket within {0:?}")]
    Silent(Duration),
    #[error("attaching to kxen-vmm: {0}")]
    Attach(#[from] ClientError),
    #[error("{0}")]
    Services(#[from] services::ServiceError),
    #[error("signals: {0}")]
    Signals(#[from] nix::Error),
    #[error("waiting for kxen-vmm: {0}")]
    Wait(std::io::Error),
}

fn vmm_binary(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("KXEN_VMM").map(PathBuf::from))
        .or_else(|| {
            let me = std::env::current_exe().ok()?;
            Some(me.parent()?.join("kxen-vmm"))
        })
        .unwrap_or_else(|| PathBuf::from("kxen-vmm"))
}

/// Start kxen-vmm; it gets SIGTERM (and destroys its domain) if we die.
fn spawn_vmm(path: &PathBuf, args: Vec<OsString>) -> Result<Child, RunError> {
    let mut cmd = Command::new(path);
    cmd.args(args);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes an async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| RunError::Spawn {
        path: path.clone(),
        source,
    })
}

/// Connect once the socket is up; None if kxen-vmm ended first.
fn attach(child: &mut Child, args: &LaunchArgs) -> Result<Option<VmmClient>, RunError> {
    let socket = args
        .control_socket
        .as_deref()
        .expect("the launcher always names a control socket");
    let deadline = Instant::now() + ATTACH_LIMIT;
    loop {
        if child.try_wait().map_err(RunError::Wait)?.is_some() {
            return Ok(None);
        }
        match VmmClient::connect(socket) {
            Ok(client) => return Ok(Some(client)),
            Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(ClientError::Connect { .. }) => return Err(RunError::Silent(ATTACH_LIMIT)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// kxen-vmm's exit status as ours (a signal as 128 + its number).
fn exit_code(status: std::process::ExitStatus) -> u8 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1) as u8
}

fn run(args: RunArgs) -> Result<u8, RunError> {
    let mut launch = args.launch;
    let console = args.console.unwrap_or(match launch.guest_type {
        GuestType::Pvh | GuestType::Pv => ConsoleDest::Stdio,
        GuestType::Hvm => ConsoleDest::Null,
    });
    let temp_socket = launch
        .control_socket
        .is_none()
        .then(|| std::env::temp_dir().join(format!("kxen-run-{}.sock", std::process::id())));
    if let Some(path) = &temp_socket {
        launch.control_socket = Some(path.clone());
    }
    // The domain starts paused, as under kxend: its console output and
    // xenstore requests must find Dom0 attached, however soon it ends.
    let unpause = !launch.paused;
    launch.paused = true;
    let path = vmm_binary(args.vmm);
    let mut child = spawn_vmm(&path, launch.to_args())?;
    // SIGTERM and SIGINT are passed on to kxen-vmm, which destroys the
    // domain and exits with its own status. Blocked after the spawn: the
    // mask would be inherited.
    let mut termination = SigSet::empty();
    termination.add(Signal::SIGTERM);
    termination.add(Signal::SIGINT);
    termination.thread_block()?;
    let vmm_pid = Pid::from_raw(child.id() as i32);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = termination.wait() {
                let _ = kill(vmm_pid, sig);
            }
        })
        .map_err(RunError::Wait)?;

    let services = match attach(&mut child, &launch) {
        Ok(Some(mut client)) => {
            match Services::start(&mut client, &launch, console).and_then(|services| {
                if unpause {
                    client.unpause()?;
                }
                Ok(services)
            }) {
                Ok(services) => Some(services),
                Err(e) => {
                    let _ = child.kill();
                    return Err(e.into());
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child.wait().map_err(RunError::Wait)?;
    if let Some(services) = services {
        services.stop();
    }
    if let Some(path) = temp_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(exit_code(status))
}

fn main() -> ExitCode {
    let logger = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match EnvFilter::try_from_env("KXEN_LOG") {
        Ok(filter) => logger.with_env_filter(filter).init(),
        Err(_) => logger.with_max_level(tracing::Level::WARN).init(),
    }
    match run(RunArgs::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kxen-run: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_pass_through_to_kxen_vmm() {
        RunArgs::command().debug_assert();
        let args = RunArgs::try_parse_from([
            "kxen-run",
            "--console",
            "null",
            "--kernel",
            "/k",
            "--memory",
            "64",
            "--cmdline=--quiet",
        ])
        .unwrap();
        assert_eq!(args.console, Some(ConsoleDest::Null));
        let mut expected = LaunchArgs::new("/k");
        expected.memory = 64;
        expected.cmdline = "--quiet".into();
        assert_eq!(args.launch, expected);
        assert!(
            RunArgs::try_parse_from(["kxen-run", "--console", "dom0", "--kernel", "/k"]).is_err()
        );
    }
}
