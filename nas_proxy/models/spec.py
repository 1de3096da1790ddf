"""Architecture spec strings: ``FAMILY:key=value,key=value``.

Parsing is strict (unknown family, key or value is a :class:`UserError` that lists what is
allowed) and produces an :class:`ArchSpec` whose options are typed and complete. ``str(spec)`` is
the canonical form (keys sorted, defaults included), so equal architectures give equal strings
and the string can serve as a cache key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nas_proxy.errors import UserError
from nas_proxy.models.registry import get_family

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def format_value(value: Any) -> str:
    """How a typed option value is written in a spec string (inverse of the parsers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "/".join(format_value(v) for v in value)
    return str(value)


def guess_value(text: str) -> Any:
    """Type a free-form value (timm kwargs): bool, none, int, float, ``a/b`` tuple, else str."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "/" in text:
        parts = [guess_value(p) for p in text.split("/")]
        if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
            return tuple(parts)
    return text


@dataclass(frozen=True)
class Option:
    """Declaration of one spec key: its type, default and allowed values.

    ``type`` is ``int``, ``float``, ``bool``, ``str`` or ``tuple`` (ints written ``32/64/128``;
    ``low``/``high`` then bound each element). ``default=None`` makes the key optional: it is
    left out of the canonical string while unset.
    """

    type: type = str
    default: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        if self.choices is not None:
            allowed = "one of " + "|".join(format_value(c) for c in self.choices)
        elif self.type is bool:
            allowed = "true|false"
        else:
            name = {tuple: "ints joined by '/'"}.get(self.type, self.type.__name__)
            allowed = name + self._range_text()
        default = "optional" if self.default is None else f"default {format_value(self.default)}"
        return f"{allowed}, {default}"

    def _range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f" {format_value(self.low)}..{format_value(self.high)}"
        if self.low is not None:
            return f" >= {format_value(self.low)}"
        if self.high is not None:
            return f" <= {format_value(self.high)}"
        return ""

    def parse(self, where: str, key: str, text: str) -> Any:
        """Typed value of ``key=text``; a UserError naming ``where`` and what is allowed."""
        try:
            value = self._convert(text.strip())
        except ValueError:
            value = None
        if value is None or not self._allowed(value):
            raise UserError(
                f"{where}: {key}={text!r} is not allowed; {key} takes {self.describe()}"
            )
        return value

    def _convert(self, text: str) -> Any:
        if self.type is bool:
            low = text.lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(text)
            return low in _TRUE
        if self.type is tuple:
            return tuple(int(part) for part in text.split("/"))
        if self.type is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if self.type is str:
            return text.lower()
        return self.type(text)

    def _allowed(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        items = value if isinstance(value, tuple) else (value,)
        if not items:
            return False
        return all(
            (self.low is None or v >= self.low) and (self.high is None or v <= self.high)
            for v in items
        )


def split_items(where: str, body: str) -> list[str]:
    """The comma-separated items after the colon; an empty body means 'all defaults'."""
    if not body.strip():
        return []
    items = [item.strip() for item in body.split(",")]
    if "" in items:
        raise UserError(f"{where}: empty item in {body!r}; write key=value,key=value")
    return items


def split_pair(where: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise UserError(f"{where}: expected key=value, got {item!r}")
    return key, value.strip()


def describe_schema(schema: Mapping[str, Option]) -> str:
    return "; ".join(f"{key} ({opt.describe()})" for key, opt in sorted(schema.items()))


def parse_options(where: str, schema: Mapping[str, Option], body: str) -> dict[str, Any]:
    """Parse ``key=value,...`` against ``schema``: typed values, defaults filled in."""
    options: dict[str, Any] = {}
    for item in split_items(where, body):
        key, text = split_pair(where, item)
        if key not in schema:
            raise UserError(f"{where}: unknown key {key!r}; allowed: {describe_schema(schema)}")
        if key in options:
            raise UserError(f"{where}: key {key!r} given twice")
        options[key] = schema[key].parse(where, key, text)
    return {key: options.get(key, opt.default) for key, opt in schema.items()}


def format_options(family: str, options: Mapping[str, Any]) -> str:
    """Canonical ``family:key=value,...``: keys sorted, unset optional keys left out."""
    items = [f"{k}={format_value(v)}" for k, v in sorted(options.items()) if v is not None]
    return f"{family}:{','.join(items)}" if items else family


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture: its family and complete, typed options.

    ``str(spec)`` is canonical; two specs are equal when their family and options are.
    """

    family: str
    options: dict[str, Any]

    def __str__(self) -> str:
        family = get_family(self.family)
        if family.format is not None:
            return family.format(self.options)
        return format_options(self.family, self.options)

    def __hash__(self) -> int:  # options is a dict, so hash the canonical string instead
        return hash(str(self))


def parse_spec(spec: str | ArchSpec) -> ArchSpec:
    """Parse and validate a spec string (an ArchSpec is re-validated through its string)."""
    if isinstance(spec, ArchSpec):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"architecture spec must be a non-empty string like "
            f"'convnet:depth=3,width=64', got {spec!r}"
        )
    name, _, body = spec.strip().partition(":")
    family = get_family(name.strip().lower())
    if family.parse is not None:
        options = family.parse(body)
    else:
        options = parse_options(family.name, family.schema, body)
    if family.canonicalize is not None:
        options = family.canonicalize(options)
    return ArchSpec(family.name, options)
