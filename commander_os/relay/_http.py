"""JSON answers of the relay: one encoder, one error shape, one page shape."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from commander_os.protocol import StoredRecord, stored_record_json

__all__ = ["body_doc", "error_response", "json_response", "page_json"]

_JSON_OPTIONS = orjson.OPT_UTC_Z


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``content`` as a JSON answer (orjson; datetimes as ``...Z``)."""
    return Response(
        orjson.dumps(content, option=_JSON_OPTIONS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(status: int, error: str, detail: Any = None, **headers: str) -> Response:
    """The body every refusal carries: ``{"error": code, "detail": ...}``."""
    return json_response({"error": error, "detail": detail}, status, headers or None)


def page_json(records: list[StoredRecord], next_cursor: str | None) -> dict[str, Any]:
    """One page of a query or of the change feed."""
    return {"records": [stored_record_json(r) for r in records], "next_cursor": next_cursor}


def body_doc(*models: type[Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that parses its body itself (for speed); several
    models make a union."""
    schemas = [m.model_json_schema(ref_template="#/components/schemas/{model}") for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
