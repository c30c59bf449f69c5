"""The decorator every function of the CPU core is compiled with.

numba's runtime (NRT) reference-counts arrays: a call from one compiled
function to another that is not inlined brackets each array argument with an
atomic increment and decrement of its refcount. The core passes the state and
RAM arrays to its helpers on every memory access, and those atomic
operations took about 70% of the run time. The core never allocates an array
(it only indexes arrays the host owns and keeps alive for the call), so it
is compiled without NRT (`_nrt=False`, numba's flag for code that needs no
runtime). Anything that would need NRT, such as creating an array, then
fails at compile time rather than at run time.

`error_model="numpy"`: integer division by zero does not raise (the ALU
checks divisors itself, as RISC-V defines those results), so numba emits no
zero test and no exception path after each division.
"""

from __future__ import annotations

from functools import partial

from numba import njit

core_jit = partial(njit, cache=True, _nrt=False, error_model="numpy")
