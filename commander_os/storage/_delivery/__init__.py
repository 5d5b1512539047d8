"""Delivery of the outbox to relays: the relay client and the worker that ships."""

__all__: list[str] = []
