//! Linux guests for the slow tests and the benchmark: the patched PVH
//! kernel from guest-kernel-patches/ and an ext4 root image with busybox.
//! Init prints one `KXEN-READY cpus=.. root=.. eth0=..` line when the
//! system is up, then runs a shell on hvc0.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dom0::{show, wait_output, whole_lines_after, Dom0};
use crate::{budget, repo_root};

/// The kernel command line for these guests. `clearcpuid`: on PVM hosts
/// the emulator running guest ring 0 lacks these instructions and CPUID
/// cannot hide them (see guest-kernel-patches/README.md).
pub const CMDLINE: &str = "console=hvc0 root=/dev/xvda rw rootwait clearcpuid=xsave,popcnt,cx16";

/// The patched kernel, built by guest-kernel-patches/linux/build.sh into
/// its cache (a fresh machine builds it here, once).
pub fn guest_kernel() -> PathBuf {
    let script = repo_root().join("guest-kernel-patches/linux/build.sh");
    let child = Command::new(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run build.sh");
    let out = wait_output(child, Duration::from_secs(40 * 60));
    assert!(out.status.success(), "kernel build failed: {}", show(&out));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "build.sh printed {path:?}");
    path
}

/// busybox init's table. The read-only remount on the way down checkpoints
/// ext4's journal (the test reads the image afterwards).
pub const INITTAB: &str = "\
::sysinit:/etc/init.d/rcS
hvc0::respawn:/bin/sh
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
";

/// Brings the system up and prints one line the test waits for. The
/// figures come from shell builtins.
fn rcs(guest_ip: &str) -> String {
    format!(
        "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ip link set lo up
ip link set eth0 up
ip addr replace {guest_ip}/24 dev eth0
read cpus < /sys/devices/system/cpu/online
read mac < /sys/class/net/eth0/address
root=none
while read dev mnt fs rest; do [ \"$mnt\" = / ] && root=$dev:$fs; done < /proc/mounts
echo \"KXEN-READY cpus=$cpus root=$root eth0=$mac\"
"
    )
}

/// What the guest kernel prints (`NAME[PID]: segfault at ADDR ...`) when
/// a user process dies of a fault it does not handle. On PVM hosts a few
/// percent of process starts once died this way (issue 18 item 10); the
/// tests now fail on any such death instead of typing the command again.
pub const PROCESS_KILLED: &str = "segfault at";

/// Type `line` on the shell of `guest`'s console and return the first
/// whole answer line (ended by its newline) starting with `answer`. A
/// process the guest kernel reports killed ([`PROCESS_KILLED`]) or a
/// missing answer fails the test.
pub fn shell_command(d: &Dom0, guest: &str, line: &str, answer: &str, limit: Duration) -> String {
    let from = d.console_log(guest).len();
    d.console_line(guest, line);
    let start = Instant::now();
    loop {
        let log = d.console_log(guest);
        let new = log.get(from..).unwrap_or("");
        assert!(
            !new.contains(PROCESS_KILLED),
            "a process of {line:?} was killed; console:\n{new}"
        );
        if let Some(found) =
            whole_lines_after(&log, from).find(|l| l.trim_start().starts_with(answer))
        {
            return found.trim().to_string();
        }
        budget::check(format_args!("{guest} to answer {line:?}"));
        assert!(
            start.elapsed() < limit,
            "no answer starting {answer:?} to {line:?}; console:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `guest`'s shell answers again after a resume (a restore,
/// a migration, a checkpoint): type `echo TAG-$((40 + n))` and wait a few
/// seconds for `TAG-(40+n)`, with a new `n` each time, until `limit`. A
/// line typed while the resuming guest's processes are still frozen can
/// reach its shell mangled, and such an echo is harmless to repeat.
/// Returns how many tries it took.
pub fn wait_shell_answers(d: &Dom0, guest: &str, tag: &str, limit: Duration) -> u32 {
    let start = Instant::now();
    for n in 0u32.. {
        let from = d.console_log(guest).len();
        d.console_line(guest, &format!("echo {tag}-$((40 + {n}))"));
        let answer = format!("{tag}-{}", 40 + n);
        let tried = Instant::now();
        while tried.elapsed() < Duration::from_secs(3) {
            if whole_lines_after(&d.console_log(guest), from).any(|l| l.trim() == answer) {
                return n + 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            start.elapsed() < limit,
            "{guest}'s shell did not answer {tag} within {limit:?}; console:\n{}",
            d.console_log(guest)
        );
    }
    unreachable!("u32 tries run out")
}

/// `tests/linux-user/fscheck.S`, assembled and linked into `dir`: a static
/// user program that sets its FS base with `arch_prctl` over and over and
/// reads it back after every system call (see the source). Put it in a
/// root image with [`root_image_with`].
pub fn fscheck_program(dir: &Path) -> Vec<u8> {
    let src = repo_root().join("tests/linux-user");
    let elf = crate::assemble_and_link(
        &src.join("fscheck.S"),
        &src.join("fscheck.ld"),
        dir,
        "fscheck",
        crate::GuestArch::X86_64,
        &[],
    );
    std::fs::read(&elf).expect("read the linked fscheck")
}

/// A shell line for a guest booted with [`fscheck_program`] as
/// `/bin/fscheck`: on each of two vCPUs' worth of background jobs, a loop
/// of `starts` process starts (`/bin/true`, a fresh static busybox each
/// time) and one `fscheck` of `fs_sets` FS base changes, then
/// [`PROCESS_STRESS_DONE`] (computed by the shell, so the echo of the typed
/// line never matches it). Each loop prints `STARTS n=.. failed=..`.
pub fn process_stress_line(starts: u32, fs_sets: u32) -> String {
    format!(
        "s() {{ i=0; f=0; while [ $i -lt {starts} ]; do /bin/true || f=$((f+1)); i=$((i+1)); done; \
echo STARTS n=$i failed=$f; }}; s & s & /bin/fscheck {fs_sets} & /bin/fscheck {fs_sets} & wait; \
echo PROCESS-STRESS-$((40 + 2))"
    )
}

/// The line [`process_stress_line`] ends with once every job is done.
pub const PROCESS_STRESS_DONE: &str = "PROCESS-STRESS-42";

/// Check what [`process_stress_line`] printed after byte `from` of the
/// console: both loops ran every start without a failure, both fscheck
/// runs saw their FS base every time, and no process died.
pub fn check_process_stress(
    log: &str,
    from: usize,
    starts: u32,
    fs_sets: u32,
) -> Result<(), String> {
    let new = log.get(from..).unwrap_or("");
    let lines: Vec<&str> = whole_lines_after(log, from).map(str::trim).collect();
    let want_starts = format!("STARTS n={starts} failed=0");
    let want_fs = format!("FSCHECK n={fs_sets} bad=0");
    let count = |want: &str| lines.iter().filter(|l| **l == want).count();
    if new.contains(PROCESS_KILLED) || count(&want_starts) != 2 || count(&want_fs) != 2 {
        return Err(format!(
            "expected two {want_starts:?} and two {want_fs:?} lines and no process killed; console:\n{new}"
        ));
    }
    Ok(())
}

/// A 64-bit ELF without a PT_INTERP program header (no dynamic loader).
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| elf.get(at..at + len);
    let (Some(magic), Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0, 5), field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return false;
    };
    if magic != b"\x7fELF\x02" {
        return false;
    }
    let phoff = u64::from_le_bytes(phoff.try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(phentsize.try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(phnum.try_into().unwrap()) as usize;
    (0..phnum).all(|i| {
        field(phoff + i * phentsize, 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

/// The directories of a tree that runs busybox as shell, tools and init
/// (parents before children), relative to the tree's root.
pub const BUSYBOX_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "etc",
    "etc/init.d",
    "proc",
    "sys",
    "dev",
    "tmp",
    "root",
];

/// The links a tree with `/bin/busybox` needs to use it as shell, tools
/// and init: `bin/APPLET -> busybox` for each applet `/bin/busybox
/// --list` names, and `sbin/{init,poweroff,reboot,halt} ->
/// ../bin/busybox`, as `(path, target)` pairs relative to the tree's
/// root. [`root_image`] makes them on disk, `stock::initramfs` as cpio
/// entries.
pub fn busybox_links() -> Result<Vec<(String, String)>, String> {
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e}"))?;
    if !list.status.success() {
        return Err(format!("busybox --list: {}", show(&list)));
    }
    let mut links: Vec<(String, String)> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|applet| *applet != "busybox")
        .map(|applet| (format!("bin/{applet}"), "busybox".to_string()))
        .collect();
    for tool in ["init", "poweroff", "reboot", "halt"] {
        links.push((format!("sbin/{tool}"), "../bin/busybox".to_string()));
    }
    Ok(links)
}

/// An ext4 image holding busybox as init, shell and tools.
pub fn root_image(dir: &Path, guest_ip: &str) -> PathBuf {
    root_image_with(dir, guest_ip, &[])
}

/// [`root_image`] with extra executables: `(path in the image, contents)`.
pub fn root_image_with(dir: &Path, guest_ip: &str, executables: &[(&str, &[u8])]) -> PathBuf {
    root_image_with_files(dir, guest_ip, executables, &[])
}

/// [`root_image_with`] plus plain files (mode 0644, their directories made
/// as needed), such as a kernel, an initrd and a GRUB configuration under
/// /boot; the image grows by their size.
pub fn root_image_with_files(
    dir: &Path,
    guest_ip: &str,
    executables: &[(&str, &[u8])],
    files: &[(&str, &[u8])],
) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        is_static_elf(&std::fs::read(busybox).unwrap_or_default()),
        "a static /bin/busybox is needed (apt-get install busybox-static)"
    );
    let tree = dir.join("rootfs");
    for sub in BUSYBOX_DIRS {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    for (path, target) in busybox_links().unwrap_or_else(|e| panic!("{e}")) {
        symlink(target, tree.join(path)).unwrap();
    }
    std::fs::write(tree.join("etc/inittab"), INITTAB).unwrap();
    for (path, contents) in executables {
        let at = tree.join(path);
        std::fs::write(&at, contents).unwrap();
        std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for (path, contents) in files {
        let at = tree.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&at, contents).unwrap();
    }
    let extra_mib = files
        .iter()
        .map(|(_, c)| c.len())
        .sum::<usize>()
        .div_ceil(1 << 20);
    let rcs_path = tree.join("etc/init.d/rcS");
    std::fs::write(&rcs_path, rcs(guest_ip)).unwrap();
    let st = Command::new("chmod")
        .arg("755")
        .arg(&rcs_path)
        .status()
        .unwrap();
    assert!(st.success());
    let image = dir.join("root.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "kxenroot", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg(format!("{}M", 64 + extra_mib))
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", show(&out));
    image
}

/// A file's contents inside an ext4 image, read on the host.
pub fn read_from_image(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kxl ACTION GUEST` (reboot or shutdown) and wait for `mark` on the
/// console, within `limit`. A process init starts on the way down that the
/// guest kernel reports killed ([`PROCESS_KILLED`]) fails the test.
pub fn control_action(d: &Dom0, guest: &str, action: &str, mark: &str, limit: Duration) {
    let from = d.console_log(guest).len();
    d.ok(&[action, guest]);
    let start = Instant::now();
    loop {
        let log = d.console_log(guest);
        let new = log.get(from..).unwrap_or("");
        if new.contains(mark) {
            return;
        }
        assert!(
            !new.contains(PROCESS_KILLED),
            "{action}: a process was killed; console:\n{new}"
        );
        budget::check(format_args!("{action} to show {mark:?}"));
        assert!(
            start.elapsed() < limit,
            "{action}: never saw {mark:?}; console:\n{new}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest's MemTotal in KiB, read through its shell.
pub fn mem_total_kib(d: &Dom0, guest: &str) -> u64 {
    let line = shell_command(
        d,
        guest,
        "grep MemTotal /proc/meminfo",
        "MemTotal:",
        BALLOON_COMMAND_LIMIT,
    );
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"))
}

/// One shell command while the balloon works.
const BALLOON_COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long the balloon may take to follow a mem-set. It gives its pages
/// back from guest kernel code, emulated ring 0 for PVH: with another
/// guest busy on the same two cores it had given back about 24 of 64 MiB
/// after a minute (MemTotal 221564 KiB of about 245850).
const BALLOON_LIMIT: Duration = Duration::from_secs(180);

/// Wait until the guest's MemTotal satisfies `ok`, polling its shell.
pub fn wait_mem_total(d: &Dom0, guest: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let start = Instant::now();
    loop {
        let kib = mem_total_kib(d, guest);
        if ok(kib) {
            return kib;
        }
        budget::check(format_args!("MemTotal to become {what}"));
        assert!(
            start.elapsed() < BALLOON_LIMIT,
            "MemTotal stayed at {kib} KiB, expected {what}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Put `peer_ip` on `bridge` in the Dom0's namespace, then ping it three
/// times from the guest's shell and the guest's `guest_ip` three times
/// from the namespace; every ping must be answered.
pub fn ping_both_ways(
    d: &Dom0,
    guest: &str,
    bridge: &str,
    peer_ip: &str,
    guest_ip: &str,
    limit: Duration,
) {
    for args in [
        &["ip", "addr", "add", &format!("{peer_ip}/24"), "dev", bridge][..],
        &["ip", "link", "set", bridge, "up"][..],
    ] {
        let out = d.in_netns(args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
    }
    ping_again(d, guest, peer_ip, guest_ip, limit);
}

/// Ping both ways over a link [`ping_both_ways`] set up already (after a
/// save and restore, say).
pub fn ping_again(d: &Dom0, guest: &str, peer_ip: &str, guest_ip: &str, limit: Duration) {
    let ping = shell_command(
        d,
        guest,
        &format!("ping -c 3 -W 5 {peer_ip} | grep 'packets transmitted'"),
        "3 packets transmitted",
        limit,
    );
    assert!(ping.contains("3 packets received"), "{ping}");
    let out = d.in_netns(&["ping", "-c", "3", "-W", "5", guest_ip]);
    assert!(
        out.status.success(),
        "ping from the namespace: {}",
        show(&out)
    );
}
