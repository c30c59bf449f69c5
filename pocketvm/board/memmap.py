"""The physical memory map of pocketvm's RISC-V board.

It follows QEMU's `virt` machine so that the same firmware, kernel or
bare-metal program runs unchanged in both.
"""

TEST_BASE = 0x0010_0000  # sifive,test1 (poweroff / reboot)
TEST_SIZE = 0x1000
RTC_BASE = 0x0010_1000  # google,goldfish-rtc
RTC_SIZE = 0x1000
VMGENID_BASE = 0x0010_2000  # microsoft,vmgenid (a pocketvm addition; free on QEMU virt)
VMGENID_SIZE = 0x1000
CLINT_BASE = 0x0200_0000
CLINT_SIZE = 0x1_0000
PLIC_BASE = 0x0C00_0000
PLIC_SIZE = 0x60_0000
UART_BASE = 0x1000_0000
UART_SIZE = 0x100
VIRTIO_BASE = 0x1000_1000
VIRTIO_STRIDE = 0x1000
VIRTIO_SLOTS = 8
RAM_BASE = 0x8000_0000

# PLIC interrupt sources
IRQ_VIRTIO_FIRST = 1  # slot i uses source 1 + i
IRQ_UART = 10
IRQ_RTC = 11
IRQ_VMGENID = 12
PLIC_NUM_SOURCES = 96

CLINT_MSIP = 0x0000  # + 4 * hart
CLINT_MTIMECMP = 0x4000  # + 8 * hart
CLINT_MTIME = 0xBFF8

TIMEBASE_FREQUENCY = 10_000_000  # mtime ticks per second, as on QEMU virt
