/* Privileged instructions of the PV kernel, emulated by the hypervisor
 * as Xen's pv/emul-priv-op.c and emul-inv-op.c do (kxen-pv `emulate`),
 * or bounced as #GP when Xen would refuse them. `.include`d by pv.S and
 * run as `call emulate_checks` once its trap checks are done (uses its
 * verdict, puts, puthex, r15 = start_info, and re-registers its
 * trap_table at the end). Checks:
 *   the forced-emulation CPUID (`ud2; .ascii "xen"; cpuid`): leaf
 *   0x40000000 is Xen's "XenVMMXenVMM" with 0x40000005 leaves, leaf 0
 *   matches the native one, leaf 1 hides VMX and shows HYPERVISOR;
 *   wrmsr FS_BASE, rdmsr reads it back and %fs: reads through it; EFER
 *   reads LME|LMA and takes its own value back; rdmsr of an unknown MSR
 *   and wrmsr of a changed EFER bounce #GP(0) at the instruction;
 *   mov %cr0 (PE|PG), CR0.TS set with mov and cleared with clts; mov
 *   %cr4 (PAE); mov %cr3 is the loaded L4, mov to %cr3 of it works and
 *   of a writable frame bounces #GP; in/out without I/O privileges
 *   bounce #GP; then times EMU_CALLS forced CPUIDs and rdmsrs. */
    .set EMU_CALLS, 200
    .set MSR_FS_BASE, 0xc0000100
    .set MSR_EFER, 0xc0000080
    .set MSR_UNKNOWN, 0x12345678
    .set EFER_LME_LMA, 0x500
    .set CR0_PE_PG, 0x80000001
    .set CR0_TS, 8
    .set CR4_PAE, 0x20

    /* Xen's forced-emulation prefix, then cpuid. */
    .macro xen_cpuid
    ud2
    .ascii "xen"
    cpuid
    .endm

    /* An instruction expected to bounce #GP(0): the #GP handler resumes
     * at 1f; the check passes if exactly one #GP with error code 0 and
     * RIP at the instruction came back. RBX = the check's name. */
    .macro expect_gp insn:vararg
    lea 1f(%rip), %rax
    mov %rax, emu_gp_resume(%rip)
    movq $0, emu_gp_count(%rip)
    movq $0xdead, emu_gp_ec(%rip)
    lea 2f(%rip), %rax
    mov %rax, emu_gp_expected(%rip)
    mov emu_gp_arg_rax(%rip), %rax
2:  \insn
1:  call emu_gp_verdict
    .endm

    /* An instruction expected to be emulated: should it bounce #GP
     * instead (emulation broken), the handler resumes right after it
     * and counts the #GP, which the check then sees. */
    .macro emulated insn:vararg
    push %rax
    lea 9f(%rip), %rax
    mov %rax, emu_gp_resume(%rip)
    pop %rax
    \insn
9:
    .endm

    .text
emulate_checks:
    push %r12
    push %r13
    push %r14
    lea emu_trap_table(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    movzbl %al, %edi
    lea name_emu_tt(%rip), %rbx
    call verdict

    /* ---- forced-emulation CPUID ---- */
    mov $0x40000000, %eax
    xor %ecx, %ecx
    xen_cpuid
    mov %eax, %esi
    cmp $0x40000005, %eax
    sete %al
    cmp $0x566e6558, %ebx             /* "XenV" */
    sete %r8b
    and %r8b, %al
    cmp $0x65584d4d, %ecx             /* "MMXe" */
    sete %r8b
    and %r8b, %al
    cmp $0x4d4d566e, %edx             /* "nVMM" */
    sete %r8b
    and %r8b, %al
    movzbl %al, %edi
    lea name_emu_xen_leaf(%rip), %rbx
    call verdict

    /* Leaf 0: the same as the native CPUID's. */
    xor %eax, %eax
    xor %ecx, %ecx
    cpuid
    mov %eax, %r12d
    mov %ebx, %r13d
    mov %edx, %r14d
    shl $32, %r14
    or %rcx, %r14
    xor %eax, %eax
    xor %ecx, %ecx
    xen_cpuid
    mov %ebx, %esi
    cmp %eax, %r12d
    sete %al
    cmp %ebx, %r13d
    sete %bl
    and %bl, %al
    shl $32, %rdx
    or %rcx, %rdx
    cmp %rdx, %r14
    sete %bl
    and %bl, %al
    movzbl %al, %edi
    lea name_emu_leaf0(%rip), %rbx
    call verdict

    /* Leaf 1: VMX (ECX bit 5) hidden, HYPERVISOR (bit 31) shown. */
    mov $1, %eax
    xor %ecx, %ecx
    xen_cpuid
    mov %ecx, %esi
    test $0x20, %ecx
    setz %al
    bt $31, %ecx
    setc %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_emu_leaf1(%rip), %rbx
    call verdict

    /* ---- MSRs ---- */
    /* FS_BASE = &emu_fs_word; rdmsr reads it back, %fs:0 reads the word. */
    movq $0, emu_gp_count(%rip)
    lea emu_fs_word(%rip), %rax
    mov %rax, %r12
    mov %rax, %rdx
    shr $32, %rdx
    mov $MSR_FS_BASE, %ecx
    emulated wrmsr
    mov $MSR_FS_BASE, %ecx
    xor %eax, %eax
    xor %edx, %edx
    emulated rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rsi
    cmp %rax, %r12
    sete %al
    movabs $0x600dfeed600dfeed, %rdx
    cmp %fs:0, %rdx
    sete %dl
    and %dl, %al
    cmpq $0, emu_gp_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_emu_fsbase(%rip), %rbx
    call verdict

    /* EFER: LME|LMA, and writing its own value back is accepted. */
    movq $0, emu_gp_count(%rip)
    mov $MSR_EFER, %ecx
    emulated rdmsr
    mov %rax, %rsi
    mov %eax, %r12d
    and $EFER_LME_LMA, %eax
    cmp $EFER_LME_LMA, %eax
    sete %r13b
    mov %r12d, %eax
    xor %edx, %edx
    mov $MSR_EFER, %ecx
    emulated wrmsr
    cmpq $0, emu_gp_count(%rip)
    sete %al
    and %r13b, %al
    movzbl %al, %edi
    lea name_emu_efer(%rip), %rbx
    call verdict

    /* An unknown MSR, and a changed EFER: #GP(0). */
    lea name_emu_rdmsr_unknown(%rip), %rbx
    mov $MSR_UNKNOWN, %ecx
    expect_gp rdmsr
    lea name_emu_efer_change(%rip), %rbx
    mov $MSR_EFER, %ecx
    mov %r12d, %eax
    xor $0x800, %eax                  /* NXE flipped */
    mov %rax, emu_gp_arg_rax(%rip)
    xor %edx, %edx
    expect_gp wrmsr
    movq $0, emu_gp_arg_rax(%rip)

    /* ---- control registers ---- */
    emulated mov %cr0, %rax
    mov %rax, %r12
    mov %rax, %rsi
    and $(CR0_PE_PG | CR0_TS), %eax
    cmp $CR0_PE_PG, %eax
    sete %al
    movzbl %al, %edi
    lea name_emu_cr0(%rip), %rbx
    call verdict

    /* CR0.TS: set with mov (the only bit that may change), read back,
     * cleared with clts. */
    mov %r12, %rax
    or $CR0_TS, %rax
    emulated mov %rax, %cr0
    emulated mov %cr0, %rax
    mov %rax, %r13
    emulated clts
    emulated mov %cr0, %rax
    mov %rax, %rsi
    test $CR0_TS, %r13
    setnz %dl
    test $CR0_TS, %rax
    setz %al
    and %dl, %al
    movzbl %al, %edi
    lea name_emu_ts(%rip), %rbx
    call verdict

    emulated mov %cr4, %rax
    mov %rax, %rsi
    test $CR4_PAE, %eax
    setnz %al
    movzbl %al, %edi
    lea name_emu_cr4(%rip), %rbx
    call verdict

    /* CR3 reads the loaded L4 (start_info.pt_base's frame, identity
     * P2M) as a CR3 value. */
    mov SI_PT_BASE(%r15), %r12
    mov $VIRT_BASE, %rcx
    sub %rcx, %r12
    emulated mov %cr3, %rax
    mov %rax, %rsi
    cmp %rax, %r12
    sete %al
    movzbl %al, %edi
    lea name_emu_cr3_read(%rip), %rbx
    call verdict

    /* mov to %cr3 of the same L4: NEW_BASEPTR, no #GP, still running on
     * it (a read through the kernel mapping and CR3 again). */
    movq $0, emu_gp_count(%rip)
    emulated mov %r12, %cr3
    mov magic(%rip), %rax
    emulated mov %cr3, %rsi
    cmp %rsi, %r12
    sete %al
    cmpq $0, emu_gp_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_emu_cr3_write(%rip), %rbx
    call verdict

    /* mov to %cr3 of start_info's frame (mapped writable, never a page
     * table): refused, #GP(0), still on the old L4. */
    mov %r15, %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    mov %rax, emu_gp_arg_rax(%rip)
    lea name_emu_cr3_bad(%rip), %rbx
    expect_gp mov %rax, %cr3
    movq $0, emu_gp_arg_rax(%rip)

    /* ---- I/O without privileges: #GP(0) ---- */
    lea name_emu_in(%rip), %rbx
    expect_gp in $0x71, %al
    lea name_emu_out(%rip), %rbx
    expect_gp out %al, $0x80
    lea name_emu_in_dx(%rip), %rbx
    mov $0xcfc, %edx
    expect_gp in (%dx), %eax

    /* ---- cost: EMU_CALLS forced CPUIDs, then rdmsrs ---- */
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    mov $EMU_CALLS, %r13d
1:  xor %eax, %eax
    xor %ecx, %ecx
    xen_cpuid
    dec %r13d
    jnz 1b
    lea msg_emu_cpuid_timing(%rip), %rdi
    call emu_timing
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    mov $EMU_CALLS, %r13d
1:  mov $MSR_FS_BASE, %ecx
    emulated rdmsr
    dec %r13d
    jnz 1b
    lea msg_emu_rdmsr_timing(%rip), %rdi
    call emu_timing

    /* Back to pv.S's own trap table. */
    lea trap_table(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    pop %r14
    pop %r13
    pop %r12
    ret

/* emu_timing: RDI = the line's prefix, R14 = the rdtsc at the start of
 * EMU_CALLS calls: prints `<prefix><calls> calls in <cycles> TSC cycles`. */
emu_timing:
    push %rdi
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r14, %rdx
    mov %rdx, %r14
    pop %rdi
    call puts
    mov $EMU_CALLS, %eax
    call puthex
    lea msg_timing2(%rip), %rdi
    call puts
    mov %r14, %rax
    call puthex
    lea msg_timing3(%rip), %rdi
    jmp puts

/* emu_gp_verdict: after an expect_gp, RBX = the check's name. */
emu_gp_verdict:
    mov emu_gp_rip(%rip), %rsi
    cmp emu_gp_expected(%rip), %rsi
    sete %al
    cmpq $1, emu_gp_count(%rip)
    sete %dl
    and %dl, %al
    cmpq $0, emu_gp_ec(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    jmp verdict

/* #GP handler of these checks: records the error code and RIP, resumes
 * at emu_gp_resume. Frame: RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS. */
emu_gp_handler:
    mov 16(%rsp), %rcx
    mov %rcx, emu_gp_ec(%rip)
    mov 24(%rsp), %rcx
    mov %rcx, emu_gp_rip(%rip)
    incq emu_gp_count(%rip)
    mov emu_gp_resume(%rip), %rcx
    mov %rcx, 24(%rsp)
    pop %rcx
    pop %r11
    add $8, %rsp                     /* the error code */
    pushq $0
    jmp hypercall_page + HC_IRET * 32

/* #UD handler: a forced CPUID that was not emulated; counts it and
 * steps past the 7 bytes, leaving the registers as they were. */
emu_ud_handler:
    incq emu_ud_count(%rip)
    addq $7, 16(%rsp)
    pop %rcx
    pop %r11
    pushq $0
    jmp hypercall_page + HC_IRET * 32

    .data
name_emu_tt:       .asciz "set_trap_table for the emulation checks"
name_emu_xen_leaf: .asciz "forced CPUID 0x40000000: XenVMMXenVMM, leaves up to 0x40000005"
name_emu_leaf0:    .asciz "forced CPUID leaf 0 matches the native one"
name_emu_leaf1:    .asciz "forced CPUID leaf 1: VMX hidden, HYPERVISOR set"
name_emu_fsbase:   .asciz "wrmsr FS_BASE: rdmsr reads it back and %fs: reads through it"
name_emu_efer:     .asciz "rdmsr EFER has LME|LMA, wrmsr of the same value is accepted"
name_emu_rdmsr_unknown: .asciz "rdmsr of an unknown MSR bounces #GP(0)"
name_emu_efer_change: .asciz "wrmsr EFER with another value bounces #GP(0)"
name_emu_cr0:      .asciz "mov %cr0: PE and PG set, TS clear"
name_emu_ts:       .asciz "mov to %cr0 sets TS, clts clears it"
name_emu_cr4:      .asciz "mov %cr4: PAE set"
name_emu_cr3_read: .asciz "mov %cr3 is the loaded L4"
name_emu_cr3_write: .asciz "mov to %cr3 of the loaded L4 is accepted"
name_emu_cr3_bad:  .asciz "mov to %cr3 of a writable frame bounces #GP(0)"
name_emu_in:       .asciz "in $0x71 without I/O privileges bounces #GP(0)"
name_emu_out:      .asciz "out $0x80 without I/O privileges bounces #GP(0)"
name_emu_in_dx:    .asciz "in (%dx) of 0xcfc without I/O privileges bounces #GP(0)"
msg_emu_cpuid_timing: .asciz "kxen-pv-guest: forced CPUID emulations: "
msg_emu_rdmsr_timing: .asciz "kxen-pv-guest: rdmsr FS_BASE emulations: "
    .balign 8
emu_fs_word:       .quad 0x600dfeed600dfeed
emu_gp_count:      .quad 0
emu_gp_ec:         .quad 0
emu_gp_rip:        .quad 0
emu_gp_resume:     .quad 0
emu_gp_expected:   .quad 0
emu_gp_arg_rax:    .quad 0
emu_ud_count:      .quad 0
emu_trap_table:
    .byte 6, 0
    .word 0xe033
    .long 0
    .quad emu_ud_handler
    .byte 13, 0
    .word 0xe033
    .long 0
    .quad emu_gp_handler
    .quad 0, 0
    .text
