"""Declarative mapping, instrumentation, attribute history and collections."""

__all__: list[str] = []
