"""Finding the instructions of a block in guest RAM.

A block starts at a RAM offset and runs until the first control transfer
(included), the first instruction tier 1 does not translate (excluded: the
interpreter executes it), the end of the page, or MAX_BLOCK instructions.
It never leaves its physical page, so the offset identifies all of its code,
whatever virtual address the guest runs it at.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_BLOCK = 64


@dataclass(frozen=True)
class Insn:
    rel: int  # byte offset from the start of the block
    length: int  # 2 or 4
    raw: int  # the bits in RAM (16 or 32), checked at block entry
    bits: int  # the 32-bit instruction (compressed ones expanded), unsigned

    @property
    def opcode(self) -> int:
        return self.bits & 0x7F

    @property
    def rd(self) -> int:
        return (self.bits >> 7) & 31

    @property
    def f3(self) -> int:
        return (self.bits >> 12) & 7

    @property
    def rs1(self) -> int:
        return (self.bits >> 15) & 31

    @property
    def rs2(self) -> int:
        return (self.bits >> 20) & 31

    @property
    def f7(self) -> int:
        return self.bits >> 25

    @property
    def imm_i(self) -> int:
        return _sext(self.bits >> 20, 12)

    @property
    def imm_s(self) -> int:
        return _sext(((self.bits >> 25) << 5) | ((self.bits >> 7) & 31), 12)

    @property
    def imm_b(self) -> int:
        b = self.bits
        v = ((b >> 31) << 12) | (((b >> 7) & 1) << 11) | (((b >> 25) & 0x3F) << 5) | (((b >> 8) & 0xF) << 1)
        return _sext(v, 13)

    @property
    def imm_u(self) -> int:
        return _sext(self.bits & 0xFFFFF000, 32)

    @property
    def imm_j(self) -> int:
        b = self.bits
        v = ((b >> 31) << 20) | (b & 0xFF000) | (((b >> 20) & 1) << 11) | (((b >> 21) & 0x3FF) << 1)
        return _sext(v, 21)


def _sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


_AMO_FUNCT5 = (0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C)


def translatable(bits: int) -> bool:
    """Whether tier 1 translates this (valid) 32-bit instruction."""
    op = bits & 0x7F
    f3 = (bits >> 12) & 7
    f7 = bits >> 25
    if op == 0x13:  # OP-IMM
        if f3 == 1:
            return (bits >> 26) == 0
        if f3 == 5:
            return (bits >> 26) in (0, 0x10)
        return True
    if op == 0x1B:  # OP-IMM-32
        if f3 == 0:
            return True
        if f3 == 1:
            return f7 == 0
        if f3 == 5:
            return f7 in (0, 0x20)
        return False
    if op == 0x33:  # OP
        return f7 in (0, 1) or (f7 == 0x20 and f3 in (0, 5))
    if op == 0x3B:  # OP-32
        if f7 == 0:
            return f3 in (0, 1, 5)
        if f7 == 0x20:
            return f3 in (0, 5)
        if f7 == 1:
            return f3 in (0, 4, 5, 6, 7)
        return False
    if op in (0x37, 0x17, 0x6F):  # LUI, AUIPC, JAL
        return True
    if op == 0x67:  # JALR
        return f3 == 0
    if op == 0x63:  # BRANCH
        return f3 not in (2, 3)
    if op == 0x03:  # LOAD
        return f3 != 7
    if op == 0x23:  # STORE
        return f3 <= 3
    if op == 0x2F:  # AMO, LR/SC (funct5 in bits 31:27; LR has no rs2)
        funct5 = bits >> 27
        if f3 not in (2, 3) or funct5 not in _AMO_FUNCT5:
            return False
        return funct5 != 2 or ((bits >> 20) & 31) == 0
    if op == 0x0F:  # FENCE (fence.i ends the block: the interpreter runs it)
        return f3 == 0
    if op in (0x53, 0x43, 0x47, 0x4B, 0x4F):  # OP-FP, fused multiply-add: the FPU is called
        return True
    if op == 0x07 or op == 0x27:  # FLW/FLD, FSW/FSD
        return f3 in (2, 3)
    return False


def ends_block(bits: int) -> bool:
    return (bits & 0x7F) in (0x63, 0x6F, 0x67)


def decode_block(ram16: np.ndarray, ctab: np.ndarray, off: int, max_len: int = MAX_BLOCK) -> list[Insn]:
    """The instructions of the block at RAM offset `off` (possibly none)."""
    insns: list[Insn] = []
    rel = 0
    page_end = (off | 0xFFF) + 1
    size = ram16.shape[0] * 2
    while len(insns) < max_len:
        at = off + rel
        if at + 2 > page_end or at + 2 > size:
            break
        lo = int(ram16[at >> 1])
        if (lo & 3) == 3:
            if at + 4 > page_end:
                break  # the instruction straddles into the next page
            raw = lo | (int(ram16[(at >> 1) + 1]) << 16)
            bits = raw
            length = 4
        else:
            raw = lo
            bits = int(ctab[lo]) & 0xFFFFFFFF
            if bits == 0:
                break  # illegal
            length = 2
        if not translatable(bits):
            break
        insns.append(Insn(rel, length, raw, bits))
        rel += length
        if ends_block(bits):
            break
    return insns


MAX_REGION = 64


@dataclass
class SubBlock:
    start: int  # block-relative offset of its first instruction
    insns: list[Insn]
    next_rel: int | None  # where it goes on when it does not end in a jump or branch


@dataclass
class Region:
    """The code reachable from an entry without leaving its page: sub-blocks
    joined by the branches and jumps between them (loops included)."""

    blocks: dict[int, SubBlock]  # by start; only sub-blocks with instructions
    insns: list[Insn]  # every instruction, for the check at entry

    @property
    def size(self) -> int:
        return len(self.insns)


def _decode_at(ram16: np.ndarray, ctab: np.ndarray, off: int, rel: int) -> Insn | None:
    at = off + rel
    page_end = (off | 0xFFF) + 1
    if rel < -(off & 0xFFF) or at + 2 > page_end or at + 2 > ram16.shape[0] * 2:
        return None
    lo = int(ram16[at >> 1])
    if (lo & 3) == 3:
        if at + 4 > page_end:
            return None
        raw = lo | (int(ram16[(at >> 1) + 1]) << 16)
        insn = Insn(rel, 4, raw, raw)
    else:
        bits = int(ctab[lo]) & 0xFFFFFFFF
        if bits == 0:
            return None
        insn = Insn(rel, 2, lo, bits)
    return insn if translatable(insn.bits) else None


def successors(insn: Insn) -> list[int]:
    """Block-relative places a block-ending instruction may go on at (statically known ones)."""
    op = insn.opcode
    if op == 0x63:
        return [insn.rel + insn.imm_b, insn.rel + insn.length]
    if op == 0x6F:
        return [insn.rel + insn.imm_j]
    return []


def decode_region(
    ram16: np.ndarray,
    ctab: np.ndarray,
    off: int,
    max_insns: int = MAX_REGION,
    taken: Callable[[int], bool] = lambda rel: True,
) -> Region:
    """The region entered at RAM offset `off` (no sub-blocks if its first instruction is not translated).

    `taken(rel)` says whether the interpreter has seen control arrive at a
    branch or jump target: targets it never saw taken stay outside (an exit
    there chains to whatever is translated there later), which keeps cold
    code out of the compiler. Fall-through code is followed up to the limit.
    """
    decoded: dict[int, Insn] = {}
    leaders = {0}
    work = deque([0])  # breadth first: the code nearest the entry first
    in_page = range(-(off & 0xFFF), 0x1000 - (off & 0xFFF))
    while work:
        rel = work.popleft()
        while rel not in decoded and len(decoded) < max_insns:
            insn = _decode_at(ram16, ctab, off, rel)
            if insn is None:
                break
            decoded[rel] = insn
            if ends_block(insn.bits):
                for t in successors(insn):
                    if t != insn.rel + insn.length and not taken(t):
                        continue
                    if t in in_page and t not in leaders:
                        leaders.add(t)
                        work.append(t)
                break
            rel += insn.length
    blocks: dict[int, SubBlock] = {}
    for start in sorted(leaders):
        insns: list[Insn] = []
        rel = start
        next_rel: int | None = None
        while rel in decoded:
            insn = decoded[rel]
            insns.append(insn)
            rel += insn.length
            if ends_block(insn.bits):
                break
            if rel in leaders:
                next_rel = rel
                break
        else:
            next_rel = rel  # stops before an instruction it does not translate
        if insns:
            blocks[start] = SubBlock(start, insns, next_rel)
    return Region(blocks, [decoded[r] for r in sorted(decoded)])
