"""What the PostgreSQL store refuses before writing: U+0000 in keys and in JSON values."""

from __future__ import annotations

import orjson
import pytest

from commander_os.protocol import EncodedRecord
from commander_os.relay.central._postgres_store import _check_storable


def encoded(data: object, key: str = "k") -> EncodedRecord:
    return EncodedRecord("agent-a", "kv", key, 1, 0, False, orjson.dumps(data).decode())


@pytest.mark.parametrize(
    "record",
    [
        encoded({"a": "x\x00y"}),
        encoded({"a\x00": 1}),
        encoded({"a": ["ok", {"b": "\x00"}]}),
        encoded({"a": "\\\x00"}),  # a backslash then NUL: \\\u0000
        encoded({"a": 1}, key="k\x00"),
    ],
)
def test_nul_is_refused(record: EncodedRecord) -> None:
    with pytest.raises(ValueError, match="U\\+0000"):
        _check_storable([encoded({"fine": 1}), record])


@pytest.mark.parametrize(
    "data",
    [{"a": "\\u0000"}, {"a": "\\\\u0000"}, {"u0000": "u0000"}, {"a": "x" * 5000}],
    ids=["escaped backslash", "two escaped backslashes", "plain text", "long value"],
)
def test_text_that_only_looks_like_nul_is_stored(data: object) -> None:
    _check_storable([encoded(data)])
