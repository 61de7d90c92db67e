//! What Xen does for PVH guests that kxen must do too, through kxl and
//! kxend: `elf32-x86-64` kernels boot, and port 0xE9 lines reach
//! `kxl dmesg` and the domain's VMM log.

use std::path::Path;
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::{elf32_x86_64, guest32};

/// The greeting the smoke guest writes to port 0xE9.
const E9_LINE: &str = "hello from a 32-bit PVH guest on port 0xe9";

fn config(d: &Dom0, name: &str, kernel: &Path) -> std::path::PathBuf {
    let path = d.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 16\nvcpus = 1\n",
            kernel.display()
        ),
    )
    .unwrap();
    path
}

/// Create `name` from `kernel` and wait (bounded) until kxend has seen
/// it end, which the smoke guest does by itself; returns `kxl dmesg`.
fn run_to_end(d: &Dom0, name: &str, kernel: &Path) -> String {
    let cfg = config(d, name, kernel);
    let out = d.kxl(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let start = Instant::now();
    loop {
        let dmesg = d.ok(&["dmesg"]);
        if dmesg
            .lines()
            .any(|l| l.contains(&format!("({name})")) && l.contains(" = "))
        {
            return dmesg;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not end:\n{dmesg}\n{}",
            vmm_log(d, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VMM log of domain `name` (`logs/vmm-DOMID-NAME.log`).
fn vmm_log(d: &Dom0, name: &str) -> String {
    let suffix = format!("-{name}.log");
    std::fs::read_dir(d.dir.join("state/logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// A PVH kernel linked as `elf32-x86-64` (ELFCLASS32, EM_X86_64, a
/// PHYS32_ENTRY note) boots as Xen boots it: the smoke guest makes its
/// hypercalls and powers off cleanly (its checks crash it otherwise).
#[test]
fn elf32_x86_64_pvh_kernel_boots_through_kxl() {
    let kernel = elf32_x86_64(&guest32("smoke", "x32", |s| s));
    let d = Dom0::new("x32");
    let dmesg = run_to_end(&d, "x32", &kernel);
    let log = vmm_log(&d, "x32");
    let ended = dmesg
        .lines()
        .find(|l| l.contains("(x32)") && l.contains(" = "))
        .unwrap_or_default();
    assert!(
        ended.contains("on_poweroff"),
        "{ended}\n{dmesg}\n--- vmm log ---\n{log}"
    );
    assert!(
        log.contains(") hello from a 32-bit PVH guest\n"),
        "--- vmm log ---\n{log}"
    );
}

/// What the guest writes to port 0xE9 shows in `kxl dmesg` as Xen shows
/// it, `(dN) ` then the console timestamp then the line, and in the
/// domain's VMM log as `(dN) line`.
#[test]
fn port_e9_lines_reach_kxl_dmesg_and_the_vmm_log() {
    let kernel = guest32("smoke", "e9", |s| s);
    let d = Dom0::new("e9");
    let cfg = config(&d, "e9", &kernel);
    let out = d.kxl(&["create", "-p", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let domid = d.ok(&["domid", "e9"]).trim().to_string();
    d.ok(&["unpause", "e9"]);
    let start = Instant::now();
    let prefix = format!("(d{domid}) [");
    let line = loop {
        let dmesg = d.ok(&["dmesg"]);
        if let Some(line) = dmesg
            .lines()
            .find(|l| l.starts_with(&prefix) && l.ends_with(&format!("] {E9_LINE}")))
        {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {prefix}...] {E9_LINE} in kxl dmesg:\n{dmesg}\n--- vmm log ---\n{}",
            vmm_log(&d, "e9")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // `(dN) [YYYY-MM-DD HH:MM:SS.mmm] line`.
    let stamp = &line[prefix.len() - 1..line.len() - E9_LINE.len() - 1];
    assert_eq!(stamp.len(), "[2024-01-01 00:00:00.000]".len(), "{line}");
    // The VMM log has it as well, once the line is written.
    let start = Instant::now();
    let expected = format!("(d{domid}) {E9_LINE}\n");
    while !vmm_log(&d, "e9").contains(&expected) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {expected:?} in the VMM log:\n{}",
            vmm_log(&d, "e9")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
