"""A private apt, run as the user, that fetches riscv64 packages.

The host's apt tools are driven with a configuration of our own (APT_CONFIG):
its own sources file (the chosen mirror, one suite, `main`, riscv64 only),
package lists, archive cache and empty dpkg status, all under the pocketvm
cache directory, so no root rights are needed and the host's apt state is
never touched. Only the host's proxy settings are carried over.

Trust comes from apt itself: the sources entry is `Signed-By` the Debian
archive keyring(s) found on the host, `apt-get update --error-on=any` fails
unless the Release file verifies, and `apt-get download` checks each .deb
against the hashes of that signed index. We check the SHA256 once more
before using a cached .deb.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError

KEYRING_DIR = Path("/usr/share/keyrings")
KEYRING_ENV = "POCKETVM_KEYRING"

Progress = Callable[[float], None]  # percent done, 0..100

_SIGNATURE_HINTS = ("NO_PUBKEY", "is not signed", "EXPKEYSIG", "BADSIG", "signatures were invalid",
                    "couldn't be verified", "KEYEXPIRED", "Signed-By")


def find_keyrings(suite: str, environ: dict[str, str] | None = None,
                  keyring_dir: Path = KEYRING_DIR) -> list[Path]:
    """Keyrings that may verify the suite's Release file, best first.

    On a bookworm host, debian-archive-keyring.gpg (2023.3+deb12u2 or later)
    already holds the trixie keys; the per-release files are added in case an
    older combined keyring lacks them.
    """
    env = os.environ if environ is None else environ
    if env.get(KEYRING_ENV):
        p = Path(env[KEYRING_ENV])
        if not p.is_file():
            raise ImageError(f"{KEYRING_ENV}={p} is not a file")
        return [p]
    found = [keyring_dir / "debian-archive-keyring.gpg"]
    found += sorted(keyring_dir.glob(f"debian-archive-{suite}-*.gpg"))
    found = [p for p in found if p.is_file()]
    if not found:
        raise ImageError(f"no Debian archive keyring in {keyring_dir} to verify {suite}: "
                         f"install the debian-archive-keyring package")
    return found


def host_proxy_options() -> list[str]:
    """`Acquire::*::Proxy` settings of the host apt, as apt-get -o arguments."""
    exe = shutil.which("apt-config")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "dump"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    opts = []
    for line in out.splitlines():
        m = re.match(r'^(Acquire::(?:https?|ftp)::Proxy(?:::[^ ]+)?) "(.*)";$', line)
        if m:
            opts.append(f"{m.group(1)}={m.group(2)}")
    return opts


def deb822_field(stanza: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:[ \t]*(.*)$", stanza, re.M | re.I)
    return m.group(1).strip() if m else ""


def _first_problem(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for prefix in ("E:", "Err:", "W:"):
        for i, ln in enumerate(lines):
            if ln.startswith(prefix):
                text = ln[len(prefix):].strip()
                # "Err:1 URL" is followed by the reason on the next line.
                if prefix == "Err:" and i + 1 < len(lines):
                    text = lines[i + 1]
                return text
    return lines[-1] if lines else "no output"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    depends: str

    @property
    def deb_filename(self) -> str:
        # apt-get download escapes ':' (epochs) in the file name.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


class PrivateApt:
    def __init__(self, root: Path, mirror: str, suite: str, arch: str, keyrings: Sequence[Path]):
        self.root = root
        self.mirror = mirror
        self.suite = suite
        self.arch = arch
        self.keyrings = list(keyrings)
        self.config = root / "apt.conf"
        self._extra = host_proxy_options()

    def prepare(self) -> None:
        for d in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "etc/trusted.gpg.d",
                  "lists/partial", "cache/archives/partial", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "etc/pocketvm.sources").write_text(
            "Types: deb\n"
            f"URIs: {self.mirror}\n"
            f"Suites: {self.suite}\n"
            "Components: main\n"
            f"Architectures: {self.arch}\n"
            f"Signed-By: {', '.join(str(k) for k in self.keyrings)}\n")
        r = self.root
        self.config.write_text(f"""// pocketvm private apt configuration (generated)
Dir::State "{r}";
Dir::State::Lists "{r}/lists";
Dir::State::status "{r}/status";
Dir::Cache "{r}/cache";
Dir::Cache::archives "{r}/cache/archives";
Dir::Etc "{r}/etc";
Dir::Etc::main "{r}/etc/apt.conf";
Dir::Etc::parts "{r}/etc/apt.conf.d";
Dir::Etc::sourcelist "{r}/etc/pocketvm.sources";
Dir::Etc::sourceparts "{r}/etc/sources.list.d";
Dir::Etc::preferences "{r}/etc/preferences";
Dir::Etc::preferencesparts "{r}/etc/preferences.d";
Dir::Etc::trusted "{r}/etc/trusted.gpg";
Dir::Etc::trustedparts "{r}/etc/trusted.gpg.d";
Dir::Log "{r}/log";
APT::Architecture "{self.arch}";
APT::Architectures {{ "{self.arch}"; }};
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
""")

    def tidy(self) -> None:
        """Drop apt's binary caches (~80 MB); apt rebuilds them when needed."""
        for f in (self.root / "cache").glob("*.bin"):
            f.unlink(missing_ok=True)

    def _run(self, args: Sequence[str], cwd: Path | None = None,
             progress: Progress | None = None) -> tuple[int, str]:
        exe = shutil.which(args[0])
        if exe is None:
            raise ImageError(f"{args[0]} not found: pocket image pull needs Debian's apt tools")
        env = dict(os.environ, APT_CONFIG=str(self.config), LC_ALL="C", LANGUAGE="C",
                   DEBIAN_FRONTEND="noninteractive")
        extra = [x for opt in self._extra for x in ("-o", opt)]
        status_r, status_w = os.pipe()
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen([exe, *args[1:], *extra, "-o", f"APT::Status-Fd={status_w}"],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=cwd, env=env, pass_fds=(status_w,))
            except OSError as exc:
                os.close(status_r)
                os.close(status_w)
                raise ImageError(f"cannot run {args[0]}: {exc}") from None
            os.close(status_w)
            with os.fdopen(status_r, errors="replace") as status:
                for line in status:
                    # "dlstatus:<item>:<percent>:<text>"
                    parts = line.split(":", 3)
                    if progress and len(parts) >= 3 and parts[0] == "dlstatus":
                        try:
                            progress(float(parts[2]))
                        except ValueError:
                            pass
            rc = proc.wait()
            out.seek(0)
            return rc, out.read().decode(errors="replace")

    def update(self, progress: Progress | None = None) -> None:
        rc, out = self._run(["apt-get", "update", "--error-on=any"], progress=progress)
        if rc == 0:
            return
        problem = _first_problem(out)
        if any(h in out for h in _SIGNATURE_HINTS):
            keys = ", ".join(str(k) for k in self.keyrings)
            raise ImageError(f"cannot verify the signature of Debian {self.suite} at {self.mirror} "
                             f"with {keys} ({problem}); install a newer debian-archive-keyring "
                             f"or set POCKETVM_KEYRING")
        raise ImageError(f"cannot fetch the Debian {self.suite} package index from {self.mirror}: {problem}")

    def show(self, name: str) -> Package:
        rc, out = self._run(["apt-cache", "show", "--no-all-versions", name])
        stanza = out.split("\n\n", 1)[0] if rc == 0 else ""
        if not deb822_field(stanza, "Package"):
            raise ImageError(f"package {name} not found in Debian {self.suite} ({self.arch}) at {self.mirror}")
        return package_of(stanza)

    def closure(self, names: Sequence[str]) -> list[str]:
        """Every package `apt-get install --no-install-recommends NAMES` would
        install on an empty system (this apt's status is empty), in order."""
        rc, out = self._run(["apt-get", "install", "-s", "--no-install-recommends", *names])
        if rc != 0:
            raise ImageError(f"cannot resolve the packages {', '.join(names)} in Debian {self.suite} "
                             f"({self.arch}): {_first_problem(out)}")
        return [ln.split()[1] for ln in out.splitlines() if ln.startswith("Inst ") and len(ln.split()) > 1]

    def stanzas(self, names: Sequence[str]) -> dict[str, str]:
        """The index stanza of each package's candidate version, by name."""
        rc, out = self._run(["apt-cache", "show", "--no-all-versions", *names])
        found = {}
        for stanza in out.split("\n\n"):
            name = deb822_field(stanza, "Package")
            if name:
                found[name] = stanza.strip("\n") + "\n"
        missing = [n for n in names if n not in found]
        if rc != 0 or missing:
            raise ImageError(f"packages not found in Debian {self.suite} ({self.arch}) at {self.mirror}: "
                             f"{', '.join(missing) or _first_problem(out)}")
        return found

    def download_all(self, pkgs: Sequence[Package], dest: Path, progress: Progress | None = None) -> list[Path]:
        """The verified .debs of exactly these package versions, in dest (one apt-get run)."""
        dest.mkdir(parents=True, exist_ok=True)
        todo = [p for p in pkgs if not (dest / p.deb_filename).exists()
                or not _sha256_matches(dest / p.deb_filename, p.sha256)]
        if todo:
            rc, out = self._run(["apt-get", "download", *(f"{p.name}={p.version}" for p in todo)], cwd=dest,
                                progress=progress)
            if rc != 0:
                raise ImageError(f"cannot download packages from {self.mirror}: {_first_problem(out)}")
        paths = []
        for p in pkgs:
            path = dest / p.deb_filename
            if not path.exists() or not _sha256_matches(path, p.sha256):
                raise ImageError(f"{path.name} is missing or does not match the SHA256 of the signed package index")
            paths.append(path)
        return paths

    def download(self, pkg: Package, dest: Path, progress: Progress | None = None) -> Path:
        """The verified .deb of exactly this package version, in dest."""
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / pkg.deb_filename
        if path.exists() and not _sha256_matches(path, pkg.sha256):
            path.unlink()
        if not path.exists():
            rc, out = self._run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=dest,
                                progress=progress)
            if rc != 0:
                raise ImageError(f"cannot download {pkg.name} {pkg.version} from {self.mirror}: "
                                 f"{_first_problem(out)}")
        if not path.exists():
            raise ImageError(f"apt-get download did not produce {path.name}")
        if not _sha256_matches(path, pkg.sha256):
            raise ImageError(f"{path.name} does not match the SHA256 of the signed package index")
        return path


def package_of(stanza: str) -> Package:
    """The Package an index stanza describes."""
    try:
        size = int(deb822_field(stanza, "Size") or 0)
    except ValueError:
        size = 0
    return Package(deb822_field(stanza, "Package"), deb822_field(stanza, "Version"),
                   deb822_field(stanza, "Architecture"), deb822_field(stanza, "SHA256").lower(),
                   size, deb822_field(stanza, "Depends"))


def _sha256_matches(path: Path, expected: str) -> bool:
    return bool(expected) and sha256_file(path) == expected


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def kernel_package_name(meta: Package) -> tuple[str, str | None]:
    """(package, version or None) the linux-image meta package depends on."""
    for dep in meta.depends.split(","):
        first = dep.split("|")[0].strip()
        m = re.match(r"^(linux-image-\S+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?$", first)
        if m and m.group(1) != meta.name:
            return m.group(1), m.group(2)
    raise ImageError(f"{meta.name} {meta.version} does not depend on a linux-image package")
