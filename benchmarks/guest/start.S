/* M-mode start-up shared by the benchmark programs: stack, trap vector, PMP
 * (so S-mode may reach memory), .bss, FPU on, then main(); its return value
 * becomes the exit code written to the test device. */
    .section .text.init, "ax"
    .globl _start
_start:
    csrr t0, mhartid
    bnez t0, 9f
    la sp, __stack_top
    la t0, bench_trap_entry
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f             /* NAPOT, RWX over all of memory */
    csrw pmpcfg0, t0
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 1b
2:  li t0, (1 << 13)        /* mstatus.FS = Initial */
    csrs mstatus, t0
    fscsr zero
    call main
    call bench_exit
9:  wfi
    j 9b

/* Any trap ends in bench_trap (C), which reports it; S-mode programs use an
 * ecall to come back and finish in M-mode. Saves only what C clobbers. */
    .align 2
    .globl bench_trap_entry
bench_trap_entry:
    addi sp, sp, -16*8
    sd ra, 0(sp)
    sd a0, 8(sp)
    sd a1, 16(sp)
    sd a2, 24(sp)
    sd a3, 32(sp)
    sd a4, 40(sp)
    sd a5, 48(sp)
    sd a6, 56(sp)
    sd a7, 64(sp)
    sd t0, 72(sp)
    sd t1, 80(sp)
    sd t2, 88(sp)
    sd t3, 96(sp)
    sd t4, 104(sp)
    sd t5, 112(sp)
    sd t6, 120(sp)
    mv a0, sp
    call bench_trap
    ld ra, 0(sp)
    ld a0, 8(sp)
    ld a1, 16(sp)
    ld a2, 24(sp)
    ld a3, 32(sp)
    ld a4, 40(sp)
    ld a5, 48(sp)
    ld a6, 56(sp)
    ld a7, 64(sp)
    ld t0, 72(sp)
    ld t1, 80(sp)
    ld t2, 88(sp)
    ld t3, 96(sp)
    ld t4, 104(sp)
    ld t5, 112(sp)
    ld t6, 120(sp)
    addi sp, sp, 16*8
    mret
