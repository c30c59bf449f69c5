"""The persistent translation cache: compiled batches on disk, found by content.

One SQLite file per translator version (`translator.VERSION`) under
~/.cache/pocketvm/jit/ (or $POCKETVM_JIT_CACHE; "off" disables it). A batch
is one object file; each region it holds is indexed by its entry (place in
its page, mode and first instruction: `translator.entry_key`) and carries
the bits of every instruction it was made from. A lookup takes a region
whose instructions are all there in guest RAM now, so the second boot of the
same kernel finds the code it compiled the first time, whichever branches
the interpreter happened to see taken before it asked, and the same program
loaded at another physical address finds it too (translated code does not
depend on where its page is).

What is read back is data from disk, never trusted: every object carries
its SHA-256 and is checked before it is handed out; a file that is not
such a database (truncated, corrupt, foreign) is replaced by an empty one,
and any SQLite error just makes the cache miss. The total size of objects is
bounded (least recently used batches go first). Several VMs may share the
file (SQLite's locking; the service waits a few seconds for another VM's
write, then takes it as a miss). The VM process itself only reads it
(`read_only`): it reads every region's entry once (`regions`) and loads the
objects of what it finds there, so cached code runs without waiting for the
service, whose process gets little CPU on a busy host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pocketvm.paths import cache_dir

log = logging.getLogger(__name__)

ENV_VAR = "POCKETVM_JIT_CACHE"
MAX_BYTES = int(os.environ.get("POCKETVM_JIT_CACHE_MAX", str(64 << 20)))

# The object comes last in its row: SQLite keeps a long blob in a chain of
# overflow pages and reads through the whole chain to reach a column after
# it, so with the object second, summing sizes (after every store and in
# replies) read every object in the file (15 MB after a few boots: the
# service's CPU went into copying the file, ~0.4 s a warm boot). The
# schema's number is in the file's name: files of another schema go.
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (id TEXT PRIMARY KEY, digest TEXT NOT NULL, size INTEGER NOT NULL,
                                  used REAL NOT NULL, object BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS region (entry INTEGER NOT NULL, tkey INTEGER NOT NULL, batch TEXT NOT NULL,
                                   name TEXT NOT NULL, code BLOB NOT NULL, size INTEGER NOT NULL,
                                   tier INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS region_entry ON region (entry);
CREATE INDEX IF NOT EXISTS region_batch ON region (batch);
"""


def cache_root() -> Path | None:
    """The directory of the cache files, or None when the cache is off."""
    where = os.environ.get(ENV_VAR, "")
    if where.strip().lower() == "off":
        return None
    return Path(where) if where else cache_dir() / "jit"


def cache_path(version: str) -> Path | None:
    """The cache file for this translator version, or None when disabled."""
    base = cache_root()
    return None if base is None else base / f"tier1-{version}-{SCHEMA_VERSION}.sqlite"


def new_batch_id() -> str:
    return secrets.token_hex(8)


class ObjectCache:
    """Batches by region key. Every method degrades to "not cached" on trouble."""

    def __init__(self, path: Path | None, max_bytes: int = MAX_BYTES, read_only: bool = False):
        """`read_only`: never writes, never waits for a writer (a busy file is a miss), creates nothing."""
        self.path = path
        self.max_bytes = max_bytes
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._bytes: int | None = None  # `approximate_size`
        self._unread = 0  # bytes this process stored since it last read the size
        if path is not None:
            self._db = self._open_reader(path) if read_only else self._open(path)

    @staticmethod
    def _open_reader(path: Path) -> sqlite3.Connection | None:
        if not path.is_file():
            return None
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0, check_same_thread=False)
            db.execute("SELECT count(*) FROM region").fetchone()
            return db
        except sqlite3.Error:
            return None

    def _open(self, path: Path) -> sqlite3.Connection | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_other_versions(path)
        except OSError:
            return None
        for attempt in range(2):
            try:
                # Waiting for another VM's write is harmless here: the cache is
                # only used by the translation service, never by the hart.
                db = sqlite3.connect(str(path), timeout=5, isolation_level=None, check_same_thread=False)
                # A cache: its journal keeps it whole when a process dies, and
                # what a host crash could tear is caught by each object's digest.
                # Waiting for the disk at every commit (4.5k fdatasync calls in
                # a boot, most for marking objects used) is not worth it.
                db.execute("PRAGMA synchronous = OFF")
                if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'region_batch'").fetchone()[0] == 0:
                    db.executescript(_SCHEMA)
                db.execute("SELECT count(*) FROM batch").fetchone()
                return db
            except sqlite3.DatabaseError as e:  # not a database, corrupt, or an unexpected schema
                if attempt == 0 and not isinstance(e, sqlite3.OperationalError):
                    log.warning("tier 1: translation cache %s unusable (%s), starting a new one", path, e)
                    try:
                        path.unlink()
                    except OSError:
                        return None
                    continue
                log.warning("tier 1: translation cache %s unusable (%s), not caching", path, e)
                return None
        return None

    @staticmethod
    def _drop_other_versions(path: Path) -> None:
        """Caches of older translators can never be used again."""
        for other in path.parent.glob("tier1-*.sqlite*"):
            if not other.name.startswith(path.name):
                try:
                    other.unlink()
                except OSError:
                    pass

    def lookup(
        self, entry: int, still_there: Callable[[bytes], bool], min_size: int
    ) -> tuple[str, str, bytes, int] | None:
        """(batch id, function name, code signature, how well it was compiled) of the
        best region at this entry whose code `still_there` accepts (`translator.code_signature`)."""
        if self._db is None:
            return None
        try:
            rows = self._db.execute(
                "SELECT batch, name, code, tier FROM region WHERE entry = ? AND size >= ? "
                "ORDER BY tier DESC, size DESC LIMIT 8",
                (entry, min_size),
            ).fetchall()
        except sqlite3.Error:
            return None
        for batch, name, code, tier in rows:
            if isinstance(code, bytes) and still_there(code):
                return str(batch), str(name), code, int(tier)
        return None

    def regions(self) -> list[tuple[int, int, str, str, bytes, int, int]]:
        """Every region: (entry key, table key where it was made, batch id, function name,
        code signature, instructions, how well compiled); [] on any trouble."""
        if self._db is None:
            return []
        try:
            rows = self._db.execute("SELECT entry, tkey, batch, name, code, size, tier FROM region").fetchall()
        except sqlite3.Error:
            return []
        return [
            (int(e), int(k), str(b), str(n), c, int(sz), int(t))
            for e, k, b, n, c, sz, t in rows
            if isinstance(c, bytes)
        ]

    def load(self, batch: str) -> tuple[bytes, list[tuple[str, int]]] | None:
        """A batch's object and its functions [(name, table key where it was made)], checked;
        None if missing or damaged."""
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT object, digest FROM batch WHERE id = ?", (batch,)).fetchone()
            if row is None:
                return None
            obj, digest = row
            if not isinstance(obj, bytes) or hashlib.sha256(obj).hexdigest() != digest:
                log.warning("tier 1: damaged object %s in the translation cache, dropped", batch)
                if not self.read_only:
                    self._delete(batch)
                return None
            names = [
                (str(n), int(k)) for n, k in self._db.execute("SELECT name, tkey FROM region WHERE batch = ?", (batch,))
            ]
            if not self.read_only:
                self._db.execute("UPDATE batch SET used = ? WHERE id = ?", (time.time(), batch))
            return obj, names
        except (sqlite3.Error, TypeError, ValueError):
            return None

    def touch(self, batches: list[str]) -> None:
        """Mark batches as just used (the VM loaded them itself)."""
        if self._db is None or self.read_only:
            return
        try:
            with self._db:
                now = time.time()
                self._db.executemany("UPDATE batch SET used = ? WHERE id = ?", [(now, b) for b in batches])
        except sqlite3.Error:
            pass

    def store(self, batch: str, obj: bytes, regions: list[tuple[int, int, str, bytes, int, int]]) -> None:
        """Keep a compiled batch: regions as (entry key, table key, function name, code signature,
        instructions, how well compiled); they replace regions made from the same code."""
        if self._db is None or self.read_only:
            return
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO batch (id, digest, size, used, object) VALUES (?, ?, ?, ?, ?)",
                    (batch, hashlib.sha256(obj).hexdigest(), len(obj), time.time(), obj),
                )
                self._db.executemany(
                    "DELETE FROM region WHERE entry = ? AND code = ?", [(r[0], r[3]) for r in regions]
                )
                self._db.executemany("INSERT INTO region VALUES (?, ?, ?, ?, ?, ?, ?)", [(r[0], r[1], batch, *r[2:]) for r in regions])
            if self._bytes is not None:
                self._bytes += len(obj)
                self._unread += len(obj)
            self._bound()
        except sqlite3.Error as e:
            log.debug("tier 1: could not store a batch in the translation cache: %s", e)

    def size(self) -> int:
        if self._db is None:
            return 0
        try:
            return int(self._db.execute("SELECT coalesce(sum(size), 0) FROM batch").fetchone()[0])
        except sqlite3.Error:
            return 0

    def approximate_size(self) -> int:
        """`size()`, counted on with this process's own stores and deletions
        and read again after an eighth of the bound stored (and whenever it
        passes the bound): other VMs' stores show then, and with several
        writers the cache passes its bound by about an eighth of it per
        writer at most. (Summing the table walks over every batch's row:
        twice a batch stored, it took ~7% of a cold boot's service CPU.)"""
        if self._bytes is None or self._unread > self.max_bytes // 8:
            return self._read_size()
        return self._bytes

    def _read_size(self) -> int:
        self._bytes, self._unread = self.size(), 0
        return self._bytes

    def _bound(self) -> None:
        assert self._db is not None
        if self.approximate_size() <= self.max_bytes:
            return
        total = self._read_size()
        if total <= self.max_bytes:
            return
        with self._db:
            for batch, size in self._db.execute("SELECT id, size FROM batch ORDER BY used").fetchall():
                if total <= self.max_bytes * 3 // 4:
                    break
                self._delete(batch)
                total -= int(size)
        self._bytes = total

    def _delete(self, batch: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM region WHERE batch = ?", (batch,))
        self._db.execute("DELETE FROM batch WHERE id = ?", (batch,))

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
