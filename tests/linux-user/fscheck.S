/*
 * fscheck: a static Linux user program for the slow Linux tests. It sets
 * its FS base with arch_prctl(ARCH_SET_FS) again and again, alternating
 * between two blocks whose first quadword points at itself (as a TLS
 * block's TCB does), and after the arch_prctl and after each of the
 * system calls that follow reads %fs:0 back. A lost FS base is what killed
 * static busybox processes at random on PVM hosts (issue 18 item 10):
 * reading %fs:0 then faults, or returns the other block.
 *
 *   fscheck [ITERATIONS]    (default 1000)
 *
 * Prints "FSCHECK n=N bad=B" and exits with 0 only if B is 0. No libc:
 * every instruction of it is here.
 */
	.set SYS_write, 1
	.set SYS_sched_yield, 24
	.set SYS_getpid, 39
	.set SYS_arch_prctl, 158
	.set SYS_exit_group, 231
	.set ARCH_SET_FS, 0x1002
	.set CALLS_PER_SET, 4

	.text
	.globl _start
_start:
	/* Iterations: argv[1] in decimal if given. */
	mov	$1000, %r12
	cmpq	$2, (%rsp)
	jb	1f
	mov	16(%rsp), %rsi
	xor	%r12d, %r12d
2:	movzbl	(%rsi), %eax
	sub	$'0', %eax
	cmp	$9, %eax
	ja	1f
	imul	$10, %r12, %r12
	add	%rax, %r12
	inc	%rsi
	jmp	2b
1:
	lea	block0(%rip), %rax
	mov	%rax, (%rax)
	lea	block1(%rip), %rax
	mov	%rax, (%rax)
	xor	%r13d, %r13d		/* iteration */
	xor	%r14d, %r14d		/* bad reads */
next_set:
	cmp	%r12, %r13
	jae	report
	/* The block for this iteration in %r15. */
	lea	block0(%rip), %r15
	lea	block1(%rip), %rax
	test	$1, %r13
	cmovnz	%rax, %r15
	mov	$SYS_arch_prctl, %eax
	mov	$ARCH_SET_FS, %edi
	mov	%r15, %rsi
	syscall
	call	check
	mov	$CALLS_PER_SET, %ebx
more_calls:
	/* Every eighth set yields, so other tasks get this vCPU between. */
	mov	$SYS_getpid, %eax
	mov	$SYS_sched_yield, %ecx
	test	$7, %r13
	cmovz	%ecx, %eax
	syscall
	call	check
	dec	%ebx
	jnz	more_calls
	inc	%r13
	jmp	next_set

/* Count a %fs:0 that is not %r15. */
check:
	mov	%fs:0, %rax
	cmp	%r15, %rax
	je	1f
	inc	%r14
1:	ret

report:
	/* The whole line in one write: two fscheck runs print at the same
	   time, and pieces written apart interleave on the console. */
	lea	line(%rip), %rdi
	lea	msg_n(%rip), %rsi
	mov	$msg_n_len, %ecx
	rep movsb
	mov	%r12, %rax
	call	put_decimal
	lea	msg_bad(%rip), %rsi
	mov	$msg_bad_len, %ecx
	rep movsb
	mov	%r14, %rax
	call	put_decimal
	movb	$'\n', (%rdi)
	inc	%rdi
	lea	line(%rip), %rsi
	mov	%rdi, %rdx
	sub	%rsi, %rdx
	call	write_out
	xor	%edi, %edi
	test	%r14, %r14
	setnz	%dil
	mov	$SYS_exit_group, %eax
	syscall
	hlt

/* write(1, %rsi, %rdx) */
write_out:
	mov	$SYS_write, %eax
	mov	$1, %edi
	syscall
	ret

/* %rax in decimal, appended at %rdi (which moves past it). */
put_decimal:
	lea	digits_end(%rip), %rsi
	mov	$10, %ecx
1:	xor	%edx, %edx
	div	%rcx
	add	$'0', %dl
	dec	%rsi
	mov	%dl, (%rsi)
	test	%rax, %rax
	jnz	1b
	lea	digits_end(%rip), %rcx
	sub	%rsi, %rcx
	rep movsb
	ret

	.section .rodata
msg_n:	.ascii	"FSCHECK n="
	.set msg_n_len, . - msg_n
msg_bad: .ascii	" bad="
	.set msg_bad_len, . - msg_bad

	.bss
	.balign	64
block0:	.skip	64
block1:	.skip	64
digits:	.skip	24
digits_end:
line:	.skip	64
