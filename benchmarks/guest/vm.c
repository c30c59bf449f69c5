/* Paging: M-mode maps the first 8 MiB of RAM with 4 KiB Sv39 pages (and the
 * devices with one gigapage), then runs a hash-table workload in S-mode over
 * 768 KiB of data, so every load and store goes through translation. An
 * ecall brings the result back to M-mode. */
#include "bench.h"

#define PTE_V 1UL
#define PTE_R 2UL
#define PTE_W 4UL
#define PTE_X 8UL
#define PTE_A 64UL
#define PTE_D 128UL
#define LEAF (PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)

#define SLOTS 65536
#define RAM 0x80000000UL

static u64 root[512] __attribute__((aligned(4096)));
static u64 mid[512] __attribute__((aligned(4096)));
static u64 leaf[4][512] __attribute__((aligned(4096)));
static u64 keys[SLOTS];
static u32 vals[SLOTS];
static volatile u64 result;

static u64 table_put(u64 k, u32 v)
{
    u64 i = (k * 0x9e3779b97f4a7c15UL) >> 48, probes = 0;
    while (keys[i] && keys[i] != k) {
        i = (i + 1) & (SLOTS - 1);
        probes++;
    }
    keys[i] = k;
    vals[i] = v;
    return probes;
}

static u32 table_get(u64 k)
{
    u64 i = (k * 0x9e3779b97f4a7c15UL) >> 48;
    while (keys[i]) {
        if (keys[i] == k)
            return vals[i];
        i = (i + 1) & (SLOTS - 1);
    }
    return 0;
}

static void s_main(void)
{
    u64 acc = 0;
    for (int round = 0; round < 30 * SCALE; round++) {
        for (long i = 0; i < SLOTS; i++)
            keys[i] = 0;
        u64 s = 0x9e3779b97f4a7c15UL + (u64)round;
        for (u32 n = 0; n < 40000; n++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc += table_put(s | 1, n);
        }
        s = 0x9e3779b97f4a7c15UL + (u64)round;
        for (u32 n = 0; n < 40000; n++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc = acc * 3 + table_get(s | 1) + table_get(s + 2);
        }
    }
    result = acc;
    __asm__ volatile("ecall");
    for (;;)
        ;
}

static int on_trap(u64 cause, u64 epc, u64 tval)
{
    (void)epc;
    (void)tval;
    if (cause != 9) /* ecall from S */
        return 0;
    put_str("result ");
    put_hex(result);
    put_str("\n");
    bench_exit(0);
}

int main(void)
{
    root[0] = (0UL >> 12 << 10) | LEAF; /* devices: gigapage at 0 */
    root[RAM >> 30] = ((u64)mid >> 12 << 10) | PTE_V;
    for (int t = 0; t < 4; t++) {
        mid[t] = ((u64)leaf[t] >> 12 << 10) | PTE_V;
        for (int i = 0; i < 512; i++)
            leaf[t][i] = ((RAM + ((u64)t << 21) + ((u64)i << 12)) >> 12 << 10) | LEAF;
    }
    if ((u64)&vals[SLOTS] > RAM + (8UL << 20)) {
        put_str("image too large for the mapping\n");
        return 1;
    }
    bench_trap_hook = on_trap;
    csr_write(satp, (8UL << 60) | ((u64)root >> 12));
    __asm__ volatile("sfence.vma");
    u64 ms = csr_read(mstatus);
    ms = (ms & ~(3UL << 11)) | (1UL << 11); /* MPP = S */
    csr_write(mstatus, ms);
    csr_write(mepc, (u64)s_main);
    __asm__ volatile("mret");
    return 2;
}
