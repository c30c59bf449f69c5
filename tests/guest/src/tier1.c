/* Hot code that a translation tier must get exactly right.
 *
 *  - self-modifying code: a routine in a data buffer is called in a hot
 *    loop, patched (+ fence.i), called again; also patched through a second
 *    virtual mapping of the same physical page (Sv39, S-mode);
 *  - a hot loop whose body straddles a page boundary;
 *  - a hot loop that stores into the page holding its own code;
 *  - traps in the middle of a hot block (a load access fault, a misaligned
 *    store that is performed, an illegal instruction): mepc, mtval and the
 *    registers at the trap are exact;
 *  - a page-table change under a hot loop (remap + sfence.vma);
 *  - a timer interrupt that arrives during a long hot loop is taken once.
 * Everything printed is deterministic (no timer values or interrupt pcs).
 */
#include "pt.h"

#define RAM 0x80000000UL
#define TB 0x40000000UL

/* --- self-modifying code ---------------------------------------------------- */
static u32 code_buf[1024] __attribute__((aligned(4096)));
typedef u64 (*fn_t)(u64);

static u32 addi_a0(int imm) { return ((u32)(imm & 0xfff) << 20) | (10 << 15) | (10 << 7) | 0x13; }
#define RET 0x00008067u

static u64 call_many(fn_t f, int times)
{
    u64 acc = 0;
    for (int i = 0; i < times; i++)
        acc = f(acc);
    return acc;
}

static void test_smc(void)
{
    code_buf[0] = addi_a0(1);
    code_buf[1] = RET;
    asm volatile("fence.i" ::: "memory");
    u64 a = call_many((fn_t)code_buf, 300);
    code_buf[0] = addi_a0(3);
    asm volatile("fence.i" ::: "memory");
    u64 b = call_many((fn_t)code_buf, 300);
    /* A longer routine, then a patch in its middle. */
    for (int i = 0; i < 8; i++)
        code_buf[i] = addi_a0(i + 1);
    code_buf[8] = RET;
    asm volatile("fence.i" ::: "memory");
    u64 c = call_many((fn_t)code_buf, 300);
    code_buf[4] = addi_a0(-100);
    asm volatile("fence.i" ::: "memory");
    u64 d = call_many((fn_t)code_buf, 300);
    pr("smc: %lu %lu %lu %ld\n", a, b, c, (i64)d);
    CHECK("smc before patch", a, 300);
    CHECK("smc after patch", b, 900);
    CHECK("smc long", c, 300 * 36);
    CHECK("smc middle patch", d, (u64)(300 * (36 - 5 - 100)));
}

/* --- a loop across a page boundary, and one that stores into its own page ---- */
u64 cross_loop(u64 n);
u64 own_page_loop(u64 n);
asm(".pushsection .text.tier1, \"ax\"\n"
    ".option push\n"
    ".option norvc\n"
    ".balign 4096\n"
    ".skip 4096 - 10\n"
    ".globl cross_loop\n"
    "cross_loop:\n"
    "  li a1, 0\n"
    "1: addi a1, a1, 3\n"
    "  xori a1, a1, 5\n"        /* straddles the page boundary */
    "  addi a0, a0, -1\n"
    "  bnez a0, 1b\n"
    "  mv a0, a1\n"
    "  ret\n"
    ".balign 64\n"
    ".globl own_page_loop\n"
    "own_page_loop:\n"
    "  lla a2, own_page_word\n"
    "  li a1, 0\n"
    "2: ld a3, 0(a2)\n"
    "  add a3, a3, a0\n"
    "  sd a3, 0(a2)\n"          /* a store into the page of this very loop */
    "  add a1, a1, a3\n"
    "  addi a0, a0, -1\n"
    "  bnez a0, 2b\n"
    "  mv a0, a1\n"
    "  ret\n"
    ".balign 8\n"
    "own_page_word: .dword 0\n"
    ".option pop\n"
    ".popsection\n");

static void test_layout_loops(void)
{
    u64 x = cross_loop(10000);
    u64 y = cross_loop(10001);
    u64 z = own_page_loop(3000);
    pr("page-crossing loop: %lx %lx; own-page stores: %lx\n", x, y, z);
    u64 want = 0;
    for (int i = 0; i < 10000; i++)
        want = (want + 3) ^ 5;
    CHECK("page-crossing loop", x, want);
    u64 w = 0, s = 0;
    for (u64 n = 3000; n; n--) {
        w += n;
        s += w;
    }
    CHECK("own-page stores", z, s);
}

/* --- traps in the middle of hot blocks --------------------------------------------- */
static volatile u64 g_sink;
static u64 trap_regs_a2, trap_count;

static int note_trap(frame_t *f)
{
    trap_count++;
    trap_regs_a2 = f->x[12];
    return 0; /* the default handling skips the instruction */
}

static void test_traps(void)
{
    static u64 table[64];
    for (int i = 0; i < 64; i++)
        table[i] = (u64)&table[(i * 7) % 64];
    table[40] = 0x800UL; /* nothing there: a load access fault */
    g_mtrap_hook = note_trap;
    u64 sum = 0;
    for (int round = 0; round < 20; round++) {
        trap_reset();
        register u64 a2 asm("a2") = 0;
        for (int i = 0; i < 64; i++) {
            register u64 p asm("a3") = table[i];
            register u64 v asm("a4") = 0x55;
            asm volatile("addi a2, a2, 1\n\tld a4, 0(a3)\n\taddi a2, a2, 16" : "+r"(a2), "+r"(v) : "r"(p));
            sum += v & 0xff;
        }
        if (round == 0 || round == 19) /* an access fault's mtval may be 0 or the address */
            pr("round %d: load fault cause %lx tval %s, a2 at the trap %lu, traps %lu, a2 %lu\n", round,
               g_mtrap.cause, g_mtrap.tval == 0 || g_mtrap.tval == 0x800UL ? "ok" : "WRONG", trap_regs_a2,
               g_mtrap.count, (u64)a2);
        CHECK("one fault per round", g_mtrap.count, 1);
        CHECK("a2 at the trap", trap_regs_a2, 40 * 17 + 1);
    }
    pr("loads sum %lx\n", sum);

    /* An illegal instruction in a hot loop: mtval holds its bits. */
    u64 ill = 0;
    for (int i = 0; i < 200; i++) {
        trap_reset();
        asm volatile("addi %0, %0, 1\n\t.word 0xffffffff\n\taddi %0, %0, 1" : "+r"(ill));
        if (g_mtrap.cause != CAUSE_ILLEGAL || (g_mtrap.tval != 0 && g_mtrap.tval != 0xffffffffUL))
            FAIL("illegal instruction in a hot loop");
    }
    pr("illegal in a hot loop: %lu\n", ill);
    CHECK("illegal loop count", ill, 400);
    g_mtrap_hook = 0;
}

/* --- page-table change under a hot loop (S-mode, Sv39) --------------------------- */
static u64 pt_root[512] __attribute__((aligned(4096)));
static u64 pt_l1[512] __attribute__((aligned(4096)));
static u64 pt_l0[512] __attribute__((aligned(4096)));
static u64 pages[2][512] __attribute__((aligned(4096)));

static u64 sum_page(u64 va)
{
    u64 s = 0;
    for (int r = 0; r < 50; r++)
        for (int i = 0; i < 512; i += 8)
            s += ((volatile u64 *)va)[i];
    return s;
}

static u64 s_sum(u64 va) { return sum_page(va); }

static u64 s_patch_alias(u64 va)
{
    /* code_buf is reachable at VA TB + 0x1000 too: patch it there, run it here. */
    volatile u32 *alias = (u32 *)va;
    alias[0] = addi_a0(7);
    alias[1] = RET;
    asm volatile("fence.i" ::: "memory");
    return call_many((fn_t)code_buf, 300);
}

static void map_test_page(int which)
{
    pt_l0[0] = (((u64)pages[which] >> 12) << 10) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D;
    asm volatile("sfence.vma" ::: "memory");
}

static void test_remap(void)
{
    for (int i = 0; i < 512; i++) {
        pages[0][i] = i;
        pages[1][i] = 1000 + i;
    }
    pt_root[2] = ((RAM >> 12) << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D; /* RAM, 1 GiB */
    pt_root[1] = (((u64)pt_l1 >> 12) << 10) | PTE_V;
    pt_l1[0] = (((u64)pt_l0 >> 12) << 10) | PTE_V;
    pt_l0[1] = (((u64)code_buf >> 12) << 10) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D;
    map_test_page(0);
    csr_write(satp, (8UL << 60) | ((u64)pt_root >> 12));
    asm volatile("sfence.vma" ::: "memory");
    u64 a = run_in_mode(PRV_S, s_sum, TB);
    map_test_page(1);
    u64 b = run_in_mode(PRV_S, s_sum, TB);
    map_test_page(0);
    u64 c = run_in_mode(PRV_S, s_sum, TB);
    u64 d = run_in_mode(PRV_S, s_patch_alias, TB + 0x1000);
    csr_write(satp, 0);
    asm volatile("sfence.vma" ::: "memory");
    pr("remap under a hot loop: %lu %lu %lu; patched through an alias: %lu\n", a, b, c, d);
    CHECK("remap: page 0", a, c);
    CHECK("remap: page 1", b - a, 50UL * 64 * 1000);
    CHECK("alias patch", d, 2100);
}

/* --- an interrupt during a long hot loop ---------------------------------------- */
static volatile u64 timer_hits;

static int count_timer(frame_t *f)
{
    if (f->cause == (CAUSE_INTR | 7)) {
        timer_hits++;
        mmio_w64(CLINT_MTIMECMP, ~0UL);
        return 1;
    }
    return 0;
}

static void test_interrupt(void)
{
    g_mtrap_hook = count_timer;
    mmio_w64(CLINT_MTIMECMP, mmio_r64(CLINT_MTIME) + 2000);
    csr_set(mie, 1UL << 7);
    csr_set(mstatus, MSTATUS_MIE);
    u64 x = 1;
    for (u64 i = 0; i < 3000000 && !timer_hits; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    csr_clear(mstatus, MSTATUS_MIE);
    csr_clear(mie, 1UL << 7);
    g_mtrap_hook = 0;
    pr("timer interrupt during a hot loop: taken %s\n", timer_hits == 1 ? "once" : "WRONG");
    CHECK("timer taken once", timer_hits, 1);
    g_sink = x;
}

int main(void)
{
    test_smc();
    test_layout_loops();
    test_traps();
    test_remap();
    test_interrupt();
    finish();
}
