//! Synchronous xenstore calls for the frontends (read, write, directory,
//! watches, transactions) and the xenbus state handshake helpers.

use core::fmt::{self, Write};

use kxen_testguest::cmd::parse_u64;
use kxen_testguest::xswire;
use xen_abi::xenstore::{
    PAYLOAD_MAX, XS_DIRECTORY, XS_ERROR, XS_READ, XS_TRANSACTION_END, XS_TRANSACTION_START,
    XS_UNWATCH, XS_WATCH, XS_WRITE,
};

use crate::cell::Single;
use crate::time::{now_ns, Deadline};
use crate::xenstore::{self, Reply};
use crate::{events, xen};

/// XenbusState values (io/xenbus.h).
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The store answered with an error ("ENOENT", "EAGAIN", ...).
    Store(&'static str),
    /// The ring failed (no store, timeout, framing).
    Transport(&'static str),
    /// A value was not what the protocol says it is.
    BadValue,
    /// A bounded wait ran out.
    Timeout,
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Store(e) => write!(f, "xenstore error {}", e),
            XsError::Transport(e) => write!(f, "xenstore: {}", e),
            XsError::BadValue => f.write_str("malformed xenstore value"),
            XsError::Timeout => f.write_str("timed out"),
        }
    }
}

fn errno_name(text: &[u8]) -> &'static str {
    const KNOWN: [&str; 10] = [
        "ENOENT", "EAGAIN", "EACCES", "EINVAL", "EEXIST", "EISDIR", "ENOSPC", "EIO", "E2BIG",
        "ENOSYS",
    ];
    KNOWN
        .iter()
        .find(|k| k.as_bytes() == text)
        .copied()
        .unwrap_or("other")
}

/// A NUL-terminated xenstore path built with `write!`.
pub struct Path {
    buf: [u8; 192],
    len: usize,
    overflow: bool,
}

impl Path {
    pub const fn new() -> Self {
        Path {
            buf: [0; 192],
            len: 0,
            overflow: false,
        }
    }

    pub fn from_args(args: fmt::Arguments) -> Self {
        let mut p = Path::new();
        let _ = p.write_fmt(args);
        p
    }

    /// The path without its NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The path with its NUL (as requests carry it).
    fn with_nul(&self) -> Result<&[u8], XsError> {
        if self.overflow {
            return Err(XsError::Transport("path too long"));
        }
        Ok(&self.buf[..self.len + 1])
    }

    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len + 1 >= self.buf.len() {
                self.overflow = true;
                return;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self.buf[self.len] = 0;
    }
}

impl Write for Path {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(core::str::from_utf8(self.as_bytes()).unwrap_or("<bad path>"))
    }
}

/// `Path` from format arguments.
#[macro_export]
macro_rules! xs_path {
    ($($arg:tt)*) => {
        $crate::front::xs::Path::from_args(format_args!($($arg)*))
    };
}

static REPLY: Single<Reply> = Single::new(Reply {
    kind: 0,
    len: 0,
    buf: [0; PAYLOAD_MAX],
});

/// One request; `f` sees the reply payload of a successful reply.
fn call<R>(
    kind: u32,
    tx: u32,
    parts: &[&[u8]],
    f: impl FnOnce(&[u8]) -> Result<R, XsError>,
) -> Result<R, XsError> {
    REPLY.with(|reply| {
        xenstore::request_tx(kind, tx, parts, reply).map_err(XsError::Transport)?;
        if reply.kind == XS_ERROR {
            return Err(XsError::Store(errno_name(reply.text())));
        }
        if reply.kind != kind {
            return Err(XsError::Transport("reply of another type"));
        }
        f(reply.payload())
    })
}

/// Read `path` into `out`; returns the value's length (truncated to `out`).
pub fn read(path: &Path, out: &mut [u8]) -> Result<usize, XsError> {
    call(XS_READ, 0, &[path.with_nul()?], |v| {
        let v = xswire::text(v);
        let n = v.len().min(out.len());
        out[..n].copy_from_slice(&v[..n]);
        Ok(n)
    })
}

/// Read a decimal number.
pub fn read_u64(path: &Path) -> Result<u64, XsError> {
    let mut buf = [0u8; 24];
    let n = read(path, &mut buf)?;
    parse_u64(&buf[..n]).ok_or(XsError::BadValue)
}

/// Read a decimal number; `default` if the node does not exist.
pub fn read_u64_or(path: &Path, default: u64) -> Result<u64, XsError> {
    match read_u64(path) {
        Err(XsError::Store("ENOENT")) => Ok(default),
        r => r,
    }
}

pub fn write(tx: u32, path: &Path, value: &[u8]) -> Result<(), XsError> {
    call(XS_WRITE, tx, &[path.with_nul()?, value], |_| Ok(()))
}

/// Write a number in decimal.
pub fn write_u64(tx: u32, path: &Path, value: u64) -> Result<(), XsError> {
    let mut p = Path::new();
    let _ = write!(p, "{}", value);
    write(tx, path, p.as_bytes())
}

/// Call `f` with each child name of `path` (none if it does not exist).
pub fn directory(path: &Path, mut f: impl FnMut(&[u8])) -> Result<(), XsError> {
    let mut names = [0u8; 512];
    let n = match call(XS_DIRECTORY, 0, &[path.with_nul()?], |v| {
        let n = v.len().min(names.len());
        names[..n].copy_from_slice(&v[..n]);
        Ok(n)
    }) {
        Err(XsError::Store("ENOENT")) => 0,
        r => r?,
    };
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        f(name);
    }
    Ok(())
}

pub fn watch(path: &Path, token: &[u8]) -> Result<(), XsError> {
    call(XS_WATCH, 0, &[path.with_nul()?, token, b"\0"], |_| Ok(()))
}

pub fn unwatch(path: &Path, token: &[u8]) -> Result<(), XsError> {
    call(XS_UNWATCH, 0, &[path.with_nul()?, token, b"\0"], |_| Ok(()))
}

pub fn tx_start() -> Result<u32, XsError> {
    call(XS_TRANSACTION_START, 0, &[b"\0"], |v| {
        let id = parse_u64(xswire::text(v)).ok_or(XsError::BadValue)?;
        u32::try_from(id).map_err(|_| XsError::BadValue)
    })
}

/// End transaction `tx`; `Err(Store("EAGAIN"))` means "start over".
pub fn tx_end(tx: u32, commit: bool) -> Result<(), XsError> {
    let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
    call(XS_TRANSACTION_END, tx, &[arg], |_| Ok(()))
}

/// Run `body` in a transaction, retrying while the store says EAGAIN.
pub fn transaction(mut body: impl FnMut(u32) -> Result<(), XsError>) -> Result<(), XsError> {
    for _ in 0..16 {
        let tx = tx_start()?;
        if let Err(e) = body(tx) {
            let _ = tx_end(tx, false);
            return Err(e);
        }
        match tx_end(tx, true) {
            Err(XsError::Store("EAGAIN")) => continue,
            r => return r,
        }
    }
    Err(XsError::Store("EAGAIN"))
}

/// Sleep until the xenstore event channel fires or `ns` pass.
fn nap(ns: u64) {
    let Ok(ring) = xenstore::ring() else {
        xen::sched_yield();
        return;
    };
    // Clear what is pending first: a notification after this wakes the poll.
    events::drain();
    events::take_seen(ring.port());
    match now_ns() {
        Some(now) => {
            let mut ports = [ring.port()];
            xen::poll(&mut ports, now + ns);
        }
        None => {
            xen::sched_yield();
        }
    }
}

/// Wait until the XenbusState at `state_path` satisfies `want`, at most
/// `ms` milliseconds. A watch with `token` on the path (registered by the
/// caller) shortens the wait; the node is also re-read every 20 ms, so a
/// lost event costs only latency. Returns the state seen last.
pub fn wait_state(
    state_path: &Path,
    token: &[u8],
    want: impl Fn(u32) -> bool,
    ms: u64,
) -> Result<u32, (XsError, u32)> {
    let mut d = Deadline::after_ms(ms);
    let mut last = state::UNKNOWN;
    loop {
        match read_u64(state_path) {
            Ok(s) => {
                last = s as u32;
                if want(last) {
                    return Ok(last);
                }
            }
            // Not there yet, or not yet readable by us (the toolstack
            // sets the backend directory's permissions after creating it).
            Err(XsError::Store("ENOENT" | "EACCES")) => last = state::UNKNOWN,
            Err(XsError::BadValue) => {}
            Err(e) => return Err((e, last)),
        }
        if d.expired() {
            return Err((XsError::Timeout, last));
        }
        xenstore::pump();
        if !xenstore::take_watch_events(token) {
            nap(20_000_000);
        }
    }
}

/// Whether the backend at `be` is going or gone (Closing, Closed, or its
/// state node removed). A store that does not answer is not taken as gone.
/// Wait until the backend at `be_state` reaches Connected. A backend that
/// goes to Closing or beyond instead is an error (BadValue, its state).
pub fn wait_backend_connected(
    be_state: &Path,
    token: &[u8],
    ms: u64,
) -> Result<u32, (XsError, u32)> {
    wait_state(
        be_state,
        token,
        |s| s == state::CONNECTED || s >= state::CLOSING,
        ms,
    )
    .and_then(|s| {
        if s == state::CONNECTED {
            Ok(s)
        } else {
            Err((XsError::BadValue, s))
        }
    })
}

pub fn backend_gone(be: &Path) -> bool {
    match read_u64(&xs_path!("{}/state", be)) {
        Ok(s) => s >= state::CLOSING as u64,
        Err(e) => e == XsError::Store("ENOENT"),
    }
}

/// Write our XenbusState.
pub fn switch_state(fe: &Path, s: u32) -> Result<(), XsError> {
    write_u64(0, &xs_path!("{}/state", fe), s as u64)
}
