"""Keys and values the benchmarks write: about 1 KB of JSON, different on every write.

Keys look like ``user:NN:IIIIIII`` (100 prefixes), so a prefix scan returns 1% of the keys.
Values carry a few typed fields the relay's field filters can test (``status``, ``score``,
``tags``) and a filler string that makes the encoded value about 1 KB.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

__all__ = ["PREFIXES", "STATUSES", "key", "prefix", "value"]

PREFIXES = 100
STATUSES = tuple(f"s{n}" for n in range(10))
_FILLER = "".join(chr(97 + (i * 7) % 26) for i in range(8192))
VALUE_BYTES = 1024


def key(index: int) -> str:
    """The key of item ``index``."""
    return f"user:{index % PREFIXES:02d}:{index:07d}"


def prefix(group: int) -> str:
    """The key prefix shared by 1 in ``PREFIXES`` keys."""
    return f"user:{group % PREFIXES:02d}:"


def value(index: int, revision: int = 0, size: int = VALUE_BYTES) -> dict[str, Any]:
    """A JSON object of about ``size`` bytes (1 KB) for item ``index``; ``revision`` makes every
    write different."""
    head = {
        "id": index,
        "rev": revision,
        "status": STATUSES[index % len(STATUSES)],
        "score": index % 1000,
        "tags": ["bench", STATUSES[(index // 10) % len(STATUSES)]],
        "name": f"candidate {index}",
    }
    spare = size - len(orjson.dumps(head)) - len(',"note":""')
    head["note"] = _FILLER[: max(spare, 0)]
    return head


def random_indexes(count: int, population: int, seed: int = 7) -> list[int]:
    """``count`` indexes drawn uniformly from ``range(population)`` (repeatable)."""
    rng = random.Random(seed)
    return [rng.randrange(population) for _ in range(count)]
