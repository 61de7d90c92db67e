//! What a user reads when kxl fails: one line, in xl's manner, saying what
//! went wrong, and xl's exit status. Real kxl, kxend and kxen-vmm.

use std::path::Path;
use std::process::Output;

use kxen_tests::dom0::{show, Dom0};
use kxen_tests::test_guest;

/// `out` failed with status 1 and printed exactly `stderr` (nothing on
/// stdout, nothing after it).
fn failed_with(out: &Output, stderr: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", show(out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        stderr,
        "{}",
        show(out)
    );
    assert!(out.stdout.is_empty(), "{}", show(out));
}

fn write_config(d: &Dom0, name: &str, body: &str) -> String {
    let path = d.dir.join(format!("{name}.cfg"));
    std::fs::write(&path, format!("name = \"{name}\"\n{body}")).unwrap();
    path.display().to_string()
}

/// `kxl create` of `body` fails with exactly `line` after xl's "Parsing
/// config" line, and leaves no domain behind.
fn create_fails(d: &Dom0, name: &str, body: &str, line: &str) {
    let cfg = write_config(d, name, body);
    let out = d.kxl(&["create", &cfg]);
    failed_with(&out, &format!("Parsing config from {cfg}\n{line}\n"));
    let list = d.ok(&["list"]);
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name)),
        "{name} was left behind:\n{list}"
    );
}

#[test]
fn create_failures_are_one_line_each() {
    let d = Dom0::new("kxlerr");
    let guest = test_guest().display().to_string();
    let pvh = |extra: &str| format!("type = \"pvh\"\nkernel = \"{guest}\"\n{extra}");

    create_fails(
        &d,
        "bad2",
        "type = \"pvh\"\nkernel = \"/nonexist\"\n",
        "kxl: domain bad2: cannot read kernel /nonexist: No such file or directory",
    );
    create_fails(
        &d,
        "dirkernel",
        "type = \"pvh\"\nkernel = \"/\"\n",
        "kxl: domain dirkernel: cannot read kernel /: Is a directory",
    );
    create_fails(
        &d,
        "noramdisk",
        &pvh("ramdisk = \"/nonexist.initrd\"\n"),
        "kxl: domain noramdisk: cannot read ramdisk /nonexist.initrd: No such file or directory",
    );
    create_fails(
        &d,
        "nodisk",
        &pvh("disk = [ '/nonexist.img,raw,xvda,rw' ]\n"),
        "kxl: domain nodisk: Disk vdev=xvda failed to stat: /nonexist.img: No such file or directory",
    );
    // No type: xl's default, classic PV. The test guest carries only the
    // PVH entry note, and the refusal says so and what to set instead.
    create_fails(
        &d,
        "classic",
        &format!("kernel = \"{guest}\"\n"),
        &format!("kxl: domain classic: type \"pv\": kernel {guest}: this kernel carries only PVH notes (XEN_ELFNOTE_PHYS32_ENTRY) and no PV notes (ENTRY, VIRT_BASE, GUEST_OS); use type = \"pvh\""),
    );
    create_fails(
        &d,
        "tiny",
        &pvh("memory = 1\n"),
        "kxl: domain tiny: memory = 1 MiB is out of range: kxen runs guests of 2 to 1048576 MiB",
    );
    create_fails(
        &d,
        "huge",
        &pvh("memory = 64\nmaxmem = 2000000\n"),
        "kxl: domain huge: maxmem = 2000000 MiB is out of range: kxen runs guests of 2 to 1048576 MiB",
    );
    create_fails(
        &d,
        "wide",
        &pvh("vcpus = 33\n"),
        "kxl: domain wide: vcpus = 33 is out of range: kxen runs 1 to 32 vCPUs",
    );
    create_fails(
        &d,
        "nokernel",
        "type = \"pvh\"\nkernel = \"\"\n",
        "kxl: domain nokernel: the config has no kernel (set kernel=, or bootloader = \"pygrub\" to boot the one on its disk)",
    );

    // A file kxend can read but kxen-vmm cannot boot: kxen-vmm's own
    // reason, relayed, instead of the control socket it never opened.
    let junk = d.dir.join("junk-kernel");
    std::fs::write(&junk, b"not a kernel\n").unwrap();
    create_fails(
        &d,
        "notelf",
        &format!("type = \"pvh\"\nkernel = \"{}\"\n", junk.display()),
        &format!(
            "kxl: domain notelf: kernel {}: not an ELF image",
            junk.display()
        ),
    );

    // A busy name: libxl's words.
    let busy = write_config(&d, "busy", &pvh("cmdline = \"kxen.mode=service\"\n"));
    d.ok(&["create", &busy]);
    let out = d.kxl(&["create", &busy]);
    failed_with(
        &out,
        &format!(
            "Parsing config from {busy}\nkxl: domain busy: Domain with name \"busy\" already exists.\n"
        ),
    );
    // The running one is untouched.
    d.wait_console("busy", "kxen-testguest: service ready");

    // A missing image on hot-plug gets the same check as at create.
    let out = d.kxl(&["block-attach", "busy", "/nonexist.img,raw,xvdb,rw"]);
    failed_with(
        &out,
        "kxl: Disk vdev=xvdb failed to stat: /nonexist.img: No such file or directory\n",
    );
    d.ok(&["destroy", "busy"]);
}

/// Every command that names a domain answers an unknown one as xl does:
/// find_domain's message (block-attach and block-list leave out the rc),
/// status 1.
#[test]
fn unknown_domains_get_xls_message() {
    let d = Dom0::new("kxlunknown");
    let with_rc = "nosuch is an invalid domain identifier (rc=-6)\n";
    let without_rc = "nosuch is an invalid domain identifier\n";
    let image = d.dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("{},raw,xvdb,rw", image.display());
    let cases: &[(&[&str], &str)] = &[
        (&["destroy", "nosuch"], with_rc),
        (&["pause", "nosuch"], with_rc),
        (&["unpause", "nosuch"], with_rc),
        (&["shutdown", "nosuch"], with_rc),
        (&["reboot", "nosuch"], with_rc),
        (&["console", "nosuch"], with_rc),
        (&["vcpu-list", "nosuch"], with_rc),
        (&["uptime", "nosuch"], with_rc),
        (&["mem-set", "nosuch", "64m"], with_rc),
        (&["block-detach", "nosuch", "xvdb"], with_rc),
        (&["network-attach", "nosuch"], with_rc),
        (&["network-detach", "nosuch", "0"], with_rc),
        (&["network-list", "nosuch"], with_rc),
        (&["block-list", "nosuch"], without_rc),
        (&["block-attach", "nosuch", &disk], without_rc),
    ];
    for (args, stderr) in cases {
        let out = d.kxl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            *stderr,
            "{args:?}: {}",
            show(&out)
        );
    }
    assert!(Path::new(&image).exists());
}
