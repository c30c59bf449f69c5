"""Generate alu_vectors.h: integer ALU and AMO test vectors with expected results.

The expected values come from the small Python model of RV64I/M arithmetic
below (written from the ISA manual), independent of any emulator, so the
`alu` and `amo` guest programs can check every result themselves.  build.py regenerates
the header (into build/gen/) whenever this file changes.
"""

from __future__ import annotations

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1

# Operands: zero, small, all-ones, the 32/64-bit boundaries, shift edges.
VALUES = [
    0x0,
    0x1,
    0x2,
    0x1F,
    0x20,
    0x3F,
    0x40,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0x100000000,
    0x7FFFFFFFFFFFFFFF,
    0x8000000000000000,
    0x8000000080000000,
    0xFFFFFFFF7FFFFFFF,
    0xFFFFFFFFFFFFFFFE,
    0xFFFFFFFFFFFFFFFF,
    0x123456789ABCDEF0,
    0xFEDCBA9876543210,
    0x00000000FFFFFFFE,
]
IMMS = [0, 1, -1, 2, 42, 0x555, -0x555, 2047, -2048]
SHAMTS = [0, 1, 2, 31, 32, 33, 62, 63]
SHAMTS_W = [0, 1, 2, 15, 30, 31]


def s64(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v >> 63 else v


def s32(v: int) -> int:
    v &= M32
    return v - (1 << 32) if v >> 31 else v


def sx32(v: int) -> int:
    """Sign-extend the low 32 bits to 64 (the result of every W op)."""
    return s32(v) & M64


def tdiv(a: int, b: int) -> int:
    """Division rounding towards zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def div(a: int, b: int, bits: int) -> int:
    if b == 0:
        return -1
    if a == -(1 << (bits - 1)) and b == -1:
        return a
    return tdiv(a, b)


def rem(a: int, b: int, bits: int) -> int:
    if b == 0:
        return a
    if a == -(1 << (bits - 1)) and b == -1:
        return 0
    return a - tdiv(a, b) * b


RR_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "sll": lambda a, b: a << (b & 63),
    "slt": lambda a, b: int(s64(a) < s64(b)),
    "sltu": lambda a, b: int(a < b),
    "xor": lambda a, b: a ^ b,
    "srl": lambda a, b: a >> (b & 63),
    "sra": lambda a, b: s64(a) >> (b & 63),
    "or": lambda a, b: a | b,
    "and": lambda a, b: a & b,
    "addw": lambda a, b: sx32(a + b),
    "subw": lambda a, b: sx32(a - b),
    "sllw": lambda a, b: sx32(a << (b & 31)),
    "srlw": lambda a, b: sx32((a & M32) >> (b & 31)),
    "sraw": lambda a, b: s32(a) >> (b & 31),
    "mul": lambda a, b: a * b,
    "mulh": lambda a, b: (s64(a) * s64(b)) >> 64,
    "mulhsu": lambda a, b: (s64(a) * b) >> 64,
    "mulhu": lambda a, b: (a * b) >> 64,
    "div": lambda a, b: div(s64(a), s64(b), 64),
    "divu": lambda a, b: M64 if b == 0 else a // b,
    "rem": lambda a, b: rem(s64(a), s64(b), 64),
    "remu": lambda a, b: a if b == 0 else a % b,
    "mulw": lambda a, b: sx32(a * b),
    "divw": lambda a, b: sx32(div(s32(a), s32(b), 32)),
    "divuw": lambda a, b: sx32(M32 if b & M32 == 0 else (a & M32) // (b & M32)),
    "remw": lambda a, b: sx32(rem(s32(a), s32(b), 32)),
    "remuw": lambda a, b: sx32(a if b & M32 == 0 else (a & M32) % (b & M32)),
}

RI_OPS = {
    "addi": (IMMS, lambda a, i: a + i),
    "slti": (IMMS, lambda a, i: int(s64(a) < i)),
    "sltiu": (IMMS, lambda a, i: int(a < (i & M64))),
    "xori": (IMMS, lambda a, i: a ^ i),
    "ori": (IMMS, lambda a, i: a | i),
    "andi": (IMMS, lambda a, i: a & i),
    "addiw": (IMMS, lambda a, i: sx32(a + i)),
    "slli": (SHAMTS, lambda a, i: a << i),
    "srli": (SHAMTS, lambda a, i: a >> i),
    "srai": (SHAMTS, lambda a, i: s64(a) >> i),
    "slliw": (SHAMTS_W, lambda a, i: sx32(a << i)),
    "srliw": (SHAMTS_W, lambda a, i: sx32((a & M32) >> i)),
    "sraiw": (SHAMTS_W, lambda a, i: s32(a) >> i),
}


AMO_VALUES = [0x0, 0x1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF,
              0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0x123456789ABCDEF0, 0xFFFFFFFF7FFFFFFE]
# AMO op -> new memory value from (old, rs2), on operands of the access width.
AMO_OPS = {
    "swap": lambda old, src, bits: src,
    "add": lambda old, src, bits: old + src,
    "xor": lambda old, src, bits: old ^ src,
    "and": lambda old, src, bits: old & src,
    "or": lambda old, src, bits: old | src,
    "min": lambda old, src, bits: min(old, src, key=lambda v: _signed(v, bits)),
    "max": lambda old, src, bits: max(old, src, key=lambda v: _signed(v, bits)),
    "minu": lambda old, src, bits: min(old, src),
    "maxu": lambda old, src, bits: max(old, src),
}
ORDERINGS = ["", ".aq", ".rl", ".aqrl"]


def _signed(v: int, bits: int) -> int:
    return s32(v) if bits == 32 else s64(v)


def _amo_section() -> list[str]:
    """For each amo<op>.<w|d>: expected (rd, new memory) per operand pair, and
    one function per ordering variant: u64 f(u64 *mem, u64 src) -> rd."""
    out = [f"#define N_AMO_VALUES {len(AMO_VALUES)}", *_table("AMO_VALUES", AMO_VALUES)]
    cases = []
    for op, fn in AMO_OPS.items():
        for width, bits in (("w", 32), ("d", 64)):
            mask = M32 if bits == 32 else M64
            rd, mem = [], []
            for old in AMO_VALUES:
                for src in AMO_VALUES:
                    o, v = old & mask, src & mask
                    rd.append(sx32(o) if bits == 32 else o)
                    # A .w AMO leaves the upper half of the doubleword alone.
                    mem.append((old & ~mask) | (fn(o, v, bits) & mask))
            name = f"{op}_{width}"
            out += _table(f"EXP_RD_{name}", rd) + _table(f"EXP_MEM_{name}", mem)
            for order in ORDERINGS:
                insn = f"amo{op}.{width}{order}"
                fname = f"amo_{name}{order.replace('.', '_')}"
                out.append(
                    f"static u64 {fname}(u64 *m, u64 v) {{ u64 r; "
                    f'asm volatile("{insn} %0, %2, (%1)" : "=r"(r) : "r"(m), "r"(v) : "memory"); return r; }}'
                )
                cases.append((insn, fname, name))
    out += ["", "typedef struct { const char *name; u64 (*fn)(u64 *, u64); const u64 *rd, *mem; } amo_case_t;"]
    out.append("static const amo_case_t AMO_CASES[] = {")
    out += [f'    {{"{insn}", {fname}, EXP_RD_{name}, EXP_MEM_{name}}},' for insn, fname, name in cases]
    out += ["};", ""]
    return out


def _table(name: str, values: list[int]) -> list[str]:
    lines = [f"static const u64 {name}[{len(values)}] = {{"]
    for k in range(0, len(values), 4):
        lines.append("    " + " ".join(f"0x{v & M64:016x}UL," for v in values[k : k + 4]))
    lines.append("};")
    return lines


def _cname(op: str, imm: int) -> str:
    return f"{op}_{'m' if imm < 0 else ''}{abs(imm)}"


def generate() -> str:
    out = [
        "/* Generated by tests/guest/gen_vectors.py -- do not edit. */",
        "#ifndef ALU_VECTORS_H",
        "#define ALU_VECTORS_H",
        '#include "rt.h"',
        "",
        f"#define N_VALUES {len(VALUES)}",
        *_table("VALUES", VALUES),
        "",
    ]
    for op, fn in RR_OPS.items():
        exp = [fn(a, b) for a in VALUES for b in VALUES]
        out += _table(f"EXP_{op}", exp)
        out.append(
            f"static u64 op_{op}(u64 a, u64 b) {{ u64 r; "
            f'asm volatile("{op} %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }}'
        )
    out += ["", "typedef struct { const char *name; u64 (*fn)(u64, u64); const u64 *exp; } rr_case_t;"]
    out.append("static const rr_case_t RR_CASES[] = {")
    out += [f'    {{"{op}", op_{op}, EXP_{op}}},' for op in RR_OPS]
    out += ["};", ""]

    cases = []
    for op, (imms, fn) in RI_OPS.items():
        for imm in imms:
            name = _cname(op, imm)
            out += _table(f"EXP_{name}", [fn(a, imm) for a in VALUES])
            out.append(
                f"static u64 op_{name}(u64 a) {{ u64 r; "
                f'asm volatile("{op} %0, %1, {imm}" : "=r"(r) : "r"(a)); return r; }}'
            )
            cases.append((op, imm, name))
    out += ["", "typedef struct { const char *name; long imm; u64 (*fn)(u64); const u64 *exp; } ri_case_t;"]
    out.append("static const ri_case_t RI_CASES[] = {")
    out += [f'    {{"{op}", {imm}, op_{name}, EXP_{name}}},' for op, imm, name in cases]
    out += ["};", ""]
    out += _amo_section()
    out += ["#endif", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(generate())
