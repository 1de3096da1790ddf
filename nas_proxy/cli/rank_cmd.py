"""``nas-proxy rank``: full-data ground truth for a sample of candidates, proxies side by side."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, main
from nas_proxy.cli.train_cmd import train_options

# nas_proxy.rank.baselines.ZERO_COST, spelled out so that loading the CLI does not import torch
# (a test checks they agree).
ZERO_COST_DEFAULT = "synflow,gradnorm,naswot,params,flops"

RECIPE_FLAGS = (
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "optimizer",
    "schedule",
    "augment",
)


def headline(summary: dict) -> str:
    """The report's headline table as plain text, and where the report is."""
    from nas_proxy.rank.report import headline_headers, headline_rows

    rows = [headline_headers(summary), *headline_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, f"report: {summary['report']}"])


@main.command("rank")
@click.option("--study", default=None, help="Optuna study name (with --storage).")
@click.option(
    "--storage",
    default=None,
    help="Optuna storage URL of the study (sqlite:///..., postgresql://..., or a "
    "journal file path).",
)
@click.option(
    "--candidates",
    "candidates_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML list of architecture specs (instead of --study).",
)
@click.option(
    "--proxy",
    "proxies",
    multiple=True,
    help="Proxy folder to put side by side (repeat). Each candidate is trained on it "
    "with its recipe and scored on real validation data.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset (default: the study's, else the first proxy's, else digits).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Candidates to take from a study (top-k plus a stratified sample).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="k of the top-k overlap and of the study's always-included best trials.",
)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    default=None,
    help="Also report ρ over the best N by full score [default: half, at least k].",
)
@click.option(
    "--ceiling-seeds",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Full-data seeds per candidate; >= 2 gives the noise ceiling.",
)
@click.option(
    "--short-epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Add short full-data training of this many epochs as a proxy.",
)
@click.option(
    "--short-steps",
    type=click.IntRange(min=1),
    multiple=True,
    help="Add short full-data training of this many optimizer steps (repeat for a cost "
    "sweep); its cosine schedule ends within the budget.",
)
@click.option(
    "--short-match/--no-short-match",
    default=True,
    show_default=True,
    help="Add, for each --proxy, short full-data training with the same training compute "
    "(sample-gradients) per candidate: the rival a proxy must beat to be worth building.",
)
@click.option(
    "--project-to",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Also report costs with each proxy's build shared by this many candidates.",
)
@click.option(
    "--zero-cost",
    default=ZERO_COST_DEFAULT,
    show_default=True,
    help="Training-free scores to add (comma-separated, or none).",
)
@click.option(
    "--proxy-epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Override the epochs of every --proxy's recipe.",
)
@click.option(
    "--proxy-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Override the learning rate of every --proxy's recipe.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Training processes (CPU cores are split between them).",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Cache of finished runs [default: OUT/../gt-cache].",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="Bootstrap resamples for confidence intervals (0: none).",
)
@train_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Report folder.")
@common_options()
def rank_command(
    study,
    storage,
    candidates_file,
    proxies,
    dataset,
    sample,
    top_k,
    top_n,
    ceiling_seeds,
    short_epochs,
    short_steps,
    short_match,
    project_to,
    zero_cost,
    proxy_epochs,
    proxy_lr,
    workers,
    cache_dir,
    bootstrap,
    out,
    as_json,
    seed,
    device,
    data_dir,
    download,
    **recipe,
):
    """Retrain candidates on the full data (the recipe flags) and report how faithfully each
    proxy ranks them: Spearman ρ with CI, Kendall τ, top-k overlap, regret, over all candidates
    and over the best ones, beside the seed-to-seed noise ceiling and each proxy's cost.

    Finished runs are cached (per spec, recipe, dataset and seed): a re-run resumes, a second
    report reuses them. Exactly one of --study/--candidates."""
    from nas_proxy.rank.baselines import parse_zero_cost
    from nas_proxy.rank.compare import rank

    summary = rank(
        out=out,
        recipe={k: recipe[k] for k in RECIPE_FLAGS},
        candidates_file=candidates_file,
        study=study,
        storage=storage,
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        proxies=list(proxies),
        sample=sample,
        top_k=top_k,
        seed=seed,
        top_n=top_n,
        ceiling_seeds=ceiling_seeds,
        short_epochs=short_epochs,
        short_steps=list(short_steps),
        short_match=short_match and bool(proxies),
        project_to=project_to,
        zero_cost=parse_zero_cost(zero_cost),
        workers=workers,
        device=device,
        cache_dir=cache_dir,
        n_boot=bootstrap,
        proxy_overrides={"epochs": proxy_epochs, "lr": proxy_lr},
    )
    emit(summary, as_json, headline(summary))
