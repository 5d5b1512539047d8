"""How the command line prints: consoles, the one JSON style, sizes and ages for people.

**The JSON style** (``--json`` on every command that prints data): exactly one JSON document
on stdout, indented by two spaces; a list when the command shows rows (``status``, ``query``,
``dead-letters list``), an object when it shows one result (``sync``, ``relay export``, ...).
Keys are snake_case; times are ISO 8601 in UTC; durations are seconds (``*_age``,
``*_seconds``); sizes are bytes (``*_bytes``). Messages for people and errors go to stderr,
never into the document, and the exit status means the same with or without ``--json``.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console

__all__ = ["console", "err_console", "human_age", "human_size", "print_json"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    """Write ``value`` to stdout as the one JSON document of the command."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    sys.stdout.write(text.decode() + "\n")
    sys.stdout.flush()


def human_size(size: int | None) -> str:
    """``1536`` -> ``"1 KiB"``; ``None`` -> ``"-"``."""
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size //= 1024
    return f"{size} TiB"


def human_age(seconds: float | None) -> str:
    """``75.0`` -> ``"1m15s"``; ``None`` -> ``"-"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
