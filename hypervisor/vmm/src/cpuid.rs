//! The CPUID table a Xen guest sees.
//!
//! KVM's own hypervisor leaves are removed: a guest that saw both KVM and
//! Xen signatures could pick KVM's paravirt interfaces, and KVM hypercalls
//! (vmcall) hang on PVM hosts. Xen's leaves sit at 0x40000000 and kxen's
//! transport leaves at 0x40000100.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use xen_abi::cpuid::*;
use xen_abi::transport::*;

/// Leaf 1 ECX: running under a hypervisor.
const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: 0,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

pub struct XenCpuidParams {
    pub domid: u16,
    pub vcpu: u32,
    pub xen_major: u32,
    pub xen_minor: u32,
    pub tsc_khz: u32,
    /// Show Xen's and kxen's leaves (PV, PVH and PVHVM guests).
    pub xen_leaves: bool,
}

/// Build the CPUID table of one vCPU from what KVM supports.
pub fn build(supported: &CpuId, p: &XenCpuidParams) -> Result<CpuId, vmm_sys_util::fam::Error> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..0x4001_0000).contains(&e.function))
        .copied()
        .collect();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (p.vcpu << 24);
                e.ecx |= CPUID_HYPERVISOR_BIT;
            }
            0xb | 0x1f => e.edx = p.vcpu,
            _ => {}
        }
    }
    if !p.xen_leaves {
        return CpuId::from_entries(&entries);
    }
    let base = XEN_CPUID_BASE;
    let sig = XEN_CPUID_SIGNATURE;
    entries.push(leaf(
        base,
        0,
        [base + XEN_CPUID_MAX_OFFSET, sig[0], sig[1], sig[2]],
    ));
    entries.push(leaf(
        base + 1,
        0,
        [p.xen_major << 16 | p.xen_minor, 0, 0, 0],
    ));
    // One hypercall page, installed through the MSR.
    entries.push(leaf(base + 2, 0, [1, XEN_HYPERCALL_MSR, 0, 0]));
    // Time leaf: sub-leaf 0 ECX and sub-leaf 2 EAX carry the TSC rate.
    entries.push(leaf(base + 3, 0, [0, 0, p.tsc_khz, 0]));
    entries.push(leaf(base + 3, 1, [0, 0, 0, 0]));
    entries.push(leaf(base + 3, 2, [p.tsc_khz, 0, 0, 0]));
    entries.push(leaf(
        base + 4,
        0,
        [
            XEN_HVM_CPUID_VCPU_ID_PRESENT
                | XEN_HVM_CPUID_DOMID_PRESENT
                | XEN_HVM_CPUID_UPCALL_VECTOR,
            p.vcpu,
            p.domid as u32,
            0,
        ],
    ));
    entries.push(leaf(base + 5, 0, [0, 0, 0, 0]));
    let ks = CPUID_KXEN_SIGNATURE;
    entries.push(leaf(
        CPUID_KXEN_BASE,
        0,
        [CPUID_KXEN_TRANSPORT, ks[0], ks[1], ks[2]],
    ));
    entries.push(leaf(
        CPUID_KXEN_TRANSPORT,
        0,
        [TRANSPORT_PORT_IO, HYPERCALL_PORT as u32, 0, 0],
    ));
    // The time leaf has sub-leaves: KVM must match on the index.
    for e in entries.iter_mut().filter(|e| e.function == base + 3) {
        e.flags = kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    }
    CpuId::from_entries(&entries)
}

/// The guest's MAXPHYADDR from its CPUID table (leaf 0x80000008, EAX bits
/// 7:0): page-table entry address bits at and above it are reserved. 36,
/// the architectural default, where the leaf is missing.
pub fn phys_addr_bits(table: &CpuId) -> u8 {
    table
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|&bits| bits != 0)
        .unwrap_or(36)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_addr_bits_reads_leaf_0x80000008() {
        let table = CpuId::from_entries(&[leaf(0x8000_0008, 0, [0x3027, 0, 0, 0])]).unwrap();
        assert_eq!(phys_addr_bits(&table), 0x27);
        let empty = CpuId::from_entries(&[leaf(1, 0, [0; 4])]).unwrap();
        assert_eq!(phys_addr_bits(&empty), 36);
    }
}
