/* Misaligned accesses that cross into a page Linux has not faulted in yet.
 *
 * Three fresh anonymous pages, only the first touched. An 8-byte store at
 * page + 4096 - 5 faults on the second page; the kernel maps the page that
 * stval names and retries. If stval named the start address (on the first,
 * already mapped page) the kernel would fix nothing and the store would
 * fault again forever. The same for a load into the untouched third page,
 * and for floating-point and compressed forms on a second mapping.
 * Prints one line per access and "MISALIGNED-OK" at the end.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

static char *fresh(void)
{
    char *p = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return NULL;
    }
    p[0] = 1; /* only the first page is present */
    return p;
}

int main(void)
{
    char *p = fresh(), *q = fresh();
    if (!p || !q)
        return 1;
    unsigned long v = 0x1122334455667788UL, got = 0;

    /* sd/ld; the explicit instructions keep the compiler from splitting them. */
    asm volatile("sd %0, 0(%1)" ::"r"(v), "r"(p + 4096 - 5) : "memory");
    printf("store: %02x %02x\n", (unsigned char)p[4095], (unsigned char)p[4096]);
    asm volatile("ld %0, 0(%1)" : "=r"(got) : "r"(p + 2 * 4096 - 5) : "memory");
    printf("load: %lx\n", got);

    /* Compressed and floating-point forms (c.sd, c.ld, fsd, fld). */
    register unsigned long a1 asm("a1") = (unsigned long)(q + 4096 - 3);
    register unsigned long a2 asm("a2") = v;
    asm volatile("c.sd a2, 0(a1)" ::"r"(a1), "r"(a2) : "memory");
    double d = 1.5, e = 0;
    asm volatile("fsd %0, 0(%1)" ::"f"(d), "r"(q + 2 * 4096 - 7) : "memory");
    asm volatile("fld %0, 0(%1)" : "=f"(e) : "r"(q + 2 * 4096 - 7) : "memory");
    unsigned long back = 0;
    memcpy(&back, q + 4096 - 3, 8);
    printf("c.sd: %lx fsd/fld: %g\n", back, e);
    if (got != 0 || back != v || e != 1.5 || (unsigned char)p[4096] != 0x33)
        return 1;
    printf("MISALIGNED-%s\n", "OK");
    return 0;
}
