"""Batch certification: a resumable results store, sharding, and a Dask executor."""

from .shard import parse_shard, shard_indices
from .store import ResultsStore, StoreError, file_sha256, merge_stores

__all__ = ["ResultsStore", "StoreError", "file_sha256", "merge_stores", "parse_shard", "shard_indices"]
