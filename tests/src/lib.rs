//! Shared helpers for the end-to-end tests: build the real binaries and the
//! PV test guest, run them under real KVM with a time limit, and collect
//! their output.

pub mod budget;
pub mod dom0;
pub mod linux;
pub mod stock;
pub mod stream;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Whether this test binary was built with the release profile.
fn release() -> bool {
    std::env::current_exe()
        .map(|p| p.components().any(|c| c.as_os_str() == "release"))
        .unwrap_or(false)
}

fn run_build(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {what}: {e}"));
    assert!(status.success(), "building {what} failed");
}

/// Build (if needed) and return the path of a workspace binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(repo_root()).args(["build", "-q", "--bins"]);
        if release() {
            cmd.arg("--release");
        }
        run_build(&mut cmd, "the workspace binaries");
    });
    let dir = if release() { "release" } else { "debug" };
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join(dir).join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Build (if needed) only `package`'s binary `name` and return its path,
/// for tests that need one binary and should not wait for (or depend on)
/// the rest of the workspace.
pub fn package_bin(package: &str, name: &str) -> PathBuf {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--bin", name]);
    if release() {
        cmd.arg("--release");
    }
    run_build(&mut cmd, name);
    let dir = if release() { "release" } else { "debug" };
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join(dir).join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

pub fn kxen_vmm() -> PathBuf {
    workspace_bin("kxen-vmm")
}

/// kxen-run: kxen-vmm with its PV console on stdout and a xenstore of its
/// own (kxen-vmm alone leaves both to Dom0).
pub fn kxen_run() -> PathBuf {
    workspace_bin("kxen-run")
}

/// The kxen-vmm that kxen-run `launcher` started: its child process,
/// waited for up to `limit` (kxen-run spawns it as it starts).
pub fn vmm_of_launcher(launcher: u32, limit: Duration) -> Option<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let child = std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...: the comm may hold spaces.
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == launcher).then_some(pid)
        });
        if child.is_some() || Instant::now() >= deadline {
            return child;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Build (if needed) and return the PV test guest kernel.
pub fn test_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let dir = repo_root().join("tests/guest");
            let mut cmd = Command::new(cargo());
            // Run from the guest's directory so its .cargo/config.toml
            // (static relocation, linker script) applies.
            cmd.current_dir(&dir)
                .args(["build", "-q", "--release"])
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS");
            run_build(&mut cmd, "the PV test guest");
            dir.join("target/release/kxen-testguest")
        })
        .clone()
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; None if killed by a signal or by the time limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Finished {
    /// Both streams, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit {:?} after {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Run `program` with `args`, no stdin, killing it after `limit`.
pub fn run_with_limit(program: &Path, args: &[&str], limit: Duration) -> Finished {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Finished {
        code: if timed_out { None } else { status.code() },
        stdout,
        stderr,
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// Boot the PV test guest under kxen-run with `cmdline`.
pub fn boot_test_guest(cmdline: &str, vcpus: u32) -> Finished {
    let vmm = kxen_run();
    let guest = test_guest();
    let vcpus = vcpus.to_string();
    run_with_limit(
        &vmm,
        &[
            "--kernel",
            guest.to_str().expect("utf-8 path"),
            "--memory",
            "64",
            "--vcpus",
            &vcpus,
            "--domid",
            "7",
            "--name",
            "testguest",
            "--cmdline",
            cmdline,
        ],
        Duration::from_secs(120),
    )
}

/// The PV test guest's verdict line,
/// `kxen-testguest: N passed, M failed, K skipped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSummary {
    pub passed: u32,
    pub failed: u32,
    /// Checks that could not reach what they test on this host (`SKIP`).
    pub skipped: u32,
}

/// The guest's last verdict line.
pub fn guest_summary(stdout: &str) -> Option<GuestSummary> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("kxen-testguest: ")?;
        let (passed, rest) = rest.split_once(" passed, ")?;
        let (failed, rest) = rest.split_once(" failed, ")?;
        let skipped = rest.strip_suffix(" skipped")?;
        Some(GuestSummary {
            passed: passed.parse().ok()?,
            failed: failed.parse().ok()?,
            skipped: skipped.parse().ok()?,
        })
    })
}

/// Lines of the guest output that report failed checks.
pub fn failed_checks(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("FAIL "))
        .collect()
}

/// Lines of the guest output that report skipped checks
/// (`SKIP <name>: <reason>`).
pub fn skipped_checks(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("SKIP "))
        .collect()
}

/// Which x86 flavour a test guest is assembled and linked for.
#[derive(Clone, Copy)]
pub enum GuestArch {
    /// `as --32`, `ld -m elf_i386`.
    I386,
    /// `as --64`, `ld -m elf_x86_64`.
    X86_64,
}

/// Assemble `asm` (with `defsyms`, `NAME=VALUE`) and link it with the
/// linker script `script` into `dir/STEM.elf`, the way every assembly test
/// guest is built; binutils failing fails the test.
pub fn assemble_and_link(
    asm: &Path,
    script: &Path,
    dir: &Path,
    stem: &str,
    arch: GuestArch,
    defsyms: &[&str],
) -> PathBuf {
    let (as_flag, emulation) = match arch {
        GuestArch::I386 => ("--32", "elf_i386"),
        GuestArch::X86_64 => ("--64", "elf_x86_64"),
    };
    let obj = dir.join(format!("{stem}.o"));
    let elf = dir.join(format!("{stem}.elf"));
    // `.include`d files are found beside the source.
    let include_dir = asm.parent().unwrap_or(Path::new("."));
    let ok = Command::new("as")
        .arg(as_flag)
        .arg("-I")
        .arg(include_dir)
        .args(defsyms.iter().flat_map(|d| ["--defsym", d]))
        .arg("-o")
        .arg(&obj)
        .arg(asm)
        .status()
        .expect("run as (binutils)")
        .success();
    assert!(ok, "assembling {} failed", asm.display());
    let ok = Command::new("ld")
        .args(["-m", emulation, "--no-warn-rwx-segments", "-T"])
        .arg(script)
        .arg("-o")
        .arg(&elf)
        .arg(&obj)
        .status()
        .expect("run ld (binutils)")
        .success();
    assert!(ok, "linking {} failed", elf.display());
    elf
}

/// The classic PV test kernel (`tests/guestpv/pv.S` and the files it
/// includes), assembled and linked into `dir`, with `defsyms`
/// (`NAME=VALUE`) selecting a variant.
pub fn pv_test_kernel(dir: &Path, defsyms: &[&str]) -> PathBuf {
    let src = repo_root().join("tests/guestpv");
    std::fs::create_dir_all(dir).expect("PV test kernel directory");
    assemble_and_link(
        &src.join("pv.S"),
        &src.join("pv.ld"),
        dir,
        "pv",
        GuestArch::X86_64,
        defsyms,
    )
}

/// A PV test kernel timing line `<prefix><calls> calls in <cycles> TSC
/// cycles` (both as its puthex writes them): (calls, cycles).
pub fn pv_timing_line(lines: &[&str], prefix: &str) -> Option<(u64, u64)> {
    let timing = lines.iter().find_map(|l| l.strip_prefix(prefix))?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (calls, rest) = timing.split_once(" calls in ")?;
    Some((hex(calls)?, hex(rest.strip_suffix(" TSC cycles")?)?))
}

/// The host's TSC rate in cycles per microsecond, measured against the
/// monotonic clock over a short busy interval (kxen-vmm does not scale
/// guest TSCs, so guest cycle counts convert with it).
pub fn tsc_cycles_per_us() -> f64 {
    // SAFETY: rdtsc reads the time-stamp counter; it has no memory effects.
    let read = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (std::time::Instant::now(), read());
    while t0.elapsed() < Duration::from_millis(100) {
        std::hint::spin_loop();
    }
    let (elapsed, cycles) = (t0.elapsed(), read() - c0);
    cycles as f64 / elapsed.as_secs_f64() / 1e6
}

/// Assemble `tests/guest32/NAME.S` (after `patch` edits its source) into a
/// 32-bit PVH ELF in a temp directory; `tag` keeps variants apart.
pub fn guest32(name: &str, tag: &str, patch: impl Fn(String) -> String) -> PathBuf {
    let src = repo_root().join("tests/guest32");
    let dir = std::env::temp_dir().join(format!("kxen-g32-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let source = std::fs::read_to_string(src.join(format!("{name}.S"))).expect("guest source");
    let asm = dir.join(format!("{name}.S"));
    std::fs::write(&asm, patch(source)).expect("write source");
    assemble_and_link(
        &asm,
        &src.join("smoke.ld"),
        &dir,
        name,
        GuestArch::I386,
        &[],
    )
}

/// The 64-bit HVM test guest (`tests/guest64/hvm.S`), as a vmlinux-style
/// ELF and as a bzImage (a Linux setup header in front of the same code,
/// whose 64-bit entry sits 0x200 bytes into the protected-mode part).
pub struct HvmGuest {
    pub elf: PathBuf,
    pub bzimage: PathBuf,
}

pub fn hvm_guest(tag: &str) -> HvmGuest {
    let src = repo_root().join("tests/guest64");
    let dir = std::env::temp_dir().join(format!("kxen-g64-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let elf = assemble_and_link(
        &src.join("hvm.S"),
        &src.join("hvm.ld"),
        &dir,
        "hvm",
        GuestArch::X86_64,
        &[],
    );
    let flat = dir.join("hvm.bin");
    let run = |cmd: &mut Command, what: &str| {
        let ok = cmd
            .status()
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .success();
        assert!(ok, "{what} failed");
    };
    run(
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&flat),
        "objcopy (binutils)",
    );
    let payload = std::fs::read(&flat).expect("flat image");
    // Four setup sectors after the boot sector; the header fields are the
    // boot protocol's (Documentation/arch/x86/boot.rst).
    let mut image = vec![0u8; 5 * 512];
    image[0x1f1] = 4; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version 2.15
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(&payload);
    let bzimage = dir.join("hvm.bzImage");
    std::fs::write(&bzimage, image).expect("write bzImage");
    HvmGuest { elf, bzimage }
}

/// Whether process `pid` has exited, files and all: it is gone, or it is a
/// zombie no one reaped yet whose other threads have ended too. A killed
/// multi-threaded process shows its leader as a zombie while the other
/// threads are still being torn down, and its descriptors (a listening
/// socket, say) stay open until the last of them is gone: a client could
/// still connect to it and then be reset.
pub fn process_exited(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let state = field("State:");
    let zombie = state.starts_with('Z') || state.starts_with('X');
    zombie && field("Threads:").parse::<u32>().is_ok_and(|n| n <= 1)
}

/// A child process that is killed and reaped when dropped, so a test that
/// fails half-way never leaves its VMM behind: a leaked VMM whose guest
/// spins takes a core from every test and guest after it (five were found
/// spinning for an hour after failed runs, doubling the slow group's
/// boot times).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same 32-bit image relabelled `elf32-x86-64` (ELFCLASS32 with
/// e_machine EM_X86_64), as a PVH kernel linked for x32 is: binutils'
/// objcopy rewrites the header, the code and notes stay.
pub fn elf32_x86_64(elf: &Path) -> PathBuf {
    let out = elf.with_extension("x32.elf");
    let ok = Command::new("objcopy")
        .args(["--output-target", "elf32-x86-64"])
        .arg(elf)
        .arg(&out)
        .status()
        .expect("run objcopy (binutils)")
        .success();
    assert!(ok, "objcopy to elf32-x86-64 failed");
    out
}
