/* Echoes console input from the UART receive interrupt (PLIC source 10, M
 * context) while the hart sleeps in wfi.  No timer is armed (crt0 leaves
 * mtimecmp at its maximum), so only the interrupt can wake the hart: a run
 * loop that sleeps until the next timer event instead would have nothing to
 * wake it.  'q' ends the program with exit code 0; anything unexpected ends
 * it with exit code 2.  Built with the tests/guest runtime.
 */
#include "rt.h"

#define PLIC 0x0c000000UL
#define PLIC_PRIORITY(src) (PLIC + 4 * (src))
#define PLIC_ENABLE_M (PLIC + 0x2000)
#define PLIC_THRESHOLD_M (PLIC + 0x200000)
#define PLIC_CLAIM_M (PLIC + 0x200004)
#define UART_IRQ 10
#define UART_IER (UART_BASE + 1)
#define UART_LSR (UART_BASE + 5)
#define IER_RDI 0x01
#define LSR_DR 0x01
#define MIP_MEIP (1UL << 11)

static int on_trap(frame_t *f)
{
    if (f->cause != (CAUSE_INTR | 11)) {
        pr("\nunexpected trap: mcause %lx mepc %lx\n", f->cause, f->epc);
        exit_(2);
    }
    u32 id = mmio_r32(PLIC_CLAIM_M);
    if (id != UART_IRQ) {
        pr("\nunexpected claim: %u\n", id);
        exit_(2);
    }
    int quit = 0;
    while (*(volatile u8 *)UART_LSR & LSR_DR) {
        char c = (char)*(volatile u8 *)UART_BASE;
        putch(c);
        quit |= c == 'q';
    }
    mmio_w32(PLIC_CLAIM_M, id);
    if (quit)
        exit_(0);
    return 1;
}

int main(void)
{
    g_mtrap_hook = on_trap;
    mmio_w32(PLIC_PRIORITY(UART_IRQ), 1);
    mmio_w32(PLIC_ENABLE_M, 1u << UART_IRQ);
    mmio_w32(PLIC_THRESHOLD_M, 0);
    *(volatile u8 *)UART_IER = IER_RDI;
    csr_write(mie, MIP_MEIP);
    pr("ready\n");
    csr_set(mstatus, MSTATUS_MIE);
    for (;;)
        asm volatile("wfi");
}
