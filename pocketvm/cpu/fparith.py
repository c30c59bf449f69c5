"""Correctly rounded add, multiply, divide, square root and fused multiply-add.

Each function takes encodings (see `fpround`), a format selector `dbl` and a
concrete rounding mode, and returns (result encoding, fflags).  Special
operands are resolved first; finite operands are combined exactly in integer
arithmetic (aligning with a sticky bit where bits fall off) and rounded once
by `round_pack`, so directed rounding and every flag come out exact.  NaN
results are always the canonical NaN.
"""

from __future__ import annotations

from pocketvm.cpu.jit import njit

from pocketvm.cpu.fpround import (
    CLS_INF,
    CLS_QNAN,
    CLS_SNAN,
    CLS_ZERO,
    DZ,
    NV,
    RDN,
    bitlen,
    canon_nan,
    inf_bits,
    round_pack,
    shift_right_jam,
    unpack,
    zero_bits,
)
from pocketvm.cpu.fpwide import (
    add_wide,
    bitlen_wide,
    ge_wide,
    mul_wide,
    narrow_jam,
    shl_wide,
    shr_jam_wide,
    sub_wide,
)


@njit(cache=True, inline="always")
def nan_flags2(ca, cb):
    return NV if (ca == CLS_SNAN or cb == CLS_SNAN) else 0


@njit(cache=True)
def fp_add(a, b, negate_b, dbl, rm):
    """a + b (or a - b when negate_b is 1)."""
    ca, sa, ea, ma = unpack(a, dbl)
    cb, sb, eb, mb = unpack(b, dbl)
    sb ^= negate_b
    if ca >= CLS_QNAN or cb >= CLS_QNAN:
        return canon_nan(dbl), nan_flags2(ca, cb)
    if ca == CLS_INF:
        if cb == CLS_INF and sa != sb:
            return canon_nan(dbl), NV
        return inf_bits(sa, dbl), 0
    if cb == CLS_INF:
        return inf_bits(sb, dbl), 0
    if cb == CLS_ZERO:
        if ca == CLS_ZERO:
            # Exact zero sum: +0 unless both are -0, or -0 when rounding down.
            if sa == sb:
                return zero_bits(sa, dbl), 0
            return zero_bits(1 if rm == RDN else 0, dbl), 0
        return round_pack(sa, ea, ma, dbl, rm)
    if ca == CLS_ZERO:
        return round_pack(sb, eb, mb, dbl, rm)
    # Both finite nonzero: put both leading bits at position 60 so the larger
    # operand has at least 7 zero low bits (the jammed smaller one cannot then
    # disturb rounding) and the sum cannot exceed 62 bits.
    la = bitlen(ma)
    lb = bitlen(mb)
    ma <<= 61 - la
    ea -= 61 - la
    mb <<= 61 - lb
    eb -= 61 - lb
    if ea < eb or (ea == eb and ma < mb):
        ma, mb = mb, ma
        ea, eb = eb, ea
        sa, sb = sb, sa
    mb = shift_right_jam(mb, ea - eb)
    if sa == sb:
        s = ma + mb
    else:
        s = ma - mb
        if s == 0:
            return zero_bits(1 if rm == RDN else 0, dbl), 0
    return round_pack(sa, ea, s, dbl, rm)


@njit(cache=True)
def fp_mul(a, b, dbl, rm):
    ca, sa, ea, ma = unpack(a, dbl)
    cb, sb, eb, mb = unpack(b, dbl)
    s = sa ^ sb
    if ca >= CLS_QNAN or cb >= CLS_QNAN:
        return canon_nan(dbl), nan_flags2(ca, cb)
    if ca == CLS_INF or cb == CLS_INF:
        if ca == CLS_ZERO or cb == CLS_ZERO:
            return canon_nan(dbl), NV
        return inf_bits(s, dbl), 0
    if ca == CLS_ZERO or cb == CLS_ZERO:
        return zero_bits(s, dbl), 0
    if not dbl:
        return round_pack(s, ea + eb, ma * mb, dbl, rm)
    hi, lo = mul_wide(ma, mb)
    sig, shift = narrow_jam(hi, lo)
    return round_pack(s, ea + eb + shift, sig, dbl, rm)


@njit(cache=True)
def fp_div(a, b, dbl, rm):
    ca, sa, ea, ma = unpack(a, dbl)
    cb, sb, eb, mb = unpack(b, dbl)
    s = sa ^ sb
    if ca >= CLS_QNAN or cb >= CLS_QNAN:
        return canon_nan(dbl), nan_flags2(ca, cb)
    if ca == CLS_INF:
        if cb == CLS_INF:
            return canon_nan(dbl), NV
        return inf_bits(s, dbl), 0
    if cb == CLS_INF:
        return zero_bits(s, dbl), 0
    if cb == CLS_ZERO:
        if ca == CLS_ZERO:
            return canon_nan(dbl), NV
        return inf_bits(s, dbl), DZ
    if ca == CLS_ZERO:
        return zero_bits(s, dbl), 0
    # Normalise both significands to [2**52, 2**53) and long-divide in 8-bit
    # chunks (the partial remainder stays below 2**61).
    la = bitlen(ma)
    lb = bitlen(mb)
    ma <<= 53 - la
    ea -= 53 - la
    mb <<= 53 - lb
    eb -= 53 - lb
    if dbl:
        q = ma // mb
        r = ma - q * mb
        for _ in range(7):
            r <<= 8
            d = r // mb
            r -= d * mb
            q = (q << 8) | d
        k = 56
    else:
        # 24-bit operands: one division yields more than p + 2 quotient bits.
        ma >>= 29
        mb >>= 29
        num = ma << 31
        q = num // mb
        r = num - q * mb
        k = 31
    sig = (q << 1) | (1 if r != 0 else 0)
    return round_pack(s, ea - eb - k - 1, sig, dbl, rm)


@njit(cache=True)
def fp_sqrt(a, dbl, rm):
    ca, sa, ea, ma = unpack(a, dbl)
    if ca >= CLS_QNAN:
        return canon_nan(dbl), (NV if ca == CLS_SNAN else 0)
    if ca == CLS_ZERO:
        return a, 0
    if sa:
        return canon_nan(dbl), NV
    if ca == CLS_INF:
        return a, 0
    # Make the exponent even with the significand in [2**52, 2**54), then
    # take the integer square root digit by digit of sig * 4**k.
    la = bitlen(ma)
    ma <<= 53 - la
    ea -= 53 - la
    if ea & 1:
        ma <<= 1
        ea -= 1
    k = 29 if dbl else 0
    root = 0
    rem = 0
    for i in range(27 + k):
        sh = 52 - 2 * i
        pair = (ma >> sh) & 3 if sh >= 0 else 0
        rem = (rem << 2) | pair
        trial = (root << 2) | 1
        if rem >= trial:
            rem -= trial
            root = (root << 1) | 1
        else:
            root <<= 1
    sig = (root << 1) | (1 if rem != 0 else 0)
    return round_pack(0, (ea >> 1) - k - 1, sig, dbl, rm)


@njit(cache=True)
def fp_fma(a, b, c, neg_prod, neg_c, dbl, rm):
    """(-1)**neg_prod * a * b + (-1)**neg_c * c with a single rounding."""
    ca, sa, ea, ma = unpack(a, dbl)
    cb, sb, eb, mb = unpack(b, dbl)
    cc, sc, ec, mc = unpack(c, dbl)
    sp = sa ^ sb ^ neg_prod
    sc ^= neg_c
    if ca >= CLS_QNAN or cb >= CLS_QNAN or cc >= CLS_QNAN:
        flags = NV if (ca == CLS_SNAN or cb == CLS_SNAN or cc == CLS_SNAN) else 0
        # inf * 0 is invalid even when the addend is a quiet NaN.
        if (ca == CLS_INF and cb == CLS_ZERO) or (ca == CLS_ZERO and cb == CLS_INF):
            flags = NV
        return canon_nan(dbl), flags
    if ca == CLS_INF or cb == CLS_INF:
        if ca == CLS_ZERO or cb == CLS_ZERO:
            return canon_nan(dbl), NV
        if cc == CLS_INF and sc != sp:
            return canon_nan(dbl), NV
        return inf_bits(sp, dbl), 0
    if cc == CLS_INF:
        return inf_bits(sc, dbl), 0
    if ca == CLS_ZERO or cb == CLS_ZERO:
        if cc == CLS_ZERO:
            if sp == sc:
                return zero_bits(sp, dbl), 0
            return zero_bits(1 if rm == RDN else 0, dbl), 0
        return round_pack(sc, ec, mc, dbl, rm)
    phi, plo = mul_wide(ma, mb)
    ep = ea + eb
    if cc == CLS_ZERO:
        sig, shift = narrow_jam(phi, plo)
        return round_pack(sp, ep + shift, sig, dbl, rm)
    # Put both leading bits at position 121 of the 124-bit container; the
    # larger operand then has at least 16 zero low bits, so jamming the
    # aligned smaller one into bit 0 preserves correct rounding, and the sum
    # still fits.
    n = bitlen_wide(phi, plo)
    phi, plo = shl_wide(phi, plo, 122 - n)
    ep -= 122 - n
    n = bitlen(mc)
    chi, clo = shl_wide(0, mc, 122 - n)
    ec -= 122 - n
    if ep >= ec:
        chi, clo = shr_jam_wide(chi, clo, ep - ec)
        e = ep
    else:
        phi, plo = shr_jam_wide(phi, plo, ec - ep)
        e = ec
    if sp == sc:
        shi, slo = add_wide(phi, plo, chi, clo)
        s = sp
    elif ge_wide(phi, plo, chi, clo):
        shi, slo = sub_wide(phi, plo, chi, clo)
        s = sp
    else:
        shi, slo = sub_wide(chi, clo, phi, plo)
        s = sc
    if shi == 0 and slo == 0:
        return zero_bits(1 if rm == RDN else 0, dbl), 0
    sig, shift = narrow_jam(shi, slo)
    return round_pack(s, e + shift, sig, dbl, rm)
