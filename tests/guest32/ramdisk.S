/* A minimal 32-bit PVH kernel that checks its boot block: hvm_start_info
 * magic, one module whose first bytes are "KXENRDSK", and the command line
 * "ramdisk-test"; reports through console_io and powers off (or crashes). */
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
    mov %ebx, %ebp                  /* hvm_start_info */
    mov $0x40000000, %ecx
    mov $hcpage, %eax
    xor %edx, %edx
    wrmsr
    cmpl $0x336ec578, 0(%ebp)       /* magic */
    jne crash
    cmpl $1, 12(%ebp)               /* nr_modules */
    jne crash
    mov 16(%ebp), %eax              /* modlist_paddr */
    mov 0(%eax), %esi               /* module 0 paddr */
    cmpl $0x4e45584b, 0(%esi)       /* "KXEN" */
    jne crash
    cmpl $0x4b534452, 4(%esi)       /* "RDSK" */
    jne crash
    cmpl $4096, 8(%eax)             /* module 0 size */
    jne crash
    mov 24(%ebp), %esi              /* cmdline_paddr */
    mov $want_cmdline, %edi
    mov $(want_end - want_cmdline), %ecx
    repe cmpsb
    jne crash
    mov $0, %ebx                    /* console_io(write, len, msg) */
    mov $(msgend - msg), %ecx
    mov $msg, %edx
    call hcpage + 18*32
    mov $2, %ebx                    /* sched_op(shutdown, poweroff) */
    mov $reason, %ecx
    call hcpage + 29*32
1:  jmp 1b
crash:
    mov $2, %ebx
    mov $reason_crash, %ecx
    call hcpage + 29*32
    jmp 1b
    .data
msg: .ascii "ramdisk and boot block ok\n"
msgend:
want_cmdline: .asciz "ramdisk-test"
want_end:
reason: .long 0
reason_crash: .long 3
    .align 16
stack: .fill 4096, 1, 0
stack_top:
    .align 4096
hcpage: .fill 4096, 1, 0
