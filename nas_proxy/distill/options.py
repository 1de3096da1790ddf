"""Each distillation method's options: one frozen dataclass per method, and their flags.

A method's dataclass is the complete list of what it reads, with its defaults (MTT's are
``None``: "from :mod:`nas_proxy.distill.presets`", whose precedence merges the library's, the
dataset's and a ``--preset``'s). :func:`method_options` builds one from a mapping and refuses a
key the method does not read, so a typo such as ``lr_imgs`` (or ``syn_steps`` given to
``random``) is an error rather than a silent no-op. :data:`FLAGS` describes each option once
(kind, help, command-line spelling); ``nas-proxy distill`` generates its flags and ``--config``
keys from it. Only the standard library is imported here, so the CLI can build its flags fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nas_proxy.errors import UserError

INITS = ("real", "noise")
ARCH_ORDERS = ("round-robin", "random")
PRECISIONS = ("auto", "fp32", "bf16")
HERDING_FEATURES = ("trained", "random")
DEFAULT_ARCH = "convnet:depth=3,width=32"  # the distillation literature's ConvNet, CPU-scale


@dataclass(frozen=True)
class Flag:
    """How one option is checked and spelled on the command line.

    ``kind``: ``count`` (int >= 0), ``int`` (int >= 1), ``positive`` (float > 0), ``float``,
    ``bool``, ``choice`` (one of ``choices``), ``text``, ``specs`` (a list of architecture
    specs; ``--arch`` repeats), ``dsa`` (a bool or a strategy string). ``off`` is the negative
    spelling of a boolean flag.
    """

    kind: str
    help: str
    choices: tuple[str, ...] = ()
    off: str | None = None


FLAGS: dict[str, Flag] = {
    "preset": Flag("text", "MTT: published hyperparameters, e.g. cifar10-ipc10 (see docs)."),
    "arch": Flag("specs", "Architecture spec (repeat: each iteration matches one)."),
    "arch_order": Flag("choice", "MTT: order of the architectures.", ARCH_ORDERS),
    "iterations": Flag("count", "Distillation iterations."),
    "syn_steps": Flag("int", "MTT: unrolled SGD steps on the synthetic set per iteration."),
    "expert_epochs": Flag("int", "MTT: expert epochs matched per iteration (M)."),
    "max_start_epoch": Flag("count", "MTT: latest expert epoch a matching segment starts from."),
    "num_experts": Flag("int", "MTT: expert trajectories per architecture."),
    "expert_lr": Flag("positive", "MTT: learning rate the experts train with."),
    "expert_batch_size": Flag("int", "MTT: batch size the experts train with."),
    "expert_seed": Flag("count", "MTT: seed of the first expert."),
    "experts": Flag("text", "MTT: expert cache root [default: OUT/../experts]."),
    "workers": Flag("int", "MTT: processes that train missing experts."),
    "batch_syn": Flag("count", "MTT: synthetic batch per inner step (0: the whole set)."),
    "lr_img": Flag("positive", "Learning rate of the images."),
    "lr_lr": Flag("positive", "MTT: learning rate of the learned step size."),
    "lr_teacher": Flag("positive", "MTT: initial synthetic step size."),
    "lr_label": Flag("positive", "MTT: learning rate of soft labels."),
    "label_scale": Flag("float", "MTT: soft labels start as softmax(scale * one-hot)."),
    "momentum": Flag("float", "Momentum of the optimizers of the images (and MTT's lr)."),
    "soft_labels": Flag("bool", "MTT: learn soft labels too.", off="hard-labels"),
    "init": Flag("choice", "Initial synthetic images.", INITS),
    "zca": Flag("bool", "Distil in ZCA-whitened space.", off="no-zca"),
    "zca_eps": Flag("positive", "ZCA regularisation."),
    "dsa": Flag(
        "dsa", "Differentiable siamese augmentation (default on for images).", off="no-dsa"
    ),
    "memory_bounded": Flag(
        "bool", "MTT: recompute inner steps in the backward pass (flat memory).", off="full-graph"
    ),
    "precision": Flag(
        "choice",
        "MTT: bf16 runs the inner steps' forwards under autocast (parameters, updates and loss "
        "stay fp32); auto picks bf16 where the device has it natively.",
        PRECISIONS,
    ),
    "checkpoint_every": Flag("int", "Iterations between checkpoints."),
    "eval_epochs": Flag("int", "Epochs of the training recipe written into the proxy."),
    "eval_batch_size": Flag("int", "Batch size of the training recipe written into the proxy."),
    "batch_real": Flag("int", "DM/DC: real images per class per matching step."),
    "outer_loop": Flag("int", "DC: matching rounds per iteration [default: by IPC]."),
    "inner_loop": Flag("count", "DC: epochs the network trains between rounds [default: by IPC]."),
    "lr_net": Flag("positive", "DC: learning rate of the network's training between rounds."),
    "herding_features": Flag("choice", "Herding: feature network.", HERDING_FEATURES),
    "herding_epochs": Flag("int", "Herding: epochs the feature network trains."),
    "herding_lr": Flag("positive", "Herding: learning rate of the feature network."),
}


@dataclass(frozen=True)
class RecipeOptions:
    """What every method writes into its proxy: the DSA strategy (``None``: the dataset's,
    ``False``/``"none"``: no augmentation) and the recipe's epochs and batch size (``None``:
    ``proxy.DEFAULT_RECIPE``'s). This is all ``random`` reads."""

    dsa: bool | str | None = None
    eval_epochs: int | None = None
    eval_batch_size: int | None = None


@dataclass(frozen=True)
class HerdingOptions(RecipeOptions):
    arch: tuple[str, ...] = (DEFAULT_ARCH,)  # the first is the feature network
    herding_features: str = "trained"
    herding_epochs: int = 2
    herding_lr: float = 0.05


@dataclass(frozen=True)
class SyntheticOptions(RecipeOptions):
    """What DM and DC share (defaults CPU-scale; the papers' GPU settings in the modules)."""

    arch: tuple[str, ...] = (DEFAULT_ARCH,)  # one drawn per iteration
    init: str = "real"
    zca: bool = False
    zca_eps: float | None = None  # None: augment.ZCA_EPS
    iterations: int = 200
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64
    checkpoint_every: int = 50


@dataclass(frozen=True)
class DMOptions(SyntheticOptions):
    pass


@dataclass(frozen=True)
class DCOptions(SyntheticOptions):
    iterations: int = 50
    lr_img: float = 0.1
    checkpoint_every: int = 10
    outer_loop: int | None = None  # None: dc.LOOPS by IPC
    inner_loop: int | None = None
    lr_net: float = 0.01


@dataclass(frozen=True)
class MTTOptions(RecipeOptions):
    """MTT's options as given; ``None`` is "not given" (presets.resolve_options fills it in)."""

    preset: str | None = None
    arch: tuple[str, ...] | None = None
    arch_order: str | None = None
    iterations: int | None = None
    syn_steps: int | None = None
    expert_epochs: int | None = None
    max_start_epoch: int | None = None
    num_experts: int | None = None
    expert_lr: float | None = None
    expert_batch_size: int | None = None
    expert_seed: int | None = None
    experts: str | None = None
    workers: int | None = None
    batch_syn: int | None = None
    lr_img: float | None = None
    lr_lr: float | None = None
    lr_teacher: float | None = None
    lr_label: float | None = None
    label_scale: float | None = None
    momentum: float | None = None
    soft_labels: bool | None = None
    init: str | None = None
    zca: bool | None = None
    memory_bounded: bool | None = None
    precision: str | None = None
    checkpoint_every: int | None = None

    def given(self) -> dict[str, Any]:
        """The options that were set, as presets.resolve_options takes them."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v for k, v in out.items() if v is not None}
        if "arch" in out:
            out["arch"] = list(out["arch"])
        return out


OPTIONS: dict[str, type[RecipeOptions]] = {
    "mtt": MTTOptions,
    "dm": DMOptions,
    "dc": DCOptions,
    "random": RecipeOptions,
    "herding": HerdingOptions,
}


def option_names(method: str) -> list[str]:
    return [f.name for f in fields(OPTIONS[method])]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_options(method: str, values: RecipeOptions | Mapping[str, Any] | None) -> Any:
    """``method``'s options from ``values``: an options object, or a mapping of option names
    (``None`` values mean "not given"). A name the method does not read is a UserError."""
    if method not in OPTIONS:
        raise UserError(f"--method {method}: unknown; known methods: {', '.join(OPTIONS)}")
    cls = OPTIONS[method]
    if isinstance(values, cls):
        return values
    if isinstance(values, RecipeOptions):
        raise UserError(f"--method {method}: expected {cls.__name__}, got {type(values).__name__}")
    given = {str(k): v for k, v in (values or {}).items() if v is not None}
    known = set(option_names(method))
    for name in given:
        if name not in known:
            raise UserError(_unknown(method, name, known))
    return replace(cls(), **{k: check_value(k, v) for k, v in given.items()})


def _unknown(method: str, name: str, known: set[str]) -> str:
    allowed = ", ".join(flag_name(n) for n in sorted(known))
    if name in FLAGS:
        return f"{flag_name(name)} is not an option of --method {method} (its options: {allowed})"
    return f"--method {method}: unknown option '{name}' (its options: {allowed})"


def check_value(name: str, value: Any) -> Any:
    """``value`` converted to the option's kind; a value out of range is a UserError."""
    flag = FLAGS[name]
    where = f"{flag_name(name)} {value}"
    if flag.kind in ("count", "int", "positive", "float"):
        return _number(flag.kind, where, value)
    if flag.kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false")
        return value
    if flag.kind == "choice":
        if value not in flag.choices:
            *rest, last = flag.choices
            raise UserError(f"{where}: expected {', '.join(rest)} or {last}")
        return value
    if flag.kind == "specs":
        specs = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
        if not specs:
            raise UserError(f"{flag_name(name)}: give at least one architecture spec")
        return specs
    if flag.kind == "dsa":
        return value if isinstance(value, bool) else str(value)
    return str(value)


def _number(kind: str, where: str, value: Any) -> int | float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected a number") from None
    if kind in ("count", "int"):
        if isinstance(value, bool) or not number.is_integer():
            raise UserError(f"{where}: expected a whole number")
        low = 0 if kind == "count" else 1
        if number < low:
            raise UserError(f"{where}: must be at least {low}")
        return int(number)
    if kind == "positive" and not number > 0:
        raise UserError(f"{where}: must be positive")
    return number


def defaults_text(name: str) -> str:
    """Each method's default of option ``name`` for help texts: ``dm: 200, dc: 50``, one value
    when the methods agree, and ``mtt: by dataset`` where MTT's comes from presets.py."""
    values: dict[str, str] = {}
    for method, cls in OPTIONS.items():
        for f in fields(cls):
            if f.name == name and (method == "mtt" or f.default is not None):
                value = f.default
                values[method] = ",".join(value) if isinstance(value, tuple) else str(value)
    mtt = values.pop("mtt", None)
    if len(set(values.values())) == 1:
        parts = [next(iter(values.values()))]
    else:
        parts = [f"{m}: {v}" for m, v in values.items()]
    if mtt is not None:
        parts.append("mtt: by dataset, see presets")
    return ", ".join(parts) if len(parts) > 1 or mtt is None else ""
