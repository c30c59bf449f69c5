"""`pocket image build debian --desktop`: the Debian system with a small desktop.

The desktop image is a layer on the plain `debian` image as it is (built
first if missing), not a second stage of its own:

1. on the host, the private apt resolves the desktop packages (X.org with
   the modesetting and libinput drivers, xinit, jwm, xterm, and any
   --packages) against an empty system, downloads them and checks them
   against the signed index; they go on a files disk with a Packages index
   of their own and pocketvm/guest/debian/desktop;
2. a build VM boots a qcow2 overlay of the plain image's base with
   init=/pocketvm/finalize.sh, which runs the files disk's configure.sh:
   apt in the guest installs what the plain system lacks from that disk
   (no network, no full index to read at emulated speed), and the unit that
   starts X when the VM has a display;
3. the overlay and (a private copy of) the plain base are copied into one
   standalone read-only qcow2 base (a rebuild or `pocket image rm` of the plain image leaves the
   desktop image intact);
4. the template is taken with a 1024x768 display attached, once the
   desktop is up, so `pocket run --image NAME --display web` restores
   straight into it.

The image is an ordinary built image (kind "debian-root") whose manifest
says which display its template has; see imagevm.py and template.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .apt import PrivateApt, deb822_field, find_keyrings, package_of
from .debian import (
    BASE_FILE,
    FINALIZE_TIMEOUT,
    MANIFEST,
    TEMPLATE_DIR,
    DebianImage,
    _build_lock,
    _key,
    _read_json,
    _run_vm,
    _vm_args,
    _write_json,
    build_unless_current,
    image_dir,
    load,
    make_template,
)
from .debian import build as build_debian
from .errors import ImageError
from .progress import step_progress
from .pull import ARCH, SUITE, cache_root
from .rootfs import FINALIZE, check_packages, make_ext4

RECIPE = 1
DEFAULT_NAME = "debian-desktop"
PLAIN_NAME = "debian"
# X.org (its modesetting driver is part of the core), libinput for the
# virtio keyboard and tablet, xinit, a light window manager with a task
# bar, and a terminal. Mesa and LLVM come with the X server's dependencies
# (libgbm, libegl); they are installed but not loaded (no acceleration).
PACKAGES = ("xserver-xorg-core", "xserver-xorg-input-libinput", "xinit", "jwm", "xterm")
TEMPLATE_DISPLAY = (1024, 768)
READY_FILE = "/run/pocketvm-desktop-ready"  # written by the desktop's terminal (guest/debian/desktop/xsession)
LAYER_TIMEOUT = 2 * 3600  # seconds; 7-11.5 minutes measured on a busy 2-core machine
FILES_PACKAGE = "pocketvm.guest.debian"
_DPKG_STEP = re.compile(r"^(Unpacking|Setting up) (\S+)")
_NEW_COUNT = re.compile(r"(\d+) newly installed")


def desktop_files() -> dict[str, bytes]:
    """pocketvm/guest/debian/desktop: configure.sh and the files it installs."""
    folder = resources.files(FILES_PACKAGE) / "desktop"
    return {e.name: e.read_bytes() for e in sorted(folder.iterdir(), key=lambda e: e.name)
            if e.is_file() and not e.name.endswith((".py", ".pyc"))}


def desktop_files_digest() -> str:
    h = hashlib.sha256()
    for name, data in sorted(desktop_files().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def build(name: str = DEFAULT_NAME, packages: Sequence[str] = (), mirror: str | None = None, force: bool = False,
          template: bool = True, quiet: bool = False) -> DebianImage:
    """The desktop image NAME on top of the plain `debian` image (built first if needed)."""
    from rich.console import Console

    from .catalog import check_image_name
    from .sources import resolve_mirror

    check_image_name(name)
    if name == PLAIN_NAME:
        raise ImageError(f"{PLAIN_NAME} is the plain image's name; the desktop image needs another "
                         f"(default {DEFAULT_NAME})")
    wanted = sorted(set(PACKAGES) | set(check_packages(packages)))
    console = Console(stderr=True, quiet=quiet)
    plain = _plain_image(mirror, quiet)
    mirror_url = resolve_mirror(mirror)
    key = _key("desktop", RECIPE, plain.manifest.get("key"), plain.manifest.get("base_sha256"), wanted,
               mirror_url, desktop_files_digest(), list(TEMPLATE_DISPLAY))
    return build_unless_current(name, key, force, template, quiet, console,
                                lambda d: _build(name, d, plain, wanted, mirror_url, key, template, quiet, console))


def _plain_image(mirror: str | None, quiet: bool) -> DebianImage:
    """The plain image to build on, as it is; built when it is missing.

    An out-of-date plain image is not rebuilt here (`pocket image build
    debian` does that, and setup.sh runs it first): a desktop build should
    not start a 15-minute second stage of the shared plain image by itself.
    The desktop image's key holds the plain image's, so the next desktop
    build after a plain rebuild builds the layer again."""
    return load(PLAIN_NAME) or build_debian(PLAIN_NAME, mirror=mirror, quiet=quiet)


def _build(name: str, d: Path, plain: DebianImage, wanted: list[str], mirror_url: str, key: str, template: bool,
           quiet: bool, console) -> DebianImage:
    from pocketvm.backends.qcow2_create import convert_to_qcow2, create_overlay
    from pocketvm.snapshot.basechain import cached_digest

    progress = step_progress(console, quiet)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=d))
    timings: dict[str, float] = {}
    with open(d / "build.log", "a") as logf, progress:
        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        try:
            t = progress.add_task("Desktop packages: resolve and download on the host", total=100)
            started = time.monotonic()
            files = work / "files"
            count = _gather_packages(files, wanted, mirror_url, lambda pct: progress.update(t, completed=pct))
            files_img = work / "files.img"
            size = sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
            make_ext4(files, files_img, (size + size // 4 + (32 << 20)) // (1 << 20) * (1 << 20), label="pocket-files")
            shutil.rmtree(files)
            timings["download"] = round(time.monotonic() - started, 1)
            progress.update(t, completed=100, description=f"Desktop packages: {count} resolved and downloaded")

            t = progress.add_task("Desktop layer in a pocketvm VM", total=100)
            overlay = work / "layer.qcow2"
            create_overlay(overlay, _private_copy(plain, work / "plain.qcow2", console))
            started = time.monotonic()
            _install_layer(overlay, files_img, plain,
                           lambda pct, what: progress.update(t, completed=pct, description=f"Desktop layer: {what[:40]}"),
                           log)
            timings["layer"] = round(time.monotonic() - started, 1)
            progress.update(t, completed=100, description="Desktop layer in a pocketvm VM")

            t = progress.add_task("qcow2 base image", total=None)
            started = time.monotonic()
            base = d / BASE_FILE
            shutil.rmtree(d / TEMPLATE_DIR, ignore_errors=True)  # it was made on the old base
            (d / MANIFEST).unlink(missing_ok=True)
            base.unlink(missing_ok=True)
            tmp = base.with_name(base.name + ".tmp")
            tmp.unlink(missing_ok=True)
            convert_to_qcow2(overlay, tmp)  # the overlay with the plain base under it, as one image
            os.replace(tmp, base)
            base.chmod(0o444)
            digest = cached_digest(base)
            timings["base"] = round(time.monotonic() - started, 1)
            progress.update(t, total=1, completed=1)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    manifest = {k: v for k, v in plain.manifest.items() if k not in ("seconds", "built")}
    manifest.update({
        "name": name,
        "key": key,
        "packages": sorted(set(plain.manifest.get("packages", [])) | set(wanted)),
        "base_sha256": digest,
        "desktop": {"recipe": RECIPE, "packages": wanted, "from": PLAIN_NAME,
                    "from_key": plain.manifest.get("key"), "files": desktop_files_digest()},
        # What template.py and imagevm.py read: the template has this display
        # and is taken once the desktop is up.
        "template_display": list(TEMPLATE_DISPLAY),
        "template_ready_file": READY_FILE,
        "seconds": timings,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    _write_json(d / MANIFEST, manifest)
    image = load(name)
    if image is None:
        raise ImageError(f"the image written to {d} does not load")
    if template:
        started = time.monotonic()
        make_template(image, quiet=quiet)
        manifest = _read_json(d / MANIFEST)
        manifest.setdefault("seconds", {})["template"] = round(time.monotonic() - started, 1)
        _write_json(d / MANIFEST, manifest)
        image = load(name) or image
    return image


def _private_copy(plain: DebianImage, dest: Path, console) -> Path:
    """A copy of the plain image's base that nothing else replaces.

    The layer is an overlay on it until the end of the build; a rebuild of
    the plain image meanwhile (it replaces its root.qcow2) must not slide a
    different base under the overlay. The copy is taken under the plain
    image's build lock, so it is the base its manifest describes.
    """
    from .debian import _copy_sparse

    with _build_lock(image_dir(PLAIN_NAME), console):
        now = load(PLAIN_NAME)
        if now is None or now.manifest.get("key") != plain.manifest.get("key"):
            raise ImageError(f"the {PLAIN_NAME} image changed while the desktop build started; run it again")
        _copy_sparse(plain.base, dest)
    return dest


def _gather_packages(files: Path, wanted: Sequence[str], mirror_url: str, progress) -> int:
    """files/: the desktop guest files, `packages` (what to install) and
    debs/ (every package of the closure with its Packages index)."""
    apt = PrivateApt(cache_root() / "apt-desktop", mirror_url, SUITE, ARCH, find_keyrings(SUITE))
    apt.prepare()
    apt.update(lambda pct: progress(pct * 0.2))
    names = apt.closure(wanted)
    stanzas = apt.stanzas(names)
    pkgs = [package_of(stanzas[n]) for n in names]
    debs = files / "debs"
    cache = cache_root() / "desktop-debs"  # not pull's debs/, which keeps only the boot files' packages
    paths = apt.download_all(pkgs, cache, lambda pct: progress(20 + pct * 0.75))
    debs.mkdir(parents=True)
    index = []
    for pkg, path in zip(pkgs, paths):
        # The archive's own file name (apt-get download writes an epoch's ':'
        # as "%3a", which apt's file: method would decode when fetching).
        filename = deb822_field(stanzas[pkg.name], "Filename").rsplit("/", 1)[-1]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._~-]*\.deb", filename):
            raise ImageError(f"unexpected file name {filename!r} in the index entry of {pkg.name}")
        if _same_fs(path, debs):
            os.link(path, debs / filename)
        else:
            shutil.copy2(path, debs / filename)
        index.append(re.sub(r"(?m)^Filename:.*$", f"Filename: ./{filename}", stanzas[pkg.name]))
    (debs / "Packages").write_text("\n".join(index))
    for entry, data in desktop_files().items():
        (files / entry).write_bytes(data)
        (files / entry).chmod(0o755 if entry.endswith(".sh") or entry == "xsession" else 0o644)
    (files / "packages").write_text("\n".join(wanted) + "\n")
    keep = {p.name for p in paths}
    for old in cache.glob("*.deb"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    apt.tidy()
    return len(pkgs)


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _install_layer(overlay: Path, files_img: Path, plain: DebianImage, progress, log) -> None:
    """Boot the overlay with init=finalize.sh and the files disk: the desktop's configure.sh runs."""
    total = [0]
    done = [0]

    def on_line(line: str) -> None:
        log(line)
        m = _NEW_COUNT.search(line)
        if m:
            total[0] = 2 * int(m.group(1))  # each package is unpacked, then set up
        m = _DPKG_STEP.match(line)
        if m and total[0]:
            done[0] += 1
            progress(min(99.0, 100.0 * done[0] / total[0]), f"{m.group(1).lower()} {m.group(2)}")

    _run_vm(_vm_args(plain.boot, FINALIZE, [str(overlay), f"{files_img},ro"]), on_line,
            max(LAYER_TIMEOUT, FINALIZE_TIMEOUT), None)
