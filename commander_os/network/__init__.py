"""The seed's ``network`` package: :mod:`commander_os.network.relay` runs the relay.

The relay itself lives in :mod:`commander_os.relay`, the agent's client in
:mod:`commander_os.storage`, and what they exchange in :mod:`commander_os.protocol`.
"""

__all__: list[str] = []
