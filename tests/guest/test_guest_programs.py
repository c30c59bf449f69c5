"""Each guest program: its own checks pass under QEMU, and pocketvm prints
exactly what QEMU prints and exits with the same code."""

from __future__ import annotations

from pathlib import Path

import guest_harness as harness
import pytest

PROGRAMS = sorted(harness.build.program_sources())

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("name", PROGRAMS)
def test_self_checks_pass_under_qemu(name: str, guest_program: Path) -> None:
    result = harness.run_qemu(guest_program)
    problems = harness.self_check_problems(result)
    assert not problems, f"{name} under QEMU:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", PROGRAMS)
def test_pocketvm_matches_qemu(name: str, guest_program: Path) -> None:
    elf = guest_program
    expected = harness.run_qemu(elf)
    actual = harness.run_pocketvm(elf)
    diff = harness.difference(expected, actual)
    assert diff is None, f"{name}:\n{diff}"
