"""The results store: one SQLite file per run, one row per finished example.

A run is identified by its configuration (model checksum, norm, eps, methods,
solver, time limit, data selection). Re-opening a store with the same
configuration resumes it: finished examples are skipped. A different
configuration is refused with a message saying which setting differs.

Each example is written in its own transaction as soon as it finishes, so a
killed driver loses at most the examples that were still running. Only the
driver process writes; Dask workers return rows to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, cast

import numpy as np

from ..results import order_row
from ..errors import VerifyError

SCHEMA_VERSION = 1

# keys of the configuration that do not change the results (and so may differ between shards).
# The selection of examples is not part of a run's identity: rows are keyed by their data-set
# index, so a store made with -n 200 grows when the same command runs with -n 220.
_NON_IDENTIFYING = {"shard", "workers", "scheduler", "cluster", "output", "model_path", "progress", "threads",
                    "n_selected", "selection_sha", "data_dir"}


class StoreError(VerifyError):
    """A results store that cannot be opened or does not fit the run."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identifying(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in sorted(config) if k not in _NON_IDENTIFYING}


@dataclass(frozen=True)
class StoredRow:
    index: int
    row: dict[str, Any]
    counterexample: np.ndarray | None


class ResultsStore:
    """An open results store. Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(self, path: Path, conn: sqlite3.Connection, config: dict[str, Any]) -> None:
        self.path = path
        self._conn = conn
        self.config = config

    # ---- opening
    @classmethod
    def open(cls, path: str | Path, config: Mapping[str, Any] | None = None, *, create: bool = True) -> "ResultsStore":
        """Open (or create) a store. With ``config``, refuse a store made with another configuration."""
        path = Path(path)
        if not path.exists() and not create:
            raise StoreError(f"no results store at {path}")
        if path.exists():
            with open(path, "rb") as fh:
                head = fh.read(16)
            if head and not head.startswith(b"SQLite format 3"):
                raise StoreError(f"{path} is not a relu-verify results store (not an SQLite file)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS results (idx INTEGER PRIMARY KEY, row TEXT NOT NULL, "
                "status TEXT NOT NULL, counterexample BLOB, shape TEXT, written REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open results store {path}: {e}") from None
        stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "config" in stored:
            have = json.loads(stored["config"])
            if config is not None:
                _check_same(path, identifying(have), identifying(config))
            return cls(path, conn, have)
        if config is None:
            conn.close()
            raise StoreError(f"{path} holds no run configuration (empty or not a results store)")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (json.dumps(dict(config), sort_keys=True),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('created', ?)", (str(time.time()),))
        return cls(path, conn, dict(config))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- rows
    def done(self) -> set[int]:
        return {int(r[0]) for r in self._conn.execute("SELECT idx FROM results")}

    def add(self, row: Mapping[str, Any], counterexample: np.ndarray | None = None) -> None:
        """Write one finished example (atomically; a second write of the same index replaces it)."""
        idx = int(row["index"])
        blob = shape = None
        if counterexample is not None:
            # the float64 point itself (what the re-check confirmed), zlib-compressed: an Linf
            # counterexample's pixels sit mostly at the centre +- eps or at the box, ~5x smaller
            arr = np.ascontiguousarray(counterexample, dtype=np.float64)
            blob, shape = zlib.compress(arr.tobytes(), 6), json.dumps({"shape": list(arr.shape), "codec": "zlib"})
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (idx, json.dumps(dict(row), default=_jsonable), str(row["status"]), blob, shape, time.time()),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def rows(self) -> list[dict[str, Any]]:
        """Every row, by data-set index, with the columns in the order of ``verify.certify.ROW_FIELDS``."""
        return [order_row(json.loads(r[0])) for r in self._conn.execute("SELECT row FROM results ORDER BY idx")]

    def iter_stored(self) -> Iterator[StoredRow]:
        for idx, row, blob, shape in self._conn.execute("SELECT idx, row, counterexample, shape FROM results ORDER BY idx"):
            yield StoredRow(int(idx), json.loads(row), _decode(blob, shape))

    def counterexamples(self) -> dict[int, np.ndarray]:
        """Every stored counterexample (float64, the model's input shape plus a leading 1), by data-set index."""
        rows = self._conn.execute("SELECT idx, counterexample, shape FROM results WHERE counterexample IS NOT NULL ORDER BY idx")
        return {int(i): _decode(b, s) for i, b, s in rows}  # type: ignore[misc]

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _decode(blob: bytes | None, shape: str | None) -> np.ndarray | None:
    if blob is None or shape is None:
        return None
    meta = json.loads(shape)
    if isinstance(meta, dict):  # schema 1 stores after compression came in
        return np.frombuffer(bytearray(zlib.decompress(blob)), dtype=np.float64).reshape(meta["shape"])
    return np.frombuffer(bytearray(blob), dtype=np.float64).reshape(meta)  # bytearray: a writable array


def _check_same(path: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    if have == want:
        return
    diffs = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    k = diffs[0]
    raise StoreError(
        f"results store {path} was made with a different configuration ({k}: {have.get(k)!r} there, "
        f"{want.get(k)!r} now); use another --output or delete the file"
    )


def merge_stores(sources: Iterable[str | Path], out: str | Path) -> ResultsStore:
    """Combine shards into ``out``; all must share one configuration (the shard spec aside)."""
    sources = [Path(s) for s in sources]
    if not sources:
        raise StoreError("nothing to merge")
    first = ResultsStore.open(sources[0], create=False)
    config = {k: v for k, v in first.config.items() if k != "shard"}
    first.close()
    merged = ResultsStore.open(out, config)
    seen: dict[int, Path] = {i: Path(out) for i in merged.done()}
    for src in cast("list[Path]", sources):  # made Paths above
        with ResultsStore.open(src, create=False) as s:
            _check_same(src, identifying(config), identifying(s.config))
            for r in s.iter_stored():
                if r.index in seen and seen[r.index] != Path(out):
                    raise StoreError(f"example {r.index} is in both {seen[r.index]} and {src}")
                seen[r.index] = src
                merged.add(r.row, r.counterexample)
    return merged


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
