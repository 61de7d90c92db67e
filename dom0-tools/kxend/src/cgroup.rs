//! One cgroup per domain's VMM, for memory and CPU accounting and for the
//! scheduler settings of its xl.cfg (`cap`, `cpu_weight`).
//!
//! Each controller is taken from cgroup v2 where the v2 hierarchy offers it,
//! else from the v1 hierarchy that carries it: hosts are often hybrid (this
//! one has cpu, cpuacct, memory, cpuset and pids on v1 and only hugetlb on
//! v2). Domain cgroups sit under kxend's own cgroup in each hierarchy, in
//! `kxen-INSTANCE/dom-N`, so a limit kxend runs under also bounds its VMMs;
//! INSTANCE tells apart kxends with different run directories (tests run
//! several at once, each with its own domain 1).
//!
//! The VMM joins its cgroups itself, between fork and exec: kxend opens each
//! `cgroup.procs` beforehand and the child writes "0" (itself) into them, so
//! nothing it does escapes accounting.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{info, warn};

/// The controllers a domain's cgroup uses.
const WANTED: &[&str] = &["cpu", "cpuacct", "memory", "cpuset", "pids"];

/// Why a domain's cgroup could not be made.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy on this host carries the {0} controller")]
    NoController(&'static str),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One hierarchy kxend places domains in.
#[derive(Clone, Debug)]
struct Hierarchy {
    /// `<mount point><kxend's cgroup>/kxen-INSTANCE`.
    base: PathBuf,
    /// The wanted controllers this hierarchy carries for us.
    controllers: Vec<String>,
    v2: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The cgroup files that carry `cpu`, and their values, in v1 or v2.
///
/// Cap: xl's percent of one CPU becomes a CFS quota per 100 ms period
/// (`cap` 50 is 50 ms in each 100 ms). Weight: Xen's default 256 maps to
/// each interface's default (v1 `cpu.shares` 1024, v2 `cpu.weight` 100),
/// proportionally, within the ranges the kernel accepts. `reset`: write
/// the defaults for what `cpu` leaves unset or at 0 (a live change must
/// undo an earlier cap); at creation those files are simply left alone.
fn cpu_writes(v2: bool, cpu: CpuSettings, reset: bool) -> Vec<(&'static str, String)> {
    let mut writes = Vec::new();
    match cpu.cap_percent.filter(|&c| c > 0) {
        Some(cap) => {
            let quota = u64::from(cap) * 1000;
            if v2 {
                writes.push(("cpu.max", format!("{quota} 100000")));
            } else {
                writes.push(("cpu.cfs_period_us", "100000".to_string()));
                writes.push(("cpu.cfs_quota_us", quota.to_string()));
            }
        }
        None if reset => {
            if v2 {
                writes.push(("cpu.max", "max 100000".to_string()));
            } else {
                writes.push(("cpu.cfs_quota_us", "-1".to_string()));
            }
        }
        None => {}
    }
    let weight = match cpu.weight {
        Some(w) => Some(w),
        None if reset => Some(kxen_toolstack::xl::DEFAULT_WEIGHT),
        None => None,
    };
    if let Some(weight) = weight {
        if v2 {
            let w = (u64::from(weight) * 100 / 256).clamp(1, 10_000);
            writes.push(("cpu.weight", w.to_string()));
        } else {
            let shares = (u64::from(weight) * 1024 / 256).max(2);
            writes.push(("cpu.shares", shares.to_string()));
        }
    }
    writes
}

/// The cgroup layout found on this host at kxend's start.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    hierarchies: Vec<Hierarchy>,
}

/// Scheduler settings of one domain, in xl.cfg's units.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSettings {
    /// Percent of one CPU the domain may use (`cap`; 0 or None: no cap).
    pub cap_percent: Option<u32>,
    /// Credit scheduler weight (`cpu_weight`; Xen's default is 256).
    pub weight: Option<u32>,
}

/// A domain's cgroups, ready for its VMM to join.
#[derive(Debug, Default)]
pub struct DomainCgroup {
    /// Each hierarchy's `cgroup.procs` of this domain, open for writing.
    pub procs: Vec<OwnedFd>,
    /// The directories, to remove once the VMM is gone.
    pub dirs: Vec<PathBuf>,
}

/// One line of /proc/self/mountinfo that mounts a cgroup hierarchy.
struct CgroupMount {
    mount_point: PathBuf,
    v2: bool,
    /// v1: the controllers named in the super options.
    controllers: Vec<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER_OPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fstype)) = (fields.get(4), right.first()) else {
            continue;
        };
        match *fstype {
            "cgroup2" => mounts.push(CgroupMount {
                mount_point: PathBuf::from(mount_point),
                v2: true,
                controllers: Vec::new(),
            }),
            "cgroup" => {
                let controllers = right
                    .get(2)
                    .map(|opts| {
                        opts.split(',')
                            .filter(|o| WANTED.contains(o))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                mounts.push(CgroupMount {
                    mount_point: PathBuf::from(mount_point),
                    v2: false,
                    controllers,
                });
            }
            _ => {}
        }
    }
    mounts
}

/// kxend's own cgroup in the v1 hierarchy of `controllers`, or in v2.
fn own_path(proc_cgroup: &str, v2: bool, controllers: &[String]) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if v2 {
            list.is_empty()
        } else {
            list.split(',').any(|c| controllers.iter().any(|w| w == c))
        };
        matches.then(|| path.to_string())
    })
}

impl Cgroups {
    /// Find the hierarchies of this host. A host without cgroups gives an
    /// empty layout: domains then run unaccounted, and kxend says so once.
    pub fn detect(instance: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = parse_mounts(&mountinfo);
        let mut hierarchies = Vec::new();
        let mut taken: Vec<String> = Vec::new();
        // v2 first: it wins every controller it offers.
        for m in mounts.iter().filter(|m| m.v2) {
            let Some(own) = own_path(&proc_cgroup, true, &[]) else {
                continue;
            };
            let own_dir = m.mount_point.join(own.trim_start_matches('/'));
            let offered =
                std::fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<String> = offered
                .split_whitespace()
                .filter(|c| WANTED.contains(c))
                .map(str::to_string)
                .collect();
            if controllers.is_empty() {
                continue;
            }
            taken.extend(controllers.iter().cloned());
            hierarchies.push(Hierarchy {
                base: own_dir.join(format!("kxen-{instance}")),
                controllers,
                v2: true,
            });
        }
        for m in mounts.iter().filter(|m| !m.v2) {
            let controllers: Vec<String> = m
                .controllers
                .iter()
                .filter(|c| !taken.contains(c))
                .cloned()
                .collect();
            if controllers.is_empty() {
                continue;
            }
            let Some(own) = own_path(&proc_cgroup, false, &controllers) else {
                continue;
            };
            taken.extend(controllers.iter().cloned());
            hierarchies.push(Hierarchy {
                base: m
                    .mount_point
                    .join(own.trim_start_matches('/'))
                    .join(format!("kxen-{instance}")),
                controllers,
                v2: false,
            });
        }
        if hierarchies.is_empty() {
            warn!("no cgroup hierarchy offers {WANTED:?}: domains run unaccounted");
        } else {
            for h in &hierarchies {
                info!(
                    base = %h.base.display(),
                    v2 = h.v2,
                    controllers = ?h.controllers,
                    "domain cgroups"
                );
            }
        }
        Cgroups { hierarchies }
    }

    /// Make domain `domid`'s cgroups with `cpu` applied, and open their
    /// `cgroup.procs` for the VMM to join.
    pub fn create(&self, domid: u32, cpu: CpuSettings) -> Result<DomainCgroup, CgroupError> {
        let mut made = DomainCgroup::default();
        for h in &self.hierarchies {
            let mut result = self.create_one(h, domid, cpu, &mut made);
            if matches!(&result, Err(CgroupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound)
            {
                // The base went with another domain's end meanwhile.
                result = self.create_one(h, domid, cpu, &mut made);
            }
            if let Err(e) = result {
                remove_dirs(&made.dirs);
                return Err(e);
            }
        }
        Ok(made)
    }

    fn create_one(
        &self,
        h: &Hierarchy,
        domid: u32,
        cpu: CpuSettings,
        made: &mut DomainCgroup,
    ) -> Result<(), CgroupError> {
        let has = |c: &str| h.has(c);
        // The base goes with its last domain ([`Self::remove`]); another
        // thread may be making it, or removing it, right now.
        let made_base = match std::fs::create_dir(&h.base) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(&h.base)(e)),
        };
        if made_base {
            if h.v2 {
                // The controllers must be switched on for the children.
                let enable: Vec<String> = h.controllers.iter().map(|c| format!("+{c}")).collect();
                let parent = h.base.parent().unwrap_or(&h.base);
                write(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
                write(&h.base.join("cgroup.subtree_control"), &enable.join(" "))?;
            } else if has("cpuset") {
                inherit_cpuset(&h.base)?;
            }
        }
        let dir = h.base.join(format!("dom-{domid}"));
        // A leftover of a kxend that died with its domain is empty: start
        // afresh rather than inherit its settings.
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).map_err(io_err(&dir))?;
        made.dirs.push(dir.clone());
        if !h.v2 && has("cpuset") {
            inherit_cpuset(&dir)?;
        }
        if has("cpu") {
            for (file, value) in cpu_writes(h.v2, cpu, false) {
                write(&dir.join(file), &value)?;
            }
        }
        let procs = dir.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err(&procs))?;
        made.procs.push(file.into());
        Ok(())
    }

    /// Change a running domain's weight and cap (`xl sched-credit`): both
    /// are written, a cap of 0 lifting the limit.
    pub fn set_cpu(&self, domid: u32, cpu: CpuSettings) -> Result<(), CgroupError> {
        let mut applied = false;
        for h in self.hierarchies.iter().filter(|h| h.has("cpu")) {
            let dir = h.base.join(format!("dom-{domid}"));
            for (file, value) in cpu_writes(h.v2, cpu, true) {
                write(&dir.join(file), &value)?;
            }
            applied = true;
        }
        if applied {
            Ok(())
        } else {
            Err(CgroupError::NoController("cpu"))
        }
    }

    /// The CPUs domain `domid`'s cpuset cgroup lets its threads use, as the
    /// kernel lists them (`0-1`); None without a cpuset controller.
    pub fn allowed_cpus(&self, domid: u32) -> Option<String> {
        let h = self.hierarchies.iter().find(|h| h.has("cpuset"))?;
        let dir = h.base.join(format!("dom-{domid}"));
        // v2 shows what the parents allow in the effective file.
        let file = if h.v2 {
            "cpuset.cpus.effective"
        } else {
            "cpuset.cpus"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Remove domain `domid`'s cgroups (its VMM has ended), and the base
    /// with the last of them.
    pub fn remove(&self, domid: u32) {
        let dirs: Vec<PathBuf> = self
            .hierarchies
            .iter()
            .map(|h| h.base.join(format!("dom-{domid}")))
            .filter(|d| d.exists())
            .collect();
        remove_dirs(&dirs);
        self.remove_empty_bases();
    }

    /// Remove this kxend's bases that hold no domain (other domains keep
    /// theirs: rmdir refuses a cgroup with children).
    fn remove_empty_bases(&self) {
        for h in &self.hierarchies {
            let _ = std::fs::remove_dir(&h.base);
        }
    }

    /// At start: remove the cgroups of domains whose VMMs are gone (a
    /// kxend that died before cleaning up), keeping those of domains
    /// still running (kxend re-attaches to them).
    pub fn sweep(&self) {
        for h in &self.hierarchies {
            let Ok(entries) = std::fs::read_dir(&h.base) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                let is_domain = entry.file_name().to_string_lossy().starts_with("dom-");
                let empty = std::fs::read_to_string(dir.join("cgroup.procs"))
                    .is_ok_and(|procs| procs.trim().is_empty());
                if is_domain && empty {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        self.remove_empty_bases();
    }
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        // A cgroup directory goes with rmdir only (its files are virtual).
        if let Err(e) = std::fs::remove_dir(dir) {
            warn!("removing cgroup {}: {e}", dir.display());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

/// A new v1 cpuset cgroup starts empty and refuses tasks: give it its
/// parent's CPUs and memory nodes.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(io_err(&from))?;
        write(&dir.join(file), value.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 25 0:31 / /sys/fs/cgroup/cpu rw,nosuid shared:11 - cgroup cgroup rw,cpu
37 25 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
38 25 0:33 / /sys/fs/cgroup/freezer rw,nosuid shared:13 - cgroup cgroup rw,freezer
39 25 0:34 / /proc rw - proc proc rw";

    #[test]
    fn hybrid_mounts_are_told_apart() {
        let mounts = parse_mounts(HYBRID);
        assert_eq!(mounts.len(), 4);
        assert!(mounts[0].v2);
        assert_eq!(mounts[1].controllers, ["cpu"]);
        assert_eq!(mounts[2].controllers, ["memory"]);
        assert!(mounts[3].controllers.is_empty(), "freezer is not wanted");
    }

    fn settings(cap: Option<u32>, weight: Option<u32>) -> CpuSettings {
        CpuSettings {
            cap_percent: cap,
            weight,
        }
    }

    #[test]
    fn cpu_mapping_v1_and_v2() {
        let s = settings(Some(50), Some(512));
        assert_eq!(
            cpu_writes(false, s, false),
            [
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "50000".to_string()),
                ("cpu.shares", "2048".to_string()),
            ]
        );
        assert_eq!(
            cpu_writes(true, s, false),
            [
                ("cpu.max", "50000 100000".to_string()),
                ("cpu.weight", "200".to_string()),
            ]
        );
        // A cap above one CPU is a quota above the period.
        assert_eq!(
            cpu_writes(true, settings(Some(150), None), false),
            [("cpu.max", "150000 100000".to_string())]
        );
        // Xen's extremes land inside each interface's range.
        assert_eq!(
            cpu_writes(false, settings(None, Some(1)), false),
            [("cpu.shares", "4".to_string())]
        );
        assert_eq!(
            cpu_writes(true, settings(None, Some(1)), false),
            [("cpu.weight", "1".to_string())]
        );
        assert_eq!(
            cpu_writes(true, settings(None, Some(65535)), false),
            [("cpu.weight", "10000".to_string())]
        );
        // At creation, nothing set is nothing written; a live change
        // writes the defaults back (cap 0: no limit).
        assert!(cpu_writes(false, settings(None, None), false).is_empty());
        assert_eq!(
            cpu_writes(false, settings(Some(0), None), true),
            [
                ("cpu.cfs_quota_us", "-1".to_string()),
                ("cpu.shares", "1024".to_string()),
            ]
        );
        assert_eq!(
            cpu_writes(true, settings(None, None), true),
            [
                ("cpu.max", "max 100000".to_string()),
                ("cpu.weight", "100".to_string()),
            ]
        );
    }

    /// This host has no cpu controller in its v2 hierarchy (only hugetlb
    /// is there), so the v2 paths of a live change run here against a
    /// temporary directory standing in for the cgroup tree.
    #[test]
    fn live_change_in_a_v2_tree() {
        let root = std::env::temp_dir().join(format!("kxen-cgroup-v2-{}", std::process::id()));
        let base = root.join("kxen-test");
        let dom = base.join("dom-3");
        std::fs::create_dir_all(&dom).unwrap();
        std::fs::write(dom.join("cpuset.cpus.effective"), "0-1\n").unwrap();
        let cgroups = Cgroups {
            hierarchies: vec![Hierarchy {
                base: base.clone(),
                controllers: vec!["cpu".into(), "cpuset".into()],
                v2: true,
            }],
        };
        cgroups.set_cpu(3, settings(Some(25), Some(128))).unwrap();
        let read = |f: &str| std::fs::read_to_string(dom.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("cpu.weight"), "50");
        cgroups.set_cpu(3, settings(Some(0), Some(256))).unwrap();
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("cpu.weight"), "100");
        assert_eq!(cgroups.allowed_cpus(3).as_deref(), Some("0-1"));
        // A domain without a cgroup directory: the write fails, named.
        let err = cgroups.set_cpu(4, settings(Some(10), None)).unwrap_err();
        assert!(err.to_string().contains("dom-4"), "{err}");
        // No cpu controller at all.
        let none = Cgroups::default();
        assert!(matches!(
            none.set_cpu(3, settings(None, None)),
            Err(CgroupError::NoController("cpu"))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn own_cgroup_per_hierarchy() {
        let proc_cgroup = "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            own_path(proc_cgroup, false, &["memory".into()]).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(
            own_path(proc_cgroup, false, &["cpuacct".into()]).as_deref(),
            Some("/")
        );
        assert_eq!(
            own_path(proc_cgroup, true, &[]).as_deref(),
            Some("/user.slice")
        );
    }
}
