//! Where a domain's time goes: kxen-vmm's own exit counters (how many
//! exits of each kind, and how long kxen-vmm spent serving them) and
//! KVM's per-vCPU statistics (exits KVM served itself, instructions its
//! emulator ran), read from KVM's binary stats file descriptors.
//!
//! On PVM hosts every instruction of guest ring 0 runs in KVM's emulator
//! (`insn_emulation`), and every PV transition is one exit to kxen-vmm:
//! together the two say what a guest operation costs and why. The
//! control socket's `perf-counters` request returns a snapshot, as named
//! counters (Xen's `xenperf` shows its perf counters the same way).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::debug;

/// What kxen-vmm did with one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Port I/O served by kxen-vmm (devices, the hypercall port).
    PortIo,
    /// MMIO served by kxen-vmm's devices.
    Mmio,
    /// An MSR access the filter hands to kxen-vmm.
    Msr,
    /// A hypercall other than a PV `iret` (counted by number as well).
    Hypercall,
    /// A PV guest's `iret` hypercall.
    PvIret,
    /// A PV user-mode `syscall` bounced to the guest kernel.
    PvSyscall,
    /// A PV exception bounced to the guest kernel's handler.
    PvBounce,
    /// A PV page fault on one of the guest's own L1 tables: the write was
    /// emulated (writable page tables).
    PvPtwr,
    /// A PV privileged instruction kxen-vmm emulated (port I/O, MSRs,
    /// CPUID...).
    PvEmulated,
    /// kxen-vmm's event vector: an event channel upcall became due.
    PvEvent,
    /// KVM's emulator gave up and kxen-vmm answered (PVM hosts).
    EmulationFailure,
    /// Everything else: kicks, halts, system events.
    Other,
}

impl ExitKind {
    const ALL: [ExitKind; 12] = [
        ExitKind::PortIo,
        ExitKind::Mmio,
        ExitKind::Msr,
        ExitKind::Hypercall,
        ExitKind::PvIret,
        ExitKind::PvSyscall,
        ExitKind::PvBounce,
        ExitKind::PvPtwr,
        ExitKind::PvEmulated,
        ExitKind::PvEvent,
        ExitKind::EmulationFailure,
        ExitKind::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            ExitKind::PortIo => "port_io",
            ExitKind::Mmio => "mmio",
            ExitKind::Msr => "msr",
            ExitKind::Hypercall => "hypercall",
            ExitKind::PvIret => "pv_iret",
            ExitKind::PvSyscall => "pv_syscall",
            ExitKind::PvBounce => "pv_bounce",
            ExitKind::PvPtwr => "pv_ptwr",
            ExitKind::PvEmulated => "pv_emulated",
            ExitKind::PvEvent => "pv_event",
            ExitKind::EmulationFailure => "emulation_failure",
            ExitKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        ExitKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(ExitKind::ALL.len() - 1)
    }
}

/// Hypercall numbers counted one by one; higher ones share the last slot.
const HYPERCALL_SLOTS: usize = 64;

/// A count and the nanoseconds spent on it. Only its vCPU's thread
/// writes it, so an add is a plain load and store (no locked
/// instruction); the control socket only reads.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    fn add(&self, spent: Duration) {
        let ns = spent.as_nanos().min(u64::MAX as u128) as u64;
        let count = self.count.load(Ordering::Relaxed);
        self.count.store(count.wrapping_add(1), Ordering::Relaxed);
        let total = self.ns.load(Ordering::Relaxed);
        self.ns.store(total.wrapping_add(ns), Ordering::Relaxed);
    }

    /// Add this tally into `out` as `vmm.NAME` and `vmm.NAME_ns`.
    fn sum_into(&self, out: &mut BTreeMap<String, u64>, name: &str) {
        let count = self.count.load(Ordering::Relaxed);
        if count != 0 {
            *out.entry(format!("vmm.{name}")).or_default() += count;
            *out.entry(format!("vmm.{name}_ns")).or_default() += self.ns.load(Ordering::Relaxed);
        }
    }
}

/// One vCPU's counters, on cache lines of their own: the exit path of
/// one vCPU never writes a line another vCPU writes.
#[repr(align(64))]
struct VcpuPerf {
    /// Time spent inside KVM_RUN: guest code, KVM's own exits and its
    /// emulator.
    in_kvm: Tally,
    exits: [Tally; ExitKind::ALL.len()],
    /// Exits that blocked the vCPU, and for how long.
    blocked: Tally,
    hypercalls: [Tally; HYPERCALL_SLOTS],
}

impl Default for VcpuPerf {
    fn default() -> Self {
        VcpuPerf {
            in_kvm: Tally::default(),
            exits: std::array::from_fn(|_| Tally::default()),
            blocked: Tally::default(),
            hypercalls: std::array::from_fn(|_| Tally::default()),
        }
    }
}

/// The domain's counters: written by each vCPU's thread in its own
/// block, read by the control socket.
pub struct PerfCounters {
    vcpus: Vec<VcpuPerf>,
    /// Whole shadow-MMU flushes (a memory slot added and removed).
    shadow_flushes: AtomicU64,
    kvm_stats: Mutex<Vec<KvmStats>>,
}

impl PerfCounters {
    pub fn new(nr_vcpus: u32) -> Self {
        PerfCounters {
            vcpus: (0..nr_vcpus).map(|_| VcpuPerf::default()).collect(),
            shadow_flushes: AtomicU64::new(0),
            kvm_stats: Mutex::new(Vec::new()),
        }
    }

    /// vCPU `vcpu`'s counters; only its own thread may add to them.
    fn of(&self, vcpu: u32) -> Option<&VcpuPerf> {
        self.vcpus.get(vcpu as usize)
    }

    /// One KVM_RUN of `vcpu` that took `spent`.
    pub fn ran(&self, vcpu: u32, spent: Duration) {
        if let Some(v) = self.of(vcpu) {
            v.in_kvm.add(spent);
        }
    }

    /// One exit of `vcpu`, of `kind`, that kxen-vmm took `spent` to serve,
    /// `blocked` of it with the vCPU blocked in a SCHEDOP hypercall (idle,
    /// counted apart as `vmm.blocked`).
    pub fn exit(&self, vcpu: u32, kind: ExitKind, spent: Duration, blocked: Duration) {
        if let Some(v) = self.of(vcpu) {
            v.exits[kind.index()].add(spent.saturating_sub(blocked));
            if !blocked.is_zero() {
                v.blocked.add(blocked);
            }
        }
    }

    /// One hypercall `nr` of `vcpu`, served in `spent`.
    pub fn hypercall(&self, vcpu: u32, nr: u64, spent: Duration) {
        if let Some(v) = self.of(vcpu) {
            let slot = (nr as usize).min(HYPERCALL_SLOTS - 1);
            v.hypercalls[slot].add(spent);
        }
    }

    /// A whole shadow-MMU flush (rare: any vCPU, a locked add is fine).
    pub fn shadow_flush(&self) {
        self.shadow_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Also report KVM's statistics of one vCPU.
    pub fn add_kvm_stats(&self, stats: KvmStats) {
        if let Ok(mut all) = self.kvm_stats.lock() {
            all.push(stats);
        }
    }

    /// Every counter by name, summed over the vCPUs: `vmm.*` are
    /// kxen-vmm's, `kvm.*` KVM's cumulative statistics. Counters that are
    /// still zero are left out.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for v in &self.vcpus {
            v.in_kvm.sum_into(&mut out, "kvm_run");
            v.blocked.sum_into(&mut out, "blocked");
            for kind in ExitKind::ALL {
                v.exits[kind.index()].sum_into(&mut out, &format!("exit.{}", kind.name()));
            }
            for (nr, tally) in v.hypercalls.iter().enumerate() {
                let name = if nr == HYPERCALL_SLOTS - 1 {
                    format!("hypercall.{nr}+")
                } else {
                    format!("hypercall.{nr}")
                };
                tally.sum_into(&mut out, &name);
            }
        }
        let flushes = self.shadow_flushes.load(Ordering::Relaxed);
        if flushes != 0 {
            out.insert("vmm.shadow_flushes".into(), flushes);
        }
        if let Ok(all) = self.kvm_stats.lock() {
            for stats in all.iter() {
                for (name, value) in stats.read() {
                    *out.entry(format!("kvm.{name}")).or_default() += value;
                }
            }
        }
        out.retain(|_, v| *v != 0);
        out
    }
}

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
/// Bytes of `struct kvm_stats_header`.
const HEADER_SIZE: usize = 24;
/// Bytes of `struct kvm_stats_desc` before its name.
const DESC_SIZE: usize = 16;
/// More descriptors than any kernel has: a bound on what is read.
const MAX_DESCRIPTORS: usize = 1024;
const MAX_NAME_SIZE: usize = 256;

/// One cumulative statistic: its name and where its value lies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatDesc {
    name: String,
    /// Offset of its first u64 from the data block.
    offset: u64,
}

/// KVM's binary statistics of one vCPU (Documentation/virt/kvm/api.rst,
/// KVM_GET_STATS_FD): the descriptors are read once, the values on every
/// snapshot.
pub struct KvmStats {
    file: File,
    data_offset: u64,
    data_len: usize,
    counters: Vec<StatDesc>,
}

impl KvmStats {
    /// Open the stats file of the vCPU (or VM) behind `fd`; `None` where
    /// the kernel has none (before 5.14).
    pub fn open(fd: &impl AsRawFd) -> Option<KvmStats> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor or -1; it reads or writes no memory of ours.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if raw < 0 {
            debug!(
                "KVM_GET_STATS_FD: {}; no KVM statistics",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: `raw` is a new descriptor the kernel just gave us, owned
        // by nobody else.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).ok()?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (name_size, num_desc, desc_offset, data_offset) =
            (word(4) as usize, word(8) as usize, word(16), word(20));
        if num_desc > MAX_DESCRIPTORS || name_size > MAX_NAME_SIZE {
            return None;
        }
        let mut descs = vec![0u8; num_desc * (DESC_SIZE + name_size)];
        file.read_exact_at(&mut descs, desc_offset as u64).ok()?;
        let (counters, data_len) = parse_descriptors(&descs, num_desc, name_size)?;
        Some(KvmStats {
            file,
            data_offset: data_offset as u64,
            data_len,
            counters,
        })
    }

    /// The cumulative counters' values now.
    fn read(&self) -> Vec<(String, u64)> {
        let mut data = vec![0u8; self.data_len];
        if self
            .file
            .read_exact_at(&mut data, self.data_offset)
            .is_err()
        {
            return Vec::new();
        }
        self.counters
            .iter()
            .filter_map(|d| {
                let at = usize::try_from(d.offset).ok()?;
                let bytes = data.get(at..at.checked_add(8)?)?;
                Some((d.name.clone(), u64::from_le_bytes(bytes.try_into().ok()?)))
            })
            .collect()
    }
}

/// The cumulative single-value statistics among `num_desc` descriptors
/// of `name_size`-byte names, and the data block's length in bytes.
fn parse_descriptors(
    descs: &[u8],
    num_desc: usize,
    name_size: usize,
) -> Option<(Vec<StatDesc>, usize)> {
    let stride = DESC_SIZE.checked_add(name_size)?;
    let mut counters = Vec::new();
    let mut data_len = 0usize;
    for i in 0..num_desc {
        let desc = descs.get(i * stride..(i + 1) * stride)?;
        let flags = u32::from_le_bytes(desc[0..4].try_into().ok()?);
        let size = u16::from_le_bytes(desc[6..8].try_into().ok()?) as usize;
        let offset = u32::from_le_bytes(desc[8..12].try_into().ok()?) as usize;
        let end = offset.checked_add(size.checked_mul(8)?)?;
        data_len = data_len.max(end);
        let kind = flags & kvm_bindings::KVM_STATS_TYPE_MASK;
        if kind != kvm_bindings::KVM_STATS_TYPE_CUMULATIVE || size != 1 {
            continue;
        }
        let name = &desc[DESC_SIZE..];
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let name = std::str::from_utf8(&name[..len]).ok()?;
        counters.push(StatDesc {
            name: name.to_string(),
            offset: offset as u64,
        });
    }
    // A bound on what one snapshot reads.
    (data_len <= MAX_DESCRIPTORS * 8 * 64).then_some((counters, data_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(flags: u32, size: u16, offset: u32, name: &str, name_size: usize) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&0i16.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(&offset.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(name_size, 0);
        d.extend_from_slice(&n);
        d
    }

    #[test]
    fn only_cumulative_single_values_are_counters() {
        let mut descs = desc(kvm_bindings::KVM_STATS_TYPE_CUMULATIVE, 1, 0, "exits", 32);
        descs.extend(desc(kvm_bindings::KVM_STATS_TYPE_PEAK, 1, 8, "max", 32));
        descs.extend(desc(
            kvm_bindings::KVM_STATS_TYPE_LOG_HIST,
            4,
            16,
            "hist",
            32,
        ));
        descs.extend(desc(
            kvm_bindings::KVM_STATS_TYPE_CUMULATIVE,
            1,
            48,
            "insn_emulation",
            32,
        ));
        let (counters, len) = parse_descriptors(&descs, 4, 32).unwrap();
        let names: Vec<_> = counters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["exits", "insn_emulation"]);
        assert_eq!(counters[1].offset, 48);
        assert_eq!(len, 56);
    }

    #[test]
    fn short_or_overflowing_descriptors_are_refused() {
        let descs = desc(kvm_bindings::KVM_STATS_TYPE_CUMULATIVE, 1, 0, "exits", 32);
        assert!(parse_descriptors(&descs, 2, 32).is_none());
        let huge = desc(
            kvm_bindings::KVM_STATS_TYPE_CUMULATIVE,
            1,
            u32::MAX,
            "x",
            32,
        );
        assert!(parse_descriptors(&huge, 1, 32).is_none());
    }

    #[test]
    fn snapshot_names_exits_and_hypercalls() {
        let perf = PerfCounters::new(2);
        perf.exit(
            0,
            ExitKind::PvSyscall,
            Duration::from_nanos(500),
            Duration::ZERO,
        );
        perf.exit(
            1,
            ExitKind::PvSyscall,
            Duration::from_nanos(5700),
            Duration::from_nanos(5000),
        );
        perf.hypercall(0, 1, Duration::from_nanos(10));
        perf.hypercall(1, 999, Duration::from_nanos(10));
        // A vCPU the domain does not have counts nowhere.
        perf.hypercall(2, 1, Duration::from_nanos(10));
        let snap = perf.snapshot();
        assert_eq!(snap["vmm.exit.pv_syscall"], 2);
        assert_eq!(snap["vmm.exit.pv_syscall_ns"], 1200);
        assert_eq!(snap["vmm.blocked"], 1);
        assert_eq!(snap["vmm.blocked_ns"], 5000);
        assert_eq!(snap["vmm.hypercall.1"], 1);
        assert_eq!(snap["vmm.hypercall.63+"], 1);
        assert!(!snap.contains_key("vmm.exit.mmio"));
    }

    #[test]
    fn a_real_vcpu_has_kvm_statistics() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("a VM");
        let vcpu = vm.create_vcpu(0).expect("a vCPU");
        let Some(stats) = KvmStats::open(&vcpu) else {
            // Kernels before 5.14 have no binary statistics.
            assert_eq!(
                kvm.check_extension_raw(kvm_bindings::KVM_CAP_BINARY_STATS_FD as u64),
                0
            );
            return;
        };
        let values = stats.read();
        assert!(values.iter().any(|(n, _)| n == "exits"), "{values:?}");
    }
}
