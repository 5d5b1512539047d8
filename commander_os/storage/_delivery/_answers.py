"""What the agent accepts from a relay: status mapping, size caps, and validated acks.

Every httpx error and every unexpected answer is mapped here, once, to our
:class:`~commander_os.errors.RelayError` tree:

* cannot connect, timed out, 5xx, 429,
  404 / 405 (no relay endpoint there)  -> :class:`RelayUnavailable` (retry later)
* 401 / 403                            -> :class:`RelayAuthError`
* any other 4xx                        -> :class:`RelayRejected` (retrying will not help)
* a redirect (3xx, never followed), a refusal of the exchange itself (408, 415, 431, a Host
  the relay does not serve), an answer that is too large, not JSON, or not what was asked
  for (an ack that does not cover exactly what was sent)
                                       -> :class:`RelayProtocolError`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from commander_os.errors import (
    RelayAuthError,
    RelayProtocolError,
    RelayRejected,
    RelayUnavailable,
)
from commander_os.protocol import DeliveryResponse, SegmentAck, Verdict

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "check_acks", "decode_answer", "expect_dict"]

#: A relay's answer larger than this is refused (a query page of 1,000 large records fits).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def decode_answer(status: int, content: bytes, method: str, path: str) -> Any:
    """The JSON of a relay's answer, or the error its status means."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
        if status < 300:
            raise RelayProtocolError(
                f"relay answered {status} with a body that is not JSON: {content[:200]!r}"
            ) from None
    if status < 300:
        return body
    raise _status_error(status, body, content, f"relay answered {status} to {method} {path}")


def _status_error(status: int, body: Any, content: bytes, message: str) -> Exception:
    detail = body.get("detail", body.get("error")) if isinstance(body, dict) else content[:500]
    reason = body.get("error") if isinstance(body, dict) else None
    if reason:
        message += f": {reason}"
    if detail and detail != reason:
        shown = "; ".join(map(str, detail)) if isinstance(detail, list) else str(detail)
        message += f" ({shown[:500]})"
    if status < 400:
        return RelayProtocolError(f"{message} (redirects are not followed: fix the relay URL)")
    if status == 429 or status >= 500:
        return RelayUnavailable(message)
    if status in (404, 405):
        # No such endpoint: this URL is not (or not yet) a relay. That is a configuration
        # problem to fail over from and retry, never a verdict on the records sent.
        return RelayUnavailable(f"{message} (is this URL a Commander OS relay?)")
    if status in (401, 403):
        return RelayAuthError(message, status=status, detail=detail)
    if status in _EXCHANGE_STATUSES or reason in _EXCHANGE_ERRORS:
        # The relay refused how we talk to it (a Host it does not serve, a header too large,
        # a timeout): the operator's to fix, never a verdict on the records.
        return RelayProtocolError(message)
    return RelayRejected(message, status=status, detail=detail)


#: Refusals of the exchange itself rather than of the records in it.
_EXCHANGE_STATUSES = frozenset({408, 411, 415, 431})
_EXCHANGE_ERRORS = frozenset({"invalid_host", "forbidden_origin", "unsupported_media_type"})


def expect_dict(answer: Any) -> dict[str, Any]:
    """``answer`` if it is a JSON object, else a protocol error."""
    if not isinstance(answer, dict):
        raise RelayProtocolError(f"the relay answered {answer!r:.200}, expected a JSON object")
    return answer


def check_acks(answer: Any, sent: Sequence[dict[str, Any]]) -> list[SegmentAck]:
    """The acks of a delivery, if they answer exactly the segments ``sent``.

    Each ack must name its segment's agent, in order; an applied one must cover exactly the
    records sent (``through`` and ``count``) and account for each (``applied + ignored``); one
    that applied nothing must say so. Anything else raises :class:`RelayProtocolError`: the
    shipper then deletes nothing.
    """
    try:
        acks = DeliveryResponse.model_validate(answer).acks
    except ValidationError:
        raise RelayProtocolError(
            f"the relay's answer is not a delivery acknowledgement: {str(answer)[:200]}"
        ) from None
    if len(acks) != len(sent):
        raise RelayProtocolError(f"the relay answered {len(acks)} acks for {len(sent)} segments")
    for ack, segment in zip(acks, sent, strict=True):
        _check_ack(ack, segment)
    return acks


def _check_ack(ack: SegmentAck, segment: dict[str, Any]) -> None:
    records = segment["records"]
    problem = None
    if ack.agent_id != segment["agent_id"]:
        problem = f"names agent {ack.agent_id!r}"
    elif ack.count != len(records) or ack.applied + ack.ignored > ack.count:
        problem = f"counts {ack.count} records ({ack.applied} applied)"
    elif ack.verdict is Verdict.APPLIED:
        through = segment["base"] if segment.get("repair") or not records else records[-1]["seq"]
        if ack.through != through or ack.applied + ack.ignored != ack.count:
            problem = f"covers up to seq {ack.through} ({ack.applied + ack.ignored} records)"
        elif ack.incarnation != segment["incarnation"]:
            problem = f"applied them at incarnation {ack.incarnation}"
    elif ack.applied:
        problem = f"applied {ack.applied} records while answering {ack.verdict.value}"
    elif ack.verdict is Verdict.REINCARNATE and ack.incarnation <= 0:
        problem = "granted no incarnation"
    if problem is not None:
        raise RelayProtocolError(
            f"the relay's ack for {segment['agent_id']!r} does not match what was sent "
            f"(seqs {segment['base']}..{records[-1]['seq'] if records else segment['base']}, "
            f"{len(records)} records): it {problem}"
        )
