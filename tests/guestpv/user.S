/* The PV test kernel's second half, included by pv.S: the vCPU's own PV
 * state and guest user mode.
 *   maps shared_info with update_va_mapping (it reads vcpu_info);
 *   set_callbacks and CALLBACKOP_register (event, failsafe, syscall),
 *   their refusals (-EINVAL, -ENOSYS, -EFAULT), stack_switch;
 *   set_segment_base for GS (kernel) and FS, read back through %gs/%fs,
 *   and its refusals;
 *   multicall: xen_version + update_va_mapping + a nested multicall
 *   (-EINVAL in its slot), and an unmapped array (-EFAULT);
 *   events: an IPI channel to itself delivered through the event
 *   callback on the return of EVTCHNOP_send; VIRQ_TIMER with
 *   set_timer_op and SCHEDOP_block;
 *   the failsafe callback for an iret to a selector the CPU refuses;
 *   a user process in its own L4 (built with mmu_update, pinned, loaded
 *   with NEW_USER_BASEPTR, entered with iret): syscalls bounced to the
 *   syscall callback and returned with iret(VGCF_in_syscall), a page
 *   fault served by mapping a page on demand, and its death on a read
 *   of a kernel address (not mapped in its L4) and on a store to the
 *   hypervisor's hypercall transport;
 *   timings: user syscall round trips, user page faults bounced and
 *   returned, event upcalls, NEW_BASEPTR. */
    .set HC_STACK_SWITCH, 3
    .set HC_SET_CALLBACKS, 4
    .set HC_MULTICALL, 13
    .set HC_SET_TIMER_OP, 15
    .set HC_SET_SEGMENT_BASE, 25
    .set HC_CALLBACK_OP, 30
    .set HC_EVENT_CHANNEL_OP, 32
    .set CALLBACKOP_REGISTER, 0
    .set CALLBACKOP_UNREGISTER, 1
    .set CBT_EVENT, 0
    .set CBT_FAILSAFE, 1
    .set CBT_SYSCALL, 2
    .set CBF_MASK_EVENTS, 1
    .set SEGBASE_FS, 0
    .set SEGBASE_GS_KERNEL, 2
    .set MMUEXT_NEW_USER_BASEPTR, 15
    .set EVTCHNOP_BIND_VIRQ, 1
    .set EVTCHNOP_SEND, 4
    .set EVTCHNOP_BIND_IPI, 7
    .set EVTCHNOP_UNMASK, 9
    .set SCHEDOP_BLOCK, 1
    .set SCHEDOP_POLL, 3
    .set BLOCK_ROUNDS, 100
    .set SI_SHARED_INFO, 40
    .set VGCF_IN_SYSCALL, 0x100
    .set USER_CODE_VA, 0x400000
    .set USER_STACK_TOP, 0x402000
    .set USER_DEMAND_VA, 0x402000
    .set USER_PROBE_VA, 0x500000
    .set PTE_USER_RW, 7
    .set PTE_USER_RO, 5
    .set SYS_REPORT, 1
    .set SYS_EXIT, 2
    .set SYS_NOP, 3
    /* BENCH (kxen-bench's pv section): longer timing loops. */
.ifdef BENCH
    .set USER_CALLS, 2000
    .set PF_CALLS, 2000
    .set EV_CALLS, 2000
    .set BASEPTR_CALLS, 2000
.else
    .set USER_CALLS, 200
    .set PF_CALLS, 200
    .set EV_CALLS, 200
    .set BASEPTR_CALLS, 200
.endif
    .set HV_TRANSPORT_VA, 0xffff878000000000
    .set GS_MAGIC, 0x6565656565656565
    .set FS_MAGIC, 0x4646464646464646

    /* expect_rax VALUE NAME: a verdict on RAX == VALUE. */
    .macro expect_rax value, name
    mov %rax, %rsi
    cmp $\value, %rax
    sete %al
    movzbl %al, %edi
    lea \name(%rip), %rbx
    call verdict
    .endm

    /* timing NAME, COUNT, CYCLES-REGISTER: one timing line. */
    .macro timing_line msg, count, cycles
    lea \msg(%rip), %rdi
    call puts
    mov $\count, %eax
    call puthex
    lea msg_timing2(%rip), %rdi
    call puts
    mov \cycles, %rax
    call puthex
    lea msg_timing3(%rip), %rdi
    call puts
    .endm

    .macro rdtsc64 reg
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, \reg
    .endm

    .text
user_checks:
    push %r12
    push %r13
    push %r14
    push %r15
    /* Two spare VAs after V in the bootstrap slack: shared_info, and a
     * window to write the user program through. */
    mov SI_NR_PT_FRAMES(%r15), %rax
    add $18, %rax
    shl $12, %rax
    add SI_PT_BASE(%r15), %rax
    mov %rax, shinfo_va(%rip)
    mov %rax, vcpu0_info_va(%rip)
    add $4096, %rax
    mov %rax, window_va(%rip)

    /* shared_info, mapped writable like any data page; vCPU 0's upcall
     * mask reads 1, as the builder left it. */
    mov shinfo_va(%rip), %rdi
    mov SI_SHARED_INFO(%r15), %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov %rax, %rsi
    mov shinfo_va(%rip), %rcx
    movzbl 1(%rcx), %edx
    test %rax, %rax
    sete %al
    cmp $1, %edx
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_shinfo(%rip), %rbx
    call verdict

    /* ---- callbacks ---- */
    lea event_callback(%rip), %rdi
    lea failsafe_callback(%rip), %rsi
    lea syscall_callback(%rip), %rdx
    call hypercall_page + HC_SET_CALLBACKS * 32
    expect_rax 0, name_setcb
    /* The syscall and failsafe callbacks again, masking events. */
    movw $CBT_SYSCALL, cb_type(%rip)
    movw $CBF_MASK_EVENTS, cb_flags(%rip)
    lea syscall_callback(%rip), %rax
    mov %rax, cb_addr(%rip)
    mov $CALLBACKOP_REGISTER, %edi
    lea cb_type(%rip), %rsi
    call hypercall_page + HC_CALLBACK_OP * 32
    mov %rax, %r13
    movw $CBT_FAILSAFE, cb_type(%rip)
    lea failsafe_callback(%rip), %rax
    mov %rax, cb_addr(%rip)
    mov $CALLBACKOP_REGISTER, %edi
    lea cb_type(%rip), %rsi
    call hypercall_page + HC_CALLBACK_OP * 32
    or %r13, %rax
    expect_rax 0, name_cbreg
    /* A non-canonical callback: -EINVAL. */
    movw $CBT_EVENT, cb_type(%rip)
    movw $0, cb_flags(%rip)
    movabs $0x0000800000000000, %rax
    mov %rax, cb_addr(%rip)
    mov $CALLBACKOP_REGISTER, %edi
    lea cb_type(%rip), %rsi
    call hypercall_page + HC_CALLBACK_OP * 32
    expect_rax -EINVAL, name_cb_noncanon
    /* An unknown callback type: -ENOSYS. */
    movw $99, cb_type(%rip)
    lea event_callback(%rip), %rax
    mov %rax, cb_addr(%rip)
    mov $CALLBACKOP_REGISTER, %edi
    lea cb_type(%rip), %rsi
    call hypercall_page + HC_CALLBACK_OP * 32
    expect_rax -ENOSYS, name_cb_type
    /* The event callback cannot be unregistered: -EINVAL. */
    movw $CBT_EVENT, cb_unreg(%rip)
    mov $CALLBACKOP_UNREGISTER, %edi
    lea cb_unreg(%rip), %rsi
    call hypercall_page + HC_CALLBACK_OP * 32
    expect_rax -EINVAL, name_cb_unreg
    /* Its argument unmapped: -EFAULT. */
    mov $CALLBACKOP_REGISTER, %edi
    mov $0x1000, %esi
    call hypercall_page + HC_CALLBACK_OP * 32
    expect_rax -EFAULT, name_cb_efault

    /* The kernel stack for bounces from user mode. */
    mov $0xe02b, %edi
    lea kstack_top(%rip), %rsi
    call hypercall_page + HC_STACK_SWITCH * 32
    expect_rax 0, name_stack_switch

    /* #PF joins the trap table (set_trap_table adds to it). */
    lea trap_table_pf(%rip), %rdi
    call hypercall_page + HC_SET_TRAP_TABLE * 32
    expect_rax 0, name_tt_pf

    /* ---- segment bases ---- */
    movabs $GS_MAGIC, %rax
    mov %rax, gs_area+8(%rip)
    movabs $FS_MAGIC, %rax
    mov %rax, fs_area+8(%rip)
    mov $SEGBASE_GS_KERNEL, %edi
    lea gs_area(%rip), %rsi
    call hypercall_page + HC_SET_SEGMENT_BASE * 32
    mov %rax, %r13
    mov $SEGBASE_FS, %edi
    lea fs_area(%rip), %rsi
    call hypercall_page + HC_SET_SEGMENT_BASE * 32
    or %rax, %r13
    mov %gs:8, %rsi
    movabs $GS_MAGIC, %rax
    cmp %rax, %rsi
    sete %al
    mov %fs:8, %rdx
    movabs $FS_MAGIC, %rcx
    cmp %rcx, %rdx
    sete %dl
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_segbase(%rip), %rbx
    call verdict
    mov $9, %edi
    xor %esi, %esi
    call hypercall_page + HC_SET_SEGMENT_BASE * 32
    expect_rax -EINVAL, name_segbase_which
    mov $SEGBASE_FS, %edi
    movabs $0x0000800000000000, %rsi
    call hypercall_page + HC_SET_SEGMENT_BASE * 32
    expect_rax -EINVAL, name_segbase_noncanon

    /* ---- multicall ---- */
    lea mc_entries(%rip), %rdi
    movq $HC_XEN_VERSION, 0(%rdi)
    movq $0, 16(%rdi)
    movq $HC_UPDATE_VA_MAPPING, 64(%rdi)
    mov %r12, 80(%rdi)
    mov pte_b(%rip), %rax
    mov %rax, 88(%rdi)
    movq $UVMF_INVLPG, 96(%rdi)
    movq $HC_MULTICALL, 128(%rdi)
    movq $0xdead, 136(%rdi)
    mov $3, %esi
    call hypercall_page + HC_MULTICALL * 32
    mov %rax, %rsi
    test %rax, %rax
    sete %al
    cmpq $0, mc_entries+8(%rip)
    setg %dl
    and %dl, %al
    cmpq $0, mc_entries+72(%rip)
    sete %dl
    and %dl, %al
    cmpq $-EINVAL, mc_entries+136(%rip)
    sete %dl
    and %dl, %al
    movabs $VALUE_B, %rcx
    cmp (%r12), %rcx
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_multicall(%rip), %rbx
    call verdict
    mov $0x1000, %edi
    mov $1, %esi
    call hypercall_page + HC_MULTICALL * 32
    expect_rax -EFAULT, name_multicall_efault

    /* ---- events ---- */
    /* An IPI channel to ourselves: bound, unmasked; with the upcall mask
     * clear, EVTCHNOP_send's return delivers it to the event callback. */
    movl $0, evt_req(%rip)
    mov $EVTCHNOP_BIND_IPI, %edi
    lea evt_req(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    mov %rax, %r13
    mov evt_req+4(%rip), %eax
    mov %eax, ipi_port(%rip)
    mov %eax, evt_port(%rip)
    mov $EVTCHNOP_UNMASK, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    or %r13, %rax
    expect_rax 0, name_bind_ipi
    movq $0, ev_count(%rip)
    movq $0, ev_ports(%rip)
    mov shinfo_va(%rip), %rcx
    movb $0, 1(%rcx)
    mov $EVTCHNOP_SEND, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    mov %rax, %r13
    mov shinfo_va(%rip), %rcx
    movb $1, 1(%rcx)
    mov ev_ports(%rip), %rsi
    mov ipi_port(%rip), %ecx
    bt %rcx, %rsi
    setc %al
    /* At least one callback: Dom0's console and xenstore ports are open
     * too, and an event of theirs that comes while delivery is unmasked
     * (the send's return, the callback's iret) adds a callback of its
     * own, as in the loop below. */
    cmpq $1, ev_count(%rip)
    setae %dl
    and %dl, %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_upcall(%rip), %rbx
    call verdict

    /* VIRQ_TIMER, a timer 2 ms after the published system time, and
     * SCHEDOP_block: it returns once the timer's event is pending, and
     * the event reaches the callback (block enables delivery). */
    movq $0, evt_req(%rip)
    mov $EVTCHNOP_BIND_VIRQ, %edi
    lea evt_req(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    mov %rax, %r13
    mov evt_req+8(%rip), %eax
    mov %eax, timer_port(%rip)
    mov %eax, evt_port(%rip)
    mov $EVTCHNOP_UNMASK, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    or %rax, %r13
    mov shinfo_va(%rip), %rcx
    mov 48(%rcx), %rdi               /* vcpu_info.time.system_time */
    add $2000000, %rdi
    call hypercall_page + HC_SET_TIMER_OP * 32
    or %rax, %r13
    movq $0, ev_ports(%rip)
    /* Block returns on any event (the console's too): block again until
     * the timer's has come, at most BLOCK_ROUNDS times. */
    mov $BLOCK_ROUNDS, %r14d
1:  mov $SCHEDOP_BLOCK, %edi
    xor %esi, %esi
    call hypercall_page + HC_SCHED_OP * 32
    or %rax, %r13
    mov ev_ports(%rip), %rsi
    mov timer_port(%rip), %ecx
    bt %rcx, %rsi
    jc 2f
    dec %r14d
    jnz 1b
2:  mov shinfo_va(%rip), %rcx
    movb $1, 1(%rcx)
    mov ev_ports(%rip), %rsi
    mov timer_port(%rip), %ecx
    bt %rcx, %rsi
    setc %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_timer_block(%rip), %rbx
    call verdict

    /* SCHEDOP_poll, events masked: the timer's port, pending again 2 ms
     * on, ends the poll (its 1 s timeout would too, returning 0 all
     * the same; the pending bit tells them apart). Then its refusals. */
    mov shinfo_va(%rip), %rcx
    mov timer_port(%rip), %eax
    lock btr %rax, 2048(%rcx)
    mov 48(%rcx), %rdi
    add $2000000, %rdi
    call hypercall_page + HC_SET_TIMER_OP * 32
    mov %rax, %r13
    mov shinfo_va(%rip), %rcx
    mov 48(%rcx), %rax
    add $1000000000, %rax
    mov %rax, poll_timeout(%rip)
    lea timer_port(%rip), %rax
    mov %rax, poll_ports(%rip)
    movl $1, poll_nr(%rip)
    mov $SCHEDOP_POLL, %edi
    lea poll_ports(%rip), %rsi
    call hypercall_page + HC_SCHED_OP * 32
    or %rax, %r13
    mov shinfo_va(%rip), %rcx
    mov timer_port(%rip), %eax
    bt %rax, 2048(%rcx)
    setc %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    mov %r13, %rsi
    lea name_poll(%rip), %rbx
    call verdict
    movl $129, poll_nr(%rip)
    mov $SCHEDOP_POLL, %edi
    lea poll_ports(%rip), %rsi
    call hypercall_page + HC_SCHED_OP * 32
    expect_rax -EINVAL, name_poll_many
    movl $1, poll_nr(%rip)
    movq $0x1000, poll_ports(%rip)
    mov $SCHEDOP_POLL, %edi
    lea poll_ports(%rip), %rsi
    call hypercall_page + HC_SCHED_OP * 32
    expect_rax -EFAULT, name_poll_efault

    /* ---- the grant table, mapped the PV way (grant.S) ---- */
    call grant_checks

    /* ---- failsafe: iret to CS 0x1233, which the CPU would refuse ---- */
    movq $0, fs_count(%rip)
    mov %rsp, saved_rsp(%rip)
    pushq $0xe02b
    pushq saved_rsp(%rip)
    pushq $2
    pushq $0x1233
    lea not_failsafe(%rip), %rax
    push %rax
    pushq $0
    jmp hypercall_page + HC_IRET * 32
not_failsafe:
    mov saved_rsp(%rip), %rsp
    lea msg_not_failsafe(%rip), %rdi
    call puts
failsafe_done:
    lea not_failsafe(%rip), %rax
    cmp fs_rip(%rip), %rax
    sete %al
    movzwl fs_cs(%rip), %edx
    cmp $0x1233, %edx
    sete %dl
    and %dl, %al
    cmpq $1, fs_count(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    mov fs_cs(%rip), %rsi
    lea name_failsafe(%rip), %rbx
    call verdict

    /* ---- a user process ---- */
    /* Its frames: the last seven of RAM (the builder uses the start). */
    mov SI_NR_PAGES(%r15), %rax
    lea -1(%rax), %rcx
    mov %rcx, u_l4(%rip)
    lea -2(%rax), %rcx
    mov %rcx, u_l3(%rip)
    lea -3(%rax), %rcx
    mov %rcx, u_l2(%rip)
    lea -4(%rax), %rcx
    mov %rcx, u_l1(%rip)
    lea -5(%rax), %rcx
    mov %rcx, u_code(%rip)
    lea -6(%rax), %rcx
    mov %rcx, u_stack(%rip)
    lea -7(%rax), %rcx
    mov %rcx, u_demand(%rip)
    /* Its tables, written while the frames are untyped (plain writes):
     * L4[0] -> L3, L3[0] -> L2, L2[2] -> L1, L1[0] = code (read-only),
     * L1[1] = stack; 0x400000 is L4 0 / L3 0 / L2 2 / L1 0. */
    lea u_reqs(%rip), %rdi
    mov u_l1(%rip), %rax
    shl $12, %rax
    mov %rax, 0(%rdi)
    mov u_code(%rip), %rcx
    shl $12, %rcx
    or $PTE_USER_RO, %rcx
    mov %rcx, 8(%rdi)
    add $8, %rax
    mov %rax, 16(%rdi)
    mov u_stack(%rip), %rcx
    shl $12, %rcx
    or $PTE_USER_RW, %rcx
    mov %rcx, 24(%rdi)
    mov u_l2(%rip), %rax
    shl $12, %rax
    add $16, %rax
    mov %rax, 32(%rdi)
    mov u_l1(%rip), %rcx
    shl $12, %rcx
    or $PTE_USER_RW, %rcx
    mov %rcx, 40(%rdi)
    mov u_l3(%rip), %rax
    shl $12, %rax
    mov %rax, 48(%rdi)
    mov u_l2(%rip), %rcx
    shl $12, %rcx
    or $PTE_USER_RW, %rcx
    mov %rcx, 56(%rdi)
    mov u_l4(%rip), %rax
    shl $12, %rax
    mov %rax, 64(%rdi)
    mov u_l3(%rip), %rcx
    shl $12, %rcx
    or $PTE_USER_RW, %rcx
    mov %rcx, 72(%rdi)
    movl $0xdead, done(%rip)
    mov $5, %esi
    lea done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMU_UPDATE * 32
    mov %rax, %r13
    cmpl $5, done(%rip)
    je 1f
    or $1, %r13
1:  movl $MMUEXT_PIN_L4_TABLE, op_cmd(%rip)
    mov u_l4(%rip), %rax
    mov %rax, op_arg1(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    or %rax, %r13
    movl $MMUEXT_NEW_USER_BASEPTR, op_cmd(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    or %rax, %r13
    /* The program, written through the window onto its code frame. */
    mov window_va(%rip), %rdi
    mov u_code(%rip), %rsi
    shl $12, %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    or %rax, %r13
    mov window_va(%rip), %rdi
    lea user_prog(%rip), %rsi
    mov $(user_prog_end - user_prog), %ecx
    rep movsb
    mov %r13, %rax
    expect_rax 0, name_user_l4

    /* Run 1: syscalls, a page fault served on demand, exit. */
    mov $USER_CODE_VA, %rdi
    call run_user
    mov user_reports(%rip), %rsi
    cmp $42, %rsi
    sete %al
    cmpq $142, user_reports+8(%rip)
    sete %dl
    and %dl, %al
    cmpq $3, user_nreports(%rip)
    sete %dl
    and %dl, %al
    /* The syscall frame's CS: user context, RPL 3. */
    cmpw $0xe033, syscall_cs(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_user_syscall(%rip), %rbx
    call verdict
    /* The demand fault: write, user, not present (error code 6). */
    cmpq $0x77, user_reports+16(%rip)
    sete %al
    cmpq $1, pf_demand_count(%rip)
    sete %dl
    and %dl, %al
    cmpq $6, pf_demand_ec(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    mov pf_demand_ec(%rip), %rsi
    lea name_user_pf(%rip), %rbx
    call verdict

    /* Run 2: the process reads the kernel's first page, which its L4
     * does not map: a user read fault (error code 4) and its death. */
    movq $0, killed(%rip)
    mov $(USER_CODE_VA + user_iso - user_prog), %rdi
    call run_user
    mov kill_cr2(%rip), %rsi
    mov $VIRT_BASE, %rax
    cmp %rax, %rsi
    sete %al
    cmpq $4, kill_ec(%rip)
    sete %dl
    and %dl, %al
    cmpq $1, killed(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_user_iso(%rip), %rbx
    call verdict

    /* Run 3: the process stores to the hypercall transport: a user
     * write fault on a present page (error code 7), and its death. */
    movq $0, killed(%rip)
    mov $(USER_CODE_VA + user_hc - user_prog), %rdi
    call run_user
    mov kill_cr2(%rip), %rsi
    movabs $HV_TRANSPORT_VA, %rax
    cmp %rax, %rsi
    sete %al
    cmpq $7, kill_ec(%rip)
    sete %dl
    and %dl, %al
    cmpq $1, killed(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_user_hc(%rip), %rbx
    call verdict

    /* Run 4: timings, measured by the process itself. */
    movq $0, user_nreports(%rip)
    mov $(USER_CODE_VA + user_time - user_prog), %rdi
    call run_user
    timing_line msg_user_syscalls, USER_CALLS, user_reports(%rip)
    timing_line msg_user_faults, PF_CALLS, user_reports+8(%rip)
    cmpq $PF_CALLS, pf_probe_count(%rip)
    sete %al
    movzbl %al, %edi
    mov pf_probe_count(%rip), %rsi
    lea name_user_probe(%rip), %rbx
    call verdict

    /* Event upcalls: EVTCHNOP_send to the IPI channel, delivered and
     * returned from with iret, EV_CALLS times. */
    mov ipi_port(%rip), %eax
    mov %eax, evt_port(%rip)
    movq $0, ev_count(%rip)
    mov shinfo_va(%rip), %rcx
    movb $0, 1(%rcx)
    rdtsc64 %r14
    mov $EV_CALLS, %r13d
1:  mov $EVTCHNOP_SEND, %edi
    lea evt_port(%rip), %rsi
    call hypercall_page + HC_EVENT_CHANNEL_OP * 32
    dec %r13d
    jnz 1b
    rdtsc64 %rax
    sub %r14, %rax
    mov %rax, %r14
    mov shinfo_va(%rip), %rcx
    movb $1, 1(%rcx)
    timing_line msg_upcalls, EV_CALLS, %r14
    /* At least one upcall per send: another port (the console's) may
     * add one of its own. */
    cmpq $EV_CALLS, ev_count(%rip)
    setae %al
    movzbl %al, %edi
    mov ev_count(%rip), %rsi
    lea name_upcall_loop(%rip), %rbx
    call verdict

    /* NEW_BASEPTR to the L4 we run on, BASEPTR_CALLS times. */
    movl $MMUEXT_NEW_BASEPTR, op_cmd(%rip)
    mov SI_PT_BASE(%r15), %rax
    mov $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, op_arg1(%rip)
    rdtsc64 %r14
    mov $BASEPTR_CALLS, %r13d
1:  lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMUEXT_OP * 32
    dec %r13d
    jnz 1b
    rdtsc64 %rax
    sub %r14, %rax
    mov %rax, %r14
    timing_line msg_baseptr, BASEPTR_CALLS, %r14

    pop %r15
    pop %r14
    pop %r13
    pop %r12
    ret

/* run_user: enter the user process at RDI with iret (CS RPL 3: user
 * mode, its L4), on its stack, events enabled; back here when it exits
 * or is killed (user_exit restores our stack). */
run_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, saved_rsp(%rip)
    pushq user_ss_sel(%rip)
    pushq $USER_STACK_TOP
    pushq $0x202
    pushq user_cs_sel(%rip)
    push %rdi
    pushq $0
    jmp hypercall_page + HC_IRET * 32
user_returned:
    /* Back in the kernel with events masked, whatever the way out. */
    mov shinfo_va(%rip), %rcx
    movb $1, 1(%rcx)
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* user_exit: the process is gone; back to run_user's caller. */
user_exit:
    mov saved_rsp(%rip), %rsp
    jmp user_returned

/* The syscall callback, on the stack_switch stack with Xen's frame:
 * RCX, R11, RIP, CS, RFLAGS, RSP, SS. RAX is the call, RDI its
 * argument. SYS_REPORT records RDI and returns RDI + 100. */
syscall_callback:
    mov 24(%rsp), %rcx
    mov %rcx, syscall_cs(%rip)
    cmp $SYS_EXIT, %eax
    je user_exit
    cmp $SYS_REPORT, %eax
    jne 1f
    mov user_nreports(%rip), %rcx
    cmp $8, %rcx
    jae 1f
    lea user_reports(%rip), %rdx
    mov %rdi, (%rdx,%rcx,8)
    incq user_nreports(%rip)
    lea 100(%rdi), %rax
1:  pop %rcx
    pop %r11
    pushq $VGCF_IN_SYSCALL
    jmp hypercall_page + HC_IRET * 32

/* #PF: RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS. CR2 is in
 * vcpu_info.arch.cr2. The demand page is mapped and the access
 * retried; the probe address is stepped over (a 2-byte load); any
 * other fault kills the process. */
pf_handler:
    push %rax
    push %rdx
    mov shinfo_va(%rip), %rax
    mov 16(%rax), %rax
    mov 32(%rsp), %rdx
    cmp $USER_DEMAND_VA, %rax
    je 1f
    cmp $USER_PROBE_VA, %rax
    je 2f
    mov %rax, kill_cr2(%rip)
    mov %rdx, kill_ec(%rip)
    incq killed(%rip)
    jmp user_exit
1:  incq pf_demand_count(%rip)
    mov %rdx, pf_demand_ec(%rip)
    push %rdi
    push %rsi
    push %r10
    mov u_l1(%rip), %rax
    shl $12, %rax
    add $16, %rax
    mov %rax, u_reqs(%rip)
    mov u_demand(%rip), %rax
    shl $12, %rax
    or $PTE_USER_RW, %rax
    mov %rax, u_reqs+8(%rip)
    lea u_reqs(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    call hypercall_page + HC_MMU_UPDATE * 32
    pop %r10
    pop %rsi
    pop %rdi
    jmp 3f
2:  incq pf_probe_count(%rip)
    addq $2, 40(%rsp)
3:  pop %rdx
    pop %rax
    pop %rcx
    pop %r11
    add $8, %rsp
    pushq $0
    jmp hypercall_page + HC_IRET * 32

/* The event callback (events masked): take every pending port. */
event_callback:
    push %rax
    push %rdx
    /* vCPU 0's vcpu_info: in shared_info, or where misc.S moves it. */
    mov vcpu0_info_va(%rip), %rdx
    movb $0, (%rdx)
    xor %eax, %eax
    xchg %rax, 8(%rdx)
    mov shinfo_va(%rip), %rdx
    xor %eax, %eax
    xchg %rax, 2048(%rdx)
    or %rax, ev_ports(%rip)
    incq ev_count(%rip)
    pop %rdx
    pop %rax
    pop %rcx
    pop %r11
    pushq $0
    jmp hypercall_page + HC_IRET * 32

/* The failsafe callback: RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS,
 * RSP, SS on the stack_switch stack (the refused CS has RPL 3). */
failsafe_callback:
    mov 48(%rsp), %rax
    mov %rax, fs_rip(%rip)
    mov 56(%rsp), %rax
    mov %rax, fs_cs(%rip)
    incq fs_count(%rip)
    mov saved_rsp(%rip), %rsp
    jmp failsafe_done

/* The user program, copied to its code frame and run at USER_CODE_VA:
 * position-independent, absolute addresses only for user VAs. */
user_prog:
    mov $SYS_REPORT, %eax
    mov $42, %edi
    syscall
    mov %rax, %rdi
    mov $SYS_REPORT, %eax
    syscall
    movq $0x77, USER_DEMAND_VA
    mov USER_DEMAND_VA, %rdi
    mov $SYS_REPORT, %eax
    syscall
    mov $SYS_EXIT, %eax
    syscall
    ud2
user_iso:
    mov $VIRT_BASE, %rbx
    mov (%rbx), %rax
    mov $SYS_EXIT, %eax
    syscall
user_hc:
    mov $HC_XEN_VERSION, %eax
    movabs %eax, HV_TRANSPORT_VA
    mov $SYS_EXIT, %eax
    syscall
user_time:
    rdtsc64 %r12
    mov $USER_CALLS, %r13d
1:  mov $SYS_NOP, %eax
    syscall
    dec %r13d
    jnz 1b
    rdtsc64 %rdi
    sub %r12, %rdi
    mov $SYS_REPORT, %eax
    syscall
    rdtsc64 %r12
    mov $USER_PROBE_VA, %ebx
    mov $PF_CALLS, %r13d
2:  movb (%rbx), %al
    dec %r13d
    jnz 2b
    rdtsc64 %rdi
    sub %r12, %rdi
    mov $SYS_REPORT, %eax
    syscall
    mov $SYS_EXIT, %eax
    syscall
user_prog_end:

    .data
    .balign 8
shinfo_va:    .quad 0
vcpu0_info_va: .quad 0
    /* The selectors run_user enters user mode with: Xen's flat ones, or
     * (gdt.S) the guest GDT's. */
user_cs_sel:  .quad 0xe033
user_ss_sel:  .quad 0xe02b
window_va:    .quad 0
saved_rsp:    .quad 0
cb_type:      .word 0
cb_flags:     .word 0
              .long 0
cb_addr:      .quad 0
cb_unreg:     .word 0, 0
evt_req:      .long 0, 0, 0, 0
evt_port:     .long 0
ipi_port:     .long 0
timer_port:   .long 0
              .long 0
ev_count:     .quad 0
    /* struct sched_poll: ports, nr_ports, timeout. */
poll_ports:   .quad 0
poll_nr:      .long 0, 0
poll_timeout: .quad 0
ev_ports:     .quad 0
fs_count:     .quad 0
fs_rip:       .quad 0
fs_cs:        .quad 0
syscall_cs:   .quad 0
user_nreports: .quad 0
user_reports: .fill 8, 8, 0
pf_demand_count: .quad 0
pf_demand_ec: .quad 0
pf_probe_count: .quad 0
killed:       .quad 0
kill_cr2:     .quad 0
kill_ec:      .quad 0
u_l4:         .quad 0
u_l3:         .quad 0
u_l2:         .quad 0
u_l1:         .quad 0
u_code:       .quad 0
u_stack:      .quad 0
u_demand:     .quad 0
u_reqs:       .fill 10, 8, 0
mc_entries:   .fill 3 * 8, 8, 0
gs_area:      .fill 2, 8, 0
fs_area:      .fill 2, 8, 0
trap_table_pf:
    .byte 14, 0
    .word 0xe033
    .long 0
    .quad pf_handler
    .quad 0, 0
name_shinfo:  .asciz "shared_info mapped with update_va_mapping; vCPU 0's upcall mask reads 1"
name_setcb:   .asciz "set_callbacks(event, failsafe, syscall)"
name_cbreg:   .asciz "CALLBACKOP_register syscall and failsafe, masking events"
name_cb_noncanon: .asciz "CALLBACKOP_register with a non-canonical address is -EINVAL"
name_cb_type: .asciz "CALLBACKOP_register of an unknown type is -ENOSYS"
name_cb_unreg: .asciz "CALLBACKOP_unregister of the event callback is -EINVAL"
name_cb_efault: .asciz "callback_op with an unmapped argument is -EFAULT"
name_stack_switch: .asciz "stack_switch to the kernel stack"
name_tt_pf:   .asciz "set_trap_table adds #PF"
name_segbase: .asciz "set_segment_base GS (kernel) and FS: %gs:8 and %fs:8 read through them"
name_segbase_which: .asciz "set_segment_base of an unknown register is -EINVAL"
name_segbase_noncanon: .asciz "set_segment_base with a non-canonical base is -EINVAL"
name_multicall: .asciz "multicall: xen_version, update_va_mapping (V reads B), nested multicall -EINVAL"
name_multicall_efault: .asciz "multicall with an unmapped array is -EFAULT"
name_bind_ipi: .asciz "EVTCHNOP_bind_ipi and unmask"
name_upcall:  .asciz "event upcall: EVTCHNOP_send to ourselves reaches the event callback on its return"
name_timer_block: .asciz "VIRQ_TIMER + set_timer_op + SCHEDOP_block: block returns and the timer event is delivered"
name_poll:    .asciz "SCHEDOP_poll on the timer's port returns once it is pending"
name_poll_many: .asciz "SCHEDOP_poll of more than 128 ports is -EINVAL"
name_poll_efault: .asciz "SCHEDOP_poll with an unmapped port array is -EFAULT"
name_failsafe: .asciz "iret to CS 0x1233 takes the failsafe callback with the refused frame"
name_user_l4: .asciz "user L4 built with mmu_update, pinned, NEW_USER_BASEPTR, program copied"
name_user_syscall: .asciz "user mode: syscalls bounced to the syscall callback (CS 0xe033) and returned"
name_user_pf: .asciz "user mode: page fault (error code 6) served on demand and retried"
name_user_iso: .asciz "user mode cannot read kernel mappings: #PF (error code 4), process killed"
name_user_hc: .asciz "user mode store to the hypercall transport: #PF (error code 7), process killed"
name_user_probe: .asciz "user mode: every probe fault bounced and returned"
name_upcall_loop: .asciz "event upcall loop: every send delivered"
msg_not_failsafe: .asciz "kxen-pv-guest: FAIL iret to a refused CS returned to its RIP\n"
msg_user_syscalls: .asciz "kxen-pv-guest: user syscall round trips: "
msg_user_faults: .asciz "kxen-pv-guest: user page fault round trips: "
msg_upcalls:  .asciz "kxen-pv-guest: event upcalls (send + callback + iret): "
msg_baseptr:  .asciz "kxen-pv-guest: NEW_BASEPTR calls: "
    /* The stack_switch stack. */
    .balign 16
kstack:       .fill 4096, 1, 0
kstack_top:
    .text
