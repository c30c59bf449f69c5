"""A Debian root filesystem tree, first stage, made on the host.

debootstrap's first stage (`--foreign`) downloads and verifies the packages
and unpacks the essential ones into a directory; nothing of the foreign
(riscv64) architecture runs on the host. The second stage, which runs the
packages' maintainer scripts, happens later inside a pocketvm VM
(see `debian.py` and `pocketvm/guest/debian/stage2.sh`).

Then the tree gets what the host must provide: the kernel's modules (the
kernel itself is booted from outside the disk), the guest files that
configure it as a pocketvm guest, and finally an ext4 filesystem made from
the tree with `mke2fs -d`, which needs no loop device and no mount.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from .errors import ImageError
from .unpack import module_dir, unpack_deb

# What every pocketvm Debian system has (on top of debootstrap's minbase).
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "apt", "python3", "ca-certificates", "iproute2",
                 "procps", "less", "nano")
GUEST_FILES_PACKAGE = "pocketvm.guest.debian"
GUEST_DIR = "pocketvm"  # in the root filesystem: /pocketvm holds the stage-2 files
STAGE2 = f"/{GUEST_DIR}/stage2.sh"
FINALIZE = f"/{GUEST_DIR}/finalize.sh"
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")

Log = Callable[[str], None]


def check_packages(names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        if not _PACKAGE_RE.fullmatch(n):
            raise ImageError(f"not a Debian package name: {n!r}")
        out.append(n)
    return out


def require_tools(*tools: str) -> None:
    for tool, package in (t.split(":") for t in tools):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} not found: install the Debian package {package} (./setup.sh does)")


def first_stage(target: Path, mirror: str, suite: str, arch: str, packages: Sequence[str],
                keyrings: Sequence[Path], cache: Path, log: Log) -> None:
    """debootstrap --foreign: download, verify and unpack, run nothing."""
    if os.geteuid() != 0:
        raise ImageError("pocket image build needs root for its first stage: debootstrap creates "
                         "device nodes and files owned by root (run it with sudo)")
    require_tools("debootstrap:debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".gpg") as keyring:
        # debootstrap takes one keyring; binary keyrings concatenate.
        for k in keyrings:
            keyring.write(k.read_bytes())
        keyring.flush()
        cmd = ["debootstrap", "--foreign", f"--arch={arch}", "--variant=minbase", "--merged-usr",
               f"--cache-dir={cache}", f"--keyring={keyring.name}", f"--include={','.join(packages)}",
               suite, str(target), mirror]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            log(line)
        if proc.wait() != 0:
            problem = next((ln[2:].strip() for ln in reversed(tail) if ln.startswith("E:")), tail[-1] if tail else "")
            raise ImageError(f"debootstrap (first stage) failed: {problem}")
    _trim_package_index(target)
    # debootstrap leaves /proc as a symlink to the host's /proc; the guest
    # mounts its own procfs there.
    proc_dir = target / "proc"
    if proc_dir.is_symlink():
        proc_dir.unlink()
        proc_dir.mkdir(mode=0o555)


def _trim_package_index(target: Path) -> None:
    """Keep only the stanzas of the packages being installed in the copy of
    the archive index that debootstrap left for its second stage.

    The second stage looks packages up in it with grep and perl; on the full
    riscv64 index (about 50 MB) that alone takes many minutes at emulated
    speed, on the few hundred kilobytes it needs, a moment. The guest's apt
    gets a full index again with its first `apt-get update`.
    """
    debpaths = target / "debootstrap" / "debpaths"
    wanted = {line.split()[0] for line in debpaths.read_text().splitlines() if line.strip()}
    for index in (target / "var/lib/apt/lists").glob("*_Packages"):
        kept = []
        for stanza in index.read_text(errors="replace").split("\n\n"):
            m = re.match(r"Package:\s*(\S+)", stanza.lstrip("\n"))
            if m and m.group(1) in wanted:
                kept.append(stanza.strip("\n"))
        index.write_text("\n\n".join(kept) + "\n")


def install_kernel_modules(target: Path, kernel_deb: Path, release: str, package: str) -> None:
    """The booted kernel's modules, where the guest's modprobe looks for them."""
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=target.parent) as tmp:
        tree = unpack_deb(kernel_deb, Path(tmp))
        src = module_dir(tree, release, package)
        dest = target / "usr/lib/modules" / release
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, symlinks=True)
    # The host's depmod writes the index files: in the guest, at emulated
    # speed, depmod took more than half of the second stage (it decompresses
    # every module). kmod reads riscv64 modules on any host.
    depmod = shutil.which("depmod") or shutil.which("depmod", path="/usr/sbin:/sbin")
    if depmod is None:
        raise ImageError("depmod not found: install the Debian package kmod (./setup.sh does)")
    result = subprocess.run([depmod, "-b", str(target), release], capture_output=True, text=True)
    if result.returncode != 0 or not (dest / "modules.dep.bin").is_file():
        detail = (result.stderr.strip().splitlines() or ["no modules.dep.bin written"])[-1]
        raise ImageError(f"depmod could not index the kernel modules: {detail}")


def _guest_tree():
    return resources.files(GUEST_FILES_PACKAGE)


def _plain_files(folder) -> list:
    return sorted((e for e in folder.iterdir() if e.is_file() and not e.name.endswith((".py", ".pyc"))),
                  key=lambda e: e.name)


def _mode(name: str) -> int:
    return 0o755 if name.endswith(".sh") or "." not in name else 0o644


def install_boot_scripts(target: Path) -> None:
    """pocketvm/guest/debian/boot/* -> /pocketvm in the tree: what the build VMs run as init."""
    dest = target / GUEST_DIR
    dest.mkdir(mode=0o755, exist_ok=True)
    for entry in _plain_files(_guest_tree() / "boot"):
        path = dest / entry.name
        path.write_bytes(entry.read_bytes())
        path.chmod(_mode(entry.name))


def guest_files() -> dict[str, bytes]:
    """What finalize.sh gets on its files disk: configure.sh, the files it
    installs, and the guest agent (pocketvm/guest/agent.py) when there is one."""
    files = {e.name: e.read_bytes() for e in _plain_files(_guest_tree() / "config")}
    agent = resources.files("pocketvm.guest").joinpath("agent.py")
    if agent.is_file():
        files["agent.py"] = agent.read_bytes()
    return files


def boot_scripts_digest() -> str:
    return _digest({e.name: e.read_bytes() for e in _plain_files(_guest_tree() / "boot")})


def guest_files_digest() -> str:
    return _digest(guest_files())


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def make_files_disk(image: Path) -> None:
    """A small ext4 image holding guest_files()."""
    with tempfile.TemporaryDirectory(prefix="guest-files-", dir=image.parent) as tmp:
        for name, data in guest_files().items():
            path = Path(tmp) / name
            path.write_bytes(data)
            path.chmod(_mode(name))
        make_ext4(Path(tmp), image, 16 << 20, label="pocket-files")


def make_ext4(tree: Path, image: Path, size: int, label: str = "pocket-root") -> None:
    """A raw ext4 image holding the tree (sparse: only written blocks use space)."""
    require_tools("mke2fs:e2fsprogs")
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", str(tree), str(image)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ImageError(f"mke2fs could not build the root filesystem: {detail}")
