"""``nas-proxy train``: train one architecture on the full training split."""

from __future__ import annotations

from pathlib import Path

import click

from nas_proxy.cli.common import common_options, emit, info, main


def train_options(f):
    """Flags of the training recipe, shared by every command that trains on real data."""
    f = click.option(
        "--augment",
        default="none",
        show_default=True,
        help="DSA strategy (e.g. color_crop_cutout_scale_rotate), 'dsa' for the "
        "dataset's default, or none.",
    )(f)
    f = click.option(
        "--schedule",
        type=click.Choice(["cosine", "step", "none"]),
        default="cosine",
        show_default=True,
    )(f)
    f = click.option(
        "--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True
    )(f)
    f = click.option(
        "--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True
    )(f)
    f = click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)(f)
    f = click.option(
        "--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True
    )(f)
    f = click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)(f)
    return f


def resolve_augment(augment: str | None, dataset_name: str) -> str | None:
    from nas_proxy.augment import dsa_strategy_for

    if augment is None or augment.lower() in ("", "none"):
        return None
    return dsa_strategy_for(dataset_name) if augment.lower() == "dsa" else augment


@main.command("train")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option("--arch", required=True, help="Architecture spec, e.g. convnet:depth=3,width=32.")
@train_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Save weights (safetensors) and the result (JSON) here.",
)
@common_options()
def train_command(
    dataset,
    arch,
    epochs,
    lr,
    batch_size,
    momentum,
    weight_decay,
    optimizer,
    schedule,
    augment,
    out,
    as_json,
    seed,
    device,
    data_dir,
    download,
):
    """Train one architecture on the full training split; report val and test accuracy."""
    from nas_proxy.data import load_dataset
    from nas_proxy.io import save_tensors, write_json
    from nas_proxy.models import parse_spec
    from nas_proxy.runtime import resolve_device, versions
    from nas_proxy.train import TrainConfig, fit

    spec = str(parse_spec(arch))  # fail on a bad spec before loading data
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        optimizer=optimizer,
        schedule=schedule,
        augment=resolve_augment(augment, data.name),
        seed=seed,
    )
    info(
        f"training {spec} on {data.name} ({len(data.train_y)} images) for {epochs} epochs on {dev}"
    )
    model, res = fit(
        spec,
        data.train_x,
        data.train_y,
        cfg,
        num_classes=data.num_classes,
        device=dev,
        val=(data.val_x, data.val_y),
        test=(data.test_x, data.test_y),
        desc=spec,
    )
    result = {
        "arch": spec,
        "dataset": data.name,
        "epochs": epochs,
        "val_accuracy": res.val_accuracy,
        "test_accuracy": res.test_accuracy,
        "params": res.params,
        "flops": res.flops,
        "wall_s": round(res.wall_s, 3),
        "device": str(dev),
        "seed": seed,
    }
    if out:
        save_tensors(
            Path(out) / "model.safetensors",
            model.state_dict(),
            metadata={"arch": spec, "dataset": data.name},
        )
        write_json(
            Path(out) / "result.json",
            {**result, "config": cfg.to_dict(), "history": res.history, "versions": versions()},
        )
        result["out"] = str(out)
    emit(
        result,
        as_json,
        f"{spec}: val {_fmt(res.val_accuracy)}, test {_fmt(res.test_accuracy)}, "
        f"{res.params:,} params, {res.flops:,} FLOPs, {res.wall_s:.1f} s",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
