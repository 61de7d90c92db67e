//! What Dom0 serves a domain, for one domain: its PV console and a
//! xenstore holding the nodes kxend would write for it. Both wait on
//! eventfds (the guest's notifications, stdin, a stop eventfd); an idle
//! domain costs no wake-ups.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kxen_foreign::console;
use kxen_foreign::foreign::{ForeignMemory, ForeignPage};
use kxen_vmm_api::{ClientError, LaunchArgs, VmmClient};
use kxen_xenstore::{Access, Config, Perm, Perms, SharedPage, Xenstored};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the PV console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleDest {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Drained and dropped.
    Null,
}

impl FromStr for ConsoleDest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleDest::Stdio),
            "null" => Ok(ConsoleDest::Null),
            _ => s
                .strip_prefix("file:")
                .map(|p| ConsoleDest::File(PathBuf::from(p)))
                .ok_or_else(|| format!("bad --console {s:?}: use stdio, null or file:PATH")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Control(#[from] ClientError),
    #[error("mapping guest memory: {0}")]
    Map(std::io::Error),
    #[error("kxen-vmm offers no {0} port")]
    NoPort(&'static str),
    #[error("the {0} ring's frame is not in the memfd")]
    RingOutsideMemfd(&'static str),
    #[error("console log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("xenstore: {0}")]
    Xenstore(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One Dom0 port's ring and eventfds.
struct RingEnd {
    page: ForeignPage,
    /// Written by kxen-vmm when the guest notifies us.
    from_guest: EventFd,
    /// Ours to write to notify the guest.
    to_guest: EventFd,
}

fn eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: kxen-vmm sends eventfds in the dom0-ports reply; the fd is
    // ours from here.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

/// Written once to stop the services and never read, so it stays
/// readable for every thread that polls it.
struct StopSignal {
    stopping: AtomicBool,
    fd: EventFd,
}

/// The running services.
pub struct Services {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
}

impl Services {
    pub fn start(
        client: &mut VmmClient,
        launch: &LaunchArgs,
        console: ConsoleDest,
    ) -> Result<Self, ServiceError> {
        let guest = client.memfd()?;
        let memory = Arc::new(
            ForeignMemory::map(guest.memfd, guest.size, guest.regions)
                .map_err(ServiceError::Map)?,
        );
        let mut console_end = None;
        let mut store_end = None;
        for port in client.dom0_ports()? {
            let name = match port.info.name.as_str() {
                "console" => "console",
                "xenstore" => "xenstore",
                other => {
                    warn!(other, "unknown Dom0 port");
                    continue;
                }
            };
            let end = RingEnd {
                page: memory
                    .page(port.info.pfn)
                    .ok_or(ServiceError::RingOutsideMemfd(name))?,
                from_guest: eventfd(port.to_dom0),
                to_guest: eventfd(port.from_dom0),
            };
            match name {
                "console" => console_end = Some(end),
                _ => store_end = Some(end),
            }
        }
        let console_end = console_end.ok_or(ServiceError::NoPort("console"))?;
        let store_end = store_end.ok_or(ServiceError::NoPort("xenstore"))?;
        let out: Box<dyn Write + Send> = match &console {
            ConsoleDest::Stdio => Box::new(std::io::stdout()),
            ConsoleDest::Null => Box::new(std::io::sink()),
            ConsoleDest::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ServiceError::Log {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let xs = start_store(launch, store_end.page.clone(), &store_end.to_guest)?;
        let stop = Arc::new(StopSignal {
            stopping: AtomicBool::new(false),
            fd: EventFd::new(EFD_NONBLOCK)?,
        });
        let mut threads = Vec::new();
        let console_stop = stop.clone();
        let stdin = console == ConsoleDest::Stdio;
        threads.push(
            std::thread::Builder::new()
                .name("console".into())
                .spawn(move || console_loop(console_end, out, stdin, &console_stop))?,
        );
        let store_stop = stop.clone();
        let domid = u32::from(launch.domid);
        threads.push(
            std::thread::Builder::new()
                .name("xenstore".into())
                .spawn(move || store_loop(&xs, domid, &store_end.from_guest, &store_stop))?,
        );
        Ok(Services { stop, threads })
    }

    /// Stop after a last pass over the rings (the guest's final output).
    pub fn stop(self) {
        self.stop.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.fd.write(1);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// `fd` for polling, for as long as the EventFd lives.
fn borrow(fd: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `fd`, which outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// Wait until one of `fds` is readable; which ones are.
fn wait(fds: &[BorrowedFd<'_>]) -> Vec<bool> {
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    match poll(&mut polled, PollTimeout::NONE) {
        Ok(_) => polled
            .iter()
            .map(|p| {
                p.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            })
            .collect(),
        Err(_) => vec![false; fds.len()],
    }
}

fn console_loop(end: RingEnd, mut out: Box<dyn Write + Send>, stdin: bool, stop: &StopSignal) {
    let mut input = Vec::new();
    let mut stdin_open = stdin;
    loop {
        let stopping = stop.stopping.load(Ordering::SeqCst);
        if service_console(&end.page, &mut *out, &mut input) {
            let _ = end.to_guest.write(1);
        }
        if stopping {
            let _ = out.flush();
            return;
        }
        let stdin_fd = std::io::stdin();
        let mut fds = vec![borrow(&end.from_guest), borrow(&stop.fd)];
        if stdin_open {
            fds.push(stdin_fd.as_fd());
        }
        let ready = wait(&fds);
        if ready[0] {
            let _ = end.from_guest.read();
        }
        if ready.get(2).copied().unwrap_or(false) {
            let mut buf = [0u8; 256];
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// Copy the output ring to `out` and `input` into the input ring. True if
/// the guest should be notified.
fn service_console(page: &ForeignPage, out: &mut dyn Write, input: &mut Vec<u8>) -> bool {
    let (data, mut notify) = console::take_output(page);
    if !data.is_empty() {
        let _ = out.write_all(&data);
        let _ = out.flush();
    }
    let taken = console::give_input(page, input);
    if taken > 0 {
        input.drain(..taken);
        notify = true;
    }
    notify
}

fn store_loop(xs: &Xenstored, domid: u32, from_guest: &EventFd, stop: &StopSignal) {
    loop {
        xs.ring_kick(domid);
        let ready = wait(&[borrow(from_guest), borrow(&stop.fd)]);
        if ready[1] {
            break;
        }
        if ready[0] {
            let _ = from_guest.read();
        }
    }
    xs.shutdown();
}

/// The guest's xenstore ring page, mapped from its memfd.
struct Ring(ForeignPage);

impl SharedPage for Ring {
    fn load_u32(&self, off: usize) -> u32 {
        self.0.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.0.store_u32(off, v)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.0.read(off, buf)
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.0.write(off, data)
    }
}

/// A xenstored holding what the toolstack would have written for the
/// domain, serving its ring.
fn start_store(
    launch: &LaunchArgs,
    page: ForeignPage,
    to_guest: &EventFd,
) -> Result<Xenstored, ServiceError> {
    let err = |e: String| ServiceError::Xenstore(e);
    let xs = Xenstored::new(Config::default()).map_err(|e| err(e.to_string()))?;
    let domid = u32::from(launch.domid);
    let home = format!("/local/domain/{domid}");
    let readable = Perms::new(vec![
        Perm::new(0, Access::None),
        Perm::new(domid, Access::Read),
    ])
    .ok_or_else(|| err("permissions".into()))?;
    let writable = Perms::new(vec![Perm::new(domid, Access::None)])
        .ok_or_else(|| err("permissions".into()))?;
    let put = |path: &str, value: &str, perms: &Perms| {
        xs.write_with_perms(path, value, perms)
            .map_err(|e| err(format!("{path}: {e}")))
    };
    put(&home, "", &readable)?;
    put(&format!("{home}/name"), &launch.name, &readable)?;
    put(&format!("{home}/domid"), &domid.to_string(), &readable)?;
    for dir in ["control", "device", "data"] {
        put(&format!("{home}/{dir}"), "", &writable)?;
    }
    put(&format!("{home}/control/shutdown"), "", &writable)?;
    let notify = to_guest.try_clone()?;
    xs.introduce_domain(
        domid,
        Arc::new(Ring(page)),
        Box::new(move || {
            let _ = notify.write(1);
        }),
    );
    Ok(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_destinations_parse() {
        assert_eq!("stdio".parse(), Ok(ConsoleDest::Stdio));
        assert_eq!("null".parse(), Ok(ConsoleDest::Null));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(ConsoleDest::File(PathBuf::from("/tmp/x")))
        );
        assert!("dom0".parse::<ConsoleDest>().is_err());
    }
}
