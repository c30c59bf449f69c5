/* F and D in hot loops, for a translation tier that computes them inline:
 * the rounding mode switched (csrw frm) every few iterations of a loop,
 * fflags accumulated over a whole loop without a CSR access in it, results
 * stepping into subnormals and up to overflow, fused multiply-adds whose
 * addend cancels the product (exact and inexact), NaN-boxed and improperly
 * boxed singles, signalling NaNs, conversions to and from integers at
 * halfway values and range limits, and mstatus.FS becoming dirty inside a
 * loop.  Everything is printed as digests and compared with QEMU.
 */
#include "rt.h"

#define BOX(s) (0xffffffff00000000UL | (u32)(s))

static inline u64 frflags_(void)
{
    u64 f;
    asm volatile("frflags %0" : "=r"(f));
    return f;
}
static inline void fsflags_(u64 f) { asm volatile("fsflags %0" ::"r"(f)); }
static inline void fsrm_(u64 m) { asm volatile("fsrm %0" ::"r"(m)); }

static inline u64 bits(double x)
{
    u64 r;
    asm volatile("fmv.x.d %0, %1" : "=r"(r) : "f"(x));
    return r;
}
static inline double dbl(u64 b)
{
    double r;
    asm volatile("fmv.d.x %0, %1" : "=f"(r) : "r"(b));
    return r;
}

/* Every operation through asm volatile with the dynamic rounding mode, so
 * the compiler neither folds nor moves them across the frm writes. */
#define OP2(name, insn, T)                                                                         \
    static inline T name(T a, T b)                                                                 \
    {                                                                                              \
        T r;                                                                                       \
        asm volatile(insn " %0, %1, %2" : "=f"(r) : "f"(a), "f"(b));                               \
        return r;                                                                                  \
    }
#define OP3(name, insn, T)                                                                         \
    static inline T name(T a, T b, T c)                                                            \
    {                                                                                              \
        T r;                                                                                       \
        asm volatile(insn " %0, %1, %2, %3" : "=f"(r) : "f"(a), "f"(b), "f"(c));                   \
        return r;                                                                                  \
    }
OP2(add_d, "fadd.d", double)
OP2(sub_d, "fsub.d", double)
OP2(mul_d, "fmul.d", double)
OP2(div_d, "fdiv.d", double)
OP2(min_d, "fmin.d", double)
OP2(max_d, "fmax.d", double)
OP3(madd_d, "fmadd.d", double)
OP3(msub_d, "fmsub.d", double)
OP3(nmadd_d, "fnmadd.d", double)
OP3(nmsub_d, "fnmsub.d", double)
OP2(add_s, "fadd.s", float)
OP2(mul_s, "fmul.s", float)
OP2(div_s, "fdiv.s", float)
OP3(madd_s, "fmadd.s", float)
OP3(nmsub_s, "fnmsub.s", float)

static inline double sqrt_d(double a)
{
    double r;
    asm volatile("fsqrt.d %0, %1" : "=f"(r) : "f"(a));
    return r;
}
static inline float sqrt_s(float a)
{
    float r;
    asm volatile("fsqrt.s %0, %1" : "=f"(r) : "f"(a));
    return r;
}

/* Arithmetic in all five modes: the mode changes every 8 iterations, the
 * flags are read (and sometimes cleared) every 4. */
static void frm_switching(void)
{
    digest_t d;
    digest_init(&d);
    double x = div_d(1.0, 3.0), y = 1.0000001, acc = 0.0;
    float fx = 0.1f, fy = 1.5f;
    for (int i = 0; i < 3000; i++) {
        if ((i & 7) == 0)
            fsrm_((u64)(i >> 3) % 5);
        x = add_d(x, y);
        y = mul_d(y, 1.0000003);
        double q = div_d(x, y);
        double s = sqrt_d(q);
        acc = madd_d(s, q, acc);
        acc = msub_d(acc, 0.999, s);
        fx = madd_s(fx, fy, 0.25f);
        fx = div_s(fx, 1.75f);
        float fs = sqrt_s(fx);
        digest_add(&d, bits(x) ^ (bits(q) << 1) ^ (bits(s) << 2) ^ bits(acc));
        float both[2] = {fx, fs};
        u64 fb;
        memcpy(&fb, both, 8);
        digest_add(&d, fb);
        if ((i & 3) == 3) {
            digest_add(&d, frflags_());
            if ((i & 15) == 15)
                fsflags_(0);
        }
    }
    fsrm_(0);
    digest_print("frm switching", &d);
}

/* A long loop with no CSR access: the flags must come out sticky and exact. */
static void sticky_flags(void)
{
    digest_t d;
    digest_init(&d);
    for (int round = 0; round < 4; round++) {
        fsflags_(0);
        double x = 1.0, step = round == 0 ? 0.5 : (round == 1 ? 1.5 : (round == 2 ? 0.25 : 3.0));
        double y = 0.0;
        for (int i = 0; i < 2000; i++) {
            x = mul_d(x, 1.0); /* exact */
            y = add_d(y, step); /* exact while y is small: multiples of 0.25 */
            x = sub_d(x, 0.0);
        }
        digest_add(&d, bits(y));
        digest_add(&d, frflags_()); /* round 1 and 3 stay exact too */
        fsflags_(0);
        for (int i = 0; i < 2000; i++)
            y = add_d(y, 0.1); /* inexact */
        digest_add(&d, bits(y));
        digest_add(&d, frflags_());
    }
    digest_print("sticky flags", &d);
}

/* Down into subnormals and to zero, up to overflow, in both formats and modes. */
static void range_edges(void)
{
    digest_t d;
    digest_init(&d);
    for (int rm = 0; rm < 5; rm++) {
        fsrm_(rm);
        double x = 1.0, z = 1.0;
        float f = 1.0f;
        fsflags_(0);
        for (int i = 0; i < 1100; i++) {
            x = mul_d(x, 0.75);
            z = div_d(z, 1.9);
            f = mul_s(f, 0.625f);
            digest_add(&d, bits(x) ^ (bits(z) << 3));
            digest_add(&d, frflags_());
        }
        x = 1.5;
        f = 1.5f;
        for (int i = 0; i < 1100; i++) {
            x = mul_d(x, 2.5);
            f = add_s(f, mul_s(f, 3.0f));
            double s = add_d(x, dbl(0x7fefffffffffffffUL));
            digest_add(&d, bits(x) ^ bits(s));
            float both[2] = {f, f};
            u64 fb;
            memcpy(&fb, both, 8);
            digest_add(&d, fb);
        }
        digest_add(&d, frflags_());
    }
    fsrm_(0);
    digest_print("range edges", &d);
}

/* Fused multiply-adds with the addend near -a*b: the residual decides NX. */
static void fma_cancellation(void)
{
    digest_t d;
    digest_init(&d);
    double a = 1.0 + 1.0 / 1024, b = 3.0 - 1.0 / 512;
    float fa = 1.0f + 1.0f / 4096, fb = 5.0f / 3.0f;
    for (int i = 0; i < 1500; i++) {
        double p = mul_d(a, b);
        u64 pb = bits(p) + (u64)((i % 5) - 2);
        fsflags_(0);
        double r1 = madd_d(a, b, dbl(pb ^ (1UL << 63)));
        double r2 = nmsub_d(a, b, dbl(pb));
        double r3 = msub_d(a, b, p);
        double r4 = nmadd_d(a, b, dbl(pb));
        digest_add(&d, bits(r1) ^ (bits(r2) << 1) ^ (bits(r3) << 2) ^ (bits(r4) << 3));
        digest_add(&d, frflags_());
        float fp = mul_s(fa, fb);
        float fr = nmsub_s(fa, fb, fp);
        float fr2 = madd_s(fa, fb, fr);
        float both[2] = {fr, fr2};
        u64 w;
        memcpy(&w, both, 8);
        digest_add(&d, w);
        digest_add(&d, frflags_());
        a = add_d(a, 1.0 / 8192);
        b = mul_d(b, 1.0009765625);
        fa = add_s(fa, 1.0f / 65536);
        fb = mul_s(fb, 0.99951171875f);
    }
    digest_print("fma cancellation", &d);
}

/* Single operations on register images: boxed, unboxed, signalling NaNs. */
static void boxing_and_nans(void)
{
    static const u64 images[] = {
        BOX(0x3fc00000),           /* 1.5f */
        0x000000003fc00000UL,      /* 1.5f, not boxed: reads as the canonical NaN */
        0xffffffff7fffffffUL,      /* boxed qNaN with payload */
        BOX(0x7f800001),           /* boxed sNaN */
        0xfffffffe3fc00000UL,      /* almost boxed */
        BOX(0x00000001),           /* smallest subnormal */
        BOX(0x80000000),           /* -0 */
        BOX(0x7f7fffff),           /* largest single */
        0x7ff0000000000001UL,      /* a double sNaN */
        0x3ff8000000000000UL,      /* 1.5 */
    };
    const int n = sizeof images / sizeof images[0];
    digest_t d;
    digest_init(&d);
    for (int round = 0; round < 40; round++) {
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                u64 a = images[i], b = images[j], r[10], x[4];
                fsflags_(0);
                asm volatile("fmv.d.x ft0, %14\n\tfmv.d.x ft1, %15\n\t"
                             "fadd.s ft2, ft0, ft1\n\tfmv.x.d %0, ft2\n\t"
                             "fmul.s ft2, ft0, ft1\n\tfmv.x.d %1, ft2\n\t"
                             "fsgnjn.s ft2, ft0, ft1\n\tfmv.x.d %2, ft2\n\t"
                             "fmin.s ft2, ft0, ft1\n\tfmv.x.d %3, ft2\n\t"
                             "fmax.d ft2, ft0, ft1\n\tfmv.x.d %4, ft2\n\t"
                             "fcvt.d.s ft2, ft0\n\tfmv.x.d %5, ft2\n\t"
                             "fcvt.s.d ft2, ft1\n\tfmv.x.d %6, ft2\n\t"
                             "fmadd.s ft2, ft0, ft1, ft0\n\tfmv.x.d %7, ft2\n\t"
                             "fadd.d ft2, ft0, ft1\n\tfmv.x.d %8, ft2\n\t"
                             "fsgnjx.d ft2, ft0, ft1\n\tfmv.x.d %9, ft2\n\t"
                             "feq.s %10, ft0, ft1\n\t"
                             "flt.d %11, ft0, ft1\n\t"
                             "fmv.x.w %12, ft0\n\t"
                             "fle.s %13, ft1, ft0\n\t"
                             : "=&r"(r[0]), "=&r"(r[1]), "=&r"(r[2]), "=&r"(r[3]), "=&r"(r[4]), "=&r"(r[5]),
                               "=&r"(r[6]), "=&r"(r[7]), "=&r"(r[8]), "=&r"(r[9]), "=&r"(x[0]), "=&r"(x[1]),
                               "=&r"(x[2]), "=&r"(x[3])
                             : "r"(a), "r"(b)
                             : "ft0", "ft1", "ft2");
                if (round == 0 || round == 39) {
                    for (int k = 0; k < 10; k++)
                        digest_add(&d, r[k]);
                    for (int k = 0; k < 4; k++)
                        digest_add(&d, x[k]);
                    digest_add(&d, frflags_());
                }
            }
        }
    }
    digest_print("boxing and NaNs", &d);
}

/* Conversions at halfway values and range limits, every mode. */
static void conversions(void)
{
    static const u64 limits[] = {
        0x41dfffffffc00000UL, /* 2**31 - 1 */
        0x41e0000000000000UL, /* 2**31 */
        0xc1e0000000000000UL, /* -2**31 */
        0xc1e0000000200000UL, /* -2**31 - 1 */
        0x41efffffffe00000UL, /* 2**32 - 1 */
        0x43e0000000000000UL, /* 2**63 */
        0x43dfffffffffffffUL, /* just below 2**63 */
        0xc3e0000000000000UL, /* -2**63 */
        0x43f0000000000000UL, /* 2**64 */
        0x43efffffffffffffUL, /* just below 2**64 */
        0xbfe0000000000000UL, /* -0.5 */
        0xbfefffffffffffffUL, /* just above -1 */
    };
    digest_t d;
    digest_init(&d);
    for (int rm = 0; rm < 5; rm++) {
        fsrm_(rm);
        for (int i = -60; i < 60; i++) {
            double v = div_d((double)i, 4.0);
            float fv = (float)v;
            u64 r[8];
            fsflags_(0);
            asm volatile("fcvt.w.d %0, %8\n\t"
                         "fcvt.wu.d %1, %8, rtz\n\t"
                         "fcvt.l.d %2, %8, rne\n\t"
                         "fcvt.lu.d %3, %8\n\t"
                         "fcvt.w.s %4, %9, rtz\n\t"
                         "fcvt.l.s %5, %9\n\t"
                         "fcvt.wu.s %6, %9, rne\n\t"
                         "fcvt.lu.s %7, %9, rtz\n\t"
                         : "=&r"(r[0]), "=&r"(r[1]), "=&r"(r[2]), "=&r"(r[3]), "=&r"(r[4]), "=&r"(r[5]),
                           "=&r"(r[6]), "=&r"(r[7])
                         : "f"(v), "f"(fv));
            for (int k = 0; k < 8; k++)
                digest_add(&d, r[k]);
            digest_add(&d, frflags_());
        }
        for (int i = 0; i < (int)(sizeof limits / sizeof limits[0]); i++) {
            u64 r[4];
            fsflags_(0);
            asm volatile("fmv.d.x ft0, %4\n\t"
                         "fcvt.w.d %0, ft0\n\t"
                         "fcvt.wu.d %1, ft0, rtz\n\t"
                         "fcvt.l.d %2, ft0, rne\n\t"
                         "fcvt.lu.d %3, ft0, rtz\n\t"
                         : "=&r"(r[0]), "=&r"(r[1]), "=&r"(r[2]), "=&r"(r[3])
                         : "r"(limits[i])
                         : "ft0");
            for (int k = 0; k < 4; k++)
                digest_add(&d, r[k]);
            digest_add(&d, frflags_());
        }
        u64 ints[] = {0, 1, (1UL << 53) + 1, (1UL << 24) + 1, 0x7fffffffffffffffUL, 0x8000000000000000UL,
                      0xffffffffffffffffUL, 0x80000001UL, 0xffffffff80000000UL, 12345678901234567UL};
        for (int i = 0; i < 10; i++) {
            u64 r[6];
            fsflags_(0);
            asm volatile("fcvt.d.l ft0, %6\n\tfmv.x.d %0, ft0\n\t"
                         "fcvt.d.lu ft0, %6\n\tfmv.x.d %1, ft0\n\t"
                         "fcvt.s.w ft0, %6\n\tfmv.x.d %2, ft0\n\t"
                         "fcvt.s.lu ft0, %6\n\tfmv.x.d %3, ft0\n\t"
                         "fcvt.d.wu ft0, %6\n\tfmv.x.d %4, ft0\n\t"
                         "fcvt.s.l ft0, %6\n\tfmv.x.d %5, ft0\n\t"
                         : "=&r"(r[0]), "=&r"(r[1]), "=&r"(r[2]), "=&r"(r[3]), "=&r"(r[4]), "=&r"(r[5])
                         : "r"(ints[i])
                         : "ft0");
            for (int k = 0; k < 6; k++)
                digest_add(&d, r[k]);
            digest_add(&d, frflags_());
        }
    }
    fsrm_(0);
    digest_print("conversions", &d);
}

/* FS goes from Clean to Dirty in the middle of a loop (by a compare: no;
 * by an arithmetic result: yes), and mstatus.SD with it. */
static void fs_dirty(void)
{
    digest_t d;
    digest_init(&d);
    for (int i = 0; i < 300; i++) {
        u64 st, cmp;
        asm volatile("csrc mstatus, %0\n\tcsrs mstatus, %1" ::"r"(3UL << 13), "r"(2UL << 13)); /* Clean */
        asm volatile("fmv.d.x ft0, %1\n\tfeq.d %0, ft0, ft0" : "=r"(cmp) : "r"((u64)i) : "ft0");
        asm volatile("csrr %0, mstatus" : "=r"(st));
        digest_add(&d, (st >> 13) & 3);
        digest_add(&d, st >> 63);
        digest_add(&d, cmp);
        double x = dbl(0x3ff0000000000000UL + (u64)i);
        x = add_d(x, x);
        asm volatile("csrr %0, mstatus" : "=r"(st));
        digest_add(&d, (st >> 13) & 3);
        digest_add(&d, st >> 63);
        digest_add(&d, bits(x));
    }
    digest_print("fs dirty", &d);
}

int main(void)
{
    frm_switching();
    sticky_flags();
    range_edges();
    fma_cancellation();
    boxing_and_nans();
    conversions();
    fs_dirty();
    finish();
}
