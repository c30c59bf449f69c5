"""The code heap: translated code is copied into executable memory, and
what it cannot take (objects that need linking) is refused, for MCJIT."""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import pytest

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1.codeheap import CodeHeap, UnsupportedObject, parse
from pocketvm.cpu.tier1.decode import decode_region
from pocketvm.cpu.tier1.translator import GOOD, QUICK, CompileTimes, ObjectCompiler, init_llvm
from pocketvm.cpu.rvc import expansion_table
from pocketvm.memory import GuestRAM

A0, A1, A2 = 10, 11, 12


def _object(ir: str) -> bytes:
    """An object from LLVM IR, made by a target machine set up as the translator's."""
    init_llvm()
    tm = llvm.Target.from_default_triple().create_target_machine(jit=True)
    mod = llvm.parse_assembly(f'target triple = "{llvm.get_process_triple()}"\n{ir}')
    return bytes(tm.emit_object(mod))


def _call(address: int, *args: int) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, *[ctypes.c_int64] * len(args))(address)(*args)


def test_objects_of_functions_alone_are_copied_and_run():
    heap = CodeHeap()
    first = heap.load(_object("define i64 @twice(i64 %x) {\n  %y = mul i64 %x, 2\n  ret i64 %y\n}\n"))
    second = heap.load(
        _object("define i64 @pick(i64 %x) {\n  %c = icmp sgt i64 %x, 10\n  %r = select i1 %c, i64 100, i64 7\n  ret i64 %r\n}\n")
    )
    assert _call(first["twice"], 21) == 42
    assert _call(second["pick"], 11) == 100 and _call(second["pick"], 3) == 7
    assert heap.bytes > 0


def test_constants_beside_the_code_are_placed_and_relocated():
    """LLVM puts some FP constants in .rodata.cst8, which the code addresses
    absolutely (R_X86_64_64): both are copied, the address patched."""
    obj = _object("define double @f(double %x) {\n  %y = fmul double %x, 1.2345678\n  %z = fadd double %y, 0.1\n  ret double %z\n}\n")
    image = parse(obj)
    assert image.relocations, "no constant pool: the test proves nothing"
    heap = CodeHeap()
    heap.load(_object("define i64 @one() {\n  ret i64 1\n}\n"))  # (not at the start of the heap)
    f = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(heap.load(obj)["f"])
    assert f(2.0) == 2.0 * 1.2345678 + 0.1


def test_code_is_executable_and_never_writable_once_loaded():
    heap = CodeHeap()
    address = heap.load(_object("define i64 @one() {\n  ret i64 1\n}\n"))["one"]
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                assert perms.startswith("r-x"), line
                break
        else:
            pytest.fail("the code is not mapped")


@pytest.mark.parametrize(
    "ir, why",
    [
        ("@g = global i64 5\ndefine i64 @f() {\n  %v = load i64, ptr @g\n  ret i64 %v\n}\n", "writable"),
        ("declare i64 @elsewhere()\ndefine i64 @f() {\n  %v = call i64 @elsewhere()\n  ret i64 %v\n}\n", "relocated code|outside symbol"),
    ],
)
def test_an_object_that_needs_linking_is_refused(ir: str, why: str):
    with pytest.raises(UnsupportedObject, match=why):
        parse(_object(ir))


@pytest.mark.parametrize("damage", [lambda o: b"", lambda o: o[:100], lambda o: b"\x7fELF" + b"\xff" * 60, lambda o: o[:-200]])
def test_a_damaged_object_is_refused_not_a_crash(damage):
    obj = _object("define i64 @one() {\n  ret i64 1\n}\n")
    with pytest.raises(UnsupportedObject):
        CodeHeap().load(damage(obj))


@pytest.mark.parametrize("tier", [QUICK, GOOD])
def test_the_translators_objects_need_no_linking(tier: int):
    """Loads, stores (the inline TLB), branches, a loop, an FP operation and an
    AMO, compiled as the service compiles them: the heap takes them."""
    ram = GuestRAM(1 << 20)
    code = [  # (riscv64-linux-gnu-as -march=rv64g)
        0x00053583,  # 1: ld a1, 0(a0)
        0x00158593,  # addi a1, a1, 1
        0x00B53023,  # sd a1, 0(a0)
        0x00B536AF,  # amoadd.d a3, a1, (a0)
        0xD225F053,  # fcvt.d.l ft0, a1 (dynamic rounding)
        0x02007053,  # fadd.d ft0, ft0, ft0
        0xFFF60613,  # addi a2, a2, -1
        0xFE0612E3,  # bnez a2, 1b
        0x0000006F,  # 2: j 2b
    ]
    for i, insn in enumerate(code):
        ram.write_int(S.RAM_BASE + 4 * i, 4, insn)
    region = decode_region(ram.u16, expansion_table(), 0)
    obj = ObjectCompiler().compile([("f0", 0, True, region)], CompileTimes(), tier)
    assert set(parse(obj).functions) == {"f0"}


def test_a_refused_object_is_linked_by_mcjit_instead():
    hart = Hart(0, GuestRAM(1 << 20), S.new_shared_state(1), jit="all")
    tier1 = hart.tier1
    assert tier1 is not None
    tier1._link([_object("@g = global i64 5\ndefine i64 @f() {\n  %v = load i64, ptr @g\n  ret i64 %v\n}\n")])
    assert tier1._mcjit is not None and _call(tier1._address("f")) == 5
    assert "linked by MCJIT" in tier1.report()
    tier1.close()
