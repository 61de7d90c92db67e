//! The classic PV machine on KVM, first slice: vCPU 0's entry state (long
//! mode, deprivileged at CPL3 on the builder's page tables), the hypercall
//! page, and the PV MMU hypercalls served from [`kxen_pv::PvMmu`].
//!
//! The PV semantics live in kxen-pv (KVM-free); this module only executes
//! them: it reads guest memory for the MMU, writes `done` counts back and
//! tells the vCPU what to load (a new CR3) before it resumes the guest.
//! Every hypercall argument is hostile: a bad one is Xen's error code,
//! never a panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_segment;
use tracing::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::errno::EFAULT;
use xen_abi::hypercall::STUB_COUNT;
use xen_abi::pv::{hypercall as pv_nr, MmuextOp, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};

use kxen_loader::pv::PvBootState;
use kxen_pv::{Effects, Mfn, MmuMemory, PvMmu, PvMmuConfig, PvVcpu};
use kxen_xen::guest::GuestAccess;
use kxen_xen::hypercall::Call;

/// Xen's flat 64-bit kernel selectors (public/arch-x86/xen-x86_64.h): a
/// 64-bit PV kernel runs at CPL3 with these in CS and SS.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// FLAT_KERNEL_DS64 is the null selector on x86_64.
pub const FLAT_KERNEL_DS64: u16 = 0;

/// The PV hypercall transport. On PVM hosts an `out` at CPL3 raises #GP
/// in the guest (measured: the PV guest triple-faulted on the PVH
/// stubs' `out`), but a CPL3 write to a guest page backed by no memory
/// slot exits to kxen-vmm as KVM_EXIT_MMIO. So a PV domain's hypercall
/// stubs store the hypercall number to this guest-physical address, which
/// no memory slot or device covers, through a page the hypervisor maps in
/// one of its own L4 slots (256-271, which every L4 the guest pins or
/// loads receives and cannot change).
pub const PV_HYPERCALL_GPA: u64 = 0xfefe_0000;
/// The hypervisor L4 slot (the last of 256-271) that maps the hypercall
/// transport page, and that page's virtual address.
const HYPERCALL_L4_SLOT: usize = 271;
pub const PV_HYPERCALL_VA: u64 = 0xffff_0000_0000_0000 | ((HYPERCALL_L4_SLOT as u64) << 39);
/// The hypervisor's own page-table frames for that mapping (L3, L2, L1),
/// in the special pages window (outside the guest's RAM, so the PV MMU
/// never lets the guest map or use them).
const HV_TABLE_GFNS: [u64; 3] = [
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES,
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES + 1,
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES + 2,
];
const PTE_P_RW_U: u64 = 0x7;
const PTE_ACCESSED: u64 = 0x20;
const PTE_NX: u64 = 1 << 63;

/// The `iret` hypercall's number. Its stub differs: a guest jumps to it
/// with the iret frame's `flags` word pushed, and it never returns.
pub const HYPERCALL_IRET: u32 = pv_nr::IRET as u32;

/// Machine code of one PV hypercall stub: `mov $nr, %eax; movabs %eax,
/// PV_HYPERCALL_VA; ret`, padded with `int3`. The `iret` stub first
/// pushes RCX, R11 and RAX, completing Xen's `struct iret_context` on the
/// stack (Xen's own stub does the same), and has `ud2` where `ret` is.
pub fn pv_hypercall_stub(nr: u32) -> [u8; xen_abi::hypercall::STUB_SIZE] {
    let mut stub = [0xcc_u8; xen_abi::hypercall::STUB_SIZE];
    let mut at = 0;
    if nr == HYPERCALL_IRET {
        // push %rcx; push %r11; push %rax
        stub[..4].copy_from_slice(&[0x51, 0x41, 0x53, 0x50]);
        at = 4;
    }
    stub[at] = 0xb8; // mov imm32, %eax
    stub[at + 1..at + 5].copy_from_slice(&nr.to_le_bytes());
    stub[at + 5] = 0xa3; // mov %eax, moffs64
    stub[at + 6..at + 14].copy_from_slice(&PV_HYPERCALL_VA.to_le_bytes());
    if nr == HYPERCALL_IRET {
        stub[at + 14..at + 16].copy_from_slice(&[0x0f, 0x0b]); // ud2
    } else {
        stub[at + 14] = 0xc3; // ret
    }
    stub
}

// ---- exceptions: the hypervisor's IDT, GDT, TSS and CPL0 exit stubs -----
//
// The PV kernel runs at CPL3. An exception there goes through the IDT
// to CPL0, so the vCPU gets an IDT whose gates lead to one tiny CPL0 stub
// per vector that exits to kxen-vmm at once (an MMIO store of the vector
// to [`PV_TRAP_EXIT_GPA`]): guest CPL0 code is emulated at ~1 µs an
// instruction on PVM hosts, so the stub is one instruction. kxen-vmm
// then reads the frame the CPU pushed on the TSS's RSP0 stack and
// bounces the exception to the handler the kernel registered with
// set_trap_table (kxen-pv's `traps`). All of these pages are special
// pages outside the guest's RAM, mapped supervisor-only by the
// hypervisor's L1 in L4 slot 271: the guest at CPL3 can neither read nor
// write them, nor reach the exit page (it cannot forge a trap exit).

/// Special pages (after the three PV tables) and the L1 slot mapping each.
const TRAP_PAGES_FIRST: u64 = crate::memory::SPECIAL_PV_TABLES + 3;
pub(crate) const GDT_PAGE: u64 = 1;
pub(crate) const IDT_PAGE: u64 = 2;
pub(crate) const TSS_PAGE: u64 = 3;
const STUB_PAGE: u64 = 4;
const STACK_PAGE: u64 = 5;
/// The L1 slot of the trap exit page (no special page: unbacked GPA).
const TRAP_EXIT_PAGE: u64 = 6;
/// The `syscall` entry stub and the event vector's stub (a special page).
const ENTRY_STUB_PAGE: u64 = 7;
/// The L1 slot of the syscall exit page (unbacked GPA).
const SYSCALL_EXIT_PAGE: u64 = 8;
/// The L1 slot mapping the local APIC's registers, for the event stub's
/// EOI (the in-kernel LAPIC decodes the store; no exit).
const LAPIC_PAGE: u64 = 9;
const _: () = assert!(TRAP_PAGES_FIRST + ENTRY_STUB_PAGE - 1 < crate::memory::SPECIAL_PAGES);
/// An unbacked GPA: a store here from a CPL0 stub exits as MMIO.
pub const PV_TRAP_EXIT_GPA: u64 = 0xfefe_1000;
/// An unbacked GPA: the `syscall` entry stub's store here exits as MMIO.
pub const PV_SYSCALL_EXIT_GPA: u64 = 0xfefe_2000;
/// The local APIC's default base and its EOI register.
const LAPIC_BASE_GPA: u64 = 0xfee0_0000;
const LAPIC_EOI: u64 = 0xb0;
/// The vector kxen-vmm routes a PV vCPU's event notifications to (its
/// upcall vector): Dom0's irqfds and the VMM's own sends raise it in the
/// vCPU's local APIC, so a vCPU running guest code natively is
/// interrupted at once. Its stub acknowledges it (EOI) and exits; the
/// guest never sees the vector, only the event callback.
pub const PV_EVENT_VECTOR: u8 = 0xf3;
/// PV vCPUs a domain may have: the per-vCPU TSS and trap stack share one
/// page each, and shared_info holds 32 vcpu_infos.
pub const MAX_PV_VCPUS: u32 = 32;
/// Bytes of each vCPU's TSS slot and trap stack in their pages.
const TSS_SLOT: u64 = 0x80;
const TRAP_STACK_SLOT: u64 = 0x80;
const _: () = assert!(MAX_PV_VCPUS as u64 * TSS_SLOT <= xen_abi::PAGE_SIZE as u64);
const _: () = assert!(MAX_PV_VCPUS as u64 * TRAP_STACK_SLOT <= xen_abi::PAGE_SIZE as u64);
/// `STAR`: `syscall` enters the hypervisor's CPL0 code segment (and SS
/// = its data segment, 0x10).
pub const PV_MSR_STAR: u64 = (HV_CODE_SELECTOR as u64) << 32;
/// `SFMASK`: `syscall` clears TF, IF, DF, AC and NT, so the entry stub
/// runs uninterrupted; kxen-vmm restores the flags from R11.
pub const PV_MSR_SFMASK: u64 = 0x4_4700;
/// Offset of the event stub in the entry stub page.
const EVENT_STUB_OFFSET: u64 = 0x40;
/// The GDT's 64-bit CPL0 code segment and the TSS (16-byte) descriptor.
/// Like Xen's, the hypervisor's own selectors live in the GDT's reserved
/// range from 0xe000 (FIRST_RESERVED_GDT_ENTRY), after the guest's
/// entries: CPL0 code and data, Xen's flat ring-3 selectors (0xe023,
/// 0xe02b, 0xe033) and the TSS.
const HV_CODE_SELECTOR: u16 = 0xe008;
pub(crate) const HV_TSS_SELECTOR: u16 = 0xe040;
/// Byte offset of the reserved entries in a vCPU's GDT, and its limit.
const GDT_RESERVED_OFFSET: u64 = kxen_pv::descriptors::FIRST_RESERVED_GDT_ENTRY * 8;
pub(crate) const GDT_LIMIT: u16 = (GDT_RESERVED_OFFSET + 0x50 - 1) as u16;
/// Pages of one vCPU's GDT area: the guest's 14 frames, the reserved
/// page, one spare.
const GDT_AREA_PAGES: u64 = 16;
/// Special pages (indices in the special window) of the GDT area's L1
/// and of the zero page mapped where a guest GDT has no frame.
const GDT_L1_SPECIAL: u64 = TRAP_PAGES_FIRST + 7;
const ZERO_SPECIAL: u64 = TRAP_PAGES_FIRST + 8;
/// The L1 of every vCPU's LDT area (L2 slot 2 of slot 271).
const LDT_L1_SPECIAL: u64 = TRAP_PAGES_FIRST + 9;
const _: () = assert!(LDT_L1_SPECIAL < crate::memory::SPECIAL_PAGES);
/// Pages of one vCPU's LDT area: 8192 descriptors.
const LDT_AREA_PAGES: u64 = 16;
const _: () = assert!(MAX_PV_VCPUS as u64 * GDT_AREA_PAGES <= 512);
/// Bytes of one exit stub: `movb $vector, rel32(%rip)` (7) and `ud2`.
const TRAP_STUB_SIZE: u64 = 16;

/// A special page's frame.
const fn special_gfn(index: u64) -> u64 {
    crate::memory::SPECIAL_BASE_GFN + index
}

/// vCPU `vcpu`'s GDT base: its area in L2 slot 1 of slot 271.
pub(crate) const fn gdt_area_va(vcpu: u32) -> u64 {
    PV_HYPERCALL_VA + (2 << 20) + (vcpu as u64) * GDT_AREA_PAGES * xen_abi::PAGE_SIZE as u64
}

/// The L1 entry of page `page` of a vCPU's GDT area: the guest's frame
/// (read-write for the CPU's accessed-bit writes, supervisor-only: the
/// guest's own mappings of it are read-only), the zero page where it
/// has none, the reserved entries at 0xe000, nothing past them.
fn gdt_area_entry(page: u64, guest_frame: Option<u64>) -> u64 {
    let reserved_page = GDT_RESERVED_OFFSET / xen_abi::PAGE_SIZE as u64;
    match (page, guest_frame) {
        (p, Some(mfn)) if p < reserved_page => (mfn << 12) | 0x3 | PTE_ACCESSED | 0x40 | PTE_NX,
        (p, None) if p < reserved_page => {
            (special_gfn(ZERO_SPECIAL) << 12) | 0x1 | PTE_ACCESSED | PTE_NX
        }
        (p, _) if p == reserved_page => {
            (trap_page_gfn(GDT_PAGE) << 12) | 0x3 | PTE_ACCESSED | 0x40 | PTE_NX
        }
        _ => 0,
    }
}

/// Point vCPU `vcpu`'s GDT area at the guest's GDT `frames` (the rest
/// at the zero page). The caller flushes KVM's shadow MMU.
pub fn map_guest_gdt(mem: &GuestMemoryMmap, vcpu: u32, frames: &[u64]) {
    if vcpu >= MAX_PV_VCPUS {
        return;
    }
    let gdt_l1 = special_gfn(GDT_L1_SPECIAL);
    let reserved_page = GDT_RESERVED_OFFSET / xen_abi::PAGE_SIZE as u64;
    for page in 0..reserved_page {
        let entry = gdt_area_entry(page, frames.get(page as usize).copied());
        let at = u64::from(vcpu) * GDT_AREA_PAGES + page;
        let _ = mem.write_obj(entry, GuestAddress((gdt_l1 << 12) + at * 8));
    }
}

/// vCPU `vcpu`'s LDT base: its area in L2 slot 2 of slot 271.
pub(crate) const fn ldt_area_va(vcpu: u32) -> u64 {
    PV_HYPERCALL_VA + (4 << 20) + (vcpu as u64) * LDT_AREA_PAGES * xen_abi::PAGE_SIZE as u64
}

/// Point vCPU `vcpu`'s LDT area at `frames` (`None`: a page that is not
/// mapped or not a valid descriptor page; using a selector there
/// faults). The caller flushes KVM's shadow MMU.
pub fn map_guest_ldt(mem: &GuestMemoryMmap, vcpu: u32, frames: &[Option<u64>]) {
    if vcpu >= MAX_PV_VCPUS {
        return;
    }
    let ldt_l1 = special_gfn(LDT_L1_SPECIAL);
    for page in 0..LDT_AREA_PAGES {
        let entry = match frames.get(page as usize).copied().flatten() {
            Some(mfn) => (mfn << 12) | 0x3 | PTE_ACCESSED | 0x40 | PTE_NX,
            None => 0,
        };
        let at = u64::from(vcpu) * LDT_AREA_PAGES + page;
        let _ = mem.write_obj(entry, GuestAddress((ldt_l1 << 12) + at * 8));
    }
}

/// Guest-virtual address of the page at L1 slot `page` of slot 271.
pub(crate) const fn hv_page_va(page: u64) -> u64 {
    PV_HYPERCALL_VA + page * xen_abi::PAGE_SIZE as u64
}
const fn trap_page_gfn(page: u64) -> u64 {
    crate::memory::SPECIAL_BASE_GFN + TRAP_PAGES_FIRST + page - 1
}

/// The frame of the PV vCPUs' IDT (a special page the hypervisor owns).
pub const fn idt_gfn() -> u64 {
    trap_page_gfn(IDT_PAGE)
}
/// vCPU `vcpu`'s RSP0 stack top (16-byte aligned: the CPU aligns it
/// anyway). Each vCPU has its own slot: two vCPUs trapping at once must
/// not share one frame.
const fn trap_stack_top(vcpu: u32) -> u64 {
    hv_page_va(STACK_PAGE) + (vcpu as u64 + 1) * TRAP_STACK_SLOT
}
/// vCPU `vcpu`'s TSS (its TR base).
pub(crate) const fn tss_va(vcpu: u32) -> u64 {
    hv_page_va(TSS_PAGE) + vcpu as u64 * TSS_SLOT
}
/// `LSTAR`: the `syscall` entry stub.
pub const fn pv_lstar() -> u64 {
    hv_page_va(ENTRY_STUB_PAGE)
}

/// The GDT, IDT, TSS and exit stubs, written into their special pages,
/// and their L1 entries beside the hypercall transport's.
fn write_trap_pages(mem: &GuestMemoryMmap) -> Result<(), PvSetupError> {
    let page_gpa = |page: u64| GuestAddress(trap_page_gfn(page) << 12);
    let write = |gpa: GuestAddress, bytes: &[u8]| {
        mem.write_slice(bytes, gpa)
            .map_err(|_| PvSetupError::HypervisorTables(gpa.0 >> 12))
    };
    // The GDT's reserved page (selectors 0xe000 on): 64-bit CPL0 code at
    // 0xe008, CPL0 data at 0xe010, Xen's flat ring-3 code32/data/code64
    // at 0xe023/0xe02b/0xe033, the TSS at 0xe040. Accessed bits preset:
    // the CPU need not write them.
    let mut gdt = vec![0u8; xen_abi::PAGE_SIZE];
    for (at, desc) in [
        (0x08, 0x00af_9b00_0000_ffff_u64),
        (0x10, 0x00cf_9300_0000_ffff),
        (0x20, 0x00cf_fb00_0000_ffff),
        (0x28, 0x00cf_f300_0000_ffff),
        (0x30, 0x00af_fb00_0000_ffff),
    ] {
        gdt[at..at + 8].copy_from_slice(&desc.to_le_bytes());
    }
    let tss_base = hv_page_va(TSS_PAGE);
    let tss_low = 0x67
        | ((tss_base & 0xff_ffff) << 16)
        | (0x8b << 40) // present, busy 64-bit TSS
        | (((tss_base >> 24) & 0xff) << 56);
    gdt[0x40..0x48].copy_from_slice(&tss_low.to_le_bytes());
    gdt[0x48..0x50].copy_from_slice(&(tss_base >> 32).to_le_bytes());
    write(page_gpa(GDT_PAGE), &gdt)?;
    // IDT: every vector an interrupt gate to its stub; DPL3 for #BP and
    // #OF so that `int3`/`into` at CPL3 reach them (as Xen's IDT), DPL0
    // elsewhere (`int $n` from CPL3 is a #GP, as on Xen).
    let mut idt = vec![0u8; xen_abi::PAGE_SIZE];
    for vector in 0..256u64 {
        let target = if vector == u64::from(PV_EVENT_VECTOR) {
            hv_page_va(ENTRY_STUB_PAGE) + EVENT_STUB_OFFSET
        } else {
            hv_page_va(STUB_PAGE) + vector * TRAP_STUB_SIZE
        };
        let dpl: u64 = if matches!(vector, 3 | 4) { 3 } else { 0 };
        let low = (target & 0xffff)
            | (u64::from(HV_CODE_SELECTOR) << 16)
            | ((0x8e | (dpl << 5)) << 40)
            | (((target >> 16) & 0xffff) << 48);
        let at = (vector * 16) as usize;
        idt[at..at + 8].copy_from_slice(&low.to_le_bytes());
        idt[at + 8..at + 16].copy_from_slice(&(target >> 32).to_le_bytes());
    }
    write(page_gpa(IDT_PAGE), &idt)?;
    // One TSS per vCPU: RSP0 = its trap stack; no I/O bitmap.
    let mut tss = vec![0u8; xen_abi::PAGE_SIZE];
    for vcpu in 0..MAX_PV_VCPUS {
        let at = (vcpu as u64 * TSS_SLOT) as usize;
        tss[at + 4..at + 12].copy_from_slice(&trap_stack_top(vcpu).to_le_bytes());
        tss[at + 0x66..at + 0x68].copy_from_slice(&0x68u16.to_le_bytes());
    }
    write(page_gpa(TSS_PAGE), &tss)?;
    // Stubs: `movb $vector, rel32(%rip)` to the exit page, then `ud2`.
    let mut stubs = vec![0xccu8; xen_abi::PAGE_SIZE];
    for vector in 0..256u64 {
        let at = vector * TRAP_STUB_SIZE;
        let next_rip = hv_page_va(STUB_PAGE) + at + 7;
        let rel = hv_page_va(TRAP_EXIT_PAGE).wrapping_sub(next_rip) as i64;
        let rel = i32::try_from(rel).expect("exit page within 2 GiB of the stubs");
        let at = at as usize;
        stubs[at..at + 2].copy_from_slice(&[0xc6, 0x05]);
        stubs[at + 2..at + 6].copy_from_slice(&rel.to_le_bytes());
        stubs[at + 6] = vector as u8;
        stubs[at + 7..at + 9].copy_from_slice(&[0x0f, 0x0b]);
    }
    write(page_gpa(STUB_PAGE), &stubs)?;
    write(page_gpa(STACK_PAGE), &[0u8; xen_abi::PAGE_SIZE])?;
    write(page_gpa(ENTRY_STUB_PAGE), &entry_stubs())?;
    // Supervisor-only leaves (no U bit): CPL3 cannot touch them.
    let [_, _, l1] = HV_TABLE_GFNS;
    let present_rw = 0x3 | PTE_ACCESSED | 0x40;
    for (page, entry) in [
        (
            GDT_PAGE,
            (trap_page_gfn(GDT_PAGE) << 12) | present_rw | PTE_NX,
        ),
        (
            IDT_PAGE,
            (trap_page_gfn(IDT_PAGE) << 12) | 0x1 | PTE_ACCESSED | PTE_NX,
        ),
        (
            TSS_PAGE,
            (trap_page_gfn(TSS_PAGE) << 12) | present_rw | PTE_NX,
        ),
        (
            STUB_PAGE,
            (trap_page_gfn(STUB_PAGE) << 12) | 0x1 | PTE_ACCESSED,
        ),
        (
            STACK_PAGE,
            (trap_page_gfn(STACK_PAGE) << 12) | present_rw | PTE_NX,
        ),
        (TRAP_EXIT_PAGE, PV_TRAP_EXIT_GPA | present_rw | PTE_NX),
        // User-accessible, unlike the rest: on PVM hosts `syscall` from
        // CPL3 enters LSTAR still at CPL3 (measured: the stub's fetch
        // from a supervisor-only page was a user-mode #PF). Nothing is
        // gained by jumping to the stub or storing to its exit page
        // directly: kxen-vmm treats either as that vCPU's `syscall` with
        // the RCX/R11 it finds. On VT-x the stub runs at CPL0, which may
        // use a user page (no SMEP/SMAP in a PV vCPU's CR4).
        (
            ENTRY_STUB_PAGE,
            (trap_page_gfn(ENTRY_STUB_PAGE) << 12) | 0x5 | PTE_ACCESSED,
        ),
        (
            SYSCALL_EXIT_PAGE,
            PV_SYSCALL_EXIT_GPA | PTE_P_RW_U | PTE_ACCESSED | 0x40 | PTE_NX,
        ),
        // PCD: device registers are not to be cached.
        (LAPIC_PAGE, LAPIC_BASE_GPA | present_rw | 0x10 | PTE_NX),
    ] {
        mem.write_obj(entry, GuestAddress((l1 << 12) + page * 8))
            .map_err(|_| PvSetupError::HypervisorTables(l1))?;
    }
    Ok(())
}

/// The entry stub page: at 0 the `syscall` entry (LSTAR), `movb $0,
/// rel32(%rip)` to the syscall exit page; at [`EVENT_STUB_OFFSET`] the
/// event vector's gate target, `movl $0, rel32(%rip)` to the local
/// APIC's EOI register, then the trap exit store of the vector. Each
/// ends in `ud2`. Neither clobbers a register: kxen-vmm reads the state
/// the guest left.
fn entry_stubs() -> Vec<u8> {
    let mut page = vec![0xccu8; xen_abi::PAGE_SIZE];
    let base = hv_page_va(ENTRY_STUB_PAGE);
    let rel_to = |target: u64, next_rip: u64| -> [u8; 4] {
        let rel = target.wrapping_sub(next_rip) as i64;
        i32::try_from(rel)
            .expect("hypervisor pages within 2 GiB of each other")
            .to_le_bytes()
    };
    // syscall entry: movb $0, exit(%rip); ud2
    page[0..2].copy_from_slice(&[0xc6, 0x05]);
    page[2..6].copy_from_slice(&rel_to(hv_page_va(SYSCALL_EXIT_PAGE), base + 7));
    page[6] = 0;
    page[7..9].copy_from_slice(&[0x0f, 0x0b]);
    // event vector: movl $0, eoi(%rip); movb $vector, trap_exit(%rip); ud2
    let at = EVENT_STUB_OFFSET as usize;
    let eoi = hv_page_va(LAPIC_PAGE) + LAPIC_EOI;
    page[at..at + 2].copy_from_slice(&[0xc7, 0x05]);
    page[at + 2..at + 6].copy_from_slice(&rel_to(eoi, base + EVENT_STUB_OFFSET + 10));
    page[at + 6..at + 10].copy_from_slice(&0u32.to_le_bytes());
    let at = at + 10;
    page[at..at + 2].copy_from_slice(&[0xc6, 0x05]);
    page[at + 2..at + 6].copy_from_slice(&rel_to(
        hv_page_va(TRAP_EXIT_PAGE),
        base + EVENT_STUB_OFFSET + 17,
    ));
    page[at + 6] = PV_EVENT_VECTOR;
    page[at + 7..at + 9].copy_from_slice(&[0x0f, 0x0b]);
    page
}

/// What the CPU pushed on the trap stack when an exception reached a
/// stub, read by kxen-vmm on the stub's exit.
#[derive(Debug, Clone, Copy)]
pub struct HardwareFrame {
    pub error_code: Option<u32>,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The hardware frame of `vector` on the trap stack, given the stub's
/// RSP; `None` if RSP is not where one frame from the top would leave it
/// (the stub was reached some other way: nested, or forged).
pub fn read_hardware_frame(
    mem: &GuestMemoryMmap,
    vcpu: u32,
    vector: u8,
    rsp: u64,
) -> Option<HardwareFrame> {
    // The event vector is an interrupt: no error code, whatever its
    // number would mean as an exception.
    let has_ec = vector != PV_EVENT_VECTOR && kxen_pv::traps::has_error_code(vector);
    let words = if has_ec { 6 } else { 5 };
    if vcpu >= MAX_PV_VCPUS || rsp != trap_stack_top(vcpu) - 8 * words {
        return None;
    }
    let gpa = (trap_page_gfn(STACK_PAGE) << 12) + (rsp - hv_page_va(STACK_PAGE));
    let mut w = [0u64; 6];
    for (i, word) in w.iter_mut().take(words as usize).enumerate() {
        *word = mem.read_obj(GuestAddress(gpa + 8 * i as u64)).ok()?;
    }
    let (error_code, rest) = if has_ec {
        (Some(w[0] as u32), &w[1..6])
    } else {
        (None, &w[0..5])
    };
    Some(HardwareFrame {
        error_code,
        rip: rest[0],
        cs: rest[1],
        rflags: rest[2],
        rsp: rest[3],
        ss: rest[4],
    })
}

/// Write the hypervisor's tables that map [`PV_HYPERCALL_VA`] to
/// [`PV_HYPERCALL_GPA`]; returns the L4 entry for [`HYPERCALL_L4_SLOT`].
fn write_hypervisor_tables(mem: &GuestMemoryMmap) -> Result<u64, PvSetupError> {
    let [l3, l2, l1] = HV_TABLE_GFNS;
    let zero = [0u8; xen_abi::PAGE_SIZE];
    for (table, next) in [
        (l3, (l2 << 12) | PTE_P_RW_U),
        (l2, (l1 << 12) | PTE_P_RW_U),
        (l1, PV_HYPERCALL_GPA | PTE_P_RW_U | PTE_NX),
    ] {
        mem.write_slice(&zero, GuestAddress(table << 12))
            .and_then(|()| mem.write_obj(next, GuestAddress(table << 12)))
            .map_err(|_| PvSetupError::HypervisorTables(table))?;
    }
    // L2[1]: every vCPU's GDT area (supervisor-only), each with the zero
    // page where the guest's frames go and the reserved page at 0xe000.
    let gdt_l1 = special_gfn(GDT_L1_SPECIAL);
    mem.write_obj(
        (gdt_l1 << 12) | 0x3 | PTE_ACCESSED,
        GuestAddress((l2 << 12) + 8),
    )
    .map_err(|_| PvSetupError::HypervisorTables(l2))?;
    mem.write_slice(&zero, GuestAddress(special_gfn(ZERO_SPECIAL) << 12))
        .map_err(|_| PvSetupError::HypervisorTables(special_gfn(ZERO_SPECIAL)))?;
    // L2[2]: every vCPU's LDT area, empty until MMUEXT_SET_LDT.
    let ldt_l1 = special_gfn(LDT_L1_SPECIAL);
    mem.write_obj(
        (ldt_l1 << 12) | 0x3 | PTE_ACCESSED,
        GuestAddress((l2 << 12) + 16),
    )
    .and_then(|()| mem.write_slice(&zero, GuestAddress(ldt_l1 << 12)))
    .map_err(|_| PvSetupError::HypervisorTables(ldt_l1))?;
    for vcpu in 0..MAX_PV_VCPUS {
        for page in 0..GDT_AREA_PAGES {
            let entry = gdt_area_entry(page, None);
            let at = u64::from(vcpu) * GDT_AREA_PAGES + page;
            mem.write_obj(entry, GuestAddress((gdt_l1 << 12) + at * 8))
                .map_err(|_| PvSetupError::HypervisorTables(gdt_l1))?;
        }
    }
    Ok((l3 << 12) | PTE_P_RW_U | PTE_ACCESSED)
}

/// `mmu_update`'s count bit a preempted batch's continuation sets; a
/// guest has no reason to set it, so it is stripped (kxen-pv README).
const MMU_UPDATE_PREEMPTED: u64 = xen_abi::pv::MMU_UPDATE_PREEMPTED as u64;

/// What a PV domain's vCPUs share beyond the Xen layer: its PV MMU.
pub struct PvMachine {
    pub mmu: Mutex<PvMmu>,
    /// Each vCPU's PV state: mode, callbacks, kernel stack, segment
    /// bases, virtual IDT.
    pub vcpus: Mutex<Vec<PvVcpu>>,
    /// The domain (set once it is built), for where vcpu_infos are.
    domain: std::sync::OnceLock<Arc<kxen_xen::Domain>>,
    /// kxen-vmm wrote a page table (or its own mappings) since KVM's
    /// shadow MMU was last flushed.
    shadow_stale: AtomicBool,
    /// Per vCPU: whether it was initialised (vCPU 0 by the builder), and
    /// where VCPUOP_initialise said it starts, taken by its thread when
    /// VCPUOP_up brings it online.
    starts: Mutex<Vec<(bool, Option<PvStart>)>>,
    /// Where vCPU 0's vcpu_info lives (shared_info's start).
    shared_info_gpa: u64,
}

/// Why the PV machine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PvSetupError {
    #[error("PV MMU: {0}")]
    Config(#[from] kxen_pv::PvMmuConfigError),
    #[error("pinning the builder's L4 (frame {mfn:#x}): {error}")]
    PinBootTables { mfn: u64, error: kxen_pv::MmuError },
    #[error("loading the builder's L4 on vCPU 0: {0}")]
    LoadBootTables(kxen_pv::MmuError),
    #[error("the hypervisor's page table {0:#x} is not in guest memory")]
    HypervisorTables(u64),
    #[error("the hypercall page (frame {0:#x}) is not guest memory")]
    HypercallPage(u64),
    #[error("{0} vCPUs: a PV domain has 1 to {MAX_PV_VCPUS}")]
    VcpuCount(u32),
}

/// The domain's frames as the PV MMU reads and writes them, and the
/// calling vCPU's view of guest-virtual memory for hypercall arguments.
struct GuestFrames<'a> {
    mem: &'a GuestMemoryMmap,
    /// None while building: no vCPU has run, nothing is read through one.
    guest: Option<&'a GuestAccess<'a>>,
    /// Set by every write to a frame: KVM's shadow page tables may now
    /// disagree with the guest's (see [`PvMachine::take_shadow_stale`]).
    stale: &'a AtomicBool,
}

impl GuestFrames<'_> {
    fn entry_addr(mfn: Mfn, index: usize) -> GuestAddress {
        GuestAddress((mfn << 12) + (index as u64) * 8)
    }

    /// Make KVM drop every shadow entry that maps frame `mfn` (an L1
    /// entry that mapped it changed): `MADV_DONTNEED` on kxen-vmm's own
    /// shared mapping of the frame runs KVM's MMU notifier for just that
    /// page, where the alternative is zapping the whole shadow MMU. The
    /// frame's contents stay in the memfd; kxen-vmm's next access maps
    /// them again. False when `mfn` is not in a memfd-backed region (the
    /// M2P block is private anonymous memory, which this would zero), or
    /// the call failed: the caller falls back to the whole flush.
    fn forget_mappings_of(&self, mfn: Mfn) -> bool {
        let Some(gpa) = mfn.checked_mul(xen_abi::PAGE_SIZE as u64) else {
            return false;
        };
        let Some((region, offset)) =
            vm_memory::GuestMemoryBackend::to_region_addr(self.mem, GuestAddress(gpa))
        else {
            return false;
        };
        if vm_memory::GuestMemoryRegion::file_offset(region).is_none() {
            return false;
        }
        let Ok(host) = vm_memory::GuestMemoryRegion::get_host_address(region, offset) else {
            return false;
        };
        // SAFETY: `host` is the page-aligned start of a page inside a
        // file-backed guest region, a MAP_SHARED view of the memfd
        // (memory.rs `region`); MADV_DONTNEED on a shared file mapping only
        // drops this process's page-table entries for it, so no data is
        // lost and no other mapping changes.
        let ret = unsafe {
            nix::libc::madvise(host.cast(), xen_abi::PAGE_SIZE, nix::libc::MADV_DONTNEED)
        };
        ret == 0
    }
}

impl MmuMemory for GuestFrames<'_> {
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
        // kxen-pv passes only RAM frames below the domain's count, all
        // backed; an unreadable one reads as not present.
        self.mem
            .read_obj::<u64>(Self::entry_addr(mfn, index))
            .unwrap_or(0)
    }

    fn read_table(&self, mfn: Mfn) -> [u64; kxen_pv::pte::ENTRIES] {
        // One lookup of the frame, then an atomic 8-byte load per entry
        // (as read_entry's): validating a tree reads every entry of every
        // table, and a restore validates them all.
        let table = mfn.checked_mul(xen_abi::PAGE_SIZE as u64).and_then(|gpa| {
            kxen_xen::guest::atomic_u64_slice(self.mem, gpa, kxen_pv::pte::ENTRIES)
        });
        match table {
            Some(words) => std::array::from_fn(|index| words[index].load(Ordering::Relaxed)),
            None => std::array::from_fn(|index| self.read_entry(mfn, index)),
        }
    }

    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.stale.store(true, Ordering::SeqCst);
        if self
            .mem
            .write_obj(value, Self::entry_addr(mfn, index))
            .is_err()
        {
            debug!(mfn, index, "PV MMU entry write outside guest memory");
        }
    }

    fn write_leaf_entry(&mut self, mfn: Mfn, index: usize, value: u64, old: u64) {
        if self
            .mem
            .write_obj(value, Self::entry_addr(mfn, index))
            .is_err()
        {
            debug!(mfn, index, "PV MMU entry write outside guest memory");
            return;
        }
        if kxen_pv::pte::is_present(old) && !self.forget_mappings_of(kxen_pv::pte::entry_mfn(old)) {
            self.stale.store(true, Ordering::SeqCst);
        }
    }

    fn clear_frame(&mut self, mfn: Mfn) {
        self.stale.store(true, Ordering::SeqCst);
        let zero = [0u8; xen_abi::PAGE_SIZE];
        let _ = self.mem.write_slice(&zero, GuestAddress(mfn << 12));
    }

    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        self.stale.store(true, Ordering::SeqCst);
        let mut page = [0u8; xen_abi::PAGE_SIZE];
        if self
            .mem
            .read_slice(&mut page, GuestAddress(src << 12))
            .is_ok()
        {
            let _ = self.mem.write_slice(&page, GuestAddress(dst << 12));
        }
    }

    fn read_guest_u64(&mut self, va: u64) -> Option<u64> {
        let mut word = [0u8; 8];
        self.guest?.read(va, &mut word).ok()?;
        Some(u64::from_le_bytes(word))
    }

    fn m2p_updated(&mut self, mfn: Mfn, pfn: u64) {
        crate::pv_m2p::update_entry(self.mem, mfn, pfn);
    }
}

impl PvMachine {
    /// The PV MMU of a domain of `nr_frames` frames, with the builder's
    /// L4 pinned and loaded as vCPU 0's kernel base pointer (what Xen's
    /// domain builder leaves: the bootstrap tables pinned, the L4 in CR3).
    pub fn new(
        mem: &GuestMemoryMmap,
        domid: u16,
        nr_frames: u64,
        nr_vcpus: u32,
        boot: &PvBootState,
        shared_info_gpa: u64,
    ) -> Result<PvMachine, PvSetupError> {
        if nr_vcpus == 0 || nr_vcpus > MAX_PV_VCPUS {
            return Err(PvSetupError::VcpuCount(nr_vcpus));
        }
        let mut config = PvMmuConfig::new(domid, nr_frames, nr_vcpus as usize);
        config.hypervisor_l4_slots[HYPERCALL_L4_SLOT - 256] = write_hypervisor_tables(mem)?;
        crate::pv_m2p::install(mem, &mut config)?;
        // The guest maps shared_info itself (update_va_mapping of
        // start_info.shared_info), as on Xen.
        config.shared_frames.push(shared_info_gpa >> 12);
        // The grant table's frames and a v2 table's status frames, at the
        // GFNs GNTTABOP_setup_table / get_status_frames return: a PV guest
        // maps them with update_va_mapping, as it would Xen's frames. Until
        // the table has a frame there, the mapping reaches no memory (an
        // access exits and is dropped, as to any unclaimed address).
        let grant_window = 2 * u64::from(kxen_xen::grant::MAX_GRANT_FRAMES);
        config
            .shared_frames
            .extend((0..grant_window).map(|i| crate::memory::DEFAULT_GRANT_GFN + i));
        write_trap_pages(mem)?;
        let mut mmu = PvMmu::new(config)?;
        let building_stale = AtomicBool::new(true);
        let mut frames = GuestFrames {
            mem,
            guest: None,
            stale: &building_stale,
        };
        let l4 = boot.cr3 >> 12;
        let pin = MmuextOp {
            cmd: MMUEXT_PIN_L4_TABLE,
            arg1: l4,
            ..Default::default()
        };
        mmu.mmuext_one(&mut frames, 0, pin)
            .result
            .map_err(|error| PvSetupError::PinBootTables { mfn: l4, error })?;
        let load = MmuextOp {
            cmd: MMUEXT_NEW_BASEPTR,
            arg1: l4,
            ..Default::default()
        };
        mmu.mmuext_one(&mut frames, 0, load)
            .result
            .map_err(PvSetupError::LoadBootTables)?;
        Ok(PvMachine {
            mmu: Mutex::new(mmu),
            vcpus: Mutex::new(vec![PvVcpu::default(); nr_vcpus as usize]),
            shadow_stale: AtomicBool::new(true),
            domain: std::sync::OnceLock::new(),
            starts: Mutex::new((0..nr_vcpus).map(|vcpu| (vcpu == 0, None)).collect()),
            shared_info_gpa,
        })
    }

    /// Serve `call` if it is one of the PV MMU hypercalls: the return
    /// value and the effects the vCPU must apply. `None` for every other
    /// hypercall (kxen-xen's dispatch serves those).
    pub fn hypercall(
        &self,
        vcpu: u32,
        mem: &GuestMemoryMmap,
        guest: &GuestAccess<'_>,
        call: &Call,
    ) -> Option<(i64, Effects)> {
        let [a1, a2, a3, a4, _] = call.args;
        let mut frames = GuestFrames {
            mem,
            guest: Some(guest),
            stale: &self.shadow_stale,
        };
        // A poisoned lock means a panic while holding it, which already
        // ends the domain; serve on rather than panic again.
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let vcpu = vcpu as usize;
        let (ret, effects) = match call.nr {
            pv_nr::MMU_UPDATE | pv_nr::MMUEXT_OP => {
                let count = (a2 & !MMU_UPDATE_PREEMPTED) as u32;
                let foreigndom = a4 as u32;
                let outcome = if call.nr == pv_nr::MMU_UPDATE {
                    mmu.mmu_update(&mut frames, vcpu, a1, count, foreigndom)
                } else {
                    mmu.mmuext_op(&mut frames, vcpu, a1, count, foreigndom)
                };
                let mut ret = outcome.return_value();
                if let (Some(done), true) = (outcome.done, a3 != 0) {
                    if guest.write(a3, &done.to_le_bytes()).is_err() && ret == 0 {
                        ret = -EFAULT;
                    }
                }
                (ret, outcome.effects)
            }
            pv_nr::UPDATE_VA_MAPPING => {
                let outcome = mmu.update_va_mapping(&mut frames, vcpu, a1, a2, a3);
                (outcome.return_value(), outcome.effects)
            }
            pv_nr::UPDATE_VA_MAPPING_OTHERDOMAIN => {
                // kxen-vmm sees no other domain: every foreign id is
                // answered as one that does not exist (-ESRCH).
                let outcome = mmu.update_va_mapping_otherdomain(
                    &mut frames,
                    vcpu,
                    a1,
                    a2,
                    a3,
                    a4 as u16,
                    false,
                );
                (outcome.return_value(), outcome.effects)
            }
            xen_abi::hypercall::VCPU_OP if a1 == xen_abi::vcpu::VCPUOP_INITIALISE => {
                drop(mmu);
                return Some(self.vcpu_initialise(mem, guest, a2, a3));
            }
            // HVM operations are for HVM domains (Xen's do_hvm_op refuses
            // a PV caller); the event vector especially is kxen-vmm's.
            xen_abi::hypercall::HVM_OP => {
                return Some((-xen_abi::errno::EINVAL, Effects::default()))
            }
            pv_nr::SET_GDT => {
                // Up to 14 frame numbers; the count is `entries`' pages.
                let entries = a2;
                let wanted = entries
                    .div_ceil(512)
                    .min(kxen_pv::descriptors::MAX_GDT_FRAMES as u64);
                let list: Option<Vec<u64>> = (0..wanted)
                    .map(|i| frames.read_guest_u64(a1.wrapping_add(8 * i)))
                    .collect();
                let mut vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
                let Some(state) = vcpus.get_mut(vcpu) else {
                    return Some((-xen_abi::errno::EINVAL, Effects::default()));
                };
                let current = state.gdt_frames.clone();
                match kxen_pv::descriptors::set_gdt(
                    &mut mmu,
                    &mut frames,
                    &current,
                    list.as_deref(),
                    entries,
                ) {
                    Ok(new) => {
                        state.gdt_frames = new;
                        state.gdt_entries = entries;
                        let effects = Effects {
                            gdt_changed: true,
                            ..Effects::default()
                        };
                        (0, effects)
                    }
                    Err(errno) => (errno, Effects::default()),
                }
            }
            pv_nr::UPDATE_DESCRIPTOR => {
                let ret =
                    match kxen_pv::descriptors::update_descriptor(&mut mmu, &mut frames, a1, a2) {
                        Ok(()) => 0,
                        Err(errno) => errno,
                    };
                (ret, Effects::default())
            }
            xen_abi::hypercall::PHYSDEV_OP if a1 == xen_abi::hypercall::PHYSDEVOP_SET_IOPL => {
                drop(mmu);
                // struct physdev_set_iopl { u32 iopl; }: four bytes, which
                // may end a page.
                let mut iopl = [0u8; 4];
                let ret = match guest.read(a2, &mut iopl) {
                    Ok(()) => self
                        .with_vcpu(vcpu as u32, |v| v.set_iopl(u32::from_le_bytes(iopl)))
                        .unwrap_or(-xen_abi::errno::EINVAL),
                    Err(_) => -EFAULT,
                };
                return Some((ret, Effects::default()));
            }
            pv_nr::FPU_TASKSWITCH => {
                drop(mmu);
                let ret = self
                    .with_vcpu(vcpu as u32, |v| {
                        v.fpu_ts = a1 != 0;
                        0
                    })
                    .unwrap_or(-xen_abi::errno::EINVAL);
                return Some((ret, Effects::default()));
            }
            xen_abi::hypercall::SET_DEBUGREG => {
                drop(mmu);
                let ret = self
                    .with_vcpu(vcpu as u32, |v| v.set_debugreg(a1, a2))
                    .unwrap_or(-xen_abi::errno::EINVAL);
                return Some((ret, Effects::default()));
            }
            xen_abi::hypercall::GET_DEBUGREG => {
                drop(mmu);
                let ret = self
                    .with_vcpu(vcpu as u32, |v| v.get_debugreg(a1))
                    .unwrap_or(-xen_abi::errno::EINVAL);
                return Some((ret, Effects::default()));
            }
            pv_nr::SET_TRAP_TABLE
            | pv_nr::STACK_SWITCH
            | pv_nr::SET_CALLBACKS
            | pv_nr::CALLBACK_OP
            | pv_nr::SET_SEGMENT_BASE => {
                drop(mmu);
                return Some(self.vcpu_hypercall(vcpu, guest, call));
            }
            _ => return None,
        };
        debug!(vcpu, nr = call.nr, ?call.args, ret, ?effects, "PV MMU hypercall");
        Some((ret, effects))
    }

    /// The domain, once built: where each vCPU's vcpu_info is.
    pub fn attach_domain(&self, domain: Arc<kxen_xen::Domain>) {
        let _ = self.domain.set(domain);
    }

    /// vCPU `vcpu`'s vcpu_info: where the guest registered it
    /// (VCPUOP_register_vcpu_info: Linux moves it into its per-CPU
    /// area), else its slot in shared_info (the legacy array holds 32).
    fn vcpu_info_base(&self, vcpu: u32) -> Option<u64> {
        match self.domain.get() {
            Some(domain) => domain.vcpu_info_address(vcpu),
            None => (vcpu < 32).then(|| self.shared_info_gpa + 64 * u64::from(vcpu)),
        }
    }

    /// vCPU `vcpu`'s event upcall mask byte.
    fn upcall_mask_gpa(&self, vcpu: u32) -> Option<GuestAddress> {
        self.vcpu_info_base(vcpu).map(|base| GuestAddress(base + 1))
    }

    pub fn upcall_mask(&self, mem: &GuestMemoryMmap, vcpu: u32) -> u8 {
        self.upcall_mask_gpa(vcpu)
            .and_then(|gpa| mem.read_obj(gpa).ok())
            .unwrap_or(1)
    }

    pub fn set_upcall_mask(&self, mem: &GuestMemoryMmap, vcpu: u32, mask: u8) {
        if let Some(gpa) = self.upcall_mask_gpa(vcpu) {
            let _ = mem.write_obj(mask, gpa);
        }
    }

    /// The hypercalls that act on the calling vCPU's own PV state:
    /// set_trap_table, stack_switch, set_callbacks, callback_op,
    /// set_segment_base. A segment base that is live now comes back as
    /// an effect for the executor to load.
    fn vcpu_hypercall(&self, vcpu: usize, guest: &GuestAccess<'_>, call: &Call) -> (i64, Effects) {
        let [a1, a2, a3, ..] = call.args;
        let mut vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = vcpus.get_mut(vcpu) else {
            return (-xen_abi::errno::EINVAL, Effects::default());
        };
        let read_u64 = |va: u64| {
            let mut word = [0u8; 8];
            guest.read(va, &mut word).ok()?;
            Some(u64::from_le_bytes(word))
        };
        let mut effects = Effects::default();
        let ret = match call.nr {
            pv_nr::SET_TRAP_TABLE => match state.traps.set_trap_table(a1, read_u64) {
                Ok(()) => 0,
                Err(e) => {
                    debug!(vcpu, "set_trap_table refused: {e}");
                    -e.errno().unwrap_or(xen_abi::errno::EINVAL)
                }
            },
            pv_nr::STACK_SWITCH => state.stack_switch(a1, a2),
            pv_nr::SET_CALLBACKS => state.set_callbacks(a1, a2, a3),
            pv_nr::CALLBACK_OP => match a1 {
                xen_abi::pv::CALLBACKOP_REGISTER => {
                    match (read_u64(a2), read_u64(a2.wrapping_add(8))) {
                        (Some(head), Some(address)) => {
                            state.register_callback(head as u16, (head >> 16) as u16, address)
                        }
                        _ => -EFAULT,
                    }
                }
                xen_abi::pv::CALLBACKOP_UNREGISTER => {
                    let mut head = [0u8; 4];
                    match guest.read(a2, &mut head) {
                        Ok(()) => state.unregister_callback(u16::from_le_bytes([head[0], head[1]])),
                        Err(_) => -EFAULT,
                    }
                }
                _ => -xen_abi::errno::ENOSYS,
            },
            pv_nr::SET_SEGMENT_BASE => match state.set_segment_base(a1, a2) {
                Ok(load) => {
                    effects.segment_load = Some(load);
                    0
                }
                Err(errno) => errno,
            },
            _ => -xen_abi::errno::ENOSYS,
        };
        debug!(vcpu, nr = call.nr, ?call.args, ret, "PV vCPU hypercall");
        (ret, effects)
    }

    /// `VCPUOP_initialise(vcpu, ctx)` for a 64-bit PV domain: the
    /// `vcpu_guest_context` at `ctx` (kxen-pv's `context`) becomes the
    /// vCPU's PV state, its L4s take their base-pointer references, and
    /// its start registers wait for VCPUOP_up. Xen's errnos: -ENOENT for
    /// a vCPU the domain lacks, -EFAULT for an unreadable context,
    /// -EINVAL for one Xen refuses (or an L4 the PV MMU refuses), -EEXIST
    /// if the vCPU was initialised before.
    fn vcpu_initialise(
        &self,
        mem: &GuestMemoryMmap,
        guest: &GuestAccess<'_>,
        target: u64,
        ctx: u64,
    ) -> (i64, Effects) {
        use xen_abi::errno::{EEXIST, EINVAL, ENOENT};
        let none = Effects::default;
        let nr_vcpus = self.starts.lock().unwrap_or_else(|e| e.into_inner()).len();
        if target >= nr_vcpus as u64 {
            return (-ENOENT, none());
        }
        let target = target as usize;
        let mut bytes = vec![0u8; kxen_pv::context::CONTEXT_SIZE];
        if guest.read(ctx, &mut bytes).is_err() {
            return (-EFAULT, none());
        }
        let context = match kxen_pv::context::GuestContext::parse(&bytes) {
            Ok(context) => context,
            Err(errno) => return (errno, none()),
        };
        if self.starts.lock().unwrap_or_else(|e| e.into_inner())[target].0 {
            return (-EEXIST, none());
        }
        // The L4s: base-pointer references on the target vCPU, as a
        // NEW_BASEPTR / NEW_USER_BASEPTR would take.
        let mut frames = GuestFrames {
            mem,
            guest: Some(guest),
            stale: &self.shadow_stale,
        };
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let mut effects = Effects::default();
        for (cmd, mfn) in [
            (MMUEXT_NEW_BASEPTR, context.kernel_l4),
            (xen_abi::pv::MMUEXT_NEW_USER_BASEPTR, context.user_l4),
        ] {
            if cmd != MMUEXT_NEW_BASEPTR && mfn == 0 {
                continue;
            }
            let op = MmuextOp {
                cmd,
                arg1: mfn,
                ..Default::default()
            };
            let outcome = mmu.mmuext_one(&mut frames, target, op);
            if let Err(e) = outcome.result {
                debug!(target, mfn, "VCPUOP_initialise: L4 refused: {e}");
                return (-EINVAL, effects);
            }
            if let Some(flush) = outcome.effects.flush {
                effects.add_flush(flush.vcpus, flush.scope);
            }
        }
        drop(mmu);
        let start = PvStart {
            cr3: context.kernel_l4 << 12,
            gprs: context.gprs,
            rip: context.rip,
            rsp: context.rsp,
            rflags: context.rflags,
            fs_base: context.state.fs_base,
            gs_base: context.state.gs_base_kernel,
        };
        self.with_vcpu(target as u32, |v| *v = context.state);
        self.starts.lock().unwrap_or_else(|e| e.into_inner())[target] = (true, Some(start));
        // Events stay masked until the new vCPU's kernel enables them.
        self.set_upcall_mask(mem, target as u32, 1);
        info!(vcpu = target, rip = context.rip, "PV vCPU initialised");
        (0, effects)
    }

    /// A kernel's direct write to the page-table entry at `gpa` (Xen's
    /// writable page tables): `decide` gets the entry's current value and
    /// says what the instruction writes; the PV MMU applies it as an
    /// `mmu_update`, under its lock (so a `cmpxchg` is atomic against
    /// every other update). `None`: not an L1 table, not emulated, or
    /// refused; the caller bounces the #PF.
    pub fn page_table_write(
        &self,
        mem: &GuestMemoryMmap,
        vcpu: u32,
        gpa: u64,
        decide: impl FnOnce(u64) -> Result<kxen_pv::ptwr::PtWrite, kxen_pv::ptwr::PtwrError>,
    ) -> Option<(kxen_pv::ptwr::PtWrite, Effects)> {
        let mfn = gpa >> 12;
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let is_l1 = mmu.frame(mfn).and_then(|f| f.held_type())
            == Some(kxen_pv::FrameType::PageTable(kxen_pv::PtLevel::L1));
        if !is_l1 {
            return None;
        }
        let old = mem.read_obj::<u64>(GuestAddress(gpa & !7)).ok()?;
        let write = match decide(old) {
            Ok(write) => write,
            Err(e) => {
                debug!(vcpu, gpa, "page-table write not emulated: {e}");
                return None;
            }
        };
        let Some(new) = write.new else {
            return Some((write, Effects::default()));
        };
        let mut frames = GuestFrames {
            mem,
            guest: None,
            stale: &self.shadow_stale,
        };
        let req = xen_abi::pv::MmuUpdate {
            ptr: (gpa & !7) | xen_abi::pv::MMU_NORMAL_PT_UPDATE,
            val: new,
        };
        let outcome = mmu.mmu_update_one(&mut frames, req);
        match outcome.result {
            Ok(()) => Some((write, outcome.effects)),
            Err(e) => {
                debug!(vcpu, gpa, new, "page-table write refused: {e}");
                None
            }
        }
    }

    /// The start state VCPUOP_initialise left for `vcpu`, taken once.
    pub fn take_start(&self, vcpu: u32) -> Option<PvStart> {
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(vcpu as usize)?
            .1
            .take()
    }

    /// MMUEXT_SET_LDT took effect on `vcpu`: hold the descriptor pages
    /// of its new LDT (found through `translate`, the vCPU's kernel page
    /// tables) and release the old ones. Xen maps LDT pages lazily on the
    /// first fault; kxen takes them at once, and a page that is not
    /// mapped or holds a descriptor Xen refuses stays out of the LDT
    /// (its selectors fault, as they would on Xen). Returns the LDT base
    /// and byte limit to load (None: no LDT) and the pages to map.
    pub fn load_ldt(
        &self,
        mem: &GuestMemoryMmap,
        vcpu: u32,
        translate: impl Fn(u64) -> Option<u64>,
    ) -> (Option<u32>, Vec<Option<u64>>) {
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let (base, entries) = mmu
            .vcpu(vcpu as usize)
            .map_or((0, 0), |state| (state.ldt_base, state.ldt_entries));
        let mut frames = GuestFrames {
            mem,
            guest: None,
            stale: &self.shadow_stale,
        };
        let mut vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = vcpus.get_mut(vcpu as usize) else {
            return (None, Vec::new());
        };
        for mfn in std::mem::take(&mut state.ldt_frames).into_iter().flatten() {
            mmu.put_segdesc(&mut frames, mfn);
        }
        if entries == 0 {
            return (None, Vec::new());
        }
        let bytes = u64::from(entries) * 8;
        let pages = bytes.div_ceil(xen_abi::PAGE_SIZE as u64);
        let taken: Vec<Option<u64>> = (0..pages)
            .map(|page| {
                let gpa = translate(base + page * xen_abi::PAGE_SIZE as u64)?;
                let mfn = gpa >> 12;
                kxen_pv::descriptors::get_descriptor_frame(&mut mmu, &mut frames, mfn)
                    .ok()
                    .map(|()| mfn)
            })
            .collect();
        state.ldt_frames = taken.clone();
        ((bytes - 1).try_into().ok(), taken)
    }

    /// Whether KVM's shadow MMU must be flushed before the guest runs on:
    /// kxen-vmm wrote a page table, or its own GDT/LDT mappings, since
    /// the last flush (clears the flag). A guest cannot write its tables
    /// itself (they are never writable to it), and KVM keeps its shadow
    /// in step with every write the guest does make; so a TLB flush or
    /// base load with nothing written since the last flush has nothing
    /// to drop, and is skipped.
    pub fn take_shadow_stale(&self) -> bool {
        self.shadow_stale.swap(false, Ordering::SeqCst)
    }

    /// kxen-vmm changed a mapping KVM may have shadowed.
    pub fn mark_shadow_stale(&self) {
        self.shadow_stale.store(true, Ordering::SeqCst);
    }

    /// Run `f` on vCPU `vcpu`'s PV state (`None` past the domain's).
    pub fn with_vcpu<R>(&self, vcpu: u32, f: impl FnOnce(&mut PvVcpu) -> R) -> Option<R> {
        let mut vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        vcpus.get_mut(vcpu as usize).map(f)
    }

    /// Whether `vcpu` has a user L4 (an `iret` to user mode needs one).
    pub fn has_user_tables(&self, vcpu: u32) -> bool {
        let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        mmu.vcpu(vcpu as usize)
            .is_some_and(|state| state.user_base.is_some())
    }

    /// The L4 vCPU `vcpu` runs on in kernel mode, as a CR3 value.
    pub fn kernel_cr3(&self, vcpu: u32) -> Option<u64> {
        let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        mmu.vcpu(vcpu as usize)?.kernel_base.map(|mfn| mfn << 12)
    }

    /// The L4 of `vcpu`'s current mode (kernel or user), as a CR3 value.
    pub fn mode_cr3(&self, vcpu: u32, kernel_mode: bool) -> Option<u64> {
        let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let state = mmu.vcpu(vcpu as usize)?;
        let base = if kernel_mode {
            state.kernel_base
        } else {
            state.user_base
        };
        base.map(|mfn| mfn << 12)
    }

    /// An event is due on `vcpu`: `evtchn_upcall_pending` set and the
    /// upcall mask clear. One vcpu_info lookup: this runs on every PV
    /// exit.
    pub fn event_due(&self, mem: &GuestMemoryMmap, vcpu: u32) -> bool {
        let Some(base) = self.vcpu_info_base(vcpu) else {
            return false;
        };
        let byte = |offset: u64| mem.read_obj::<u8>(GuestAddress(base + offset)).ok();
        byte(0).is_some_and(|pending| pending != 0) && byte(1) == Some(0)
    }

    /// Publish a page fault's address in vcpu_info's `arch.cr2`, where a
    /// PV kernel reads it (Xen writes it there before the bounce).
    pub fn set_cr2(&self, mem: &GuestMemoryMmap, vcpu: u32, cr2: u64) {
        if let Some(base) = self.vcpu_info_base(vcpu) {
            let _ = mem.write_obj(cr2, GuestAddress(base + VCPU_INFO_CR2));
        }
    }
}

/// Offset of `arch.cr2` in a 64-bit vcpu_info (after the pending and
/// mask bytes and evtchn_pending_sel).
const VCPU_INFO_CR2: u64 = 16;

/// Where a PV vCPU starts: vCPU 0 from the domain builder, the others
/// from VCPUOP_initialise. The selectors are Xen's flat kernel ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvStart {
    pub cr3: u64,
    /// r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx,
    /// rsi, rdi (`cpu_user_regs` order).
    pub gprs: [u64; 15],
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

impl PvStart {
    /// The general registers as KVM takes them (IF set: see
    /// `boot_cpu::setup_pv_vcpu`).
    pub fn regs(&self) -> kvm_bindings::kvm_regs {
        let g = &self.gprs;
        kvm_bindings::kvm_regs {
            r15: g[0],
            r14: g[1],
            r13: g[2],
            r12: g[3],
            rbp: g[4],
            rbx: g[5],
            r11: g[6],
            r10: g[7],
            r9: g[8],
            r8: g[9],
            rax: g[10],
            rcx: g[11],
            rdx: g[12],
            rsi: g[13],
            rdi: g[14],
            rip: self.rip,
            rsp: self.rsp,
            rflags: self.rflags | 0x202,
        }
    }
}

/// Fill the HYPERCALL_PAGE frame with kxen's 32-byte PV stubs
/// ([`pv_hypercall_stub`]: the number stored to the transport page).
pub fn fill_hypercall_page(mem: &GuestMemoryMmap, mfn: u64) -> Result<(), PvSetupError> {
    let mut page = vec![0xccu8; xen_abi::PAGE_SIZE];
    for nr in 0..STUB_COUNT {
        let stub = pv_hypercall_stub(nr as u32);
        page[nr * stub.len()..(nr + 1) * stub.len()].copy_from_slice(&stub);
    }
    let gpa = mfn
        .checked_mul(xen_abi::PAGE_SIZE as u64)
        .ok_or(PvSetupError::HypercallPage(mfn))?;
    mem.write_slice(&page, GuestAddress(gpa))
        .map_err(|_| PvSetupError::HypercallPage(mfn))?;
    info!(mfn, "PV hypercall page");
    Ok(())
}

/// The PV kernel's CS and SS, as KVM_SET_SREGS takes them: Xen's flat
/// 64-bit kernel selectors at DPL3.
pub fn pv_kernel_segments() -> (kvm_segment, kvm_segment) {
    (
        pv_segment(FLAT_KERNEL_CS64, 0xb, true),
        pv_segment(FLAT_KERNEL_SS64, 0x3, false),
    )
}

pub(crate) fn pv_segment(selector: u16, kind: u8, long: bool) -> kvm_segment {
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
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// What the privileged-instruction emulation (kxen-vmm's
/// `vcpu::pv_emulate`, kxen-pv's `emulate`) asks of the PV machine.
impl PvMachine {
    /// `mov %reg, %cr3` from the kernel: MMUEXT_NEW_BASEPTR to `mfn` on
    /// `vcpu`, with the effects the vCPU must apply (the new CR3, the
    /// flush a base load implies).
    pub fn load_kernel_base(
        &self,
        mem: &GuestMemoryMmap,
        vcpu: u32,
        mfn: u64,
    ) -> Result<Effects, kxen_pv::MmuError> {
        let mut frames = GuestFrames {
            mem,
            guest: None,
            stale: &self.shadow_stale,
        };
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let op = MmuextOp {
            cmd: MMUEXT_NEW_BASEPTR,
            arg1: mfn,
            ..Default::default()
        };
        let outcome = mmu.mmuext_one(&mut frames, vcpu as usize, op);
        outcome.result.map(|()| outcome.effects)
    }

    /// The domain's highest frame (CPUID 0x40000005's machine address
    /// width).
    pub fn max_frame(&self) -> u64 {
        let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        mmu.config().nr_frames.saturating_sub(1)
    }

    /// Xen's hypercall page MSR for a PV domain: the stubs go into `mfn`
    /// if it can be a writable page (the domain's, not reserved, not held
    /// as a page table or descriptor table).
    pub fn install_hypercall_page_msr(&self, mem: &GuestMemoryMmap, mfn: u64) -> bool {
        let writable = {
            let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
            mmu.frame(mfn).is_some_and(|info| {
                !info.reserved
                    && matches!(info.held_type(), None | Some(kxen_pv::FrameType::Writable))
            })
        };
        writable && fill_hypercall_page(mem, mfn).is_ok()
    }
}

/// Why a saved PV domain's state could not be taken over (issue 17).
#[derive(Debug, thiserror::Error)]
pub enum PvRestoreError {
    #[error("M2P entry of frame {mfn:#x}: {error}")]
    M2p { mfn: u64, error: kxen_pv::MmuError },
    #[error("pinning frame {mfn:#x} as an {level:?} table: {error}")]
    Pin {
        mfn: u64,
        level: kxen_pv::PtLevel,
        error: kxen_pv::MmuError,
    },
    #[error("vCPU {vcpu}: {what}: {error}")]
    Vcpu {
        vcpu: u32,
        what: &'static str,
        error: kxen_pv::MmuError,
    },
    #[error("vCPU {vcpu}: its GDT was refused (Xen error {errno})")]
    Gdt { vcpu: u32, errno: i64 },
    #[error("vCPU {0} is not one of this domain's")]
    NoSuchVcpu(u32),
    #[error("writing the hypervisor's pages: {0}")]
    HypervisorPages(PvSetupError),
}

/// The 4-level walk of `l4` for `va` in guest memory: the frame it maps,
/// if every level is present. Only frames the PV MMU validated are ever
/// an L4 here, so each entry is a checked one.
fn walk(mem: &GuestMemoryMmap, l4: u64, va: u64) -> Option<u64> {
    let mut table = l4;
    for shift in [39u32, 30, 21, 12] {
        let index = (va >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress((table << 12) + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        table = kxen_pv::pte::entry_mfn(entry);
    }
    Some(table << 12 | (va & 0xfff))
}

impl PvMachine {
    /// Where the domain's shared_info is (start_info's `shared_info`).
    pub fn shared_info_gpa(&self) -> u64 {
        self.shared_info_gpa
    }

    /// vCPU `vcpu`'s PV state, with `regs` its registers and `fpu` its
    /// FXSAVE image, for a save.
    pub fn saved_vcpu(
        &self,
        vcpu: u32,
        regs: kxen_pv::SavedRegs,
        fpu: &[u8; kxen_pv::saved::FPU_SIZE],
    ) -> Option<kxen_pv::SavedVcpu> {
        let (kernel_l4, user_l4, ldt_base, ldt_entries) = {
            let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
            let s = mmu.vcpu(vcpu as usize)?;
            (s.kernel_base, s.user_base, s.ldt_base, s.ldt_entries)
        };
        let state = self.with_vcpu(vcpu, |v| v.clone())?;
        Some(kxen_pv::SavedVcpu {
            state,
            regs,
            kernel_l4,
            user_l4,
            ldt_base,
            ldt_entries,
            fpu: Some(Box::new(*fpu)),
        })
    }

    /// The page tables a save's PAGE_DATA types name, and the guest's
    /// changes to the M2P.
    pub fn page_tables(&self) -> Vec<(Mfn, kxen_pv::PtLevel, bool)> {
        self.mmu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .page_tables()
    }

    pub fn m2p_changes(&self) -> Vec<(Mfn, u64)> {
        self.mmu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .m2p_changes()
    }

    /// Take over a saved PV domain's MMU and vCPU state, onto memory
    /// that already holds the image's pages. As libxc's restore does on
    /// Xen, the PV MMU starts empty and the saved tables are pinned
    /// again, which validates each tree from the top: an image's page
    /// tables are as untrusted as a guest's `mmu_update`. Then each
    /// vCPU's L4s are loaded, its GDT and LDT taken, and its PV state
    /// replaced. On an error the MMU is left as the builder made it. The
    /// hypervisor's own special pages are written again first.
    pub fn restore(
        &self,
        mem: &GuestMemoryMmap,
        pinned: &[(Mfn, kxen_pv::PtLevel)],
        m2p: &[(Mfn, u64)],
        vcpus: &[(u32, kxen_pv::SavedVcpu)],
    ) -> Result<(), PvRestoreError> {
        use kxen_pv::PtLevel;
        use xen_abi::pv::{
            MmuUpdate, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
            MMUEXT_PIN_L3_TABLE, MMUEXT_SET_LDT, MMU_MACHPHYS_UPDATE,
        };
        let started = std::time::Instant::now();
        // The special pages came from the image with the rest of memory;
        // the hypervisor's own there (its page tables, GDT, IDT, TSS and
        // entry stubs, which run at CPL0 in the guest) are written again,
        // as the builder wrote them, whatever the image held.
        write_hypervisor_tables(mem).map_err(PvRestoreError::HypervisorPages)?;
        write_trap_pages(mem).map_err(PvRestoreError::HypervisorPages)?;
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner()).emptied();
        let mut frames = GuestFrames {
            mem,
            guest: None,
            stale: &self.shadow_stale,
        };
        for &(mfn, pfn) in m2p {
            let update = MmuUpdate {
                ptr: (mfn << 12) | MMU_MACHPHYS_UPDATE,
                val: pfn,
            };
            mmu.mmu_update_one(&mut frames, update)
                .result
                .map_err(|error| PvRestoreError::M2p { mfn, error })?;
        }
        let mut order: Vec<_> = pinned.to_vec();
        // Lowest level first: each higher table then finds its children
        // already validated.
        order.sort_by_key(|&(mfn, level)| (level as u8, mfn));
        for (mfn, level) in order {
            let cmd = match level {
                PtLevel::L1 => MMUEXT_PIN_L1_TABLE,
                PtLevel::L2 => MMUEXT_PIN_L2_TABLE,
                PtLevel::L3 => MMUEXT_PIN_L3_TABLE,
                PtLevel::L4 => MMUEXT_PIN_L4_TABLE,
            };
            let op = MmuextOp {
                cmd,
                arg1: mfn,
                ..Default::default()
            };
            mmu.mmuext_one(&mut frames, 0, op)
                .result
                .map_err(|error| PvRestoreError::Pin { mfn, level, error })?;
        }
        let mut states = self.vcpus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (vcpu, saved) in vcpus {
            let vcpu = *vcpu;
            let index = vcpu as usize;
            if index >= states.len() {
                return Err(PvRestoreError::NoSuchVcpu(vcpu));
            }
            let mut ext = |what: &'static str, cmd: u32, arg1: u64, arg2: u64| {
                let op = MmuextOp {
                    cmd,
                    arg1,
                    arg2,
                    ..Default::default()
                };
                mmu.mmuext_one(&mut frames, index, op)
                    .result
                    .map_err(|error| PvRestoreError::Vcpu { vcpu, what, error })
            };
            let kernel_l4 = saved.kernel_l4.unwrap_or(0);
            ext("its kernel L4", MMUEXT_NEW_BASEPTR, kernel_l4, 0)?;
            if let Some(user) = saved.user_l4 {
                ext("its user L4", MMUEXT_NEW_USER_BASEPTR, user, 0)?;
            }
            if saved.ldt_entries > 0 {
                ext(
                    "its LDT",
                    MMUEXT_SET_LDT,
                    saved.ldt_base,
                    u64::from(saved.ldt_entries),
                )?;
            }
            let mut state = saved.state.clone();
            state.gdt_frames = kxen_pv::descriptors::set_gdt(
                &mut mmu,
                &mut frames,
                &[],
                Some(&saved.state.gdt_frames),
                saved.state.gdt_entries,
            )
            .map_err(|errno| PvRestoreError::Gdt { vcpu, errno })?;
            map_guest_gdt(mem, vcpu, &state.gdt_frames);
            state.ldt_frames = Vec::new();
            if saved.ldt_entries > 0 {
                let pages = (u64::from(saved.ldt_entries) * 8).div_ceil(xen_abi::PAGE_SIZE as u64);
                state.ldt_frames = (0..pages)
                    .map(|page| {
                        let va = saved.ldt_base + page * xen_abi::PAGE_SIZE as u64;
                        let mfn = walk(mem, kernel_l4, va)? >> 12;
                        kxen_pv::descriptors::get_descriptor_frame(&mut mmu, &mut frames, mfn)
                            .ok()
                            .map(|()| mfn)
                    })
                    .collect();
                map_guest_ldt(mem, vcpu, &state.ldt_frames);
            }
            states[index] = state;
        }
        *self.mmu.lock().unwrap_or_else(|e| e.into_inner()) = mmu;
        *self.vcpus.lock().unwrap_or_else(|e| e.into_inner()) = states;
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        for (vcpu, _) in vcpus {
            if let Some(start) = starts.get_mut(*vcpu as usize) {
                *start = (true, None);
            }
        }
        self.mark_shadow_stale();
        info!(
            pinned = pinned.len(),
            m2p_changes = m2p.len(),
            vcpus = vcpus.len(),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "PV MMU and vCPU state restored"
        );
        Ok(())
    }
}
