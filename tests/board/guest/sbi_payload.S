/*
 * A stand-in for a Linux kernel: a RISC-V Image header in front of a few
 * S-mode instructions. Started by OpenSBI, it checks the FDT magic at a1,
 * prints "PAYLOAD hart=<a0> dtb=<a1> OK|BAD" through the SBI console and
 * shuts the machine down with the SBI system reset extension.
 */
    .section .text
    .globl _start
_start:
    .option push
    .option norvc
    j real_start                /* code0 */
    .word 0                     /* code1 */
    .option pop
    .dword 0x200000             /* text_offset */
    .dword payload_end - _start  /* image_size */
    .dword 0                    /* flags: little-endian */
    .word 2                     /* header version 0.2 */
    .word 0                     /* res1 */
    .dword 0                    /* res2 */
    .ascii "RISCV\0\0\0"        /* magic */
    .ascii "RSC\x05"            /* magic2 */
    .word 0                     /* res3 */

real_start:
    mv s0, a0
    mv s1, a1
    la a0, msg_head
    call puts
    mv a0, s0
    call puthex
    la a0, msg_dtb
    call puts
    mv a0, s1
    call puthex
    lwu t1, 0(s1)
    li t2, 0xedfe0dd0
    la a0, msg_ok
    beq t1, t2, 1f
    la a0, msg_bad
1:  call puts
    /* SBI SRST: shutdown, no reason */
    li a7, 0x53525354
    li a6, 0
    li a0, 0
    li a1, 0
    ecall
    /* legacy shutdown, should SRST be missing */
    li a7, 8
    ecall
2:  wfi
    j 2b

/* puts(a0) with the legacy SBI console_putchar */
puts:
    mv t3, a0
1:  lbu a0, 0(t3)
    beqz a0, 2f
    li a7, 1
    ecall
    addi t3, t3, 1
    j 1b
2:  ret

/* puthex(a0): 0x + 16 hex digits */
puthex:
    mv t4, a0
    li a0, '0'
    li a7, 1
    ecall
    li a0, 'x'
    li a7, 1
    ecall
    li t5, 60
1:  srl a0, t4, t5
    andi a0, a0, 15
    li t6, 10
    blt a0, t6, 2f
    addi a0, a0, 'a' - 10 - '0'
2:  addi a0, a0, '0'
    li a7, 1
    ecall
    addi t5, t5, -4
    bgez t5, 1b
    ret

    .section .rodata
msg_head: .asciz "PAYLOAD hart="
msg_dtb:  .asciz " dtb="
msg_ok:   .asciz " OK\n"
msg_bad:  .asciz " BAD\n"
    .section .bss
    .balign 8
    .space 4096                 /* gives image_size a bss part to account for */
payload_end:
