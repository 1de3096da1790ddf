"""``nas-proxy pipeline``: experts → distill (MTT) → search → rank, with quick defaults."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, info, main
from nas_proxy.cli.options import PRUNERS, rank_options
from nas_proxy.pipeline import QUICK
from nas_proxy.recipe import FULL_DATA


@main.command("pipeline")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for every stage's output (e.g. runs/quickstart).",
)
@click.option(
    "--space",
    type=click.Path(dir_okay=False),
    default=None,
    help="Search-space file or shipped space name [default: convnet].",
)
@click.option(
    "--ipc",
    type=click.IntRange(min=1),
    default=QUICK["ipc"],
    show_default=True,
    help="Images per class of the proxy.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=0),
    default=QUICK["iterations"],
    show_default=True,
    help="MTT iterations.",
)
@click.option(
    "--num-experts",
    type=click.IntRange(min=1),
    default=QUICK["num_experts"],
    show_default=True,
    help="Expert trajectories to train.",
)
@click.option(
    "--syn-steps",
    type=click.IntRange(min=1),
    default=None,
    help="MTT inner steps [default: the dataset's CPU default].",
)
@click.option(
    "--expert-epochs",
    type=click.IntRange(min=1),
    default=None,
    help="MTT expert epochs matched per iteration [default: the dataset's].",
)
@click.option(
    "--max-start-epoch",
    type=click.IntRange(min=0),
    default=None,
    help="Latest expert start epoch [default: the dataset's].",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=QUICK["trials"],
    show_default=True,
    help="Search trials.",
)
@click.option(
    "--pruner",
    type=PRUNERS,
    default="none",
    show_default=True,
    help="Search pruner. none: every trial finishes, so the ranked sample spans the "
    "whole score range (pruned trials have no final proxy score).",
)
@click.option(
    "--search-epochs",
    type=click.IntRange(min=1),
    default=QUICK["search_epochs"],
    show_default=True,
    help="Epochs each candidate trains on a proxy.",
)
@rank_options(sample=QUICK["sample"], top_k=QUICK["top_k"], ceiling_seeds=QUICK["ceiling_seeds"])
@click.option(
    "--rank-epochs",
    type=click.IntRange(min=1),
    default=QUICK["rank_epochs"],
    show_default=True,
    help="Full-data training epochs (ground truth).",
)
@click.option(
    "--rank-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=FULL_DATA.lr,
    show_default=True,
    help="Full-data training learning rate.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes for experts, search and ranking.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Torch CPU threads of this process (0: torch's default). Digits-sized "
    "models run fastest on one; a second thread spins on a busy core.",
)
@common_options()
def pipeline_command(
    dataset,
    out,
    space,
    ipc,
    iterations,
    num_experts,
    syn_steps,
    expert_epochs,
    max_start_epoch,
    trials,
    pruner,
    search_epochs,
    sample,
    top_k,
    rank_epochs,
    rank_lr,
    ceiling_seeds,
    short_epochs,
    zero_cost,
    workers,
    threads,
    as_json,
    seed,
    device,
    data_dir,
    download,
):
    """Run the whole chain with quick defaults (about five minutes for digits on 2 cores):
    experts and MTT distillation, an Optuna search on the proxy, then a rank report that puts
    the MTT proxy beside a random real subset of the same size and zero-cost scores."""
    from nas_proxy.pipeline import run_pipeline
    from nas_proxy.rank.baselines import parse_zero_cost
    from nas_proxy.rank.report import headline_text

    result = run_pipeline(
        out,
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        space=space,
        ipc=ipc,
        iterations=iterations,
        num_experts=num_experts,
        syn_steps=syn_steps,
        expert_epochs=expert_epochs,
        max_start_epoch=max_start_epoch,
        trials=trials,
        pruner=pruner,
        search_epochs=search_epochs,
        sample=sample,
        top_k=top_k,
        rank_epochs=rank_epochs,
        rank_lr=rank_lr,
        ceiling_seeds=ceiling_seeds,
        short_epochs=short_epochs,
        zero_cost=parse_zero_cost(zero_cost),
        workers=workers,
        threads=threads or None,
        seed=seed,
        device=device,
        log=info,
    )
    emit(
        result,
        as_json,
        f"{headline_text(result['rank'])}\n"
        f"pipeline finished in {result['wall_s']:.0f} s; "
        f"the report is {result['report']}; every stage: {result['index']}",
    )
    if as_json:
        info(f"the report is {result['report']}; every stage: {result['index']}")
