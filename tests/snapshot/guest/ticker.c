/*
 * Bare-metal program for the snapshot tests (M-mode, QEMU virt devices).
 *
 * Each round does integer and floating-point work whose results carry over
 * from round to round (so registers, FP state and RAM must survive a
 * snapshot exactly), takes at most one byte of console input, prints a line
 * and sleeps in wfi until the next machine timer interrupt. After ROUNDS
 * rounds, or on input 'q', it prints a summary and powers off.
 */
#include <stdint.h>

#define UART ((volatile uint8_t *)0x10000000UL)
#define MTIMECMP ((volatile uint64_t *)0x02004000UL)
#define MTIME ((volatile uint64_t *)0x0200BFF8UL)
#define FINISHER ((volatile uint32_t *)0x00100000UL)

#ifndef ROUNDS
#define ROUNDS 40
#endif
#ifndef PERIOD
#define PERIOD 20000 /* timer ticks between rounds (10 MHz: 2 ms) */
#endif

static volatile uint64_t ticks;
static uint64_t table[512]; /* RAM state that changes every round */

__attribute__((interrupt("machine"), aligned(4))) static void on_trap(void)
{
    uint64_t cause;
    asm volatile("csrr %0, mcause" : "=r"(cause));
    if ((int64_t)cause < 0 && (cause & 0xff) == 7) {
        ticks++;
        *MTIMECMP = *MTIME + PERIOD;
        return;
    }
    *FINISHER = (2u << 16) | 0x3333; /* unexpected trap: fail with code 2 */
    for (;;)
        ;
}

static void put(char c)
{
    while (!(UART[5] & 0x20))
        ;
    UART[0] = c;
}

static void puts_(const char *s)
{
    while (*s)
        put(*s++);
}

static void hex(uint64_t v)
{
    for (int i = 60; i >= 0; i -= 4)
        put("0123456789abcdef"[(v >> i) & 15]);
}

int main(void)
{
    asm volatile("csrw mtvec, %0" ::"r"(on_trap));
    *MTIMECMP = *MTIME + PERIOD;
    asm volatile("csrs mie, %0" ::"r"(1 << 7));
    asm volatile("csrs mstatus, %0" ::"r"(1 << 3));

    uint64_t h = 1469598103934665603ULL;
    double f = 1.0;
    char seen[64];
    int nseen = 0;
    int round;
    for (round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < 3000; i++) {
            h = (h ^ (uint64_t)i) * 1099511628211ULL;
            table[(h >> 7) & 511] += h;
            f = f * 1.0000001 + 0.5 / (i + 1);
        }
        if (UART[5] & 1) {
            char c = UART[0];
            if (c == 'q')
                break;
            if (nseen < 63)
                seen[nseen++] = c;
        }
        union {
            double d;
            uint64_t u;
        } fb = {f};
        puts_("round ");
        hex(round);
        puts_(" h=");
        hex(h);
        puts_(" f=");
        hex(fb.u);
        puts_(" t=");
        hex(table[round & 511]);
        puts_(" input=");
        for (int k = 0; k < nseen; k++)
            put(seen[k]);
        put('\n');
        uint64_t t = ticks;
        while (ticks == t)
            asm volatile("wfi");
    }
    puts_("done after ");
    hex(round);
    puts_(" rounds\n");
    *FINISHER = 0x5555;
    for (;;)
        ;
}
