//! Classic PV against PVH, on this host, in one run (`kxen-bench pv`).
//!
//! The PV test kernel (tests/guestpv, assembled with `BENCH=1` for longer
//! loops) times its own operations and prints them on the hypervisor
//! console; the PVH test guest (tests/guest, `kxen.test=bench.pv`) times
//! the same operations the way a PVH guest does them. A bare KVM VM
//! running at CPL3 prices the pieces the PV paths are made of: one MMIO
//! exit, the KVM_SET_SREGS that a mode switch adds, the shadow-MMU flush
//! that a base-pointer load adds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use kxen_tests::{
    kxen_run, pv_test_kernel, pv_timing_line, run_with_limit, test_guest, tsc_cycles_per_us,
};

use crate::baseline::{self, BaselineFeatures, LoopShape};
use crate::median;

/// Runs of each guest; each figure is the median over them.
const RUNS: usize = 3;
/// Exits per bare-KVM loop.
const BARE_EXITS: u32 = 2_000;

/// Guest-physical layout of the bare CPL3 VM.
const CODE: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
/// A second L4 with the same contents, for CR3 switches.
const PML4_B: u64 = 0x5000;
const STACK_TOP: u64 = 0x8000;
/// The page backing the memory slot that a shadow-MMU flush adds and
/// removes again (kxen-vmm's `flush_kvm_shadow_mmu`).
const FLUSH_PAGE: u64 = 0xf000;
const FLUSH_SLOT_GPA: u64 = 0x20_0000;
const MEM_SIZE: usize = 0x10000;
/// Inside the identity-mapped 2 MiB page but outside every memory slot:
/// a store there is an MMIO exit, like the PV hypercall transport.
const MMIO_LOOP: u64 = 0x10_0000;
const MMIO_REPORT: u64 = 0x10_0008;

/// What the bare VMM does on each loop exit besides resuming.
#[derive(Clone, Copy)]
enum ExitWork {
    /// Nothing: the cheapest CPL3 exit.
    None,
    /// KVM_SET_SREGS with the same values (a CS/SS reload).
    SetSregs,
    /// KVM_SET_SREGS switching CR3 between two L4s (a PV mode switch).
    SetSregsNewCr3,
    /// Add and remove a 4 KiB memory slot: KVM drops its shadow pages,
    /// as kxen-vmm does for every PV TLB flush and base-pointer load.
    ShadowFlush,
}

/// CPL3 code: `iterations` stores to MMIO_LOOP timed with rdtsc, the
/// TSC delta stored to MMIO_REPORT.
fn cpl3_loop_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![
        0x0f, 0x31, // rdtsc
        0x48, 0xc1, 0xe2, 0x20, // shl $32, %rdx
        0x48, 0x09, 0xd0, // or %rdx, %rax
        0x48, 0x89, 0xc5, // mov %rax, %rbp
        0x41, 0xbc, // mov $iterations, %r12d
    ];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x89, 0x04, 0x25]); // mov %eax, MMIO_LOOP
    code.extend_from_slice(&(MMIO_LOOP as u32).to_le_bytes());
    code.extend_from_slice(&[0x49, 0xff, 0xcc]); // dec %r12
    code.extend_from_slice(&[0x75, 0xf4]); // jnz (back to the store)
    code.extend_from_slice(&[
        0x0f, 0x31, // rdtsc
        0x48, 0xc1, 0xe2, 0x20, // shl $32, %rdx
        0x48, 0x09, 0xd0, // or %rdx, %rax
        0x48, 0x29, 0xe8, // sub %rbp, %rax
        0x48, 0x89, 0x04, 0x25, // mov %rax, MMIO_REPORT
    ]);
    code.extend_from_slice(&(MMIO_REPORT as u32).to_le_bytes());
    code
}

fn cpl3_segment(selector: u16, kind: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: kind,
        present: 1,
        dpl: 3,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        ..Default::default()
    }
}

/// TSC cycles per round trip of a CPL3 MMIO-store exit through a bare
/// kvm-ioctls loop with kxen-vmm's KVM setup (in-kernel irqchip, synced
/// registers), plus `work` on each exit.
fn bare_cpl3_mmio_exit(iterations: u32, work: ExitWork) -> Result<f64, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    // SAFETY: an anonymous private mapping we own; unmapped below after
    // the VM (its only other user) is dropped.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let result = run_bare_cpl3(&vm, mem as *mut u8, iterations, work);
    drop(vm);
    // SAFETY: the VM that used this mapping is gone.
    unsafe { libc::munmap(mem, MEM_SIZE) };
    result
}

fn run_bare_cpl3(
    vm: &kvm_ioctls::VmFd,
    mem: *mut u8,
    iterations: u32,
    work: ExitWork,
) -> Result<f64, String> {
    let code = cpl3_loop_code(iterations);
    // Identity-map the first 2 MiB with one user-accessible large page,
    // through either L4.
    let tables: [(u64, u64); 4] = [
        (PML4, PDPT | 7),
        (PML4_B, PDPT | 7),
        (PDPT, PD | 7),
        (PD, 0x87),
    ];
    // SAFETY: `mem` is a fresh writable mapping of MEM_SIZE bytes; the
    // code and the table entries lie well inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), mem.add(CODE as usize), code.len());
        for (table, entry) in tables {
            (mem.add(table as usize) as *mut u64).write(entry);
        }
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (see bare_cpl3_mmio_exit).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory: {e}"))?;
    vm.create_irq_chip().map_err(|e| format!("irqchip: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("vCPU: {e}"))?;
    vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
    vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    baseline::enter_long_mode(
        &vcpu,
        cpl3_segment(0x33, 0xb, true),
        cpl3_segment(0x2b, 0x3, false),
        PML4,
        CODE,
        STACK_TOP,
    )?;
    // The loop's SET_SREGS variants load these back (or switch CR3).
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;

    let mut loop_exits = 0u32;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::MmioWrite(MMIO_LOOP, _)) => {
                loop_exits += 1;
                match work {
                    ExitWork::None => {}
                    ExitWork::SetSregs => {
                        vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
                    }
                    ExitWork::SetSregsNewCr3 => {
                        sregs.cr3 = if sregs.cr3 == PML4 { PML4_B } else { PML4 };
                        vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
                    }
                    ExitWork::ShadowFlush => {
                        for size in [0x1000u64, 0] {
                            let slot = kvm_userspace_memory_region {
                                slot: 1,
                                flags: 0,
                                guest_phys_addr: FLUSH_SLOT_GPA,
                                memory_size: size,
                                userspace_addr: mem as u64 + FLUSH_PAGE,
                            };
                            // SAFETY: the slot's backing page lies in our
                            // mapping, which outlives the VM; size 0
                            // deletes the slot.
                            unsafe { vm.set_user_memory_region(slot) }
                                .map_err(|e| format!("flush slot: {e}"))?;
                        }
                    }
                }
            }
            Ok(VcpuExit::MmioWrite(MMIO_REPORT, data)) => {
                if loop_exits != iterations {
                    return Err(format!(
                        "{loop_exits} loop exits before the report, not {iterations}"
                    ));
                }
                let mut b = [0u8; 8];
                let n = data.len().min(8);
                b[..n].copy_from_slice(&data[..n]);
                return Ok(u64::from_le_bytes(b) as f64 / iterations as f64);
            }
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

/// The PV test kernel with the benchmark's loop counts.
fn pv_bench_kernel() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kxen-bench-pv-{}", std::process::id()));
    pv_test_kernel(&dir, &["BENCH=1"])
}

/// The PV kernel's timing lines this section reads, by prefix.
const PV_NULL: &str = "null hypercalls: ";
const PV_INT3: &str = "int3 bounce+iret round trips: ";
const PV_SYSCALL: &str = "user syscall round trips: ";
const PV_FAULT: &str = "user page fault round trips: ";
const PV_UPCALL: &str = "event upcalls (send + callback + iret): ";
const PV_BASEPTR: &str = "NEW_BASEPTR calls: ";
const PV_LINES: [&str; 6] = [
    PV_NULL, PV_INT3, PV_SYSCALL, PV_FAULT, PV_UPCALL, PV_BASEPTR,
];

/// `<prefix><calls> calls in <cycles> TSC cycles` (hex, as the PV
/// kernel's puthex writes them) -> cycles per call.
fn pv_timing(lines: &[&str], prefix: &str) -> Option<f64> {
    let (calls, cycles) = pv_timing_line(lines, prefix)?;
    (calls > 0).then(|| cycles as f64 / calls as f64)
}

/// One PV run: cycles per call for each of PV_LINES, in that order.
fn pv_run(kernel: &str) -> Result<Vec<f64>, String> {
    let run = run_with_limit(
        &kxen_run(),
        &[
            "--type", "pv", "--kernel", kernel, "--memory", "64", "--domid", "7", "--name",
            "pvbench",
        ],
        Duration::from_secs(60),
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("(d7) kxen-pv-guest: "))
        .collect();
    if run.code != Some(0) || lines.iter().any(|l| l.starts_with("FAIL")) {
        return Err(format!(
            "PV test kernel failed (status {:?}): {}",
            run.code,
            lines
                .iter()
                .find(|l| l.starts_with("FAIL"))
                .unwrap_or(&"no FAIL line")
        ));
    }
    PV_LINES
        .iter()
        .map(|p| pv_timing(&lines, p).ok_or_else(|| format!("no {p:?} line")))
        .collect()
}

/// The PVH test guest's `bench.pv` keys this section reads.
const PVH_KEYS: [&str; 6] = [
    "hypercall_cycles",
    "cr3_cycles",
    "gate_cycles",
    "gate_hypercall_cycles",
    "page_fault_cycles",
    "evtchn_upcall_cycles",
];

fn pvh_run() -> Result<Vec<f64>, String> {
    let guest = test_guest();
    let run = run_with_limit(
        &kxen_run(),
        &[
            "--kernel",
            guest.to_str().ok_or("non-UTF-8 guest path")?,
            "--memory",
            "64",
            "--cmdline",
            "kxen.test=bench.pv",
        ],
        Duration::from_secs(60),
    );
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("bench.pv: "))
        .ok_or_else(|| {
            let fail = run.stdout.lines().find(|l| l.starts_with("FAIL"));
            format!("PVH guest printed no bench.pv line ({fail:?})")
        })?;
    PVH_KEYS
        .iter()
        .map(|k| crate::field(line, k).ok_or_else(|| format!("no {k} in {line:?}")))
        .collect()
}

/// Median of each column over the runs that worked.
fn medians(runs: &[Vec<f64>], columns: usize) -> Vec<f64> {
    (0..columns)
        .map(|i| median(runs.iter().map(|r| r[i]).collect()))
        .collect()
}

pub fn run() {
    let started = Instant::now();
    let per_us = tsc_cycles_per_us();
    let us = |cycles: f64| cycles / per_us;
    // A remainder after subtracting bare-KVM pieces: below zero it is
    // the noise between separately measured loops.
    let rest = |cycles: f64| {
        let v = cycles / per_us;
        if v < 0.0 {
            format!("{v:.1} (0 within noise)")
        } else {
            format!("{v:.1}")
        }
    };
    println!("classic PV against PVH (same run; µs at the host TSC, {per_us:.0} cycles/µs)");

    let kernel = pv_bench_kernel();
    let kernel = kernel.to_str().expect("UTF-8 temp path").to_owned();
    let (mut pv, mut pvh) = (Vec::new(), Vec::new());
    // Interleaved, so that load from other work on the host hits both.
    for _ in 0..RUNS {
        match pv_run(&kernel) {
            Ok(r) => pv.push(r),
            Err(e) => println!("warning: PV run: {e}"),
        }
        match pvh_run() {
            Ok(r) => pvh.push(r),
            Err(e) => println!("warning: PVH run: {e}"),
        }
    }
    let bare = |work| {
        let runs: Vec<f64> = (0..RUNS)
            .filter_map(|_| match bare_cpl3_mmio_exit(BARE_EXITS, work) {
                Ok(c) => Some(c),
                Err(e) => {
                    println!("warning: bare CPL3 VM: {e}");
                    None
                }
            })
            .collect();
        median(runs)
    };
    let exit3 = bare(ExitWork::None);
    let exit3_sregs = bare(ExitWork::SetSregs);
    let exit3_cr3 = bare(ExitWork::SetSregsNewCr3);
    let exit3_flush = bare(ExitWork::ShadowFlush);
    let exit0 = median(
        (0..RUNS)
            .filter_map(|_| {
                baseline::bare_port_io_exit(
                    BARE_EXITS,
                    LoopShape::BareExit,
                    BaselineFeatures {
                        irqchip: true,
                        sync_regs: true,
                    },
                )
                .ok()
            })
            .map(|b| b.cycles_per_exit)
            .collect(),
    );
    if pv.is_empty() || pvh.is_empty() {
        println!("pv section: no complete PV and PVH runs; nothing to compare");
        return;
    }
    let pv = medians(&pv, PV_LINES.len());
    let pvh = medians(&pvh, PVH_KEYS.len());
    let [pv_null, pv_int3, pv_syscall, pv_fault, pv_upcall, pv_baseptr] = pv[..] else {
        unreachable!("one figure per PV line")
    };
    let [pvh_hc, pvh_cr3, pvh_gate, pvh_gate_hc, pvh_fault, pvh_upcall] = pvh[..] else {
        unreachable!("one figure per PVH key")
    };

    println!();
    println!(
        "{:<40} {:>9} {:>9}  {:>7}",
        "bare KVM (kxen-vmm's KVM setup)", "cycles", "µs", ""
    );
    for (label, c) in [
        ("CPL0 port-I/O exit (core's baseline)", exit0),
        ("CPL3 MMIO-store exit", exit3),
        ("  + KVM_SET_SREGS, same values", exit3_sregs),
        ("  + KVM_SET_SREGS switching CR3", exit3_cr3),
        ("  + shadow-MMU flush (slot add+remove)", exit3_flush),
    ] {
        println!("{label:<40} {c:>9.0} {:>9.1}", us(c));
    }

    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>8}",
        "operation (µs per call)", "PV", "PVH", "PV/PVH"
    );
    let row = |label: &str, pv: f64, pvh: f64, pv_where: String, pvh_where: String| {
        println!(
            "{label:<34} {:>9.1} {:>9.1} {:>7.2}x",
            us(pv),
            us(pvh),
            pv / pvh
        );
        println!("    PV:  {pv_where}");
        println!("    PVH: {pvh_where}");
    };
    let sregs_extra = exit3_sregs - exit3;
    let cr3_extra = exit3_cr3 - exit3;
    let flush_extra = exit3_flush - exit3;
    row(
        "null hypercall (xen_version 0)",
        pv_null,
        pvh_hc,
        format!(
            "one CPL3 MMIO exit {:.1} + kxen-vmm decode/dispatch/resume {}",
            us(exit3),
            rest(pv_null - exit3)
        ),
        format!(
            "ring-0 call into the page, stub, one port exit (bare CPL0 exit {:.1}) + \
             emulated instructions and kxen-vmm {}",
            us(exit0),
            rest(pvh_hc - exit0)
        ),
    );
    row(
        "user syscall bounce + return",
        pv_syscall,
        pvh_gate,
        format!(
            "2 exits (syscall stub, iret) each with a CR3-switching SET_SREGS: 2 x {:.1} \
             (exit {:.1} + SET_SREGS/CR3 {:.1}) = {:.1}; CPL0 stub emulation, bounce frame, \
             iret decode, shadow refaults after the L4 switches {}",
            us(exit3_cr3),
            us(exit3),
            us(cr3_extra),
            us(2.0 * exit3_cr3),
            rest(pv_syscall - 2.0 * exit3_cr3)
        ),
        "int3 gate from ring 3 (-ENOSYS: 6 emulated ring-0 instructions + iretq), no exit \
         to kxen-vmm; a native `syscall` is no PVH counterpart on this host: PVM keeps a \
         CPL3 syscall at CPL3 (shared/ENVIRONMENT.md), so the test guest's ring 3 enters \
         ring 0 through int3"
            .into(),
    );
    row(
        "user-kernel-user round trip",
        pv_syscall,
        pvh_gate,
        "the syscall row: the PV test process's round trip is its syscall to the \
         kernel's syscall callback and the iret back"
            .into(),
        "the gate row above".into(),
    );
    row(
        "user page fault bounce + return",
        pv_fault,
        pvh_fault,
        format!(
            "#PF exit + bounce (SET_SREGS with the kernel L4) + native handler + iret \
             (exit + SET_SREGS with the user L4): 2 x {:.1} = {:.1}; the rest {}",
            us(exit3_cr3),
            us(2.0 * exit3_cr3),
            rest(pv_fault - 2.0 * exit3_cr3)
        ),
        "#PF from ring 3 to the ring-0 handler (9 emulated instructions: match the probe, \
         step over it) + iretq; no exit to kxen-vmm"
            .into(),
    );
    row(
        "event upcall (send, callback, iret)",
        pv_upcall,
        pvh_upcall,
        format!(
            "send hypercall (a null hypercall is {:.1}) + bounce frame to the callback (kernel \
             to kernel: no SET_SREGS) + iret hypercall (one exit {:.1}); event work and the \
             rest {}",
            us(pv_null),
            us(exit3),
            rest(pv_upcall - pv_null - exit3)
        ),
        format!(
            "send from ring 3 through the gate (xen_version through the gate: {:.1}) + \
             upcall injection, ring-0 EOI/count/iretq, ring-3 drain {}; a PVH kernel \
             sending from ring 0 would pay about ring-0 hypercall {:.1} + that = {:.1} \
             (PV/that {:.2}x); the test guest's ring 0 never enables interrupts, so it \
             cannot time this itself",
            us(pvh_gate_hc),
            rest(pvh_upcall - pvh_gate_hc),
            us(pvh_hc),
            us(pvh_upcall - pvh_gate_hc + pvh_hc),
            pv_upcall / (pvh_upcall - pvh_gate_hc + pvh_hc)
        ),
    );
    row(
        "CR3 switch (NEW_BASEPTR / mov cr3)",
        pv_baseptr,
        pvh_cr3,
        format!(
            "NEW_BASEPTR to the L4 it runs on: one MMIO exit + the shadow-MMU flush \
             kxen-vmm does for every base load (bare {:.1} + {:.1}) + PV MMU and \
             refaults {}",
            us(exit3),
            us(flush_extra),
            rest(pv_baseptr - exit3_flush)
        ),
        "mov from and to CR3 (the value it holds, as the PV loop reloads its own L4) in \
         ring 0 plus dec/jnz, all emulated; KVM handles the CR3 load in the kernel (no \
         exit to kxen-vmm, no shadow-MMU flush)"
            .into(),
    );
    row(
        "kernel exception (int3 bounce+iret)",
        pv_int3,
        pvh_gate,
        format!(
            "CPL0 stub exit + bounce (SET_SREGS {:.1}) + iret hypercall exit: \
             2 x {:.1} + {:.1}; the rest {}",
            us(sregs_extra),
            us(exit3),
            us(sregs_extra),
            rest(pv_int3 - 2.0 * exit3 - sregs_extra)
        ),
        "the gate row (int3 from ring 3 to ring 0 and iretq: the test guest has no \
         ring-0 int3 handler that returns)"
            .into(),
    );
    println!(
        "(PV: {RUNS} runs of tests/guestpv with BENCH=1; PVH: {RUNS} runs of tests/guest \
         kxen.test=bench.pv; medians; section took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bare CPL3 VM runs its loop to the report for each kind of
    /// exit work, and an exit with more work costs more than a plain one.
    #[test]
    fn bare_cpl3_loop_reports_cycles_for_each_exit_work() {
        let plain = bare_cpl3_mmio_exit(200, ExitWork::None).expect("bare CPL3 VM runs");
        assert!(plain > 0.0);
        for work in [
            ExitWork::SetSregs,
            ExitWork::SetSregsNewCr3,
            ExitWork::ShadowFlush,
        ] {
            let c = bare_cpl3_mmio_exit(200, work).expect("bare CPL3 VM runs");
            assert!(c > 0.0);
        }
        let flushed = bare_cpl3_mmio_exit(200, ExitWork::ShadowFlush).expect("runs");
        assert!(
            flushed > plain,
            "an exit with a shadow-MMU flush ({flushed}) should cost more than one \
             without ({plain})"
        );
    }

    #[test]
    fn pv_timing_line_is_cycles_per_call() {
        let lines = [
            "PASS something",
            "null hypercalls: 0x00000000000003e8 calls in 0x00000000000186a0 TSC cycles",
        ];
        assert_eq!(pv_timing(&lines, PV_NULL), Some(100.0));
        assert_eq!(pv_timing(&lines, PV_INT3), None);
        let zero = ["null hypercalls: 0x0 calls in 0x10 TSC cycles"];
        assert_eq!(pv_timing(&zero, PV_NULL), None);
        let torn = ["null hypercalls: 0x10 calls in 0x10"];
        assert_eq!(pv_timing(&torn, PV_NULL), None);
    }
}
