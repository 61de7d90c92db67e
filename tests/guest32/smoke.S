/* A minimal 32-bit PVH kernel: installs the hypercall page, prints
 * through console_io and port 0xE9, checks xen_version and -ENOSYS,
 * makes memory_op, grant_table_op and vcpu_op calls in their 32-bit
 * (compat) layouts and prints a "memop32 ..." verdict line for each,
 * powers off. */
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
    call memop_checks
    call gnttab_vcpuop_checks
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

/* memory_op (hypercall 12) from 32-bit mode: each struct in the compat
 * layout, where handles, xen_ulong_t and xen_pfn_t are 4 bytes. */
memop_checks:
    /* add_to_physmap(shared_info, idx 0, gpfn of shinfo) */
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
    /* shared_info is now there: vcpu_info[0]'s time record (at 32 in
     * both layouts) has an even version and a tsc_to_system_mul. */
    mov shinfo + 56, %eax
    xor %edx, %edx
    testb $1, shinfo + 32
    jnz 1f
    test %eax, %eax
    setnz %dl
1:  mov $l_time, %esi
    call verdict
    /* memory_map into a 4-entry buffer: 0, at least one entry, a RAM one */
    mov $mmap, %ecx
    mov $9, %ebx
    call hcpage + 12*32
    xor %edx, %edx
    test %eax, %eax
    jnz 3f
    mov mmap, %ecx
    cmp $4, %ecx
    ja 3f
    mov $e820buf + 16, %edi
2:  jecxz 3f
    cmpl $1, (%edi)
    sete %dl
    je 3f
    add $20, %edi
    dec %ecx
    jmp 2b
3:  mov $l_map, %esi
    call verdict
    /* current_reservation(&DOMID_SELF): positive */
    mov $3, %ebx
    mov $domid_self, %ecx
    call hcpage + 12*32
    xor %edx, %edx
    test %eax, %eax
    setg %dl
    mov $l_cur, %esi
    call verdict
    /* decrease_reservation then populate_physmap of one spare page,
     * listed as a 4-byte GPFN: 1 extent done each. */
    mov $balloon, %eax
    shr $12, %eax
    mov %eax, extent
    mov $1, %ebx
    mov $reservation, %ecx
    call hcpage + 12*32
    xor %edx, %edx
    cmp $1, %eax
    sete %dl
    mov $l_dec, %esi
    call verdict
    mov $6, %ebx
    mov $reservation, %ecx
    call hcpage + 12*32
    xor %edx, %edx
    cmp $1, %eax
    sete %dl
    mov $l_pop, %esi
    call verdict
    ret

/* grant_table_op (20) and vcpu_op (24) from 32-bit mode. */
gnttab_vcpuop_checks:
    /* setup_table(1 frame): 0, status 0, one 4-byte frame number written
     * and the dword after it untouched. */
    mov $2, %ebx
    mov $setup, %ecx
    mov $1, %edx
    call hcpage + 20*32
    xor %edx, %edx
    test %eax, %eax
    jnz 1f
    cmpw $0, setup_status
    jne 1f
    cmpl $0, gframes
    je 1f
    cmpl $0xa5a5a5a5, gframes + 4
    sete %dl
1:  mov $l_setup, %esi
    call verdict
    /* query_size(DOMID_SELF): 0, status 0, at least the frame set up. */
    mov $6, %ebx
    mov $query, %ecx
    mov $1, %edx
    call hcpage + 20*32
    xor %edx, %edx
    test %eax, %eax
    jnz 1f
    cmpw $0, query + 12
    jne 1f
    cmpl $1, query + 4
    setae %dl
1:  mov $l_query, %esi
    call verdict
    /* vcpu_op(get_runstate_info, vCPU 0): 0, running, the 44-byte compat
     * record (state_entry_time at 4, nonzero) and the dword after it
     * untouched. */
    mov $4, %ebx
    mov $0, %ecx
    mov $runstate, %edx
    call hcpage + 24*32
    xor %edx, %edx
    test %eax, %eax
    jnz 1f
    cmpl $0, runstate
    jne 1f
    cmpl $0, runstate + 4
    je 1f
    cmpl $0xa5a5a5a5, runstate + 44
    sete %dl
1:  mov $l_runstate, %esi
    call verdict
    ret

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
/* Compat xen_add_to_physmap: domid, size, space, idx, gpfn (16 bytes). */
xatp: .word 0x7ff0, 0
    .long 0, 0
xatp_gpfn: .long 0
/* Compat xen_memory_map: nr_entries, buffer (8 bytes). */
mmap: .long 4, e820buf
e820buf: .fill 4*20, 1, 0
domid_self: .word 0x7ff0, 0
/* Compat xen_memory_reservation: extent_start, nr_extents, extent_order,
 * mem_flags, domid (20 bytes). */
reservation: .long extent, 1, 0, 0
    .word 0x7ff0, 0
extent: .long 0
/* Compat gnttab_setup_table: dom, nr_frames, status, frame_list (16
 * bytes). */
setup: .word 0x7ff0, 0
    .long 1
setup_status: .word 0x63, 0
    .long gframes
gframes: .long 0, 0xa5a5a5a5
/* gnttab_query_size: dom, nr_frames, max_nr_frames, status. */
query: .word 0x7ff0, 0
    .long 0, 0
    .word 0x63, 0
/* Compat vcpu_runstate_info (44 bytes), then a sentinel. */
runstate: .fill 44, 1, 0xff
    .long 0xa5a5a5a5
v_rc: .long 0
v_pass: .long 0
hexdigits: .ascii "0123456789abcdef"
s_rc: .asciz " rc="
s_ok: .asciz " ok\n"
s_fail: .asciz " FAIL\n"
l_atp: .asciz "memop32 add_to_physmap(shared_info)"
l_time: .asciz "memop32 shared_info vcpu_time"
l_map: .asciz "memop32 memory_map"
l_cur: .asciz "memop32 current_reservation"
l_dec: .asciz "memop32 decrease_reservation"
l_pop: .asciz "memop32 populate_physmap"
l_setup: .asciz "memop32 gnttab setup_table"
l_query: .asciz "memop32 gnttab query_size"
l_runstate: .asciz "memop32 vcpu_op get_runstate_info"
line: .fill 80, 1, 0
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
    .align 4096
shinfo: .fill 4096, 1, 0
balloon: .fill 4096, 1, 0
