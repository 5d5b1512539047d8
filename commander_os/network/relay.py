"""The HTPC relay at the seed's path: ``python -m commander_os.network.relay [options]``.

The same command as ``commander-os relay serve`` (``--config``, ``--host``, ``--port``,
``--data-dir``, ``--database-url``); it prints ``relay listening on URL`` once it accepts
connections. In code, use :func:`create_app` and :func:`serve` from :mod:`commander_os.relay`,
re-exported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from commander_os.relay import LISTENING_PREFIX, create_app, serve

__all__ = ["LISTENING_PREFIX", "create_app", "main", "serve"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay with command-line options ``argv``; returns the exit status."""
    from commander_os.cli import run_relay_command

    return run_relay_command(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
