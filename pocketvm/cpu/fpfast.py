"""Round-to-nearest-even fast path on host floats for add/sub/mul/div/sqrt.

The host FPU rounds to nearest-even, so in RNE its result *is* the correct
result; only the NX flag needs extra work.  It comes from error-free
transformations: TwoSum gives the exact rounding error of an addition,
Dekker's TwoProduct (Veltkamp splitting, no FMA needed) that of a product,
which also tells whether a quotient or square root was exact (q*y == x,
r*r == x).  These are exact only away from overflow and underflow, so the
fast path accepts operands in [2**-400, 2**400] for mul/div/sqrt, and rejects
any non-finite intermediate (which is how overflow shows up).

Single precision is computed in double and rounded again to single: for
+, -, *, / and sqrt this double rounding is harmless because 53 >= 2*24 + 2,
and the result is exact only if both roundings were.  Single results at or
below the smallest normal number are left to the exact path, so the fast
path never has to decide underflow.

Every function returns the fflags (0 or NX) after writing the result, or -1
when the case must go to the exact integer implementation.
"""

from __future__ import annotations

import math

import numpy as np
from pocketvm.cpu.jit import njit

from pocketvm.cpu.fpround import NX
from pocketvm.cpu.state import CSR, CSR_MSTATUS, F, MSTATUS_FS, MSTATUS_SD

LO = 2.0**-400
HI = 2.0**400
SPLIT = 134217729.0  # 2**27 + 1
MIN_NORMAL_S = 2.0**-126
MAX_S = 3.4028234663852886e38
NAN_BOX = -0x1_0000_0000
DIRTY = MSTATUS_FS | MSTATUS_SD

OP_ADD = 0
OP_SUB = 1
OP_MUL = 2
OP_DIV = 3
OP_SQRT = 0x0B


@njit(cache=True, inline="always")
def product_error(a, b, p):
    """a*b - p exactly, for p = fl(a*b) with no overflow or underflow (Dekker)."""
    c = SPLIT * a
    ah = c - (c - a)
    al = a - ah
    c = SPLIT * b
    bh = c - (c - b)
    bl = b - bh
    return al * bl - (((p - ah * bh) - al * bh) - ah * bl)


@njit(cache=True, inline="always")
def in_range(v):
    a = abs(v)
    return a >= LO and a <= HI  # False for NaN


@njit(cache=True, error_model="numpy")
def fast_double(st, stf64, op, rd, rs1, rs2):
    # Python floats, not numpy scalars, under NUMBA_DISABLE_JIT: they overflow
    # to inf quietly instead of warning.
    x = float(stf64[F + rs1])
    if op == OP_SQRT:
        if not (x >= LO and x <= HI):
            return -1
        r = math.sqrt(x)
        p = r * r
        inexact = p != x or product_error(r, r, p) != 0.0
    else:
        y = float(stf64[F + rs2])
        if op <= OP_SUB:
            if op == OP_SUB:
                y = -y
            r = x + y
            bv = r - x
            av = r - bv
            err = (x - av) + (y - bv)
            if not (err - err == 0.0):  # non-finite: overflow, inf or NaN somewhere
                return -1
            inexact = err != 0.0
        else:
            if not (in_range(x) and in_range(y)):
                return -1
            if op == OP_MUL:
                r = x * y
                inexact = product_error(x, y, r) != 0.0
            else:
                r = x / y
                p = r * y
                inexact = p != x or product_error(r, y, p) != 0.0
    stf64[F + rd] = r
    st[CSR + CSR_MSTATUS] |= DIRTY
    return NX if inexact else 0


@njit(cache=True, error_model="numpy")
def fast_single(st, stf32, op, rd, rs1, rs2):
    if (st[F + rs1] >> 32) != -1:
        return -1
    x = float(np.float64(stf32[2 * (F + rs1)]))  # numba: float() keeps float32
    y = 0.0
    err = 0.0
    if op == OP_SQRT:
        if not (x > 0.0):
            return -1
        r = math.sqrt(x)
    else:
        if (st[F + rs2] >> 32) != -1:
            return -1
        y = float(np.float64(stf32[2 * (F + rs2)]))
        if op <= OP_SUB:
            if op == OP_SUB:
                y = -y
            r = x + y
            bv = r - x
            av = r - bv
            err = (x - av) + (y - bv)
        elif op == OP_MUL:
            r = x * y  # exact in double
        else:
            if y == 0.0:
                return -1
            r = x / y
    # A double strictly above the smallest single normal rounds to a single
    # that is not tiny; at most MAX_S it cannot overflow.  NaN fails too.
    a = abs(r)
    if not (a > MIN_NORMAL_S and a <= MAX_S):
        return -1
    r32 = np.float32(r)
    q = float(np.float64(r32))
    if op == OP_SQRT:
        inexact = q * q != x  # exact in double: 24-bit times 24-bit
    elif op == OP_DIV:
        inexact = q * y != x
    else:
        inexact = err != 0.0 or q != r
    stf32[2 * (F + rd)] = r32
    st[F + rd] |= NAN_BOX
    st[CSR + CSR_MSTATUS] |= DIRTY
    return NX if inexact else 0
