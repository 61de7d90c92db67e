//! Ring-3 access to hypercalls (through the DPL-3 gate at vector 0x82), to
//! the ring-0 services (vector 0x81), and a few unprivileged instructions.

use core::arch::asm;

use xen_abi::hypercall as nr;

/// Issue hypercall `nr` with up to five arguments (Xen x86-64 convention:
/// RDI, RSI, RDX, R10, R8; result in RAX) through the ring-0 gate (`int3`
/// with R9 = 0; see boot.rs for why not `int n`). The gate calls the
/// hypercall-page stub and preserves every register except RAX.
///
/// # Safety
/// Pointer arguments must be valid for whatever the hypercall reads or writes,
/// or the caller must be deliberately passing a bad pointer that the
/// hypervisor has to reject without touching memory the guest relies on.
#[inline(always)]
pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: `int3` enters the ring-0 gate (R9 = 0: hypercall), which
    // switches to its own IST stack (the ring-3 stack and red zone are untouched) and
    // restores every register except RAX. Memory effects are the hypercall's,
    // covered by the caller's contract.
    unsafe {
        asm!(
            "int3",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            in("r9") 0u64,
            options(nostack),
        );
    }
    ret
}

/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall3(nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}

/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall2(nr: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// Hypercall `nr(cmd, arg)` where `arg` points at one argument struct.
pub fn op<T>(hcall: u64, cmd: u64, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a live exclusive reference to a #[repr(C)] argument
    // struct of the layout the Xen ABI defines for `cmd`; the hypervisor reads
    // and writes only that struct.
    unsafe { hypercall2(hcall, cmd, arg as *mut T as u64) }
}

/// Hypercall `nr(cmd, arg)` with a raw (possibly deliberately bad) address.
pub fn op_raw(hcall: u64, cmd: u64, addr: u64) -> i64 {
    // SAFETY: used only with addresses that are unmapped, non-canonical or
    // outside RAM (the hypervisor must fail with -EFAULT and cannot write
    // there), or with addresses of buffers owned by the caller.
    unsafe { hypercall2(hcall, cmd, addr) }
}

pub fn event_channel_op<T>(cmd: u64, arg: &mut T) -> i64 {
    op(nr::EVENT_CHANNEL_OP, cmd, arg)
}

pub fn sched_op<T>(cmd: u64, arg: &mut T) -> i64 {
    op(nr::SCHED_OP, cmd, arg)
}

pub fn hvm_op<T>(cmd: u64, arg: &mut T) -> i64 {
    op(nr::HVM_OP, cmd, arg)
}

pub fn memory_op<T>(cmd: u64, arg: &mut T) -> i64 {
    op(nr::MEMORY_OP, cmd, arg)
}

pub fn physdev_op<T>(cmd: u64, arg: &mut T) -> i64 {
    op(nr::PHYSDEV_OP, cmd, arg)
}

/// `vcpu_op(cmd, vcpu, arg)`.
pub fn vcpu_op<T>(cmd: u64, vcpu: u32, arg: &mut T) -> i64 {
    // SAFETY: as in `op`: `arg` is the argument struct for `cmd`.
    unsafe { hypercall3(nr::VCPU_OP, cmd, vcpu as u64, arg as *mut T as u64) }
}

/// `vcpu_op(cmd, vcpu, NULL)`.
pub fn vcpu_op_null(cmd: u64, vcpu: u32) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall3(nr::VCPU_OP, cmd, vcpu as u64, 0) }
}

/// `grant_table_op(cmd, arg, count)`.
pub fn grant_table_op<T>(cmd: u64, arg: &mut T, count: u32) -> i64 {
    // SAFETY: as in `op`; callers pass count == 1 or a count the hypervisor
    // must reject before reading past `arg`.
    unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd, arg as *mut T as u64, count as u64) }
}

/// `xen_version(cmd, buf)`; the buffer must be at least as large as the
/// result of `cmd`.
pub fn xen_version_buf(cmd: u64, buf: &mut [u8]) -> i64 {
    // SAFETY: `buf` is a live exclusive buffer sized by the caller for `cmd`.
    unsafe { hypercall2(nr::XEN_VERSION, cmd, buf.as_mut_ptr() as u64) }
}

/// `xen_version(cmd, NULL)`.
pub fn xen_version_null(cmd: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall2(nr::XEN_VERSION, cmd, 0) }
}

/// `console_io(CONSOLEIO_write, len, buf)`.
pub fn console_io_write(buf: &[u8]) -> i64 {
    // SAFETY: the hypervisor only reads `buf`.
    unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            nr::CONSOLEIO_WRITE,
            buf.len() as u64,
            buf.as_ptr() as u64,
        )
    }
}

/// `console_io(CONSOLEIO_read, len, buf)`.
pub fn console_io_read(buf: &mut [u8]) -> i64 {
    // SAFETY: the hypervisor writes at most `buf.len()` bytes into `buf`.
    unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            nr::CONSOLEIO_READ,
            buf.len() as u64,
            buf.as_mut_ptr() as u64,
        )
    }
}

/// `set_timer_op(timeout)`: absolute system time in ns, 0 cancels.
pub fn set_timer_op(timeout_ns: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall5(nr::SET_TIMER_OP, timeout_ns, 0, 0, 0, 0) }
}

/// `vm_assist(cmd, type)`.
pub fn vm_assist(cmd: u64, kind: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall2(nr::VM_ASSIST, cmd, kind) }
}

/// A ring-0 service through the gate (`int3` with R9 = 1).
pub fn service(svc: u64, arg: u64) -> u64 {
    let ret: u64;
    // SAFETY: the service gate runs on its own IST stack, preserves every
    // register except RAX and touches no ring-3 memory.
    unsafe {
        asm!(
            "int3",
            inlateout("rax") svc => ret,
            in("rdi") arg,
            in("r9") 1u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Execute `out %eax, $0x58` directly from ring 3 with RAX and RDI preset,
/// returning RAX afterwards, or [`crate::boot::RING3_OUT_GP`] if the CPU
/// refused the port write (#GP) before the VMM could see it.
pub fn ring3_out58(rax: u64, rdi: u64) -> u64 {
    // SAFETY: kxen_ring3_out58 is a C-ABI assembly routine that only loads
    // the two registers and executes one port write; a #GP there is resumed
    // by the ring-0 exception code.
    unsafe { crate::boot::kxen_ring3_out58(rax, rdi) }
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the TSC (CR4.TSD is clear, so CPL 3 may).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    ((hi as u64) << 32) | lo as u64
}

/// CPUID leaf/subleaf -> [EAX, EBX, ECX, EDX], executed in ring 0: what a
/// guest kernel sees. (On PVM hosts CPUID at CPL 3 is not intercepted and
/// returns the host's leaves.)
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let mut out = [0u32; 4];
    // SAFETY: the service gate runs CPUID in ring 0 and stores 16 bytes at
    // RDX, which points at `out`; it preserves every register but RAX.
    unsafe {
        asm!(
            "int3",
            inlateout("rax") crate::boot::SVC_CPUID => _,
            in("rdi") leaf as u64,
            in("rsi") subleaf as u64,
            in("rdx") out.as_mut_ptr(),
            in("r9") 1u64,
            options(nostack),
        );
    }
    out
}
