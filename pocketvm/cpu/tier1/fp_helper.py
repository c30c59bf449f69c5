"""The FPU as a C function that translated code calls.

Floating-point arithmetic keeps its exact semantics (rounding modes, flags,
NaN boxing) by running the interpreter's own `fp_execute` for it; this wraps
it as a C callable, `int64 fp_entry(int64 *st, int64 insn)`, returning 0 or
1 for an illegal encoding (nothing changed then).
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, types

from pocketvm.cpu.fpu import fp_execute
from pocketvm.cpu.state import STATE_SIZE


@cfunc(types.int64(types.CPointer(types.int64), types.int64), cache=True)
def fp_entry(stp, insn):
    st = carray(stp, (STATE_SIZE,))
    return fp_execute(st, st.view(np.float64), st.view(np.float32), insn)


def fp_entry_address() -> int:
    return fp_entry.address
