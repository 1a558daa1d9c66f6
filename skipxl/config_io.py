"""JSON round-tripping for the frozen config dataclasses.

Every config in skipxl is a frozen dataclass validated in ``__post_init__``. These two
helpers turn one into plain JSON-able data and back (nested dataclasses, tuples and
optional fields included), so that a run folder's ``config.json`` rebuilds the exact
objects that trained it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from skipxl.errors import SkipxlError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Recursively convert dataclasses / tuples / paths into JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coerce(tp: Any, value: Any) -> Any:
    """Convert JSON data ``value`` to the annotated type ``tp`` (dataclass, tuple, optional)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value)
        for arg in args:
            if typing.get_origin(arg) is tuple and isinstance(value, (list, tuple)):
                return _coerce(arg, value)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error naming them."""
    if not isinstance(data, dict):
        raise SkipxlError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SkipxlError(f"unknown {cls.__name__} field(s) {unknown}; valid fields are {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    for key, value in kwargs.items():
        _check_scalar(cls.__name__, key, hints[key], value)
    return cls(**kwargs)


def json_safe(obj: Any) -> Any:
    """:func:`to_dict`, with NaN and +-inf as ``None``: strict JSON that every parser reads.

    Python's ``json`` writes ``Infinity``/``NaN``, which is not JSON (RFC 8259): jq, JavaScript
    and strict parsers reject the file. An undefined number (no best validation yet, a
    diverged loss) is ``null`` instead.
    """
    obj = to_dict(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        return json_safe(obj.item())  # numpy / torch scalars
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``, refusing anything non-strict."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def _check_scalar(owner: str, name: str, tp: Any, value: Any) -> None:
    """A JSON value of the wrong scalar type (``"max_steps": "abc"``) fails here, naming the field,
    instead of deep inside a ``__post_init__`` comparison."""
    allowed = (
        [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp)
        in (
            typing.Union,
            types.UnionType,
        )
        else [tp]
    )
    if value is None or not all(a in (int, float, bool, str) for a in allowed):
        return
    ok = any(
        (a is bool and isinstance(value, bool))
        or (a is int and isinstance(value, int) and not isinstance(value, bool))
        or (a is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (a is str and isinstance(value, str))
        for a in allowed
    )
    if not ok:
        names = " or ".join(a.__name__ for a in allowed)
        raise SkipxlError(f"{owner}.{name} must be {names}, got {value!r}; fix that field of the JSON")


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` (dataclass or JSON-able) to ``path`` atomically (write then rename), strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> Any:
    """Read JSON from ``path`` with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise SkipxlError(f"{path} does not exist; pass the run folder or file that holds it")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SkipxlError(
            f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}); "
            "restore or regenerate it"
        ) from None
    except json.JSONDecodeError as exc:
        raise SkipxlError(f"{path} is not valid JSON ({exc}); restore or regenerate it") from exc
