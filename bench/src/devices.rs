//! The split drivers measured: blkback against the same file driven on
//! the host with O_DIRECT, and netback against a veth pair, both in the
//! same run. The guest side is the PV test guest's `blk bench` and
//! `net bench` console commands, through a real kxend.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;

const LIMIT: Duration = Duration::from_secs(300);

/// One figure from the guest: `key=value` pairs of a `blk bench`/`net
/// bench` answer.
fn value(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: a non-zero size with a valid alignment; freed in Drop
        // with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// Host-native O_DIRECT on `path`: sequential MB/s for `mib` MiB in
/// `req` byte requests (write when `write`), one request in flight.
pub(crate) fn host_sequential(path: &Path, mib: u64, req: usize, write: bool) -> Option<f64> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let mut buf = Aligned::new(req);
    buf.as_mut().fill(0x5a);
    let total = mib << 20;
    let start = Instant::now();
    let mut off = 0u64;
    while off < total {
        let n = if write {
            f.write_at(buf.as_mut(), off).ok()?
        } else {
            f.read_at(buf.as_mut(), off).ok()?
        };
        off += n as u64;
    }
    if write {
        f.sync_data().ok()?;
    }
    Some(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Host-native 4 KiB random reads with O_DIRECT, `depth` threads.
fn host_random_iops(path: &Path, size: u64, ops: u64, depth: u64) -> Option<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..depth)
        .map(|t| {
            let path = path.to_path_buf();
            std::thread::spawn(move || -> Option<()> {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .ok()?;
                let mut buf = Aligned::new(4096);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for _ in 0..ops / depth {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % (size / 4096)) * 4096;
                    f.read_at(buf.as_mut(), off).ok()?;
                }
                Some(())
            })
        })
        .collect();
    for h in handles {
        h.join().ok()??;
    }
    Some(ops as f64 / start.elapsed().as_secs_f64())
}

/// Fill a file with data (not a hole), so reads hit the disk path.
pub(crate) fn filled_image(path: &Path, mib: u64) -> Option<()> {
    let f = std::fs::File::create(path).ok()?;
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..mib {
        f.write_all_at(&chunk, i << 20).ok()?;
    }
    f.sync_all().ok()
}

pub(crate) fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:7.2}x", x / base)
    } else {
        "     n/a".into()
    }
}

pub fn block() {
    const MIB: u64 = 256;
    let d = Dom0::new("bench-blk");
    let image = d.dir.join("bench.img");
    if filled_image(&image, MIB).is_none() {
        println!("blkback: cannot write a {MIB} MiB image; skipped");
        return;
    }
    let cfg = d.config(
        "benchblk",
        &format!("disk = [ '{},raw,xvda,rw' ]\n", image.display()),
    );
    if !d
        .kxl(&["create", cfg.to_str().unwrap_or("")])
        .status
        .success()
    {
        println!("blkback: kxl create failed; skipped");
        return;
    }
    d.wait_line_after("benchblk", 0, "kxen-testguest: vbd 51712 connected", LIMIT);
    let guest = |cmd: &str| d.guest_command("benchblk", cmd, "blk bench", LIMIT);

    println!(
        "{:<44} {:>12} {:>12}  {:>8} {:>10}",
        "blkback (same file, O_DIRECT on the host)", "host", "kxen", "ratio", "kicks/req"
    );
    for (label, kind, write) in [
        ("sequential write, 1 MiB requests, MB/s", "seqwrite", true),
        ("sequential read, 1 MiB requests, MB/s", "seqread", false),
    ] {
        let host = host_sequential(&image, MIB, 1 << 20, write).unwrap_or(0.0);
        let line = guest(&format!("blk bench 51712 {kind} {MIB} 1024 4"));
        let mbs = value(&line, "MB/s").unwrap_or(0.0);
        let kicks = value(&line, "kicks").unwrap_or(0.0) / value(&line, "reqs").unwrap_or(1.0);
        println!(
            "{:<44} {:>12.1} {:>12.1}  {} {:>10.3}",
            label,
            host,
            mbs,
            ratio(mbs, host),
            kicks
        );
    }
    for depth in [1u64, 8] {
        let ops = 20_000;
        let host = host_random_iops(&image, MIB << 20, ops, depth).unwrap_or(0.0);
        let line = guest(&format!("blk bench 51712 randread {ops} 4 {depth}"));
        let iops = value(&line, "iops").unwrap_or(0.0);
        let kicks = value(&line, "kicks").unwrap_or(0.0) / value(&line, "reqs").unwrap_or(1.0);
        println!(
            "{:<44} {:>12.0} {:>12.0}  {} {:>10.3}",
            format!("random read 4 KiB, queue depth {depth}, IOPS"),
            host,
            iops,
            ratio(iops, host),
            kicks
        );
    }
    let _ = d.kxl(&["destroy", "benchblk"]);
    println!();
}

/// Count UDP bytes arriving on `port` in network namespace `ns` until
/// `stop`; the socket is bound before this returns.
fn udp_sink(ns: &str, addr: &str, stop: Arc<AtomicBool>) -> Option<Arc<AtomicU64>> {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let ns_file = std::fs::File::open(format!("/var/run/netns/{ns}")).ok()?;
    let addr = addr.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Network namespaces are per thread: only this thread moves.
        if nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            let _ = ready_tx.send(false);
            return;
        }
        let Ok(sock) = UdpSocket::bind(&addr) else {
            let _ = ready_tx.send(false);
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = ready_tx.send(true);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    ready_rx.recv().ok()?.then_some(bytes)
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Two fresh network namespaces joined by a veth pair (`va` in `a`, `vb`
/// in `b`), deleted on drop: where the baselines run.
pub(crate) struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    /// `addr_a`/`addr_b` are CIDR addresses for the two ends.
    pub(crate) fn new(tag: &str, addr_a: &str, addr_b: &str) -> Option<Self> {
        let pair = VethPair {
            a: format!("{tag}-a-{}", std::process::id()),
            b: format!("{tag}-b-{}", std::process::id()),
        };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        let ok = ip(&["netns", "add", a])
            && ip(&["netns", "add", b])
            && ip(&[
                "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
            ])
            && ip(&["-n", a, "addr", "add", addr_a, "dev", "va"])
            && ip(&["-n", b, "addr", "add", addr_b, "dev", "vb"])
            && ip(&["-n", a, "link", "set", "va", "up"])
            && ip(&["-n", b, "link", "set", "vb", "up"]);
        ok.then_some(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// UDP MB/s over a veth pair between two fresh namespaces (the baseline):
/// 1472-byte datagrams for `mib` MiB, counted at the receiver.
fn veth_baseline(mib: u64) -> Option<f64> {
    let pair = VethPair::new("kxb", "10.98.0.1/24", "10.98.0.2/24")?;
    let (a, b) = (pair.a.clone(), pair.b.clone());
    let result = (|| {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = udp_sink(&b, "10.98.0.2:9", stop.clone())?;
        let ns_a = std::fs::File::open(format!("/var/run/netns/{a}")).ok()?;
        let sender = std::thread::spawn(move || -> Option<f64> {
            nix::sched::setns(ns_a.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let sock = UdpSocket::bind("10.98.0.1:0").ok()?;
            let data = vec![0x42u8; 1472];
            let total = mib << 20;
            let start = Instant::now();
            let mut sent = 0;
            while sent < total {
                if sock.send_to(&data, "10.98.0.2:9").is_ok() {
                    sent += data.len() as u64;
                }
            }
            Some(start.elapsed().as_secs_f64())
        });
        let secs = sender.join().ok()??;
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        Some(bytes.load(Ordering::Relaxed) as f64 / secs / 1e6)
    })();
    drop(pair);
    result
}

pub fn network() {
    const MIB: u64 = 64;
    let base = veth_baseline(MIB).unwrap_or(0.0);
    let d = Dom0::new_in_netns("bench-net");
    let cfg = d.config("benchnet", "vif = [ 'bridge=kxbbr0' ]\n");
    let text = std::fs::read_to_string(&cfg).unwrap_or_default().replace(
        "cmdline = \"kxen.mode=service\"",
        "cmdline = \"kxen.mode=service kxen.ip=10.99.0.2/24 kxen.peer=10.99.0.1\"",
    );
    let _ = std::fs::write(&cfg, text);
    if !d
        .kxl(&["create", cfg.to_str().unwrap_or("")])
        .status
        .success()
    {
        println!("netback: kxl create failed; skipped");
        return;
    }
    d.wait_line_after("benchnet", 0, "kxen-testguest: vif 0 connected", LIMIT);
    let _ = d.in_netns(&["ip", "addr", "add", "10.99.0.1/24", "dev", "kxbbr0"]);
    let _ = d.in_netns(&["ip", "link", "set", "kxbbr0", "up"]);
    let stop = Arc::new(AtomicBool::new(false));
    let ns = d.netns.clone().unwrap_or_default();
    let Some(bytes) = udp_sink(&ns, "10.99.0.1:9", stop.clone()) else {
        println!("netback: cannot listen in the namespace; skipped");
        return;
    };
    let start = Instant::now();
    let line = d.guest_command(
        "benchnet",
        &format!("net bench tx {MIB}"),
        "net bench",
        LIMIT,
    );
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let guest_mbs = value(&line, "MB/s").unwrap_or(0.0);
    let received = bytes.load(Ordering::Relaxed) as f64;
    println!(
        "{:<44} {:>12} {:>12}  {:>8}",
        "netback, UDP 1472-byte datagrams", "veth", "kxen", "ratio"
    );
    println!(
        "{:<44} {:>12.1} {:>12.1}  {}",
        "guest -> namespace peer, MB/s (guest clock)",
        base,
        guest_mbs,
        ratio(guest_mbs, base)
    );
    println!(
        "{:<44} {:>12} {:>12.1}  {}",
        "  received by the peer, MB/s (wall clock)",
        "",
        received / secs / 1e6,
        ratio(received / secs / 1e6, base)
    );
    let _ = d.kxl(&["destroy", "benchnet"]);
    println!();
}
