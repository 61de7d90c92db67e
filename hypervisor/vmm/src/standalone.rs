//! Dom0's side of the console and xenstore rings while kxen-vmm runs a
//! domain on its own (no kxend): the console goes to stdout/stdin, and the
//! xenstore ring is served by the same xenstored library kxend embeds
//! (kxen-xenstore), holding the domain's own nodes.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kxen_xenstore::{Access, Config, Perm, Perms, SharedPage, Xenstored};
use tracing::{debug, warn};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use xen_abi::console as cons;

use crate::vm::{Runtime, DOM0_CONSOLE_PORT, DOM0_XENSTORE_PORT};

/// Where the domain's PV console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Drained and dropped.
    Null,
    /// Served by kxend (console and xenstore), reached through the
    /// control socket's `dom0-ports` request.
    Dom0,
}

/// Rings are polled at least this often, in case a notification raced.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Doorbell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        if !*rung {
            rung = self
                .cv
                .wait_timeout(rung, POLL_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *rung = false;
    }
}

pub struct Services {
    console_mode: ConsoleMode,
    console_bell: Doorbell,
    store_bell: Doorbell,
    stopping: AtomicBool,
    console_input: Mutex<Vec<u8>>,
}

impl Services {
    pub fn new(console_mode: ConsoleMode) -> Self {
        Services {
            console_mode,
            console_bell: Doorbell::default(),
            store_bell: Doorbell::default(),
            stopping: AtomicBool::new(false),
            console_input: Mutex::new(Vec::new()),
        }
    }

    /// The guest notified Dom0's `port`.
    pub fn notify(&self, port: u32) {
        match port {
            DOM0_CONSOLE_PORT => self.console_bell.ring(),
            DOM0_XENSTORE_PORT => self.store_bell.ring(),
            _ => debug!(port, "event for an unknown Dom0 port"),
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.console_bell.ring();
        self.store_bell.ring();
    }

    pub fn start(
        self: &Arc<Self>,
        rt: Arc<Runtime>,
        console_port: u32,
        console_gpa: u64,
        store_port: u32,
        store_gpa: u64,
    ) -> Vec<JoinHandle<()>> {
        let mut threads = Vec::new();
        let me = self.clone();
        let rt2 = rt.clone();
        if let Ok(t) = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || me.console_loop(&rt2, console_port, console_gpa))
        {
            threads.push(t);
        }
        match start_store(&rt, store_port, store_gpa) {
            Ok(xs) => {
                let me = self.clone();
                let domid = rt.domain.domid() as u32;
                if let Ok(t) = std::thread::Builder::new()
                    .name("xenstore".into())
                    .spawn(move || me.store_loop(&xs, domid))
                {
                    threads.push(t);
                }
            }
            Err(e) => warn!("xenstore: {e}; the guest's xenstore ring is not served"),
        }
        if self.console_mode == ConsoleMode::Stdio {
            // Detached: a blocking read of stdin cannot be interrupted.
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || me.stdin_loop());
        }
        threads
    }

    fn stdin_loop(&self) {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            self.console_input
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
            self.console_bell.ring();
        }
    }

    fn console_loop(&self, rt: &Runtime, port: u32, gpa: u64) {
        let mut out: Box<dyn Write> = match &self.console_mode {
            ConsoleMode::Stdio => Box::new(std::io::stdout()),
            ConsoleMode::File(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    warn!("console log {}: {e}", path.display());
                    Box::new(std::io::sink())
                }
            },
            ConsoleMode::Null | ConsoleMode::Dom0 => Box::new(std::io::sink()),
        };
        loop {
            let stopping = self.stopping.load(Ordering::SeqCst);
            let mem = rt.memory.snapshot();
            let mut notify = drain_console(&mem, gpa, &mut out);
            let mut input = self.console_input.lock().unwrap_or_else(|e| e.into_inner());
            if !input.is_empty() {
                let n = fill_console_input(&mem, gpa, &input);
                if n > 0 {
                    input.drain(..n);
                    notify = true;
                }
            }
            drop(input);
            if notify {
                rt.domain.notify_from_remote(port);
            }
            if stopping {
                let _ = out.flush();
                return;
            }
            self.console_bell.wait();
        }
    }

    /// Pass the guest's xenstore notifications to the daemon until the
    /// domain stops.
    fn store_loop(&self, xs: &Xenstored, domid: u32) {
        while !self.stopping.load(Ordering::SeqCst) {
            xs.ring_kick(domid);
            self.store_bell.wait();
        }
        xs.shutdown();
    }
}

fn load(mem: &GuestMemoryMmap, gpa: u64) -> u32 {
    mem.load(GuestAddress(gpa), Ordering::Acquire).unwrap_or(0)
}

fn store(mem: &GuestMemoryMmap, gpa: u64, value: u32) {
    let _ = mem.store(value, GuestAddress(gpa), Ordering::Release);
}

/// Copy the console's output ring to `out`. Returns true if the guest
/// should be notified (space was freed).
fn drain_console(mem: &GuestMemoryMmap, gpa: u64, out: &mut dyn Write) -> bool {
    let cons_idx = load(mem, gpa + cons::OFFSET_OUT_CONS as u64);
    let prod = load(mem, gpa + cons::OFFSET_OUT_PROD as u64);
    let pending = prod.wrapping_sub(cons_idx) as usize;
    if pending == 0 {
        return false;
    }
    if pending > cons::OUT_SIZE {
        // The guest corrupted its indices: drop what cannot be trusted.
        warn!(
            cons = cons_idx,
            prod, "console ring indices corrupt; resynchronising"
        );
        store(mem, gpa + cons::OFFSET_OUT_CONS as u64, prod);
        return true;
    }
    let mut data = vec![0u8; pending];
    for (i, byte) in data.iter_mut().enumerate() {
        let idx = (cons_idx as usize + i) % cons::OUT_SIZE;
        *byte = mem
            .read_obj(GuestAddress(gpa + (cons::OFFSET_OUT + idx) as u64))
            .unwrap_or(0);
    }
    let _ = out.write_all(&data);
    let _ = out.flush();
    store(mem, gpa + cons::OFFSET_OUT_CONS as u64, prod);
    true
}

/// Put console input into the guest's input ring; returns bytes taken.
fn fill_console_input(mem: &GuestMemoryMmap, gpa: u64, input: &[u8]) -> usize {
    let cons_idx = load(mem, gpa + cons::OFFSET_IN_CONS as u64);
    let prod = load(mem, gpa + cons::OFFSET_IN_PROD as u64);
    let used = prod.wrapping_sub(cons_idx) as usize;
    if used > cons::IN_SIZE {
        warn!("console input ring indices corrupt");
        return 0;
    }
    let n = (cons::IN_SIZE - used).min(input.len());
    for (i, &byte) in input[..n].iter().enumerate() {
        let idx = (prod as usize + i) % cons::IN_SIZE;
        let _ = mem.write_obj(byte, GuestAddress(gpa + (cons::OFFSET_IN + idx) as u64));
    }
    std::sync::atomic::fence(Ordering::SeqCst);
    store(
        mem,
        gpa + cons::OFFSET_IN_PROD as u64,
        prod.wrapping_add(n as u32),
    );
    n
}

/// The guest's xenstore ring page, reached through guest memory.
struct GuestRing {
    mem: vm_memory::GuestMemoryAtomic<GuestMemoryMmap>,
    gpa: u64,
}

impl SharedPage for GuestRing {
    fn load_u32(&self, off: usize) -> u32 {
        load(&self.mem.memory(), self.gpa + off as u64)
    }
    fn store_u32(&self, off: usize, v: u32) {
        store(&self.mem.memory(), self.gpa + off as u64, v)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        let _ = self
            .mem
            .memory()
            .read_slice(buf, GuestAddress(self.gpa + off as u64));
    }
    fn write(&self, off: usize, data: &[u8]) {
        let _ = self
            .mem
            .memory()
            .write_slice(data, GuestAddress(self.gpa + off as u64));
    }
}

/// A xenstored holding what the toolstack would have written for the
/// domain, serving its ring.
fn start_store(rt: &Arc<Runtime>, port: u32, gpa: u64) -> Result<Xenstored, String> {
    let xs = Xenstored::new(Config::default()).map_err(|e| e.to_string())?;
    let domid = rt.domain.domid() as u32;
    let home = format!("/local/domain/{domid}");
    let owner_only = |d| Perms::new(vec![Perm::new(d, Access::None)]);
    let readable = Perms::new(vec![
        Perm::new(0, Access::None),
        Perm::new(domid, Access::Read),
    ])
    .ok_or("permissions")?;
    let writable = owner_only(domid).ok_or("permissions")?;
    let put = |path: &str, value: &str, perms: &Perms| {
        xs.write_with_perms(path, value, perms)
            .map_err(|e| format!("{path}: {e}"))
    };
    put(&home, "", &readable)?;
    put(&format!("{home}/name"), &rt.domain.cfg.name, &readable)?;
    put(&format!("{home}/domid"), &domid.to_string(), &readable)?;
    for dir in ["control", "device", "data"] {
        put(&format!("{home}/{dir}"), "", &writable)?;
    }
    put(&format!("{home}/control/shutdown"), "", &writable)?;
    let domain = rt.domain.clone();
    xs.introduce_domain(
        domid,
        Arc::new(GuestRing {
            mem: rt.memory.atomic.clone(),
            gpa,
        }),
        Box::new(move || domain.notify_from_remote(port)),
    );
    Ok(xs)
}
