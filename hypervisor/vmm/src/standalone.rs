//! Dom0's side of the console and xenstore rings while kxen-vmm runs a
//! domain on its own (no kxend): the console goes to stdout/stdin and a
//! small built-in store answers basic xenstore requests. Requests it does
//! not implement get an `ENOSYS` error reply, never a fake success.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::console as cons;
use xen_abi::xenstore::{self as xs, MessageHeader};
use zerocopy::{FromBytes, IntoBytes};

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
        let me = self.clone();
        let domid = rt.domain.domid();
        let name = rt.domain.cfg.name.clone();
        if let Ok(t) = std::thread::Builder::new()
            .name("xenstore".into())
            .spawn(move || {
                let mut store = MiniStore::new(domid, &name);
                me.store_loop(&rt, &mut store, store_port, store_gpa)
            })
        {
            threads.push(t);
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

    fn store_loop(&self, rt: &Runtime, store: &mut MiniStore, port: u32, gpa: u64) {
        let mut ring = StoreRing::default();
        while !self.stopping.load(Ordering::SeqCst) {
            let mem = rt.memory.snapshot();
            if ring.service(&mem, gpa, store) {
                rt.domain.notify_from_remote(port);
            }
            self.store_bell.wait();
        }
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

/// Byte-stream state of the xenstore ring.
#[derive(Default)]
struct StoreRing {
    request: Vec<u8>,
    response: Vec<u8>,
}

impl StoreRing {
    /// Move bytes both ways; returns true if the guest should be notified.
    fn service(&mut self, mem: &GuestMemoryMmap, gpa: u64, store: &mut MiniStore) -> bool {
        let mut notify = false;
        loop {
            let mut progress = false;
            // Requests in.
            let cons_idx = load(mem, gpa + xs::OFFSET_REQ_CONS as u64);
            let prod = load(mem, gpa + xs::OFFSET_REQ_PROD as u64);
            let avail = prod.wrapping_sub(cons_idx) as usize;
            if avail > xs::RING_SIZE {
                warn!(
                    cons = cons_idx,
                    prod, "xenstore ring indices corrupt; resynchronising"
                );
                store_idx(mem, gpa + xs::OFFSET_REQ_CONS as u64, prod);
                self.request.clear();
                return true;
            }
            if avail > 0 {
                for i in 0..avail {
                    let idx = (cons_idx as usize + i) % xs::RING_SIZE;
                    self.request.push(
                        mem.read_obj(GuestAddress(gpa + (xs::OFFSET_REQ + idx) as u64))
                            .unwrap_or(0),
                    );
                }
                store_idx(mem, gpa + xs::OFFSET_REQ_CONS as u64, prod);
                notify = true;
                progress = true;
            }
            // Complete requests out of the byte stream.
            while self.request.len() >= 16 {
                let Ok(header) = MessageHeader::read_from_bytes(&self.request[..16]) else {
                    break;
                };
                if header.len as usize > xs::PAYLOAD_MAX {
                    warn!(
                        len = header.len,
                        "oversized xenstore request; dropping stream"
                    );
                    self.request.clear();
                    self.response
                        .extend(reply(&header, xs::XS_ERROR, b"E2BIG\0"));
                    break;
                }
                let total = 16 + header.len as usize;
                if self.request.len() < total {
                    break;
                }
                let payload: Vec<u8> = self.request[16..total].to_vec();
                self.request.drain(..total);
                self.response.extend(store.handle(&header, &payload));
                progress = true;
            }
            // Responses out.
            if !self.response.is_empty() {
                let cons_idx = load(mem, gpa + xs::OFFSET_RSP_CONS as u64);
                let prod = load(mem, gpa + xs::OFFSET_RSP_PROD as u64);
                let used = prod.wrapping_sub(cons_idx) as usize;
                if used <= xs::RING_SIZE {
                    let n = (xs::RING_SIZE - used).min(self.response.len());
                    for (i, &byte) in self.response[..n].iter().enumerate() {
                        let idx = (prod as usize + i) % xs::RING_SIZE;
                        let _ =
                            mem.write_obj(byte, GuestAddress(gpa + (xs::OFFSET_RSP + idx) as u64));
                    }
                    if n > 0 {
                        std::sync::atomic::fence(Ordering::SeqCst);
                        store_idx(
                            mem,
                            gpa + xs::OFFSET_RSP_PROD as u64,
                            prod.wrapping_add(n as u32),
                        );
                        self.response.drain(..n);
                        notify = true;
                        progress = true;
                    }
                }
            }
            if !progress {
                return notify;
            }
        }
    }
}

fn store_idx(mem: &GuestMemoryMmap, gpa: u64, value: u32) {
    store(mem, gpa, value)
}

fn reply(req: &MessageHeader, kind: u32, payload: &[u8]) -> Vec<u8> {
    let header = MessageHeader {
        kind,
        req_id: req.req_id,
        tx_id: req.tx_id,
        len: payload.len() as u32,
    };
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The built-in store of standalone mode.
struct MiniStore {
    domid: u16,
    nodes: BTreeMap<String, String>,
}

impl MiniStore {
    fn new(domid: u16, name: &str) -> Self {
        let home = format!("/local/domain/{domid}");
        let mut nodes = BTreeMap::new();
        for (k, v) in [
            ("/local".to_string(), String::new()),
            ("/local/domain".to_string(), String::new()),
            (home.clone(), String::new()),
            (format!("{home}/name"), name.to_string()),
            (format!("{home}/domid"), domid.to_string()),
            (format!("{home}/control"), String::new()),
            (format!("{home}/device"), String::new()),
        ] {
            nodes.insert(k, v);
        }
        MiniStore { domid, nodes }
    }

    fn absolute(&self, path: &str) -> Option<String> {
        if path.is_empty() || path.len() > 3072 || path.ends_with('/') && path != "/" {
            return None;
        }
        let valid = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-@.".contains(&b));
        if !valid || path.contains("//") {
            return None;
        }
        Some(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/local/domain/{}/{path}", self.domid)
        })
    }

    fn handle(&mut self, req: &MessageHeader, payload: &[u8]) -> Vec<u8> {
        let err = |e: &str| reply(req, xs::XS_ERROR, format!("{e}\0").as_bytes());
        let ok = || reply(req, req.kind, b"OK\0");
        let args: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
        let arg0 = std::str::from_utf8(args.first().copied().unwrap_or(b"")).unwrap_or("");
        if req.tx_id != 0 {
            return err("ENOSYS");
        }
        match req.kind {
            xs::XS_READ => match self.absolute(arg0) {
                None => err("EINVAL"),
                Some(path) => match self.nodes.get(&path) {
                    Some(v) => reply(req, req.kind, v.as_bytes()),
                    None => err("ENOENT"),
                },
            },
            xs::XS_DIRECTORY => {
                let Some(path) = self.absolute(arg0) else {
                    return err("EINVAL");
                };
                if !self.nodes.contains_key(&path) {
                    return err("ENOENT");
                }
                let prefix = if path == "/" {
                    "/".to_string()
                } else {
                    format!("{path}/")
                };
                let mut out = Vec::new();
                for key in self.nodes.keys().filter(|k| k.starts_with(&prefix)) {
                    let rest = &key[prefix.len()..];
                    if !rest.is_empty() && !rest.contains('/') {
                        out.extend_from_slice(rest.as_bytes());
                        out.push(0);
                    }
                }
                reply(req, req.kind, &out)
            }
            xs::XS_WRITE | xs::XS_MKDIR => {
                let Some(path) = self.absolute(arg0) else {
                    return err("EINVAL");
                };
                let value = if req.kind == xs::XS_WRITE {
                    // Everything after the first NUL is the value.
                    let at = payload
                        .iter()
                        .position(|&b| b == 0)
                        .map_or(payload.len(), |i| i + 1);
                    String::from_utf8_lossy(&payload[at..]).into_owned()
                } else {
                    String::new()
                };
                let mut parent = path.as_str();
                while let Some(i) = parent.rfind('/') {
                    parent = &parent[..i];
                    if parent.is_empty() {
                        break;
                    }
                    self.nodes.entry(parent.to_string()).or_default();
                }
                if req.kind == xs::XS_WRITE {
                    self.nodes.insert(path, value);
                } else {
                    self.nodes.entry(path).or_default();
                }
                ok()
            }
            xs::XS_RM => {
                let Some(path) = self.absolute(arg0) else {
                    return err("EINVAL");
                };
                if !self.nodes.contains_key(&path) {
                    return err("ENOENT");
                }
                let prefix = format!("{path}/");
                self.nodes
                    .retain(|k, _| k != &path && !k.starts_with(&prefix));
                ok()
            }
            xs::XS_GET_DOMAIN_PATH => match arg0.parse::<u16>() {
                Ok(d) => reply(req, req.kind, format!("/local/domain/{d}\0").as_bytes()),
                Err(_) => err("EINVAL"),
            },
            _ => err("ENOSYS"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u32, payload: &[u8]) -> (MessageHeader, Vec<u8>) {
        (
            MessageHeader {
                kind,
                req_id: 7,
                tx_id: 0,
                len: payload.len() as u32,
            },
            payload.to_vec(),
        )
    }

    fn answer(store: &mut MiniStore, kind: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let (h, p) = req(kind, payload);
        let out = store.handle(&h, &p);
        let header = MessageHeader::read_from_bytes(&out[..16]).unwrap();
        (header.kind, out[16..].to_vec())
    }

    #[test]
    fn reads_writes_and_errors() {
        let mut s = MiniStore::new(3, "guest");
        assert_eq!(
            answer(&mut s, xs::XS_READ, b"domid\0"),
            (xs::XS_READ, b"3".to_vec())
        );
        assert_eq!(
            answer(&mut s, xs::XS_READ, b"nope\0").1,
            b"ENOENT\0".to_vec()
        );
        assert_eq!(
            answer(&mut s, xs::XS_WRITE, b"data/x\0hello").0,
            xs::XS_WRITE
        );
        assert_eq!(
            answer(&mut s, xs::XS_READ, b"/local/domain/3/data/x\0").1,
            b"hello".to_vec()
        );
        let (kind, list) = answer(&mut s, xs::XS_DIRECTORY, b"data\0");
        assert_eq!((kind, list), (xs::XS_DIRECTORY, b"x\0".to_vec()));
        assert_eq!(answer(&mut s, xs::XS_SET_TARGET, b"1\0").0, xs::XS_ERROR);
        assert_eq!(
            answer(&mut s, xs::XS_READ, b"a b\0").1,
            b"EINVAL\0".to_vec()
        );
    }
}
