//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, which the compiler
//! emits calls to and which no libc provides here. Written in assembly so the
//! compiler cannot turn them back into calls to themselves. Ring 3 only.
//! Also a never-called `rust_eh_personality` for core's unwind tables.

core::arch::global_asm!(
    r#"
    .section .text.kxen_mem, "ax", @progbits

    .globl memcpy
    .type memcpy, @function
memcpy:
    movq %rdi, %rax
    movq %rdx, %rcx
    rep movsb
    ret

    .globl memmove
    .type memmove, @function
memmove:
    movq %rdi, %rax
    movq %rdx, %rcx
    cmpq %rsi, %rdi
    jbe .Lmemmove_fwd
    leaq -1(%rsi,%rdx), %rsi
    leaq -1(%rdi,%rdx), %rdi
    std
    rep movsb
    cld
    ret
.Lmemmove_fwd:
    rep movsb
    ret

    .globl memset
    .type memset, @function
memset:
    movq %rdi, %r9
    movl %esi, %eax
    movq %rdx, %rcx
    rep stosb
    movq %r9, %rax
    ret

    .globl memcmp
    .type memcmp, @function
    .globl bcmp
    .type bcmp, @function
memcmp:
bcmp:
    xorl %eax, %eax
    testq %rdx, %rdx
    jz .Lmemcmp_done
.Lmemcmp_loop:
    movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    subl %ecx, %eax
    jnz .Lmemcmp_done
    incq %rdi
    incq %rsi
    decq %rdx
    jnz .Lmemcmp_loop
.Lmemcmp_done:
    ret

    /* core's unwind tables name the personality routine even with
       panic=abort; nothing ever calls it. */
    .globl rust_eh_personality
    .type rust_eh_personality, @function
rust_eh_personality:
    ud2

    .text
"#,
    options(att_syntax)
);
