//! The console backend (xenconsoled's job): drain each domain's console
//! output into a per-domain log, fan it out to attached `kxl console`
//! clients, and feed their keystrokes back. A console is either the PV
//! console ring in guest memory or, for an HVM domain's emulated UART, a
//! byte stream from kxen-vmm.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::reactor::{self, reactor, Next, Token};
use kxen_foreign::console;
use kxen_foreign::foreign::ForeignPage;

/// Cap on keystrokes queued for a guest that does not read them.
const INPUT_LIMIT: usize = 64 * 1024;
/// Cap on live output queued for an attached client that does not read
/// it; past it the client is dropped rather than let grow without end.
const CLIENT_BACKLOG_LIMIT: usize = 4 << 20;

/// Where the guest's side of a console is.
enum Transport {
    /// The PV console ring; `notify` is the Dom0 → guest event.
    Ring { page: ForeignPage, notify: EventFd },
    /// A serial line: kxen-vmm's end of the emulated UART.
    Line(UnixStream),
}

/// An attached `kxl console`: its socket (non-blocking, served by the
/// event loop) and the output it has not taken yet.
struct Client {
    stream: UnixStream,
    backlog: Mutex<Vec<u8>>,
    token: Mutex<Option<Token>>,
}

impl Client {
    /// Write what the socket takes now. False: the client is gone.
    fn flush(&self) -> bool {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        while !backlog.is_empty() {
            match (&self.stream).write(&backlog) {
                Ok(0) => return false,
                Ok(n) => {
                    backlog.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        true
    }

    /// Queue live output. False: the client is gone or too far behind.
    fn send(&self, data: &[u8]) -> bool {
        {
            let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
            if backlog.len() + data.len() > CLIENT_BACKLOG_LIMIT {
                debug!("console client not reading; dropping it");
                return false;
            }
            backlog.extend_from_slice(data);
        }
        self.flush()
    }

    fn close(&self) {
        if let Some(token) = self.token.lock().unwrap_or_else(|e| e.into_inner()).take() {
            reactor().remove(token);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

pub struct ConsoleBackend {
    transport: Transport,
    /// Guest → Dom0 notifications (ring), or our own wake-ups (line).
    kick: EventFd,
    log_path: PathBuf,
    log: Mutex<File>,
    clients: Mutex<Vec<Arc<Client>>>,
    input: Mutex<Vec<u8>>,
    /// The event loop's registrations of `kick` and the line.
    tokens: Mutex<Vec<Token>>,
    stopping: AtomicBool,
    /// Held while bytes move: the event loop and a `kxl console` request
    /// that brought keystrokes both service the console, and two readers
    /// of the output ring at once would each take the same bytes (the
    /// guest's output logged and sent twice, out of order).
    servicing: Mutex<()>,
}

impl ConsoleBackend {
    pub fn new(
        page: ForeignPage,
        kick: EventFd,
        notify: EventFd,
        log_path: PathBuf,
    ) -> std::io::Result<Arc<Self>> {
        Self::with_transport(Transport::Ring { page, notify }, kick, log_path)
    }

    /// A console on a serial line (an HVM domain's COM1).
    pub fn new_line(line: UnixStream, log_path: PathBuf) -> std::io::Result<Arc<Self>> {
        line.set_nonblocking(true)?;
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        Self::with_transport(Transport::Line(line), kick, log_path)
    }

    fn with_transport(
        transport: Transport,
        kick: EventFd,
        log_path: PathBuf,
    ) -> std::io::Result<Arc<Self>> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        Ok(Arc::new(ConsoleBackend {
            transport,
            kick,
            log_path,
            log: Mutex::new(log),
            clients: Mutex::new(Vec::new()),
            input: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            servicing: Mutex::new(()),
        }))
    }

    /// Serve the console from kxend's event loop: on every guest
    /// notification (or line readiness), and once now for what the guest
    /// wrote before we listened.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        let on_kick = move |_| {
            let _ = me.kick.read();
            me.service();
            Next::Keep
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.push(reactor().add(self.kick.as_raw_fd(), reactor::IN, Arc::new(on_kick))?);
        if let Transport::Line(line) = &self.transport {
            // Edge-triggered: `service_line` reads until the line is dry
            // and writes input until it is full, and the next edge (more
            // output, or room again) brings it back.
            let me = self.clone();
            let on_line = move |_| {
                me.service();
                Next::Keep
            };
            tokens.push(reactor().add(
                line.as_raw_fd(),
                reactor::IN | reactor::OUT | reactor::EDGE,
                Arc::new(on_line),
            )?);
        }
        drop(tokens);
        self.service();
        Ok(())
    }

    /// Stop serving; attached clients see EOF.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        for token in self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            reactor().remove(token);
        }
        self.service();
        for client in self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            client.flush();
            client.close();
        }
    }

    /// Move bytes both ways once.
    fn service(&self) {
        let _one_at_a_time = self.servicing.lock().unwrap_or_else(|e| e.into_inner());
        match &self.transport {
            Transport::Ring { page, notify } => self.service_ring(page, notify),
            Transport::Line(line) => self.service_line(line),
        }
    }

    fn service_line(&self, mut line: &UnixStream) {
        let mut buf = [0u8; 4096];
        loop {
            match line.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.output(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        while !input.is_empty() {
            match line.write(&input) {
                Ok(0) => break,
                Ok(n) => {
                    input.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Full (the guest is not reading) or gone: retry later.
                Err(_) => break,
            }
        }
    }

    fn service_ring(&self, page: &ForeignPage, notify_guest: &EventFd) {
        let (data, mut notify) = console::take_output(page);
        if !data.is_empty() {
            self.output(&data);
        }
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        let taken = console::give_input(page, &input);
        if taken > 0 {
            input.drain(..taken);
            notify = true;
        }
        drop(input);
        if notify {
            let _ = notify_guest.write(1);
        }
    }

    fn output(&self, data: &[u8]) {
        let _ = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(data);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|c| {
            let keep = c.send(data);
            if !keep {
                c.close();
            }
            keep
        });
    }

    /// Attach a client: replay the log from the first byte, then stream.
    /// Its input goes to the guest until it disconnects (even if it left
    /// before the replay finished: what it typed is still delivered).
    ///
    /// `typed` is input the client sent behind its request, already read
    /// off the socket with it.
    pub fn attach(self: &Arc<Self>, stream: UnixStream, typed: &[u8]) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if !typed.is_empty() {
            self.queue_input(typed);
            self.service();
        }
        let client = Arc::new(Client {
            stream,
            backlog: Mutex::new(Vec::new()),
            token: Mutex::new(None),
        });
        {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if self.stopping.load(Ordering::SeqCst) {
                client.close();
                return;
            }
            // Holding the client lock keeps the replay and the live stream
            // in order: nothing is output while we copy the log.
            if let Ok(mut log) = File::open(&self.log_path) {
                let mut history = Vec::new();
                let _ = log.read_to_end(&mut history);
                *client.backlog.lock().unwrap_or_else(|e| e.into_inner()) = history;
            }
            if !client.flush() {
                // It left before the replay went out (`kxl console` with
                // its input on a pipe detaches as soon as it reads the
                // escape). Everything it typed is queued on the socket by
                // now: deliver it before letting go.
                drop(clients);
                self.client_ready(&client);
                client.close();
                return;
            }
            clients.push(client.clone());
        }
        // Edge-triggered: each event reads all input there is and flushes
        // as much backlog as the socket takes.
        let me = self.clone();
        let served = client.clone();
        let on_client = move |events: u32| {
            let alive = me.client_ready(&served);
            if alive && events & reactor::HANGUP == 0 {
                return Next::Keep;
            }
            me.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| !Arc::ptr_eq(c, &served));
            let _ = served.stream.shutdown(std::net::Shutdown::Both);
            Next::Remove
        };
        match reactor().add(
            client.stream.as_raw_fd(),
            reactor::IN | reactor::OUT | reactor::EDGE,
            Arc::new(on_client),
        ) {
            Ok(token) => *client.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token),
            Err(e) => {
                warn!("console client: {e}");
                self.clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|c| !Arc::ptr_eq(c, &client));
            }
        }
    }

    /// Queue keystrokes for the guest. False: the queue is full and they
    /// were dropped (the guest is not reading).
    fn queue_input(&self, data: &[u8]) -> bool {
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        if input.len() + data.len() > INPUT_LIMIT {
            debug!("console input queue full; dropping keystrokes");
            return false;
        }
        input.extend_from_slice(data);
        true
    }

    /// A client's socket is ready: take its keystrokes, give it output.
    /// False once it has gone.
    fn client_ready(&self, client: &Client) -> bool {
        let mut buf = [0u8; 4096];
        let mut typed = false;
        let alive = loop {
            match (&client.stream).read(&mut buf) {
                // It closed its sending side: it may still read output
                // (a hang-up or a failed write ends it).
                Ok(0) => break true,
                Ok(n) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        break false;
                    }
                    typed |= self.queue_input(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        if typed {
            self.service();
        }
        alive && client.flush()
    }
}
