//! The console backend (xenconsoled's job): drain each domain's console
//! output into a per-domain log, fan it out to attached `kxl console`
//! clients, and feed their keystrokes back. A console is either the PV
//! console ring in guest memory or, for an HVM domain's emulated UART, a
//! byte stream from kxen-vmm.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::debug;
use vmm_sys_util::eventfd::EventFd;

use kxen_foreign::console;
use kxen_foreign::foreign::ForeignPage;

/// Cap on keystrokes queued for a guest that does not read them.
const INPUT_LIMIT: usize = 64 * 1024;
/// How long output may wait on one attached client.
const CLIENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the guest's side of a console is.
enum Transport {
    /// The PV console ring; `notify` is the Dom0 → guest event.
    Ring { page: ForeignPage, notify: EventFd },
    /// A serial line: kxen-vmm's end of the emulated UART.
    Line(UnixStream),
}

pub struct ConsoleBackend {
    transport: Transport,
    /// Guest → Dom0 notifications (ring), or our own wake-ups (line).
    kick: EventFd,
    log_path: PathBuf,
    log: Mutex<File>,
    clients: Mutex<Vec<UnixStream>>,
    input: Mutex<Vec<u8>>,
    stopping: AtomicBool,
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
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn start(self: &Arc<Self>, domid: u32) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("console-{domid}"))
            .spawn(move || me.run())
    }

    /// Stop serving; attached clients see EOF.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.notify_self();
    }

    fn notify_self(&self) -> std::io::Result<()> {
        self.kick.write(1)
    }

    fn run(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            {
                // SAFETY: the eventfd and the line live in `self`, which
                // outlives the poll.
                let kick = unsafe { BorrowedFd::borrow_raw(self.kick.as_raw_fd()) };
                let mut fds = vec![PollFd::new(kick, PollFlags::POLLIN)];
                if let Transport::Line(line) = &self.transport {
                    // SAFETY: as above.
                    let line = unsafe { BorrowedFd::borrow_raw(line.as_raw_fd()) };
                    fds.push(PollFd::new(line, PollFlags::POLLIN));
                }
                let _ = poll(&mut fds, PollTimeout::from(50u16));
            }
            let _ = self.kick.read();
            self.service();
        }
        self.service();
        for client in self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Move bytes both ways once.
    fn service(&self) {
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
        clients.retain_mut(|c| c.write_all(data).is_ok());
    }

    /// Attach a client: replay the log from the first byte, then stream.
    /// Its input goes to the guest until it disconnects (even if it left
    /// before the replay finished: what it typed is still delivered).
    pub fn attach(self: &Arc<Self>, mut stream: UnixStream) {
        // A client that stops reading is dropped rather than allowed to
        // stall the console thread (and with it the guest's output ring).
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        if let Ok(reader) = stream.try_clone() {
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("console-input".into())
                .spawn(move || me.read_input(reader));
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Holding the client lock keeps the replay and the live stream in
        // order: nothing is output while we copy the log.
        if let Ok(mut log) = File::open(&self.log_path) {
            let mut history = Vec::new();
            let _ = log.read_to_end(&mut history);
            if stream.write_all(&history).is_err() {
                return;
            }
        }
        clients.push(stream);
    }

    fn read_input(&self, mut reader: UnixStream) {
        let mut buf = [0u8; 256];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
                    if input.len() + n > INPUT_LIMIT {
                        debug!("console input queue full; dropping keystrokes");
                        continue;
                    }
                    input.extend_from_slice(&buf[..n]);
                    drop(input);
                    let _ = self.notify_self();
                }
            }
        }
    }
}
