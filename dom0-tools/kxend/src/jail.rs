//! The jail each domain's kxen-vmm runs in (the shape of Firecracker's
//! jailer, done by kxend between fork and exec):
//!
//! * its own PID, mount, IPC and UTS namespaces: the VMM is PID 1 of an
//!   empty PID namespace and sees no other process;
//! * a private root: a tmpfs holding only what the VMM opens, each bound
//!   in read-only at its usual path (its own binary and shared libraries,
//!   the kernel, the ramdisk, /sys/module/kvm_pvm where present, a fresh
//!   /proc of its namespace), its own `/dev/kvm` and `/dev/urandom` nodes,
//!   and one writable directory, the domain's, for its control socket and
//!   exit file. Disks and TAPs stay with kxend, which serves them;
//! * a uid and gid of its own (`uid_base + domid`: one domain's VMM cannot
//!   signal, trace or read another's), no supplementary groups, an empty
//!   capability bounding set and no capabilities at all, no_new_privs;
//! * a cgroup per controller ([`crate::cgroup`]).
//!
//! `/dev/kvm`: the jail makes its own device node, owned by the domain's
//! uid with mode 0600, rather than passing an open descriptor, so the VMM
//! opens it as usual and the host's node keeps its group and mode.
//!
//! The host side of the domain's directory is `RUN_DIR/jail/DOMID/rw`; the
//! VMM finds it at the parents of its `--control-socket` and `--exit-file`
//! paths, and kxend links those paths to it, so every other part of kxend
//! uses the paths it always did.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command};

use thiserror::Error;
use tracing::warn;

use crate::cgroup::{CgroupError, Cgroups, CpuSettings, DomainCgroup};

/// The first uid (and gid) of the VMMs' range: domain N's VMM runs as
/// `DEFAULT_UID_BASE + N`, ids no account on a usual host has.
pub const DEFAULT_UID_BASE: u32 = 0x4b58_0000;

/// Environment variables a jailed VMM keeps; everything else of kxend's
/// environment stays outside.
const KEPT_ENV: &[&str] = &[
    "KXEN_LOG",
    "RUST_BACKTRACE",
    "KXEN_VMM_SECCOMP",
    "KXEN_VMM_SECCOMP_SELFTEST",
];

static CONFIG: std::sync::OnceLock<Option<JailConfig>> = std::sync::OnceLock::new();

/// Fix how this kxend starts its VMMs: jailed as [`JailConfig`] says, or
/// (`None`, `--no-jail`) as plain children with kxend's own privileges.
pub fn configure(config: Option<JailConfig>) {
    let _ = CONFIG.set(config);
}

/// Start the VMM `cmd` for `req`: jailed unless kxend runs with
/// `--no-jail`.
pub fn launch(req: &JailRequest<'_>, cmd: &mut Command) -> io::Result<Child> {
    match CONFIG.get() {
        Some(Some(config)) => config.spawn(req, cmd).map_err(SpawnError::into_io),
        _ => cmd.spawn(),
    }
}

/// The domains' cgroups, when kxend jails its VMMs (none with
/// `--no-jail`).
pub fn cgroups() -> Option<&'static Cgroups> {
    match CONFIG.get() {
        Some(Some(config)) => Some(&config.cgroups),
        _ => None,
    }
}

/// Remove what domain `domid`'s jail left on the host.
pub fn cleanup(domid: u32) {
    if let Some(Some(config)) = CONFIG.get() {
        config.cleanup(domid);
    }
}

/// Why a domain's jail could not be made.
#[derive(Debug, Error)]
pub enum JailError {
    #[error("jail: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("jail: {0} has a NUL byte")]
    Nul(PathBuf),
    #[error("jail: {0} is not an absolute path")]
    Relative(PathBuf),
    #[error("jail: {0}")]
    Cgroup(#[from] CgroupError),
}

/// How kxend jails its VMMs (fixed at its start).
#[derive(Debug)]
pub struct JailConfig {
    /// `RUN_DIR/jail`: one directory per domain below it.
    pub dir: PathBuf,
    /// Domain N's VMM runs as uid and gid `uid_base + N`.
    pub uid_base: u32,
    /// The shared libraries the VMM loads: those kxend itself has mapped
    /// (both are Rust binaries of one toolchain), plus the dynamic loader.
    libraries: Vec<PathBuf>,
    /// The host's /dev/kvm device number.
    kvm_rdev: u64,
    /// The highest capability number of this kernel.
    last_cap: u32,
    pub cgroups: Cgroups,
}

/// What one VMM needs from the host.
pub struct JailRequest<'a> {
    pub domid: u32,
    /// The VMM binary.
    pub vmm: &'a Path,
    /// Files the VMM reads (kernel, ramdisk).
    pub read_only: Vec<&'a Path>,
    /// Files the VMM creates (control socket, exit file).
    pub writable: Vec<&'a Path>,
    pub cpu: CpuSettings,
}

/// One step of building the private root, with every path prepared so the
/// child between fork and exec only makes system calls (no allocation: the
/// parent may hold the allocator's lock in another thread).
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Touch(CString),
    Bind {
        source: CString,
        target: CString,
        writable: bool,
    },
    Node {
        path: CString,
        mode: u32,
        rdev: u64,
    },
}

/// Everything the child does, prepared by the parent.
#[derive(Debug)]
struct Plan {
    root: CString,
    root_proc: CString,
    steps: Vec<Step>,
    uid: u32,
    gid: u32,
    last_cap: u32,
    cgroup_procs: Vec<OwnedFd>,
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Nul(path.to_path_buf()))
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |source| JailError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl JailConfig {
    /// Look up what every jail needs from this host.
    pub fn new(run_dir: &Path, uid_base: u32) -> Result<Self, JailError> {
        let dir = run_dir.join("jail");
        std::fs::create_dir_all(&dir).map_err(io_err("making", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("setting the mode of", &dir))?;
        let kvm = Path::new("/dev/kvm");
        let meta = std::fs::metadata(kvm).map_err(io_err("looking at", kvm))?;
        if !meta.file_type().is_char_device() {
            return Err(JailError::Io {
                what: "expecting a device at",
                path: kvm.into(),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let cgroups = Cgroups::detect(&instance_name(run_dir));
        cgroups.sweep();
        Ok(JailConfig {
            dir,
            uid_base,
            libraries: mapped_libraries(),
            kvm_rdev: meta.rdev(),
            last_cap,
            cgroups,
        })
    }

    /// The host directory of domain `domid`'s jail.
    pub fn domain_dir(&self, domid: u32) -> PathBuf {
        self.dir.join(domid.to_string())
    }

    /// The uid (and gid) domain `domid`'s VMM runs as.
    pub fn uid_of(&self, domid: u32) -> u32 {
        self.uid_base.saturating_add(domid)
    }

    /// Start `cmd` (the VMM) jailed as `req` says.
    pub fn spawn(&self, req: &JailRequest<'_>, cmd: &mut Command) -> Result<Child, SpawnError> {
        let plan = self.plan(req).map_err(SpawnError::Jail)?;
        cmd.env_clear();
        for key in KEPT_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        // SAFETY: the closure runs in the child between fork and exec; it
        // only makes system calls on memory the plan prepared beforehand
        // (see `enter`), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || enter(&plan));
        }
        // A new PID namespace takes effect for the children of the thread
        // that asks for it, and for good: ask from a thread of its own,
        // whose one child becomes PID 1 there.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare changes only this thread's namespace for
                // the children it forks.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return Err(SpawnError::Namespace(io::Error::last_os_error()));
                }
                cmd.spawn().map_err(SpawnError::Exec)
            })
            .join()
            .unwrap_or_else(|_| Err(SpawnError::Exec(io::ErrorKind::Other.into())))
        })
    }

    /// Remove what domain `domid`'s jail left on the host (its VMM ended).
    pub fn cleanup(&self, domid: u32) {
        let dir = self.domain_dir(domid);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!("removing {}: {e}", dir.display());
            }
        }
        self.cgroups.remove(domid);
    }

    fn plan(&self, req: &JailRequest<'_>) -> Result<Plan, JailError> {
        let uid = self.uid_of(req.domid);
        let gid = uid;
        let dir = self.domain_dir(req.domid);
        // A leftover of an earlier domain with this id goes first.
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let rw = dir.join("rw");
        for d in [&dir, &root, &rw] {
            std::fs::create_dir_all(d).map_err(io_err("making", d))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", &dir))?;
        std::os::unix::fs::chown(&rw, Some(uid), Some(gid)).map_err(io_err("handing over", &rw))?;
        std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", &rw))?;

        let mut builder = RootBuilder::new(&root);
        builder.mkdir(Path::new("/dev"))?;
        builder.node("/dev/kvm", libc::S_IFCHR | 0o600, self.kvm_rdev)?;
        builder.node("/dev/urandom", libc::S_IFCHR | 0o444, libc::makedev(1, 9))?;
        builder.mkdir(Path::new("/proc"))?;
        builder.expose(req.vmm)?;
        for lib in &self.libraries {
            builder.expose(lib)?;
        }
        for file in ["/etc/ld.so.cache", "/sys/module/kvm_pvm"] {
            if Path::new(file).exists() {
                builder.expose(Path::new(file))?;
            }
        }
        for file in &req.read_only {
            builder.expose(file)?;
        }
        for file in &req.writable {
            if !file.is_absolute() {
                return Err(JailError::Relative(file.to_path_buf()));
            }
            let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
                return Err(JailError::Relative(file.to_path_buf()));
            };
            builder.bind_dir(&rw, parent)?;
            // The host keeps using the usual path: a link into the jail.
            let _ = std::fs::remove_file(file);
            std::os::unix::fs::symlink(rw.join(name), file).map_err(io_err("linking", file))?;
        }

        let cgroup: DomainCgroup = self.cgroups.create(req.domid, req.cpu)?;
        Ok(Plan {
            root_proc: cstring(&root.join("proc"))?,
            root: cstring(&root)?,
            steps: builder.steps,
            uid,
            gid,
            last_cap: self.last_cap,
            cgroup_procs: cgroup.procs,
        })
    }
}

/// Why a jailed VMM did not start.
#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("{0}")]
    Jail(JailError),
    #[error("jail: a new PID namespace: {0}")]
    Namespace(io::Error),
    #[error("{0}")]
    Exec(io::Error),
}

impl SpawnError {
    /// The I/O error behind a failed start, for kxend's usual message.
    pub fn into_io(self) -> io::Error {
        match self {
            SpawnError::Exec(e) | SpawnError::Namespace(e) => e,
            SpawnError::Jail(e) => io::Error::other(e.to_string()),
        }
    }
}

/// Builds the steps that lay out the private root under `root`.
struct RootBuilder {
    root: PathBuf,
    /// Paths inside the jail already made (directories, links, files).
    made: Vec<PathBuf>,
    steps: Vec<Step>,
}

impl RootBuilder {
    fn new(root: &Path) -> Self {
        RootBuilder {
            root: root.to_path_buf(),
            made: vec![PathBuf::from("/")],
            steps: Vec::new(),
        }
    }

    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn mkdir(&mut self, path: &Path) -> Result<(), JailError> {
        let mut at = PathBuf::from("/");
        for c in path.components() {
            if let Component::Normal(name) = c {
                at.push(name);
                if !self.made.contains(&at) {
                    self.made.push(at.clone());
                    self.steps.push(Step::Mkdir(cstring(&self.inside(&at))?));
                }
            }
        }
        Ok(())
    }

    fn node(&mut self, path: &str, mode: u32, rdev: u64) -> Result<(), JailError> {
        self.steps.push(Step::Node {
            path: cstring(&self.inside(Path::new(path)))?,
            mode,
            rdev,
        });
        Ok(())
    }

    /// Make `path` visible read-only at the same path inside, following the
    /// host's symbolic links on the way (each link is copied, so the path
    /// resolves inside as it does outside).
    fn expose(&mut self, path: &Path) -> Result<(), JailError> {
        if !path.is_absolute() {
            return Err(JailError::Relative(path.to_path_buf()));
        }
        let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
        let mut hops = 0;
        while let Some(wanted) = pending.pop() {
            let mut at = PathBuf::from("/");
            let components: Vec<Component> = wanted.components().collect();
            for (i, c) in components.iter().enumerate() {
                match c {
                    Component::RootDir | Component::CurDir => continue,
                    Component::ParentDir => {
                        at.pop();
                        continue;
                    }
                    Component::Normal(name) => at.push(name),
                    Component::Prefix(_) => continue,
                }
                let meta = std::fs::symlink_metadata(&at).map_err(io_err("looking at", &at))?;
                let last = i + 1 == components.len();
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&at).map_err(io_err("reading", &at))?;
                    if !self.made.contains(&at) {
                        if let Some(parent) = at.parent() {
                            self.mkdir(parent)?;
                        }
                        self.made.push(at.clone());
                        self.steps.push(Step::Symlink {
                            target: cstring(&target)?,
                            link: cstring(&self.inside(&at))?,
                        });
                    }
                    hops += 1;
                    if hops > 40 {
                        return Err(JailError::Io {
                            what: "resolving",
                            path: path.to_path_buf(),
                            source: io::Error::from_raw_os_error(libc::ELOOP),
                        });
                    }
                    // Continue with the link's target and the rest.
                    let base = at.parent().unwrap_or(Path::new("/")).to_path_buf();
                    let mut next = base.join(target);
                    for rest in &components[i + 1..] {
                        next.push(rest);
                    }
                    pending.push(next);
                    break;
                }
                if last {
                    if self.made.contains(&at) {
                        break;
                    }
                    if let Some(parent) = at.parent() {
                        self.mkdir(parent)?;
                    }
                    self.made.push(at.clone());
                    let target = cstring(&self.inside(&at))?;
                    if meta.is_dir() {
                        self.steps.push(Step::Mkdir(target.clone()));
                    } else {
                        self.steps.push(Step::Touch(target.clone()));
                    }
                    self.steps.push(Step::Bind {
                        source: cstring(&at)?,
                        target,
                        writable: false,
                    });
                }
            }
        }
        Ok(())
    }

    /// Bind the host directory `source` writable at `path` inside.
    fn bind_dir(&mut self, source: &Path, path: &Path) -> Result<(), JailError> {
        if self.made.iter().any(|m| m == path) {
            return Ok(());
        }
        self.mkdir(path)?;
        self.steps.push(Step::Bind {
            source: cstring(source)?,
            target: cstring(&self.inside(path))?,
            writable: true,
        });
        Ok(())
    }
}

/// A short stable name for the kxend serving `run_dir` (FNV-1a of the
/// path), for host-wide names such as its cgroups.
fn instance_name(run_dir: &Path) -> String {
    let path = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_os_str().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The shared objects this process has mapped, at the paths it loaded
/// them from, and the dynamic loader at the path binaries name.
fn mapped_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let is_lib = path.starts_with('/')
            && Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"));
        if is_lib && !libs.iter().any(|l| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    // The loader as binaries name it (PT_INTERP); its mapped path may be
    // the link's target only.
    let loader = Path::new("/lib64/ld-linux-x86-64.so.2");
    if loader.exists() {
        libs.push(loader.to_path_buf());
    }
    // The loader looks for libraries by their names in the multiarch
    // directory: expose them there too, through the host's links.
    let mut by_name: Vec<PathBuf> = Vec::new();
    for lib in &libs {
        if let Some(name) = lib.file_name() {
            let usual = Path::new("/lib/x86_64-linux-gnu").join(name);
            if usual != *lib && usual.exists() {
                by_name.push(usual);
            }
        }
    }
    libs.extend(by_name);
    libs
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// In the child, between fork and exec: join the cgroups, build and enter
/// the private root, drop every privilege. System calls only.
fn enter(plan: &Plan) -> io::Result<()> {
    // SAFETY: for every call below, each pointer is a NUL-terminated
    // string the plan owns, a live local, or null where the call allows
    // it; the calls act on this child process only.
    unsafe {
        for fd in &plan.cgroup_procs {
            // "0" is the writing process itself.
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
        ))?;
        // Nothing mounted here may reach the host's mount table.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"kxen-jail".as_ptr(),
            plan.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=0755,size=64k".as_ptr().cast(),
        ))?;
        for step in &plan.steps {
            match step {
                Step::Mkdir(path) => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Step::Symlink { target, link } => {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
                }
                Step::Touch(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o444,
                    );
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Step::Bind {
                    source,
                    target,
                    writable,
                } => {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    let mut flags =
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                    if !writable {
                        flags |= libc::MS_RDONLY;
                    } else {
                        flags |= libc::MS_NOEXEC;
                    }
                    check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ))?;
                }
                Step::Node { path, mode, rdev } => {
                    check(libc::mknod(path.as_ptr(), *mode, *rdev))?;
                    check(libc::chown(path.as_ptr(), plan.uid, plan.gid))?;
                }
            }
        }
        check(libc::mount(
            c"proc".as_ptr(),
            plan.root_proc.as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))?;
        // Make the tmpfs the root and let go of the host's tree.
        check(libc::chdir(plan.root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            std::ptr::null(),
        ))?;

        // Privileges: the bounding set first (dropping it needs
        // CAP_SETPCAP), then the ids, then whatever capability sets are left.
        for cap in 0..=plan.last_cap {
            check(libc::prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0,
                0,
                0,
            ))?;
        }
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(plan.gid, plan.gid, plan.gid))?;
        check(libc::setresuid(plan.uid, plan.uid, plan.uid))?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let none = [CapData::default(); 2];
        check(
            libc::syscall(libc::SYS_capset, &header as *const CapHeader, none.as_ptr())
                as libc::c_int,
        )?;
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposing_follows_links_and_makes_parents_once() {
        let tmp = std::env::temp_dir().join(format!("kxen-jail-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("real/dir")).unwrap();
        std::fs::write(tmp.join("real/dir/file"), b"x").unwrap();
        std::os::unix::fs::symlink("real", tmp.join("link")).unwrap();
        let mut b = RootBuilder::new(Path::new("/jail"));
        b.expose(&tmp.join("link/dir/file")).unwrap();
        b.expose(&tmp.join("real/dir/file")).unwrap();
        let steps = format!("{:?}", b.steps);
        std::fs::remove_dir_all(&tmp).unwrap();
        let link = format!("{}/link", tmp.display());
        assert!(steps.contains(&format!("link: \"/jail{link}\"")), "{steps}");
        assert_eq!(
            b.steps
                .iter()
                .filter(|s| matches!(s, Step::Bind { .. }))
                .count(),
            1,
            "{steps}"
        );
    }
}
