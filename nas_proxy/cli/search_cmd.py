"""``nas-proxy search``: Optuna architecture search on a proxy; re-running resumes."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, main, proxy_option
from nas_proxy.cli.options import PRUNERS, LibraryChoice


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@main.command("search")
@proxy_option(
    "Proxy folder made by `nas-proxy distill`, or real:DATASET[:steps=N] to train each "
    "candidate for N optimizer steps (default 200) on the real training data instead, the "
    "cosine schedule ending inside them (docs/fidelity.md says which ranks better at which "
    "budget)."
)
@click.option(
    "--space",
    "space_path",
    required=True,
    type=click.Path(),
    help="Search-space YAML, or the name of a shipped space (convnet, mlp, timm_small, "
    "mixed); nas_proxy/search_spaces/README.md describes the format.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for study.db (the default storage) and trials.csv. Required unless --dry-run.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Finished trials to reach (COMPLETE + PRUNED + FAIL not re-queued); re-running "
    "resumes, a larger number extends the study. With --dry-run: specs to show.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes on this machine sharing the study: one GPU each (round-robin) or "
    "an equal share of the CPU cores.",
)
@click.option(
    "--devices",
    default=None,
    help="Comma-separated devices for the workers, round-robin (e.g. cuda:0,cuda:1).",
)
@click.option(
    "--storage",
    default=None,
    help="Optuna storage URL: sqlite:///PATH, postgresql://USER@HOST/DB, mysql://..., "
    "or journal:PATH (a journal file). Default: sqlite:///OUT/study.db.",
)
@click.option(
    "--study",
    "study_name",
    default="nas-proxy",
    show_default=True,
    help="Study name in the storage.",
)
@click.option(
    "--objectives",
    default="accuracy",
    show_default=True,
    help="Comma-separated: accuracy (maximised), flops, params, latency (minimised). "
    "Several give a Pareto front (NSGA-II by default); Optuna cannot prune "
    "multi-objective trials, so pruning is off there.",
)
@click.option(
    "--sampler",
    type=LibraryChoice("nas_proxy.search.samplers", "SAMPLERS"),
    default=None,
    help="Default: tpe (one objective), nsga2 (several). cmaes needs "
    "int/float ranges; grid needs every parameter finite.",
)
@click.option(
    "--pruner",
    type=PRUNERS,
    default=None,
    help="Prunes on val accuracy scored about ten times per candidate. Default: median (one "
    "objective), none (several: Optuna cannot prune them). With none, each candidate is "
    "scored once, at the end (cheaper).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Training epochs per candidate (default: the proxy's recipe).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate (default: the proxy's recipe or learned lr).",
)
@click.option(
    "--max-params",
    type=click.IntRange(min=1),
    default=None,
    help="Reject candidates with more parameters, before training.",
)
@click.option(
    "--max-flops",
    type=click.IntRange(min=1),
    default=None,
    help="Reject candidates with more FLOPs per image, before training.",
)
@click.option(
    "--promote",
    multiple=True,
    metavar="NAME:epochs=E,top=T[,budget=S]",
    help="After the proxy search, train the best T (a fraction, or a count) of the stage "
    "below on the real data for E epochs, stopping once the stage spent S seconds; one flag "
    "per stage, lowest first (e.g. --promote short:epochs=1,top=0.2 --promote "
    "full:epochs=15,top=3). The pick is the best at the highest stage reached.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print --trials sampled specs with params and FLOPs; train nothing.",
)
@common_options()
def search_command(
    proxy_dir,
    space_path,
    out,
    trials,
    workers,
    devices,
    storage,
    study_name,
    objectives,
    sampler,
    pruner,
    epochs,
    lr,
    max_params,
    max_flops,
    promote,
    dry_run,
    as_json,
    seed,
    device,
    data_dir,
    download,
):
    """Search architectures from a space file, each trained on the proxy and scored on real
    validation data. Re-running the same command resumes the study; stale trials of killed
    workers are re-queued."""
    from nas_proxy.errors import UserError
    from nas_proxy.search import dry_run as sample_specs
    from nas_proxy.search import run_search
    from nas_proxy.search.space import resolve_space

    space_path = resolve_space(space_path)  # a file path for the workers, whatever the cwd
    if dry_run:
        result = sample_specs(
            proxy_dir, space_path, trials, seed=seed, data_dir=data_dir, download=download
        )
        lines = [
            f"{s['arch']}  params={s['params']:,}  flops={s['flops']:,}" for s in result["samples"]
        ]
        emit(result, as_json, "\n".join(lines))
        return
    if not out:
        raise UserError("--out is required (folder for the study and trials.csv)")
    result = run_search(
        proxy_dir,
        space_path,
        out,
        trials=trials,
        workers=workers,
        storage=storage,
        study_name=study_name,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        device=device,
        devices=_csv(devices),
        epochs=epochs,
        lr=lr,
        max_params=max_params,
        max_flops=max_flops,
        data_dir=data_dir,
        download=download,
        promote=promote,
    )
    best = result["best"]
    human = (
        f"study {result['study']} ({result['storage']}): {result['trials']} trials, "
        f"{result['complete']} complete, {result['pruned']} pruned, {result['failed']} "
        f"failed; best {best['arch']} = {best['score']:.4f}"
        if best
        else f"study {result['study']}: {result['trials']} trials, none complete"
    )
    if "pareto" in result:
        human += f"; Pareto front: {len(result['pareto'])} trials"
    if "promotion" in result:
        human += "\n" + _promotion_lines(result["promotion"])
    emit(
        result,
        as_json,
        human + f"\ntrials: {result['trials_csv']}\nreport: {result['report']}",
    )


def _promotion_lines(promotion: dict) -> str:
    lines = [
        f"  {r['stage']}: {r['trained']} trained, {r['cost_s']:.1f} s" for r in promotion["stages"]
    ]
    pick = promotion["pick"]
    if pick:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in pick["scores"].items())
        lines.insert(0, f"pick: trial {pick['number']} {pick['arch']} ({scores})")
    return "\n".join(lines)
