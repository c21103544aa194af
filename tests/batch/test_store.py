"""The results store: atomic rows, resume, configuration checks, merging, sharding."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from verify.batch import ResultsStore, StoreError, merge_stores, parse_shard, shard_indices
from verify.errors import VerifyError

CONFIG = {"model_sha256": "abc", "p": "inf", "eps": 0.1, "methods": ["kw"], "timeout": 10.0, "shard": None}


def row(i: int, status: str = "verified") -> dict:
    return {"index": i, "status": status, "label": i % 10, "prediction": i % 10, "decided_by": "kw",
            "margin_lb": 0.5, "seconds": 0.01}


def test_rows_persist_and_resume(tmp_path):
    path = tmp_path / "run.sqlite"
    with ResultsStore.open(path, CONFIG) as s:
        for i in range(5):
            s.add(row(i), np.full((1, 2, 2), i / 10.0) if i == 3 else None)
    with ResultsStore.open(path, CONFIG) as s:
        assert s.done() == {0, 1, 2, 3, 4}
        assert [r["index"] for r in s.rows()] == [0, 1, 2, 3, 4]
        stored = {r.index: r for r in s.iter_stored()}
        np.testing.assert_array_equal(stored[3].counterexample, np.full((1, 2, 2), 0.3))
        assert stored[2].counterexample is None
        s.add(row(2, "unknown"))  # a re-run of one example replaces, never duplicates
        assert len(s) == 5 and s.rows()[2]["status"] == "unknown"


def test_different_configuration_is_refused(tmp_path):
    path = tmp_path / "run.sqlite"
    ResultsStore.open(path, CONFIG).close()
    with pytest.raises(StoreError, match="eps: 0.1 there, 0.2 now"):
        ResultsStore.open(path, {**CONFIG, "eps": 0.2})
    # settings that do not change results may differ
    ResultsStore.open(path, {**CONFIG, "workers": 4, "model_path": "elsewhere.mat"}).close()


def test_not_a_store(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 10)
    with pytest.raises(StoreError, match="not an SQLite file"):
        ResultsStore.open(bad, CONFIG)
    with pytest.raises(StoreError, match="no results store"):
        ResultsStore.open(tmp_path / "missing.sqlite", create=False)


def _writer(path: str, n: int) -> None:
    s = ResultsStore.open(path, CONFIG)
    for i in range(n):
        s.add(row(i))
        time.sleep(0.01)
    time.sleep(60)


def test_killed_writer_leaves_only_whole_rows(tmp_path):
    path = str(tmp_path / "run.sqlite")
    proc = mp.get_context("spawn").Process(target=_writer, args=(path, 1000))
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(path):
            try:
                with ResultsStore.open(path, create=False) as s:
                    if len(s) >= 20:
                        break
            except (StoreError, sqlite3.Error):
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with ResultsStore.open(path, CONFIG) as s:
        rows = s.rows()
        n = len(rows)
        assert n >= 20
        assert [r["index"] for r in rows] == list(range(n))  # a prefix, every row whole
        assert all(r["status"] == "verified" for r in rows)


def test_shards_partition_and_merge(tmp_path):
    idx = list(range(17))
    shards = [shard_indices(idx, parse_shard(f"{i}/3")) for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == idx and sum(len(s) for s in shards) == 17
    paths = []
    for i, part in enumerate(shards, 1):
        p = tmp_path / f"s{i}.sqlite"
        with ResultsStore.open(p, {**CONFIG, "shard": f"{i}/3"}) as s:
            for j in part:
                s.add(row(j, "falsified" if j % 4 == 0 else "verified"))
        paths.append(p)
    with merge_stores(paths, tmp_path / "all.sqlite") as m:
        assert [r["index"] for r in m.rows()] == idx
        assert [r["status"] for r in m.rows()] == ["falsified" if j % 4 == 0 else "verified" for j in idx]
    other = tmp_path / "other.sqlite"
    with ResultsStore.open(other, {**CONFIG, "eps": 0.3}) as s:
        s.add(row(99))
    with pytest.raises(StoreError, match="different configuration"):
        merge_stores([paths[0], other], tmp_path / "bad.sqlite")
    with pytest.raises(StoreError, match="in both"):
        merge_stores([paths[0], paths[0]], tmp_path / "dup.sqlite")


@pytest.mark.parametrize("text", ["0/3", "4/3", "1-3", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(VerifyError):
        parse_shard(text)
