"""The search objective: one trial = one architecture trained on the proxy, scored on real val.

A trial suggests a spec from the search space, measures its cost (params, FLOPs), rejects it
before training when it breaks a constraint, reuses the score of an identical spec evaluated
earlier, and otherwise trains it with :func:`nas_proxy.distill.proxy.train_on_proxy` (the
proxy's recipe, BatchNorm recalibration on real data, scored on the real validation split).

User attributes of every trial (docs/architecture.md):
``arch``, ``params``, ``flops``,
``proxy_score``, ``wall_s``; and where they apply ``latency_ms``, ``reused_from``,
``prune_reason``, ``fail_reason``, ``worker``.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nas_proxy.data import Dataset
from nas_proxy.distill.proxy import Proxy, train_on_proxy
from nas_proxy.errors import UserError
from nas_proxy.search.liveness import POLL_S, owner_died_here
from nas_proxy.search.space import SearchSpace
from nas_proxy.train import TrainingDiverged

# Objective name -> Optuna direction. accuracy is the proxy score (real validation accuracy).
OBJECTIVES = {
    "accuracy": "maximize",
    "flops": "minimize",
    "params": "minimize",
    "latency": "minimize",
}
# What fails one trial (recorded FAIL with its reason) without stopping the study. OOM is a
# RuntimeError subclass; TrainingDiverged (NaN loss) too; UserError covers specs that do not build.
CATCH: tuple[type[Exception], ...] = (
    RuntimeError,
    UserError,
    ValueError,
    MemoryError,
    TrainingDiverged,
)
# How the prune reason of a trial pruned on its scores starts (not a constraint or a copy).
PRUNED_AT = "pruned at epoch"
LATENCY_RUNS = 10  # timed forward passes (after 3 warm-up passes) for the latency objective


def parse_objectives(objectives: str | Sequence[str]) -> tuple[str, ...]:
    """``"accuracy,flops"`` or a list -> validated names, in order, no repeats."""
    names = objectives.split(",") if isinstance(objectives, str) else list(objectives)
    names = [n.strip().lower() for n in names if n.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or not names:
        raise UserError(
            f"--objectives {','.join(names) or objectives!r}: expected a comma-"
            f"separated list of {', '.join(OBJECTIVES)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--objectives {','.join(names)}: an objective is repeated")
    return tuple(names)


def first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Objective:
    """Callable for ``study.optimize``; holds the proxy and dataset (loaded once per worker)."""

    def __init__(
        self,
        space: SearchSpace,
        proxy: Proxy,
        dataset: Dataset,
        *,
        objectives: Sequence[str] = ("accuracy",),
        seed: int = 0,
        device: torch.device,
        epochs: int | None = None,
        lr: float | None = None,
        max_params: int | None = None,
        max_flops: int | None = None,
        worker: str = "",
        report: bool = True,
    ) -> None:
        self.space = space
        self.proxy = proxy
        self.dataset = dataset
        self.objectives = tuple(objectives)
        self.seed = seed  # the training seed: the same for every trial, so equal specs tie
        self.device = device
        # Scoring real validation data costs more than an epoch on the proxy: evaluate during
        # training (about ten times, the proxy's default) only when a pruner reads the reports;
        # otherwise once, at the end.
        self.overrides = {"epochs": epochs, "lr": lr, "eval_every": None if report else 0}
        self.max_params = max_params
        self.max_flops = max_flops
        self.worker = worker
        self.in_shape = tuple(proxy.images.shape[1:])
        # Called once the trial exists (the study's worker loop releases its lock there).
        self.on_start: Callable[[], None] | None = None

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        # Record the owner before releasing the creation lock: a trial seen without an owner
        # while the lock is held was left by a worker that died in between.
        if self.worker:
            trial.set_user_attr("worker", self.worker)
        if self.on_start is not None:
            self.on_start()
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except CATCH as e:
            trial.set_user_attr("fail_reason", first_line(e))
            if isinstance(e, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | list[float]:
        from nas_proxy.models import model_profile

        spec = self.space.suggest(trial)
        trial.set_user_attr("arch", spec)
        profile = model_profile(spec, self.in_shape, self.proxy.num_classes)
        trial.set_user_attr("params", profile["params"])
        trial.set_user_attr("flops", profile["flops"])
        reason = self._violation(profile)
        if reason:
            # Rejected before training; PRUNED (not FAIL) so samplers learn to avoid the region.
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)
        previous = self._evaluated(trial.study, spec, trial.number)
        if previous is None:
            return self._train(trial, spec, profile)
        if previous.state == TrialState.PRUNED:
            reason = f"same spec as trial {previous.number}, which was pruned"
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)
        return self._reuse(trial, previous, profile)

    def _violation(self, profile: dict[str, Any]) -> str | None:
        if self.max_params is not None and profile["params"] > self.max_params:
            return f"constraint: {profile['params']} params > --max-params {self.max_params}"
        if self.max_flops is not None and profile["flops"] > self.max_flops:
            return f"constraint: {profile['flops']} FLOPs > --max-flops {self.max_flops}"
        return None

    @staticmethod
    def _evaluated(study: optuna.Study, spec: str, number: int) -> optuna.trial.FrozenTrial | None:
        """A finished trial of the same spec (same seed and recipe: same outcome), if any.

        COMPLETE trials give their score; a trial pruned on its scores gives its pruning.
        When an earlier trial of the same spec is still running (in this or another process),
        wait for it instead of training the spec twice; only the later trial waits, so two
        trials never wait for each other. Stop waiting when its worker died on this host
        (the worker loop re-queues its trial) or was failed as stale.
        """
        while True:
            running = None
            for t in study.get_trials(deepcopy=False):
                if t.user_attrs.get("arch") != spec or t.number == number:
                    continue
                if t.state == TrialState.COMPLETE and "proxy_score" in t.user_attrs:
                    return t
                if t.state == TrialState.PRUNED and str(
                    t.user_attrs.get("prune_reason", "")
                ).startswith(PRUNED_AT):
                    return t
                if t.state == TrialState.RUNNING and t.number < number:
                    running = running or t
            if running is None or owner_died_here(str(running.user_attrs.get("worker", ""))):
                return None
            with warnings.catch_warnings():  # heartbeats: a trial lost on another machine
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(POLL_S)

    def _reuse(
        self, trial: optuna.Trial, previous: optuna.trial.FrozenTrial, profile: dict[str, Any]
    ) -> float | list[float]:
        original = previous.user_attrs.get("reused_from", previous.number)
        trial.set_user_attr("reused_from", original)
        trial.set_user_attr("proxy_score", previous.user_attrs["proxy_score"])
        trial.set_user_attr("wall_s", 0.0)
        if "latency_ms" in previous.user_attrs:
            trial.set_user_attr("latency_ms", previous.user_attrs["latency_ms"])
        return previous.values if self.multi else previous.value

    def _train(
        self, trial: optuna.Trial, spec: str, profile: dict[str, Any]
    ) -> float | list[float]:
        def on_epoch(epoch: int, model: torch.nn.Module, metrics: dict[str, float]) -> None:
            acc = metrics.get("val_accuracy")
            if self.multi or epoch == 0 or acc is None:
                return  # Optuna cannot prune multi-objective trials
            trial.report(acc, epoch)
            if trial.should_prune():
                reason = f"{PRUNED_AT} {epoch} (val accuracy {acc:.4f})"
                trial.set_user_attr("prune_reason", reason)
                raise optuna.TrialPruned(reason)

        model, result = train_on_proxy(
            self.proxy,
            self.dataset,
            spec,
            seed=self.seed,
            device=self.device,
            on_epoch=on_epoch,
            desc=f"trial {trial.number}",
            **self.overrides,
        )
        if result.val_accuracy is None:
            raise RuntimeError("the proxy's task has no accuracy (regression targets)")
        trial.set_user_attr("proxy_score", result.val_accuracy)
        trial.set_user_attr("wall_s", round(result.wall_s, 4))
        values = {
            "accuracy": result.val_accuracy,
            "params": profile["params"],
            "flops": profile["flops"],
        }
        if "latency" in self.objectives:
            values["latency"] = measure_latency(model, self.in_shape)
            trial.set_user_attr("latency_ms", values["latency"])
        out = [float(values[name]) for name in self.objectives]
        return out if self.multi else out[0]


@torch.no_grad()
def measure_latency(
    model: torch.nn.Module, in_shape: tuple[int, ...], runs: int = LATENCY_RUNS
) -> float:
    """Median milliseconds of one forward pass of a single input on the model's device."""
    param = next(model.parameters())
    x = torch.zeros((1, *in_shape), device=param.device)
    cuda = param.device.type == "cuda"
    model.eval()
    times = []
    for i in range(3 + runs):
        if cuda:
            torch.cuda.synchronize(param.device)
        start = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize(param.device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 4)
