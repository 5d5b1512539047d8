"""Semantic search on the local store: what to embed, how vectors are kept, how they rank.

Vectors live in the agent's own database (``lg_store_vectors``, written in the same transaction
as their item) as unit-length float32 BLOBs, and a query ranks them with NumPy: one matrix
product over the candidates that the SQL filters (namespace, TTL, ``filter``) let through.

Why not a SQLite vector extension: the Python build used here has no
``sqlite3.Connection.enable_load_extension``, so ``sqlite-vec`` cannot be loaded into the store's
own connection; loading it through a second SQLite library (apsw, sqlean) on the same file is
unsafe, because two SQLite libraries in one process do not see each other's POSIX locks. The
NumPy ranking re-reads the candidates' vectors from SQLite on every query, so a query costs
about 5 ms per 1,000 vectors of 128 dimensions (``python -m benchmarks.integrations``; LangGraph's
``InMemoryStore`` takes longer on the same data): fine for an agent's memory, while a store of
millions of vectors wants an ANN index instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langgraph.store.base import IndexConfig, ensure_embeddings, get_text_at_path, tokenize_path

__all__ = ["EmbeddingPlan", "VectorIndex", "rank"]

_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class EmbeddingPlan:
    """The texts of one batch of puts to embed: ``texts[i]`` belongs to ``targets[i]``."""

    texts: list[str]
    targets: list[tuple[str, str, str]]  # (namespace text, key, field path)


class VectorIndex:
    """The store's ``index`` configuration: the embedding function, dims and default fields."""

    def __init__(self, config: IndexConfig) -> None:
        if "dims" not in config or "embed" not in config:
            raise ValueError('index needs "dims" and "embed"')
        self.dims = int(config["dims"])
        if self.dims <= 0:
            raise ValueError(f"index dims must be positive, not {self.dims}")
        self.embeddings: Embeddings = ensure_embeddings(config["embed"])
        self.fields = list(config.get("fields") or ["$"])
        self._default_paths = [_tokenized(path) for path in self.fields]

    def plan(self, puts: Iterable[tuple[str, str, Mapping[str, Any], Any]]) -> EmbeddingPlan:
        """The texts to embed for ``(namespace, key, value, index)`` puts (``index`` as PutOp)."""
        texts: list[str] = []
        targets: list[tuple[str, str, str]] = []
        for namespace, key, value, index in puts:
            if index is False:
                continue
            paths = self._default_paths if index is None else [_tokenized(p) for p in index]
            for path, tokens in paths:
                found = get_text_at_path(value, tokens)
                names = [path] if len(found) == 1 else [f"{path}.{i}" for i in range(len(found))]
                for name, text in zip(names, found, strict=True):
                    texts.append(text)
                    targets.append((namespace, key, name))
        return EmbeddingPlan(texts, targets)

    def encode(self, vectors: Sequence[Sequence[float]]) -> list[bytes]:
        """Unit-length float32 BLOBs (a zero vector stays zero: it matches nothing)."""
        if not len(vectors):
            return []
        matrix = np.asarray(vectors, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.dims:
            raise ValueError(
                f"the embedding function returned vectors of shape {matrix.shape}; "
                f"the index expects {self.dims} dimensions"
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
        return [row.astype(_FLOAT32).tobytes() for row in unit]

    def query_vector(self, vector: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The query as a unit float32 vector."""
        return np.frombuffer(self.encode([vector])[0], dtype=_FLOAT32)


def _tokenized(path: str) -> tuple[str, Any]:
    return (path, path) if path == "$" else (path, tokenize_path(path))


def rank(
    query: np.ndarray[Any, np.dtype[np.float32]],
    candidates: Sequence[tuple[int, bytes | None]],
    *,
    limit: int,
    offset: int,
) -> list[tuple[int, float | None]]:
    """Rank candidates ``(item number, vector BLOB or None)`` by cosine similarity.

    ``candidates`` come grouped by item, in the search order. An item's score is its best
    vector's; ties keep the search order, and items without a vector follow the ranked ones
    (without offset) to fill ``limit``, as ``InMemoryStore`` does. Returns ``(item, score)``.
    """
    items = [item for item, blob in candidates if blob is not None]
    kept: list[tuple[int, float | None]] = []
    if items:
        blobs = b"".join(blob for _, blob in candidates if blob is not None)
        scores = np.frombuffer(blobs, dtype=_FLOAT32).reshape(len(items), -1) @ query
        numbers = np.asarray(items)
        starts = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1]])
        best = np.maximum.reduceat(scores, starts)
        order = np.argsort(-best, kind="stable")[offset : offset + limit]
        kept = [(int(numbers[starts[i]]), float(best[i])) for i in order]
    if len(kept) < limit:
        ranked = set(items)
        scoreless = dict.fromkeys(item for item, blob in candidates if item not in ranked)
        kept += [(item, None) for item in list(scoreless)[: limit - len(kept)]]
    return kept
