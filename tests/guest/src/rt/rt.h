/* Shared runtime of the bare-metal guest programs.
 *
 * Every program prints a deterministic transcript over the UART (compared
 * byte for byte between QEMU and pocketvm) and checks the architecturally
 * defined results itself (FAIL lines; the exit code is non-zero on failure).
 */
#ifndef GUEST_RT_H
#define GUEST_RT_H

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;
typedef unsigned short u16;
typedef unsigned char u8;

#define UART_BASE 0x10000000UL
#define TEST_DEV 0x100000UL
#define CLINT_MSIP 0x2000000UL
#define CLINT_MTIMECMP 0x2004000UL
#define CLINT_MTIME 0x200bff8UL

/* mcause / scause values */
#define CAUSE_MISALIGNED_FETCH 0
#define CAUSE_FETCH_ACCESS 1
#define CAUSE_ILLEGAL 2
#define CAUSE_BREAKPOINT 3
#define CAUSE_MISALIGNED_LOAD 4
#define CAUSE_LOAD_ACCESS 5
#define CAUSE_MISALIGNED_STORE 6
#define CAUSE_STORE_ACCESS 7
#define CAUSE_ECALL_U 8
#define CAUSE_ECALL_S 9
#define CAUSE_ECALL_M 11
#define CAUSE_FETCH_PAGE 12
#define CAUSE_LOAD_PAGE 13
#define CAUSE_STORE_PAGE 15
#define CAUSE_INTR (1UL << 63)
#define NO_TRAP (~0UL)

#define MSTATUS_SIE (1UL << 1)
#define MSTATUS_MIE (1UL << 3)
#define MSTATUS_SPIE (1UL << 5)
#define MSTATUS_MPIE (1UL << 7)
#define MSTATUS_SPP (1UL << 8)
#define MSTATUS_MPP (3UL << 11)
#define MSTATUS_FS (3UL << 13)
#define MSTATUS_MPRV (1UL << 17)
#define MSTATUS_SUM (1UL << 18)
#define MSTATUS_MXR (1UL << 19)
#define MSTATUS_TVM (1UL << 20)
#define MSTATUS_TW (1UL << 21)
#define MSTATUS_TSR (1UL << 22)
#define MSTATUS_SD (1UL << 63)

#define PRV_U 0
#define PRV_S 1
#define PRV_M 3

#define STR_(x) #x
#define STR(x) STR_(x)
#define csr_read(csr) ({ u64 v_; asm volatile("csrr %0, " STR(csr) : "=r"(v_) :: "memory"); v_; })
#define csr_write(csr, v) asm volatile("csrw " STR(csr) ", %0" :: "r"((u64)(v)) : "memory")
#define csr_set(csr, v) asm volatile("csrs " STR(csr) ", %0" :: "r"((u64)(v)) : "memory")
#define csr_clear(csr, v) asm volatile("csrc " STR(csr) ", %0" :: "r"((u64)(v)) : "memory")
#define csr_swap(csr, v) ({ u64 v_; asm volatile("csrrw %0, " STR(csr) ", %1" : "=r"(v_) : "r"((u64)(v)) : "memory"); v_; })

static inline void mmio_w32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u32 mmio_r32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_w64(u64 a, u64 v) { *(volatile u64 *)a = v; }
static inline u64 mmio_r64(u64 a) { return *(volatile u64 *)a; }

/* --- output ------------------------------------------------------------ */
void putch(char c);
void puts_(const char *s);
/* printf subset: %c %s %d %u %x with l/ll, width and 0 flag. */
void pr(const char *fmt, ...);
void exit_(int code) __attribute__((noreturn));

/* --- self-checks and digests ------------------------------------------- */
extern int g_failures;
void check_eq_(const char *what, int line, u64 got, u64 expected);
#define CHECK(what, got, expected) check_eq_((what), __LINE__, (u64)(got), (u64)(expected))
#define CHECK_TRUE(what, cond) check_eq_((what), __LINE__, (u64)!!(cond), 1)
void fail_(const char *what, int line);
#define FAIL(what) fail_((what), __LINE__)
/* Prints PASS / FAIL and exits: 0 when no check failed, 1 otherwise. */
void finish(void) __attribute__((noreturn));

/* 64-bit FNV-1a style digest fed with whole words. */
typedef struct { u64 h; u64 n; } digest_t;
void digest_init(digest_t *d);
void digest_add(digest_t *d, u64 v);
/* Prints "name: <hash> (<n> values)". */
void digest_print(const char *name, const digest_t *d);

/* --- traps --------------------------------------------------------------- */
/* Register frame saved by the trap entry code; x[0] holds nothing. */
typedef struct frame {
    u64 x[32];
    u64 epc, cause, tval, status;
} frame_t;

/* The last trap taken by the M-mode (or S-mode) handler. */
typedef struct {
    u64 cause, epc, tval, status; /* status = mstatus / sstatus at handler entry */
    u64 count;                     /* traps since trap_reset() */
} trap_info_t;
extern volatile trap_info_t g_mtrap, g_strap;
/* Forget previous traps: cause reads NO_TRAP until the next one. */
void trap_reset(void);

/* A hook may take over a trap: return 1 when handled (frame updated). */
typedef int (*trap_hook_t)(frame_t *f);
extern trap_hook_t g_mtrap_hook, g_strap_hook;

/* Default handling of synchronous exceptions: record them and continue
 * after the faulting instruction (or at the return address for fetch
 * faults, which tests provoke only by calling a bad address).
 * Interrupts are recorded and their source is silenced. */
void trap_entry(void);
void strap_entry(void);

/* Run fn(arg) in U-mode (PRV_U) or S-mode (PRV_S) on the current stack and
 * return its result; the lower-mode code must not touch sp's frame above. */
u64 run_in_mode(int mode, u64 (*fn)(u64), u64 arg);
/* Installs stvec (S-mode trap entry) */
void install_strap(void);


/* Prints the register dump left by a randgen.py program (x1..x31, f0..f31,
 * fflags) and a digest of its scratch memory, then finishes. */
void rand_dump(const u64 *dump, const u8 *mem, u64 memlen) __attribute__((noreturn));

/* --- misc ------------------------------------------------------------------ */
void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
void *memmove(void *d, const void *s, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
unsigned long strlen(const char *s);
int main(void);

#endif
