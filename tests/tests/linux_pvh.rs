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

use std::time::{Duration, Instant};

use kxen_tests::budget;
use kxen_tests::dom0::Dom0;
use kxen_tests::linux::{
    check_process_stress, control_action, fscheck_program, guest_kernel, mem_total_kib,
    ping_both_ways, process_stress_line, read_from_image, root_image_with, shell_command,
    wait_mem_total, CMDLINE, PROCESS_STRESS_DONE,
};

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
}
