"""``nas-proxy distill``: build a proxy (MTT by default; DM, DC, random or herding subsets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from nas_proxy.cli.common import common_options, emit, info, main
from nas_proxy.distill import METHODS
from nas_proxy.distill.options import (
    FLAGS,
    OPTIONS,
    Flag,
    defaults_text,
    flag_name,
    method_options,
    option_names,
)

# Every method option comes from nas_proxy.distill.options (one flag per option any method
# reads) and defaults to None ("not given"), so each method and preset keeps its own defaults.
_TYPES = {
    "count": click.IntRange(min=0),
    "int": click.IntRange(min=1),
    "positive": click.FloatRange(min=0, min_open=True),
    "float": float,
    "text": str,
}


def _option(name: str, flag: Flag) -> Callable:
    default = defaults_text(name)
    help_text = f"{flag.help} [default: {default}]" if default else flag.help
    decls = [flag_name(name)]
    kwargs: dict[str, Any] = {"default": None, "help": help_text}
    if flag.kind in ("bool", "dsa"):
        decls = [f"{flag_name(name)}/--{flag.off}"]
    elif flag.kind == "choice":
        kwargs["type"] = click.Choice(flag.choices)
    elif flag.kind == "specs":
        kwargs.update(multiple=True, default=())
    else:
        kwargs["type"] = _TYPES[flag.kind]
    return click.option(*decls, name, **kwargs)


def distill_options(f: Callable) -> Callable:
    """A flag for every option of every method (nas_proxy.distill.options.FLAGS)."""
    used = {n for method in OPTIONS for n in option_names(method)}
    for name in reversed([n for n in FLAGS if n in used]):
        f = _option(name, FLAGS[name])(f)
    return f


@main.command("distill")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option("--ipc", type=click.IntRange(min=1), required=True, help="Images per class.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Proxy folder (re-running resumes from its checkpoint).",
)
@click.option(
    "--method",
    type=click.Choice(list(METHODS)),
    default="mtt",
    show_default=True,
)
@distill_options
@common_options()
def distill_command(dataset, ipc, out, method, as_json, seed, device, data_dir, download, **opts):
    """Distil DATASET into IPC images per class and write a proxy to OUT (proxy.safetensors,
    proxy.json, log.csv, grid.png). MTT trains missing experts first. A flag the --method does
    not read is an error."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill
    from nas_proxy.distill.common import DistillDiverged
    from nas_proxy.errors import UserError
    from nas_proxy.models import parse_spec
    from nas_proxy.runtime import resolve_device

    opts["arch"] = [str(parse_spec(a)) for a in opts["arch"]] or None
    options = method_options(method, opts)  # a flag this method does not read: exit 2, now
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    info(f"distilling {data.name} into {ipc} images per class with {method} on {dev} → {out}")
    try:
        result = distill(method, data, ipc, out, options, seed=seed, device=dev)
    except DistillDiverged as e:  # a hyperparameter problem, not a bug: exit 2, one line
        raise UserError(str(e)) from None
    emit(
        result,
        as_json,
        f"{method}: {result['images']} images in {result['dir']} after "
        f"{result['iterations']} iterations ({result['wall_s']:.1f} s); "
        f"picture: {result['dir']}/grid.png",
    )
