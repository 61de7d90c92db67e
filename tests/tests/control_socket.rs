//! Driving kxen-vmm through its control socket, as kxend will.

use std::io::{BufRead, BufReader, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;

use kxen_tests::{guest32, package_bin, KillOnDrop};

fn start(kernel: &Path, socket: &Path, paused: bool) -> KillOnDrop {
    let mut cmd = Command::new(package_bin("kxen-vmm", "kxen-vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--memory", "16", "--name", "ctl", "--domid", "3"])
        .arg("--control-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if paused {
        cmd.arg("--paused");
    }
    KillOnDrop(cmd.spawn().unwrap())
}

fn connect(socket: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(socket) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no control socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn request(stream: &mut UnixStream, line: &str) -> Value {
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    read_reply(stream)
}

fn read_reply(stream: &mut UnixStream) -> Value {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn paused_domain_is_inspected_then_unpaused() {
    let kernel = guest32("smoke", "ctl", |s| s);
    let socket = std::env::temp_dir().join(format!("kxen-ctl-{}.sock", std::process::id()));
    let mut child = start(&kernel, &socket, true);
    let mut ctl = connect(&socket);

    let info = request(&mut ctl, r#"{"op":"info"}"#);
    assert_eq!(info["ok"], true, "{info}");
    assert_eq!(info["info"]["paused"], true);
    assert_eq!(info["info"]["domid"], 3);
    assert_eq!(info["info"]["name"], "ctl");
    assert_eq!(info["info"]["memory_kib"], 16 * 1024);
    assert_eq!(info["info"]["hypercalls"], 0, "a paused domain ran");

    // The memfd arrives with SCM_RIGHTS and maps the guest's RAM.
    ctl.write_all(b"{\"op\":\"memfd\"}\n").unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        ctl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    let n = msg.bytes;
    let reply: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(fds.len(), 1, "no fd passed");
    // SAFETY: the fd was just received and is owned by nobody else.
    let memfd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let size = memfd.metadata().unwrap().len();
    assert!(size >= 16 << 20, "memfd is {size} bytes");
    assert_eq!(reply["size"], size);

    // Unpause: the smoke guest runs to poweroff.
    assert_eq!(request(&mut ctl, r#"{"op":"unpause"}"#)["ok"], true);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("hello from a 32-bit PVH guest"), "{err}");
}

#[test]
fn destroy_and_malformed_requests() {
    // The smoke guest, but instead of powering off it makes xen_version
    // hypercalls forever, so pausing shows in the hypercall count.
    let kernel = guest32("smoke", "ctl-busy", |s| {
        s.replacen(
            "    call hcpage + 29*32\n1:  jmp 1b",
            "1:  mov $0, %ebx\n    call hcpage + 17*32\n    jmp 1b",
            1,
        )
    });
    let socket = std::env::temp_dir().join(format!("kxen-ctl2-{}.sock", std::process::id()));
    let mut child = start(&kernel, &socket, false);
    let mut ctl = connect(&socket);
    for bad in [
        "not json",
        r#"{"op":"launch-missiles"}"#,
        "{}",
        r#"{"op":7}"#,
    ] {
        let reply = request(&mut ctl, bad);
        assert_eq!(reply["ok"], false, "{bad}: {reply}");
    }
    // An oversized request is refused and its connection closed; the
    // domain and other clients carry on.
    let mut big = connect(&socket);
    // The VMM refuses the line as soon as it passes the limit and closes
    // the connection, so the rest of this write may find it closed
    // (EPIPE); the refusal was sent before the close and is still there
    // to read.
    let mut oversized = "x".repeat(64 * 1024);
    oversized.push('\n');
    if let Err(e) = big.write_all(oversized.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let reply = read_reply(&mut big);
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"], "request too long");
    assert_eq!(request(&mut ctl, r#"{"op":"info"}"#)["ok"], true);
    let hypercalls = |ctl: &mut UnixStream| {
        request(ctl, r#"{"op":"info"}"#)["info"]["hypercalls"]
            .as_u64()
            .unwrap()
    };
    // Running: the count moves. How long the guest takes to make
    // RUNNING_CALLS of them sizes the window in which a paused guest must
    // make none, whatever the host's load.
    const RUNNING_CALLS: u64 = 1000;
    let first = hypercalls(&mut ctl);
    let start = Instant::now();
    loop {
        let made = hypercalls(&mut ctl) - first;
        if made >= RUNNING_CALLS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the busy guest made only {made} hypercalls in 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let window = start.elapsed() * 2;
    // Paused: it stands still. The reply comes once no vCPU is in guest
    // mode, so the count is final from here on.
    assert_eq!(request(&mut ctl, r#"{"op":"pause"}"#)["ok"], true);
    let before = hypercalls(&mut ctl);
    let start = Instant::now();
    while start.elapsed() < window {
        assert_eq!(
            hypercalls(&mut ctl),
            before,
            "a paused guest made hypercalls within {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(hypercalls(&mut ctl), before);
    eprintln!("{RUNNING_CALLS} hypercalls running; none paused in {window:?}");
    assert_eq!(
        request(&mut ctl, r#"{"op":"info"}"#)["info"]["paused"],
        true
    );
    assert_eq!(request(&mut ctl, r#"{"op":"destroy"}"#)["ok"], true);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(8));
    assert!(!socket.exists(), "socket left behind");
}

/// Send `line`; return the reply and the fds attached to it.
fn request_fds(stream: &mut UnixStream, line: &str) -> (Value, Vec<OwnedFd>) {
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 40]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(r) = c {
            // SAFETY: just received; owned by nobody else.
            fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    let reply: Value = serde_json::from_slice(&buf[..n]).unwrap();
    (reply, fds)
}

#[test]
fn event_routing_and_dom0_ports() {
    let kernel = guest32("smoke", "ctl-events", |s| s);
    let socket = std::env::temp_dir().join(format!("kxen-ctl3-{}.sock", std::process::id()));
    let mut child = start(&kernel, &socket, true);
    let mut ctl = connect(&socket);

    let (reply, fds) = request_fds(&mut ctl, r#"{"op":"events"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let vcpus = reply["vcpus"].as_u64().unwrap();
    assert_eq!(vcpus, 1);
    assert_eq!(
        fds.len() as u64,
        vcpus + 1,
        "per-vCPU irqfds and the wake fd"
    );
    let offset = reply["routing"]["offset"].as_u64().unwrap();
    let size = reply["routing"]["size"].as_u64().unwrap();
    assert!(size >= 4096 && offset.is_multiple_of(4096), "{reply}");

    // The memfd covers the routing area, which starts with its magic.
    let (reply, mut mfds) = request_fds(&mut ctl, r#"{"op":"memfd"}"#);
    assert_eq!(reply["ok"], true);
    let memfd = std::fs::File::from(mfds.pop().unwrap());
    assert!(reply["size"].as_u64().unwrap() >= offset + size, "{reply}");
    let mut magic = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&memfd, &mut magic, offset).unwrap();
    assert_eq!(&magic[..4], b"KXER");
    assert_eq!(u32::from_le_bytes(magic[4..].try_into().unwrap()), 2);

    // Binding a guest port that is not waiting for Dom0 is refused.
    for port in [0, 5, 4095, 99999] {
        let line = format!(r#"{{"op":"evtchn-bind","guest_port":{port}}}"#);
        let (reply, fds) = request_fds(&mut ctl, &line);
        assert_eq!(reply["ok"], false, "port {port}: {reply}");
        assert!(fds.is_empty());
    }
    // Dom0 ports for the guest to bind: beyond console (1) and xenstore (2).
    let (a, afds) = request_fds(&mut ctl, r#"{"op":"evtchn-alloc-unbound"}"#);
    let (b, _) = request_fds(&mut ctl, r#"{"op":"evtchn-alloc-unbound"}"#);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(afds.len(), 1);
    let (pa, pb) = (
        a["dom0_port"].as_u64().unwrap(),
        b["dom0_port"].as_u64().unwrap(),
    );
    assert!(pa >= 3 && pb >= 3 && pa != pb, "{a} {b}");
    let close = |ctl: &mut UnixStream, p: u64| {
        request(ctl, &format!(r#"{{"op":"evtchn-close","dom0_port":{p}}}"#))
    };
    assert_eq!(close(&mut ctl, pa)["ok"], true);
    assert_eq!(close(&mut ctl, pa)["ok"], false, "closed twice");
    assert_eq!(close(&mut ctl, 1)["ok"], false, "closed the console port");
    assert_eq!(request(&mut ctl, r#"{"op":"destroy"}"#)["ok"], true);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(8));
}

/// Dom0's notification reaches a guest whose shared_info has Xen's compat
/// layout: the 32-bit events guest (`tests/guest32/events.S`, with DOM0)
/// allocates a port for Dom0 and waits; this test binds it through
/// kxen-foreign, as kxend's backends do, and notifies. kxen-foreign sets
/// the guest's pending bits itself, so it must set them in the layout the
/// VMM published in the routing area (the selector a u32 at vcpu_info +
/// 4), or the guest's upcall finds nothing.
#[test]
fn dom0_notification_reaches_a_compat_layout_guest() {
    use kxen_foreign::domain::ForeignDomain;
    use std::sync::mpsc::channel;

    let kernel = guest32("events", "ctl-evt32", |s| format!(".set DOM0, 1\n{s}"));
    let socket = std::env::temp_dir().join(format!("kxen-ctl-evt32-{}.sock", std::process::id()));
    let mut child = start(&kernel, &socket, false);
    let (tx, rx) = channel();
    let err = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut transcript = String::new();
    // Every verdict line up to `label`'s, which is returned.
    let wait_line = |label: &str, transcript: &mut String| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    transcript.push_str(&line);
                    transcript.push('\n');
                    assert!(!line.ends_with(" FAIL"), "{transcript}");
                    if line.contains(&format!("(d3) {label} rc=")) {
                        return line;
                    }
                }
                Err(_) => panic!("no {label:?} line:\n{transcript}"),
            }
        }
    };
    let line = wait_line("evt32 dom0 port", &mut transcript);
    let hex = line
        .split("rc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let guest_port = u32::from_str_radix(hex, 16).unwrap();
    assert!(guest_port != 0 && guest_port < 1024, "{line}");

    // By now the guest has made hypercalls through the port-I/O
    // transport: the perf counters say so, and KVM's own statistics
    // count at least those exits.
    let mut ctl = connect(&socket);
    let perf = request(&mut ctl, r#"{"op":"perf-counters"}"#);
    assert_eq!(perf["ok"], true, "{perf}");
    let counter = |name: &str| perf["perf_counters"][name].as_u64().unwrap_or(0);
    assert!(
        counter("vmm.kvm_run") >= 1 && counter("vmm.kvm_run_ns") > 0,
        "{perf}"
    );
    let hypercall_exits = counter("vmm.exit.hypercall");
    assert!(hypercall_exits >= 3, "{perf}");
    assert!(counter("vmm.exit.hypercall_ns") > 0, "{perf}");
    // EVTCHNOP_alloc_unbound is event_channel_op, hypercall 32.
    assert!(counter("vmm.hypercall.32") >= 1, "{perf}");
    assert!(counter("kvm.exits") >= hypercall_exits, "{perf}");

    let domain = ForeignDomain::connect(3, &socket).unwrap_or_else(|e| panic!("connect: {e}"));
    let channel = domain
        .bind_interdomain(guest_port)
        .unwrap_or_else(|e| panic!("bind guest port {guest_port}: {e}"));
    channel.notify();
    let line = wait_line("evt32 dom0 upcall", &mut transcript);
    assert!(line.ends_with(" ok"), "{transcript}");
    assert_eq!(
        wait_exit(&mut child.0, Duration::from_secs(30)),
        Some(0),
        "{transcript}"
    );
    let _ = std::fs::remove_file(&socket);
}
