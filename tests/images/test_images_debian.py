"""The Debian system builder's host-side pieces (the build itself runs in tests/system)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pocketvm.images import rootfs
from pocketvm.images.catalog import check_image_name, remove_image
from pocketvm.images.errors import ImageError


def _pocket(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketvm", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_trimmed_index_keeps_exactly_the_packages_being_installed(tmp_path):
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap/debpaths").write_text("apt /var/cache/apt/archives/apt.deb\nbash /x/bash.deb\n")
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    stanzas = [f"Package: {n}\nVersion: 1\nDepends: libc6\nDescription: {n}\n multi-line\n"
               for n in ("apt", "apt-utils", "bash", "zsh")]
    (lists / "m_dists_trixie_main_binary-riscv64_Packages").write_text("\n".join(stanzas))
    rootfs._trim_package_index(tmp_path)
    text = (lists / "m_dists_trixie_main_binary-riscv64_Packages").read_text()
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith("Package:")] == ["apt", "bash"]
    assert " multi-line" in text  # stanzas stay whole


@pytest.mark.parametrize("name", ["gcc", "g++", "libc6-dev", "python3.13"])
def test_package_names_are_checked(name):
    assert rootfs.check_packages([name]) == [name]


@pytest.mark.parametrize("name", ["", "Gcc", "gcc;rm -rf /", "-x", "a b"])
def test_bad_package_names_are_refused(name):
    with pytest.raises(ImageError):
        rootfs.check_packages([name])


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "debian-trixie", "x" * 64])
def test_bad_image_names_are_refused(name):
    with pytest.raises(ImageError):
        check_image_name(name)


def test_removing_an_unknown_image_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ImageError, match="no image called"):
        remove_image("nothing-here")
    run = _pocket("image", "rm", "nothing-here", env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "no image called" in run.stderr


def test_run_with_an_unknown_image_is_a_one_line_error():
    run = _pocket("run", "--image", "no-such-image")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "no image called 'no-such-image'" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_run_image_refuses_its_own_boot_files_being_replaced():
    run = _pocket("run", "--image", "debian", "--append", "init=/bin/sh")
    assert run.returncode == 2 and "--image brings its own" in run.stderr


def test_guest_files_hold_the_configuration_and_their_digest_follows_them(monkeypatch):
    files = rootfs.guest_files()
    assert {"configure.sh", "autologin.conf", "pocketvm-newid", "pocketvm-newid.service", "agent.py"} <= set(files)
    before = rootfs.guest_files_digest()
    monkeypatch.setattr(rootfs, "guest_files", lambda: {**files, "configure.sh": files["configure.sh"] + b"\n"})
    assert rootfs.guest_files_digest() != before


def test_boot_scripts_are_installed_executable(tmp_path):
    rootfs.install_boot_scripts(tmp_path)
    for name in ("stage2.sh", "finalize.sh", "common.sh"):
        path = tmp_path / "pocketvm" / name
        assert path.is_file() and path.stat().st_mode & 0o111


def test_a_build_vm_that_reports_but_never_powers_off_is_stopped_and_its_disk_checked(tmp_path, monkeypatch):
    from pocketvm.images import debian

    disk = tmp_path / "root.raw"
    (tmp_path / "empty").mkdir()
    rootfs.make_ext4(tmp_path / "empty", disk, 8 << 20)
    real_popen = subprocess.Popen

    def fake_vm(cmd, **kw):  # a "VM" that reports its result, then hangs (e2fsck runs for real)
        if "pocketvm" not in cmd:
            return real_popen(cmd, **kw)
        return real_popen(["sh", "-c", 'echo "pocketvm-build: step x"; echo "pocketvm-build: exit 0"; exec sleep 600'],
                          **kw)

    monkeypatch.setattr(debian.subprocess, "Popen", fake_vm)
    monkeypatch.setattr(debian, "POWEROFF_GRACE", 1)
    log: list[str] = []
    assert debian._run_vm([], log.append, 60, disk) == ["step x", "exit 0"]
    assert any("did not power off" in line for line in log)
    assert any("e2fsck" in line or "clean" in line or "blocks" in line for line in log)


def test_a_build_vm_that_reports_a_failure_names_the_step(tmp_path, monkeypatch):
    from pocketvm.images import debian

    real_popen = subprocess.Popen
    monkeypatch.setattr(debian.subprocess, "Popen", lambda cmd, **kw: real_popen(
        ["sh", "-c", 'echo "pocketvm-build: step configure"; echo "pocketvm-build: exit 11"'] if "pocketvm" in cmd
        else cmd, **kw))
    with pytest.raises(ImageError, match="failed in step configure"):
        debian._run_vm([], lambda line: None, 60, tmp_path / "unused.raw")
