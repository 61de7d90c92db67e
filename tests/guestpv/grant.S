/* The PV test kernel's grant table check, included by pv.S: a PV guest
 * maps the frame GNTTABOP_setup_table returns with update_va_mapping
 * (no add_to_physmap, as on Xen), writes an entry through that mapping,
 * and the hypervisor reads the same entry: a GNTTABOP_copy from that
 * reference reports what the entry says (a transitive grant:
 * GNTST_general_error; an unwritten entry would be permission denied). */
    .set HC_GRANT_TABLE_OP, 20
    .set GNTTABOP_SETUP_TABLE, 2
    .set GNTTABOP_COPY, 5
    .set GTF_TRANSITIVE, 3
    .set GNTCOPY_SOURCE_GREF, 1
    .set GNTST_GENERAL_ERROR, -1
    .set GRANT_REF, 8

    .text
grant_checks:
    /* setup_table(DOMID_SELF, 1 frame). */
    movw $DOMID_SELF, gt_setup(%rip)
    movl $1, gt_setup+4(%rip)
    lea gt_frame(%rip), %rax
    mov %rax, gt_setup+16(%rip)
    mov $GNTTABOP_SETUP_TABLE, %edi
    lea gt_setup(%rip), %rsi
    mov $1, %edx
    call hypercall_page + HC_GRANT_TABLE_OP * 32
    movswq gt_setup+8(%rip), %rcx
    or %rcx, %rax
    expect_rax 0, name_gt_setup
    /* Map it at the window VA (user.S's, free again until its user
     * process is written) with update_va_mapping. */
    mov window_va(%rip), %rdi
    mov gt_frame(%rip), %rsi
    shl $12, %rsi
    or $PTE_P_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    expect_rax 0, name_gt_map
    /* Entry GRANT_REF: a transitive grant, written through the mapping. */
    mov window_va(%rip), %rcx
    movl $GTF_TRANSITIVE, GRANT_REF * 8(%rcx)
    /* copy 8 bytes from that reference into frame B. */
    lea gt_copy(%rip), %rdi
    movq $GRANT_REF, 0(%rdi)
    movw $DOMID_SELF, 8(%rdi)
    mov $VIRT_BASE, %rcx
    lea frame_b(%rip), %rax
    sub %rcx, %rax
    shr $12, %rax
    mov %rax, 16(%rdi)
    movw $DOMID_SELF, 24(%rdi)
    movw $8, 32(%rdi)
    movw $GNTCOPY_SOURCE_GREF, 34(%rdi)
    movw $0x7777, 36(%rdi)
    mov $GNTTABOP_COPY, %edi
    lea gt_copy(%rip), %rsi
    mov $1, %edx
    call hypercall_page + HC_GRANT_TABLE_OP * 32
    mov %rax, %r13
    movswq gt_copy+36(%rip), %rax
    cmp $GNTST_GENERAL_ERROR, %rax
    sete %al
    test %r13, %r13
    sete %dl
    and %dl, %al
    movzbl %al, %edi
    movswq gt_copy+36(%rip), %rsi
    lea name_gt_seen(%rip), %rbx
    call verdict
    /* Clear the entry again and unmap the window. */
    mov window_va(%rip), %rcx
    movl $0, GRANT_REF * 8(%rcx)
    mov window_va(%rip), %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call hypercall_page + HC_UPDATE_VA_MAPPING * 32
    ret

    .data
    .balign 8
gt_setup:     .fill 24, 1, 0
gt_frame:     .quad 0
gt_copy:      .fill 40, 1, 0
name_gt_setup: .asciz "GNTTABOP_setup_table returns the grant frame"
name_gt_map:  .asciz "the grant frame maps with update_va_mapping"
name_gt_seen: .asciz "an entry written through that mapping is the one GNTTABOP_copy reads"
    .text
