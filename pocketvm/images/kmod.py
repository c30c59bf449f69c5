"""Kernel modules: their metadata, depmod-style index files, and load order.

Debian's kernel package ships the modules (xz-compressed) but not
modules.dep: depmod builds it at install time. We rebuild the same index in
Python from each module's `.modinfo` ELF section (`depends=`, `softdep=`,
`alias=`), write it in depmod's file formats, and resolve a load order from
those files, so the resolver works the same on a real depmod output.

The initramfs has no modprobe logic of its own: /init insmods the modules in
the order computed here, dependencies first. Soft dependencies ("pre:") are
honoured because some modules need them at init time (ext4/jbd2 want a
crc32c implementation, which the kernel would otherwise try to request_module
through a modprobe that does not exist).
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODULE_SUFFIXES = (".ko.xz", ".ko.gz", ".ko")


class ModuleError(ValueError):
    """A module is missing, malformed, or its dependencies form a cycle."""


def module_name(path: str) -> str:
    """Canonical module name of a path: basename, no .ko[.xz|.gz], '-' -> '_'."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def decompress_module(path: str, data: bytes) -> bytes:
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


def read_modinfo(elf: bytes) -> list[tuple[str, str]]:
    """The key=value pairs of a module's .modinfo section (ELF64 little-endian)."""
    if elf[:4] != b"\x7fELF" or len(elf) < 64:
        raise ModuleError("not an ELF file")
    if elf[4] != 2 or elf[5] != 1:
        raise ModuleError("not a 64-bit little-endian ELF file")
    try:
        (shoff,) = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
        sections = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
        strtab_off = sections[shstrndx][4]
        for name_off, _type, _flags, _addr, off, size in sections:
            start = strtab_off + name_off
            if elf[start : elf.index(b"\0", start)] == b".modinfo":
                raw = elf[off : off + size]
                break
        else:
            raise ModuleError("no .modinfo section")
    except (struct.error, IndexError, ValueError) as exc:
        raise ModuleError(f"malformed ELF section table: {exc}") from None
    pairs = []
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


@dataclass
class ModuleInfo:
    name: str
    path: str  # relative to /lib/modules/<release>, as stored in the package
    depends: list[str] = field(default_factory=list)
    softdep_pre: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def module_info(path: str, elf: bytes) -> ModuleInfo:
    info = ModuleInfo(module_name(path), path)
    for key, value in read_modinfo(elf):
        if key == "depends":
            info.depends += [module_name(d) for d in value.split(",") if d]
        elif key == "softdep":
            info.softdep_pre += _softdep_pre(value.split())
        elif key == "alias":
            info.aliases.append(value)
    return info


def _softdep_pre(words: Sequence[str]) -> list[str]:
    pre, current = [], None
    for word in words:
        if word.endswith(":"):
            current = word[:-1]
        elif current == "pre":
            pre.append(word)
    return pre


def scan_modules(root: Path, progress: Callable[[int, int], None] | None = None) -> list[ModuleInfo]:
    """Read the metadata of every module under root (a /lib/modules/<release>)."""
    infos = []
    files = [p for p in sorted(root.rglob("*.ko*")) if p.name.endswith(MODULE_SUFFIXES)]
    for count, p in enumerate(files, start=1):
        rel = p.relative_to(root).as_posix()
        if progress:
            progress(count, len(files))
        try:
            infos.append(module_info(rel, decompress_module(rel, p.read_bytes())))
        except (ModuleError, lzma.LZMAError, OSError, EOFError) as exc:
            raise ModuleError(f"cannot read kernel module {rel}: {exc}") from None
    return infos


def check_complete(order: Sequence[str], infos: Iterable[ModuleInfo]) -> None:
    """ModuleError unless every module in order has its declared dependencies
    loaded before it (modules.dep cannot name a dependency that is not shipped)."""
    declared = {i.name: i.depends for i in infos}
    loaded: set[str] = set()
    for name in order:
        for dep in declared.get(name, ()):
            if dep not in loaded:
                raise ModuleError(f"module {name!r} needs {dep!r}, which is not shipped with the kernel")
        loaded.add(name)


# ----- depmod file formats -------------------------------------------------

def format_modules_dep(infos: Iterable[ModuleInfo]) -> str:
    """modules.dep text: each module with all its (transitive) dependencies.

    As depmod does, dependencies are listed so that loading them from the
    last to the first works.
    """
    infos = list(infos)
    by_name = {i.name: i for i in infos}
    lines = []
    for info in infos:
        # Like depmod, tolerate what the resolver refuses (a dependency that
        # is not shipped, a cycle): the index covers every module, and only
        # the modules we actually load must resolve cleanly.
        order: list[str] = []
        seen = {info.name}
        stack = [(info.name, iter(info.depends))]
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                if name != info.name:
                    order.append(name)
            elif dep not in seen and dep in by_name:
                seen.add(dep)
                stack.append((dep, iter(by_name[dep].depends)))
        paths = [by_name[n].path for n in reversed(order)]
        lines.append(f"{info.path}: {' '.join(paths)}".rstrip())
    return "\n".join(lines) + "\n"


def format_modules_softdep(infos: Iterable[ModuleInfo]) -> str:
    return "".join(f"softdep {i.name} pre: {' '.join(i.softdep_pre)}\n" for i in infos if i.softdep_pre)


def format_modules_alias(infos: Iterable[ModuleInfo]) -> str:
    return "".join(f"alias {a} {i.name}\n" for i in infos for a in i.aliases)


@dataclass(frozen=True)
class ModuleIndex:
    """What the resolver needs, as read from depmod-format files."""

    paths: dict[str, str]            # name -> path relative to /lib/modules/<release>
    depends: dict[str, list[str]]    # name -> dependency names
    softdep_pre: dict[str, list[str]] = field(default_factory=dict)  # name -> names or aliases
    aliases: dict[str, list[str]] = field(default_factory=dict)      # alias pattern -> names
    builtin: frozenset[str] = frozenset()

    def lookup(self, name_or_alias: str) -> list[str]:
        """Module names that provide a name or alias (built-in ones included)."""
        name = module_name(name_or_alias)
        if name in self.paths or name in self.builtin:
            return [name]
        found = list(self.aliases.get(name_or_alias, ()))
        if not found:
            for pattern, names in self.aliases.items():
                if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name_or_alias, pattern):
                    found += names
        return sorted(set(found))


def _lines(text: str) -> Iterable[str]:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def parse_modules_dep(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(name -> path, name -> dependency names) from modules.dep text."""
    paths: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    for line in _lines(text):
        path, sep, rest = line.partition(":")
        if not sep:
            raise ModuleError(f"malformed modules.dep line: {line!r}")
        name = module_name(path.strip())
        paths[name] = path.strip()
        depends[name] = [module_name(d) for d in rest.split()]
    return paths, depends


def parse_modules_softdep(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _lines(text):
        words = line.split()
        if len(words) >= 2 and words[0] == "softdep":
            out.setdefault(module_name(words[1]), []).extend(_softdep_pre(words[2:]))
    return out


def parse_modules_alias(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _lines(text):
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            out.setdefault(words[1], []).append(module_name(words[2]))
    return out


def parse_modules_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line) for line in _lines(text))


def load_index(moddir: Path) -> ModuleIndex:
    """Read modules.dep (+ .softdep, .alias, .builtin when present) from a module dir."""

    def text(name: str) -> str:
        p = moddir / name
        return p.read_text() if p.exists() else ""

    paths, depends = parse_modules_dep((moddir / "modules.dep").read_text())
    return ModuleIndex(paths, depends, parse_modules_softdep(text("modules.softdep")),
                       parse_modules_alias(text("modules.alias")),
                       parse_modules_builtin(text("modules.builtin")))


# ----- load order --------------------------------------------------------

def resolve_load_order(
    wanted: Iterable[str],
    depends: Mapping[str, Sequence[str]],
    index: ModuleIndex | None = None,
) -> list[str]:
    """Module names to insmod, dependencies before dependents, each once.

    `wanted` are module names (or aliases when an index is given). Wanted
    modules that are built into the kernel are skipped; a wanted module that
    is neither a module nor built in is an error. Soft "pre" dependencies are
    loaded first when they exist as modules and are silently skipped
    otherwise, as modprobe does.
    """
    builtin = index.builtin if index else frozenset()
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin or state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ModuleError("module dependency cycle: " + " -> ".join(chain + (name,)))
        if name not in depends:
            raise ModuleError(f"module {name!r} needed by {chain[-1]!r} is not in modules.dep"
                              if chain else f"no kernel module named {name!r}")
        state[name] = "visiting"
        if index is not None:
            for soft in index.softdep_pre.get(name, ()):
                for provider in index.lookup(soft):
                    if provider in depends and state.get(provider) != "visiting":
                        visit(provider, chain + (name,))
        for dep in depends[name]:
            visit(dep, chain + (name,))
        state[name] = "done"
        order.append(name)

    for want in wanted:
        names = index.lookup(want) if index is not None else [module_name(want)]
        if not names:
            raise ModuleError(f"no kernel module named {want!r}")
        for name in names:
            visit(name, ())
    return order
