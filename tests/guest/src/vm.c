/* Virtual memory, run once with Sv39 and once with Sv48 page tables built
 * here: 4K pages, megapages, gigapages (and an Sv48 terapage), misaligned
 * superpages, every permission rule (R/W/X, the reserved W-without-R
 * combination, U with and without SUM, MXR on an execute-only page, S
 * fetching from a U page), invalid and non-canonical addresses, A/D bits,
 * sfence.vma after a remap, a fetch that straddles into an unmapped page,
 * page-fault delegation to S-mode, and MPRV loads from M-mode.
 *
 * Page faults must report the faulting virtual address in mtval/stval.
 * A/D bits: with A=0 (or D=0 on a store) an implementation may either
 * fault or set the bit in hardware; QEMU 7.2 sets it, and the transcript
 * prints the PTE afterwards, so pocketvm must do the same to match.
 */
#include "pt.h"

#define RAM 0x80000000UL
#define TB 0x40000000UL /* base of the test mappings */
#define MEGA_PA 0x80400000UL
#define NPAGES 12

static u64 tables[24][512] __attribute__((aligned(4096)));
static int ntables;
static u8 pages[NPAGES][4096] __attribute__((aligned(4096)));
static u64 *root_s, *root_u;
static int levels;
static const char *mode_name;
extern char __image_end[];

static u64 *new_table(void)
{
    if (ntables == 24) {
        FAIL("out of page tables");
        exit_(2);
    }
    u64 *t = tables[ntables++];
    memset(t, 0, 4096);
    return t;
}

static u64 *pte_table(u64 e) { return (u64 *)((e >> 10) << 12); }

/* The PTE slot for va at leaf_level (0 = 4K, 1 = 2M, 2 = 1G, 3 = 512G),
 * creating the tables above it. */
static u64 *slot(u64 *root, u64 va, int leaf_level)
{
    u64 *t = root;
    for (int lvl = levels - 1; lvl > leaf_level; lvl--) {
        u64 *e = &t[(va >> (12 + 9 * lvl)) & 511];
        if (!(*e & PTE_V) || (*e & RWX))
            *e = pte((u64)new_table(), PTE_V);
        t = pte_table(*e);
    }
    return &t[(va >> (12 + 9 * leaf_level)) & 511];
}

/* Map in both address spaces (the S one and the U one). */
static u64 *map(u64 va, int leaf_level, u64 pa, u64 flags)
{
    *slot(root_u, va, leaf_level) = pte(pa, flags);
    u64 *e = slot(root_s, va, leaf_level);
    *e = pte(pa, flags);
    asm volatile("sfence.vma" ::: "memory");
    return e;
}

static u64 satp_for(u64 *root)
{
    return ((levels == 3 ? 8UL : 9UL) << 60) | ((u64)root >> 12);
}

/* --- one access from S or U mode -------------------------------------- */
enum { OP_LD, OP_LBU, OP_SD, OP_FETCH };
typedef struct {
    u64 op, va, val, site;
} acc_t;
static acc_t g_acc;

static u64 lower_access(u64 p)
{
    volatile acc_t *a = (acc_t *)p;
    u64 va = a->va, v = a->val;
    switch (a->op) {
    case OP_LD:
        asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\tld %0, 0(%2)" : "+r"(v), "=m"(a->site) : "r"(va) : "t0", "memory");
        break;
    case OP_LBU:
        asm volatile("lla t0, 1f\n\tsd t0, %1\n1:\tlbu %0, 0(%2)" : "+r"(v), "=m"(a->site) : "r"(va) : "t0", "memory");
        break;
    case OP_SD:
        asm volatile("lla t0, 1f\n\tsd t0, %0\n1:\tsd %1, 0(%2)" : "=m"(a->site) : "r"(v), "r"(va) : "t0", "memory");
        break;
    case OP_FETCH:
        a->site = va;
        v = ((u64 (*)(u64))va)(v);
        break;
    }
    a->val = v;
    return 0;
}

static const char *op_name[] = {"load", "lbu", "store", "fetch"};

/* Runs one access and checks it: want_cause NO_TRAP means it must succeed
 * and (for loads/fetches) produce want; otherwise the trap must have that
 * cause, the access's pc and mtval == va. */
static void access(const char *what, int mode, int op, u64 va, u64 val, u64 want_cause, u64 want)
{
    g_acc.op = op;
    g_acc.va = va;
    g_acc.val = val;
    g_acc.site = 0;
    csr_write(satp, satp_for(mode == PRV_U ? root_u : root_s));
    asm volatile("sfence.vma" ::: "memory");
    trap_reset();
    run_in_mode(mode, lower_access, (u64)&g_acc);
    csr_write(satp, 0);
    const volatile trap_info_t *t = &g_mtrap;
    int ok;
    if (want_cause == NO_TRAP) {
        ok = t->cause == NO_TRAP && (op == OP_SD || g_acc.val == want);
        pr("%s %s %s %s: ok=%d", mode_name, mode == PRV_U ? "U" : "S", op_name[op], what, ok);
        if (op != OP_SD)
            pr(" value %lx", g_acc.val);
        pr("\n");
    } else {
        ok = t->cause == want_cause && t->tval == va && t->epc == g_acc.site && t->count == 1;
        pr("%s %s %s %s: cause %lx, tval %s, epc %s\n", mode_name, mode == PRV_U ? "U" : "S", op_name[op],
           what, t->cause, t->tval == va ? "= va" : "WRONG", t->epc == g_acc.site ? "ok" : "WRONG");
    }
    if (!ok) {
        g_failures++;
        pr("FAIL %s: va %lx cause %lx tval %lx epc %lx count %lu value %lx (site %lx, want cause %lx value %lx)\n",
           what, va, t->cause, t->tval, t->epc, t->count, g_acc.val, g_acc.site, want_cause, want);
    }
}

#define LOAD_OK(what, mode, va, want) access(what, mode, OP_LD, va, 0xdead, NO_TRAP, want)
#define LOAD_PF(what, mode, va) access(what, mode, OP_LD, va, 0xdead, CAUSE_LOAD_PAGE, 0)
#define STORE_OK(what, mode, va, v) access(what, mode, OP_SD, va, v, NO_TRAP, 0)
#define STORE_PF(what, mode, va) access(what, mode, OP_SD, va, 0xbad, CAUSE_STORE_PAGE, 0)
#define FETCH_OK(what, mode, va, arg, want) access(what, mode, OP_FETCH, va, arg, NO_TRAP, want)
#define FETCH_PF(what, mode, va) access(what, mode, OP_FETCH, va, 0x77, CAUSE_FETCH_PAGE, 0)

static u64 word(int page, int off) { return *(u64 *)&pages[page][off]; }

/* --- the page-table layout ------------------------------------------------ */
enum { P_RW, P_RO, P_XO, P_WO, P_USER, P_NOA, P_NOD, P_CODE, P_CODE2, P_NOX, P_ALT, P_DELEG };

static u64 *pte_noa, *pte_nod;

static void build(int nlevels)
{
    levels = nlevels;
    mode_name = nlevels == 3 ? "sv39" : "sv48";
    ntables = 0;
    root_s = new_table();
    root_u = new_table();
    for (int i = 0; i < NPAGES; i++)
        for (int k = 0; k < 4096; k += 8)
            *(u64 *)&pages[i][k] = (u64)(i + 1) * 0x0101010101010101UL ^ (u64)k << 40;

    /* RAM identity-mapped with a gigapage: non-U for S, U for U-mode. */
    *slot(root_s, RAM, 2) = pte(RAM, RWX | AD | PTE_V);
    *slot(root_u, RAM, 2) = pte(RAM, RWX | AD | PTE_U | PTE_V);

    map(TB + 0x0000, 0, (u64)pages[P_RW], PTE_R | PTE_W | AD | PTE_V);
    map(TB + 0x1000, 0, (u64)pages[P_RO], PTE_R | AD | PTE_V);
    map(TB + 0x2000, 0, (u64)pages[P_XO], PTE_X | AD | PTE_V);
    map(TB + 0x3000, 0, (u64)pages[P_WO], PTE_W | AD | PTE_V);
    map(TB + 0x4000, 0, (u64)pages[P_USER], PTE_R | PTE_W | PTE_U | AD | PTE_V);
    pte_noa = map(TB + 0x5000, 0, (u64)pages[P_NOA], PTE_R | PTE_V);
    pte_nod = map(TB + 0x6000, 0, (u64)pages[P_NOD], PTE_R | PTE_W | PTE_A | PTE_V);
    map(TB + 0x7000, 0, (u64)pages[P_ALT], PTE_R | PTE_W | AD); /* V = 0 */
    map(TB + 0x8000, 0, (u64)pages[P_CODE], PTE_R | PTE_X | AD | PTE_V);
    map(TB + 0xa000, 0, (u64)pages[P_NOX], PTE_R | PTE_W | AD | PTE_V);
    map(TB + 0xb000, 0, (u64)pages[P_CODE], PTE_R | PTE_X | PTE_U | AD | PTE_V);
    map(TB + 0xc000, 0, (u64)pages[P_DELEG], PTE_R | AD); /* V = 0 */
    /* megapage and a misaligned one */
    map(TB + 0x200000, 1, MEGA_PA, PTE_R | PTE_W | AD | PTE_V);
    map(TB + 0x400000, 1, MEGA_PA + 0x1000, PTE_R | PTE_W | AD | PTE_V);
    /* gigapage alias of RAM, a misaligned one, one at a negative address */
    map(0xc0000000UL, 2, RAM, PTE_R | PTE_W | AD | PTE_V);
    map(0x100000000UL, 2, RAM + 0x200000, PTE_R | PTE_W | AD | PTE_V);
    map(0xffffffffc0000000UL, 2, RAM, PTE_R | PTE_W | AD | PTE_V);
    if (levels == 4) /* a 512 GiB page at 512 GiB mapping physical 0 */
        map(0x8000000000UL, 3, 0, PTE_R | AD | PTE_V);

    /* Code: "ret" at the start of the code page; at its end the first half
     * of "addi a0, a0, 1" whose second half (and a ret) starts the next,
     * not yet mapped, page. */
    u16 *code = (u16 *)pages[P_CODE];
    code[0] = 0x8082;                 /* c.jr ra */
    code[1] = 0x0505;                 /* c.addi a0, 1 (reached only by jumping to +2) */
    code[2] = 0x8082;
    code[2047] = 0x0513;              /* addi a0, a0, 1 = 0x00150513 */
    u16 *code2 = (u16 *)pages[P_CODE2];
    code2[0] = 0x0015;
    code2[1] = 0x8082;
    *(u16 *)pages[P_NOX] = 0x8082;
    asm volatile("fence.i" ::: "memory");
}

static void test_basic(void)
{
    LOAD_OK("4K RW", PRV_S, TB + 0x18, word(P_RW, 0x18));
    STORE_OK("4K RW", PRV_S, TB + 0x20, 0x1122334455667788UL);
    CHECK("store reached the page", word(P_RW, 0x20), 0x1122334455667788UL);
    LOAD_OK("4K RO", PRV_S, TB + 0x1ff8, word(P_RO, 0xff8));
    STORE_PF("4K RO", PRV_S, TB + 0x1010);
    LOAD_PF("4K X-only", PRV_S, TB + 0x2008);
    LOAD_PF("W without R (reserved)", PRV_S, TB + 0x3000);
    STORE_PF("W without R (reserved)", PRV_S, TB + 0x3008);
    LOAD_PF("invalid PTE", PRV_S, TB + 0x7010);
    STORE_PF("invalid PTE", PRV_S, TB + 0x7010);
    LOAD_PF("unmapped (no table)", PRV_S, TB + 0x10000000UL);
    access("byte offset", PRV_S, OP_LBU, TB + 0x1005, 0, NO_TRAP, pages[P_RO][5]);

    /* superpages */
    *(u64 *)(MEGA_PA + 0x1238) = 0xabcdef0123456789UL;
    LOAD_OK("megapage", PRV_S, TB + 0x201238, 0xabcdef0123456789UL);
    STORE_OK("megapage", PRV_S, TB + 0x3fff00, 0x5555aaaa5555aaaaUL);
    CHECK("megapage store", *(u64 *)(MEGA_PA + 0x1fff00), 0x5555aaaa5555aaaaUL);
    LOAD_PF("misaligned megapage", PRV_S, TB + 0x400238);
    STORE_PF("misaligned megapage", PRV_S, TB + 0x400238);
    static u64 marker = 0x600dcafe600dcafeUL;
    LOAD_OK("gigapage alias", PRV_S, (u64)&marker + 0x40000000UL, marker);
    LOAD_PF("misaligned gigapage", PRV_S, 0x100000040UL);
    LOAD_OK("negative-address gigapage", PRV_S, (u64)&marker - RAM + 0xffffffffc0000000UL, marker);
    if (levels == 4)
        LOAD_OK("terapage", PRV_S, 0x8000000000UL + (u64)&marker, marker);
    /* non-canonical addresses */
    if (levels == 3) {
        LOAD_PF("non-canonical", PRV_S, 0x0000008000000000UL);
        STORE_PF("non-canonical", PRV_S, 0xffffff7fc0000000UL);
    } else {
        LOAD_PF("non-canonical", PRV_S, 0x0001000000000000UL);
        STORE_PF("non-canonical", PRV_S, 0xffff7fffc0000000UL);
    }
}

static void test_permissions(void)
{
    /* MXR makes execute-only pages readable. */
    csr_set(mstatus, MSTATUS_MXR);
    LOAD_OK("X-only with MXR", PRV_S, TB + 0x2008, word(P_XO, 8));
    csr_clear(mstatus, MSTATUS_MXR);

    /* U pages from S need SUM, U-mode needs U pages. */
    LOAD_PF("U page without SUM", PRV_S, TB + 0x4010);
    STORE_PF("U page without SUM", PRV_S, TB + 0x4010);
    csr_set(mstatus, MSTATUS_SUM);
    LOAD_OK("U page with SUM", PRV_S, TB + 0x4010, word(P_USER, 0x10));
    STORE_OK("U page with SUM", PRV_S, TB + 0x4018, 42);
    CHECK("SUM store", word(P_USER, 0x18), 42);
    FETCH_PF("U page with SUM", PRV_S, TB + 0xb000);
    csr_clear(mstatus, MSTATUS_SUM);
    LOAD_OK("U page", PRV_U, TB + 0x4020, word(P_USER, 0x20));
    STORE_OK("U page", PRV_U, TB + 0x4028, 43);
    LOAD_PF("S page", PRV_U, TB + 0x0010);
    STORE_PF("S page", PRV_U, TB + 0x0010);
    FETCH_OK("U code page", PRV_U, TB + 0xb000, 5, 5);
    FETCH_PF("S code page", PRV_U, TB + 0x8000);

    /* Execute permission. */
    FETCH_OK("X page", PRV_S, TB + 0x8000, 9, 9);
    FETCH_OK("X page +2", PRV_S, TB + 0x8002, 9, 10);
    FETCH_PF("RW page without X", PRV_S, TB + 0xa000);
    FETCH_PF("invalid page", PRV_S, TB + 0x7000);
    /* Execute-only is still executable; MXR does not grant execute. */
    csr_set(mstatus, MSTATUS_MXR);
    FETCH_PF("RW page with MXR", PRV_S, TB + 0xa000);
    csr_clear(mstatus, MSTATUS_MXR);
}

/* A 4-byte instruction in the last 2 bytes of a page: while the next page
 * is unmapped the fetch faults with epc = the instruction and tval = the
 * start of the missing page. */
static void test_straddle(void)
{
    u64 va = TB + 0x8ffe;
    g_acc.op = OP_FETCH;
    g_acc.va = va;
    g_acc.val = 1;
    csr_write(satp, satp_for(root_s));
    asm volatile("sfence.vma" ::: "memory");
    trap_reset();
    run_in_mode(PRV_S, lower_access, (u64)&g_acc);
    pr("%s S fetch straddling into an unmapped page: cause %lx, epc %s, tval %s\n", mode_name,
       g_mtrap.cause, g_mtrap.epc == va ? "= insn" : "WRONG", g_mtrap.tval == TB + 0x9000 ? "= next page" : "WRONG");
    CHECK("straddle: cause", g_mtrap.cause, CAUSE_FETCH_PAGE);
    CHECK("straddle: epc", g_mtrap.epc, va);
    CHECK("straddle: tval", g_mtrap.tval, TB + 0x9000);
    map(TB + 0x9000, 0, (u64)pages[P_CODE2], PTE_R | PTE_X | AD | PTE_V);
    FETCH_OK("straddling two mapped pages", PRV_S, va, 41, 42);
    map(TB + 0x9000, 0, 0, 0);
}

static void test_ad_bits(void)
{
    pr("%s PTE without A before: %lx\n", mode_name, *pte_noa & 0xff);
    LOAD_OK("A=0 page", PRV_S, TB + 0x5008, word(P_NOA, 8));
    pr("%s PTE without A after a load: %lx\n", mode_name, *pte_noa & 0xff);
    pr("%s PTE without D before: %lx\n", mode_name, *pte_nod & 0xff);
    LOAD_OK("D=0 page", PRV_S, TB + 0x6008, word(P_NOD, 8));
    pr("%s PTE without D after a load: %lx\n", mode_name, *pte_nod & 0xff);
    STORE_OK("D=0 page", PRV_S, TB + 0x6010, 7);
    pr("%s PTE without D after a store: %lx\n", mode_name, *pte_nod & 0xff);
}

static void test_sfence(void)
{
    /* Remap a page; after sfence.vma the new mapping must be used. */
    LOAD_OK("before remap", PRV_S, TB + 0x30, word(P_RW, 0x30));
    map(TB, 0, (u64)pages[P_ALT], PTE_R | PTE_W | AD | PTE_V); /* includes sfence.vma */
    LOAD_OK("after remap + sfence.vma", PRV_S, TB + 0x30, word(P_ALT, 0x30));
    /* sfence.vma with an address operand */
    *slot(root_s, TB, 0) = pte((u64)pages[P_RW], PTE_R | PTE_W | AD | PTE_V);
    *slot(root_u, TB, 0) = pte((u64)pages[P_RW], PTE_R | PTE_W | AD | PTE_V);
    asm volatile("sfence.vma %0, zero" ::"r"(TB) : "memory");
    LOAD_OK("after remap + sfence.vma va", PRV_S, TB + 0x30, word(P_RW, 0x30));
    /* unmapping */
    *slot(root_s, TB, 0) = 0;
    asm volatile("sfence.vma %0, zero" ::"r"(TB) : "memory");
    LOAD_PF("after unmap + sfence.vma", PRV_S, TB + 0x30);
    map(TB, 0, (u64)pages[P_RW], PTE_R | PTE_W | AD | PTE_V);
}

/* Page faults delegated to S-mode: scause/sepc/stval. */
static void test_delegated_fault(void)
{
    install_strap();
    csr_write(medeleg, (1UL << CAUSE_LOAD_PAGE) | (1UL << CAUSE_STORE_PAGE) | (1UL << CAUSE_FETCH_PAGE));
    g_acc.op = OP_LD;
    g_acc.va = TB + 0xc123;
    g_acc.val = 0;
    csr_write(satp, satp_for(root_s));
    asm volatile("sfence.vma" ::: "memory");
    trap_reset();
    run_in_mode(PRV_S, lower_access, (u64)&g_acc);
    csr_write(satp, 0);
    csr_write(medeleg, 0);
    pr("%s delegated load page fault: scause %lx, stval %s, sepc %s, M saw %s\n", mode_name, g_strap.cause,
       g_strap.tval == TB + 0xc123 ? "= va" : "WRONG", g_strap.epc == g_acc.site ? "ok" : "WRONG",
       g_mtrap.cause == NO_TRAP ? "nothing" : "a trap");
    CHECK("delegated PF: scause", g_strap.cause, CAUSE_LOAD_PAGE);
    CHECK("delegated PF: stval", g_strap.tval, TB + 0xc123);
    CHECK("delegated PF: sepc", g_strap.epc, g_acc.site);
    CHECK("delegated PF: M saw nothing", g_mtrap.cause, NO_TRAP);
}

/* MPRV: M-mode loads and stores translated as if in mode MPP. A trap
 * leaves MPRV set while MPP becomes M, so the hook clears MPRV to keep the
 * rest of the program untranslated. */
static int clear_mprv(frame_t *f)
{
    (void)f;
    csr_clear(mstatus, MSTATUS_MPRV);
    return 0;
}

static u64 mprv_load(u64 va, u64 mpp, u64 *site)
{
    u64 v = 0xdead;
    csr_clear(mstatus, MSTATUS_MPP);
    csr_set(mstatus, mpp << 11);
    asm volatile("lla t1, 1f\n\tsd t1, 0(%2)\n\t"
                 "li t0, 0x20000\n\tcsrs mstatus, t0\n"
                 "1:\tld %0, 0(%1)\n\t"
                 "csrc mstatus, t0"
                 : "+r"(v) : "r"(va), "r"(site) : "t0", "t1", "memory");
    return v;
}

static void test_mprv(void)
{
    u64 site;
    g_mtrap_hook = clear_mprv;
    csr_write(satp, satp_for(root_s));
    asm volatile("sfence.vma" ::: "memory");
    trap_reset();
    u64 v = mprv_load(TB + 0x40, PRV_S, &site);
    pr("%s MPRV MPP=S load: %s\n", mode_name, v == word(P_RW, 0x40) && g_mtrap.cause == NO_TRAP ? "translated" : "WRONG");
    CHECK("MPRV S: value", v, word(P_RW, 0x40));
    CHECK("MPRV S: no trap", g_mtrap.cause, NO_TRAP);
    trap_reset();
    v = mprv_load(TB + 0x2040, PRV_S, &site);
    pr("%s MPRV MPP=S load of X-only page: cause %lx tval %s\n", mode_name, g_mtrap.cause,
       g_mtrap.tval == TB + 0x2040 ? "= va" : "WRONG");
    CHECK("MPRV S X-only: cause", g_mtrap.cause, CAUSE_LOAD_PAGE);
    CHECK("MPRV S X-only: epc", g_mtrap.epc, site);
    CHECK("MPRV S X-only: tval", g_mtrap.tval, TB + 0x2040);
    CHECK("MPRV S X-only: taken from M", (g_mtrap.status & MSTATUS_MPP) >> 11, PRV_M);
    csr_set(mstatus, MSTATUS_MXR);
    trap_reset();
    v = mprv_load(TB + 0x2040, PRV_S, &site);
    csr_clear(mstatus, MSTATUS_MXR);
    CHECK("MPRV S + MXR X-only: value", v, word(P_XO, 0x40));
    /* MPP=U: S pages fault, U pages are readable. */
    trap_reset();
    v = mprv_load(TB + 0x40, PRV_U, &site);
    pr("%s MPRV MPP=U load of S page: cause %lx\n", mode_name, g_mtrap.cause);
    CHECK("MPRV U S-page: cause", g_mtrap.cause, CAUSE_LOAD_PAGE);
    trap_reset();
    v = mprv_load(TB + 0x4040, PRV_U, &site);
    CHECK("MPRV U U-page: value", v, word(P_USER, 0x40));
    CHECK("MPRV U U-page: no trap", g_mtrap.cause, NO_TRAP);
    /* MPP=M: no translation at all */
    static u64 plain = 0x1357;
    trap_reset();
    v = mprv_load((u64)&plain, PRV_M, &site);
    CHECK("MPRV M: physical", v, 0x1357);
    csr_write(satp, 0);
    csr_clear(mstatus, MSTATUS_MPP);
    g_mtrap_hook = 0;
}

int main(void)
{
    CHECK_TRUE("image below the megapage target", (u64)__image_end <= MEGA_PA);
    for (int n = 3; n <= 4; n++) {
        build(n);
        test_basic();
        test_permissions();
        test_straddle();
        test_ad_bits();
        test_sfence();
        test_delegated_fault();
        test_mprv();
    }
    finish();
}
