"""Reading and checking relay request bodies: size caps, decompression, parsing, JSON depth.

Every problem raises :class:`RequestProblem`, which the relay turns into a 4xx answer
``{"error": code, "detail": ...}``. Nothing here touches the central store, so a rejected
request changes nothing.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Any, TypeVar

import zstandard
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from commander_os.config import LimitsConfig
from commander_os.identifiers import MAX_KEY_BYTES
from commander_os.protocol import ChangeRecord, QueryRequest

__all__ = [
    "RequestProblem",
    "check_query",
    "check_records",
    "exceeds_depth",
    "has_non_finite",
    "parse_model",
    "read_body",
]

#: Largest zstd window we accept; bigger frames are refused instead of allocating the memory.
MAX_ZSTD_WINDOW = 1 << 25

_Model = TypeVar("_Model", bound=BaseModel)


class RequestProblem(Exception):
    """A request the relay refuses; ``status`` is the HTTP code, ``error`` a short code."""

    def __init__(
        self, status: int, error: str, detail: Any = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def _too_large(what: str, limit: int) -> RequestProblem:
    return RequestProblem(413, "body_too_large", f"{what} is larger than {limit} bytes")


async def read_body(request: Request, limits: LimitsConfig) -> bytes:
    """The request body, decompressed, never more than ``limits.max_body_bytes`` either way.

    A client that stalls is cut off by the server (``limits.body_timeout``, see
    :mod:`._connections`); here that, like any disconnect, is a 400 nobody receives.
    """
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestProblem(400, "bad_content_length", "Content-Length must be a number")
        if int(declared) > limit:
            raise _too_large("request body", limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large("request body", limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestProblem(
            400, "incomplete_body", "the connection closed before the body was complete"
        ) from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    return decompress(b"".join(chunks), encoding, limit)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, zstd), stopping at ``limit`` output bytes.

    The cap on the *decompressed* size is what defuses compression bombs.
    """
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise RequestProblem(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise _too_large("decompressed request body", limit)
        if not inflater.eof or inflater.unused_data:
            raise RequestProblem(400, "bad_encoding", "gzip body is truncated or has extra data")
        return out
    if encoding == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        try:
            with dctx.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise RequestProblem(400, "bad_encoding", f"body is not valid zstd: {exc}") from None
        if len(out) > limit:
            raise _too_large("decompressed request body", limit)
        return bytes(out)
    raise RequestProblem(
        415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip, zstd or none"
    )


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


def parse_model(model: type[_Model], body: bytes) -> _Model:
    """Validate ``body`` as ``model``; malformed JSON is 400, everything else 422."""
    if not body.strip():
        raise RequestProblem(400, "invalid_json", "request body is empty; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            message = str(first["msg"])
            if "recursion limit" in message:
                raise RequestProblem(422, "json_too_deep", "JSON is nested too deeply") from None
            raise RequestProblem(400, "invalid_json", message) from None
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in errors[:20]]
        raise RequestProblem(422, "invalid_request", problems) from None


def exceeds_depth(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects/arrays more than ``limit`` levels (itself is level 1)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False


def has_non_finite(value: Any) -> bool:
    """True if ``value`` holds an infinite or NaN float anywhere (``1e400`` parses as inf).

    JSON has no such numbers; stored, they would silently turn into ``null``.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is float:
            if not math.isfinite(node):
                return True
        elif kind is dict:
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
    return False


def check_query(request: QueryRequest) -> None:
    """422 for a ``where`` value that is not a finite number (JSON cannot hold it)."""
    for index, clause in enumerate(request.where):
        if has_non_finite(clause.value):
            raise RequestProblem(
                422, "invalid_value", f"where.{index}.value: numbers must be finite"
            )


def check_records(records: list[ChangeRecord], limits: LimitsConfig) -> None:
    """Limits the wire models cannot express: batch length, key bytes and NULs, data depth,
    finite numbers."""
    if len(records) > limits.max_batch_records:
        raise RequestProblem(
            413,
            "too_many_records",
            f"{len(records)} records in one request; the limit is {limits.max_batch_records}",
        )
    for index, record in enumerate(records):
        key = record.key
        if (not key.isascii() and len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES) or (
            "\x00" in key
        ):
            raise RequestProblem(
                422,
                "invalid_key",
                f"records.{index}.key: keys are at most {MAX_KEY_BYTES} UTF-8 bytes, without NUL",
            )
        if record.data is not None and exceeds_depth(record.data, limits.max_json_depth):
            raise RequestProblem(
                422,
                "json_too_deep",
                f"records.{index}.data nests deeper than {limits.max_json_depth} levels",
            )
        if record.data is not None and has_non_finite(record.data):
            raise RequestProblem(
                422,
                "invalid_value",
                f"records.{index}.data: numbers must be finite (no NaN, Infinity or 1e400)",
            )
