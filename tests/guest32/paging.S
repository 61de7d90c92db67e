/* A 32-bit PVH kernel that turns on paging and then talks to the VMM.
 *
 * It says hello (console_io) with paging off, builds an identity map of the
 * low 1 GiB, sets CR3/CR4 and CR0.PG, and then prints through console_io
 * (whose buffer address the VMM must translate through the guest's tables)
 * and port 0xE9, and powers off. The test prepends one `.set` line to pick
 * the layout:
 *   PSE:     2-level page directory of 4 MiB pages (CR4.PSE, no PAE)
 *   PAE:     PDPT + page directory of 2 MiB pages (CR4.PAE)
 *   PSE4K:   2-level tables with 4 KiB pages for the first 4 MiB
 *   PAE4K:   PAE tables with 4 KiB pages for the first 2 MiB
 * With none of them set it never enables paging (the control case). */
    .section .note.xen, "a", @note
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
    .text
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    mov $0x40000000, %ecx
    mov $hcpage, %eax
    xor %edx, %edx
    wrmsr
    mov $msg_before, %edx
    mov $(msg_before_end - msg_before), %ecx
    call console_write

.ifdef PSE
    /* 256 PDEs of 4 MiB pages: PS | RW | P, identity. */
    mov $page_table_a, %edi
    xor %eax, %eax
    mov $256, %ecx
1:  lea 0x83(%eax), %edx
    mov %edx, (%edi)
    add $4, %edi
    add $0x400000, %eax
    loop 1b
    mov %cr4, %eax
    or $0x10, %eax
    mov %eax, %cr4
    mov $page_table_a, %eax
    mov %eax, %cr3
.endif

.ifdef PSE4K
    /* PDE 0 -> one page table of 1024 4 KiB PTEs covering 0-4 MiB. */
    mov $page_table_b, %edi
    mov $0x3, %eax
    mov $1024, %ecx
1:  mov %eax, (%edi)
    add $4, %edi
    add $0x1000, %eax
    loop 1b
    mov $page_table_b + 3, %eax
    mov %eax, page_table_a
    mov $page_table_a, %eax
    mov %eax, %cr3
.endif

.ifdef PAE
    /* PDPTE 0 -> one page directory of 512 2 MiB pages (1 GiB). */
    mov $page_table_b, %edi
    xor %eax, %eax
    mov $512, %ecx
1:  lea 0x83(%eax), %edx
    mov %edx, (%edi)
    movl $0, 4(%edi)
    add $8, %edi
    add $0x200000, %eax
    loop 1b
    movl $page_table_b + 1, pdpt
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pdpt, %eax
    mov %eax, %cr3
.endif

.ifdef PAE4K
    /* PDPTE 0 -> PD, PDE 0 -> one page table of 512 4 KiB PTEs (0-2 MiB). */
    mov $page_table_c, %edi
    mov $0x3, %eax
    mov $512, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $8, %edi
    add $0x1000, %eax
    loop 1b
    movl $page_table_c + 3, page_table_b
    movl $page_table_b + 1, pdpt
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pdpt, %eax
    mov %eax, %cr3
.endif

.if PAGING
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp 2f
2:
    /* Prove the map is live: a store through the tables reads back. */
    movl $0x5a5aa5a5, probe
    cmpl $0x5a5aa5a5, probe
    jne crash
    mov %cr0, %eax
    test $0x80000000, %eax
    jz crash
.endif

    mov $msg_after, %edx
    mov $(msg_after_end - msg_after), %ecx
    call console_write
    /* The same line, byte by byte, through the 0xE9 debug port. */
    mov $msg_after, %esi
3:  lodsb
    outb %al, $0xe9
    cmp $'\n', %al
    jne 3b
    /* sched_op(shutdown, &poweroff) */
    mov $2, %ebx
    mov $reason, %ecx
    call hcpage + 29*32
4:  jmp 4b
crash:
    mov $2, %ebx
    mov $reason_crash, %ecx
    call hcpage + 29*32
    jmp 4b

/* console_io(write, ecx bytes, at edx) */
console_write:
    mov $0, %ebx
    call hcpage + 18*32
    ret

    .data
msg_before: .ascii "paging guest: paging off, setting it up\n"
msg_before_end:
msg_after: .ascii "paging guest: checks passed, powering off\n"
msg_after_end:
reason: .long 0
reason_crash: .long 3
probe: .long 0
    .align 32
pdpt: .fill 4, 8, 0
    .align 4096
hcpage: .fill 4096, 1, 0
page_table_a: .fill 4096, 1, 0
page_table_b: .fill 4096, 1, 0
page_table_c: .fill 4096, 1, 0
stack: .fill 4096, 1, 0
stack_top:
