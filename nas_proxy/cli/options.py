"""Option groups that several commands share, declared once: the full-data training recipe
(train, rank) and how candidates are sampled and scored against the ground truth (rank,
pipeline). Choices and defaults come from the library (nas_proxy/recipe.py), which imports
no torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from nas_proxy.recipe import FULL_DATA, OPTIMIZERS, RECIPE_FIELDS, SCHEDULES

# nas_proxy.rank.baselines.ZERO_COST, spelled out so that loading the CLI does not import torch
# (tests/test_rank.py checks they agree).
ZERO_COST_DEFAULT = "synflow,gradnorm,naswot,params,flops"


def recipe_options(f: Callable) -> Callable:
    """The training recipe's flags (``RECIPE_FIELDS``), defaults :data:`recipe.FULL_DATA`."""
    options = [
        click.option(
            "--epochs", type=click.IntRange(min=1), default=FULL_DATA.epochs, show_default=True
        ),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            default=FULL_DATA.lr,
            show_default=True,
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=FULL_DATA.batch_size,
            show_default=True,
        ),
        click.option(
            "--momentum", type=click.FloatRange(0, 1), default=FULL_DATA.momentum, show_default=True
        ),
        click.option(
            "--weight-decay",
            type=click.FloatRange(min=0),
            default=FULL_DATA.weight_decay,
            show_default=True,
        ),
        click.option(
            "--optimizer",
            type=click.Choice(OPTIMIZERS),
            default=FULL_DATA.optimizer,
            show_default=True,
        ),
        click.option(
            "--schedule",
            type=click.Choice(SCHEDULES),
            default=FULL_DATA.schedule,
            show_default=True,
        ),
        click.option(
            "--augment",
            default="none" if FULL_DATA.augment is None else FULL_DATA.augment,
            show_default=True,
            help="DSA strategy (e.g. color_crop_cutout_scale_rotate), 'dsa' for the "
            "dataset's default, or none.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def recipe_values(values: dict) -> dict:
    """The recipe flags' values out of a command's keyword arguments."""
    return {k: values[k] for k in RECIPE_FIELDS}


def rank_options(*, sample: int, top_k: int, ceiling_seeds: int) -> Callable[[Callable], Callable]:
    """Which candidates are retrained on the full data and what they are compared with; the
    defaults differ between ``rank`` and ``pipeline``'s quick budget."""

    def decorate(f: Callable) -> Callable:
        options = [
            click.option(
                "--sample",
                type=click.IntRange(min=1),
                default=sample,
                show_default=True,
                help="Candidates retrained on the full data (from a study: the top-k plus a "
                "stratified sample).",
            ),
            click.option(
                "--top-k",
                type=click.IntRange(min=1),
                default=top_k,
                show_default=True,
                help="k of the top-k overlap and of the study's always-included best trials.",
            ),
            click.option(
                "--ceiling-seeds",
                type=click.IntRange(min=1),
                default=ceiling_seeds,
                show_default=True,
                help="Full-data seeds per candidate; >= 2 gives the noise ceiling.",
            ),
            click.option(
                "--short-epochs",
                type=click.IntRange(min=1),
                default=None,
                help="Also rank by short full-data training of this many epochs.",
            ),
            click.option(
                "--zero-cost",
                default=ZERO_COST_DEFAULT,
                show_default=True,
                help="Training-free scores to add (comma-separated, or none).",
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


class LibraryChoice(click.Choice):
    """``click.Choice`` over a name list of the library (``module.ATTRIBUTE``), imported on
    first use: the list has one home, and loading the CLI still imports no heavy module (only
    the command's ``--help`` or a parsed value imports it)."""

    def __init__(self, module: str, attribute: str):  # no super().__init__: choices is lazy
        self.source = (module, attribute)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        module, attribute = self.source
        return tuple(getattr(importlib.import_module(module), attribute))


PRUNERS = LibraryChoice("nas_proxy.search.samplers", "PRUNERS")
