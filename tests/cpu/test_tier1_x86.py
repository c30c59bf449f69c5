"""The assembler of tier 1's quick code (`x86`) against LLVM's.

Every line `asmgen` writes for the regions of the random and edge-value
programs of `test_tier1_asm` and the atomics of `test_tier1_atomics` (with
and without paging), jumps aside, is
assembled by both; the bytes must be the same. Jumps (rel32 to labels) and
the object file are checked by running the code: every tier-1 test does.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_tier1_asm as programs
import test_tier1_atomics as atomics
from tier1_diff import Setup, make_hart

from pocketvm.cpu import state as S
from pocketvm.cpu.rvc import expansion_table
from pocketvm.cpu.tier1 import codeheap, x86
from pocketvm.cpu.tier1.asmgen import AsmCodegen
from pocketvm.cpu.tier1.decode import decode_region


def generated_lines() -> list[str]:
    lines: set[str] = set()
    sources = [programs.random_setup(seed, seed % 2 == 0).program for seed in range(1, 12)]
    sources += [programs.edge_program(words[:24]) for words in programs.EDGE_CASES.values()]
    sources += [atomics.random_setup(seed, seed % 2 == 0).program for seed in range(1, 6)]
    for k, program in enumerate(sources):
        hart = make_hart(Setup(program), "off")
        ram16 = hart.ram.view(S.RAM_BASE, 1 << 17).view(np.uint16)
        for entry in (0x1000, 0x1010):
            region = decode_region(ram16, expansion_table(), entry)
            for paged in (False, True):
                for line in AsmCodegen(f"f{k}", entry, paged, region).emit().replace("; ", "\n").splitlines():
                    if not (line.endswith(":") or line.startswith((".", "j"))):
                        lines.add(line)
    return sorted(lines)


def llvm_bytes(lines: list[str]) -> bytes:
    import llvmlite.binding as llvm

    from pocketvm.cpu.tier1.translator import QUICK, ObjectCompiler

    llvm.initialize_native_asmparser()  # (pocketvm itself never has LLVM assemble text)
    asm = [".text", ".intel_syntax noprefix", ".globl f", ".type f,@function", "f:", *lines, ".att_syntax prefix"]
    text = f'target triple = "{llvm.get_process_triple()}"\n' + "".join(f'module asm "{a}"\n' for a in asm)
    obj = ObjectCompiler()._tm[QUICK].emit_object(llvm.parse_assembly(text))
    return codeheap.parse(bytes(obj)).data


def ours(lines: list[str]) -> bytes:
    asm = x86.Assembler()
    for line in lines:
        asm.line(line)
    return asm.finish()


def test_every_line_asmgen_writes_is_encoded_as_llvm_encodes_it() -> None:
    lines = generated_lines()
    assert len(lines) > 500
    if ours(lines) != llvm_bytes(lines)[: len(ours(lines))]:
        wrong = [line for line in lines if ours([line]) != llvm_bytes([line])[: len(ours([line]))]]
        pytest.fail(f"{len(wrong)} lines encoded otherwise than by LLVM, e.g. {wrong[:5]}")


@pytest.mark.parametrize(
    "line", ["mov rax, qword ptr [rbp + rsp]", "vaddps ymm0, ymm1, ymm2", "push rbx", "add rax, 1 << 40", "jmp .Lnowhere", "jxx .Lf",
             "movabs rax, 1x", "mov r10, \u0661\u0662"]
)
def test_anything_else_is_refused(line: str) -> None:
    with pytest.raises(x86.AsmError):
        x86.assemble(f"f:\n{line}")


def test_the_object_holds_its_functions_where_the_code_heap_finds_them() -> None:
    code, functions = x86.assemble(".p2align 4\n.globl a\na:\nret\n.size a, .-a\n.p2align 4\n.globl b\nb:\ncqo\nret\n.size b, .-b")
    image = codeheap.parse(x86.relocatable_object(code, functions))
    assert image.functions == {"a": 0, "b": 16} and image.relocations == []
    assert image.data[:1] == b"\xc3" and image.data[16:19] == b"\x48\x99\xc3"


def test_a_region_the_assembler_refuses_is_compiled_through_llvm(monkeypatch: pytest.MonkeyPatch) -> None:
    from pocketvm.cpu.tier1 import translator

    hart = make_hart(Setup(programs.edge_program(programs.EDGE_CASES["op-base"][:4])), "off")
    region = decode_region(hart.ram.view(S.RAM_BASE, 1 << 17).view(np.uint16), expansion_table(), 0x1000)
    monkeypatch.setattr(translator.AsmCodegen, "emit", lambda self: f"{self.name}:\npush rbx")
    times = translator.CompileTimes()
    obj = translator.ObjectCompiler().compile([("f0", 0x1000, False, region)], times)
    assert times.assembled == 0 and "f0" in codeheap.parse(obj).functions


def test_a_line_in_use_is_parsed_once_while_one_off_lines_come_and_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(x86, "_ENCODED_MAX", 16)
    monkeypatch.setattr(x86, "_ENCODED", {})
    monkeypatch.setattr(x86, "_ENCODED_OLD", {})
    parsed: list[str] = []
    instruction = x86.Assembler._instruction
    monkeypatch.setattr(x86.Assembler, "_instruction", lambda self, m, ops: (parsed.append(m), instruction(self, m, ops)))
    common, want_common = "mov rax, qword ptr [rdi + 80]", b"\x48\x8b\x47\x50"
    for n in range(200):  # a dozen turn-overs of the memo
        code, _ = x86.assemble(f"f:\n{common}\nadd rax, {1000 + n}\n{common}")
        assert code == want_common + b"\x48\x05" + (1000 + n).to_bytes(4, "little") + want_common
    assert parsed.count("mov") == 1 and parsed.count("add") == 200
    assert len(x86._ENCODED) + len(x86._ENCODED_OLD) <= 2 * 16
