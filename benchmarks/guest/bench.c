/* UART (16550 at 0x1000_0000) output and the test-device exit. */
#include "bench.h"

#define UART ((volatile u8 *)0x10000000UL)
#define TEST_DEV ((volatile u32 *)0x100000UL)

int (*bench_trap_hook)(u64 cause, u64 epc, u64 tval);

static void put_char(char c)
{
    while (!(UART[5] & 0x20))
        ;
    UART[0] = (u8)c;
}

void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

void put_hex(u64 v)
{
    put_str("0x");
    for (int i = 60; i >= 0; i -= 4)
        put_char("0123456789abcdef"[(v >> i) & 15]);
}

void put_dec(u64 v)
{
    char buf[24];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put_char(buf[--n]);
}

void bench_exit(int code)
{
    *TEST_DEV = code ? ((u32)code << 16) | 0x3333 : 0x5555;
    for (;;)
        __asm__ volatile("wfi");
}

/* regs: the trap entry's save area (ra, a0..a7, t0..t6). */
void bench_trap(u64 *regs)
{
    u64 cause = csr_read(mcause), epc = csr_read(mepc), tval = csr_read(mtval);
    (void)regs;
    if (bench_trap_hook && bench_trap_hook(cause, epc, tval))
        return;
    put_str("unexpected trap cause=");
    put_hex(cause);
    put_str(" epc=");
    put_hex(epc);
    put_str(" tval=");
    put_hex(tval);
    put_str("\n");
    bench_exit(3);
}
