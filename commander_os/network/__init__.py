"""Network side: the wire protocol, the relay client, the relay server and its central stores."""

__all__: list[str] = []
