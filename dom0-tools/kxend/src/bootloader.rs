//! Running xl.cfg's `bootloader` (pygrub) before a PV or PVH domain is
//! built, as libxl does: it reads the domain's first disk and copies the
//! kernel and initrd it chose into a private directory, which kxend hands
//! to kxen-vmm and removes once the domain is built.
//!
//! The bootloader reads an image the guest controls, so everything it
//! produces is bounded: it runs in its own process group under a time
//! limit ([`TIMEOUT_ENV`], default [`DEFAULT_LIMIT`]) and is killed as a
//! group when it overruns; its console output is kept to its last
//! [`KEPT_OUTPUT`] bytes (in `logs/bootloader-NAME.log`); the files it
//! writes are capped by RLIMIT_FSIZE; its answer is read up to
//! [`bootloader::MAX_OUTPUT`] bytes, and the kernel and initrd it names
//! must be plain files in the directory it was given.
//!
//! Unlike libxl, kxend gives the bootloader no terminal: the domain's
//! console does not exist until the domain is built, so no one could
//! answer a menu. It passes `--quiet` (as libxl does when it runs a
//! restricted bootloader), so pygrub boots the configuration's default
//! entry, or the one `bootloader_args = ["--entry=N"]` names.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kxen_toolstack::bootloader::{self, Invocation, Simple0Error};
use kxen_toolstack::config::DomainConfig;
use kxen_toolstack::disk::DiskFormat;
use tracing::{info, warn};

/// The environment variable that sets the bootloader's time limit, in
/// whole seconds, read when kxend starts.
pub const TIMEOUT_ENV: &str = "KXEN_BOOTLOADER_TIMEOUT";
/// The bootloader's time limit without [`TIMEOUT_ENV`]: pygrub takes well
/// under a second on a local image; a minute leaves room for a slow disk.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(60);
/// How much of the bootloader's console output is kept (the end of it,
/// where pygrub's reason for failing is).
pub const KEPT_OUTPUT: usize = 16 * 1024;
/// The largest file the bootloader may write (RLIMIT_FSIZE): a kernel or
/// initrd copy. Past it the kernel stops the bootloader with SIGXFSZ.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// How long the output of a bootloader that ended may still take to drain.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How often the bootloader is checked for having ended.
const POLL: Duration = Duration::from_millis(10);

/// Why the bootloader gave no kernel to boot; the text follows
/// `kxl: domain NAME: `.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    /// libxl_bootloader.c: "cannot run bootloader with no boot disk".
    #[error("cannot run bootloader with no boot disk")]
    NoDisk,
    #[error(
        "bootloader: disk {vdev} is {format}; kxen's bootloader reads raw images and devices only"
    )]
    DiskFormat { vdev: String, format: &'static str },
    #[error("bootloader: cannot prepare {path}: {reason}")]
    Setup { path: String, reason: String },
    #[error("cannot start bootloader {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("bootloader {program} failed ({status}){said}; see {log}")]
    Failed {
        program: String,
        status: String,
        /// `: ` and the last line it printed, or nothing.
        said: String,
        log: String,
    },
    #[error("bootloader {program} did not finish within {secs} s ({TIMEOUT_ENV}); it was killed; see {log}")]
    TimedOut {
        program: String,
        secs: u64,
        log: String,
    },
    #[error("bootloader {program}: {reason}")]
    Answer {
        program: String,
        reason: Simple0Error,
    },
    #[error("bootloader {program} named {what} {path}, which is not a file it wrote in {dir}")]
    Outside {
        program: String,
        what: &'static str,
        path: String,
        dir: String,
    },
}

/// The bootloader's time limit: [`TIMEOUT_ENV`] seconds when set to a
/// whole number above zero, else [`DEFAULT_LIMIT`].
pub fn limit_from_env() -> Duration {
    let Some(raw) = std::env::var_os(TIMEOUT_ENV) else {
        return DEFAULT_LIMIT;
    };
    match raw.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => {
            warn!(
                "{TIMEOUT_ENV}={raw:?} is not a number of seconds above 0; using {} s",
                DEFAULT_LIMIT.as_secs()
            );
            DEFAULT_LIMIT
        }
    }
}

/// What the bootloader chose, in a private directory removed on drop.
#[derive(Debug)]
pub struct BootFiles {
    dir: PathBuf,
    pub kernel: String,
    pub ramdisk: Option<String>,
    pub cmdline: Option<String>,
}

impl Drop for BootFiles {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!("removing the bootloader's {}: {e}", dir.display());
    }
}

/// Where one run of the bootloader works: its answer file and the
/// directory it copies the kernel and initrd into; removed on drop unless
/// handed to [`BootFiles`].
struct WorkDir {
    dir: PathBuf,
    output: PathBuf,
    files: PathBuf,
}

impl WorkDir {
    fn new(parent: &Path) -> Result<Self, BootloaderError> {
        let setup = |path: &Path, reason: String| BootloaderError::Setup {
            path: path.display().to_string(),
            reason,
        };
        let parent = std::path::absolute(parent).map_err(|e| setup(parent, e.to_string()))?;
        std::fs::create_dir_all(&parent).map_err(|e| setup(&parent, e.to_string()))?;
        let dir = nix::unistd::mkdtemp(&parent.join("boot.XXXXXX"))
            .map_err(|e| setup(&parent, e.desc().to_string()))?;
        let work = WorkDir {
            output: dir.join("output"),
            files: dir.join("files"),
            dir,
        };
        std::fs::create_dir(&work.files).map_err(|e| setup(&work.files, e.to_string()))?;
        // The bootloader opens its answer file; libxl creates it first.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&work.output)
            .map_err(|e| setup(&work.output, e.to_string()))?;
        Ok(work)
    }

    fn keep(
        mut self,
        kernel: String,
        ramdisk: Option<String>,
        cmdline: Option<String>,
    ) -> BootFiles {
        // Emptied: the drop below leaves the directory to BootFiles.
        let dir = std::mem::take(&mut self.dir);
        BootFiles {
            dir,
            kernel,
            ramdisk,
            cmdline,
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            remove_dir(&self.dir);
        }
    }
}

/// Run `config`'s bootloader on its first disk, in a new directory under
/// `work_parent`, within `limit`; its console output goes to `log`.
pub fn run(
    config: &DomainConfig,
    work_parent: &Path,
    log: &Path,
    limit: Duration,
) -> Result<BootFiles, BootloaderError> {
    let name = config.bootloader.as_deref().unwrap_or_default();
    let disk = config.disks.first().ok_or(BootloaderError::NoDisk)?;
    let target = disk.target_path().ok_or(BootloaderError::NoDisk)?;
    if disk.format != DiskFormat::Raw {
        return Err(BootloaderError::DiskFormat {
            vdev: disk.vdev.clone(),
            format: disk.format.as_str(),
        });
    }
    let program = bootloader::resolve_program(name, Path::new(bootloader::PRIVATE_BIN_DIR));
    let shown = program.display().to_string();
    let work = WorkDir::new(work_parent)?;
    let invocation = Invocation {
        kernel: config.kernel.as_deref().filter(|k| !k.is_empty()),
        ramdisk: config.ramdisk.as_deref().filter(|r| !r.is_empty()),
        cmdline: config.cmdline.as_deref(),
        quiet: true,
        output: &work.output,
        output_directory: &work.files,
        extra_args: &config.bootloader_args,
        disk: target,
    };
    let args = invocation.args();
    info!("running bootloader {shown} {args:?}");
    let started = Instant::now();
    let (status, output) = run_bounded(&program, &args, limit).map_err(|e| match e {
        RunError::Spawn(reason) => BootloaderError::Spawn {
            program: shown.clone(),
            reason,
        },
        RunError::TimedOut(output) => {
            save_log(log, &output);
            BootloaderError::TimedOut {
                program: shown.clone(),
                secs: limit.as_secs(),
                log: log.display().to_string(),
            }
        }
    })?;
    save_log(log, &output);
    if !status.success() {
        return Err(BootloaderError::Failed {
            program: shown,
            status: describe_status(status),
            said: last_line(&output)
                .map(|l| format!(": {l}"))
                .unwrap_or_default(),
            log: log.display().to_string(),
        });
    }
    let answer = read_bounded(&work.output).map_err(|reason| BootloaderError::Setup {
        path: work.output.display().to_string(),
        reason,
    })?;
    let choice = bootloader::parse_simple0(&answer).map_err(|reason| BootloaderError::Answer {
        program: shown.clone(),
        reason,
    })?;
    for note in &choice.notes {
        warn!("bootloader {shown}: {note}");
    }
    let outside = |what: &'static str, path: &str| BootloaderError::Outside {
        program: shown.clone(),
        what,
        path: path.to_string(),
        dir: work.files.display().to_string(),
    };
    written_copy(&choice.kernel, &work.files).map_err(|()| outside("kernel", &choice.kernel))?;
    if let Some(ramdisk) = &choice.ramdisk {
        written_copy(ramdisk, &work.files).map_err(|()| outside("ramdisk", ramdisk))?;
    }
    info!(
        "bootloader {shown} chose kernel {}, ramdisk {:?}, args {:?} in {:.2?}",
        choice.kernel,
        choice.ramdisk,
        choice.args,
        started.elapsed()
    );
    Ok(work.keep(choice.kernel, choice.ramdisk, choice.args))
}

/// Whether `path` is a plain file directly in `dir` (not a link, not
/// elsewhere by `..`); made readable for the jailed VMM, which runs under
/// its own uid (the directories above stay private).
fn written_copy(path: &str, dir: &Path) -> Result<(), ()> {
    let path = Path::new(path);
    if path.parent() != Some(dir) || path.file_name().is_none() {
        return Err(());
    }
    let meta = std::fs::symlink_metadata(path).map_err(|_| ())?;
    if !meta.file_type().is_file() {
        return Err(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|_| ())
}

/// At most [`bootloader::MAX_OUTPUT`] + 1 bytes of `path`, so that an
/// answer over the limit is seen as such.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    File::open(path)
        .and_then(|f| {
            f.take(bootloader::MAX_OUTPUT as u64 + 1)
                .read_to_end(&mut answer)
        })
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

fn save_log(log: &Path, output: &[u8]) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .and_then(|mut f| f.write_all(output));
    if let Err(e) = written {
        warn!("bootloader log {}: {e}", log.display());
    }
}

/// The last non-empty line the bootloader printed, made printable and
/// short enough for a one-line error.
fn last_line(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let clean: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
    Some(clean).filter(|c| !c.is_empty())
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(libc::SIGXFSZ)) => format!(
            "killed by SIGXFSZ: it wrote a file over {} MiB",
            MAX_FILE_BYTES >> 20
        ),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

enum RunError {
    Spawn(String),
    /// It overran and was killed; what it printed.
    TimedOut(Vec<u8>),
}

/// The end of a stream: everything read is counted, the last
/// [`KEPT_OUTPUT`] bytes kept.
fn drain_tail(mut from: File) -> Vec<u8> {
    let mut kept = Vec::with_capacity(KEPT_OUTPUT);
    let mut chunk = [0u8; 4096];
    let mut total: u64 = 0;
    loop {
        match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * KEPT_OUTPUT {
                    kept.drain(..kept.len() - KEPT_OUTPUT);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if kept.len() > KEPT_OUTPUT {
        kept.drain(..kept.len() - KEPT_OUTPUT);
    }
    if total > kept.len() as u64 {
        let mut marked =
            format!("[{} earlier bytes not kept]\n", total - kept.len() as u64).into_bytes();
        marked.extend_from_slice(&kept);
        return marked;
    }
    kept
}

/// Run `program` in its own process group with no input, its stdout and
/// stderr drained into one bounded buffer, its files capped; kill the
/// group when it overruns `limit` (and once it has ended, so that no
/// child it left behind keeps running).
fn run_bounded(
    program: &Path,
    args: &[std::ffi::OsString],
    limit: Duration,
) -> Result<(ExitStatus, Vec<u8>), RunError> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RunError::Spawn(format!("pipe: {}", e.desc())))?;
    let write_err = write_end
        .try_clone()
        .map_err(|e| RunError::Spawn(format!("pipe: {e}")))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // What libxl gives the bootloader.
        .env("TERM", "vt100")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_err))
        .process_group(0);
    // SAFETY: the closure makes one async-signal-safe call (setrlimit)
    // with a limit on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: MAX_FILE_BYTES,
                rlim_max: MAX_FILE_BYTES,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The child has the write ends now; the drain ends when it and its
    // children close them.
    drop(cmd);
    let mut child = spawned.map_err(|e| RunError::Spawn(crate::preflight::describe_io(&e)))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let (sent, drained) = mpsc::channel();
    let reader = File::from(read_end);
    std::thread::Builder::new()
        .name("bootloader-output".into())
        .spawn(move || {
            let _ = sent.send(drain_tail(reader));
        })
        .map_err(|e| RunError::Spawn(format!("output thread: {e}")))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                warn!("waiting for the bootloader: {e}");
                break None;
            }
        }
    };
    // The whole group: a bootloader that overran, or children it left.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    if status.is_none() {
        let _ = child.wait();
    }
    let output = drained.recv_timeout(DRAIN_GRACE).unwrap_or_else(|_| {
        b"[the bootloader's output did not end: a process outside its group holds it]\n".to_vec()
    });
    match status {
        Some(status) => Ok((status, output)),
        None => Err(RunError::TimedOut(output)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("bl.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kxend-bl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_hung_group_is_killed_at_the_limit() {
        let dir = tmp("hang");
        // A child in the same group keeps the output open too.
        let prog = script(&dir, "sleep 1000 & echo started; sleep 1000");
        let start = Instant::now();
        let Err(RunError::TimedOut(out)) = run_bounded(&prog, &[], Duration::from_millis(300))
        else {
            panic!("not timed out");
        };
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(out, b"started\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_is_kept_to_its_tail() {
        let dir = tmp("flood");
        let prog = script(
            &dir,
            "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo the-end >&2; exit 3",
        );
        let (status, out) = run_bounded(&prog, &[], Duration::from_secs(30))
            .ok()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(out.len() <= KEPT_OUTPUT + 64, "{}", out.len());
        assert!(out.starts_with(b"[983"), "{:?}", &out[..40]);
        assert_eq!(last_line(&out).as_deref(), Some("the-end"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copies_must_be_files_in_the_directory() {
        let dir = tmp("copies");
        std::fs::write(dir.join("k"), b"kernel").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/k"), b"kernel").unwrap();
        let at = |name: &str| format!("{}/{name}", dir.display());
        assert_eq!(written_copy(&at("k"), &dir), Ok(()));
        assert_eq!(written_copy(&at("link"), &dir), Err(()));
        assert_eq!(written_copy(&at("sub"), &dir), Err(()));
        assert_eq!(written_copy(&at("sub/k"), &dir), Err(()));
        assert_eq!(written_copy(&at("sub/../k"), &dir), Err(()));
        assert_eq!(written_copy("/etc/passwd", &dir), Err(()));
        assert_eq!(written_copy(&at("absent"), &dir), Err(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
