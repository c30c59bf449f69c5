"""The developer's perf map names numba functions compiled in this process."""

from __future__ import annotations

import types
from pathlib import Path

from numba import njit

from pocketvm.perfmap import dispatcher_symbols


def test_a_function_compiled_here_is_named_at_its_address(tmp_path: Path) -> None:
    mod = types.ModuleType("fake")

    @njit
    def twice(x):  # type: ignore[no-untyped-def]
        return 2 * x

    assert twice(21) == 42
    mod.twice = twice  # type: ignore[attr-defined]
    [(address, size, name)] = dispatcher_symbols({"fake": mod}, tmp_path)
    ov = next(iter(twice.overloads.values()))
    assert address == ov.library.get_pointer_to_function(ov.fndesc.llvm_func_name)
    assert size > 0 and name == "fake.twice"
    assert (tmp_path / "fake.twice.o").read_bytes()[:4] == b"\x7fELF"
