/* F and D: arithmetic in all five static rounding modes and through frm,
 * fflags after every operation, NaN boxing, signalling NaNs, fmin/fmax with
 * NaNs and signed zeros, saturating conversions, fcvt.s.d / fcvt.d.s,
 * fclass of every class, the fused multiply-adds, square root of negative
 * numbers, division by zero, subnormal results, comparisons with NaNs, and
 * mstatus.FS (off = illegal instruction, writes make it dirty).
 *
 * Sweeps over edge-case operands are printed as digests (compared with
 * QEMU); hand-picked cases with known results are checked here.  Build
 * with GUEST_EXTRA_CFLAGS=-DVERBOSE to print every case of the sweeps.
 */
#include "rt.h"

#define NV 0x10
#define DZ 0x08
#define OF 0x04
#define UF 0x02
#define NX 0x01

#define BOX(s) (0xffffffff00000000UL | (u32)(s))
#define CNAN_S BOX(0x7fc00000)
#define CNAN_D 0x7ff8000000000000UL

typedef u64 (*f2_t)(u64, u64, u64 *);
typedef u64 (*f1_t)(u64, u64 *);
typedef u64 (*f3_t)(u64, u64, u64, u64 *);

/* Every wrapper takes raw 64-bit register images and returns the raw
 * result (fmv.x.d for FP results, so boxing is visible) and the flags the
 * single instruction raised. */
#define FP_RR(name, insn)                                                                          \
    static u64 name(u64 a, u64 b, u64 *fl)                                                         \
    {                                                                                              \
        u64 r, f;                                                                                  \
        asm volatile("fmv.d.x ft0, %2\n\tfmv.d.x ft1, %3\n\tcsrw fflags, zero\n\t" insn           \
                     "\n\tcsrr %1, fflags\n\tfmv.x.d %0, ft2"                                      \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b) : "ft0", "ft1", "ft2");                   \
        *fl = f;                                                                                   \
        return r;                                                                                  \
    }
#define FP_RI(name, insn) /* FP operands, integer result in t0 */                                 \
    static u64 name(u64 a, u64 b, u64 *fl)                                                         \
    {                                                                                              \
        u64 r, f;                                                                                  \
        asm volatile("fmv.d.x ft0, %2\n\tfmv.d.x ft1, %3\n\tcsrw fflags, zero\n\t" insn           \
                     "\n\tcsrr %1, fflags\n\tmv %0, t0"                                            \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b) : "ft0", "ft1", "t0");                    \
        *fl = f;                                                                                   \
        return r;                                                                                  \
    }
#define FP_IR(name, insn) /* integer operand in t0, FP result */                                  \
    static u64 name(u64 a, u64 b, u64 *fl)                                                         \
    {                                                                                              \
        u64 r, f;                                                                                  \
        (void)b;                                                                                   \
        asm volatile("mv t0, %2\n\tcsrw fflags, zero\n\t" insn                                     \
                     "\n\tcsrr %1, fflags\n\tfmv.x.d %0, ft2"                                      \
                     : "=r"(r), "=r"(f) : "r"(a) : "ft2", "t0");                                   \
        *fl = f;                                                                                   \
        return r;                                                                                  \
    }
#define FP_R3(name, insn)                                                                          \
    static u64 name(u64 a, u64 b, u64 c, u64 *fl)                                                  \
    {                                                                                              \
        u64 r, f;                                                                                  \
        asm volatile("fmv.d.x ft0, %2\n\tfmv.d.x ft1, %3\n\tfmv.d.x ft3, %4\n\t"                   \
                     "csrw fflags, zero\n\t" insn "\n\tcsrr %1, fflags\n\tfmv.x.d %0, ft2"         \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b), "r"(c) : "ft0", "ft1", "ft2", "ft3");    \
        *fl = f;                                                                                   \
        return r;                                                                                  \
    }

/* One wrapper per static rounding mode, plus dyn. */
#define ALL_RM(MAC, name, insn)                                                                    \
    MAC(name##_rne, insn ", rne")                                                                  \
    MAC(name##_rtz, insn ", rtz")                                                                  \
    MAC(name##_rdn, insn ", rdn")                                                                  \
    MAC(name##_rup, insn ", rup")                                                                  \
    MAC(name##_rmm, insn ", rmm")                                                                  \
    MAC(name##_dyn, insn ", dyn")
#define RM_LIST(name) {name##_rne, name##_rtz, name##_rdn, name##_rup, name##_rmm, name##_dyn}

ALL_RM(FP_RR, fadd_s, "fadd.s ft2, ft0, ft1")
ALL_RM(FP_RR, fsub_s, "fsub.s ft2, ft0, ft1")
ALL_RM(FP_RR, fmul_s, "fmul.s ft2, ft0, ft1")
ALL_RM(FP_RR, fdiv_s, "fdiv.s ft2, ft0, ft1")
ALL_RM(FP_RR, fsqrt_s, "fsqrt.s ft2, ft0")
ALL_RM(FP_RR, fadd_d, "fadd.d ft2, ft0, ft1")
ALL_RM(FP_RR, fsub_d, "fsub.d ft2, ft0, ft1")
ALL_RM(FP_RR, fmul_d, "fmul.d ft2, ft0, ft1")
ALL_RM(FP_RR, fdiv_d, "fdiv.d ft2, ft0, ft1")
ALL_RM(FP_RR, fsqrt_d, "fsqrt.d ft2, ft0")
ALL_RM(FP_RR, fcvt_s_d, "fcvt.s.d ft2, ft0")
ALL_RM(FP_RI, fcvt_w_s, "fcvt.w.s t0, ft0")
ALL_RM(FP_RI, fcvt_wu_s, "fcvt.wu.s t0, ft0")
ALL_RM(FP_RI, fcvt_l_s, "fcvt.l.s t0, ft0")
ALL_RM(FP_RI, fcvt_lu_s, "fcvt.lu.s t0, ft0")
ALL_RM(FP_RI, fcvt_w_d, "fcvt.w.d t0, ft0")
ALL_RM(FP_RI, fcvt_wu_d, "fcvt.wu.d t0, ft0")
ALL_RM(FP_RI, fcvt_l_d, "fcvt.l.d t0, ft0")
ALL_RM(FP_RI, fcvt_lu_d, "fcvt.lu.d t0, ft0")
ALL_RM(FP_IR, fcvt_s_w, "fcvt.s.w ft2, t0")
ALL_RM(FP_IR, fcvt_s_wu, "fcvt.s.wu ft2, t0")
ALL_RM(FP_IR, fcvt_s_l, "fcvt.s.l ft2, t0")
ALL_RM(FP_IR, fcvt_s_lu, "fcvt.s.lu ft2, t0")
ALL_RM(FP_IR, fcvt_d_l, "fcvt.d.l ft2, t0")
ALL_RM(FP_IR, fcvt_d_lu, "fcvt.d.lu ft2, t0")
ALL_RM(FP_R3, fmadd_s, "fmadd.s ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fmsub_s, "fmsub.s ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fnmadd_s, "fnmadd.s ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fnmsub_s, "fnmsub.s ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fmadd_d, "fmadd.d ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fmsub_d, "fmsub.d ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fnmadd_d, "fnmadd.d ft2, ft0, ft1, ft3")
ALL_RM(FP_R3, fnmsub_d, "fnmsub.d ft2, ft0, ft1, ft3")
/* exact operations: no rounding mode */
FP_RR(fcvt_d_s, "fcvt.d.s ft2, ft0")
FP_IR(fcvt_d_w, "fcvt.d.w ft2, t0")
FP_IR(fcvt_d_wu, "fcvt.d.wu ft2, t0")
FP_RR(fmin_s, "fmin.s ft2, ft0, ft1")
FP_RR(fmax_s, "fmax.s ft2, ft0, ft1")
FP_RR(fmin_d, "fmin.d ft2, ft0, ft1")
FP_RR(fmax_d, "fmax.d ft2, ft0, ft1")
FP_RR(fsgnj_s, "fsgnj.s ft2, ft0, ft1")
FP_RR(fsgnjn_s, "fsgnjn.s ft2, ft0, ft1")
FP_RR(fsgnjx_s, "fsgnjx.s ft2, ft0, ft1")
FP_RR(fsgnj_d, "fsgnj.d ft2, ft0, ft1")
FP_RR(fsgnjn_d, "fsgnjn.d ft2, ft0, ft1")
FP_RR(fsgnjx_d, "fsgnjx.d ft2, ft0, ft1")
FP_RI(feq_s, "feq.s t0, ft0, ft1")
FP_RI(flt_s, "flt.s t0, ft0, ft1")
FP_RI(fle_s, "fle.s t0, ft0, ft1")
FP_RI(feq_d, "feq.d t0, ft0, ft1")
FP_RI(flt_d, "flt.d t0, ft0, ft1")
FP_RI(fle_d, "fle.d t0, ft0, ft1")
FP_RI(fclass_s, "fclass.s t0, ft0")
FP_RI(fclass_d, "fclass.d t0, ft0")
FP_RI(fmv_x_w, "fmv.x.w t0, ft0")
FP_IR(fmv_w_x, "fmv.w.x ft2, t0")

static const char *RM_NAMES[] = {"rne", "rtz", "rdn", "rup", "rmm", "dyn"};

/* --- operands --------------------------------------------------------------- */
static const u64 SV[] = {
    BOX(0x00000000), BOX(0x80000000), BOX(0x3f800000), BOX(0xbf800000), BOX(0x40400000),
    BOX(0x3eaaaaab), BOX(0x00000001), BOX(0x807fffff), BOX(0x00800000), BOX(0x7f7fffff),
    BOX(0xff7fffff), BOX(0x7f800000), BOX(0xff800000), BOX(0x7fc00000), BOX(0x7f800001),
    BOX(0xffc12345), BOX(0x4f000000), BOX(0xcf000001), BOX(0x3f000000), BOX(0x40200000),
    BOX(0xc0200000), BOX(0x33800000), BOX(0x5f000000),
    0x000000003f800000UL, /* not NaN-boxed: reads as the canonical NaN */
};
static const u64 DV[] = {
    0x0000000000000000UL, 0x8000000000000000UL, 0x3ff0000000000000UL, 0xbff0000000000000UL,
    0x4008000000000000UL, 0x3fd5555555555555UL, 0x0000000000000001UL, 0x800fffffffffffffUL,
    0x0010000000000000UL, 0x7fefffffffffffffUL, 0xffefffffffffffffUL, 0x7ff0000000000000UL,
    0xfff0000000000000UL, 0x7ff8000000000000UL, 0x7ff0000000000001UL, 0xfff8000000012345UL,
    0x43e0000000000000UL, 0xc3e0000000000001UL, 0x41e0000000000000UL, 0x3fe0000000000000UL,
    0x4004000000000000UL, 0xc004000000000000UL, 0x3ca0000000000000UL, 0x7e37e43c8800759cUL,
    0x01a56e1fc2f8f359UL, 0x41efffffffe00000UL,
};
static const u64 IV[] = {
    0, 1, ~0UL, 0x1000001UL, 0x20000000000001UL, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0xffffffffUL, 0x80000000UL, 0x1ffffffffUL, 123456789UL, 0xfffffffff0000001UL,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* --- sweeps ----------------------------------------------------------------- */
static void sweep2(const char *name, const f2_t *fns, int nfns, const u64 *va, int na, const u64 *vb, int nb)
{
    for (int k = 0; k < nfns; k++) {
        digest_t d;
        digest_init(&d);
        for (int i = 0; i < na; i++) {
            for (int j = 0; j < nb; j++) {
                u64 fl, r = fns[k](va[i], vb ? vb[j] : 0, &fl);
                digest_add(&d, r);
                digest_add(&d, fl);
#ifdef VERBOSE
                pr("  %s.%d %016lx %016lx -> %016lx %lx\n", name, k, va[i], vb ? vb[j] : 0, r, fl);
#endif
            }
        }
        pr("%s%s%s: %016lx\n", name, nfns > 1 ? "." : "", nfns > 1 ? RM_NAMES[k] : "", d.h);
    }
}

static void sweep3(const char *name, const f3_t *fns, const u64 *v, int n)
{
    for (int k = 0; k < 5; k++) {
        digest_t d;
        digest_init(&d);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                for (int m = 0; m < n; m++) {
                    u64 fl, r = fns[k](v[i], v[j], v[m], &fl);
                    digest_add(&d, r);
                    digest_add(&d, fl);
#ifdef VERBOSE
                    pr("  %s.%d %016lx %016lx %016lx -> %016lx %lx\n", name, k, v[i], v[j], v[m], r, fl);
#endif
                }
        pr("%s.%s: %016lx\n", name, RM_NAMES[k], d.h);
    }
}

/* Two-operand sweeps use the same list for both operands. */
#define SWEEP_RM(name, fn, v) do { const f2_t l_[] = RM_LIST(fn); sweep2(name, l_, 5, v, N(v), v, N(v)); } while (0)
#define SWEEP_RM1(name, fn, v) do { const f2_t l_[] = RM_LIST(fn); sweep2(name, l_, 5, v, N(v), 0, 1); } while (0)
#define SWEEP(name, fn, v) do { const f2_t l_[] = {fn}; sweep2(name, l_, 1, v, N(v), v, N(v)); } while (0)
#define SWEEP1(name, fn, v) do { const f2_t l_[] = {fn}; sweep2(name, l_, 1, v, N(v), 0, 1); } while (0)

/* A subset for the three-operand sweeps (n^3 cases each). */
static const u64 SV3[] = {BOX(0x00000000), BOX(0x80000000), BOX(0x3f800000), BOX(0xbf800000), BOX(0x3eaaaaab),
                          BOX(0x00800000), BOX(0x7f7fffff), BOX(0x7f800000), BOX(0x7fc00000), BOX(0x7f800001),
                          BOX(0x33800000)};
static const u64 DV3[] = {0x0000000000000000UL, 0x8000000000000000UL, 0x3ff0000000000000UL, 0xbff0000000000000UL,
                          0x3fd5555555555555UL, 0x0010000000000000UL, 0x7fefffffffffffffUL, 0x7ff0000000000000UL,
                          0x7ff8000000000000UL, 0x7ff0000000000001UL, 0x3ca0000000000000UL};

static void sweeps(void)
{
    SWEEP_RM("fadd.s", fadd_s, SV);
    SWEEP_RM("fsub.s", fsub_s, SV);
    SWEEP_RM("fmul.s", fmul_s, SV);
    SWEEP_RM("fdiv.s", fdiv_s, SV);
    SWEEP_RM1("fsqrt.s", fsqrt_s, SV);
    SWEEP_RM("fadd.d", fadd_d, DV);
    SWEEP_RM("fsub.d", fsub_d, DV);
    SWEEP_RM("fmul.d", fmul_d, DV);
    SWEEP_RM("fdiv.d", fdiv_d, DV);
    SWEEP_RM1("fsqrt.d", fsqrt_d, DV);
    SWEEP_RM1("fcvt.s.d", fcvt_s_d, DV);
    SWEEP1("fcvt.d.s", fcvt_d_s, SV);
    SWEEP_RM1("fcvt.w.s", fcvt_w_s, SV);
    SWEEP_RM1("fcvt.wu.s", fcvt_wu_s, SV);
    SWEEP_RM1("fcvt.l.s", fcvt_l_s, SV);
    SWEEP_RM1("fcvt.lu.s", fcvt_lu_s, SV);
    SWEEP_RM1("fcvt.w.d", fcvt_w_d, DV);
    SWEEP_RM1("fcvt.wu.d", fcvt_wu_d, DV);
    SWEEP_RM1("fcvt.l.d", fcvt_l_d, DV);
    SWEEP_RM1("fcvt.lu.d", fcvt_lu_d, DV);
    SWEEP_RM1("fcvt.s.w", fcvt_s_w, IV);
    SWEEP_RM1("fcvt.s.wu", fcvt_s_wu, IV);
    SWEEP_RM1("fcvt.s.l", fcvt_s_l, IV);
    SWEEP_RM1("fcvt.s.lu", fcvt_s_lu, IV);
    SWEEP_RM1("fcvt.d.l", fcvt_d_l, IV);
    SWEEP_RM1("fcvt.d.lu", fcvt_d_lu, IV);
    SWEEP1("fcvt.d.w", fcvt_d_w, IV);
    SWEEP1("fcvt.d.wu", fcvt_d_wu, IV);
    SWEEP("fmin.s", fmin_s, SV);
    SWEEP("fmax.s", fmax_s, SV);
    SWEEP("fmin.d", fmin_d, DV);
    SWEEP("fmax.d", fmax_d, DV);
    SWEEP("fsgnj.s", fsgnj_s, SV);
    SWEEP("fsgnjn.s", fsgnjn_s, SV);
    SWEEP("fsgnjx.s", fsgnjx_s, SV);
    SWEEP("fsgnj.d", fsgnj_d, DV);
    SWEEP("fsgnjn.d", fsgnjn_d, DV);
    SWEEP("fsgnjx.d", fsgnjx_d, DV);
    SWEEP("feq.s", feq_s, SV);
    SWEEP("flt.s", flt_s, SV);
    SWEEP("fle.s", fle_s, SV);
    SWEEP("feq.d", feq_d, DV);
    SWEEP("flt.d", flt_d, DV);
    SWEEP("fle.d", fle_d, DV);
    SWEEP1("fclass.s", fclass_s, SV);
    SWEEP1("fclass.d", fclass_d, DV);
    SWEEP1("fmv.x.w", fmv_x_w, SV);
    SWEEP1("fmv.w.x", fmv_w_x, IV);
    { const f3_t l[] = RM_LIST(fmadd_s); sweep3("fmadd.s", l, SV3, N(SV3)); }
    { const f3_t l[] = RM_LIST(fmsub_s); sweep3("fmsub.s", l, SV3, N(SV3)); }
    { const f3_t l[] = RM_LIST(fnmadd_s); sweep3("fnmadd.s", l, SV3, N(SV3)); }
    { const f3_t l[] = RM_LIST(fnmsub_s); sweep3("fnmsub.s", l, SV3, N(SV3)); }
    { const f3_t l[] = RM_LIST(fmadd_d); sweep3("fmadd.d", l, DV3, N(DV3)); }
    { const f3_t l[] = RM_LIST(fmsub_d); sweep3("fmsub.d", l, DV3, N(DV3)); }
    { const f3_t l[] = RM_LIST(fnmadd_d); sweep3("fnmadd.d", l, DV3, N(DV3)); }
    { const f3_t l[] = RM_LIST(fnmsub_d); sweep3("fnmsub.d", l, DV3, N(DV3)); }
}

/* --- hand-checked cases --------------------------------------------------- */
static void check_op(const char *what, int line, u64 r, u64 fl, u64 want, u64 want_fl)
{
    if (r != want || fl != want_fl) {
        g_failures++;
        pr("FAIL %s (line %d): got %016lx flags %lx, expected %016lx flags %lx\n", what, line, r, fl, want,
           want_fl);
    }
}
#define T2(fn, a, b, want, want_fl) do { u64 fl_, r_ = fn(a, b, &fl_); check_op(#fn "(" #a ", " #b ")", __LINE__, r_, fl_, want, want_fl); } while (0)
#define T1(fn, a, want, want_fl) T2(fn, a, 0, want, want_fl)
#define T3(fn, a, b, c, want, want_fl) do { u64 fl_, r_ = fn(a, b, c, &fl_); check_op(#fn "(" #a ", " #b ", " #c ")", __LINE__, r_, fl_, want, want_fl); } while (0)

#define ONE_S BOX(0x3f800000)
#define ONE_D 0x3ff0000000000000UL
#define THREE_D 0x4008000000000000UL
#define SNAN_S BOX(0x7f800001)
#define SNAN_D 0x7ff0000000000001UL

static void rounding(void)
{
    /* 1 + 2^-24 is exactly halfway between 1 and 1 + 2^-23. */
    T2(fadd_s_rne, ONE_S, BOX(0x33800000), BOX(0x3f800000), NX);
    T2(fadd_s_rtz, ONE_S, BOX(0x33800000), BOX(0x3f800000), NX);
    T2(fadd_s_rdn, ONE_S, BOX(0x33800000), BOX(0x3f800000), NX);
    T2(fadd_s_rup, ONE_S, BOX(0x33800000), BOX(0x3f800001), NX);
    T2(fadd_s_rmm, ONE_S, BOX(0x33800000), BOX(0x3f800001), NX);
    /* 1/3 and -1/3 */
    T2(fdiv_d_rne, ONE_D, THREE_D, 0x3fd5555555555555UL, NX);
    T2(fdiv_d_rtz, ONE_D, THREE_D, 0x3fd5555555555555UL, NX);
    T2(fdiv_d_rdn, ONE_D, THREE_D, 0x3fd5555555555555UL, NX);
    T2(fdiv_d_rup, ONE_D, THREE_D, 0x3fd5555555555556UL, NX);
    T2(fdiv_d_rmm, ONE_D, THREE_D, 0x3fd5555555555555UL, NX);
    T2(fdiv_d_rdn, 0xbff0000000000000UL, THREE_D, 0xbfd5555555555556UL, NX);
    T2(fdiv_d_rup, 0xbff0000000000000UL, THREE_D, 0xbfd5555555555555UL, NX);
    T2(fdiv_d_rtz, 0xbff0000000000000UL, THREE_D, 0xbfd5555555555555UL, NX);
    /* exact results raise nothing */
    T2(fmul_d_rne, THREE_D, 0x4000000000000000UL, 0x4018000000000000UL, 0);
    T2(fsub_s_rne, ONE_S, ONE_S, BOX(0x00000000), 0);
    /* x - x is -0 only when rounding down */
    T2(fsub_s_rdn, ONE_S, ONE_S, BOX(0x80000000), 0);
    T2(fsub_d_rdn, ONE_D, ONE_D, 0x8000000000000000UL, 0);
    /* overflow: to infinity or the largest finite number per mode */
    T2(fmul_s_rne, BOX(0x7f7fffff), BOX(0x40000000), BOX(0x7f800000), OF | NX);
    T2(fmul_s_rtz, BOX(0x7f7fffff), BOX(0x40000000), BOX(0x7f7fffff), OF | NX);
    T2(fmul_s_rdn, BOX(0x7f7fffff), BOX(0x40000000), BOX(0x7f7fffff), OF | NX);
    T2(fmul_s_rdn, BOX(0xff7fffff), BOX(0x40000000), BOX(0xff800000), OF | NX);
    T2(fmul_d_rup, 0xffefffffffffffffUL, 0x4000000000000000UL, 0xffefffffffffffffUL, OF | NX);
    /* subnormal results: exact ones raise nothing, inexact tiny ones UF|NX */
    T2(fmul_s_rne, BOX(0x00800000), BOX(0x3f000000), BOX(0x00400000), 0);
    T2(fmul_s_rne, BOX(0x00800001), BOX(0x3f000000), BOX(0x00400000), UF | NX);
    T2(fmul_s_rup, BOX(0x00800001), BOX(0x3f000000), BOX(0x00400001), UF | NX);
    T2(fmul_d_rne, 0x0000000000000001UL, 0x3fe0000000000000UL, 0x0000000000000000UL, UF | NX);
    T2(fmul_d_rup, 0x0000000000000001UL, 0x3fe0000000000000UL, 0x0000000000000001UL, UF | NX);
    T2(fadd_d_rne, 0x0000000000000001UL, 0x0000000000000001UL, 0x0000000000000002UL, 0);
    /* division by zero, invalid operations */
    T2(fdiv_s_rne, ONE_S, BOX(0x00000000), BOX(0x7f800000), DZ);
    T2(fdiv_s_rne, BOX(0xbf800000), BOX(0x00000000), BOX(0xff800000), DZ);
    T2(fdiv_d_rne, ONE_D, 0x8000000000000000UL, 0xfff0000000000000UL, DZ);
    T2(fdiv_d_rne, 0, 0, CNAN_D, NV);
    T2(fdiv_s_rne, BOX(0x7f800000), BOX(0x7f800000), CNAN_S, NV);
    T2(fdiv_d_rne, ONE_D, 0x7ff0000000000000UL, 0, 0);
    T2(fsub_d_rne, 0x7ff0000000000000UL, 0x7ff0000000000000UL, CNAN_D, NV);
    T2(fmul_d_rne, 0x7ff0000000000000UL, 0, CNAN_D, NV);
    T1(fsqrt_s_rne, BOX(0xbf800000), CNAN_S, NV);
    T1(fsqrt_d_rne, 0xbff0000000000000UL, CNAN_D, NV);
    T1(fsqrt_d_rne, 0x8000000000000000UL, 0x8000000000000000UL, 0);
    T1(fsqrt_d_rne, 0x4010000000000000UL, 0x4000000000000000UL, 0);
    T1(fsqrt_d_rne, 0x4000000000000000UL, 0x3ff6a09e667f3bcdUL, NX);
    T1(fsqrt_d_rup, 0x4000000000000000UL, 0x3ff6a09e667f3bcdUL, NX);
    T1(fsqrt_d_rdn, 0x4000000000000000UL, 0x3ff6a09e667f3bccUL, NX);
    T1(fsqrt_s_rne, BOX(0xff800000), CNAN_S, NV);
    T1(fsqrt_s_rne, BOX(0x7f800000), BOX(0x7f800000), 0);
    pr("rounding checks done\n");
}

static void nans(void)
{
    /* NaN results are canonical; only signalling NaN inputs raise NV. */
    T2(fadd_s_rne, SNAN_S, ONE_S, CNAN_S, NV);
    T2(fadd_s_rne, BOX(0x7fc00000), ONE_S, CNAN_S, 0);
    T2(fadd_s_rne, BOX(0xffc12345), ONE_S, CNAN_S, 0);
    T2(fmul_d_rne, SNAN_D, ONE_D, CNAN_D, NV);
    T2(fadd_d_rne, 0xfff8000000012345UL, ONE_D, CNAN_D, 0);
    /* NaN boxing: a single operand without the upper 32 ones is a NaN. */
    T2(fadd_s_rne, 0x000000003f800000UL, ONE_S, CNAN_S, 0);
    T2(fadd_s_rne, 0xfffffffe3f800000UL, ONE_S, CNAN_S, 0);
    T2(fsgnj_s, 0x000000003f800000UL, ONE_S, CNAN_S, 0);
    T1(fclass_s, 0x000000003f800000UL, 0x200, 0);
    T1(fcvt_d_s, 0x000000003f800000UL, CNAN_D, 0);
    T1(fmv_x_w, 0x00000000bf800000UL, 0xffffffffbf800000UL, 0); /* raw low bits, sign-extended */
    T1(fmv_w_x, 0x12345678UL, BOX(0x12345678), 0);
    T1(fmv_w_x, 0xaaaaaaaa80000000UL, BOX(0x80000000), 0);
    /* fmin/fmax: a NaN operand yields the other; -0 < +0; sNaN raises NV */
    T2(fmin_s, BOX(0x7fc00000), ONE_S, ONE_S, 0);
    T2(fmax_s, ONE_S, BOX(0x7fc00000), ONE_S, 0);
    T2(fmin_s, SNAN_S, ONE_S, ONE_S, NV);
    T2(fmax_d, SNAN_D, ONE_D, ONE_D, NV);
    T2(fmin_d, CNAN_D, CNAN_D, CNAN_D, 0);
    T2(fmax_d, SNAN_D, CNAN_D, CNAN_D, NV);
    T2(fmin_d, 0xfff8000000012345UL, 0xfff8000000012345UL, CNAN_D, 0);
    T2(fmin_s, BOX(0x80000000), BOX(0x00000000), BOX(0x80000000), 0);
    T2(fmin_s, BOX(0x00000000), BOX(0x80000000), BOX(0x80000000), 0);
    T2(fmax_s, BOX(0x80000000), BOX(0x00000000), BOX(0x00000000), 0);
    T2(fmax_d, 0, 0x8000000000000000UL, 0, 0);
    T2(fmin_d, 0, 0x8000000000000000UL, 0x8000000000000000UL, 0);
    /* sign injection is bit manipulation: NaN payloads survive, no flags */
    T2(fsgnjn_d, SNAN_D, SNAN_D, 0xfff0000000000001UL, 0);
    T2(fsgnjx_s, SNAN_S, BOX(0x80000000), BOX(0xff800001), 0);
    T2(fsgnj_d, ONE_D, 0x8000000000000000UL, 0xbff0000000000000UL, 0);
    /* comparisons: feq is quiet, flt/fle signal on any NaN */
    T2(feq_s, BOX(0x7fc00000), ONE_S, 0, 0);
    T2(feq_s, SNAN_S, ONE_S, 0, NV);
    T2(flt_s, BOX(0x7fc00000), ONE_S, 0, NV);
    T2(fle_d, ONE_D, CNAN_D, 0, NV);
    T2(feq_d, CNAN_D, CNAN_D, 0, 0);
    T2(feq_d, 0x8000000000000000UL, 0, 1, 0);
    T2(flt_d, 0x8000000000000000UL, 0, 0, 0);
    T2(fle_d, 0x8000000000000000UL, 0, 1, 0);
    T2(flt_s, BOX(0xff800000), BOX(0x7f800000), 1, 0);
    pr("nan checks done\n");
}

static void conversions(void)
{
    /* float -> int saturates; NaN acts as +infinity */
    T1(fcvt_w_s_rtz, BOX(0x7fc00000), 0x7fffffffUL, NV);
    T1(fcvt_w_s_rtz, BOX(0x7f800000), 0x7fffffffUL, NV);
    T1(fcvt_w_s_rtz, BOX(0xff800000), 0xffffffff80000000UL, NV);
    T1(fcvt_w_s_rtz, BOX(0x4f32d05e), 0x7fffffffUL, NV);             /* 3e9 */
    T1(fcvt_w_s_rtz, BOX(0xcf32d05e), 0xffffffff80000000UL, NV);     /* -3e9 */
    T1(fcvt_w_s_rtz, BOX(0xcf000000), 0xffffffff80000000UL, 0);      /* -2^31 exactly */
    T1(fcvt_wu_s_rtz, BOX(0xbf800000), 0, NV);                       /* -1 */
    T1(fcvt_wu_s_rtz, BOX(0xbf000000), 0, NX);                       /* -0.5 rounds to 0 */
    T1(fcvt_wu_s_rne, BOX(0x7fc00000), ~0UL, NV);
    T1(fcvt_wu_s_rne, BOX(0x7f800000), ~0UL, NV);
    T1(fcvt_wu_s_rtz, BOX(0x4f32d05e), 0xffffffffb2d05e00UL, 0);     /* sign-extended 32-bit result */
    T1(fcvt_l_d_rtz, CNAN_D, 0x7fffffffffffffffUL, NV);
    T1(fcvt_l_d_rtz, 0x43e0000000000000UL, 0x7fffffffffffffffUL, NV); /* 2^63 */
    T1(fcvt_l_d_rtz, 0xc3e0000000000000UL, 0x8000000000000000UL, 0); /* -2^63 */
    T1(fcvt_lu_d_rtz, 0xfff0000000000000UL, 0, NV);
    T1(fcvt_lu_d_rtz, 0x43f0000000000000UL, ~0UL, NV);               /* 2^64 */
    T1(fcvt_lu_s_rtz, BOX(0x5f000000), 0x8000000000000000UL, 0);     /* 2^63 */
    /* 2.5 and -2.5 in every mode */
    T1(fcvt_w_d_rne, 0x4004000000000000UL, 2, NX);
    T1(fcvt_w_d_rtz, 0x4004000000000000UL, 2, NX);
    T1(fcvt_w_d_rdn, 0x4004000000000000UL, 2, NX);
    T1(fcvt_w_d_rup, 0x4004000000000000UL, 3, NX);
    T1(fcvt_w_d_rmm, 0x4004000000000000UL, 3, NX);
    T1(fcvt_w_d_rne, 0xc004000000000000UL, -2UL, NX);
    T1(fcvt_w_d_rtz, 0xc004000000000000UL, -2UL, NX);
    T1(fcvt_w_d_rdn, 0xc004000000000000UL, -3UL, NX);
    T1(fcvt_w_d_rup, 0xc004000000000000UL, -2UL, NX);
    T1(fcvt_w_d_rmm, 0xc004000000000000UL, -3UL, NX);
    T1(fcvt_wu_d_rne, 0x41efffffffe00000UL, 0xffffffffffffffffUL, 0); /* 2^32-1 */
    /* int -> float rounds */
    T1(fcvt_s_w_rne, 0x1000001UL, BOX(0x4b800000), NX);
    T1(fcvt_s_w_rup, 0x1000001UL, BOX(0x4b800001), NX);
    T1(fcvt_s_w_rne, 0x1ffffffffUL, BOX(0xbf800000), 0);   /* only the low 32 bits count */
    T1(fcvt_s_wu_rne, 0xffffffffUL, BOX(0x4f800000), NX);
    T1(fcvt_s_wu_rtz, 0xffffffffUL, BOX(0x4f7fffff), NX);
    T1(fcvt_d_l_rne, 0x7fffffffffffffffUL, 0x43e0000000000000UL, NX);
    T1(fcvt_d_l_rtz, 0x7fffffffffffffffUL, 0x43dfffffffffffffUL, NX);
    T1(fcvt_d_lu_rne, ~0UL, 0x43f0000000000000UL, NX);
    T1(fcvt_d_w, 0x80000000UL, 0xc1e0000000000000UL, 0);
    T1(fcvt_d_wu, 0x80000000UL, 0x41e0000000000000UL, 0);
    /* double <-> single */
    T1(fcvt_s_d_rne, 0x3fd5555555555555UL, BOX(0x3eaaaaab), NX);
    T1(fcvt_s_d_rtz, 0x3fd5555555555555UL, BOX(0x3eaaaaaa), NX);
    T1(fcvt_s_d_rne, 0x7e37e43c8800759cUL, BOX(0x7f800000), OF | NX); /* 1e300 */
    T1(fcvt_s_d_rdn, 0x7e37e43c8800759cUL, BOX(0x7f7fffff), OF | NX);
    T1(fcvt_s_d_rne, 0x01a56e1fc2f8f359UL, BOX(0x00000000), UF | NX); /* 1e-300 */
    T1(fcvt_s_d_rne, SNAN_D, CNAN_S, NV);
    T1(fcvt_s_d_rne, 0xfff8000000012345UL, CNAN_S, 0);
    T1(fcvt_d_s, BOX(0x3fc00000), 0x3ff8000000000000UL, 0);
    T1(fcvt_d_s, SNAN_S, CNAN_D, NV);
    T1(fcvt_d_s, BOX(0x00000001), 0x36a0000000000000UL, 0); /* subnormal single is normal double */
    pr("conversion checks done\n");
}

static void classes(void)
{
    static const struct { u64 s, d, cls; } C[] = {
        {BOX(0xff800000), 0xfff0000000000000UL, 1 << 0}, /* -inf */
        {BOX(0xbf800000), 0xbff0000000000000UL, 1 << 1}, /* -normal */
        {BOX(0x807fffff), 0x800fffffffffffffUL, 1 << 2}, /* -subnormal */
        {BOX(0x80000000), 0x8000000000000000UL, 1 << 3}, /* -0 */
        {BOX(0x00000000), 0x0000000000000000UL, 1 << 4}, /* +0 */
        {BOX(0x00000001), 0x0000000000000001UL, 1 << 5}, /* +subnormal */
        {BOX(0x7f7fffff), 0x7fefffffffffffffUL, 1 << 6}, /* +normal */
        {BOX(0x7f800000), 0x7ff0000000000000UL, 1 << 7}, /* +inf */
        {BOX(0x7f800001), 0x7ff0000000000001UL, 1 << 8}, /* signalling NaN */
        {BOX(0x7fc00000), 0x7ff8000000000000UL, 1 << 9}, /* quiet NaN */
        {BOX(0xffbfffff), 0xfff7ffffffffffffUL, 1 << 8}, /* negative signalling NaN */
    };
    for (unsigned i = 0; i < N(C); i++) {
        T1(fclass_s, C[i].s, C[i].cls, 0);
        T1(fclass_d, C[i].d, C[i].cls, 0);
    }
    pr("fclass checks done\n");
}

static void fused(void)
{
    const u64 two = 0x4000000000000000UL, three = THREE_D, four = 0x4010000000000000UL;
    T3(fmadd_d_rne, two, three, four, 0x4024000000000000UL, 0);   /* 2*3+4 = 10 */
    T3(fmsub_d_rne, two, three, four, 0x4000000000000000UL, 0);   /* 2*3-4 = 2 */
    T3(fnmsub_d_rne, two, three, four, 0xc000000000000000UL, 0);  /* -(2*3)+4 = -2 */
    T3(fnmadd_d_rne, two, three, four, 0xc024000000000000UL, 0);  /* -(2*3)-4 = -10 */
    /* one rounding only: (1+2^-52)(1-2^-53) - 1 = 2^-53 - 2^-105 exactly
     * (a separate multiply would round the product to 1 and give 0) */
    T3(fmadd_d_rne, 0x3ff0000000000001UL, 0x3fefffffffffffffUL, 0xbff0000000000000UL, 0x3c9ffffffffffffeUL, 0);
    /* (1+2^-23)(1-2^-23) - 1 = -2^-46 */
    T3(fmadd_s_rne, BOX(0x3f800001), BOX(0x3f7ffffe), BOX(0xbf800000), BOX(0xa8800000), 0);
    /* inf * 0 is invalid even when the addend is a quiet NaN */
    T3(fmadd_d_rne, 0x7ff0000000000000UL, 0, CNAN_D, CNAN_D, NV);
    T3(fmadd_s_rne, BOX(0x7f800000), BOX(0x00000000), ONE_S, CNAN_S, NV);
    T3(fmadd_d_rne, ONE_D, ONE_D, SNAN_D, CNAN_D, NV);
    /* inf - inf through the addend */
    T3(fmsub_d_rne, 0x7ff0000000000000UL, ONE_D, 0x7ff0000000000000UL, CNAN_D, NV);
    /* exact zero sum: +0, or -0 when rounding down */
    T3(fmadd_d_rne, ONE_D, ONE_D, 0xbff0000000000000UL, 0, 0);
    T3(fmadd_d_rdn, ONE_D, ONE_D, 0xbff0000000000000UL, 0x8000000000000000UL, 0);
    pr("fused checks done\n");
}

/* frm + dyn must agree with the static modes; fflags accrue. */
static void dynamic_rm(void)
{
    const f2_t add[] = RM_LIST(fadd_s), div[] = RM_LIST(fdiv_d);
    for (int rm = 0; rm < 5; rm++) {
        csr_write(frm, rm);
        u64 f1, f2;
        for (unsigned i = 0; i < N(DV); i++) {
            u64 a = div[rm](ONE_D, DV[i], &f1), b = div[5](ONE_D, DV[i], &f2);
            if (a != b || f1 != f2) {
                g_failures++;
                pr("FAIL dyn fdiv.d frm=%d: %lx/%lx vs static %lx/%lx\n", rm, b, f2, a, f1);
            }
            a = add[rm](SV[i % N(SV)], BOX(0x33800000), &f1);
            b = add[5](SV[i % N(SV)], BOX(0x33800000), &f2);
            if (a != b || f1 != f2) {
                g_failures++;
                pr("FAIL dyn fadd.s frm=%d: %lx/%lx vs static %lx/%lx\n", rm, b, f2, a, f1);
            }
        }
    }
    csr_write(frm, 0);

    /* accrual: flags are sticky until written */
    u64 fl;
    asm volatile("fmv.d.x ft0, %1\n\tfmv.d.x ft1, %2\n\tfmv.d.x ft3, %3\n\tcsrw fflags, zero\n\t"
                 "fdiv.d ft2, ft0, ft1\n\t" /* 1/0: DZ */
                 "fdiv.d ft2, ft0, ft0\n\t" /* exact */
                 "fadd.d ft2, ft0, ft3\n\t" /* 1 + 1e-300: NX */
                 "fsqrt.d ft2, ft1\n\t"     /* sqrt(0): exact */
                 "csrr %0, fflags"
                 : "=r"(fl) : "r"(ONE_D), "r"(0UL), "r"(0x01a56e1fc2f8f359UL) : "ft0", "ft1", "ft2", "ft3");
    CHECK("fflags accrue", fl, DZ | NX);
    csr_write(fflags, 0);
    pr("dynamic rounding checks done\n");
}

/* Reserved rounding modes are illegal, statically or through frm. */
static void bad_rm(void)
{
    trap_reset();
    asm volatile(".word 0x0000d053"); /* fadd.s f0, f0, f0 with rm=5 */
    CHECK("static rm=5", g_mtrap.cause, CAUSE_ILLEGAL);
    trap_reset();
    asm volatile(".word 0x0000e053"); /* rm=6 */
    CHECK("static rm=6", g_mtrap.cause, CAUSE_ILLEGAL);
    csr_write(frm, 5);
    trap_reset();
    asm volatile("fadd.d ft0, ft0, ft0, dyn" ::: "ft0");
    CHECK("dyn with frm=5", g_mtrap.cause, CAUSE_ILLEGAL);
    trap_reset();
    asm volatile("fadd.d ft0, ft0, ft0, rtz" ::: "ft0");
    CHECK("static rm with frm=5", g_mtrap.cause, NO_TRAP);
    trap_reset();
    asm volatile("fsgnj.d ft0, ft0, ft0" ::: "ft0"); /* no rounding: fine */
    CHECK("fsgnj with frm=5", g_mtrap.cause, NO_TRAP);
    csr_write(frm, 7);
    trap_reset();
    asm volatile("fcvt.w.d t0, ft0, dyn" ::: "t0");
    CHECK("dyn with frm=7", g_mtrap.cause, CAUSE_ILLEGAL);
    csr_write(frm, 0);
    pr("reserved rounding mode checks done\n");
}

/* mstatus.FS: off makes every FP instruction and FP CSR illegal; writing
 * FP state makes it dirty. */
static void fs_field(void)
{
    csr_clear(mstatus, MSTATUS_FS);
#define FS_OFF(insn)                                                                               \
    do {                                                                                           \
        trap_reset();                                                                              \
        asm volatile(insn ::: "t0", "ft0", "memory");                                              \
        if (g_mtrap.cause != CAUSE_ILLEGAL) {                                                      \
            g_failures++;                                                                          \
            pr("FAIL FS=off: %s gave cause %lx\n", insn, g_mtrap.cause);                           \
        }                                                                                          \
    } while (0)
    FS_OFF("fadd.s ft0, ft0, ft0");
    FS_OFF("fmv.x.d t0, ft0");
    FS_OFF("fmv.d.x ft0, zero");
    FS_OFF("fld ft0, 0(sp)");
    FS_OFF("fsd ft0, 0(sp)");
    FS_OFF("c.fldsp ft0, 0(sp)");
    FS_OFF("frcsr t0");
    FS_OFF("csrr t0, fflags");
    FS_OFF("csrwi frm, 1");
    FS_OFF("fmadd.d ft0, ft0, ft0, ft0");
    FS_OFF("fcvt.d.w ft0, zero");
    CHECK("FS still off", csr_read(mstatus) & MSTATUS_FS, 0);
    /* initial -> dirty on an FP register write */
    csr_set(mstatus, 1UL << 13);
    CHECK("FS initial", (csr_read(mstatus) >> 13) & 3, 1);
    asm volatile("fmv.d.x ft0, zero" ::: "ft0");
    CHECK("FS dirty after an FP write", (csr_read(mstatus) >> 13) & 3, 3);
    CHECK("SD with FS dirty", csr_read(mstatus) >> 63, 1);
    csr_clear(mstatus, MSTATUS_FS);
    csr_set(mstatus, 2UL << 13); /* clean */
    csr_write(fflags, 1);
    CHECK("FS dirty after an fflags write", (csr_read(mstatus) >> 13) & 3, 3);
    csr_write(fflags, 0);
    pr("mstatus.FS checks done\n");
}

/* loads and stores move raw bits; flw boxes */
static void loads_stores(void)
{
    static u64 mem[2] = {0x7ff0000000000001UL, 0x00000000ff800001UL};
    u64 r;
    asm volatile("fld ft0, 0(%1)\n\tfmv.x.d %0, ft0" : "=r"(r) : "r"(mem) : "ft0");
    CHECK("fld raw sNaN", r, 0x7ff0000000000001UL);
    asm volatile("flw ft0, 8(%1)\n\tfmv.x.d %0, ft0" : "=r"(r) : "r"(mem) : "ft0");
    CHECK("flw boxes", r, BOX(0xff800001));
    asm volatile("fmv.d.x ft0, %1\n\tfsw ft0, 8(%0)" ::"r"(mem), "r"(0x123456789abcdef0UL) : "ft0", "memory");
    CHECK("fsw stores the low word of an unboxed value", mem[1], 0x000000009abcdef0UL);
    asm volatile("fmv.d.x ft0, %1\n\tfsd ft0, 0(%0)" ::"r"(mem), "r"(0xfff0000000000001UL) : "ft0", "memory");
    CHECK("fsd raw", mem[0], 0xfff0000000000001UL);
    CHECK("loads/stores raise no flags", csr_read(fflags), 0);
    pr("fp load/store checks done\n");
}

int main(void)
{
    rounding();
    nans();
    conversions();
    classes();
    fused();
    dynamic_rm();
    bad_rm();
    fs_field();
    loads_stores();
    sweeps();
    finish();
}
