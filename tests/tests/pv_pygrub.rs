//! `bootloader = "pygrub"`: a PV domain booted from its own disk, as Xen
//! users boot them (issue 16, item 2).
//!
//! The slow test builds an ext4 image holding Debian's installed kernel
//! and a PV initramfs under /boot, a GRUB configuration naming them, and
//! the busybox root tree; a cfg with no `kernel=` boots it through
//! `kxl create`, with Debian's pygrub (xen-utils-4.17, unmodified) reading
//! the image as libxl runs it. The kernel's command line must be the
//! one in grub.cfg, with the cfg's `extra` appended by pygrub.
//!
//! The fast tests need no guest: a disk without a GRUB configuration, a
//! bootloader that hangs, and one whose answer names a file it did not
//! write each make `kxl create` fail, with xl's exit status and a clear
//! reason, within kxend's bootloader time limit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kxen_tests::budget;
use kxen_tests::dom0::{show, Dom0};
use kxen_tests::linux::{root_image_with_files, shell_command};
use kxen_tests::process_exited;
use kxen_tests::stock::{installed_kernel, pv_initramfs};

/// The slow test: see examples/test.sh for the step's limit.
const BUDGET: Duration = Duration::from_secs(6 * 60 + 30);
/// `kxl create` to init's line, as in pv_stock (about a minute measured).
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// Debian's pygrub, which `bootloader = "pygrub"` resolves to.
const PYGRUB: &str = "/usr/lib/xen-4.17/bin/pygrub";
/// An argument only grub.cfg's menu entry carries.
const GRUB_MARKER: &str = "kxen.grubentry=debian-pv";
/// An argument only the cfg's `extra` carries (pygrub appends it).
const CFG_MARKER: &str = "kxen.fromcfg=1";
/// The bootloader time limit the hang test gives kxend.
const HANG_LIMIT_S: u64 = 2;

fn assert_pygrub() {
    assert!(
        Path::new(PYGRUB).is_file(),
        "{PYGRUB} is missing (apt-get install xen-utils-4.17)"
    );
}

fn pv_cfg(d: &Dom0, name: &str, bootloader: &str, image: &Path, extra: &str) -> PathBuf {
    let cfg = d.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"
type = \"pv\"
bootloader = \"{bootloader}\"
memory = 512
vcpus = 1
disk = [ '{},raw,xvda,rw' ]
{extra}",
            image.display()
        ),
    )
    .unwrap();
    cfg
}

/// What kxend left of its bootloader work directories (none once a
/// create is over, whether it failed or not).
fn bootloader_leftovers(d: &Dom0) -> Vec<PathBuf> {
    std::fs::read_dir(d.dir.join("state/bootloader"))
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `kxl create` that must fail: its output, and how long it took.
fn create_fails(d: &Dom0, cfg: &Path) -> (String, Duration) {
    // Start kxend (and the test's one build of the binaries) first: the
    // time taken is the create's.
    d.ok(&["list"]);
    let start = Instant::now();
    let out = d.kxl(&["create", cfg.to_str().unwrap()]);
    let took = start.elapsed();
    // xl create's status for a domain it could not create.
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    (String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
#[ignore = "slow group: boots Debian's kernel through pygrub as a PV guest; examples/test.sh runs it"]
fn pygrub_boots_the_kernel_grub_cfg_names() {
    assert_pygrub();
    budget::start("pv_pygrub", BUDGET);
    let d = Dom0::new("pvpygrub");
    let (release, vmlinuz) = installed_kernel().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pv_pygrub: Debian kernel {release}, {}", vmlinuz.display());
    let kernel = std::fs::read(&vmlinuz).unwrap();
    let initrd = pv_initramfs(&release).unwrap_or_else(|e| panic!("{e}"));
    let grub_cfg = format!(
        "set default=0
set timeout=5
menuentry 'Debian GNU/Linux, PV' {{
    linux /boot/vmlinuz-{release} root=/dev/xvda ro console=hvc0 {GRUB_MARKER}
    initrd /boot/initrd.img-{release}
}}
"
    );
    let kernel_at = format!("boot/vmlinuz-{release}");
    let initrd_at = format!("boot/initrd.img-{release}");
    let image = root_image_with_files(
        &d.dir,
        "10.97.0.2",
        &[],
        &[
            (&kernel_at, &kernel),
            (&initrd_at, &initrd),
            ("boot/grub/grub.cfg", grub_cfg.as_bytes()),
        ],
    );
    // No kernel=: the kernel, initrd and command line come from the disk.
    let cfg = pv_cfg(
        &d,
        "pvpygrub",
        "pygrub",
        &image,
        &format!("extra = \"{CFG_MARKER}\"\non_reboot = \"destroy\"\n"),
    );
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("kernel"));

    let started = Instant::now();
    d.ok(&["create", cfg.to_str().unwrap()]);
    let created = started.elapsed();
    // The bootloader's copies are gone once the domain is built.
    assert_eq!(bootloader_leftovers(&d), Vec::<PathBuf>::new());
    let ready = d.wait_line_after("pvpygrub", 0, "KXEN-READY", BOOT_LIMIT);
    let boot = started.elapsed();
    eprintln!("pv_pygrub: kxl create returned in {created:.1?}, init's first line in {boot:.1?}");
    let log = d.console_log("pvpygrub");
    assert!(
        log.contains("Hypervisor detected: Xen PV"),
        "a PV boot: {log}"
    );
    assert!(!log.contains("KXEN-INSMOD-FAILED"), "{log}");
    assert!(
        ready.contains("root=/dev/xvda:ext4"),
        "ext4 root on xvda: {ready}"
    );
    assert!(
        log.contains(&format!("Linux version {release}")),
        "the kernel on the disk booted: {log}"
    );

    // The command line is grub.cfg's, with the cfg's extra after it.
    let cmdline = shell_command(
        &d,
        "pvpygrub",
        "echo \"kcmd $(cat /proc/cmdline)\"",
        "kcmd ",
        COMMAND_LIMIT,
    );
    let args: Vec<&str> = cmdline.split_whitespace().skip(1).collect();
    let grub_at = args.iter().position(|a| *a == GRUB_MARKER);
    let cfg_at = args.iter().position(|a| *a == CFG_MARKER);
    assert!(
        matches!((grub_at, cfg_at), (Some(g), Some(c)) if g < c),
        "grub.cfg's arguments, then the cfg's extra: {cmdline}"
    );
    assert!(args.contains(&"console=hvc0"), "{cmdline}");
    let dmesg = d.ok(&["dmesg"]);
    assert!(
        dmesg.contains("pvpygrub) created") && dmesg.contains("kernel from bootloader pygrub"),
        "{dmesg}"
    );

    d.ok(&["destroy", "pvpygrub"]);
    assert!(!d.is_listed("pvpygrub"), "destroyed: {}", d.ok(&["list"]));
    eprintln!(
        "pv_pygrub: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// An ext4 image with a kernel under /boot and no GRUB configuration.
fn image_without_grub_cfg(dir: &Path) -> PathBuf {
    let tree = dir.join("nogrub");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz-1"), b"not booted").unwrap();
    let image = dir.join("nogrub.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", show(&out));
    image
}

#[test]
fn pygrub_without_a_grub_config_fails_create_clearly() {
    assert_pygrub();
    let d = Dom0::new("pygrubnocfg");
    let image = image_without_grub_cfg(&d.dir);
    let cfg = pv_cfg(&d, "nogrub", "pygrub", &image, "");
    let (err, took) = create_fails(&d, &cfg);
    eprintln!("pygrub without grub.cfg: failed in {took:.2?}: {err}");
    assert!(
        err.contains(&format!(
            "domain nogrub: bootloader {PYGRUB} failed (exit status 1)"
        )) && err.contains("Unable to find partition containing kernel"),
        "{err}"
    );
    assert!(
        took < bootloader_default_limit(),
        "took {took:?}, the limit is {:?}",
        bootloader_default_limit()
    );
    assert!(!d.is_listed("nogrub"));
    assert_eq!(bootloader_leftovers(&d), Vec::<PathBuf>::new());
    // pygrub's own output is kept in the log the error names.
    let log = std::fs::read_to_string(d.dir.join("state/logs/bootloader-nogrub.log")).unwrap();
    assert!(log.contains("Traceback"), "{log}");
}

/// kxend's default bootloader limit (kxend's `bootloader::DEFAULT_LIMIT`).
fn bootloader_default_limit() -> Duration {
    Duration::from_secs(60)
}

#[test]
fn a_hung_bootloader_is_killed_at_the_limit() {
    let d = Dom0::new("pygrubhang")
        .with_kxend_env("KXEN_BOOTLOADER_TIMEOUT", &HANG_LIMIT_S.to_string());
    let pids = d.dir.join("hang.pids");
    let script = d.dir.join("hang.sh");
    // A child left in its process group must die with it.
    executable(
        &script,
        &format!(
            "#!/bin/sh\nsleep 1000 &\necho $! > {p}.tmp\necho $$ >> {p}.tmp\nmv {p}.tmp {p}\necho hanging\nwait\n",
            p = pids.display()
        ),
    );
    let image = d.dir.join("blank.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let cfg = pv_cfg(&d, "hung", script.to_str().unwrap(), &image, "");
    let (err, took) = create_fails(&d, &cfg);
    eprintln!("hung bootloader: failed in {took:.2?}: {err}");
    assert!(
        err.contains(&format!(
            "domain hung: bootloader {} did not finish within {HANG_LIMIT_S} s (KXEN_BOOTLOADER_TIMEOUT); it was killed",
            script.display()
        )),
        "{err}"
    );
    let limit = Duration::from_secs(HANG_LIMIT_S);
    assert!(
        took >= limit && took < limit + Duration::from_secs(10),
        "took {took:?} with a {limit:?} limit"
    );
    let pids = std::fs::read_to_string(&pids).expect("the bootloader ran");
    for pid in pids.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        let start = Instant::now();
        while !process_exited(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "bootloader process {pid} outlived the limit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!d.is_listed("hung"));
    assert_eq!(bootloader_leftovers(&d), Vec::<PathBuf>::new());
    let log = std::fs::read_to_string(d.dir.join("state/logs/bootloader-hung.log")).unwrap();
    assert_eq!(log, "hanging\n");
}

#[test]
fn a_bootloader_answer_naming_a_host_file_is_refused() {
    let d = Dom0::new("pygrubhostile");
    let script = d.dir.join("hostile.sh");
    // A hostile image could make a bootloader name any host file.
    executable(
        &script,
        "#!/bin/sh\nfor a; do case $a in --output=*) out=${a#--output=};; esac; done\nprintf 'kernel /etc/passwd\\0args x\\0' > \"$out\"\n",
    );
    let image = d.dir.join("blank.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let cfg = pv_cfg(&d, "hostile", script.to_str().unwrap(), &image, "");
    let (err, _) = create_fails(&d, &cfg);
    assert!(
        err.contains("named kernel /etc/passwd, which is not a file it wrote in"),
        "{err}"
    );
    assert!(Path::new("/etc/passwd").is_file());
    assert!(!d.is_listed("hostile"));
    assert_eq!(bootloader_leftovers(&d), Vec::<PathBuf>::new());
}
