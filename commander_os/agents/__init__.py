"""Agent-specific storage classes built on BaseStorage."""

__all__: list[str] = []
