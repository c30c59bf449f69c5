"""fp_execute against the exact Fraction oracle: edge vectors, targeted cases, a random sweep."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_fpu_oracle import (  # noqa: E402
    D,
    FMA_OPC,
    FMTS,
    MASK64,
    NV,
    NX,
    RDN,
    RMM,
    RNE,
    RTZ,
    RUP,
    UF,
    Hart,
    S,
    box,
    encode_op,
    enc_opfp,
    oracle,
    random_value,
    special_values,
    to_signed64,
)

RMS = (RNE, RTZ, RDN, RUP, RMM)
FIDS = ["s", "d"]


@pytest.fixture(scope="module")
def hart():
    return Hart()


def check(hart, op, f, rm, regs, kind=0, dyn=False):
    got = hart.op(op, f, rm, regs, kind, dyn)
    want = oracle(op, f, rm, regs, kind)
    assert got == want, (
        f"{op}.{'d' if f is D else 's'} rm={rm} kind={kind} regs={[hex(r) for r in regs]}: "
        f"got {hex(got[0])} flags {got[1]:#x}, want {hex(want[0])} flags {want[1]:#x}"
    )


def regs_of(f, a=0, b=0, c=0, x=0):
    return (box(a, f), box(b, f), box(c, f), x & MASK64)


# --- edge vectors -----------------------------------------------------------
@pytest.mark.parametrize("f", FMTS, ids=FIDS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_edge_pairs(hart, f, op):
    vals = special_values(f)
    for i, a in enumerate(vals):
        for j, b in enumerate(vals):
            # every pair in RNE; a rotating subset of pairs in the other modes
            check(hart, op, f, RNE, regs_of(f, a, b))
            rm = RMS[1 + (i + j) % 4]
            check(hart, op, f, rm, regs_of(f, a, b))


@pytest.mark.parametrize("f", FMTS, ids=FIDS)
@pytest.mark.parametrize("op", ["min", "max", "feq", "flt", "fle", "sgnj", "sgnjn", "sgnjx"])
def test_nonrounding_edge_pairs(hart, f, op):
    vals = special_values(f)
    for a in vals:
        for b in vals:
            check(hart, op, f, RNE, regs_of(f, a, b))


@pytest.mark.parametrize("f", FMTS, ids=FIDS)
def test_unary_edge_values(hart, f):
    for a in special_values(f):
        for rm in RMS:
            check(hart, "sqrt", f, rm, regs_of(f, a))
            check(hart, "cvt", f, rm, (box(a, S) if f is D else a, 0, 0, 0))
            for kind in range(4):
                check(hart, "to_int", f, rm, regs_of(f, a), kind)
        check(hart, "class", f, RNE, regs_of(f, a))
        check(hart, "mv_x", f, RNE, regs_of(f, a))


@pytest.mark.parametrize("f", FMTS, ids=FIDS)
def test_from_int_edges(hart, f):
    ints = [0, 1, -1, 2, 3, 7, (1 << 24) + 1, (1 << 24) + 3, (1 << 53) + 1, (1 << 53) + 3,
            (1 << 31) - 1, -(1 << 31), 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, -(1 << 63),
            (1 << 64) - 1, (1 << 63) + 1, 0xFFFF_FFFF_0000_0001, 0x1234_5678_9ABC_DEF1,
            0x8000_0000_0000_0400, 0x8000_0000_0000_0401, (1 << 62) + (1 << 38) + 1]
    for x in ints:
        for rm in RMS:
            for kind in range(4):
                check(hart, "from_int", f, rm, regs_of(f, x=x), kind)
        check(hart, "mv_f", f, RNE, regs_of(f, x=x))


def test_fma_edge_triples(hart):
    rng = random.Random(3)
    for f in FMTS:
        vals = special_values(f)
        for _ in range(3000):
            a, b, c = rng.choice(vals), rng.choice(vals), rng.choice(vals)
            op = rng.choice(list(FMA_OPC))
            check(hart, op, f, rng.choice(RMS), regs_of(f, a, b, c))


# --- targeted cases -----------------------------------------------------------
def fbits(x: float) -> int:
    import struct

    return struct.unpack("<Q", struct.pack("<d", x))[0]


def test_tininess_after_rounding(hart):
    tiny = 1 << 52  # 2**-1022
    # (1 - 2**-53) * 2**-1022: tiny even after rounding -> UF (with NX).
    r = hart.op("mul", D, RNE, regs_of(D, tiny, fbits(1 - 2.0**-53)))
    assert r == (tiny, NX | UF)
    # (1 - 2**-28) * (1 + 2**-28) * 2**-1022 = 2**-1022 * (1 - 2**-56): rounds to the
    # smallest normal even with an unbounded exponent -> not tiny, so no UF in RNE;
    # truncation keeps it below 2**-1022 -> tiny and inexact.
    a, b = fbits(1 - 2.0**-28), fbits((1 + 2.0**-28) * 2.0**-1022)
    assert hart.op("mul", D, RNE, regs_of(D, a, b)) == (tiny, NX)
    assert hart.op("mul", D, RTZ, regs_of(D, a, b)) == (tiny - 1, NX | UF)
    for rm in RMS:
        check(hart, "mul", D, rm, regs_of(D, a, b))
        check(hart, "madd", D, rm, regs_of(D, a, b, 1))
        check(hart, "nmsub", D, rm, regs_of(D, a, b, 1))


def test_fma_is_fused(hart):
    # (1 + 2**-30)**2 - (1 + 2**-29) = 2**-60 exactly, lost by an unfused mul + add.
    a = fbits(1 + 2.0**-30)
    c = fbits(1 + 2.0**-29)
    assert hart.op("msub", D, RNE, regs_of(D, a, a, c)) == (fbits(2.0**-60), 0)


def test_fma_cancellation_random(hart):
    """Addend close to -a*b so that the leading bits cancel."""
    rng = random.Random(11)
    for _ in range(1500):
        f = rng.choice(FMTS)
        a, b = random_value(rng, f), random_value(rng, f)
        prod, _ = oracle("mul", f, rng.choice(RMS), regs_of(f, a, b))
        prod &= (1 << f.width) - 1
        c = (prod ^ f.sign) + rng.randint(-3, 3)
        c &= (1 << f.width) - 1
        check(hart, rng.choice(list(FMA_OPC)), f, rng.choice(RMS), regs_of(f, a, b, c))


def test_overflow_per_mode(hart):
    big = D.maxf
    two = fbits(2.0)
    expect = {RNE: D.inf, RTZ: D.maxf, RDN: D.maxf, RUP: D.inf, RMM: D.inf}
    for rm, v in expect.items():
        assert hart.op("mul", D, rm, regs_of(D, big, two)) == (v, 4 | NX)
    neg = {RNE: D.inf, RTZ: D.maxf, RDN: D.inf, RUP: D.maxf, RMM: D.inf}
    for rm, v in neg.items():
        assert hart.op("mul", D, rm, regs_of(D, big | D.sign, two)) == ((v | D.sign), 4 | NX)


def test_fcvt_saturation(hart):
    nan = D.qnan
    cases = [  # (value bits, kind, expected signed 64-bit result, flags)
        (nan, 0, (1 << 31) - 1, NV), (nan, 1, -1, NV), (nan, 2, (1 << 63) - 1, NV), (nan, 3, -1, NV),
        (D.inf | D.sign, 0, -(1 << 31), NV), (D.inf | D.sign, 3, 0, NV),
        (fbits(-0.4), 1, 0, NX), (fbits(-0.4), 3, 0, NX), (fbits(-1.0), 3, 0, NV),
        (fbits(2147483647.5), 0, (1 << 31) - 1, NV), (fbits(-2147483648.4), 0, -(1 << 31), NX),
        (fbits(4294967295.0), 1, -1, 0), (fbits(3e9), 1, to_signed64(0xFFFF_FFFF_B2D0_5E00), 0),
        (fbits(2.0**63), 2, (1 << 63) - 1, NV), (fbits(-(2.0**63)), 2, -(1 << 63), 0),
        (fbits(2.0**63), 3, -(1 << 63), 0), (fbits(2.0**64), 3, -1, NV),
    ]
    for bits, kind, want, flags in cases:
        out, fl = hart.op("to_int", D, RNE, regs_of(D, bits), kind)
        assert (to_signed64(out), fl) == (want, flags), (hex(bits), kind)


def test_nan_boxing(hart):
    bad = [0x0000_0000_3F80_0000, 0x7FFF_FFFF_3F80_0000, 0xFFFF_FFFE_3F80_0000]
    one = 0xFFFF_FFFF_3F80_0000
    for reg in bad:
        # improperly boxed reads as canonical NaN
        assert hart.op("add", S, RNE, (reg, one, 0, 0)) == (0xFFFF_FFFF_7FC0_0000, 0)
        assert hart.op("class", S, RNE, (reg, 0, 0, 0)) == (1 << 9, 0)
        assert hart.op("sgnjn", S, RNE, (one, reg, 0, 0)) == (0xFFFF_FFFF_BF80_0000, 0)
        assert hart.op("sgnj", S, RNE, (reg, one, 0, 0)) == (0xFFFF_FFFF_7FC0_0000, 0)
        assert hart.op("cvt", D, RNE, (reg, 0, 0, 0)) == (D.qnan, 0)
        assert hart.op("max", S, RNE, (reg, one, 0, 0)) == (one, 0)
        # a transfer reads the raw low half
        assert hart.op("mv_x", S, RNE, (reg, 0, 0, 0)) == (0x3F80_0000, 0)
        check(hart, "madd", S, RNE, (reg, one, one, 0))
    # results are boxed; the double view of a single result is a NaN
    out, _ = hart.op("mv_f", S, RNE, (0, 0, 0, 0x1234_5678_8000_0001))
    assert out == 0xFFFF_FFFF_8000_0001
    assert hart.op("mv_x", S, RNE, (0xFFFF_FFFF_8000_0001, 0, 0, 0))[0] == 0xFFFF_FFFF_8000_0001


# --- architectural side effects -------------------------------------------------
def test_flags_accrue_and_fs_dirty(hart):
    s = hart.s
    insn = encode_op("div", D, RNE)
    rc, out, flags, mstatus = hart.run(insn, regs_of(D, fbits(1.0), fbits(3.0)), fcsr=NV | (RUP << 5))
    assert rc == 0 and flags == NV | NX
    assert int(hart.st[s.CSR + s.CSR_FCSR]) >> 5 == RUP  # frm untouched
    assert (mstatus >> 13) & 3 == 3 and mstatus < 0  # FS dirty and SD set
    # an integer-result op with no flag leaves FS alone
    rc, out, flags, mstatus = hart.run(encode_op("feq", D, 0), regs_of(D, fbits(1.0), fbits(1.0)))
    assert (rc, out, flags) == (0, 1, 0) and (mstatus >> 13) & 3 == 1
    # flt on a quiet NaN signals
    rc, out, flags, mstatus = hart.run(encode_op("flt", D, 0), regs_of(D, D.qnan, fbits(1.0)))
    assert (out, flags) == (0, NV) and (mstatus >> 13) & 3 == 3


def test_x0_never_written(hart):
    s = hart.s
    for op in ("to_int", "feq", "class", "mv_x"):
        insn = encode_op(op, D, RNE) & ~(31 << 7)  # rd = x0
        hart.st[s.X] = 0
        rc, *_ = hart.run(insn, regs_of(D, fbits(5.0), fbits(5.0)))
        assert rc == 0 and int(hart.st[s.X]) == 0


def test_dynamic_rounding_mode(hart):
    rng = random.Random(5)
    for _ in range(300):
        f = rng.choice(FMTS)
        rm = rng.choice(RMS)
        op = rng.choice(["add", "mul", "div", "sqrt", "madd", "to_int", "cvt"])
        regs = regs_of(f, random_value(rng, f), random_value(rng, f), random_value(rng, f))
        assert hart.op(op, f, rm, regs, 2, dyn=True) == hart.op(op, f, rm, regs, 2)


def test_illegal_encodings(hart):
    regs = regs_of(D, fbits(1.0), fbits(2.0))
    add = encode_op("add", D, RNE)
    bad = [add | (5 << 12), add | (6 << 12), add | (2 << 25), add | (3 << 25),
           encode_op("sqrt", D, RNE) | (1 << 20), enc_opfp(0x08, 0, 0, 4, 1, 0), enc_opfp(0x08, 1, 0, 4, 1, 1),
           enc_opfp(0x08, 1, 0, 4, 1, 2), enc_opfp(0x18, 1, 0, 10, 1, 4), enc_opfp(0x1A, 0, 0, 4, 11, 5),
           enc_opfp(0x04, 1, 3, 4, 1, 2), enc_opfp(0x05, 1, 2, 4, 1, 2), enc_opfp(0x14, 1, 3, 10, 1, 2),
           enc_opfp(0x1C, 1, 2, 10, 1, 0), enc_opfp(0x1C, 1, 0, 10, 1, 1), enc_opfp(0x1E, 1, 1, 4, 11, 0),
           enc_opfp(0x1E, 0, 0, 4, 11, 3), enc_opfp(0x06, 1, 0, 4, 1, 2), enc_opfp(0x1F, 1, 0, 4, 1, 2),
           encode_op("madd", D, RNE) | (5 << 12), encode_op("nmadd", S, RNE) | (2 << 25)]
    for insn in bad:
        rc, out, flags, _ = hart.run(insn, regs)
        assert rc == 1 and out == 0x1234 and flags == 0, hex(insn)
    # DYN with an invalid frm is illegal too (including an exact conversion)
    for frm in (5, 6, 7):
        for insn in (add | (7 << 12), encode_op("from_int", D, 7), encode_op("cvt", D, 7)):
            rc, *_ = hart.run(insn, regs, fcsr=frm << 5)
            assert rc == 1, (hex(insn), frm)


def test_no_exception_for_any_word(hart):
    rng = random.Random(99)
    opcodes = (0x43, 0x47, 0x4B, 0x4F, 0x53)
    for _ in range(3000):
        insn = (rng.getrandbits(25) << 7) | rng.choice(opcodes)
        regs = tuple(rng.getrandbits(64) for _ in range(4))
        rc, *_ = hart.run(insn, regs, fcsr=rng.getrandbits(8))
        assert rc in (0, 1)


# --- random sweep ------------------------------------------------------------------
SWEEP_OPS = ["add", "sub", "mul", "div", "sqrt", "madd", "msub", "nmsub", "nmadd", "to_int", "from_int",
             "cvt", "min", "max", "feq", "flt", "fle", "class", "sgnjx"]


def sweep_cases(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        f = rng.choice(FMTS)
        op = rng.choice(SWEEP_OPS)
        rm = rng.choice(RMS)
        kind = rng.randrange(4)
        a, b, c = (random_value(rng, f) for _ in range(3))
        if op in ("add", "sub") and rng.random() < 0.5:
            b = (a ^ (f.sign if rng.random() < 0.5 else 0)) + rng.randint(-2, 2)  # cancellation
            b &= (1 << f.width) - 1
        if op == "from_int":
            x = rng.getrandbits(rng.choice([8, 24, 32, 53, 54, 63, 64]))
        else:
            x = 0
        regs = (box(a, S) if (op == "cvt" and f is D) else box(a, f), box(b, f), box(c, f), x)
        yield op, f, rm, regs, kind


def test_random_sweep(hart):
    for op, f, rm, regs, kind in sweep_cases(2024, 4000):
        check(hart, op, f, rm, regs, kind)


# --- same results without the JIT ----------------------------------------------------
NOJIT_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from test_fpu_oracle import Hart, encode_op, S, D
h = Hart()
assert type(h.fpu.fp_execute).__name__ == "function", "JIT still active"
out = []
for op, fd, rm, regs, kind in json.load(sys.stdin):
    f = D if fd else S
    out.append(list(h.run(encode_op(op, f, rm, kind), regs)))
json.dump(out, sys.stdout)
"""


def test_identical_without_jit(hart):
    cases = list(sweep_cases(77, 500))
    cases += [("add", f, rm, regs_of(f, a, b), 0) for f in FMTS for rm in RMS
              for a, b in zip(special_values(f)[::3], special_values(f)[1::3])]
    payload = [[op, f.dbl, rm, list(regs), kind] for op, f, rm, regs, kind in cases]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    # -W error: an int64 overflow in the interpreted path would raise instead of wrapping
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", NOJIT_SCRIPT, str(Path(__file__).parent)],
        input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    for (op, f, rm, regs, kind), res in zip(cases, got):
        want = hart.run(encode_op(op, f, rm, kind), regs)
        assert tuple(res) == want, (op, f.dbl, rm, [hex(r) for r in regs], kind)


def test_exact_ties_all_modes(hart):
    """Results exactly halfway between two representable numbers (RNE vs RMM differ)."""
    rng = random.Random(21)
    seen_diff = 0
    for f in FMTS:
        emaxf = (1 << f.expbits) - 1
        for _ in range(150):
            e = rng.randint(f.p + 1, emaxf - 2)
            a = (rng.getrandbits(1) << (f.width - 1)) | (e << (f.p - 1)) | rng.getrandbits(f.p - 1) | 1
            half_ulp = (e - f.p) << (f.p - 1)  # 2**(exponent of a - p)
            three_halves = (f.emax << (f.p - 1)) | (1 << (f.p - 2))  # 1.5
            sub_tie = rng.getrandbits(f.p - 2) * 2 + 1  # odd subnormal: times 0.5 is a tie
            half = (f.emax - 1) << (f.p - 1)
            for rm in RMS:
                check(hart, "add", f, rm, regs_of(f, a, half_ulp | (a & f.sign)))
                check(hart, "sub", f, rm, regs_of(f, a, half_ulp))
                check(hart, "mul", f, rm, regs_of(f, a, three_halves))
                check(hart, "mul", f, rm, regs_of(f, sub_tie, half))
                check(hart, "madd", f, rm, regs_of(f, a, three_halves, half_ulp))
            if hart.op("mul", f, RNE, regs_of(f, a, three_halves)) != hart.op("mul", f, RMM, regs_of(f, a, three_halves)):
                seen_diff += 1
    assert seen_diff > 20  # many of the vectors really are ties
