"""Random instruction sequences (randgen.py): the final register and memory
state under pocketvm must equal QEMU's."""

from __future__ import annotations

from pathlib import Path

import guest_harness as harness
import pytest

randgen = harness.sibling("randgen")

# (seed, groups, with F/D): many medium programs, a few integer-only ones
# (no FP state at all) and a few long ones.
CASES = (
    [(seed, 1000, True) for seed in range(1, 25)]
    + [(seed, 1000, False) for seed in (100, 101)]
    + [(seed, 5000, True) for seed in (200, 201)]
)
IDS = [f"seed{s}-n{n}{'' if fp else '-nofp'}" for s, n, fp in CASES]
RAND_DIR = harness.build.BUILD_DIR / "rand"

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def random_programs() -> dict[tuple[int, int, bool], Path]:
    return {
        case: harness.build.build_source(randgen.write(case[0], RAND_DIR, case[1], case[2]), RAND_DIR)
        for case in CASES
    }


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_runs_cleanly_under_qemu(case, random_programs) -> None:
    result = harness.run_qemu(random_programs[case])
    problems = harness.self_check_problems(result)
    assert not problems, "\n".join(problems)
    assert result.text().count("\nf31 = ") == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pocketvm_matches_qemu(case, random_programs) -> None:
    elf = random_programs[case]
    diff = harness.difference(harness.run_qemu(elf), harness.run_pocketvm(elf))
    assert diff is None, f"{elf.with_suffix('.S')}:\n{diff}"
