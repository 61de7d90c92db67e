//! Service mode (`kxen.mode=service`): no checks; the guest behaves like a
//! minimal Linux-style Xen guest that a toolstack can drive.
//!
//! * xenstore: writes `control/feature-poweroff` and `control/feature-reboot`
//!   = "1", watches `control/shutdown` and acts on "poweroff"/"halt",
//!   "reboot" (acknowledged by writing "" back, as Linux's manage.c does)
//!   and "crash";
//! * PV console: input is echoed, and every complete line is answered with
//!   `echo: <line>`; the line `poweroff` powers the domain off.
//!
//! One loop serves both rings. It never waits on one request: requests go
//! out one at a time, replies are matched by req_id, and watch events are
//! taken whenever they arrive. Between passes the vCPU sleeps in
//! SCHEDOP_block. While it waits on something that may need a retry (a
//! xenstore request not yet answered or not yet sent, frontends not yet
//! started) a singleshot timer wakes it after [`RETRY_NS`]; otherwise only
//! an event does, as an idle Linux guest with no timers due. An idle
//! domain then costs the host nothing, and a lost notification shows up
//! as a guest that does not answer rather than as a 50 ms delay.

use core::fmt;
use core::sync::atomic::Ordering;

use kxen_testguest::cmd;
use kxen_testguest::lineedit::{self, Key, LineEditor};
use kxen_testguest::xswire::{self, Header, ShutdownRequest, TooLong};
use xen_abi::sched::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT};
use xen_abi::vcpu::{SetSingleshotTimer, VCPUOP_SET_SINGLESHOT_TIMER};
use xen_abi::xenstore::{XS_ERROR, XS_READ, XS_WATCH, XS_WATCH_EVENT, XS_WRITE};

use crate::hypercall::{service, vcpu_op};
use crate::setup::CONSOLE_PORT;
use crate::time::{now_ns, Deadline};
use crate::xenstore::{self, Ring};
use crate::{boot, console, events, front, println, xen};

/// The token of our watch on `control/shutdown`.
const TOKEN: &[u8] = b"kxen-testguest-shutdown";
/// Longest sleep between two passes while something may need a retry.
const RETRY_NS: u64 = 50_000_000;
/// After this long without a reply, say so once (and keep waiting: the
/// store may start serving the ring late).
const SLOW_REPLY_MS: u64 = 5_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Poweroff,
    Reboot,
    Crash,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    /// XS_WRITE <path> = "1" (path NUL-terminated).
    Feature(&'static [u8]),
    /// XS_WATCH control/shutdown.
    Watch,
    /// XS_READ control/shutdown.
    ReadShutdown,
    /// XS_WRITE control/shutdown = "", then carry out the action.
    Ack(Action),
}

/// What the guest does first, in order (Linux writes the same features).
const SETUP: [Op; 3] = [
    Op::Feature(b"control/feature-poweroff\0"),
    Op::Feature(b"control/feature-reboot\0"),
    Op::Watch,
];

impl Op {
    /// Message type and payload parts.
    fn request(&self) -> (u32, [&'static [u8]; 3]) {
        match *self {
            Op::Feature(path) => (XS_WRITE, [path, b"1", b""]),
            Op::Watch => (XS_WATCH, [b"control/shutdown\0", TOKEN, b"\0"]),
            Op::ReadShutdown => (XS_READ, [b"control/shutdown\0", b"", b""]),
            Op::Ack(_) => (XS_WRITE, [b"control/shutdown\0", b"", b""]),
        }
    }
}

/// The one request in flight.
struct InFlight {
    op: Op,
    req_id: u32,
    /// In the request ring (else waiting for room).
    sent: bool,
    since: Deadline,
    warned: bool,
}

impl InFlight {
    fn new(op: Op) -> Self {
        InFlight {
            op,
            req_id: xenstore::next_req_id(),
            sent: false,
            since: Deadline::after_ms(SLOW_REPLY_MS),
            warned: false,
        }
    }
}

/// Bytes shown as text: printable ASCII as is, anything else as \xNN.
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) {
                fmt::Write::write_char(f, b as char)?;
            } else {
                write!(f, "\\x{:02x}", b)?;
            }
        }
        Ok(())
    }
}

struct Store {
    ring: Ring,
    /// Next entry of [`SETUP`] to send.
    setup_step: usize,
    /// The watch is registered.
    watching: bool,
    /// The watch fired since we last read `control/shutdown`.
    dirty: bool,
    in_flight: Option<InFlight>,
}

/// Why the xenstore side stopped.
struct Unavailable;

impl Store {
    /// A request is queued, unsent or unanswered, or setup is not done.
    fn waiting(&self) -> bool {
        self.in_flight.is_some() || self.setup_step < SETUP.len()
    }

    fn new(ring: Ring) -> Self {
        Store {
            ring,
            setup_step: 0,
            watching: false,
            dirty: false,
            in_flight: None,
        }
    }

    /// One pass: take every complete message, then send what is due.
    fn pass(&mut self) -> Result<(), Unavailable> {
        loop {
            let ring = self.ring;
            let mut r = Ok(());
            match xenstore::next(&ring, |h, payload| r = self.handle(h, payload)) {
                Ok(false) => break,
                Ok(true) => r?,
                Err(TooLong(len)) => {
                    println!(
                        "kxen-testguest: service: xenstore watch unavailable (protocol error: a {} byte message)",
                        len
                    );
                    return Err(Unavailable);
                }
            }
        }
        if self.in_flight.is_none() {
            let next = if self.setup_step < SETUP.len() {
                self.setup_step += 1;
                Some(SETUP[self.setup_step - 1])
            } else if self.watching && self.dirty {
                self.dirty = false;
                Some(Op::ReadShutdown)
            } else {
                None
            };
            self.in_flight = next.map(InFlight::new);
        }
        if let Some(f) = self.in_flight.as_mut() {
            if !f.sent {
                let (kind, parts) = f.op.request();
                match self.ring.try_send(kind, f.req_id, &parts) {
                    Ok(sent) => f.sent = sent,
                    Err(e) => {
                        println!(
                            "kxen-testguest: service: xenstore watch unavailable ({})",
                            e
                        );
                        return Err(Unavailable);
                    }
                }
            }
            if !f.warned && f.since.expired() {
                f.warned = true;
                println!(
                    "kxen-testguest: note: service: no xenstore reply to {:?} after {} ms; still waiting",
                    f.op, SLOW_REPLY_MS
                );
            }
        }
        Ok(())
    }

    /// Act on one complete message.
    fn handle(&mut self, h: Header, payload: &[u8]) -> Result<(), Unavailable> {
        if h.kind == XS_WATCH_EVENT {
            // Any event of ours means "read control/shutdown again".
            match xswire::watch_event(payload) {
                Some((_, token)) if token == TOKEN => self.dirty = true,
                Some((_, token)) if token.starts_with(front::TOKEN_PREFIX) => front::note_watch(),
                _ => {}
            }
            return Ok(());
        }
        let op = match &self.in_flight {
            Some(f) if f.sent && f.req_id == h.req_id => f.op,
            _ => {
                println!(
                    "kxen-testguest: note: service: ignoring xenstore reply type {} id {}",
                    h.kind, h.req_id
                );
                return Ok(());
            }
        };
        self.in_flight = None;
        let error = (h.kind == XS_ERROR).then(|| xswire::text(payload));
        match op {
            Op::Feature(path) => {
                if let Some(e) = error {
                    println!(
                        "kxen-testguest: note: service: writing {} failed ({})",
                        Shown(xswire::text(path)),
                        Shown(e)
                    );
                }
            }
            Op::Watch => match error {
                Some(e) => {
                    println!(
                        "kxen-testguest: service: xenstore watch unavailable ({})",
                        Shown(e)
                    );
                    return Err(Unavailable);
                }
                None => {
                    self.watching = true;
                    println!("kxen-testguest: service: watching control/shutdown");
                }
            },
            Op::ReadShutdown => match error {
                // Missing: nothing requested.
                Some(b"ENOENT") => {}
                Some(e) => println!(
                    "kxen-testguest: note: service: reading control/shutdown failed ({})",
                    Shown(e)
                ),
                None => match xswire::shutdown_request(payload) {
                    ShutdownRequest::Nothing => {}
                    ShutdownRequest::Poweroff => {
                        self.in_flight = Some(InFlight::new(Op::Ack(Action::Poweroff)))
                    }
                    ShutdownRequest::Reboot => {
                        self.in_flight = Some(InFlight::new(Op::Ack(Action::Reboot)))
                    }
                    ShutdownRequest::Crash => shut_down(Action::Crash),
                    ShutdownRequest::Unknown(v) => {
                        println!("kxen-testguest: unknown shutdown request {}", Shown(v))
                    }
                },
            },
            Op::Ack(action) => {
                if let Some(e) = error {
                    println!(
                        "kxen-testguest: note: service: acknowledging control/shutdown failed ({})",
                        Shown(e)
                    );
                }
                shut_down(action)
            }
        }
        Ok(())
    }
}

fn shut_down(action: Action) -> ! {
    let (name, reason) = match action {
        Action::Poweroff => ("poweroff", SHUTDOWN_POWEROFF),
        Action::Reboot => ("reboot", SHUTDOWN_REBOOT),
        Action::Crash => ("crash", SHUTDOWN_CRASH),
    };
    println!("kxen-testguest: shutdown {}", name);
    let rc = xen::shutdown(reason);
    println!("kxen-testguest: SCHEDOP_shutdown returned {}", rc);
    // Still running: end the domain the hard way.
    service(boot::SVC_TRIPLE_FAULT, 0);
    loop {
        xen::sched_yield();
    }
}

/// Echo console input; answer complete lines. Lines that may be device
/// commands are not echoed as typed (`withheld`), only in the `echo:`
/// line, so a test that looks for a line starting `blk write` finds the
/// guest's answer, not its own input.
fn console_pass(editor: &mut LineEditor, withheld: &mut bool) {
    let mut buf = [0u8; 128];
    loop {
        let n = console::read_input(&mut buf);
        if n == 0 {
            return;
        }
        let mut out = console::Line::new();
        for &b in &buf[..n] {
            match editor.push(b) {
                Key::Echo => {
                    let typed = editor.line();
                    if cmd::may_be_device_command(typed) {
                        *withheld = true;
                    } else if core::mem::take(withheld) {
                        // Not a device command after all: show it now.
                        out.bytes(typed);
                    } else {
                        out.bytes(&[b]);
                    }
                }
                Key::Erase if !*withheld => out.bytes(b"\x08 \x08"),
                Key::Erase => {}
                Key::Ignore => {}
                Key::Line => {
                    *withheld = false;
                    out.bytes(b"\necho: ");
                    out.bytes(editor.line());
                    out.bytes(b"\n");
                    if lineedit::is_poweroff_command(editor.line()) {
                        out.flush();
                        shut_down(Action::Poweroff);
                    }
                    // Device commands answer after the echo.
                    out.flush();
                    front::command(editor.line());
                }
            }
        }
        out.flush();
    }
}

/// Sleep until an event arrives, or [`RETRY_NS`] pass when `waiting`.
fn idle(waiting: bool) {
    if !waiting {
        // Returns at once if an event came in since the last drain.
        xen::block();
        return;
    }
    let timer = events::TIMER_PORT.load(Ordering::Acquire);
    if let (true, Some(now)) = (timer != 0, now_ns()) {
        let mut t = SetSingleshotTimer {
            timeout_abs_ns: now + RETRY_NS,
            flags: 0,
            _pad: 0,
        };
        if vcpu_op(VCPUOP_SET_SINGLESHOT_TIMER, 0, &mut t) == 0 {
            // Returns at once if an event came in since the last drain
            // (evtchn_upcall_pending is set again).
            xen::block();
            return;
        }
    }
    // No timer to wake us: do not block.
    xen::sched_yield();
}

pub fn run() -> ! {
    println!("kxen-testguest: service ready");
    let mut store = match xenstore::ring() {
        Ok(ring) => Some(Store::new(ring)),
        Err(e) => {
            println!(
                "kxen-testguest: service: xenstore watch unavailable ({})",
                e
            );
            None
        }
    };
    let mut editor = LineEditor::new();
    let mut withheld = false;
    let ports = [
        CONSOLE_PORT.load(Ordering::Acquire),
        store.as_ref().map_or(0, |s| s.ring.port()),
        events::TIMER_PORT.load(Ordering::Acquire),
    ];
    loop {
        // Clear evtchn_upcall_pending and the pending bits first, then look
        // at the rings: anything arriving after this makes SCHEDOP_block
        // return at once.
        events::drain();
        for p in ports {
            events::take_seen(p);
        }
        console_pass(&mut editor, &mut withheld);
        front::poll();
        if let Some(s) = store.as_mut() {
            if s.pass().is_err() {
                store = None;
            }
        }
        // Work found during this pass whose notification is already
        // consumed (a frontend watch read by the store's pass, messages
        // queued while a frontend waited for a reply): go round again
        // rather than sleep on an event that will not come.
        if front::dirty() || (store.is_some() && xenstore::deferred()) {
            continue;
        }
        let waiting = front::starting() || store.as_ref().is_some_and(Store::waiting);
        idle(waiting);
    }
}
