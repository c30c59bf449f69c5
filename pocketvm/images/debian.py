"""`pocket image build debian`: a Debian system on a qcow2 root disk.

Steps, each cached in <cache>/images/<name>/ once it succeeded:

1. first stage on the host: debootstrap --foreign (download, verify, unpack);
   the booted kernel's modules and the pocketvm guest files are added;
2. an ext4 filesystem of that tree in a raw image (mke2fs -d);
3. second stage inside a pocketvm VM (today's kernel and initramfs, the raw
   image as its root disk): every package is configured, then the tree is
   made a pocketvm guest (pocketvm/guest/debian/configure.sh);
4. the raw image becomes the read-only qcow2 base `root.qcow2`;
5. the template: the system is booted once from a throw-away overlay and
   snapshotted when its root shell is idle; `pocket run --image NAME`
   restores that snapshot instead of booting.

The result is described by manifest.json. A build whose inputs (packages,
mirror, kernel, recipe) match a complete image does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .apt import find_keyrings, sha256_file
from .catalog import images_root
from .errors import ImageError
from .pull import SUITE, ARCH, BootFiles, cache_root, pull_default_image
from .rootfs import BASE_PACKAGES, STAGE2, check_packages, first_stage, install_guest_files, \
    install_kernel_modules, make_ext4
from .sources import resolve_mirror

RECIPE = 1
ROOT_SIZE = 4 << 30
BASE_FILE = "root.qcow2"
TEMPLATE_DIR = "template"
MANIFEST = "manifest.json"
STAGE2_MEMORY = "1G"
STAGE2_TIMEOUT = 3 * 3600  # seconds; about 10 minutes on a 2-core machine
BOOT_APPEND = "console=ttyS0 cryptomgr.notests quiet root=/dev/vda rw"
PROMPT = b"root@pocket"
_STAGE2_MARK = "pocketvm-stage2: "

Note = Callable[[str], None]


@dataclass(frozen=True)
class DebianImage:
    name: str
    directory: Path
    base: Path
    boot: BootFiles
    template: Path | None  # snapshot directory, None when not made
    manifest: dict


def image_dir(name: str) -> Path:
    return images_root() / name


def build_key(packages: Sequence[str], mirror: str, kernel_release: str) -> str:
    text = json.dumps([RECIPE, sorted(packages), mirror, kernel_release, SUITE, ARCH])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(name: str) -> DebianImage | None:
    """A complete built image called name, or None."""
    d = image_dir(name)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != "debian-root" or not (d / BASE_FILE).is_file():
        return None
    boot = pull_default_image()
    if boot.version != manifest.get("kernel_release"):
        return None
    template = d / TEMPLATE_DIR
    return DebianImage(name, d, d / BASE_FILE, boot, template if (template / "manifest.json").is_file() else None,
                       manifest)


def _run_vm(args: Sequence[str], on_line: Callable[[str], None], timeout: float) -> int:
    """`pocket run ARGS` in its own process, console lines to on_line."""
    env = dict(os.environ, POCKETVM_LAUNCHER="off")
    proc = subprocess.Popen([sys.executable, "-m", "pocketvm", "run", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            on_line(raw.decode(errors="replace").rstrip("\r\n"))
            if time.monotonic() > deadline:
                raise ImageError(f"the build VM did not finish within {timeout / 60:.0f} minutes")
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def second_stage(raw: Path, boot: BootFiles, progress: Callable[[float, str], None], log: Note) -> None:
    """Boot the raw image with init=stage2.sh and check what it reports."""
    result: list[str] = []
    total = [0]
    done = [0]

    def on_line(line: str) -> None:
        log(line)
        if line.startswith(_STAGE2_MARK):
            result.append(line[len(_STAGE2_MARK):])
        elif line.startswith("I: Unpacking") or line.startswith("I: Configuring"):
            done[0] += 1
            progress(min(99.0, 100.0 * done[0] / max(total[0], 1)), line[3:].rstrip("."))

    debs = [ln for ln in (raw.parent / "debpaths").read_text().splitlines() if ln.strip()] \
        if (raw.parent / "debpaths").exists() else []
    total[0] = 2 * max(len(debs), 1)
    rc = _run_vm(["--kernel", str(boot.kernel), "--initrd", str(boot.initrd), "--bios", str(boot.bios),
                  "--memory", STAGE2_MEMORY, "--disk", str(raw),
                  "--append", f"console=ttyS0 cryptomgr.notests root=/dev/vda rw init={STAGE2}"],
                 on_line, STAGE2_TIMEOUT)
    exits = [r for r in result if r.startswith("exit ")]
    if not exits:
        raise ImageError(f"the second stage VM ended (status {rc}) without reporting a result; "
                         f"see the build log")
    if exits[-1] != "exit 0":
        steps = [r[5:] for r in result if r.startswith("step ")]
        raise ImageError(f"the second stage failed in step {steps[-1] if steps else '?'} ({exits[-1]}); "
                         f"see the build log")


def _write_manifest(d: Path, manifest: dict) -> None:
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, d / MANIFEST)


def build(name: str = "debian", packages: Sequence[str] = (), mirror: str | None = None, force: bool = False,
          template: bool = True, quiet: bool = False) -> DebianImage:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, \
        TimeElapsedColumn

    extra = check_packages(packages)
    wanted = sorted(set(BASE_PACKAGES) | set(extra))
    console = Console(stderr=True, quiet=quiet)
    boot = pull_default_image(mirror=mirror, quiet=quiet)
    mirror_url = resolve_mirror(mirror)
    key = build_key(wanted, mirror_url, boot.version)
    existing = load(name)
    if existing is not None and not force and existing.manifest.get("key") == key:
        if template and existing.template is None:
            make_template(existing, quiet=quiet)
            return load(name) or existing
        return existing

    d = image_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    log_path = d / "build.log"
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        TimeElapsedColumn(), console=console, disable=quiet)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=d))
    with open(log_path, "w") as logf, progress:
        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        try:
            tree = work / "tree"
            t = progress.add_task(f"First stage: debootstrap {SUITE} {ARCH} ({len(wanted)} packages + minbase)",
                                  total=None)
            first_stage(tree, mirror_url, SUITE, ARCH, wanted, find_keyrings(SUITE), cache_root() / "debootstrap",
                        log)
            kernel_deb = _kernel_deb(boot)
            install_kernel_modules(tree, kernel_deb, boot.version, "linux-image")
            install_guest_files(tree)
            shutil.copy(tree / "debootstrap" / "debpaths", work / "debpaths")
            progress.update(t, total=1, completed=1)

            t = progress.add_task("Root filesystem (ext4)", total=None)
            raw = work / "root.raw"
            make_ext4(tree, raw, ROOT_SIZE)
            shutil.rmtree(tree)
            progress.update(t, total=1, completed=1)

            t = progress.add_task("Second stage in a pocketvm VM", total=100)

            def stage_progress(pct: float, what: str) -> None:
                progress.update(t, completed=pct, description=f"Second stage in a pocketvm VM: {what[:40]}")

            started = time.monotonic()
            second_stage(raw, boot, stage_progress, log)
            stage2_seconds = time.monotonic() - started
            progress.update(t, completed=100, description="Second stage in a pocketvm VM")

            t = progress.add_task("qcow2 base image", total=None)
            base = d / BASE_FILE
            if base.exists():
                base.chmod(0o644)
                base.unlink()
            shutil.rmtree(d / TEMPLATE_DIR, ignore_errors=True)
            _to_qcow2(raw, base)
            base.chmod(0o444)  # the base never changes; every VM writes to its own overlay
            progress.update(t, total=1, completed=1)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)

    manifest = {
        "kind": "debian-root",
        "name": name,
        "recipe": RECIPE,
        "key": key,
        "suite": SUITE,
        "architecture": ARCH,
        "mirror": mirror_url,
        "packages": wanted,
        "kernel_release": boot.version,
        "virtual_size": ROOT_SIZE,
        "base_sha256": sha256_file(d / BASE_FILE),
        "stage2_seconds": round(stage2_seconds, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_manifest(d, manifest)
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

    tmp = dest.with_suffix(".tmp")
    convert_to_qcow2(raw, tmp)
    os.replace(tmp, dest)


def make_template(image: DebianImage, quiet: bool = False) -> None:
    from .template import make_template as _make

    _make(image, quiet=quiet)
