"""Declarative mapping: :class:`DeclarativeBase`, :func:`mapped_column` and the class scan."""

from __future__ import annotations

import inspect
import sys
from typing import Any, ClassVar

from shardsession import exc
from shardsession.orm.annotations import AnnotationInfo, parse_annotation
from shardsession.orm.base import manager_of_class
from shardsession.orm.clsregistry import Registry
from shardsession.orm.interfaces import ColumnProperty, MapperProperty
from shardsession.orm.mapper import Mapper
from shardsession.orm.relationships import RelationshipProperty
from shardsession.sql import CheckConstraint, Column, ForeignKey, MetaData, Table
from shardsession.sql import types as sqltypes

__all__ = ["DeclarativeBase", "MappedColumn", "mapped_column"]

_NOT_SET: Any = object()


class MappedColumn:
    """A column declaration on a declarative class, made by :func:`mapped_column`.

    It turns into a :class:`~shardsession.sql.Column` when the class is mapped;
    declared on a mixin, it gives each mapped subclass a column of its own.
    """

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        type_: Any = None,
        primary_key: bool = False,
        nullable: Any = _NOT_SET,
        default: Any = None,
        server_default: Any = None,
        onupdate: Any = None,
        index: bool | None = None,
        unique: bool | None = None,
        autoincrement: bool | str = "auto",
        key: str | None = None,
        comment: str | None = None,
        info: dict[str, Any] | None = None,
        init: Any = _NOT_SET,
        **unsupported: Any,
    ) -> None:
        if unsupported:
            raise exc.ArgumentError(
                f"mapped_column() got unsupported argument(s): {', '.join(sorted(unsupported))}"
            )
        rest = list(args)
        if rest and isinstance(rest[0], str):
            if name is not None:
                raise exc.ArgumentError("mapped_column() name given positionally and as name=")
            name = rest.pop(0)
        if rest and _is_type(rest[0]):
            if type_ is not None:
                raise exc.ArgumentError("mapped_column() type given positionally and as type_=")
            type_ = rest.pop(0)
        for a in rest:
            if not isinstance(a, (ForeignKey, CheckConstraint)):
                raise exc.ArgumentError(f"unexpected mapped_column() argument {a!r}")
        self.name = name
        self.type_ = type_
        self.foreign_keys: list[ForeignKey] = [a for a in rest if isinstance(a, ForeignKey)]
        self.constraints = [a for a in rest if isinstance(a, CheckConstraint)]
        self.primary_key = primary_key
        self.nullable = nullable
        self.init = init
        self.kwargs = {
            "default": default,
            "server_default": server_default,
            "onupdate": onupdate,
            "index": index,
            "unique": unique,
            "autoincrement": autoincrement,
            "comment": comment,
            "info": info,
        }
        self.key = key

    def __repr__(self) -> str:
        return f"<MappedColumn {self.name or '?'}>"

    def __clause_element__(self) -> Column:
        """The column made from this declaration (lets ``foreign_keys=[col]`` name it)."""
        column = self.__dict__.get("column")
        if column is None:
            raise exc.InvalidRequestError(
                f"{self!r} has no column yet: it gets one when its class is mapped"
            )
        return column

    def _merge(self, other: MappedColumn) -> MappedColumn:
        """Fill what this declaration leaves open from ``other`` (from ``Annotated``)."""
        merged = MappedColumn()
        merged.__dict__.update(other.__dict__)
        for attr in ("name", "type_", "key"):
            if getattr(self, attr) is not None:
                setattr(merged, attr, getattr(self, attr))
        merged.foreign_keys = other.foreign_keys + self.foreign_keys
        merged.constraints = other.constraints + self.constraints
        merged.primary_key = self.primary_key or other.primary_key
        if self.nullable is not _NOT_SET:
            merged.nullable = self.nullable
        merged.kwargs = dict(other.kwargs)
        defaults = MappedColumn().kwargs
        for k, v in self.kwargs.items():
            if v != defaults[k]:
                merged.kwargs[k] = v
        return merged

    def _make_column(
        self, key: str, info: AnnotationInfo | None, registry: Registry, owner: type
    ) -> Column:
        type_ = self.type_
        if type_ is None and info is not None and info.python_type is not None:
            type_ = _type_from_annotation(info.python_type, registry, owner, key)
        if type_ is None and not self.foreign_keys:
            if info is not None and info.error is not None:
                raise exc.ArgumentError(
                    f"Could not evaluate the annotation of '{owner.__name__}.{key}' "
                    f"({info.error}); annotations are evaluated in the declaring module's "
                    "globals, so the names used must be defined at module level"
                )
            raise exc.ArgumentError(
                f"Python typing annotation is required for attribute '{owner.__name__}.{key}' "
                "when no column type is given to mapped_column(); annotate it "
                "Mapped[<type>] or pass a type"
            )
        nullable = self.nullable
        if nullable is _NOT_SET and info is not None and not self.primary_key:
            nullable = info.optional
        col_kw: dict[str, Any] = dict(self.kwargs)
        if nullable is not _NOT_SET:
            col_kw["nullable"] = nullable
        self.column = Column(
            self.name or key,
            *[fk._copy() for fk in self.foreign_keys],
            *self.constraints,
            type_=type_,
            primary_key=self.primary_key,
            key=self.key or None,
            **col_kw,
        )
        return self.column


def mapped_column(*args: Any, **kw: Any) -> Any:
    """Declare a mapped column on a declarative class.

    ``mapped_column(name=None, type_=None, *foreign_keys, primary_key=False,
    nullable=..., default=None, server_default=None, index=None, unique=None,
    autoincrement="auto", init=...)``; a leading string is the column name and
    a leading type the column type.  Without a type, the type comes from the
    ``Mapped[...]`` annotation (``Mapped[int]`` → ``Integer``, ...); without
    ``nullable``, ``Mapped[Optional[X]]`` / ``Mapped[X | None]`` make the column
    nullable and ``Mapped[X]`` makes it ``NOT NULL``.

    :returns: a :class:`MappedColumn` to assign to a class attribute.
    """
    return MappedColumn(*args, **kw)


def _is_type(obj: Any) -> bool:
    return isinstance(obj, sqltypes.TypeEngine) or (
        isinstance(obj, type) and issubclass(obj, sqltypes.TypeEngine)
    )


def _type_from_annotation(py_type: Any, registry: Registry, owner: type, key: str) -> Any:
    mapped = registry.type_annotation_map.get(py_type)
    if mapped is not None:
        return mapped
    try:
        return sqltypes.type_for_python(py_type)
    except exc.ArgumentError as err:
        raise exc.ArgumentError(
            f"Could not locate a column type for Python type {py_type!r} of attribute "
            f"'{owner.__name__}.{key}': pass a type to mapped_column() or add the type to "
            "the base's type_annotation_map"
        ) from err


def _declarative_constructor(self: Any, **kwargs: Any) -> None:
    """Set each keyword argument as an attribute; unknown names raise :class:`TypeError`."""
    cls_ = type(self)
    for k in kwargs:
        if not hasattr(cls_, k):
            raise TypeError(f"{k!r} is an invalid keyword argument for {cls_.__name__}")
    for k, v in kwargs.items():
        setattr(self, k, v)


class DeclarativeBase:
    """Base class of declarative bases: ``class Base(DeclarativeBase): pass``.

    A direct subclass becomes a base with its own :attr:`metadata` (a
    :class:`~shardsession.sql.MetaData`; give one in the class body to share
    it), :attr:`registry` and optional ``type_annotation_map``.  Subclasses of
    that base are mapped: ``__tablename__`` names the table, ``Mapped[...]``
    annotations and :func:`mapped_column` / :func:`relationship` give the
    attributes, ``__table_args__`` (a tuple of constraints, optionally ending
    with a dict of ``Table`` keyword arguments) adds to the table, and
    ``__shard_key__`` names the attribute whose value routes an object to its
    shard.  ``__abstract__ = True`` leaves a class unmapped (its columns are
    inherited like a mixin's).  The default constructor accepts the mapped
    attributes as keyword arguments.
    """

    registry: ClassVar[Registry]
    metadata: ClassVar[MetaData]
    __table__: ClassVar[Table]
    __mapper__: ClassVar[Mapper]

    def __init_subclass__(cls, **kw: Any) -> None:
        if DeclarativeBase in cls.__bases__:
            _setup_base(cls)
        elif not cls.__dict__.get("__abstract__", False):
            _map_class(cls)
        super().__init_subclass__(**kw)

    def __init__(self, **kwargs: Any) -> None:
        _declarative_constructor(self, **kwargs)


def _setup_base(cls: type) -> None:
    reg = cls.__dict__.get("registry")
    if not isinstance(reg, Registry):
        metadata = cls.__dict__.get("metadata")
        if metadata is not None and not isinstance(metadata, MetaData):
            raise exc.ArgumentError(f"{cls.__name__}.metadata must be a MetaData")
        reg = Registry(
            metadata=metadata, type_annotation_map=cls.__dict__.get("type_annotation_map")
        )
    cls.registry = reg  # type: ignore[attr-defined]
    cls.metadata = reg.metadata  # type: ignore[attr-defined]


def _ordered_names(klass: type) -> list[str]:
    """Attribute names in declaration order, merging annotations and assignments."""
    annotations = list(inspect.get_annotations(klass))
    ann_pos = {n: i for i, n in enumerate(annotations)}
    names: list[str] = []
    seen: set[str] = set()
    next_ann = 0
    for name in klass.__dict__:
        if name in ann_pos:
            for pending in annotations[next_ann : ann_pos[name] + 1]:
                if pending not in seen:
                    names.append(pending)
                    seen.add(pending)
            next_ann = max(next_ann, ann_pos[name] + 1)
        elif name not in seen:
            names.append(name)
            seen.add(name)
    for pending in annotations[next_ann:]:
        if pending not in seen:
            names.append(pending)
            seen.add(pending)
    return names


def _collect(cls: type, registry: Registry) -> dict[str, tuple[Any, AnnotationInfo | None, type]]:
    """Map each attribute key to (declaration, annotation info, declaring class)."""
    found: dict[str, tuple[Any, AnnotationInfo | None, type]] = {}
    chain = [
        k
        for k in reversed(cls.__mro__)
        if k is not object and k is not DeclarativeBase and not issubclass(DeclarativeBase, k)
    ]
    for klass in chain:
        if klass is not cls and manager_of_class(klass) is not None:
            raise exc.InvalidRequestError(
                f"{cls.__name__} inherits from mapped class {klass.__name__}: mapped class "
                "inheritance is not supported; use a mixin or __abstract__ base"
            )
        allow_unmapped = getattr(cls, "__allow_unmapped__", False)
        raw_annotations = inspect.get_annotations(klass)
        module_globals = (
            vars(sys.modules[klass.__module__]) if klass.__module__ in sys.modules else {}
        )
        for name in _ordered_names(klass):
            if name.startswith("__") and name.endswith("__"):
                continue
            value = klass.__dict__.get(name, _NOT_SET)
            info = None
            if name in raw_annotations:
                info = parse_annotation(raw_annotations[name], module_globals, klass)
            is_construct = isinstance(value, (MappedColumn, RelationshipProperty, Column))
            if info is None:
                if is_construct and name in raw_annotations and not allow_unmapped:
                    raise exc.ArgumentError(
                        f"Type annotation for '{klass.__name__}.{name}' can't be interpreted "
                        "for a mapped attribute; annotate it Mapped[...]"
                    )
                if not is_construct:
                    if value is not _NOT_SET:
                        # A plain attribute overrides a mapped one of a mixin.
                        found.pop(name, None)
                    continue
            elif value is not _NOT_SET and not is_construct:
                raise exc.ArgumentError(
                    f"'{klass.__name__}.{name}' is annotated Mapped[...] but assigned "
                    f"{value!r}; assign mapped_column(...) or relationship(...)"
                )
            if value is _NOT_SET:
                value = info.construct if info is not None and info.construct is not None else None
            elif (
                info is not None and info.construct is not None and isinstance(value, MappedColumn)
            ):
                value = value._merge(info.construct)
            if isinstance(value, RelationshipProperty) and klass is not cls:
                raise exc.InvalidRequestError(
                    f"relationship() {klass.__name__}.{name} is declared on a mixin; declare "
                    "relationships on the mapped class itself"
                )
            found[name] = (value, info, klass)
    return found


def _map_class(cls: type) -> None:
    registry: Registry = cls.registry  # type: ignore[attr-defined]
    explicit_table = cls.__dict__.get("__table__")
    tablename = getattr(cls, "__tablename__", None)
    if explicit_table is None and tablename is None:
        raise exc.InvalidRequestError(
            f"Class {cls.__name__} does not have a __table__ or __tablename__ specified; "
            "set __tablename__ or mark the class __abstract__ = True"
        )
    found = _collect(cls, registry)
    module_globals = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    props: dict[str, MapperProperty] = {}
    columns: list[Column] = []
    for key, (value, info, declaring) in found.items():
        if isinstance(value, RelationshipProperty):
            _apply_relationship_annotation(value, info, cls, key)
            value._namespace = lambda g=module_globals: registry.namespace(g)
            props[key] = value
            continue
        if explicit_table is not None:
            raise exc.ArgumentError(
                f"{cls.__name__}.{key}: mapped_column() cannot be combined with an "
                "explicit __table__; put the column in the Table"
            )
        if isinstance(value, Column):
            col = value if declaring is cls else value._copy()
            if col._name is None:
                col.name = key
        else:
            if value is None and info is not None and _names_a_class(info):
                unresolved = f" (not resolvable: {info.error})" if info.error else ""
                raise exc.ArgumentError(
                    f"'{cls.__name__}.{key}' is annotated with {info.target!r}{unresolved}; "
                    "a mapped class must be declared with relationship(), and names "
                    "used in annotations must be defined at module level"
                )
            mc = value if value is not None else MappedColumn()
            col = mc._make_column(key, info, registry, cls)
        columns.append(col)
        props[key] = ColumnProperty(col, key)
    if explicit_table is not None:
        table = explicit_table
        column_props = {k: ColumnProperty(c, k) for k, c in ((c.key, c) for c in table.columns)}
        props = {**column_props, **props}
    else:
        args, kwargs = _table_args(cls)
        table = Table(tablename, registry.metadata, *columns, *args, **kwargs)
    for key in props:
        if key in cls.__dict__:
            delattr(cls, key)
    mapper = Mapper(cls, table, props, registry, shard_key=getattr(cls, "__shard_key__", None))
    cls.__table__ = table  # type: ignore[attr-defined]
    cls.__mapper__ = mapper  # type: ignore[attr-defined]


def _names_a_class(info: AnnotationInfo) -> bool:
    target = info.target
    if info.python_type is None:
        return isinstance(target, str)
    if info.is_collection:
        return isinstance(target, str) or (
            isinstance(target, type) and issubclass(target, DeclarativeBase)
        )
    return isinstance(target, type) and issubclass(target, DeclarativeBase)


def _table_args(cls: type) -> tuple[list[Any], dict[str, Any]]:
    table_args = getattr(cls, "__table_args__", None)
    if table_args is None:
        return [], {}
    if isinstance(table_args, dict):
        return [], dict(table_args)
    if not isinstance(table_args, tuple):
        raise exc.ArgumentError(
            f"{cls.__name__}.__table_args__ must be a tuple (optionally ending with a dict) "
            "or a dict"
        )
    if table_args and isinstance(table_args[-1], dict):
        return list(table_args[:-1]), dict(table_args[-1])
    return list(table_args), {}


def _apply_relationship_annotation(
    prop: RelationshipProperty, info: AnnotationInfo | None, cls: type, key: str
) -> None:
    if info is None:
        return
    if prop.argument is None:
        prop.argument = info.target
    if info.is_collection is not None:
        prop._annotation_uselist = info.is_collection
