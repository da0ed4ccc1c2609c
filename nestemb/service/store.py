"""Durable storage of the service: collections and points in one SQLite database (WAL mode).

Why SQLite: its commit guarantees are documented per journal mode and tested far beyond what a
home-made log would be. In WAL mode a committed transaction survives a killed process in both
durability settings (the WAL pages are in the OS's cache); the settings differ on an OS crash or
power loss:

* ``full`` (``PRAGMA synchronous=FULL``): the WAL is fsynced at every commit, so a write is
  acknowledged only once it is on disk;
* ``relaxed`` (``synchronous=NORMAL``): a commit does not wait for the disk. SQLite itself
  fsyncs the WAL only at checkpoints (every ~1,000 pages, about 4 MiB of writes: at a low write
  rate that can take minutes), so a background thread of the store also fsyncs the WAL every
  ``sync_interval`` seconds (default 1) when something was committed: a power loss may drop
  the writes of about the last second (measured: at most 1.0 s); a killed process loses
  nothing.

Both settings also fsync the data folder when the database is created, and its parent when
the folder is new (SQLite syncs the folder of its journal files, not the folder's own entry);
refuse to run if SQLite cannot use WAL mode (some network file systems); and refuse an upsert
into a collection that no longer exists, inside the same transaction (no rows left behind by a
drop to reappear in a re-created collection).
``benchmarks/crash.py`` kills the server hundreds of times mid-write and checks every
acknowledged write; it also measures, from an ``strace`` of the server's fsyncs, how long an
acknowledged write stays in the OS cache only (the power-loss exposure of ``relaxed``).

Point ids are JSON values (an integer or a string) kept as their JSON text, so ``5`` and
``"5"`` are different points. Vectors are float32 blobs, payloads JSON text.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nestemb.errors import NestembError

DB_NAME = "nestemb.sqlite3"
SYNC_INTERVAL = 1.0
"""Seconds between background fsyncs of the WAL with ``relaxed`` (the power-loss window)."""
DURABILITY = ("full", "relaxed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    vector BLOB NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sequence (
    one INTEGER PRIMARY KEY CHECK (one = 0),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO sequence (one, seq) VALUES (0, 0);
"""
_COLUMNS = (("points", "seq"), ("collections", "epoch"), ("points", "origin"))
"""Columns added after the first schema (``ALTER TABLE`` on an older database): the write
sequence number of a point's last write, the sequence number a collection was created at,
and how a point's vector was made (:data:`MODEL` or :data:`MAPPED`)."""
MODEL, MAPPED = 0, 1
"""A stored vector's ``origin``: made by the collection's model (or posted by its client), or
computed by a fitted map from another model's vector (during a migration)."""
SHADOW_SUFFIX = "#new"
"""A migrating collection's vectors in the new model's space are stored as the collection
``<name>#new`` (a name no client can give: ``#`` is not allowed in collection names)."""
SNAPSHOTS = "snapshots"
"""Folder (in the data folder) of the collections' index snapshots."""


def shadow_name(collection: str) -> str:
    """Where the new-model vectors of a migrating collection are stored.

    Example:
        >>> shadow_name("docs")
        'docs#new'
    """
    return collection + SHADOW_SUFFIX


class MissingCollection(NestembError):
    """A write to a collection that is not in the store (dropped meanwhile)."""


def _fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (POSIX: fsync the folder); a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def id_key(point_id: int | str) -> str:
    """The stored form of a point id (its JSON text: ``5`` and ``"5"`` differ).

    Example:
        >>> id_key(5), id_key("5")
        ('5', '"5"')
    """
    return json.dumps(point_id)


def _json_ok(text: Any, types: tuple) -> bool:
    """Whether ``text`` is JSON text of one of ``types``."""
    try:
        return type(json.loads(text)) in types
    except (TypeError, ValueError):
        return False


class Store:
    """Collections and points in ``<data_dir>/nestemb.sqlite3``; every method is one
    transaction, safe to call from several threads (writes are serialized).

    Example:
        >>> import tempfile
        >>> s = Store(tempfile.mkdtemp())
        >>> s.create_collection("docs", {"nesting": [2, 4]})
        >>> s.upsert("docs", [(1, np.ones(4, "float32"), {"a": 1})])
        >>> [(k, v.tolist(), p) for k, v, p in s.points("docs")]
        [(1, [1.0, 1.0, 1.0, 1.0], {'a': 1})]
    """

    def __init__(self, data_dir: str | Path, durability: str = "full",
                 sync_interval: float = SYNC_INTERVAL):
        if durability not in DURABILITY:
            raise NestembError(f"{{param}} must be one of {DURABILITY}, got {durability!r}",
                               param="durability")
        self.data_dir = Path(data_dir)
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise NestembError(f"{{param}} is not a folder: {self.data_dir}", param="data_dir")
        new_dir = not self.data_dir.exists()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NestembError(f"{{param}}: cannot create {self.data_dir}: {e.strerror}",
                               param="data_dir") from None
        self.path = self.data_dir / DB_NAME
        new_db = not self.path.exists()
        if self.path.exists() and not self.path.is_file():
            raise NestembError(f"{self.path}: is not a file (the service's SQLite database)")
        self.durability = durability
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise NestembError(f"{self.path}: cannot be opened as a SQLite database ({e})"
                               ) from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise NestembError(f"{{param}}: SQLite cannot use WAL mode in {self.data_dir} "
                                   f"(journal mode {mode!r}; a network file system?)",
                                   param="data_dir")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            for table, column in _COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL "
                                     "DEFAULT 0")
            self._db.execute("CREATE INDEX IF NOT EXISTS points_seq ON points (collection, seq)")
            self._seq = int(self._db.execute("SELECT seq FROM sequence").fetchone()[0])
        except sqlite3.Error as e:
            self._db.close()
            raise self._corrupt(e) from None
        except BaseException:
            self._db.close()
            raise
        if new_db:  # the database (and WAL) file names must survive a power loss too
            _fsync_dir(self.data_dir)
            if new_dir:
                _fsync_dir(self.data_dir.parent)
        self._commits = 0  # commits so far; the flusher syncs when it moved
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if durability == "relaxed" and sync_interval > 0:
            self._flusher = threading.Thread(target=self._flush_loop, args=(sync_interval,),
                                             name="nestemb-wal-sync", daemon=True)
            self._flusher.start()

    def _flush_loop(self, interval: float) -> None:
        """``relaxed``: fsync the WAL file once per ``interval`` if anything was committed
        (every commit counted before the fsync starts has its frames written by then)."""
        wal, synced = Path(f"{self.path}-wal"), 0
        while not self._closed.wait(interval):
            seen = self._commits
            if seen == synced:
                continue
            try:
                fd = os.open(wal, os.O_RDONLY)
            except FileNotFoundError:  # checkpointed and removed: nothing to sync
                synced = seen
                continue
            try:
                os.fsync(fd)
                synced = seen
            except OSError:
                pass  # retried at the next interval
            finally:
                os.close(fd)

    def _corrupt(self, e: sqlite3.Error) -> NestembError:
        """A SQLite error reading the database as a one-line user error naming the file."""
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
            return NestembError(f"{self.path}: is not a SQLite database or is damaged ({e}); "
                                "restore it from a backup or move it away")
        return NestembError(f"{self.path}: cannot be read ({e})")

    def close(self) -> None:
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout=30)
        with self._lock:
            self._db.close()

    def _write(self, statements: list[tuple[str, Any]],
               require: str | None = None) -> None:
        """Run ``(sql, rows)`` pairs (``executemany``) in one transaction that also advances
        the write sequence (rows may use it through a callable: ``rows(seq)``); with
        ``require``, first check (inside the transaction) that this collection exists."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            seq = self._seq + 1
            try:
                if require is not None and cur.execute(
                        "SELECT 1 FROM collections WHERE name = ?", (require,)).fetchone() is None:
                    raise MissingCollection(f"collection {require!r} does not exist")
                for sql, rows in statements:
                    cur.executemany(sql, rows(seq) if callable(rows) else rows)
                cur.execute("UPDATE sequence SET seq = ?", (seq,))
                cur.execute("COMMIT")
                self._seq = seq
                self._commits += 1
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it already
                    self._db.execute("ROLLBACK")
                raise

    def sequence(self) -> int:
        """The sequence number of the last committed write (every write advances it)."""
        return self._seq

    def epoch(self, collection: str) -> int:
        """The sequence number ``collection`` was created at (tells a re-created collection
        from the one dropped before it)."""
        row = self._read("SELECT epoch FROM collections WHERE name = ?", (collection,))
        return int(row[0][0]) if row else -1

    def _read(self, sql: str, args: tuple) -> list:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._corrupt(e) from None

    def snapshot_dir(self, collection: str, create: bool = True) -> Path:
        """The folder of ``collection``'s index snapshots (made when ``create``)."""
        path = self.data_dir / SNAPSHOTS / collection
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _drop_snapshots(self, collection: str) -> None:
        import shutil

        shutil.rmtree(self.data_dir / SNAPSHOTS / collection, ignore_errors=True)

    # ----------------------------------------------------------------- collections
    def collections(self) -> dict[str, dict]:
        """Every collection's config; a config that is not a JSON object with a nesting (an
        ascending list of positive integers) is a :class:`NestembError` naming the file, the
        collection and the field.

        Example:
            >>> import tempfile
            >>> s = Store(tempfile.mkdtemp())
            >>> s.create_collection("docs", {"nesting": [2, 4], "encoder": None})
            >>> s.collections()
            {'docs': {'nesting': [2, 4], 'encoder': None}}
        """
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT name, config FROM collections ORDER BY name").fetchall()
        except sqlite3.Error as e:
            raise self._corrupt(e) from None
        out = {}
        for name, text in rows:
            if name.endswith(SHADOW_SUFFIX):  # a migration's new space: see shadow_config
                continue
            where = f"{self.path}: collection {name!r}"
            try:
                cfg = json.loads(text)
            except (TypeError, ValueError) as e:
                raise NestembError(f"{where}: its config is not valid JSON ({e})") from None
            if not isinstance(cfg, dict):
                raise NestembError(f"{where}: its config is not a JSON object")
            nesting = cfg.get("nesting")
            if not (isinstance(nesting, list) and nesting
                    and all(type(d) is int and d > 0 for d in nesting)
                    and all(a < b for a, b in zip(nesting, nesting[1:]))):
                raise NestembError(f"{where}: config field 'nesting' must be an ascending list "
                                   f"of positive integers, got {nesting!r}")
            if cfg.get("encoder") is not None and not isinstance(cfg["encoder"], str):
                raise NestembError(f"{where}: config field 'encoder' must be a string or null, "
                                   f"got {cfg['encoder']!r}")
            out[name] = cfg
        return out

    def create_collection(self, name: str, config: dict) -> None:
        """Add a collection; points stored under its name by an older version without the
        collection (a drop that raced an upsert) are removed in the same transaction."""
        self._drop_snapshots(name)
        self._write([("DELETE FROM points WHERE collection = ?", [(name,)]),
                     ("DELETE FROM removed WHERE collection = ?", [(name,)]),
                     ("INSERT INTO collections (name, config, epoch) VALUES (?, ?, ?)",
                      lambda seq: [(name, json.dumps(config), seq)])])

    def update_config(self, name: str, config: dict) -> None:
        self._write([("UPDATE collections SET config = ? WHERE name = ?",
                      [(json.dumps(config), name)])])

    def drop_collection(self, name: str) -> None:
        """Drop a collection with its points (and a migration's new space, if any)."""
        names = [(name,), (shadow_name(name),)]
        self._write([("DELETE FROM points WHERE collection = ?", names),
                     ("DELETE FROM removed WHERE collection = ?", names),
                     ("DELETE FROM collections WHERE name = ?", names)])
        self._drop_snapshots(name)
        self._drop_snapshots(shadow_name(name))

    # ------------------------------------------------------------------ migrations
    def start_migration(self, name: str, config: dict, shadow_config: dict) -> None:
        """Record ``config`` (with its ``migration``) and create the new space's collection
        ``shadow_name(name)``, in one transaction."""
        shadow = shadow_name(name)
        self._drop_snapshots(shadow)
        self._write([("DELETE FROM points WHERE collection = ?", [(shadow,)]),
                     ("DELETE FROM removed WHERE collection = ?", [(shadow,)]),
                     ("INSERT INTO collections (name, config, epoch) VALUES (?, ?, ?)",
                      lambda seq: [(shadow, json.dumps(shadow_config), seq)]),
                     ("UPDATE collections SET config = ? WHERE name = ?",
                      [(json.dumps(config), name)])], require=name)

    def shadow_config(self, name: str) -> dict | None:
        """The config of ``name``'s migration space, or None when it has none."""
        rows = self._read("SELECT config FROM collections WHERE name = ?", (shadow_name(name),))
        return json.loads(rows[0][0]) if rows else None

    def finish_migration(self, name: str, config: dict) -> None:
        """One transaction: the old vectors are dropped, the new space's points become the
        collection's, ``config`` (the new model's) replaces its config and the collection
        gets a new epoch (its old snapshots are never read again)."""
        shadow = shadow_name(name)
        self._write([("DELETE FROM points WHERE collection = ?", [(name,)]),
                     ("UPDATE points SET collection = ? WHERE collection = ?", [(name, shadow)]),
                     ("DELETE FROM removed WHERE collection = ?", [(name,), (shadow,)]),
                     ("DELETE FROM collections WHERE name = ?", [(shadow,)]),
                     ("UPDATE collections SET config = ?, epoch = ? WHERE name = ?",
                      lambda seq: [(json.dumps(config), seq, name)])], require=name)
        self._drop_snapshots(name)
        self._drop_snapshots(shadow)
        self.checkpoint()

    def cancel_migration(self, name: str, config: dict) -> None:
        """One transaction: the new space is dropped and ``config`` (without the migration)
        restored."""
        shadow = shadow_name(name)
        self._write([("DELETE FROM points WHERE collection = ?", [(shadow,)]),
                     ("DELETE FROM removed WHERE collection = ?", [(shadow,)]),
                     ("DELETE FROM collections WHERE name = ?", [(shadow,)]),
                     ("UPDATE collections SET config = ? WHERE name = ?",
                      [(json.dumps(config), name)])], require=name)
        self._drop_snapshots(shadow)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Move the WAL into the database and truncate it (after a migration ends, the WAL
        holds a copy of every page it rewrote); the freed pages are reused by later writes.
        Skipped while a reader holds an old snapshot of the database (SQLite answers busy)."""
        try:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass

    def mapped_ids(self, collection: str) -> list[int | str]:
        """Ids of the points of ``collection`` whose stored vector a map computed
        (origin :data:`MAPPED`)."""
        rows = self._read("SELECT id FROM points WHERE collection = ? AND origin = ?",
                          (collection, MAPPED))
        return [json.loads(r[0]) for r in rows]

    # ----------------------------------------------------------------------- points
    def upsert(self, collection: str, points: list[tuple[int | str, np.ndarray, dict]],
               origin: int | Sequence[int] = MODEL) -> None:
        """Insert or replace ``(id, float32 vector, payload)`` rows, all or none; raises
        :class:`MissingCollection` if ``collection`` is not (or no longer) stored. ``origin``
        (one for all, or one per point) says how each vector was made."""
        self.write([(collection, points, origin)], require=collection)

    def delete(self, collection: str, ids: list[int | str]) -> None:
        """Delete points; each leaves a ``removed`` row (its id and sequence number) for a
        snapshot's replay (:meth:`changes`), pruned by :meth:`prune`."""
        self.write(deletes=[(collection, ids)])

    def write(self, upserts: Sequence[tuple[str, list, int | Sequence[int]]] = (),
              deletes: Sequence[tuple[str, list]] = (), require: str | None = None) -> None:
        """Upserts ``(collection, points, origin)`` (as :meth:`upsert`) and deletes
        ``(collection, ids)`` (as :meth:`delete`) in one transaction, all or none (a migrating
        collection writes both its spaces at once); with ``require``, refused with
        :class:`MissingCollection` unless that collection is stored.

        Example:
            >>> import tempfile
            >>> s = Store(tempfile.mkdtemp())
            >>> s.create_collection("a", {"nesting": [2]})
            >>> s.create_collection("b", {"nesting": [3]})
            >>> s.write([("a", [(1, np.ones(2), {})], MODEL),
            ...          ("b", [(1, np.ones(3), {})], MAPPED)], require="a")
            >>> s.mapped_ids("a"), s.mapped_ids("b")
            ([], [1])
        """
        statements: list[tuple[str, Any]] = []
        for name, pts, how in upserts:
            hows = [int(how)] * len(pts) if isinstance(how, (int, np.integer)) else list(how)
            rows = [(name, id_key(i), np.asarray(v, dtype="<f4").tobytes(), json.dumps(p), o)
                    for (i, v, p), o in zip(pts, hows)]
            statements += [(
                "INSERT OR REPLACE INTO points (collection, id, vector, payload, origin, seq) "
                "VALUES (?, ?, ?, ?, ?, ?)", lambda seq, rows=rows: [(*r, seq) for r in rows],
            ), ("DELETE FROM removed WHERE collection = ? AND id = ?",
                [(name, id_key(i)) for i, _, _ in pts])]
        for name, ids in deletes:
            keys = [(name, id_key(i)) for i in ids]
            statements += [("DELETE FROM points WHERE collection = ? AND id = ?", keys),
                           ("INSERT OR REPLACE INTO removed (collection, id, seq) "
                            "VALUES (?, ?, ?)", lambda seq, keys=keys: [(*k, seq) for k in keys])]
        self._write(statements, require=require)

    def prune(self, collection: str, seq: int) -> None:
        """Forget deletions up to sequence number ``seq`` (a snapshot holds them)."""
        with self._lock:
            self._db.execute("DELETE FROM removed WHERE collection = ? AND seq <= ?",
                             (collection, seq))

    def point(self, collection: str, point_id: int | str) -> tuple[np.ndarray, dict] | None:
        """One stored point's vector (exactly as written) and payload, or None."""
        rows = self._read("SELECT vector, payload FROM points WHERE collection = ? AND id = ?",
                          (collection, id_key(point_id)))
        if not rows:
            return None
        return np.frombuffer(rows[0][0], dtype="<f4").astype(np.float32), json.loads(rows[0][1])

    def changes(self, collection: str, since: int, dim: int | None = None
                ) -> tuple[list[int | str], np.ndarray, list[dict], list[int | str]]:
        """What was written to ``collection`` after sequence number ``since``: the upserted
        points (as :meth:`load` returns them) and the ids deleted since.

        Example:
            >>> import tempfile
            >>> s = Store(tempfile.mkdtemp()); s.create_collection("c", {"nesting": [2]})
            >>> s.upsert("c", [(1, np.ones(2), {})]); mark = s.sequence()
            >>> s.upsert("c", [(2, np.ones(2), {})]); s.delete("c", [1])
            >>> ids, X, payloads, gone = s.changes("c", mark)
            >>> ids, gone
            ([2], [1])
        """
        ids, X, payloads = self.load(collection, dim, since=since)
        gone = self._read("SELECT id FROM removed WHERE collection = ? AND seq > ?",
                          (collection, since))
        return ids, X, payloads, [json.loads(r[0]) for r in gone]

    def load(self, collection: str, dim: int | None = None, since: int = -1
             ) -> tuple[list[int | str], np.ndarray, list[dict]]:
        """Every stored point of ``collection`` as ``(ids, (n, dim) float32 matrix,
        payloads)`` (only those written after sequence number ``since``), parsed in bulk (one JSON parse for all ids, one buffer for all vectors):
        this is most of a restart's time.

        Example:
            >>> import tempfile
            >>> s = Store(tempfile.mkdtemp())
            >>> s.create_collection("c", {"nesting": [2]})
            >>> s.upsert("c", [("a", np.ones(2), {}), (7, np.zeros(2), {"x": [1]})])
            >>> ids, X, payloads = s.load("c")
            >>> ids, X.tolist(), payloads
            (['a', 7], [[1.0, 1.0], [0.0, 0.0]], [{}, {'x': [1]}])
        """
        try:
            with self._lock:
                rows = self._db.execute(  # a full load scans the table, not the seq index
                    "SELECT id, vector, payload FROM points WHERE collection = ?"
                    + (" AND seq > ?" if since >= 0 else ""),
                    (collection, since) if since >= 0 else (collection,)).fetchall()
        except sqlite3.Error as e:
            raise self._corrupt(e) from None
        if not rows:
            return [], np.zeros((0, dim or 0), dtype=np.float32), []
        where = f"{self.path}: collection {collection!r}"
        try:
            ids = json.loads("[" + ",".join(r[0] for r in rows) + "]")
        except (TypeError, ValueError):
            bad = next(r[0] for r in rows if not _json_ok(r[0], (int, str)))
            raise NestembError(f"{where}: stored point id {bad!r} is not a JSON integer or "
                               "string") from None
        if len(ids) != len(rows) or not all(type(i) in (int, str) for i in ids):
            bad = next(r[0] for r in rows if not _json_ok(r[0], (int, str)))
            raise NestembError(f"{where}: stored point id {bad!r} is not a JSON integer or "
                               "string")
        sizes = {len(r[1]) if isinstance(r[1], bytes) else -1 for r in rows}
        if len(sizes) != 1 or (dim is not None and sizes != {4 * dim}):
            raise NestembError(f"collection {collection!r}: stored vectors of byte lengths "
                               f"{sorted(sizes)} (expected {4 * dim if dim else 'one length'})")
        X = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        payloads = []
        for pid, r in zip(ids, rows):
            try:
                payload = json.loads(r[2])
            except (TypeError, ValueError):
                payload = None
            if not isinstance(payload, dict):
                raise NestembError(f"{where}: the stored payload of point {pid!r} is not a JSON "
                                   "object")
            payloads.append(payload)
        return ids, X.astype(np.float32, copy=True), payloads

    def points(self, collection: str) -> Iterator[tuple[int | str, np.ndarray, dict]]:
        """Every stored point of ``collection`` as ``(id, vector, payload)``."""
        ids, X, payloads = self.load(collection)
        yield from zip(ids, X, payloads)
