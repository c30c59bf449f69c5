"""RV64F/RV64D execution: OP-FP and the fused multiply-add opcodes.

`fp_execute(st, stf64, stf32, insn)` decodes one instruction and executes it
on the hart state `st` (layout in `pocketvm.cpu.state`); the core calls it
after checking mstatus.FS != Off.  Loads and stores are the core's job.

How results are made exact
--------------------------
Numba cannot switch the host FPU's rounding mode or read its flags, so the
arithmetic never uses host floating point.  Each operation is computed
exactly in integer arithmetic -- the significand of a sum, product (up to 106
bits, held in two 62-bit limbs), quotient (long division) or square root
(digit-by-digit) -- with every bit that does not fit ORed into a sticky bit.
One final rounding step (`fpround.round_pack`) then applies the rounding mode
(RNE/RTZ/RDN/RUP/RMM) and derives the flags from the discarded bits: NX when
any are nonzero, OF when the rounded exponent exceeds the format, UF when the
result is inexact and tiny *after* rounding (as RISC-V specifies), NV and DZ
from the operand classes.  The fused multiply-add is therefore a true single
rounding.  Everything is int64 code with no intermediate ever reaching 2**63,
so numba and NUMBA_DISABLE_JIT=1 agree bit for bit.

The common case -- add/sub/mul/div/sqrt in round-to-nearest-even with
ordinary operands -- first tries `fpfast`, which takes the host FPU's RNE
result and gets NX from error-free transformations (TwoSum, Dekker's
TwoProduct); anything near overflow/underflow or special falls through to
the exact path above.

Single-precision operands that are not NaN-boxed read as the canonical NaN;
single results are written NaN-boxed.
"""

from __future__ import annotations

from pocketvm.cpu.jit import njit

from pocketvm.cpu.fparith import fp_add, fp_div, fp_fma, fp_mul, fp_sqrt
from pocketvm.cpu.fpconv import (
    convert_fp,
    fp_class,
    fp_compare,
    fp_minmax,
    fp_to_int,
    int_to_fp,
    sext32,
)
from pocketvm.cpu.fpfast import fast_double, fast_single
from pocketvm.cpu.fpround import CANON_NAN_S, INT64_MIN
from pocketvm.cpu.state import CSR, CSR_FCSR, CSR_MSTATUS, F, MSTATUS_FS, MSTATUS_SD, X

OK = 0
ILLEGAL = 1

NAN_BOX = -0x1_0000_0000  # upper 32 bits all ones
DIRTY = MSTATUS_FS | MSTATUS_SD

OPC_MADD = 0x43
OPC_MSUB = 0x47
OPC_NMSUB = 0x4B
OPC_NMADD = 0x4F
OPC_OP_FP = 0x53


@njit(cache=True, inline="always")
def effective_rm(rm, fcsr):
    """Concrete rounding mode for an rm field, or -1 if reserved."""
    if rm == 7:
        rm = (fcsr >> 5) & 7
    return rm if rm <= 4 else -1


@njit(cache=True, inline="always")
def read_f(st, i, dbl):
    raw = st[F + i]
    if dbl:
        return raw
    if (raw >> 32) != -1:
        return CANON_NAN_S
    return raw & 0xFFFF_FFFF


@njit(cache=True, inline="always")
def write_f(st, rd, bits, dbl):
    st[F + rd] = bits if dbl else (bits | NAN_BOX)
    st[CSR + CSR_MSTATUS] |= DIRTY


@njit(cache=True, inline="always")
def write_x(st, rd, v):
    if rd != 0:
        st[X + rd] = v


@njit(cache=True, inline="always")
def raise_flags(st, flags):
    if flags != 0:
        st[CSR + CSR_FCSR] |= flags
        st[CSR + CSR_MSTATUS] |= DIRTY


@njit(cache=True)
def fp_execute(st, stf64, stf32, insn) -> int:
    """Execute one F/D instruction; 0 on success, 1 for an illegal encoding."""
    opc = insn & 0x7F
    rd = (insn >> 7) & 31
    funct3 = (insn >> 12) & 7
    rs1 = (insn >> 15) & 31
    rs2 = (insn >> 20) & 31
    fmt = (insn >> 25) & 3
    funct5 = (insn >> 27) & 31
    if fmt >= 2:  # half and quad precision are not implemented
        return ILLEGAL
    dbl = fmt

    if opc != OPC_OP_FP:
        if opc != OPC_MADD and opc != OPC_MSUB and opc != OPC_NMSUB and opc != OPC_NMADD:
            return ILLEGAL
        rm = effective_rm(funct3, st[CSR + CSR_FCSR])
        if rm < 0:
            return ILLEGAL
        neg_prod = 1 if (opc == OPC_NMSUB or opc == OPC_NMADD) else 0
        neg_c = 1 if (opc == OPC_MSUB or opc == OPC_NMADD) else 0
        bits, flags = fp_fma(
            read_f(st, rs1, dbl), read_f(st, rs2, dbl), read_f(st, funct5, dbl), neg_prod, neg_c, dbl, rm
        )
        write_f(st, rd, bits, dbl)
        raise_flags(st, flags)
        return OK

    if funct5 <= 3 or funct5 == 0x0B or funct5 == 0x08 or funct5 == 0x18 or funct5 == 0x1A:
        # Instructions with a rounding-mode field.
        rm = effective_rm(funct3, st[CSR + CSR_FCSR])
        if rm < 0:
            return ILLEGAL
        if rm == 0 and (funct5 <= 3 or (funct5 == 0x0B and rs2 == 0)):
            if dbl:
                flags = fast_double(st, stf64, funct5, rd, rs1, rs2)
            else:
                flags = fast_single(st, stf32, funct5, rd, rs1, rs2)
            if flags >= 0:
                raise_flags(st, flags)
                return OK
        if funct5 <= 3:
            a = read_f(st, rs1, dbl)
            b = read_f(st, rs2, dbl)
            if funct5 <= 1:
                bits, flags = fp_add(a, b, funct5, dbl, rm)
            elif funct5 == 2:
                bits, flags = fp_mul(a, b, dbl, rm)
            else:
                bits, flags = fp_div(a, b, dbl, rm)
            write_f(st, rd, bits, dbl)
        elif funct5 == 0x0B:  # FSQRT
            if rs2 != 0:
                return ILLEGAL
            bits, flags = fp_sqrt(read_f(st, rs1, dbl), dbl, rm)
            write_f(st, rd, bits, dbl)
        elif funct5 == 0x08:  # FCVT.S.D (fmt S, rs2 D) / FCVT.D.S (fmt D, rs2 S)
            if rs2 != 1 - dbl:
                return ILLEGAL
            bits, flags = convert_fp(read_f(st, rs1, rs2), rs2, rm)
            write_f(st, rd, bits, dbl)
        elif funct5 == 0x18:  # FCVT.int.fmt
            if rs2 > 3:
                return ILLEGAL
            v, flags = fp_to_int(read_f(st, rs1, dbl), dbl, rs2, rm)
            write_x(st, rd, v)
        else:  # FCVT.fmt.int
            if rs2 > 3:
                return ILLEGAL
            bits, flags = int_to_fp(st[X + rs1], rs2, dbl, rm)
            write_f(st, rd, bits, dbl)
        raise_flags(st, flags)
        return OK

    if funct5 == 0x04:  # FSGNJ / FSGNJN / FSGNJX
        if funct3 > 2:
            return ILLEGAL
        a = read_f(st, rs1, dbl)
        b = read_f(st, rs2, dbl)
        sbit = INT64_MIN if dbl else 0x8000_0000
        if funct3 == 0:
            s = b & sbit
        elif funct3 == 1:
            s = (b & sbit) ^ sbit
        else:
            s = (a ^ b) & sbit
        write_f(st, rd, (a & ~sbit) | s, dbl)
        return OK

    if funct5 == 0x05:  # FMIN / FMAX
        if funct3 > 1:
            return ILLEGAL
        bits, flags = fp_minmax(read_f(st, rs1, dbl), read_f(st, rs2, dbl), dbl, funct3)
        write_f(st, rd, bits, dbl)
        raise_flags(st, flags)
        return OK

    if funct5 == 0x14:  # FLE / FLT / FEQ
        if funct3 > 2:
            return ILLEGAL
        v, flags = fp_compare(read_f(st, rs1, dbl), read_f(st, rs2, dbl), dbl, funct3)
        write_x(st, rd, v)
        raise_flags(st, flags)
        return OK

    if funct5 == 0x1C:  # FMV.X.W / FMV.X.D / FCLASS
        if rs2 != 0:
            return ILLEGAL
        if funct3 == 0:
            # A transfer: the raw register bits, NaN-boxed or not.
            raw = st[F + rs1]
            write_x(st, rd, raw if dbl else sext32(raw))
            return OK
        if funct3 == 1:
            write_x(st, rd, fp_class(read_f(st, rs1, dbl), dbl))
            return OK
        return ILLEGAL

    if funct5 == 0x1E:  # FMV.W.X / FMV.D.X
        if rs2 != 0 or funct3 != 0:
            return ILLEGAL
        x = st[X + rs1]
        write_f(st, rd, x if dbl else (x & 0xFFFF_FFFF), dbl)
        return OK

    return ILLEGAL

