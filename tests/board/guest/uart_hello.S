/*
 * The smallest useful bare-metal program, meant to be linked the quick way
 * (gcc -nostdlib -static -Wl,-Ttext=0x80000000, no linker script): hart 0
 * prints a line from .rodata, reached through the GOT (a writable segment
 * of its own), on the 16550 UART and stops the machine through the test
 * device with exit code 7. Other harts park.
 */
#define UART 0x10000000
#define TEST 0x100000
#define EXIT_CODE 7

    .section .text
    .globl _start
_start:
    csrr t0, mhartid
    bnez t0, park
    la a0, msg
    li t1, UART
1:  lbu t2, 0(a0)
    beqz t2, 2f
    sb t2, 0(t1)
    addi a0, a0, 1
    j 1b
2:  li t1, TEST
    li t2, (EXIT_CODE << 16) | 0x3333
    sw t2, 0(t1)
park:
    wfi
    j park

    .section .rodata
msg: .asciz "hello from a quick-linked program\n"
