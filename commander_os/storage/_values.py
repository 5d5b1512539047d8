"""Large JSON values kept zstd-compressed at rest, transparently.

A value whose JSON is longer than :data:`COMPRESS_ABOVE` bytes is stored as a zstd frame (a
BLOB) when that is smaller; shorter ones stay JSON text, as before. Readers tell the two apart by
type (text or BLOB) and by zstd's magic number, which no JSON text starts with, so stores
written before this, and rows restored from the relay, read the same.

Measured on agent-memory JSON documents (``benchmarks/footprint.py``): zstd level 3 keeps 37% of
a 1 KB document in 9 us and 28% of a 4 KB one in 14 us, and decompression costs 3-5 us. A get
of a 1 KB value costs about 10 us, so compressing values up to 4 KB would slow small gets by a
third; above 4 KB a value spills into overflow pages, and compressing it saves pages to read
and write as well as disk.
"""

from __future__ import annotations

import threading

import zstandard

__all__ = ["COMPRESS_ABOVE", "ZSTD_MAGIC", "is_compressed", "pack", "unpack"]

#: Values whose JSON is longer than this many bytes are compressed (when it helps).
COMPRESS_ABOVE = 4096
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVEL = 3

# zstd contexts are not safe to share between threads at once; one pair per thread.
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    found = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=LEVEL)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def pack(encoded: bytes) -> str | bytes:
    """What to store for the JSON ``encoded``: its text, or a zstd frame if large."""
    if len(encoded) > COMPRESS_ABOVE:
        packed: bytes = _compressor().compress(encoded)
        if len(packed) < len(encoded):
            return packed
    return encoded.decode()


def is_compressed(stored: object) -> bool:
    """Whether ``stored`` (a column's value) is a compressed value."""
    return isinstance(stored, bytes) and stored[:4] == ZSTD_MAGIC


def unpack(stored: bytes) -> bytes:
    """The JSON of a stored BLOB (decompressed if it is a zstd frame)."""
    if stored[:4] == ZSTD_MAGIC:
        data: bytes = _decompressor().decompress(stored)
        return data
    return stored
