/* sfence.vma with an address operand, after remapping superpages and pages
 * whose translations were just used (so a TLB holds them), under Sv39 and
 * Sv48: the fence names one 4 KiB page of a megapage or gigapage, and every
 * other page of that superpage must then use the new PTE too (the fence
 * covers the leaf PTE that maps the address, and a TLB may hold that leaf
 * for many pages); a fenced 4 KiB page takes its new mapping while its
 * neighbour keeps the old one. The reads run from S-mode in a loop, hot
 * enough for a translation tier.
 */
#include "pt.h"

#define RAM 0x80000000UL
#define AREA_A 0x80400000UL /* two 2 MiB areas whose pages say who they are */
#define AREA_B 0x80600000UL
#define MEGA_VA 0x40000000UL   /* a megapage */
#define SMALL_VA 0x40200000UL  /* 4 KiB pages */
#define GIGA_VA 0x100000000UL  /* a gigapage onto RAM */

static u64 tables[8][512] __attribute__((aligned(4096)));
static int ntables, levels;
static u64 *root;
static const char *mode_name;
extern char __image_end[];

static u64 *new_table(void)
{
    u64 *t = tables[ntables++];
    memset(t, 0, 4096);
    return t;
}

static u64 *slot(u64 va, int leaf_level) { return pt_slot(root, levels, va, leaf_level, new_table); }

static u64 marker(u64 pa) { return pa * 3 + 0x5a; }

static void fence_va(u64 va) { asm volatile("sfence.vma %0, zero" ::"r"(va) : "memory"); }

/* In S-mode: sum of the first word of `count` pages from va, 40 times over. */
static u64 g_count;
static u64 s_sum(u64 va)
{
    u64 s = 0;
    for (int r = 0; r < 40; r++)
        for (u64 i = 0; i < g_count; i++)
            s += *(volatile u64 *)(va + 0x1000 * i);
    return s;
}

static u64 sum_s(u64 va, u64 count)
{
    g_count = count;
    trap_reset();
    return run_in_mode(PRV_S, s_sum, va);
}

static u64 expect(u64 pa, u64 count)
{
    u64 s = 0;
    for (u64 i = 0; i < count; i++)
        s += marker(pa + 0x1000 * i);
    return 40 * s;
}

static void check_fault(const char *what, u64 va)
{
    sum_s(va, 1);
    pr("%s %s: cause %lx, tval %s\n", mode_name, what, g_mtrap.cause, g_mtrap.tval == va ? "= va" : "WRONG");
    CHECK(what, g_mtrap.cause, CAUSE_LOAD_PAGE);
    CHECK(what, g_mtrap.tval, va);
}

static void run(int nlevels)
{
    levels = nlevels;
    mode_name = nlevels == 3 ? "sv39" : "sv48";
    ntables = 0;
    root = new_table();
    *slot(RAM, 2) = pte(RAM, RWX | AD | PTE_V);
    u64 *mega = slot(MEGA_VA, 1);
    *mega = pte(AREA_A, PTE_R | PTE_W | AD | PTE_V);
    u64 *small0 = slot(SMALL_VA, 0);
    u64 *small1 = slot(SMALL_VA + 0x1000, 0);
    *small0 = pte(AREA_A + 0x10000, PTE_R | AD | PTE_V);
    *small1 = pte(AREA_A + 0x11000, PTE_R | AD | PTE_V);
    u64 *giga = slot(GIGA_VA, 2);
    *giga = pte(RAM, PTE_R | AD | PTE_V);
    csr_write(satp, ((nlevels == 3 ? 8UL : 9UL) << 60) | ((u64)root >> 12));
    asm volatile("sfence.vma" ::: "memory");

    /* A megapage moved elsewhere; the fence names a page that was not read. */
    u64 before = sum_s(MEGA_VA + 0x1000, 8);
    CHECK("megapage before", before, expect(AREA_A + 0x1000, 8));
    *mega = pte(AREA_B, PTE_R | PTE_W | AD | PTE_V);
    fence_va(MEGA_VA + 0x1ff000);
    u64 after = sum_s(MEGA_VA + 0x1000, 8);
    pr("%s megapage remapped: %s\n", mode_name, after == expect(AREA_B + 0x1000, 8) ? "new mapping" : "STALE");
    CHECK("megapage after remap + sfence.vma va", after, expect(AREA_B + 0x1000, 8));
    /* ... and then taken away. */
    *mega = pte(AREA_B, PTE_R | PTE_W | AD);
    fence_va(MEGA_VA);
    check_fault("megapage unmapped", MEGA_VA + 0x5000);

    /* 4 KiB pages: the fenced one moves, its neighbour stays. */
    CHECK("page 0 before", sum_s(SMALL_VA, 1), expect(AREA_A + 0x10000, 1));
    CHECK("page 1 before", sum_s(SMALL_VA + 0x1000, 1), expect(AREA_A + 0x11000, 1));
    *small0 = pte(AREA_B + 0x12000, PTE_R | AD | PTE_V);
    fence_va(SMALL_VA);
    u64 p0 = sum_s(SMALL_VA, 1), p1 = sum_s(SMALL_VA + 0x1000, 1);
    pr("%s page remapped: %s, neighbour %s\n", mode_name, p0 == expect(AREA_B + 0x12000, 1) ? "new mapping" : "STALE",
       p1 == expect(AREA_A + 0x11000, 1) ? "unchanged" : "WRONG");
    CHECK("page 0 after remap + sfence.vma va", p0, expect(AREA_B + 0x12000, 1));
    CHECK("page 1 unchanged", p1, expect(AREA_A + 0x11000, 1));

    /* A gigapage taken away; the fence names an address 0x1234000 into it. */
    u64 g = sum_s(GIGA_VA + (AREA_A - RAM), 4) + sum_s(GIGA_VA + (AREA_B - RAM) + 0x3000, 4);
    CHECK("gigapage before", g, expect(AREA_A, 4) + expect(AREA_B + 0x3000, 4));
    *giga = pte(RAM, PTE_R | AD);
    fence_va(GIGA_VA + 0x1234000);
    check_fault("gigapage unmapped", GIGA_VA + (AREA_B - RAM) + 0x3000);
    check_fault("gigapage unmapped", GIGA_VA + (AREA_A - RAM));

    csr_write(satp, 0);
    asm volatile("sfence.vma" ::: "memory");
}

int main(void)
{
    CHECK_TRUE("image below the test areas", (u64)__image_end <= AREA_A);
    for (u64 pa = AREA_A; pa < AREA_B + 0x200000; pa += 0x1000)
        *(volatile u64 *)pa = marker(pa);
    run(3);
    run(4);
    finish();
}
