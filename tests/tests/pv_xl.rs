//! Classic PV domains through the toolstack, as a Xen user creates them:
//! `kxl create` of the PV test kernel (`tests/guestpv/pv.S`) from a cfg
//! with `type = "pv"` and from one without `type` (xl's default is pv),
//! with the real kxl, kxend and kxen-vmm. The guest prints its checks on
//! its PV console (the ring kxend serves) as well as with console_io, and
//! powers off; kxend applies on_poweroff / on_crash as for any domain.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::stream::verify_stream_v2;
use kxen_tests::{pv_test_kernel, test_guest};

/// How long a domain may take to reach a state `kxl list` shows.
const STATE_LIMIT: Duration = Duration::from_secs(60);
/// The guest's last line before SCHEDOP_shutdown(poweroff).
const DONE: &str = "kxen-pv-guest: done, powering off";
/// The fewest checks the PV test kernel makes (its PASS lines when this
/// test was written: the MMU, trap and hypercall checks pv_boot names).
const MIN_CHECKS: usize = 70;

/// The PV test kernel in `d`'s directory, with `defsyms` (`NAME=VALUE`)
/// selecting a variant of it.
fn pv_kernel(d: &Dom0, variant: &str, defsyms: &[&str]) -> String {
    let dir = d.dir.join(format!("guest-{variant}"));
    pv_test_kernel(&dir, defsyms).display().to_string()
}

/// An xl.cfg for the PV test kernel; `type_line` is `type = "pv"` or
/// empty (no type: xl's default, pv).
fn write_cfg(d: &Dom0, name: &str, type_line: &str, kernel: &str, extra: &str) -> PathBuf {
    let path = d.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!("name = \"{name}\"\n{type_line}\nkernel = \"{kernel}\"\nmemory = 64\n{extra}"),
    )
    .unwrap();
    path
}

/// `kxl list`'s row for `name`: (domid, state flags), if listed.
fn listed(d: &Dom0, name: &str) -> Option<(u32, String)> {
    let list = d.ok(&["list"]);
    list.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.first() == Some(&name)).then(|| {
            let domid = fields[1].parse().expect("domid column");
            (domid, fields[4].to_string())
        })
    })
}

/// Wait until `kxl list` shows `name` in a state with flag `flag`
/// (`None`: until it is no longer listed).
fn wait_listed(d: &Dom0, name: &str, flag: Option<char>) {
    let start = Instant::now();
    loop {
        let row = listed(d, name);
        let reached = match (flag, &row) {
            (None, None) => true,
            (Some(f), Some((_, state))) => state.contains(f),
            _ => false,
        };
        if reached {
            return;
        }
        // Gone while a state was awaited: it will not come back (no cfg
        // here restarts a domain).
        assert!(
            flag.is_none() || row.is_some(),
            "{name} went away instead of reaching {flag:?}; console:\n{}\nhypervisor log:\n{}",
            d.console_log(name),
            d.ok(&["dmesg"])
        );
        assert!(
            start.elapsed() < STATE_LIMIT,
            "{name} never reached {flag:?} in kxl list (last row {row:?}); console:\n{}\nhypervisor log:\n{}",
            d.console_log(name),
            d.ok(&["dmesg"])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `(dN) ` console_io lines of domain `domid` in its VMM log, without
/// the prefix.
fn console_io_lines(d: &Dom0, domid: u32, name: &str) -> Vec<String> {
    let log = std::fs::read_to_string(d.dir.join(format!("state/logs/vmm-{domid}-{name}.log")))
        .unwrap_or_default();
    let prefix = format!("(d{domid}) ");
    log.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// The guest's checks, read from its PV console: every one passed, there
/// are at least MIN_CHECKS, and the PV console carries every line the
/// guest also wrote with console_io (the ring lost nothing).
fn assert_checks_passed(d: &Dom0, name: &str, domid: u32) {
    assert_checks_passed_across(d, name, &[domid]);
}

/// [`assert_checks_passed`] for a guest that ran as the domains `domids`
/// in turn (saved and restored): their console_io lines, in that order.
fn assert_checks_passed_across(d: &Dom0, name: &str, domids: &[u32]) {
    let console = d.console_log(name);
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let failed: Vec<_> = lines.iter().filter(|l| l.contains(": FAIL")).collect();
    assert!(
        failed.is_empty(),
        "{name}: failed checks {failed:?}\n{console}"
    );
    let passed = lines
        .iter()
        .filter(|l| l.starts_with("kxen-pv-guest: PASS "))
        .count();
    assert!(
        passed >= MIN_CHECKS,
        "{name}: {passed} PASS lines on the PV console, expected at least {MIN_CHECKS}\n{console}"
    );
    assert!(
        lines.contains(&"kxen-pv-guest: hello from CPL3"),
        "{console}"
    );
    let summary =
        format!("kxen-pv-guest: summary: {passed:#018x} passed, 0x0000000000000000 failed");
    assert!(
        lines.contains(&summary.as_str()),
        "{name}: no {summary:?} line on the PV console\n{console}"
    );
    let io: Vec<String> = domids
        .iter()
        .flat_map(|&domid| console_io_lines(d, domid, name))
        .collect();
    let io: Vec<&str> = io.iter().map(|l| l.trim_end()).collect();
    assert_eq!(
        lines, io,
        "{name}: the PV console and console_io differ\nPV console:\n{console}"
    );
}

/// `kxl create` of the PV test kernel from a cfg with `type = "pv"` and
/// from one with no `type` (the first with two vCPUs): each is listed as a paused PV domain (`kxl
/// list`, and `"type": "pv"` in `kxl list -l`), runs once unpaused, prints
/// all its checks on its PV console, and powers off, after which kxend
/// applies on_poweroff (preserve: listed as shut down, then destroyed;
/// the default destroy: gone).
#[test]
fn kxl_creates_pv_domains_with_and_without_type() {
    let d = Dom0::new("pvxl");
    let kernel = pv_kernel(&d, "full", &[]);
    for (name, type_line, on_poweroff) in [
        // Two vCPUs: the kernel brings up the second with
        // VCPUOP_initialise and exchanges IPIs with it (smp.S).
        (
            "pvtyped",
            "type = \"pv\"",
            "on_poweroff = \"preserve\"\nvcpus = 2\n",
        ),
        ("pvdefault", "", ""),
    ] {
        let cfg = write_cfg(&d, name, type_line, &kernel, on_poweroff);
        let cfg = cfg.to_str().unwrap();
        d.ok(&["create", "-p", cfg]);
        let (domid, state) =
            listed(&d, name).unwrap_or_else(|| panic!("{name} not listed after create -p"));
        assert!(state.contains('p'), "{name} not paused: {state}");

        let long: serde_json::Value =
            serde_json::from_str(&d.ok(&["list", "-l", name])).expect("list -l is JSON");
        let config = &long[0]["config"];
        assert_eq!(long[0]["domid"], domid, "{long}");
        assert_eq!(config["c_info"]["type"], "pv", "{long}");
        assert!(config["b_info"].get("type.pv").is_some(), "{long}");

        d.ok(&["unpause", name]);
        d.wait_console(name, DONE);
        match on_poweroff {
            "" => wait_listed(&d, name, None),
            _ => wait_listed(&d, name, Some('s')),
        }
        assert_checks_passed(&d, name, domid);
        if name == "pvtyped" {
            let console = d.console_log(name);
            assert!(
                console.contains("PASS 2 vCPUs exchange IPIs through their event callbacks"),
                "{name}: vcpus = 2 did not give the kernel a second vCPU\n{console}"
            );
        }
        let action = if on_poweroff.is_empty() {
            "destroy"
        } else {
            "preserve"
        };
        let dmesg = d.ok(&["dmesg"]);
        assert!(
            dmesg.contains(&format!(
                "domain {domid} ({name}) shutdown: poweroff; on_poweroff = {action}"
            )),
            "{dmesg}"
        );
        if action == "preserve" {
            d.ok(&["destroy", name]);
            wait_listed(&d, name, None);
        }
    }
}

/// The contents of page `pfn` in a PV savefile, read with kxen's own
/// stream reader.
fn page_in_image(image: &std::path::Path, pfn: u64) -> Vec<u8> {
    use kxen_stream::libxc::LibxcRecord;
    let mut libxc = kxen_tests::stream::libxc_records(image);
    let mut page = [0u8; 4096];
    loop {
        match libxc.next_record().unwrap() {
            LibxcRecord::PageData(entries) => {
                for e in entries.iter().filter(|e| e.page_type.has_contents()) {
                    libxc.read_page(&mut page).unwrap();
                    if e.pfn == pfn {
                        return page.to_vec();
                    }
                }
            }
            LibxcRecord::End => panic!("no page {pfn:#x} in {}", image.display()),
            _ => {}
        }
    }
}

/// A running classic PV domain that does not offer Xen's suspend protocol
/// (the PV test kernel), paused mid-run with `kxl pause` and saved with
/// `kxl save` (issue 17): transparently, its PV MMU (typed and pinned
/// page tables in PAGE_DATA), its vCPUs (X86_PV_VCPU_BASIC/EXTENDED) and
/// its whole Xen state in Xen's PV stream, which Debian's verifier
/// accepts. `kxl restore` makes a new domain of it that runs the rest of
/// its checks: the trap table, callbacks, user tables and event channels
/// it set up before the save still work, the second vCPU starts, and
/// every check passes, although the image's copy of kxen's IDT page was
/// overwritten (kxen writes its own pages again). The SAVE_POINT variant announces a window (a
/// few seconds of spinning at CPL3) after its user-mode checks.
#[test]
fn running_pv_domain_is_saved_and_restored_mid_run() {
    let d = Dom0::new("pvsave");
    let name = "pvsave";
    let kernel = pv_kernel(&d, "savepoint", &["SAVE_POINT=0x300000000"]);
    let cfg = write_cfg(&d, name, "type = \"pv\"", &kernel, "vcpus = 2\n");
    d.ok(&["create", "-p", cfg.to_str().unwrap()]);
    let (first, _) = listed(&d, name).expect("listed after create -p");
    d.ok(&["unpause", name]);
    d.wait_console(name, "kxen-pv-guest: at the save point");
    d.ok(&["pause", name]);
    wait_listed(&d, name, Some('p'));
    let console = d.console_log(name);
    assert!(
        !console.contains("after the save point") && !console.contains(DONE),
        "the guest left the save window before the pause:\n{console}"
    );
    let image = d.dir.join("pvsave.save");
    let image_arg = image.to_str().unwrap();
    d.ok(&["save", name, image_arg]);
    assert!(listed(&d, name).is_none(), "the saved domain is gone");
    verify_stream_v2(
        &image,
        "xl",
        &[
            "x86 PV",
            "64bit guest, 4 levels of pagetables",
            "Libxc Record: x86 PV vcpu basic",
            "Libxc Record: x86 PV vcpu extended",
            "Page Data records",
        ],
    );
    // The image as an attacker might hand it over: the hypervisor's IDT
    // page (a special page the stream carries like any other) overwritten.
    // kxen writes its own pages again on restore, so the guest's bounces
    // and event upcalls still go through kxen's IDT.
    let idt = page_in_image(&image, kxen_vmm::pv::idt_gfn());
    let mut bytes = std::fs::read(&image).unwrap();
    let at = bytes
        .windows(idt.len())
        .position(|w| w == idt.as_slice())
        .expect("the IDT page's contents in the image");
    bytes[at..at + idt.len()].fill(0xff);
    std::fs::write(&image, &bytes).unwrap();
    d.ok(&["restore", image_arg]);
    let (second, _) = listed(&d, name).expect("listed after restore");
    assert_ne!(first, second, "the restore is a new domain");
    d.wait_console(name, DONE);
    wait_listed(&d, name, None);
    let console = d.console_log(name);
    assert!(
        console.contains("PASS int3 still bounces after the save point"),
        "{console}"
    );
    assert!(
        console.contains("PASS 2 vCPUs exchange IPIs through their event callbacks"),
        "the second vCPU did not start after the restore:\n{console}"
    );
    assert_checks_passed_across(&d, name, &[first, second]);
}

/// The PV kernel that takes an exception it registered no handler for
/// (the UNHANDLED_TRAP variant: #DE) crashes; kxend applies on_crash
/// (preserve: listed as crashed). A paused PV domain is destroyed with
/// `kxl destroy` before it ever ran.
#[test]
fn pv_crash_and_destroy_follow_the_cfg() {
    let d = Dom0::new("pvxlcrash");
    let kernel = pv_kernel(&d, "unhandled", &["UNHANDLED_TRAP=1"]);
    let cfg = write_cfg(
        &d,
        "pvcrash",
        "type = \"pv\"",
        &kernel,
        "on_crash = \"preserve\"\n",
    );
    d.ok(&["create", cfg.to_str().unwrap()]);
    wait_listed(&d, "pvcrash", Some('c'));
    let console = d.console_log("pvcrash");
    assert!(
        console.contains("kxen-pv-guest: PASS set_trap_table registers #BP #UD #GP"),
        "{console}"
    );
    assert!(!console.contains("after the #DE"), "{console}");
    assert!(!console.contains(DONE), "{console}");
    let dmesg = d.ok(&["dmesg"]);
    assert!(
        dmesg.lines().any(|l| l.contains("(pvcrash) crashed: ")
            && l.contains("no handler registered for vector 0")
            && l.ends_with("; on_crash = preserve")),
        "{dmesg}"
    );
    d.ok(&["destroy", "pvcrash"]);
    wait_listed(&d, "pvcrash", None);

    let cfg = write_cfg(&d, "pvpaused", "", &kernel, "");
    d.ok(&["create", "-p", cfg.to_str().unwrap()]);
    let (_, state) = listed(&d, "pvpaused").expect("pvpaused listed");
    assert!(state.contains('p'), "{state}");
    d.ok(&["destroy", "pvpaused"]);
    assert_eq!(listed(&d, "pvpaused"), None);
    // It never ran: nothing on its console.
    assert!(!d.console_log("pvpaused").contains("kxen-pv-guest"));
}

/// A kernel that carries only the PVH entry note, in a cfg without `type`
/// (xl's default, pv) or with `type = "pv"`: `kxl create` fails with xl's
/// status 1 and one line naming the missing PV notes and `type = "pvh"`,
/// and leaves no domain behind.
#[test]
fn pvh_only_kernel_as_pv_is_refused_with_advice() {
    let d = Dom0::new("pvxlrefuse");
    let guest = test_guest().display().to_string();
    for (name, type_line) in [("notype", ""), ("typed", "type = \"pv\"")] {
        let cfg = write_cfg(&d, name, type_line, &guest, "");
        let cfg = cfg.to_str().unwrap();
        let out = d.kxl(&["create", cfg]);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "Parsing config from {cfg}\nkxl: domain {name}: type \"pv\": kernel {guest}: \
                 this kernel carries only PVH notes (XEN_ELFNOTE_PHYS32_ENTRY) and no PV notes \
                 (ENTRY, VIRT_BASE, GUEST_OS); use type = \"pvh\"\n"
            ),
            "{}",
            show(&out)
        );
        assert_eq!(listed(&d, name), None);
    }
}

/// `kxl info` offers classic PV beside HVM, as Xen does: xen_caps starts
/// with `xen-3.0-x86_64`, and virt_caps names pv.
#[test]
fn kxl_info_lists_the_pv_abi() {
    let d = Dom0::new("pvxlinfo");
    let info = d.ok(&["info"]);
    let field = |key: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {key} in kxl info:\n{info}"))
    };
    let caps = field("xen_caps");
    let caps: Vec<&str> = caps.split_whitespace().collect();
    assert_eq!(caps.first(), Some(&"xen-3.0-x86_64"), "{info}");
    assert!(caps.contains(&"hvm-3.0-x86_64"), "{info}");
    assert!(!caps.contains(&"xen-3.0-x86_32p"), "{info}");
    let virt = field("virt_caps");
    assert!(virt.split_whitespace().any(|c| c == "pv"), "{info}");
}
