/*
 * Test-only stand-in for pocketvm's power-on: QEMU cannot set a1/a2 or put
 * data where its own device tree blob goes, so this M-mode stub copies a
 * staged block of pocketvm's boot layout into place (hart 0), then starts
 * every hart at ENTRY with a0 = hart id, a1 = DTB, a2 = INFO.
 * STAGE_SRC, STAGE_DST, STAGE_LEN (multiple of 8), DTB, INFO, ENTRY come
 * from -D on the compiler command line.
 */
    .section .text
    .globl _start
_start:
    csrr t0, mhartid
    bnez t0, wait
    li t0, STAGE_SRC
    li t1, STAGE_DST
    li t2, STAGE_LEN
1:  beqz t2, 2f
    ld t3, 0(t0)
    sd t3, 0(t1)
    addi t0, t0, 8
    addi t1, t1, 8
    addi t2, t2, -8
    j 1b
2:  fence rw, rw
    fence.i
    la t0, ready
    li t1, 1
    sw t1, 0(t0)
    j go
wait:
    la t0, ready
3:  lw t1, 0(t0)
    beqz t1, 3b
    fence rw, rw
    fence.i
go:
    csrr a0, mhartid
    li a1, DTB
    li a2, INFO
    li t0, ENTRY
    jr t0

    .section .data
    .balign 8
ready: .word 0
