//! `kxen-xenstored`: the kxen xenstore daemon on its own, serving a Unix
//! socket (for tests, benchmarks and tools without kxend).
//!
//! ```text
//! kxen-xenstored [--socket PATH] [--state PATH] [--save-interval-ms N]
//!                [--entry-nb N] [--entry-size N] [--watch-nb N]
//!                [--transaction N] [--perm-nb N] [--path-max N]
//!                [--quota outstanding=N|transaction-nodes=N|memory=N]
//! ```
//!
//! The socket defaults to `$XENSTORED_PATH`, else
//! `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`. With
//! `--state` the store is loaded at start (if the file exists), saved when
//! it changed (every `--save-interval-ms`, default 1000) and at exit
//! (SIGTERM, SIGINT, SIGHUP). Log level: `KXEN_LOG` (e.g. `debug`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kxen_xenstore::{Config, Quotas, Xenstored};
use tracing::{error, info};

struct Args {
    socket: PathBuf,
    state: Option<PathBuf>,
    save_interval: Duration,
    quotas: Quotas,
}

fn usage() -> ! {
    eprintln!(
        "usage: kxen-xenstored [--socket PATH] [--state PATH] [--save-interval-ms N]\n\
         \x20                     [--entry-nb N] [--entry-size N] [--watch-nb N] [--transaction N]\n\
         \x20                     [--perm-nb N] [--path-max N] [--quota outstanding=N|transaction-nodes=N|memory=N]"
    );
    std::process::exit(2)
}

fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return p.into();
    }
    let dir = std::env::var_os("XENSTORED_RUNDIR").unwrap_or_else(|| "/var/run/xenstored".into());
    PathBuf::from(dir).join("socket")
}

fn parse_args() -> Args {
    let mut a = Args {
        socket: default_socket(),
        state: None,
        save_interval: Duration::from_millis(1000),
        quotas: Quotas::default(),
    };
    let mut it = std::env::args().skip(1);
    let num =
        |v: Option<String>| -> usize { v.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()) };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--socket" => a.socket = it.next().unwrap_or_else(|| usage()).into(),
            "--state" => a.state = Some(it.next().unwrap_or_else(|| usage()).into()),
            "--save-interval-ms" => a.save_interval = Duration::from_millis(num(it.next()) as u64),
            "-E" | "--entry-nb" => a.quotas.nodes_per_domain = num(it.next()),
            "-S" | "--entry-size" => a.quotas.node_size = num(it.next()),
            "-W" | "--watch-nb" => a.quotas.watches_per_domain = num(it.next()),
            "-t" | "--transaction" => a.quotas.transactions_per_domain = num(it.next()),
            "-A" | "--perm-nb" => a.quotas.perms_per_node = num(it.next()),
            "-M" | "--path-max" => {
                a.quotas.path_max = num(it.next()).min(xen_abi::xenstore::REL_PATH_MAX)
            }
            "-Q" | "--quota" => {
                let v = it.next().unwrap_or_else(|| usage());
                let (what, n) = v.split_once('=').unwrap_or_else(|| usage());
                let n = num(Some(n.to_string()));
                match what {
                    "outstanding" => a.quotas.outstanding = n,
                    "transaction-nodes" => a.quotas.transaction_nodes = n,
                    "memory" => a.quotas.memory = n,
                    _ => usage(),
                }
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    a
}

/// Block the exit signals in every thread; the main thread waits for them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // A client going away must not kill us.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        set
    }
}

/// Wait up to `timeout` for one of `set`; true if one arrived.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is wanted.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    r > 0
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KXEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();
    let set = block_signals();
    let xs = match Xenstored::new(Config {
        quotas: args.quotas.clone(),
        introduce_hook: None,
    }) {
        Ok(x) => x,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(state) = &args.state {
        if state.exists() {
            if let Err(e) = xs.load(state) {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let server = match xs.serve_unix(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    info!(socket = %args.socket.display(), "kxen-xenstored ready");
    loop {
        let interval = if args.state.is_some() {
            args.save_interval
        } else {
            Duration::from_secs(3600)
        };
        if wait_signal(&set, interval) {
            break;
        }
        if let Some(state) = &args.state {
            if xs.is_dirty() {
                if let Err(e) = xs.save(state) {
                    error!("{e}");
                }
            }
        }
    }
    server.stop();
    xs.shutdown();
    let mut code = ExitCode::SUCCESS;
    if let Some(state) = &args.state {
        if let Err(e) = xs.save(state) {
            error!("{e}");
            code = ExitCode::FAILURE;
        }
    }
    info!("kxen-xenstored stopped");
    code
}
