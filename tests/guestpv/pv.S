/* A minimal classic 64-bit PV kernel for kxen's PV machine. Built by the
 * PV domain builder, it runs deprivileged at CPL3 from VIRT_BASE
 * 0xffffffff80000000 and makes its hypercalls through the HYPERCALL_PAGE
 * kxen fills. At entry it:
 *   checks RSI -> start_info with magic "xen-3.0-x86_64";
 *   prints hello with console_io (CONSOLEIO_write);
 *   prints CS and SS as `mov` reads them (PVM shows its own selectors);
 *   mmuext_op TLB_FLUSH_LOCAL (expect 0, done = 1);
 *   mmuext_op PIN_L4_TABLE of a frame beyond nr_pages (expect -EINVAL,
 *   done = 0);
 *   mmuext_op NEW_BASEPTR to its own L4 (expect 0; CR3 reloaded) and to
 *   start_info's writable frame (expect -EINVAL);
 *   mmuext_op with an unmapped op array (expect -EFAULT);
 *   update_va_mapping in the hypervisor's hole (expect -EINVAL);
 *   an unused hypercall number (expect -ENOSYS);
 *   remaps a spare VA V between two data frames A and B and reads
 *   through V after each change, which must see the new frame: with
 *   update_va_mapping(UVMF_INVLPG), mmu_update + mmuext_op INVLPG_LOCAL,
 *   update_va_mapping(UVMF_TLB_FLUSH), and after an unmap (val 0; V is
 *   not read while unmapped: with no trap table the fault would end the
 *   domain); then times UVM_CALLS update_va_mapping(UVMF_INVLPG) calls;
 *   times NULL_CALLS xen_version(XENVER_version) calls with rdtsc;
 *   set_trap_table with an unmapped array (expect -EFAULT), with a
 *   non-canonical handler (expect -EINVAL), then with handlers for #BP,
 *   #UD and #GP (expect 0); takes int3, ud2 and an `out` at CPL3 (#GP),
 *   each bounced Xen's way to its handler, which records the frame and
 *   returns with HYPERVISOR_iret (stepping past ud2/out); times
 *   TRAP_CALLS int3 round trips;
 * printing a PASS/FAIL line for each, then SCHEDOP_shutdown(poweroff). */
    .set HC_MMU_UPDATE, 1
    .set HC_CONSOLE_IO, 18
    .set HC_XEN_VERSION, 17
    .set HC_MMUEXT_OP, 26
    .set HC_UPDATE_VA_MAPPING, 14
    .set HC_SCHED_OP, 29
    .set HC_SET_TRAP_TABLE, 0
    .set HC_IRET, 23
    /* BENCH (kxen-bench's pv section): longer timing loops. */
.ifdef BENCH
    .set TRAP_CALLS, 2000
.else
    .set TRAP_CALLS, 200
.endif
    .set HC_UNUSED, 55
    .set CONSOLEIO_WRITE, 0
    .set SCHEDOP_SHUTDOWN, 2
    .set SHUTDOWN_POWEROFF, 0
    .set MMUEXT_PIN_L4_TABLE, 3
    .set MMUEXT_TLB_FLUSH_LOCAL, 6
    .set MMUEXT_NEW_BASEPTR, 5
    .set DOMID_SELF, 0x7ff0
    .set EINVAL, 22
    .set EFAULT, 14
    .set HYPERVISOR_HOLE, 0xffff800000000000
    .set ENOSYS, 38
    .set SI_NR_PAGES, 32             /* start_info.nr_pages */
    .set SI_PT_BASE, 88              /* start_info.pt_base */
    .set SI_NR_PT_FRAMES, 96         /* start_info.nr_pt_frames */
    .set MMU_NORMAL_PT_UPDATE, 0
    .set MMUEXT_INVLPG_LOCAL, 7
    .set UVMF_TLB_FLUSH, 1           /* | UVMF_LOCAL (0) */
    .set UVMF_INVLPG, 2              /* | UVMF_LOCAL (0) */
    .set PTE_P_RW, 3
    .set VALUE_A, 0xa0a0a0a0a0a0a0a1
    .set VALUE_B, 0xb0b0b0b0b0b0b0b2
    .set UVM_CALLS, 500
.ifdef BENCH
    .set NULL_CALLS, 5000
.else
    .set NULL_CALLS, 1000
.endif
    .set LINE_MAX, 200
    .set VIRT_BASE, 0xffffffff80000000

    .text
    .code64
    .globl _start
_start:
    mov %rsi, %r15                   /* start_info */
    mov %rsi, start_info_va(%rip)    /* for cons_ring_write */
    /* start_info's magic starts "xen-3.0-x86_64". */
    lea magic(%rip), %rdi
    mov %r15, %rsi
    mov $14, %ecx
    repe cmpsb
    lea name_magic(%rip), %rbx
    sete %al
    movzbl %al, %edi
    xor %esi, %esi
    call verdict

    lea msg_hello(%rip), %rdi
    call puts

    /* What `mov` reads of CS and SS at the PV kernel's CPL3. */
    lea msg_cs(%rip), %rdi
    call puts
    xor %eax, %eax
    mov %cs, %ax
    call puthex
    lea msg_ss(%rip), %rdi
    call puts
    xor %eax, %eax
    mov %ss, %ax
    call puthex
    lea msg_rpl(%rip), %rdi
    call puts
    xor %eax, %eax
    mov %cs, %ax
    and $3, %eax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts

    /* mmuext_op(TLB_FLUSH_LOCAL): 0, one op done. */
    movl $MMUEXT_TLB_FLUSH_LOCAL, op_cmd(%rip)
    movq $0, op_arg1(%rip)
    movl $0xdead, done(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    lea done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    mov %rax, %rsi
    cmpl $1, done(%rip)
    sete %dl
    test %rax, %rax
    sete %al
    and %dl, %al
    movzbl %al, %edi
    lea name_flush(%rip), %rbx
    call verdict

    /* mmuext_op(PIN_L4_TABLE, nr_pages + 16): -EINVAL, nothing done. */
    movl $MMUEXT_PIN_L4_TABLE, op_cmd(%rip)
    mov SI_NR_PAGES(%r15), %rax
    add $16, %rax
    mov %rax, op_arg1(%rip)
    movl $0xdead, done(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    lea done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    mov %rax, %rsi
    cmpl $0, done(%rip)
    sete %dl
    cmp $-EINVAL, %rax
    sete %al
    and %dl, %al
    movzbl %al, %edi
    lea name_badpin(%rip), %rbx
    call verdict

    /* NEW_BASEPTR to the L4 we run on (start_info.pt_base): 0, and
     * kxen-vmm reloads CR3 (the checks after this one run on it). */
    movl $MMUEXT_NEW_BASEPTR, op_cmd(%rip)
    mov SI_PT_BASE(%r15), %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, op_arg1(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    movzbl %al, %edi
    lea name_baseptr(%rip), %rbx
    call verdict

    /* NEW_BASEPTR to start_info's frame, which we map writable: a frame
     * mapped writable never becomes a page table, -EINVAL. */
    movl $MMUEXT_NEW_BASEPTR, op_cmd(%rip)
    mov %r15, %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, op_arg1(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    mov %rax, %rsi
    cmp $-EINVAL, %rax
    sete %al
    movzbl %al, %edi
    lea name_badbase(%rip), %rbx
    call verdict

    /* mmuext_op with its op array at an unmapped address: -EFAULT. */
    mov $0x1000, %edi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    mov %rax, %rsi
    cmp $-EFAULT, %rax
    sete %al
    movzbl %al, %edi
    lea name_efault(%rip), %rbx
    call verdict

    /* update_va_mapping inside the hypervisor's hole: -EINVAL. */
    mov $HYPERVISOR_HOLE, %rdi
    xor %esi, %esi
    xor %edx, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov %rax, %rsi
    cmp $-EINVAL, %rax
    sete %al
    movzbl %al, %edi
    lea name_hole(%rip), %rbx
    call verdict

    /* A hypercall number Xen does not have: -ENOSYS. */
    xor %edi, %edi
    call hypercall_page + HC_UNUSED * 32
    mov %rax, %rsi
    cmp $-ENOSYS, %rax
    sete %al
    movzbl %al, %edi
    lea name_enosys(%rip), %rbx
    call verdict

    /* Live remapping: a spare VA V (inside the bootstrap mapping's slack,
     * 16 pages past the boot stack, which follows the page tables) is
     * pointed at frame A, then B, ...; each read through V must return
     * the frame the call just installed, not what a stale TLB or shadow
     * entry still holds. */
    movabs $VALUE_A, %rax
    mov %rax, frame_a(%rip)
    movabs $VALUE_B, %rax
    mov %rax, frame_b(%rip)
    mov $VIRT_BASE, %rcx
    lea frame_a(%rip), %rax
    sub %rcx, %rax
    or $PTE_P_RW, %rax
    mov %rax, pte_a(%rip)
    lea frame_b(%rip), %rax
    sub %rcx, %rax
    or $PTE_P_RW, %rax
    mov %rax, pte_b(%rip)
    mov SI_NR_PT_FRAMES(%r15), %rax
    add $17, %rax
    shl $12, %rax
    add SI_PT_BASE(%r15), %rax
    mov %rax, %r12                   /* V */
    mov (%r12), %rax                 /* V's own frame, read once: cached */

    mov pte_a(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    movabs $VALUE_A, %r8
    lea name_uvm_a(%rip), %rbx
    call uvm_check
    /* V's L1 entry as the guest reads it (through its read-only mapping
     * of its page tables): what the PV MMU wrote, shown for diagnosis. */
    lea msg_l1e(%rip), %rdi
    call puts
    call l1_entry_ma
    mov $VIRT_BASE, %rcx
    mov (%rax,%rcx), %rax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts
    mov pte_b(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    movabs $VALUE_B, %r8
    lea name_uvm_b(%rip), %rbx
    call uvm_check

    mov pte_a(%rip), %rsi
    movabs $VALUE_A, %r8
    lea name_mmu_a(%rip), %rbx
    call mmu_update_check
    mov pte_b(%rip), %rsi
    movabs $VALUE_B, %r8
    lea name_mmu_b(%rip), %rbx
    call mmu_update_check

    mov pte_a(%rip), %rsi
    mov $UVMF_TLB_FLUSH, %edx
    movabs $VALUE_A, %r8
    lea name_full_a(%rip), %rbx
    call uvm_check
    mov pte_b(%rip), %rsi
    mov $UVMF_TLB_FLUSH, %edx
    movabs $VALUE_B, %r8
    lea name_full_b(%rip), %rbx
    call uvm_check

    /* Unmap V (not read while unmapped), then map A again. */
    mov %r12, %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    movzbl %al, %edi
    lea name_unmap(%rip), %rbx
    call verdict
    mov pte_a(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    movabs $VALUE_A, %r8
    lea name_remap(%rip), %rbx
    call uvm_check

    /* UVM_CALLS update_va_mapping(UVMF_INVLPG) calls, alternating B and
     * A, timed with rdtsc (what a flush costs on top of a hypercall). */
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    mov $UVM_CALLS, %r13d
1:  mov %r12, %rdi
    mov pte_b(%rip), %rsi
    test $1, %r13d
    jz 2f
    mov pte_a(%rip), %rsi
2:  mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    dec %r13d
    jnz 1b
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r14, %rdx
    mov %rdx, %r14
    lea msg_uvm_timing(%rip), %rdi
    call puts
    mov $UVM_CALLS, %eax
    call puthex
    lea msg_timing2(%rip), %rdi
    call puts
    mov %r14, %rax
    call puthex
    lea msg_timing3(%rip), %rdi
    call puts
    /* The loop ended on A (its last call, count 1, is odd): V reads A. */
    mov (%r12), %rsi
    movabs $VALUE_A, %rax
    cmp %rax, %rsi
    sete %al
    movzbl %al, %edi
    lea name_loop(%rip), %rbx
    call verdict

    /* NULL_CALLS null hypercalls (xen_version 0), timed with rdtsc. */
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    mov $NULL_CALLS, %r13d
1:  xor %edi, %edi
    xor %esi, %esi
    call hypercall_page + HC_XEN_VERSION * 32
    dec %r13d
    jnz 1b
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r14, %rdx
    mov %rdx, %r14
    lea msg_timing(%rip), %rdi
    call puts
    mov $NULL_CALLS, %eax
    call puthex
    lea msg_timing2(%rip), %rdi
    call puts
    mov %r14, %rax
    call puthex
    lea msg_timing3(%rip), %rdi
    call puts

    /* ---- Exceptions bounced to set_trap_table's handlers ---- */
    /* set_trap_table with its array at an unmapped address: -EFAULT. */
    mov $0x1000, %edi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov %rax, %rsi
    cmp $-EFAULT, %rax
    sete %al
    movzbl %al, %edi
    lea name_tt_efault(%rip), %rbx
    call verdict
    /* A non-canonical handler address: -EINVAL, as Xen's
     * do_set_trap_table answers. */
    lea trap_table_bad(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov %rax, %rsi
    cmp $-EINVAL, %rax
    sete %al
    movzbl %al, %edi
    lea name_tt_noncanon(%rip), %rbx
    call verdict
    /* Handlers for #BP, #UD and #GP: 0. */
    lea trap_table(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    movzbl %al, %edi
    lea name_tt_ok(%rip), %rbx
    call verdict
.ifdef UNHANDLED_TRAP
    /* Variant: #DE has no handler; the domain must crash here. */
    xor %ecx, %ecx
    div %ecx
    lea msg_after_de(%rip), %rdi
    call puts
.endif

    /* int3: the handler records its frame and returns with iret; RAX,
     * RCX, R11 and RSP come back as they were. */
    mov %rsp, %r13
    movabs $0x1234567890abcdef, %rax
    mov $0x5151, %ecx
    mov $0x7171, %r11d
    int3
bp_after:
    movabs $0x1234567890abcdef, %rdx
    cmp %rdx, %rax
    sete %al
    cmp $0x5151, %rcx
    sete %dl
    and %dl, %al
    cmp $0x7171, %r11
    sete %dl
    and %dl, %al
    cmp %r13, %rsp
    sete %dl
    and %dl, %al
    cmpq $1, bp_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    mov bp_count(%rip), %rsi
    lea name_bp_back(%rip), %rbx
    call verdict
    lea bp_after(%rip), %rax
    mov bp_rip(%rip), %rsi
    cmp %rax, %rsi
    sete %al
    movzbl %al, %edi
    lea name_bp_rip(%rip), %rbx
    call verdict
    /* Saved CS: kernel context (RPL 0) and vcpu_info's upcall mask (1,
     * as the builder left it) in bits 32-39; RFLAGS.IF = !mask = 0; the
     * interrupted RSP. */
    movabs $0x10000e030, %rax
    mov bp_cs(%rip), %rsi
    cmp %rax, %rsi
    sete %al
    testl $0x200, bp_rflags(%rip)
    setz %dl
    and %dl, %al
    cmp bp_rsp(%rip), %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_bp_frame(%rip), %rbx
    call verdict

    /* ud2: the handler records RIP (at the ud2) and steps past it. */
ud_at:
    ud2
    lea ud_at(%rip), %rax
    mov ud_rip(%rip), %rsi
    cmp %rax, %rsi
    sete %al
    cmpq $1, ud_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_ud(%rip), %rbx
    call verdict

    /* out at CPL3: #GP(0), error code in the frame; the handler steps
     * past the 2-byte instruction. */
gp_at:
    out %al, $0x80
    lea gp_at(%rip), %rax
    mov gp_rip(%rip), %rsi
    cmp %rax, %rsi
    sete %al
    cmpq $0, gp_ec(%rip)
    sete %dl
    and %dl, %al
    cmpq $1, gp_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_gp(%rip), %rbx
    call verdict

    /* TRAP_CALLS int3 round trips (bounce + iret), timed with rdtsc. */
    movq $0, bp_count(%rip)
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    mov $TRAP_CALLS, %r13d
1:  int3
    dec %r13d
    jnz 1b
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r14, %rdx
    mov %rdx, %r14
    lea msg_trap_timing(%rip), %rdi
    call puts
    mov bp_count(%rip), %rax
    call puthex
    lea msg_timing2(%rip), %rdi
    call puts
    mov %r14, %rax
    call puthex
    lea msg_timing3(%rip), %rdi
    call puts

    call emulate_checks
    call m2p_checks
    /* The vCPU's own PV state, events and guest user mode (user.S). */
    call user_checks
.ifdef SAVE_POINT
    /* Variant (pv_xl's save test): say so, then spin SAVE_POINT times at
     * native speed, a window in which the test pauses, saves and restores
     * the domain, with its trap table, callbacks, user tables and event
     * state all set up. Then the trap table registered before the save
     * must still bounce int3, and every check after this runs on the
     * restored domain. */
    lea msg_save_point(%rip), %rdi
    call puts
    movabs $SAVE_POINT, %rcx
1:  dec %rcx
    jnz 1b
    mov bp_count(%rip), %rax
    mov %rax, save_point_bp(%rip)
    int3
    mov bp_count(%rip), %rsi
    sub save_point_bp(%rip), %rsi
    cmp $1, %rsi
    sete %al
    movzbl %al, %edi
    lea name_save_point(%rip), %rbx
    call verdict
.endif
    /* A second vCPU, started with VCPUOP_initialise (smp.S). */
    call smp_checks
    /* The guest's own GDT (gdt.S). */
    call gdt_checks
    /* What a stock kernel asks for at boot (misc.S). */
    call misc_checks

    /* The summary line: checks passed and failed. */
    lea msg_summary(%rip), %rdi
    call puts
    mov checks_passed(%rip), %rax
    call puthex
    lea msg_summary2(%rip), %rdi
    call puts
    mov checks_failed(%rip), %rax
    call puthex
    lea msg_summary3(%rip), %rdi
    call puts
    lea msg_bye(%rip), %rdi
    call puts
    movl $SHUTDOWN_POWEROFF, shutdown_reason(%rip)
    mov $SCHEDOP_SHUTDOWN, %edi
    lea shutdown_reason(%rip), %rsi
    call hypercall_page + HC_SCHED_OP * 32
    /* Xen's shutdown does not return: the domain runs no further
     * instruction. Say so if it did (pv_boot fails on any FAIL line). */
    lea msg_shutdown_returned(%rip), %rdi
    call puts
2:  pause
    jmp 2b

/* Exception handlers, entered with Xen's bounce frame on the stack:
 * RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS. Each pops RCX and R11
 * (and the error code), pushes the iret flags word (0) and jumps to the
 * iret stub, which pushes RCX, R11 and RAX. */
bp_handler:
    mov 16(%rsp), %rcx
    mov %rcx, bp_rip(%rip)
    mov 24(%rsp), %rcx
    mov %rcx, bp_cs(%rip)
    mov 32(%rsp), %rcx
    mov %rcx, bp_rflags(%rip)
    mov 40(%rsp), %rcx
    mov %rcx, bp_rsp(%rip)
    incq bp_count(%rip)
    pop %rcx
    pop %r11
    pushq $0
    jmp hypercall_page + HC_IRET * 32
ud_handler:
    mov 16(%rsp), %rcx
    mov %rcx, ud_rip(%rip)
    incq ud_count(%rip)
    addq $2, 16(%rsp)                /* past the ud2 */
    pop %rcx
    pop %r11
    pushq $0
    jmp hypercall_page + HC_IRET * 32
gp_handler:
    mov 16(%rsp), %rcx
    mov %rcx, gp_ec(%rip)
    mov 24(%rsp), %rcx
    mov %rcx, gp_rip(%rip)
    incq gp_count(%rip)
    addq $2, 24(%rsp)                /* past the 2-byte out */
    pop %rcx
    pop %r11
    add $8, %rsp                     /* the error code */
    pushq $0
    jmp hypercall_page + HC_IRET * 32

/* uvm_check: update_va_mapping(V = R12, RSI = new entry, RDX = flags),
 * then read V: a pass if the call returned 0 and V reads R8. RBX = the
 * check's name. On failure it prints what V read (or the call's error). */
uvm_check:
    mov %r12, %rdi
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    jmp read_check

/* mmu_update_check: mmu_update(MMU_NORMAL_PT_UPDATE of V's L1 entry =
 * RSI), then mmuext_op INVLPG_LOCAL(V), then read V as uvm_check does. */
mmu_update_check:
    mov %rsi, mmu_req_val(%rip)
    call l1_entry_ma
    or $MMU_NORMAL_PT_UPDATE, %rax
    mov %rax, mmu_req_ptr(%rip)
    lea mmu_req_ptr(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMU_UPDATE * 32
    test %rax, %rax
    jnz read_check
    movl $MMUEXT_INVLPG_LOCAL, op_cmd(%rip)
    mov %r12, op_arg1(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    /* fall through */
read_check:
    mov %rax, %rsi
    test %rax, %rax
    jnz 1f
    mov (%r12), %rsi
1:  xor %edi, %edi
    cmp %r8, %rsi
    sete %dil
    jmp verdict

/* l1_entry_ma: RAX = the machine address of the L1 entry mapping V (R12),
 * found by walking our page tables from start_info.pt_base (each table
 * is read through the bootstrap mapping: identity P2M, pfn = va -
 * VIRT_BASE). */
l1_entry_ma:
    push %rcx
    push %rdx
    mov SI_PT_BASE(%r15), %rax
    mov $39, %ecx
1:  mov %r12, %rdx
    shr %cl, %rdx
    and $0x1ff, %edx
    mov (%rax,%rdx,8), %rax
    movabs $0x000ffffffffff000, %rdx
    and %rdx, %rax
    mov $VIRT_BASE, %rdx
    add %rdx, %rax
    sub $9, %ecx
    cmp $12, %ecx
    jne 1b
    mov %r12, %rdx
    shr $12, %rdx
    and $0x1ff, %edx
    lea (%rax,%rdx,8), %rax
    mov $VIRT_BASE, %rdx
    sub %rdx, %rax
    pop %rdx
    pop %rcx
    ret

/* verdict: EDI = 1 for a pass, RBX = the check's name, RSI = the value
 * the check saw (printed on failure). */
verdict:
    push %rsi
    test %edi, %edi
    jz 1f
    incq checks_passed(%rip)
    lea msg_pass(%rip), %rdi
    call puts
    mov %rbx, %rdi
    call puts
    lea msg_nl(%rip), %rdi
    call puts
    pop %rsi
    ret
1:  incq checks_failed(%rip)
    lea msg_fail(%rip), %rdi
    call puts
    mov %rbx, %rdi
    call puts
    lea msg_got(%rip), %rdi
    call puts
    pop %rax
    call puthex
    lea msg_nl(%rip), %rdi
    call puts
    ret

/* puts: the NUL-terminated string at RDI, gathered into a line and
 * written with console_io at each newline (one console_io per line, so
 * that the hypervisor's (dN) prefix starts each line once), and to the PV
 * console ring (cons_ring_write), which kxl console and kxend read. */
puts:
    push %rdi
    push %rsi
    push %rdx
    push %rcx
    mov %rdi, %rcx
    mov linelen(%rip), %rsi
1:  movzbl (%rcx), %edx
    test %edx, %edx
    jz 3f
    lea linebuf(%rip), %rdi
    mov %dl, (%rdi,%rsi)
    inc %rsi
    inc %rcx
    cmp $'\n', %edx
    je 2f
    cmp $LINE_MAX, %rsi
    jb 1b
2:  lea linebuf(%rip), %rdx
    call cons_ring_write
    mov $CONSOLEIO_WRITE, %edi
    call hypercall_page + HC_CONSOLE_IO * 32
    xor %esi, %esi
    jmp 1b
3:  mov %rsi, linelen(%rip)
    pop %rcx
    pop %rdx
    pop %rsi
    pop %rdi
    ret

/* ---- The PV console (the ring page named in start_info) ---- */
    .set HC_EVENT_CHANNEL_OP, 32
    .set EVTCHNOP_SEND, 4
    .set SI_CONSOLE_MFN, 72          /* start_info.console.domU.mfn */
    .set SI_CONSOLE_EVTCHN, 80       /* start_info.console.domU.evtchn */
    .set XENCONS_OUT, 0x400          /* struct xencons_interface.out */
    .set XENCONS_OUT_SIZE, 2048
    .set XENCONS_OUT_CONS, 0xc08
    .set XENCONS_OUT_PROD, 0xc0c
    .set CONS_WAIT_CYCLES, 0x100000000 /* about 1.5 s at 2-3 GHz */

/* cons_ring_write: the RSI bytes at RDX into the console ring's output
 * half, then EVTCHNOP_send on the console's event channel so the backend
 * reads them. The ring frame is mapped by the bootstrap mapping (identity
 * P2M: VIRT_BASE + mfn * 4096). A full ring gets a notification and is
 * waited on for at most CONS_WAIT_CYCLES; if the backend never makes
 * room, the ring is given up (console_io keeps every line) with a FAIL
 * line on console_io. Keeps every register. */
cons_ring_write:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    cmpb $0, cons_dead(%rip)
    jne 9f
    mov start_info_va(%rip), %r8
    mov SI_CONSOLE_MFN(%r8), %rax
    cmp SI_NR_PAGES(%r8), %rax       /* a frame outside our RAM: no ring */
    jae 9f
    shl $12, %rax
    mov $VIRT_BASE, %rcx
    add %rcx, %rax
    mov %rax, %r8                    /* the ring */
    mov %rdx, %rdi                   /* next byte */
    mov %rsi, %r10                   /* bytes left */
1:  test %r10, %r10
    jz 5f
    mov XENCONS_OUT_PROD(%r8), %r9d
    mov %r9d, %eax
    sub XENCONS_OUT_CONS(%r8), %eax
    cmp $XENCONS_OUT_SIZE, %eax
    jb 4f
    /* Full: wake the backend, then wait for it to consume. */
    call cons_notify
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    movabs $CONS_WAIT_CYCLES, %rsi
    add %rdx, %rsi                   /* deadline */
2:  pause
    mov XENCONS_OUT_PROD(%r8), %eax
    sub XENCONS_OUT_CONS(%r8), %eax
    cmp $XENCONS_OUT_SIZE, %eax
    jb 1b
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    cmp %rsi, %rdx
    jb 2b
    movb $1, cons_dead(%rip)
    mov $CONSOLEIO_WRITE, %edi
    mov $(msg_cons_full_end - msg_cons_full), %esi
    lea msg_cons_full(%rip), %rdx
    call hypercall_page + HC_CONSOLE_IO * 32
    jmp 9f
4:  mov %r9d, %eax
    and $(XENCONS_OUT_SIZE - 1), %eax
    movzbl (%rdi), %ecx
    mov %cl, XENCONS_OUT(%r8,%rax)
    /* x86 keeps stores in order: the byte is visible before the index. */
    inc %r9d
    mov %r9d, XENCONS_OUT_PROD(%r8)
    inc %rdi
    dec %r10
    jmp 1b
5:  call cons_notify
9:  pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* cons_notify: EVTCHNOP_send on start_info's console event channel.
 * Keeps every register but RAX. */
cons_notify:
    push %rdi
    push %rsi
    mov start_info_va(%rip), %rax
    mov SI_CONSOLE_EVTCHN(%rax), %eax
    mov %eax, cons_send_port(%rip)
    mov $EVTCHNOP_SEND, %edi
    lea cons_send_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    pop %rsi
    pop %rdi
    ret

/* puthex: RAX as 0x followed by 16 hex digits. */
puthex:
    push %rdi
    push %rcx
    push %rdx
    lea hexbuf+2(%rip), %rdi
    mov $16, %ecx
1:  rol $4, %rax
    mov %eax, %edx
    and $0xf, %edx
    cmp $10, %edx
    jb 2f
    add $('a' - '0' - 10), %edx
2:  add $'0', %edx
    mov %dl, (%rdi)
    inc %rdi
    dec %ecx
    jnz 1b
    lea hexbuf(%rip), %rdi
    call puts
    pop %rdx
    pop %rcx
    pop %rdi
    ret

    .include "emulate.S"
    .include "user.S"
    .include "smp.S"
    .include "grant.S"
    .include "gdt.S"
    .include "m2p.S"
    .include "misc.S"

    .data
magic:        .ascii "xen-3.0-x86_64"
msg_hello:    .asciz "kxen-pv-guest: hello from CPL3\n"
msg_cs:       .asciz "kxen-pv-guest: cs="
msg_ss:       .asciz " ss="
msg_rpl:      .asciz " cs.rpl="
msg_nl:       .asciz "\n"
msg_pass:     .asciz "kxen-pv-guest: PASS "
msg_fail:     .asciz "kxen-pv-guest: FAIL "
msg_got:      .asciz ": got "
msg_timing:   .asciz "kxen-pv-guest: null hypercalls: "
msg_timing2:  .asciz " calls in "
msg_timing3:  .asciz " TSC cycles\n"
msg_summary:  .asciz "kxen-pv-guest: summary: "
msg_summary2: .asciz " passed, "
msg_summary3: .asciz " failed\n"
msg_bye:      .asciz "kxen-pv-guest: done, powering off\n"
name_magic:   .asciz "start_info magic"
name_flush:   .asciz "mmuext_op TLB_FLUSH_LOCAL"
name_badpin:  .asciz "mmuext_op PIN_L4_TABLE beyond nr_pages is -EINVAL"
name_baseptr: .asciz "mmuext_op NEW_BASEPTR to our own L4"
name_badbase: .asciz "mmuext_op NEW_BASEPTR to a writable frame is -EINVAL"
name_efault:  .asciz "mmuext_op with an unmapped op array is -EFAULT"
name_hole:    .asciz "update_va_mapping in the hypervisor hole is -EINVAL"
name_enosys:  .asciz "unknown hypercall is -ENOSYS"
name_uvm_a:   .asciz "update_va_mapping INVLPG: V reads frame A"
name_uvm_b:   .asciz "update_va_mapping INVLPG: V reads frame B after A"
name_mmu_a:   .asciz "mmu_update + INVLPG_LOCAL: V reads frame A after B"
name_mmu_b:   .asciz "mmu_update + INVLPG_LOCAL: V reads frame B after A"
name_full_a:  .asciz "update_va_mapping TLB_FLUSH: V reads frame A after B"
name_full_b:  .asciz "update_va_mapping TLB_FLUSH: V reads frame B after A"
name_unmap:   .asciz "update_va_mapping unmaps V"
name_remap:   .asciz "update_va_mapping INVLPG: V reads frame A after the unmap"
name_loop:    .asciz "update_va_mapping loop: V reads frame A at its end"
msg_l1e:      .asciz "kxen-pv-guest: V's L1 entry after mapping A: "
msg_uvm_timing: .asciz "kxen-pv-guest: update_va_mapping INVLPG calls: "
msg_trap_timing: .asciz "kxen-pv-guest: int3 bounce+iret round trips: "
msg_after_de: .asciz "kxen-pv-guest: FAIL running after the #DE\n"
name_tt_efault: .asciz "set_trap_table with an unmapped array is -EFAULT"
name_tt_noncanon: .asciz "set_trap_table with a non-canonical handler is -EINVAL"
name_tt_ok:   .asciz "set_trap_table registers #BP #UD #GP"
name_bp_back: .asciz "int3 bounced and iret back: RAX RCX R11 RSP kept"
name_bp_rip:  .asciz "int3 frame: RIP after the int3"
name_bp_frame: .asciz "int3 frame: CS 0xe030 with upcall mask 1 in bits 32-39, IF clear, RSP"
name_ud:      .asciz "ud2 bounced: frame RIP at the ud2, handler stepped past it"
name_gp:      .asciz "out at CPL3 bounced as #GP: error code 0, RIP at the out"
    .balign 8
checks_passed: .quad 0
checks_failed: .quad 0
bp_count:     .quad 0
save_point_bp: .quad 0
msg_save_point: .asciz "kxen-pv-guest: at the save point\n"
name_save_point: .asciz "int3 still bounces after the save point"

bp_rip:       .quad 0
bp_cs:        .quad 0
bp_rflags:    .quad 0
bp_rsp:       .quad 0
ud_count:     .quad 0
ud_rip:       .quad 0
gp_count:     .quad 0
gp_rip:       .quad 0
gp_ec:        .quad 0xdead
    /* struct trap_info: u8 vector, u8 flags, u16 cs, u32 pad, u64 address. */
trap_table:
    .byte 3, 3
    .word 0xe033
    .long 0
    .quad bp_handler
    .byte 6, 0
    .word 0xe033
    .long 0
    .quad ud_handler
    .byte 13, 0
    .word 0xe033
    .long 0
    .quad gp_handler
    .quad 0, 0
trap_table_bad:
    .byte 6, 0
    .word 0xe033
    .long 0
    .quad 0x0000800000000000
    .quad 0, 0
hexbuf:       .asciz "0x0000000000000000"
    .balign 8
op_cmd:       .long 0
op_pad:       .long 0
op_arg1:      .quad 0
op_arg2:      .quad 0
done:         .long 0
shutdown_reason: .long 0
mmu_req_ptr:  .quad 0
mmu_req_val:  .quad 0
pte_a:        .quad 0
pte_b:        .quad 0
msg_shutdown_returned: .asciz "kxen-pv-guest: FAIL SCHEDOP_shutdown returned\n"
msg_cons_full: .ascii "kxen-pv-guest: FAIL the PV console ring stayed full; "
              .ascii "giving it up\n"
msg_cons_full_end:
    .balign 8
start_info_va: .quad 0
cons_send_port: .long 0              /* struct evtchn_send */
cons_dead:    .byte 0
    .balign 8
linelen:      .quad 0
linebuf:      .fill 256, 1, 0

    /* The page kxen fills with its hypercall stubs (HYPERCALL_PAGE). */
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc
    /* Frames A and B of the remapping checks. */
    .balign 4096
frame_a:
    .fill 4096, 1, 0
frame_b:
    .fill 4096, 1, 0
    /* Stack space of our own is not needed: the builder gives a boot
     * stack (RSP at entry). */

    .section .note.Xen, "a", @note
    .macro xen_note type, descsz
    .balign 4
    .long 4, \descsz, \type
    .asciz "Xen"
    .endm
    xen_note 6, 13          /* GUEST_OS */
    .asciz "kxen-pv-test"
    xen_note 5, 8           /* XEN_VERSION */
    .asciz "xen-3.0"
    xen_note 8, 8           /* LOADER */
    .asciz "generic"
    xen_note 3, 8           /* VIRT_BASE */
    .quad VIRT_BASE
    xen_note 4, 8           /* PADDR_OFFSET */
    .quad 0
    xen_note 1, 8           /* ENTRY */
    .quad _start
    xen_note 2, 8           /* HYPERCALL_PAGE */
    .quad hypercall_page
    xen_note 10, 24         /* FEATURES */
    .asciz "!writable_page_tables"
    .balign 4
