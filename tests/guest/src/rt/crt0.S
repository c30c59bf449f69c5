/* Start-up code, trap entry points and privilege switching. */
#define FRAME_SIZE (36 * 8)
#define RUN_MODE_MAGIC 0x7e57

    .section .text.init, "ax"
    .globl _start
_start:
    /* Secondary harts (none on the default board) park forever. */
    csrr t0, mhartid
    bnez t0, 9f
    la sp, __stack_top
    /* The trap vector first, so that even a trap in what follows is seen. */
    la t0, trap_entry
    csrw mtvec, t0
    /* Let S and U mode reach all of memory, as firmware does: without a PMP
     * entry the lower modes would fault on every access. */
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f             /* A=NAPOT, R, W, X */
    csrw pmpcfg0, t0
    /* Zero .bss */
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 1b
2:
    /* No timer or software interrupt pending until a test asks for one
     * (QEMU resets mtimecmp to 0, which would leave MTIP pending). */
    li t0, 0x2004000
    li t1, -1
    sd t1, 0(t0)
    li t0, 0x2000000
    sw zero, 0(t0)
    /* The FPU starts off (mstatus.FS=0); compiled code may use it. */
    li t0, (1 << 13)
    csrs mstatus, t0
    fscsr zero
    call main
    call exit_
9:  wfi
    j 9b

/* ---------------------------------------------------------------------- */
/* Saves all integer registers in a frame_t on the current stack (the
 * programs use one identity-mapped stack in every mode) and calls
 * \handler(frame). */
.macro SAVE_FRAME epc, cause, tval, status
    addi sp, sp, -FRAME_SIZE
    sd x1, 1*8(sp)
    sd x3, 3*8(sp)
    sd x4, 4*8(sp)
    sd x5, 5*8(sp)
    sd x6, 6*8(sp)
    sd x7, 7*8(sp)
    sd x8, 8*8(sp)
    sd x9, 9*8(sp)
    sd x10, 10*8(sp)
    sd x11, 11*8(sp)
    sd x12, 12*8(sp)
    sd x13, 13*8(sp)
    sd x14, 14*8(sp)
    sd x15, 15*8(sp)
    sd x16, 16*8(sp)
    sd x17, 17*8(sp)
    sd x18, 18*8(sp)
    sd x19, 19*8(sp)
    sd x20, 20*8(sp)
    sd x21, 21*8(sp)
    sd x22, 22*8(sp)
    sd x23, 23*8(sp)
    sd x24, 24*8(sp)
    sd x25, 25*8(sp)
    sd x26, 26*8(sp)
    sd x27, 27*8(sp)
    sd x28, 28*8(sp)
    sd x29, 29*8(sp)
    sd x30, 30*8(sp)
    sd x31, 31*8(sp)
    addi t0, sp, FRAME_SIZE
    sd t0, 2*8(sp)
    csrr t0, \epc
    sd t0, 32*8(sp)
    csrr t0, \cause
    sd t0, 33*8(sp)
    csrr t0, \tval
    sd t0, 34*8(sp)
    csrr t0, \status
    sd t0, 35*8(sp)
.endm

/* Restores the frame (possibly edited by the handler), sp last. */
.macro RESTORE_FRAME epc
    ld t0, 32*8(sp)
    csrw \epc, t0
    ld x1, 1*8(sp)
    ld x3, 3*8(sp)
    ld x4, 4*8(sp)
    ld x5, 5*8(sp)
    ld x6, 6*8(sp)
    ld x7, 7*8(sp)
    ld x8, 8*8(sp)
    ld x9, 9*8(sp)
    ld x10, 10*8(sp)
    ld x11, 11*8(sp)
    ld x12, 12*8(sp)
    ld x13, 13*8(sp)
    ld x14, 14*8(sp)
    ld x15, 15*8(sp)
    ld x16, 16*8(sp)
    ld x17, 17*8(sp)
    ld x18, 18*8(sp)
    ld x19, 19*8(sp)
    ld x20, 20*8(sp)
    ld x21, 21*8(sp)
    ld x22, 22*8(sp)
    ld x23, 23*8(sp)
    ld x24, 24*8(sp)
    ld x25, 25*8(sp)
    ld x26, 26*8(sp)
    ld x27, 27*8(sp)
    ld x28, 28*8(sp)
    ld x29, 29*8(sp)
    ld x30, 30*8(sp)
    ld x31, 31*8(sp)
    ld x2, 2*8(sp)
.endm

    .text
    .globl trap_entry
    .balign 4
trap_entry:
    SAVE_FRAME mepc, mcause, mtval, mstatus
    mv a0, sp
    call mtrap_c
    RESTORE_FRAME mepc
    mret

    .globl strap_entry
    .balign 4
strap_entry:
    SAVE_FRAME sepc, scause, stval, sstatus
    mv a0, sp
    call strap_c
    RESTORE_FRAME sepc
    sret

/* u64 run_in_mode(int mode, u64 (*fn)(u64), u64 arg) */
    .globl run_in_mode
run_in_mode:
    addi sp, sp, -112
    sd ra, 0(sp)
    sd s0, 8(sp)
    sd s1, 16(sp)
    sd s2, 24(sp)
    sd s3, 32(sp)
    sd s4, 40(sp)
    sd s5, 48(sp)
    sd s6, 56(sp)
    sd s7, 64(sp)
    sd s8, 72(sp)
    sd s9, 80(sp)
    sd s10, 88(sp)
    sd s11, 96(sp)
    la t0, g_run_mode_sp
    sd sp, 0(t0)
    li t0, (3 << 11)
    csrc mstatus, t0
    slli t0, a0, 11
    csrs mstatus, t0
    la t0, 1f
    csrw mepc, t0
    mv t1, a1
    mv a0, a2
    mret
1:  /* now in the lower mode */
    jalr t1
    li a7, RUN_MODE_MAGIC
    ecall
2:  j 2b

    /* The M-mode handler resumes here (in M-mode, sp = g_run_mode_sp) when
     * the lower-mode function has returned through the ecall above. */
    .globl run_mode_return
run_mode_return:
    ld ra, 0(sp)
    ld s0, 8(sp)
    ld s1, 16(sp)
    ld s2, 24(sp)
    ld s3, 32(sp)
    ld s4, 40(sp)
    ld s5, 48(sp)
    ld s6, 56(sp)
    ld s7, 64(sp)
    ld s8, 72(sp)
    ld s9, 80(sp)
    ld s10, 88(sp)
    ld s11, 96(sp)
    addi sp, sp, 112
    ret
