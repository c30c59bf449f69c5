/* RV64I outside plain arithmetic (see alu.c for that): lui/auipc, jal/jalr,
 * branches both ways, loads and stores of every width (sign/zero
 * extension, offsets, partial stores), misaligned accesses, fence.i after
 * modifying code.
 */
#include "rt.h"

static const u64 VALS[] = {
    0, 1, 2, 0x7fffffffffffffffUL, 0x8000000000000000UL, 0xffffffffffffffffUL, 0xfffffffffffffffeUL,
    0x80000000UL, 0xffffffff80000000UL, 0x123456789UL,
};
#define NV (sizeof VALS / sizeof VALS[0])

static void test_lui_auipc(void)
{
    u64 r;
    asm volatile("lui %0, 0x12345" : "=r"(r));
    CHECK("lui 0x12345", r, 0x12345000UL);
    asm volatile("lui %0, 0x80000" : "=r"(r));
    CHECK("lui sign-extends", r, 0xffffffff80000000UL);
    asm volatile("lui %0, 0xfffff" : "=r"(r));
    CHECK("lui 0xfffff", r, 0xfffffffffffff000UL);
    asm volatile("lui %0, 0x7ffff" : "=r"(r));
    CHECK("lui 0x7ffff", r, 0x7ffff000UL);

    u64 pc, here;
    asm volatile("1: auipc %0, 0\n\tlla %1, 1b" : "=r"(pc), "=r"(here));
    CHECK("auipc 0", pc, here);
    asm volatile("1: auipc %0, 1\n\tlla %1, 1b" : "=r"(pc), "=r"(here));
    CHECK("auipc 1", pc, here + 0x1000);
    asm volatile("1: auipc %0, 0x80000\n\tlla %1, 1b" : "=r"(pc), "=r"(here));
    CHECK("auipc sign-extends", pc, here - 0x80000000UL);
    asm volatile("1: auipc %0, 0xfffff\n\tlla %1, 1b" : "=r"(pc), "=r"(here));
    CHECK("auipc -1", pc, here - 0x1000);
    pr("lui/auipc done\n");
}

static void test_jumps(void)
{
    u64 link, expect, r;
    /* jal: link = address of the next instruction, forward and backward. */
    asm volatile(".option push\n\t.option norvc\n\t"
                 "jal %0, 2f\n"
                 "1:\tj 3f\n"
                 "2:\tlla %1, 1b\n\t"
                 "jal x0, 1b\n"
                 "3:\n\t.option pop"
                 : "=&r"(link), "=&r"(expect));
    CHECK("jal link", link, expect);

    /* jalr clears bit 0 of the target, and reads rs1 before writing rd. */
    asm volatile(".option push\n\t.option norvc\n\t"
                 "lla %0, 2f\n\t"
                 "addi %0, %0, 1\n\t"
                 "jalr %0, 0(%0)\n"
                 "1:\tli %1, 99\n\t"
                 "j 3f\n"
                 "2:\tlla %1, 1b\n"
                 "3:\n\t.option pop"
                 : "=&r"(link), "=&r"(expect));
    CHECK("jalr rd == rs1 link", link, expect);

    /* jalr with a negative offset and an odd sum. */
    asm volatile(".option push\n\t.option norvc\n\t"
                 "lla %0, 2f\n\t"
                 "addi %0, %0, 15\n\t"
                 "jalr %1, -14(%0)\n\t"   /* target = 2f + 1 -> 2f */
                 "li %2, 99\n\t"
                 "j 3f\n"
                 "2:\tli %2, 7\n"
                 "3:\n\t.option pop"
                 : "=&r"(expect), "=&r"(link), "=&r"(r));
    CHECK("jalr odd target", r, 7);

    /* jalr x0 (plain indirect jump) and writes of the link to x0. */
    asm volatile("lla t0, 1f\n\tjalr x0, 0(t0)\n\tli %0, 1\n\tj 2f\n1:\tli %0, 2\n2:" : "=r"(r) : : "t0");
    CHECK("jalr x0", r, 2);
    pr("jal/jalr done\n");
}

#define BR(insn, a, b)                                                                             \
    ({                                                                                             \
        u64 t_;                                                                                    \
        asm volatile(insn " %1, %2, 1f\n\tli %0, 0\n\tj 2f\n1:\tli %0, 1\n2:"                      \
                     : "=r"(t_)                                                                    \
                     : "r"(a), "r"(b));                                                            \
        t_;                                                                                        \
    })

static u64 slt(u64 a, u64 b) { u64 r; asm volatile("slt %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
static u64 sltu(u64 a, u64 b) { u64 r; asm volatile("sltu %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }

static void test_branches(void)
{
    digest_t d;
    digest_init(&d);
    for (unsigned i = 0; i < NV; i++) {
        for (unsigned j = 0; j < NV; j++) {
            u64 a = VALS[i], b = VALS[j];
            u64 eq = BR("beq", a, b), ne = BR("bne", a, b);
            u64 lt = BR("blt", a, b), ge = BR("bge", a, b);
            u64 ltu = BR("bltu", a, b), geu = BR("bgeu", a, b);
            /* expectations from slt/sltu (checked by alu.c) and xor */
            u64 same = (a ^ b) == 0;
            CHECK("beq", eq, same);
            CHECK("bne", ne, !same);
            CHECK("blt", lt, slt(a, b));
            CHECK("bge", ge, !slt(a, b));
            CHECK("bltu", ltu, sltu(a, b));
            CHECK("bgeu", geu, !sltu(a, b));
            digest_add(&d, eq | ne << 1 | lt << 2 | ge << 3 | ltu << 4 | geu << 5);
        }
    }
    digest_print("branches", &d);

    /* A backward branch loop. */
    u64 n = 0, k = 10;
    asm volatile("1:\taddi %0, %0, 3\n\taddi %1, %1, -1\n\tbnez %1, 1b" : "+r"(n), "+r"(k));
    CHECK("backward loop", n, 30);
}

static u8 mem[64] __attribute__((aligned(64)));

static void fill(void)
{
    for (int i = 0; i < 64; i++)
        mem[i] = (u8)(0x81 + i * 0x35);
}

static u64 le(int off, int n)
{
    u64 v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | mem[off + i];
    return v;
}

static u64 sext(u64 v, int bits)
{
    u64 m = 1UL << (bits - 1);
    return (v ^ m) - m;
}

#define LOAD(insn, addr, off)                                                                      \
    ({                                                                                             \
        u64 v_;                                                                                    \
        asm volatile(insn " %0, " #off "(%1)" : "=r"(v_) : "r"(addr) : "memory");                  \
        v_;                                                                                        \
    })

static void test_loads(void)
{
    fill();
    digest_t d;
    digest_init(&d);
    for (int off = 0; off < 32; off += 8) {
        u8 *p = mem + off;
        for (int k = 0; k < 8; k++) {
            u8 *q = p + k;
            CHECK("lb", LOAD("lb", q, 0), sext(le(off + k, 1), 8));
            CHECK("lbu", LOAD("lbu", q, 0), le(off + k, 1));
            digest_add(&d, LOAD("lb", q, 0));
            if (k % 2 == 0) {
                CHECK("lh", LOAD("lh", q, 0), sext(le(off + k, 2), 16));
                CHECK("lhu", LOAD("lhu", q, 0), le(off + k, 2));
                digest_add(&d, LOAD("lh", q, 0));
            }
            if (k % 4 == 0) {
                CHECK("lw", LOAD("lw", q, 0), sext(le(off + k, 4), 32));
                CHECK("lwu", LOAD("lwu", q, 0), le(off + k, 4));
                digest_add(&d, LOAD("lw", q, 0));
            }
        }
        CHECK("ld", LOAD("ld", p, 0), le(off, 8));
        digest_add(&d, LOAD("ld", p, 0));
    }
    /* Immediate offsets at both ends of the 12-bit range. */
    u8 *base = mem + 16;
    CHECK("ld -16", LOAD("ld", base, -16), le(0, 8));
    CHECK("lw +44", LOAD("lw", base, 44), sext(le(60, 4), 32));
    CHECK("lbu -2048", LOAD("lbu", (u64)base + 2048, -2048), le(16, 1));
    CHECK("lhu +2047", LOAD("lhu", (u64)base - 2047, 2047), le(16, 2));
    /* rd == rs1 */
    u64 r = (u64)mem;
    asm volatile("ld %0, 8(%0)" : "+r"(r) : : "memory");
    CHECK("ld rd == rs1", r, le(8, 8));
    /* A load into x0 has no architectural effect. */
    asm volatile("ld x0, 0(%1)\n\tmv %0, x0" : "=r"(r) : "r"(mem) : "memory");
    CHECK("load to x0", r, 0);
    digest_print("loads", &d);
}

static void test_stores(void)
{
    static const u64 v = 0xf1e2d3c4b5a69788UL;
    digest_t d;
    digest_init(&d);
    for (int w = 1; w <= 8; w *= 2) {
        for (int off = 8; off < 24; off += w) {
            fill();
            u8 before[64];
            memcpy(before, mem, 64);
            u8 *p = mem + off;
            switch (w) {
            case 1: asm volatile("sb %0, 0(%1)" :: "r"(v), "r"(p) : "memory"); break;
            case 2: asm volatile("sh %0, 0(%1)" :: "r"(v), "r"(p) : "memory"); break;
            case 4: asm volatile("sw %0, 0(%1)" :: "r"(v), "r"(p) : "memory"); break;
            case 8: asm volatile("sd %0, 0(%1)" :: "r"(v), "r"(p) : "memory"); break;
            }
            for (int i = 0; i < 64; i++) {
                u8 want = (i >= off && i < off + w) ? (u8)(v >> (8 * (i - off))) : before[i];
                if (mem[i] != want) {
                    pr("FAIL store width %d at %d: byte %d is %x, expected %x\n", w, off, i, mem[i], want);
                    g_failures++;
                }
            }
            digest_add(&d, le(off & ~7, 8));
        }
    }
    /* Negative store offset. */
    fill();
    asm volatile("sw %0, -4(%1)" :: "r"(v), "r"(mem + 12) : "memory");
    CHECK("sw -4", le(8, 4), v & 0xffffffffUL);
    digest_print("stores", &d);
}

/* Misaligned loads and stores: the ISA lets an implementation either
 * perform them or raise an address-misaligned (or access-fault) exception,
 * so the transcript only says whether the outcome was one of the allowed
 * ones (QEMU 7.2 performs them in M-mode). */
static int misaligned_ok;

static void misaligned_load(const char *insn, u64 got, int off, int n, int sign)
{
    u64 want = le(off, n);
    if (sign)
        want = sext(want, 8 * n);
    if (g_mtrap.cause == NO_TRAP) {
        if (got != want) {
            pr("FAIL misaligned %s at %d: got %lx expected %lx\n", insn, off, got, want);
            g_failures++;
            misaligned_ok = 0;
        }
    } else if (!((g_mtrap.cause == CAUSE_MISALIGNED_LOAD && g_mtrap.tval == (u64)(mem + off)) ||
                 g_mtrap.cause == CAUSE_LOAD_ACCESS)) {
        pr("FAIL misaligned %s at %d: cause %lx tval %lx\n", insn, off, g_mtrap.cause, g_mtrap.tval);
        g_failures++;
        misaligned_ok = 0;
    }
}

static void test_misaligned(void)
{
    misaligned_ok = 1;
    for (int off = 1; off < 8; off++) {
        u8 *p = mem + off;
        fill();
        trap_reset();
        u64 r = 0x5a5a;
        asm volatile("lh %0, 0(%1)" : "+r"(r) : "r"(p) : "memory");
        misaligned_load("lh", r, off, 2, 1);
        trap_reset();
        asm volatile("lhu %0, 0(%1)" : "+r"(r) : "r"(p) : "memory");
        misaligned_load("lhu", r, off, 2, 0);
        trap_reset();
        asm volatile("lw %0, 0(%1)" : "+r"(r) : "r"(p) : "memory");
        misaligned_load("lw", r, off, 4, 1);
        trap_reset();
        asm volatile("lwu %0, 0(%1)" : "+r"(r) : "r"(p) : "memory");
        misaligned_load("lwu", r, off, 4, 0);
        trap_reset();
        asm volatile("ld %0, 0(%1)" : "+r"(r) : "r"(p) : "memory");
        misaligned_load("ld", r, off, 8, 0);

        trap_reset();
        asm volatile("sd %0, 0(%1)" :: "r"(0x0102030405060708UL), "r"(p) : "memory");
        if (g_mtrap.cause == NO_TRAP) {
            CHECK("misaligned sd", le(off, 8), 0x0102030405060708UL);
        } else if (!((g_mtrap.cause == CAUSE_MISALIGNED_STORE && g_mtrap.tval == (u64)p) ||
                     g_mtrap.cause == CAUSE_STORE_ACCESS)) {
            pr("FAIL misaligned sd at %d: cause %lx tval %lx\n", off, g_mtrap.cause, g_mtrap.tval);
            g_failures++;
            misaligned_ok = 0;
        }
        trap_reset();
        asm volatile("sw %0, 0(%1)" :: "r"(0x0a0b0c0dUL), "r"(p) : "memory");
        if (g_mtrap.cause == NO_TRAP)
            CHECK("misaligned sw", le(off, 4), 0x0a0b0c0dUL);
        trap_reset();
        asm volatile("sh %0, 0(%1)" :: "r"(0xbeefUL), "r"(p) : "memory");
        if (g_mtrap.cause == NO_TRAP)
            CHECK("misaligned sh", le(off, 2), 0xbeefUL);
    }
    pr("misaligned loads/stores: %s\n", misaligned_ok ? "allowed outcome" : "WRONG");
}

/* Code written at run time and executed after fence.i. */
static u32 code_buf[4] __attribute__((aligned(16)));

static void test_fence_i(void)
{
    u64 (*fn)(void) = (u64 (*)(void))(u64)code_buf;
    for (u32 k = 1; k <= 3; k++) {
        code_buf[0] = 0x00000513 | (k << 20); /* addi a0, x0, k */
        code_buf[1] = 0x00008067;             /* jalr x0, 0(ra) */
        asm volatile("fence.i" ::: "memory");
        CHECK("fence.i sees new code", fn(), k);
    }
    asm volatile("fence\n\tfence rw, rw\n\tfence r, r\n\tfence.tso" ::: "memory");
    pr("fence.i done\n");
}

int main(void)
{
    test_lui_auipc();
    test_jumps();
    test_branches();
    test_loads();
    test_stores();
    test_misaligned();
    test_fence_i();
    finish();
}
