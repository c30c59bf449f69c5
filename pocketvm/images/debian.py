"""`pocket image build debian`: a Debian system on a qcow2 root disk.

Steps, in <cache>/images/<name>/:

1. first stage on the host: debootstrap --foreign (download, verify, unpack,
   nothing of the guest's architecture runs); the booted kernel's modules and
   pocketvm's build scripts are added (pocketvm/guest/debian/boot);
2. an ext4 filesystem of that tree in a raw image (mke2fs -d);
3. second stage inside a pocketvm VM (today's kernel and initramfs, the raw
   image as its root disk): every package is configured. The result is kept
   as `stage2.raw`, keyed by everything that went into it;
4. finalize, in another short VM: pocketvm's guest files (the configuration
   and the agent, pocketvm/guest/debian/config + pocketvm/guest/agent.py) on
   a second disk are installed by their configure.sh. New guest files only
   redo this step, not the second stage;
5. the result becomes the read-only qcow2 base `root.qcow2`;
6. the template (template.py): the system booted once and snapshotted idle,
   which `pocket run --image NAME` restores instead of booting.

manifest.json describes the result. A build whose inputs match a complete
image does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .apt import find_keyrings, sha256_file
from .catalog import images_root
from .errors import ImageError
from .lockfile import exclusive
from .progress import step_progress
from .pull import (
    ARCH,
    SUITE,
    BootFiles,
    cache_root,
    load_default_image,
    pull_default_image,
)
from .rootfs import (
    BASE_PACKAGES,
    FINALIZE,
    STAGE2,
    boot_scripts_digest,
    check_packages,
    first_stage,
    guest_files_digest,
    install_boot_scripts,
    install_kernel_modules,
    make_ext4,
    make_files_disk,
)
from .sources import resolve_mirror

RECIPE = 1
ROOT_SIZE = 4 << 30
BASE_FILE = "root.qcow2"
STAGE2_FILE = "stage2.raw"
STAGE2_INFO = "stage2.json"
TEMPLATE_DIR = "template"
MANIFEST = "manifest.json"
BUILD_MEMORY = "1G"
STAGE2_TIMEOUT = 3 * 3600  # seconds; 10-20 minutes on a 2-core machine
FINALIZE_TIMEOUT = 900
POWEROFF_GRACE = 120  # seconds from a build script's result to the VM's end
BUILD_APPEND = "console=ttyS0 cryptomgr.notests root=/dev/vda rw"
BOOT_APPEND = "console=ttyS0 cryptomgr.notests quiet root=/dev/vda rw"
_MARK = "pocketvm-build: "

Note = Callable[[str], None]


@dataclass(frozen=True)
class DebianImage:
    name: str
    directory: Path
    base: Path
    boot: BootFiles
    template: Path | None  # snapshot directory, None when not made
    manifest: dict

    @property
    def current(self) -> bool:
        """Built with this pocketvm's guest files (agent, configuration)."""
        return self.manifest.get("guest_files") == guest_files_digest()


def image_dir(name: str) -> Path:
    return images_root() / name


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load(name: str) -> DebianImage | None:
    """A complete built image called name, or None."""
    d = image_dir(name)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != "debian-root" or not (d / BASE_FILE).is_file():
        return None
    boot = load_default_image(verify=False)
    if boot is None or boot.version != manifest.get("kernel_release"):
        return None
    template = d / TEMPLATE_DIR
    return DebianImage(name, d, d / BASE_FILE, boot, template if (template / "manifest.json").is_file() else None,
                       manifest)


def _run_vm(args: Sequence[str], on_line: Callable[[str], None], timeout: float, disk: Path | None) -> list[str]:
    """`pocket run ARGS` in its own process, console lines to on_line; what
    the build scripts reported ("step X", "exit N").

    After "exit N" the script syncs and powers off. Should a VM go idle
    there instead (it did after every second stage, in pocketvm and QEMU
    alike, until common.sh remounted the /proc that debootstrap unmounts), it
    is stopped POWEROFF_GRACE seconds after reporting, and its root
    filesystem (the raw image `disk`) checked and repaired on the host like
    after a power cut. A root disk e2fsck cannot read (disk None: a qcow2
    overlay) fails the build instead.
    """
    reports: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    env = dict(os.environ, POCKETVM_LAUNCHER="off")
    proc = subprocess.Popen([sys.executable, "-m", "pocketvm", "run", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    stopped = False
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if any(r.startswith("exit ") for r in reports):
                    stopped = True
                    break
                raise ImageError(f"the build VM did not finish within {timeout / 60:.0f} minutes") from None
            if line is None:
                break
            if line.startswith(_MARK):
                reports.append(line[len(_MARK):])
                if reports[-1].startswith("exit "):
                    deadline = time.monotonic() + POWEROFF_GRACE
            on_line(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
    exits = [r for r in reports if r.startswith("exit ")]
    if not exits:
        raise ImageError(f"the build VM ended (status {rc}) without reporting a result; see the build log")
    if exits[-1] != "exit 0":
        steps = [r[5:] for r in reports if r.startswith("step ")]
        raise ImageError(f"the build VM failed in step {steps[-1] if steps else '?'} ({exits[-1]}); "
                         f"see the build log")
    if stopped and disk is None:
        raise ImageError(f"the build VM did not power off within {POWEROFF_GRACE} s of reporting its result; "
                         f"run the build again")
    if stopped:
        on_line(f"pocketvm: the build VM did not power off within {POWEROFF_GRACE} s; stopped it, checking {disk.name}")
        _check_filesystem(disk, on_line)
    return reports


def _check_filesystem(image: Path, log: Note) -> None:
    proc = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        log(line)
    if proc.returncode > 1:  # 0: clean, 1: errors corrected
        raise ImageError(f"the root filesystem needs repairs e2fsck could not make (status {proc.returncode}); "
                         f"see the build log")


def _vm_args(boot: BootFiles, init: str, disks: Sequence[str]) -> list[str]:
    args = ["--kernel", str(boot.kernel), "--initrd", str(boot.initrd), "--bios", str(boot.bios),
            "--memory", BUILD_MEMORY, "--append", f"{BUILD_APPEND} init={init}", "--vsock", "none"]
    for d in disks:
        args += ["--disk", d]
    return args


def stage2_jit_args() -> list[str]:
    """The second stage runs with tier 1 (the JIT) unless $POCKETVM_JIT says
    otherwise: dpkg's decompression is hot integer code, where translation
    pays for itself many times over (26 min -> 20 min on a busy host)."""
    return [] if os.environ.get("POCKETVM_JIT") else ["--jit", "on"]


def second_stage(raw: Path, boot: BootFiles, packages: int, progress: Callable[[float, str], None],
                 log: Note) -> None:
    """Boot the raw image with init=stage2.sh: debootstrap --second-stage."""
    done = [0]
    total = 2 * max(packages, 1)  # each package is unpacked, then configured

    def on_line(line: str) -> None:
        log(line)
        if line.startswith(("I: Unpacking", "I: Configuring")):
            done[0] += 1
            progress(min(99.0, 100.0 * done[0] / total), line[3:].rstrip("."))

    _run_vm(_vm_args(boot, STAGE2, [str(raw)]) + stage2_jit_args(), on_line, STAGE2_TIMEOUT, raw)


def finalize(raw: Path, boot: BootFiles, log: Note) -> None:
    """Boot the raw image with init=finalize.sh and the guest files on /dev/vdb."""
    files = raw.parent / "guest-files.img"
    make_files_disk(files)
    try:
        _run_vm(_vm_args(boot, FINALIZE, [str(raw), f"{files},ro"]), log, FINALIZE_TIMEOUT, raw)
    finally:
        files.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _copy_sparse(src: Path, dst: Path) -> None:
    proc = subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"cannot copy {src}: {proc.stderr.strip()}")


def build(name: str = "debian", packages: Sequence[str] = (), mirror: str | None = None, force: bool = False,
          template: bool = True, quiet: bool = False) -> DebianImage:
    from rich.console import Console

    from .catalog import check_image_name

    check_image_name(name)
    wanted = sorted(set(BASE_PACKAGES) | set(check_packages(packages)))
    console = Console(stderr=True, quiet=quiet)
    boot = pull_default_image(mirror=mirror, quiet=quiet)
    mirror_url = resolve_mirror(mirror)
    stage2_key = _key(RECIPE, wanted, mirror_url, boot.version, SUITE, ARCH, boot_scripts_digest())
    final_key = _key(stage2_key, guest_files_digest())
    return build_unless_current(
        name, final_key, force, template, quiet, console,
        lambda d: _build(name, d, wanted, mirror_url, boot, stage2_key, final_key, force, template, quiet, console))


def build_unless_current(name: str, key: str, force: bool, template: bool, quiet: bool, console,
                         build: Callable[[Path], DebianImage]) -> DebianImage:
    """The image `name` if it was built from `key` (with its template made
    when `template` asks for one), else `build(its directory)`; under the
    image's build lock."""
    d = image_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    with _build_lock(d, console):
        existing = load(name)
        if existing is not None and not force and existing.manifest.get("key") == key:
            if template and existing.template is None:
                make_template(existing, quiet=quiet)
                return load(name) or existing
            return existing
        return build(d)


def _build_lock(d: Path, console) -> contextlib.AbstractContextManager[None]:
    """One build of an image at a time: a second `pocket image build` waits,
    then finds the image the first one made."""
    return exclusive(d / "build.lock", lambda: console.print(f"Waiting for another build of {d.name} to finish..."))


def _build(name: str, d: Path, wanted: list[str], mirror_url: str, boot: BootFiles, stage2_key: str,
           final_key: str, force: bool, template: bool, quiet: bool, console) -> DebianImage:
    progress = step_progress(console, quiet)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=d))
    stage2_raw = d / STAGE2_FILE
    info = _read_json(d / STAGE2_INFO)
    timings: dict[str, float] = dict(info.get("seconds", {}))
    with open(d / "build.log", "a") as logf, progress:
        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        try:
            if force or info.get("key") != stage2_key or not stage2_raw.is_file():
                stage2_raw.unlink(missing_ok=True)
                tree = work / "tree"
                t = progress.add_task(f"First stage: debootstrap {SUITE} {ARCH} ({len(wanted)} packages + minbase)",
                                      total=None)
                started = time.monotonic()
                first_stage(tree, mirror_url, SUITE, ARCH, wanted, find_keyrings(SUITE),
                            cache_root() / "debootstrap", log)
                install_kernel_modules(tree, _kernel_deb(boot), boot.version, "linux-image")
                install_boot_scripts(tree)
                debs = [ln for ln in (tree / "debootstrap" / "debpaths").read_text().splitlines() if ln.strip()]
                raw = work / "root.raw"
                make_ext4(tree, raw, ROOT_SIZE)
                shutil.rmtree(tree)
                timings["first_stage"] = round(time.monotonic() - started, 1)
                progress.update(t, total=1, completed=1)

                t = progress.add_task("Second stage in a pocketvm VM", total=100)

                def stage_progress(pct: float, what: str) -> None:
                    progress.update(t, completed=pct, description=f"Second stage in a pocketvm VM: {what[:40]}")

                started = time.monotonic()
                second_stage(raw, boot, len(debs), stage_progress, log)
                timings["second_stage"] = round(time.monotonic() - started, 1)
                os.replace(raw, stage2_raw)
                _write_json(d / STAGE2_INFO, {"key": stage2_key, "packages": wanted, "mirror": mirror_url,
                                              "kernel_release": boot.version, "seconds": timings})
                progress.update(t, completed=100, description="Second stage in a pocketvm VM")

            t = progress.add_task("pocketvm guest files and agent", total=None)
            raw = work / "root.raw"
            _copy_sparse(stage2_raw, raw)
            started = time.monotonic()
            finalize(raw, boot, log)
            timings["finalize"] = round(time.monotonic() - started, 1)
            progress.update(t, total=1, completed=1)

            t = progress.add_task("qcow2 base image", total=None)
            base = d / BASE_FILE
            shutil.rmtree(d / TEMPLATE_DIR, ignore_errors=True)  # it was made on the old base
            (d / MANIFEST).unlink(missing_ok=True)
            if base.exists():
                base.unlink()
            _to_qcow2(raw, base)
            base.chmod(0o444)  # the base never changes; every VM writes to its own overlay
            # Snapshots refer to the base by path and content digest: pay
            # for hashing it now rather than at the template's snapshot.
            from pocketvm.snapshot.basechain import cached_digest

            cached_digest(base)
            progress.update(t, total=1, completed=1)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    _write_json(d / MANIFEST, {
        "kind": "debian-root",
        "name": name,
        "recipe": RECIPE,
        "key": final_key,
        "suite": SUITE,
        "architecture": ARCH,
        "mirror": mirror_url,
        "packages": wanted,
        "kernel_release": boot.version,
        "guest_files": guest_files_digest(),
        "virtual_size": ROOT_SIZE,
        "base_sha256": sha256_file(d / BASE_FILE),
        "seconds": timings,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    image = load(name)
    if image is None:
        raise ImageError(f"the image written to {d} does not load")
    if template:
        make_template(image, quiet=quiet)
        image = load(name) or image
    return image


def _kernel_deb(boot: BootFiles) -> Path:
    debs = sorted((cache_root() / "debs").glob(f"linux-image-{boot.version}_*.deb"))
    if not debs:
        raise ImageError(f"the package of kernel {boot.version} is not in the cache: run `pocket image pull --force`")
    return debs[-1]


def _to_qcow2(raw: Path, dest: Path) -> None:
    """raw -> qcow2, writing only clusters that hold data."""
    from pocketvm.backends.qcow2_create import convert_to_qcow2

    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    convert_to_qcow2(raw, tmp)
    os.replace(tmp, dest)


def make_template(image: DebianImage, quiet: bool = False) -> None:
    from .template import make_template as _make

    _make(image, quiet=quiet)
