//! xenstore daemon benchmark: `kxen-xenstored` against Debian's C
//! `xenstored` (xen-utils-4.17), both measured in this run over their Unix
//! sockets with the same raw client.
//!
//! Figures:
//! * operations per second for a mix of WRITE / READ / DIRECTORY (a
//!   100-entry directory), one request in flight (as libxenstore does),
//!   pipelined 32 deep, and from 4 clients at once (one in flight each);
//! * watch-event latency: from sending a WRITE on one connection to the
//!   WATCH_EVENT arriving on another.
//!
//! The C daemon cannot start without Xen (it maps Dom0's ring and opens the
//! event-channel and grant devices at start). It is run unmodified with a
//! small `LD_PRELOAD` stand-in for libxenctrl/libxenevtchn/libxengnttab
//! (built here with `cc`) that hands it an ordinary file as Dom0's ring page
//! and an eventfd that never fires as the event channel — exactly the idle
//! Dom0 ring it would have on a Xen host. Its store stays in memory (its
//! default, `TDB_INTERNAL`).

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_WRITE: u32 = 11;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

const C_XENSTORED: &str = "/usr/lib/xen-4.17/bin/xenstored";

/// Stand-ins for the Xen libraries the C daemon calls at start-up, and a
/// redirect of `/proc/xen/xsd_{port,kva}` to ordinary files.
const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>
static int evfd = -1;
static int dummy;
void *xc_interface_open(void *a, void *b, unsigned f) { return &dummy; }
int xc_interface_close(void *h) { return 0; }
int xc_domain_getinfo(void *h, unsigned first, unsigned max, void *info) { return 0; }
void *xenevtchn_open(void *l, unsigned f) { if (evfd < 0) evfd = eventfd(0, EFD_CLOEXEC); return &dummy; }
void *xenevtchn_fdopen(void *l, int fd, unsigned f) { return xenevtchn_open(l, f); }
int xenevtchn_fd(void *h) { return evfd; }
int xenevtchn_bind_virq(void *h, unsigned v) { return 1; }
int xenevtchn_bind_interdomain(void *h, unsigned d, unsigned p) { static int n = 2; return n++; }
int xenevtchn_notify(void *h, unsigned p) { return 0; }
int xenevtchn_unbind(void *h, unsigned p) { return 0; }
int xenevtchn_pending(void *h) { return -1; }
int xenevtchn_unmask(void *h, unsigned p) { return 0; }
void *xengnttab_open(void *l, unsigned f) { return &dummy; }
int xengnttab_close(void *h) { return 0; }
int xengnttab_set_max_grants(void *h, unsigned n) { return 0; }
void *xengnttab_map_grant_ref(void *h, unsigned d, unsigned r, int p) { return NULL; }
int xengnttab_unmap(void *h, void *a, unsigned n) { return 0; }
int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (!strcmp(path, "/proc/xen/xsd_port")) path = getenv("SHIM_XSD_PORT");
    else if (!strcmp(path, "/proc/xen/xsd_kva")) path = getenv("SHIM_XSD_KVA");
    return syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}
"#;

/// A daemon under test, killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kxen-bench-xs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a temporary directory");
    d
}

fn wait_for_socket(child: &mut Child, socket: &Path) -> Result<(), String> {
    let start = Instant::now();
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("socket never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Build (release) and locate `kxen-xenstored`.
fn kxen_xenstored() -> Result<PathBuf, String> {
    let root = kxen_tests::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "kxen-xenstore",
            "--bin",
            "kxen-xenstored",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building kxen-xenstored failed".into());
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release/kxen-xenstored"))
}

fn start_kxen() -> Result<Daemon, String> {
    let bin = kxen_xenstored()?;
    let dir = temp_dir("kxen");
    let socket = dir.join("socket");
    let mut child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start kxen-xenstored: {e}"))?;
    wait_for_socket(&mut child, &socket)?;
    Ok(Daemon { child, socket, dir })
}

fn start_c() -> Result<Daemon, String> {
    if !Path::new(C_XENSTORED).exists() {
        return Err(format!(
            "{C_XENSTORED} missing (apt-get install xen-utils-4.17)"
        ));
    }
    let dir = temp_dir("c");
    let shim = dir.join("libxenshim.so");
    std::fs::write(dir.join("shim.c"), SHIM_C).map_err(|e| e.to_string())?;
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(dir.join("shim.c"))
        .status()
        .map_err(|e| format!("cannot run cc to build the Xen library stand-in: {e}"))?;
    if !cc.success() {
        return Err("building the Xen library stand-in failed".into());
    }
    std::fs::write(dir.join("xsd_port"), "1\n").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("xsd_kva"), vec![0u8; 4096]).map_err(|e| e.to_string())?;
    let socket = dir.join("socket");
    let mut child = Command::new(C_XENSTORED)
        .arg("-N")
        .env("XENSTORED_RUNDIR", &dir)
        .env("XENSTORED_PATH", &socket)
        .env("SHIM_XSD_PORT", dir.join("xsd_port"))
        .env("SHIM_XSD_KVA", dir.join("xsd_kva"))
        .env("LD_PRELOAD", &shim)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {C_XENSTORED}: {e}"))?;
    wait_for_socket(&mut child, &socket)?;
    Ok(Daemon { child, socket, dir })
}

/// A raw xenstore client.
struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
    next: u32,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let s = UnixStream::connect(socket).expect("connect to the daemon");
        Client {
            w: s.try_clone().expect("clone socket"),
            r: BufReader::with_capacity(64 * 1024, s),
            next: 1,
        }
    }

    fn encode(&mut self, out: &mut Vec<u8>, kind: u32, payload: &[u8]) {
        for v in [kind, self.next, 0, payload.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(payload);
        self.next = self.next.wrapping_add(1);
    }

    fn send(&mut self, kind: u32, payload: &[u8]) {
        let mut m = Vec::with_capacity(16 + payload.len());
        self.encode(&mut m, kind, payload);
        self.w.write_all(&m).expect("send");
    }

    /// The next message: (type, payload).
    fn recv(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 16];
        self.r
            .read_exact(&mut h)
            .expect("daemon closed the connection");
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let mut p = vec![0; len];
        self.r
            .read_exact(&mut p)
            .expect("daemon closed the connection");
        (kind, p)
    }

    /// The reply to the last request (skipping watch events).
    fn reply(&mut self) -> Vec<u8> {
        loop {
            let (kind, p) = self.recv();
            match kind {
                XS_WATCH_EVENT => continue,
                XS_ERROR => panic!("xenstore error {}", String::from_utf8_lossy(&p)),
                _ => return p,
            }
        }
    }

    fn call(&mut self, kind: u32, payload: &[u8]) -> Vec<u8> {
        self.send(kind, payload);
        self.reply()
    }
}

/// The i-th request of the mix: WRITE, READ, DIRECTORY in turn.
fn mix_request(i: usize, prefix: &str) -> (u32, Vec<u8>) {
    let key = i % 100;
    match i % 3 {
        0 => (XS_WRITE, format!("{prefix}/k{key}\0value-{i}").into_bytes()),
        1 => (XS_READ, format!("{prefix}/k{key}\0").into_bytes()),
        _ => (XS_DIRECTORY, format!("{prefix}\0").into_bytes()),
    }
}

fn populate(c: &mut Client, prefix: &str) {
    for k in 0..100 {
        c.call(XS_WRITE, format!("{prefix}/k{k}\0initial").as_bytes());
    }
}

/// Operations per second, one request in flight.
fn ops_sequential(socket: &Path, n: usize) -> f64 {
    let mut c = Client::connect(socket);
    populate(&mut c, "/bench/seq");
    let start = Instant::now();
    for i in 0..n {
        let (kind, p) = mix_request(i, "/bench/seq");
        c.call(kind, &p);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Operations per second with `depth` requests in flight.
fn ops_pipelined(socket: &Path, n: usize, depth: usize) -> f64 {
    let mut c = Client::connect(socket);
    populate(&mut c, "/bench/pipe");
    let start = Instant::now();
    let mut sent = 0;
    let mut batch = Vec::new();
    while sent < depth.min(n) {
        let (kind, p) = mix_request(sent, "/bench/pipe");
        c.encode(&mut batch, kind, &p);
        sent += 1;
    }
    c.w.write_all(&batch).expect("send");
    for _ in 0..n {
        c.reply();
        if sent < n {
            let (kind, p) = mix_request(sent, "/bench/pipe");
            c.send(kind, &p);
            sent += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Total operations per second of `clients` connections, one in flight
/// each.
fn ops_concurrent(socket: &Path, n_each: usize, clients: usize) -> f64 {
    let socket = socket.to_path_buf();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let prefix = format!("/bench/conc{t}");
                let mut c = Client::connect(&socket);
                populate(&mut c, &prefix);
                barrier.wait();
                for i in 0..n_each {
                    let (kind, p) = mix_request(i, &prefix);
                    c.call(kind, &p);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for t in threads {
        t.join().expect("client thread");
    }
    (n_each * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Watch-event latencies in microseconds: WRITE sent on one connection to
/// WATCH_EVENT received on another.
fn watch_latencies(socket: &Path, n: usize) -> Vec<f64> {
    let mut watcher = Client::connect(socket);
    let mut writer = Client::connect(socket);
    writer.call(XS_WRITE, b"/bench/lat\0");
    watcher.call(XS_WATCH, b"/bench/lat\0tok\0");
    // The event every new watch fires at once.
    let (kind, _) = watcher.recv();
    assert_eq!(kind, XS_WATCH_EVENT);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("/bench/lat/k{}\0{i}", i % 10);
        let start = Instant::now();
        writer.send(XS_WRITE, payload.as_bytes());
        let (kind, _) = watcher.recv();
        let t = start.elapsed();
        assert_eq!(kind, XS_WATCH_EVENT);
        writer.reply();
        out.push(t.as_secs_f64() * 1e6);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// CPU time (user + system, all threads) a process has used, in µs.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is
    // the first, utime and stime the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1e6 / hz
}

/// Results for one daemon, gathered over interleaved rounds.
#[derive(Default)]
struct Figures {
    seq: Vec<f64>,
    pipe: Vec<f64>,
    conc: Vec<f64>,
    /// Per round: median and 99th percentile latency.
    lat_median: Vec<f64>,
    lat_p99: Vec<f64>,
    seq_cpu_us: f64,
    seq_ops: f64,
    pipe_cpu_us: f64,
    pipe_ops: f64,
}

const SEQ_OPS: usize = 20_000;
const PIPE_OPS: usize = 50_000;
const CONC_OPS: usize = 5_000;
const LAT_SAMPLES: usize = 2_000;
const ROUNDS: usize = 7;

/// One round of every measurement against one daemon.
fn round(d: &Daemon, f: &mut Figures) {
    let pid = d.child.id();
    let c0 = cpu_us(pid);
    f.seq.push(ops_sequential(&d.socket, SEQ_OPS));
    let c1 = cpu_us(pid);
    f.pipe.push(ops_pipelined(&d.socket, PIPE_OPS, 32));
    let c2 = cpu_us(pid);
    f.seq_cpu_us += c1 - c0;
    f.seq_ops += (SEQ_OPS + 100) as f64;
    f.pipe_cpu_us += c2 - c1;
    f.pipe_ops += (PIPE_OPS + 100) as f64;
    f.conc.push(ops_concurrent(&d.socket, CONC_OPS, 4));
    let lat = watch_latencies(&d.socket, LAT_SAMPLES);
    f.lat_median.push(median(lat.clone()));
    f.lat_p99.push(percentile(lat, 0.99));
}

/// Run the xenstore benchmark and print a side-by-side table.
pub fn run() {
    println!();
    println!(
        "xenstore daemons over a Unix socket (same raw client, W/R/DIR mix; \
         {ROUNDS} interleaved rounds, medians over rounds)"
    );
    let kxen = match start_kxen() {
        Ok(d) => d,
        Err(e) => {
            println!("kxen-xenstored could not be started: {e}");
            return;
        }
    };
    let c = start_c()
        .map_err(|e| println!("C xenstored not measured: {e}"))
        .ok();
    // Warm up both, then alternate so that machine noise hits both alike.
    ops_sequential(&kxen.socket, 2000);
    if let Some(c) = &c {
        ops_sequential(&c.socket, 2000);
    }
    let mut k = Figures::default();
    let mut cf = Figures::default();
    for r in 0..ROUNDS {
        if r % 2 == 0 {
            round(&kxen, &mut k);
        }
        if let Some(c) = &c {
            round(c, &mut cf);
        }
        if r % 2 == 1 {
            round(&kxen, &mut k);
        }
    }
    let cf = c.as_ref().map(|_| cf);
    println!(
        "{:<44} {:>14} {:>14}  {:>8}",
        "figure", "kxen-xenstored", "C xenstored", "kxen/C"
    );
    let row = |label: &str, kv: f64, cv: Option<f64>, unit: &str, better: &str| match cv {
        Some(cv) => println!(
            "{label:<44} {kv:>10.0} {unit:<3} {cv:>10.0} {unit:<3}  {:>7.2}x  ({better} is better)",
            kv / cv
        ),
        None => println!("{label:<44} {kv:>10.0} {unit:<3} {:>14}", "n/a"),
    };
    let row_f = |label: &str, kv: f64, cv: Option<f64>, unit: &str| match cv {
        Some(cv) => println!(
            "{label:<44} {kv:>10.1} {unit:<3} {cv:>10.1} {unit:<3}  {:>7.2}x  (lower is better)",
            kv / cv
        ),
        None => println!("{label:<44} {kv:>10.1} {unit:<3} {:>14}", "n/a"),
    };
    let med = |v: &Vec<f64>| median(v.clone());
    row(
        "ops/s, one request in flight",
        med(&k.seq),
        cf.as_ref().map(|c| med(&c.seq)),
        "/s",
        "higher",
    );
    row(
        "ops/s, pipelined 32 deep",
        med(&k.pipe),
        cf.as_ref().map(|c| med(&c.pipe)),
        "/s",
        "higher",
    );
    row(
        "ops/s, 4 clients, one in flight each",
        med(&k.conc),
        cf.as_ref().map(|c| med(&c.conc)),
        "/s",
        "higher",
    );
    row_f(
        "daemon CPU per op, one in flight",
        k.seq_cpu_us / k.seq_ops,
        cf.as_ref().map(|c| c.seq_cpu_us / c.seq_ops),
        "us",
    );
    row_f(
        "daemon CPU per op, pipelined",
        k.pipe_cpu_us / k.pipe_ops,
        cf.as_ref().map(|c| c.pipe_cpu_us / c.pipe_ops),
        "us",
    );
    row_f(
        "watch event latency, median",
        med(&k.lat_median),
        cf.as_ref().map(|c| med(&c.lat_median)),
        "us",
    );
    row_f(
        "watch event latency, 99th percentile",
        med(&k.lat_p99),
        cf.as_ref().map(|c| med(&c.lat_p99)),
        "us",
    );
}
