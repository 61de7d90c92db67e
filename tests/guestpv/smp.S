/* The PV test kernel's SMP checks, included by pv.S and run after
 * user.S's (it needs shinfo_va, ipi_port and the event callback there).
 * With one vCPU: VCPUOP_initialise of vCPU 1 is -ENOENT. With two:
 *   VCPUOP_initialise's refusals (-ENOENT, -EFAULT, -EINVAL for a
 *   non-canonical RIP and for a writable frame as the L4), VCPUOP_up of
 *   an uninitialised vCPU (-EINVAL), then vCPU 1 initialised from a
 *   vcpu_guest_context (again: -EEXIST) and brought up; it enables its
 *   events and blocks; vCPU 0 sends it an IPI, its event callback sends
 *   one back, which vCPU 0's callback receives; vCPU 1 is taken down. */
    .set HC_VCPU_OP, 24
    .set VCPUOP_INITIALISE, 0
    .set VCPUOP_UP, 1
    .set VCPUOP_DOWN, 2
    .set VCPUOP_IS_UP, 3
    .set ENOENT, 2
    .set EEXIST, 17
    .set CTX_FLAGS, 512
    .set CTX_RIP, 520 + 128
    .set CTX_RSP, 520 + 152
    .set CTX_KERNEL_SP, 4976
    .set CTX_CR3, 4984 + 24
    .set CTX_EVENT_CALLBACK, 5112
    .set VGCF_IN_KERNEL, 4
    .set SMP_WAIT_CYCLES, 20000000000

    /* vcpu_op CMD, VCPU, ARG register-loading helper. */
    .macro vcpu_op cmd, vcpu, arg
    mov $\cmd, %edi
    mov $\vcpu, %esi
    \arg
    call hypercall_page + HC_VCPU_OP * 32
    .endm

    .text
smp_checks:
    push %r12
    push %r13
    push %r14
    /* One vCPU or two? VCPUOP_is_up of vCPU 1 tells. */
    vcpu_op VCPUOP_IS_UP, 1, "xor %edx, %edx"
    cmp $-ENOENT, %rax
    jne 1f
    vcpu_op VCPUOP_INITIALISE, 1, "lea ap_ctx(%rip), %rdx"
    expect_rax -ENOENT, name_smp_single
    jmp smp_done
1:  expect_rax 0, name_smp_is_down

    /* The context: kernel mode at ap_entry on ap_stack, our L4, the
     * event callback; no trap handlers. */
    lea ap_ctx(%rip), %rdi
    movq $VGCF_IN_KERNEL, CTX_FLAGS(%rdi)
    lea ap_entry(%rip), %rax
    mov %rax, CTX_RIP(%rdi)
    lea ap_stack_top(%rip), %rax
    mov %rax, CTX_RSP(%rdi)
    mov %rax, CTX_KERNEL_SP(%rdi)
    lea ap_event_callback(%rip), %rax
    mov %rax, CTX_EVENT_CALLBACK(%rdi)
    mov SI_PT_BASE(%r15), %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    mov %rax, CTX_CR3(%rdi)

    vcpu_op VCPUOP_INITIALISE, 40, "lea ap_ctx(%rip), %rdx"
    expect_rax -ENOENT, name_smp_enoent
    vcpu_op VCPUOP_UP, 1, "xor %edx, %edx"
    expect_rax -EINVAL, name_smp_up_uninit
    vcpu_op VCPUOP_INITIALISE, 1, "mov $0x1000, %edx"
    expect_rax -EFAULT, name_smp_efault
    /* A non-canonical RIP. */
    lea ap_ctx(%rip), %rdi
    movabs $0x1000000000000000, %rax
    xchg %rax, CTX_RIP(%rdi)
    mov %rax, %r12
    vcpu_op VCPUOP_INITIALISE, 1, "lea ap_ctx(%rip), %rdx"
    lea ap_ctx(%rip), %rdi
    mov %r12, CTX_RIP(%rdi)
    expect_rax -EINVAL, name_smp_noncanon
    /* start_info's frame, mapped writable, as the L4. */
    mov %r15, %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    lea ap_ctx(%rip), %rdi
    xchg %rax, CTX_CR3(%rdi)
    mov %rax, %r12
    vcpu_op VCPUOP_INITIALISE, 1, "lea ap_ctx(%rip), %rdx"
    lea ap_ctx(%rip), %rdi
    mov %r12, CTX_CR3(%rdi)
    expect_rax -EINVAL, name_smp_badl4

    vcpu_op VCPUOP_INITIALISE, 1, "lea ap_ctx(%rip), %rdx"
    expect_rax 0, name_smp_init
    vcpu_op VCPUOP_INITIALISE, 1, "lea ap_ctx(%rip), %rdx"
    expect_rax -EEXIST, name_smp_eexist

    /* An IPI channel to vCPU 1. */
    movl $1, evt_req(%rip)
    mov $EVTCHNOP_BIND_IPI, %edi
    lea evt_req(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    mov %rax, %r13
    mov evt_req+4(%rip), %eax
    mov %eax, ap_port(%rip)
    mov %eax, evt_port(%rip)
    mov $EVTCHNOP_UNMASK, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    or %rax, %r13
    vcpu_op VCPUOP_UP, 1, "xor %edx, %edx"
    or %rax, %r13
    vcpu_op VCPUOP_IS_UP, 1, "xor %edx, %edx"
    cmp $1, %rax
    je 2f
    or $1, %r13
2:  mov %r13, %rax
    expect_rax 0, name_smp_up

    /* vCPU 1 says it runs. */
    rdtsc64 %r14
3:  cmpq $0, ap_alive(%rip)
    jne 4f
    pause
    rdtsc64 %rax
    sub %r14, %rax
    mov $SMP_WAIT_CYCLES, %rcx
    cmp %rcx, %rax
    jb 3b
4:  mov ap_alive(%rip), %rax
    expect_rax 1, name_smp_alive

    /* Ping: vCPU 0 -> vCPU 1; pong: vCPU 1's callback -> vCPU 0's. */
    movq $0, ev_ports(%rip)
    mov shinfo_va(%rip), %rcx
    movb $0, 1(%rcx)
    mov ap_port(%rip), %eax
    mov %eax, evt_port(%rip)
    mov $EVTCHNOP_SEND, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    mov %rax, %r13
    rdtsc64 %r14
5:  mov ipi_port(%rip), %ecx
    mov ev_ports(%rip), %rax
    bt %rcx, %rax
    jc 6f
    pause
    rdtsc64 %rax
    sub %r14, %rax
    mov $SMP_WAIT_CYCLES, %rcx
    cmp %rcx, %rax
    jb 5b
6:  mov shinfo_va(%rip), %rcx
    movb $1, 1(%rcx)
    mov ipi_port(%rip), %ecx
    mov ev_ports(%rip), %rax
    bt %rcx, %rax
    setc %al
    cmpq $1, ap_ipi_count(%rip)
    sete %dl
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    mov ap_ipi_count(%rip), %rsi
    lea name_smp_ipi(%rip), %rbx
    call verdict

    vcpu_op VCPUOP_DOWN, 1, "xor %edx, %edx"
    mov %rax, %r13
    vcpu_op VCPUOP_IS_UP, 1, "xor %edx, %edx"
    or %r13, %rax
    expect_rax 0, name_smp_down
smp_done:
    pop %r14
    pop %r13
    pop %r12
    ret

/* vCPU 1: enable its events, say it runs, and block for them. */
ap_entry:
    mov shinfo_va(%rip), %rcx
    movb $0, 64 + 1(%rcx)
    movq $1, ap_alive(%rip)
1:  mov $SCHEDOP_BLOCK, %edi
    xor %esi, %esi
    call hypercall_page + HC_SCHED_OP * 32
    jmp 1b

/* vCPU 1's event callback: take its port, count it, IPI vCPU 0 back. */
ap_event_callback:
    push %rax
    push %rdx
    push %rdi
    push %rsi
    mov shinfo_va(%rip), %rdx
    movb $0, 64(%rdx)
    movq $0, 64 + 8(%rdx)
    mov ap_port(%rip), %eax
    lock btr %rax, 2048(%rdx)
    incq ap_ipi_count(%rip)
    mov ipi_port(%rip), %eax
    mov %eax, ap_send_port(%rip)
    mov $EVTCHNOP_SEND, %edi
    lea ap_send_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    pop %rsi
    pop %rdi
    pop %rdx
    pop %rax
    pop %rcx
    pop %r11
    pushq $0
    jmp hypercall_page + HC_IRET * 32

    .data
    .balign 8
ap_alive:     .quad 0
ap_ipi_count: .quad 0
ap_port:      .long 0
ap_send_port: .long 0
ap_ctx:       .fill 5168, 1, 0
name_smp_single: .asciz "one vCPU: VCPUOP_initialise of vCPU 1 is -ENOENT"
name_smp_is_down: .asciz "VCPUOP_is_up of vCPU 1 before its start is 0"
name_smp_enoent: .asciz "VCPUOP_initialise of a vCPU the domain lacks is -ENOENT"
name_smp_up_uninit: .asciz "VCPUOP_up of an uninitialised vCPU is -EINVAL"
name_smp_efault: .asciz "VCPUOP_initialise with an unmapped context is -EFAULT"
name_smp_noncanon: .asciz "VCPUOP_initialise with a non-canonical RIP is -EINVAL"
name_smp_badl4: .asciz "VCPUOP_initialise with a writable frame as its L4 is -EINVAL"
name_smp_init: .asciz "VCPUOP_initialise of vCPU 1"
name_smp_eexist: .asciz "VCPUOP_initialise of vCPU 1 again is -EEXIST"
name_smp_up:  .asciz "IPI channel to vCPU 1, VCPUOP_up, VCPUOP_is_up is 1"
name_smp_alive: .asciz "vCPU 1 runs its kernel entry"
name_smp_ipi: .asciz "2 vCPUs exchange IPIs through their event callbacks"
name_smp_down: .asciz "VCPUOP_down of vCPU 1, VCPUOP_is_up is 0"
    .balign 16
ap_stack:     .fill 4096, 1, 0
ap_stack_top:
    .text
