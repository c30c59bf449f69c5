"""Which Debian mirror to fetch from: the one the host's apt already uses.

The host's apt sources are read in both formats apt accepts: one-line
`sources.list` entries (`deb [opts] URI suite component...`) and deb822
`.sources` stanzas. Among them we keep Debian's main archive: binary `deb`
entries with a Debian suite and the `main` component, excluding the security
archive. An explicit URL (`--mirror`) or POCKETVM_MIRROR overrides the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ImageError

MIRROR_ENV = "POCKETVM_MIRROR"
ALLOWED_SCHEMES = ("http", "https", "file")

# Codenames and aliases that name a suite of the Debian archive itself.
DEBIAN_SUITES = frozenset({
    "stable", "oldstable", "oldoldstable", "testing", "unstable", "sid", "experimental",
    "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke",
})
# Suffixes of suites that live in the same archive as their codename.
_SUITE_SUFFIXES = ("-updates", "-backports", "-proposed-updates", "-backports-sloppy")


@dataclass(frozen=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    origin: str = ""  # file the entry came from, for messages


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """Entries of a one-line-style sources.list file."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$", line)
        if m:
            kind, opts, rest = m.groups()
            for opt in opts.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        else:
            kind, _, rest = line.replace("\t", " ").partition(" ")
        words = rest.split()
        if len(words) < 2:
            continue
        out.append(AptSource((kind,), (words[0],), (words[1],), tuple(words[2:]), options, origin))
    return out


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Stanzas of a deb822-style .sources file."""
    out = []
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        fields = {k: tuple(v.split()) for k, v in stanza.items()}
        options = {k: v.strip() for k, v in stanza.items()
                   if k not in ("types", "uris", "suites", "components", "enabled")}
        out.append(AptSource(fields.get("types", ()), fields.get("uris", ()), fields.get("suites", ()),
                             fields.get("components", ()), options, origin))
    return out


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
            continue
        if raw[0] in " \t":
            if key is not None:
                current[key] += "\n" + raw.strip()
            continue
        k, sep, value = raw.partition(":")
        if not sep:
            continue
        key = k.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def host_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """All entries of the host's apt sources, in apt's reading order."""
    files: list[Path] = []
    if (etc_apt / "sources.list").is_file():
        files.append(etc_apt / "sources.list")
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        out += parse_deb822(text, str(f)) if f.suffix == ".sources" else parse_one_line(text, str(f))
    return out


def _is_debian_suite(suite: str) -> bool:
    base = suite.rstrip("/")
    for suffix in _SUITE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base in DEBIAN_SUITES


def _score(source: AptSource, uri: str) -> int | None:
    """How surely this entry is Debian's main archive (None: it is not)."""
    if "deb" not in source.types or "main" not in source.components:
        return None
    if urlsplit(uri).scheme not in ALLOWED_SCHEMES:
        return None
    if any(s.endswith("-security") or "/" in s.strip("/") for s in source.suites):
        return None
    path = urlsplit(uri).path.rstrip("/")
    if path.endswith("-security"):
        return None
    if not any(_is_debian_suite(s) for s in source.suites):
        return None
    score = 1
    if path.rsplit("/", 1)[-1] == "debian":
        score += 2
    if "debian-archive-keyring" in source.options.get("signed-by", ""):
        score += 1
    if any(s in DEBIAN_SUITES for s in source.suites):  # a plain codename, not -updates
        score += 1
    return score


def pick_debian_mirror(sources: Iterable[AptSource]) -> str | None:
    """The URI of the best Debian main-archive entry, or None."""
    best: tuple[int, int, str] | None = None
    for pos, source in enumerate(sources):
        for uri in source.uris:
            score = _score(source, uri)
            # Higher score wins; at equal score the first entry wins, as in apt's own file order.
            if score is not None and (best is None or (score, -pos) > best[:2]):
                best = (score, -pos, uri.rstrip("/"))
    return best[2] if best else None


def check_mirror(url: str) -> str:
    """Validate a mirror URL for use in our own sources file."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or (parts.scheme != "file" and not parts.netloc):
        raise ImageError(f"mirror must be an http://, https:// or file:// URL, got {url!r}")
    if re.search(r"[\s\[\]]", url):
        raise ImageError(f"mirror URL must not contain spaces or brackets: {url!r}")
    return url


def resolve_mirror(explicit: str | None = None, environ: Mapping[str, str] | None = None,
                   etc_apt: Path = Path("/etc/apt")) -> str:
    """--mirror, else $POCKETVM_MIRROR, else the host's Debian archive entry."""
    env = os.environ if environ is None else environ
    if explicit:
        return check_mirror(explicit)
    if env.get(MIRROR_ENV):
        return check_mirror(env[MIRROR_ENV])
    found = pick_debian_mirror(host_sources(etc_apt))
    if found is None:
        raise ImageError(f"no Debian archive found in {etc_apt}/sources.list(.d); "
                         f"pass --mirror URL or set {MIRROR_ENV}")
    return check_mirror(found)
