//! kxen's hypercall transport.
//!
//! Xen's hypercall page uses `vmcall`/`vmmcall`, which never reaches a
//! user-space VMM on KVM without in-kernel Xen support (and hangs at CPL0 on PVM
//! hosts). kxen's stubs instead write the hypercall number to an I/O port with
//! `out imm8, eax`, which exits to the VMM as `KVM_EXIT_IO` on every KVM
//! backend, with RIP past the instruction and all other registers intact.
//!
//! A guest that calls hypercalls directly (as Linux >= 6.1.120 does) learns the
//! port from the kxen CPUID leaves below.

/// The I/O port hypercall stubs write the hypercall number to.
pub const HYPERCALL_PORT: u16 = 0x58;

/// kxen's own CPUID leaves, outside Xen's range, so Xen-only guests ignore them.
pub const CPUID_KXEN_BASE: u32 = 0x4000_0100;
/// "KxenKxenKxen" in EBX, ECX, EDX of [`CPUID_KXEN_BASE`].
pub const CPUID_KXEN_SIGNATURE: [u32; 3] = [0x6e65_784b, 0x6e65_784b, 0x6e65_784b];
/// Leaf describing the transport: EAX = [`TRANSPORT_PORT_IO`], EBX = the port.
pub const CPUID_KXEN_TRANSPORT: u32 = CPUID_KXEN_BASE + 1;
/// Transport kind: `mov $nr, %eax; out %eax, $port`.
pub const TRANSPORT_PORT_IO: u32 = 1;

/// Machine code of one hypercall-page stub: `mov $nr, %eax; out %eax, $port; ret`,
/// padded with `int3`.
pub fn hypercall_stub(nr: u32) -> [u8; crate::hypercall::STUB_SIZE] {
    let mut stub = [0xcc_u8; crate::hypercall::STUB_SIZE];
    stub[0] = 0xb8; // mov imm32, %eax
    stub[1..5].copy_from_slice(&nr.to_le_bytes());
    stub[5] = 0xe7; // out %eax, imm8
    stub[6] = HYPERCALL_PORT as u8;
    stub[7] = 0xc3; // ret
    stub
}
