"""`pocket image pull`: Debian trixie riscv64 packages -> pocketvm boot files.

Output, in <cache>/images/debian-trixie/:

    Image           raw RISC-V kernel Image, loaded at RAM + text_offset
    initrd.img      newc initramfs, uncompressed (BusyBox shell, virtio + ext4 modules)
    fw_dynamic.bin  OpenSBI for the generic platform
    manifest.json   packages and versions, kernel release, sha256 of each file

A pull whose output is complete and whose checksums match does nothing, so a
second run is instant and works offline; `force` rebuilds from a fresh index.
The new image is assembled beside the old one and swapped in at the end, so
an interrupted pull never leaves a half-written image behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import kmod
from .apt import Package, PrivateApt, find_keyrings, kernel_package_name, sha256_file
from .busybox import busybox_applets
from .errors import ImageError
from .initramfs import InitramfsModule, build_initramfs
from .kernel import parse_image_header, raw_kernel_image
from .lockfile import exclusive
from .progress import step_progress
from .sources import resolve_mirror
from .unpack import find_file, find_kernel, kernel_config, module_dir, unpack_deb

SUITE = "trixie"
ARCH = "riscv64"
IMAGE_NAME = f"debian-{SUITE}"
KERNEL_META = "linux-image-riscv64"
BUSYBOX_PACKAGE = "busybox-static"
OPENSBI_PACKAGE = "opensbi"
# What the guest needs as modules (those built into the kernel are skipped).
WANTED_MODULES = ("virtio_mmio", "virtio_blk", "virtio_rng", "virtio_net", "virtio_console", "ext4",
                  "virtio_gpu", "virtio_input", "evdev", "vmw_vsock_virtio_transport")
DISK_MODULES = ("ext4",)  # loaded by /init only when a virtio disk is attached
NET_MODULES = ("virtio_net",)  # ... only when a virtio NIC is attached
# ... only with a display: the GPU (DRM, fbdev emulation, framebuffer console), keyboard and tablet.
DISPLAY_MODULES = ("virtio_gpu", "virtio_input", "evdev")
VSOCK_MODULES = ("vmw_vsock_virtio_transport",)  # ... only with a virtio-vsock (vsock, its transport)
# Kernel features the initramfs itself relies on: these must be built in.
REQUIRED_BUILTIN = ("CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS", "CONFIG_TMPFS")
OPENSBI_PATHS = ("usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin",
                 "usr/share/opensbi/lp64/generic/firmware/fw_dynamic.bin")
BUSYBOX_PATHS = ("usr/bin/busybox", "bin/busybox")
# Bump when the assembled output changes for the same packages (new /init,
# other modules...): older images then count as incomplete and are rebuilt.
RECIPE = 9

KERNEL_FILE = "Image"
INITRD_FILE = "initrd.img"
BIOS_FILE = "fw_dynamic.bin"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    bios: Path
    version: str  # kernel release, e.g. "6.12.117+deb13-riscv64"


def cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pocketvm"


def default_image_dir() -> Path:
    return cache_root() / "images" / IMAGE_NAME


def _read_manifest(image_dir: Path) -> dict | None:
    try:
        manifest = json.loads((image_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def load_image(image_dir: Path, verify: bool = True) -> BootFiles | None:
    """The boot files in image_dir if complete and intact, else None.

    verify=False checks sizes only, not checksums (hashing ~50 MB costs a
    tenth of a second, which a template restore must not pay)."""
    manifest = _read_manifest(image_dir)
    if manifest is None or manifest.get("recipe") != RECIPE:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    for name in (KERNEL_FILE, INITRD_FILE, BIOS_FILE):
        entry = files.get(name)
        path = image_dir / name
        if not isinstance(entry, dict) or not path.is_file():
            return None
        try:
            if path.stat().st_size != entry.get("size") or (verify and sha256_file(path) != entry.get("sha256")):
                return None
        except OSError:
            return None
    return BootFiles(image_dir / KERNEL_FILE, image_dir / INITRD_FILE, image_dir / BIOS_FILE,
                     str(manifest.get("kernel_release", "")))


def load_default_image(verify: bool = True) -> BootFiles | None:
    """The pulled default image, or None if not pulled yet (or incomplete)."""
    return load_image(default_image_dir(), verify)


class _Steps:
    """Rich progress display: one line per step, percent where known."""

    def __init__(self, quiet: bool):
        self.console = Console(stderr=True, quiet=quiet)
        self.progress = step_progress(self.console, quiet)

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[Callable[[float], None]]:
        task = self.progress.add_task(description, total=100.0)

        def update(percent: float) -> None:
            self.progress.update(task, completed=max(0.0, min(100.0, percent)))

        yield update
        self.progress.update(task, completed=100.0)

    def note(self, text: str) -> None:
        self.progress.console.print(text)


def _pull_lock(root: Path, steps: _Steps) -> contextlib.AbstractContextManager[None]:
    root.mkdir(parents=True, exist_ok=True)
    return exclusive(root / "pull.lock", lambda: steps.note("waiting for another pocket image pull to finish..."))


def pull_default_image(mirror: str | None = None, force: bool = False, quiet: bool = False) -> BootFiles:
    """Fetch, verify and assemble the default Debian trixie riscv64 boot files."""
    image_dir = default_image_dir()
    if not force and (ready := load_image(image_dir)) is not None:
        return ready
    steps = _Steps(quiet)
    root = cache_root()
    try:
        with _pull_lock(root, steps):
            # Another pull may have finished while we waited for the lock.
            if not force and (ready := load_image(image_dir)) is not None:
                return ready
            with steps.progress:
                return _pull(root, image_dir, resolve_mirror(mirror), steps)
    except OSError as exc:
        raise ImageError(f"image pull failed: {exc.strerror or exc} ({exc.filename or root})") from None


def _pull(root: Path, image_dir: Path, mirror: str, steps: _Steps) -> BootFiles:
    apt = PrivateApt(root / "apt", mirror, SUITE, ARCH, find_keyrings(SUITE))
    apt.prepare()
    with steps.step(f"Package index (Debian {SUITE} {ARCH})") as update:
        apt.update(update)
    meta = apt.show(KERNEL_META)
    kernel_name, _ = kernel_package_name(meta)
    packages = {"kernel": apt.show(kernel_name), "busybox": apt.show(BUSYBOX_PACKAGE),
                "opensbi": apt.show(OPENSBI_PACKAGE)}
    debs_dir = root / "debs"
    debs: dict[str, Path] = {}
    for role, pkg in packages.items():
        with steps.step(f"Download {pkg.name} {pkg.version}") as update:
            debs[role] = apt.download(pkg, debs_dir, update)

    (root / "images").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=root))
    staging = Path(tempfile.mkdtemp(prefix=f"{IMAGE_NAME}.new-", dir=root / "images"))
    staging.chmod(0o755)  # mkdtemp makes it private; the boot files are not secret
    try:
        with steps.step("Unpack packages") as update:
            trees = {}
            for i, (role, deb) in enumerate(debs.items()):
                trees[role] = unpack_deb(deb, work / role)
                update(100.0 * (i + 1) / len(debs))
        manifest = _assemble(trees, packages, meta, staging, steps)
        manifest["mirror"] = mirror
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(staging, image_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    apt.tidy()
    # Keep only the .debs of this image: old kernels are >100 MB each.
    keep = {p.name for p in debs.values()}
    for old in debs_dir.glob("*.deb"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    result = load_image(image_dir)
    if result is None:
        raise ImageError(f"the image written to {image_dir} does not verify")
    return result


def _assemble(trees: dict[str, Path], packages: dict[str, Package], meta: Package,
              out: Path, steps: _Steps) -> dict:
    kpkg = packages["kernel"].name
    kernel_path, release = find_kernel(trees["kernel"], kpkg)
    config = kernel_config(trees["kernel"], release, kpkg)
    missing = [c for c in REQUIRED_BUILTIN if config.get(c) != "y"]
    if missing:
        raise ImageError(f"kernel {release} lacks built-in {', '.join(missing)}: it cannot boot our initramfs")

    image = raw_kernel_image(kernel_path.read_bytes())
    header = parse_image_header(image)

    moddir = module_dir(trees["kernel"], release, kpkg)
    with steps.step("Index kernel modules") as update:
        try:
            infos = kmod.scan_modules(moddir, lambda n, total: update(100.0 * n / total))
            (moddir / "modules.dep").write_text(kmod.format_modules_dep(infos))
            (moddir / "modules.softdep").write_text(kmod.format_modules_softdep(infos))
            (moddir / "modules.alias").write_text(kmod.format_modules_alias(infos))
            index = kmod.load_index(moddir)
            order = kmod.resolve_load_order(WANTED_MODULES, index.depends, index)
            disk_stack = set(kmod.resolve_load_order(DISK_MODULES, index.depends, index))
            net_stack = set(kmod.resolve_load_order(NET_MODULES, index.depends, index))
            display_stack = set(kmod.resolve_load_order(DISPLAY_MODULES, index.depends, index))
            vsock_stack = set(kmod.resolve_load_order(VSOCK_MODULES, index.depends, index))
            base_stack = set(kmod.resolve_load_order(
                tuple(set(WANTED_MODULES) - set(DISK_MODULES) - set(NET_MODULES) - set(DISPLAY_MODULES)
                      - set(VSOCK_MODULES)),
                index.depends, index))
            kmod.check_complete(order, infos)
        except kmod.ModuleError as exc:
            raise ImageError(f"kernel {release}: {exc}") from None

    with steps.step("Build initramfs") as update:
        modules = []
        for name in order:
            rel = index.paths[name]
            try:
                data = kmod.decompress_module(rel, (moddir / rel).read_bytes())
            except Exception as exc:  # lzma/gzip/OS errors alike: a broken package file
                raise ImageError(f"cannot read kernel module {rel}: {exc}") from None
            plain = rel.removesuffix(".xz").removesuffix(".gz")
            group = ("base" if name in base_stack else "disk" if name in disk_stack else "net" if name in net_stack
                     else "display" if name in display_stack else "vsock" if name in vsock_stack else "base")
            modules.append(InitramfsModule(name, plain, data, group))
        update(40.0)
        busybox = find_file(trees["busybox"], BUSYBOX_PATHS, packages["busybox"].name, "busybox binary").read_bytes()
        initrd = build_initramfs(busybox, release, modules, busybox_applets(busybox))
    bios = find_file(trees["opensbi"], OPENSBI_PATHS, packages["opensbi"].name, "generic fw_dynamic.bin")

    (out / KERNEL_FILE).write_bytes(image)
    (out / INITRD_FILE).write_bytes(initrd)
    shutil.copyfile(bios, out / BIOS_FILE)
    sources = {KERNEL_FILE: f"{kpkg}:/{kernel_path.relative_to(trees['kernel']).as_posix()}",
               INITRD_FILE: "built by pocketvm",
               BIOS_FILE: f"{packages['opensbi'].name}:/{bios.relative_to(trees['opensbi']).as_posix()}"}
    return {
        "format": 1,
        "recipe": RECIPE,
        "distribution": "debian",
        "suite": SUITE,
        "architecture": ARCH,
        "kernel_release": release,
        "kernel_text_offset": header.text_offset,
        "packages": {meta.name: meta.version, **{p.name: p.version for p in packages.values()}},
        "modules": order,
        "builtin_modules": sorted(set(WANTED_MODULES) & index.builtin),
        "files": {name: {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size,
                         "source": src} for name, src in sources.items()},
    }


def _swap_in(staging: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=final.parent))
        os.rename(final, old / final.name)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
