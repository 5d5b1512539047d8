"""Runnable examples of the framework integrations."""

from __future__ import annotations

__all__: list[str] = []
