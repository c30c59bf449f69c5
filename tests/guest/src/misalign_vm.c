/* Misaligned loads and stores that cross a page boundary under Sv39 and
 * Sv48, from S-mode (faults delegated: stval), U-mode and M-mode with MPRV
 * (MPP = S and MPP = U): integer, floating-point and compressed forms of
 * every size, crossing
 *   - from a mapped page into an unmapped one (the fault is on the second
 *     page, so mtval/stval must be the first byte of that page: the
 *     "portion of the access that caused the fault", not the start
 *     address; Linux fixes the page named by stval and retries, so the
 *     start address makes it spin forever),
 *   - from an unmapped page into a mapped one (tval = the start address),
 *   - from a writable page into a read-only one (stores fault on the
 *     second page, loads succeed),
 *   - between two mapped pages backed by unrelated physical pages.
 * A faulting store must not write its first part. Also aligned and
 * misaligned AMOs and LR on the same pages.
 */
#include "pt.h"

#define RAM 0x80000000UL
#define TB 0x40000000UL /* base of the test mappings */

enum { P_A, P_E, P_B, P_C, P_D, NPAGES }; /* P_E before P_D: not contiguous */

static u64 tables[16][512] __attribute__((aligned(4096)));
static int ntables;
static u8 pages[NPAGES][4096] __attribute__((aligned(4096)));
static u64 *root_s, *root_u;
static int levels;
static const char *vm_name;

static u64 *new_table(void)
{
    if (ntables == 16) {
        FAIL("out of page tables");
        exit_(2);
    }
    u64 *t = tables[ntables++];
    memset(t, 0, 4096);
    return t;
}

static u64 *slot(u64 *root, u64 va, int leaf_level) { return pt_slot(root, levels, va, leaf_level, new_table); }

static void map(u64 va, int page, u64 flags)
{
    *slot(root_s, va, 0) = pte((u64)pages[page], flags);
    *slot(root_u, va, 0) = pte((u64)pages[page], flags | PTE_U);
}

static void build(int nlevels)
{
    levels = nlevels;
    vm_name = nlevels == 3 ? "sv39" : "sv48";
    ntables = 0;
    root_s = new_table();
    root_u = new_table();
    *slot(root_s, RAM, 2) = pte(RAM, RWX | AD | PTE_V);
    *slot(root_u, RAM, 2) = pte(RAM, RWX | AD | PTE_U | PTE_V);
    map(TB + 0x0000, P_A, PTE_R | PTE_W | AD | PTE_V);
    /* TB + 0x1000: not mapped */
    map(TB + 0x2000, P_B, PTE_R | PTE_W | AD | PTE_V);
    map(TB + 0x3000, P_C, PTE_R | AD | PTE_V);
    map(TB + 0x4000, P_D, PTE_R | PTE_W | AD | PTE_V);
    map(TB + 0x5000, P_E, PTE_R | PTE_W | AD | PTE_V);
}

static void fill_pages(void)
{
    for (int i = 0; i < NPAGES; i++)
        for (int k = 0; k < 4096; k++)
            pages[i][k] = (u8)(0x11 * (i + 1) + k * 7);
}

/* --- the accesses --------------------------------------------------------- */
/* Each access function runs in the mode under test; it records the pc of
 * the access (site) and its result. Compressed forms need x8..x15 / f8..f15,
 * hence a1/a2 and fa2. */
typedef struct {
    u64 va, val, site;
} acc_t;
static acc_t g_acc;

#define INT_LOAD(fn, insn)                                                                    \
    static u64 fn(u64 p)                                                                      \
    {                                                                                         \
        volatile acc_t *a = (acc_t *)p;                                                       \
        register u64 ad asm("a1") = a->va;                                                    \
        register u64 v asm("a2") = 0xdeadUL;                                                  \
        asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\t" insn " a2, 0(a1)"                        \
                     : "+r"(v), "=m"(a->site) : "r"(ad) : "t0", "memory");                    \
        a->val = v;                                                                           \
        return 0;                                                                             \
    }
#define INT_STORE(fn, insn)                                                                   \
    static u64 fn(u64 p)                                                                      \
    {                                                                                         \
        volatile acc_t *a = (acc_t *)p;                                                       \
        register u64 ad asm("a1") = a->va;                                                    \
        register u64 v asm("a2") = a->val;                                                    \
        asm volatile("lla t0, 1f\n\tsd t0, %0\n1:\t" insn " a2, 0(a1)"                        \
                     : "=m"(a->site) : "r"(ad), "r"(v) : "t0", "memory");                     \
        return 0;                                                                             \
    }
#define FP_LOAD(fn, insn)                                                                     \
    static u64 fn(u64 p)                                                                      \
    {                                                                                         \
        volatile acc_t *a = (acc_t *)p;                                                       \
        register u64 ad asm("a1") = a->va;                                                    \
        register u64 v asm("a2") = 0xdeadUL;                                                  \
        asm volatile("fmv.d.x fa2, a2\n\tlla t0, 1f\n\tsd t0, %1\n1:\t" insn " fa2, 0(a1)\n\t" \
                     "fmv.x.d a2, fa2"                                                        \
                     : "+r"(v), "=m"(a->site) : "r"(ad) : "t0", "fa2", "memory");             \
        a->val = v;                                                                           \
        return 0;                                                                             \
    }
#define FP_STORE(fn, insn)                                                                    \
    static u64 fn(u64 p)                                                                      \
    {                                                                                         \
        volatile acc_t *a = (acc_t *)p;                                                       \
        register u64 ad asm("a1") = a->va;                                                    \
        register u64 v asm("a2") = a->val;                                                    \
        asm volatile("fmv.d.x fa2, a2\n\tlla t0, 1f\n\tsd t0, %0\n1:\t" insn " fa2, 0(a1)"     \
                     : "=m"(a->site) : "r"(ad), "r"(v) : "t0", "fa2", "memory");              \
        return 0;                                                                             \
    }

INT_LOAD(do_lh, "lh")
INT_LOAD(do_lhu, "lhu")
INT_LOAD(do_lw, "lw")
INT_LOAD(do_lwu, "lwu")
INT_LOAD(do_ld, "ld")
INT_LOAD(do_c_lw, "c.lw")
INT_LOAD(do_c_ld, "c.ld")
INT_STORE(do_sh, "sh")
INT_STORE(do_sw, "sw")
INT_STORE(do_sd, "sd")
INT_STORE(do_c_sw, "c.sw")
INT_STORE(do_c_sd, "c.sd")
FP_LOAD(do_flw, "flw")
FP_LOAD(do_fld, "fld")
FP_LOAD(do_c_fld, "c.fld")
FP_STORE(do_fsw, "fsw")
FP_STORE(do_fsd, "fsd")
FP_STORE(do_c_fsd, "c.fsd")

typedef struct {
    const char *name;
    u64 (*fn)(u64);
    int size, store;
} op_t;

static const op_t ops[] = {
    {"lh", do_lh, 2, 0},       {"lhu", do_lhu, 2, 0},     {"lw", do_lw, 4, 0},     {"lwu", do_lwu, 4, 0},
    {"ld", do_ld, 8, 0},       {"c.lw", do_c_lw, 4, 0},   {"c.ld", do_c_ld, 8, 0}, {"flw", do_flw, 4, 0},
    {"fld", do_fld, 8, 0},     {"c.fld", do_c_fld, 8, 0}, {"sh", do_sh, 2, 1},     {"sw", do_sw, 4, 1},
    {"sd", do_sd, 8, 1},       {"c.sw", do_c_sw, 4, 1},   {"c.sd", do_c_sd, 8, 1}, {"fsw", do_fsw, 4, 1},
    {"fsd", do_fsd, 8, 1},     {"c.fsd", do_c_fsd, 8, 1},
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

/* --- running one access in a mode ------------------------------------------ */
enum { M_S, M_U, M_MPRV_S, M_MPRV_U, NMODES };
static const char *mode_names[] = {"S", "U", "M+MPRV(S)", "M+MPRV(U)"};

static int clear_mprv(frame_t *f)
{
    (void)f;
    csr_clear(mstatus, MSTATUS_MPRV);
    return 0;
}

/* M-mode with MPRV: everything the access function does (stack included)
 * is translated as in MPP; RAM is identity-mapped for both. */
static void run_mprv(int mpp, u64 (*fn)(u64), u64 arg)
{
    csr_clear(mstatus, MSTATUS_MPP);
    csr_set(mstatus, (u64)mpp << 11);
    csr_set(mstatus, MSTATUS_MPRV);
    fn(arg);
    csr_clear(mstatus, MSTATUS_MPRV);
    csr_clear(mstatus, MSTATUS_MPP);
}

/* The trap the access took, from the handler that took it. */
static const volatile trap_info_t *run_access(int mode, const op_t *op, u64 va, u64 val)
{
    g_acc.va = va;
    g_acc.val = val;
    g_acc.site = 0;
    csr_write(satp, ((levels == 3 ? 8UL : 9UL) << 60) | ((u64)(mode == M_U || mode == M_MPRV_U ? root_u : root_s) >> 12));
    asm volatile("sfence.vma" ::: "memory");
    trap_reset();
    if (mode == M_S) {
        csr_write(medeleg, (1UL << CAUSE_LOAD_PAGE) | (1UL << CAUSE_STORE_PAGE));
        run_in_mode(PRV_S, op->fn, (u64)&g_acc);
        csr_write(medeleg, 0);
    } else if (mode == M_U) {
        run_in_mode(PRV_U, op->fn, (u64)&g_acc);
    } else {
        g_mtrap_hook = clear_mprv;
        run_mprv(mode == M_MPRV_S ? PRV_S : PRV_U, op->fn, (u64)&g_acc);
        g_mtrap_hook = 0;
    }
    csr_write(satp, 0);
    asm volatile("sfence.vma" ::: "memory");
    return mode == M_S && g_strap.count ? &g_strap : &g_mtrap;
}

/* The bytes of the physical pages around a crossing, for "no partial write". */
static u64 page_sum(int page)
{
    u64 h = 0;
    for (int k = 0; k < 4096; k += 8)
        h = h * 31 + *(volatile u64 *)&pages[page][k];
    return h;
}

static u64 expected_load(int page1, int page2, u64 va, int size, const op_t *op)
{
    u64 v = 0;
    for (int i = 0; i < size; i++) {
        u64 a = va + i;
        int pg = (a & 0xfff) < (va & 0xfff) ? page2 : page1;
        v |= (u64)pages[pg][a & 0xfff] << (8 * i);
    }
    if (op->fn == do_lh)
        v = (u64)(i64)(short)v;
    else if (op->fn == do_lw || op->fn == do_c_lw)
        v = (u64)(i64)(int)v;
    else if (op->fn == do_flw)
        v |= 0xffffffff00000000UL;
    return v;
}

enum { X_UNMAPPED_2ND, X_UNMAPPED_1ST, X_READONLY_2ND, X_BOTH_MAPPED, NCROSS };
static const char *cross_names[] = {"into unmapped", "from unmapped", "into read-only", "two pages"};
static const u64 cross_end[] = {TB + 0x1000, TB + 0x2000, TB + 0x3000, TB + 0x5000}; /* page boundary */
static const int cross_pages[][2] = {{P_A, -1}, {-1, P_B}, {P_B, P_C}, {P_D, P_E}};

static void one(int mode, const op_t *op, int cross, int back)
{
    u64 boundary = cross_end[cross];
    u64 va = boundary - back;
    int p1 = cross_pages[cross][0], p2 = cross_pages[cross][1];
    u64 sum1 = p1 >= 0 ? page_sum(p1) : 0, sum2 = p2 >= 0 ? page_sum(p2) : 0;
    u64 val = 0x0102030405060708UL * (u64)(back + 1) ^ (u64)cross << 56;
    const volatile trap_info_t *t = run_access(mode, op, va, val);

    /* What must happen. */
    u64 want_cause = NO_TRAP, want_tval = 0;
    if (cross == X_UNMAPPED_2ND || cross == X_UNMAPPED_1ST || (cross == X_READONLY_2ND && op->store)) {
        want_cause = op->store ? CAUSE_STORE_PAGE : CAUSE_LOAD_PAGE;
        want_tval = cross == X_UNMAPPED_1ST ? va : boundary;
    }
    pr("%s %s %s @-%d %s: ", vm_name, mode_names[mode], op->name, back, cross_names[cross]);
    int ok;
    if (want_cause != NO_TRAP) {
        int kept = (p1 < 0 || page_sum(p1) == sum1) && (p2 < 0 || page_sum(p2) == sum2);
        pr("cause %lx tval %lx epc %s%s\n", t->cause, t->tval, t->epc == g_acc.site ? "ok" : "WRONG",
           op->store ? (kept ? ", nothing written" : ", PARTIAL WRITE") : "");
        ok = t->cause == want_cause && t->tval == want_tval && t->epc == g_acc.site && t->count == 1 && kept;
    } else if (op->store) {
        u64 got = 0;
        for (int i = 0; i < op->size; i++) {
            u64 a = va + i;
            int pg = (a & 0xfff) < (va & 0xfff) ? p2 : p1;
            got |= (u64)pages[pg][a & 0xfff] << (8 * i);
        }
        u64 want = op->size == 8 ? val : val & ((1UL << (8 * op->size)) - 1);
        pr("stored %lx\n", got);
        ok = t->cause == NO_TRAP && got == want;
    } else {
        pr("loaded %lx\n", g_acc.val);
        ok = t->cause == NO_TRAP && g_acc.val == expected_load(p1, p2, va, op->size, op);
    }
    if (!ok) {
        g_failures++;
        pr("FAIL: va %lx cause %lx tval %lx epc %lx site %lx count %lu (want cause %lx tval %lx)\n", va, t->cause,
           t->tval, t->epc, g_acc.site, t->count, want_cause, want_tval);
    }
}

/* --- atomics on the same pages ---------------------------------------------- */
static u64 do_amoadd_d(u64 p)
{
    volatile acc_t *a = (acc_t *)p;
    register u64 ad asm("a1") = a->va;
    register u64 v asm("a2") = 0xdeadUL;
    asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\tamoadd.d a2, a2, (a1)" : "+r"(v), "=m"(a->site) : "r"(ad) : "t0", "memory");
    return 0;
}
static u64 do_amoadd_w(u64 p)
{
    volatile acc_t *a = (acc_t *)p;
    register u64 ad asm("a1") = a->va;
    register u64 v asm("a2") = 0xdeadUL;
    asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\tamoadd.w a2, a2, (a1)" : "+r"(v), "=m"(a->site) : "r"(ad) : "t0", "memory");
    return 0;
}
static u64 do_lr_d(u64 p)
{
    volatile acc_t *a = (acc_t *)p;
    register u64 ad asm("a1") = a->va;
    register u64 v asm("a2") = 0xdeadUL;
    asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\tlr.d a2, (a1)" : "+r"(v), "=m"(a->site) : "r"(ad) : "t0", "memory");
    return 0;
}

static void atomics(int mode)
{
    static const op_t amo_d = {"amoadd.d", do_amoadd_d, 8, 1}, amo_w = {"amoadd.w", do_amoadd_w, 4, 1},
                      lr_d = {"lr.d", do_lr_d, 8, 0};
    const volatile trap_info_t *t;
    /* Aligned, on the unmapped page: a page fault at the address (a
     * store/AMO page fault; QEMU 7.2 reports a load page fault). */
    t = run_access(mode, &amo_d, TB + 0x1008, 0);
    int pf = t->cause == CAUSE_STORE_PAGE || t->cause == CAUSE_LOAD_PAGE;
    pr("%s %s amoadd.d unmapped: %s, tval %s\n", vm_name, mode_names[mode], pf ? "page fault" : "WRONG",
       t->tval == TB + 0x1008 ? "= va" : "WRONG");
    CHECK_TRUE("amoadd.d unmapped: page fault", pf);
    CHECK("amoadd.d unmapped: tval", t->tval, TB + 0x1008);
    t = run_access(mode, &lr_d, TB + 0x1010, 0);
    pr("%s %s lr.d unmapped: cause %lx tval %s\n", vm_name, mode_names[mode], t->cause,
       t->tval == TB + 0x1010 ? "= va" : "WRONG");
    CHECK("lr.d unmapped: cause", t->cause, CAUSE_LOAD_PAGE);
    CHECK("lr.d unmapped: tval", t->tval, TB + 0x1010);
    t = run_access(mode, &amo_d, TB + 0x3008, 0);
    pr("%s %s amoadd.d read-only: cause %lx tval %s\n", vm_name, mode_names[mode], t->cause,
       t->tval == TB + 0x3008 ? "= va" : "WRONG");
    CHECK("amoadd.d read-only: cause", t->cause, CAUSE_STORE_PAGE);
    /* Misaligned, crossing into the unmapped page: the ISA allows an
     * address-misaligned or an access fault (QEMU may also name it a
     * load-side cause); tval is the address in every case. Only the
     * verdict is printed. */
    t = run_access(mode, &amo_w, TB + 0x1000 - 2, 0);
    u64 c = t->cause;
    int allowed = c == CAUSE_MISALIGNED_LOAD || c == CAUSE_MISALIGNED_STORE || c == CAUSE_LOAD_ACCESS ||
                  c == CAUSE_STORE_ACCESS;
    pr("%s %s misaligned amoadd.w across pages: %s\n", vm_name, mode_names[mode],
       allowed && t->tval == TB + 0x1000 - 2 ? "allowed outcome" : "WRONG");
    if (!(allowed && t->tval == TB + 0x1000 - 2)) {
        g_failures++;
        pr("FAIL misaligned amoadd.w: cause %lx tval %lx\n", c, t->tval);
    }
}

int main(void)
{
    install_strap();
    for (int n = 3; n <= 4; n++) {
        build(n);
        for (int mode = 0; mode < NMODES; mode++) {
            for (unsigned i = 0; i < NOPS; i++) {
                const op_t *op = &ops[i];
                for (int cross = 0; cross < NCROSS; cross++) {
                    fill_pages();
                    one(mode, op, cross, 1);
                    if (op->size >= 4)
                        one(mode, op, cross, op->size - 1);
                    if (op->size == 8)
                        one(mode, op, cross, 5);
                }
            }
            atomics(mode);
        }
    }
    finish();
}
