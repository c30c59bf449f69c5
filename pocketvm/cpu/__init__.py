"""The software CPU: an RV64GC hart compiled to machine code by numba.

numba's on-disk cache is keyed by each function's own source file only, so a
change in a helper module would leave a stale compiled core behind. The cache
directory is therefore named after a digest of every module in this package
and of the sub-package modules the core compiles in (not the translator
itself, which runs on the host side: changing it needs no recompilation).
Modules the core never compiles (`hart`, this file) are left out too, so
editing them does not send every user of the tree through a recompile.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

from pocketvm.paths import cache_dir


_COMPILED_SUBMODULES = ("tier1/layout.py", "tier1/native_call.py", "tier1/fp_helper.py")
_HOST_SIDE = ("__init__.py", "hart.py")


def _source_digest() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    here = Path(__file__).parent
    compiled = [p for p in sorted(here.glob("*.py")) if p.name not in _HOST_SIDE]
    for path in compiled + [here / name for name in _COMPILED_SUBMODULES]:
        h.update(str(path.relative_to(here)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(cache_dir() / "numba" / _source_digest())


if numba.config.DISABLE_JIT:
    # Interpreted for debugging, the core's int64 arithmetic runs on numpy
    # scalars, where RISC-V's intended two's-complement wrap-around would
    # otherwise warn on every overflowing add or multiply.
    import numpy

    numpy.seterr(over="ignore")
