/* Integer hash loop: FNV-1a over bytes and a 64-bit multiply/xor-shift mix
 * over words of a 16 KiB buffer, repeated. Loads, ALU ops and a tight loop. */
#include "bench.h"

#define WORDS 2048
static u64 buf[WORDS];

static u64 mix(u64 h, u64 w)
{
    h ^= w;
    h *= 0x9e3779b97f4a7c15UL;
    h ^= h >> 29;
    h += h << 7;
    return h;
}

int main(void)
{
    u64 x = 0x1234567887654321UL;
    for (int i = 0; i < WORDS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }
    u64 h = 0, f = 0xcbf29ce484222325UL;
    for (int round = 0; round < 4000 * SCALE; round++) {
        for (int i = 0; i < WORDS; i++)
            h = mix(h, buf[i] + (u64)round);
        const u8 *p = (const u8 *)buf;
        for (int i = 0; i < WORDS; i++) {
            f ^= p[i];
            f *= 0x100000001b3UL;
        }
        buf[round & (WORDS - 1)] ^= h;
    }
    put_str("result ");
    put_hex(h ^ f);
    put_str("\n");
    return 0;
}
