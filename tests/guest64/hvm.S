/* A minimal 64-bit HVM guest for kxen's Linux boot path and legacy
 * devices. Entered like a Linux kernel's 64-bit entry (long mode, RSI =
 * zero page), it prints through COM1, checks the zero page, the CMOS RTC,
 * the PM timer and the i8042, then reads one command byte from COM1:
 *   p  power off through ACPI PM1a_CNT (S5)
 *   r  reset through the i8042 (0xfe)
 *   c  crash (a triple fault: #UD with no IDT)
 *   h  hostile device accesses, then power off
 *   e  popcnt (KVM's emulator lacks it on PVM hosts), then power off
 *   s  a user-mode round trip: own GDT/TSS/IDT/page tables, iretq to
 *      ring 3, syscall to a supervisor-only entry point (on PVM hosts the
 *      VMM's syscall bridge makes that work), sysretq back, power off
 *   x  instructions KVM's emulator gives up on in ring 0 on PVM hosts,
 *      each with the answer a CPU gives: fnop, fldcw/fnstcw, addr32 int3
 *      (#BP returning past the whole instruction) and vmclear in a vCPU
 *      never offered VMX (#UD at the instruction); a verdict line each,
 *      then power off
 *   v  drive the virtio-blk disk in slot 0 by hand: read sector 0, write
 *      it to sector 1, then submit a descriptor chain that loops (the
 *      device must fail with DEVICE_NEEDS_RESET), reset it, power off
 * Linked at 1 MiB with its entry 0x200 bytes in, so the same code is a
 * vmlinux-style ELF and, behind a setup header, a bzImage. */
    .set COM1, 0x3f8
    .set PM1A_CNT, 0x1f44
    .set PM_TMR, 0x1f48
    .set VIRTIO0, 0xd0000000
    /* Page tables of the 's' test: 0-4 MiB supervisor-only, 4-6 MiB user. */
    .set PT_PML4, 0x300000
    .set PT_PDPT, 0x301000
    .set PT_PD, 0x302000
    .set USER_BASE, 0x400000
    .set USER_STACK, 0x5ff000
    .set MSR_EFER, 0xc0000080
    .set MSR_STAR, 0xc0000081
    .set MSR_LSTAR, 0xc0000082
    .set MSR_FMASK, 0xc0000084
    /* The virtqueue and request buffers, in guest RAM above the image. */
    .set VQ_DESC, 0x200000
    .set VQ_AVAIL, 0x201000
    .set VQ_USED, 0x202000
    .set REQ, 0x203000
    .set DATA, 0x204000
    .set STATUS, 0x205000
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
    cmp $'v', %bl
    je virtio
    cmp $'s', %bl
    je user_mode
    cmp $'x', %bl
    je unemulated
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
unemulated:
    /* Our own GDT (code 0x10) and an IDT with #BP and #UD handlers. */
    lgdt gdt_ptr(%rip)
    lea 1f(%rip), %rax
    pushq $0x10
    push %rax
    lretq
1:  mov $0x18, %eax
    mov %eax, %ss
    lea idt(%rip), %rdi
    lea bp_handler(%rip), %rax
    mov $3, %ecx
    call set_gate
    lea idt(%rip), %rdi
    lea ud_handler(%rip), %rax
    mov $6, %ecx
    call set_gate
    lidt idt_ptr(%rip)
    /* fnop: nothing happens, execution goes on. */
    mov %cr0, %rax
    and $~0xc, %rax                 /* CR0.EM and CR0.TS clear */
    or $0x22, %rax                  /* CR0.MP, CR0.NE */
    mov %rax, %cr0
    fninit
    fnop
    lea msg_fnop(%rip), %rdi
    call puts
    /* fldcw then fnstcw: the control word round-trips. */
    movw $0x027f, x87_word(%rip)
    fldcw x87_word(%rip)
    movw $0, x87_word(%rip)
    fnstcw x87_word(%rip)
    lea msg_fcw(%rip), %rdi
    call puts
    movzwl x87_word(%rip), %eax
    call puthex32
    /* addr32 int3: #BP is a trap, so the handler's return RIP is the
     * end of the two-byte instruction. */
    xor %r12d, %r12d
    movl $0, bp_count(%rip)
    .byte 0x67, 0xcc
2:  lea 2b(%rip), %rax
    cmp %rax, %r12
    jne fail
    cmpl $1, bp_count(%rip)         /* one #BP, not one per byte */
    jne fail
    lea msg_int3(%rip), %rdi
    call puts
    /* vmclear without VMX in CPUID: #UD, a fault at the instruction. */
    xor %r13d, %r13d
    lea 4f(%rip), %r14
3:  vmclear x87_vmcs(%rip)
4:  lea 3b(%rip), %rax
    cmp %rax, %r13
    jne fail
    lea msg_vmclear(%rip), %rdi
    call puts
    jmp poweroff

/* #BP: note the return RIP in r12, count it and go back. */
bp_handler:
    mov (%rsp), %r12
    incl bp_count(%rip)
    iretq
/* #UD: note the faulting RIP in r13 and resume at r14. */
ud_handler:
    mov (%rsp), %r13
    mov %r14, (%rsp)
    iretq

user_mode:
    /* Page tables: PML4[0] -> PDPT[0] -> PD; PD[0..1] 2 MiB pages without
     * the user bit (image, stacks, tables), PD[2] with it (user code and
     * stack). */
    mov $PT_PML4, %edi
    xor %eax, %eax
    mov $(3 * 4096 / 8), %ecx
    rep stosq
    movq $(PT_PDPT | 7), PT_PML4
    movq $(PT_PD | 7), PT_PDPT
    movq $(0x000000 | 0x83), PT_PD          /* P, RW, PS */
    movq $(0x200000 | 0x83), PT_PD + 8
    movq $(USER_BASE | 0x87), PT_PD + 16    /* P, RW, US, PS */
    mov $PT_PML4, %eax
    mov %rax, %cr3
    /* User code: a copy of user_stub at USER_BASE. */
    lea user_stub(%rip), %rsi
    mov $USER_BASE, %edi
    mov $(user_stub_end - user_stub), %ecx
    rep movsb
    /* GDT with Linux's selector layout and a 64-bit TSS. */
    lea tss(%rip), %rax
    lea gdt_tss(%rip), %rdi
    mov %ax, 2(%rdi)                /* base 15:0 */
    shr $16, %rax
    mov %al, 4(%rdi)                /* base 23:16 */
    mov %ah, 7(%rdi)                /* base 31:24 */
    shr $16, %rax
    mov %eax, 8(%rdi)               /* base 63:32 */
    lea stack_top(%rip), %rax
    mov %rax, tss + 4(%rip)         /* RSP0 */
    lgdt gdt_ptr(%rip)
    lea 1f(%rip), %rax
    pushq $0x10
    push %rax
    lretq
1:  mov $0x18, %eax
    mov %eax, %ss
    mov %eax, %ds
    mov %eax, %es
    mov $0x38, %ax
    ltr %ax
    /* IDT: #GP and #PF; the page-fault gate must exist before LSTAR is
     * written, since that is when the VMM looks for it. */
    lea idt(%rip), %rdi
    lea gp_handler(%rip), %rax
    mov $13, %ecx
    call set_gate
    lea idt(%rip), %rdi
    lea pf_handler(%rip), %rax
    mov $14, %ecx
    call set_gate
    lidt idt_ptr(%rip)
    /* syscall: EFER.SCE, STAR, LSTAR, FMASK. */
    mov $MSR_EFER, %ecx
    rdmsr
    or $1, %eax
    wrmsr
    mov $MSR_STAR, %ecx
    xor %eax, %eax
    mov $0x00230010, %edx
    wrmsr
    mov $MSR_FMASK, %ecx
    mov $0x47700, %eax
    xor %edx, %edx
    wrmsr
    mov $MSR_LSTAR, %ecx
    lea syscall_entry(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    /* iretq into ring 3 at USER_BASE. */
    pushq $0x2b
    pushq $USER_STACK
    pushq $0x2
    pushq $0x33
    pushq $USER_BASE
    iretq

/* set_gate(rdi = IDT, ecx = vector, rax = handler): a DPL-0 interrupt
 * gate; clobbers rdi, rcx, rax. */
set_gate:
    shl $4, %ecx
    add %rcx, %rdi
    mov %ax, (%rdi)
    movw $0x10, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    ret

/* The system call entry: supervisor-only, like any kernel's. RAX is the
 * call: 0x2a says hello, 7 says done. */
syscall_entry:
    mov %rsp, %r13                  /* user stack */
    mov %rcx, %r14                  /* return RIP */
    mov %r11, %r15                  /* user RFLAGS */
    lea stack_top(%rip), %rsp
    mov %cs, %eax
    cmp $0x10, %eax
    jne fail
    cmp $7, %r8
    je 2f
    cmp $0x2a, %r8
    jne fail
    lea msg_syscall(%rip), %rdi
    call puts
    /* 0xcc where a VMM planted its syscall bridge, else endbr64's f3. */
    lea msg_pfbyte(%rip), %rdi
    call puts
    movzbl pf_handler(%rip), %eax
    call puthex
    /* RCX must be the instruction after the user's syscall. */
    lea msg_rcx(%rip), %rdi
    call puts
    mov %r14d, %eax
    call puthex32
    mov %r14, %rcx
    mov %r15, %r11
    mov %r13, %rsp
    sysretq                         /* to RCX with R11's flags */
2:  lea msg_userdone(%rip), %rdi
    call puts
    jmp poweroff

    /* The bridge steps over an endbr64 or a NOP at the handler's start. */
pf_handler:
    endbr64
    lea msg_pf(%rip), %rdi
    call puts
    mov %cr2, %rax
    mov %eax, %eax
    call puthex32
    mov 8(%rsp), %eax               /* faulting RIP, low half */
    call puthex32
    mov 16(%rsp), %eax              /* CS */
    call puthex32
    jmp fail
gp_handler:
    lea msg_gp(%rip), %rdi
    call puts
    jmp fail

/* Ring-3 code, copied to USER_BASE: two system calls. The call number
 * travels in R8 too, since the entry cannot trust anything else. */
user_stub:
    mov $0x2a, %eax
    mov %rax, %r8
    syscall
    mov $7, %eax
    mov %rax, %r8
    syscall
    ud2
user_stub_end:

virtio:
    mov $VIRTIO0, %r12d
    lea msg_vid(%rip), %rdi
    call puts
    mov 0x8(%r12), %eax             /* DeviceID */
    call puthex32
    movl $0, 0x70(%r12)             /* Status: reset */
    movl $1, 0x70(%r12)             /* ACKNOWLEDGE */
    movl $3, 0x70(%r12)             /* DRIVER */
    movl $1, 0x24(%r12)             /* DriverFeaturesSel 1 */
    movl $1, 0x20(%r12)             /* VIRTIO_F_VERSION_1 */
    movl $0, 0x24(%r12)
    movl $0, 0x20(%r12)
    movl $0xb, 0x70(%r12)           /* FEATURES_OK */
    testl $8, 0x70(%r12)
    jz fail
    movl $0, 0x30(%r12)             /* QueueSel 0 */
    movl $8, 0x38(%r12)             /* QueueNum */
    movl $VQ_DESC, 0x80(%r12)
    movl $0, 0x84(%r12)
    movl $VQ_AVAIL, 0x90(%r12)
    movl $0, 0x94(%r12)
    movl $VQ_USED, 0xa0(%r12)
    movl $0, 0xa4(%r12)
    movl $1, 0x44(%r12)             /* QueueReady */
    movl $0xf, 0x70(%r12)           /* DRIVER_OK */
    /* Request 1: VIRTIO_BLK_T_IN of sector 0 (header, data, status). */
    movl $0, REQ
    movl $0, REQ + 4
    movq $0, REQ + 8
    movb $0xff, STATUS
    movq $REQ, VQ_DESC
    movl $16, VQ_DESC + 8
    movw $1, VQ_DESC + 12           /* NEXT */
    movw $1, VQ_DESC + 14
    movq $DATA, VQ_DESC + 16
    movl $512, VQ_DESC + 24
    movw $3, VQ_DESC + 28           /* NEXT | WRITE */
    movw $2, VQ_DESC + 30
    movq $STATUS, VQ_DESC + 32
    movl $1, VQ_DESC + 40
    movw $2, VQ_DESC + 44           /* WRITE */
    movw $0, VQ_DESC + 46
    movw $0, VQ_AVAIL + 4           /* ring[0] = head 0 */
    movw $1, VQ_AVAIL + 2           /* idx = 1 */
    movl $0, 0x50(%r12)             /* QueueNotify 0 */
    mov $VQ_USED, %edi
    mov $0xffff0000, %esi
    mov $(1 << 16), %edx
    call poll
    jc fail
    cmpb $0, STATUS
    jne fail
    lea msg_vread(%rip), %rdi
    call puts
    mov DATA, %eax
    call puthex32
    /* Request 2: VIRTIO_BLK_T_OUT of the same bytes to sector 1. */
    movl $1, REQ
    movq $1, REQ + 8
    movb $0xff, STATUS
    movw $1, VQ_DESC + 28           /* NEXT: the device reads the data */
    movw $0, VQ_AVAIL + 6           /* ring[1] = head 0 */
    movw $2, VQ_AVAIL + 2
    movl $0, 0x50(%r12)
    mov $VQ_USED, %edi
    mov $0xffff0000, %esi
    mov $(2 << 16), %edx
    call poll
    jc fail
    cmpb $0, STATUS
    jne fail
    lea msg_vwrite(%rip), %rdi
    call puts
    /* Request 3: a descriptor whose NEXT is itself. */
    movq $REQ, VQ_DESC + 48
    movl $16, VQ_DESC + 56
    movw $1, VQ_DESC + 60
    movw $3, VQ_DESC + 62
    movw $3, VQ_AVAIL + 8           /* ring[2] = head 3 */
    movw $3, VQ_AVAIL + 2
    movl $0, 0x50(%r12)
    lea 0x70(%r12), %rdi
    mov $0x40, %esi                 /* DEVICE_NEEDS_RESET */
    mov $0x40, %edx
    call poll
    jc fail
    lea msg_vloop(%rip), %rdi
    call puts
    movl $0, 0x70(%r12)             /* reset */
    cmpl $0, 0x70(%r12)
    jne fail
    lea msg_vdone(%rip), %rdi
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
/* poll(rdi = address, esi = mask, edx = wanted): wait until the u32 at
 * rdi, masked, equals edx; CF set after 10 s of PM timer without it. */
poll:
    mov %edx, %r9d
    mov $PM_TMR, %dx
    in %dx, %eax
    and $0xffffff, %eax
    mov %eax, %r10d
    xor %r11d, %r11d
1:  mov (%rdi), %eax
    and %esi, %eax
    cmp %r9d, %eax
    je 2f
    pause
    mov $PM_TMR, %dx
    in %dx, %eax
    and $0xffffff, %eax
    mov %eax, %ecx
    sub %r10d, %ecx
    and $0xffffff, %ecx
    add %ecx, %r11d
    mov %eax, %r10d
    cmp $(10 * 3579545), %r11d
    jb 1b
    stc
    ret
2:  clc
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
msg_fnop:     .asciz "kxen-hvm-guest: fnop ran\n"
msg_fcw:      .asciz "kxen-hvm-guest: x87 control word "
msg_int3:     .asciz "kxen-hvm-guest: addr32 int3: #BP returned past it\n"
msg_vmclear:  .asciz "kxen-hvm-guest: vmclear: #UD at the instruction\n"
msg_vid:      .asciz "kxen-hvm-guest: virtio slot 0 device id "
msg_vread:    .asciz "kxen-hvm-guest: virtio-blk sector 0 starts "
msg_vwrite:   .asciz "kxen-hvm-guest: virtio-blk wrote sector 1\n"
msg_vloop:    .asciz "kxen-hvm-guest: virtio-blk looped chain: device needs reset\n"
msg_vdone:    .asciz "kxen-hvm-guest: virtio-blk reset, VMM alive\n"
msg_syscall:  .asciz "kxen-hvm-guest: syscall from ring 3 reached cpl 0\n"
msg_userdone: .asciz "kxen-hvm-guest: sysretq to ring 3 and back\n"
msg_pf:       .asciz "kxen-hvm-guest: page fault at "
msg_pfbyte:   .asciz "kxen-hvm-guest: page-fault handler starts "
msg_rcx:      .asciz "kxen-hvm-guest: syscall return address "
msg_gp:       .asciz "kxen-hvm-guest: general protection fault\n"
msg_fail:     .asciz "kxen-hvm-guest: FAIL\n"
hexdigits:    .ascii "0123456789abcdef"
    .balign 8
x87_vmcs:     .quad 0
x87_word:     .word 0
bp_count:     .long 0
    .align 16
idt_empty:    .word 0
    .balign 16
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff        /* 0x08 kernel CS32 */
    .quad 0x00af9b000000ffff        /* 0x10 kernel CS */
    .quad 0x00cf93000000ffff        /* 0x18 kernel DS */
    .quad 0x00cffb000000ffff        /* 0x23 user CS32 */
    .quad 0x00cff3000000ffff        /* 0x2b user DS */
    .quad 0x00affb000000ffff        /* 0x33 user CS */
gdt_tss:
    .quad 0x0000890000000067        /* 0x38 TSS, base filled in */
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
idt_ptr:
    .word 15 * 16 - 1
    .quad idt
    .balign 16
tss:  .fill 104, 1, 0
idt:  .fill 15 * 16, 1, 0
              .quad 0
    .bss
    .align 16
stack:  .fill 4096, 1, 0
stack_top:
