"""Layout of a hart's architectural state.

All of a hart's state lives in one int64 numpy array (`st`) so that the
numba core can take it as a single argument and a snapshot is one dump.
Floating-point registers are stored as raw 64-bit patterns (NaN-boxed for
single precision); `st.view(np.float64)` and `st.view(np.float32)` give the
core zero-cost reinterpretations of the same memory.

State shared by all harts of a machine (the CLINT's timer and software
interrupt registers, the time base) lives in a second int64 array (`sh`).

Values are int64 everywhere, including addresses: unsigned comparisons and
shifts are spelled out in the core (see `pocketvm.cpu.alu`), so numba never
mixes signed and unsigned types (which would silently promote to float).
"""

from __future__ import annotations

import numpy as np

# --- per-hart array `st` -------------------------------------------------
X = 0  # x0..x31 at st[0..31]
F = 32  # f0..f31 raw bits at st[32..63]
PC = 64
PRIV = 65  # 0 = U, 1 = S, 3 = M
RESERVATION = 66  # LR/SC reserved physical address, -1 = none
EXIT_REASON = 67
EXIT_ADDR = 68  # physical address of an MMIO access
EXIT_SIZE = 69  # bytes (1, 2, 4, 8)
EXIT_VALUE = 70  # value to store (MMIO store)
EXIT_RD = 71  # destination register of an MMIO load; bit 8 set = sign-extend
EXT_IRQ = 72  # interrupt lines driven by devices: bit 9 SEIP, bit 11 MEIP (ORed into mip)
HART_ID = 73
WFI_FLAG = 74  # 1 while the hart is stopped in wfi
FETCH_PAGE = 75  # reserved: the core now keeps its fetch cache in locals
FETCH_BASE = 76  # reserved
TLB_GEN = 77  # bumped on every flush (debugging aid)
FATAL_INFO = 78
INSN = 79  # last instruction bits (for diagnostics)
TIME_LAST = 80  # last mtime value this hart observed (time never goes back)
EXIT_PC = 81  # pc of the instruction that caused an MMIO exit
EXIT_VADDR = 82  # its virtual address (for an access-fault tval)
TLB_BIG_LO = 83  # lowest virtual address mapped by a TLB entry made from a superpage (see mmu.flush_tlb_page)
TLB_BIG_HI = 84  # ...and the highest
NO_BIG_LO = 0x7FFF_FFFF_FFFF_FFFF  # the pair while no superpage entry is there: an empty range
NO_BIG_HI = -0x7FFF_FFFF_FFFF_FFFF - 1

TLB_SPAN = 1024  # per TLB entry (st[TLB_SPAN + slot index / 2]): log2 of the page its leaf PTE maps
CSR = 4096  # csr n at st[CSR + n]
TLB = 8192  # software TLB, see pocketvm.cpu.mmu
# Per access type, direct mapped. 1024, not 256: Linux's kernel and a user
# process together touch more pages than 256 entries hold, and every miss
# is a page walk (after a hand-back from translated code, for tier 1). At
# most 1024: the spans (TLB_SPAN) of all three tables must end below CSR.
TLB_ENTRIES = 1024
TLB_SIZE = 3 * 2 * TLB_ENTRIES
STATE_SIZE = TLB + TLB_SIZE
# Sizes of the state array of earlier pocketvm versions whose layout below
# TLB is this one's (only the TLB was smaller): their snapshots restore,
# with an empty TLB.
EARLIER_STATE_SIZES = (TLB + 3 * 2 * 256,)
assert TLB_SPAN + 3 * TLB_ENTRIES <= CSR and TLB_BIG_HI < TLB_SPAN

# --- machine-wide array `sh` ---------------------------------------------
SH_MTIME = 0  # current mtime (10 MHz ticks)
SH_TIME_BASE = 1  # mtime at the start of the current slice (set by the host)
SH_INSN_PER_TICK = 2  # instructions counted as one mtime tick inside a slice
SH_SLICE_INSNS = 3  # instructions executed in the current slice (all harts)
SH_NHARTS = 4
SH_DETERMINISTIC = 5  # 1: mtime derives from instruction count only
# Device registers the core serves itself, so that a guest writing its console
# a byte at a time (Linux's printk polls LSR and writes THR for each byte) does
# not leave run() twice per byte. The monitor arms them while the device's
# state makes them plain (0 = disarmed; no device sits at address 0) and
# drains the sink after every run().
SH_SINK_ADDR = 6  # physical address whose 1-byte stores are appended to the sink
SH_SINK_LEN = 7  # bytes in the sink
SH_CONST_ADDR = 8  # physical address whose 1-byte loads read SH_CONST_VALUE
SH_CONST_VALUE = 9
# Physical address of mtimecmp[0]: an aligned 8-byte store to a hart's
# mtimecmp is kept in SH_MTIMECMP by the core (the kernel sets the next
# timer event through SBI on every tick: ~2.4 k exits a boot otherwise).
SH_MTIMECMP_ADDR = 10
SH_SINK = 16  # the sink's bytes, 8 to a slot, little-endian, up to SH_MTIMECMP
SINK_BYTES = 8 * 48
SH_MTIMECMP = 64  # mtimecmp[hart] at sh[64 + hart]
SH_MSIP = 192  # msip[hart] at sh[192 + hart]
MAX_HARTS = 64
SHARED_SIZE = 256

# --- exit reasons returned by the core ------------------------------------
EXIT_NONE = 0
EXIT_SLICE = 1  # instruction budget used up
EXIT_MMIO_LOAD = 2
EXIT_MMIO_STORE = 3
EXIT_WFI = 4  # wfi with nothing pending
EXIT_BREAK = 5  # ebreak while a debugger asked for it (unused by default)
EXIT_FATAL = 6  # emulator cannot continue (double fault in M-mode, etc.)
EXIT_HALT = 7  # hart asked to stop by the host

EXIT_NAMES = {
    EXIT_NONE: "none",
    EXIT_SLICE: "slice",
    EXIT_MMIO_LOAD: "mmio-load",
    EXIT_MMIO_STORE: "mmio-store",
    EXIT_WFI: "wfi",
    EXIT_BREAK: "break",
    EXIT_FATAL: "fatal",
    EXIT_HALT: "halt",
}

# --- CSR numbers -------------------------------------------------------------
CSR_FFLAGS = 0x001
CSR_FRM = 0x002
CSR_FCSR = 0x003
CSR_CYCLE = 0xC00
CSR_TIME = 0xC01
CSR_INSTRET = 0xC02
CSR_SSTATUS = 0x100
CSR_SIE = 0x104
CSR_STVEC = 0x105
CSR_SCOUNTEREN = 0x106
CSR_SENVCFG = 0x10A
CSR_SSCRATCH = 0x140
CSR_SEPC = 0x141
CSR_SCAUSE = 0x142
CSR_STVAL = 0x143
CSR_SIP = 0x144
CSR_STIMECMP = 0x14D
CSR_SATP = 0x180
CSR_MVENDORID = 0xF11
CSR_MARCHID = 0xF12
CSR_MIMPID = 0xF13
CSR_MHARTID = 0xF14
CSR_MCONFIGPTR = 0xF15
CSR_MSTATUS = 0x300
CSR_MISA = 0x301
CSR_MEDELEG = 0x302
CSR_MIDELEG = 0x303
CSR_MIE = 0x304
CSR_MTVEC = 0x305
CSR_MCOUNTEREN = 0x306
CSR_MENVCFG = 0x30A
CSR_MCOUNTINHIBIT = 0x320
CSR_MSCRATCH = 0x340
CSR_MEPC = 0x341
CSR_MCAUSE = 0x342
CSR_MTVAL = 0x343
CSR_MIP = 0x344
CSR_PMPCFG0 = 0x3A0
CSR_PMPADDR0 = 0x3B0
CSR_MCYCLE = 0xB00
CSR_MINSTRET = 0xB02
CSR_TSELECT = 0x7A0
CSR_TDATA1 = 0x7A1

# fcsr is stored whole at st[CSR + CSR_FCSR]: bits 4:0 fflags, 7:5 frm.
FFLAG_NX = 1
FFLAG_UF = 2
FFLAG_OF = 4
FFLAG_DZ = 8
FFLAG_NV = 16

# mstatus bits
MSTATUS_SIE = 1 << 1
MSTATUS_MIE = 1 << 3
MSTATUS_SPIE = 1 << 5
MSTATUS_UBE = 1 << 6
MSTATUS_MPIE = 1 << 7
MSTATUS_SPP = 1 << 8
MSTATUS_MPP = 3 << 11
MSTATUS_FS = 3 << 13
MSTATUS_XS = 3 << 15
MSTATUS_MPRV = 1 << 17
MSTATUS_SUM = 1 << 18
MSTATUS_MXR = 1 << 19
MSTATUS_TVM = 1 << 20
MSTATUS_TW = 1 << 21
MSTATUS_TSR = 1 << 22
MSTATUS_UXL = 3 << 32
MSTATUS_SXL = 3 << 34
MSTATUS_SD = -(1 << 63)

# interrupt bits (mip / mie)
IRQ_SSI = 1
IRQ_MSI = 3
IRQ_STI = 5
IRQ_MTI = 7
IRQ_SEI = 9
IRQ_MEI = 11

# exception causes
CAUSE_MISALIGNED_FETCH = 0
CAUSE_FETCH_ACCESS = 1
CAUSE_ILLEGAL_INSN = 2
CAUSE_BREAKPOINT = 3
CAUSE_MISALIGNED_LOAD = 4
CAUSE_LOAD_ACCESS = 5
CAUSE_MISALIGNED_STORE = 6
CAUSE_STORE_ACCESS = 7
CAUSE_ECALL_U = 8
CAUSE_ECALL_S = 9
CAUSE_ECALL_M = 11
CAUSE_FETCH_PAGE_FAULT = 12
CAUSE_LOAD_PAGE_FAULT = 13
CAUSE_STORE_PAGE_FAULT = 15

RAM_BASE = 0x8000_0000


def new_hart_state(hart_id: int) -> np.ndarray:
    """A hart's state at reset: M-mode, pc 0, misa RV64IMAFDCSU."""
    st = np.zeros(STATE_SIZE, dtype=np.int64)
    st[PRIV] = 3
    st[RESERVATION] = -1
    st[FETCH_PAGE] = -1
    st[HART_ID] = hart_id
    st[CSR + CSR_MHARTID] = hart_id
    misa = (2 << 62) | sum(1 << (ord(c) - ord("A")) for c in "IMAFDCSU")
    st[CSR + CSR_MISA] = np.int64(np.uint64(misa).view(np.int64))
    # UXL = SXL = 2 (64-bit), read-only.
    st[CSR + CSR_MSTATUS] = (2 << 32) | (2 << 34)
    st[TLB : TLB + TLB_SIZE] = -1
    st[TLB_BIG_LO] = NO_BIG_LO
    st[TLB_BIG_HI] = NO_BIG_HI
    return st


def new_shared_state(nharts: int) -> np.ndarray:
    if not 1 <= nharts <= MAX_HARTS:
        raise ValueError(f"number of harts must be 1..{MAX_HARTS}, got {nharts}")
    sh = np.zeros(SHARED_SIZE, dtype=np.int64)
    sh[SH_NHARTS] = nharts
    sh[SH_INSN_PER_TICK] = 10
    sh[SH_MTIMECMP : SH_MTIMECMP + MAX_HARTS] = np.iinfo(np.int64).max
    return sh
