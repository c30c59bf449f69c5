/* Runtime of the guest programs: UART output, checks, digests, traps. */
#include "rt.h"

#define RUN_MODE_MAGIC 0x7e57
#define TRAP_STORM 10000

int g_failures;
volatile trap_info_t g_mtrap, g_strap;
trap_hook_t g_mtrap_hook, g_strap_hook;
u64 g_run_mode_sp;
extern char run_mode_return[];

/* ------------------------------------------------------------------ */
void putch(char c)
{
    volatile u8 *uart = (volatile u8 *)UART_BASE;
    while (!(uart[5] & 0x20)) {
    }
    uart[0] = (u8)c;
}

void puts_(const char *s)
{
    while (*s)
        putch(*s++);
}

void exit_(int code)
{
    u32 v = code == 0 ? 0x5555 : (((u32)code << 16) | 0x3333);
    mmio_w32(TEST_DEV, v);
    for (;;)
        asm volatile("wfi");
}

static void put_num(u64 v, unsigned base, int width, char pad, int neg)
{
    char buf[24];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    if (neg) {
        if (pad == '0') {
            putch('-');
            width--;
        } else {
            buf[n++] = '-';
        }
    }
    while (width-- > n)
        putch(pad);
    while (n)
        putch(buf[--n]);
}

void pr(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putch(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 'c':
            putch((char)__builtin_va_arg(ap, int));
            break;
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            int len = (int)strlen(s);
            while (width-- > len)
                putch(' ');
            puts_(s);
            break;
        }
        case 'd': {
            i64 v = longs ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
            put_num(v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
        case 'x': {
            u64 v = longs ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, unsigned);
            put_num(v, *fmt == 'x' ? 16 : 10, width, pad, 0);
            break;
        }
        case '%':
            putch('%');
            break;
        default:
            putch('?');
            break;
        }
    }
    __builtin_va_end(ap);
}

/* ------------------------------------------------------------------ */
void check_eq_(const char *what, int line, u64 got, u64 expected)
{
    if (got != expected) {
        g_failures++;
        pr("FAIL %s (line %d): got %016lx expected %016lx\n", what, line, got, expected);
    }
}

void fail_(const char *what, int line)
{
    g_failures++;
    pr("FAIL %s (line %d)\n", what, line);
}

void finish(void)
{
    if (g_failures) {
        pr("FAILED %d checks\n", g_failures);
        exit_(1);
    }
    pr("PASS\n");
    exit_(0);
}

void digest_init(digest_t *d)
{
    d->h = 0xcbf29ce484222325UL;
    d->n = 0;
}

void digest_add(digest_t *d, u64 v)
{
    for (int i = 0; i < 8; i++) {
        d->h ^= (v >> (8 * i)) & 0xff;
        d->h *= 0x100000001b3UL;
    }
    d->n++;
}

void digest_print(const char *name, const digest_t *d)
{
    pr("%s: %016lx (%lu values)\n", name, d->h, d->n);
}

/* ------------------------------------------------------------------ */
void trap_reset(void)
{
    g_mtrap.cause = NO_TRAP;
    g_mtrap.epc = g_mtrap.tval = g_mtrap.status = 0;
    g_mtrap.count = 0;
    g_strap.cause = NO_TRAP;
    g_strap.epc = g_strap.tval = g_strap.status = 0;
    g_strap.count = 0;
}

static u64 insn_length(u64 pc)
{
    return (*(volatile u16 *)pc & 3) == 3 ? 4 : 2;
}

static int is_fetch_fault(u64 cause)
{
    return cause == CAUSE_MISALIGNED_FETCH || cause == CAUSE_FETCH_ACCESS ||
           cause == CAUSE_FETCH_PAGE;
}

static void record(volatile trap_info_t *t, const frame_t *f)
{
    t->cause = f->cause;
    t->epc = f->epc;
    t->tval = f->tval;
    t->status = f->status;
    if (++t->count > TRAP_STORM) {
        pr("FAIL trap storm: cause %lx epc %lx tval %lx\n", f->cause, f->epc, f->tval);
        exit_(3);
    }
}

void mtrap_c(frame_t *f)
{
    u64 cause = f->cause;
    if ((cause == CAUSE_ECALL_U || cause == CAUSE_ECALL_S) && f->x[17] == RUN_MODE_MAGIC) {
        /* End of run_in_mode(): back to its caller, in M-mode with
         * interrupts disabled. */
        f->x[2] = g_run_mode_sp;
        f->epc = (u64)run_mode_return;
        u64 st = csr_read(mstatus);
        st = (st | MSTATUS_MPP) & ~MSTATUS_MPIE;
        csr_write(mstatus, st);
        return;
    }
    record(&g_mtrap, f);
    if (g_mtrap_hook && g_mtrap_hook(f))
        return;
    if (cause & CAUSE_INTR) {
        u64 code = cause & 63;
        if (code == 3)
            mmio_w32(CLINT_MSIP, 0);
        else if (code == 7)
            mmio_w64(CLINT_MTIMECMP, ~0UL);
        else if (code == 1 || code == 5)
            csr_clear(mip, 1UL << code);
        else
            csr_clear(mie, 1UL << code);
        return;
    }
    if (is_fetch_fault(cause))
        f->epc = f->x[1];
    else
        f->epc += insn_length(f->epc);
}

void strap_c(frame_t *f)
{
    u64 cause = f->cause;
    if (cause == CAUSE_ECALL_U && f->x[17] == RUN_MODE_MAGIC) {
        /* run_in_mode(PRV_U) ending while ecalls from U are delegated:
         * pass it on to the M-mode handler, which never returns here. */
        register u64 a0 asm("a0") = f->x[10];
        register u64 a7 asm("a7") = RUN_MODE_MAGIC;
        asm volatile("ecall" ::"r"(a0), "r"(a7));
        __builtin_unreachable();
    }
    record(&g_strap, f);
    if (g_strap_hook && g_strap_hook(f))
        return;
    if (cause & CAUSE_INTR) {
        u64 code = cause & 63;
        if (code == 1)
            csr_clear(sip, 2);
        else
            csr_clear(sie, 1UL << code);
        return;
    }
    if (is_fetch_fault(cause))
        f->epc = f->x[1];
    else
        f->epc += insn_length(f->epc);
}

void install_strap(void)
{
    csr_write(stvec, (u64)strap_entry);
}

/* ------------------------------------------------------------------ */
void rand_dump(const u64 *dump, const u8 *mem, u64 memlen)
{
    for (int i = 1; i < 32; i++)
        pr("x%d = %016lx\n", i, dump[i]);
    for (int i = 0; i < 32; i++)
        pr("f%d = %016lx\n", i, dump[32 + i]);
    pr("fflags = %lx\n", dump[64]);
    digest_t d;
    digest_init(&d);
    for (u64 i = 0; i + 8 <= memlen; i += 8)
        digest_add(&d, *(const u64 *)(mem + i));
    digest_print("memory", &d);
    /* The generated block never traps on a correct implementation. */
    if (g_mtrap.count) {
        pr("FAIL %lu unexpected traps, last: cause %lx epc %lx tval %lx\n", g_mtrap.count, g_mtrap.cause,
           g_mtrap.epc, g_mtrap.tval);
        g_failures++;
    }
    finish();
}

/* ------------------------------------------------------------------ */
void *memset(void *d, int c, unsigned long n)
{
    volatile u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
    volatile u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, unsigned long n)
{
    volatile u8 *p = d;
    const u8 *q = s;
    if (p < q) {
        while (n--)
            *p++ = *q++;
    } else {
        p += n;
        q += n;
        while (n--)
            *--p = *--q;
    }
    return d;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p < *q ? -1 : 1;
    return 0;
}

unsigned long strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}
