/* A 32-bit PVH kernel that takes event-channel upcalls with shared_info
 * in Xen's compat layout, which Xen latches for a guest that installs its
 * hypercall page and sets HVM_PARAM_CALLBACK_IRQ outside 64-bit mode:
 * the 2-level bitmaps are 32 u32 words (pending at 0x800, mask at 0x880),
 * vcpu_info's evtchn_pending_sel is the u32 at 4, and the wallclock is at
 * 0x900 (wc_version, wc_sec, wc_nsec), arch.max_pfn at 0x90c.
 *
 * It loads its own GDT and IDT (the upcall vector and nothing else),
 * enables its LAPIC, maps shared_info, sets the callback vector, reads
 * the wallclock and time record, raises a loopback port and takes the
 * upcall, checks a port masked in the compat mask word stays silent until
 * EVTCHNOP_unmask, moves vcpu_info with VCPUOP_register_vcpu_info to an
 * offset only the compat layout's 4-byte alignment allows and takes the
 * events there, and prints an "evt32 <check> rc=<hex> ok|FAIL" line for
 * each. With DOM0 set it then allocates a port for Dom0, prints it
 * ("evt32 dom0 port rc=<port>"), and waits for Dom0's notification to
 * arrive as an upcall. Powers off at the end. */
    .set UPCALL_VECTOR, 0xe3
    .set LAPIC_EOI, 0xfee000b0
    .set LAPIC_SVR, 0xfee000f0
    .set DOMID_SELF, 0x7ff0

    .section .note.xen, "a", @note
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
    .text
    .code32
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    /* The hypercall page, written from 32-bit mode. */
    mov $0x40000000, %ecx
    mov $hcpage, %eax
    xor %edx, %edx
    wrmsr
    /* IDT gate for the upcall vector: 32-bit interrupt gate, DPL 0. */
    mov $upcall_entry, %eax
    mov %eax, %edx
    and $0xffff, %eax
    or $0x00080000, %eax
    and $0xffff0000, %edx
    or $0x8e00, %edx
    mov %eax, idt + UPCALL_VECTOR * 8
    mov %edx, idt + UPCALL_VECTOR * 8 + 4
    lidt idt_desc
    /* Software-enable the LAPIC (spurious vector 0xff). */
    movl $0x1ff, LAPIC_SVR

    /* add_to_physmap(shared_info, idx 0, gpfn of shinfo), compat layout. */
    mov $shinfo, %eax
    shr $12, %eax
    mov %eax, xatp_gpfn
    mov $7, %ebx
    mov $xatp, %ecx
    call hcpage + 12*32
    xor %edx, %edx
    test %eax, %eax
    sete %dl
    mov $l_atp, %esi
    call verdict

    /* hvm_op(set_param, CALLBACK_IRQ = vector type | UPCALL_VECTOR). */
    mov $0, %ebx
    mov $param, %ecx
    call hcpage + 34*32
    xor %edx, %edx
    test %eax, %eax
    sete %dl
    mov $l_param, %esi
    call verdict

    /* Wallclock in the compat place: wc_version even and nonzero, wc_sec
     * after 2020 (0x5e0be100), wc_nsec below 1e9. (In the native layout
     * 0x900-0x90b are pending words for ports 2048-2143, all clear.) */
    xor %edx, %edx
    mov shinfo + 0x900, %eax
    test %eax, %eax
    jz 1f
    test $1, %eax
    jnz 1f
    cmpl $0x5e0be100, shinfo + 0x904
    jb 1f
    cmpl $1000000000, shinfo + 0x908
    setb %dl
1:  mov shinfo + 0x904, %eax
    mov $l_wc, %esi
    call verdict

    /* arch.max_pfn, a u32 at 0x90c: the RAM's end, nonzero. */
    xor %edx, %edx
    mov shinfo + 0x90c, %eax
    test %eax, %eax
    setnz %dl
    mov $l_maxpfn, %esi
    call verdict

    /* vcpu_info[0].time (at 32 in both layouts): an even version and a
     * nonzero multiplier and system time. */
    xor %edx, %edx
    testb $1, shinfo + 32
    jnz 1f
    cmpl $0, shinfo + 56
    je 1f
    mov shinfo + 48, %eax
    or shinfo + 52, %eax
    test %eax, %eax
    setnz %dl
1:  mov shinfo + 56, %eax
    mov $l_time, %esi
    call verdict

    /* A loopback channel: alloc_unbound(self, self) -> p, then
     * bind_interdomain(self, p) -> q. */
    mov $6, %ebx
    mov $alloc, %ecx
    call hcpage + 32*32
    test %eax, %eax
    jnz crash
    mov alloc_port, %eax
    mov %eax, port_p
    mov %eax, bind_remote_port
    mov $0, %ebx
    mov $bind, %ecx
    call hcpage + 32*32
    test %eax, %eax
    jnz crash
    mov bind_local_port, %eax
    mov %eax, port_q

    /* send(q): p fires; the upcall must arrive with p's pending bit and
     * its word's bit in the u32 selector at 4. */
    mov port_q, %eax
    mov %eax, send_port
    mov $4, %ebx
    mov $send_port, %ecx
    call hcpage + 32*32
    test %eax, %eax
    jnz crash
    mov $1, %ecx
    call wait_upcalls
    mov port_p, %ecx
    call check_seen
    mov upcalls, %eax
    mov $l_loop, %esi
    call verdict

    /* Mask p in the compat mask word (0x880 + 4 * word), send again: p
     * becomes pending without an upcall; unmask delivers it. */
    call clear_seen
    mov port_p, %ecx
    mov %ecx, %eax
    shr $5, %eax
    and $31, %ecx
    lock bts %ecx, shinfo + 0x880(,%eax,4)
    mov upcalls, %eax
    mov %eax, upcalls_before
    mov $4, %ebx
    mov $send_port, %ecx
    sti
    call hcpage + 32*32
    nop
    nop
    nop
    cli
    xor %edx, %edx
    mov upcalls, %eax
    cmp upcalls_before, %eax
    jne 1f
    mov port_p, %ecx
    mov %ecx, %eax
    shr $5, %eax
    and $31, %ecx
    bt %ecx, shinfo + 0x800(,%eax,4)
    setc %dl
1:  mov $l_masked, %esi
    call verdict
    mov port_p, %eax
    mov %eax, unmask_port
    mov $9, %ebx
    mov $unmask_port, %ecx
    call hcpage + 32*32
    test %eax, %eax
    jnz crash
    mov upcalls_before, %ecx
    inc %ecx
    call wait_upcalls
    mov port_p, %ecx
    call check_seen
    mov upcalls, %eax
    mov $l_unmask, %esi
    call verdict

    /* VCPUOP_register_vcpu_info(vCPU 0, vipage + 4): 4-byte aligned is
     * enough in the compat layout (natively -ENXIO). Xen then sets every
     * selector bit (a u32 at vcpu_info + 4 here) and the upcall. */
    call clear_seen
    mov $vipage + 4, %eax
    mov %eax, vi_ptr
    mov $vipage, %eax
    shr $12, %eax
    mov %eax, reg_vi_mfn
    mov upcalls, %eax
    mov %eax, upcalls_before
    mov $10, %ebx
    mov $0, %ecx
    mov $reg_vi, %edx
    call hcpage + 24*32
    mov %eax, vi_rc
    xor %edx, %edx
    test %eax, %eax
    jnz 1f
    mov upcalls_before, %ecx
    inc %ecx
    call wait_upcalls
    cmpl $0xffffffff, seen_sel
    sete %dl
1:  mov vi_rc, %eax
    mov $l_regvi, %esi
    call verdict
    /* The loopback port again, now flagged in the new vcpu_info. */
    call clear_seen
    mov upcalls, %ecx
    inc %ecx
    push %ecx
    mov $4, %ebx
    mov $send_port, %ecx
    call hcpage + 32*32
    pop %ecx
    test %eax, %eax
    jnz crash
    call wait_upcalls
    mov port_p, %ecx
    call check_seen
    mov upcalls, %eax
    mov $l_regvi_loop, %esi
    call verdict

.ifdef DOM0
    /* A port for Dom0: alloc_unbound(self, 0) -> d; Dom0 binds it and
     * notifies; the notification must arrive as an upcall. */
    call clear_seen
    movw $0, alloc_remote
    mov $6, %ebx
    mov $alloc, %ecx
    call hcpage + 32*32
    test %eax, %eax
    jnz crash
    mov alloc_port, %eax
    mov %eax, port_d
    mov $1, %edx
    mov $l_dom0port, %esi
    call verdict
    mov upcalls, %ecx
    inc %ecx
    call wait_upcalls
    mov port_d, %ecx
    call check_seen
    mov upcalls, %eax
    mov $l_dom0, %esi
    call verdict
.endif

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

/* Wait (sti; hlt) until `upcalls` reaches ecx. An upcall that never comes
 * leaves the guest halted: the test's deadline ends it. */
wait_upcalls:
1:  cmp %ecx, upcalls
    jae 2f
    sti
    hlt
    cli
    jmp 1b
2:  ret

/* edx = 1 when port ecx was seen pending by an upcall together with its
 * selector bit (word ecx / 32). */
check_seen:
    xor %edx, %edx
    mov %ecx, %eax
    shr $5, %eax
    bt %eax, seen_sel
    jnc 1f
    and $31, %ecx
    bt %ecx, seen_pending(,%eax,4)
    setc %dl
1:  ret

clear_seen:
    movl $0, seen_sel
    mov $seen_pending, %edi
    mov $32, %ecx
    xor %eax, %eax
    rep stosl
    ret

/* The upcall: clear upcall_pending of the vcpu_info at vi_ptr, take its
 * u32 selector at 4 and, for each word it names, the pending word
 * (clearing the bits it takes), then EOI. */
upcall_entry:
    pusha
    mov vi_ptr, %esi
    movb $0, (%esi)
    xor %ebx, %ebx
    xchg %ebx, 4(%esi)
    or %ebx, seen_sel
1:  test %ebx, %ebx
    jz 2f
    bsf %ebx, %ecx
    btr %ecx, %ebx
    xor %eax, %eax
    xchg %eax, shinfo + 0x800(,%ecx,4)
    or %eax, seen_pending(,%ecx,4)
    jmp 1b
2:  lock incl upcalls
    movl $0, LAPIC_EOI
    popa
    /* On PVM hosts KVM's emulator fails this 32-bit iretd and kxen-vmm
     * answers it (vcpu::pvm). */
    iret

/* Print "<label> rc=<eax in hex> ok" (edx nonzero) or "... FAIL" through
 * console_io; esi is the NUL-ended label. */
verdict:
    pusha
    mov %eax, v_rc
    mov %edx, v_pass
    mov $line, %edi
    call copy_str
    mov $s_rc, %esi
    call copy_str
    mov v_rc, %edx
    mov $8, %ecx
.Lhex:
    rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    stosb
    loop .Lhex
    mov $s_ok, %esi
    cmpl $0, v_pass
    jne .Lend
    mov $s_fail, %esi
.Lend:
    call copy_str
    mov %edi, %ecx
    sub $line, %ecx
    mov $0, %ebx
    mov $line, %edx
    call hcpage + 18*32
    popa
    ret

/* Copy the NUL-ended string at esi to edi, without the NUL. */
copy_str:
    lodsb
    test %al, %al
    jz .Lcopied
    stosb
    jmp copy_str
.Lcopied:
    ret

    .data
    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: flat data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
idt_desc:
    .word 256 * 8 - 1
    .long idt
/* Compat xen_add_to_physmap: domid, size, space, idx, gpfn (16 bytes). */
xatp: .word DOMID_SELF, 0
    .long 0, 0
xatp_gpfn: .long 0
/* xen_hvm_param: domid, pad, index (CALLBACK_IRQ), value (vector type 2
 * in bits 56-63). */
param: .word DOMID_SELF, 0
    .long 0
    .long UPCALL_VECTOR, 0x02000000
/* evtchn_alloc_unbound: dom, remote_dom, port. */
alloc: .word DOMID_SELF
alloc_remote: .word DOMID_SELF
alloc_port: .long 0
/* evtchn_bind_interdomain: remote_dom, pad, remote_port, local_port. */
bind: .word DOMID_SELF, 0
bind_remote_port: .long 0
bind_local_port: .long 0
send_port: .long 0
/* The vcpu_info upcalls use: shared_info's slot 0, then the registered
 * one. */
vi_ptr: .long shinfo
vi_rc: .long 0
/* vcpu_register_vcpu_info: mfn (u64), offset, rsvd. */
reg_vi:
reg_vi_mfn: .long 0, 0
    .long 4, 0
unmask_port: .long 0
port_p: .long 0
port_q: .long 0
port_d: .long 0
upcalls: .long 0
upcalls_before: .long 0
seen_sel: .long 0
seen_pending: .fill 32, 4, 0
v_rc: .long 0
v_pass: .long 0
hexdigits: .ascii "0123456789abcdef"
s_rc: .asciz " rc="
s_ok: .asciz " ok\n"
s_fail: .asciz " FAIL\n"
l_atp: .asciz "evt32 add_to_physmap(shared_info)"
l_param: .asciz "evt32 set_param(CALLBACK_IRQ)"
l_wc: .asciz "evt32 wallclock"
l_maxpfn: .asciz "evt32 max_pfn"
l_time: .asciz "evt32 vcpu_time"
l_loop: .asciz "evt32 loopback upcall"
l_masked: .asciz "evt32 masked port stays silent"
l_unmask: .asciz "evt32 unmask delivers"
l_regvi: .asciz "evt32 register_vcpu_info(offset 4)"
l_regvi_loop: .asciz "evt32 upcall via the registered vcpu_info"
l_dom0port: .asciz "evt32 dom0 port"
l_dom0: .asciz "evt32 dom0 upcall"
line: .fill 80, 1, 0
reason: .long 0
reason_crash: .long 3
    .align 4096
hcpage: .fill 4096, 1, 0
idt: .fill 256 * 8, 1, 0
    .align 16
stack: .fill 4096, 1, 0
stack_top:
    .align 4096
shinfo: .fill 4096, 1, 0
vipage: .fill 4096, 1, 0
