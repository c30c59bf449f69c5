"""64-bit integer helpers for the core.

Registers are int64; these give the unsigned views RISC-V needs without
ever mixing numba's int64 and uint64 types (which promotes to float64).
Every function is also plain Python/numpy for NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

from pocketvm.cpu.jit import core_jit

INT64_MIN = -0x8000_0000_0000_0000
INT64_MAX = 0x7FFF_FFFF_FFFF_FFFF
MASK32 = 0xFFFF_FFFF


@core_jit(inline="always")
def sext32(v):
    return ((v & MASK32) ^ 0x8000_0000) - 0x8000_0000


@core_jit(inline="always")
def sext(v, bits):
    m = 1 << (bits - 1)
    return ((v & ((m << 1) - 1)) ^ m) - m


@core_jit(inline="always")
def srl(a, s):
    """Logical right shift, 0 <= s < 64."""
    if s == 0:
        return a
    return (a >> s) & ((1 << (64 - s)) - 1)


@core_jit(inline="always")
def ltu(a, b):
    return (a ^ INT64_MIN) < (b ^ INT64_MIN)


@core_jit
def mulhu(a, b):
    a_lo = a & MASK32
    a_hi = srl(a, 32)
    b_lo = b & MASK32
    b_hi = srl(b, 32)
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = srl(p0, 32) + (p1 & MASK32) + (p2 & MASK32)
    return p3 + srl(p1, 32) + srl(p2, 32) + srl(mid, 32)


@core_jit
def mulh(a, b):
    hi = mulhu(a, b)
    if a < 0:
        hi -= b
    if b < 0:
        hi -= a
    return hi


@core_jit
def mulhsu(a, b):
    hi = mulhu(a, b)
    if a < 0:
        hi -= b
    return hi


@core_jit
def divu(a, b):
    """Unsigned 64-bit division; b != 0."""
    if b < 0:  # divisor >= 2**63: quotient is 0 or 1
        return 0 if ltu(a, b) else 1
    if a >= 0:
        return a // b
    q = (srl(a, 1) // b) << 1
    r = a - q * b
    if not ltu(r, b):
        q += 1
    return q


@core_jit
def div_signed(a, b):
    if b == 0:
        return -1
    if a == INT64_MIN and b == -1:
        return INT64_MIN
    ua = -a if a < 0 else a
    ub = -b if b < 0 else b
    q = divu(ua, ub)
    return -q if (a < 0) != (b < 0) else q


@core_jit
def rem_signed(a, b):
    if b == 0:
        return a
    if a == INT64_MIN and b == -1:
        return 0
    return a - div_signed(a, b) * b


@core_jit
def div_unsigned(a, b):
    if b == 0:
        return -1
    return divu(a, b)


@core_jit
def rem_unsigned(a, b):
    if b == 0:
        return a
    return a - divu(a, b) * b
