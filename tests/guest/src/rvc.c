/* The C extension (RV64C): every compressed instruction, written with its
 * explicit c. mnemonic and compared with its 32-bit expansion (assembled
 * with .option norvc) over edge-case operands; immediates are chosen to
 * set each bit of their scattered encodings.  Also: a 32-bit instruction at
 * a 2-byte boundary and one straddling a page boundary.
 */
#include "rt.h"

static const u64 VALS[] = {
    0, 1, 0x7fffffffUL, 0x80000000UL, 0xffffffffUL, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0xffffffffffffffffUL, 0x123456789abcdef0UL, 0xfedcba9876543210UL,
};
#define NV (sizeof VALS / sizeof VALS[0])

static digest_t dg;

static void cmp(const char *what, u64 a, u64 b, u64 got, u64 want)
{
    digest_add(&dg, got);
    if (got != want) {
        g_failures++;
        pr("FAIL %s (a=%lx b=%lx): got %016lx, expansion gives %016lx\n", what, a, b, got, want);
    }
}

/* Run one instruction on a0 (and a1) */
#define RUN(insn, x, y)                                                                            \
    ({                                                                                             \
        u64 r_;                                                                                    \
        asm volatile("mv a0, %1\n\tmv a1, %2\n\t" insn "\n\tmv %0, a0"                             \
                     : "=r"(r_)                                                                    \
                     : "r"((u64)(x)), "r"((u64)(y))                                                \
                     : "a0", "a1");                                                                \
        r_;                                                                                        \
    })
#define RUN_FULL(insn, x, y) RUN(".option push\n\t.option norvc\n\t" insn "\n\t.option pop", x, y)

/* Compressed instruction `c` against its expansion `f`, all operand pairs. */
#define VS(c, f)                                                                                   \
    do {                                                                                           \
        for (unsigned i_ = 0; i_ < NV; i_++)                                                       \
            for (unsigned j_ = 0; j_ < NV; j_++)                                                   \
                cmp(c, VALS[i_], VALS[j_], RUN(c, VALS[i_], VALS[j_]),                             \
                    RUN_FULL(f, VALS[i_], VALS[j_]));                                              \
    } while (0)

static void test_alu(void)
{
    digest_init(&dg);
    VS("c.add a0, a1", "add a0, a0, a1");
    VS("c.mv a0, a1", "add a0, x0, a1");
    VS("c.sub a0, a1", "sub a0, a0, a1");
    VS("c.xor a0, a1", "xor a0, a0, a1");
    VS("c.or a0, a1", "or a0, a0, a1");
    VS("c.and a0, a1", "and a0, a0, a1");
    VS("c.subw a0, a1", "subw a0, a0, a1");
    VS("c.addw a0, a1", "addw a0, a0, a1");
    digest_print("c register ops", &dg);

    digest_init(&dg);
    VS("c.addi a0, 1", "addi a0, a0, 1");
    VS("c.addi a0, -1", "addi a0, a0, -1");
    VS("c.addi a0, 31", "addi a0, a0, 31");
    VS("c.addi a0, -32", "addi a0, a0, -32");
    VS("c.addi a0, 21", "addi a0, a0, 21");
    VS("c.addiw a0, 0", "addiw a0, a0, 0");
    VS("c.addiw a0, 1", "addiw a0, a0, 1");
    VS("c.addiw a0, -32", "addiw a0, a0, -32");
    VS("c.addiw a0, 31", "addiw a0, a0, 31");
    VS("c.andi a0, 0", "andi a0, a0, 0");
    VS("c.andi a0, -1", "andi a0, a0, -1");
    VS("c.andi a0, 31", "andi a0, a0, 31");
    VS("c.andi a0, -32", "andi a0, a0, -32");
    VS("c.andi a0, 10", "andi a0, a0, 10");
    VS("c.li a0, 0", "addi a0, x0, 0");
    VS("c.li a0, 31", "addi a0, x0, 31");
    VS("c.li a0, -32", "addi a0, x0, -32");
    VS("c.li a0, -11", "addi a0, x0, -11");
    VS("c.lui a0, 1", "lui a0, 1");
    VS("c.lui a0, 0x1f", "lui a0, 0x1f");
    VS("c.lui a0, 0x15", "lui a0, 0x15");
    VS("c.lui a0, 0xfffe0", "lui a0, 0xfffe0");
    VS("c.lui a0, 0xfffff", "lui a0, 0xfffff");
    digest_print("c immediate ops", &dg);

    digest_init(&dg);
    VS("c.slli a0, 1", "slli a0, a0, 1");
    VS("c.slli a0, 31", "slli a0, a0, 31");
    VS("c.slli a0, 32", "slli a0, a0, 32");
    VS("c.slli a0, 63", "slli a0, a0, 63");
    VS("c.slli a0, 42", "slli a0, a0, 42");
    VS("c.srli a0, 1", "srli a0, a0, 1");
    VS("c.srli a0, 31", "srli a0, a0, 31");
    VS("c.srli a0, 32", "srli a0, a0, 32");
    VS("c.srli a0, 63", "srli a0, a0, 63");
    VS("c.srli a0, 21", "srli a0, a0, 21");
    VS("c.srai a0, 1", "srai a0, a0, 1");
    VS("c.srai a0, 31", "srai a0, a0, 31");
    VS("c.srai a0, 32", "srai a0, a0, 32");
    VS("c.srai a0, 63", "srai a0, a0, 63");
    VS("c.srai a0, 44", "srai a0, a0, 44");
    digest_print("c shifts", &dg);

    /* Spot checks of exact values, independent of the expansions. */
    CHECK("c.lui a0, 0xfffe0", RUN("c.lui a0, 0xfffe0", 0, 0), 0xfffffffffffe0000UL);
    CHECK("c.addiw sign-extends", RUN("c.addiw a0, 1", 0x7fffffffUL, 0), 0xffffffff80000000UL);
    CHECK("c.srai a0, 63", RUN("c.srai a0, 63", 0x8000000000000000UL, 0), ~0UL);
    CHECK("c.subw", RUN("c.subw a0, a1", 0, 1), ~0UL);
    CHECK("c.nop changes nothing", RUN("c.nop", 77, 0), 77);
    /* Other registers of the x8..x15 window: s0, s1, a5. */
    u64 r;
    asm volatile("li s1, 5\n\tli a5, 9\n\tc.sub s1, a5\n\tmv %0, s1" : "=r"(r) : : "s1", "a5");
    CHECK("c.sub s1, a5", r, -4UL);
    asm volatile("mv t0, s0\n\tli s0, 0x70\n\tc.srli s0, 4\n\tmv %0, s0\n\tmv s0, t0" : "=r"(r) : : "t0");
    CHECK("c.srli s0", r, 7);
    /* Full register range of c.addi/c.li/c.mv/c.add/c.slli (rd = t6, x31). */
    asm volatile("c.li t6, 3\n\tc.addi t6, 4\n\tc.slli t6, 2\n\tc.mv t5, t6\n\tc.add t6, t5\n\tmv %0, t6"
                 : "=r"(r) : : "t5", "t6");
    CHECK("c ops on t5/t6", r, 56);
}

/* sp-relative ops run with sp temporarily pointing into a buffer. */
static u64 spbuf[128] __attribute__((aligned(16)));
static u64 out[128];

static void test_loads_stores(void)
{
    digest_init(&dg);
    for (int i = 0; i < 128; i++)
        spbuf[i] = 0x8081828384858687UL ^ ((u64)i * 0x0101010101010101UL) ^ ((u64)i << 29);
    u32 *w = (u32 *)spbuf;

    /* c.lw / c.ld: every offset the encoding allows. */
    memset(out, 0, sizeof out);
    asm volatile("mv a1, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,4,8,12,16,20,24,28,32,36,40,44,48,52,56,60,64,68,72,76,80,84,88,92,96,100,104,108,112,116,120,124\n\t"
                 "c.lw a0, \\off(a1)\n\t"
                 "sd a0, (\\off * 2)(a2)\n\t"
                 ".endr" :: "r"(spbuf), "r"(out) : "a0", "a1", "a2", "memory");
    for (int k = 0; k < 32; k++) {
        cmp("c.lw", k, 0, out[k], (u64)(i64)(i32)w[k]);
    }
    asm volatile("mv a1, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,8,16,24,32,40,48,56,64,72,80,88,96,104,112,120,128,136,144,152,160,168,176,184,192,200,208,216,224,232,240,248\n\t"
                 "c.ld a0, \\off(a1)\n\t"
                 "sd a0, \\off(a2)\n\t"
                 ".endr" :: "r"(spbuf), "r"(out) : "a0", "a1", "a2", "memory");
    for (int k = 0; k < 32; k++)
        cmp("c.ld", k, 0, out[k], spbuf[k]);

    /* c.sw / c.sd */
    memset(out, 0, sizeof out);
    asm volatile("mv a1, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,4,8,12,16,20,24,28,32,36,40,44,48,52,56,60,64,68,72,76,80,84,88,92,96,100,104,108,112,116,120,124\n\t"
                 "lwu a0, \\off(a1)\n\t"
                 "c.sw a0, \\off(a2)\n\t"
                 ".endr" :: "r"(spbuf), "r"(out) : "a0", "a1", "a2", "memory");
    for (int k = 0; k < 16; k++)
        cmp("c.sw", k, 0, out[k], spbuf[k]);
    memset(out, 0, sizeof out);
    asm volatile("mv a1, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,8,16,24,32,40,48,56,64,72,80,88,96,104,112,120,128,136,144,152,160,168,176,184,192,200,208,216,224,232,240,248\n\t"
                 "ld a0, \\off(a1)\n\t"
                 "c.sd a0, \\off(a2)\n\t"
                 ".endr" :: "r"(spbuf), "r"(out) : "a0", "a1", "a2", "memory");
    for (int k = 0; k < 32; k++)
        cmp("c.sd", k, 0, out[k], spbuf[k]);

    /* c.lwsp / c.ldsp / c.swsp / c.sdsp with sp = spbuf. */
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,4,8,12,16,20,32,64,128,252\n\t"
                 "c.lwsp a0, \\off(sp)\n\t"
                 "sd a0, (\\off * 2)(a2)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a0", "a2", "t6", "memory");
    static const int lwsp_offs[] = {0, 4, 8, 12, 16, 20, 32, 64, 128, 252};
    for (int k = 0; k < 10; k++)
        cmp("c.lwsp", lwsp_offs[k], 0, out[lwsp_offs[k] / 4], (u64)(i64)(i32)w[lwsp_offs[k] / 4]);
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,8,16,24,32,64,128,256,504\n\t"
                 "c.ldsp a0, \\off(sp)\n\t"
                 "sd a0, \\off(a2)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a0", "a2", "t6", "memory");
    static const int ldsp_offs[] = {0, 8, 16, 24, 32, 64, 128, 256, 504};
    for (int k = 0; k < 9; k++)
        cmp("c.ldsp", ldsp_offs[k], 0, out[ldsp_offs[k] / 8], spbuf[ldsp_offs[k] / 8]);
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %1\n\tmv a2, %0\n\t"
                 ".irp off, 0,4,8,12,16,20,32,64,128,252\n\t"
                 "lwu a0, \\off(a2)\n\t"
                 "c.swsp a0, \\off(sp)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a0", "a2", "t6", "memory");
    for (int k = 0; k < 10; k++) {
        u32 *o = (u32 *)out;
        cmp("c.swsp", lwsp_offs[k], 0, o[lwsp_offs[k] / 4], w[lwsp_offs[k] / 4]);
    }
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %1\n\tmv a2, %0\n\t"
                 ".irp off, 0,8,16,24,32,64,128,256,504\n\t"
                 "ld a0, \\off(a2)\n\t"
                 "c.sdsp a0, \\off(sp)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a0", "a2", "t6", "memory");
    for (int k = 0; k < 9; k++)
        cmp("c.sdsp", ldsp_offs[k], 0, out[ldsp_offs[k] / 8], spbuf[ldsp_offs[k] / 8]);

    /* c.fld / c.fsd / c.fldsp / c.fsdsp (bit patterns pass through). */
    memset(out, 0, sizeof out);
    asm volatile("mv a1, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,8,16,32,64,128,248\n\t"
                 "c.fld fa0, \\off(a1)\n\t"
                 "c.fsd fa0, \\off(a2)\n\t"
                 ".endr" :: "r"(spbuf), "r"(out) : "a1", "a2", "fa0", "memory");
    static const int fld_offs[] = {0, 8, 16, 32, 64, 128, 248};
    for (int k = 0; k < 7; k++)
        cmp("c.fld/c.fsd", fld_offs[k], 0, out[fld_offs[k] / 8], spbuf[fld_offs[k] / 8]);
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %0\n\tmv a2, %1\n\t"
                 ".irp off, 0,8,16,32,64,128,256,504\n\t"
                 "c.fldsp ft11, \\off(sp)\n\t"
                 "fsd ft11, \\off(a2)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a2", "t6", "ft11", "memory");
    static const int fldsp_offs[] = {0, 8, 16, 32, 64, 128, 256, 504};
    for (int k = 0; k < 8; k++)
        cmp("c.fldsp", fldsp_offs[k], 0, out[fldsp_offs[k] / 8], spbuf[fldsp_offs[k] / 8]);
    memset(out, 0, sizeof out);
    asm volatile("mv t6, sp\n\tmv sp, %1\n\tmv a2, %0\n\t"
                 ".irp off, 0,8,16,32,64,128,256,504\n\t"
                 "fld ft11, \\off(a2)\n\t"
                 "c.fsdsp ft11, \\off(sp)\n\t"
                 ".endr\n\t"
                 "mv sp, t6" :: "r"(spbuf), "r"(out) : "a2", "t6", "ft11", "memory");
    for (int k = 0; k < 8; k++)
        cmp("c.fsdsp", fldsp_offs[k], 0, out[fldsp_offs[k] / 8], spbuf[fldsp_offs[k] / 8]);
    digest_print("c loads/stores", &dg);
}

static void test_sp_adjust(void)
{
    digest_init(&dg);
    u64 r;
#define SP16(imm)                                                                                  \
    asm volatile("mv t6, sp\n\tli sp, 0x10000\n\tc.addi16sp sp, " #imm "\n\tmv %0, sp\n\tmv sp, t6"  \
                 : "=r"(r) : : "t6");                                                              \
    cmp("c.addi16sp " #imm, 0x10000, 0, r, 0x10000 + (imm))
    SP16(16);
    SP16(32);
    SP16(64);
    SP16(128);
    SP16(256);
    SP16(496);
    SP16(-16);
    SP16(-512);
    SP16(-336);
#define SPN(imm)                                                                                   \
    asm volatile("mv t6, sp\n\tli sp, 0x20000\n\tc.addi4spn a0, sp, " #imm "\n\tmv %0, a0\n\tmv sp, t6" \
                 : "=r"(r) : : "t6", "a0");                                                        \
    cmp("c.addi4spn " #imm, 0x20000, 0, r, 0x20000 + (imm))
    SPN(4);
    SPN(8);
    SPN(16);
    SPN(32);
    SPN(64);
    SPN(128);
    SPN(256);
    SPN(512);
    SPN(1020);
    SPN(600);
    digest_print("c sp adjust", &dg);
}

static void test_control(void)
{
    u64 r, link, expect;
    /* c.j over n c.addi: landing early would count the skipped adds. */
#define CJ(n)                                                                                      \
    asm volatile("li a0, 0\n\tc.j 1f\n\t.rept " #n "\n\tc.addi a0, 1\n\t.endr\n1:\tmv %0, a0"       \
                 : "=r"(r) : : "a0");                                                              \
    CHECK("c.j forward " #n, r, 0)
    CJ(0);
    CJ(1);
    CJ(2);
    CJ(7);
    CJ(16);
    CJ(64);
    CJ(255);
    CJ(600);
    CJ(1023);
    /* backward: a wrong landing runs into the li 999 */
#define CJB(n)                                                                                     \
    asm volatile("li a0, 0\n\tj 2f\n1:\tj 3f\n\t.rept " #n "\n\tc.addi a0, 1\n\t.endr\n\t"         \
                 "c.j 4f\n2:\tc.j 1b\n4:\tli a0, 999\n3:\tmv %0, a0"                               \
                 : "=r"(r) : : "a0");                                                              \
    CHECK("c.j backward " #n, r, 0)
    CJB(0);
    CJB(5);
    CJB(100);
    CJB(1000);
    /* c.beqz / c.bnez, taken and not, both directions */
#define CB(insn, val, n, taken)                                                                    \
    asm volatile("li a0, 0\n\tli a1, " #val "\n\t" insn " a1, 1f\n\t.rept " #n "\n\tc.addi a0, 1\n\t.endr\n1:\tmv %0, a0" \
                 : "=r"(r) : : "a0", "a1");                                                        \
    CHECK(insn " " #val " forward " #n, r, (taken) ? 0 : (n))
    CB("c.beqz", 0, 1, 1);
    CB("c.beqz", 0, 60, 1);
    CB("c.beqz", 0, 127, 1);
    CB("c.beqz", 5, 3, 0);
    CB("c.bnez", 5, 1, 1);
    CB("c.bnez", -1, 127, 1);
    CB("c.bnez", 0, 3, 0);
#define CBB(insn, val, n)                                                                          \
    asm volatile("li a0, 0\n\tli a1, " #val "\n\tj 2f\n1:\tj 3f\n\t.rept " #n "\n\tc.addi a0, 1\n\t.endr\n\t" \
                 "c.j 4f\n2:\t" insn " a1, 1b\n\tli a0, 500\n\tj 3f\n4:\tli a0, 999\n3:\tmv %0, a0" \
                 : "=r"(r) : : "a0", "a1");                                                        \
    CHECK(insn " " #val " backward " #n, r, 0)
    CBB("c.beqz", 0, 1);
    CBB("c.beqz", 0, 120);
    CBB("c.bnez", 3, 2);
    CBB("c.bnez", 3, 126);

    /* c.jr and c.jalr: link = pc + 2 */
    asm volatile("lla t0, 1f\n\tc.jr t0\n\tli %0, 1\n\tj 2f\n1:\tli %0, 2\n2:" : "=r"(r) : : "t0");
    CHECK("c.jr", r, 2);
    asm volatile("mv t6, ra\n\tlla t0, 2f\n\tc.jalr t0\n1:\tj 3f\n2:\tmv %0, ra\n\tlla %1, 1b\n\tjr ra\n3:\tmv ra, t6"
                 : "=&r"(link), "=&r"(expect) : : "t0", "t6", "ra");
    CHECK("c.jalr link", link, expect);

    /* A 32-bit instruction at a 2-byte boundary, then one that straddles
     * a page boundary (fetched from two pages). */
    asm volatile("li a0, 0\n\t.balign 4\n\tc.nop\n\taddi a0, a0, 5\n\tmv %0, a0" : "=r"(r) : : "a0");
    CHECK("32-bit insn at pc%4 == 2", r, 5);
    asm volatile("li a0, 0\n\t.balign 4096\n\t.rept 2047\n\tc.nop\n\t.endr\n"
                 "1:\taddi a0, a0, 0x123\n2:\n\tmv %0, a0\n\t"
                 "lla %1, 1b" : "=r"(r), "=r"(link) : : "a0");
    CHECK("insn straddling a page: result", r, 0x123);
    CHECK("insn straddling a page: at page end - 2", link & 0xfff, 0xffe);
    pr("c control flow done\n");
}

int main(void)
{
    test_alu();
    test_loads_stores();
    test_sp_adjust();
    test_control();
    finish();
}
