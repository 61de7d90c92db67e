//! Why `kxl create` failed, in one line a user can act on.
//!
//! kxend checks what it can before it starts a kxen-vmm (the domain type,
//! the sizes, the name, the files the domain needs), so the common
//! mistakes get a precise answer instead of a VMM that dies before its
//! control socket exists. When the VMM still fails, its own reason (the
//! `kxen-vmm: ...` line it prints on stderr) is relayed.

use std::path::Path;
use std::process::ExitStatus;

use kxen_toolstack::config::{DomainConfig, DomainType};
use kxen_toolstack::disk::DiskSpec;

use crate::daemon::LaunchSpec;

/// kxen-vmm's smallest guest: it needs room for the boot structures below
/// the kernel (its guest memory layout refuses less).
pub const MIN_MEMORY_MIB: u64 = 2;
/// kxen-vmm's largest guest memory (1 TiB; its layout refuses more).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// kxen-vmm's vCPU limit: one `vcpu_info` slot each in shared_info.
pub const MAX_VCPUS: u32 = xen_abi::shared_info::XEN_LEGACY_MAX_VCPUS as u32;
/// What kxen-vmm puts before each of its own messages on stderr.
const VMM_PREFIX: &str = "kxen-vmm: ";

/// A failed `create`; the text is what follows `kxl: domain NAME: `.
/// Where libxl has a message for the same failure, this is its wording.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The config was refused before anything was checked (no kernel,
    /// too many devices, a bad vif).
    #[error("{0}")]
    Config(String),
    /// xl.cfg's `bootloader` gave nothing to boot.
    #[error(transparent)]
    Bootloader(#[from] crate::bootloader::BootloaderError),
    /// The kernel cannot boot as a classic PV guest (no PV notes, or only
    /// PVH's, or a broken image); the PV builder's words say which, and
    /// for a PVH-only kernel they name `type = "pvh"`.
    #[error("type \"pv\": kernel {kernel}: {reason}")]
    NotPvKernel { kernel: String, reason: String },
    #[error("{key} = {mib} MiB is out of range: kxen runs guests of {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    Memory { key: &'static str, mib: u64 },
    #[error("vcpus = {0} is out of range: kxen runs 1 to {MAX_VCPUS} vCPUs")]
    Vcpus(u32),
    /// libxl_domain.c: libxl__domain_rename.
    #[error("Domain with name \"{0}\" already exists.")]
    NameInUse(String),
    #[error("cannot read {what} {path}: {reason}")]
    Unreadable {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// libxl_device.c: libxl__device_disk_set_backend.
    #[error("Disk vdev={vdev} failed to stat: {path}: {reason}")]
    Disk {
        vdev: String,
        path: String,
        reason: String,
    },
    #[error("cannot open the VMM log {path}: {reason}")]
    VmmLog { path: String, reason: String },
    #[error("cannot start kxen-vmm {path}: {reason}")]
    Spawn { path: String, reason: String },
    /// kxen-vmm ended while the domain was being built; its own words.
    #[error("{0}")]
    Vmm(String),
    /// A restore image that could not be loaded onto the new domain.
    #[error("{0}")]
    Restore(String),
    #[error("kxen-vmm did not open its control socket within {0} s")]
    VmmSilent(u64),
    #[error("cannot attach to kxen-vmm: {0}")]
    Attach(String),
    /// A disk or vif could not be plugged.
    #[error("{0}")]
    Devices(String),
    #[error("cannot unpause: {0}")]
    Unpause(String),
    /// xl.cfg's `cpus` could not be applied to the vCPU threads.
    #[error("{0}")]
    Affinity(String),
}

/// An I/O error as `strerror` words, without Rust's "(os error N)".
pub fn describe_io(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Whether `path` names a file kxen-vmm can open and read.
fn readable_file(what: &'static str, path: &str) -> Result<(), CreateError> {
    let unreadable = |reason: String| CreateError::Unreadable {
        what,
        path: path.to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(describe_io(&e)))?;
    let meta = file.metadata().map_err(|e| unreadable(describe_io(&e)))?;
    // Opening a directory succeeds; reading it does not.
    if meta.is_dir() {
        return Err(unreadable(nix::errno::Errno::EISDIR.desc().to_string()));
    }
    Ok(())
}

/// Everything kxend can check about a domain before starting its VMM,
/// except the name (the caller holds the domain table).
pub fn check(config: &DomainConfig, spec: &LaunchSpec) -> Result<(), CreateError> {
    for (key, mib) in [("memory", spec.memory_mib), ("maxmem", spec.maxmem_mib)] {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
            return Err(CreateError::Memory { key, mib });
        }
    }
    if !(1..=MAX_VCPUS).contains(&spec.vcpus) {
        return Err(CreateError::Vcpus(spec.vcpus));
    }
    readable_file("kernel", &spec.kernel)?;
    if config.domain_type == DomainType::Pv {
        pv_kernel(&spec.kernel)?;
    }
    if let Some(ramdisk) = &spec.ramdisk {
        readable_file("ramdisk", ramdisk)?;
    }
    for disk in &config.disks {
        disk_present(disk)?;
    }
    Ok(())
}

/// Whether `kernel` can boot as a classic PV guest, checked with the PV
/// domain builder's own parser before a VMM is started: a kernel without
/// PV notes (the common mistake: a PVH kernel in a cfg without `type`,
/// which xl reads as pv) gets the builder's reason in one line.
fn pv_kernel(kernel: &str) -> Result<(), CreateError> {
    use kxen_loader::pv::{bzimage::MAX_KERNEL_SIZE, PvKernel};
    let mut image = Vec::new();
    let read = std::fs::File::open(kernel).and_then(|f| {
        use std::io::Read;
        f.take(MAX_KERNEL_SIZE as u64 + 1).read_to_end(&mut image)
    });
    read.map_err(|e| CreateError::Unreadable {
        what: "kernel",
        path: kernel.to_string(),
        reason: describe_io(&e),
    })?;
    PvKernel::from_image(&image)
        .map(|_| ())
        .map_err(|e| CreateError::NotPvKernel {
            kernel: kernel.to_string(),
            reason: e.to_string(),
        })
}

/// Whether a disk's image or device exists (as libxl checks before it
/// picks a backend; `xl block-attach` gets the same check).
pub fn disk_present(disk: &DiskSpec) -> Result<(), CreateError> {
    if let Some(path) = disk.target_path() {
        std::fs::metadata(path).map_err(|e| CreateError::Disk {
            vdev: disk.vdev.clone(),
            path: path.to_string(),
            reason: describe_io(&e),
        })?;
    }
    Ok(())
}

/// Why a kxen-vmm that ended during start-up failed: the last line of its
/// stderr (`log`, the part it wrote) that carries its prefix, else its exit
/// status.
pub fn vmm_failure(log: &str, status: ExitStatus) -> String {
    let said = log
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(VMM_PREFIX))
        .map(str::trim)
        .filter(|reason| !reason.is_empty());
    if let Some(reason) = said {
        return reason.to_string();
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("kxen-vmm exited with status {code}"),
        (None, Some(libc::SIGSYS)) => {
            "kxen-vmm was killed by SIGSYS (seccomp violation)".to_string()
        }
        (None, Some(signal)) => format!("kxen-vmm was killed by signal {signal}"),
        (None, None) => "kxen-vmm ended".to_string(),
    }
}

/// What the VMM wrote to `log` from byte `from` on (the log is appended to
/// across restarts of a domain with the same id and name).
pub fn log_since(log: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn spec_of(text: &str) -> (DomainConfig, LaunchSpec) {
        let (mut cfg, _) = kxen_toolstack::config::parse_str(text, "t.cfg").unwrap();
        cfg.fill_defaults().unwrap();
        let spec = LaunchSpec::from_config(&cfg).unwrap();
        (cfg, spec)
    }

    fn refusal(text: &str) -> String {
        let (cfg, spec) = spec_of(text);
        check(&cfg, &spec).unwrap_err().to_string()
    }

    /// A kernel that exists: this test's own executable.
    fn kernel() -> String {
        std::env::current_exe().unwrap().display().to_string()
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        let k = kernel();
        let base = format!("name = \"t\"\ntype = \"pvh\"\nkernel = \"{k}\"\n");
        assert!(check(&spec_of(&base).0, &spec_of(&base).1).is_ok());
        assert_eq!(
            refusal(&format!("name = \"t\"\nkernel = \"{k}\"\n")),
            format!(
                "type \"pv\": kernel {k}: this kernel carries no Xen ELF notes: it cannot boot as a Xen PV guest"
            )
        );
        assert_eq!(
            refusal(&format!("{base}memory = 1\n")),
            "memory = 1 MiB is out of range: kxen runs guests of 2 to 1048576 MiB"
        );
        assert_eq!(
            refusal(&format!("{base}memory = 64\nmaxmem = 2000000\n")),
            "maxmem = 2000000 MiB is out of range: kxen runs guests of 2 to 1048576 MiB"
        );
        assert_eq!(
            refusal(&format!("{base}vcpus = 33\n")),
            "vcpus = 33 is out of range: kxen runs 1 to 32 vCPUs"
        );
        assert!(check(&spec_of(&base).0, &{
            let mut s = spec_of(&format!("{base}vcpus = 32\n")).1;
            s.memory_mib = MAX_MEMORY_MIB;
            s.maxmem_mib = MAX_MEMORY_MIB;
            s
        })
        .is_ok());
        assert_eq!(
            refusal("name = \"t\"\ntype = \"pvh\"\nkernel = \"/nonexistent/k\"\n"),
            "cannot read kernel /nonexistent/k: No such file or directory"
        );
        assert_eq!(
            refusal("name = \"t\"\ntype = \"hvm\"\nkernel = \"/\"\n"),
            "cannot read kernel /: Is a directory"
        );
        assert_eq!(
            refusal(&format!("{base}ramdisk = \"/nonexistent/rd\"\n")),
            "cannot read ramdisk /nonexistent/rd: No such file or directory"
        );
        assert_eq!(
            refusal(&format!(
                "{base}disk = [ '/nonexistent/d.img,raw,xvdb,rw' ]\n"
            )),
            "Disk vdev=xvdb failed to stat: /nonexistent/d.img: No such file or directory"
        );
    }

    #[test]
    fn a_dead_vmm_is_explained_by_its_own_last_words() {
        let failed = ExitStatus::from_raw(1 << 8);
        let log = "\x1b[2m2026-01-01T00:00:00Z\x1b[0m ERROR kernel /k: not an ELF image\n\
                   kxen-vmm: kernel /k: not an ELF image\n";
        assert_eq!(vmm_failure(log, failed), "kernel /k: not an ELF image");
        assert_eq!(vmm_failure("", failed), "kxen-vmm exited with status 1");
        assert_eq!(
            vmm_failure("noise\n", ExitStatus::from_raw(9)),
            "kxen-vmm was killed by signal 9"
        );
    }
}
