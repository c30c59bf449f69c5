"""Host limits for one VM process: memory and CPU share.

Where the host lets this process manage cgroups, each VM gets a cgroup of its
own below the manager's: cgroup v2 (`memory.max`, `cpu.max`, `pids.max`) when
the unified hierarchy has the controllers, else the v1 `memory` and `cpu`
hierarchies (`memory.limit_in_bytes`, `cpu.cfs_quota_us`). The VM's group is
created inside the manager's own group, the one place a process may manage
(delegation), so limits nest under whatever the host set for the manager.

Otherwise the fallback is rlimits, applied in the VM process: RLIMIT_DATA
caps its private writable mappings. RLIMIT_AS would be wrong: numba and LLVM
reserve large address ranges they never touch. Guest RAM is one private
mapping counted whole at mmap time, even though the host commits it lazily,
so RLIMIT_DATA = guest RAM + the monitor's own margin never stops the guest,
only host-side growth beyond it. A CPU share has no rlimit: the VM gets a
niceness instead.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_DIR = "pocketvm"  # below the manager's own cgroup
MONITOR_MARGIN = 512 << 20  # the monitor itself: Python, numba, LLVM, device buffers
CFS_PERIOD_US = 100_000


@dataclass
class HostLimits:
    """What one VM process may use on the host."""

    memory: int  # bytes: guest RAM + the monitor's margin
    cpu_share: float  # host CPUs (0.5 = half of one core); 0: no limit
    pids: int = 64  # the monitor's threads; it never forks


@dataclass
class Applied:
    """Where the limits of one VM live, so they can be read back and removed."""

    mechanism: str  # "cgroup2", "cgroup1", "rlimit"
    groups: list[str] = field(default_factory=list)  # cgroup directories

    def as_dict(self) -> dict[str, object]:
        return {"mechanism": self.mechanism, "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Applied:
        groups = d.get("groups") or []
        return cls(str(d.get("mechanism", "rlimit")), [str(g) for g in groups] if isinstance(groups, list) else [])


def _own_groups() -> dict[str, str]:
    """controller name ("" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroups:
    """Decides once which mechanism this host allows, then applies it per VM."""

    def __init__(self, root: Path = CGROUP_ROOT):
        self.root = root
        self.mechanism, self._bases = self._probe()

    def _probe(self) -> tuple[str, dict[str, Path]]:
        own = _own_groups()
        v2 = self._v2_base(own.get(""))
        if v2 is not None:
            return "cgroup2", {"": v2}
        v1 = self._v1_bases(own)
        if v1:
            return "cgroup1", v1
        return "rlimit", {}

    def _v2_base(self, own: str | None) -> Path | None:
        if own is None or not (self.root / "cgroup.controllers").exists():
            return None  # no unified hierarchy at the root (a hybrid host mounts it at unified/)
        here = self.root / own.lstrip("/")
        base = here / GROUP_DIR
        try:
            if not {"memory", "cpu"} <= set((here / "cgroup.controllers").read_text().split()):
                return None
            base.mkdir(exist_ok=True)
            # Controllers reach a child only through its parent's subtree_control;
            # a group with processes of its own cannot hand them on (EBUSY),
            # except the root.
            _write(here / "cgroup.subtree_control", "+memory +cpu +pids")
            _write(base / "cgroup.subtree_control", "+memory +cpu +pids")
        except OSError as e:
            log.info("cgroup v2 not usable at %s: %s", here, e)
            return None
        return base

    def _v1_bases(self, own: dict[str, str]) -> dict[str, Path]:
        bases: dict[str, Path] = {}
        for controller in ("memory", "cpu", "pids"):
            mount = self.root / controller
            if controller not in own or not (mount / "cgroup.procs").exists():
                continue
            base = mount / own[controller].lstrip("/") / GROUP_DIR
            try:
                base.mkdir(exist_ok=True)
                probe = base / f".probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError as e:
                log.info("cgroup v1 %s not usable at %s: %s", controller, base, e)
                continue
            bases[controller] = base
        return bases if "memory" in bases else {}

    # --- per VM ---------------------------------------------------------------
    def rlimits(self, limits: HostLimits) -> dict[str, tuple[int, int]]:
        """The rlimits a VM process starts with (all mechanisms: a second line of defence)."""
        return {"RLIMIT_DATA": (limits.memory, limits.memory)} if self.mechanism == "rlimit" else {}

    def nice(self, limits: HostLimits) -> int:
        """Niceness for the VM when no cgroup can share the CPU out."""
        if self.mechanism != "rlimit" or not limits.cpu_share:
            return 0
        return 10 if limits.cpu_share < 1 else 5

    def apply(self, name: str, pid: int, limits: HostLimits) -> Applied:
        """Put process `pid` (VM `name`) under `limits`; raises OSError if a group cannot be made."""
        if self.mechanism == "cgroup2":
            group = self._bases[""] / name
            group.mkdir(exist_ok=True)
            _write(group / "memory.max", str(limits.memory))
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", "0")
            if limits.cpu_share:
                _write(group / "cpu.max", f"{int(limits.cpu_share * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            _write(group / "pids.max", str(limits.pids))
            _write(group / "cgroup.procs", str(pid))
            return Applied("cgroup2", [str(group)])
        if self.mechanism == "cgroup1":
            groups = []
            for controller, base in self._bases.items():
                group = base / name
                group.mkdir(exist_ok=True)
                if controller == "memory":
                    _write(group / "memory.limit_in_bytes", str(limits.memory))
                    try:  # what it used before the move counts here too (deprecated, may be gone)
                        _write(group / "memory.move_charge_at_immigrate", "3")
                    except OSError:
                        pass
                elif controller == "cpu" and limits.cpu_share:
                    _write(group / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                    _write(group / "cpu.cfs_quota_us", str(int(limits.cpu_share * CFS_PERIOD_US)))
                elif controller == "pids":
                    _write(group / "pids.max", str(limits.pids))
                _write(group / "cgroup.procs", str(pid))
                groups.append(str(group))
            return Applied("cgroup1", groups)
        try:
            for name_, value in self.rlimits(limits).items():
                resource.prlimit(pid, getattr(resource, name_), value)
        except (ProcessLookupError, PermissionError):
            pass  # already set by the launcher, or the process is gone
        return Applied("rlimit")


def remove(applied: Applied) -> None:
    """Delete a VM's cgroups once its process has ended (an empty group only)."""
    for group in applied.groups:
        path = Path(group)
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                log.warning("cgroup %s still has processes", path)
            else:
                log.warning("cannot remove cgroup %s: %s", path, e)


def read_back(applied: Applied) -> dict[str, int | str]:
    """The limits as the kernel holds them (for `GET /vms/{id}` and the tests)."""
    out: dict[str, int | str] = {}
    for group in map(Path, applied.groups):
        for key, file in (("memory_max", "memory.max"), ("memory_max", "memory.limit_in_bytes"),
                          ("cpu_max", "cpu.max"), ("cpu_quota_us", "cpu.cfs_quota_us"),
                          ("memory_current", "memory.current"), ("memory_current", "memory.usage_in_bytes"),
                          ("pids_max", "pids.max")):  # fmt: skip
            try:
                text = (group / file).read_text().strip()
            except OSError:
                continue
            out[key] = int(text) if text.lstrip("-").isdigit() else text
    return out

