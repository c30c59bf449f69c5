"""The guest programs again, with tier 1 translating every block at once.

Mode "all" (threshold 1) sends each block to the translator the first time
it is entered and runs it translated from then on, so nearly everything a
program does after its first pass goes through translated code, and every
place where translated code hands back to the interpreter (traps, device
accesses, TLB misses, SYSTEM instructions) is crossed many times. The output
must still be QEMU's, byte for byte. (To run the *whole* suite this way:
POCKETVM_JIT=all pytest tests/cpu tests/guest.)
"""

from __future__ import annotations

from pathlib import Path

import guest_harness as harness
import pytest

PROGRAMS = sorted(harness.build.program_sources())
randgen = harness.sibling("randgen")
RANDOM_CASES = [(seed, 1000, True) for seed in (1, 2, 3, 4)] + [(100, 1000, False), (200, 5000, True)]
RAND_DIR = harness.build.BUILD_DIR / "rand"

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("name", PROGRAMS)
def test_translated_matches_qemu(name: str, guest_program: Path) -> None:
    expected = harness.run_qemu(guest_program)
    actual = harness.run_pocketvm(guest_program, jit="all")
    diff = harness.difference(expected, actual)
    assert diff is None, f"{name}:\n{diff}"


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[f"seed{s}-n{n}" for s, n, _ in RANDOM_CASES])
def test_translated_random_program_matches_qemu(case) -> None:
    elf = harness.build.build_source(randgen.write(case[0], RAND_DIR, case[1], case[2]), RAND_DIR)
    diff = harness.difference(harness.run_qemu(elf), harness.run_pocketvm(elf, jit="all"))
    assert diff is None, f"{elf.with_suffix('.S')}:\n{diff}"
