"""Scoring candidates, cached on disk: full-data ground truth, proxy training, zero-cost scores.

Every way of scoring a candidate is a :class:`Scorer`. One run of a scorer on one (spec, seed) is
a :class:`Job`; its result is a JSON record stored under a key that hashes everything that
decides it (canonical spec, scorer settings such as the training recipe or the proxy's tensor
checksum, dataset checksum, seed). So:

* a re-run, or a second report over overlapping candidates, reuses finished records;
* a killed run resumes: each record is written (atomically) the moment its job finishes;
* changing anything that matters (recipe, data, proxy) misses the cache instead of mixing results.

Ground truth is full-data training through :func:`nas_proxy.train.fit` (the one training loop),
scored on the real validation split (test accuracy is recorded beside it, never used to rank).
"""

from __future__ import annotations

import datetime as _dt
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nas_proxy.errors import UserError
from nas_proxy.io import stable_hash, write_json
from nas_proxy.runtime import (
    cpu_info,
    init_worker_process,
    progress,
    versions,
    worker_threads,
)
from nas_proxy.train import TrainConfig, TrainingDiverged

CACHE_VERSION = 1
KINDS = ("full", "proxy", "zero-cost")
# Proxies train with seeds offset from the ground-truth seeds: a proxy run that started from the
# very same initial weights as a ground-truth run would share its luck and look more faithful.
PROXY_SEED_OFFSET = 1000


@dataclass
class DataRef:
    """How a worker process finds the dataset (each process loads and caches it once).

    ``train_limit`` keeps a seeded random ``N`` of the training split (val and test unchanged):
    for smoke runs only, since the ground truth is then no longer full-data training. It enters
    the checksum, so such runs never mix with real ones in the cache.
    """

    name: str
    data_dir: str | None = None
    download: bool = False
    train_limit: int | None = None

    def load(self):
        from dataclasses import replace as copy_with

        from nas_proxy.data import load_dataset

        data = load_dataset(self.name, data_dir=self.data_dir, download=self.download)
        if not self.train_limit or self.train_limit >= len(data.train_y):
            return data
        keep = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
        keep = keep[: self.train_limit]
        return copy_with(
            data,
            train_x=data.train_x[keep],
            train_y=data.train_y[keep],
            checksum=f"{data.checksum}:train{self.train_limit}",
        )


@dataclass
class Scorer:
    """One way of scoring candidates.

    ``kind``: ``full`` (training on the full training split with ``settings["recipe"]``),
    ``proxy`` (training on the proxy in ``proxy_dir`` with its recipe and
    ``settings["overrides"]``) or ``zero-cost`` (``settings["metric"]`` at initialisation).
    ``settings`` holds everything besides spec, seed and data that decides a score, and enters
    the cache key; ``name`` is only for display. ``amortized_s`` is a one-off cost shared by all
    candidates (building the proxy), ``seeds`` the seeds each candidate is scored with.
    """

    kind: str
    name: str
    settings: dict[str, Any]
    seeds: tuple[int, ...] = (0,)
    proxy_dir: str | None = None
    amortized_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # display-only facts (method, ipc, ...)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"scorer kind {self.kind!r}: expected one of {KINDS}")


def full_scorer(cfg: TrainConfig, *, name: str = "full", seeds: Iterable[int] = (0,)) -> Scorer:
    """Full-data training with ``cfg`` (its seed is replaced by each of ``seeds``)."""
    recipe = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
    return Scorer("full", name, {"recipe": recipe}, seeds=tuple(seeds))


@dataclass
class Job:
    scorer: Scorer
    spec: str
    seed: int
    data: DataRef
    device: str
    path: str  # cache file of the result


def cache_key(scorer: Scorer, spec: str, seed: int, dataset_checksum: str) -> str:
    return stable_hash(
        {
            "v": CACHE_VERSION,
            "kind": scorer.kind,
            "settings": scorer.settings,
            "spec": spec,
            "seed": seed,
            "dataset": dataset_checksum,
        },
        length=24,
    )


def make_jobs(
    scorers: Iterable[Scorer],
    specs: Iterable[str],
    data: DataRef,
    dataset_checksum: str,
    cache_dir: str | Path,
    device: str,
) -> list[Job]:
    """One job per (scorer, spec, seed), each with its cache file under ``cache_dir/kind/``."""
    cache = Path(cache_dir)
    specs = list(specs)
    return [
        Job(
            s,
            spec,
            seed,
            data,
            device,
            str(cache / s.kind / f"{cache_key(s, spec, seed, dataset_checksum)}.json"),
        )
        for s in scorers
        for spec in specs
        for seed in s.seeds
    ]


def read_cached(job: Job) -> dict[str, Any] | None:
    """The finished record of ``job``, or None (missing or unreadable: it will be redone)."""
    import json

    path = Path(job.path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != path.stem:
        return None
    return record


# --------------------------------------------------------------------------- one job

_PROXIES: dict[str, Any] = {}  # per process: each proxy is loaded once, not once per candidate


def _proxy(path: str):
    from nas_proxy.distill.proxy import load_proxy

    if path not in _PROXIES:
        _PROXIES[path] = load_proxy(path)
    return _PROXIES[path]


def _score(val_accuracy: float | None, val_loss: float | None) -> float | None:
    # Accuracy when there is one; regression tasks rank by (negated) loss instead.
    if val_accuracy is not None:
        return float(val_accuracy)
    return None if val_loss is None else -float(val_loss)


def _run(job: Job) -> dict[str, Any]:
    """Compute one job's record (no caching here)."""
    from nas_proxy.runtime import resolve_device

    device = resolve_device(job.device)  # a process boundary: the job carries the name
    data = job.data.load()
    s = job.scorer
    if s.kind == "zero-cost":
        from nas_proxy.rank.baselines import zero_cost_score

        batch = int(s.settings.get("batch", 64))
        g = torch.Generator().manual_seed(job.seed)
        idx = torch.randperm(len(data.train_y), generator=g)[:batch]
        out = zero_cost_score(
            s.settings["metric"],
            job.spec,
            data.train_x[idx],
            data.train_y[idx],
            num_classes=data.num_classes,
            seed=job.seed,
            device=device,
        )
        return {"score": out["score"], "wall_s": out["wall_s"]}
    if s.kind == "full":
        from nas_proxy.train import fit

        cfg = TrainConfig(**s.settings["recipe"], seed=job.seed)
        _, res = fit(
            job.spec,
            data.train_x,
            data.train_y,
            cfg,
            num_classes=data.num_classes,
            device=device,
            val=(data.val_x, data.val_y),
            test=(data.test_x, data.test_y),
            desc=f"{s.name} {job.spec}",
        )
        lr_scale, wall_s = None, res.wall_s
    else:
        res, lr_scale, wall_s = _train_on_proxy_tuned(job, data, device)
    return {
        "score": _score(res.val_accuracy, res.val_loss),
        "wall_s": wall_s,
        "lr_scale": lr_scale,
        "val_accuracy": res.val_accuracy,
        "val_loss": res.val_loss,
        "test_accuracy": res.test_accuracy,
        "params": res.params,
        "flops": res.flops,
        "epochs": res.epochs,
        "steps": res.steps,
        # Per-epoch scores of full-data runs: any shorter ground truth can be read from them.
        "history": res.history if s.kind == "full" else None,
    }


def _train_on_proxy_tuned(job: Job, data: Any, device: torch.device) -> tuple[Any, float, float]:
    """Train ``job.spec`` on the proxy once per learning-rate scale (``overrides["lr_scales"]``,
    multiples of the proxy's own lr; just the proxy's lr when absent) and keep the best.

    One lr learned for every architecture (MTT's) suits some families and starves others; a
    small range test per candidate gives each its own, at the price of one training per scale,
    all of which are billed (returns the best result, its scale and the summed seconds).
    """
    from nas_proxy.distill.proxy import train_on_proxy

    s = job.scorer
    proxy = _proxy(s.proxy_dir)
    overrides = dict(s.settings.get("overrides", {}))
    scales = [float(x) for x in overrides.pop("lr_scales", None) or [1.0]]
    base_lr = proxy.train_config(**overrides).lr
    best, best_score, best_scale, wall_s = None, -math.inf, scales[0], 0.0
    for scale in scales:
        lr = {"lr": base_lr * scale} if len(scales) > 1 else {}
        start = time.perf_counter()
        try:
            _, res = train_on_proxy(
                proxy,
                data,
                job.spec,
                seed=job.seed,
                device=device,
                score_split="val",
                desc=f"{s.name} {job.spec}" + (f" lr×{scale:g}" if lr else ""),
                **{**overrides, **lr},
            )
        except TrainingDiverged:
            if len(scales) == 1:
                raise
            wall_s += time.perf_counter() - start  # a diverged try was paid for too
            continue  # too high an lr for this candidate: the other scales decide
        wall_s += res.wall_s
        score = _score(res.val_accuracy, res.val_loss)
        if best is None or (score is not None and score > best_score):
            best, best_scale = res, scale
            best_score = -math.inf if score is None else score
    if best is None:
        raise TrainingDiverged(f"every lr scale diverged ({', '.join(map(str, scales))})")
    return best, best_scale, wall_s


def run_job(job: Job) -> dict[str, Any]:
    """Run one job and store its record atomically (also used inside worker processes).

    A diverged training is a result (the candidate is bad under that recipe) and is cached with
    ``score: None``; other failures propagate.
    """
    try:
        out = _run(job)
        error = None
    except TrainingDiverged as e:
        out, error = {"score": None, "wall_s": None}, f"diverged: {e}"
    record = {
        "key": Path(job.path).stem,
        "kind": job.scorer.kind,
        "scorer": job.scorer.name,
        "scorer_info": job.scorer.extra,
        "spec": job.spec,
        "seed": job.seed,
        "settings": job.scorer.settings,
        "dataset": job.data.name,
        "error": error,
        "device": job.device,
        "cpu": cpu_info(),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **out,
    }
    write_json(job.path, record)
    return record


# --------------------------------------------------------------------------- many jobs


def warm_up() -> None:
    """Pay one-off per-process costs before any job is timed.

    The first optimizer a process creates imports ``torch._dynamo`` (seconds on a small CPU),
    which would otherwise be billed to whichever candidate happens to train first.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _init_worker(threads: int) -> None:
    init_worker_process(threads)
    warm_up()


def device_for(device: str, worker: int) -> str:
    """Round-robin the visible GPUs over workers when ``device`` names no index."""
    if device in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{worker % torch.cuda.device_count()}"
    return device


def run_jobs(
    jobs: list[Job],
    *,
    workers: int = 1,
    desc: str = "rank",
    on_record: Callable[[dict], None] | None = None,
) -> tuple[list[dict], dict]:
    """Records of ``jobs`` in order, reusing cached ones; ``(records, {"trained", "reused"})``.

    ``workers`` > 1 runs the missing jobs in that many processes, each with its share of the CPU
    cores (processes rather than threads: training holds the GIL between kernels).
    ``on_record`` is called with each newly finished record (e.g. to export a table as it grows).
    """
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    records: list[dict | None] = [read_cached(j) for j in jobs]
    missing = [i for i, r in enumerate(records) if r is None]
    # Scorers with the same settings (two proxies' matched short runs, say) share a cache file:
    # train it once; every job gets the record under its own scorer's name.
    owner: dict[str, int] = {}
    for i in missing:
        owner.setdefault(jobs[i].path, i)
    todo = list(owner.values())
    counts = {"trained": len(todo), "reused": len(jobs) - len(todo)}
    bar = progress(total=len(jobs), initial=counts["reused"], desc=desc, unit="run")
    try:
        if workers == 1 or len(todo) <= 1:
            if todo:
                warm_up()
            for i in todo:
                bar.set_postfix_str(f"{jobs[i].scorer.name} {jobs[i].spec}"[:60])
                records[i] = run_job(jobs[i])
                if on_record is not None:
                    on_record(records[i])
                bar.update()
        else:
            threads = worker_threads(workers)
            ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
            ) as pool:
                futures = {}
                for n, i in enumerate(todo):
                    job = replace(jobs[i], device=device_for(jobs[i].device, n))
                    futures[pool.submit(run_job, job)] = i
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        records[futures[f]] = f.result()
                        if on_record is not None:
                            on_record(records[futures[f]])
                        bar.update()
    finally:
        bar.close()
    for i in missing:
        records[i] = records[owner[jobs[i].path]]
    return [_labelled(r, j) for r, j in zip(records, jobs, strict=True) if r is not None], counts


def _labelled(record: dict, job: Job) -> dict:
    """``record`` under ``job``'s scorer name (a cache file is shared by equal settings)."""
    if record["scorer"] == job.scorer.name:
        return record
    return {**record, "scorer": job.scorer.name, "scorer_info": job.scorer.extra}


__all__ = [
    "CACHE_VERSION",
    "DataRef",
    "Job",
    "PROXY_SEED_OFFSET",
    "Scorer",
    "cache_key",
    "full_scorer",
    "make_jobs",
    "read_cached",
    "run_job",
    "run_jobs",
]
