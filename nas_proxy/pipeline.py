"""The whole chain with quick defaults: experts → distill (MTT) → search → rank.

:func:`run_pipeline` is the library function behind ``nas-proxy pipeline``. Each stage is the
same library call its own command makes, writing into a sub-folder of ``out``:

    out/experts/   expert trajectories (trained by the MTT stage when missing)
    out/mtt/       the MTT proxy                 out/random/  a random real subset, same size
    out/search/    the Optuna study (study.db) and trials.csv
    out/rank/      the rank report (MTT proxy, random subset and zero-cost scores side by side)
    out/pipeline.json   every stage's JSON, for notebooks and scripts
    out/index.html      links every stage's files and shows its images (:func:`write_index`)

Every stage resumes or reuses what exists, so re-running the command is cheap. The defaults
keep the digits run within about five minutes on two CPU cores; every budget is an argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_proxy.recipe import FULL_DATA

if TYPE_CHECKING:
    import torch

PIPELINE_JSON = "pipeline.json"
INDEX_HTML = "index.html"  # links every stage's files
DEFAULT_SPACE = "convnet"  # a shipped space (nas_proxy/search_spaces/), found when installed

# Quick budgets (digits on 2 CPU cores). None leaves the stage's own default for the dataset.
QUICK: dict[str, Any] = {
    "ipc": 10,
    "iterations": 200,
    "num_experts": 4,
    "syn_steps": None,
    "expert_epochs": None,
    "max_start_epoch": None,
    "trials": 20,
    "search_epochs": 100,
    "sample": 12,
    "top_k": 3,
    "rank_epochs": 10,
    "ceiling_seeds": 2,
}


def run_pipeline(
    out: str | Path,
    *,
    dataset: str = "digits",
    data_dir: str | None = None,
    download: bool = False,
    space: str | Path | None = None,
    ipc: int = QUICK["ipc"],
    iterations: int = QUICK["iterations"],
    num_experts: int = QUICK["num_experts"],
    syn_steps: int | None = QUICK["syn_steps"],
    expert_epochs: int | None = QUICK["expert_epochs"],
    max_start_epoch: int | None = QUICK["max_start_epoch"],
    trials: int = QUICK["trials"],
    pruner: str = "none",
    search_epochs: int | None = QUICK["search_epochs"],
    sample: int = QUICK["sample"],
    top_k: int = QUICK["top_k"],
    rank_epochs: int = QUICK["rank_epochs"],
    rank_lr: float = FULL_DATA.lr,
    rank_batch_size: int = FULL_DATA.batch_size,
    ceiling_seeds: int = QUICK["ceiling_seeds"],
    short_epochs: int | None = None,
    zero_cost: Sequence[str] | None = None,
    workers: int = 1,
    threads: int | None = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    log=None,
) -> dict[str, Any]:
    """Run every stage; returns ``{"experts", "distill", "search", "rank", "out", "report",
    "wall_s"}`` (also written to ``out/pipeline.json``). ``zero_cost``: training-free scores to
    add (None: all). ``pruner``: the search's; ``none`` by default because pruned trials have
    no final proxy score, so pruning would leave only the survivors to rank (a narrower range
    that distorts ρ). ``threads``: torch CPU threads while the pipeline runs (None: leave as is);
    digits-sized models gain nothing from a second thread, and on a busy machine its spinning
    slows them down many times over. ``log(message)`` reports progress."""
    # Imported here (and in _stages): the CLI imports this module for its defaults and must
    # stay light.
    from nas_proxy.io import write_json
    from nas_proxy.runtime import resolve_device

    device = resolve_device(device)  # once, before any stage: every stage gets this device
    say = log or (lambda _m: None)
    start = time.perf_counter()
    with _torch_threads(threads):
        stages = _stages(
            Path(out),
            dataset=dataset,
            data_dir=data_dir,
            download=download,
            space=space,
            distill_opts={
                "iterations": iterations,
                "num_experts": num_experts,
                "syn_steps": syn_steps,
                "expert_epochs": expert_epochs,
                "max_start_epoch": max_start_epoch,
                "workers": workers,
            },
            ipc=ipc,
            search_opts={
                "trials": trials,
                "pruner": pruner,
                "epochs": search_epochs,
                "workers": workers,
            },
            rank_opts={
                "recipe": {"epochs": rank_epochs, "lr": rank_lr, "batch_size": rank_batch_size},
                "sample": sample,
                "top_k": top_k,
                "ceiling_seeds": ceiling_seeds,
                "short_epochs": short_epochs,
                # Short real training at the proxy's compute: the rival the proxy must beat.
                "short_match": True,
                "zero_cost": zero_cost,
                "workers": workers,
            },
            seed=seed,
            device=device,
            say=say,
        )
    result = {
        **stages,
        "out": str(out),
        "report": stages["rank"]["report"],
        "index": str(Path(out) / INDEX_HTML),
        "wall_s": round(time.perf_counter() - start, 3),
    }
    write_json(Path(out) / PIPELINE_JSON, result)
    write_index(Path(out), result)
    return result


def write_index(out: Path, result: dict[str, Any]) -> Path:
    """``out/index.html``: one section per stage, linking what it wrote (relative links, so the
    folder can be moved or served as it is); a file that is missing is left out."""
    import html
    import os
    from urllib.parse import quote

    from nas_proxy.io import write_html_page

    def rel(path: str | Path) -> str | None:
        return Path(os.path.relpath(path, out)).as_posix() if Path(path).exists() else None

    def href(r: str) -> str:
        return html.escape(quote(r))

    def links(paths: Sequence[str | Path]) -> str:
        items = [
            f'<li><a href="{href(r)}">{html.escape(r)}</a></li>' for p in paths if (r := rel(p))
        ]
        return f"<ul>{''.join(items)}</ul>" if items else "<p>Nothing written.</p>"

    def images(paths: Sequence[str | Path]) -> str:
        return "".join(
            f'<img alt="{html.escape(Path(p).stem)}" src="{href(r)}">'
            for p in paths
            if (r := rel(p))
        )

    search, rank = result["search"], result["rank"]
    sections = {
        "Experts (trajectories trained on the real data)": links(
            sorted((out / "experts").glob("*/manifest.json"))
        ),
        "Proxies (the MTT proxy and a random real subset of the same size)": links(
            [out / name / f for name in ("mtt", "random") for f in ("proxy.json", "grid.png")]
        )
        + images([out / "mtt" / "grid.png", out / "random" / "grid.png"]),
        "Search": links([search["report"], search["trials_csv"]])
        + images(list(search.get("plots", {}).values())),
        "Rank (proxies against full-data training)": links(
            [rank["report"], Path(rank["report"]).with_suffix(".md")]
        ),
        "Every stage's JSON": links([out / PIPELINE_JSON]),
    }
    body = "".join(f"<h2>{html.escape(k)}</h2>{v}" for k, v in sections.items())
    return write_html_page(out / INDEX_HTML, "nas-proxy pipeline", body)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stages(
    out: Path,
    *,
    dataset: str,
    data_dir: str | None,
    download: bool,
    space: str | Path | None,
    ipc: int,
    distill_opts: dict[str, Any],
    search_opts: dict[str, Any],
    rank_opts: dict[str, Any],
    seed: int,
    device: torch.device,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The four stages; each one's JSON under its name."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill
    from nas_proxy.rank.api import rank
    from nas_proxy.rank.baselines import ZERO_COST
    from nas_proxy.search import run_search
    from nas_proxy.search.space import resolve_space

    space = resolve_space(space or DEFAULT_SPACE)
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    stages: dict[str, Any] = {}

    say(f"[1-2/4] experts and MTT distillation ({ipc} images per class) → {out / 'mtt'}")
    opts = {**distill_opts, "experts": str(out / "experts")}
    mtt = distill("mtt", data, ipc, out / "mtt", opts, seed=seed, device=device)
    experts = mtt.get("experts") or []
    stages["experts"] = experts[0] if len(experts) == 1 else {"caches": experts}
    stages["distill"] = {k: v for k, v in mtt.items() if k != "experts"}
    # The comparison every user needs: a random real subset of the same size.
    random = distill("random", data, ipc, out / "random", {}, seed=seed, device=device)
    stages["distill"]["baselines"] = {"random": random}

    say(
        f"[3/4] search: {search_opts['trials']} trials of {space.name} on the MTT proxy → "
        f"{out / 'search'}"
    )
    stages["search"] = run_search(
        out / "mtt",
        space,
        out / "search",
        seed=seed,
        device=device,
        data_dir=data_dir,
        download=download,
        **search_opts,
    )

    say(f"[4/4] rank: {rank_opts['sample']} candidates retrained on the full data → {out / 'rank'}")
    zero_cost = rank_opts.pop("zero_cost")
    stages["rank"] = rank(
        out=out / "rank",
        study=stages["search"]["study"],
        storage=stages["search"]["storage"],
        study_proxy=str(out / "mtt"),
        dataset=data.name,
        data_dir=data_dir,
        download=download,
        proxies=[str(out / "random")],
        seed=seed,
        device=device,
        zero_cost=list(ZERO_COST if zero_cost is None else zero_cost),
        # Random-subset candidates train exactly as long as the search trained MTT's.
        proxy_overrides={"epochs": search_opts["epochs"]},
        proxy_build_s=_build_costs(out, {"mtt": mtt, "random": random}),
        **rank_opts,
    )
    return stages


def _build_costs(out: Path, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Seconds each proxy took to build, as first measured.

    Until every method records its cost in proxy.json, the cost comes from the distill call;
    a re-run that merely reuses a finished proxy would report seconds instead of minutes, so
    the first measurement is kept in ``<proxy>/build_cost.json`` (tied to the tensors' hash).
    """
    from nas_proxy.io import read_json, write_json

    costs = {}
    for name, result in results.items():
        folder = out / name
        sha = read_json(folder / "proxy.json").get("tensors_sha256")
        record = folder / "build_cost.json"
        known = read_json(record) if record.exists() else {}
        if known.get("tensors_sha256") != sha:
            known = {"tensors_sha256": sha, "wall_s": float(result["wall_s"])}
            write_json(record, known)
        costs[str(folder)] = float(known["wall_s"])
    return costs
