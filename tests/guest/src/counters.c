/* mcycle/minstret writes and mcountinhibit.
 *
 * A CSR write to a counter replaces that instruction's own increment: the
 * next instruction reads exactly the value written. QEMU 7.2 without
 * -icount derives uninhibited counters from the host's clock, so those
 * values are not compared (tests/cpu/test_counters.py pins them down for
 * pocketvm). With mcountinhibit.CY/IR set a counter holds still in both,
 * so what is written must be read back exactly, through the user shadows
 * too; once released it counts up from there. mcycle and minstret are
 * separate registers.
 */
#include "rt.h"

#define MCOUNTINHIBIT 0x320

int main(void)
{
    u64 v;
    csr_write(MCOUNTINHIBIT, 5); /* CY and IR */
    asm volatile("csrw minstret, %1\n\tcsrr %0, minstret" : "=r"(v) : "r"(1000UL));
    pr("inhibited minstret after csrw 1000: %lu\n", v);
    CHECK("inhibited minstret", v, 1000);
    asm volatile("csrw mcycle, %1\n\tnop\n\tnop\n\tcsrr %0, mcycle" : "=r"(v) : "r"(2000UL));
    pr("inhibited mcycle after csrw 2000 and two nops: %lu\n", v);
    CHECK("inhibited mcycle", v, 2000);
    v = csr_read(minstret);
    pr("minstret after the mcycle write: %lu\n", v);
    CHECK("mcycle and minstret are separate", v, 1000);
    v = csr_read(instret);
    pr("instret shadow: %lu\n", v);
    CHECK("instret shadow", v, 1000);
    v = csr_read(cycle);
    pr("cycle shadow: %lu\n", v);
    CHECK("cycle shadow", v, 2000);
    asm volatile("csrwi minstret, 7\n\tcsrr %0, minstret" : "=r"(v));
    pr("inhibited minstret after csrwi 7: %lu\n", v);
    CHECK("csrwi minstret", v, 7);
    asm volatile("csrrw %0, mcycle, %1" : "=r"(v) : "r"(5UL));
    pr("csrrw mcycle reads the old value: %lu\n", v);
    CHECK("csrrw mcycle old value", v, 2000);
    asm volatile("csrs minstret, %1\n\tcsrr %0, minstret" : "=r"(v) : "r"(0x100UL));
    pr("csrs minstret 0x100: %lx\n", v);
    CHECK("csrs minstret", v, 0x107);
    asm volatile("csrc mcycle, %1\n\tcsrr %0, mcycle" : "=r"(v) : "r"(1UL));
    pr("csrc mcycle 1: %lu\n", v);
    CHECK("csrc mcycle", v, 4);

    /* Only IR inhibited: mcycle counts, minstret holds. */
    csr_write(MCOUNTINHIBIT, 4);
    csr_write(minstret, 50);
    for (volatile int i = 0; i < 10; i++) {
    }
    v = csr_read(minstret);
    pr("minstret held while mcycle counts: %lu\n", v);
    CHECK("IR inhibited", v, 50);
    csr_write(MCOUNTINHIBIT, 5);
    csr_write(mcycle, 9);
    csr_write(MCOUNTINHIBIT, 0);
    for (volatile int i = 0; i < 10; i++) {
    }
    u64 c = csr_read(mcycle), i = csr_read(minstret);
    pr("released counters count up: %s\n", c > 9 && i > 50 ? "yes" : "NO");
    CHECK_TRUE("released mcycle counts", c > 9);
    CHECK_TRUE("released minstret counts", i > 50);

    /* The user shadows stay read-only. */
    trap_reset();
    asm volatile("csrw instret, zero");
    CHECK("csrw instret: illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    trap_reset();
    asm volatile("csrwi cycle, 1");
    CHECK("csrwi cycle: illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    pr("user shadows read-only: cause %lx\n", g_mtrap.cause);
    finish();
}
