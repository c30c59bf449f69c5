"""The suite's own machinery: building, the random generator, the
reference model of gen_vectors.py, and the harness's verdicts."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import guest_harness as harness
import pytest

build = harness.build
randgen = harness.sibling("randgen")
vectors = harness.sibling("gen_vectors")

SMALL_PROGRAM = '#include "rt.h"\nint main(void) { pr("hi %d\\n", 42); finish(); }\n'


# --- build ---------------------------------------------------------------------
def test_build_is_incremental(tmp_path: Path) -> None:
    src = tmp_path / "small.c"
    src.write_text(SMALL_PROGRAM)
    out = tmp_path / "out"
    elf = build.build_source(src, out)
    first = elf.stat().st_mtime_ns
    assert build.build_source(src, out) == elf
    assert elf.stat().st_mtime_ns == first, "rebuilt although nothing changed"
    later = first + 5_000_000_000
    os.utime(src, ns=(later, later))
    build.build_source(src, out)
    assert elf.stat().st_mtime_ns != first, "not rebuilt after the source changed"


def test_elf_is_linked_at_ram_base(tmp_path: Path) -> None:
    src = tmp_path / "small.c"
    src.write_text(SMALL_PROGRAM)
    data = build.build_source(src, tmp_path / "out").read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    machine, _, entry = struct.unpack_from("<HIQ", data, 18)
    assert machine == 243  # EM_RISCV
    assert entry == 0x8000_0000


def test_compile_error_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return undefined_thing; }\n")
    with pytest.raises(build.BuildError, match="undefined_thing"):
        build.build_source(src, tmp_path / "out")


def test_missing_compiler_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "CC", "no-such-cross-gcc")
    with pytest.raises(build.BuildError, match="not found"):
        build.build_all()


def test_every_program_source_is_listed() -> None:
    names = set(build.program_sources())
    assert {"alu", "rv64i", "amo", "rvc", "zicsr", "traps", "priv", "vm", "fp", "cprog", "plic"} <= names
    assert "rt" not in names and "crt0" not in names


# --- randgen ---------------------------------------------------------------------
def test_randgen_is_deterministic() -> None:
    assert randgen.generate(7, 200) == randgen.generate(7, 200)
    assert randgen.generate(7, 200) != randgen.generate(8, 200)
    assert "fadd" not in randgen.generate(7, 300, fp=False)


def _groups(text: str) -> dict[str, int]:
    """label -> index of the group it starts."""
    labels = re.findall(r"^\.Lg(\d+):", text, re.M)
    return {f".Lg{i}": int(i) for i in labels}


def test_randgen_control_flow_goes_forward_only() -> None:
    text = randgen.generate(3, 600)
    groups = _groups(text)
    current = -1
    targets = 0
    for line in text.splitlines():
        m = re.match(r"^\.Lg(\d+):", line)
        if m:
            current = int(m.group(1))
            continue
        for label in re.findall(r"\.L(?:g\d+|end)\b", line):
            targets += 1
            if label != ".Lend":
                assert groups[label] > current, f"backward target in group {current}: {line}"
    assert targets > 20


def test_randgen_never_writes_sp_or_gp() -> None:
    text = randgen.generate(5, 2000)
    block = text.split(".Lg0:", 1)[1].split(".Lend:", 1)[0]
    for line in block.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith((".", "s", "fs", "c.s", "c.fs", "b", "c.b", "j", "c.j", "fence")):
            continue  # stores, branches, jumps (which link into rd, checked below)
        rd = parts[1].rstrip(",")
        assert rd not in ("x2", "x3", "sp", "gp"), line
    for m in re.finditer(r"\bjalr? (x\d+),", block):
        assert m.group(1) not in ("x2", "x3")


def test_randgen_covers_the_isa() -> None:
    mnemonics = set()
    for seed in range(3):
        for line in randgen.generate(seed, 500).splitlines():
            if line.startswith("    ") and not line.strip().startswith("."):
                mnemonics.add(line.split()[0])
    for m in ["mulhsu", "remuw", "sraiw", "amomaxu.d", "lr.w", "c.addi4spn", "c.ldsp", "c.fsd",
              "fmadd.d", "fcvt.lu.s", "fclass.s", "fsgnjx.d", "jalr", "bgeu", "csrrci", "lwu"]:
        assert any(x == m or x.startswith(m + ".") for x in mnemonics), m


# --- the Python reference model behind alu.c / amo.c ---------------------------------
def test_vector_model_edge_cases() -> None:
    ops = vectors.RR_OPS
    m64 = vectors.M64
    neg1 = m64
    int_min = 1 << 63
    assert ops["div"](int_min, neg1) & m64 == int_min
    assert ops["rem"](int_min, neg1) & m64 == 0
    assert ops["div"](5, 0) & m64 == neg1
    assert ops["remu"](5, 0) & m64 == 5
    assert ops["divw"](0x80000000, neg1) & m64 == 0xFFFFFFFF80000000
    assert ops["remuw"](0x1_8000_0000, 0) & m64 == 0xFFFFFFFF80000000
    assert ops["div"](neg1 - 6, 2) & m64 == (-3) & m64  # -7 / 2 rounds towards zero
    assert ops["rem"](neg1 - 6, 2) & m64 == neg1  # -7 % 2 = -1
    assert ops["mulhsu"](neg1, neg1) & m64 == neg1
    assert ops["sraw"](0x80000000, 31) & m64 == neg1
    assert ops["sll"](1, 64 + 3) & m64 == 8  # only the low 6 bits of the amount


def test_generated_header_is_well_formed() -> None:
    text = vectors.generate()
    n = len(vectors.VALUES)
    for op in vectors.RR_OPS:
        assert f"static const u64 EXP_{op}[{n * n}]" in text
    assert text.count("amo_") > 9 * 2 * 4


# --- harness verdicts ------------------------------------------------------------------
def _r(text: str, code: int = 0, runner: str = "a") -> harness.RunResult:
    return harness.RunResult(code, text.encode(), runner)


def test_difference_none_when_equal() -> None:
    assert harness.difference(_r("x\nPASS\n"), _r("x\nPASS\n", runner="b")) is None


def test_difference_points_at_first_differing_line() -> None:
    d = harness.difference(_r("a\nb\nc\n", runner="qemu"), _r("a\nB\nc\n", runner="pocketvm"))
    assert d is not None and "line 2" in d and "'b\\n'" in d and "'B\\n'" in d


def test_difference_reports_exit_codes_and_truncation() -> None:
    d = harness.difference(_r("a\nPASS\n", 0), _r("a\n", 3))
    assert d is not None and "exit code" in d and "<end>" in d


def test_self_check_problems() -> None:
    assert harness.self_check_problems(_r("ok\nPASS\n")) == []
    assert harness.self_check_problems(_r("FAIL x\nFAILED 1 checks\n", 1))
    assert harness.self_check_problems(_r("PASS\n", 3))
    assert harness.self_check_problems(_r("no verdict\n"))


@pytest.mark.qemu
def test_qemu_results_are_cached(tmp_path: Path) -> None:
    src = tmp_path / "small.c"
    src.write_text(SMALL_PROGRAM)
    elf = build.build_source(src, tmp_path / "out")
    first = harness.run_qemu(elf, use_cache=False)
    assert first.output == b"hi 42\nPASS\n" and first.exit_code == 0
    cached = harness.run_qemu(elf)
    assert cached.runner == "qemu(cached)"
    assert (cached.output, cached.exit_code) == (first.output, first.exit_code)


@pytest.mark.qemu
def test_qemu_exit_code_comes_from_the_test_device(tmp_path: Path) -> None:
    src = tmp_path / "fails.c"
    src.write_text('#include "rt.h"\nint main(void) { CHECK("x", 1, 2); finish(); }\n')
    result = harness.run_qemu(build.build_source(src, tmp_path / "out"), use_cache=False)
    assert result.exit_code == 1
    assert harness.self_check_problems(result)
