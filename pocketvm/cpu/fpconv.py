"""Conversions (float<->int, single<->double), compares, min/max and fclass.

Float-to-integer conversions round with the instruction's rounding mode and
then range-check the *rounded* value; out-of-range inputs, infinities and
NaNs saturate as the RISC-V table specifies and raise only NV.  Integer
results are returned as int64 (32-bit results already sign-extended).
"""

from __future__ import annotations

from pocketvm.cpu.jit import njit

from pocketvm.cpu.fpround import (
    CLS_INF,
    CLS_QNAN,
    CLS_SNAN,
    CLS_ZERO,
    INT64_MAX,
    INT64_MIN,
    NV,
    NX,
    RDN,
    RMM,
    RNE,
    RUP,
    bitlen,
    canon_nan,
    inf_bits,
    pack_int_result,
    round_pack,
    unpack,
    zero_bits,
)

# integer kinds of fcvt (the rs2 field of FCVT.int.fmt / FCVT.fmt.int)
KIND_W = 0
KIND_WU = 1
KIND_L = 2
KIND_LU = 3


@njit(cache=True, inline="always")
def sext32(v):
    return ((v & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000


@njit(cache=True)
def saturate(kind, negative):
    """Result of an invalid conversion (negative: -inf or too small; else NaN, +inf, too big)."""
    if kind == KIND_W:
        return -0x8000_0000 if negative else 0x7FFF_FFFF
    if kind == KIND_WU:
        return 0 if negative else -1  # 0xFFFFFFFF sign-extended
    if kind == KIND_L:
        return INT64_MIN if negative else INT64_MAX
    return 0 if negative else -1  # 2**64 - 1


@njit(cache=True)
def fp_to_int(a, dbl, kind, rm):
    """FCVT.{W,WU,L,LU}.{S,D}: returns (int64 result, fflags)."""
    cls, sign, e, sig = unpack(a, dbl)
    if cls >= CLS_QNAN:
        return saturate(kind, 0), NV
    if cls == CLS_INF:
        return saturate(kind, sign), NV
    if cls == CLS_ZERO:
        return 0, 0
    n = bitlen(sig)
    top = e + n - 1  # exponent of the leading bit
    if top >= 64:
        return saturate(kind, sign), NV
    if top == 63:
        # |a| in [2**63, 2**64): an integer already (p < 63).  Only LU of a
        # positive value, or L of exactly -2**63, is in range.
        low = (sig - (1 << (n - 1))) << e  # bits below 2**63
        if kind == KIND_LU and not sign:
            return INT64_MIN | low, 0
        if kind == KIND_L and sign and low == 0:
            return INT64_MIN, 0
        return saturate(kind, sign), NV
    inexact = 0
    if e >= 0:
        mag = sig << e
    else:
        s = -e
        if s >= 64:
            ip = 0
            rnd = 0
            rest = 1
        else:
            ip = sig >> s
            rnd = (sig >> (s - 1)) & 1
            rest = 1 if (sig & ((1 << (s - 1)) - 1)) != 0 else 0
        inexact = rnd | rest
        inc = 0
        if inexact:
            if rm == RNE:
                inc = rnd & (rest | (ip & 1))
            elif rm == RMM:
                inc = rnd
            elif rm == RDN:
                inc = sign
            elif rm == RUP:
                inc = 1 - sign
        mag = ip + inc
    if kind == KIND_W:
        ok = mag <= (0x8000_0000 if sign else 0x7FFF_FFFF)
    elif kind == KIND_WU:
        ok = mag == 0 if sign else mag <= 0xFFFF_FFFF
    elif kind == KIND_L:
        ok = True  # |a| < 2**63 here, so the magnitude always fits
    else:
        ok = mag == 0 if sign else True
    if not ok:
        return saturate(kind, sign), NV
    flags = NX if inexact else 0
    v = -mag if sign else mag
    if kind <= KIND_WU:
        v = sext32(v)
    return v, flags


@njit(cache=True)
def int_to_fp(x, kind, dbl, rm):
    """FCVT.{S,D}.{W,WU,L,LU}: x is the int64 register value."""
    if kind == KIND_W:
        v = sext32(x)
        if v < 0:
            return pack_int_result(1, -v, dbl, rm)
        return pack_int_result(0, v, dbl, rm)
    if kind == KIND_WU:
        return pack_int_result(0, x & 0xFFFF_FFFF, dbl, rm)
    if kind == KIND_L:
        if x == INT64_MIN:
            return round_pack(1, 63, 1, dbl, rm)
        if x < 0:
            return pack_int_result(1, -x, dbl, rm)
        return pack_int_result(0, x, dbl, rm)
    if x < 0:
        # Unsigned value >= 2**63: halve it, keeping the lost bit as sticky.
        return round_pack(0, 1, ((x >> 1) & INT64_MAX) | (x & 1), dbl, rm)
    return pack_int_result(0, x, dbl, rm)


@njit(cache=True)
def convert_fp(a, from_dbl, rm):
    """FCVT.S.D (from_dbl=1) or FCVT.D.S (from_dbl=0)."""
    to_dbl = 1 - from_dbl
    cls, sign, e, sig = unpack(a, from_dbl)
    if cls >= CLS_QNAN:
        return canon_nan(to_dbl), (NV if cls == CLS_SNAN else 0)
    if cls == CLS_INF:
        return inf_bits(sign, to_dbl), 0
    if cls == CLS_ZERO:
        return zero_bits(sign, to_dbl), 0
    return round_pack(sign, e, sig, to_dbl, rm)


@njit(cache=True, inline="always")
def order_key(bits, dbl):
    """Integer that orders non-NaN encodings numerically (-0 just below +0)."""
    if dbl:
        if bits < 0:
            return -(bits & INT64_MAX) - 1
        return bits
    if bits & 0x8000_0000:
        return -(bits & 0x7FFF_FFFF) - 1
    return bits


@njit(cache=True, inline="always")
def is_nan(bits, dbl):
    if dbl:
        return (bits & INT64_MAX) > 0x7FF0_0000_0000_0000
    return (bits & 0x7FFF_FFFF) > 0x7F80_0000


@njit(cache=True, inline="always")
def is_snan(bits, dbl):
    if dbl:
        return is_nan(bits, dbl) and (bits & 0x8_0000_0000_0000) == 0
    return is_nan(bits, dbl) and (bits & 0x40_0000) == 0


@njit(cache=True, inline="always")
def is_zero(bits, dbl):
    if dbl:
        return (bits & INT64_MAX) == 0
    return (bits & 0x7FFF_FFFF) == 0


@njit(cache=True)
def fp_minmax(a, b, dbl, want_max):
    """FMIN/FMAX: IEEE 754-2019 minimumNumber/maximumNumber, -0 < +0."""
    na = is_nan(a, dbl)
    nb = is_nan(b, dbl)
    flags = NV if (is_snan(a, dbl) or is_snan(b, dbl)) else 0
    if na and nb:
        return canon_nan(dbl), flags
    if na:
        return b, flags
    if nb:
        return a, flags
    ka = order_key(a, dbl)
    kb = order_key(b, dbl)
    if want_max:
        return (a if ka >= kb else b), flags
    return (a if ka <= kb else b), flags


@njit(cache=True)
def fp_compare(a, b, dbl, op):
    """op 2 = FEQ (quiet), 1 = FLT, 0 = FLE (signalling): returns (0/1, fflags)."""
    if is_nan(a, dbl) or is_nan(b, dbl):
        if op == 2:
            return 0, (NV if (is_snan(a, dbl) or is_snan(b, dbl)) else 0)
        return 0, NV
    if is_zero(a, dbl) and is_zero(b, dbl):
        return (0 if op == 1 else 1), 0
    ka = order_key(a, dbl)
    kb = order_key(b, dbl)
    if op == 2:
        r = ka == kb
    elif op == 1:
        r = ka < kb
    else:
        r = ka <= kb
    return (1 if r else 0), 0


@njit(cache=True)
def fp_class(a, dbl):
    cls, sign, e, sig = unpack(a, dbl)
    if cls == CLS_SNAN:
        return 1 << 8
    if cls == CLS_QNAN:
        return 1 << 9
    if cls == CLS_INF:
        return 1 if sign else 1 << 7
    if cls == CLS_ZERO:
        return 1 << 3 if sign else 1 << 4
    subnormal = sig < (1 << (52 if dbl else 23))
    if sign:
        return 1 << 2 if subnormal else 1 << 1
    return 1 << 5 if subnormal else 1 << 6
