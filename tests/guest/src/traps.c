/* Synchronous exceptions: illegal instructions (all-zero and all-ones
 * words, reserved encodings, privileged instructions in lower modes),
 * breakpoints, ecall from U/S/M, load/store/fetch access faults; with the
 * cause, the exception pc and the trap value, and the mstatus stack on trap
 * entry and mret.  Where the ISA lets the trap value be either zero or a
 * specific value, the transcript says "tval ok" instead of the value.
 */
#include "rt.h"

static volatile u64 g_site;
/* Records the address of `insn` in g_site, then executes it. */
#define AT_SITE(insn) asm volatile("lla t0, 1f\n\tsd t0, %0\n1:\t" insn : "=m"(g_site) :: "t0", "t1", "memory")
/* The same with a1 = addr. */
#define AT_SITE_A1(insn, addr)                                                                     \
    asm volatile("mv a1, %1\n\tlla t0, 1f\n\tsd t0, %0\n1:\t" insn                                \
                 : "=m"(g_site)                                                                    \
                 : "r"((u64)(addr))                                                                \
                 : "t0", "t1", "a1", "a2", "ft0", "memory")

#define TVAL_ZERO 0   /* tval must be 0 */
#define TVAL_EXACT 1  /* tval must be `want` */
#define TVAL_OR_ZERO 2 /* tval may be 0 or `want` */

static void expect(const char *what, u64 cause, u64 epc, int rule, u64 want)
{
    const volatile trap_info_t *t = &g_mtrap;
    int tval_ok = rule == TVAL_ZERO ? t->tval == 0
                  : rule == TVAL_EXACT ? t->tval == want
                                       : (t->tval == 0 || t->tval == want);
    int epc_ok = t->epc == epc;
    pr("%s: cause %lx, epc %s, tval %s\n", what, t->cause, epc_ok ? "ok" : "WRONG",
       tval_ok ? "ok" : "WRONG");
    if (t->cause != cause || !epc_ok || !tval_ok || t->count != 1) {
        g_failures++;
        pr("FAIL %s: cause %lx epc %lx tval %lx count %lu; expected cause %lx epc %lx tval %lx\n", what,
           t->cause, t->epc, t->tval, t->count, cause, epc, want);
    }
}

#define M_ILLEGAL(what, insn, bits)                                                                \
    do {                                                                                           \
        trap_reset();                                                                              \
        AT_SITE(insn);                                                                             \
        expect("illegal " what, CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, bits);                        \
    } while (0)

static void test_illegal_m(void)
{
    M_ILLEGAL("16-bit zero", ".2byte 0x0000", 0);
    M_ILLEGAL("all ones", ".4byte 0xffffffff", 0xffffffffUL);
    M_ILLEGAL("custom-0 opcode", ".4byte 0x0000000b", 0xbUL);
    M_ILLEGAL("load funct3=7", ".4byte 0x00007003", 0x7003UL);
    M_ILLEGAL("system funct3=4", ".4byte 0x00004073", 0x4073UL);
    M_ILLEGAL("op funct7=0x40 funct3=1", ".4byte 0x40001033", 0x40001033UL);
    M_ILLEGAL("c.addi4spn imm=0", ".2byte 0x0004", 0x4UL);
    M_ILLEGAL("c.addi16sp imm=0", ".2byte 0x6101", 0x6101UL);
    M_ILLEGAL("c.lui imm=0", ".2byte 0x6081", 0x6081UL);
    M_ILLEGAL("c.jr x0", ".2byte 0x8002", 0x8002UL);
    M_ILLEGAL("c.lwsp x0", ".2byte 0x4002", 0x4002UL);
    M_ILLEGAL("c.ldsp x0", ".2byte 0x6002", 0x6002UL);
    M_ILLEGAL("c.addiw x0", ".2byte 0x2001", 0x2001UL);
    M_ILLEGAL("csr number 0x800", "csrr t0, 0x800", 0x800022f3UL);
}

static void test_break_ecall_m(void)
{
    trap_reset();
    AT_SITE("ebreak");
    expect("ebreak", CAUSE_BREAKPOINT, g_site, TVAL_OR_ZERO, g_site);
    trap_reset();
    AT_SITE("c.ebreak");
    expect("c.ebreak", CAUSE_BREAKPOINT, g_site, TVAL_OR_ZERO, g_site);
    trap_reset();
    AT_SITE("ecall");
    expect("ecall from M", CAUSE_ECALL_M, g_site, TVAL_ZERO, 0);
}

/* Loads and stores where there is no device. */
#define ACCESS(what, insn, addr, cause)                                                            \
    do {                                                                                           \
        trap_reset();                                                                              \
        AT_SITE_A1(insn, addr);                                                                    \
        expect(what, cause, g_site, TVAL_OR_ZERO, (addr));                                         \
    } while (0)

static void test_access_faults(void)
{
    static const u64 addrs[] = {0x0, 0x800};
    for (int i = 0; i < 2; i++) {
        u64 a = addrs[i];
        pr("-- address %lx\n", a);
        ACCESS("lb", "lb t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("lbu", "lbu t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("lh", "lh t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("lhu", "lhu t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("lw", "lw t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("lwu", "lwu t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("ld", "ld t1, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("c.lw", "c.lw a2, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("c.ld", "c.ld a2, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("fld", "fld ft0, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("flw", "flw ft0, 0(a1)", a, CAUSE_LOAD_ACCESS);
        ACCESS("sb", "sb zero, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("sh", "sh zero, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("sw", "sw zero, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("sd", "sd zero, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("c.sw", "c.sw a2, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("c.sd", "c.sd a2, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("fsd", "fsd ft0, 0(a1)", a, CAUSE_STORE_ACCESS);
        ACCESS("fsw", "fsw ft0, 0(a1)", a, CAUSE_STORE_ACCESS);
    }
    /* An offset: the trap value is the effective address. */
    trap_reset();
    AT_SITE_A1("ld t1, 0x7f8(a1)", 0x8UL);
    expect("ld 0x7f8(0x8)", CAUSE_LOAD_ACCESS, g_site, TVAL_OR_ZERO, 0x800);
    trap_reset();
    AT_SITE_A1("sd t1, -8(a1)", 0x808UL);
    expect("sd -8(0x808)", CAUSE_STORE_ACCESS, g_site, TVAL_OR_ZERO, 0x800);

    /* Fetch from where there is no memory: mepc is the target; the
     * handler returns to the caller. */
    trap_reset();
    u64 (*nowhere)(void) = (u64 (*)(void))0x800UL;
    nowhere();
    expect("fetch at 0x800", CAUSE_FETCH_ACCESS, 0x800, TVAL_OR_ZERO, 0x800);
}

/* mstatus on trap entry (MPP, MPIE <- MIE, MIE <- 0) and on mret. */
static void test_mstatus_stack(void)
{
    csr_write(mie, 0); /* nothing can interrupt while MIE is set below */
    trap_reset();
    csr_set(mstatus, MSTATUS_MIE);
    asm volatile("ebreak");
    u64 after = csr_read(mstatus);
    csr_clear(mstatus, MSTATUS_MIE);
    CHECK("trap from M: MPP", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_M);
    CHECK("trap from M with MIE=1: MPIE", (g_mtrap.status & MSTATUS_MPIE) != 0, 1);
    CHECK("trap entry clears MIE", g_mtrap.status & MSTATUS_MIE, 0);
    CHECK("mret restores MIE", after & MSTATUS_MIE, MSTATUS_MIE);
    CHECK("mret sets MPIE", after & MSTATUS_MPIE, MSTATUS_MPIE);
    CHECK("mret sets MPP to U", after & MSTATUS_MPP, 0);

    trap_reset();
    asm volatile("ebreak");
    after = csr_read(mstatus);
    CHECK("trap from M with MIE=0: MPIE", g_mtrap.status & MSTATUS_MPIE, 0);
    CHECK("mret keeps MIE clear", after & MSTATUS_MIE, 0);
    pr("mstatus trap stack done\n");
}

/* --- from S and U mode ------------------------------------------------- */
static u64 lower_ecall(u64 arg)
{
    asm volatile("li a7, 0\n\tlla t0, 1f\n\tsd t0, %0\n1:\tecall" : "=m"(g_site) :: "t0", "a7", "memory");
    return arg;
}
static u64 lower_ebreak(u64 arg) { AT_SITE("ebreak"); return arg; }
static u64 lower_mret(u64 arg) { AT_SITE("mret"); return arg; }
static u64 lower_sret(u64 arg) { AT_SITE("sret"); return arg; }
static u64 lower_sfence(u64 arg) { AT_SITE("sfence.vma"); return arg; }
static u64 lower_csr_mstatus(u64 arg) { AT_SITE("csrr t1, mstatus"); return arg; }
static u64 lower_csr_satp(u64 arg) { AT_SITE("csrr t1, satp"); return arg; }
static u64 lower_load0(u64 arg) { AT_SITE("ld t1, 0(zero)"); return arg; }
static u64 lower_store0(u64 arg) { AT_SITE("sw t1, 0x100(zero)"); return arg; }
static u64 lower_zero_word(u64 arg) { AT_SITE(".2byte 0"); return arg; }
static u64 lower_fetch(u64 arg) { ((u64 (*)(void))0x800UL)(); return arg; }

static u64 lower(const char *what, int mode, u64 (*fn)(u64))
{
    trap_reset();
    u64 r = run_in_mode(mode, fn, 0x1234);
    CHECK("lower-mode function returned", r, 0x1234);
    u64 from = (g_mtrap.status & MSTATUS_MPP) >> 11;
    if (g_mtrap.cause != NO_TRAP && from != (u64)mode) {
        g_failures++;
        pr("FAIL %s: MPP %lu, expected %d\n", what, from, mode);
    }
    return r;
}

static void test_lower_modes(void)
{
    for (int mode = PRV_U; mode <= PRV_S; mode++) {
        const char *m = mode == PRV_U ? "U" : "S";
        pr("-- %s-mode\n", m);
        lower("ecall", mode, lower_ecall);
        expect("ecall", mode == PRV_U ? CAUSE_ECALL_U : CAUSE_ECALL_S, g_site, TVAL_ZERO, 0);
        lower("ebreak", mode, lower_ebreak);
        expect("ebreak", CAUSE_BREAKPOINT, g_site, TVAL_OR_ZERO, g_site);
        lower("mret", mode, lower_mret);
        expect("mret", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x30200073UL);
        lower("csrr mstatus", mode, lower_csr_mstatus);
        expect("csrr mstatus", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x30002373UL);
        lower("illegal zero", mode, lower_zero_word);
        expect("16-bit zero", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0);
        lower("load 0", mode, lower_load0);
        expect("load at 0", CAUSE_LOAD_ACCESS, g_site, TVAL_OR_ZERO, 0);
        lower("store 0x100", mode, lower_store0);
        expect("store at 0x100", CAUSE_STORE_ACCESS, g_site, TVAL_OR_ZERO, 0x100);
        lower("fetch 0x800", mode, lower_fetch);
        expect("fetch at 0x800", CAUSE_FETCH_ACCESS, 0x800, TVAL_OR_ZERO, 0x800);
        if (mode == PRV_U) {
            lower("sret", mode, lower_sret);
            expect("sret", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x10200073UL);
            lower("sfence.vma", mode, lower_sfence);
            expect("sfence.vma", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x12000073UL);
            lower("csrr satp", mode, lower_csr_satp);
            expect("csrr satp", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x18002373UL);
        } else {
            /* TSR traps sret, TVM traps sfence.vma and satp in S-mode. */
            csr_set(mstatus, MSTATUS_TSR);
            lower("sret with TSR", mode, lower_sret);
            expect("sret with TSR", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x10200073UL);
            csr_clear(mstatus, MSTATUS_TSR);
            csr_set(mstatus, MSTATUS_TVM);
            lower("sfence.vma with TVM", mode, lower_sfence);
            expect("sfence.vma with TVM", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x12000073UL);
            lower("csrr satp with TVM", mode, lower_csr_satp);
            expect("csrr satp with TVM", CAUSE_ILLEGAL, g_site, TVAL_OR_ZERO, 0x18002373UL);
            csr_clear(mstatus, MSTATUS_TVM);
            trap_reset();
            run_in_mode(mode, lower_sfence, 0);
            CHECK("sfence.vma in S without TVM", g_mtrap.cause, NO_TRAP);
            run_in_mode(mode, lower_csr_satp, 0);
            CHECK("satp in S without TVM", g_mtrap.cause, NO_TRAP);
        }
    }
}

int main(void)
{
    test_illegal_m();
    test_break_ecall_m();
    test_access_faults();
    test_mstatus_stack();
    test_lower_modes();
    finish();
}
