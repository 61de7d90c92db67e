//! Per-thread seccomp filters: each kxen-vmm thread may make only the
//! system calls its job needs, so a guest that takes over the VMM through
//! a bug in exit or hypercall handling cannot open files, make sockets,
//! start programs or reach other KVM ioctls.
//!
//! Two filters, built with rust-vmm's `seccompiler`:
//! * [`ThreadClass::Vcpu`]: the vCPU threads (`KVM_RUN`, register access,
//!   and what hypercalls do: memory slots, event routing, irqfds, the memfd);
//! * [`ThreadClass::Service`]: every other thread (timers, Dom0 event
//!   ports, the control socket, serial input, virtio interrupts, the main
//!   thread once the domain runs).
//!
//! Each thread installs its filter as the first thing its body does
//! ([`install`]); a filter is inherited by threads that thread spawns.
//! The sets were found by running the test suite with `--seccomp log`
//! (the kernel logs each call outside the set as an audit record of type
//! 1326, naming the thread) and reading `strace -f` for the ioctls.
//!
//! `KXEN_VMM_SECCOMP=kill` (the default) kills the whole VMM on a call
//! outside the set, which kxend reports as the domain's crash ("killed by
//! SIGSYS (seccomp violation)"); `log` and `none` are for debugging. kxend
//! passes the variable through to the VMMs it starts.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_ioeventfd,
    kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msi,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;
use tracing::{error, warn};

/// What a call outside a thread's set does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filters (debugging only).
    None,
    /// Allow the call, and let the kernel log it (audit type 1326).
    Log,
    /// Kill the whole VMM with SIGSYS.
    Kill,
}

/// The environment variable that picks the [`SeccompMode`].
pub const MODE_ENV: &str = "KXEN_VMM_SECCOMP";

impl SeccompMode {
    /// The mode [`MODE_ENV`] asks for (default: kill).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(MODE_ENV) {
            Ok(value) => value.parse(),
            Err(_) => Ok(Self::Kill),
        }
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "log" => Ok(Self::Log),
            "kill" => Ok(Self::Kill),
            _ => Err(format!("bad {MODE_ENV}={s:?}: use none, log or kill")),
        }
    }
}

/// Which filter a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadClass {
    /// A vCPU thread.
    Vcpu,
    /// Any other VMM thread.
    Service,
}

/// Why a filter could not be built or installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadClass, seccompiler::BackendError),
    #[error("compiling the {0:?} seccomp filter: {1}")]
    Compile(ThreadClass, seccompiler::BackendError),
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadClass, seccompiler::Error),
}

/// The environment variable that arms the sandbox tests' probe: with it
/// set to 1, SIGUSR2 makes whichever thread receives it (the tests aim it
/// at one thread with tgkill) make a system call that no filter allows,
/// proving from outside that a violation kills the VMM and is reported.
/// It gives no power the VMM's starter lacks (that one can kill the VMM).
pub const SELFTEST_ENV: &str = "KXEN_VMM_SECCOMP_SELFTEST";

static MODE: OnceLock<SeccompMode> = OnceLock::new();
static VCPU_FILTER: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
static SERVICE_FILTER: OnceLock<Result<BpfProgram, String>> = OnceLock::new();

/// Set the mode for every later [`install`], and build both filters now so
/// a thread's start pays nothing and a build error shows before the guest
/// runs. Call once, from main, before any thread starts.
pub fn configure(mode: SeccompMode) -> Result<(), SeccompError> {
    let _ = MODE.set(mode);
    arm_selftest();
    if mode == SeccompMode::None {
        return Ok(());
    }
    report_panics_within_the_filters();
    let vcpu = build(ThreadClass::Vcpu, mode)?;
    let service = build(ThreadClass::Service, mode)?;
    let _ = VCPU_FILTER.set(Ok(vcpu));
    let _ = SERVICE_FILTER.set(Ok(service));
    Ok(())
}

/// Make a panic print its message and place with calls every filter
/// allows. std's own report, with RUST_BACKTRACE set, resolves the
/// backtrace by opening the binary and asking for the working directory,
/// which the filters forbid: the panic would end as a seccomp kill and be
/// reported as one. `KXEN_VMM_SECCOMP=none` gives the full backtrace.
fn report_panics_within_the_filters() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        eprintln!(
            "kxen-vmm: thread '{name}' {info} (no backtrace under seccomp; \
             KXEN_VMM_SECCOMP=none for one)"
        );
    }));
}

/// The configured mode (`None` when [`configure`] was never called: the
/// library's own unit tests run their threads unfiltered).
pub fn mode() -> SeccompMode {
    MODE.get().copied().unwrap_or(SeccompMode::None)
}

/// Confine the calling thread to its class's set. A filter that cannot be
/// installed in kill mode ends the process: running the guest unconfined
/// would be a silent hole.
pub fn install(class: ThreadClass) {
    let mode = mode();
    if mode == SeccompMode::None {
        return;
    }
    let slot = match class {
        ThreadClass::Vcpu => &VCPU_FILTER,
        ThreadClass::Service => &SERVICE_FILTER,
    };
    let result = match slot.get() {
        Some(Ok(program)) => seccompiler::apply_filter(program)
            .map_err(|e| SeccompError::Install(class, e).to_string()),
        Some(Err(e)) => Err(e.clone()),
        None => Err(format!("{class:?} seccomp filter used before configure()")),
    };
    if let Err(e) = result {
        if mode == SeccompMode::Kill {
            error!("{e}; stopping rather than run unconfined");
            eprintln!("kxen-vmm: {e}");
            std::process::abort();
        }
        warn!("{e}");
    }
}

/// SIGUSR2's handler under [`SELFTEST_ENV`].
extern "C" fn forbidden_call(_signal: libc::c_int) {
    // SAFETY: personality(0xffffffff) only reads the execution domain and
    // is async-signal-safe; no filter allows it, so in kill mode the
    // kernel ends the process here.
    unsafe {
        libc::syscall(libc::SYS_personality, 0xffff_ffff_u64);
    }
}

/// Arm the probe of [`SELFTEST_ENV`] when asked for.
fn arm_selftest() {
    if std::env::var(SELFTEST_ENV).as_deref() != Ok("1") {
        return;
    }
    warn!("{SELFTEST_ENV}=1: SIGUSR2 makes a forbidden system call");
    // SAFETY: an all-zero sigaction is valid; the handler is a plain
    // extern "C" function that only makes one system call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forbidden_call as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
    }
}

// ioctl request numbers, as the kernel's _IOC() builds them.
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xae;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, nr, std::mem::size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(IOC_WRITE, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, std::mem::size_of::<T>())
}

const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior::<kvm_regs>(0x81);
const KVM_SET_REGS: u64 = iow::<kvm_regs>(0x82);
const KVM_GET_SREGS: u64 = ior::<kvm_sregs>(0x83);
const KVM_SET_SREGS: u64 = iow::<kvm_sregs>(0x84);
const KVM_TRANSLATE: u64 = iowr::<kvm_translation>(0x85);
const KVM_GET_MSRS: u64 = iowr::<kvm_msrs>(0x88);
const KVM_SET_MSRS: u64 = iow::<kvm_msrs>(0x89);
const KVM_GET_FPU: u64 = ior::<kvm_fpu>(0x8c);
const KVM_SET_FPU: u64 = iow::<kvm_fpu>(0x8d);
const KVM_GET_LAPIC: u64 = ior::<kvm_lapic_state>(0x8e);
const KVM_SET_LAPIC: u64 = iow::<kvm_lapic_state>(0x8f);
const KVM_SET_CPUID2: u64 = iow::<kvm_cpuid2>(0x90);
const KVM_GET_CPUID2: u64 = iowr::<kvm_cpuid2>(0x91);
const KVM_GET_MP_STATE: u64 = ior::<kvm_mp_state>(0x98);
const KVM_SET_MP_STATE: u64 = iow::<kvm_mp_state>(0x99);
const KVM_GET_VCPU_EVENTS: u64 = ior::<kvm_vcpu_events>(0x9f);
const KVM_SET_VCPU_EVENTS: u64 = iow::<kvm_vcpu_events>(0xa0);
const KVM_GET_TSC_KHZ: u64 = io(0xa3);
const KVM_SET_USER_MEMORY_REGION: u64 = iow::<kvm_userspace_memory_region>(0x46);
const KVM_GET_DIRTY_LOG: u64 = iow::<kvm_dirty_log>(0x42);
const KVM_IRQ_LINE: u64 = iow::<kvm_irq_level>(0x61);
const KVM_IRQ_LINE_STATUS: u64 = iowr::<kvm_irq_level>(0x67);
const KVM_SET_GSI_ROUTING: u64 = iow::<kvm_irq_routing>(0x6a);
const KVM_IRQFD: u64 = iow::<kvm_irqfd>(0x76);
const KVM_IOEVENTFD: u64 = iow::<kvm_ioeventfd>(0x79);
const KVM_GET_CLOCK: u64 = ior::<kvm_clock_data>(0x7c);
const KVM_SIGNAL_MSI: u64 = iow::<kvm_msi>(0xa5);
// A save or restore (`crate::state`): the irqchip and PIT from the
// control thread, the rest of a vCPU's state from its own thread.
const KVM_GET_IRQCHIP: u64 = iowr::<kvm_irqchip>(0x62);
const KVM_SET_IRQCHIP: u64 = ior::<kvm_irqchip>(0x63);
const KVM_GET_PIT2: u64 = ior::<kvm_pit_state2>(0x9f);
const KVM_SET_PIT2: u64 = iow::<kvm_pit_state2>(0xa0);
const KVM_GET_DEBUGREGS: u64 = ior::<kvm_debugregs>(0xa1);
const KVM_SET_DEBUGREGS: u64 = iow::<kvm_debugregs>(0xa2);
const KVM_GET_XSAVE: u64 = ior::<kvm_xsave>(0xa4);
const KVM_SET_XSAVE: u64 = iow::<kvm_xsave>(0xa5);
const KVM_GET_XCRS: u64 = ior::<kvm_xcrs>(0xa6);
const KVM_SET_XCRS: u64 = iow::<kvm_xcrs>(0xa7);
/// Non-blocking mode on a socket (std's `set_nonblocking`).
const FIONBIO: u64 = 0x5421;
/// Close-on-exec (std sets it on received file descriptors).
const FIOCLEX: u64 = 0x5451;
/// Terminal attributes (isatty, raw mode of the standalone console).
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

/// The VM-level ioctls both classes make: hypercalls on vCPU threads and
/// control requests on service threads change memory slots, event routing
/// and irqfds, and inject interrupts.
const VM_IOCTLS: &[u64] = &[
    KVM_SET_USER_MEMORY_REGION,
    KVM_IRQ_LINE,
    KVM_IRQ_LINE_STATUS,
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    KVM_IOEVENTFD,
    KVM_GET_CLOCK,
    KVM_SIGNAL_MSI,
    FIONBIO,
    FIOCLEX,
    TCGETS,
];

/// vCPU-fd ioctls, for vCPU threads only.
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_TRANSLATE,
    KVM_GET_MSRS,
    KVM_SET_MSRS,
    KVM_GET_FPU,
    KVM_SET_FPU,
    KVM_GET_LAPIC,
    KVM_SET_LAPIC,
    KVM_SET_CPUID2,
    KVM_GET_CPUID2,
    KVM_GET_MP_STATE,
    KVM_SET_MP_STATE,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    KVM_GET_TSC_KHZ,
    KVM_GET_DEBUGREGS,
    KVM_SET_DEBUGREGS,
    KVM_GET_XSAVE,
    KVM_SET_XSAVE,
    KVM_GET_XCRS,
    KVM_SET_XCRS,
];

/// Service threads: the standalone console switches the terminal mode;
/// a save or restore moves the irqchip and PIT; a live migration reads
/// the dirty log.
const SERVICE_IOCTLS: &[u64] = &[
    TCSETS,
    KVM_GET_IRQCHIP,
    KVM_SET_IRQCHIP,
    KVM_GET_PIT2,
    KVM_SET_PIT2,
    KVM_GET_DIRTY_LOG,
];

/// Calls every thread makes: memory, locks, time, signals (the vCPU kick),
/// reads and writes on descriptors it already holds, thread exit.
const COMMON_SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_fallocate,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_munlock,
    // vCPU threads forward virtio-mmio register accesses to kxend over
    // the device link and wait for its answer.
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // The link's read timeout.
    libc::SYS_setsockopt,
];

/// Calls only service threads make: the control socket (accept, receive
/// and send descriptors), new threads for control clients, the exit file,
/// waiting for SIGTERM.
const SERVICE_SYSCALLS: &[i64] = &[
    // The state memfds of a save or restore.
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    // Control requests that hand kxend one end of a new link.
    libc::SYS_socketpair,
    // The control socket's peer check (SO_PEERCRED against our uid).
    libc::SYS_getsockopt,
    libc::SYS_geteuid,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_openat,
    libc::SYS_unlink,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_epoll_create1,
];

fn ioctl_rules(requests: &[&[u64]]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let mut rules = Vec::new();
    for &request in requests.iter().flat_map(|r| r.iter()) {
        rules.push(SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            request,
        )?])?);
    }
    Ok(rules)
}

/// The allowed set of `class`, as seccompiler's rule map.
fn rules(class: ThreadClass) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON_SYSCALLS {
        map.insert(nr, Vec::new());
    }
    let ioctls: &[&[u64]] = match class {
        ThreadClass::Vcpu => &[VM_IOCTLS, VCPU_IOCTLS],
        ThreadClass::Service => {
            for &nr in SERVICE_SYSCALLS {
                map.insert(nr, Vec::new());
            }
            &[VM_IOCTLS, SERVICE_IOCTLS]
        }
    };
    map.insert(libc::SYS_ioctl, ioctl_rules(ioctls)?);
    for (nr, rules) in argument_rules()? {
        if let Some(entry) = map.get_mut(&nr) {
            *entry = rules;
        }
    }
    Ok(map)
}

/// One rule: argument `index` (32 bits) equals `value`.
fn arg_is(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// Narrower rules for calls whose arguments say what they do: no new
/// executable memory (mmap/mprotect without PROT_EXEC: a taken-over VMM
/// cannot load code), Unix socket pairs only, the descriptor-flag fcntls,
/// and the prctls that name threads and mappings.
fn argument_rules() -> Result<Vec<(i64, Vec<SeccompRule>)>, seccompiler::BackendError> {
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    let any_of =
        |index: u8, values: &[u64]| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
            values.iter().map(|&v| arg_is(index, v)).collect()
        };
    Ok(vec![
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
        (libc::SYS_socketpair, any_of(0, &[libc::AF_UNIX as u64])?),
        (
            libc::SYS_fcntl,
            any_of(
                1,
                &[
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                ],
            )?,
        ),
        (
            libc::SYS_prctl,
            any_of(
                0,
                &[
                    libc::PR_SET_NAME as u64,
                    libc::PR_GET_NAME as u64,
                    PR_SET_VMA,
                ],
            )?,
        ),
    ])
}

/// prctl(PR_SET_VMA): glibc names anonymous mappings with it.
const PR_SET_VMA: u64 = 0x5356_4d41;

fn build(class: ThreadClass, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        _ => SeccompAction::Log,
    };
    let rules = rules(class).map_err(|e| SeccompError::Build(class, e))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(class, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(class, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        for class in [ThreadClass::Vcpu, ThreadClass::Service] {
            for mode in [SeccompMode::Log, SeccompMode::Kill] {
                let program = build(class, mode).unwrap();
                assert!(!program.is_empty());
            }
        }
    }

    #[test]
    fn kvm_run_matches_the_kernel_number() {
        // include/uapi/linux/kvm.h: _IO(KVMIO, 0x80); _IOR(KVMIO, 0x81, struct kvm_regs).
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    }

    #[test]
    fn argument_rules_replace_the_unconditional_ones() {
        for class in [ThreadClass::Vcpu, ThreadClass::Service] {
            let map = rules(class).unwrap();
            assert_eq!(map[&libc::SYS_mmap].len(), 1);
            assert_eq!(map[&libc::SYS_fcntl].len(), 5);
            assert_eq!(map[&libc::SYS_prctl].len(), 3);
        }
        let service = rules(ThreadClass::Service).unwrap();
        assert_eq!(service[&libc::SYS_socketpair].len(), 1);
    }

    #[test]
    fn vcpu_threads_cannot_accept_or_open() {
        let vcpu = rules(ThreadClass::Vcpu).unwrap();
        let service = rules(ThreadClass::Service).unwrap();
        for nr in [libc::SYS_accept4, libc::SYS_openat, libc::SYS_clone3] {
            assert!(!vcpu.contains_key(&nr));
            assert!(service.contains_key(&nr));
        }
        for nr in [libc::SYS_execve, libc::SYS_socket, libc::SYS_ptrace] {
            assert!(!vcpu.contains_key(&nr) && !service.contains_key(&nr));
        }
    }
}
