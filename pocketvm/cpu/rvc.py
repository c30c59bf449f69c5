"""The C extension: expand a 16-bit instruction into its 32-bit equivalent.

Executing the expansion keeps one implementation of every operation; the
core then only needs to know the instruction was 2 bytes long. Reserved and
illegal encodings expand to 0, which the core treats as illegal.

The core does not call `expand` per instruction: it looks the halfword up in
`expansion_table()`, all 65536 expansions computed once per process.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from pocketvm.cpu.jit import core_jit


@core_jit(inline="always")
def _bits(v, hi, lo):
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


@core_jit(inline="always")
def _i_type(imm, rs1, f3, rd, op):
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


@core_jit(inline="always")
def _s_type(imm, rs2, rs1, f3, op):
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1F) << 7) | op


@core_jit(inline="always")
def _r_type(f7, rs2, rs1, f3, rd, op):
    return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


@core_jit(inline="always")
def _b_type(imm, rs2, rs1, f3):
    return (
        (((imm >> 12) & 1) << 31)
        | (((imm >> 5) & 0x3F) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((imm >> 1) & 0xF) << 8)
        | (((imm >> 11) & 1) << 7)
        | 0x63
    )


@core_jit(inline="always")
def _j_type(imm, rd):
    return (
        (((imm >> 20) & 1) << 31)
        | (((imm >> 1) & 0x3FF) << 21)
        | (((imm >> 11) & 1) << 20)
        | (((imm >> 12) & 0xFF) << 12)
        | (rd << 7)
        | 0x6F
    )


@core_jit(inline="always")
def _sext(v, bits):
    m = 1 << (bits - 1)
    return ((v & ((m << 1) - 1)) ^ m) - m


@core_jit
def expand(h):
    """16-bit instruction -> 32-bit instruction, or 0 if illegal/reserved."""
    quadrant = h & 3
    f3 = (h >> 13) & 7
    rd_full = (h >> 7) & 0x1F
    rs2_full = (h >> 2) & 0x1F
    rdp = 8 + ((h >> 2) & 7)  # rd' / rs2'
    rs1p = 8 + ((h >> 7) & 7)  # rs1' / rd'
    if quadrant == 0:
        if f3 == 0:  # c.addi4spn
            imm = (_bits(h, 12, 11) << 4) | (_bits(h, 10, 7) << 6) | (_bits(h, 6, 6) << 2) | (_bits(h, 5, 5) << 3)
            if imm == 0:
                return 0
            return _i_type(imm, 2, 0, rdp, 0x13)
        if f3 == 1 or f3 == 3:  # c.fld / c.ld
            imm = (_bits(h, 12, 10) << 3) | (_bits(h, 6, 5) << 6)
            return _i_type(imm, rs1p, 3, rdp, 0x07 if f3 == 1 else 0x03)
        if f3 == 2:  # c.lw
            imm = (_bits(h, 12, 10) << 3) | (_bits(h, 6, 6) << 2) | (_bits(h, 5, 5) << 6)
            return _i_type(imm, rs1p, 2, rdp, 0x03)
        if f3 == 5 or f3 == 7:  # c.fsd / c.sd
            imm = (_bits(h, 12, 10) << 3) | (_bits(h, 6, 5) << 6)
            return _s_type(imm, rdp, rs1p, 3, 0x27 if f3 == 5 else 0x23)
        if f3 == 6:  # c.sw
            imm = (_bits(h, 12, 10) << 3) | (_bits(h, 6, 6) << 2) | (_bits(h, 5, 5) << 6)
            return _s_type(imm, rdp, rs1p, 2, 0x23)
        return 0
    if quadrant == 1:
        imm6 = _sext((_bits(h, 12, 12) << 5) | _bits(h, 6, 2), 6)
        if f3 == 0:  # c.addi (c.nop when rd = 0)
            return _i_type(imm6, rd_full, 0, rd_full, 0x13)
        if f3 == 1:  # c.addiw
            if rd_full == 0:
                return 0
            return _i_type(imm6, rd_full, 0, rd_full, 0x1B)
        if f3 == 2:  # c.li
            return _i_type(imm6, 0, 0, rd_full, 0x13)
        if f3 == 3:
            if rd_full == 2:  # c.addi16sp
                imm = (
                    (_bits(h, 12, 12) << 9)
                    | (_bits(h, 6, 6) << 4)
                    | (_bits(h, 5, 5) << 6)
                    | (_bits(h, 4, 3) << 7)
                    | (_bits(h, 2, 2) << 5)
                )
                if imm == 0:
                    return 0
                return _i_type(_sext(imm, 10), 2, 0, 2, 0x13)
            if imm6 == 0:  # c.lui with nzimm = 0 is reserved
                return 0
            return ((imm6 & 0xFFFFF) << 12) | (rd_full << 7) | 0x37
        if f3 == 4:
            sub = _bits(h, 11, 10)
            if sub == 0 or sub == 1:  # c.srli / c.srai
                shamt = (_bits(h, 12, 12) << 5) | _bits(h, 6, 2)
                return _i_type(shamt | (sub << 10), rs1p, 5, rs1p, 0x13)
            if sub == 2:  # c.andi
                return _i_type(imm6, rs1p, 7, rs1p, 0x13)
            op2 = _bits(h, 6, 5)
            if _bits(h, 12, 12) == 0:
                if op2 == 0:  # c.sub
                    return _r_type(0x20, rdp, rs1p, 0, rs1p, 0x33)
                if op2 == 1:  # c.xor
                    return _r_type(0, rdp, rs1p, 4, rs1p, 0x33)
                if op2 == 2:  # c.or
                    return _r_type(0, rdp, rs1p, 6, rs1p, 0x33)
                return _r_type(0, rdp, rs1p, 7, rs1p, 0x33)  # c.and
            if op2 == 0:  # c.subw
                return _r_type(0x20, rdp, rs1p, 0, rs1p, 0x3B)
            if op2 == 1:  # c.addw
                return _r_type(0, rdp, rs1p, 0, rs1p, 0x3B)
            return 0
        if f3 == 5:  # c.j
            imm = (
                (_bits(h, 12, 12) << 11)
                | (_bits(h, 11, 11) << 4)
                | (_bits(h, 10, 9) << 8)
                | (_bits(h, 8, 8) << 10)
                | (_bits(h, 7, 7) << 6)
                | (_bits(h, 6, 6) << 7)
                | (_bits(h, 5, 3) << 1)
                | (_bits(h, 2, 2) << 5)
            )
            return _j_type(_sext(imm, 12), 0)
        # c.beqz / c.bnez
        imm = (
            (_bits(h, 12, 12) << 8)
            | (_bits(h, 11, 10) << 3)
            | (_bits(h, 6, 5) << 6)
            | (_bits(h, 4, 3) << 1)
            | (_bits(h, 2, 2) << 5)
        )
        return _b_type(_sext(imm, 9), 0, rs1p, 0 if f3 == 6 else 1)
    if quadrant == 2:
        if f3 == 0:  # c.slli
            shamt = (_bits(h, 12, 12) << 5) | _bits(h, 6, 2)
            return _i_type(shamt, rd_full, 1, rd_full, 0x13)
        if f3 == 1 or f3 == 3:  # c.fldsp / c.ldsp
            if f3 == 3 and rd_full == 0:
                return 0
            imm = (_bits(h, 12, 12) << 5) | (_bits(h, 6, 5) << 3) | (_bits(h, 4, 2) << 6)
            return _i_type(imm, 2, 3, rd_full, 0x07 if f3 == 1 else 0x03)
        if f3 == 2:  # c.lwsp
            if rd_full == 0:
                return 0
            imm = (_bits(h, 12, 12) << 5) | (_bits(h, 6, 4) << 2) | (_bits(h, 3, 2) << 6)
            return _i_type(imm, 2, 2, rd_full, 0x03)
        if f3 == 4:
            if _bits(h, 12, 12) == 0:
                if rs2_full == 0:  # c.jr
                    if rd_full == 0:
                        return 0
                    return _i_type(0, rd_full, 0, 0, 0x67)
                return _r_type(0, rs2_full, 0, 0, rd_full, 0x33)  # c.mv
            if rs2_full == 0:
                if rd_full == 0:  # c.ebreak
                    return 0x00100073
                return _i_type(0, rd_full, 0, 1, 0x67)  # c.jalr
            return _r_type(0, rs2_full, rd_full, 0, rd_full, 0x33)  # c.add
        if f3 == 5 or f3 == 7:  # c.fsdsp / c.sdsp
            imm = (_bits(h, 12, 10) << 3) | (_bits(h, 9, 7) << 6)
            return _s_type(imm, rs2_full, 2, 3, 0x27 if f3 == 5 else 0x23)
        # c.swsp
        imm = (_bits(h, 12, 9) << 2) | (_bits(h, 8, 7) << 6)
        return _s_type(imm, rs2_full, 2, 2, 0x23)
    return 0


@core_jit
def _fill_table(out):
    for h in range(65536):
        v = 0 if (h & 3) == 3 else expand(h)
        out[h] = v - ((v & 0x8000_0000) << 1)  # as int32, also without the JIT


@lru_cache(maxsize=1)
def expansion_table() -> np.ndarray:
    """int32 table: halfword -> expanded instruction (sign-extended 32-bit), 0 = illegal.

    Entries for halfwords whose low bits are 11 (32-bit instructions) are 0.
    Loading the compiled `expand` to build it takes longer than the rest of
    the core's start-up, so the table is kept next to numba's cache, named
    after a digest of this file.
    """
    path = _table_path()
    try:
        table = np.load(path)
        if table.dtype == np.int32 and table.shape == (65536,):
            table.flags.writeable = False
            return table
    except (OSError, ValueError):
        pass
    table = np.zeros(65536, dtype=np.int32)
    _fill_table(table)
    table.flags.writeable = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, table)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the rebuild
    return table


def _table_path() -> Path:
    from pocketvm.cpu import numba_cache_dir, numba_version

    digest = hashlib.sha256(numba_version() + Path(__file__).read_bytes()).hexdigest()[:16]
    return numba_cache_dir() / f"rvc-expansion-{digest}.npy"
