/* Tiny runtime of the benchmark programs: UART output, exit, traps.
 *
 * Each program prints one "result" line (a checksum) that must be the same
 * under QEMU and pocketvm; the instruction count is taken by pocketvm. */
#ifndef BENCH_H
#define BENCH_H

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef unsigned char u8;

/* Work size multiplier, set by benchmarks/cpu.py (-DSCALE=n). */
#ifndef SCALE
#define SCALE 1
#endif

void put_str(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
void bench_exit(int code) __attribute__((noreturn));

/* Called by the trap entry for every M-mode trap; a program that expects
 * traps sets this hook (returns 1 if handled). */
extern int (*bench_trap_hook)(u64 cause, u64 epc, u64 tval);

#define csr_read(name) ({ u64 v_; __asm__ volatile("csrr %0, " #name : "=r"(v_)); v_; })
#define csr_write(name, v) __asm__ volatile("csrw " #name ", %0" ::"r"((u64)(v)))

#endif
