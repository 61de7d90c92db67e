//! The sandbox of each domain's kxen-vmm, seen from outside through real
//! kxl and kxend: its uid, capabilities, no_new_privs and seccomp state in
//! /proc, its namespaces and private root, its cgroups, a forbidden system
//! call killing it and showing in `kxl dmesg`, and sockets that refuse
//! users other than root.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::{process_exited, workspace_bin};

/// kxend's default: domain N's VMM runs as uid and gid BASE + N.
const UID_BASE: u32 = 0x4b58_0000;
/// The unprivileged user the socket checks connect as.
const NOBODY: u32 = 65534;

/// Wait until `ready` holds, polling; fail with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VMM process of domain `domid`, from kxend's record.
fn vmm_pid(d: &Dom0, domid: u32) -> i32 {
    let record = std::fs::read_to_string(d.dir.join(format!("state/domains/{domid}.json")))
        .expect("kxend's record of the domain");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let pid = record["pid"]
        .as_i64()
        .expect("the record names the VMM's pid");
    assert!(pid > 0, "record: {record}");
    pid as i32
}

fn domid_of(d: &Dom0, name: &str) -> u32 {
    d.ok(&["domid", name]).trim().parse().expect("kxl domid")
}

/// `Key:\tvalue` of a /proc status file.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
        .to_string()
}

/// The thread of `pid` named `name`; "main" is the main thread (the
/// VMM's event loop, a service thread).
fn thread_named(pid: i32, name: &str) -> i32 {
    if name == "main" {
        return pid;
    }
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return entry.file_name().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("kxen-vmm {pid} has no thread {name:?}");
}

#[test]
fn vmm_runs_unprivileged_in_its_own_namespaces_and_cgroup() {
    let d = Dom0::new("sbx-conf");
    let cfg = d.config("conf", "cap = 50\ncpu_weight = 512\n");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("conf", "kxen-testguest: service ready");
    let domid = domid_of(&d, "conf");
    let pid = vmm_pid(&d, domid);
    let uid = UID_BASE + domid;

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(status_field(&status, "Uid"), ids, "{status}");
    assert_eq!(status_field(&status, "Gid"), ids, "{status}");
    assert_eq!(status_field(&status, "Groups"), "", "{status}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&status, set),
            "0000000000000000",
            "{set}: {status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
    // PID 1 of a namespace of its own.
    let nspid = status_field(&status, "NSpid");
    assert_eq!(nspid, format!("{pid}\t1"), "{status}");

    // Every thread is filtered: mode 2 with at least one filter.
    let mut vcpu_seen = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        let tstatus = std::fs::read_to_string(task.join("status")).unwrap();
        assert_eq!(status_field(&tstatus, "Seccomp"), "2", "{comm}: {tstatus}");
        let filters: u32 = status_field(&tstatus, "Seccomp_filters").parse().unwrap();
        assert!(filters >= 1, "{comm}: {tstatus}");
        vcpu_seen |= comm.trim() == "vcpu0";
    }
    assert!(vcpu_seen, "no vcpu0 thread in kxen-vmm {pid}");

    // Namespaces: mount, PID, IPC and UTS differ from the host's (ours
    // and kxend's); the network stays (TAPs are kxend's anyway).
    let kxend = d.kxend_pid().expect("kxend runs");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
        let vmm = of(&pid.to_string());
        assert_ne!(vmm, of("self"), "{ns} namespace shared with the host");
        assert_ne!(
            vmm,
            of(&kxend.to_string()),
            "{ns} namespace shared with kxend"
        );
    }

    // The private root: /dev/kvm is the VMM's own node, the host's files
    // are not there, the kernel is, read-only.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let kvm = std::fs::metadata(root.join("dev/kvm")).unwrap();
    assert!(kvm.file_type().is_char_device());
    assert_eq!((kvm.uid(), kvm.mode() & 0o777), (uid, 0o600));
    for absent in [
        "etc/passwd",
        "bin/sh",
        "root",
        "home",
        "dev/sda",
        "dev/net/tun",
    ] {
        assert!(
            !root.join(absent).exists(),
            "/{absent} is visible in the jail"
        );
    }
    let mut dev: Vec<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dev.sort();
    assert_eq!(dev, ["kvm", "urandom"]);
    let kernel = kxen_tests::test_guest();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let kernel_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(kernel.to_str().unwrap()))
        .unwrap_or_else(|| panic!("the kernel is not bound in:\n{mounts}"));
    assert!(
        kernel_mount.split(' ').nth(5).unwrap().starts_with("ro"),
        "{kernel_mount}"
    );

    // Its cgroups: a dom-N group per controller, with xl.cfg's cap (50% of
    // a CPU) and weight (512, twice Xen's default) applied.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let leaf = format!("/dom-{domid}");
    for controller in ["memory", "cpu", "pids"] {
        let line = cgroups
            .lines()
            .find(|l| {
                let list = l.split(':').nth(1).unwrap_or("");
                list.split(',').any(|c| c == controller) || (list.is_empty() && l.ends_with(&leaf))
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup in:\n{cgroups}"));
        assert!(line.ends_with(&leaf), "{controller}: {line}");
    }
    let cpu_line = cgroups.lines().find(|l| {
        l.split(':')
            .nth(1)
            .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
    });
    match cpu_line {
        Some(line) => {
            let path = line.splitn(3, ':').nth(2).unwrap();
            let dir = cgroup_v1_dir("cpu", path);
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read("cpu.cfs_period_us").trim(), "100000");
            assert_eq!(read("cpu.shares").trim(), "2048");
        }
        None => {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let dir = cgroup_v2_mount().join(path.trim_start_matches('/'));
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("cpu.max").trim(), "50000 100000");
            assert_eq!(read("cpu.weight").trim(), "200");
        }
    }

    d.ok(&["destroy", "conf"]);
    wait_until(Duration::from_secs(20), "the VMM to end", || {
        process_exited(pid)
    });
    // The domain's jail and cgroups go with it.
    wait_until(Duration::from_secs(10), "the jail directory to go", || {
        !d.dir.join(format!("run/jail/{domid}")).exists()
    });
}

/// The mount point of the v1 hierarchy of `controller`, joined with `path`.
fn cgroup_v1_dir(controller: &str, path: &str) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mounts
        .lines()
        .find(|l| {
            l.split_once(" - ").is_some_and(|(_, r)| {
                r.starts_with("cgroup ")
                    && r.rsplit(' ')
                        .next()
                        .unwrap()
                        .split(',')
                        .any(|o| o == controller)
            })
        })
        .and_then(|l| l.split(' ').nth(4))
        .expect("a v1 hierarchy for the controller");
    Path::new(mount).join(path.trim_start_matches('/'))
}

fn cgroup_v2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .expect("a cgroup2 mount")
}

/// Start this Dom0's kxend with the VMMs' seccomp probe armed (SIGUSR2
/// makes the receiving thread call personality(), which no filter allows).
fn create_with_probe(d: &Dom0, cfg: &Path) {
    let out = Command::new(workspace_bin("kxl"))
        .args(["create", cfg.to_str().unwrap()])
        .env("KXEN_STATE_DIR", d.dir.join("state"))
        .env("KXEN_RUN_DIR", d.dir.join("run"))
        .env("KXEN_VMM_SECCOMP_SELFTEST", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

/// Make thread `thread` of the VMM of `name` call what its filter forbids,
/// and check the VMM dies of it and kxend reports the domain's crash.
fn violation_kills(d: &Dom0, name: &str, thread: &str) {
    d.wait_console(name, "kxen-testguest: service ready");
    let domid = domid_of(d, name);
    let pid = vmm_pid(d, domid);
    let tid = thread_named(pid, thread);
    // Alive and well before the probe: the kill below is the probe's.
    assert!(!process_exited(pid));
    assert!(d.ok(&["list"]).contains(name));
    // SAFETY: tgkill sends SIGUSR2 to one thread of the VMM; no memory is
    // passed.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR2) };
    assert_eq!(rc, 0, "tgkill: {}", std::io::Error::last_os_error());
    wait_until(Duration::from_secs(20), "the VMM to be killed", || {
        process_exited(pid)
    });
    let line =
        format!("domain {domid} ({name}) killed by SIGSYS (seccomp violation); on_crash = destroy");
    wait_until(Duration::from_secs(20), &line, || {
        d.ok(&["dmesg"]).contains(&line)
    });
    assert!(
        !d.ok(&["list"]).lines().any(|l| l.starts_with(name)),
        "{name} is still listed"
    );
}

#[test]
fn forbidden_syscall_kills_the_vmm_and_shows_in_dmesg() {
    let d = Dom0::new("sbx-kill");
    // A vCPU thread, then the event loop (the main thread, of the service
    // class): each class has its own filter.
    let cfg = d.config("victim", "");
    create_with_probe(&d, &cfg);
    violation_kills(&d, "victim", "vcpu0");
    let cfg = d.config("victim2", "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    violation_kills(&d, "victim2", "main");
}

/// What a client of `uid` got from a Unix socket.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// connect() failed with this errno (the socket file's mode).
    Refused(i32),
    /// Connected, and the server closed without answering (its peer check).
    Dropped,
    /// Connected and answered.
    Served,
}

/// Connect to `socket` as `uid` (in a forked child that drops to it), send
/// `request`, and see what comes back.
fn connect_as(uid: Option<u32>, socket: &Path, request: &[u8]) -> Outcome {
    let path = CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes_with_nul();
    assert!(bytes.len() <= addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: the child makes system calls only (on memory prepared above)
    // and leaves with _exit, as a fork of a threaded process must.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: as above; every pointer is to a live local.
        unsafe {
            if let Some(uid) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(uid, uid, uid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    libc::_exit(100);
                }
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(101);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                let errno = *libc::__errno_location();
                libc::_exit(errno.clamp(1, 99));
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::send(
                fd,
                request.as_ptr().cast(),
                request.len(),
                libc::MSG_NOSIGNAL,
            );
            let mut byte = 0u8;
            let got = libc::recv(fd, (&mut byte as *mut u8).cast(), 1, 0);
            libc::_exit(if got == 1 { 0 } else { 102 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a live local.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child);
    assert!(libc::WIFEXITED(status), "probe child: status {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Served,
        102 => Outcome::Dropped,
        code @ 1..=99 => Outcome::Refused(code),
        code => panic!("probe child could not drop to uid {uid:?} or make a socket ({code})"),
    }
}

/// A XS_READ of `/local` in xenstore's wire format.
fn xs_read_local() -> Vec<u8> {
    let payload = b"/local\0";
    let mut msg = Vec::new();
    for word in [2u32, 7, 0, payload.len() as u32] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload);
    msg
}

#[test]
fn control_sockets_refuse_other_users() {
    let d = Dom0::new("sbx-sock");
    let cfg = d.config("sock", "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("sock", "kxen-testguest: service ready");
    let domid = domid_of(&d, "sock");
    let kxend_sock = d.dir.join("run/kxend.sock");
    let xenstored_sock = d.dir.join("run/xenstored.sock");
    // kxend's path of the VMM's socket links into the domain's jail.
    let control_sock = std::fs::canonicalize(d.dir.join(format!("run/domains/{domid}.sock")))
        .expect("the VMM's control socket");
    let sockets: [(&Path, Vec<u8>); 3] = [
        (&kxend_sock, b"{\"op\":\"ping\"}\n".to_vec()),
        (&xenstored_sock, xs_read_local()),
        (&control_sock, b"{\"op\":\"info\"}\n".to_vec()),
    ];
    for (socket, request) in &sockets {
        let meta = std::fs::metadata(socket).unwrap();
        assert!(meta.file_type().is_socket(), "{}", socket.display());
        assert_eq!(
            meta.mode() & 0o077,
            0,
            "{} is open to group or others: {:o}",
            socket.display(),
            meta.mode()
        );
        // Root is served.
        assert_eq!(
            connect_as(None, socket, request),
            Outcome::Served,
            "root on {}",
            socket.display()
        );
        // nobody is refused by the file's mode...
        assert_eq!(
            connect_as(Some(NOBODY), socket, request),
            Outcome::Refused(libc::EACCES),
            "nobody on {}",
            socket.display()
        );
    }
    // ... and by the server's peer check when the mode would let it in
    // (the directories above opened for the look, as root).
    for (socket, request) in &sockets {
        let mut dir = socket.parent();
        while let Some(d) = dir {
            if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() {
                let mode = std::fs::metadata(d).unwrap().mode() & 0o777;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
            }
            dir = d.parent();
        }
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            connect_as(Some(NOBODY), socket, request),
            Outcome::Dropped,
            "nobody on {} with mode 0777",
            socket.display()
        );
        // Root still is.
        assert_eq!(connect_as(None, socket, request), Outcome::Served);
    }
    d.ok(&["destroy", "sock"]);
}
