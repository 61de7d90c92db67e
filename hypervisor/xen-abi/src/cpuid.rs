//! Xen's CPUID leaves (base 0x40000000).

pub const XEN_CPUID_BASE: u32 = 0x4000_0000;
/// "XenVMMXenVMM" in EBX, ECX, EDX of the base leaf.
pub const XEN_CPUID_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];
/// Highest Xen leaf offset we answer (Xen reports base + 5).
pub const XEN_CPUID_MAX_OFFSET: u32 = 5;
/// Leaf base+2: EBX = MSR that installs the hypercall page.
pub const XEN_HYPERCALL_MSR: u32 = 0x4000_0000;

/// Leaf base+4 EAX flags.
pub const XEN_HVM_CPUID_APIC_ACCESS_VIRT: u32 = 1 << 0;
pub const XEN_HVM_CPUID_X2APIC_VIRT: u32 = 1 << 1;
pub const XEN_HVM_CPUID_IOMMU_MAPPINGS: u32 = 1 << 2;
pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
pub const XEN_HVM_CPUID_UPCALL_VECTOR: u32 = 1 << 6;
