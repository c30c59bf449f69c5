/* Compiler-generated code: sorting, hashing (CRC-32, SHA-256 with their
 * published test vectors), recursion, a prime sieve, 128-bit arithmetic,
 * switch tables, function pointers, struct copies and double arithmetic,
 * with the results printed through the printf-like pr().
 */
#include "rt.h"

static u64 rng_state = 0x9e3779b97f4a7c15UL;
static u64 rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dUL;
}

/* --- sorting ----------------------------------------------------------- */
#define NSORT 1500
static i64 a1[NSORT], a2[NSORT], tmp[NSORT];

static void quicksort(i64 *v, long lo, long hi)
{
    while (lo < hi) {
        i64 pivot = v[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                i64 t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        /* recurse into the smaller half */
        if (j - lo < hi - i) {
            quicksort(v, lo, j);
            lo = i;
        } else {
            quicksort(v, i, hi);
            hi = j;
        }
    }
}

static void mergesort(i64 *v, long n)
{
    for (long width = 1; width < n; width *= 2) {
        for (long lo = 0; lo < n; lo += 2 * width) {
            long mid = lo + width < n ? lo + width : n;
            long hi = lo + 2 * width < n ? lo + 2 * width : n;
            long i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = v[i] <= v[j] ? v[i++] : v[j++];
            while (i < mid)
                tmp[k++] = v[i++];
            while (j < hi)
                tmp[k++] = v[j++];
        }
        memcpy(v, tmp, n * sizeof *v);
    }
}

static int cmp_str(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}

static void test_sort(void)
{
    i64 sum = 0;
    for (int i = 0; i < NSORT; i++) {
        a1[i] = a2[i] = (i64)rng() >> (i % 50);
        sum += a1[i];
    }
    quicksort(a1, 0, NSORT - 1);
    mergesort(a2, NSORT);
    int sorted = 1, same = 1;
    i64 sum2 = 0;
    digest_t d;
    digest_init(&d);
    for (int i = 0; i < NSORT; i++) {
        if (i && a1[i - 1] > a1[i])
            sorted = 0;
        if (a1[i] != a2[i])
            same = 0;
        sum2 += a1[i];
        digest_add(&d, (u64)a1[i]);
    }
    CHECK_TRUE("quicksort sorted", sorted);
    CHECK_TRUE("mergesort agrees", same);
    CHECK("sum preserved", sum2, sum);
    pr("sorted %d numbers: min %ld max %ld median %ld\n", NSORT, a1[0], a1[NSORT - 1], a1[NSORT / 2]);
    digest_print("sorted", &d);

    static const char *words[] = {"pocket", "virtual", "machine", "risc", "five", "hart", "trap",
                                  "page", "table", "qemu", "oracle", "digest", "zero", "alpha"};
    const char *w[14];
    for (int i = 0; i < 14; i++)
        w[i] = words[i];
    for (int i = 1; i < 14; i++) /* insertion sort */
        for (int j = i; j > 0 && cmp_str(w[j - 1], w[j]) > 0; j--) {
            const char *t = w[j];
            w[j] = w[j - 1];
            w[j - 1] = t;
        }
    pr("words:");
    for (int i = 0; i < 14; i++)
        pr(" %s", w[i]);
    pr("\n");
    CHECK_TRUE("first word", cmp_str(w[0], "alpha") == 0);
    CHECK_TRUE("last word", cmp_str(w[13], "zero") == 0);
}

/* --- hashing ------------------------------------------------------------ */
static u32 crc_table[256];

static u32 crc32(const u8 *p, unsigned long n)
{
    if (!crc_table[1])
        for (u32 i = 0; i < 256; i++) {
            u32 c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    u32 c = 0xffffffffu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static const u32 K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static u32 ror(u32 x, int n) { return (x >> n) | (x << (32 - n)); }

/* SHA-256 of a message shorter than 56 bytes (one block). */
static void sha256_short(const u8 *msg, unsigned long n, u32 out[8])
{
    u8 block[64];
    memset(block, 0, 64);
    memcpy(block, msg, n);
    block[n] = 0x80;
    u64 bits = n * 8;
    for (int i = 0; i < 8; i++)
        block[63 - i] = (u8)(bits >> (8 * i));
    u32 w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (u32)block[4 * i] << 24 | (u32)block[4 * i + 1] << 16 | (u32)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        u32 s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u32 a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        u32 t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        u32 t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    u32 v[8] = {a, b, c, d, e, f, g, hh};
    for (int i = 0; i < 8; i++)
        out[i] = h[i] + v[i];
}

static void test_hashes(void)
{
    u32 crc = crc32((const u8 *)"123456789", 9);
    pr("crc32(\"123456789\") = %08x\n", crc);
    CHECK("crc32 check value", crc, 0xcbf43926u);
    u32 h[8];
    sha256_short((const u8 *)"abc", 3, h);
    pr("sha256(\"abc\") =");
    for (int i = 0; i < 8; i++)
        pr(" %08x", h[i]);
    pr("\n");
    static const u32 want[8] = {0xba7816bf, 0x8f01cfea, 0x414140de, 0x5dae2223,
                                0xb00361a3, 0x96177a9c, 0xb410ff61, 0xf20015ad};
    for (int i = 0; i < 8; i++)
        CHECK("sha256 abc", h[i], want[i]);
    sha256_short((const u8 *)"", 0, h);
    CHECK("sha256 empty", h[0], 0xe3b0c442u);
    CHECK("sha256 empty", h[7], 0x7852b855u);
}

/* --- assorted -------------------------------------------------------------- */
static long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static int sieve_count(int n)
{
    static u8 composite[10001];
    int count = 0;
    for (int i = 2; i <= n; i++) {
        if (composite[i])
            continue;
        count++;
        for (int j = i * i; j <= n; j += i)
            composite[j] = 1;
    }
    return count;
}

typedef struct {
    i32 x, y;
    i64 w;
    char tag[12];
} point_t;

static point_t scale(point_t p, int k)
{
    p.x *= k;
    p.y -= k;
    p.w = p.w * k - 1;
    p.tag[0] = (char)('A' + k);
    return p;
}

static int classify(int v)
{
    switch (v) { /* dense: a jump table */
    case 0: return 11;
    case 1: return 23;
    case 2: return 5;
    case 3: return 71;
    case 4: return 2;
    case 5: return 19;
    case 6: return 43;
    case 7: return 3;
    default: return -1;
    }
}

static long add1(long v) { return v + 1; }
static long dbl(long v) { return v * 2; }
static long neg(long v) { return -v; }

static void test_misc(void)
{
    long f = fib(22);
    pr("fib(22) = %ld\n", f);
    CHECK("fib(22)", f, 17711);
    int primes = sieve_count(10000);
    pr("primes below 10000: %d\n", primes);
    CHECK("prime count", primes, 1229);

    unsigned __int128 big = (unsigned __int128)~0UL * ~0UL;
    pr("(2^64-1)^2 = %016lx%016lx\n", (u64)(big >> 64), (u64)big);
    CHECK("128-bit high", (u64)(big >> 64), 0xfffffffffffffffeUL);
    CHECK("128-bit low", (u64)big, 1);
    __int128 sbig = (__int128)(i64)0x8000000000000000UL * 3;
    CHECK("signed 128-bit high", (u64)(sbig >> 64), ~1UL); /* -3 * 2^63 */
    CHECK("signed 128-bit low", (u64)sbig, 0x8000000000000000UL);
    volatile u64 num = 1000000007UL * 998244353UL, den = 12345;
    pr("division by constant and variable: %lu %lu %lu\n", num / 10, num % 7, num / den);

    point_t p = {3, 4, 5, "pt"};
    point_t q = scale(p, 6);
    pr("struct: %d %d %ld %c%s\n", q.x, q.y, q.w, q.tag[0], q.tag + 1);
    CHECK("struct copy", q.x + q.y + q.w, 18 - 2 + 29);

    int acc = 0;
    for (int i = -1; i < 10; i++)
        acc = acc * 3 + classify(i);
    pr("switch: %d\n", acc);

    long (*ops[3])(long) = {add1, dbl, neg};
    long v = 5;
    for (int i = 0; i < 12; i++)
        v = ops[(u64)rng() % 3](v);
    pr("function pointers: %ld\n", v);

    /* doubles compiled from C */
    double s = 0;
    for (int k = 1; k <= 1000; k++)
        s += 1.0 / ((double)k * k);
    double r = 1.0;
    for (int i = 0; i < 6; i++)
        r = 0.5 * (r + 2.0 / r);
    union { double d; u64 u; } us = {.d = s}, ur = {.d = r};
    pr("sum 1/k^2 = %lx (x1e9: %ld), newton sqrt 2 = %lx\n", us.u, (long)(s * 1e9), ur.u);
    CHECK_TRUE("newton sqrt(2) within an ulp", ur.u - 0x3ff6a09e667f3bccUL <= 1);
    CHECK_TRUE("basel sum", s > 1.6439 && s < 1.6440);
    float fs = 0;
    for (int k = 1; k <= 100; k++)
        fs += (float)k / 7.0f;
    union { float f; u32 u; } uf = {.f = fs};
    pr("float sum = %08x (x1000: %d)\n", uf.u, (int)(fs * 1000));
}

int main(void)
{
    test_sort();
    test_hashes();
    test_misc();
    finish();
}
