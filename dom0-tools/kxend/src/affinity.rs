//! A domain's vCPUs as host threads: finding them, pinning them
//! (`xl vcpu-pin`, xl.cfg's `cpus`) and reading back where they may run.
//!
//! Each vCPU of a kxen-vmm is a thread named `vcpuN` (hypervisor/vmm's
//! vm.rs names them so). kxend finds them in `/proc/<vmm pid>/task/*/comm`
//! under the VMM's host pid (the VMM sees itself as PID 1 of its own
//! namespace; kxend, in the parent namespace, uses the host ids) and sets
//! their CPU affinity from outside with sched_setaffinity, which needs no
//! system call of the VMM and so nothing its seccomp filters allow.
//!
//! Linux has only hard affinity. Xen's soft affinity (CPUs a vCPU prefers)
//! is kept by kxend and shown by `xl vcpu-list`, and has no effect.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AffinityError {
    #[error("kxen-vmm {pid} has no thread for vCPU {vcpu}")]
    NoThread { pid: u32, vcpu: u32 },
    #[error("{0}")]
    Os(#[from] std::io::Error),
}

/// The host's CPU count (configured CPUs: the ids affinity masks use).
pub fn host_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// The vCPU threads of VMM `pid`: vCPU id to host thread id.
pub fn vcpu_threads(pid: u32) -> BTreeMap<u32, i32> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Some(vcpu) = comm
            .trim()
            .strip_prefix("vcpu")
            .and_then(|n| n.parse().ok())
        {
            threads.insert(vcpu, tid);
        }
    }
    threads
}

/// Wait until VMM `pid` runs threads for vCPUs 0..`count` (it starts them
/// after opening its control socket), or `limit` passes.
pub fn await_vcpu_threads(
    pid: u32,
    count: u32,
    limit: Duration,
) -> Result<BTreeMap<u32, i32>, AffinityError> {
    let deadline = Instant::now() + limit;
    loop {
        let threads = vcpu_threads(pid);
        match (0..count).find(|v| !threads.contains_key(v)) {
            None => return Ok(threads),
            Some(vcpu) if Instant::now() >= deadline => {
                return Err(AffinityError::NoThread { pid, vcpu })
            }
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Let thread `tid` run only on `cpus`. The kernel refuses (EINVAL) a set
/// with no CPU its cpuset allows, and narrows any other to those.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if (cpu as usize) < libc::CPU_SETSIZE as usize {
            // SAFETY: the index is below CPU_SETSIZE, inside `set`.
            unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel
    // only reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs thread `tid` may run on, as the kernel has them now.
pub fn get_affinity(tid: i32) -> std::io::Result<Vec<u32>> {
    // SAFETY: as in set_affinity; the kernel writes the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE, inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu as u32)
        .collect())
}

/// What /proc says about one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadStat {
    /// On a CPU or ready to be (`R`).
    pub runnable: bool,
    /// The CPU it last ran on.
    pub cpu: u32,
    /// User and system time, in ns.
    pub time_ns: u64,
}

/// Read `/proc/PID/task/TID/stat`.
pub fn thread_stat(pid: u32, tid: i32) -> Option<ThreadStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<ThreadStat> {
    // The fields after the command name (which may hold spaces and
    // parentheses): the first is field 3 of proc(5), the state.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let ticks: u64 = [14, 15]
        .iter()
        .filter_map(|&n| field(n)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)
        .unwrap_or(100);
    Some(ThreadStat {
        runnable: field(3)? == "R",
        cpu: field(39)?.parse().ok()?,
        time_ns: ticks * 1_000_000_000 / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // A real line, with a command name holding a space and a ')'.
        let line = "4242 (vcpu 0)) S 1 4242 4242 0 -1 4194624 1000 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1000000 500 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert!(!s.runnable);
        assert_eq!(s.cpu, 1);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(s.time_ns, 300 * 1_000_000_000 / hz);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_thread_round_trip() {
        // This test thread, pinned to CPU 0 and back: what the kernel
        // reports is what was set.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let before = get_affinity(tid).unwrap();
        assert!(!before.is_empty());
        set_affinity(tid, &[0]).unwrap();
        assert_eq!(get_affinity(tid).unwrap(), [0]);
        // No CPU at all is refused, as xl's empty hard affinity is.
        let err = set_affinity(tid, &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        set_affinity(tid, &before).unwrap();
        assert_eq!(get_affinity(tid).unwrap(), before);
        let me = thread_stat(std::process::id(), tid).unwrap();
        assert!(me.runnable, "a thread reading its own stat is running");
    }
}
