"""A virtual machine: configuration -> board -> run loop -> exits.

The run loop is the monitor's half of the KVM_RUN-style contract: it runs each
hart for a slice, services the exit (an MMIO access goes to the device that
owns the address), keeps guest time moving, feeds console input, and sleeps
when every hart waits for an interrupt.

Other threads (the control socket) never touch the machine while it runs:
they `submit()` a function, which the run loop calls between two slices,
when every hart is stopped at an instruction boundary and no device is in
the middle of a request. That is how a VM is paused for a snapshot.
"""

from __future__ import annotations

import logging
import mmap
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from pocketvm.board import memmap as mm
from pocketvm.cpu import native
from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout
from pocketvm.devices.clint import Clint
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.plic import Plic, hart_irq_setter
from pocketvm.devices.rtc import GoldfishRtc
from pocketvm.devices.testdev import TestDevice
from pocketvm.devices.uart import Uart16550
from pocketvm.devices.vmgenid import VmGenId
from pocketvm.guestprof import SAMPLE_EVERY, GuestProfiler
from pocketvm.memory import GuestRAM

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MEMORY = 512 * MiB
MIN_MEMORY = 16 * MiB
SLICE = 200_000  # instructions per run() call
TICKS_PER_NS = mm.TIMEBASE_FREQUENCY / 1e9
PANIC_MARKER = b"Kernel panic - not syncing"


class VMError(Exception):
    """A user-facing, one-line error (bad configuration, unusable file)."""


@dataclass
class DiskSpec:
    path: Path
    readonly: bool = False
    format: str | None = None  # "raw" or "qcow2"; None: recognised by content


@dataclass
class NicSpec:
    """A virtio network interface and what it is connected to."""

    kind: str = "user"  # user-mode NAT: 10.0.2.15 behind the host, like QEMU's -nic user
    forwards: list[tuple[str, int, int]] = field(default_factory=list)  # (proto, host port, guest port)
    allow: list[str] | None = None  # "A.B.C.D[:PORT]": the only destinations the guest may reach

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "forwards": [list(f) for f in self.forwards]}
        if self.allow is not None:
            d["allow"] = list(self.allow)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NicSpec:
        allow = d.get("allow")
        return cls(str(d["kind"]), [(str(p), int(h), int(g)) for p, h, g in d.get("forwards", [])],
                   [str(a) for a in allow] if isinstance(allow, list) else None)


@dataclass
class VsockSpec:
    """A virtio-vsock device; its host side is the Unix socket `path`
    (None: `NAME.vsock` in the runtime directory, beside the control socket)."""

    cid: int = 3
    path: Path | None = None
    upload_window: int = 0  # bytes; 0: none (see backends/upload_window.py)


@dataclass
class DisplaySpec:
    """A virtio-gpu screen of this size, with a virtio keyboard and tablet."""

    width: int = 1024
    height: int = 768


@dataclass
class VMConfig:
    memory: int = DEFAULT_MEMORY
    cpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    bios: Path | None = None  # None: bare metal, the kernel is started in M-mode
    append: str = ""
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    display: DisplaySpec | None = None
    vsock: VsockSpec | None = None
    rng: bool = True
    deterministic: bool = False
    name: str = ""
    jit: str | None = None  # tier 1: "off" | "on" | "all"; None = `layout.vm_default_mode()`


@dataclass
class ExitStatus:
    code: int
    reason: str  # "poweroff", "fail", "panic", "quit", "limit", "fault"
    message: str = ""


class Console(Protocol):
    quit_requested: bool
    interactive: bool

    def take(self) -> bytes: ...

    def has_input(self) -> bool: ...

    def write(self, data: bytes) -> None: ...


class Bus:
    """Routes physical addresses outside RAM to devices."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, Any]] = []

    def add(self, base: int, size: int, device: Any) -> None:
        self._ranges.append((base, base + size, device))

    def find(self, addr: int) -> tuple[Any, int] | None:
        for start, end, dev in self._ranges:
            if start <= addr < end:
                return dev, addr - start
        return None


class VirtualMachine:
    def __init__(self, config: VMConfig, console: Console, ram_backing: mmap.mmap | None = None):
        """`ram_backing`: a mapping to use as guest RAM (a restored snapshot's
        private copy-on-write mapping) instead of fresh zeroed memory."""
        self.config = config
        self.console = console
        if config.memory < MIN_MEMORY or config.memory % (4096) != 0:
            raise VMError(f"memory must be a multiple of 4 KiB and at least {MIN_MEMORY // MiB} MiB")
        if not 1 <= config.cpus <= 8:
            raise VMError("cpus must be between 1 and 8")
        if ram_backing is not None and len(ram_backing) < config.memory:
            raise VMError("RAM backing is smaller than the VM's memory")
        self.ram = GuestRAM(config.memory, backing=ram_backing)
        # Byte ranges of RAM whose content comes from the backing file (its
        # data extents): a snapshot must read them even if never touched.
        self.ram_file_ranges: list[tuple[int, int]] = []
        self.sh = S.new_shared_state(config.cpus)
        self.sh[S.SH_DETERMINISTIC] = 1 if config.deterministic else 0
        try:
            jit = config.jit if config.jit is not None else layout.MODE_NAMES[layout.vm_default_mode()]
        except ValueError as e:  # a misspelt $POCKETVM_JIT
            raise VMError(str(e)) from None
        self.harts = [Hart(i, self.ram, self.sh, jit=jit) for i in range(config.cpus)]
        log.info("%s", native.describe())
        self._start_ns = time.monotonic_ns()
        self._tick_offset = 0  # added to host-derived ticks (keeps time monotonic across restore)
        self._console_tail = b""
        self.panicked = False
        self.profiler = GuestProfiler.from_env()
        # Calls from other threads, run between slices (see submit()).
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._calls_lock = threading.Lock()  # only between submit() and the end of run()
        self._stop_status: ExitStatus | None = None
        self._ended = False
        # Set by whatever has news for an idle VM: console input, network frames.
        self.io_event: threading.Event = getattr(console, "event", None) or threading.Event()
        self.disks: list[Any] = []
        self.nics: list[Any] = []
        self.screen: Any = None  # the display's Screen, with a display
        self.inputs: list[Any] = []  # virtio keyboard and tablet, with a display
        self.vsock: Any = None
        self.upload_window: Any = None  # its DiskImage
        try:
            self._build_devices()
        except BaseException:
            self.close()  # the disks and network backends made before the failure
            raise

    # --- board ---------------------------------------------------------------
    def _build_devices(self) -> None:
        cfg = self.config
        self.bus = Bus()
        self.plic = Plic(cfg.cpus, hart_irq_setter([h.st for h in self.harts]))
        self.clint = Clint(self.sh)
        self.uart = Uart16550(self.plic.irq_line(mm.IRQ_UART), self._console_output)
        self.rtc = GoldfishRtc(self.plic.irq_line(mm.IRQ_RTC))
        self.testdev = TestDevice()
        self.vmgenid = VmGenId(self.plic.irq_line(mm.IRQ_VMGENID))
        self.bus.add(mm.TEST_BASE, mm.TEST_SIZE, self.testdev)
        self.bus.add(mm.VMGENID_BASE, mm.VMGENID_SIZE, self.vmgenid)
        self.bus.add(mm.RTC_BASE, mm.RTC_SIZE, self.rtc)
        self.bus.add(mm.CLINT_BASE, mm.CLINT_SIZE, self.clint)
        self.bus.add(mm.PLIC_BASE, mm.PLIC_SIZE, self.plic)
        self.bus.add(mm.UART_BASE, mm.UART_SIZE, self.uart)
        self.uart.attach_to_core(self.sh, mm.UART_BASE)
        self.clint.attach_to_core(mm.CLINT_BASE)
        self.virtio: list[Any] = []
        from pocketvm.devices.virtio_mmio import VirtioMmio

        backends: list[Any] = []
        for spec in cfg.disks:
            backends.append(self._make_disk(spec))
        for i, nic in enumerate(cfg.nics):
            self.nics.append(self._make_nic(i, nic))
        backends += self.nics
        if cfg.display is not None:
            backends += self._make_display(cfg.display)
        if cfg.rng:
            from pocketvm.devices.virtio_rng import VirtioRng

            backends.append(VirtioRng())
        if cfg.vsock is not None:
            self.vsock = self._make_vsock(cfg.vsock)
            backends.append(self.vsock)
            if cfg.vsock.upload_window and len(backends) >= mm.VIRTIO_SLOTS:
                # Uploads then stream through vsock; the VM is as it was asked for otherwise.
                log.info("no virtio slot left for the upload window: uploads go through vsock")
                cfg.vsock.upload_window = 0  # what a snapshot records
            if cfg.vsock.upload_window:
                backends.append(self._make_upload_window(cfg.vsock.upload_window))
        if len(backends) > mm.VIRTIO_SLOTS:
            raise VMError(f"at most {mm.VIRTIO_SLOTS} virtio devices")
        for slot in range(mm.VIRTIO_SLOTS):
            dev = backends[slot] if slot < len(backends) else None
            transport = VirtioMmio(self.ram, self.plic.irq_line(mm.IRQ_VIRTIO_FIRST + slot), dev)
            self.virtio.append(transport)
            self.bus.add(mm.VIRTIO_BASE + slot * mm.VIRTIO_STRIDE, mm.VIRTIO_STRIDE, transport)
        self.virtio_slots = list(range(len(backends)))
        if self.vsock is not None:
            self.vsock.host.attach(self._wake_io)  # its thread starts only once nothing else can fail

    def _make_nic(self, index: int, spec: NicSpec) -> Any:
        from pocketvm.devices.virtio_net import VirtioNet, default_mac

        if spec.kind == "none":  # a card with its cable out (a template's NIC when no network was asked for)
            from pocketvm.backends.net import DisconnectedNet

            return VirtioNet(DisconnectedNet(), default_mac(index), link_up=False)
        if spec.kind != "user":
            raise VMError(f"unknown network kind {spec.kind!r} (supported: user)")
        from pocketvm.backends.net_user import UserNet

        try:
            backend = UserNet(host_forwards=spec.forwards, allow=spec.allow)
        except OSError as e:
            raise VMError(f"network interface {index}: {e.strerror or e}") from None
        except ValueError as e:
            raise VMError(f"network interface {index}: {e}") from None
        device = VirtioNet(backend, default_mac(index))
        backend.attach(self._wake_io)  # its thread starts only once nothing else can fail
        return device

    def _make_vsock(self, spec: VsockSpec) -> Any:
        from pocketvm.backends.vsock_unix import VsockHostError, VsockUnixHost
        from pocketvm.devices.virtio_vsock import MAX_GUEST_CID, MIN_GUEST_CID, VirtioVsock
        from pocketvm.paths import runtime_dir

        if not MIN_GUEST_CID <= spec.cid <= MAX_GUEST_CID:
            raise VMError(f"vsock guest CID must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}")
        path = spec.path
        if path is None:
            if not self.config.name:
                raise VMError("a vsock device needs a socket path or a VM name")
            path = runtime_dir() / f"{self.config.name}.vsock"
        try:
            return VirtioVsock(VsockUnixHost(path), spec.cid)
        except VsockHostError as e:
            raise VMError(str(e)) from None

    def _make_upload_window(self, size: int) -> Any:
        from pocketvm.backends import upload_window
        from pocketvm.backends.disk import DiskError
        from pocketvm.devices.virtio_blk import VirtioBlk

        try:
            image = upload_window.create(upload_window.window_path(self.vsock.host.path), size)
        except (DiskError, ValueError) as e:
            raise VMError(str(e)) from None
        self.upload_window = image
        return VirtioBlk(image, serial=upload_window.SERIAL)

    def _make_display(self, spec: DisplaySpec) -> list[Any]:
        from pocketvm.backends.display.screen import Screen
        from pocketvm.devices.virtio_gpu import VirtioGpu
        from pocketvm.devices.virtio_input import keyboard, tablet

        try:
            self.screen = Screen(spec.width, spec.height)
        except ValueError as e:
            raise VMError(str(e)) from None
        self.inputs = [keyboard(), tablet()]
        for dev in self.inputs:
            dev.wake = self._wake_io  # events come from the viewer's thread
        return [VirtioGpu(self.screen), *self.inputs]

    def _make_disk(self, spec: DiskSpec) -> Any:
        from pocketvm.backends.disk import DiskError
        from pocketvm.backends.open_disk import open_disk
        from pocketvm.devices.virtio_blk import VirtioBlk

        try:
            image = open_disk(spec.path, readonly=spec.readonly, fmt=spec.format)
        except DiskError as e:
            raise VMError(str(e)) from None
        self.disks.append(image)
        return VirtioBlk(image)

    def devices(self) -> dict[str, Any]:
        """Every device with state, by a stable name (for snapshots)."""
        named: dict[str, Any] = {
            "plic": self.plic,
            "clint": self.clint,
            "uart": self.uart,
            "rtc": self.rtc,
            "test": self.testdev,
            "vmgenid": self.vmgenid,
        }
        for i, t in enumerate(self.virtio):
            named[f"virtio{i}"] = t
        return named

    # --- boot ----------------------------------------------------------------
    def load_boot_files(self) -> None:
        from pocketvm.board.boot import prepare_boot
        from pocketvm.board.errors import BootError

        cfg = self.config
        if cfg.kernel is None:
            raise VMError("no kernel given")
        try:
            plan = prepare_boot(
                self.ram, cfg.cpus, cfg.kernel, cfg.bios, cfg.initrd, cfg.append, self.virtio_slots
            )
        except BootError as e:
            raise VMError(str(e)) from None
        for hart, start in zip(self.harts, plan.harts):
            start.apply(hart.st)
        self.boot_plan = plan

    # --- time ----------------------------------------------------------------
    def host_ticks(self) -> int:
        return int((time.monotonic_ns() - self._start_ns) * TICKS_PER_NS) + self._tick_offset

    def guest_time(self) -> int:
        """Current mtime: never less than any value a hart has already read."""
        self._refresh_time()
        last = max(int(h.st[S.TIME_LAST]) for h in self.harts)
        return max(int(self.sh[S.SH_MTIME]), last)

    def set_guest_time(self, ticks: int) -> None:
        """Continue guest time from `ticks` (a restored snapshot's mtime).

        In deterministic mode time is a function of the instructions run,
        kept whole in `sh`; rebasing it would shift every later tick.
        """
        self._start_ns = time.monotonic_ns()
        self._tick_offset = ticks
        if self.sh[S.SH_DETERMINISTIC]:
            return
        self.sh[S.SH_MTIME] = max(ticks, int(self.sh[S.SH_MTIME]))
        self.sh[S.SH_TIME_BASE] = self.sh[S.SH_MTIME]
        self.sh[S.SH_SLICE_INSNS] = 0

    def exclude_pause(self, nanoseconds: int) -> None:
        """Hide a pause of the VM from guest time: the guest's clock stood still."""
        self._start_ns += max(0, nanoseconds)

    def _refresh_time(self) -> None:
        if self.sh[S.SH_DETERMINISTIC]:
            return
        now = self.host_ticks()
        cur = int(self.sh[S.SH_MTIME])
        # Interpolation inside a slice may have run ahead of the host clock;
        # time never goes backwards, so only move the base forward.
        if now > cur:
            self.sh[S.SH_MTIME] = now
        self.sh[S.SH_TIME_BASE] = int(self.sh[S.SH_MTIME])
        self.sh[S.SH_SLICE_INSNS] = 0

    def _next_timer_deadline(self) -> int:
        cmps = [int(self.sh[S.SH_MTIMECMP + h.id]) for h in self.harts]
        cmps = [c for c in cmps if c >= 0]
        return min(cmps) if cmps else (1 << 62)

    # --- console ------------------------------------------------------------
    def _console_output(self, data: bytes) -> None:
        self.console.write(data)
        tail = self._console_tail + data
        if PANIC_MARKER in tail:
            self.panicked = True
        self._console_tail = tail[-len(PANIC_MARKER) :]

    def _guest_reads_console(self) -> bool:
        # Linux's 8250 driver drains the receiver at probe and the tty layer
        # drops what arrives before the port is opened; the port is open once
        # the driver enables the receive interrupt. Bare-metal programs poll.
        return self.config.bios is None or bool(self.uart.ier & 1)

    def _pump_input(self) -> None:
        if self._input_deliverable():
            self.uart.feed(self.console.take())

    # --- calls from other threads ---------------------------------------------
    def submit(self, fn: Callable[[], Any]) -> Future:
        """Have the run loop call `fn()` between two slices; its result or
        exception ends up in the returned future. Thread-safe."""
        fut: Future = Future()
        with self._calls_lock:
            if self._ended:
                fut.set_exception(VMError("the VM has stopped"))
            else:
                self._calls.append((fn, fut))
        return fut

    def request_stop(self, status: ExitStatus) -> None:
        """End run() with `status` (from a submitted call) once the call returns."""
        self._stop_status = status

    def _service_calls(self) -> ExitStatus | None:
        while self._calls:
            fn, fut = self._calls.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # the caller gets it; the VM keeps running
                fut.set_exception(e)
        status, self._stop_status = self._stop_status, None
        return status

    def _end_calls(self) -> None:
        with self._calls_lock:
            self._ended = True
            while self._calls:
                _, fut = self._calls.popleft()
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(VMError("the VM stopped before it could do that"))

    # --- run loop -------------------------------------------------------------
    def run(self, max_instructions: int | None = None) -> ExitStatus:
        self._ended = False
        try:
            return self._run(max_instructions)
        finally:
            self._end_calls()

    def _run(self, max_instructions: int | None) -> ExitStatus:
        from pocketvm.cpu.trap import current_mip

        harts = self.harts
        sh = self.sh
        bus = self.bus
        testdev = self.testdev
        executed = 0  # instructions retired, and trap steps: a guest trapping forever retires none
        panic_deadline: float | None = None
        profiler = self.profiler
        budget = SLICE if profiler is None else SAMPLE_EVERY
        self._refresh_time()
        while True:
            all_idle = True
            for hart in harts:
                st = hart.st
                if st[S.WFI_FLAG]:
                    if (current_mip(st, sh) & st[S.CSR + S.CSR_MIE]) == 0:
                        continue
                    st[S.WFI_FLAG] = 0
                all_idle = False
                before = int(sh[S.SH_SLICE_INSNS])
                reason = hart.run(budget)
                if sh[S.SH_SINK_LEN]:
                    self.uart.drain()
                # A slice that used its whole budget took it in instructions
                # and traps (each trap counts against the budget, see core.run).
                executed += budget if reason == S.EXIT_SLICE else int(sh[S.SH_SLICE_INSNS]) - before
                if profiler is not None and reason == S.EXIT_SLICE:
                    profiler.note(st)
                if reason == S.EXIT_MMIO_LOAD or reason == S.EXIT_MMIO_STORE:
                    self._mmio(hart, reason, bus)
                    if testdev.request is not None:
                        status = self._finish_request()
                        if status is not None:
                            return status
            if self._calls:
                status = self._service_calls()
                if status is not None:
                    return status
            if self.console.quit_requested:
                return ExitStatus(0, "quit", "console quit (Ctrl-A x)")
            if self.panicked:
                if panic_deadline is None:
                    panic_deadline = time.monotonic() + 0.5  # let the panic message finish printing
                elif time.monotonic() > panic_deadline:
                    return ExitStatus(1, "panic", "the guest kernel panicked")
            if max_instructions is not None and executed >= max_instructions:
                return ExitStatus(124, "limit", f"instruction limit of {max_instructions} reached")
            self._pump_input()
            for nic in self.nics:
                nic.deliver()
            for dev in self.inputs:
                dev.deliver()
            if self.vsock is not None:
                self.vsock.poll()
            self.rtc.poll()
            # Input just fed or an RTC alarm may have raised an interrupt
            # that wakes a hart: then there is no reason to sleep.
            if all_idle and not self._interrupt_wakes_a_hart(current_mip):
                self._idle_wait()
            self._refresh_time()

    def _interrupt_wakes_a_hart(self, current_mip: Callable[[Any, Any], int]) -> bool:
        return any(current_mip(h.st, self.sh) & h.st[S.CSR + S.CSR_MIE] for h in self.harts)

    def _idle_wait(self) -> None:
        if self.sh[S.SH_DETERMINISTIC]:
            # Jump straight to the next timer event.
            deadline = self._next_timer_deadline()
            if deadline < (1 << 62):
                self.sh[S.SH_MTIME] = max(int(self.sh[S.SH_MTIME]), deadline)
                self.sh[S.SH_TIME_BASE] = self.sh[S.SH_MTIME]
                self.sh[S.SH_SLICE_INSNS] = 0
                return
        deadline = self._next_timer_deadline()
        now = self.host_ticks()
        timeout = max(0.0, (deadline - now) / mm.TIMEBASE_FREQUENCY) if deadline < (1 << 62) else 0.05
        rtc_deadline = self.rtc.next_deadline()
        if rtc_deadline is not None:
            timeout = min(timeout, max(0.0, (rtc_deadline - time.time_ns()) / 1e9))
        timeout = min(timeout, 0.05)
        if timeout <= 0:
            return
        # The event says "something arrived since it was cleared". Input the
        # guest does not read yet, or the end of stdin, would leave it set
        # and turn every idle wait into a busy loop: clear it first, then
        # look, then wait.
        self.io_event.clear()
        if self.console.quit_requested or self._input_deliverable():
            return
        if self.nics:
            from pocketvm.cpu.trap import current_mip

            for nic in self.nics:  # frames that arrived before the clear
                nic.deliver()
            if self._interrupt_wakes_a_hart(current_mip) or any(n.wants_attention() for n in self.nics):
                return
        if self.vsock is not None:
            from pocketvm.cpu.trap import current_mip

            self.vsock.poll()  # sockets that became ready before the clear
            if self._interrupt_wakes_a_hart(current_mip) or self.vsock.wants_attention():
                return
            vsock_deadline = self.vsock.next_deadline()
            if vsock_deadline is not None:
                timeout = min(timeout, max(0.0, vsock_deadline - time.monotonic()))
        if self.inputs:
            from pocketvm.cpu.trap import current_mip

            for dev in self.inputs:  # events posted before the clear
                dev.deliver()
            if self._interrupt_wakes_a_hart(current_mip) or any(d.wants_attention() for d in self.inputs):
                return
        self.io_event.wait(timeout)

    def _wake_io(self) -> None:
        self.io_event.set()

    def _input_deliverable(self) -> bool:
        return self.uart.wants_input() and self.console.has_input() and self._guest_reads_console()

    def _mmio(self, hart: Hart, reason: int, bus: Bus) -> None:
        st = hart.st
        addr = int(st[S.EXIT_ADDR])
        size = int(st[S.EXIT_SIZE])
        found = bus.find(addr)
        store = reason == S.EXIT_MMIO_STORE
        if found is None:
            guest_error(log, "hart %d: %s at %#x hits no device", hart.id, "store" if store else "load", addr)
            hart.raise_access_fault(store)
            return
        dev, offset = found
        if store:
            dev.write(offset, size, int(st[S.EXIT_VALUE]) & ((1 << (8 * size)) - 1))
        else:
            hart.complete_mmio_load(dev.read(offset, size))

    def _finish_request(self) -> ExitStatus | None:
        kind, code = self.testdev.request  # type: ignore[misc]
        self.testdev.request = None
        if kind == "poweroff":
            return ExitStatus(0, "poweroff")
        if kind == "fail":
            return ExitStatus(code if code else 1, "fail", f"guest reported failure (code {code})")
        # reset: start over with the same boot files
        try:
            self.reset()
        except VMError as e:  # e.g. a restored VM whose boot files are gone
            return ExitStatus(1, "fault", f"guest reboot failed: {e}")
        return None

    def reset(self) -> None:
        self.ram.u8[:] = 0
        for hart in self.harts:
            hart.st[:] = S.new_hart_state(hart.id)
        self.sh[:] = S.new_shared_state(self.config.cpus)
        self.sh[S.SH_DETERMINISTIC] = 1 if self.config.deterministic else 0
        self._tick_offset = 0
        self._start_ns = time.monotonic_ns()
        for dev in self.devices().values():
            if hasattr(dev, "reset"):
                dev.reset()
        self.load_boot_files()

    def close(self) -> None:
        for d in self.disks:
            d.close()
        for nic in self.nics:
            nic.backend.close()
        if self.vsock is not None:
            self.vsock.close()
        if self.upload_window is not None:
            self.upload_window.close()
            Path(self.upload_window.path).unlink(missing_ok=True)
            self.upload_window = None
        if self.profiler is not None:
            self.profiler.write()
        tier1 = self.harts[0].tier1
        if tier1 is not None:
            tier1.close()
            log.info("%s", tier1.report())


def load_cpu_core(released: bool | None = None) -> None:
    """Load the compiled CPU core now rather than at the first hart.run().

    Loading it from numba's disk cache takes a noticeable fraction of a
    second; `pocket restore` does it in a thread while it checks the
    snapshot. A throwaway hart with a few pages of RAM runs one instruction,
    with arrays of exactly the types a real VM passes, so the real VM finds
    the code loaded. Failures are left for the real run to report.
    `released`: also load the entry without the GIL, which harts with tier 1
    call (None: when VMs have tier 1 on by default, `layout.vm_default_mode`).
    """
    try:
        if released is None:
            released = layout.vm_default_mode() != layout.MODE_OFF
        ram = GuestRAM(16 * 4096)
        sh = S.new_shared_state(1)
        # Tier 1 off even so: its engine starts a service process and a
        # thread, and a process with threads (the launcher) must not fork.
        hart = Hart(0, ram, sh, jit="off")
        hart.st[S.PC] = ram.base  # zeroed RAM: an illegal instruction, trapped
        hart.run(1)
        if released:
            hart.run_released(1)
    except Exception:
        log.debug("preloading the CPU core failed", exc_info=True)


def parse_memory(text: str) -> int:
    """'512M', '1G', '256MiB', '1048576' (bytes) -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if t and t[-1] in units:
            value = int(float(t[:-1]) * units[t[-1]])
        else:
            value = int(t)
            if value < 1 << 20:  # a bare small number means MiB, as in QEMU
                value <<= 20
    except ValueError:
        raise VMError(f"invalid memory size {text!r} (examples: 512M, 1G)") from None
    return value

