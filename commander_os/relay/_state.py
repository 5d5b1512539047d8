"""What one relay app holds while it runs: its config, store, guard, metrics and feed."""

from __future__ import annotations

from dataclasses import dataclass, field

from commander_os.config import RelayConfig
from commander_os.relay._feed import ChangeNotifier
from commander_os.relay._guard import Guard
from commander_os.relay._metrics import RelayMetrics
from commander_os.relay.central import CentralStore

__all__ = ["RelayState"]


@dataclass
class RelayState:
    """Shared by every request of one app (``app.state.relay``)."""

    config: RelayConfig
    store: CentralStore
    owns_store: bool
    guard: Guard
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    changes: ChangeNotifier = field(default_factory=ChangeNotifier)
