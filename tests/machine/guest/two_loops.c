/* Two busy loops, the first running three times as many iterations as the
 * second, for the guest profiler's test: its samples must land in the two
 * functions in about that proportion.  Built with the tests/guest runtime.
 */
#include "rt.h"

__attribute__((noinline)) static u64 heavy(u64 n)
{
    u64 h = 1;
    for (u64 i = 0; i < n; i++)
        h = h * 6364136223846793005UL + i;
    return h;
}

__attribute__((noinline)) static u64 light(u64 n)
{
    u64 h = 7;
    for (u64 i = 0; i < n; i++)
        h = h * 6364136223846793005UL + i;
    return h;
}

int main(void)
{
    u64 h = heavy(3000000) ^ light(1000000);
    pr("%lx\n", h);
    return 0;
}
