/* Page-table entries for the programs that build their own Sv39/Sv48 tables. */
#ifndef GUEST_PT_H
#define GUEST_PT_H

#include "rt.h"

#define PTE_V 0x01UL
#define PTE_R 0x02UL
#define PTE_W 0x04UL
#define PTE_X 0x08UL
#define PTE_U 0x10UL
#define PTE_G 0x20UL
#define PTE_A 0x40UL
#define PTE_D 0x80UL
#define RWX (PTE_R | PTE_W | PTE_X)
#define AD (PTE_A | PTE_D)

static inline u64 pte(u64 pa, u64 flags) { return ((pa >> 12) << 10) | flags; }

/* The entry that maps `va` at `leaf_level` (0: a 4 KiB page) in the
 * `levels`-level tree under `root`, with tables from `new_table` made on
 * the way where none is valid yet. */
static inline u64 *pt_slot(u64 *root, int levels, u64 va, int leaf_level, u64 *(*new_table)(void))
{
    u64 *t = root;
    for (int lvl = levels - 1; lvl > leaf_level; lvl--) {
        u64 *e = &t[(va >> (12 + 9 * lvl)) & 511];
        if (!(*e & PTE_V))
            *e = pte((u64)new_table(), PTE_V);
        t = (u64 *)((*e >> 10) << 12);
    }
    return &t[(va >> (12 + 9 * leaf_level)) & 511];
}

#endif
