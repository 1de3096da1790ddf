"""``nas-proxy train``: train one architecture on the full training split."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, info, main
from nas_proxy.cli.options import recipe_options, recipe_values


@main.command("train")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option("--arch", required=True, help="Architecture spec, e.g. convnet:depth=3,width=32.")
@recipe_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Save weights (safetensors) and the result (JSON) here.",
)
@common_options()
def train_command(dataset, arch, out, as_json, seed, device, data_dir, download, **recipe):
    """Train one architecture on the full training split; report val and test accuracy."""
    from nas_proxy.data import load_dataset
    from nas_proxy.models import parse_spec
    from nas_proxy.recipe import train_config
    from nas_proxy.runtime import resolve_device
    from nas_proxy.train import train_architecture

    spec = str(parse_spec(arch))  # fail on a bad spec before loading data
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    cfg = train_config(recipe_values(recipe), data.name, seed=seed)
    info(
        f"training {spec} on {data.name} ({len(data.train_y)} images) for {cfg.epochs} epochs "
        f"on {dev}"
    )
    result = train_architecture(spec, data, cfg, device=dev, out=out)
    emit(
        result,
        as_json,
        f"{spec}: val {_fmt(result['val_accuracy'])}, test {_fmt(result['test_accuracy'])}, "
        f"{result['params']:,} params, {result['flops']:,} FLOPs, {result['wall_s']:.1f} s",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
