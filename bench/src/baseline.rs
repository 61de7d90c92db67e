//! Bare-KVM baselines: the cheapest possible VMM, for comparison.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Port the baseline guest loops on.
const LOOP_PORT: u16 = 0x59;
/// Port the baseline guest reports its TSC delta on.
const REPORT_PORT: u16 = 0x5a;

/// Guest-physical layout of the baseline VM.
const CODE: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const STACK_TOP: u64 = 0x8000;

/// Put a bare vCPU in long mode with paging on `cr3`, `code` in CS and
/// `data` in DS/ES/SS, at `rip` with `rsp`, interrupts off: the start of
/// every bare-KVM baseline (this one's CPL0 loops and the pv section's
/// CPL3 ones).
pub(crate) fn enter_long_mode(
    vcpu: &kvm_ioctls::VcpuFd,
    code: kvm_bindings::kvm_segment,
    data: kvm_bindings::kvm_segment,
    cr3: u64,
    rip: u64,
    rsp: u64,
) -> Result<(), String> {
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.ss = data;
    sregs.cr3 = cr3;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0031; // PG | NE | ET | PE
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = rip;
    regs.rsp = rsp;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())
}

/// 64-bit code: time `iterations` exits with rdtsc, report the cycle count
/// (low 32 bits) on REPORT_PORT. Each iteration is either the test guest's
/// null-exit loop (`out; dec; jnz`) or a hypercall's guest instructions
/// (`xor; xor; call stub; dec; jnz` with stub `mov $17,%eax; out; ret`).
/// Both run in long mode with paging, like the test guest, because on PVM
/// hosts every ring-0 instruction is emulated and costs a page walk.
fn loop_code(iterations: u32, shape: LoopShape) -> Vec<u8> {
    let mut code = vec![
        0x0f, 0x31, // rdtsc
        0x48, 0xc1, 0xe2, 0x20, // shl $32, %rdx
        0x48, 0x09, 0xd0, // or %rdx, %rax
        0x48, 0x89, 0xc5, // mov %rax, %rbp
        0x41, 0xbc, // mov $iterations, %r12d
    ];
    code.extend_from_slice(&iterations.to_le_bytes());
    let top = code.len();
    let mut call_at = None;
    match shape {
        LoopShape::BareExit => code.extend_from_slice(&[0xe7, LOOP_PORT as u8]), // out %eax
        LoopShape::HypercallShaped => {
            code.extend_from_slice(&[0x31, 0xff, 0x31, 0xf6]); // xor %edi; xor %esi
            call_at = Some(code.len());
            code.extend_from_slice(&[0xe8, 0, 0, 0, 0]); // call stub
        }
    }
    code.extend_from_slice(&[0x49, 0xff, 0xcc]); // dec %r12
    let jnz_at = code.len();
    code.extend_from_slice(&[0x75, (top as isize - (jnz_at as isize + 2)) as u8]);
    code.extend_from_slice(&[
        0x0f,
        0x31, // rdtsc
        0x48,
        0xc1,
        0xe2,
        0x20, // shl $32, %rdx
        0x48,
        0x09,
        0xd0, // or %rdx, %rax
        0x48,
        0x29,
        0xe8, // sub %rbp, %rax
        0xe7,
        REPORT_PORT as u8, // out %eax, $REPORT_PORT
    ]);
    if let Some(call_at) = call_at {
        let stub = code.len();
        code.extend_from_slice(&[
            0xb8,
            17,
            0,
            0,
            0, // mov $17, %eax
            0xe7,
            LOOP_PORT as u8, // out %eax, $LOOP_PORT
            0xc3,            // ret
        ]);
        let rel = (stub as i64 - (call_at as i64 + 5)) as i32;
        code[call_at + 1..call_at + 5].copy_from_slice(&rel.to_le_bytes());
    }
    code
}

/// Which guest loop a baseline runs.
#[derive(Clone, Copy)]
pub enum LoopShape {
    /// `out; loop`: the cheapest exit there is.
    BareExit,
    /// The instruction sequence of a hypercall through the page.
    HypercallShaped,
}

/// Measured cost of one port-I/O exit through a bare kvm-ioctls loop.
pub struct ExitBaseline {
    /// Guest-measured TSC cycles per exit round trip.
    pub cycles_per_exit: f64,
    /// Host wall time per exit round trip, in ns.
    pub host_ns_per_exit: f64,
}

/// KVM features the baseline VM turns on, to price each one.
#[derive(Clone, Copy, Default)]
pub struct BaselineFeatures {
    /// In-kernel PIC/IOAPIC/LAPIC, as kxen-vmm uses.
    pub irqchip: bool,
    /// General and system registers synced into kvm_run on every exit.
    pub sync_regs: bool,
}

pub fn bare_port_io_exit(
    iterations: u32,
    shape: LoopShape,
    features: BaselineFeatures,
) -> Result<ExitBaseline, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    let size = 0x10000usize;
    // SAFETY: an anonymous private mapping we own; unmapped below after
    // the VM (which is the only other user) is dropped.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let code = loop_code(iterations, shape);
    // Identity-map the first 2 MiB with one large page.
    let tables: [(u64, u64); 3] = [(PML4, PDPT | 3), (PDPT, PD | 3), (PD, 0x83)];
    // SAFETY: `mem` is a fresh writable mapping of `size` bytes; the code
    // and the three table entries lie well inside it.
    unsafe {
        let base = mem as *mut u8;
        std::ptr::copy_nonoverlapping(code.as_ptr(), base.add(CODE as usize), code.len());
        for (table, entry) in tables {
            (base.add(table as usize) as *mut u64).write(entry);
        }
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM: it is unmapped after `vm` and
    // `vcpu` are dropped at the end of this function.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory: {e}"))?;
    if features.irqchip {
        vm.create_irq_chip().map_err(|e| format!("irqchip: {e}"))?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("vCPU: {e}"))?;
    if features.sync_regs {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    let code_seg = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data_seg = kvm_bindings::kvm_segment {
        selector: 0x10,
        type_: 0x3,
        l: 0,
        db: 1,
        ..code_seg
    };
    enter_long_mode(&vcpu, code_seg, data_seg, PML4, CODE, STACK_TOP)?;

    let mut exits = 0u64;
    let mut cycles = None;
    let start = Instant::now();
    let result = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(LOOP_PORT, _)) => exits += 1,
            Ok(VcpuExit::IoOut(REPORT_PORT, data)) => {
                let mut b = [0u8; 4];
                b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                cycles = Some(u32::from_le_bytes(b));
                // The report ends the run (no hlt: with an in-kernel
                // irqchip KVM would keep a halted vCPU to itself).
                break Ok(());
            }
            Ok(other) => break Err(format!("unexpected exit {other:?}")),
            Err(e) => break Err(format!("KVM_RUN: {e}")),
        }
    };
    let elapsed = start.elapsed();
    drop(vcpu);
    drop(vm);
    // SAFETY: the VM that used this mapping is gone.
    unsafe { libc::munmap(mem, size) };
    result?;
    let cycles = cycles.ok_or("no report from the baseline guest")?;
    Ok(ExitBaseline {
        cycles_per_exit: cycles as f64 / iterations as f64,
        host_ns_per_exit: elapsed.as_nanos() as f64 / exits.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_exit_loop_reports_cycles() {
        for shape in [
            super::LoopShape::BareExit,
            super::LoopShape::HypercallShaped,
        ] {
            let b = super::bare_port_io_exit(1000, shape, Default::default())
                .expect("baseline VM runs");
            assert!(b.cycles_per_exit > 0.0 && b.host_ns_per_exit > 0.0);
        }
    }
}
