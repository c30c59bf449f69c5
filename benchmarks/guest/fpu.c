/* Floating point: an n-body simulation step (double add/mul/div/sqrt) and a
 * single-precision dot-product loop; the checksum is of the bit patterns. */
#include "bench.h"

#define BODIES 32

struct body {
    double x, y, z, vx, vy, vz, m;
};

static struct body b[BODIES];
static float va[1024], vb[1024];

static double my_sqrt(double v)
{
    double r;
    __asm__("fsqrt.d %0, %1" : "=f"(r) : "f"(v));
    return r;
}

static void step(double dt)
{
    for (int i = 0; i < BODIES; i++) {
        double ax = 0, ay = 0, az = 0;
        for (int j = 0; j < BODIES; j++) {
            if (j == i)
                continue;
            double dx = b[j].x - b[i].x, dy = b[j].y - b[i].y, dz = b[j].z - b[i].z;
            double d2 = dx * dx + dy * dy + dz * dz + 0.01;
            double inv = b[j].m / (d2 * my_sqrt(d2));
            ax += dx * inv;
            ay += dy * inv;
            az += dz * inv;
        }
        b[i].vx += ax * dt;
        b[i].vy += ay * dt;
        b[i].vz += az * dt;
    }
    for (int i = 0; i < BODIES; i++) {
        b[i].x += b[i].vx * dt;
        b[i].y += b[i].vy * dt;
        b[i].z += b[i].vz * dt;
    }
}

int main(void)
{
    u64 s = 0x2545f4914f6cdd1dUL;
    for (int i = 0; i < BODIES; i++) {
        s = s * 6364136223846793005UL + 1442695040888963407UL;
        b[i].x = (double)(s >> 40) / (1 << 24) - 0.5;
        b[i].y = (double)((s >> 16) & 0xffffff) / (1 << 24) - 0.5;
        b[i].z = (double)(s & 0xffff) / (1 << 16) - 0.5;
        b[i].vx = b[i].vy = b[i].vz = 0;
        b[i].m = 1.0 + (double)(i % 7);
    }
    for (int i = 0; i < 1024; i++) {
        va[i] = (float)i * 0.25f - 100.0f;
        vb[i] = 1.0f / (float)(i + 1);
    }
    float dot = 0;
    for (int t = 0; t < 1500 * SCALE; t++) {
        step(0.001);
        for (int i = 0; i < 1024; i++)
            dot += va[i] * vb[i];
        dot *= 0.5f;
    }
    u64 h = 0;
    for (int i = 0; i < BODIES; i++) {
        union { double d; u64 u; } c = {b[i].x + b[i].vy};
        h = h * 1000003UL ^ c.u;
    }
    union { float f; u32 u; } d = {dot};
    put_str("result ");
    put_hex(h ^ d.u);
    put_str("\n");
    return 0;
}
