//! The checks, their registry and small helpers for reporting.
//!
//! A check is a function returning `Ok(())` (printed `PASS <name>`) or a
//! [`Fail`] whose text says what was expected and what came back (printed
//! `FAIL <name>: <detail>`). A check that cannot reach what it tests on
//! this host returns [`Fail::skip`] (printed `SKIP <name>: <reason>`),
//! counted apart from passes and failures. Checks run in registry order; a few depend on
//! earlier ones only through the shared setup in [`crate::setup`], never on
//! each other's results, so any single check can run alone.

use core::fmt::{self, Debug, Display, Write};

mod evtchn;
mod gntcopy;
mod gnttab;
mod gntv2;
mod hvm;
mod memory;
mod misc;
mod sched;
mod special;
mod vcpu;
mod version;
mod xs;

/// Why a check did not pass: it failed, or (see [`Fail::skip`]) it could
/// not run on this host.
pub struct Fail {
    buf: [u8; 320],
    len: usize,
    skipped: bool,
}

impl Fail {
    pub fn new(args: fmt::Arguments) -> Self {
        let mut f = Fail {
            buf: [0; 320],
            len: 0,
            skipped: false,
        };
        let _ = f.write_fmt(args);
        f
    }

    /// The check could not reach what it tests on this host; `args` says
    /// why. Reported as SKIP, never as a pass.
    pub fn skip(args: fmt::Arguments) -> Self {
        let mut f = Fail::new(args);
        f.skipped = true;
        f
    }

    pub fn is_skip(&self) -> bool {
        self.skipped
    }
}

impl Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = &self.buf[..self.len];
        let text = match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Truncation may have split a character.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        f.write_str(text)
    }
}

pub type R = Result<(), Fail>;

/// Fail the current check with a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::checks::Fail::new(format_args!($($arg)*)))
    };
}

/// Skip the current check, saying why it cannot run on this host.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err($crate::checks::Fail::skip(format_args!($($arg)*)))
    };
}

/// Fail the current check unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !($cond) {
            $crate::bail!($($arg)*);
        }
    };
}

/// A hypercall return value, printed with its errno name when negative.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rc(pub i64);

impl Display for Rc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match errno_name(self.0) {
            Some(name) => write!(f, "{} ({})", self.0, name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Debug for Rc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

fn errno_name(rc: i64) -> Option<&'static str> {
    use xen_abi::errno::*;
    Some(match -rc {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EINTR => "EINTR",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ENODATA => "ENODATA",
        xen_abi::vcpu::ETIME => "ETIME",
        EOPNOTSUPP => "EOPNOTSUPP",
        EISCONN => "EISCONN",
        EALREADY => "EALREADY",
        _ => return None,
    })
}

/// `what` returned `got`; expect exactly `want`.
pub fn rc_is(what: &str, got: i64, want: i64) -> R {
    if got != want {
        bail!("{}: expected {}, got {}", what, Rc(want), Rc(got));
    }
    Ok(())
}

/// `what` is `got`; expect `want`.
pub fn eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> R {
    if got != want {
        bail!("{}: expected {:?}, got {:?}", what, want, got);
    }
    Ok(())
}

/// An `Ok` value or a failure naming the call and its return code.
pub fn ok<T>(what: &str, r: Result<T, i64>) -> Result<T, Fail> {
    r.map_err(|rc| Fail::new(format_args!("{}: expected success, got {}", what, Rc(rc))))
}

/// -errno as a hypercall returns it.
pub const fn neg(errno: i64) -> i64 {
    -errno
}

/// `true` for checks that only run when named exactly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Special,
}

pub struct Check {
    pub name: &'static str,
    pub run: fn() -> R,
    pub kind: Kind,
}

const fn c(name: &'static str, run: fn() -> R) -> Check {
    Check {
        name,
        run,
        kind: Kind::Normal,
    }
}

const fn special(name: &'static str, run: fn() -> R) -> Check {
    Check {
        name,
        run,
        kind: Kind::Special,
    }
}

/// Every check, in the order "all" runs them.
pub static CHECKS: &[Check] = &[
    // Discovery and the hypercall page.
    c("cpuid.xen_signature", version::cpuid_xen_signature),
    c("cpuid.xen_leaves", version::cpuid_xen_leaves),
    c("cpuid.kxen_leaves", version::cpuid_kxen_leaves),
    c("cpuid.no_kvm_signature", version::cpuid_no_kvm_signature),
    c("hypercall_page.contents", version::hypercall_page_contents),
    // xen_version
    c("xen_version.version", version::version),
    c("xen_version.extraversion", version::extraversion),
    c("xen_version.compile_info", version::compile_info),
    c("xen_version.capabilities", version::capabilities),
    c("xen_version.changeset", version::changeset),
    c(
        "xen_version.platform_parameters",
        version::platform_parameters,
    ),
    c("xen_version.get_features", version::get_features),
    c("xen_version.pagesize", version::pagesize),
    c("xen_version.guest_handle", version::guest_handle),
    c(
        "xen_version.commandline_denied",
        version::commandline_denied,
    ),
    c("xen_version.bad_pointer", version::bad_pointer),
    c("xen_version.unknown_subop", version::unknown_subop),
    // console_io
    c("console_io.write", version::console_write),
    c("console_io.read", version::console_read),
    c("console_io.bad_pointer", version::console_bad_pointer),
    c("console_io.unknown_cmd", version::console_unknown_cmd),
    // shared_info first: later checks rely on it (mapped during setup).
    c("memory.add_to_physmap.shared_info", memory::shared_info),
    c(
        "memory.add_to_physmap.shared_info_bad_idx",
        memory::shared_info_bad_idx,
    ),
    // hvm_op
    c("hvm.param.callback_irq", hvm::callback_irq),
    c("hvm.param.store", hvm::store_params),
    c("hvm.param.console", hvm::console_params),
    c("hvm.param.bad_index", hvm::bad_index),
    c("hvm.param.set_store_pfn_denied", hvm::set_store_pfn_denied),
    c("hvm.param.get_denied", hvm::get_denied),
    c("hvm.param.deprecated", hvm::deprecated),
    c("hvm.param.other_domain", hvm::other_domain),
    c("hvm.param.bad_pointer", hvm::bad_pointer),
    c("hvm.set_evtchn_upcall_vector", hvm::upcall_vector),
    c("hvm.pagetable_dying", hvm::pagetable_dying),
    c("hvm.unknown_op", hvm::unknown_op),
    // event_channel_op
    c("evtchn.alloc_unbound", evtchn::alloc_unbound),
    c(
        "evtchn.alloc_unbound_other_dom",
        evtchn::alloc_unbound_other_dom,
    ),
    c(
        "evtchn.bind_interdomain_loopback",
        evtchn::bind_interdomain_loopback,
    ),
    c(
        "evtchn.bind_interdomain_errors",
        evtchn::bind_interdomain_errors,
    ),
    c("evtchn.bind_virq", evtchn::bind_virq),
    c("evtchn.bind_virq_errors", evtchn::bind_virq_errors),
    c("evtchn.bind_ipi", evtchn::bind_ipi),
    c("evtchn.bind_vcpu", evtchn::bind_vcpu),
    c("evtchn.send_unbound", evtchn::send_unbound),
    c("evtchn.send_invalid", evtchn::send_invalid),
    c("evtchn.close", evtchn::close),
    c("evtchn.status", evtchn::status),
    c("evtchn.mask_unmask", evtchn::mask_unmask),
    c("evtchn.fifo_ops", evtchn::fifo_ops),
    c("evtchn.unknown_cmd", evtchn::unknown_cmd),
    c("evtchn.bad_pointer", evtchn::bad_pointer),
    // vcpu_op (register_vcpu_info first: the rest then uses the new copy)
    c("vcpu_op.register_vcpu_info", vcpu::register_vcpu_info),
    c(
        "vcpu_op.register_vcpu_info_twice",
        vcpu::register_vcpu_info_twice,
    ),
    c(
        "vcpu_op.register_vcpu_info_bad_offset",
        vcpu::register_vcpu_info_bad_offset,
    ),
    c("vcpu_op.is_up", vcpu::is_up),
    c("vcpu_op.is_up_bad_vcpu", vcpu::is_up_bad_vcpu),
    c("vcpu_op.up_uninitialised", vcpu::up_uninitialised),
    c("vcpu_op.periodic_timer", vcpu::periodic_timer),
    c(
        "vcpu_op.periodic_timer_too_fast",
        vcpu::periodic_timer_too_fast,
    ),
    c("vcpu_op.singleshot_timer", vcpu::singleshot_timer),
    c("vcpu_op.singleshot_timer_past", vcpu::singleshot_timer_past),
    c("vcpu_op.stop_singleshot_timer", vcpu::stop_singleshot_timer),
    c(
        "vcpu_op.singleshot_timer_other_vcpu",
        vcpu::singleshot_other_vcpu,
    ),
    c("vcpu_op.runstate", vcpu::runstate),
    c("vcpu_op.vcpu_time_memory_area", vcpu::time_memory_area),
    c("vcpu_op.unknown_subop", vcpu::unknown_subop),
    // set_timer_op
    c("set_timer_op.fires", vcpu::set_timer_fires),
    c("set_timer_op.cancel", vcpu::set_timer_cancel),
    // sched_op
    c("sched_op.yield", sched::yield_),
    c("sched_op.block", sched::block),
    c("sched_op.poll_pending", sched::poll_pending),
    c("sched_op.poll_timeout", sched::poll_timeout),
    c("sched_op.poll_too_many_ports", sched::poll_too_many_ports),
    c("sched_op.poll_bad_port", sched::poll_bad_port),
    c("sched_op.poll_bad_pointer", sched::poll_bad_pointer),
    c("sched_op.shutdown_bad_reason", sched::shutdown_bad_reason),
    c("sched_op.shutdown_bad_pointer", sched::shutdown_bad_pointer),
    c("sched_op.unknown_subop", sched::unknown_subop),
    // memory_op
    c("memory.add_to_physmap.grant_table", memory::grant_table),
    c(
        "memory.add_to_physmap.grant_table_bad_idx",
        memory::grant_table_bad_idx,
    ),
    c(
        "memory.add_to_physmap.bad_pointer",
        memory::add_to_physmap_bad_pointer,
    ),
    c("memory.add_to_physmap_batch", memory::add_to_physmap_batch),
    c("memory.memory_map", memory::memory_map),
    c("memory.machine_memory_map", memory::machine_memory_map),
    c("memory.maximum_ram_page", memory::maximum_ram_page),
    c("memory.reservation", memory::reservation),
    c(
        "memory.reservation_bad_pointer",
        memory::reservation_bad_pointer,
    ),
    c("memory.decrease_populate", memory::decrease_populate),
    c("memory.decrease_bad_extents", memory::decrease_bad_extents),
    c("memory.decrease_bad_struct", memory::decrease_bad_struct),
    c("memory.unknown_subop", memory::unknown_subop),
    c("memory.page_permissions", memory::page_permissions),
    // grant_table_op
    c("gnttab.query_size", gnttab::query_size),
    c("gnttab.setup_table", gnttab::setup_table),
    c("gnttab.set_version", gnttab::set_version),
    c("gnttab.get_version", gnttab::get_version),
    c("gnttab.bad_args", gnttab::bad_args),
    c("gnttab.unknown_cmd", gnttab::unknown_cmd),
    c("gnttab.copy", gntcopy::copy),
    c("gnttab.copy_hostile", gntcopy::copy_hostile),
    c("gnttab.v2.version", gntv2::version),
    c("gnttab.v2.reserved_entries", gntv2::reserved_entries),
    c("gnttab.v2.copy", gntv2::copy),
    // vm_assist, physdev_op
    c("vm_assist.runstate_update_flag", misc::vm_assist_runstate),
    c("vm_assist.invalid_type", misc::vm_assist_invalid_type),
    c("vm_assist.unknown_cmd", misc::vm_assist_unknown_cmd),
    c("physdev_op.enosys", misc::physdev_enosys),
    // xenstore
    c("xenstore.read_domid", xs::read_domid),
    c("xenstore.read_missing", xs::read_missing),
    c("xenstore.get_domain_path", xs::get_domain_path),
    c("xenstore.unsupported_type", xs::unsupported_type),
    // hostile
    c("hostile.unknown_hypercall", misc::unknown_hypercall),
    c("hostile.bad_pointers", misc::bad_pointers),
    c("hostile.length_overrun", misc::length_overrun),
    c("hostile.ring3_hypercall", misc::ring3_hypercall),
    c("hostile.out_of_range", misc::out_of_range),
    // Last: records the shutdown reason the final SCHEDOP_shutdown uses.
    c("sched_op.shutdown_code", sched::shutdown_code),
    // Only when named exactly.
    special("evtchn.reset", special::evtchn_reset),
    special("evtchn.fifo", special::evtchn_fifo),
    special("evtchn.fifo_save", special::evtchn_fifo_save),
    special("xenstore.save", special::xenstore_save),
    special("suspend.evtchn", special::suspend_evtchn),
    special("evtchn.port_limit", special::evtchn_port_limit),
    special("evtchn.fifo_ports", special::evtchn_fifo_ports),
    special("triple_fault", special::triple_fault),
    special("bad_insn", special::bad_insn),
    special("bench", special::bench),
    special("bench.pv", special::bench_pv),
];
