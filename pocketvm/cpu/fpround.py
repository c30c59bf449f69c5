"""IEEE 754 binary32/binary64 encoding, decoding and correct rounding.

Every arithmetic result in the FPU is first computed *exactly* as an integer
significand times a power of two, where bits that do not fit are folded into
the lowest bit ("jamming", the sticky bit).  `round_pack` then rounds that
value once, in any RISC-V rounding mode, and derives all five flags from the
integer remainder.  No host floating-point operation is involved, so the
result does not depend on the host FPU's rounding mode and is identical under
numba and under NUMBA_DISABLE_JIT=1.

Conventions: a format is selected by `dbl` (1 = binary64, 0 = binary32).
Single-precision encodings are handled as non-negative ints < 2**32; double
encodings as int64 bit patterns (negative when the sign bit is set).  All
intermediate values stay below 2**63 so nothing ever wraps.
"""

from __future__ import annotations

from pocketvm.cpu.jit import njit

INT64_MIN = -0x8000_0000_0000_0000
INT64_MAX = 0x7FFF_FFFF_FFFF_FFFF

# RISC-V rounding modes (rm field / frm)
RNE = 0
RTZ = 1
RDN = 2
RUP = 3
RMM = 4
DYN = 7

# fflags bits
NX = 1
UF = 2
OF = 4
DZ = 8
NV = 16

# operand classes returned by `unpack`
CLS_ZERO = 0
CLS_FINITE = 1  # nonzero finite: value = sig * 2**e
CLS_INF = 2
CLS_QNAN = 3
CLS_SNAN = 4

CANON_NAN_S = 0x7FC0_0000
CANON_NAN_D = 0x7FF8_0000_0000_0000
INF_S = 0x7F80_0000
INF_D = 0x7FF0_0000_0000_0000
MAX_S = 0x7F7F_FFFF
MAX_D = 0x7FEF_FFFF_FFFF_FFFF
SIGN_S = 0x8000_0000


@njit(cache=True, inline="always")
def prec(dbl):
    """Significand precision p (including the hidden bit)."""
    return 53 if dbl else 24


@njit(cache=True, inline="always")
def emin(dbl):
    """Exponent of the smallest normal number."""
    return -1022 if dbl else -126


@njit(cache=True, inline="always")
def sign_bit(dbl):
    return INT64_MIN if dbl else SIGN_S


@njit(cache=True, inline="always")
def canon_nan(dbl):
    return CANON_NAN_D if dbl else CANON_NAN_S


@njit(cache=True, inline="always")
def inf_bits(sign, dbl):
    if dbl:
        return (INF_D | INT64_MIN) if sign else INF_D
    return (INF_S | SIGN_S) if sign else INF_S


@njit(cache=True, inline="always")
def zero_bits(sign, dbl):
    if sign:
        return INT64_MIN if dbl else SIGN_S
    return 0


@njit(cache=True)
def bitlen(x):
    """Number of significant bits of x >= 0 (0 for x == 0)."""
    n = 0
    if x >= 0x1_0000_0000:
        x >>= 32
        n += 32
    if x >= 0x1_0000:
        x >>= 16
        n += 16
    if x >= 0x100:
        x >>= 8
        n += 8
    if x >= 0x10:
        x >>= 4
        n += 4
    if x >= 0x4:
        x >>= 2
        n += 2
    if x >= 0x2:
        x >>= 1
        n += 1
    return n + x


@njit(cache=True, inline="always")
def shift_right_jam(x, n):
    """x >> n for x >= 0, with any bit shifted out ORed into bit 0."""
    if n <= 0:
        return x
    if n >= 63:
        return 1 if x != 0 else 0
    lost = x & ((1 << n) - 1)
    return (x >> n) | (1 if lost != 0 else 0)


@njit(cache=True)
def unpack(bits, dbl):
    """Decode an encoding into (class, sign, e, sig); finite: value = sig*2**e."""
    if dbl:
        sign = (bits >> 63) & 1
        expf = (bits >> 52) & 0x7FF
        man = bits & 0xF_FFFF_FFFF_FFFF
        if expf == 0x7FF:
            if man == 0:
                return CLS_INF, sign, 0, 0
            if man & 0x8_0000_0000_0000:
                return CLS_QNAN, sign, 0, man
            return CLS_SNAN, sign, 0, man
        if expf == 0:
            if man == 0:
                return CLS_ZERO, sign, 0, 0
            return CLS_FINITE, sign, -1074, man
        return CLS_FINITE, sign, expf - 1075, man | 0x10_0000_0000_0000
    sign = (bits >> 31) & 1
    expf = (bits >> 23) & 0xFF
    man = bits & 0x7F_FFFF
    if expf == 0xFF:
        if man == 0:
            return CLS_INF, sign, 0, 0
        if man & 0x40_0000:
            return CLS_QNAN, sign, 0, man
        return CLS_SNAN, sign, 0, man
    if expf == 0:
        if man == 0:
            return CLS_ZERO, sign, 0, 0
        return CLS_FINITE, sign, -149, man
    return CLS_FINITE, sign, expf - 150, man | 0x80_0000


@njit(cache=True, inline="always")
def round_increment(rm, sign, lsb, rest, half):
    """1 if a value truncated to `lsb` with remainder `rest` (out of 2*half) rounds up in magnitude."""
    if rest == 0:
        return 0
    if rm == RNE:
        if rest > half or (rest == half and lsb != 0):
            return 1
        return 0
    if rm == RMM:
        return 1 if rest >= half else 0
    if rm == RDN:
        return sign
    if rm == RUP:
        return 1 - sign
    return 0  # RTZ


@njit(cache=True)
def overflow_result(sign, dbl, rm):
    """Result of an overflowing operation: infinity or the largest finite number."""
    to_inf = rm == RNE or rm == RMM or (rm == RDN and sign) or (rm == RUP and not sign)
    if to_inf:
        return inf_bits(sign, dbl)
    if dbl:
        return (MAX_D | INT64_MIN) if sign else MAX_D
    return (MAX_S | SIGN_S) if sign else MAX_S


@njit(cache=True)
def round_pack(sign, e, sig, dbl, rm):
    """Round sign * sig * 2**e (sig > 0, bit 0 may be a sticky bit) to the format.

    Returns (bits, fflags).  Tininess is detected after rounding, as RISC-V
    specifies: a result is tiny if rounding it to p bits with an unbounded
    exponent range gives a magnitude below the smallest normal number.
    """
    p = prec(dbl)
    em = emin(dbl)
    # Normalise to the leading bit at position 61: 62 bits leave room for the
    # p significant bits, a round bit and several sticky bits in every format.
    n = bitlen(sig)
    if n > 62:
        sig = shift_right_jam(sig, n - 62)
    else:
        sig = sig << (62 - n)
    big_e = e + n - 1  # exponent of the leading bit
    sh = 62 - p
    half = 1 << (sh - 1)
    mask = (1 << sh) - 1
    flags = 0
    if big_e >= em:
        keep = sig >> sh
        rest = sig & mask
        keep += round_increment(rm, sign, keep & 1, rest, half)
        if keep >> p:
            keep >>= 1
            big_e += 1
        if big_e > (1023 if dbl else 127):
            return overflow_result(sign, dbl, rm), OF | NX
        if rest != 0:
            flags = NX
        bits = ((big_e - em + 1) << (p - 1)) + (keep - (1 << (p - 1)))
    else:
        tiny = 1
        if big_e == em - 1:
            keep = sig >> sh
            if (keep + round_increment(rm, sign, keep & 1, sig & mask, half)) >> p:
                tiny = 0
        sig = shift_right_jam(sig, em - big_e)
        keep = sig >> sh
        rest = sig & mask
        # A carry out of the subnormal range yields the smallest normal
        # encoding naturally (exponent field 1, mantissa 0).
        bits = keep + round_increment(rm, sign, keep & 1, rest, half)
        if rest != 0:
            flags = NX | (UF if tiny else 0)
    if sign:
        bits |= sign_bit(dbl)
    return bits, flags


@njit(cache=True)
def pack_int_result(sign, mag, dbl, rm):
    """Exact-or-rounded conversion of the integer sign*mag (0 <= mag < 2**63)."""
    if mag == 0:
        return 0, 0
    return round_pack(sign, 0, mag, dbl, rm)
