"""A small x86-64 assembler for the text `asmgen` writes, and its object file.

LLVM's assembler took ~1.4 ms for a region of 45 guest instructions (~3 µs
a line): most of what the quick tier then cost. `asmgen` uses a few dozen
instruction forms, all in Intel syntax, each operand a register, an
immediate, a label or a memory operand `[base + index * scale + disp]`;
this encodes exactly those (anything else is an `AsmError`, never wrong
code) into a relocatable ELF object of the shape `codeheap` loads: one
`.text` section, its functions as global symbols, no relocations (jumps are
to labels in the same text, and translated code addresses nothing else).
Jumps are always rel32 (no relaxation: a few bytes more per jump).

`tests/cpu/test_tier1_x86.py` checks its bytes against LLVM's assembler
(where both have a choice, this takes LLVM's).
"""

from __future__ import annotations

import re
import struct

_REG64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{n}" for n in range(8, 16)]
_REG32 = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"] + [f"r{n}d" for n in range(8, 16)]
_REG16 = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"] + [f"r{n}w" for n in range(8, 16)]
_REG8 = ["al", "cl", "dl", "bl"] + [""] * 4 + [f"r{n}b" for n in range(8, 16)]  # (spl..dil: not used)
REGISTERS: dict[str, tuple[int, int]] = {}  # name -> (number, size in bytes)
for _size, _names in ((8, _REG64), (4, _REG32), (2, _REG16), (1, _REG8)):
    REGISTERS.update({name: (n, _size) for n, name in enumerate(_names) if name})
_PTR = {"byte": 1, "word": 2, "dword": 4, "qword": 8}
_CC = {"o": 0, "no": 1, "b": 2, "ae": 3, "e": 4, "z": 4, "ne": 5, "nz": 5, "be": 6, "a": 7,
       "s": 8, "ns": 9, "l": 12, "ge": 13, "le": 14, "g": 15}  # fmt: skip
_ALU = {"add": 0, "or": 1, "and": 4, "sub": 5, "xor": 6, "cmp": 7}
_SHIFT = {"shl": 4, "shr": 5, "sar": 7}
_UNARY = {"neg": 3, "mul": 4, "imul": 5, "div": 6, "idiv": 7}
_BMI2 = {"shlx": 1, "sarx": 2, "shrx": 3}  # VEX.pp: 66, F3, F2
# Lines encoded before: a region's lines are mostly ones seen in earlier
# regions (the same registers, state slots and patterns), and parsing one
# costs ~10 µs, looking it up ~0.1. Two generations: when the young one is
# full it becomes the old one and the old one is dropped, so the lines in
# use survive the turn-over (a line found in the old one is young again)
# while one-off lines (a code check's constant, a jump's distance) leave.
# Clearing it all instead, 3000 regions of the kernel emptied it 8 times.
_ENCODED: dict[str, bytes] = {}
_ENCODED_OLD: dict[str, bytes] = {}
_ENCODED_MAX = 1 << 14  # (a few MiB at most)
_JUMP_OPCODES = {"jmp": b"\xe9", **{f"j{cc}": bytes([0x0F, 0x80 | n]) for cc, n in _CC.items()}}
_INT = re.compile(r"-?[0-9]+")
_MEMORY = re.compile(r"(?:(byte|word|dword|qword) ptr )?\[(.*)\]")


class AsmError(ValueError):
    """Text this assembler does not encode."""


class Reg:
    __slots__ = ("n", "size")

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size


class Mem:
    __slots__ = ("base", "disp", "index", "scale", "size")

    def __init__(self, size: int, base: int, index: int | None, scale: int, disp: int) -> None:
        self.size, self.base, self.index, self.scale, self.disp = size, base, index, scale, disp


def _operand(text: str) -> Reg | Mem | int | str:
    text = text.strip()
    reg = REGISTERS.get(text)
    if reg is not None:
        return Reg(*reg)
    if text[:1] in "-0123456789":
        return int(text, 0)
    if text.startswith(".L"):
        return text
    m = _MEMORY.fullmatch(text)
    if m is None:
        raise AsmError(f"operand {text!r}")
    base = index = None
    scale, disp = 1, 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", m.group(2).replace(" ", "")):  # ("+-4": the "-" counts)
        if "*" in term:
            name, factor = term.split("*")
            index, scale = REGISTERS[name][0], int(factor)
        elif term in REGISTERS:
            if base is None:
                base = REGISTERS[term][0]
            else:
                index = REGISTERS[term][0]
        else:
            disp += -int(term, 0) if sign == "-" else int(term, 0)
    if base is None or index == 4 or scale not in (1, 2, 4, 8):
        raise AsmError(f"address {text!r}")
    return Mem(_PTR[m.group(1)] if m.group(1) else 0, base, index, scale, disp)


def _fits8(v: int) -> bool:
    return -128 <= v < 128


class Assembler:
    """Lines in, machine code out (`assemble`)."""

    def __init__(self) -> None:
        self.code = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []  # (offset of a rel32, label)
        self.symbols: dict[str, list[int]] = {}  # function -> [offset, size]

    # --- encoding -------------------------------------------------------------------
    def _rex_modrm(self, w: bool, reg: int, rm: Reg | Mem, opcode: bytes, prefix: bytes = b"", byte_reg: bool = False) -> None:
        """prefix, REX, opcode, ModRM (+ SIB, displacement) for `reg` (a register number or /digit) and `rm`."""
        rex = (8 if w else 0) | ((reg >> 3) << 2)
        if isinstance(rm, Reg):
            rex |= rm.n >> 3
            modrm = bytes([0xC0 | ((reg & 7) << 3) | (rm.n & 7)])
        else:
            base, index = rm.base, rm.index
            if index is not None:
                rex |= (index >> 3) << 1
            rex |= base >> 3
            if rm.disp == 0 and (base & 7) != 5:
                mod, disp = 0, b""
            elif _fits8(rm.disp):
                mod, disp = 1, struct.pack("<b", rm.disp)
            else:
                mod, disp = 2, struct.pack("<i", rm.disp)
            if index is None and (base & 7) != 4:
                modrm = bytes([(mod << 6) | ((reg & 7) << 3) | (base & 7)])
            else:
                sib = ({1: 0, 2: 1, 4: 2, 8: 3}[rm.scale] << 6) | (((4 if index is None else index) & 7) << 3) | (base & 7)
                modrm = bytes([(mod << 6) | ((reg & 7) << 3) | 4, sib])
            modrm += disp
        rex_byte = bytes([0x40 | rex]) if rex or (byte_reg and reg in (4, 5, 6, 7)) else b""
        self.code += prefix + rex_byte + opcode + modrm

    def _sized(self, size: int, reg: int, rm: Reg | Mem, op8: int, op: int, extra: bytes = b"") -> None:
        """An instruction with byte/word/dword/qword forms (op8 for bytes, op otherwise)."""
        prefix = b"\x66" if size == 2 else b""
        byte_reg = size == 1 and isinstance(rm, Reg)
        self._rex_modrm(size == 8, reg, rm, bytes([op8 if size == 1 else op]), prefix, byte_reg)
        self.code += extra

    def line(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if text[-1] == ":":
            self.label(text[:-1])
            return
        if text[0] == "j":
            mnemonic, _, rest = text.partition(" ")
            if rest[:2] == ".L":  # a jump to a label (these are never the same twice: labels are the function's)
                opcode = _JUMP_OPCODES.get(mnemonic)
                if opcode is None:
                    raise AsmError(f"instruction {mnemonic}")
                self.code += opcode
                self.fixups.append((len(self.code), rest))
                self.code += b"\0\0\0\0"
                return
        known = _ENCODED.get(text)
        if known is None:
            known = _ENCODED_OLD.get(text)
            if known is not None:
                _remember(text, known)
        if known is not None:
            self.code += known
            return
        if "; " in text:  # instructions run together (`asmgen.AsmCodegen.put`), no jump to a label among them
            start, fixups = len(self.code), len(self.fixups)
            for part in text.split("; "):
                self.line(part)
            if len(self.fixups) == fixups:
                _remember(text, bytes(self.code[start:]))
            return
        # One of a kind, and most of what is parsed: a code check's 8 bytes and an exit's pc (`asmgen`).
        if text[:11] == "movabs rax," and _INT.fullmatch(text, 12):
            self.code += b"\x48\xb8" + struct.pack("<q", _signed64(int(text[12:])))
            return
        if text[:9] == "mov r10, " and _INT.fullmatch(text, 9) and -(1 << 31) <= int(text[9:]) < (1 << 31):
            self.code += b"\x49\xc7\xc2" + struct.pack("<i", int(text[9:]))
            return
        mnemonic, _, rest = text.partition(" ")
        if mnemonic.startswith("."):
            self._directive(mnemonic, rest)
            return
        start = len(self.code)
        try:
            self._instruction(mnemonic, [_operand(o) for o in rest.split(",")] if rest.strip() else [])
        except AsmError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error) as e:
            raise AsmError(f"{text!r}: {e}") from None
        _remember(text, bytes(self.code[start:]))

    def label(self, name: str) -> None:
        if name in self.labels:
            raise AsmError(f"label {name} defined twice")
        self.labels[name] = len(self.code)
        if name in self.symbols:
            self.symbols[name][0] = len(self.code)

    def _directive(self, name: str, rest: str) -> None:
        if name == ".p2align":
            self.code += b"\xcc" * (-len(self.code) % (1 << int(rest)))
        elif name == ".globl":
            self.symbols[rest.strip()] = [-1, 0]
        elif name == ".size":
            fn = rest.split(",")[0].strip()
            self.symbols[fn][1] = len(self.code) - self.symbols[fn][0]
        elif name not in (".type", ".text", ".intel_syntax", ".att_syntax"):
            raise AsmError(f"directive {name}")

    def _instruction(self, m: str, ops: list) -> None:
        code = self.code
        if m in _ALU:
            dst, src = ops
            size = dst.size or 8
            ext = _ALU[m]
            if isinstance(src, int):
                if _fits8(src):
                    self._sized(size, ext, dst, 0x80, 0x83, struct.pack("<b", src))
                elif isinstance(dst, Reg) and dst.n == 0 and size in (4, 8):  # the short form for eax/rax
                    code += (b"\x48" if size == 8 else b"") + bytes([ext * 8 + 5]) + struct.pack("<i", _imm32(src, size))
                elif size == 1:
                    self._sized(size, ext, dst, 0x80, 0x80, struct.pack("<B", src & 0xFF))
                else:
                    imm = struct.pack("<h", src) if size == 2 else struct.pack("<i", _imm32(src, size))
                    self._sized(size, ext, dst, 0x80, 0x81, imm)
            elif isinstance(src, Reg):
                self._sized(src.size, src.n, dst, ext * 8, ext * 8 + 1)
            else:  # reg, [mem]
                self._sized(dst.size, dst.n, src, ext * 8 + 2, ext * 8 + 3)
        elif m == "mov" or m == "movabs":
            dst, src = ops
            if isinstance(src, int):
                size = dst.size
                if isinstance(dst, Reg) and (m == "movabs" or (size == 8 and not -(1 << 31) <= src < (1 << 31))):
                    rex = 0x48 | (dst.n >> 3)
                    code += bytes([rex, 0xB8 | (dst.n & 7)]) + struct.pack("<q", _signed64(src))
                elif isinstance(dst, Reg) and size == 4:
                    code += (b"\x41" if dst.n >= 8 else b"") + bytes([0xB8 | (dst.n & 7)]) + struct.pack("<I", src & 0xFFFFFFFF)
                elif size == 8:
                    self._rex_modrm(True, 0, dst, b"\xc7")
                    code += struct.pack("<i", src)
                else:
                    raise AsmError("mov of an immediate")
            elif isinstance(src, Reg):
                self._sized(src.size, src.n, dst, 0x88, 0x89)
            else:
                self._sized(dst.size, dst.n, src, 0x8A, 0x8B)
        elif m == "test":
            dst, src = ops
            if isinstance(src, int):
                if isinstance(dst, Reg) and dst.n == 0 and dst.size == 1:
                    code += bytes([0xA8, src & 0xFF])
                else:
                    raise AsmError("test with an immediate")
            else:
                self._sized(src.size, src.n, dst, 0x84, 0x85)
        elif m == "lea":
            dst, src = ops
            self._rex_modrm(dst.size == 8, dst.n, src, b"\x8d")
        elif m in _SHIFT:
            dst, count = ops
            if count == 1:
                self._sized(dst.size, _SHIFT[m], dst, 0xD0, 0xD1)
            else:
                self._sized(dst.size, _SHIFT[m], dst, 0xC0, 0xC1, bytes([count & 0xFF]))
        elif m in _BMI2:
            dst, src, count = ops
            self._vex(dst.size == 8, _BMI2[m], dst.n, count.n, src)
        elif m in _UNARY and len(ops) == 1:
            self._sized(ops[0].size, _UNARY[m], ops[0], 0xF6, 0xF7)
        elif m == "imul":
            dst, src = ops
            self._rex_modrm(dst.size == 8, dst.n, src, b"\x0f\xaf")
        elif m.startswith("cmov") and m[4:] in _CC:
            dst, src = ops
            self._rex_modrm(dst.size == 8, dst.n, src, bytes([0x0F, 0x40 | _CC[m[4:]]]))
        elif m.startswith("set") and m[3:] in _CC:
            self._rex_modrm(False, 0, ops[0], bytes([0x0F, 0x90 | _CC[m[3:]]]), byte_reg=True)
        elif m in ("movzx", "movsx"):
            dst, src = ops
            width = src.size
            op = (0xB6 if m == "movzx" else 0xBE) | (1 if width == 2 else 0)
            self._rex_modrm(dst.size == 8, dst.n, src, bytes([0x0F, op]), byte_reg=width == 1)
        elif m == "movsxd":
            dst, src = ops
            self._rex_modrm(True, dst.n, src, b"\x63")
        elif m == "jmp" and isinstance(ops[0], Reg):
            self._rex_modrm(False, 4, ops[0], b"\xff")
        elif m == "jmp":
            code += b"\xe9"
            self._rel32(ops[0])
        elif m[0] == "j" and m[1:] in _CC:
            code += bytes([0x0F, 0x80 | _CC[m[1:]]])
            self._rel32(ops[0])
        elif m == "ret" and not ops:
            code += b"\xc3"
        elif m == "cqo" and not ops:
            code += b"\x48\x99"
        elif m == "cdq" and not ops:
            code += b"\x99"
        else:
            raise AsmError(f"instruction {m}")

    def _vex(self, w: bool, pp: int, reg: int, vvvv: int, rm: Reg | Mem) -> None:
        """A VEX (3-byte) 0F38 F7 instruction: shlx/sarx/shrx reg, rm, vvvv."""
        if not isinstance(rm, Reg):
            raise AsmError("BMI2 shift from memory")
        r, b = reg >> 3, rm.n >> 3
        self.code += bytes([0xC4, ((r ^ 1) << 7) | (1 << 6) | ((b ^ 1) << 5) | 2,
                            (int(w) << 7) | ((~vvvv & 15) << 3) | pp, 0xF7,
                            0xC0 | ((reg & 7) << 3) | (rm.n & 7)])  # fmt: skip

    def _rel32(self, label: object) -> None:
        if not isinstance(label, str):
            raise AsmError("a jump to something other than a label")
        self.fixups.append((len(self.code), label))
        self.code += b"\0\0\0\0"

    def finish(self) -> bytes:
        for at, label in self.fixups:
            target = self.labels.get(label)
            if target is None:
                raise AsmError(f"undefined label {label}")
            struct.pack_into("<i", self.code, at, target - (at + 4))
        return bytes(self.code)


def _remember(text: str, code: bytes) -> None:
    global _ENCODED, _ENCODED_OLD
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED_OLD, _ENCODED = _ENCODED, {}
    _ENCODED[text] = code


def _imm32(v: int, size: int) -> int:
    """An immediate as the 32 bits of a dword or a sign-extended qword operand."""
    if size == 4 and v >= (1 << 31):
        v -= 1 << 32
    if not -(1 << 31) <= v < (1 << 31):
        raise AsmError(f"immediate {v} does not fit")
    return v


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def assemble(text: str) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Machine code and its functions as name -> (offset, size)."""
    asm = Assembler()
    code, encoded = asm.code, _ENCODED
    for line in text.splitlines():
        known = encoded.get(line)  # (`line` would find it too: this is most lines, without the call)
        if known is not None:
            code += known
        elif line[-1:] == ":":
            asm.label(line[:-1])
        else:
            asm.line(line)
            encoded = _ENCODED  # (a new generation may have begun)
    code = asm.finish()
    return code, {name: (at, size) for name, (at, size) in asm.symbols.items()}


def relocatable_object(code: bytes, functions: dict[str, tuple[int, int]]) -> bytes:
    """An ELF64 x86-64 relocatable object: `.text` with global function symbols."""
    strtab = bytearray(b"\0")
    symbols = [bytes(24)]
    for name, (at, size) in functions.items():
        symbols.append(struct.pack("<IBBHQQ", len(strtab), 0x12, 0, 1, at, size))  # GLOBAL FUNC in section 1
        strtab += name.encode() + b"\0"
    symtab = b"".join(symbols)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    header_size, section_size = 64, 64
    text_at = header_size
    symtab_at = text_at + len(code) + (-len(code) % 8)
    strtab_at = symtab_at + len(symtab)
    shstr_at = strtab_at + len(strtab)
    sections_at = shstr_at + len(shstrtab) + (-(shstr_at + len(shstrtab)) % 8)
    out = bytearray()
    out += b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    out += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sections_at, 0, header_size, 0, 0, section_size, 5, 4)
    out += code + bytes(symtab_at - text_at - len(code))
    out += symtab + strtab + shstrtab
    out += bytes(sections_at - len(out))

    def section(name: int, kind: int, flags: int, at: int, size: int, link: int = 0, info: int = 0, align: int = 1, entsize: int = 0) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, flags, 0, at, size, link, info, align, entsize)

    out += bytes(section_size)
    out += section(1, 1, 0x6, text_at, len(code), align=16)  # .text: PROGBITS, ALLOC | EXECINSTR
    out += section(7, 2, 0, symtab_at, len(symtab), link=3, info=1, align=8, entsize=24)  # .symtab
    out += section(15, 3, 0, strtab_at, len(strtab))  # .strtab
    out += section(23, 3, 0, shstr_at, len(shstrtab))  # .shstrtab
    return bytes(out)
