# Entry of the snapshot test program: stack, FPU on, then main().
    .section .text.start, "ax"
    .globl _start
_start:
    la sp, __stack_top
    li t0, (1 << 13)        # mstatus.FS = Initial: FP instructions allowed
    csrs mstatus, t0
    call main
1:  j 1b
