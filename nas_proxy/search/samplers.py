"""Samplers and pruners by name; every sampler is reseeded per trial (see :class:`_TrialSeeded`)."""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial

from nas_proxy.errors import UserError

SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsga2")
PRUNERS = ("median", "successive-halving", "hyperband", "none")


def make_sampler(name: str, space: Any, seed: int, *, multi: bool) -> optuna.samplers.BaseSampler:
    """``tpe`` | ``random`` | ``cmaes`` | ``grid`` | ``nsga2``, reseeded before every trial from
    ``seed`` and the trial's number (see :class:`_TrialSeeded`)."""
    samplers = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if name == "tpe":
            # multivariate+group model the joint and conditional structure of a NAS space;
            # constant_liar keeps workers (here or in other processes) from sampling the
            # point a running trial is evaluating.
            return _seeded(
                samplers.TPESampler, seed, multivariate=True, group=True, constant_liar=True
            )
        if name == "random":
            return _seeded(samplers.RandomSampler, seed)
        if name == "nsga2":
            return _seeded(samplers.NSGAIISampler, seed)
        if name == "grid":
            return _seeded(samplers.GridSampler, seed, space.grid())
        if name == "cmaes":
            if multi:
                raise UserError("--sampler cmaes: single objective only (use nsga2 or tpe)")
            if not space.numeric:
                raise UserError(
                    f"--sampler cmaes: {space.path} has no int/float ranges for "
                    "CMA-ES to work on (use tpe)"
                )
            if importlib.util.find_spec("cmaes") is None:
                raise UserError("--sampler cmaes: needs the 'cmaes' package (pip install cmaes)")
            return _seeded(
                samplers.CmaEsSampler,
                seed,
                warn_independent_sampling=False,
                independent_sampler=samplers.TPESampler(seed=seed),
            )
    raise UserError(f"--sampler {name}: expected one of {', '.join(SAMPLERS)}")


class _TrialSeeded:
    """Sampler mixin: before each trial, reseed every random state from (seed, trial number).

    Trial numbers are unique in a study whichever process takes them, so processes on one study
    (on this machine or others) draw different random choices by construction, and a resumed
    search continues with new numbers instead of replaying its seed; a fresh single-process
    search is still reproducible.
    """

    _nas_proxy_seed: int = 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _reseed(self, trial_seed(self._nas_proxy_seed, trial.number), set())
        super().before_trial(study, trial)  # type: ignore[misc]


_SEEDED_CLASSES: dict[type, type] = {}


def _seeded(cls: type, seed: int, *args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
    """``cls(*args, seed=seed, **kwargs)`` with :class:`_TrialSeeded` mixed in (a subclass, so
    Optuna's own ``isinstance`` checks still see the sampler it is)."""
    if cls not in _SEEDED_CLASSES:
        _SEEDED_CLASSES[cls] = type(f"TrialSeeded{cls.__name__}", (_TrialSeeded, cls), {})
    sampler = _SEEDED_CLASSES[cls](*args, seed=seed, **kwargs)
    sampler._nas_proxy_seed = seed
    return sampler


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a search run with ``--seed seed``."""
    return int(hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:8], 16)


def _reseed(sampler: Any, seed: int, seen: set[int]) -> None:
    """Seed the random states of ``sampler`` and of the samplers it delegates to.

    Optuna keeps them in private attributes (``LazyRandomState`` or numpy ``RandomState``),
    whose names differ between samplers, so they are found by type rather than by name.
    """
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for i, value in enumerate(vars(sampler).values()):
        derived = (seed + 7919 * i) % 2**32  # distinct streams for distinct attributes
        if isinstance(value, LazyRandomState):
            value.rng.seed(derived)
        elif isinstance(value, np.random.RandomState):
            value.seed(derived)
        elif isinstance(value, optuna.samplers.BaseSampler):
            _reseed(value, derived + 1, seen)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``median`` | ``successive-halving`` | ``hyperband`` | ``none``; steps are epochs."""
    pruners = optuna.pruners
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "successive-halving":
        return pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "hyperband":
        return pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    if name == "none":
        return pruners.NopPruner()
    raise UserError(f"--pruner {name}: expected one of {', '.join(PRUNERS)}")
