/* The read-only machine-to-phys table (M2P) a 64-bit PV kernel reads
 * where XENMEM_machphys_mapping says (Linux takes v_start from it): Xen
 * puts it at 0xffff800000000000 (L4 slot 256), kxen one slot up, as PVM
 * hosts fault loads through slot 256 (kxen-pv's m2p.rs). Every access
 * here goes through the v_start the hypercall returned. `.include`d by
 * pv.S after
 * user.S (uses verdict, puts, puthex, expect_rax, r15 = start_info) and
 * run as `call m2p_checks` before user_checks. Keeps R12-R15. Checks:
 *   XENMEM_machphys_mapping: kxen's area (Xen's size, slot 257) and
 *   MACH2PHYS_NR_ENTRIES-1;
 *   our L4's slot of v_start (the hypervisor's) is present and not
 *   writable,
 *   and the table frame it names cannot be mapped (update_va_mapping
 *   -EPERM: it is no frame of ours);
 *   M2P[mfn] == mfn for start_info's frame, our L4's and the last one;
 *   the entry before the hole reads without a fault;
 *   a store to the M2P is a #PF (error code P|W, CR2 = the address,
 *   RIP at the store) and leaves the entry as it was;
 *   a load in the hole (the first page past the domain's entries, and
 *   the last entry of the M2P area) is a not-present #PF, which the
 *   handler steps over;
 *   MMU_MACHPHYS_UPDATE changes what we read back, and back again;
 *   MMU_MACHPHYS_UPDATE of a frame beyond nr_pages is -EINVAL, none done.
 * Its #PF handler is registered for these checks only: the trap table
 * is cleared and pv.S's (#BP #UD #GP) registered again at the end. */
    .set HC_MEMORY_OP, 12
    .set XENMEM_MACHPHYS_MAPPING, 12
    .set MMU_MACHPHYS_UPDATE, 1
    .set M2P_START, 0xffff808000000000  /* what machphys_mapping must say */
    .set M2P_END, 0xffff80c000000000
    .set M2P_MAX_MFN, 0x7ffffffff     /* MACH2PHYS_NR_ENTRIES - 1 */
    .set M2P_NEW_PFN, 0x5a5a5
    .set M2P_SENTINEL, 0x5e5e5e5e5e5e5e5e
    .set EPERM, 1
    .set PTE_PRESENT, 1
    .set PTE_RW, 2
    .set PFEC_P_W, 3                   /* present, write; kernel mode */
    .set PFEC_NOT_PRESENT_READ, 0
    .set VCPU0_CR2, 16                 /* vcpu_info[0].arch.cr2 in shared_info */
    .set M2P_SHINFO_PAGE, 24           /* spare pages past the page tables */
    .set M2P_PROBE_PAGE, 25

    /* m2p_fault INSN: run INSN, expected to #PF, with the handler armed
     * to resume right after it; records the fault (m2p_pf_*). INSN must
     * not use RAX. */
    .macro m2p_fault insn:vararg
    lea 1f(%rip), %rax
    mov %rax, m2p_pf_resume(%rip)
    lea 2f(%rip), %rax
    mov %rax, m2p_pf_expect(%rip)
    movq $0, m2p_pf_count(%rip)
    movq $-1, m2p_pf_ec(%rip)
    movq $0, m2p_pf_cr2(%rip)
    movq $0, m2p_pf_rip(%rip)
2:  \insn
1:
    .endm

    .text
m2p_checks:
    push %r12
    push %r13
    push %r14
    lea m2p_trap_table(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    expect_rax 0, name_m2p_tt
    /* shared_info at a spare page of our own: the #PF handler reads
     * CR2 from vcpu_info. */
    mov SI_NR_PT_FRAMES(%r15), %rax
    add $M2P_SHINFO_PAGE, %rax
    shl $12, %rax
    add SI_PT_BASE(%r15), %rax
    mov %rax, m2p_shinfo(%rip)
    mov %rax, %rdi
    mov SI_SHARED_INFO(%r15), %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    expect_rax 0, name_m2p_shinfo

    /* XENMEM_machphys_mapping. */
    movq $-1, m2p_mapping(%rip)
    movq $-1, m2p_mapping+8(%rip)
    movq $-1, m2p_mapping+16(%rip)
    mov $XENMEM_MACHPHYS_MAPPING, %edi
    lea m2p_mapping(%rip), %rsi
    call hypercall_page + HC_MEMORY_OP * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    movabs $M2P_START, %rdx
    cmp %rdx, m2p_mapping(%rip)
    sete %dl
    and %dl, %al
    movabs $M2P_END, %rdx
    cmp %rdx, m2p_mapping+8(%rip)
    sete %dl
    and %dl, %al
    movabs $M2P_MAX_MFN, %rdx
    cmp %rdx, m2p_mapping+16(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_m2p_mapping(%rip), %rbx
    call verdict

    /* From here on the M2P is where the hypercall said. */
    mov m2p_mapping(%rip), %rax
    mov %rax, m2p_base(%rip)
    /* Our L4's slot of v_start, as we read the L4 (mapped read-only). */
    shr $39, %rax
    and $0x1ff, %eax
    mov SI_PT_BASE(%r15), %rcx
    mov (%rcx,%rax,8), %r13
    mov %r13, %rsi
    xor %edi, %edi
    test $PTE_PRESENT, %r13
    setnz %dil
    test $PTE_RW, %r13
    setz %al
    and %eax, %edi
    lea name_m2p_slot(%rip), %rbx
    call verdict
    /* The table frame it names is the hypervisor's: mapping it at a
     * spare page of ours, even read-only, is refused. */
    mov SI_NR_PT_FRAMES(%r15), %rdi
    add $M2P_PROBE_PAGE, %rdi
    shl $12, %rdi
    add SI_PT_BASE(%r15), %rdi
    movabs $0x000ffffffffff000, %rsi
    and %r13, %rsi
    or $PTE_PRESENT, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    expect_rax -EPERM, name_m2p_nomap

    /* M2P[mfn] == mfn: start_info's frame, our L4's, the last frame. */
    mov %r15, %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $12, %rax
    lea name_m2p_si(%rip), %rbx
    call m2p_identity
    mov SI_PT_BASE(%r15), %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $12, %rax
    lea name_m2p_l4(%rip), %rbx
    call m2p_identity
    mov SI_NR_PAGES(%r15), %rax
    dec %rax
    lea name_m2p_last(%rip), %rbx
    call m2p_identity

    /* R14 = the hole's start: the table is mapped in whole pages. */
    mov SI_NR_PAGES(%r15), %r14
    shl $3, %r14
    add $4095, %r14
    and $-4096, %r14
    add m2p_base(%rip), %r14
    /* The entry before it reads without a fault: the last frame's, or
     * INVALID_M2P_ENTRY (all ones) in a partial last page. */
    mov SI_NR_PAGES(%r15), %r13
    dec %r13
    testq $511, SI_NR_PAGES(%r15)
    jz 1f
    mov $-1, %r13
1:  lea -8(%r14), %rcx
    movabs $M2P_SENTINEL, %rdx
    m2p_fault mov (%rcx), %rdx
    mov %rdx, %rsi
    xor %edi, %edi
    cmp %r13, %rdx
    sete %dil
    cmpq $0, m2p_pf_count(%rip)
    sete %al
    and %eax, %edi
    movq $0, m2p_pf_resume(%rip)
    lea name_m2p_before_hole(%rip), %rbx
    call verdict

    /* A store to start_info's entry: #PF with P|W at the store. */
    mov %r15, %r13
    mov $VIRT_BASE, %rcx
    sub %rcx, %r13
    shr $12, %r13
    mov m2p_base(%rip), %rcx
    lea (%rcx,%r13,8), %rcx
    push %r14
    mov %rcx, %r14
    movabs $M2P_SENTINEL, %rdx
    m2p_fault mov %rdx, (%rcx)
    mov $PFEC_P_W, %r8d
    lea name_m2p_write(%rip), %rbx
    call m2p_fault_verdict
    pop %r14
    mov %r13, %rax
    lea name_m2p_write_kept(%rip), %rbx
    call m2p_identity

    /* Loads in the hole: not-present #PFs, stepped over (RDX keeps the
     * sentinel: nothing was loaded). */
    mov %r14, %rcx
    movabs $M2P_SENTINEL, %rdx
    m2p_fault mov (%rcx), %rdx
    mov $PFEC_NOT_PRESENT_READ, %r8d
    lea name_m2p_hole(%rip), %rbx
    call m2p_hole_verdict
    mov m2p_mapping+8(%rip), %r14
    sub $8, %r14
    mov %r14, %rcx
    movabs $M2P_SENTINEL, %rdx
    m2p_fault mov (%rcx), %rdx
    mov $PFEC_NOT_PRESENT_READ, %r8d
    lea name_m2p_hole_end(%rip), %rbx
    call m2p_hole_verdict

    /* MMU_MACHPHYS_UPDATE of frame_a's entry, read back; then back to
     * the identity. */
    lea frame_a(%rip), %r13
    mov $VIRT_BASE, %rcx
    sub %rcx, %r13
    shr $12, %r13
    mov $M2P_NEW_PFN, %esi
    call m2p_machphys_update
    mov m2p_base(%rip), %rcx
    mov (%rcx,%r13,8), %rcx
    cmp $M2P_NEW_PFN, %rcx
    sete %dl
    and %edx, %edi
    mov %rcx, %rsi
    lea name_m2p_update(%rip), %rbx
    call verdict
    mov %r13, %rsi
    call m2p_machphys_update
    mov m2p_base(%rip), %rcx
    mov (%rcx,%r13,8), %rcx
    cmp %r13, %rcx
    sete %dl
    and %edx, %edi
    mov %rcx, %rsi
    lea name_m2p_update_back(%rip), %rbx
    call verdict
    /* ... of a frame that is not ours: -EINVAL, none done. */
    mov SI_NR_PAGES(%r15), %r13
    add $16, %r13
    mov $1, %esi
    call m2p_machphys_update
    mov %rax, %rsi
    cmp $-EINVAL, %rax
    sete %dl
    cmpl $0, done(%rip)
    sete %al
    and %eax, %edx
    movzbl %dl, %edi
    lea name_m2p_update_bad(%rip), %rbx
    call verdict

    /* The #PF handler was for these checks only: clear the table, then
     * register pv.S's #BP #UD #GP again. */
    xor %edi, %edi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov %rax, %r13
    lea trap_table(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    or %r13, %rax
    expect_rax 0, name_m2p_tt_back
    pop %r14
    pop %r13
    pop %r12
    ret

/* m2p_identity: a verdict on M2P[RAX] == RAX (RBX = the name). */
m2p_identity:
    mov m2p_base(%rip), %rcx
    mov (%rcx,%rax,8), %rsi
    xor %edi, %edi
    cmp %rax, %rsi
    sete %dil
    jmp verdict

/* m2p_machphys_update: mmu_update(MMU_MACHPHYS_UPDATE of frame R13 to
 * pfn RSI); RAX = its result, EDI = 1 if it returned 0 with one done. */
m2p_machphys_update:
    mov %rsi, m2p_req+8(%rip)
    mov %r13, %rax
    shl $12, %rax
    or $MMU_MACHPHYS_UPDATE, %rax
    mov %rax, m2p_req(%rip)
    movl $0xdead, done(%rip)
    lea m2p_req(%rip), %rdi
    mov $1, %esi
    lea done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMU_UPDATE * 32
    xor %edi, %edi
    test %rax, %rax
    sete %dil
    cmpl $1, done(%rip)
    sete %dl
    and %edx, %edi
    ret

/* m2p_hole_verdict: as m2p_fault_verdict, and RDX still the sentinel. */
m2p_hole_verdict:
    movabs $M2P_SENTINEL, %rax
    cmp %rax, %rdx
    je m2p_fault_verdict
    lea msg_m2p_loaded(%rip), %rdi
    call puts
    mov %rdx, %rax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts
    /* fall through: the verdict fails on the count or passes only if
     * the fault was right, so force a failure. */
    movq $99, m2p_pf_count(%rip)
/* m2p_fault_verdict: a verdict on the last m2p_fault: one #PF, error
 * code R8, CR2 = R14, RIP at the instruction (RBX = the name). A
 * failure prints what the handler saw. */
m2p_fault_verdict:
    xor %edi, %edi
    cmpq $1, m2p_pf_count(%rip)
    sete %dil
    cmp m2p_pf_ec(%rip), %r8
    sete %al
    and %eax, %edi
    cmp m2p_pf_cr2(%rip), %r14
    sete %al
    and %eax, %edi
    mov m2p_pf_expect(%rip), %rax
    cmp m2p_pf_rip(%rip), %rax
    sete %al
    and %eax, %edi
    movq $0, m2p_pf_resume(%rip)
    test %edi, %edi
    jnz 1f
    lea msg_m2p_pf(%rip), %rdi
    call puts
    mov m2p_pf_count(%rip), %rax
    call puthex
    lea msg_m2p_pf_ec(%rip), %rdi
    call puts
    mov m2p_pf_ec(%rip), %rax
    call puthex
    lea msg_m2p_pf_cr2(%rip), %rdi
    call puts
    mov m2p_pf_cr2(%rip), %rax
    call puthex
    lea msg_m2p_pf_rip(%rip), %rdi
    call puts
    mov m2p_pf_rip(%rip), %rax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts
    xor %edi, %edi
1:  mov m2p_pf_ec(%rip), %rsi
    jmp verdict

/* #PF: RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS. Records the fault
 * (CR2 from vcpu_info) and resumes where m2p_fault armed it, once; any
 * other #PF is a failure that ends the domain. */
m2p_pf_handler:
    mov 16(%rsp), %rcx
    mov %rcx, m2p_pf_ec(%rip)
    mov 24(%rsp), %rcx
    mov %rcx, m2p_pf_rip(%rip)
    incq m2p_pf_count(%rip)
    mov m2p_shinfo(%rip), %rcx
    mov VCPU0_CR2(%rcx), %rcx
    mov %rcx, m2p_pf_cr2(%rip)
    mov m2p_pf_resume(%rip), %rcx
    test %rcx, %rcx
    jz 1f
    mov %rcx, 24(%rsp)
    movq $0, m2p_pf_resume(%rip)
    pop %rcx
    pop %r11
    add $8, %rsp                     /* the error code */
    pushq $0
    jmp hypercall_page + HC_IRET * 32
1:  lea msg_m2p_unexpected(%rip), %rdi
    call puts
    mov m2p_pf_rip(%rip), %rax
    call puthex
    lea msg_m2p_pf_cr2(%rip), %rdi
    call puts
    mov m2p_pf_cr2(%rip), %rax
    call puthex
    lea msg_m2p_pf_ec(%rip), %rdi
    call puts
    mov m2p_pf_ec(%rip), %rax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts
    movl $SHUTDOWN_POWEROFF, shutdown_reason(%rip)
    mov $SCHEDOP_SHUTDOWN, %edi
    lea shutdown_reason(%rip), %rsi
    call hypercall_page + HC_SCHED_OP * 32
2:  pause
    jmp 2b

    .data
name_m2p_tt:    .asciz "set_trap_table adds #PF for the M2P checks"
name_m2p_shinfo: .asciz "M2P checks: shared_info mapped for CR2"
name_m2p_mapping: .asciz "XENMEM_machphys_mapping: M2P at 0xffff808000000000-0xffff80c000000000, max_mfn 2^35-1"
name_m2p_slot:  .asciz "L4 slot of the M2P present and read-only in our L4"
name_m2p_nomap: .asciz "update_va_mapping of the M2P's table frame is -EPERM"
name_m2p_si:    .asciz "M2P[start_info's frame] is its pfn"
name_m2p_l4:    .asciz "M2P[our L4's frame] is its pfn"
name_m2p_last:  .asciz "M2P[nr_pages - 1] is its pfn"
name_m2p_before_hole: .asciz "M2P: the last entry before the hole reads without a fault"
name_m2p_write: .asciz "M2P store: #PF with error code P|W, CR2 and RIP at the store"
name_m2p_write_kept: .asciz "M2P store refused: the entry is unchanged"
name_m2p_hole:  .asciz "M2P hole: a load past the domain's entries is a not-present #PF, stepped over"
name_m2p_hole_end: .asciz "M2P hole: a load of the area's last entry is a not-present #PF"
name_m2p_update: .asciz "MMU_MACHPHYS_UPDATE: M2P[frame A] reads the new pfn"
name_m2p_update_back: .asciz "MMU_MACHPHYS_UPDATE: M2P[frame A] reads its pfn again"
name_m2p_update_bad: .asciz "MMU_MACHPHYS_UPDATE of a frame beyond nr_pages is -EINVAL, none done"
name_m2p_tt_back: .asciz "set_trap_table: M2P #PF handler cleared, #BP #UD #GP again"
msg_m2p_pf:     .asciz "kxen-pv-guest: M2P #PF count="
msg_m2p_pf_ec:  .asciz " ec="
msg_m2p_pf_cr2: .asciz " cr2="
msg_m2p_pf_rip: .asciz " rip="
msg_m2p_loaded: .asciz "kxen-pv-guest: M2P hole load returned "
msg_m2p_unexpected: .asciz "kxen-pv-guest: FAIL unexpected #PF in the M2P checks at rip="
    .balign 8
m2p_shinfo:     .quad 0
m2p_base:       .quad 0
m2p_mapping:    .quad 0, 0, 0
m2p_req:        .quad 0, 0
m2p_pf_resume:  .quad 0
m2p_pf_expect:  .quad 0
m2p_pf_count:   .quad 0
m2p_pf_ec:      .quad 0
m2p_pf_cr2:     .quad 0
m2p_pf_rip:     .quad 0
m2p_trap_table:
    .byte 14, 0
    .word 0xe033
    .long 0
    .quad m2p_pf_handler
    .quad 0, 0
    .text
