"""One registry mapping architecture families to their constructor and option schema.

A family is what comes before the colon in a spec string (``convnet:depth=3``). Each family
declares its keys once (type, default, allowed values) so that parsing, error messages and the
canonical string all come from the same declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from nas_proxy.errors import UserError

if TYPE_CHECKING:
    from nas_proxy.models.spec import Option

# constructor(options, in_shape, num_classes) -> module; options are validated, defaults filled.
Constructor = Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class Family:
    """Everything the spec parser and the model factory need to know about one family."""

    name: str
    constructor: Constructor
    schema: Mapping[str, Option]
    # Cross-key checks and normalisation after per-key parsing, so that equal architectures get
    # equal canonical strings (e.g. uniform convnet widths collapse to ``width``).
    canonicalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Families whose grammar is not plain key=value (timm: a model name first, open kwargs)
    # bring their own parser for the text after the colon and their own formatter.
    parse: Callable[[str], dict[str, Any]] | None = None
    format: Callable[[dict[str, Any]], str] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    constructor: Constructor,
    schema: Mapping[str, Option],
    *,
    canonicalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    parse: Callable[[str], dict[str, Any]] | None = None,
    format: Callable[[dict[str, Any]], str] | None = None,
    replace: bool = False,
) -> Family:
    """Register ``name`` so that ``name:key=value,...`` specs parse and build.

    ``schema`` maps each key to an :class:`~nas_proxy.models.spec.Option` (type, default, allowed
    values or range). Registering a taken name is an error unless ``replace`` is true.
    """
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"family name must be a lowercase identifier, got {name!r}")
    if name in _FAMILIES and not replace:
        raise ValueError(f"model family {name!r} is already registered")
    family = Family(name, constructor, dict(schema), canonicalize, parse, format)
    _FAMILIES[name] = family
    return family


def get_family(name: str) -> Family:
    """The registered family ``name``; a user error listing the known families otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UserError(
            f"unknown model family {name!r}; known families: {', '.join(list_families())}"
        ) from None


def list_families() -> list[str]:
    """Names of the registered families, sorted."""
    return sorted(_FAMILIES)
