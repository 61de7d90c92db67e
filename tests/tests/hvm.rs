//! HVM domains through the real kxend and kxl: the Linux 64-bit boot path
//! (bzImage and vmlinux ELF), COM1 as the console, the CMOS RTC, PM timer,
//! i8042, and the on_* actions for power-off, reset and crash.
//!
//! The guest is `tests/guest64/hvm.S`; it prints what it checked and then
//! obeys one command byte typed through `kxl console`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, wait_output, Dom0};
use kxen_tests::{hvm_guest, workspace_bin};

fn config(d: &Dom0, name: &str, kernel: &Path, extra: &str) -> std::path::PathBuf {
    let path = d.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\ntype = \"hvm\"\nkernel = \"{}\"\nmemory = 64\nvcpus = 1\ncmdline = \"kxen.test={name}\"\n{extra}",
            kernel.display()
        ),
    )
    .unwrap();
    path
}

fn row(list: &str, name: &str) -> Option<String> {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_string)
}

fn wait_gone(d: &Dom0, name: &str) {
    let start = Instant::now();
    while row(&d.ok(&["list"]), name).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not go away; console:\n{}",
            d.console_log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vmm_log(d: &Dom0, name: &str) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(d.dir.join("state/logs")) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with("vmm-") && file.ends_with(&format!("-{name}.log")) {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    all
}

/// Whether the CPU offers VT-x or SVM. Without them (PVM hosts) KVM runs
/// guest ring 0 in its instruction emulator.
fn host_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Attach `kxl console ARGS`, wait until what it shows contains `shown`
/// (the replayed log comes first), then type `typed` and detach with
/// Ctrl-]. Returns everything the console showed.
fn attach_and_type(d: &Dom0, args: &[&str], shown: &str, typed: &[u8]) -> String {
    let mut child = Command::new(workspace_bin("kxl"))
        .args(args)
        .env("KXEN_STATE_DIR", d.dir.join("state"))
        .env("KXEN_RUN_DIR", d.dir.join("run"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kxl");
    let mut stdout = child.stdout.take().unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let start = Instant::now();
    while !text().contains(shown) {
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kxl {args:?} never showed {shown:?}; it showed:\n{}\n{}",
                text(),
                show(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(typed).unwrap();
    stdin.write_all(&[0x1d]).unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "kxl {args:?}: {}", show(&out));
    reader.join().unwrap();
    text()
}

/// Type one command byte at the guest's prompt.
fn command(d: &Dom0, name: &str, byte: u8) {
    d.wait_console(name, "kxen-hvm-guest: command? ");
    let _ = d.kxl_stdin(&["console", name], &[byte, 0x1d]);
    d.wait_console(name, &format!("kxen-hvm-guest: got {}", byte as char));
}

#[test]
fn hvm_guest_boots_from_vmlinux_and_bzimage() {
    let guest = hvm_guest("formats");
    let d = Dom0::new("hvm-formats");
    for (name, kernel) in [("hvm-elf", &guest.elf), ("hvm-bz", &guest.bzimage)] {
        let cfg = config(&d, name, kernel, "");
        let out = d.kxl(&["create", cfg.to_str().unwrap()]);
        assert!(out.status.success(), "{}", show(&out));
        d.wait_console(name, "kxen-hvm-guest: command? ");
        let log = d.console_log(name);
        for line in [
            "kxen-hvm-guest: zero page at rsi",
            &format!("kxen-hvm-guest: cmdline: kxen.test={name}"),
            "kxen-hvm-guest: rtc ok",
            "kxen-hvm-guest: pm timer ok",
            "kxen-hvm-guest: i8042 ok",
        ] {
            assert!(log.contains(line), "{name}: no {line:?} in\n{log}");
        }
        // A host bridge on bus 0 and, without xen_platform_pci, nothing
        // at 00:02.0 and no unplug ports.
        assert!(log.contains("pci 00:00.0 12378086"), "{log}");
        assert!(log.contains("pci 00:02.0 ffffffff"), "{log}");
        assert!(log.contains("unplug magic 0000ffff"), "{log}");
        let list = d.ok(&["list"]);
        let r = row(&list, name).unwrap_or_else(|| panic!("{list}"));
        assert_eq!(r.split_whitespace().nth(2), Some("64"), "{r}");
        // ACPI S5 through PM1a_CNT: on_poweroff = destroy.
        command(&d, name, b'p');
        wait_gone(&d, name);
        let dmesg = d.ok(&["dmesg"]);
        assert!(dmesg.contains(&format!("({name})")), "{dmesg}");
    }
}

#[test]
fn hvm_reset_crash_and_hostile_input_follow_the_on_actions() {
    let guest = hvm_guest("actions");
    let d = Dom0::new("hvm-actions");

    // i8042 reset with on_reboot = restart: a new domid, a second boot.
    let cfg = config(&d, "hvm-reset", &guest.elf, "on_reboot = \"restart\"\n");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-reset", b'r');
    let start = Instant::now();
    while d.console_log("hvm-reset").matches("command? ").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no restart:\n{}",
            d.console_log("hvm-reset")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(row(&d.ok(&["list"]), "hvm-reset").is_some());
    d.ok(&["destroy", "hvm-reset"]);

    // A triple fault is a crash: on_crash = destroy, and the VMM says why.
    let cfg = config(&d, "hvm-crash", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-crash", b'c');
    wait_gone(&d, "hvm-crash");
    assert!(
        vmm_log(&d, "hvm-crash").contains("triple fault"),
        "{}",
        vmm_log(&d, "hvm-crash")
    );

    // Unclaimed ports, a straddling UART access, an unmapped MMIO page:
    // the guest carries on and powers off.
    let cfg = config(&d, "hvm-hostile", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-hostile", b'h');
    d.wait_console("hvm-hostile", "hostile accesses survived");
    wait_gone(&d, "hvm-hostile");

    // An instruction KVM's emulator cannot run (popcnt on PVM hosts) and
    // the VMM does not emulate ends the domain as a crash, not the VMM;
    // where the CPU runs guest ring 0 natively it simply executes.
    let cfg = config(&d, "hvm-emul", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-emul", b'e');
    wait_gone(&d, "hvm-emul");
    let ran = d.console_log("hvm-emul").contains("popcnt ran");
    let refused = vmm_log(&d, "hvm-emul").contains("instruction emulation failed");
    let ring0_emulated = !host_has_hardware_virtualization();
    assert_eq!(
        (ran, refused),
        (!ring0_emulated, ring0_emulated),
        "(popcnt ran, emulation refused) on a host whose guest ring 0 is {}:\nconsole:\n{}\nvmm:\n{}",
        if ring0_emulated { "emulated (PVM)" } else { "native (VT-x/SVM)" },
        d.console_log("hvm-emul"),
        vmm_log(&d, "hvm-emul")
    );
    let dmesg = d.ok(&["dmesg"]);
    assert!(dmesg.contains("(hvm-crash)"), "{dmesg}");
}

/// User mode and back: the guest sets up its own GDT, TSS, IDT and page
/// tables, enters ring 3 with iretq, makes a system call into a
/// supervisor-only entry point and returns with sysretq. On PVM hosts a
/// user-mode syscall does not reach ring 0 by itself; the VMM's syscall
/// bridge must carry it (its breakpoint is on the page-fault handler). On
/// VT-x hosts the CPU does it and the bridge is not installed.
#[test]
fn user_mode_syscall_reaches_ring_0() {
    let guest = hvm_guest("syscall");
    let d = Dom0::new("hvm-syscall");
    let cfg = config(&d, "hvm-sys", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-sys", b's');
    wait_gone(&d, "hvm-sys");
    let log = d.console_log("hvm-sys");
    for line in [
        "syscall from ring 3 reached cpl 0",
        // mov $0x2a,%eax (5 bytes), mov %rax,%r8 (3), syscall (2).
        "syscall return address 0040000a",
        "sysretq to ring 3 and back",
    ] {
        assert!(
            log.contains(line),
            "missing {line:?}:\nconsole:\n{log}\nvmm:\n{}",
            vmm_log(&d, "hvm-sys")
        );
    }
    assert!(!log.contains("FAIL"), "{log}");
    // The guest read its own page-fault handler's first byte: the
    // bridge's int3 on PVM hosts, untouched endbr64 elsewhere.
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let expected = if pvm { "cc" } else { "f3" };
    assert!(
        log.contains(&format!("page-fault handler starts {expected}")),
        "{log}"
    );
}

/// The virtio-blk data path end to end without a Linux guest: the test
/// guest drives slot 0's registers and virtqueue itself, kxend serves the
/// queue from the host file, and a descriptor loop fails the device, not
/// the VMM or kxend.
#[test]
fn virtio_blk_by_hand_reads_writes_and_survives_a_looped_chain() {
    let guest = hvm_guest("virtio");
    let d = Dom0::new("hvm-virtio");
    let disk = d.dir.join("disk.img");
    let mut image = vec![0u8; 1 << 20];
    image[..8].copy_from_slice(b"KXENDISK");
    for (i, b) in image[8..512].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    std::fs::write(&disk, &image).unwrap();
    let cfg = config(
        &d,
        "hvm-virtio",
        &guest.elf,
        &format!("disk = [ '{},raw,xvda,rw' ]\n", disk.display()),
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-virtio", b'v');
    wait_gone(&d, "hvm-virtio");
    let log = d.console_log("hvm-virtio");
    for line in [
        "virtio slot 0 device id 00000002",
        // "KXEN" read as a little-endian u32.
        "virtio-blk sector 0 starts 4e45584b",
        "virtio-blk wrote sector 1",
        "virtio-blk looped chain: device needs reset",
        "virtio-blk reset, VMM alive",
    ] {
        assert!(log.contains(line), "missing {line:?}:\n{log}");
    }
    assert!(!log.contains("FAIL"), "{log}");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after[512..1024], image[..512], "sector 1 holds sector 0");
    assert_eq!(after[1024..], image[1024..], "nothing else was written");
    // kxend is still serving: it lists and creates domains.
    d.ok(&["list"]);
    let dmesg = d.ok(&["dmesg"]);
    assert!(!dmesg.contains("panicked"), "{dmesg}");
}

/// `kxl save` and `kxl restore` of an HVM domain with a virtio disk
/// (issue 17): the image passes Debian's `verify-stream-v2`, and the
/// restored guest, which never knew it was saved, goes on at its prompt:
/// its COM1 takes the typed command, and it then drives the virtio disk
/// from the transport's restored state and powers off through ACPI.
#[test]
fn hvm_guest_with_a_virtio_disk_is_saved_and_restored_transparently() {
    let guest = hvm_guest("saved");
    let d = Dom0::new("hvm-saved");
    let disk = d.dir.join("disk.img");
    let mut image = vec![0u8; 1 << 20];
    image[..8].copy_from_slice(b"KXENDISK");
    std::fs::write(&disk, &image).unwrap();
    let name = "hvm-saved";
    let cfg = config(
        &d,
        name,
        &guest.elf,
        &format!("disk = [ '{},raw,xvda,rw' ]\n", disk.display()),
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console(name, "kxen-hvm-guest: command? ");

    let saved = d.dir.join("hvm.save");
    let out = d.kxl(&["save", name, saved.to_str().unwrap()]);
    assert!(out.status.success(), "kxl save: {}", show(&out));
    assert!(!d.is_listed(name), "save without -c destroys the domain");
    kxen_tests::stream::verify_stream_v2(
        &saved,
        "xl",
        &[
            "Libxc Record: HVM context",
            "Libxl Record: Emulator context",
        ],
    );
    let out = d.kxl(&["restore", saved.to_str().unwrap()]);
    assert!(out.status.success(), "kxl restore: {}", show(&out));
    assert!(d.is_listed(name), "the restored domain is listed");

    command(&d, name, b'v');
    wait_gone(&d, name);
    let log = d.console_log(name);
    assert_eq!(
        log.matches("kxen-hvm-guest: zero page at rsi").count(),
        1,
        "the guest started once:\n{log}"
    );
    for line in [
        "virtio-blk sector 0 starts 4e45584b",
        "virtio-blk wrote sector 1",
        "virtio-blk reset, VMM alive",
    ] {
        assert!(log.contains(line), "missing {line:?}:\n{log}");
    }
    assert!(!log.contains("FAIL"), "{log}");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after[512..1024], image[..512], "sector 1 holds sector 0");
}

#[test]
fn xen_platform_pci_appears_when_asked_for() {
    let guest = hvm_guest("platform");
    let d = Dom0::new("hvm-platform");
    let cfg = config(&d, "hvm-xpp", &guest.elf, "xen_platform_pci = 1\n");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("hvm-xpp", "command? ");
    let log = d.console_log("hvm-xpp");
    assert!(log.contains("pci 00:02.0 00015853"), "{log}");
    assert!(log.contains("unplug magic 000049d2"), "{log}");
    command(&d, "hvm-xpp", b'p');
    wait_gone(&d, "hvm-xpp");
}

/// `-t pv` and `-t serial` reach two different consoles of an HVM
/// domain: each replays its own log, and what is typed on the PV console
/// never reaches the serial line the guest reads its commands from.
#[test]
fn hvm_console_types() {
    let guest = hvm_guest("consoles");
    let d = Dom0::new("hvm-consoles");
    let cfg = config(&d, "hvm-cons", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    d.wait_console("hvm-cons", "command? ");
    // The PV console of an HVM domain exists (for PVHVM guests) and keeps
    // a log of its own, which an attach replays. This guest never writes
    // to it, so the test puts a line there to recognise it by.
    let pv_log = d.dir.join("state/console/guest-hvm-cons-pv.log");
    let pv_marker = "kxen-test: this is the PV console's log";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&pv_log)
        .and_then(|mut f| writeln!(f, "{pv_marker}"))
        .unwrap_or_else(|e| panic!("{}: {e}", pv_log.display()));
    // 'x' typed here goes into the PV console's input ring, which the
    // guest does not read; on the serial line it would be a command.
    let pv = attach_and_type(&d, &["console", "-t", "pv", "hvm-cons"], pv_marker, b"x");
    assert!(
        !pv.contains("kxen-hvm-guest"),
        "serial output on -t pv:\n{pv}"
    );
    // Explicit serial is the default console: the guest's own output,
    // and the command typed there is the first byte the guest reads.
    let serial = attach_and_type(
        &d,
        &["console", "-t", "serial", "hvm-cons"],
        "kxen-hvm-guest: command? ",
        b"p",
    );
    assert!(
        !serial.contains(pv_marker),
        "PV output on -t serial:\n{serial}"
    );
    wait_gone(&d, "hvm-cons");
    let log = d.console_log("hvm-cons");
    assert!(log.contains("kxen-hvm-guest: got p"), "{log}");
    assert!(
        !log.contains("kxen-hvm-guest: got x"),
        "a byte typed on the PV console reached the serial line:\n{log}"
    );

    // A PVH domain has no serial line.
    let pvh = d.config("pvh-cons", "");
    d.ok(&["create", pvh.to_str().unwrap()]);
    d.wait_console("pvh-cons", "service ready");
    // No input: kxl exits before reading it, and a write would race EPIPE.
    let out = d.kxl(&["console", "-t", "serial", "pvh-cons"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such console"),
        "{}",
        show(&out)
    );
    d.ok(&["destroy", "pvh-cons"]);
}

/// Instructions KVM's emulator gives up on in ring 0 on PVM hosts (fnop,
/// fldcw, `addr32 int3`, vmclear) get what a CPU gives them: their effect,
/// #BP returning past the whole prefixed instruction, and #UD for a VMX
/// instruction in a vCPU whose CPUID offers no VMX. The domain must not
/// end over any of them. On VT-x/SVM hosts the CPU runs them itself and
/// the verdicts are the same.
#[test]
fn instructions_the_emulator_lacks_get_architectural_answers() {
    let guest = hvm_guest("unemulated");
    let d = Dom0::new("hvm-unemulated");
    let cfg = config(&d, "hvm-unemul", &guest.elf, "");
    d.ok(&["create", cfg.to_str().unwrap()]);
    command(&d, "hvm-unemul", b'x');
    wait_gone(&d, "hvm-unemul");
    let log = d.console_log("hvm-unemul");
    let vmm = vmm_log(&d, "hvm-unemul");
    for line in [
        "kxen-hvm-guest: fnop ran",
        "kxen-hvm-guest: x87 control word 0000027f",
        "kxen-hvm-guest: addr32 int3: #BP returned past it",
        "kxen-hvm-guest: vmclear: #UD at the instruction",
    ] {
        assert!(
            log.contains(line),
            "missing {line:?}:\nconsole:\n{log}\nvmm:\n{vmm}"
        );
    }
    assert!(!log.contains("FAIL"), "console:\n{log}\nvmm:\n{vmm}");
    assert!(
        !vmm.contains("instruction emulation failed"),
        "the domain was ended over an instruction:\n{vmm}"
    );
    // It powered itself off rather than crashing.
    let dmesg = d.ok(&["dmesg"]);
    let ended = dmesg
        .lines()
        .find(|l| l.contains("(hvm-unemul)") && l.contains(" = "))
        .unwrap_or_else(|| panic!("no end of hvm-unemul in\n{dmesg}"));
    assert!(ended.contains("on_poweroff"), "{ended}\nvmm:\n{vmm}");
}
