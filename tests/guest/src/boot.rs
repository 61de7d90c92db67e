//! The ring-0 kernel, all in assembly.
//!
//! On kxen's development hosts KVM is PVM: guest ring-0 code runs in KVM's
//! instruction emulator (slow, and missing some instructions), ring-3 code runs
//! natively. So ring 0 does only what must be privileged and stays SSE-free:
//!
//! * the PVH entry (32-bit protected mode, paging off, EBX = start_info GPA):
//!   zero .bss, identity-map the first 4 GiB with 2 MiB pages (U/S=1, RW=1 on
//!   every level, so ring 3 reaches everything), enable PAE + EFER.LME + paging
//!   (with CR0.WP, as every real kernel sets it: ring-0 writes, and so
//!   hypercalls' writes, honour read-only pages) and SSE, load a 64-bit GDT
//!   and far-jump to 64-bit code;
//! * GDT (kernel/user code+data, a TSS with RSP0 and IST1), IDT, LAPIC enable,
//!   hypercall page install (`wrmsr` to the MSR named by CPUID 0x40000002);
//! * gates: vector 3 (DPL 3, entered with `int3`) = hypercall gate when R9 is
//!   0, service gate otherwise; 0x82 and 0x81 (DPL 3) = the same two gates
//!   for `int n` (which PVM turns into #UD, so the checks use `int3`);
//!   0xf3 = event-channel upcall (EOI + count), 0xff = LAPIC spurious, other
//!   vectors >= 32 = stray interrupts (EOI + count), 0-31 = exceptions;
//! * then `iretq` to ring 3 (IF=1, IOPL=3) into [`crate::kmain`].
//!
//! Every gate is an interrupt gate (IF=0 while in ring 0, so nothing nests)
//! and runs on IST1. Ring 0 never enables interrupts.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicU8};

/// A 4 KiB page shared with the hypervisor or the ring-0 code; accessed only
/// through raw pointers.
#[repr(C, align(4096))]
pub struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: a Page is only ever accessed through raw pointers with volatile or
// atomic operations (or by the hypervisor); no references to its contents are
// handed out, so sharing the static between contexts is sound.
unsafe impl Sync for Page {}

impl Page {
    pub const fn new() -> Self {
        Page(UnsafeCell::new([0; 4096]))
    }
    pub fn ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }
    pub fn addr(&self) -> u64 {
        self.ptr() as u64
    }
    pub fn pfn(&self) -> u64 {
        self.addr() >> 12
    }
}

/// The hypercall page: the VMM fills 128 stubs of 32 bytes when its GPA is
/// written to the hypercall MSR.
pub static HYPERCALL_PAGE: Page = Page::new();
/// Set by ring 0 once the hypercall page holds stubs; the gate refuses
/// hypercalls (with -ENOSYS) until then.
pub static HCALL_READY: AtomicU8 = AtomicU8::new(0);
/// Event-channel upcalls taken (vector 0xf3).
pub static UPCALL_COUNT: AtomicU64 = AtomicU64::new(0);
/// Interrupts on vectors nobody asked for.
pub static STRAY_COUNT: AtomicU64 = AtomicU64::new(0);
/// Set once a ring-3 exception has been redirected to [`crate::user_exception`].
pub static EXC_ACTIVE: AtomicU8 = AtomicU8::new(0);

/// What ring 0 records about a ring-3 exception before handing it to Rust.
#[repr(C)]
pub struct ExcInfo {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
}

/// Holder of [`ExcInfo`]; only the assembly (via `sym`) touches the inside.
pub struct ExcCell(#[allow(dead_code)] UnsafeCell<ExcInfo>);
// SAFETY: written only by the ring-0 exception path (once, guarded by
// EXC_ACTIVE) before ring 3 reads it; never accessed concurrently.
unsafe impl Sync for ExcCell {}
pub static EXC_INFO: ExcCell = ExcCell(UnsafeCell::new(ExcInfo {
    vector: 0,
    error: 0,
    rip: 0,
    cr2: 0,
    rsp: 0,
}));

/// Service-gate (vector 0x81) requests: RAX = service, RDI = argument.
pub const SVC_BENCH_HYPERCALL: u64 = 0;
pub const SVC_BENCH_NULL_EXIT: u64 = 1;
pub const SVC_TRIPLE_FAULT: u64 = 2;
/// CPUID as ring 0 sees it: RDI = leaf, RSI = subleaf, RDX = `*mut [u32; 4]`.
pub const SVC_CPUID: u64 = 3;
/// RDI iterations of a ring-0 CR3 reload (the value it holds); returns
/// the elapsed TSC ticks (the PVH side of the PV NEW_BASEPTR benchmark).
pub const SVC_BENCH_CR3: u64 = 4;
/// Write RDI to the LAPIC's spurious-interrupt vector register (bit 8 is
/// the software enable), as Linux's lapic_suspend and lapic_resume do.
pub const SVC_LAPIC_SVR: u64 = 5;

/// The kxen "null" port: an `out` the VMM ignores (one exit, no work).
pub const NULL_PORT: u16 = 0x59;

/// RAX after `kxen_ring3_out58` when the CPU refused the port write with
/// #GP (PVM runs ring 3 with IOPL 0), so the VMM never saw it.
pub const RING3_OUT_GP: u64 = 0x6b78_656e_0000_000d;

/// A user address nothing maps (PML4 slot 1: ring 0 maps only the first
/// 4 GiB, through slot 0): a load from it at CPL 3 is a page fault.
pub const RING3_PF_PROBE_VA: u64 = 0x80_0000_0000;
/// RAX after `kxen_ring3_pf_probe` when ring 0 took its page fault and
/// stepped over the load (the PVH side of the PV user page fault benchmark).
pub const RING3_PF_PROBE_DONE: u64 = 0x6b78_656e_0000_000e;

extern "C" {
    /// `out %eax, $0x58` at CPL 3 with RAX and RDI preset; returns RAX
    /// afterwards ([`RING3_OUT_GP`] if the CPU raised #GP instead).
    pub fn kxen_ring3_out58(rax: u64, rdi: u64) -> u64;
    /// A 2-byte load from `addr` at CPL 3; a page fault on it is served
    /// by ring 0 stepping over the load with RAX = [`RING3_PF_PROBE_DONE`].
    pub fn kxen_ring3_pf_probe(addr: u64) -> u64;
}

core::arch::global_asm!(
    r#"
/* ---------------------------------------------------------------------- */
/* Xen PVH entry note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY),    */
/* desc = 32-bit physical entry address.                                  */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long {elfnote_phys32_entry}
    .asciz "Xen"
    .balign 4
    .long kxen_pvh_start32
    .balign 4

/* ---------------------------------------------------------------------- */
    .section .text.boot, "ax", @progbits
    .code32
    .globl kxen_pvh_start32
kxen_pvh_start32:
    cli
    cld
    movl %ebx, %esi                 /* start_info GPA, kept until 64-bit */

    /* zero .bss (page tables, stacks and every Rust static live there) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; PDs: 2048 x 2 MiB = 4 GiB */
    movl $kxen_pdpt, %eax
    orl $7, %eax                    /* P | RW | US */
    movl %eax, kxen_pml4
    movl $kxen_pd, %eax
    orl $7, %eax
    movl %eax, kxen_pdpt
    addl $4096, %eax
    movl %eax, kxen_pdpt+8
    addl $4096, %eax
    movl %eax, kxen_pdpt+16
    addl $4096, %eax
    movl %eax, kxen_pdpt+24
    movl $kxen_pd, %edi
    xorl %ecx, %ecx
.Lpd_loop:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x87, %eax                 /* P | RW | US | PS */
    movl %eax, (%edi,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax                  /* bits 63:32 of i * 2 MiB */
    movl %eax, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb .Lpd_loop

    movl $kxen_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax                /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0xfffffff3, %eax          /* clear EM, TS */
    orl $0x80010023, %eax           /* PG | WP | NE | MP | PE */
    movl %eax, %cr0
    lgdt kxen_gdt_ptr
    ljmp $0x08, $kxen_start64

/* ---------------------------------------------------------------------- */
    .code64
kxen_start64:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq kxen_rsp0_top(%rip), %rsp
    movl %esi, %r15d                /* start_info GPA */
    lgdt kxen_gdt_ptr(%rip)         /* again, with the 64-bit base */

    /* TSS: RSP0, IST1, no I/O bitmap */
    leaq kxen_tss(%rip), %rdx
    leaq kxen_rsp0_top(%rip), %rax
    movq %rax, 4(%rdx)
    leaq kxen_ist1_top(%rip), %rax
    movq %rax, 36(%rdx)
    movw $104, 102(%rdx)
    /* 16-byte TSS descriptor at GDT offset 0x28 */
    movq %rdx, %rax
    andq $0xffffff, %rax
    shlq $16, %rax                  /* base 23:0 -> bits 39:16 */
    orq $103, %rax                  /* limit */
    movabsq $0x0000890000000000, %rcx
    orq %rcx, %rax                  /* present, type 9 (available 64-bit TSS) */
    movq %rdx, %rcx
    shrq $24, %rcx
    andq $0xff, %rcx
    shlq $56, %rcx                  /* base 31:24 -> bits 63:56 */
    orq %rcx, %rax
    leaq kxen_gdt(%rip), %rdi
    movq %rax, 0x28(%rdi)
    movq %rdx, %rcx
    shrq $32, %rcx
    movq %rcx, 0x30(%rdi)
    movw $0x28, %ax
    ltr %ax

    /* IDT: 256 interrupt gates, selector 0x08, IST1 */
    leaq kxen_idt(%rip), %rdi
    xorl %ecx, %ecx
.Lidt_loop:
    cmpl $3, %ecx
    jne .Lidt_not3
    leaq kxen_gate_entry(%rip), %rax
    jmp .Lidt_have
.Lidt_not3:
    cmpl $32, %ecx
    jae .Lidt_high
    leaq kxen_exc_table(%rip), %rax
    movq (%rax,%rcx,8), %rax
    jmp .Lidt_have
.Lidt_high:
    leaq kxen_stray_entry(%rip), %rax
    cmpl $0x81, %ecx
    jne .Lidt_not81
    leaq kxen_svc_entry(%rip), %rax
.Lidt_not81:
    cmpl $0x82, %ecx
    jne .Lidt_not82
    leaq kxen_hcall_entry(%rip), %rax
.Lidt_not82:
    cmpl $0xf3, %ecx
    jne .Lidt_notf3
    leaq kxen_upcall_entry(%rip), %rax
.Lidt_notf3:
    cmpl $0xff, %ecx
    jne .Lidt_have
    leaq kxen_spurious_entry(%rip), %rax
.Lidt_have:
    movl $0x8e01, %ebx              /* P, DPL 0, interrupt gate; IST 1 */
    cmpl $3, %ecx
    je .Lidt_dpl3
    cmpl $0x81, %ecx
    je .Lidt_dpl3
    cmpl $0x82, %ecx
    jne .Lidt_attr
.Lidt_dpl3:
    movl $0xee01, %ebx              /* P, DPL 3, interrupt gate; IST 1 */
.Lidt_attr:
    shlq $32, %rbx
    movq %rax, %rdx
    andl $0xffff, %edx              /* offset 15:0 */
    orq %rbx, %rdx
    orq $0x80000, %rdx              /* selector 0x08 */
    movq %rax, %rbx
    shrq $16, %rbx
    andl $0xffff, %ebx
    shlq $48, %rbx                  /* offset 31:16 */
    orq %rbx, %rdx
    movq %rdx, (%rdi)
    shrq $32, %rax                  /* offset 63:32 */
    movq %rax, 8(%rdi)
    addq $16, %rdi
    incl %ecx
    cmpl $256, %ecx
    jb .Lidt_loop
    lidt kxen_idt_ptr(%rip)

    /* hypercall page: only if CPUID says Xen */
    movl $0x40000000, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x566e6558, %ebx
    jne .Lno_xen
    cmpl $0x65584d4d, %ecx
    jne .Lno_xen
    cmpl $0x4d4d566e, %edx
    jne .Lno_xen
    cmpl $0x40000002, %eax
    jb .Lno_xen
    movl $0x40000002, %eax
    xorl %ecx, %ecx
    cpuid
    movl %ebx, %ecx                 /* hypercall MSR */
    leaq {hcall_page}(%rip), %rax   /* GPA; low 12 bits = page index 0 */
    movq %rax, %rdx
    shrq $32, %rdx
    wrmsr
    leaq {hcall_page}(%rip), %rax
    cmpb $0, (%rax)                 /* did the VMM fill it? */
    je .Lno_xen
    movb $1, {hcall_ready}(%rip)
.Lno_xen:

    /* LAPIC: software-enable, spurious vector 0xff */
    movl $0xfee000f0, %eax
    movl $0x1ff, (%rax)

    /* drop to ring 3: IF=1, IOPL=3 */
    movq %r15, %rdi
    pushq $0x1b                     /* SS: user data | RPL 3 */
    leaq kxen_user_stack_top(%rip), %rax
    pushq %rax
    pushq $0x3202                   /* IOPL 3 | IF | reserved bit 1 */
    pushq $0x23                     /* CS: user code | RPL 3 */
    leaq kxen_user_entry(%rip), %rax
    pushq %rax
    iretq

/* ring 3 from here */
kxen_user_entry:
    call {kmain}
    ud2

kxen_user_exc_entry:
    leaq {exc_info}(%rip), %rdi
    call {user_exception}
    ud2

/* u64 kxen_ring3_out58(u64 rax, u64 rdi): `out %eax, $0x58` at CPL 3 with
   RAX and RDI preset; returns RAX afterwards. */
    .globl kxen_ring3_out58
kxen_ring3_out58:
    movq %rdi, %rax
    movq %rsi, %rdi
kxen_ring3_out58_insn:
    outl %eax, $0x58
    ret

/* u64 kxen_ring3_pf_probe(u64 addr): a 2-byte load from ADDR at CPL 3
   (movb (%rdi), %al); ring 0 steps over it on a page fault. */
    .globl kxen_ring3_pf_probe
kxen_ring3_pf_probe:
    xorl %eax, %eax
kxen_ring3_pf_probe_insn:
    movb (%rdi), %al
    ret

/* ---------------------------------------------------------------------- */
/* The gate ring 3 uses: int3 (vector 3, DPL 3). R9 selects hypercall (0) or
   service (else). On PVM hosts `int n` from ring 3 comes back as #UD, while
   int3 is delivered like any exception; on VT-x both work. */
    .balign 16
kxen_gate_entry:
    testq %r9, %r9
    jz kxen_hcall_entry
    jmp kxen_svc_entry

/* ---------------------------------------------------------------------- */
/* Hypercall gate (int3 with R9 = 0, or int $0x82): RAX = number, args in
   RDI, RSI, RDX, R10, R8. Calls stub RAX of the hypercall page; every
   register but RAX is preserved. Numbers >= 128 get -ENOSYS here. */
    .balign 16
kxen_hcall_entry:
    cmpq $128, %rax
    jae .Lhc_enosys
    cmpb $0, {hcall_ready}(%rip)
    je .Lhc_enosys
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rax, %r11
    shlq $5, %r11
    leaq {hcall_page}(%rip), %rbx
    addq %rbx, %r11
    call *%r11
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    iretq
.Lhc_enosys:
    movq $-38, %rax
    iretq

/* ---------------------------------------------------------------------- */
/* Service gate (int3 with R9 != 0, or int $0x81): RAX = service, RDI,
   RSI, RDX = arguments. */
    .balign 16
kxen_svc_entry:
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cmpq ${svc_bench_hypercall}, %rax
    je .Lsvc_bench_hc
    cmpq ${svc_bench_null}, %rax
    je .Lsvc_bench_null
    cmpq ${svc_triple_fault}, %rax
    je .Lsvc_triple
    cmpq ${svc_cpuid}, %rax
    je .Lsvc_cpuid
    cmpq ${svc_bench_cr3}, %rax
    je .Lsvc_bench_cr3
    cmpq ${svc_lapic_svr}, %rax
    je .Lsvc_lapic_svr
    jmp .Lsvc_nosys

/* LAPIC SVR := EDI */
.Lsvc_lapic_svr:
    movl $0xfee000f0, %eax
    movl %edi, (%rax)
    xorl %eax, %eax
    jmp .Lsvc_out

/* CPUID leaf RDI, subleaf RSI as ring 0 sees it; EAX..EDX stored at RDX
   (ring 3 may see the host's leaves: PVM does not trap CPUID at CPL 3) */
.Lsvc_cpuid:
    movq %rdx, %r8
    movl %edi, %eax
    movl %esi, %ecx
    cpuid
    movl %eax, 0(%r8)
    movl %ebx, 4(%r8)
    movl %ecx, 8(%r8)
    movl %edx, 12(%r8)
    xorl %eax, %eax
    jmp .Lsvc_out

/* RDI iterations of xen_version(XENVER_version) through the page, from
   ring 0; returns elapsed TSC ticks */
.Lsvc_bench_hc:
    cmpb $0, {hcall_ready}(%rip)
    je .Lsvc_nosys
    movq %rdi, %r12
    testq %r12, %r12
    jz .Lsvc_zero
    leaq {hcall_page}(%rip), %rbx
    addq ${xen_version_stub}, %rbx
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r13
.Lsvc_hc_loop:
    xorl %edi, %edi                 /* XENVER_version */
    xorl %esi, %esi
    call *%rbx
    decq %r12
    jnz .Lsvc_hc_loop
    jmp .Lsvc_elapsed

/* RDI iterations of `out %eax, $NULL_PORT`; returns elapsed TSC ticks */
.Lsvc_bench_null:
    movq %rdi, %r12
    testq %r12, %r12
    jz .Lsvc_zero
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r13
    xorl %eax, %eax
.Lsvc_null_loop:
    outl %eax, ${null_port}
    decq %r12
    jnz .Lsvc_null_loop

/* RDI iterations of a CR3 reload with the value it holds (what a PVH
   kernel's address-space switch costs in ring 0); returns elapsed TSC
   ticks */
.Lsvc_bench_cr3:
    movq %rdi, %r12
    testq %r12, %r12
    jz .Lsvc_zero
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r13
.Lsvc_cr3_loop:
    movq %cr3, %rax
    movq %rax, %cr3
    decq %r12
    jnz .Lsvc_cr3_loop

.Lsvc_elapsed:
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r13, %rax
    jmp .Lsvc_out

/* Empty IDT, then a fault: #GP cannot be delivered -> #DF -> triple fault.
   The non-canonical load raises #GP through any emulator; int3 and ud2 are
   fallbacks in case it somehow does not. */
.Lsvc_triple:
    lidt kxen_zero_idt_ptr(%rip)
    movabsq $0x8000000000000000, %rax
    movq (%rax), %rax
    int3
    ud2
.Lsvc_hang:
    jmp .Lsvc_hang

.Lsvc_zero:
    xorl %eax, %eax
    jmp .Lsvc_out
.Lsvc_nosys:
    movq $-38, %rax
.Lsvc_out:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    iretq

/* ---------------------------------------------------------------------- */
/* Event-channel upcall: EOI, count. Ring 3 does the event work.          */
    .balign 16
kxen_upcall_entry:
    pushq %rax
    movl $0xfee000b0, %eax
    movl $0, (%rax)
    lock incq {upcall_count}(%rip)
    popq %rax
    iretq

    .balign 16
kxen_stray_entry:
    pushq %rax
    movl $0xfee000b0, %eax
    movl $0, (%rax)
    lock incq {stray_count}(%rip)
    popq %rax
    iretq

    .balign 16
kxen_spurious_entry:
    iretq

/* ---------------------------------------------------------------------- */
/* Exceptions. Stack after the stub: vector, error, RIP, CS, RFLAGS, RSP, SS. */
.macro KXEN_EXC_NOERR vec
    .balign 16
kxen_exc_\vec:
    pushq $0
    pushq $\vec
    jmp kxen_exc_common
.endm
.macro KXEN_EXC_ERR vec
    .balign 16
kxen_exc_\vec:
    pushq $\vec
    jmp kxen_exc_common
.endm
    KXEN_EXC_NOERR 0
    KXEN_EXC_NOERR 1
    KXEN_EXC_NOERR 2
    KXEN_EXC_NOERR 3
    KXEN_EXC_NOERR 4
    KXEN_EXC_NOERR 5
    KXEN_EXC_NOERR 6
    KXEN_EXC_NOERR 7
    KXEN_EXC_ERR 8
    KXEN_EXC_NOERR 9
    KXEN_EXC_ERR 10
    KXEN_EXC_ERR 11
    KXEN_EXC_ERR 12
    KXEN_EXC_ERR 13
    KXEN_EXC_ERR 14
    KXEN_EXC_NOERR 15
    KXEN_EXC_NOERR 16
    KXEN_EXC_ERR 17
    KXEN_EXC_NOERR 18
    KXEN_EXC_NOERR 19
    KXEN_EXC_NOERR 20
    KXEN_EXC_ERR 21
    KXEN_EXC_NOERR 22
    KXEN_EXC_NOERR 23
    KXEN_EXC_NOERR 24
    KXEN_EXC_NOERR 25
    KXEN_EXC_NOERR 26
    KXEN_EXC_NOERR 27
    KXEN_EXC_NOERR 28
    KXEN_EXC_ERR 29
    KXEN_EXC_ERR 30
    KXEN_EXC_NOERR 31

kxen_exc_common:
    testb $3, 24(%rsp)              /* from ring 3? */
    jz .Lexc_kernel
    /* #PF on the ring-3 page-fault probe: step over its 2-byte load with
       RAX set to a marker. */
    cmpq $14, 0(%rsp)
    jne .Lexc_not_pf_probe
    pushq %rax
    leaq kxen_ring3_pf_probe_insn(%rip), %rax
    cmpq %rax, 24(%rsp)
    popq %rax
    jne .Lexc_user
    addq $2, 16(%rsp)
    movabsq ${pf_probe_done}, %rax
    addq $16, %rsp
    iretq
.Lexc_not_pf_probe:
    /* #GP on the ring-3 port-write probe: resume after it with RAX set to
       a marker (PVM runs ring 3 with IOPL 0 whatever the guest sets). */
    cmpq $13, 0(%rsp)
    jne .Lexc_user
    pushq %rax
    leaq kxen_ring3_out58_insn(%rip), %rax
    cmpq %rax, 24(%rsp)
    popq %rax
    jne .Lexc_user
    addq $2, 16(%rsp)
    movabsq ${probe_gp}, %rax
    addq $16, %rsp
    iretq
.Lexc_user:
    cmpb $0, {exc_active}(%rip)
    jne .Lexc_kernel
    movb $1, {exc_active}(%rip)
    /* record, then "return" into kxen_user_exc_entry on its own stack */
    pushq %rax
    pushq %rbx
    leaq {exc_info}(%rip), %rbx
    movq 16(%rsp), %rax
    movq %rax, 0(%rbx)              /* vector */
    movq 24(%rsp), %rax
    movq %rax, 8(%rbx)              /* error code */
    movq 32(%rsp), %rax
    movq %rax, 16(%rbx)             /* RIP */
    movq %cr2, %rax
    movq %rax, 24(%rbx)             /* CR2 */
    movq 56(%rsp), %rax
    movq %rax, 32(%rbx)             /* RSP */
    leaq kxen_user_exc_entry(%rip), %rax
    movq %rax, 32(%rsp)
    leaq kxen_user_exc_stack_top(%rip), %rax
    movq %rax, 56(%rsp)
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

/* ring-0 (or nested) exception: report through console_io by a direct
   port write (no hypercall page needed), then SCHEDOP_shutdown(crash). */
.Lexc_kernel:
    leaq kxen_exc_msg_vec(%rip), %rdi
    movq 0(%rsp), %rax
    call kxen_hex64
    leaq kxen_exc_msg_err(%rip), %rdi
    movq 8(%rsp), %rax
    call kxen_hex64
    leaq kxen_exc_msg_rip(%rip), %rdi
    movq 16(%rsp), %rax
    call kxen_hex64
    leaq kxen_exc_msg_cs(%rip), %rdi
    movq 24(%rsp), %rax
    call kxen_hex64
    leaq kxen_exc_msg_cr2(%rip), %rdi
    movq %cr2, %rax
    call kxen_hex64
    movl $18, %eax                  /* console_io */
    xorl %edi, %edi                 /* CONSOLEIO_write */
    leaq kxen_exc_msg(%rip), %rdx
    leaq kxen_exc_msg_end(%rip), %rsi
    subq %rdx, %rsi                 /* length */
    outl %eax, ${hypercall_port}
    movl $29, %eax                  /* sched_op */
    movl $2, %edi                   /* SCHEDOP_shutdown */
    leaq kxen_shutdown_crash(%rip), %rsi
    outl %eax, ${hypercall_port}
.Lexc_hang:
    cli
    hlt
    jmp .Lexc_hang

/* RAX -> 16 lowercase hex digits at (RDI); clobbers RCX, RDX, RDI */
kxen_hex64:
    movl $16, %ecx
.Lhex_loop:
    rolq $4, %rax
    movl %eax, %edx
    andl $15, %edx
    cmpl $10, %edx
    jb .Lhex_digit
    addl $39, %edx                  /* 'a' - '0' - 10 */
.Lhex_digit:
    addl $48, %edx                  /* '0' */
    movb %dl, (%rdi)
    incq %rdi
    decl %ecx
    jnz .Lhex_loop
    ret

/* ---------------------------------------------------------------------- */
    .section .rodata.kxen, "a", @progbits
    .balign 8
kxen_exc_table:
    .quad kxen_exc_0, kxen_exc_1, kxen_exc_2, kxen_exc_3
    .quad kxen_exc_4, kxen_exc_5, kxen_exc_6, kxen_exc_7
    .quad kxen_exc_8, kxen_exc_9, kxen_exc_10, kxen_exc_11
    .quad kxen_exc_12, kxen_exc_13, kxen_exc_14, kxen_exc_15
    .quad kxen_exc_16, kxen_exc_17, kxen_exc_18, kxen_exc_19
    .quad kxen_exc_20, kxen_exc_21, kxen_exc_22, kxen_exc_23
    .quad kxen_exc_24, kxen_exc_25, kxen_exc_26, kxen_exc_27
    .quad kxen_exc_28, kxen_exc_29, kxen_exc_30, kxen_exc_31

    .section .data.kxen, "aw", @progbits
    .balign 16
kxen_gdt:
    .quad 0                         /* 0x00 null */
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
    .quad 0, 0                      /* 0x28 TSS (filled at boot) */
kxen_gdt_end:
    .balign 8
kxen_gdt_ptr:
    .word kxen_gdt_end - kxen_gdt - 1
    .quad kxen_gdt
    .balign 8
kxen_idt_ptr:
    .word 256 * 16 - 1
    .quad kxen_idt
    .balign 8
kxen_zero_idt_ptr:
    .word 0
    .quad 0
    .balign 4
kxen_shutdown_crash:
    .long 3                         /* SHUTDOWN_crash */
kxen_exc_msg:
    .ascii "kxen-testguest: ring-0 exception vector=0x"
kxen_exc_msg_vec:
    .ascii "0000000000000000"
    .ascii " error=0x"
kxen_exc_msg_err:
    .ascii "0000000000000000"
    .ascii " rip=0x"
kxen_exc_msg_rip:
    .ascii "0000000000000000"
    .ascii " cs=0x"
kxen_exc_msg_cs:
    .ascii "0000000000000000"
    .ascii " cr2=0x"
kxen_exc_msg_cr2:
    .ascii "0000000000000000"
    .ascii "\n"
kxen_exc_msg_end:

    .section .bss.kxen, "aw", @nobits
    .balign 4096
    /* Ring 3 adds its own mappings above 4 GiB (checks::memory). */
    .globl kxen_pdpt
kxen_pml4:
    .skip 4096
kxen_pdpt:
    .skip 4096
kxen_pd:
    .skip 4 * 4096
kxen_idt:
    .skip 4096
kxen_ist1_stack:
    .skip 16384
kxen_ist1_top:
kxen_rsp0_stack:
    .skip 16384
kxen_rsp0_top:
kxen_user_stack:
    .skip 65536
kxen_user_stack_top:
kxen_user_exc_stack:
    .skip 16384
kxen_user_exc_stack_top:
    .balign 16
kxen_tss:
    .skip 112

    .text
"#,
    elfnote_phys32_entry = const xen_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY,
    hcall_page = sym HYPERCALL_PAGE,
    hcall_ready = sym HCALL_READY,
    upcall_count = sym UPCALL_COUNT,
    stray_count = sym STRAY_COUNT,
    exc_active = sym EXC_ACTIVE,
    exc_info = sym EXC_INFO,
    kmain = sym crate::kmain,
    user_exception = sym crate::user_exception,
    svc_bench_hypercall = const SVC_BENCH_HYPERCALL,
    svc_bench_null = const SVC_BENCH_NULL_EXIT,
    svc_triple_fault = const SVC_TRIPLE_FAULT,
    svc_cpuid = const SVC_CPUID,
    svc_bench_cr3 = const SVC_BENCH_CR3,
    svc_lapic_svr = const SVC_LAPIC_SVR,
    pf_probe_done = const RING3_PF_PROBE_DONE,
    xen_version_stub = const xen_abi::hypercall::XEN_VERSION as usize * xen_abi::hypercall::STUB_SIZE,
    null_port = const NULL_PORT,
    probe_gp = const RING3_OUT_GP,
    hypercall_port = const xen_abi::transport::HYPERCALL_PORT,
    options(att_syntax)
);
