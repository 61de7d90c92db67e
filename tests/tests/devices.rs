//! The split drivers end to end: PV test guests created by `kxl create`
//! with disks and vifs, served by kxend's blkback and netback over real
//! grants and event channels, under real KVM, with real files and TAP
//! devices. Networking runs inside a namespace the test creates.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::process_exited;

const GUEST_LIMIT: Duration = Duration::from_secs(90);

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it): what the guest's
/// `blk write`/`blk read` print, computed here over the host file.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn sparse_image(d: &Dom0, name: &str, mib: u64) -> PathBuf {
    let path = d.dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

fn host_crc(image: &Path, sector: u64, count: u64) -> u32 {
    let f = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; (count * 512) as usize];
    f.read_exact_at(&mut buf, sector * 512).unwrap();
    crc32(&buf)
}

/// The hex value after `crc=` in a guest answer.
fn crc_of(line: &str) -> u32 {
    let hex = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("crc="))
        .unwrap_or_else(|| panic!("no crc in {line:?}"));
    u32::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

fn vmm_pids(d: &Dom0) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("kxen-vmm.*{}", d.dir.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Files a process has open (targets of /proc/PID/fd).
fn open_files(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until every process in `pids` has exited.
#[track_caller]
fn wait_exited(pids: &[i32], limit: Duration) {
    let start = Instant::now();
    while let Some(pid) = pids.iter().find(|&&pid| !process_exited(pid)) {
        assert!(
            start.elapsed() < limit,
            "process {pid} still runs {limit:?} after kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the network interface `name` is gone from `d`'s namespace.
/// The kernel unregisters a TAP after its last file is closed, which may be
/// a moment after the command that closed it returned.
#[track_caller]
fn wait_link_gone(d: &Dom0, name: &str, limit: Duration) {
    let start = Instant::now();
    while d.in_netns(&["ip", "link", "show", name]).status.success() {
        assert!(
            start.elapsed() < limit,
            "{name} still exists {limit:?} later"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn row_of<'a>(table: &'a str, first: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
}

#[test]
fn disk_data_path_hotplug_and_kill9_integrity() {
    let d = Dom0::new("blk");
    let xvda = sparse_image(&d, "xvda.img", 64);
    let cfg = d.config(
        "blk",
        &format!("disk = [ '{},raw,xvda,rw' ]\n", xvda.display()),
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("blk", "kxen-testguest: service ready");
    let connected = d.wait_line_after("blk", 0, "kxen-testguest: vbd 51712 connected", GUEST_LIMIT);
    assert!(connected.contains("sectors=131072"), "{connected}");

    // The guest's own round trip: write, read back, flush, discard.
    let check = d.guest_command("blk", "blk check 51712", "blk check 51712", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "{check}");

    // What the guest wrote is in the host file, byte for byte.
    let w = d.guest_command("blk", "blk write 51712 2048 64 7", "blk write", GUEST_LIMIT);
    assert!(w.starts_with("blk write ok"), "{w}");
    assert_eq!(crc_of(&w), host_crc(&xvda, 2048, 64), "{w}");
    let r = d.guest_command("blk", "blk read 51712 2048 64", "blk read", GUEST_LIMIT);
    assert_eq!(crc_of(&r), crc_of(&w), "{r}");

    // Hostile requests get errors and the disk keeps working.
    let h = d.guest_command("blk", "blk hostile 51712", "blk hostile", GUEST_LIMIT);
    assert!(h.ends_with("ok"), "{h}");
    let check = d.guest_command("blk", "blk check 51712", "blk check 51712", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "after hostile requests: {check}");

    // A completion whose upcall a software-disabled LAPIC dropped (as
    // across Linux's suspend) still brings its upcall once the LAPIC is
    // back on: kxen-vmm's sweep raises an upcall left pending again.
    let l = d.guest_command("blk", "blk lapic-off 51712", "blk lapic-off", GUEST_LIMIT);
    assert!(l.starts_with("blk lapic-off 51712 ok"), "{l}");
    eprintln!("{l}");
    let check = d.guest_command("blk", "blk check 51712", "blk check 51712", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "after the LAPIC was off: {check}");

    // xl's block-list: the device, connected (XenbusState 4).
    let list = d.ok(&["block-list", "blk"]);
    assert!(
        list.starts_with("Vdev  BE  handle state evt-ch ring-ref BE-path"),
        "{list}"
    );
    let row = row_of(&list, "51712").unwrap_or_else(|| panic!("{list}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[3], "4", "{list}");
    let domid = d.ok(&["domid", "blk"]).trim().to_string();
    assert_eq!(
        cols[6],
        format!("/local/domain/0/backend/vbd/{domid}/51712"),
        "{list}"
    );

    // Hot plug a second disk, use it, unplug it.
    let xvdb = sparse_image(&d, "xvdb.img", 16);
    d.ok(&[
        "block-attach",
        "blk",
        &format!("{},raw,xvdb,rw", xvdb.display()),
    ]);
    d.wait_line_after("blk", 0, "kxen-testguest: vbd 51728 connected", GUEST_LIMIT);
    let check = d.guest_command("blk", "blk check 51728", "blk check 51728", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "{check}");
    let w = d.guest_command("blk", "blk write 51728 8 8 3", "blk write", GUEST_LIMIT);
    assert_eq!(crc_of(&w), host_crc(&xvdb, 8, 8), "{w}");
    d.ok(&["block-detach", "blk", "xvdb"]);
    let list = d.ok(&["block-list", "blk"]);
    assert!(row_of(&list, "51728").is_none(), "{list}");
    assert!(row_of(&list, "51712").is_some(), "{list}");
    let kxend = d.kxend_pid().expect("kxend runs");
    assert!(
        !open_files(kxend).contains(&xvdb),
        "kxend still holds the detached image"
    );
    let out = d.kxl(&["block-detach", "blk", "xvdb"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error: Device xvdb not connected."),
        "{}",
        show(&out)
    );

    // kxend dies (kill -9) and comes back: it takes the disk over where
    // the rings stand and the guest's I/O goes on.
    let _ = Command::new("kill")
        .args(["-9", &kxend.to_string()])
        .status();
    let start = Instant::now();
    while Path::new(&format!("/proc/{kxend}")).exists() {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok(&["list"]);
    let kxend = d.kxend_pid().expect("kxend restarted");
    let check = d.guest_command("blk", "blk check 51712", "blk check 51712", GUEST_LIMIT);
    assert!(check.ends_with("ok"), "after a kxend restart: {check}");

    // An acknowledged write survives kill -9 of the VMM and of kxend.
    let w = d.guest_command(
        "blk",
        "blk write 51712 4096 256 11",
        "blk write",
        GUEST_LIMIT,
    );
    assert!(w.starts_with("blk write ok"), "{w}");
    let mut killed = vmm_pids(&d);
    assert!(!killed.is_empty(), "no kxen-vmm to kill");
    killed.push(kxend);
    for pid in &killed {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // Read the file only once nothing can still write it: a process that
    // got SIGKILL may still finish a write it was inside.
    wait_exited(&killed, Duration::from_secs(10));
    assert_eq!(crc_of(&w), host_crc(&xvda, 4096, 256), "{w}");
}

#[test]
fn disk_teardown_on_destroy_leaves_nothing() {
    let d = Dom0::new("blkdown");
    let img = sparse_image(&d, "root.img", 8);
    // Recognisable bytes where the guest will try to write, so that a
    // write that happened shows in the image.
    let first_sectors: Vec<u8> = (0..8 * 512).map(|i| (i * 31 + 7) as u8).collect();
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&first_sectors, 0)
        .unwrap();
    let image_before = std::fs::read(&img).unwrap();
    let cfg = d.config(
        "down",
        &format!(
            "disk = [ 'format=raw, vdev=xvda, access=ro, target={}' ]\n",
            img.display()
        ),
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    let line = d.wait_line_after(
        "down",
        0,
        "kxen-testguest: vbd 51712 connected",
        GUEST_LIMIT,
    );
    assert!(line.contains("sectors=16384"), "{line}");
    // Read-only: the backend answers the write BLKIF_RSP_ERROR (-1) and
    // leaves the image alone; reads work.
    let w = d.guest_command("down", "blk write 51712 0 8 1", "blk write", GUEST_LIMIT);
    assert_eq!(
        w, "blk write FAIL write: status -1",
        "the backend must refuse the write"
    );
    assert!(
        std::fs::read(&img).unwrap() == image_before,
        "the refused write changed the image"
    );
    let r = d.guest_command("down", "blk read 51712 0 8", "blk read", GUEST_LIMIT);
    assert_eq!(crc_of(&r), crc32(&first_sectors), "{r}");
    let kxend = d.kxend_pid().expect("kxend runs");
    assert!(open_files(kxend).contains(&img));
    d.ok(&["destroy", "down"]);
    let start = Instant::now();
    while open_files(kxend).contains(&img) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "image still open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.kxl(&["block-list", "down"]);
    assert!(!out.status.success(), "{}", show(&out));
    // Nothing was written later either (a deferred write, the teardown).
    assert!(
        std::fs::read(&img).unwrap() == image_before,
        "the image changed by the time the domain was gone"
    );
}

#[test]
fn vif_reaches_a_namespace_peer_and_hotplugs() {
    let d = Dom0::new_in_netns("net");
    let cfg = d.config("net", "vif = [ 'mac=00:16:3e:00:00:42,bridge=kxtbr0' ]\n");
    // The guest's address and its peer's, both inside the namespace.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "cmdline = \"kxen.mode=service\"",
        "cmdline = \"kxen.mode=service kxen.ip=10.99.0.2/24 kxen.peer=10.99.0.1\"",
    );
    std::fs::write(&cfg, text).unwrap();
    d.ok(&["create", cfg.to_str().unwrap()]);
    let line = d.wait_line_after("net", 0, "kxen-testguest: vif 0 connected", GUEST_LIMIT);
    assert!(line.contains("00:16:3e:00:00:42"), "{line}");
    let domid = d.ok(&["domid", "net"]).trim().to_string();
    let tap = format!("vif{domid}.0");

    // The vif script put the TAP on the bridge.
    let out = d.in_netns(&["ip", "-o", "link", "show", "master", "kxtbr0"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&tap),
        "{}",
        show(&out)
    );
    for args in [
        &["ip", "addr", "add", "10.99.0.1/24", "dev", "kxtbr0"][..],
        &["ip", "link", "set", "kxtbr0", "up"][..],
    ] {
        let out = d.in_netns(args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
    }

    // ICMP both ways (ARP first): the namespace pings the guest, the guest
    // pings the namespace.
    let out = d.in_netns(&["ping", "-c", "3", "-W", "5", "10.99.0.2"]);
    assert!(
        out.status.success(),
        "ping from the namespace: {}",
        show(&out)
    );
    let p = d.guest_command("net", "net ping 3", "net ping", GUEST_LIMIT);
    assert_eq!(p, "net ping ok 3/3");

    // network-list: xl's row plus counters that moved.
    let list = d.ok(&["network-list", "net"]);
    let row = row_of(&list, "0").unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("00:16:3e:00:00:42"), "{list}");
    let counters: Vec<&str> = list
        .lines()
        .skip_while(|l| !l.starts_with("Idx  "))
        .collect();
    assert!(counters.len() >= 2, "{list}");
    let names: Vec<&str> = counters[0].split_whitespace().collect();
    let values: Vec<u64> = counters[1]
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    for name in ["rx_packets", "tx_packets"] {
        let i = names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{list}"))
            - 1;
        assert!(values[i] >= 3, "{name} in {list}");
    }

    // Hot plug a second vif and unplug it: its TAP comes and goes.
    d.ok(&["network-attach", "net", "bridge=kxtbr0"]);
    d.wait_line_after("net", 0, "kxen-testguest: vif 1 connected", GUEST_LIMIT);
    let tap1 = format!("vif{domid}.1");
    assert!(d.in_netns(&["ip", "link", "show", &tap1]).status.success());
    d.ok(&["network-detach", "net", "1"]);
    wait_link_gone(&d, &tap1, Duration::from_secs(10));
    let out = d.kxl(&["network-detach", "net", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown device 7."));

    // The vif still works after its sibling left, and destroy removes it.
    let p = d.guest_command("net", "net ping 2", "net ping", GUEST_LIMIT);
    assert_eq!(p, "net ping ok 2/2");
    d.ok(&["destroy", "net"]);
    wait_link_gone(&d, &tap, Duration::from_secs(10));
    assert!(d
        .in_netns(&["ip", "link", "show", "kxtbr0"])
        .status
        .success());
}
