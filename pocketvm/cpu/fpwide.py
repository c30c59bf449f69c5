"""Unsigned 124-bit integers as two int64 limbs of 62 bits: value = hi*2**62 + lo.

Exact double-precision products (106 bits) and fused multiply-add sums need
more than 64 bits.  Limbs of 62 bits keep every intermediate sum and partial
product below 2**63, so int64 arithmetic never wraps (numba and plain numpy
then agree bit for bit).
"""

from __future__ import annotations

from pocketvm.cpu.jit import njit

from pocketvm.cpu.fpround import bitlen

M62 = (1 << 62) - 1
M31 = (1 << 31) - 1


@njit(cache=True)
def mul_wide(a, b):
    """Exact product of 0 <= a, b < 2**53 as (hi, lo)."""
    a0 = a & M31
    a1 = a >> 31
    b0 = b & M31
    b1 = b >> 31
    mid = a1 * b0 + a0 * b1  # < 2**54
    lo = a0 * b0 + ((mid & M31) << 31)  # < 2**63
    hi = a1 * b1 + (mid >> 31) + (lo >> 62)
    return hi, lo & M62


@njit(cache=True)
def bitlen_wide(hi, lo):
    if hi != 0:
        return 62 + bitlen(hi)
    return bitlen(lo)


@njit(cache=True)
def shl_wide(hi, lo, n):
    """(hi, lo) << n; the caller guarantees the result fits in 124 bits."""
    if n <= 0:
        return hi, lo
    if n >= 62:
        return lo << (n - 62), 0
    hi = (hi << n) | (lo >> (62 - n))
    lo = (lo & ((1 << (62 - n)) - 1)) << n
    return hi, lo


@njit(cache=True)
def shr_jam_wide(hi, lo, n):
    """(hi, lo) >> n with every bit shifted out ORed into bit 0."""
    if n <= 0:
        return hi, lo
    if n >= 124:
        return 0, (1 if (hi | lo) != 0 else 0)
    if n >= 62:
        k = n - 62
        sticky = lo != 0 or (hi & ((1 << k) - 1)) != 0
        return 0, (hi >> k) | (1 if sticky else 0)
    sticky = (lo & ((1 << n) - 1)) != 0
    lo = (lo >> n) | ((hi & ((1 << n) - 1)) << (62 - n))
    return hi >> n, lo | (1 if sticky else 0)


@njit(cache=True)
def add_wide(ahi, alo, bhi, blo):
    lo = alo + blo
    return ahi + bhi + (lo >> 62), lo & M62


@njit(cache=True)
def sub_wide(ahi, alo, bhi, blo):
    """a - b for a >= b."""
    lo = alo - blo
    hi = ahi - bhi
    if lo < 0:
        lo += 1 << 62
        hi -= 1
    return hi, lo


@njit(cache=True)
def ge_wide(ahi, alo, bhi, blo):
    return ahi > bhi or (ahi == bhi and alo >= blo)


@njit(cache=True)
def narrow_jam(hi, lo):
    """Reduce (hi, lo) to (sig, shift): value ~= sig * 2**shift, sig < 2**62, sticky jammed."""
    n = bitlen_wide(hi, lo)
    if n <= 62:
        return lo, 0
    hi, lo = shr_jam_wide(hi, lo, n - 62)
    return lo, n - 62
