/* A minimal 32-bit PVH kernel: installs the hypercall page, prints
 * through console_io and port 0xE9, checks xen_version and -ENOSYS, powers off. */
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
    /* console_io(write, len, msg) */
    mov $0, %ebx
    mov $(msgend - msg), %ecx
    mov $msg, %edx
    call hcpage + 18*32
    mov %eax, result
    /* The same greeting, byte by byte, through the 0xE9 debug port. */
    mov $e9msg, %esi
2:  lodsb
    test %al, %al
    jz 3f
    outb %al, $0xe9
    jmp 2b
3:
    /* xen_version(0) */
    mov $0, %ebx
    call hcpage + 17*32
    cmp $0x40011, %eax
    jne crash
    /* unknown hypercall */
    call hcpage + 60*32
    cmp $-38, %eax
    jne crash
    /* sched_op(shutdown, &poweroff) */
    mov $2, %ebx
    mov $reason, %ecx
    call hcpage + 29*32
1:  jmp 1b
crash:
    mov $2, %ebx
    mov $reason_crash, %ecx
    call hcpage + 29*32
    jmp 1b
    .data
msg: .ascii "hello from a 32-bit PVH guest\n"
msgend:
e9msg: .asciz "hello from a 32-bit PVH guest on port 0xe9\n"
reason: .long 0
reason_crash: .long 3
result: .long 0
    .align 4096
hcpage: .fill 4096, 1, 0
    .align 16
stack: .fill 4096, 1, 0
stack_top:
