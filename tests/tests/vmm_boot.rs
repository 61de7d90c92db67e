//! kxen-vmm's loader and error paths, with small hand-assembled guests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kxen_tests::{guest32, kxen_vmm, run_with_limit, KillOnDrop};

/// The 32-bit smoke guest.
fn smoke_guest32() -> PathBuf {
    guest32("smoke", "smoke", |s| s)
}

/// A 32-bit ELF PVH kernel boots, makes 32-bit hypercalls through the
/// hypercall page and powers off.
#[test]
fn elf32_guest_boots_and_powers_off() {
    let elf = smoke_guest32();
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", elf.to_str().unwrap(), "--memory", "16"],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    assert!(
        run.stderr.contains("(d1) hello from a 32-bit PVH guest"),
        "{t}"
    );
    assert_eq!(run.code, Some(0), "{t}");
}

/// The memory_op, grant_table_op and vcpu_op calls the smoke guest makes
/// from 32-bit mode, each with its structs in the compat layout; it
/// prints a verdict line for each.
const MEMOP32_CHECKS: [&str; 9] = [
    "memop32 add_to_physmap(shared_info)",
    "memop32 shared_info vcpu_time",
    "memop32 memory_map",
    "memop32 current_reservation",
    "memop32 decrease_reservation",
    "memop32 populate_physmap",
    "memop32 gnttab setup_table",
    "memop32 gnttab query_size",
    "memop32 vcpu_op get_runstate_info",
];

/// A 32-bit PVH guest's memory_op structs are read in their compat
/// layout: it maps shared_info and sees Xen's time record there, gets the
/// memory map with a RAM entry, and balloons a page out and back; its
/// grant setup_table gets 4-byte frame numbers, and get_runstate_info
/// writes the 44-byte compat record.
#[test]
fn compat_memory_ops_from_a_32bit_guest() {
    let elf = guest32("smoke", "memop32", |s| s);
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", elf.to_str().unwrap(), "--memory", "16"],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    for check in MEMOP32_CHECKS {
        let verdict = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("(d1) {check} rc=")));
        let Some(verdict) = verdict else {
            panic!("no verdict for {check:?}:\n{t}");
        };
        assert!(verdict.ends_with(" ok"), "{verdict}\n{t}");
    }
    assert_eq!(run.code, Some(0), "{t}");
}

/// What the 32-bit events guest (`tests/guest32/events.S`) checks with
/// shared_info in Xen's compat layout; it prints a verdict line for each.
const EVT32_CHECKS: [&str; 10] = [
    "evt32 add_to_physmap(shared_info)",
    "evt32 set_param(CALLBACK_IRQ)",
    "evt32 wallclock",
    "evt32 max_pfn",
    "evt32 vcpu_time",
    "evt32 loopback upcall",
    "evt32 masked port stays silent",
    "evt32 unmask delivers",
    "evt32 register_vcpu_info(offset 4)",
    "evt32 upcall via the registered vcpu_info",
];

/// The verdict line of `check` in `stderr`; panics if missing or FAIL.
fn assert_verdict_ok(stderr: &str, check: &str, transcript: &str) {
    let verdict = stderr
        .lines()
        .find(|l| l.contains(&format!("(d1) {check} rc=")));
    let Some(verdict) = verdict else {
        panic!("no verdict for {check:?}:\n{transcript}");
    };
    assert!(verdict.ends_with(" ok"), "{verdict}\n{transcript}");
}

/// A guest that sets up events from 32-bit mode gets Xen's compat
/// shared_info layout: the wallclock and max_pfn at their 32-bit offsets,
/// a loopback event's pending bit in u32 word port/32 and its selector in
/// the u32 at vcpu_info + 4, a port masked in the compat mask word silent
/// until EVTCHNOP_unmask, a vcpu_info registered at a 4-byte aligned
/// offset with every selector bit set.
#[test]
fn compat_shared_info_events_from_a_32bit_guest() {
    let elf = guest32("events", "evt32", |s| s);
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", elf.to_str().unwrap(), "--memory", "16"],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    for check in EVT32_CHECKS {
        assert_verdict_ok(&run.stderr, check, &t);
    }
    assert_eq!(run.code, Some(0), "{t}");
}

/// The ramdisk arrives as module 0 and the command line in the boot block.
#[test]
fn ramdisk_and_cmdline_reach_the_guest() {
    let elf = guest32("ramdisk", "ramdisk", |s| s);
    let rd = std::env::temp_dir().join(format!("kxen-rd-{}", std::process::id()));
    let mut data = b"KXENRDSK".to_vec();
    data.resize(4096, 0x5a);
    std::fs::write(&rd, &data).unwrap();
    let run = run_with_limit(
        &kxen_vmm(),
        &[
            "--kernel",
            elf.to_str().unwrap(),
            "--ramdisk",
            rd.to_str().unwrap(),
            "--cmdline",
            "ramdisk-test",
            "--memory",
            "16",
        ],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    assert!(run.stderr.contains("ramdisk and boot block ok"), "{t}");
    assert_eq!(run.code, Some(0), "{t}");
}

#[test]
fn missing_kernel_is_an_error() {
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", "/nonexistent/kernel"],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(1), "{}", run.transcript());
    assert!(
        run.stderr.contains("/nonexistent/kernel"),
        "{}",
        run.transcript()
    );
}

#[test]
fn non_elf_kernel_is_rejected() {
    let bogus = std::env::temp_dir().join(format!("kxen-bogus-{}", std::process::id()));
    std::fs::write(&bogus, b"this is not an ELF file at all").unwrap();
    let run = run_with_limit(
        &kxen_vmm(),
        &["--kernel", bogus.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(1), "{}", run.transcript());
    assert!(
        run.stderr.contains("not an ELF image"),
        "{}",
        run.transcript()
    );
}

/// Each out-of-range size is refused by its own check, with a message
/// that names it (a later step failing instead would also exit 1).
#[test]
fn absurd_sizes_are_rejected() {
    let elf = smoke_guest32();
    for (args, message) in [
        (
            ["--memory", "1"],
            "kxen-vmm: guest memory: guest memory size 1 MiB is out of range",
        ),
        (["--vcpus", "0"], "kxen-vmm: vcpus=0 (1..=32)"),
        (["--vcpus", "999"], "kxen-vmm: vcpus=999 (1..=32)"),
    ] {
        let mut all = vec!["--kernel", elf.to_str().unwrap()];
        all.extend_from_slice(&args);
        let run = run_with_limit(&kxen_vmm(), &all, Duration::from_secs(30));
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.transcript());
        assert!(
            run.stderr.lines().any(|l| l == message),
            "{args:?}: no line {message:?} in {}",
            run.transcript()
        );
    }
}

/// SIGTERM destroys a running domain promptly with status 8.
#[test]
fn sigterm_destroys_the_domain() {
    use std::process::{Command, Stdio};
    // The smoke guest minus its shutdown: it spins forever.
    let spin = guest32("smoke", "spin", |s| {
        s.replace("    call hcpage + 29*32\n1:", "1:")
    });
    let mut child = KillOnDrop(
        Command::new(kxen_vmm())
            .args(["--kernel", spin.to_str().unwrap(), "--memory", "16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The guest's greeting is its last hypercall before the loop: once
    // the VMM has printed it, the vCPU is spinning in guest code.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let greeting = "(d1) hello from a 32-bit PVH guest";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut transcript = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => {
                transcript.push_str(&line);
                transcript.push('\n');
                if line.contains(greeting) {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no {greeting:?} ({e:?}); stderr:\n{transcript}");
            }
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "spinning guest exited early:\n{transcript}"
    );
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "VMM ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    reader.join().unwrap();
    transcript.extend(seen.try_iter().map(|l| l + "\n"));
    assert_eq!(status.code(), Some(8), "{transcript}");
}
