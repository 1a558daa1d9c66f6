"""Command-line values -> typed config fields, with one-line errors.

python-fire parses flag values with Python's literal rules, which surprises people:
``--out 123`` arrives as the int 123, ``--name 1e3`` as a float, ``--same_length`` alone as
True, ``--cutoffs 2000,10000`` as a tuple, ``--ds_config`` without a value as True, and a
typo'd flag silently lands in ``**kwargs``. :func:`coerce` turns each value into the type
the config field declares or raises :class:`SkipxlError` naming the flag, what it got and
what it needs; :func:`unknown_flag` suggests the closest valid names.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from skipxl.errors import SkipxlError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _flag(name: str) -> str:
    return "--" + name


def _split_list(value: str) -> list[str]:
    """``"a,b"``, ``"[a, b]"`` or a Python literal ``"('a', 'b')"`` -> ``["a", "b"]``."""
    items = (s.strip().strip("'\"").strip() for s in value.strip().strip("[]()").split(","))
    return [s for s in items if s]


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to ``annotation`` (int, float, bool, str, tuple[...], X | None).

    ``annotation`` must be a real type (use ``typing.get_type_hints`` on the dataclass).
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in typing.get_args(annotation):
            return None
        errors = []
        for arg in (
            sorted(args, key=lambda a: 0 if typing.get_origin(a) is tuple else 1)
            if isinstance(value, (list, tuple))
            else args
        ):
            try:
                return coerce(name, value, arg)
            except SkipxlError as exc:
                errors.append(str(exc))
        raise SkipxlError(
            errors[0]
            if len(errors) == 1
            else f"{_flag(name)} got {value!r}; expected one of: {', '.join(_type_name(a) for a in args)}"
        )
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise SkipxlError(f"{_flag(name)} expects true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise SkipxlError(f"{_flag(name)} needs an integer value (e.g. {_flag(name)} 8), got a bare flag")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SkipxlError(f"{_flag(name)} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise SkipxlError(f"{_flag(name)} needs a number (e.g. {_flag(name)} 0.1), got a bare flag")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SkipxlError(f"{_flag(name)} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, bool):
            raise SkipxlError(f"{_flag(name)} needs a value (e.g. {_flag(name)}=NAME), got a bare flag")
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str):
            return value
        raise SkipxlError(f"{_flag(name)} expects a string, got {value!r}")
    if origin is tuple:
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        if isinstance(value, str):
            items: Iterable[Any] = _split_list(value)
        elif isinstance(value, (list, tuple)):
            items = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        else:
            raise SkipxlError(f"{_flag(name)} expects a comma-separated list, got {value!r}")
        if len(args) == 2 and args[1] is not Ellipsis:  # fixed-length tuple[a, b]
            items = list(items)
            if len(items) != len(args):
                raise SkipxlError(f"{_flag(name)} expects {len(args)} comma-separated values, got {value!r}")
            return tuple(coerce(name, v, a) for v, a in zip(items, args, strict=True))
        return tuple(coerce(name, v, inner) for v in items)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def unknown_flag(name: str, valid: Iterable[str], where: str) -> SkipxlError:
    """An error for an unknown flag, with the closest valid spellings."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(_flag(c) for c in close)}?"
        if close
        else f"; valid flags: {', '.join(_flag(v) for v in valid)}"
    )
    return SkipxlError(f"unknown flag {_flag(name)} for {where}{hint}")


def doc_entries(doc: str | None, section: str = "Attributes") -> dict[str, str]:
    """``name: text`` entries of a Google-style docstring section (``Args:``, ``Attributes:``).

    An entry may name several fields (``micro_batch / grad_accum:`` or ``a, b:``); each of
    them gets the text. Continuation lines are joined.
    """
    import inspect
    import re

    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"{section}:")
    except StopIteration:
        return out
    entry = re.compile(r"^    ([A-Za-z_][\w]*(?:\s*(?:/|,)\s*[A-Za-z_][\w]*)*):\s*(.*)$")
    names: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        m = entry.match(line)
        if m:
            names = [n.strip() for n in re.split(r"[/,]", m.group(1))]
            for n in names:
                out[n] = m.group(2).strip()
        elif line.strip() and names:
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def type_name(annotation: Any) -> str:
    """A short name for a field type in ``--help``: ``int``, ``float|None``, ``list[int]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"list[{','.join(type_name(a) for a in dict.fromkeys(args))}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
