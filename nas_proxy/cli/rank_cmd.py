"""``nas-proxy rank``: full-data ground truth for a sample of candidates, proxies side by side."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, main
from nas_proxy.cli.options import rank_options, recipe_options, recipe_values


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
@rank_options(sample=20, top_k=5, ceiling_seeds=2)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    default=None,
    help="Also report ρ over the best N by full score [default: half, at least k].",
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
    "--proxy-lr-range",
    default=None,
    metavar="X,Y,...",
    help="Also score every --proxy with an lr range test per candidate: train once at each of "
    "these multiples of the proxy's lr and keep the best (every try is paid for), e.g. "
    "0.3,1,3. Reported as NAME+lr.",
)
@click.option(
    "--ensemble/--no-ensemble",
    default=False,
    show_default=True,
    help="Also report the --proxy folders as one proxy (the mean of their ranks, costing all "
    "of them), e.g. one method distilled with several seeds.",
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
@recipe_options
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
    proxy_lr_range,
    ensemble,
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
    from nas_proxy.rank.api import rank
    from nas_proxy.rank.baselines import parse_zero_cost
    from nas_proxy.rank.report import headline_text

    summary = rank(
        out=out,
        recipe=recipe_values(recipe),
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
        proxy_tunings=lr_range_tuning(proxy_lr_range),
        ensemble=ensemble,
    )
    emit(summary, as_json, headline_text(summary))


def lr_range_tuning(text: str | None) -> dict | None:
    """``"0.3,1,3"`` → the rank stage's lr range test tuning; bad numbers are a UserError."""
    from nas_proxy.errors import UserError

    if not text:
        return None
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        scales = []
    if len(scales) < 2 or any(not x > 0 for x in scales):
        raise UserError(f"--proxy-lr-range {text}: need two or more positive numbers, e.g. 0.3,1,3")
    return {"lr": {"lr_scales": scales}}
