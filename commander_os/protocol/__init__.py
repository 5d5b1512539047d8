"""The wire protocol shared by agents and relays: every shape that crosses the network.

Agent side and relay side both import this package and nothing of each other. It holds the
change record (:class:`ChangeRecord`, its encodings), writes and their acknowledgements
(:class:`BatchRequest`, :class:`Ack`), queries (:class:`QueryRequest`, :class:`FieldFilter`,
cursors), agent heartbeats (:class:`Heartbeat`) and the SQLite translation of JSON field
filters (:mod:`.sqlite_filters`).
"""

from __future__ import annotations

from commander_os.protocol._heartbeat import (
    MAX_HEARTBEAT_TARGETS,
    Heartbeat,
    HeartbeatAck,
    TargetHeartbeat,
)
from commander_os.protocol._query import (
    DEFAULT_QUERY_LIMIT,
    FIELD_PATH_PATTERN,
    MAX_QUERY_LIMIT,
    MAX_WHERE_CLAUSES,
    AgentSummary,
    ErrorBody,
    FieldFilter,
    FilterOp,
    QueryRequest,
    QueryResponse,
    decode_cursor,
    encode_cursor,
    parse_field_path,
)
from commander_os.protocol._records import (
    MAX_BATCH_RECORDS,
    MAX_VERSION,
    RECORD_FIELDS,
    REQUIRED_RECORD_FIELDS,
    SEQ_BITS,
    Ack,
    AgentId,
    BatchRequest,
    ChangeRecord,
    EncodedRecord,
    StoredRecord,
    TableName,
    change_record_json,
    encode_records,
    format_ts,
    make_version,
    micros_to_ts,
    split_version,
    stored_record_json,
    ts_to_micros,
)

__all__ = [
    "DEFAULT_QUERY_LIMIT",
    "FIELD_PATH_PATTERN",
    "MAX_BATCH_RECORDS",
    "MAX_HEARTBEAT_TARGETS",
    "MAX_QUERY_LIMIT",
    "MAX_VERSION",
    "MAX_WHERE_CLAUSES",
    "RECORD_FIELDS",
    "REQUIRED_RECORD_FIELDS",
    "SEQ_BITS",
    "Ack",
    "AgentId",
    "AgentSummary",
    "BatchRequest",
    "ChangeRecord",
    "EncodedRecord",
    "ErrorBody",
    "FieldFilter",
    "FilterOp",
    "Heartbeat",
    "HeartbeatAck",
    "QueryRequest",
    "QueryResponse",
    "StoredRecord",
    "TableName",
    "TargetHeartbeat",
    "change_record_json",
    "decode_cursor",
    "encode_cursor",
    "encode_records",
    "format_ts",
    "make_version",
    "micros_to_ts",
    "parse_field_path",
    "split_version",
    "stored_record_json",
    "ts_to_micros",
]
