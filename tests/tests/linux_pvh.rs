//! Linux as a PVH guest of kxen (slow group).
//!
//! Builds (or reuses) the patched small kernel from guest-kernel-patches/,
//! builds an ext4 root image with busybox, and boots it through `kxl create`
//! under real KVM with two vCPUs, its root on xen-blkfront (xvda), eth0 on
//! xen-netfront and hvc0 on the PV console. Then, in that guest:
//! the console both ways, both vCPUs online, process starts and FS bases
//! under load on both vCPUs (`tests/linux-user/fscheck.S`; issue 18 item
//! 10), ping to a peer inside a
//! network namespace the test creates, `kxl mem-set` moving MemTotal,
//! `kxl reboot` restarting it, and `kxl shutdown` powering it off cleanly.
//!
//! Under PVM emulation one boot takes tens of seconds, so this test is
//! `#[ignore]`d in the quick run and `examples/test.sh` runs it once as the
//! slow group.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::budget;
use kxen_tests::dom0::{show, Dom0};
use kxen_tests::linux::{
    check_process_stress, control_action, fscheck_program, guest_kernel, mem_total_kib,
    ping_both_ways, process_stress_line, read_from_image, root_image_with, shell_command,
    wait_mem_total, wait_shell_answers, CMDLINE, PROCESS_STRESS_DONE,
};
use kxen_tests::stream::verify_stream_v2;

/// The whole test once the kernel is built: about 4 minutes measured on a
/// PVM host; examples/test.sh stops this step after 13.
const BUDGET: Duration = Duration::from_secs(12 * 60);
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
const GUEST: &str = "linux";
/// Process starts per loop in the stress step (two loops): about 0.7 s
/// each on a PVM host with both vCPUs busy.
const STRESS_STARTS: u32 = 20;
/// FS base sets per fscheck run (two runs), five checks each.
const STRESS_FS_SETS: u32 = 1500;
const STRESS_LIMIT: Duration = Duration::from_secs(180);
const GUEST_IP: &str = "10.98.0.2";
const PEER_IP: &str = "10.98.0.1";
const BRIDGE: &str = "kxlbr0";

fn command(d: &Dom0, line: &str, answer: &str) -> String {
    shell_command(d, GUEST, line, answer, COMMAND_LIMIT)
}

#[test]
#[ignore = "slow group: boots Linux under emulation; examples/test.sh runs it"]
fn linux_pvh_guest_with_pv_console_disk_and_network() {
    // examples/test.sh builds the kernel in a step of its own, so the
    // budget covers the guest alone.
    let kernel = guest_kernel();
    budget::start("linux_pvh", BUDGET);
    let d = Dom0::new_in_netns("linux");
    let fscheck = fscheck_program(&d.dir);
    let image = root_image_with(&d.dir, GUEST_IP, &[("bin/fscheck", &fscheck)]);
    let cfg = d.dir.join("linux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"{GUEST}\"
type = \"pvh\"
kernel = \"{}\"
memory = 256
vcpus = 2
cmdline = \"{CMDLINE}\"
disk = [ '{},raw,xvda,rw' ]
vif = [ 'mac=00:16:3e:00:00:61,bridge={BRIDGE}' ]
on_poweroff = \"destroy\"
on_reboot = \"restart\"
",
            kernel.display(),
            image.display()
        ),
    )
    .unwrap();

    // Boot to init through kxl create.
    let started = Instant::now();
    d.ok(&["create", cfg.to_str().unwrap()]);
    let ready = d.wait_line_after(GUEST, 0, "KXEN-READY", BOOT_LIMIT);
    let boot = started.elapsed();
    eprintln!("linux_pvh: kxl create to init's first line in {boot:.1?}");
    assert!(ready.contains("cpus=0-1"), "both vCPUs online: {ready}");
    assert!(
        ready.contains("root=/dev/root:ext4") || ready.contains("root=/dev/xvda:ext4"),
        "ext4 root on xvda: {ready}"
    );
    assert!(ready.contains("eth0=00:16:3e:00:00:61"), "{ready}");
    let log = d.console_log(GUEST);
    assert!(log.contains("Booting kernel on Xen PVH"), "{log}");
    // kxen offers FIFO event channels and Linux takes them (issue 18 item
    // 8); the disk, network and console below then run over them, with
    // kxend's backends raising ports through the VMM.
    assert!(log.contains("Using FIFO-based ABI"), "{log}");
    // Not just "xvda": the command line (root=/dev/xvda) has that too.
    // xen-blkfront prints this line when the disk connects, e.g.
    // "blkfront: xvda: flush diskcache: enabled; persistent grants: ...".
    assert!(
        log.lines()
            .any(|l| l.contains("blkfront: xvda: ") && l.contains("persistent grants:")),
        "xen-blkfront found the disk: {log}"
    );

    // hvc0 both ways: a command typed through `kxl console` runs in the
    // guest's shell and its answer comes back.
    let answer = command(&d, "echo kxen-$((6 * 7))", "kxen-42");
    assert_eq!(answer, "kxen-42");
    let cpus = command(
        &d,
        "echo cpus-online $(grep -c ^processor /proc/cpuinfo)",
        "cpus-online",
    );
    assert_eq!(cpus, "cpus-online 2");

    // Process starts on both vCPUs (issue 18 item 10): on PVM hosts a few
    // percent of them once died at once, static busybox reading a zero
    // TLS pointer as if its arch_prctl(ARCH_SET_FS) had not reached user
    // mode. Two loops of fresh busybox processes and two fscheck runs
    // (an FS base set and read back around every system call) side by
    // side; nothing is typed again here, every start must succeed.
    let from = d.console_log(GUEST).len();
    let stress_started = Instant::now();
    d.console_line(GUEST, &process_stress_line(STRESS_STARTS, STRESS_FS_SETS));
    d.wait_line_after(GUEST, from, PROCESS_STRESS_DONE, STRESS_LIMIT);
    if let Err(e) = check_process_stress(&d.console_log(GUEST), from, STRESS_STARTS, STRESS_FS_SETS)
    {
        panic!("{e}");
    }
    eprintln!(
        "linux_pvh: {} process starts and {} FS base sets on 2 vCPUs, none lost, in {:.1?}",
        2 * STRESS_STARTS,
        2 * STRESS_FS_SETS,
        stress_started.elapsed()
    );

    // The root filesystem is the xvda image: a file written in the guest
    // is in the image on the host once the guest has shut down (its ext4
    // journal is checkpointed when init unmounts; debugfs does not replay
    // journals).
    command(
        &d,
        "echo written-by-linux > /root/proof && sync && echo synced",
        "synced",
    );

    // eth0 on xen-netfront reaches the peer in the namespace, both ways.
    ping_both_ways(&d, GUEST, BRIDGE, PEER_IP, GUEST_IP, COMMAND_LIMIT);

    // Live migration (issue 17) to a second kxen host on the same network
    // segment, while the guest writes to xvda and streams over eth0; the
    // rest of the test runs on the destination.
    let src = d;
    let d = migrate_while_writing_and_streaming(&src);

    // mem-set moves the balloon and MemTotal follows, down and back up.
    let full = mem_total_kib(&d, GUEST);
    d.ok(&["mem-set", GUEST, "192m"]);
    // Linux's balloon gets most of the way quickly and may leave the last
    // few MiB for later retries: at least 48 MiB of the 64 must go, and
    // never more than asked.
    let low = wait_mem_total(&d, GUEST, "48 to 68 MiB less", |kib| {
        kib + 48 * 1024 <= full && kib + 68 * 1024 >= full
    });
    d.ok(&["mem-set", GUEST, "256m"]);
    let back = wait_mem_total(&d, GUEST, "back up", |kib| kib + 16 * 1024 >= full);
    eprintln!(
        "linux_pvh: MemTotal {full} KiB, after mem-set 192m {low} KiB, after 256m {back} KiB"
    );

    // kxl reboot: control/shutdown=reboot, the guest's init reboots, the
    // reset comes back as SHUTDOWN_reboot and on_reboot restarts it.
    let from = d.console_log(GUEST).len();
    let old_domid = d.ok(&["domid", GUEST]).trim().to_string();
    control_action(&d, GUEST, "reboot", "reboot: Restarting system", BOOT_LIMIT);
    let again = d.wait_line_after(GUEST, from, "KXEN-READY", BOOT_LIMIT);
    assert!(again.contains("cpus=0-1"), "{again}");
    let new_domid = d.ok(&["domid", GUEST]).trim().to_string();
    assert_ne!(old_domid, new_domid, "a restarted domain gets a new domid");
    assert!(
        d.console_log(GUEST)[from..].contains("reboot: Restarting system"),
        "a clean reboot: {}",
        &d.console_log(GUEST)[from..]
    );

    // kxl shutdown: a clean power-off through control/shutdown.
    let from = d.console_log(GUEST).len();
    control_action(&d, GUEST, "shutdown", "reboot: Power down", BOOT_LIMIT);
    d.wait_unlisted(GUEST, COMMAND_LIMIT);
    let tail = d.console_log(GUEST)[from..].to_string();
    assert!(
        tail.contains("reboot: Power down"),
        "clean power-off: {tail}"
    );
    assert_eq!(
        read_from_image(&image, "/root/proof").trim(),
        "written-by-linux"
    );
    // Every write the guest's sync acknowledged, before, during and after
    // the migration, is in the shared image.
    let seq = read_from_image(&image, "/root/seq");
    check_sequence(&seq, "").unwrap_or_else(|e| panic!("/root/seq in the image: {e}"));
}

/// The guest's disk writer and TCP stream stop when this file exists.
const STOP_FLAG: &str = "/tmp/stop-writers";
/// Where the writer leaves its count when it has stopped. It writes
/// nothing on the console: a background write there while a command is
/// typed has cost the typed line characters (the shell then waited for a
/// closing quote that never came).
const WRITER_DONE: &str = "/tmp/writer-done";
const STREAM_PORT: &str = "5001";
const MIGRATE_LIMIT: Duration = Duration::from_secs(240);

/// Lines `{prefix}0`, `{prefix}1`, ... in order, none missing or twice
/// (a last line without its newline is left out); their count.
fn check_sequence(text: &str, prefix: &str) -> Result<usize, String> {
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for (i, line) in whole.lines().enumerate() {
        if line != format!("{prefix}{i}") {
            return Err(format!("line {i} is {line:?}"));
        }
    }
    Ok(whole.lines().count())
}

/// `kxl migrate` the guest from `src` to a second kxend beside it. The
/// guest syncs sequence numbers to /root/seq and streams numbered lines
/// to a peer in the namespace all along; both must go on, gapless, on
/// the destination, which is returned.
fn migrate_while_writing_and_streaming(src: &Dom0) -> Dom0 {
    let ns = src.netns.clone().expect("the source has a namespace");
    let stream_file = src.dir.join("stream.out");
    let peer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "busybox",
            "nc",
            "-l",
            "-p",
            STREAM_PORT,
        ])
        // Held open: nc ends the connection once its stdin ends.
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&stream_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox nc -l in the namespace");
    let mut peer = KillOnDrop(peer);
    // Listening before the guest connects (port 5001 is 0x1389; 0A is
    // TCP_LISTEN; busybox may listen on IPv6's any address, dual-stack).
    let deadline = Instant::now() + COMMAND_LIMIT;
    while !String::from_utf8_lossy(
        &src.in_netns(&["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .stdout,
    )
    .lines()
    .any(|l| l.contains(":1389 ") && l.contains(" 0A "))
    {
        assert!(Instant::now() < deadline, "the peer's nc never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let streamed = || std::fs::read_to_string(&stream_file).unwrap_or_default();
    // One loop does both, as fast as a process start allows (`sync` is
    // one, about 0.7 s on a PVM host): it syncs the next number to
    // /root/seq, then sends it as a line to the peer.
    command(
        src,
        &format!(
            "(i=0; while [ ! -e {STOP_FLAG} ]; do echo $i >> /root/seq; sync; echo line-$i; i=$((i+1)); done; echo $i > {WRITER_DONE}) | nc {PEER_IP} {STREAM_PORT} & echo writer-started"
        ),
        "writer-started",
    );
    // Both are under way before the move.
    wait_streamed(
        &stream_file,
        5,
        src,
        "the guest's stream did not reach the peer",
    );
    let written_before = command(src, "echo seq-count $(wc -l < /root/seq)", "seq-count")
        .trim_start_matches("seq-count")
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    assert!(written_before > 0, "the disk writer runs before the move");

    // A checkpoint first (`kxl save -c`): the guest suspends itself, is
    // saved, and resumes in place with its suspend cancelled (the
    // hypercall returns 1), its devices as they were.
    let checkpoint = src.dir.join("linux.checkpoint");
    let out = src.kxl(&["save", "-c", GUEST, checkpoint.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save -c: {}", show(&out));
    verify_stream_v2(
        &checkpoint,
        "xl",
        &["Page Data records", "Libxc Record: HVM context"],
    );
    std::fs::remove_file(&checkpoint).unwrap();
    let streamed_at_checkpoint = check_sequence(&streamed(), "line-").unwrap_or(0);
    wait_streamed(
        &stream_file,
        streamed_at_checkpoint + 2,
        src,
        "the writer stopped at the checkpoint",
    );
    assert_eq!(command(src, "echo kxen-$((6 * 7))", "kxen-42"), "kxen-42");

    let dst = Dom0::new_beside("linuxdst", src, 100);
    let ssh = dst.remote_shell("ssh-dst", "");
    let started = Instant::now();
    let out = src.migrate_within(&ssh, GUEST, MIGRATE_LIMIT);
    let took = started.elapsed();
    assert!(out.status.success(), "kxl migrate: {}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Migration successful."), "{stderr}");
    eprintln!("linux_pvh: live migration in {took:.1?}:\n{stderr}");
    assert!(!src.is_listed(GUEST), "the source still lists the guest");
    // The guest suspended itself through Xen's protocol and resumed there.
    let src_log = std::fs::read_to_string(src.dir.join("state/hypervisor.log")).unwrap_or_default();
    assert!(
        src_log.contains("suspended itself on request"),
        "the guest was not suspended through control/shutdown: {src_log}"
    );

    // The shell answers on the destination, on both vCPUs.
    let d = dst;
    wait_shell_answers(&d, GUEST, "moved", COMMAND_LIMIT);
    assert_eq!(
        command(
            &d,
            "echo cpus-online $(grep -c ^processor /proc/cpuinfo)",
            "cpus-online"
        ),
        "cpus-online 2"
    );
    // The stream goes on over the reconnected netfront.
    let moved = check_sequence(&streamed(), "line-").unwrap_or_else(|e| panic!("stream: {e}"));
    wait_streamed(
        &stream_file,
        moved + 5,
        &d,
        "the TCP stream stopped at the move",
    );
    // And the network both ways.
    let ping = command(
        &d,
        &format!("ping -c 3 -W 5 {PEER_IP} | grep 'packets transmitted'"),
        "3 packets transmitted",
    );
    assert!(ping.contains("3 packets received"), "{ping}");
    let out = d.in_netns(&["ping", "-c", "3", "-W", "5", GUEST_IP]);
    assert!(out.status.success(), "ping the moved guest: {}", show(&out));
    // The moved guest still takes part in the suspend protocol (Linux
    // wrote control/feature-suspend once, in the domain it booted in;
    // kxend writes it for a domain restored from a suspend): a checkpoint
    // here asks it again, rather than pausing a guest with PV devices.
    let checkpoint = d.dir.join("moved.checkpoint");
    let out = d.kxl(&["save", "-c", GUEST, checkpoint.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "kxl save -c after the move: {}",
        show(&out)
    );
    std::fs::remove_file(&checkpoint).unwrap();
    // Resumed in place: the stream goes on (typing into the console while
    // the guest is still in its resume path lost characters in CI).
    let at_checkpoint = check_sequence(&streamed(), "line-").unwrap_or(0);
    wait_streamed(
        &stream_file,
        at_checkpoint + 2,
        &d,
        "the writer stopped at the checkpoint after the move",
    );
    assert_eq!(command(&d, "echo again-$((6 * 7))", "again-42"), "again-42");

    // Stop both writers; the disk's sequence is whole in the guest. The
    // shell waits for the writer in the foreground.
    let done = command(
        &d,
        &format!(
            "touch {STOP_FLAG}; while [ ! -e {WRITER_DONE} ]; do sleep 1; done; echo seq-done-$(cat {WRITER_DONE})"
        ),
        "seq-done-",
    );
    let total: u64 = done
        .trim_start_matches("seq-done-")
        .parse()
        .unwrap_or_else(|_| panic!("{done}"));
    assert!(
        total > written_before,
        "the disk writer went on after the move ({written_before} before, {total} in all)"
    );
    let check = command(
        &d,
        "awk 'NR-1 != $1 {bad++} END {print \"seq-check\", NR, bad+0}' /root/seq",
        "seq-check",
    );
    assert_eq!(check, format!("seq-check {total} 0"));
    let lines = check_sequence(&streamed(), "line-").unwrap_or_else(|e| panic!("stream: {e}"));
    eprintln!(
        "linux_pvh: {total} synced writes ({written_before} before the move), {lines} streamed lines ({moved} by the move), none lost"
    );
    let _ = peer.0.kill();
    d
}

/// Wait until the peer has received at least `lines` whole, gapless
/// stream lines in `file`; `why` and `d`'s console say what failed.
fn wait_streamed(file: &std::path::Path, lines: usize, d: &Dom0, why: &str) {
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        match check_sequence(&text, "line-") {
            Ok(n) if n >= lines => return,
            Err(e) => panic!("stream: {e}"),
            Ok(n) => assert!(
                Instant::now() < deadline,
                "{why} ({n} lines, {lines} wanted); console:\n{}",
                d.console_log(GUEST)
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peer's nc ends with the test, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
