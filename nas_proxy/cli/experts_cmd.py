"""``nas-proxy experts``: train or reuse cached expert trajectories."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, info, main
from nas_proxy.recipe import ExpertSettings

EXPERT = ExpertSettings()  # the published MTT recipe: the flags' defaults


@main.command("experts")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option("--arch", required=True, help="Architecture spec of the experts.")
@click.option("--num-experts", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Epochs per expert (a trajectory keeps the weights at every epoch).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Cache root; experts go to OUT/<key>/ (key: hash of every setting).",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=EXPERT.lr, show_default=True
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=EXPERT.batch_size, show_default=True
)
@click.option("--momentum", type=click.FloatRange(0, 1), default=EXPERT.momentum, show_default=True)
@click.option(
    "--weight-decay", type=click.FloatRange(min=0), default=EXPERT.weight_decay, show_default=True
)
@click.option(
    "--augment",
    default=EXPERT.augment,
    show_default=True,
    help="DSA strategy, 'dsa' for the dataset's default, or none.",
)
@click.option(
    "--zca/--no-zca", default=EXPERT.zca, show_default=True, help="Train on ZCA-whitened images."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Experts trained in parallel processes.",
)
@common_options()
def experts_command(
    dataset,
    arch,
    num_experts,
    epochs,
    out,
    lr,
    batch_size,
    momentum,
    weight_decay,
    augment,
    zca,
    workers,
    as_json,
    seed,
    device,
    data_dir,
    download,
):
    """Train NUM_EXPERTS networks with the published MTT recipe (plain SGD, constant lr, DSA)
    and keep their weights at every epoch. A cached request is reused; more experts or more
    epochs extend what exists; a killed run resumes at the last finished epoch."""
    from nas_proxy.data import load_dataset
    from nas_proxy.experts import ensure_experts
    from nas_proxy.models import parse_spec
    from nas_proxy.runtime import resolve_device

    spec = str(parse_spec(arch))
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    aug = None if augment.strip().lower() in ("", "none") else augment
    settings = ExpertSettings(
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        augment=aug,
        zca=zca,
        seed=seed,
    )
    info(f"experts of {spec} on {data.name}: {num_experts} × {epochs} epochs on {dev}")
    cache = ensure_experts(
        data, spec, num_experts, epochs, out, settings, device=dev, workers=workers
    )
    result = cache.summary()
    verb = "reused" if cache.reused else "ready"
    emit(
        result,
        as_json,
        f"{num_experts} experts × {epochs} epochs {verb} in {cache.dir} ({cache.wall_s:.1f} s)",
    )
