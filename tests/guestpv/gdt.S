/* The PV test kernel's descriptor-table checks, included by pv.S and run
 * after user.S's (it reuses its window VA, frames and user process):
 *   set_gdt refusals: too many entries (-EINVAL), an unmapped frame list
 *   (-EFAULT), a frame mapped writable (-EINVAL), a frame holding a TSS
 *   descriptor (-EINVAL);
 *   set_gdt of a frame written with mmu_update: a DPL-0 code descriptor
 *   in it reads back with DPL 3 (Xen's fixup), and the frame can no
 *   longer be mapped writable;
 *   update_descriptor: misaligned (-EINVAL), a TSS (-EINVAL), a page
 *   table frame (-EINVAL), and a good one (fixed up the same way);
 *   the user process entered with iret on the GDT's own selectors (0x33,
 *   0x2b, as Linux's user mode runs) makes its syscalls, and the syscall
 *   frame shows CS 0x33;
 *   set_gdt with no entries releases the frame (writable again);
 *   MMUEXT_SET_LDT: its refusals, an LDT page held as a descriptor page
 *   (fixed up, not mappable writable) and released, and a page with a
 *   descriptor Xen refuses left out of the LDT. */
    .set HC_SET_GDT, 2
    .set HC_UPDATE_DESCRIPTOR, 10
    .set EBUSY, 16
    .set DESC_CODE64_DPL0, 0x00af9b000000ffff
    .set DESC_CODE64_DPL3, 0x00affb000000ffff
    .set DESC_DATA_DPL0, 0x00cf93000000ffff
    .set DESC_DATA_DPL3, 0x00cff3000000ffff
    .set DESC_TSS, 0x0000890000000067
    .set MMUEXT_SET_LDT, 13

    .text
gdt_checks:
    push %r12
    push %r13
    /* The GDT frame: the ninth from the end of RAM (user.S uses the last
     * seven). */
    mov SI_NR_PAGES(%r15), %rax
    sub $9, %rax
    mov %rax, gdt_frame(%rip)
    lea gdt_list(%rip), %rcx
    mov %rax, (%rcx)

    /* Refusals. */
    lea gdt_list(%rip), %rdi
    mov $(14 * 512 + 1), %esi
    call hypercall_page + HC_SET_GDT * 32
    expect_rax -EINVAL, name_gdt_many
    mov $0x1000, %edi
    mov $16, %esi
    call hypercall_page + HC_SET_GDT * 32
    expect_rax -EFAULT, name_gdt_efault
    mov $VIRT_BASE, %rcx
    lea frame_a(%rip), %rax
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, gdt_bad_list(%rip)
    lea gdt_bad_list(%rip), %rdi
    mov $16, %esi
    call hypercall_page + HC_SET_GDT * 32
    expect_rax -EINVAL, name_gdt_writable

    /* The frame's descriptors, written with mmu_update while it is an
     * ordinary frame: first a TSS in entry 3 (refused), then the real
     * table: 4 = DPL-0 code, 5 = user data, 6 = user code (0x33). */
    mov $3, %esi
    movabs $DESC_TSS, %rdx
    call gdt_put
    lea gdt_list(%rip), %rdi
    mov $16, %esi
    call hypercall_page + HC_SET_GDT * 32
    expect_rax -EINVAL, name_gdt_tss
    mov $3, %esi
    xor %edx, %edx
    call gdt_put
    mov $4, %esi
    movabs $DESC_CODE64_DPL0, %rdx
    call gdt_put
    mov $5, %esi
    movabs $DESC_DATA_DPL3, %rdx
    call gdt_put
    mov $6, %esi
    movabs $DESC_CODE64_DPL3, %rdx
    call gdt_put
    lea gdt_list(%rip), %rdi
    mov $16, %esi
    call hypercall_page + HC_SET_GDT * 32
    expect_rax 0, name_gdt_ok
    /* Read it through a read-only mapping: entry 4 now has DPL 3. */
    mov window_va(%rip), %rdi
    mov gdt_frame(%rip), %rsi
    shl $12, %rsi
    or $1, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov %rax, %r13
    mov window_va(%rip), %rcx
    mov 32(%rcx), %rsi
    movabs $DESC_CODE64_DPL3, %rax
    cmp %rax, %rsi
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_gdt_fixup(%rip), %rbx
    call verdict
    /* A writable mapping of a descriptor frame is refused (-EBUSY, as
     * for a page table). */
    mov window_va(%rip), %rdi
    mov gdt_frame(%rip), %rsi
    shl $12, %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    expect_rax -EBUSY, name_gdt_nowrite

    /* update_descriptor. */
    mov gdt_frame(%rip), %rdi
    shl $12, %rdi
    add $(7 * 8 + 4), %rdi
    xor %esi, %esi
    call hypercall_page + HC_UPDATE_DESCRIPTOR * 32
    expect_rax -EINVAL, name_ud_align
    mov gdt_frame(%rip), %rdi
    shl $12, %rdi
    add $(7 * 8), %rdi
    movabs $DESC_TSS, %rsi
    call hypercall_page + HC_UPDATE_DESCRIPTOR * 32
    expect_rax -EINVAL, name_ud_tss
    mov SI_PT_BASE(%r15), %rdi
    mov $VIRT_BASE, %rcx
    sub %rcx, %rdi
    movabs $DESC_DATA_DPL3, %rsi
    call hypercall_page + HC_UPDATE_DESCRIPTOR * 32
    expect_rax -EINVAL, name_ud_table
    mov gdt_frame(%rip), %rdi
    shl $12, %rdi
    add $(7 * 8), %rdi
    movabs $DESC_DATA_DPL0, %rsi
    call hypercall_page + HC_UPDATE_DESCRIPTOR * 32
    mov %rax, %r13
    mov window_va(%rip), %rcx
    mov 56(%rcx), %rsi
    movabs $DESC_DATA_DPL3, %rax
    cmp %rax, %rsi
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_ud_ok(%rip), %rbx
    call verdict

    call ldt_checks

    /* The user process on the GDT's own selectors. */
    movq $0x33, user_cs_sel(%rip)
    movq $0x2b, user_ss_sel(%rip)
    movq $0, user_nreports(%rip)
    movq $0, syscall_cs(%rip)
    mov $USER_CODE_VA, %rdi
    call run_user
    movq $0xe033, user_cs_sel(%rip)
    movq $0xe02b, user_ss_sel(%rip)
    mov syscall_cs(%rip), %rsi
    cmp $0x33, %rsi
    sete %al
    cmpq $42, user_reports(%rip)
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_gdt_user(%rip), %rbx
    call verdict

    /* No GDT: the frame is released and maps writable again. */
    lea gdt_list(%rip), %rdi
    xor %esi, %esi
    call hypercall_page + HC_SET_GDT * 32
    mov %rax, %r13
    mov window_va(%rip), %rdi
    mov gdt_frame(%rip), %rsi
    shl $12, %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    or %r13, %rax
    expect_rax 0, name_gdt_release
    mov window_va(%rip), %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    pop %r13
    pop %r12
    ret

/* gdt_put: entry ESI of the GDT frame = RDX, with mmu_update (a plain
 * write while the frame has no type). */
gdt_put:
    mov gdt_frame(%rip), %rax
    shl $12, %rax
    lea (%rax,%rsi,8), %rax
    mov %rax, gdt_req(%rip)
    mov %rdx, gdt_req+8(%rip)
    lea gdt_req(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    jmp hypercall_page + HC_MMU_UPDATE * 32

    .data
    .balign 8
gdt_frame:    .quad 0
gdt_list:     .quad 0
gdt_bad_list: .quad 0
gdt_req:      .quad 0, 0
name_gdt_many: .asciz "set_gdt beyond Xen's reserved entries is -EINVAL"
name_gdt_efault: .asciz "set_gdt with an unmapped frame list is -EFAULT"
name_gdt_writable: .asciz "set_gdt of a frame mapped writable is -EINVAL"
name_gdt_tss: .asciz "set_gdt of a frame holding a TSS descriptor is -EINVAL"
name_gdt_ok:  .asciz "set_gdt of a frame written with mmu_update"
name_gdt_fixup: .asciz "set_gdt fixed a DPL-0 code descriptor up to DPL 3"
name_gdt_nowrite: .asciz "a GDT frame cannot be mapped writable (-EBUSY)"
name_ud_align: .asciz "update_descriptor at a misaligned address is -EINVAL"
name_ud_tss:  .asciz "update_descriptor of a TSS descriptor is -EINVAL"
name_ud_table: .asciz "update_descriptor into a page table is -EINVAL"
name_ud_ok:   .asciz "update_descriptor writes a data descriptor, DPL fixed up to 3"
name_gdt_user: .asciz "user mode on the GDT's selectors 0x33/0x2b: syscall frame shows CS 0x33"
name_gdt_release: .asciz "set_gdt with no entries releases the frame: writable again"
    .text

/* ---- the LDT (MMUEXT_SET_LDT) ---- */
ldt_checks:
    push %r13
    mov SI_NR_PAGES(%r15), %rax
    sub $10, %rax
    mov %rax, ldt_frame(%rip)
    /* Refusals: too many entries, a misaligned base. */
    mov $8193, %esi
    mov window_va(%rip), %rdi
    call set_ldt
    expect_rax -EINVAL, name_ldt_many
    mov $1, %esi
    mov window_va(%rip), %rdi
    add $1, %rdi
    call set_ldt
    expect_rax -EINVAL, name_ldt_align
    /* The LDT page: a user data and a DPL-0 code descriptor, written
     * through a writable mapping, then mapped read-only. */
    mov $PTE_P_RW, %edx
    call ldt_window
    mov window_va(%rip), %rcx
    movabs $DESC_DATA_DPL3, %rax
    mov %rax, 0(%rcx)
    movabs $DESC_CODE64_DPL0, %rax
    mov %rax, 8(%rcx)
    mov $1, %edx
    call ldt_window
    mov $2, %esi
    mov window_va(%rip), %rdi
    call set_ldt
    mov %rax, %r13
    mov window_va(%rip), %rcx
    mov 8(%rcx), %rsi
    movabs $DESC_CODE64_DPL3, %rax
    cmp %rax, %rsi
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    lea name_ldt_ok(%rip), %rbx
    call verdict
    /* Held as a descriptor page: no writable mapping (V, -EBUSY). */
    call ldt_map_v
    expect_rax -EBUSY, name_ldt_held
    /* No LDT: released, V maps it writable. */
    xor %esi, %esi
    xor %edi, %edi
    call set_ldt
    mov %rax, %r13
    call ldt_map_v
    or %r13, %rax
    expect_rax 0, name_ldt_release
    /* A page with a TSS descriptor is left out of the LDT (its selectors
     * would fault), so nothing holds it. */
    mov %r12, %rdi
    mov pte_b(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov $PTE_P_RW, %edx
    call ldt_window
    mov window_va(%rip), %rcx
    movabs $DESC_TSS, %rax
    mov %rax, 0(%rcx)
    mov $1, %edx
    call ldt_window
    mov $2, %esi
    mov window_va(%rip), %rdi
    call set_ldt
    mov %rax, %r13
    call ldt_map_v
    or %r13, %rax
    expect_rax 0, name_ldt_bad
    xor %esi, %esi
    xor %edi, %edi
    call set_ldt
    /* V back on frame B; the window unmapped. */
    mov %r12, %rdi
    mov pte_b(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    mov window_va(%rip), %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    pop %r13
    ret

/* set_ldt: mmuext_op SET_LDT(RDI = base, ESI = entries). */
set_ldt:
    movl $MMUEXT_SET_LDT, op_cmd(%rip)
    mov %rdi, op_arg1(%rip)
    mov %rsi, op_arg2(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    jmp hypercall_page + HC_MMUEXT_OP * 32

/* ldt_window: map the LDT frame at the window VA with flags EDX. */
ldt_window:
    mov window_va(%rip), %rdi
    mov ldt_frame(%rip), %rsi
    shl $12, %rsi
    or %rdx, %rsi
    mov $UVMF_INVLPG, %edx
    jmp hypercall_page + HC_UPDATE_VA_MAPPING * 32

/* ldt_map_v: map the LDT frame writable at V (R12). */
ldt_map_v:
    mov %r12, %rdi
    mov ldt_frame(%rip), %rsi
    shl $12, %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    jmp hypercall_page + HC_UPDATE_VA_MAPPING * 32

    .data
    .balign 8
ldt_frame:    .quad 0
name_ldt_many: .asciz "MMUEXT_SET_LDT of more than 8192 entries is -EINVAL"
name_ldt_align: .asciz "MMUEXT_SET_LDT at a misaligned base is -EINVAL"
name_ldt_ok:  .asciz "MMUEXT_SET_LDT loads an LDT page, its DPL-0 code fixed up to 3"
name_ldt_held: .asciz "a loaded LDT page cannot be mapped writable (-EBUSY)"
name_ldt_release: .asciz "MMUEXT_SET_LDT with no entries releases the page"
name_ldt_bad: .asciz "an LDT page with a TSS descriptor is left out (not held)"
    .text
