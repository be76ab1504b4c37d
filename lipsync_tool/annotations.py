"""Reading the type annotations of option models.

The CLI turns an option's annotation into a Typer type, and batch manifests
turn a text cell into a value the model accepts; both ask the same few
questions, answered here once: is it optional, a choice (``Literal``), a tuple
of fixed or open length, a path?
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Shape", "mentions_path", "shape"]


@dataclass(frozen=True)
class Shape:
    """What an annotation is, with ``Optional`` taken off."""

    #: The annotation without ``None`` (unchanged for a union of several types).
    annotation: Any
    optional: bool = False
    #: The values of a ``Literal``, else None.
    choices: tuple[Any, ...] | None = None
    #: The item types of a fixed-length tuple (``tuple[int, int]``), else None.
    items: tuple[Any, ...] | None = None
    #: ``tuple[X, ...]``: any number of items of type ``item``.
    variadic: bool = False
    item: Any = None
    #: A union of several types besides ``None``: nothing more is known.
    union: bool = False

    @property
    def is_tuple(self) -> bool:
        return self.items is not None or self.variadic

    @property
    def choice_type(self) -> type | None:
        """The one type of every choice (``int`` for ``Literal[256, 512]``), else None."""
        kinds = {type(c) for c in self.choices or ()}
        return kinds.pop() if len(kinds) == 1 else None


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def shape(annotation: Any) -> Shape:
    """The :class:`Shape` of *annotation* (``int | None``, ``Literal[...]``, ``tuple[int, ...]`` …)."""
    optional = False
    origin = typing.get_origin(annotation)
    if _is_union(origin):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            return Shape(annotation, optional=optional, union=True)
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        return Shape(annotation, optional=optional, choices=typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return Shape(annotation, optional=optional, variadic=True, item=args[0])
        return Shape(annotation, optional=optional, items=args)
    return Shape(annotation, optional=optional)


def mentions_path(annotation: Any) -> bool:
    """Whether ``Path`` appears anywhere in *annotation* (``Path | None``, ``tuple[Path, ...]``)."""
    if annotation is Path:
        return True
    return any(mentions_path(a) for a in typing.get_args(annotation))
