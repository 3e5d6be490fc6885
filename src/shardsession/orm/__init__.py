"""Declarative mapping, instrumentation, attribute history and collections."""
