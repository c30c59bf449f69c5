/* Privilege transitions and interrupts: mret/sret and the mstatus
 * MPP/MPIE/SPP/SPIE stacks, trap delegation to S-mode (medeleg/mideleg)
 * with scause/sepc/stval, machine software and timer interrupts through
 * the CLINT, supervisor interrupts, their priority order, global enables
 * per privilege mode, and wfi with an interrupt pending.  Exact interrupt
 * arrival times are never printed, only which interrupt was taken.
 */
#include "rt.h"

#define MIP_SSIP (1UL << 1)
#define MIP_MSIP (1UL << 3)
#define MIP_STIP (1UL << 5)
#define MIP_MTIP (1UL << 7)

static volatile u64 g_site;
#define AT_SITE(insn) asm volatile("lla t0, 1f\n\tsd t0, %0\n1:\t" insn : "=m"(g_site) :: "t0", "t1", "memory")

static u64 mtime(void) { return mmio_r64(CLINT_MTIME); }

/* --- mret / sret ---------------------------------------------------------- */
static void test_mret_to_m(void)
{
    csr_write(mie, 0);
    csr_clear(mstatus, MSTATUS_MIE);
    csr_set(mstatus, MSTATUS_MPP | MSTATUS_MPIE);
    asm volatile("lla t0, 1f\n\tcsrw mepc, t0\n\tmret\n1:" ::: "t0", "memory");
    u64 st = csr_read(mstatus);
    csr_clear(mstatus, MSTATUS_MIE);
    CHECK("mret: MIE <- MPIE", st & MSTATUS_MIE, MSTATUS_MIE);
    CHECK("mret: MPIE <- 1", st & MSTATUS_MPIE, MSTATUS_MPIE);
    CHECK("mret: MPP <- U", st & MSTATUS_MPP, 0);
    pr("mret to M done\n");
}

/* In S-mode: sret into U-mode at the label; the rest runs in U. */
static u64 s_sret_to_u(u64 arg)
{
    asm volatile("lla t0, 1f\n\tcsrw sepc, t0\n\t"
                 "li t0, 0x100\n\tcsrc sstatus, t0\n\t" /* SPP = U */
                 "li t0, 0x22\n\tcsrs sstatus, t0\n\t"  /* SPIE = 1, SIE = 1 */
                 "sret\n1:" ::: "t0", "memory");
    /* Only legal in S: proves we are in U now. */
    AT_SITE("csrr t1, sstatus");
    return arg;
}

static u64 s_sret_to_s(u64 arg)
{
    asm volatile("lla t0, 1f\n\tcsrw sepc, t0\n\t"
                 "li t0, 0x100\n\tcsrs sstatus, t0\n\t" /* SPP = S */
                 "li t0, 0x20\n\tcsrc sstatus, t0\n\t"  /* SPIE = 0 */
                 "li t0, 0x2\n\tcsrs sstatus, t0\n\t"   /* SIE = 1 */
                 "sret\n1:" ::: "t0", "memory");
    return csr_read(sstatus);
}

static void test_sret(void)
{
    csr_write(mie, 0);
    trap_reset();
    CHECK("sret to U: run", run_in_mode(PRV_S, s_sret_to_u, 7), 7);
    CHECK("sret to U: csrr sstatus in U is illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    CHECK("sret to U: trap from U", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_U);
    CHECK("sret to U: epc", g_mtrap.epc, g_site);
    u64 ss = csr_read(sstatus);
    CHECK("sret: SIE <- SPIE", ss & MSTATUS_SIE, MSTATUS_SIE);
    CHECK("sret: SPIE <- 1", ss & MSTATUS_SPIE, MSTATUS_SPIE);
    CHECK("sret: SPP <- U", ss & MSTATUS_SPP, 0);

    trap_reset();
    ss = run_in_mode(PRV_S, s_sret_to_s, 0);
    CHECK("sret to S: no trap", g_mtrap.cause, NO_TRAP);
    CHECK("sret to S: SIE <- SPIE (0)", ss & MSTATUS_SIE, 0);
    CHECK("sret to S: SPIE <- 1", ss & MSTATUS_SPIE, MSTATUS_SPIE);
    CHECK("sret to S: SPP <- U", ss & MSTATUS_SPP, 0);
    csr_clear(sstatus, MSTATUS_SIE | MSTATUS_SPIE);
    pr("sret done\n");
}

/* --- delegation --------------------------------------------------------- */
static u64 lower_ebreak(u64 arg) { AT_SITE("ebreak"); return arg; }
static u64 lower_ecall(u64 arg)
{
    asm volatile("li a7, 0\n\tlla t0, 1f\n\tsd t0, %0\n1:\tecall" : "=m"(g_site) :: "t0", "a7", "memory");
    return arg;
}
static u64 lower_illegal(u64 arg) { AT_SITE("csrr t1, mstatus"); return arg; }
static u64 lower_load0(u64 arg) { AT_SITE("lw t1, 0x10(zero)"); return arg; }

static void expect_s(const char *what, u64 cause, u64 spp, int tval_rule_zero, u64 tval)
{
    const volatile trap_info_t *t = &g_strap;
    int tval_ok = tval_rule_zero ? t->tval == 0 : (t->tval == 0 || t->tval == tval);
    pr("%s: scause %lx, sepc %s, stval %s, SPP %lu, M saw %s\n", what, t->cause,
       t->epc == g_site ? "ok" : "WRONG", tval_ok ? "ok" : "WRONG", (t->status >> 8) & 1,
       g_mtrap.cause == NO_TRAP ? "nothing" : "a trap");
    if (t->cause != cause || t->epc != g_site || !tval_ok || ((t->status >> 8) & 1) != spp ||
        g_mtrap.cause != NO_TRAP || t->count != 1) {
        g_failures++;
        pr("FAIL %s: scause %lx sepc %lx stval %lx sstatus %lx count %lu, mcause %lx\n", what, t->cause,
           t->epc, t->tval, t->status, t->count, g_mtrap.cause);
    }
}

static void test_delegation(void)
{
    install_strap();
    csr_write(medeleg, (1UL << CAUSE_BREAKPOINT) | (1UL << CAUSE_ECALL_U) | (1UL << CAUSE_ILLEGAL) |
                           (1UL << CAUSE_LOAD_ACCESS));
    for (int mode = PRV_U; mode <= PRV_S; mode++) {
        pr("-- from %s\n", mode == PRV_U ? "U" : "S");
        /* SIE=1 before the trap: SPIE must record it, SIE must clear. */
        csr_set(sstatus, MSTATUS_SIE);
        trap_reset();
        run_in_mode(mode, lower_ebreak, 0);
        expect_s("ebreak", CAUSE_BREAKPOINT, mode, 0, g_site);
        CHECK("delegated trap: SPIE <- SIE", (g_strap.status & MSTATUS_SPIE) != 0, 1);
        CHECK("delegated trap: SIE <- 0", g_strap.status & MSTATUS_SIE, 0);
        csr_clear(sstatus, MSTATUS_SIE);

        trap_reset();
        run_in_mode(mode, lower_illegal, 0);
        expect_s("illegal", CAUSE_ILLEGAL, mode, 0, 0x30002373UL);
        trap_reset();
        run_in_mode(mode, lower_load0, 0);
        expect_s("load access", CAUSE_LOAD_ACCESS, mode, 0, 0x10);
        trap_reset();
        run_in_mode(mode, lower_ecall, 0);
        if (mode == PRV_U) {
            expect_s("ecall", CAUSE_ECALL_U, mode, 1, 0);
        } else {
            /* ecall from S is not delegated here: M handles it. */
            CHECK("ecall from S goes to M", g_mtrap.cause, CAUSE_ECALL_S);
            CHECK("  S saw nothing", g_strap.cause, NO_TRAP);
        }
    }
    /* Traps from M-mode are never delegated. */
    trap_reset();
    asm volatile("ebreak");
    CHECK("ebreak in M with medeleg: M handles it", g_mtrap.cause, CAUSE_BREAKPOINT);
    CHECK("  S saw nothing", g_strap.cause, NO_TRAP);
    csr_write(medeleg, 0);
    pr("delegation done\n");
}

/* --- interrupts ------------------------------------------------------------ */
static u64 g_order[8];
static int g_norder;
static int log_hook(frame_t *f)
{
    if (g_norder < 8)
        g_order[g_norder++] = f->cause;
    return 0; /* default handling silences the source */
}

static void wait_trap(volatile trap_info_t *t, u64 count)
{
    for (int i = 0; i < 200000 && t->count < count; i++)
        asm volatile("nop");
}

static void test_machine_interrupts(void)
{
    csr_write(mideleg, 0);
    /* software interrupt */
    trap_reset();
    csr_write(mie, MIP_MSIP);
    mmio_w32(CLINT_MSIP, 1);
    CHECK("msip visible in mip", csr_read(mip) & MIP_MSIP, MIP_MSIP);
    CHECK("not taken while MIE=0", g_mtrap.cause, NO_TRAP);
    csr_set(mstatus, MSTATUS_MIE);
    wait_trap(&g_mtrap, 1);
    csr_clear(mstatus, MSTATUS_MIE);
    pr("MSI: mcause %lx mtval %lx\n", g_mtrap.cause, g_mtrap.tval);
    CHECK("MSI cause", g_mtrap.cause, CAUSE_INTR | 3);
    CHECK("MSI mtval", g_mtrap.tval, 0);
    CHECK("MSI: MPIE", (g_mtrap.status & MSTATUS_MPIE) != 0, 1);
    CHECK("MSI: MPP", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_M);
    CHECK("msip cleared", csr_read(mip) & MIP_MSIP, 0);

    /* timer interrupt */
    trap_reset();
    csr_write(mie, MIP_MTIP);
    mmio_w64(CLINT_MTIMECMP, mtime() + 100);
    csr_set(mstatus, MSTATUS_MIE);
    for (int i = 0; i < 10000000 && g_mtrap.count == 0; i++)
        asm volatile("nop");
    csr_clear(mstatus, MSTATUS_MIE);
    pr("MTI: mcause %lx\n", g_mtrap.cause);
    CHECK("MTI cause", g_mtrap.cause, CAUSE_INTR | 7);
    CHECK("MTIP clear after mtimecmp = max", csr_read(mip) & MIP_MTIP, 0);

    /* mtime moves forward */
    u64 t0 = mtime();
    for (volatile int i = 0; i < 1000; i++) {
    }
    CHECK_TRUE("mtime does not go back", mtime() >= t0);

    /* All four pending at once: each is taken exactly once.  The ISA
     * orders them MSI, MTI, SSI, STI, but QEMU 7.2 takes them by ascending
     * cause number, so only the set is compared. */
    trap_reset();
    g_norder = 0;
    g_mtrap_hook = log_hook;
    csr_write(mie, MIP_MSIP | MIP_MTIP | MIP_SSIP | MIP_STIP);
    csr_set(mip, MIP_STIP | MIP_SSIP);
    mmio_w64(CLINT_MTIMECMP, 0);
    mmio_w32(CLINT_MSIP, 1);
    for (int i = 0; i < 100000 && !(csr_read(mip) & MIP_MTIP); i++) {
    }
    CHECK("all four pending", csr_read(mip) & 0xaa, 0xaa);
    csr_set(mstatus, MSTATUS_MIE);
    wait_trap(&g_mtrap, 4);
    csr_clear(mstatus, MSTATUS_MIE);
    g_mtrap_hook = 0;
    u64 seen = 0;
    for (int i = 0; i < g_norder; i++)
        seen |= 1UL << (g_order[i] & 63);
    pr("four pending interrupts: %d taken, causes mask %lx\n", g_norder, seen);
    CHECK("4 interrupts", g_norder, 4);
    CHECK("MSI, MTI, SSI, STI each once", seen, 0xaa);
    csr_write(mie, 0);
    pr("machine interrupts done\n");
}

static void test_wfi(void)
{
    /* wfi returns once an enabled interrupt is pending, even with MIE=0,
     * and the interrupt is taken only when MIE is set. It may also return
     * early, hence the loop. */
    trap_reset();
    csr_write(mie, MIP_MTIP);
    mmio_w64(CLINT_MTIMECMP, mtime() + 1000);
    for (int i = 0; i < 1000000 && !(csr_read(mip) & MIP_MTIP); i++)
        asm volatile("wfi");
    CHECK("wfi: timer pending", csr_read(mip) & MIP_MTIP, MIP_MTIP);
    CHECK("wfi: not taken with MIE=0", g_mtrap.cause, NO_TRAP);
    csr_set(mstatus, MSTATUS_MIE);
    wait_trap(&g_mtrap, 1);
    csr_clear(mstatus, MSTATUS_MIE);
    CHECK("wfi: then taken", g_mtrap.cause, CAUSE_INTR | 7);

    /* Already pending: wfi does not wait. */
    trap_reset();
    csr_write(mie, MIP_MSIP);
    mmio_w32(CLINT_MSIP, 1);
    asm volatile("wfi");
    CHECK("wfi with MSI pending returns", g_mtrap.cause, NO_TRAP);
    mmio_w32(CLINT_MSIP, 0);
    csr_write(mie, 0);
    pr("wfi done\n");
}

static u64 spin_m(u64 arg)
{
    for (int i = 0; i < 200000 && g_mtrap.count == 0; i++)
        asm volatile("nop");
    return arg;
}
static u64 spin_s(u64 arg)
{
    for (int i = 0; i < 200000 && g_strap.count == 0; i++)
        asm volatile("nop");
    return arg;
}
static u64 s_enable_and_spin(u64 arg)
{
    csr_set(sstatus, MSTATUS_SIE);
    spin_s(arg);
    csr_clear(sstatus, MSTATUS_SIE);
    return arg;
}
static u64 s_raise_ssip(u64 arg)
{
    csr_set(sstatus, MSTATUS_SIE);
    csr_set(sip, MIP_SSIP);
    spin_s(arg);
    csr_clear(sstatus, MSTATUS_SIE);
    return arg;
}

static void test_lower_mode_interrupts(void)
{
    install_strap();
    /* M interrupts are enabled in S/U whatever mstatus.MIE says. */
    for (int mode = PRV_U; mode <= PRV_S; mode++) {
        trap_reset();
        csr_write(mie, MIP_MSIP);
        mmio_w32(CLINT_MSIP, 1);
        run_in_mode(mode, spin_m, 0);
        csr_write(mie, 0);
        pr("MSI in %s with MIE=0: mcause %lx from %lu\n", mode ? "S" : "U", g_mtrap.cause,
           (g_mtrap.status & MSTATUS_MPP) >> 11);
        CHECK("MSI in lower mode taken", g_mtrap.cause, CAUSE_INTR | 3);
        CHECK("  from that mode", (g_mtrap.status & MSTATUS_MPP) >> 11, mode);
    }

    /* Delegated supervisor interrupts. */
    csr_write(mideleg, MIP_SSIP | MIP_STIP);
    csr_write(mie, MIP_SSIP | MIP_STIP);
    /* never taken in M-mode, even with MIE=1 */
    trap_reset();
    csr_set(mip, MIP_SSIP);
    csr_set(mstatus, MSTATUS_MIE);
    for (volatile int i = 0; i < 100; i++) {
    }
    csr_clear(mstatus, MSTATUS_MIE);
    CHECK("delegated SSI not taken in M", g_mtrap.cause, NO_TRAP);
    /* not taken in S with SIE=0 ... */
    trap_reset();
    csr_clear(sstatus, MSTATUS_SIE);
    run_in_mode(PRV_S, spin_s, 0);
    CHECK("delegated SSI not taken in S with SIE=0", g_strap.cause, NO_TRAP);
    /* ... but taken in U whatever SIE says */
    trap_reset();
    run_in_mode(PRV_U, spin_s, 0);
    pr("SSI in U with SIE=0: scause %lx SPP %lu\n", g_strap.cause, (g_strap.status >> 8) & 1);
    CHECK("delegated SSI taken in U", g_strap.cause, CAUSE_INTR | 1);
    CHECK("  M saw nothing", g_mtrap.cause, NO_TRAP);
    CHECK("  stval 0", g_strap.tval, 0);
    CHECK("  SSIP cleared by the S handler", csr_read(mip) & MIP_SSIP, 0);
    /* S raises its own software interrupt through sip */
    trap_reset();
    run_in_mode(PRV_S, s_raise_ssip, 0);
    pr("SSI raised in S: scause %lx SPP %lu\n", g_strap.cause, (g_strap.status >> 8) & 1);
    CHECK("SSI from sip write", g_strap.cause, CAUSE_INTR | 1);
    CHECK("  from S", (g_strap.status >> 8) & 1, 1);
    /* STIP set by M, taken by S once SIE=1 */
    trap_reset();
    csr_set(mip, MIP_STIP);
    run_in_mode(PRV_S, s_enable_and_spin, 0);
    csr_clear(mip, MIP_STIP);
    pr("STI in S: scause %lx\n", g_strap.cause);
    CHECK("STI delegated", g_strap.cause, CAUSE_INTR | 5);
    CHECK("  M saw nothing", g_mtrap.cause, NO_TRAP);

    /* Not delegated: SSI traps to M even from S with SIE=0. */
    csr_write(mideleg, 0);
    csr_write(mie, MIP_SSIP);
    trap_reset();
    csr_set(mip, MIP_SSIP);
    run_in_mode(PRV_S, spin_m, 0);
    pr("undelegated SSI in S: mcause %lx\n", g_mtrap.cause);
    CHECK("undelegated SSI goes to M", g_mtrap.cause, CAUSE_INTR | 1);
    CHECK("  S saw nothing", g_strap.cause, NO_TRAP);
    csr_write(mie, 0);
    csr_write(mip, 0);
    pr("lower-mode interrupts done\n");
}

int main(void)
{
    test_mret_to_m();
    test_sret();
    test_delegation();
    test_machine_interrupts();
    test_wfi();
    test_lower_mode_interrupts();
    finish();
}
