"""The CPU benchmark programs compute the same results in pocketvm and QEMU.

benchmarks/cpu.py only reports speed when both agree; this keeps the
programs (and the fast paths they exercise: the inlined TLB hit path under
Sv39 in S-mode, RAM loads and stores, the FPU) honest in the normal suite.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("pocketvm_cpu_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


bench = _bench_module()


@pytest.mark.parametrize("name", sorted(bench.PROGRAMS))
def test_benchmark_program_matches_qemu(name, tmp_path):
    for tool in (bench.CROSS + "gcc", bench.QEMU):
        assert shutil.which(tool), f"{tool} is needed"
    elf = bench.build(name, 1, tmp_path)
    instructions, _, pocket_line = bench.run_pocketvm(elf)
    _, qemu_line = bench.run_qemu(elf, 1)
    assert pocket_line.startswith("result 0x")
    assert pocket_line == qemu_line
    assert instructions > 10_000_000  # long enough to be a benchmark
