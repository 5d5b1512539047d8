"""``GET /health``: what a load balancer, a monitor and an operator each need to know.

* ``status`` is ``"ok"`` (200), ``"degraded"`` (503: the central store answers reads but cannot
  commit, such as a full disk; agents keep their writes queued meanwhile) or ``"unavailable"``
  (503: the central store does not answer).
* It answers within about a second whatever the load: the store's probe never waits for a
  query reader (:meth:`~commander_os.relay.central.CentralStore.health`).
* With ``relay.auth`` on, the answer without an admin token holds only ``status`` and
  ``version``: no file paths, database names or counters for whoever can reach the port. An
  admin token (``Authorization: Bearer ...``) shows the details, as auth off does.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from commander_os._version import __version__
from commander_os.relay._guard import bearer_token
from commander_os.relay._http import json_response
from commander_os.relay._state import RelayState

__all__ = ["health_response"]


async def health_response(state: RelayState, request: Request) -> Response:
    """The ``/health`` answer for ``request`` (details only for an admin, or without auth)."""
    store = await state.store.health()
    status = "unavailable" if not store.ok else "ok" if store.writable else "degraded"
    body: dict[str, Any] = {"status": status, "version": __version__}
    if state.guard.is_admin(bearer_token(request.headers.get("authorization"))):
        body.update(
            uptime_seconds=round(state.metrics.uptime(), 3),
            backend=store.backend,
            central_store={"reachable": store.ok, "writable": store.writable, **store.detail},
            storage_sync_enabled=state.config.enable_storage_sync,
        )
    return json_response(body, 200 if status == "ok" else 503)
