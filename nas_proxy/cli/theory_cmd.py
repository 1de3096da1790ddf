"""``nas-proxy theory``: low-dimensional structure check on a multi-index task."""

from __future__ import annotations

import click

from nas_proxy.cli.common import common_options, emit, info, main
from nas_proxy.cli.options import LibraryChoice
from nas_proxy.distill.options import INITS
from nas_proxy.errors import UserError

LINKS = LibraryChoice("nas_proxy.data.multi_index", "LINKS")


def _int_list(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(
            f"--scaling {text}: expected comma-separated integers, e.g. 50,100,200,400"
        ) from None
    if any(v < 1 for v in values):
        raise UserError(f"--scaling {text}: every d must be positive")
    return values


_POS = click.FloatRange(min=0, min_open=True)


@main.command("theory")
@click.option(
    "--d", "d", type=click.IntRange(min=1), default=100, show_default=True, help="Input dimension."
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Number of relevant directions (rows of W).",
)
@click.option(
    "--method",
    type=LibraryChoice("nas_proxy.theory.distill_tasks", "METHODS"),
    default="perf",
    show_default=True,
    help="Performance matching, gradient matching or MTT.",
)
@click.option(
    "--n-syn",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Synthetic samples (a multiple of the classes).",
)
@click.option(
    "--n-train",
    type=click.IntRange(min=2),
    default=20000,
    show_default=True,
    help="Real samples drawn (10% of them held out as validation).",
)
@click.option(
    "--link",
    type=LINKS,
    default="sumtanh",
    show_default=True,
    help="Link function of the task.",
)
@click.option(
    "--task",
    type=LibraryChoice("nas_proxy.data.multi_index", "TASKS"),
    default="classification",
    show_default=True,
)
@click.option(
    "--hidden",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Width of the two-layer network.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=0),
    default=None,
    help="Distillation iterations [default: the method's, 300].",
)
@click.option(
    "--scaling",
    default=None,
    help="Also measure at these d (comma-separated, e.g. 50,100,200,400).",
)
@click.option(
    "--transfer-link",
    type=LINKS,
    default=None,
    help="Link of the transfer task [default: prod for sumtanh].",
)
@click.option(
    "--n-transfer",
    type=click.IntRange(min=1),
    default=None,
    help="Real samples of the transfer task [default: 50 x n-syn].",
)
@click.option(
    "--eval-steps",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="SGD steps of the one evaluation recipe (every training set).",
)
@click.option(
    "--eval-seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Network seeds (and random subsets) averaged per error.",
)
@click.option(
    "--syn-steps",
    type=click.IntRange(min=1),
    default=None,
    help="perf / mtt: unrolled SGD steps on the synthetic set.",
)
@click.option("--lr-img", type=_POS, default=None, help="Step size of the synthetic inputs.")
@click.option(
    "--lr-teacher", type=_POS, default=None, help="perf / mtt: (initial) inner step size."
)
@click.option(
    "--batch-real",
    type=click.IntRange(min=1),
    default=None,
    help="perf / gm: real samples per iteration (gm: per class).",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=None,
    help="perf / gm: initial synthetic samples.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Proxies, result.json and the PNG plots go here [default: runs/theory/METHOD, so "
    "runs of different methods never share a folder].",
)
@common_options(data=False)
def theory_command(
    d,
    k,
    method,
    n_syn,
    n_train,
    link,
    task,
    hidden,
    iterations,
    scaling,
    transfer_link,
    n_transfer,
    eval_steps,
    eval_seeds,
    syn_steps,
    lr_img,
    lr_teacher,
    batch_real,
    init,
    out,
    as_json,
    seed,
    device,
):
    """Distil a multi-index task (labels depend on x only through W x, W of shape k x d) and
    measure whether the synthetic set encodes span(W): sample efficiency against random real
    sets, the share of its variance in span(W) against k/d, principal angles, first-layer
    weight alignment, transfer to another link on the same W, and (with --scaling) how all of
    it changes with d."""
    from nas_proxy.theory.experiment import TheoryConfig, run_theory

    opts = {
        "syn_steps": syn_steps,
        "lr_img": lr_img,
        "lr_teacher": lr_teacher,
        "batch_real": batch_real,
        "init": init,
    }
    cfg = TheoryConfig(
        d=d,
        k=k,
        method=method,
        n_syn=n_syn,
        n_train=n_train,
        link=link,
        task=task,
        hidden=hidden,
        iterations=iterations,
        scaling=_int_list(scaling),
        transfer_link=transfer_link,
        n_transfer=n_transfer,
        eval_steps=eval_steps,
        eval_seeds=eval_seeds,
        seed=seed,
        device=device,
        out=out,
        distill_opts={k_: v for k_, v in opts.items() if v is not None},
    )
    result = run_theory(cfg, log=info)
    random_10x = result["test_error_random"].get(10 * n_syn)
    human = (
        f"{method}, d={d}, k={k}, {link}: distilled {n_syn} -> test error "
        f"{result['test_error_distilled']:.3f}"
        + (f" (random {10 * n_syn}: {random_10x:.3f})" if random_10x is not None else "")
        + f"; variance in span(W) {result['subspace_fraction']:.3f} vs k/d "
        f"{result['isotropic_fraction']:.3f}; transfer {result['transfer']['pretrained']:.3f}"
        f" vs scratch {result['transfer']['scratch']:.3f}; plots in {result['out']}"
    )
    emit(result, as_json, human)
