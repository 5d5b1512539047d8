"""What one relay app holds while it runs: its config, store, guard, metrics, analytics and
feed."""

from __future__ import annotations

from dataclasses import dataclass, field

from commander_os.config import RelayConfig
from commander_os.relay._analytics import Analytics
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
    #: Query and data analytics; ``None`` when ``relay.analytics`` is off.
    analytics: Analytics | None = None

    def __post_init__(self) -> None:
        if self.config.analytics and self.analytics is None:
            self.analytics = Analytics(self.config, self.metrics)
