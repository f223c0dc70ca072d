"""Activation caches that do not fit in memory: fixed-size shards on disk, written by many jobs.

- :mod:`.sources`: where images come from (a folder tree, a file list, WebDataset tar shards, the
  toy world on the fly) and their decoding in ``DataLoader`` workers;
- :mod:`.store`: the format (raw float16 shards + JSON) and reading a cache as one array of rows;
- :mod:`.write`: computing and writing shards (resumable, ``--shard K/N``) and the merge.
"""

from .sources import Source, open_source, open_sources
from .store import ActivationCache, CacheRows, is_cache, open_cache
from .write import merge, sample_positions, write_cache

__all__ = ["ActivationCache", "CacheRows", "Source", "is_cache", "merge", "open_cache",
           "open_source", "open_sources", "sample_positions", "write_cache"]
