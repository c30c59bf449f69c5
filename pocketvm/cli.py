"""`pocket`: the command-line interface.

Heavy modules are imported inside the commands that need them: importing
pocketvm.machine loads numba (a third of a second), which `pocket ls` and
`pocket snapshot` never need, and `pocket restore` loads it in a thread
while it checks the snapshot.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pocketvm.machine import DiskSpec, NicSpec, VMConfig

# cryptomgr.notests: the Debian kernel self-tests every crypto algorithm it
# registers, ~40% of its boot time at emulated speed (6.6 s -> 4.0 s to a
# powered-off guest). The emulated CPU is checked against QEMU by its own
# test suite, and one end-to-end test still boots with the self-tests on.
DEFAULT_APPEND = "console=ttyS0 cryptomgr.notests"
DEFAULT_MEMORY = "512M"  # pocketvm.machine.DEFAULT_MEMORY, spelled for the --help text
MiB = 1 << 20

# Exceptions whose message is meant for the user: (module, class).
_USER_ERRORS = (
    ("pocketvm.machine", "VMError"),
    ("pocketvm.images.errors", "ImageError"),
    ("pocketvm.snapshot.format", "SnapshotError"),
    ("pocketvm.web.attach", "DisplayOptionError"),
    ("pocketvm.web.server", "DisplayServerError"),
    ("pocketvm.control", "ControlError"),
    ("pocketvm.launcher.client", "LauncherError"),
    ("pocketvm.backends.disk", "DiskError"),
    ("pocketvm.manager.core", "ManagerError"),
    ("pocketvm.manager.channel", "GuestError"),
)


def _is_user_error(e: BaseException) -> bool:
    # Looked up among the modules already loaded: an exception of a class
    # whose module was never imported cannot be in flight, and importing it
    # here would cost a light command the load of numba.
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def fail(message: str, code: int = 2) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    click.echo(f"pocket: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns user-facing exceptions from any command into a one-line error."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as e:
            if _is_user_error(e):
                fail(str(e))
            raise

    # `pocket image ...` lives in pocketvm.images, `pocket disk ...` in
    # pocketvm.disk_cli, loaded only when used.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "image", "disk", "serve", "exec", "cp"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "image" and name not in self.commands:
            from pocketvm.images.cli import image

            self.add_command(image)
        if name == "disk" and name not in self.commands:
            from pocketvm.disk_cli import disk

            self.add_command(disk)
        # `pocket serve` in pocketvm.manager, `pocket exec|cp` in pocketvm.api.
        if name == "serve" and name not in self.commands:
            from pocketvm.manager.serve import serve

            self.add_command(serve)
        if name in ("exec", "cp") and name not in self.commands:
            from pocketvm.api.cli import cp, exec_command

            self.add_command(exec_command)
            self.add_command(cp)
        return super().get_command(ctx, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log device and monitor events to stderr.")
def main(verbose: bool) -> None:
    """pocketvm: run RISC-V virtual machines on any host.

    `pocket run` boots the default Debian guest (pulling it first if needed).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR, format="pocket: %(name)s: %(message)s", stream=sys.stderr
    )
    import os

    if os.environ.get("POCKETVM_HARDEN") == "1":  # a sandbox VM started by a manager (pocketvm.manager.harden)
        from pocketvm.manager.harden import harden

        harden()


def _parse_disk(text: str) -> DiskSpec:
    from pocketvm.machine import DiskSpec, VMError

    path, _, opts = text.partition(",")
    readonly = False
    fmt = None
    for opt in filter(None, opts.split(",")):
        if opt in ("ro", "readonly"):
            readonly = True
        elif opt in ("rw",):
            readonly = False
        elif opt in ("format=raw", "format=qcow2"):
            fmt = opt.partition("=")[2]
        else:
            raise VMError(f"unknown disk option {opt!r} in --disk {text!r} (use PATH, PATH,ro, PATH,format=raw|qcow2)")
    if not path:
        raise VMError(f"--disk {text!r}: missing path")
    return DiskSpec(Path(path), readonly, fmt)


def _parse_nic(text: str) -> NicSpec:
    """`user` or `user,hostfwd=tcp::HOSTPORT-:GUESTPORT[,hostfwd=...]` (QEMU's spelling),
    `allow=A.B.C.D[:PORT]` (repeatable): the only destinations the guest may reach."""
    import re

    from pocketvm.machine import NicSpec, VMError

    kind, *opts = text.split(",")
    if kind != "user":
        raise VMError(f"--nic {text!r}: unknown network kind {kind!r} (supported: user)")
    spec = NicSpec(kind)
    for opt in opts:
        if opt.startswith("allow="):
            from pocketvm.backends.net_user import parse_allow

            try:
                parse_allow(opt[len("allow="):])
            except ValueError as e:
                raise VMError(f"--nic {text!r}: {e}") from None
            spec.allow = [*(spec.allow or []), opt[len("allow="):]]
            continue
        m = re.fullmatch(r"hostfwd=tcp:(?:127\.0\.0\.1)?:(\d{1,5})-(?:10\.0\.2\.15)?:(\d{1,5})", opt)
        if m is None or not all(0 < int(p) < 65536 for p in m.groups()):
            raise VMError(f"--nic {text!r}: bad option {opt!r} (use hostfwd=tcp::HOSTPORT-:GUESTPORT)")
        spec.forwards.append(("tcp", int(m.group(1)), int(m.group(2))))
    return spec


def _existing_file(path: Path, what: str) -> Path:
    from pocketvm.machine import VMError

    if not path.exists():
        raise VMError(f"{what} {path}: no such file")
    if not path.is_file():
        raise VMError(f"{what} {path}: not a regular file")
    return path


def build_config(
    memory: str,
    cpus: int,
    kernel: str | None,
    initrd: str | None,
    bios: str | None,
    append: str | None,
    disks: tuple[str, ...],
    name: str = "",
    mirror: str | None = None,
    nics: tuple[str, ...] = (),
    vsock: str = "",
) -> VMConfig:
    from pocketvm.machine import VMConfig, VMError, VsockSpec, parse_memory

    mem = parse_memory(memory)
    disk_specs = [_parse_disk(d) for d in disks]
    nic_specs = [_parse_nic(n) for n in nics]
    for d in disk_specs:
        _existing_file(d.path, "disk")
    bare_metal = bios is not None and bios.lower() == "none"
    if kernel is None:
        if bare_metal:
            raise VMError("--bios none needs --kernel PROGRAM")
        from pocketvm.images import load_default_image, pull_default_image

        image = load_default_image() or pull_default_image(mirror=mirror)
        kernel_path = image.kernel
        initrd_path = Path(initrd) if initrd else image.initrd
        bios_path: Path | None = Path(bios) if bios else image.bios
    else:
        kernel_path = Path(kernel)
        initrd_path = Path(initrd) if initrd else None
        if bare_metal:
            bios_path = None
        elif bios:
            bios_path = Path(bios)
        else:
            from pocketvm.images import load_default_image

            image = load_default_image()
            if image is None:
                raise VMError("no firmware: pass --bios PATH (or --bios none), or run `pocket image pull` first")
            bios_path = image.bios
    _existing_file(kernel_path, "kernel")
    if initrd_path is not None:
        _existing_file(initrd_path, "initrd")
    if bios_path is not None:
        _existing_file(bios_path, "bios")
    return VMConfig(
        memory=mem,
        cpus=cpus,
        kernel=kernel_path,
        initrd=initrd_path,
        bios=bios_path,
        append=append if append is not None else DEFAULT_APPEND,
        disks=disk_specs,
        nics=nic_specs,
        vsock=None if vsock == "none" else VsockSpec(path=Path(vsock).absolute() if vsock else None),
        name=name,
    )


@main.command()
@click.option("-m", "--memory", default=None, help=f"Guest RAM, e.g. 512M or 1G (default {DEFAULT_MEMORY}; with --image, the template's).")
@click.option("-c", "--cpus", default=None, type=click.IntRange(1, 8), help="Number of harts (default 1; with --image, the template's).")
@click.option("--image", metavar="NAME", help="Run a system built by `pocket image build` (e.g. debian) on a fresh overlay of its root disk: restored from its template in a fraction of a second, or booted when --memory/--cpus/--disk differ from the template.")
@click.option("--kernel", metavar="PATH", help="Linux Image, or with --bios none a bare-metal ELF. Default: the pulled Debian guest.")
@click.option("--initrd", metavar="PATH", help="Initramfs (default: the pulled guest's).")
@click.option("--bios", metavar="PATH|none", help="M-mode firmware (default: OpenSBI fw_dynamic); 'none' starts --kernel in M-mode.")
@click.option("--append", metavar="ARGS", help=f"Kernel command line (default: '{DEFAULT_APPEND}').")
@click.option("--disk", "disks", multiple=True, metavar="PATH[,ro][,format=raw|qcow2]", help="Attach a disk image (raw or qcow2, told apart by content unless format= says) as virtio-blk (repeatable; ',ro' = read-only). Give format=raw for a raw disk whose guest may have written a qcow2 header into it.")
@click.option("--nic", "nics", multiple=True, metavar="user[,hostfwd=tcp::HOST-:GUEST][,allow=A.B.C.D[:PORT]]", help="Attach a virtio network interface (repeatable). 'user': NAT behind the host, no privileges; the guest is 10.0.2.15 (DHCP), the host 10.0.2.2. hostfwd forwards a TCP port of the host's 127.0.0.1 to the guest. allow= (repeatable): the guest reaches only those destinations (as it addresses them: 10.0.2.2:8000 is the host's 127.0.0.1:8000).")
@click.option("--vsock", default="", metavar="PATH|none", help="Unix socket of the VM's virtio-vsock device (default: NAME.vsock beside its control socket; `pocket ls --json` shows it). A host program connects and writes 'CONNECT <port>\\n' to reach a guest port; the guest reaches host port P at PATH_P. 'none': no vsock device.")
@click.option("--name", default="", help="Name of the VM, for `pocket ls` and `pocket snapshot` (default: generated, printed at start).")
@click.option("--mirror", metavar="URL", help="Debian mirror for pulling the default guest (default: the host's apt sources).")
@click.option("--deterministic", is_flag=True, help="Derive guest time from the instruction count (repeatable runs).")
@click.option("--display", "display", default="none", show_default=True, metavar="none|web|vnc[:PORT]|web,vnc[:PORT]", help="Give the VM a screen (virtio-gpu), keyboard and tablet. 'web': a page on 127.0.0.1 with the screen and the serial console (its URL, with a secret token, is printed); 'vnc': any VNC viewer on 127.0.0.1:PORT (default the first free from 5900); 'web,vnc': both.")
@click.option("--display-size", default="1024x768", show_default=True, metavar="WxH", help="The screen's resolution, with --display.")
@click.option("--jit", type=click.Choice(["off", "on"]), help="Translate hot guest code to host code (tier 1). Default: $POCKETVM_JIT, else on when the host gives pocket 2 or more CPUs (one compiles), else off; statistics with -v.")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Time-to-live: then the VM is stopped and the disks pocketvm made for it (an --image overlay) are deleted, written or not; --disk files stay.")
@click.option("--user", "user", metavar="NAME|UID", help="Started as root: become this user once the VM is set up (RAM, disks, sockets open), before the guest runs.")
@click.option("--upload-window", metavar="SIZE|none", help="Beside the vsock device, a small read-only disk through which pocketvm's guest agent receives uploaded files several times faster than through vsock (its backing file is the vsock socket's path + '.upload'; a hole between uploads). Default: 8M with --image, else none.")
def run(
    memory: str | None,
    cpus: int | None,
    image: str | None,
    kernel: str | None,
    initrd: str | None,
    bios: str | None,
    append: str | None,
    disks: tuple[str, ...],
    nics: tuple[str, ...],
    vsock: str,
    name: str,
    mirror: str | None,
    deterministic: bool,
    display: str,
    display_size: str,
    jit: str | None,
    ttl: float | None,
    user: str | None,
    upload_window: str | None,
) -> None:
    """Boot a VM with the console attached.

    In a terminal the console is raw; press Ctrl-A x to quit. Otherwise stdin
    is fed to the guest console, e.g. `printf 'uname -m\\npoweroff\\n' | pocket run`.
    A guest poweroff exits with status 0; a guest panic or failure exits non-zero.
    While it runs, `pocket snapshot NAME DIR` saves it and `pocket ls` lists it.
    With --image, the VM's root disk is a qcow2 overlay of the image's base;
    if the guest wrote to it, it is kept and its path printed at the end.
    """
    _pause_gc()
    lifetime = Lifetime.of(ttl, user)
    if image is not None:
        from pocketvm.imagevm import run_image

        if kernel or initrd or bios or append:
            raise click.UsageError("--image brings its own kernel, initrd, firmware and command line")
        sys.exit(run_image(image, memory, cpus, disks, nics, vsock, name, deterministic, display, display_size,
                           lifetime, _window_size(upload_window, image=True)))
    config = build_config(DEFAULT_MEMORY if memory is None else memory, 1 if cpus is None else cpus, kernel,
                          initrd, bios, append, disks, name, mirror, nics, vsock)
    if config.vsock is not None:
        config.vsock.upload_window = _window_size(upload_window, image=False)
    config.deterministic = deterministic
    config.jit = jit
    from pocketvm.web.attach import parse_display, parse_size

    shown = parse_display(display)
    if shown.kind != "none":
        from pocketvm.machine import DisplaySpec

        config.display = DisplaySpec(*parse_size(display_size))
    sys.exit(run_vm(config, shown, lifetime))


def _window_size(text: str | None, image: bool) -> int:
    """--upload-window: bytes, 0 for none."""
    from pocketvm.backends import upload_window
    from pocketvm.machine import VMError, parse_memory

    if text is None:
        return upload_window.DEFAULT_SIZE if image else 0
    if text.strip().lower() in ("none", "0"):
        return 0
    try:
        size = parse_memory(text)
        upload_window.check_size(size)
    except (ValueError, VMError) as e:
        raise VMError(f"--upload-window: {e}") from None
    return size


class Lifetime:
    """What `--ttl` and `--user` ask of a VM's run: how long it may run
    (`expired` once it was stopped for it), and the user to become before
    the guest runs (with the paths to give that user: its own disks)."""

    def __init__(self, ttl: float | None = None, user: str | None = None):
        self.ttl = ttl
        self.expired = False
        self.user = user
        self.own: list[Path] = []

    @classmethod
    def of(cls, ttl: float | None, user: str | None) -> Lifetime | None:
        if user is not None:
            from pocketvm.manager.harden import run_as

            run_as(user)  # a bad --user fails now, before anything starts
        return cls(ttl, user) if ttl or user else None

    def begin(self, vm: Any) -> Any:
        """Just before the guest runs: become the user; start the timer that
        stops `vm` when its time is up (cancel it when the VM ends first)."""
        if self.user is not None:
            from pocketvm.cpu.trap import current_mip
            from pocketvm.machine import load_cpu_core
            from pocketvm.manager.harden import drop_privileges

            # The compiled code the run loop calls, loaded from numba's cache
            # while it can still be read (it is the starting user's).
            load_cpu_core(released=vm.harts[0].tier1 is not None)
            current_mip(vm.harts[0].st, vm.sh)
            drop_privileges(self.user, self.own)
        if not self.ttl:
            return None
        import threading

        from pocketvm.machine import ExitStatus

        seconds = self.ttl

        def expire() -> None:
            self.expired = True
            status = ExitStatus(124, "ttl", f"time-to-live of {seconds:g} s reached: the VM was stopped")
            vm.submit(lambda: vm.request_stop(status))

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        return timer


def run_vm(config: VMConfig, display: Any = None, ttl: Lifetime | None = None) -> int:
    from pocketvm.console import HostConsole
    from pocketvm.control import ControlServer, check_name, generate_name
    from pocketvm.machine import VirtualMachine

    config.name = check_name(config.name) if config.name else generate_name()
    with ControlServer(config.name) as server:  # claims the name
        console = HostConsole()
        vm = VirtualMachine(config, console)
        try:
            vm.load_boot_files()
            for warning in vm.boot_plan.warnings:
                click.echo(f"pocket: warning: {warning}", err=True)
            return _attach_and_run(vm, console, server, {"origin": "boot"}, "is booting", display, ttl)
        finally:
            vm.close()


def _pause_gc() -> None:
    """No garbage collection while a VM is set up: start-up makes objects that
    live as long as the VM (numba's type registries, the compiled core, the
    devices), and collecting while they were made took 0.1 s of a 0.6 s start."""
    import gc

    gc.disable()


def _resume_gc() -> None:
    """Collect again for the run, with what start-up made kept out of the way (frozen)."""
    import gc

    gc.freeze()
    gc.enable()


class _Terminated(BaseException):
    """A termination signal arrived while the VM ran."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _attach_and_run(vm: Any, console: Any, server: Any, info: dict[str, Any], what: str, display: Any = None,
                    ttl: Lifetime | None = None) -> int:
    """Serve the control socket, run the VM with the console attached, report how it ended.

    `display` (a pocketvm.web.attach.DisplayChoice) puts the screen and console on the web or VNC."""
    import signal

    from pocketvm.machine import ExitStatus

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated(signum)

    if vm.vsock is not None:
        info = {**info, "vsock": str(vm.vsock.host.path)}
    viewer = None
    if display is not None and display.kind != "none":
        from pocketvm.web.attach import start_display

        viewer = start_display(vm, display)
        # `pocket ls --json` tells where to look (the control socket is the user's own).
        info = {**info, "display": viewer.url or "vnc://{}:{}".format(*viewer.vnc_address)}
    server.start(vm, info)
    click.echo(f"pocket: vm {vm.config.name} {what}", err=True)
    if viewer is not None:
        for where in viewer.addresses():
            click.echo(f"pocket: display: {where}", err=True)
    # SIGTERM/SIGHUP end the VM like a quit, so the cleanup below (control
    # socket, console mode, a restored VM's disk copies) still happens.
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    timer = ttl.begin(vm) if ttl is not None else None
    _resume_gc()
    try:
        with console:
            status = vm.run()
    except _Terminated as e:
        status = ExitStatus(128 + e.signum, "terminated", f"terminated by {signal.Signals(e.signum).name}")
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if viewer is not None:
            ended = locals().get("status")
            viewer.vm_stopped((ended.message or ended.reason) if ended is not None else "the monitor failed")
            viewer.close()
    if status.code != 0 or status.reason not in ("poweroff", "quit"):
        click.echo(f"\npocket: {status.message or status.reason}", err=True)
    return status.code


@main.command()
@click.argument("directory", metavar="DIR")
@click.option("--name", default="", help="Name of the new VM (default: a generated one).")
@click.option(
    "--disk-dir",
    metavar="PATH",
    help="Where the VM's private disk copies go (default: ~/.local/state/pocketvm/disks/NAME).",
)
@click.option("--discard", is_flag=True, help="Throw the VM away when it ends: delete its disk copies even if the guest wrote to them.")
@click.option("--display", "display", default="none", show_default=True, metavar="none|web|vnc[:PORT]|web,vnc[:PORT]", help="Show the restored VM's screen and console on a web page or a VNC port (the VM must have been started with a display).")
@click.option("--nic", "nics", multiple=True, metavar="user[,...]|none", help="Connect the snapshot's network interfaces otherwise than when saved, one --nic each: 'user' (as for `pocket run`) or 'none' (cable out).")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Time-to-live: then the VM is stopped and its disk copies deleted, written or not.")
@click.option("--user", "user", metavar="NAME|UID", help="Started as root: become this user once the VM is set up (RAM, disks, sockets open), before the guest runs.")
def restore(directory: str, name: str, disk_dir: str | None, discard: bool, display: str, nics: tuple[str, ...],
            ttl: float | None, user: str | None) -> None:
    """Start a VM from the snapshot in DIR, with the console attached.

    The snapshot is checked first and never changed: it can be restored any
    number of times, also several times at once. Each VM gets private RAM
    (the snapshot's RAM file, mapped copy-on-write) and private copies of the
    snapshot's writable disks. When it ends, disk copies the guest never
    wrote are deleted; written ones are kept and their directory is printed,
    unless --discard says to throw them away too.
    stdin works as for `pocket run`.
    """
    _pause_gc()
    from pocketvm.web.attach import parse_display

    from pocketvm.machine import NicSpec

    specs = [NicSpec("none") if n == "none" else _parse_nic(n) for n in nics] if nics else None
    sys.exit(restore_snapshot(directory, name, Path(disk_dir) if disk_dir else None, discard, parse_display(display),
                              nics=specs, ttl=Lifetime.of(ttl, user)))


def restore_snapshot(directory: str | Path, name: str, disk_dir: Path | None, discard: bool, shown: Any = None,
                     what: str | None = None, nics: list[NicSpec] | None = None, ttl: Lifetime | None = None) -> int:
    """Restore the snapshot in directory as VM `name` with the console attached; its exit status."""
    import threading

    # Loading numba and the compiled CPU core takes longer than checking the
    # snapshot, and the check mostly runs outside the GIL (hashing, numpy):
    # do both at once, starting the load before anything else.
    core = threading.Thread(target=_load_core, name="load-cpu-core", daemon=True)
    core.start()

    from pocketvm.console import HostConsole
    from pocketvm.control import ControlServer, check_name, generate_name
    from pocketvm.snapshot.restore import open_snapshot, restore_vm

    vm_name = check_name(name) if name else generate_name()
    with ControlServer(vm_name) as server:
        snap = open_snapshot(directory)
        console = HostConsole()
        restored = restore_vm(snap, console, vm_name, disk_dir, nics)
        try:
            if restored.disks.directory is not None:
                server.note_disk_dir(restored.disks.directory, discard)
                if ttl is not None and restored.disks.created_dir:
                    ttl.own += [restored.disks.directory, *restored.disks.copies]
            core.join()
            origin = str(restored.snapshot.path)
            code = _attach_and_run(
                restored.vm, console, server, {"origin": "restore", "snapshot": origin},
                what or f"restored from {origin}", shown, ttl,
            )
        finally:
            restored.vm.close()
            if discard or (ttl is not None and ttl.expired):
                restored.disks.discard()
            kept = restored.disks.finish()
            if kept is not None:
                click.echo(f"pocket: the guest wrote to its disks; they are kept in {kept}", err=True)
    return code


def _load_core() -> None:
    from pocketvm.machine import load_cpu_core

    load_cpu_core()


@main.command()
@click.argument("name")
@click.argument("directory", metavar="DIR")
@click.option("--stop", is_flag=True, help="End the VM after saving, instead of resuming it.")
def snapshot(name: str, directory: str, stop: bool) -> None:
    """Save the running VM NAME to the new directory DIR.

    The VM is paused while its CPU state, devices, console, RAM (non-zero
    pages, as a sparse file) and disks (copy-on-write where the filesystem
    allows) are written, then resumes, or stops with --stop.
    """
    import os

    from pocketvm.control import request

    dest = os.path.abspath(directory)
    reply = request(name, {"cmd": "snapshot", "dir": dest, "stop": stop}, timeout=None)
    mib = 1 << 20
    click.echo(
        f"{reply.get('path', dest)}: snapshot of {name} in {reply.get('seconds', 0):.2f} s "
        f"(paused {reply.get('pause_seconds', 0):.2f} s), {reply.get('ram_data_bytes', 0) / mib:.1f} MiB of RAM, "
        f"{reply.get('total_bytes', 0) / mib:.1f} MiB on disk" + (f"; {name} stopped" if stop else "")
    )


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_vms(as_json: bool) -> None:
    """List the running VMs."""
    import json
    import time

    from pocketvm.control import list_vms as running

    vms = running()
    if as_json:
        click.echo(json.dumps(vms, indent=2))
        return
    if not vms:
        click.echo("no running VMs")
        return
    rows = [("NAME", "PID", "STATE", "MEMORY", "CPUS", "UPTIME", "FROM")]
    for vm in vms:
        origin = vm.get("snapshot") or vm.get("origin", "")
        uptime = vm.get("started")
        up = f"{int(time.time() - uptime)}s" if isinstance(uptime, (int, float)) else "-"
        mem = vm.get("memory")
        rows.append(
            (
                str(vm.get("name", "?")),
                str(vm.get("pid", "-")),
                str(vm.get("state", "?")),
                f"{mem // MiB}M" if isinstance(mem, int) else "-",
                str(vm.get("cpus", "-")),
                up,
                str(origin),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@main.group()
def launcher() -> None:
    """A warm background process that starts VMs in milliseconds.

    A new `pocket` process spends about a third of a second loading numba and
    the compiled CPU core before a guest runs. While the launcher runs, `pocket
    run` and `pocket restore` hand their command to it instead: it forks a
    process that already has everything loaded and that runs the command with
    your terminal or pipes, directory and environment, exactly as typed. The
    command you typed stays in the foreground, forwards signals and exits with
    the VM's status. Set POCKETVM_LAUNCHER=off to bypass it.
    """


@launcher.command("start")
@click.option("--idle-timeout", type=click.FloatRange(min=1), metavar="SECONDS", help="Exit after this long with no VM running and no request (default: run until stopped).")
def launcher_start(idle_timeout: float | None) -> None:
    """Start the launcher (no-op when it already runs)."""
    from pocketvm.launcher import client

    info, started = client.start(idle_timeout)
    mib = info.get("rss_bytes", 0) / MiB
    if started:
        click.echo(f"pocket: launcher started (pid {info['pid']}, {mib:.0f} MiB)")
    else:
        click.echo(f"pocket: launcher already running (pid {info['pid']})")


@launcher.command("stop")
def launcher_stop() -> None:
    """Stop the launcher. VMs it started keep running."""
    from pocketvm.launcher import client

    info = client.stop()
    if info is None:
        click.echo("pocket: no launcher running")
    else:
        click.echo(f"pocket: launcher stopped (pid {info['pid']}, launched {info['launched']} VM(s))")


@launcher.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def launcher_status(as_json: bool) -> None:
    """Show whether the launcher runs; exit status 1 when it does not."""
    import json
    import time

    from pocketvm.launcher import client

    info = client.request("ping")
    if as_json:
        click.echo(json.dumps(info or {"ok": False}, indent=2))
    elif info is None:
        click.echo("pocket: no launcher running")
    else:
        up = int(time.time() - info["started"])
        running = len(info["running"])
        click.echo(
            f"launcher pid {info['pid']}, up {up}s, {info['rss_bytes'] / MiB:.0f} MiB, "
            f"launched {info['launched']} VM(s), {running} running"
        )
    if info is None:
        sys.exit(1)


def entry() -> None:
    """Console-script entry point: usage errors become one line, not a usage dump."""
    try:
        code = main.main(standalone_mode=False, prog_name="pocket")
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        fail(f"{e.format_message()}{hint}")
    except click.ClickException as e:
        fail(e.format_message())
    except click.Abort:
        fail("aborted", 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    entry()
