"""Training recipes: :class:`TrainConfig` and the defaults each kind of training starts from.

Only the standard library is imported, so the CLI builds its recipe flags (choices and
defaults) from here without loading torch. Each default has one home:

- :class:`TrainConfig`'s field defaults (its dict enters cache keys: fields and their values
  for existing settings never change);
- :data:`FULL_DATA`: how a candidate trains on the full data unless told otherwise (``nas-proxy
  train``, rank's ground truth, the pipeline);
- :data:`PROXY_RECIPE`: how candidates train on a proxy unless it records otherwise;
- :class:`ExpertSettings`' field defaults: how MTT's experts train (the published recipe).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
# The recipe a user sets with flags (``--epochs``, ``--lr``, ...) and a proxy records.
RECIPE_FIELDS = (
    "epochs",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "batch_size",
    "schedule",
    "augment",
)


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the data and the architecture."""

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "cosine"  # cosine | step (x0.1 at half, the MTT evaluation recipe) | none
    augment: str | None = None  # DSA strategy string, or None
    label_smoothing: float = 0.0
    recalibrate_norm: bool = True  # re-estimate BatchNorm statistics on real data before scoring
    recalibrate_batches: int = 8
    eval_every: int = 1  # evaluate on val every N epochs (0: only at the end)
    eval_batch_size: int = 1024
    # Stop after this many optimizer steps (the schedule then spans them, not ``epochs``): a
    # budget in steps lets short real training match another proxy's cost exactly.
    max_steps: int | None = None
    # Also score the test split at every evaluation, so one long run holds every shorter ground
    # truth (benchmarks); test scores are recorded, never used to rank.
    track_test: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        from nas_proxy.errors import UserError

        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"optimizer '{self.optimizer}': expected one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule '{self.schedule}': expected one of {', '.join(SCHEDULES)}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise UserError(
                f"need epochs >= 0, batch size >= 1 and lr > 0 (got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, lr={self.lr})"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps {self.max_steps}: need at least 1")

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.batch_size)

    def total_steps(self, n: int) -> int:
        """Optimizer steps of the run over ``n`` samples."""
        return self.max_steps or self.epochs * self.steps_per_epoch(n)

    def samples_seen(self, n: int) -> int:
        """Sample-gradients of the run over ``n`` samples: its training compute in units of one
        sample's forward and backward pass (what matched-cost short training matches)."""
        per_epoch = self.steps_per_epoch(n)
        steps = self.total_steps(n)
        return (steps // per_epoch) * n + (steps % per_epoch) * self.batch_size

    def epochs_for(self, n: int) -> int:
        """Epochs the run takes over ``n`` samples (``max_steps`` may end it inside one)."""
        if self.max_steps is None:
            return self.epochs
        return math.ceil(self.max_steps / self.steps_per_epoch(n))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class ExpertSettings:
    """How experts train. Defaults are the published MTT recipe: plain SGD (no momentum, no
    weight decay), lr 0.01, batch 256, DSA, constant learning rate."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augment: str | None = "dsa"  # 'dsa': the dataset's default strategy; a strategy; or None
    zca: bool = False
    optimizer: str = "sgd"
    seed: int = 0

    def strategy(self, dataset_name: str) -> str | None:
        """The DSA strategy actually used (resolved, canonical), or None."""
        from nas_proxy.augment import parse_strategy, resolve_strategy

        ops = parse_strategy(resolve_strategy(self.augment, dataset_name))
        return "_".join(ops) if ops else None

    def train_config(self, dataset_name: str, expert: int, epochs: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule="none",
            augment=self.strategy(dataset_name),
            recalibrate_norm=False,
            eval_every=1,
            seed=expert_seed(self.seed, expert),
        )


def expert_seed(seed: int, expert: int) -> int:
    """Seed of expert ``expert``: a hash, so neighbouring experts' RNG streams do not overlap
    (train.py derives the augmentation seed as seed + 1)."""
    return int(hashlib.sha256(f"{seed}:{expert}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def train_config(recipe: Mapping[str, Any], dataset_name: str, **fields: Any) -> TrainConfig:
    """A TrainConfig from recipe values as a user gives them (flags, a config file, a rank
    recipe): TrainConfig fields only, ``augment`` spelled as
    :func:`nas_proxy.augment.resolve_strategy` reads it ('dsa', 'none', a strategy); ``fields``
    (``seed``, ``eval_every``, ...) win."""
    from nas_proxy.augment import resolve_strategy

    values = {k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__}
    values["augment"] = resolve_strategy(values.get("augment"), dataset_name)
    return TrainConfig(**{**values, **fields})


def recipe_of(cfg: TrainConfig) -> dict[str, Any]:
    """The :data:`RECIPE_FIELDS` of ``cfg``."""
    return {k: getattr(cfg, k) for k in RECIPE_FIELDS}


FULL_DATA = TrainConfig(lr=0.05, batch_size=128)
# The evaluation recipe of the distillation papers (x0.1 at half time), 300 epochs on CPU.
PROXY_RECIPE: dict[str, Any] = recipe_of(TrainConfig(epochs=300, schedule="step"))
