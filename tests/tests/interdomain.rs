//! Interdomain event channels and grants between a real guest and Dom0's
//! backend library, under real KVM.
//!
//! The PV test guest runs in `kxen.mode=peer`: it grants Dom0 pages and
//! allocates ports for it, then serves commands Dom0 writes into the
//! granted read-write page (see tests/guest/src/peer.rs for the protocol).
//! This side is kxen-foreign' `ForeignDomain` over kxen-vmm's control
//! socket, exactly as kxend's backends use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxen_foreign::domain::ForeignDomain;
use kxen_foreign::evtchn::Dom0Channel;
use kxen_foreign::foreign::ForeignPage;
use kxen_foreign::grant::GrantTable;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xen_abi::event_channel::{EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_UNBOUND};
use xen_abi::grant_table::*;

use kxen_tests::{package_bin, test_guest};

const DOMID: u16 = 7;

// The command page (tests/guest/src/peer.rs).
const CMD_SEQ: usize = 0;
const CMD: usize = 4;
const ARG: usize = 8;
const DONE_SEQ: usize = 12;
const RESULT: usize = 16;
const RESULT2: usize = 20;
const RESULT3: usize = 24;
const PINGS: usize = 28;
const KICKED_PINGS: usize = 32;
const PAYLOAD: usize = 64;
const PING: u32 = 1;
const MODE: u32 = 2;
const BIND: u32 = 3;
const STATUS: u32 = 4;
const CLOSE: u32 = 5;
const SEEN: u32 = 6;
const END_GRANT: u32 = 7;
const EXIT: u32 = 8;
const MOVE_SHARED_INFO: u32 = 9;
const MOVE_GRANT_FRAME: u32 = 10;
/// Where the guest keeps grant frame 0 (tests/guest/src/grants.rs).
const GRANT_FRAME0_GFN: u32 = 0xf2000;

struct Peer {
    child: Child,
    socket: PathBuf,
    stderr: Arc<Mutex<String>>,
    port: u32,
    port2: u32,
    gref: u32,
    rogref: u32,
    fgref: u32,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn field(line: &str, key: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn start_peer(tag: &str, env: &[(&str, &str)]) -> (Peer, Receiver<String>) {
    let socket = std::env::temp_dir().join(format!("kxen-peer-{tag}-{}.sock", std::process::id()));
    // kxen-run serves the peer's console (its stdout) and xenstore; the
    // test is the Dom0 of its interdomain channels.
    let mut child = Command::new(package_bin("kxen-run", "kxen-run"))
        .env("KXEN_VMM", package_bin("kxen-vmm", "kxen-vmm"))
        .arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "64", "--vcpus", "1", "--name", "peer"])
        .args(["--domid", &DOMID.to_string()])
        .args(["--cmdline", "kxen.mode=peer"])
        .arg("--control-socket")
        .arg(&socket)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kxen-vmm");
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("kxen-testguest: peer port=") => break l,
            Ok(l) if l.starts_with("FAIL") => panic!("guest: {l}\n{}", stderr.lock().unwrap()),
            Ok(_) => continue,
            Err(_) => panic!("no peer line from the guest\n{}", stderr.lock().unwrap()),
        }
    };
    let peer = Peer {
        child,
        socket,
        stderr,
        port: field(&line, "port"),
        port2: field(&line, "port2"),
        gref: field(&line, "gref"),
        rogref: field(&line, "rogref"),
        fgref: field(&line, "fgref"),
    };
    (peer, rx)
}

fn connect(peer: &Peer) -> Arc<ForeignDomain> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ForeignDomain::connect(DOMID, &peer.socket) {
            Ok(d) => return d,
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Wait until `ch`'s kick fd is readable; consume it.
fn wait_kick(ch: &Dom0Channel, limit: Duration) -> bool {
    let mut fds = [PollFd::new(ch.kick_fd(), PollFlags::POLLIN)];
    let ms = limit.as_millis().min(u16::MAX as u128) as u16;
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) && ch.ack()
}

/// Dom0's side of the command protocol.
struct Commander<'a> {
    page: ForeignPage,
    ch: &'a Dom0Channel,
    seq: u32,
}

impl Commander<'_> {
    fn run(&mut self, cmd: u32, arg: u32) -> (u32, u32, u32) {
        self.seq += 1;
        self.page.store_u32(ARG, arg);
        self.page.store_u32(CMD, cmd);
        self.page.store_u32(CMD_SEQ, self.seq);
        self.ch.notify();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.page.load_u32(DONE_SEQ) != self.seq {
            assert!(
                Instant::now() < deadline,
                "guest did not answer command {cmd} (seq {})",
                self.seq
            );
            wait_kick(self.ch, Duration::from_millis(100));
        }
        (
            self.page.load_u32(RESULT),
            self.page.load_u32(RESULT2),
            self.page.load_u32(RESULT3),
        )
    }

    /// One ping-pong round: Dom0 notifies, the guest answers with an event.
    /// The notification must reach the guest as an event: the guest
    /// reports the upcalls it took for it, and seeing the pending bit by
    /// reading memory (a spinning guest re-reads the page) does not count.
    fn ping(&mut self, value: u32) {
        self.page.store_u32(PAYLOAD, value);
        let (r, upcalls, _) = self.run(PING, 0);
        assert_eq!(r, value.wrapping_add(1), "ping {value}");
        assert!(
            upcalls >= 1,
            "ping {value} (seq {}): Dom0's notification never interrupted the guest (no upcall)",
            self.seq
        );
    }

    /// Every ping so far reached the guest as an upcall.
    fn assert_every_ping_kicked(&self, pings: u32) {
        assert_eq!(self.page.load_u32(PINGS), pings, "pings answered");
        assert_eq!(
            self.page.load_u32(KICKED_PINGS),
            pings,
            "pings whose notification arrived as an upcall"
        );
    }
}

/// Wait until `cond` holds, polling every millisecond, at most `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Context switches of each thread of `pid`: (name, voluntary + involuntary).
fn switches(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        out.push((
            format!("{}:{}", name.trim(), t.file_name().to_string_lossy()),
            n,
        ));
    }
    out
}

/// Switches per thread between two samples, vCPU threads left out.
fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(name, _)| !name.starts_with("vcpu"))
        .map(|(name, n)| {
            let old = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0, |(_, n)| *n);
            (name.clone(), n - old)
        })
        .collect()
}

fn entry_flags(dom: &ForeignDomain, gref: u32) -> u16 {
    let events = dom.events().expect("event routing");
    let off = events
        .grant_frame_offset(gref / GRANT_ENTRIES_PER_FRAME as u32)
        .expect("grant frame placed");
    let frame = dom.memory.page_at_offset(off).expect("frame in the memfd");
    frame.load_u32((gref as usize % GRANT_ENTRIES_PER_FRAME) * 8) as u16
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check_grants(dom: &Arc<ForeignDomain>, gt: &GrantTable, peer: &Peer) {
    assert!(gt.len() >= 512, "grant table of {} entries", gt.len());
    // Read-only grant: readable, not writable.
    let ro = gt.map(peer.rogref, false).expect("map the read-only grant");
    let mut tag = [0u8; 17];
    ro.read(512, &mut tag).unwrap();
    assert_eq!(&tag, b"kxen peer ro page");
    assert!(ro.write(0, b"x").is_err());
    assert_eq!(entry_flags(dom, peer.rogref) & GTF_READING, GTF_READING);
    drop(ro);
    assert_eq!(
        entry_flags(dom, peer.rogref) & (GTF_READING | GTF_WRITING),
        0
    );
    let refused = [
        (peer.rogref, true, GNTST_PERMISSION_DENIED), // read-only, for writing
        (peer.fgref, false, GNTST_PERMISSION_DENIED), // granted to domain 5
        (3, false, GNTST_PERMISSION_DENIED),          // reserved, never granted
        (1 << 20, false, GNTST_BAD_GNTREF),           // beyond the table
        (u32::MAX, true, GNTST_BAD_GNTREF),
    ];
    for (gref, write, status) in refused {
        match gt.map(gref, write) {
            Ok(_) => panic!("gref {gref} (write {write}) was mapped"),
            Err(e) => assert_eq!(e.status(), status, "gref {gref}: {e}"),
        }
    }
    // Copies with the same checks.
    let mut b = [0u8; 4];
    assert_eq!(
        gt.copy_from_guest(peer.rogref, 4094, &mut b)
            .unwrap_err()
            .status(),
        GNTST_BAD_COPY_ARG
    );
    assert_eq!(
        gt.copy_to_guest(peer.rogref, 0, b"x").unwrap_err().status(),
        GNTST_PERMISSION_DENIED
    );
    gt.copy_from_guest(peer.rogref, 1024, &mut b).unwrap();
    assert_eq!(
        b,
        [1024 % 251, 1025 % 251, 1026 % 251, 1027 % 251].map(|x| x as u8)
    );
}

#[test]
fn dom0_and_guest_exchange_events_and_grants() {
    let (mut peer, _lines) = start_peer("main", &[]);
    let dom = connect(&peer);
    let events = dom.events().expect("kxen-vmm offers event routing");
    eprintln!("irqfd delivery: {}", events.uses_irqfd());

    // Binding refusals: a free port, port 0, a port beyond the space.
    for bad in [4000, 0, 5000] {
        assert!(dom.bind_interdomain(bad).is_err(), "bound guest port {bad}");
    }
    let ch = dom
        .bind_interdomain(peer.port)
        .expect("bind the guest's port");
    assert_eq!(ch.guest_port(), peer.port);
    assert!(
        ch.dom0_port() >= 3,
        "Dom0 port {} collides with console/xenstore",
        ch.dom0_port()
    );
    assert!(
        dom.bind_interdomain(peer.port).is_err(),
        "bound a port twice"
    );

    let gt = dom.grant_table(0);
    check_grants(&dom, &gt, &peer);

    let page = gt.map(peer.gref, true).expect("map the read-write grant");
    let mut tag = [0u8; 17];
    page.read(512, &mut tag).unwrap();
    assert_eq!(&tag, b"kxen peer rw page");
    let mut pattern = [0u8; 1024];
    page.read(1024, &mut pattern).unwrap();
    assert!(pattern
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((1024 + i) % 251) as u8));
    // Pin counts: a second mapping keeps the bits until the last drops.
    assert_eq!(entry_flags(&dom, peer.gref) & GTF_WRITING, GTF_WRITING);
    let second = gt.map(peer.gref, false).unwrap();
    assert_eq!(
        entry_flags(&dom, peer.gref) & (GTF_READING | GTF_WRITING),
        GTF_READING | GTF_WRITING
    );
    drop(second);
    assert_eq!(
        entry_flags(&dom, peer.gref) & (GTF_READING | GTF_WRITING),
        GTF_WRITING
    );

    let mut cmd = Commander {
        page: page.shared_page().expect("writable mapping").clone(),
        ch: &ch,
        seq: 0,
    };
    // The guest sees the busy bit too: it cannot end the grant now.
    assert_eq!(
        cmd.run(END_GRANT, peer.gref).0,
        1,
        "guest ended a mapped grant"
    );

    // Events both ways, many times.
    let pid = kxen_tests::vmm_of_launcher(peer.child.id(), Duration::from_secs(5))
        .expect("kxen-run's kxen-vmm");
    let rounds = 300;
    let t0 = Instant::now();
    for i in 0..rounds {
        cmd.ping(i * 7);
    }
    eprintln!("{rounds} round trips: {:?}", t0.elapsed());
    cmd.assert_every_ping_kicked(rounds);

    // The guest moves shared_info into RAM: Dom0's notifies follow it.
    let (rc, gfn, _) = cmd.run(MOVE_SHARED_INFO, 0);
    assert_eq!((rc, gfn != 0), (0, true), "moving shared_info");
    for i in 0..50 {
        cmd.ping(5000 + i);
    }
    // Grant frame 0 moves into RAM and back, with a grant mapped across
    // the move: Dom0 finds the entries where they are now.
    let held = gt.map(peer.rogref, false).unwrap();
    let (rc, gfn, _) = cmd.run(MOVE_GRANT_FRAME, 0);
    assert_eq!((rc, gfn != 0), (0, true), "moving grant frame 0");
    assert_eq!(entry_flags(&dom, peer.rogref) & GTF_READING, GTF_READING);
    let again = gt
        .map(peer.rogref, false)
        .expect("map after the frame moved");
    let mut tag = [0u8; 17];
    again.read(512, &mut tag).unwrap();
    assert_eq!(&tag, b"kxen peer ro page");
    drop(again);
    drop(held);
    assert_eq!(
        entry_flags(&dom, peer.rogref) & GTF_READING,
        0,
        "pin left at the new place"
    );
    let (rc, _, _) = cmd.run(MOVE_GRANT_FRAME, GRANT_FRAME0_GFN);
    assert_eq!(rc, 0, "moving grant frame 0 back");
    gt.map(peer.rogref, false)
        .expect("map after the frame came back");

    let wake = |d: &[(String, u64)]| {
        d.iter()
            // The event loop runs on kxen-vmm's main thread.
            .filter(|(n, _)| n.starts_with("kxen-vmm"))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    // A vCPU blocked in SCHEDOP_block inside kxen-vmm is woken through the
    // wake eventfd: nothing else would wake it (its wait has no timeout),
    // so a ping that gets its answer proves the wake-up. The round trips
    // are printed, not asserted: under load the scheduler's tick decides
    // them (4 ms steps were seen beside stress-ng).
    let sleeps = 20;
    let before = switches(pid);
    let mut latencies = Vec::new();
    for i in 0..sleeps {
        // Each ping must find the vCPU already blocked inside kxen-vmm.
        wait_for("the guest's vCPU to block", Duration::from_secs(10), || {
            events.vcpu_blocked(0)
        });
        let t = Instant::now();
        cmd.ping(1000 + i);
        latencies.push(t.elapsed());
    }
    let blocked = delta(&before, &switches(pid));
    latencies.sort();
    eprintln!(
        "wake-up round trips from SCHEDOP_block: {latencies:?}; non-vCPU switches {blocked:?}"
    );
    // Every ping found the vCPU blocked, so each one needed a wake-up.
    assert!(
        wake(&blocked) >= sleeps as u64,
        "blocked vCPU not woken through the wake eventfd each time: {blocked:?}"
    );

    // The guest spins in ring 3 between events: Dom0's kicks must reach it
    // through the irqfd without any kxen-vmm thread waking.
    cmd.run(MODE, 1);
    let t0 = Instant::now();
    let before = switches(pid);
    for i in 0..rounds {
        cmd.ping(i);
    }
    let spinning = delta(&before, &switches(pid));
    let spin_time = t0.elapsed();
    cmd.run(MODE, 0);
    eprintln!(
        "{rounds} round trips, guest spinning: {spin_time:?}; non-vCPU switches {spinning:?}"
    );
    cmd.assert_every_ping_kicked(2 * rounds + 50 + sleeps);
    if events.uses_irqfd() {
        let total: u64 = spinning.iter().map(|(_, n)| n).sum();
        // Housekeeping (the control socket's accept loop, poll timeouts)
        // wakes a few dozen times per second; one wake-up per event would
        // be `rounds`.
        let allowed = 10 + spin_time.as_millis() as u64 / 10;
        // The wake thread's poll times out every 100 ms; a wake-up per
        // event would be `rounds`.
        let wake_timeouts = 1 + spin_time.as_millis() as u64 / 100;
        assert!(
            total < (rounds as u64 / 3).max(allowed) && wake(&spinning) <= wake_timeouts,
            "kxen-vmm threads woke during {rounds} Dom0 notifications ({spin_time:?}): {spinning:?}"
        );
    }

    // Dom0 allocates, the guest binds.
    let ch2 = dom.alloc_unbound().expect("alloc unbound");
    let d2 = ch2.dom0_port();
    assert!(d2 >= 3 && d2 != ch.dom0_port());
    let (l2, _, _) = cmd.run(BIND, d2);
    assert!(
        l2 > 0 && l2 < 4096,
        "bind_interdomain(0, {d2}) gave {}",
        l2 as i32
    );
    assert!(
        wait_kick(&ch2, Duration::from_secs(5)),
        "no event on the guest-bound port"
    );
    assert_eq!(ch2.guest_port(), l2);
    assert_eq!(cmd.run(STATUS, l2), (EVTCHNSTAT_INTERDOMAIN, 0, d2));
    assert_eq!(cmd.run(BIND, d2).0 as i32, -22, "bound a Dom0 port twice");
    assert_eq!(
        cmd.run(BIND, 4000).0 as i32,
        -22,
        "bound a Dom0 port never allocated"
    );
    ch2.notify();
    assert_eq!(
        cmd.run(SEEN, l2).0,
        1,
        "Dom0's notify did not reach the bound port"
    );
    assert_eq!(cmd.run(SEEN, l2).0, 0);
    // The guest closes its end: Dom0's notifies become no-ops.
    assert_eq!(cmd.run(CLOSE, l2).0, 0);
    assert!(!ch2.is_connected());
    ch2.notify();
    assert_eq!(cmd.run(SEEN, l2).0, 0, "notify reached a closed port");
    drop(ch2);

    // Dom0 closes its end: the guest's port is unbound (for Dom0) again.
    let ch3 = dom.bind_interdomain(peer.port2).unwrap();
    let d3 = ch3.dom0_port();
    assert_eq!(cmd.run(STATUS, peer.port2), (EVTCHNSTAT_INTERDOMAIN, 0, d3));
    drop(ch3);
    assert_eq!(cmd.run(STATUS, peer.port2), (EVTCHNSTAT_UNBOUND, 0, 0));
    let ch3 = dom
        .bind_interdomain(peer.port2)
        .expect("rebind after Dom0 closed");
    drop(ch3);

    // Unmapped, the grant can be ended, and is then refused to Dom0.
    let page_copy = cmd.page.clone();
    drop(page);
    assert_eq!(
        entry_flags(&dom, peer.gref) & (GTF_READING | GTF_WRITING),
        0
    );
    assert_eq!(cmd.run(END_GRANT, peer.gref).0, 0);
    assert_eq!(
        gt.map(peer.gref, false).err().map(|e| e.status()),
        Some(GNTST_PERMISSION_DENIED)
    );

    // Power off through the page (still mapped in the memfd).
    page_copy.store_u32(ARG, 0);
    page_copy.store_u32(CMD, EXIT);
    page_copy.store_u32(CMD_SEQ, cmd.seq + 1);
    ch.notify();
    let code = wait_exit(&mut peer.child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "kxen-vmm: {}", peer.stderr.lock().unwrap());
}

#[test]
fn closing_the_control_connection_closes_its_channels() {
    let (peer, _lines) = start_peer("drop", &[]);
    // A client binds the port and goes away without closing it.
    let mut raw = UnixStream::connect(&peer.socket).expect("control socket");
    let req = format!("{{\"op\":\"evtchn-bind\",\"guest_port\":{}}}\n", peer.port);
    raw.write_all(req.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(raw.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let dom = connect(&peer);
    assert!(dom.bind_interdomain(peer.port).is_err(), "port bound twice");
    drop(raw);
    // kxen-vmm notices within its read timeout and closes the binding.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ch = loop {
        match dom.bind_interdomain(peer.port) {
            Ok(ch) => break ch,
            Err(e) => {
                assert!(Instant::now() < deadline, "port still bound: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(ch.guest_port(), peer.port);
    // The new binding carries Dom0's notifications as events, to a
    // blocked guest and to one spinning in ring 3.
    let gt = dom.grant_table(0);
    let page = gt.map(peer.gref, true).expect("map the read-write grant");
    let mut cmd = Commander {
        page: page.shared_page().expect("writable mapping").clone(),
        ch: &ch,
        seq: 0,
    };
    for mode in [0, 1] {
        cmd.run(MODE, mode);
        for i in 0..20 {
            cmd.ping(i);
        }
    }
    cmd.assert_every_ping_kicked(40);
}

#[test]
fn without_irqfds_kxen_vmm_relays_dom0_events() {
    let (mut peer, _lines) = start_peer("relay", &[("KXEN_NO_IRQFD", "1")]);
    let dom = connect(&peer);
    assert!(!dom.events().expect("event routing").uses_irqfd());
    let ch = dom.bind_interdomain(peer.port).expect("bind");
    let gt = dom.grant_table(0);
    let page = gt.map(peer.gref, true).expect("map the read-write grant");
    let mut cmd = Commander {
        page: page.shared_page().unwrap().clone(),
        ch: &ch,
        seq: 0,
    };
    for mode in [0, 1] {
        cmd.run(MODE, mode);
        for i in 0..100 {
            cmd.ping(i);
        }
    }
    cmd.assert_every_ping_kicked(200);
    cmd.page.store_u32(CMD, EXIT);
    cmd.page.store_u32(CMD_SEQ, cmd.seq + 1);
    ch.notify();
    let code = wait_exit(&mut peer.child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "kxen-vmm: {}", peer.stderr.lock().unwrap());
}
