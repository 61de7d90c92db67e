//! Bare-KVM baselines: the cheapest possible VMM, for comparison.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Port the baseline guest loops on.
const LOOP_PORT: u16 = 0x59;
/// Port the baseline guest reports its TSC delta on.
const REPORT_PORT: u16 = 0x5a;

/// Real-mode code: time `iterations` `out` exits with rdtsc, report the
/// cycle count (low 32 bits) on REPORT_PORT, then halt.
fn loop_code(iterations: u16) -> Vec<u8> {
    let mut code = vec![
        0x0f, 0x31, // rdtsc
        0x66, 0x89, 0xc6, // mov %eax, %esi
        0xb9, // mov $iterations, %cx
    ];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[
        0xe6,
        LOOP_PORT as u8, // 1: out %al, $LOOP_PORT
        0xe2,
        0xfc, // loop 1b
        0x0f,
        0x31, // rdtsc
        0x66,
        0x29,
        0xf0, // sub %esi, %eax
        0x66,
        0xe7,
        REPORT_PORT as u8, // out %eax, $REPORT_PORT
        0xf4,              // hlt
    ]);
    code
}

/// Measured cost of one port-I/O exit through a bare kvm-ioctls loop.
pub struct ExitBaseline {
    /// Guest-measured TSC cycles per exit round trip.
    pub cycles_per_exit: f64,
    /// Host wall time per exit round trip, in ns.
    pub host_ns_per_exit: f64,
}

pub fn bare_port_io_exit(iterations: u16) -> Result<ExitBaseline, String> {
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
    let code = loop_code(iterations);
    // SAFETY: `mem` is a fresh writable mapping of `size` bytes and the
    // code is much smaller than that.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len())
    };
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
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("vCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;

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
            }
            Ok(VcpuExit::Hlt) => break Ok(()),
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
        let b = super::bare_port_io_exit(1000).expect("baseline VM runs");
        assert!(b.cycles_per_exit > 0.0 && b.host_ns_per_exit > 0.0);
    }
}
