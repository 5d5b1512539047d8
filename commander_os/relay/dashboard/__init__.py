"""The relay's dashboard, for an operator: who is behind and why, charts, records, analytics.

:func:`add_dashboard_routes` adds ``GET /`` (the overview: agents with health and last-heard
ages, heartbeats and dead letters, alert thresholds, charts of the last hour, query shapes with
their plans and index hints, the slow-query log; it refreshes itself), ``/dashboard/records``
(a record browser), ``/dashboard/login`` and ``/dashboard/logout`` (a token exchanged for an
HttpOnly, SameSite=Strict session cookie; CSRF-checked forms), the dashboard's own static files
(no CDN), ``/docs`` served offline, and security headers on every answer.
"""

from __future__ import annotations

from commander_os.relay.dashboard._routes import DASHBOARD_PATHS, add_dashboard_routes

__all__ = ["DASHBOARD_PATHS", "add_dashboard_routes"]
