//! PV frontends for service mode: blkfront and netfront, found through
//! xenbus (device/vbd/*, device/vif/* in our home directory), connected at
//! start and whenever the toolstack hot-plugs a device, closed when the
//! backend goes away, and driven by console commands (see [`command`]).
//!
//! Output lines (machine-checkable, see README.md):
//! `kxen-testguest: vbd <id> connected sectors=<n> sector-size=<n> features=<list>`,
//! `kxen-testguest: vif <id> connected mac=<mac>`,
//! `kxen-testguest: <vbd|vif> <id> FAIL <why>`, `... <id> closed`.

pub mod blk;
pub mod blkcmd;
pub mod vif;
pub mod xs;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kxen_testguest::cmd::{self, Command};

use self::blk::BlkDev;
use self::vif::NetDev;
use self::xs::{state, XsError};
use crate::cell::Single;
use crate::{println, xenstore, xs_path};

/// Every watch token of the frontends starts with this.
pub const TOKEN_PREFIX: &[u8] = b"kxen-front";
const HOTPLUG_TOKEN: &[u8] = b"kxen-front-hotplug";
const MAX_BLK: usize = 4;
const MAX_NET: usize = 2;
/// Attempts at registering the hot-plug watches before giving up.
const START_TRIES: u32 = 5;

/// A frontend watch fired: rescan devices and backend states.
static DIRTY: AtomicBool = AtomicBool::new(false);
static START_ATTEMPTS: AtomicU32 = AtomicU32::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

struct Registry {
    blk: [Option<&'static mut BlkDev>; MAX_BLK],
    net: [Option<&'static mut NetDev>; MAX_NET],
}

static REG: Single<Registry> = Single::new(Registry {
    blk: [None, None, None, None],
    net: [None, None],
});

/// Called for every watch event whose token starts with [`TOKEN_PREFIX`].
pub fn note_watch() {
    DIRTY.store(true, Ordering::Release);
}

/// Service mode calls this on every pass: first the start (watches and the
/// initial scan), then rescans when a watch fired, and RX/TX servicing.
pub fn poll() {
    if !STARTED.load(Ordering::Acquire) {
        if START_ATTEMPTS.fetch_add(1, Ordering::AcqRel) >= START_TRIES || xenstore::ring().is_err()
        {
            return;
        }
        match start() {
            Ok(()) => STARTED.store(true, Ordering::Release),
            Err(e) => println!("kxen-testguest: note: frontends: {}", e),
        }
    }
    if xenstore::take_watch_events(TOKEN_PREFIX) {
        DIRTY.store(true, Ordering::Release);
    }
    if DIRTY.swap(false, Ordering::AcqRel) {
        scan();
    }
    REG.with(|r| {
        for n in r.net.iter_mut().flatten() {
            n.poll();
        }
    });
}

/// A watch fired that [`poll`] has not acted on yet.
pub fn dirty() -> bool {
    DIRTY.load(Ordering::Acquire)
}

/// The frontends have not started yet and will try again on a later pass.
pub fn starting() -> bool {
    !STARTED.load(Ordering::Acquire) && START_ATTEMPTS.load(Ordering::Acquire) < START_TRIES
}

fn start() -> Result<(), XsError> {
    xs::watch(&xs_path!("device/vbd"), HOTPLUG_TOKEN)?;
    xs::watch(&xs_path!("device/vif"), HOTPLUG_TOKEN)?;
    // The watches fire once at once; the scan happens then.
    DIRTY.store(true, Ordering::Release);
    Ok(())
}

fn parse_id(name: &[u8]) -> Option<u32> {
    cmd::parse_u64(name).and_then(|v| u32::try_from(v).ok())
}

/// Frontend state of `device/<kind>/<id>` (Unknown if unreadable).
fn fe_state(kind: &str, id: u32) -> u32 {
    xs::read_u64(&xs_path!("device/{}/{}/state", kind, id)).unwrap_or(0) as u32
}

/// Close devices whose backend left, connect new ones.
fn scan() {
    // Departures first (frees slots and memory).
    let mut gone_blk: [Option<&'static mut BlkDev>; MAX_BLK] = [None, None, None, None];
    let mut gone_net: [Option<&'static mut NetDev>; MAX_NET] = [None, None];
    REG.with(|r| {
        for (i, slot) in r.blk.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|d| xs::backend_gone(&d.be)) {
                gone_blk[i] = slot.take();
            }
        }
        for (i, slot) in r.net.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|d| xs::backend_gone(&d.be)) {
                gone_net[i] = slot.take();
            }
        }
    });
    for d in gone_blk.into_iter().flatten() {
        let id = d.devid;
        blk::close(d);
        println!("kxen-testguest: vbd {} closed", id);
    }
    for d in gone_net.into_iter().flatten() {
        let id = d.devid;
        vif::close(d);
        println!("kxen-testguest: vif {} closed", id);
    }

    let mut ids = [0u32; 16];
    let mut n = 0;
    let _ = xs::directory(&xs_path!("device/vbd"), |name| {
        if let (Some(id), true) = (parse_id(name), n < ids.len()) {
            ids[n] = id;
            n += 1;
        }
    });
    for &id in &ids[..n] {
        let known = REG.with(|r| r.blk.iter().flatten().any(|d| d.devid == id));
        if known || fe_state("vbd", id) >= state::CLOSING {
            continue;
        }
        let free = REG.with(|r| r.blk.iter().any(|s| s.is_none()));
        if !free {
            println!("kxen-testguest: vbd {} FAIL too many block devices", id);
            continue;
        }
        match blk::connect(id) {
            Ok(d) => {
                let mut feats = xs::Path::new();
                d.feature_list(&mut feats);
                println!(
                    "kxen-testguest: vbd {} connected sectors={} sector-size={} features={}",
                    id, d.sectors, d.sector_size, feats
                );
                REG.with(|r| {
                    if let Some(s) = r.blk.iter_mut().find(|s| s.is_none()) {
                        *s = Some(d);
                    }
                });
            }
            Err(e) => println!("kxen-testguest: vbd {} FAIL {}", id, e),
        }
    }

    n = 0;
    let _ = xs::directory(&xs_path!("device/vif"), |name| {
        if let (Some(id), true) = (parse_id(name), n < ids.len()) {
            ids[n] = id;
            n += 1;
        }
    });
    for &id in &ids[..n] {
        let known = REG.with(|r| r.net.iter().flatten().any(|d| d.devid == id));
        if known || fe_state("vif", id) >= state::CLOSING {
            continue;
        }
        let free = REG.with(|r| r.net.iter().any(|s| s.is_none()));
        if !free {
            println!("kxen-testguest: vif {} FAIL too many network devices", id);
            continue;
        }
        let with_ip = REG.with(|r| !r.net.iter().flatten().any(|d| d.have_ip));
        match vif::connect(id, with_ip) {
            Ok(d) => {
                let m = d.mac;
                println!(
                    "kxen-testguest: vif {} connected mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    id, m[0], m[1], m[2], m[3], m[4], m[5]
                );
                REG.with(|r| {
                    if let Some(s) = r.net.iter_mut().find(|s| s.is_none()) {
                        *s = Some(d);
                    }
                });
            }
            Err(e) => println!("kxen-testguest: vif {} FAIL {}", id, e),
        }
    }
}

/// Take block device `id` out of the registry for a command (put back
/// with [`put_blk`]), so the command runs without holding the registry.
fn take_blk(id: u32) -> Option<&'static mut BlkDev> {
    REG.with(|r| {
        r.blk
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|d| d.devid == id))
            .and_then(|s| s.take())
    })
}

fn put_blk(d: &'static mut BlkDev) {
    REG.with(|r| {
        if let Some(s) = r.blk.iter_mut().find(|s| s.is_none()) {
            *s = Some(d);
        }
    });
}

/// The vif the `net` commands use: the one holding the address, else
/// the first.
fn take_net() -> Option<&'static mut NetDev> {
    REG.with(|r| {
        let i = r
            .net
            .iter()
            .position(|s| s.as_ref().is_some_and(|d| d.have_ip))
            .or_else(|| r.net.iter().position(|s| s.is_some()))?;
        r.net[i].take()
    })
}

fn put_net(d: &'static mut NetDev) {
    REG.with(|r| {
        if let Some(s) = r.net.iter_mut().find(|s| s.is_none()) {
            *s = Some(d);
        }
    });
}

/// `x` thousandths as "N.NNN".
struct Milli(u64);

impl core::fmt::Display for Milli {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Bytes over ns as MB/s (10^6 bytes), in thousandths.
fn mb_per_s_milli(bytes: u64, ns: u64) -> u64 {
    (bytes as u128 * 1_000_000 / ns.max(1) as u128) as u64
}

/// Run a device command from the console. False if `line` is not one.
pub fn command(line: &[u8]) -> bool {
    match cmd::parse_xs(line) {
        Ok(None) => {}
        Ok(Some(x)) => {
            xs_command(x);
            return true;
        }
        Err(u) => {
            println!("xs FAIL {}", u.0);
            return true;
        }
    }
    let c = match cmd::parse(line) {
        Ok(None) => return false,
        Ok(Some(c)) => c,
        Err(u) => {
            println!("FAIL {}", u.0);
            return true;
        }
    };
    match c {
        Command::BlkList => {
            REG.with(|r| {
                for d in r.blk.iter().flatten() {
                    let mut feats = xs::Path::new();
                    d.feature_list(&mut feats);
                    println!(
                        "blk {} sectors={} sector-size={} features={} reqs={} kicks={}",
                        d.devid, d.sectors, d.sector_size, feats, d.reqs, d.kicks
                    );
                }
            });
            println!("blk list end");
        }
        Command::NetList => {
            REG.with(|r| {
                for d in r.net.iter().flatten() {
                    println!(
                        "net {} rx={} rx-dropped={} tx={} tx-errors={} kicks={}",
                        d.devid, d.rx_packets, d.rx_dropped, d.tx_packets, d.tx_errors, d.kicks
                    );
                }
            });
            println!("net list end");
        }
        Command::BlkCheck { dev }
        | Command::BlkWrite { dev, .. }
        | Command::BlkRead { dev, .. }
        | Command::BlkBench { dev, .. }
        | Command::BlkHostile { dev }
        | Command::BlkLapicOff { dev } => {
            let Some(d) = take_blk(dev) else {
                match c {
                    Command::BlkCheck { .. } => println!("blk check {} FAIL no such device", dev),
                    Command::BlkWrite { .. } => println!("blk write FAIL no such device {}", dev),
                    Command::BlkRead { .. } => println!("blk read FAIL no such device {}", dev),
                    Command::BlkBench { .. } => println!("blk bench {} FAIL no such device", dev),
                    Command::BlkHostile { .. } => {
                        println!("blk hostile {} FAIL no such device", dev)
                    }
                    _ => println!("blk lapic-off {} FAIL no such device", dev),
                }
                return true;
            };
            run_blk(d, c);
            put_blk(d);
        }
        Command::NetPing { .. } | Command::NetBenchTx { .. } | Command::NetHostile => {
            let Some(d) = take_net() else {
                match c {
                    Command::NetPing { .. } => println!("net ping FAIL no network device"),
                    Command::NetBenchTx { .. } => println!("net bench tx FAIL no network device"),
                    _ => println!("net hostile FAIL no network device"),
                }
                return true;
            };
            run_net(d, c);
            put_net(d);
        }
        Command::MemChurn { pages, ms } => crate::churn::run(pages, ms, crate::churn::Load::Churn),
        Command::MemZeroing { pages, ms } => {
            crate::churn::run(pages, ms, crate::churn::Load::Zeroing)
        }
    }
    true
}

/// `xs read` / `xs write` on our own store connection (relative paths
/// are under our home directory).
fn xs_command(x: cmd::XsCommand) {
    match x {
        cmd::XsCommand::Read(path) => {
            let mut p = xs::Path::new();
            p.push(path);
            let mut v = [0u8; 256];
            match xs::read(&p, &mut v) {
                Ok(n) => {
                    // Show the value itself; a newline would break the line.
                    let v = &mut v[..n];
                    v.iter_mut()
                        .filter(|b| !(0x20..0x7f).contains(*b))
                        .for_each(|b| *b = b'?');
                    println!("xs read ok {}", core::str::from_utf8(v).unwrap_or(""))
                }
                Err(e) => println!("xs read FAIL {}", e),
            }
        }
        cmd::XsCommand::Write(path, value) => {
            let mut p = xs::Path::new();
            p.push(path);
            match xs::write(0, &p, value) {
                Ok(()) => println!("xs write ok"),
                Err(e) => println!("xs write FAIL {}", e),
            }
        }
    }
}

fn run_blk(d: &mut BlkDev, c: Command) {
    match c {
        Command::BlkCheck { dev } => match blkcmd::check(d) {
            Ok(()) => println!("blk check {} ok", dev),
            Err(e) => println!("blk check {} FAIL {}", dev, e),
        },
        Command::BlkWrite {
            sector,
            count,
            seed,
            ..
        } => match blkcmd::write(d, sector, count, seed) {
            Ok(crc) => println!("blk write ok crc={:08x}", crc),
            Err(e) => println!("blk write FAIL {}", e),
        },
        Command::BlkRead { sector, count, .. } => match blkcmd::read(d, sector, count) {
            Ok(crc) => println!("blk read ok crc={:08x}", crc),
            Err(e) => println!("blk read FAIL {}", e),
        },
        Command::BlkBench {
            dev,
            kind,
            amount,
            req_kib,
            depth,
        } => match blkcmd::bench(d, kind, amount, req_kib, depth) {
            Ok(b) => println!(
                "blk bench {} {} MB/s={} iops={} kicks={} reqs={}",
                dev,
                kind.name(),
                Milli(mb_per_s_milli(b.bytes, b.ns)),
                b.reqs as u128 * 1_000_000_000 / b.ns.max(1) as u128,
                b.kicks,
                b.reqs
            ),
            Err(e) => println!("blk bench {} FAIL {}", dev, e),
        },
        Command::BlkHostile { dev } => match blkcmd::hostile(d) {
            Ok(()) => println!("blk hostile {} ok", dev),
            Err(e) => println!("blk hostile {} FAIL {}", dev, e),
        },
        Command::BlkLapicOff { dev } => match blkcmd::lapic_off(d) {
            Ok(ms) => println!(
                "blk lapic-off {} ok upcall {} ms after the LAPIC came back",
                dev, ms
            ),
            Err(e) => println!("blk lapic-off {} FAIL {}", dev, e),
        },
        _ => {}
    }
}

fn run_net(d: &mut NetDev, c: Command) {
    match c {
        Command::NetPing { count } => match d.ping(count) {
            Ok(got) => println!("net ping ok {}/{}", got, count),
            Err(e) => println!("net ping FAIL {}", e),
        },
        Command::NetBenchTx { mib } => match d.bench_tx(mib) {
            Ok((bytes, ns)) => println!("net bench tx MB/s={}", Milli(mb_per_s_milli(bytes, ns))),
            Err(e) => println!("net bench tx FAIL {}", e),
        },
        Command::NetHostile => match d.hostile() {
            Ok(()) => println!("net hostile ok"),
            Err(e) => println!("net hostile FAIL {}", e),
        },
        _ => {}
    }
}
