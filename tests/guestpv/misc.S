/* The PV test kernel's checks of what a stock Linux kernel asks for at
 * boot, included by pv.S and run last (it reuses user.S's window VA,
 * user L1 and event channel):
 *   XENVER_get_features: the PV MMU's features, no translated physmap;
 *   vm_assist of a PV type (0) and of an unknown one (-EINVAL);
 *   vcpu_info's clock published from the start (tsc_to_system_mul);
 *   PHYSDEVOP_set_iopl(1): port I/O is emulated (reads ~0, writes
 *   dropped) instead of #GP; an IOPL above 3 is -EINVAL;
 *   get/set_debugreg and their refusals;
 *   fpu_taskswitch: CR0.TS as `mov %cr0` reads it;
 *   writable page tables: a direct write to an L1 entry (mapped
 *   read-only) is emulated; a bad entry gets the #PF, unchanged;
 *   VCPUOP_register_vcpu_info: events reach the callback with vcpu_info
 *   moved into the kernel's own page. */
    .set XENVER_GET_FEATURES, 6
    .set XENFEAT_AUTO_TRANSLATED, 2
    .set XENFEAT_PRESERVE_AD, 5
    .set XENFEAT_MAP_AVAIL_BITS, 7
    .set HC_VM_ASSIST, 21
    .set HC_PHYSDEV_OP, 33
    .set PHYSDEVOP_SET_IOPL, 6
    .set HC_SET_DEBUGREG, 8
    .set HC_GET_DEBUGREG, 9
    .set HC_FPU_TASKSWITCH, 5
    .set VCPUOP_REGISTER_VCPU_INFO, 10
    .set EPERM, 1

    .text
misc_checks:
    push %r12
    push %r13
    /* Features. */
    movl $0, feat_info(%rip)
    mov $XENVER_GET_FEATURES, %edi
    lea feat_info(%rip), %rsi
    call hypercall_page + HC_XEN_VERSION * 32
    mov %rax, %r13
    mov feat_info+4(%rip), %esi
    bt $XENFEAT_PRESERVE_AD, %esi
    setc %al
    bt $XENFEAT_MAP_AVAIL_BITS, %esi
    setc %dl
    and %dl, %al
    bt $XENFEAT_AUTO_TRANSLATED, %esi
    setnc %dl
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_features(%rip), %rbx
    call verdict

    /* vm_assist: pae_extended_cr3 (3) is a PV type; 6 is no type. */
    xor %edi, %edi
    mov $3, %esi
    call hypercall_page + HC_VM_ASSIST * 32
    expect_rax 0, name_vmassist
    xor %edi, %edi
    mov $6, %esi
    call hypercall_page + HC_VM_ASSIST * 32
    expect_rax -EINVAL, name_vmassist_bad

    /* The clock: vcpu_info.time.tsc_to_system_mul is set. */
    mov shinfo_va(%rip), %rcx
    mov 32 + 24(%rcx), %esi
    test %esi, %esi
    setnz %al
    movzbl %al, %edi
    lea name_clock(%rip), %rbx
    call verdict

    /* IOPL 1: port I/O is emulated for the kernel, no #GP. */
    movl $5, iopl_req(%rip)
    mov $PHYSDEVOP_SET_IOPL, %edi
    lea iopl_req(%rip), %rsi
    call hypercall_page + HC_PHYSDEV_OP * 32
    expect_rax -EINVAL, name_iopl_bad
    movl $1, iopl_req(%rip)
    mov $PHYSDEVOP_SET_IOPL, %edi
    lea iopl_req(%rip), %rsi
    call hypercall_page + HC_PHYSDEV_OP * 32
    mov %rax, %r13
    mov gp_count(%rip), %r12
    xor %eax, %eax
    in $0x71, %al
    movzbl %al, %esi
    out %al, $0x80
    cmp $0xff, %esi
    sete %al
    cmp gp_count(%rip), %r12
    sete %dl
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_iopl(%rip), %rbx
    call verdict
    movl $0, iopl_req(%rip)
    mov $PHYSDEVOP_SET_IOPL, %edi
    lea iopl_req(%rip), %rsi
    call hypercall_page + HC_PHYSDEV_OP * 32

    /* Debug registers. */
    xor %edi, %edi
    lea misc_checks(%rip), %rsi
    call hypercall_page + HC_SET_DEBUGREG * 32
    mov %rax, %r13
    xor %edi, %edi
    call hypercall_page + HC_GET_DEBUGREG * 32
    lea misc_checks(%rip), %rcx
    cmp %rcx, %rax
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_dr0(%rip), %rbx
    call verdict
    mov $1, %edi
    movabs $HYPERVISOR_HOLE, %rsi
    call hypercall_page + HC_SET_DEBUGREG * 32
    expect_rax -EPERM, name_dr_hole
    mov $4, %edi
    call hypercall_page + HC_GET_DEBUGREG * 32
    expect_rax -EINVAL, name_dr4
    mov $7, %edi
    movabs $0x100000000, %rsi
    call hypercall_page + HC_SET_DEBUGREG * 32
    expect_rax -EINVAL, name_dr7

    /* fpu_taskswitch: TS in the CR0 the kernel reads. */
    mov $1, %edi
    call hypercall_page + HC_FPU_TASKSWITCH * 32
    mov %rax, %r13
    mov %cr0, %rax
    mov %rax, %r12
    xor %edi, %edi
    call hypercall_page + HC_FPU_TASKSWITCH * 32
    or %rax, %r13
    mov %cr0, %rax
    bt $3, %r12
    setc %dl
    bt $3, %rax
    setnc %al
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_fpu_ts(%rip), %rbx
    call verdict

    /* Writable page tables: the user L1, mapped read-only, written
     * directly (entry 3: the user's 0x403000). */
    mov window_va(%rip), %rdi
    mov u_l1(%rip), %rsi
    shl $12, %rsi
    or $1, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov %rax, %r13
    mov u_demand(%rip), %rax
    shl $12, %rax
    or $PTE_USER_RW, %rax
    mov window_va(%rip), %rcx
ptwr_ok_at:
    mov %rax, 24(%rcx)
    mov 24(%rcx), %rsi
    movabs $0x000ffffffffff001, %rdx
    and %rdx, %rsi
    mov u_demand(%rip), %rax
    shl $12, %rax
    or $1, %rax
    cmp %rax, %rsi
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_ptwr(%rip), %rbx
    call verdict
    /* A frame outside RAM: refused, the #PF is the kernel's, the entry
     * stays. */
    lea trap_table_misc(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    movq $0, misc_pf_count(%rip)
    movabs $0x10000000007, %rax
    mov window_va(%rip), %rcx
ptwr_bad_at:
    mov %rax, 24(%rcx)
    mov window_va(%rip), %rcx
    mov 24(%rcx), %rsi
    movabs $0x000ffffffffff001, %rdx
    and %rdx, %rsi
    mov u_demand(%rip), %rax
    shl $12, %rax
    or $1, %rax
    cmp %rax, %rsi
    sete %al
    cmpq $1, misc_pf_count(%rip)
    sete %dl
    and %dl, %al
    lea ptwr_bad_at(%rip), %rcx
    cmp misc_pf_rip(%rip), %rcx
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_ptwr_bad(%rip), %rbx
    call verdict
    lea trap_table_pf(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    mov window_va(%rip), %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32

    /* vcpu_info moved into our own page: events still reach us. */
    mov $VIRT_BASE, %rcx
    lea vi_page(%rip), %rax
    mov %rax, %r12
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, vi_req(%rip)
    movl $0, vi_req+8(%rip)
    mov %r12, vcpu0_info_va(%rip)
    mov $VCPUOP_REGISTER_VCPU_INFO, %edi
    xor %esi, %esi
    lea vi_req(%rip), %rdx
    call hypercall_page + HC_VCPU_OP * 32
    mov %rax, %r13
    movq $0, ev_count(%rip)
    movq $0, ev_ports(%rip)
    movb $0, 1(%r12)
    mov ipi_port(%rip), %eax
    mov %eax, evt_port(%rip)
    mov $EVTCHNOP_SEND, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    or %rax, %r13
    movb $1, 1(%r12)
    mov ev_ports(%rip), %rsi
    mov ipi_port(%rip), %ecx
    bt %rcx, %rsi
    setc %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_vcpu_info(%rip), %rbx
    call verdict
    pop %r13
    pop %r12
    ret

/* #PF for the refused page-table write: count it, step over the 4-byte
 * store. */
misc_pf_handler:
    mov 24(%rsp), %rcx
    mov %rcx, misc_pf_rip(%rip)
    incq misc_pf_count(%rip)
    addq $4, 24(%rsp)
    pop %rcx
    pop %r11
    add $8, %rsp
    pushq $0
    jmp hypercall_page + HC_IRET * 32

    .data
    .balign 8
feat_info:    .long 0, 0
iopl_req:     .long 0
              .long 0
vi_req:       .quad 0
              .long 0, 0
misc_pf_count: .quad 0
misc_pf_rip:  .quad 0
trap_table_misc:
    .byte 14, 0
    .word 0xe033
    .long 0
    .quad misc_pf_handler
    .quad 0, 0
name_features: .asciz "XENVER_get_features: PV MMU features, no translated physmap"
name_vmassist: .asciz "vm_assist of a PV type (pae_extended_cr3)"
name_vmassist_bad: .asciz "vm_assist of an unknown type is -EINVAL"
name_clock:   .asciz "vcpu_info's clock is published from the start"
name_iopl_bad: .asciz "PHYSDEVOP_set_iopl above 3 is -EINVAL"
name_iopl:    .asciz "PHYSDEVOP_set_iopl(1): in reads ~0 and out is dropped, no #GP"
name_dr0:     .asciz "set_debugreg(0) and get_debugreg(0) agree"
name_dr_hole: .asciz "set_debugreg to the hypervisor's range is -EPERM"
name_dr4:     .asciz "get_debugreg(4) is -EINVAL"
name_dr7:     .asciz "set_debugreg(7) with upper bits is -EINVAL"
name_fpu_ts:  .asciz "fpu_taskswitch sets and clears CR0.TS as mov %cr0 reads it"
name_ptwr:    .asciz "a direct write to an L1 entry is emulated (writable page tables)"
name_ptwr_bad: .asciz "a direct L1 write to a frame outside RAM gets the #PF, entry unchanged"
name_vcpu_info: .asciz "VCPUOP_register_vcpu_info: events reach the callback at the new vcpu_info"
    .balign 4096
vi_page:      .fill 4096, 1, 0
    .text
