"""``nas-proxy evaluate``: train architectures from scratch on proxies, test on real data."""

from __future__ import annotations

from typing import Any

import click

from nas_proxy.cli.common import common_options, emit, info, main


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("proxy", "method", "arch", "accuracy", "seeds", "wall s")
    lines = [
        (
            r["proxy"],
            r["method"],
            r["arch"],
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
            str(r["seeds"]),
            f"{r['wall_s']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line) for line in (header, *lines))


@main.command("evaluate")
@click.option(
    "--proxy", "proxies", multiple=True, required=True, help="Proxy folder (repeat for several)."
)
@click.option(
    "--arch",
    "archs",
    multiple=True,
    required=True,
    help="Architecture spec to train (repeat for several).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Training seeds per proxy × arch (--seed, --seed+1, ...).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Override the proxy recipe's epochs."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Override the proxy recipe's (or learned) learning rate.",
)
@click.option(
    "--no-recalibrate",
    is_flag=True,
    help="Keep BatchNorm statistics of the proxy images (default: re-estimate them "
    "on real training images before testing).",
)
@click.option(
    "--dataset", default=None, help="Real dataset to test on (default: the one in proxy.json)."
)
@common_options()
def evaluate_command(
    proxies,
    archs,
    seeds,
    epochs,
    lr,
    no_recalibrate,
    dataset,
    as_json,
    seed,
    device,
    data_dir,
    download,
):
    """Train each --arch from scratch on each --proxy with the proxy's recipe for --seeds seeds;
    report mean ± std accuracy on the real test split."""
    from nas_proxy.distill.evaluate import evaluate_proxies
    from nas_proxy.runtime import resolve_device

    rows = evaluate_proxies(
        proxies,
        archs,
        seeds=range(seed, seed + seeds),
        device=resolve_device(device),
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        say=info,
        epochs=epochs,
        lr=lr,
        recalibrate_norm=False if no_recalibrate else None,
    )
    emit({"results": rows}, as_json, format_table(rows))
