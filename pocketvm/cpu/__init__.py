"""The software CPU: an RV64GC hart compiled to machine code by numba.

numba's on-disk cache is keyed by each function's own source file only, so a
change in a helper module would leave a stale compiled core behind. The cache
directory is therefore named after a digest of every module in this package
and of the sub-package modules the core compiles in (not the translator
itself, which runs on the host side: changing it needs no recompilation).
Modules the core never compiles (`hart`, `native`, this file) are left out
too, so editing them does not send every user of the tree through a
recompile. Nothing here imports numba: a VM that runs the prebuilt core
(`native`) never does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from pocketvm.paths import cache_dir

_COMPILED_SUBMODULES = ("tier1/layout.py", "tier1/native_call.py", "tier1/fp_helper.py")
_HOST_SIDE = ("__init__.py", "hart.py", "native.py")


def numba_version() -> bytes:
    """numba's version file, read without importing numba (~0.2 s)."""
    spec = importlib.util.find_spec("numba")
    if spec is None or not spec.submodule_search_locations:
        return b"no numba"
    try:
        return (Path(list(spec.submodule_search_locations)[0]) / "_version.py").read_bytes()
    except OSError:
        return b"numba version unknown"


def source_digest() -> str:
    """Digest of numba's version and every module the compiled core is made from."""
    h = hashlib.sha256(numba_version())
    here = Path(__file__).parent
    compiled = [p for p in sorted(here.glob("*.py")) if p.name not in _HOST_SIDE]
    for path in compiled + [here / name for name in _COMPILED_SUBMODULES]:
        h.update(str(path.relative_to(here)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def numba_cache_dir() -> Path:
    """Where numba caches the core (and `rvc` its expansion table): $NUMBA_CACHE_DIR, else per digest."""
    given = os.environ.get("NUMBA_CACHE_DIR")
    return Path(given) if given else cache_dir() / "numba" / source_digest()
