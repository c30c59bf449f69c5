"""The manager: many sandbox VMs on one host, with limits.

One VM is one process running an ordinary `pocket run|restore` command line
(see spawn.py). The manager adds what a service needs around them:

- a cap on the number of VMs, a time-to-live after which a VM is killed and
  its disks discarded, host memory and CPU limits (limits.py);
- a record of its VMs in a state file, so a restarted manager finds the VMs
  that still run (adopting them, time-to-live included) and reaps what the
  others left behind (disk copies, cgroups, sockets);
- pause, resume, snapshot (the VM's control socket) and metrics (/proc).

Thread-safe: the REST server calls it from worker threads, the Python API
from the caller's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketvm import control
from pocketvm.backends.upload_window import window_path
from pocketvm.manager import limits as L
from pocketvm.manager import spawn
from pocketvm.manager.spec import BUSYBOX, MiB, SpecError, VMSpec

log = logging.getLogger(__name__)

STATE_FILE = "vms.json"
READY_TIMEOUT = 120.0  # a boot (not a restore) of the BusyBox guest with a cold CPU core
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class ManagerError(Exception):
    """A request the manager refuses; `status` is the HTTP status that fits."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ManagerError):
    status = 404


class LimitReached(ManagerError):
    status = 429


class Conflict(ManagerError):
    status = 409


@dataclass
class ManagedVM:
    name: str
    spec: VMSpec
    argv: list[str]
    pid: int = 0
    pid_start: int | None = None
    how: str = ""
    created: float = field(default_factory=time.time)
    expires: float | None = None  # wall-clock time
    disk_dir: Path | None = None
    log_path: Path | None = None
    applied: L.Applied = field(default_factory=lambda: L.Applied("none"))
    limits: L.HostLimits | None = None
    state: str = "starting"  # starting, running, paused, deleting, exited
    ended_because: str = ""
    failure: str = ""  # why it ended before it was ready (its one-line error)
    exit_code: int | None = None
    vsock: str | None = None
    display: str | None = None  # the URL of its screen and console page
    proc: spawn.VMProcess | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name, "spec": self.spec.as_dict(), "argv": self.argv, "pid": self.pid,
            "pid_start": self.pid_start, "how": self.how, "created": self.created, "expires": self.expires,
            "disk_dir": str(self.disk_dir) if self.disk_dir else None,
            "log_path": str(self.log_path) if self.log_path else None, "applied": self.applied.as_dict(),
            "vsock": self.vsock, "display": self.display,
        }  # fmt: skip

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> ManagedVM:
        return cls(
            name=str(r["name"]), spec=VMSpec.from_dict(r["spec"]), argv=list(r["argv"]), pid=int(r["pid"]),
            pid_start=r.get("pid_start"), how=str(r.get("how", "")), created=float(r["created"]),
            expires=r.get("expires"), disk_dir=Path(r["disk_dir"]) if r.get("disk_dir") else None,
            log_path=Path(r["log_path"]) if r.get("log_path") else None,
            applied=L.Applied.from_dict(r.get("applied") or {}), vsock=r.get("vsock"), display=r.get("display"),
        )  # fmt: skip


class Manager:
    def __init__(self, home: Path, max_vms: int = 8, use_launcher: bool = True, persist: bool = True,
                 default_ttl: float | None = None, cgroups: L.Cgroups | None = None,
                 run_as: str | None = None):  # fmt: skip
        """`home`: where the state file, the VMs' logs and disk copies go.
        `persist`: keep a state file (a manager that may be restarted); the
        Python API's in-process manager does not. `run_as`: a manager started
        as root has its VM processes become this user before their guests run."""
        if run_as is not None:
            from pocketvm.machine import VMError
            from pocketvm.manager.harden import run_as as check_user

            try:
                check_user(run_as)
            except VMError as e:
                raise ManagerError(str(e), 400) from None
        self.run_as = run_as
        self.home = home
        self.max_vms = max_vms
        self.use_launcher = use_launcher
        self.persist = persist
        self.default_ttl = default_ttl
        self.cgroups = cgroups if cgroups is not None else L.Cgroups()
        self._lock = threading.RLock()
        self._vms: dict[str, ManagedVM] = {}
        self._closed = False
        self.recovered: dict[str, list[str]] = {"found": [], "reaped": []}
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (home / "logs").mkdir(exist_ok=True)
        (home / "disks").mkdir(exist_ok=True)
        if persist:
            self._recover()
        self._ttl_thread = threading.Thread(target=self._expire_loop, name="manager-ttl", daemon=True)
        self._ttl_thread.start()

    # --- the state file --------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.home / STATE_FILE

    def _save(self) -> None:
        if not self.persist:
            return
        with self._lock:
            data = {"version": 1, "pid": os.getpid(),
                    "vms": [vm.record() for vm in self._vms.values() if vm.pid and vm.state != "exited"]}  # fmt: skip
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.state_path)

    def _recover(self) -> None:
        """Find the VMs an earlier manager left running, reap what the others left."""
        try:
            data = json.loads(self.state_path.read_text())
            records = data["vms"] if isinstance(data, dict) else []
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable state file %s: %s", self.state_path, e)
            return
        for r in records:
            try:
                vm = ManagedVM.from_record(r)
            except (KeyError, TypeError, ValueError):
                continue
            if spawn.start_time(vm.pid) == vm.pid_start and vm.pid_start is not None and self._answers(vm.name):
                vm.proc = spawn.adopt(vm.pid)
                vm.state = "running"
                self._vms[vm.name] = vm
                self._watch(vm)
                self.recovered["found"].append(vm.name)
            else:
                self._cleanup(vm)
                self.recovered["reaped"].append(vm.name)
        self._save()

    @staticmethod
    def _answers(name: str) -> bool:
        try:
            control.request(name, {"cmd": "info"}, timeout=2.0)
            return True
        except control.ControlError:
            return False

    # --- create ----------------------------------------------------------------------
    def create(self, spec: VMSpec) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise ManagerError("the manager is shutting down", 503)
            running = sum(1 for v in self._vms.values() if v.state != "exited")
            if running >= self.max_vms:
                raise LimitReached(f"at most {self.max_vms} VMs may run at once (delete one first)")
            name = spec.name or self._fresh_name()
            if name in self._vms or control.socket_path(name).exists() and self._answers(name):
                raise Conflict(f"a VM named {name!r} already exists")
            vm = ManagedVM(name, spec, [])
            self._vms[name] = vm  # holds the name and a place under the cap
        try:
            self._start(vm)
        except BaseException:
            with self._lock:
                self._vms.pop(name, None)
            raise
        return self.describe(vm)

    def _fresh_name(self) -> str:
        for _ in range(100):
            name = f"sb-{secrets.token_hex(4)}"
            if name not in self._vms and not control.socket_path(name).exists():
                return name
        raise ManagerError("cannot find a free VM name")

    def _start(self, vm: ManagedVM) -> None:
        spec = vm.spec
        ttl = spec.ttl if spec.ttl is not None else self.default_ttl
        vm.disk_dir = self.home / "disks" / vm.name
        vm.log_path = self.home / "logs" / f"{vm.name}.log"
        vm.log_path.unlink(missing_ok=True)
        vm.argv, guest_memory = self._command(vm)
        vm.limits = L.HostLimits(spec.host_memory or guest_memory + L.MONITOR_MARGIN, spec.cpu_share)
        proc = spawn.start(vm.argv, vm.log_path, self.cgroups.rlimits(vm.limits), self.cgroups.nice(vm.limits),
                           self.use_launcher)  # fmt: skip
        vm.proc, vm.pid, vm.how = proc, proc.pid, proc.how
        vm.pid_start = spawn.start_time(proc.pid)
        vm.expires = time.time() + ttl if ttl else None
        self._watch(vm)
        self._save()  # recorded at once: a manager that dies now still knows the process
        # The limits go on while the VM restores (a few ms of cgroup writes
        # the create would otherwise wait for); the create waits for both.
        failed: list[OSError] = []

        def limit() -> None:
            try:
                vm.applied = self.cgroups.apply(vm.name, vm.pid, vm.limits)  # type: ignore[arg-type]
            except OSError as e:
                failed.append(e)

        limiter = threading.Thread(target=limit, name=f"limit-{vm.name}", daemon=True)
        limiter.start()
        try:
            self._wait_ready(vm)
        finally:
            limiter.join()
            if vm.done.is_set():  # it ended (and was cleaned up) before its groups were made
                L.remove(vm.applied)
            if failed:
                log.warning("VM %s: cannot apply %s limits: %s", vm.name, self.cgroups.mechanism, failed[0])
                self._kill(vm)
                raise ManagerError(f"cannot limit the VM with {self.cgroups.mechanism}: {failed[0]}") from None
            self._save()

    def _command(self, vm: ManagedVM) -> tuple[list[str], int]:
        """The `pocket` command line for the VM, and its guest RAM in bytes."""
        argv, memory = self._command_for(vm)
        return argv + (["--user", self.run_as] if self.run_as is not None else []), memory

    def _command_for(self, vm: ManagedVM) -> tuple[list[str], int]:
        spec = vm.spec
        nic = self._nic(spec)
        if spec.source == "image" and spec.target == BUSYBOX:
            memory = spec.memory or 512 * MiB
            argv = ["run", "--name", vm.name, "--memory", f"{memory // MiB}M", "--cpus", str(spec.cpus or 1)]
            if spec.display:
                argv += ["--display", "web", "--display-size", spec.display]
            return argv + (["--nic", nic] if nic else []), memory
        if spec.source == "image":
            snap = self._image_template(spec)
        else:
            snap = Path(spec.target)
        manifest = _read_manifest(snap)
        vmcfg = manifest.get("vm", {})
        memory, cpus, nics = int(vmcfg.get("memory", 0)), int(vmcfg.get("cpus", 1)), len(vmcfg.get("nics", []))
        if spec.memory is not None and spec.memory != memory or spec.cpus is not None and spec.cpus != cpus:
            what = f"image {spec.target}'s template" if spec.source == "image" else f"snapshot {snap}"
            raise SpecError(f"{what} has {memory // MiB}M of RAM and {cpus} hart(s); a restore cannot change them "
                            f"(leave memory and cpus out)")  # fmt: skip
        if nic and nics != 1:
            raise SpecError(f"network needs a snapshot with one network interface; {snap} has {nics}")
        argv = ["restore", str(snap), "--name", vm.name, "--discard", "--disk-dir", str(vm.disk_dir)]
        if nics == 1:
            argv += ["--nic", nic or "none"]
        if spec.display is not None:
            argv += ["--display", "web"]
        return argv, memory

    @staticmethod
    def _nic(spec: VMSpec) -> str | None:
        if not spec.network:
            return None
        return ",".join(["user", *(f"allow={a}" for a in spec.allow)])

    @staticmethod
    def _image_template(spec: VMSpec) -> Path:
        from pocketvm.images.debian import load
        from pocketvm.images.errors import ImageError

        try:
            image = load(spec.target)
        except ImageError as e:
            raise SpecError(str(e)) from None
        if image is None:
            raise SpecError(f"no image called {spec.target!r} (build it with `pocket image build debian`; "
                            f"or use image {BUSYBOX!r}, a template or a snapshot)")  # fmt: skip
        if image.template is None:
            raise SpecError(f"image {spec.target!r} has no template (rebuild it with `pocket image build`)")
        return image.template

    def _wait_ready(self, vm: ManagedVM) -> None:
        """Until the VM's control socket answers: it runs. A VM that ends
        first was refused (bad snapshot, ...): its one-line error is ours."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if vm.done.is_set():
                raise ManagerError(vm.failure or f"VM {vm.name} ended before it was ready", 400)
            try:
                info = control.request(vm.name, {"cmd": "info"}, timeout=1.0)
            except control.ControlError:
                info = None
            if info is not None and info.get("pid") == vm.pid and info.get("state") == "running":
                vm.vsock = info.get("vsock")
                vm.display = info.get("display")
                with self._lock:
                    if vm.state == "starting":
                        vm.state = "running"
                return
            if time.monotonic() > deadline:
                self._kill(vm)
                raise ManagerError(f"VM {vm.name} did not start within {READY_TIMEOUT:.0f} s", 504)
            vm.done.wait(0.005 if info is None else 0.02)

    @staticmethod
    def _failure(vm: ManagedVM) -> str:
        try:
            lines = [ln for ln in vm.log_path.read_text(errors="replace").splitlines() if ln.strip()]  # type: ignore[union-attr]
        except OSError:
            lines = []
        errors = [ln.removeprefix("pocket: error: ") for ln in lines if ln.startswith("pocket: error: ")]
        if errors:
            return errors[-1]
        return f"VM {vm.name} ended before it was ready (exit {vm.exit_code})" + (f": {lines[-1]}" if lines else "")

    # --- the end of a VM -------------------------------------------------------------
    def _watch(self, vm: ManagedVM) -> None:
        threading.Thread(target=self._wait_end, args=(vm,), name=f"watch-{vm.name}", daemon=True).start()

    def _wait_end(self, vm: ManagedVM) -> None:
        assert vm.proc is not None
        code = vm.proc.wait()
        with self._lock:
            vm.exit_code = code
            if vm.state == "starting":
                vm.failure = self._failure(vm)
            vm.state = "exited"
            if not vm.ended_because:
                vm.ended_because = "the VM stopped"
            self._cleanup(vm)
            if self._vms.get(vm.name) is vm:
                del self._vms[vm.name]
            vm.done.set()
        self._save()

    def _cleanup(self, vm: ManagedVM) -> None:
        """Everything a VM that has ended leaves behind: its limits, disks, sockets."""
        L.remove(vm.applied)
        for directory in (vm.disk_dir, *self._image_disk_dirs(vm)):
            if directory is not None and directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
        rt = control.socket_path(vm.name)
        if vm.vsock:
            from pocketvm.manager.agent_channel import forget

            forget(Path(vm.vsock))  # connections kept to its agent
        for path in (rt, rt.with_suffix(".vsock"), rt.with_suffix(control.DISKS_SUFFIX)):
            if path.exists() and not (path.suffix in (".sock", ".vsock") and _listening(path)):
                path.unlink(missing_ok=True)
        if vm.vsock and not _listening(Path(vm.vsock)):
            window_path(vm.vsock).unlink(missing_ok=True)
        if vm.log_path is not None:
            vm.log_path.unlink(missing_ok=True)

    @staticmethod
    def _image_disk_dirs(vm: ManagedVM) -> list[Path]:
        if vm.argv[:1] == ["run"] and "--image" in vm.argv:  # a boot of an image keeps its overlay there
            from pocketvm.snapshot.workdisks import default_disk_dir

            return [default_disk_dir(vm.name)]
        return []

    def _kill(self, vm: ManagedVM, grace: float = STOP_GRACE) -> None:
        """End the VM process: SIGTERM (it discards its disks and leaves), then SIGKILL."""
        if vm.pid <= 0 or vm.done.is_set():
            return
        if spawn.start_time(vm.pid) != vm.pid_start:
            return  # not our process any more
        try:
            os.kill(vm.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if vm.done.wait(grace) or vm.proc is None:
            return
        try:
            os.kill(vm.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        vm.done.wait(grace)

    # --- requests on one VM ----------------------------------------------------------
    def _get(self, name: str) -> ManagedVM:
        with self._lock:
            vm = self._vms.get(name)
        if vm is None or vm.state == "exited":
            raise NotFound(f"no VM named {name!r}")
        return vm

    def get(self, name: str) -> dict[str, Any]:
        return self.describe(self._get(name))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            vms = [v for v in self._vms.values() if v.state != "exited"]
        return [self.describe(v) for v in sorted(vms, key=lambda v: v.created)]

    def delete(self, name: str, because: str = "deleted") -> dict[str, Any]:
        vm = self._get(name)
        with self._lock:
            if not vm.ended_because:
                vm.ended_because = because
            vm.state = "deleting"
        if vm.proc is not None and vm.proc.how == "launcher":
            pass  # the launcher's connection is closed by the watcher once the process is gone
        self._kill(vm)
        if not vm.done.wait(STOP_GRACE):
            raise ManagerError(f"VM {name} (pid {vm.pid}) did not end", 500)
        return {"name": name, "deleted": True, "exit_code": vm.exit_code, "reason": vm.ended_because}

    def pause(self, name: str) -> dict[str, Any]:
        return self._control_state(name, "pause")

    def resume(self, name: str) -> dict[str, Any]:
        return self._control_state(name, "resume")

    def _control_state(self, name: str, cmd: str) -> dict[str, Any]:
        vm = self._get(name)
        reply = self._request(vm, {"cmd": cmd})
        with self._lock:
            if vm.state in ("running", "paused"):
                vm.state = str(reply.get("state", vm.state))
        return self.describe(vm)

    def snapshot(self, name: str, directory: str) -> dict[str, Any]:
        if not isinstance(directory, str) or not os.path.isabs(directory):
            raise ManagerError("snapshot needs an absolute directory path", 400)
        vm = self._get(name)
        reply = self._request(vm, {"cmd": "snapshot", "dir": directory, "stop": False}, timeout=None)
        reply.pop("ok", None)
        return reply

    def _request(self, vm: ManagedVM, req: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
        try:
            return control.request(vm.name, req, timeout=timeout)
        except control.ControlError as e:
            if vm.done.is_set():
                raise NotFound(f"VM {vm.name!r} has ended") from None
            raise ManagerError(str(e), 409) from None

    def metrics(self, name: str) -> dict[str, Any]:
        from pocketvm.manager.metrics import process_metrics

        vm = self._get(name)
        out: dict[str, Any] = {"name": name, "state": vm.state, **process_metrics(vm.pid)}
        try:
            info = control.request(name, {"cmd": "info"}, timeout=2.0)
            out["guest_uptime"] = info.get("guest_uptime")
        except control.ControlError:
            out["guest_uptime"] = None
        cg = L.read_back(vm.applied)
        if "memory_current" in cg:
            out["cgroup_memory_bytes"] = cg["memory_current"]
        return out

    def vsock_path(self, name: str) -> Path:
        vm = self._get(name)
        if vm.state == "paused":
            raise Conflict(f"VM {name} is paused: resume it first")
        if not vm.vsock:
            raise ManagerError(f"VM {name} has no vsock device", 409)
        return Path(vm.vsock)

    def env(self, name: str) -> dict[str, str]:
        return dict(self._get(name).spec.env)

    def is_gone(self, name: str) -> bool:
        with self._lock:
            vm = self._vms.get(name)
        return vm is None or vm.done.is_set()

    def describe(self, vm: ManagedVM) -> dict[str, Any]:
        spec = vm.spec
        now = time.time()
        return {
            "name": vm.name,
            "state": vm.state,
            "pid": vm.pid,
            "source": {spec.source: spec.target},
            "memory": spec.memory,
            "cpus": spec.cpus,
            "network": spec.network,
            "allow": spec.allow,
            "env": sorted(spec.env),
            "created": vm.created,
            "expires": vm.expires,
            "ttl_left": None if vm.expires is None else max(0.0, round(vm.expires - now, 1)),
            "vsock": vm.vsock,
            "display": vm.display,
            "limits": {
                "mechanism": vm.applied.mechanism,
                "host_memory": vm.limits.memory if vm.limits else None,
                "cpu_share": vm.limits.cpu_share if vm.limits else None,
                "groups": vm.applied.groups,
                **L.read_back(vm.applied),
            },
        }

    # --- time-to-live ----------------------------------------------------------------
    def _expire_loop(self) -> None:
        while not self._closed:
            now = time.time()
            with self._lock:
                due = [v.name for v in self._vms.values()
                       if v.expires is not None and v.expires <= now and v.state in ("running", "paused")]  # fmt: skip
            for name in due:
                try:
                    self.delete(name, because="time-to-live expired")
                except ManagerError as e:
                    log.warning("expiring %s: %s", name, e)
            time.sleep(0.2)

    # --- shutdown --------------------------------------------------------------------
    def close(self, keep_running: bool = False) -> None:
        """Stop managing. VMs are deleted, unless `keep_running` (a restart:
        VMs in processes of their own stay, and the next manager finds them;
        launched ones end with the launcher connection)."""
        with self._lock:
            self._closed = True
            vms = list(self._vms.values())
        if keep_running:
            for vm in vms:
                if vm.proc is not None:
                    vm.proc.release()
            return
        for vm in vms:
            try:
                self.delete(vm.name, because="the manager stopped")
            except ManagerError as e:
                log.warning("%s", e)
        self._save()


def _listening(path: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _read_manifest(snap: Path) -> dict[str, Any]:
    try:
        data = json.loads((snap / "manifest.json").read_text())
    except FileNotFoundError:
        raise SpecError(f"{snap}: not a snapshot (no manifest.json)") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{snap}: unreadable snapshot manifest: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{snap}: unreadable snapshot manifest")
    return data
