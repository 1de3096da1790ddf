"""timm models as a family: ``timm:NAME[,key=value...]``, adapted to small images.

Key/value pairs are typed from their text (int, float, bool, none, ``a/b`` tuples, else str) and
passed to ``timm.create_model(NAME, pretrained=False, in_chans=C, num_classes=K, ...)``; weights
are never downloaded. ``small_input`` (default true) applies what the small-image (CIFAR)
literature does to ImageNet models: a stride-1 stem and no stem max-pool, and for models built
for one input size (ViT and friends) ``img_size`` = the data's size with a small patch.

timm is imported lazily so that importing nas_proxy stays fast.
"""

from __future__ import annotations

import difflib
import inspect
import math
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from nas_proxy.errors import UserError
from nas_proxy.models.profile import eval_mode
from nas_proxy.models.registry import register_family
from nas_proxy.models.spec import Option, format_value, guess_value, split_items, split_pair

SCHEMA = {"small_input": Option(bool, True)}
# Set by nas-proxy itself, or would change what the model returns.
RESERVED = (
    "name",
    "pretrained",
    "in_chans",
    "num_classes",
    "features_only",
    "checkpoint_path",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
)
# Errors that timm and torch raise for a model that cannot be built or run as configured.
BUILD_ERRORS = (
    TypeError,
    ValueError,
    AssertionError,
    RuntimeError,
    KeyError,
    IndexError,
    NotImplementedError,
    ZeroDivisionError,
)
PROBE_SIDES = (16, 32, 64, 128, 224)  # tried for the 'minimum input size' hint


@lru_cache(maxsize=1)
def model_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def _check_name(name: str) -> None:
    names = model_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
    raise UserError(f"timm: unknown model {name!r}; {hint}")


def parse_timm(body: str) -> dict[str, Any]:
    items = split_items("timm", body)
    if not items or "=" in items[0]:
        raise UserError(
            "timm: expected timm:NAME[,key=value...], e.g. timm:resnet18 or "
            "timm:mobilenetv3_small_050,drop_rate=0.1"
        )
    name = items[0]
    _check_name(name)
    where = f"timm:{name}"
    options: dict[str, Any] = {"name": name, "small_input": True}
    given: set[str] = set()
    for item in items[1:]:
        key, text = split_pair(where, item)
        if key in given:
            raise UserError(f"{where}: key {key!r} given twice")
        if key in RESERVED:
            raise UserError(
                f"{where}: {key} cannot be set; nas-proxy never loads pretrained weights and takes "
                "in_chans and num_classes from the dataset"
            )
        given.add(key)
        options[key] = SCHEMA[key].parse(where, key, text) if key in SCHEMA else guess_value(text)
    return options


def format_timm(options: dict[str, Any]) -> str:
    """``timm:NAME,k=v,...``: model name first, then the given kwargs sorted.

    timm's own defaults are not spelled out (they belong to timm); ``small_input`` is shown only
    when switched off.
    """
    items = [options["name"]] + [
        f"{key}={format_value(value)}"
        for key, value in sorted(options.items())
        if key != "name" and not (key == "small_input" and value)
    ]
    return "timm:" + ",".join(items)


def small_patch(height: int, width: int) -> int:
    """Largest patch <= 4 that tiles the image with >= 4 patches a side: 32→4, 28→4, 8→2."""
    side = math.gcd(height, width)
    fits = [p for p in (1, 2, 3, 4) if side % p == 0 and min(height, width) // p >= 4]
    return max(fits, default=1)


def _fixed_size(name: str) -> bool:
    """Whether the model is built for one input size (position embeddings: ViT and friends)."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _size_kwargs(name: str, height: int, width: int, small_input: bool) -> dict[str, Any]:
    """img_size (and a small patch) for models built for one input size."""
    if not _fixed_size(name):
        return {}
    auto: dict[str, Any] = {"img_size": (height, width)}
    if small_input:
        auto["patch_size"] = small_patch(height, width)
    return auto


def _accepted_kwargs(name: str) -> list[str]:
    """Keyword arguments of the model class, for error messages (built on meta: no memory)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except BUILD_ERRORS:
        return []
    params = inspect.signature(type(model).__init__).parameters.values()
    return sorted(
        p.name
        for p in params
        if p.name not in ("self", *RESERVED) and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def _create(name: str, channels: int, num_classes: int, kwargs: dict, auto: dict) -> nn.Module:
    """timm.create_model with the user's kwargs and our automatic ones (``auto``).

    An automatic kwarg the model does not take is dropped and the build retried. (CPython may
    report a duplicate keyword as KeyError instead of TypeError while an exception is being
    handled, so both are checked.)
    """
    import timm

    auto = {k: v for k, v in auto.items() if k not in kwargs}
    while True:
        try:
            return timm.create_model(
                name, pretrained=False, in_chans=channels, num_classes=num_classes, **kwargs, **auto
            )
        except (TypeError, KeyError) as err:
            failure: Exception = err
        except BUILD_ERRORS as err:
            failure = err
        rejected = [k for k in auto if f"'{k}'" in str(failure)]
        if not rejected:
            raise _build_error(name, kwargs, auto, failure)
        for key in rejected:
            del auto[key]


def _build_error(name: str, kwargs: dict, auto: dict, err: Exception) -> UserError:
    if isinstance(err, TypeError):  # most often a keyword the model does not take
        given = ",".join(f"{k}={format_value(v)}" for k, v in sorted(kwargs.items()))
        accepted = _accepted_kwargs(name)
        allowed = f"; it accepts: {', '.join(accepted)}" if accepted else ""
        return UserError(f"timm:{name}: timm rejected {given or 'it'}: {err}{allowed}")
    return UserError(f"timm:{name}: timm cannot build it with {kwargs | auto}: {err}")


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _stride(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    return max(stride) if isinstance(stride, (tuple, list)) else int(stride)


def _stem_convs(model: nn.Module) -> list[str]:
    """Names of the stem convolutions: timm's ``first_conv`` metadata, else the first Conv2d."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    names = [first] if isinstance(first, str) else list(first or ())
    found = [n for n in names if isinstance(_submodule(model, n), nn.Conv2d)]
    if found:
        return found
    return next(([n] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), [])


def _unstride(model: nn.Module, name: str) -> bool:
    conv = model.get_submodule(name)
    if _stride(conv) == 1:
        return False
    if conv.kernel_size == conv.stride:
        # Patchify stem (ConvNeXt 4×4/4): a 3×3/1 conv keeps neighbouring pixels interacting.
        new = nn.Conv2d(
            conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None
        )
        _replace(model, name, new)
    else:
        conv.stride = (1, 1)
    return True


def _drop_stem_pool(model: nn.Module, after: str) -> None:
    """Remove the stem max-pool: the first downsampling layer after the stem conv, if a max-pool."""
    seen = False
    for name, module in model.named_modules():
        if name == after:
            seen = True
        elif seen and not any(True for _ in module.children()) and _stride(module) > 1:
            if isinstance(module, nn.MaxPool2d):
                _replace(model, name, nn.Identity())
            return


def adapt_small_input(model: nn.Module) -> None:
    """Stride-1 stem and no stem max-pool, in place."""
    stem = _stem_convs(model)
    strided = [name for name in stem if _unstride(model, name)]
    if not strided:
        return  # stem already keeps full resolution (VGG, DLA): its pools are not stem pools
    if isinstance(getattr(model, "maxpool", None), nn.Module):
        model.maxpool = nn.Identity()  # timm ResNets, including the anti-aliased Sequential pool
    else:
        _drop_stem_pool(model, after=stem[-1])


def _probe(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    with eval_mode(model), torch.no_grad():
        return model(torch.zeros((1, *shape), device=device))


def _make(options: dict[str, Any], in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Create the timm model for ``in_shape`` and adapt it; running it is checked by the caller."""
    channels, height, width = in_shape
    name, small_input = options["name"], options["small_input"]
    kwargs = {k: v for k, v in options.items() if k not in ("name", "small_input")}
    auto = _size_kwargs(name, height, width, small_input)
    model = _create(name, channels, num_classes, kwargs, auto)
    if small_input and not auto:  # fixed-size (ViT-like) models adapt through img_size/patch_size
        adapt_small_input(model)
    return model


def _smallest_side(
    options: dict[str, Any], model: nn.Module, in_shape: tuple[int, ...], num_classes: int
) -> int:
    """Smallest square input the model runs on (0 if none tried does), for the error message.

    Fixed-size models are rebuilt for each size; the others take any size as built.
    """
    channels = in_shape[0]
    rebuild = _fixed_size(options["name"])
    with torch.random.fork_rng(devices=[]):  # only an error message: leave the RNG alone
        for side in PROBE_SIDES:
            if side <= min(in_shape[1:]):
                continue
            shape = (channels, side, side)
            try:
                _probe(_make(options, shape, num_classes) if rebuild else model, shape)
            except (UserError, *BUILD_ERRORS):
                continue
            return side
    return 0


def build_timm(options: dict[str, Any], in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    name = options["name"]
    if len(in_shape) != 3:
        raise UserError(
            f"timm:{name} needs image input (C, H, W), got shape {tuple(in_shape)}; "
            "use an mlp spec for vector data"
        )
    model = _make(options, in_shape, num_classes)
    # One batch-1 forward pass so that a model too deep for tiny images fails here, with the
    # minimum input size, instead of in the middle of a training run.
    failure: str | None = None
    try:
        out = _probe(model, in_shape)
    except BUILD_ERRORS as err:
        failure = (str(err).strip() or type(err).__name__).splitlines()[0]
    if failure is not None:  # handled outside the except block: rebuilding there trips a quirk
        shape = "×".join(map(str, in_shape))
        side = _smallest_side(options, model, in_shape, num_classes)
        hint = f"; it runs from {side}×{side} upward" if side else ""
        raise UserError(f"timm:{name} as configured fails on {shape} input: {failure}{hint}")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise UserError(f"timm:{name} does not return (batch, {num_classes}) logits")
    return model


register_family("timm", build_timm, SCHEMA, parse=parse_timm, format=format_timm)
