/* A minimal 64-bit HVM guest for kxen's Linux boot path and legacy
 * devices. Entered like a Linux kernel's 64-bit entry (long mode, RSI =
 * zero page), it prints through COM1, checks the zero page, the CMOS RTC,
 * the PM timer and the i8042, then reads one command byte from COM1:
 *   p  power off through ACPI PM1a_CNT (S5)
 *   r  reset through the i8042 (0xfe)
 *   c  crash (a triple fault: #UD with no IDT)
 *   h  hostile device accesses, then power off
 *   e  popcnt (KVM's emulator lacks it on PVM hosts), then power off
 * Linked at 1 MiB with its entry 0x200 bytes in, so the same code is a
 * vmlinux-style ELF and, behind a setup header, a bzImage. */
    .set COM1, 0x3f8
    .set PM1A_CNT, 0x1f44
    .set PM_TMR, 0x1f48
    .text
    .code64
    .globl _image
_image:
    /* ud2 all the way: a loader that enters anywhere but +0x200 crashes
     * the guest instead of sliding into _start. */
    .fill 0x100, 2, 0x0b0f
    .globl _start
_start:
    cli
    lea stack_top(%rip), %rsp
    mov %rsi, %r15                  /* zero page */
    lea msg_hello(%rip), %rdi
    call puts
    cmpl $0x53726448, 0x202(%r15)   /* "HdrS" */
    jne fail
    lea msg_cmdline(%rip), %rdi
    call puts
    mov 0x228(%r15), %edi           /* cmd_line_ptr */
    call puts
    mov $'\n', %al
    call putc
    lea msg_e820(%rip), %rdi
    call puts
    movzbl 0x1e8(%r15), %eax        /* e820_entries */
    call puthex
    /* CMOS: century register in BCD. */
    mov $0x32, %al
    out %al, $0x70
    in $0x71, %al
    cmp $0x20, %al
    jne fail
    lea msg_rtc(%rip), %rdi
    call puts
    /* PM timer: it must move forward. */
    mov $PM_TMR, %dx
    in %dx, %eax
    mov %eax, %ebx
    mov $200000, %ecx
1:  pause
    dec %ecx
    jnz 1b
    in %dx, %eax
    cmp %ebx, %eax
    je fail
    lea msg_pmtmr(%rip), %rdi
    call puts
    /* i8042 controller self-test answers 0x55. */
    mov $0xaa, %al
    out %al, $0x64
    in $0x64, %al
    test $1, %al
    jz fail
    in $0x60, %al
    cmp $0x55, %al
    jne fail
    lea msg_i8042(%rip), %rdi
    call puts
    /* PCI config mechanism #1: IDs of 00:00.0 and 00:02.0, then the
     * Xen unplug magic at port 0x10. */
    lea msg_pci0(%rip), %rdi
    call puts
    mov $0x80000000, %eax
    call pci_read
    call puthex32
    lea msg_pci2(%rip), %rdi
    call puts
    mov $0x80001000, %eax
    call pci_read
    call puthex32
    lea msg_magic(%rip), %rdi
    call puts
    xor %eax, %eax
    mov $0x10, %dx
    in %dx, %ax
    call puthex32
command:
    lea msg_prompt(%rip), %rdi
    call puts
    call getc
    mov %al, %bl
    lea msg_got(%rip), %rdi
    call puts
    mov %bl, %al
    call putc
    mov $'\n', %al
    call putc
    cmp $'p', %bl
    je poweroff
    cmp $'r', %bl
    je reset
    cmp $'c', %bl
    je crash
    cmp $'h', %bl
    je hostile
    cmp $'e', %bl
    je emulate
    jmp command
poweroff:
    mov $PM1A_CNT, %dx
    mov $((5 << 10) | (1 << 13)), %ax
    out %ax, %dx
    jmp fail
reset:
    mov $0xfe, %al
    out %al, $0x64
    jmp fail
crash:
    lidt idt_empty(%rip)
    ud2
hostile:
    /* Reads of nothing, a straddling UART access, an unmapped MMIO
     * page, writes to unclaimed ports: all answered, none fatal. */
    in $0x80, %al
    mov $0x3fe, %dx
    in %dx, %eax
    mov $0xfed00000, %rax
    mov (%rax), %ecx
    movl $0xdeadbeef, (%rax)
    mov $0x1f4f, %dx
    out %eax, %dx
    mov $0x73, %al
    out %al, $0x70
    out %al, $0x71
    lea msg_survived(%rip), %rdi
    call puts
    jmp poweroff
emulate:
    mov $0xff, %eax
    popcnt %eax, %ecx
    lea msg_popcnt(%rip), %rdi
    call puts
    jmp poweroff
fail:
    lea msg_fail(%rip), %rdi
    call puts
    jmp crash

/* pci_read(eax = config address) -> eax */
pci_read:
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    ret
/* puthex32(eax): eight hex digits and a newline. */
puthex32:
    mov %eax, %ebx
    mov $28, %cl
    lea hexdigits(%rip), %rsi
1:  mov %ebx, %eax
    shr %cl, %eax
    and $0xf, %eax
    mov (%rsi,%rax), %al
    call putc
    sub $4, %cl
    jns 1b
    mov $'\n', %al
    call putc
    ret
/* putc(al): wait for THRE, send. */
putc:
    push %rdx
    push %rax
    mov $(COM1 + 5), %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    pop %rax
    mov $COM1, %dx
    out %al, %dx
    pop %rdx
    ret
/* getc -> al: wait for data ready. */
getc:
    push %rdx
    mov $(COM1 + 5), %dx
1:  in %dx, %al
    test $1, %al
    jz 1b
    mov $COM1, %dx
    in %dx, %al
    pop %rdx
    ret
/* puts(rdi): NUL-terminated. */
puts:
    mov (%rdi), %al
    test %al, %al
    jz 1f
    call putc
    inc %rdi
    jmp puts
1:  ret
/* puthex(eax): two hex digits and a newline. */
puthex:
    mov %eax, %ebx
    shr $4, %eax
    and $0xf, %eax
    lea hexdigits(%rip), %rcx
    mov (%rcx,%rax), %al
    call putc
    mov %ebx, %eax
    and $0xf, %eax
    mov (%rcx,%rax), %al
    call putc
    mov $'\n', %al
    call putc
    ret

    .data
msg_hello:    .asciz "kxen-hvm-guest: zero page at rsi\n"
msg_cmdline:  .asciz "kxen-hvm-guest: cmdline: "
msg_e820:     .asciz "kxen-hvm-guest: e820 entries: "
msg_rtc:      .asciz "kxen-hvm-guest: rtc ok\n"
msg_pmtmr:    .asciz "kxen-hvm-guest: pm timer ok\n"
msg_i8042:    .asciz "kxen-hvm-guest: i8042 ok\n"
msg_pci0:     .asciz "kxen-hvm-guest: pci 00:00.0 "
msg_pci2:     .asciz "kxen-hvm-guest: pci 00:02.0 "
msg_magic:    .asciz "kxen-hvm-guest: unplug magic "
msg_prompt:   .asciz "kxen-hvm-guest: command? "
msg_got:      .asciz "kxen-hvm-guest: got "
msg_survived: .asciz "kxen-hvm-guest: hostile accesses survived\n"
msg_popcnt:   .asciz "kxen-hvm-guest: popcnt ran\n"
msg_fail:     .asciz "kxen-hvm-guest: FAIL\n"
hexdigits:    .ascii "0123456789abcdef"
    .align 16
idt_empty:    .word 0
              .quad 0
    .bss
    .align 16
stack:  .fill 4096, 1, 0
stack_top:
