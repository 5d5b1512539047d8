"""The Commander OS Storage benchmark suite: every promise measured beside its peers.

Run it as ``python -m benchmarks [--quick|--full] [--only local,sync,relay] [--json PATH]`` or
``commander-os bench``. Each area module (:mod:`benchmarks.local`, :mod:`benchmarks.sync`,
:mod:`benchmarks.relay`) returns :class:`~benchmarks.core.Result` rows; peers are measured in
the same run, interleaved round by round, and every row carries the ratio ours/peer and the
target of issue 5. Targets are reported, never asserted.
"""

from __future__ import annotations

from benchmarks.core import Result, Stats, Target
from benchmarks.runner import run

__all__ = ["Result", "Stats", "Target", "run"]
