//! Debian's stock kernel as an HVM guest: `kxl create` to init against
//! the same kernel and initramfs under QEMU (-accel kvm) in the same run,
//! and dd on the virtio-blk disk against the same file on the host with
//! O_DIRECT and against xen-blkfront on the same Dom0 block backend (the
//! PVH Linux section's figures).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kxen_tests::dom0::Dom0;
use kxen_tests::stock::{stock_guest, CMDLINE};

use crate::devices::{filled_image, host_sequential, ratio};
use crate::linux::{dd_commands, guest_timed, BlkfrontDd};

/// Boots under PVM emulation take many minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(45 * 60);
/// QEMU on PVM hosts runs SeaBIOS and its option ROMs in emulated real
/// mode; a QEMU that has not reached init in this long is reported as such.
const QEMU_LIMIT: Duration = Duration::from_secs(15 * 60);
const COMMAND_LIMIT: Duration = Duration::from_secs(600);
const GUEST: &str = "benchhvm";
const DISK_MIB: u64 = 32;
const MEMORY_MIB: u32 = 512;

/// Seconds from spawning QEMU to `KXEN-INIT` on its serial port, or why
/// there is no figure.
fn qemu_to_init(dir: &Path, vmlinux: &Path, initrd: &Path) -> Result<f64, String> {
    let serial = dir.join("qemu.serial");
    let errors = dir.join("qemu.stderr");
    let stderr =
        std::fs::File::create(&errors).map_err(|e| format!("{}: {e}", errors.display()))?;
    let started = Instant::now();
    let mut qemu: Child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-m", &MEMORY_MIB.to_string(), "-smp", "1"])
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE])
        .args(["-nographic", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| {
            format!("qemu-system-x86_64: {e} (apt-get install qemu-system-x86 qemu-utils/bookworm)")
        })?;
    let result = loop {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains("KXEN-INIT") {
            break Ok(started.elapsed().as_secs_f64());
        }
        let err = std::fs::read_to_string(&errors).unwrap_or_default();
        if let Ok(Some(status)) = qemu.try_wait() {
            break Err(format!(
                "QEMU exited ({status}) before init: {}",
                err.lines().last().unwrap_or("")
            ));
        }
        // QEMU stops the VM, and stays up, when KVM cannot emulate an
        // instruction: there is nothing more to wait for.
        if err.contains("emulation failure") || err.contains("internal error") {
            let last = log.lines().last().unwrap_or("(nothing)").to_string();
            break Err(format!(
                "QEMU stopped the guest after {:.0} s: {}; the guest's last line: {last}",
                started.elapsed().as_secs_f64(),
                err.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
            ));
        }
        if started.elapsed() > QEMU_LIMIT {
            let last = log.lines().last().unwrap_or("(nothing)").to_string();
            break Err(format!(
                "QEMU did not reach init in {} s on this KVM; its last serial line: {last}",
                QEMU_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    result
}

pub fn run(blkfront: Option<BlkfrontDd>) {
    let d = Dom0::new("bench-hvm");
    let (release, vmlinux, initrd) = match stock_guest(&d.dir) {
        Ok(g) => g,
        Err(e) => {
            println!("hvm: no stock kernel ({e}); skipped");
            return;
        }
    };
    let data = d.dir.join("data.img");
    if filled_image(&data, DISK_MIB).is_none() {
        println!("hvm: cannot write a {DISK_MIB} MiB image; skipped");
        return;
    }
    let cfg = d.dir.join("benchhvm.cfg");
    let text = format!(
        "name = \"{GUEST}\"\ntype = \"hvm\"\nkernel = \"{}\"\nramdisk = \"{}\"\n\
         memory = {MEMORY_MIB}\nvcpus = 1\ncmdline = \"{CMDLINE}\"\n\
         disk = [ '{},raw,xvda,rw' ]\n",
        vmlinux.display(),
        initrd.display(),
        data.display()
    );
    if std::fs::write(&cfg, text).is_err() {
        return;
    }
    println!(
        "{:<44} {:>12} {:>12}  {:>8}",
        format!("stock Debian {release}, HVM, 1 vCPU"),
        "QEMU",
        "kxen",
        "ratio"
    );
    let started = Instant::now();
    if !d
        .kxl(&["create", cfg.to_str().unwrap_or("")])
        .status
        .success()
    {
        println!("hvm: kxl create failed; skipped");
        return;
    }
    d.wait_line_after(GUEST, 0, "KXEN-INIT", BOOT_LIMIT);
    let kxen_boot = started.elapsed().as_secs_f64();
    d.wait_line_after(GUEST, 0, "KXEN-MODULES", BOOT_LIMIT);

    let bytes = (DISK_MIB << 20) as f64;
    let mut virtio = Vec::new();
    for (_, cmd, _) in dd_commands("vda", DISK_MIB) {
        virtio.push(
            guest_timed(&d, GUEST, &cmd, COMMAND_LIMIT).map_or(0.0, |secs| bytes / secs / 1e6),
        );
    }
    let _ = d.kxl(&["destroy", GUEST]);

    // QEMU boots the same files with the guest gone, so the two never
    // share the CPUs.
    match qemu_to_init(&d.dir, &vmlinux, &initrd) {
        Ok(qemu) => println!(
            "{:<44} {:>11.1}s {:>11.1}s  {}",
            "create to init (first line of rcS)",
            qemu,
            kxen_boot,
            ratio(kxen_boot, qemu)
        ),
        Err(why) => {
            println!(
                "{:<44} {:>12} {:>11.1}s  {:>8}",
                "create to init (first line of rcS)", "n/a", kxen_boot, "n/a"
            );
            println!("  QEMU: {why}");
        }
    }
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12}  {:>8} {:>8}",
        "virtio-blk (kxend's block backend)", "host", "blkfront", "virtio", "/host", "/blkfront"
    );
    for ((label, _, write), guest) in dd_commands("vda", DISK_MIB).into_iter().zip(virtio) {
        let host = host_sequential(&data, DISK_MIB, 1 << 20, write).unwrap_or(0.0);
        let pv = blkfront.map_or(0.0, |b| if write { b.write } else { b.read });
        println!(
            "{:<44} {:>12.1} {:>12.1} {:>12.1}  {} {}",
            label,
            host,
            pv,
            guest,
            ratio(guest, host),
            ratio(guest, pv)
        );
    }
    println!();
}
