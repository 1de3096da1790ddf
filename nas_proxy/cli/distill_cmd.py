"""``nas-proxy distill``: build a proxy (MTT by default; DM, DC, random or herding subsets)."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, info, main

# Every method option defaults to None ("not given"), so each method and preset keeps its own
# defaults; see nas_proxy/distill/presets.py for MTT's.
_INT = click.IntRange(min=0)
_POS = click.FloatRange(min=0, min_open=True)


def distill_options(f):
    options = [
        click.option(
            "--preset",
            default=None,
            help="Published MTT hyperparameters, e.g. cifar10-ipc10 (see docs).",
        ),
        click.option("--iterations", type=_INT, default=None, help="Distillation iterations."),
        click.option(
            "--syn-steps",
            type=click.IntRange(min=1),
            default=None,
            help="MTT: unrolled SGD steps on the synthetic set per iteration.",
        ),
        click.option(
            "--expert-epochs",
            type=click.IntRange(min=1),
            default=None,
            help="MTT: expert epochs matched per iteration (M).",
        ),
        click.option(
            "--max-start-epoch",
            type=_INT,
            default=None,
            help="MTT: latest expert epoch a matching segment starts from.",
        ),
        click.option("--num-experts", type=click.IntRange(min=1), default=None),
        click.option("--lr-img", type=_POS, default=None, help="Learning rate of the images."),
        click.option(
            "--lr-lr", type=_POS, default=None, help="MTT: learning rate of the learned step size."
        ),
        click.option(
            "--lr-teacher", type=_POS, default=None, help="MTT: initial synthetic step size."
        ),
        click.option(
            "--lr-label", type=_POS, default=None, help="MTT: learning rate of soft labels."
        ),
        click.option(
            "--batch-syn",
            type=_INT,
            default=None,
            help="MTT: synthetic batch per inner step (0: the whole set).",
        ),
        click.option("--zca/--no-zca", default=None, help="Distil in ZCA-whitened space."),
        click.option(
            "--dsa/--no-dsa",
            default=None,
            help="Differentiable siamese augmentation (default on for images).",
        ),
        click.option(
            "--soft-labels/--hard-labels", default=None, help="MTT: learn soft labels too."
        ),
        click.option(
            "--init",
            type=click.Choice(["real", "noise"]),
            default=None,
            help="Initial synthetic images.",
        ),
        click.option(
            "--memory-bounded/--full-graph",
            default=None,
            help="MTT: recompute inner steps in the backward pass (flat memory).",
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16"]),
            default=None,
            help="MTT: bf16 runs the inner steps' forwards under autocast (parameters, updates "
            "and loss stay fp32); auto picks bf16 where the device has it natively.",
        ),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=None),
        click.option(
            "--eval-epochs",
            type=click.IntRange(min=1),
            default=None,
            help="Epochs of the training recipe written into the proxy.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help="Processes that train missing experts.",
        ),
        click.option(
            "--experts",
            type=click.Path(file_okay=False),
            default=None,
            help="Expert cache root [default: OUT/../experts].",
        ),
        click.option(
            "--arch", multiple=True, help="Architecture spec (repeat: each iteration matches one)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
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
    type=click.Choice(["mtt", "dm", "dc", "random", "herding"]),
    default="mtt",
    show_default=True,
)
@distill_options
@common_options()
def distill_command(dataset, ipc, out, method, as_json, seed, device, data_dir, download, **opts):
    """Distil DATASET into IPC images per class and write a proxy to OUT (proxy.safetensors,
    proxy.json, log.csv, grid.png). MTT trains missing experts first."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill
    from nas_proxy.distill.common import DistillDiverged
    from nas_proxy.errors import UserError
    from nas_proxy.models import parse_spec
    from nas_proxy.runtime import resolve_device

    opts["arch"] = [str(parse_spec(a)) for a in opts["arch"]] or None
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    info(f"distilling {data.name} into {ipc} images per class with {method} on {dev} → {out}")
    try:
        result = distill(method, data, ipc, out, opts, seed=seed, device=dev)
    except DistillDiverged as e:  # a hyperparameter problem, not a bug: exit 2, one line
        raise UserError(str(e)) from None
    emit(
        result,
        as_json,
        f"{method}: {result['images']} images in {result['dir']} after "
        f"{result['iterations']} iterations ({result['wall_s']:.1f} s); "
        f"picture: {result['dir']}/grid.png",
    )
