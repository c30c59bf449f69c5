/*
 * Bare-metal M-mode check of the boot hand-off: hart 0 looks for the FDT
 * magic at the address in a1, says OK or BAD on the 16550 UART, and stops
 * the machine through the test device (pass: 0x5555, fail: exit code 1).
 * Built with -DFIND_MODEL, it also looks for the string "pocketvm" in the
 * first 16 KiB of the blob, to be sure the tree is pocketvm's and not one
 * the VMM made up itself.
 * Other harts park.
 */
#define UART 0x10000000
#define TEST 0x100000

    .section .text
    .globl _start
_start:
    csrr t0, mhartid
    bnez t0, park
    lwu t1, 0(a1)
    li t2, 0xedfe0dd0          /* 0xd00dfeed stored big-endian, loaded little-endian */
    bne t1, t2, bad
#ifdef FIND_MODEL
    la a2, marker
    mv a3, a1
    li t4, 16384
    add t4, a1, t4
scan:
    bgeu a3, t4, bad
    mv t5, a3
    mv t6, a2
cmp:
    lbu t1, 0(t6)
    beqz t1, found
    lbu t2, 0(t5)
    bne t1, t2, next
    addi t5, t5, 1
    addi t6, t6, 1
    j cmp
next:
    addi a3, a3, 1
    j scan
found:
#endif
    la a0, msg_ok
    call puts
    li t1, 0x5555
    j stop
bad:
    la a0, msg_bad
    call puts
    li t1, 0x13333
stop:
    li t0, TEST
    sw t1, 0(t0)
park:
    wfi
    j park

/* puts(a0): busy-wait on LSR.THRE for each byte. */
puts:
    li t0, UART
1:  lbu t1, 0(a0)
    beqz t1, 3f
2:  lbu t2, 5(t0)
    andi t2, t2, 0x20
    beqz t2, 2b
    sb t1, 0(t0)
    addi a0, a0, 1
    j 1b
3:  ret

    .section .rodata
msg_ok:  .asciz "DTB OK\n"
msg_bad: .asciz "DTB BAD\n"
marker:  .asciz "pocketvm"
