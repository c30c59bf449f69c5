/* Sorting: quicksort (insertion sort below 16 elements) of 32-bit keys,
 * then a merge of sorted halves; calls, branches, loads and stores. */
#include "bench.h"

#define N 32768
static u32 a[N], tmp[N];

static void insertion(u32 *v, long n)
{
    for (long i = 1; i < n; i++) {
        u32 k = v[i];
        long j = i - 1;
        while (j >= 0 && v[j] > k) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = k;
    }
}

static void quicksort(u32 *v, long n)
{
    while (n > 16) {
        u32 p = v[n / 2];
        long i = 0, j = n - 1;
        for (;;) {
            while (v[i] < p)
                i++;
            while (v[j] > p)
                j--;
            if (i >= j)
                break;
            u32 t = v[i];
            v[i] = v[j];
            v[j] = t;
            i++;
            j--;
        }
        /* recurse into the smaller part, loop on the larger */
        if (j + 1 < n - j - 1) {
            quicksort(v, j + 1);
            v += j + 1;
            n -= j + 1;
        } else {
            quicksort(v + j + 1, n - j - 1);
            n = j + 1;
        }
    }
    insertion(v, n);
}

static void merge(const u32 *x, long nx, const u32 *y, long ny, u32 *out)
{
    long i = 0, j = 0, k = 0;
    while (i < nx && j < ny)
        out[k++] = x[i] <= y[j] ? x[i++] : y[j++];
    while (i < nx)
        out[k++] = x[i++];
    while (j < ny)
        out[k++] = y[j++];
}

int main(void)
{
    u64 s = 88172645463325252UL, sum = 0;
    for (int round = 0; round < 25 * SCALE; round++) {
        for (long i = 0; i < N; i++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            a[i] = (u32)s;
        }
        quicksort(a, N / 2);
        quicksort(a + N / 2, N / 2);
        merge(a, N / 2, a + N / 2, N / 2, tmp);
        for (long i = 1; i < N; i++)
            if (tmp[i - 1] > tmp[i]) {
                put_str("not sorted\n");
                return 1;
            }
        for (long i = 0; i < N; i += 97)
            sum = sum * 31 + tmp[i];
    }
    put_str("result ");
    put_hex(sum);
    put_str("\n");
    return 0;
}
