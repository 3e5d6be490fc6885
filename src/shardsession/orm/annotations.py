"""Reading ``Mapped[...]`` annotations: column type, nullability, collection, target."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from shardsession import exc
from shardsession.orm.base import Mapped

__all__ = ["AnnotationInfo", "parse_annotation"]


@dataclass
class AnnotationInfo:
    """What a ``Mapped[...]`` annotation says about an attribute."""

    #: the Python type inside ``Mapped[...]`` without ``Optional``; ``None`` if unresolved.
    python_type: Any
    #: ``True`` for ``Optional[X]`` / ``X | None``.
    optional: bool
    #: ``True`` for ``list[X]``, ``False`` for a single object, ``None`` if unknown.
    is_collection: bool | None
    #: the related class (or its name) for relationships.
    target: Any
    #: a ``mapped_column()`` found in ``Annotated[..., mapped_column(...)]``.
    construct: Any = None
    #: why the annotation could not be evaluated, if it could not.
    error: str | None = None


def parse_annotation(
    raw: Any, module_globals: dict[str, Any], owner: type
) -> AnnotationInfo | None:
    """Interpret an annotation; return ``None`` when it is not ``Mapped[...]``.

    String annotations (``from __future__ import annotations``) are evaluated
    in the declaring module's globals.  Names that are not defined yet (a
    related class declared later) are read from the string instead.
    """
    if isinstance(raw, str):
        try:
            obj = eval(raw, dict(module_globals), {owner.__name__: owner})
        except Exception as err:
            return _parse_string(raw, f"{type(err).__name__}: {err}")
    else:
        obj = raw
    if isinstance(obj, typing.ForwardRef):
        return _parse_string(obj.__forward_arg__, None)
    origin = typing.get_origin(obj)
    if obj is Mapped or (isinstance(obj, type) and issubclass(obj, Mapped)):
        raise exc.ArgumentError(f"Mapped annotation of {owner.__name__} needs a type: Mapped[X]")
    if not (isinstance(origin, type) and issubclass(origin, Mapped)):
        return None
    (inner,) = typing.get_args(obj)
    return _parse_inner(inner)


def _parse_inner(inner: Any) -> AnnotationInfo:
    construct = None
    if isinstance(inner, str):
        return _parse_string(f"Mapped[{inner}]", None)
    if isinstance(inner, typing.ForwardRef):
        return _parse_string(f"Mapped[{inner.__forward_arg__}]", None)
    inner, construct = _unwrap_annotated(inner, construct)
    optional = False
    origin = typing.get_origin(inner)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(inner)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) != len(args)
        if len(rest) != 1:
            raise exc.ArgumentError(
                f"Mapped[{inner}] unions several types; map one type (optionally Optional)"
            )
        inner, construct = _unwrap_annotated(rest[0], construct)
        if isinstance(inner, typing.ForwardRef):
            info = _parse_string(f"Mapped[{inner.__forward_arg__}]", None)
            info.optional = True
            return info
    origin = typing.get_origin(inner)
    is_collection: bool | None = False
    target: Any = inner
    if origin is list:
        (elem,) = typing.get_args(inner) or (None,)
        is_collection = True
        target = elem.__forward_arg__ if isinstance(elem, typing.ForwardRef) else elem
    elif origin is not None:
        is_collection = None
    return AnnotationInfo(inner, optional, is_collection, target, construct)


def _unwrap_annotated(inner: Any, construct: Any) -> tuple[Any, Any]:
    """Strip ``Annotated[X, ...]``, keeping a ``mapped_column()`` found in its extras."""
    if typing.get_origin(inner) is not typing.Annotated:
        return inner, construct
    from shardsession.orm.decl_base import MappedColumn

    args = typing.get_args(inner)
    for extra in args[1:]:
        if isinstance(extra, MappedColumn):
            construct = extra
    return args[0], construct


_MAPPED = re.compile(r"^\s*(?:[\w.]+\.)?Mapped\[(.*)\]\s*$", re.S)
_WRAP = re.compile(r"^\s*(?:typing\.)?(Optional|List|list)\[(.*)\]\s*$", re.S)


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def _parse_string(text: str, error: str | None) -> AnnotationInfo | None:
    m = _MAPPED.match(text)
    if m is None:
        return None
    inner = _strip_quotes(m.group(1))
    optional = False
    is_collection = False
    for _ in range(3):
        parts = [p.strip() for p in inner.split("|")]
        if len(parts) > 1 and "None" in parts:
            optional = True
            rest = [p for p in parts if p != "None"]
            inner = _strip_quotes(" | ".join(rest))
            continue
        w = _WRAP.match(inner)
        if w is None:
            break
        if w.group(1) == "Optional":
            optional = True
        else:
            is_collection = True
        inner = _strip_quotes(w.group(2))
    return AnnotationInfo(None, optional, is_collection, inner, None, error)
