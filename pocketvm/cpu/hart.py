"""A hart as the rest of pocketvm sees it: state arrays plus run()."""

from __future__ import annotations

import numpy as np

from pocketvm.cpu import native
from pocketvm.cpu import state as S
from pocketvm.cpu.rvc import expansion_table
from pocketvm.cpu.tier1 import layout as L
from pocketvm.memory import GuestRAM


class Hart:
    def __init__(
        self, hart_id: int, ram: GuestRAM, sh: np.ndarray, st: np.ndarray | None = None, jit: str | None = None
    ):
        """`jit`: "off", "on" or "all" (every block, for testing); None = $POCKETVM_JIT, default off."""
        self.id = hart_id
        self.ram = ram
        self.sh = sh
        self.st = st if st is not None else S.new_hart_state(hart_id)
        self._f64 = self.st.view(np.float64)
        self._f32 = self.st.view(np.float32)
        self._ram32 = ram.u32
        self._ram64 = ram.u8.view(np.int64)
        self._ctab = expansion_table()
        mode = L.mode_from_env() if jit is None else L.MODES[jit]
        self._native = native.loaded()
        if self._native is None:
            from pocketvm.cpu.jit import numba

            if numba().config.DISABLE_JIT:
                mode = 0  # interpreted core (debugging): it cannot call native code
        self.tier1 = None
        if mode != L.MODE_OFF:  # (the engine imports the translator and llvmlite: only when needed)
            from pocketvm.cpu.tier1 import engine

            self.tier1 = engine.tier1_for(ram, mode)
        self._jt = self.tier1.table if self.tier1 is not None else L.OFF_TABLE
        self._bound: tuple[np.ndarray, ...] = ()  # the arrays the prebuilt core's arguments point into
        self._args: tuple[int, ...] = ()

    def _core(self, released: bool, budget: int) -> int:
        """One run() of the core: the prebuilt one (`native`) if loaded, else numba's."""
        core = self._native
        if core is None:
            from pocketvm.cpu.core import run, run_released

            return int(
                (run_released if released else run)(
                    self.st, self._f64, self._f32, self.sh, self.ram.u8, self.ram.u16, self._ram32, self._ram64,
                    self._ctab, budget, self._jt,
                )
            )
        b = self._bound
        if not b or b[0] is not self.st or b[1] is not self.sh or b[2] is not self.ram.u8 or b[4] is not self._jt:
            self._bind()
        return int((core.run_released if released else core.run)(*self._args, budget))

    def _bind(self) -> None:
        """The prebuilt core's arguments: the arrays' addresses and lengths, checked (it indexes them unchecked)."""
        st, sh, ram, ctab, jt = self.st, self.sh, self.ram.u8, self._ctab, self._jt
        for a, dtype in ((st, np.int64), (sh, np.int64), (ram, np.uint8), (ctab, np.int32), (jt, np.int64)):
            if a.dtype != dtype or a.ndim != 1 or not a.flags.c_contiguous:
                raise ValueError(f"the CPU core cannot take a {a.dtype} array of shape {a.shape} there")
        if st.shape[0] != S.STATE_SIZE or ctab.shape[0] != 65536 or jt.shape[0] != L.TABLE_SIZE or ram.shape[0] % 8:
            raise ValueError("the CPU core's arrays do not have the sizes it was built for")
        self._bound = (st, sh, ram, ctab, jt)
        self._args = (st.ctypes.data, sh.ctypes.data, sh.shape[0], ram.ctypes.data, ram.shape[0],
                      ctab.ctypes.data, jt.ctypes.data)

    def run_released(self, budget: int) -> int:
        """The core's entry that lets go of the GIL, without tier 1's servicing (for preloading it)."""
        return self._core(True, budget)

    def run(self, budget: int) -> int:
        if self.tier1 is None:
            return self._core(False, budget)
        # With tier 1 the core lets go of the GIL, so the compiler thread works meanwhile.
        jt = self._jt
        tier1 = self.tier1
        if not tier1.started:  # code the persistent cache has runs from the first instruction
            tier1.start(self.ram.u16)
        left = budget
        while True:
            before = int(self.sh[S.SH_SLICE_INSNS])
            reason = self._core(True, left)
            tier1.hart_stats.retired += int(self.sh[S.SH_SLICE_INSNS]) - before
            tier1.service(self.ram.u16, self._ctab)
            left = int(jt[L.JT_LEFT])
            if left <= 0:
                return reason
            # Stopped early for a translation (mode "all"): go on with the rest.
            jt[L.JT_LEFT] = 0

    # --- register access for loaders, debuggers and tests ------------------
    @property
    def pc(self) -> int:
        return int(self.st[S.PC])

    @pc.setter
    def pc(self, value: int) -> None:
        self.st[S.PC] = np.int64(np.uint64(value & (2**64 - 1)).view(np.int64))

    def x(self, i: int) -> int:
        return int(self.st[S.X + i]) & (2**64 - 1)

    def set_x(self, i: int, value: int) -> None:
        if i:
            self.st[S.X + i] = np.int64(np.uint64(value & (2**64 - 1)).view(np.int64))

    @property
    def priv(self) -> int:
        return int(self.st[S.PRIV])

    def complete_mmio_load(self, value: int) -> None:
        """Write the result of an MMIO load exit into its destination register."""
        size = int(self.st[S.EXIT_SIZE])
        rd_flags = int(self.st[S.EXIT_RD])
        value &= (1 << (8 * size)) - 1
        if rd_flags & 256 and value >> (8 * size - 1):
            value -= 1 << (8 * size)
        self.set_x(rd_flags & 31, value)

    def raise_access_fault(self, store: bool) -> None:
        """An MMIO exit hit no device: trap as the hardware would have."""
        from pocketvm.cpu.trap import take_trap

        cause = S.CAUSE_STORE_ACCESS if store else S.CAUSE_LOAD_ACCESS
        epc = self.st[S.EXIT_PC]
        self.st[S.PC] = take_trap(self.st, cause, self.st[S.EXIT_VADDR], epc, False)
