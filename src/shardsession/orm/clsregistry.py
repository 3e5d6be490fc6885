"""The class registry of a declarative base: name lookup and mapper configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardsession import exc
from shardsession.sql import MetaData

if TYPE_CHECKING:
    from shardsession.orm.mapper import Mapper

__all__ = ["Registry"]


class _MultipleClasses:
    """Stands for a class name declared more than once on the same base."""

    def __init__(self, name: str, classes: list[type]) -> None:
        self._name = name
        self._classes = classes

    def _fail(self) -> Any:
        modules = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in self._classes)
        raise exc.InvalidRequestError(
            f"Multiple classes found for name {self._name!r} in the registry of this "
            f"declarative base ({modules}); pass the class object instead of its name"
        )

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self._fail()

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._fail()


class Registry:
    """The classes mapped on one declarative base, their :class:`MetaData` and type map.

    ``Base.registry`` of a :class:`.DeclarativeBase` subclass.  Names given as
    strings to :func:`.relationship` are looked up here.  :meth:`configure`
    resolves every pending relationship (it runs by itself on first use).
    """

    def __init__(
        self,
        *,
        metadata: MetaData | None = None,
        type_annotation_map: dict[Any, Any] | None = None,
    ) -> None:
        self.metadata = metadata if metadata is not None else MetaData()
        self.type_annotation_map: dict[Any, Any] = dict(type_annotation_map or {})
        self._class_registry: dict[str, Any] = {}
        self._mappers: list[Mapper] = []
        self._configuring = False

    def __repr__(self) -> str:
        return f"<Registry of {len(self._mappers)} mapper(s)>"

    @property
    def mappers(self) -> frozenset[Mapper]:
        """Every mapper of this registry."""
        return frozenset(self._mappers)

    def _add_mapper(self, mapper: Mapper) -> None:
        self._mappers.append(mapper)
        cls = mapper.class_
        existing = self._class_registry.get(cls.__name__)
        if existing is None:
            self._class_registry[cls.__name__] = cls
        elif isinstance(existing, _MultipleClasses):
            existing._classes.append(cls)
        elif existing is not cls:
            self._class_registry[cls.__name__] = _MultipleClasses(cls.__name__, [existing, cls])

    def namespace(self, module_globals: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the names string expressions are evaluated with.

        Mapped class names of this registry take precedence over the names of
        the declaring module (``module_globals``).
        """
        ns: dict[str, Any] = dict(module_globals or {})
        ns.update(self._class_registry)
        return ns

    def configure(self) -> None:
        """Resolve the relationships of every mapper not configured yet.

        :raises ArgumentError: or :class:`~shardsession.exc.InvalidRequestError`
            when a relationship cannot be resolved (unknown class, no or several
            foreign key paths, bad ``back_populates``).
        """
        if self._configuring:
            return
        pending = [m for m in self._mappers if not m.configured]
        if not pending:
            return
        self._configuring = True
        try:
            rels = [p for m in pending for p in m._props.values() if p.is_relationship]
            for prop in rels:
                prop._configure()  # type: ignore[attr-defined]
            for prop in rels:
                prop._setup_backref()  # type: ignore[attr-defined]
            for m in pending:
                m.configured = True
        finally:
            self._configuring = False

    def dispose(self) -> None:
        """Forget every class of this registry (for tests that re-declare classes)."""
        self._mappers.clear()
        self._class_registry.clear()
