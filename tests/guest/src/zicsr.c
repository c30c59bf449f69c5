/* Zicsr and the machine/supervisor CSRs: every csrr* form, read-only CSRs
 * and their writes (illegal), WARL fields whose legal values the spec
 * pins down, mtvec direct and vectored mode, misa / mhartid, the counters
 * (monotonic; values are never printed) and their enables for S/U mode.
 * Implementation-specific values (mvendorid, H-extension bits that QEMU
 * has and pocketvm does not) are masked out of the transcript.
 */
#include "rt.h"

/* Standard interrupt bits (no H extension): SSI, MSI, STI, MTI, SEI, MEI */
#define STD_INTS 0xaaaUL
#define S_INTS 0x222UL

static void expect_illegal(const char *what, int line)
{
    if (g_mtrap.cause != CAUSE_ILLEGAL) {
        g_failures++;
        pr("FAIL %s (line %d): cause %lx, expected illegal instruction\n", what, line, g_mtrap.cause);
    }
}

static void expect_no_trap(const char *what, int line)
{
    if (g_mtrap.cause != NO_TRAP) {
        g_failures++;
        pr("FAIL %s (line %d): unexpected trap, cause %lx\n", what, line, g_mtrap.cause);
    }
}

#define ILLEGAL(insn)                                                                              \
    do {                                                                                           \
        trap_reset();                                                                              \
        asm volatile(insn ::: "t0", "memory");                                                     \
        expect_illegal(insn, __LINE__);                                                            \
    } while (0)
#define LEGAL(insn)                                                                                \
    do {                                                                                           \
        trap_reset();                                                                              \
        asm volatile(insn ::: "t0", "memory");                                                     \
        expect_no_trap(insn, __LINE__);                                                            \
    } while (0)

static void test_forms(void)
{
    u64 old, now;
    csr_write(mscratch, 0x0123456789abcdefUL);
    asm volatile("csrrw %0, mscratch, %1" : "=r"(old) : "r"(0xfedcba9876543210UL));
    CHECK("csrrw old", old, 0x0123456789abcdefUL);
    CHECK("csrrw new", csr_read(mscratch), 0xfedcba9876543210UL);
    asm volatile("csrrs %0, mscratch, %1" : "=r"(old) : "r"(0x0f0fUL));
    CHECK("csrrs old", old, 0xfedcba9876543210UL);
    CHECK("csrrs new", csr_read(mscratch), 0xfedcba9876543f1fUL);
    asm volatile("csrrc %0, mscratch, %1" : "=r"(old) : "r"(0xff00000000000000UL));
    CHECK("csrrc old", old, 0xfedcba9876543f1fUL);
    CHECK("csrrc new", csr_read(mscratch), 0x00dcba9876543f1fUL);
    asm volatile("csrrwi %0, mscratch, 31" : "=r"(old));
    CHECK("csrrwi old", old, 0x00dcba9876543f1fUL);
    CHECK("csrrwi new", csr_read(mscratch), 31);
    asm volatile("csrrci %0, mscratch, 5" : "=r"(old));
    CHECK("csrrci old", old, 31);
    CHECK("csrrci new", csr_read(mscratch), 26);
    asm volatile("csrrsi %0, mscratch, 0x11" : "=r"(old));
    CHECK("csrrsi old", old, 26);
    CHECK("csrrsi new", csr_read(mscratch), 27);
    /* rs1 = x0 / uimm = 0: read without write; rd = x0: write without read */
    asm volatile("csrrs %0, mscratch, x0\n\tcsrrc x0, mscratch, x0\n\tcsrrsi x0, mscratch, 0" : "=r"(now));
    CHECK("csrrs x0", now, 27);
    CHECK("csrrs x0 keeps value", csr_read(mscratch), 27);
    asm volatile("csrrw x0, mscratch, %0" :: "r"(~0UL));
    CHECK("csrrw rd=x0", csr_read(mscratch), ~0UL);
    /* rd == rs1: the old value is read before the write */
    u64 r = 5;
    asm volatile("csrrw %0, mscratch, %0" : "+r"(r));
    CHECK("csrrw rd == rs1: old", r, ~0UL);
    CHECK("csrrw rd == rs1: new", csr_read(mscratch), 5);
    /* sscratch is a separate register */
    csr_write(sscratch, 0x55);
    CHECK("sscratch", csr_read(sscratch), 0x55);
    CHECK("mscratch untouched by sscratch", csr_read(mscratch), 5);
    pr("csr forms done\n");
}

static void test_ids(void)
{
    u64 misa = csr_read(misa);
    const u64 want = (2UL << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) |
                     (1 << 18) | (1 << 20); /* MXL=64, A C D F I M S U */
    pr("misa MXL and IMAFDCSU: %016lx\n", misa & want);
    CHECK("misa has RV64 IMAFDCSU", misa & want, want);
    CHECK("misa has no E", (misa >> 4) & 1, 0);
    CHECK("mhartid", csr_read(mhartid), 0);

    /* Read-only CSRs: reads are fine (including csrrs/csrrc with x0 and the
     * immediate forms with 0), any write is an illegal instruction. */
    LEGAL("csrr t0, mvendorid");
    LEGAL("csrr t0, marchid");
    LEGAL("csrr t0, mimpid");
    LEGAL("csrrs t0, mhartid, x0");
    LEGAL("csrrc t0, mhartid, x0");
    LEGAL("csrrsi t0, mhartid, 0");
    LEGAL("csrrci t0, mhartid, 0");
    ILLEGAL("csrw mhartid, zero");
    ILLEGAL("csrrw t0, mhartid, zero");
    ILLEGAL("li t0, 1\n\tcsrrs t0, mhartid, t0");
    ILLEGAL("csrrsi t0, mhartid, 1");
    ILLEGAL("csrrci x0, mvendorid, 1");
    ILLEGAL("csrrwi x0, marchid, 0");
    ILLEGAL("csrw mimpid, zero");
    ILLEGAL("csrw cycle, zero");
    ILLEGAL("csrw instret, zero");
    ILLEGAL("csrsi cycle, 1");
    /* CSR numbers nothing is assigned to. */
    ILLEGAL("csrr t0, 0x800");
    ILLEGAL("csrw 0x800, zero");
    ILLEGAL("csrr t0, 0x3ff");
    /* The CSR number is in the trap value or the trap value is zero. */
    trap_reset();
    asm volatile(".word 0xf1401073"); /* csrw mhartid, zero */
    CHECK_TRUE("illegal csr write: mtval is 0 or the instruction",
               g_mtrap.tval == 0 || g_mtrap.tval == 0xf1401073UL);
    pr("read-only csrs done\n");
}

static void test_warl(void)
{
    /* mepc / sepc hold any even address.  (Bit 0 should read as zero,
     * but QEMU 7.2 keeps it, so odd values are not compared.) */
    csr_write(mepc, 0x80001234UL);
    CHECK("mepc", csr_read(mepc), 0x80001234UL);
    csr_write(sepc, ~1UL);
    CHECK("sepc", csr_read(sepc), ~1UL);

    /* mstatus: UXL/SXL say 64-bit; sstatus is a restricted view. */
    u64 ms = csr_read(mstatus);
    pr("mstatus UXL/SXL: %lx\n", (ms >> 32) & 0xf);
    CHECK("mstatus UXL/SXL = 64-bit", (ms >> 32) & 0xf, 0xa);
    csr_set(mstatus, MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SUM | MSTATUS_MXR);
    u64 ss = csr_read(sstatus);
    CHECK("sstatus shows SIE/SPIE/SUM/MXR", ss & (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SUM | MSTATUS_MXR),
          MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SUM | MSTATUS_MXR);
    CHECK("sstatus hides MIE/MPIE/MPP/MPRV/TVM/TW/TSR",
          ss & (MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_MPRV | MSTATUS_TVM | MSTATUS_TW |
                MSTATUS_TSR), 0);
    CHECK("sstatus UXL", (ss >> 32) & 3, 2);
    csr_clear(sstatus, MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SUM | MSTATUS_MXR);
    CHECK("sstatus writes reach mstatus",
          csr_read(mstatus) & (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SUM | MSTATUS_MXR), 0);
    /* Writing M-only fields through sstatus has no effect. */
    u64 before = csr_read(mstatus);
    csr_set(sstatus, MSTATUS_MIE | MSTATUS_MPP | MSTATUS_TSR);
    CHECK("sstatus cannot set M fields", csr_read(mstatus) & (MSTATUS_MIE | MSTATUS_MPP | MSTATUS_TSR),
          before & (MSTATUS_MIE | MSTATUS_MPP | MSTATUS_TSR));
    /* SD summarises FS == dirty. */
    csr_set(mstatus, MSTATUS_FS);
    CHECK("SD set with FS dirty", csr_read(mstatus) >> 63, 1);
    csr_clear(mstatus, MSTATUS_FS);
    csr_set(mstatus, 1UL << 13);
    CHECK("SD clear with FS initial", csr_read(mstatus) >> 63, 0);
    CHECK("FS initial", (csr_read(mstatus) >> 13) & 3, 1);

    /* Delegation registers: the exceptions and interrupts Linux needs
     * delegated can be.  (medeleg[11], ecall from M, should be read-only
     * zero but is writable in QEMU 7.2, so it is not compared; nor are the
     * H-extension bits QEMU has.) */
    csr_write(medeleg, ~0UL);
    u64 md = csr_read(medeleg);
    CHECK("medeleg: breakpoint/ecall U/page faults delegable", md & 0xb108UL, 0xb108UL);
    csr_write(medeleg, 0);
    CHECK("medeleg clear", csr_read(medeleg) & 0xffffUL, 0);
    csr_write(mideleg, ~0UL);
    CHECK("mideleg S interrupts delegable", csr_read(mideleg) & S_INTS, S_INTS);
    csr_write(mideleg, 0);
    CHECK("mideleg S bits clear", csr_read(mideleg) & S_INTS, 0);

    /* mie: all standard interrupt enables exist. sie shows the delegated
     * ones only. */
    csr_write(mie, STD_INTS);
    CHECK("mie standard bits", csr_read(mie) & STD_INTS, STD_INTS);
    csr_write(mideleg, S_INTS);
    CHECK("sie shows delegated S bits", csr_read(sie) & STD_INTS, S_INTS);
    csr_clear(sie, 1UL << 5);
    CHECK("sie write reaches mie", csr_read(mie) & STD_INTS, STD_INTS & ~(1UL << 5));
    csr_write(mie, 0);
    csr_write(mideleg, 0);

    /* mip: MSIP/MTIP/MEIP are read-only (driven by devices; crt0 left
     * mtimecmp at its maximum and msip clear, so all three are clear). */
    csr_write(mip, 1UL << 7 | 1UL << 3 | 1UL << 11);
    CHECK("mip M bits not writable", csr_read(mip) & 0x888UL, 0);
    csr_write(mip, 1UL << 1);
    CHECK("mip.SSIP writable", csr_read(mip) & 2, 2);
    csr_write(mip, 0);
    CHECK("mip.SSIP clear", csr_read(mip) & 2, 0);

    /* satp: an unsupported MODE makes the whole write have no effect. */
    csr_write(satp, 0);
    csr_write(satp, (5UL << 60) | 0x12345);
    CHECK("satp reserved mode ignored", csr_read(satp), 0);
    csr_write(satp, (8UL << 60) | 0x12345);
    CHECK("satp Sv39 accepted", csr_read(satp) >> 60, 8);
    csr_write(satp, (9UL << 60) | 0x12345);
    CHECK("satp Sv48 accepted", csr_read(satp) >> 60, 9);
    CHECK("satp PPN", csr_read(satp) & 0xfffffffffffUL, 0x12345);
    csr_write(satp, 0);

    /* fcsr is frm:fflags */
    csr_write(fcsr, 0xffUL);
    CHECK("frm from fcsr", csr_read(frm), 7);
    CHECK("fflags from fcsr", csr_read(fflags), 0x1f);
    csr_write(frm, 2);
    csr_write(fflags, 5);
    CHECK("fcsr from frm/fflags", csr_read(fcsr), 0x45);
    u64 old;
    asm volatile("csrrci %0, fflags, 1" : "=r"(old));
    CHECK("csrrci fflags old", old, 5);
    CHECK("csrrci fflags new", csr_read(fcsr), 0x44);
    csr_write(fcsr, 0);
    pr("warl csrs done\n");
}

/* mtvec in vectored mode: interrupts go to BASE + 4 * cause, exceptions to
 * BASE.  Each slot records its number in sscratch and joins trap_entry. */
extern char vector_table[];
asm(".text\n"
    ".balign 256\n"
    "vector_table:\n"
    ".option push\n"
    ".option norvc\n"
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "    j vector_slot_\\n\n"
    ".endr\n"
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "vector_slot_\\n:\n"
    "    csrwi sscratch, \\n\n"
    "    j trap_entry\n"
    ".endr\n"
    ".option pop\n");

static void test_mtvec(void)
{
    u64 saved = csr_read(mtvec);
    csr_write(mtvec, (u64)vector_table);
    CHECK("mtvec direct", csr_read(mtvec), (u64)vector_table);
    csr_write(mtvec, (u64)vector_table | 1);
    CHECK("mtvec vectored", csr_read(mtvec), (u64)vector_table | 1);

    /* exception -> base */
    csr_write(sscratch, 0x1f);
    trap_reset();
    asm volatile("ebreak");
    CHECK("vectored: exception cause", g_mtrap.cause, CAUSE_BREAKPOINT);
    CHECK("vectored: exception at slot 0", csr_read(sscratch), 0);

    /* machine software interrupt -> base + 4*3 */
    csr_write(sscratch, 0x1f);
    trap_reset();
    csr_write(mie, 1UL << 3);
    mmio_w32(CLINT_MSIP, 1);
    csr_set(mstatus, MSTATUS_MIE);
    for (int i = 0; i < 1000 && g_mtrap.cause == NO_TRAP; i++)
        asm volatile("nop");
    csr_clear(mstatus, MSTATUS_MIE);
    csr_write(mie, 0);
    CHECK("vectored: MSI cause", g_mtrap.cause, CAUSE_INTR | 3);
    CHECK("vectored: MSI at slot 3", csr_read(sscratch), 3);

    /* A reserved mode (2, 3) is not written as such (WARL). */
    csr_write(mtvec, (u64)vector_table | 2);
    CHECK_TRUE("mtvec mode stays legal", (csr_read(mtvec) & 3) < 2);
    csr_write(mtvec, saved);
    CHECK("mtvec restored", csr_read(mtvec), saved);
    pr("mtvec modes done\n");
}

static u64 read_cycle(u64 arg) { asm volatile("rdcycle t0" ::: "t0"); return arg; }
static u64 read_instret(u64 arg) { asm volatile("rdinstret t0" ::: "t0"); return arg; }

static void test_counters(void)
{
    u64 c0 = csr_read(mcycle), i0 = csr_read(minstret);
    u64 u0 = csr_read(cycle), v0 = csr_read(instret);
    for (volatile int i = 0; i < 100; i++) {
    }
    u64 c1 = csr_read(mcycle), i1 = csr_read(minstret);
    u64 u1 = csr_read(cycle), v1 = csr_read(instret);
    CHECK_TRUE("mcycle does not go back", c1 >= c0);
    CHECK_TRUE("minstret counts the loop", i1 > i0);
    CHECK_TRUE("cycle does not go back", u1 >= u0);
    CHECK_TRUE("instret counts the loop", v1 > v0);

    /* Access from S/U mode is gated by mcounteren (and scounteren for U). */
    csr_write(mcounteren, 0);
    csr_write(scounteren, 0);
    trap_reset();
    run_in_mode(PRV_S, read_cycle, 0);
    CHECK("S rdcycle, mcounteren=0", g_mtrap.cause, CAUSE_ILLEGAL);
    csr_write(mcounteren, 5); /* CY, IR */
    trap_reset();
    run_in_mode(PRV_S, read_cycle, 0);
    CHECK("S rdcycle, mcounteren.CY=1", g_mtrap.cause, NO_TRAP);
    trap_reset();
    run_in_mode(PRV_U, read_instret, 0);
    CHECK("U rdinstret, scounteren=0", g_mtrap.cause, CAUSE_ILLEGAL);
    csr_write(scounteren, 4);
    trap_reset();
    run_in_mode(PRV_U, read_instret, 0);
    CHECK("U rdinstret, both enabled", g_mtrap.cause, NO_TRAP);
    trap_reset();
    run_in_mode(PRV_U, read_cycle, 0);
    CHECK("U rdcycle, scounteren.CY=0", g_mtrap.cause, CAUSE_ILLEGAL);
    csr_write(mcounteren, 0);
    csr_write(scounteren, 0);
    pr("counters done\n");
}

static u64 s_read_mstatus(u64 arg) { asm volatile("csrr t0, mstatus" ::: "t0"); return arg; }
static u64 s_read_sstatus(u64 arg) { return csr_read(sstatus) & MSTATUS_SPP; }
static u64 u_read_sstatus(u64 arg) { asm volatile("csrr t0, sstatus" ::: "t0"); return arg; }
static u64 s_write_mscratch(u64 arg) { asm volatile("csrw mscratch, zero"); return arg; }

static void test_privilege(void)
{
    trap_reset();
    run_in_mode(PRV_S, s_read_mstatus, 0);
    CHECK("S reads mstatus: illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    CHECK("  taken from S", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_S);
    trap_reset();
    run_in_mode(PRV_S, s_write_mscratch, 0);
    CHECK("S writes mscratch: illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    trap_reset();
    run_in_mode(PRV_S, s_read_sstatus, 0);
    CHECK("S reads sstatus", g_mtrap.cause, NO_TRAP);
    trap_reset();
    run_in_mode(PRV_U, u_read_sstatus, 0);
    CHECK("U reads sstatus: illegal", g_mtrap.cause, CAUSE_ILLEGAL);
    CHECK("  taken from U", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_U);
    pr("csr privilege done\n");
}

int main(void)
{
    test_forms();
    test_ids();
    test_warl();
    test_mtvec();
    test_counters();
    test_privilege();
    finish();
}
