"""The proxy file format (docs/architecture.md, "File formats") and training candidates on a proxy.

A proxy is what candidates train on before they are scored on real validation data: a folder
made by ``nas-proxy distill`` (:func:`load_proxy`), or ``real:DATASET[:steps=N,...]``, the real
training split under a short schedule (:func:`real_proxy`; the rival a distilled proxy must beat
at the same cost). :func:`open_proxy` takes either.

``DIR/proxy.safetensors`` holds ``images`` (float32 N×C×H×W, normalized space), ``labels``
(int64 N, or float32 N×classes soft labels), ``lr`` (scalar, when learned) and ``zca.*`` (when
the images live in ZCA-whitened space). ``DIR/proxy.json`` holds the metadata, the training
recipe candidates should use, and the SHA-256 of the tensors file. Loading never unpickles.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.augment import ZCA
from nas_proxy.data import Dataset
from nas_proxy.errors import UserError
from nas_proxy.io import file_sha256, load_tensors, read_json, save_tensors, write_json
from nas_proxy.models.spec import Option, parse_options
from nas_proxy.recipe import FULL_DATA, PROXY_RECIPE, recipe_of
from nas_proxy.runtime import versions
from nas_proxy.train import EpochCallback, TrainConfig, TrainResult, fit

FORMAT_VERSION = 1
TENSORS_FILE = "proxy.safetensors"
META_FILE = "proxy.json"

# How candidates train on a proxy unless the proxy says otherwise (defined in nas_proxy/recipe.py).
DEFAULT_RECIPE: dict[str, Any] = PROXY_RECIPE


@dataclass
class Proxy:
    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any]
    lr: float | None = None
    zca: ZCA | None = None
    path: Path | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    data: Dataset | None = None  # the dataset a real-data proxy trains on (its train split)

    @property
    def method(self) -> str:
        return self.meta.get("method", "?")

    @property
    def fingerprint(self) -> str | None:
        """What decides how candidates train on it: the tensors' SHA-256, or for a real-data
        proxy its dataset's checksum and recipe (a study resumes only on the same one)."""
        return self.meta.get("tensors_sha256") or self.meta.get("fingerprint")

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def recipe(self) -> dict[str, Any]:
        recipe = {**DEFAULT_RECIPE, **self.meta.get("recipe", {})}
        if self.lr is not None:
            recipe["lr"] = self.lr
        return recipe

    def train_config(self, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The proxy's recipe as a TrainConfig; ``None`` overrides are ignored."""
        recipe = {**self.recipe, **{k: v for k, v in overrides.items() if v is not None}}
        # Scoring real val data costs far more than an epoch on a few hundred images: evaluate
        # about ten times per run (enough for pruning) unless asked otherwise.
        recipe.setdefault("eval_every", max(1, int(recipe.get("epochs", 1)) // 10))
        # The seed is the candidate's, never the recipe's (a recipe may record the one it had).
        fields = set(TrainConfig.__dataclass_fields__) - {"seed"}
        return TrainConfig(**{k: v for k, v in recipe.items() if k in fields}, seed=seed)


def save_proxy(
    out_dir: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    dataset: Dataset,
    ipc: int,
    recipe: dict[str, Any] | None = None,
    lr: float | None = None,
    zca: ZCA | None = None,
    settings: dict[str, Any] | None = None,
    expert_key: str | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    wall_s: float | None = None,
) -> Path:
    """Write the proxy atomically (tensors first, then the JSON that vouches for them).

    ``wall_s`` is the total cost of building the proxy (experts included), which rank reports
    amortise over the candidates.
    """
    out = Path(out_dir)
    tensors = {"images": images.detach().float().cpu(), "labels": labels.detach().cpu()}
    if lr is not None:
        tensors["lr"] = torch.tensor(float(lr))
    if zca is not None:
        tensors.update({f"zca.{k}": v for k, v in zca.state_dict().items()})
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    save_tensors(out / TENSORS_FILE, tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "ipc": ipc,
        "images": len(images),
        "classes": dataset.classes,
        "num_classes": dataset.num_classes,
        "shape": list(images.shape[1:]),
        "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
        "zca": zca is not None,
        "soft_labels": labels.dtype != torch.long,
        "learned_lr": lr,
        "recipe": {**DEFAULT_RECIPE, **(recipe or {}), **({"lr": lr} if lr is not None else {})},
        "expert_key": expert_key,
        "wall_s": wall_s,
        "settings": settings or {},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tensors_sha256": file_sha256(out / TENSORS_FILE),
    }
    write_json(out / META_FILE, meta)
    return out


def load_proxy(path: str | Path) -> Proxy:
    """Load a proxy folder; anything but valid safetensors + JSON is a UserError."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise UserError(f"--proxy {path}: no such directory")
    meta_path, tensors_path = root / META_FILE, root / TENSORS_FILE
    if not meta_path.is_file() or not tensors_path.is_file():
        raise UserError(f"{root}: not a proxy (expected {META_FILE} and {TENSORS_FILE})")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{meta_path}: not a nas-proxy proxy description (format_version)")
    expected = meta.get("tensors_sha256")
    if expected and file_sha256(tensors_path) != expected:
        raise UserError(
            f"{tensors_path}: checksum does not match {META_FILE} (file changed or half-written)"
        )
    tensors = load_tensors(tensors_path)
    for key in ("images", "labels"):
        if key not in tensors:
            raise UserError(f"{tensors_path}: missing tensor '{key}'")
    images, labels = tensors["images"], tensors["labels"]
    num_classes = _check_meta(meta, meta_path)
    _check_images(images, meta, tensors_path)
    _check_labels(labels, len(images), num_classes, tensors_path)
    zca_state = {k[4:]: v for k, v in tensors.items() if k.startswith("zca.")}
    lr = _learned_lr(tensors, tensors_path)
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    proxy = Proxy(
        images=images.float(),
        labels=labels,
        meta=meta,
        lr=lr,
        zca=ZCA.from_state(zca_state) if zca_state else None,
        path=root,
        extra=extra,
    )
    _check_recipe(proxy.recipe, meta_path)
    return proxy


REAL_PREFIX = "real:"
# Optimizer steps of a real-data proxy unless told: on Fashion-MNIST, 200 steps (batch 128, about
# the training compute of 300 epochs on a 100-image proxy) ranked a space of mixed families better
# than every distilled proxy at that cost (docs/fidelity.md).
REAL_STEPS = 200
_REAL_OPTIONS = {
    "steps": Option(int, None, low=1),
    "epochs": Option(int, None, low=1),
    "lr": Option(float, None, low=0.0),  # TrainConfig refuses 0
    "batch_size": Option(int, None, low=1),
}
_REAL_USAGE = "real:DATASET[:steps=N,epochs=E,lr=X,batch_size=B]"


def is_real_ref(ref: str | Path) -> bool:
    """Whether ``ref`` names a real-data proxy (``real:DATASET[:...]``) rather than a folder."""
    return isinstance(ref, str) and ref.startswith(REAL_PREFIX)


def parse_real_ref(ref: str) -> tuple[str, dict[str, Any]]:
    """``real:fashion-mnist:steps=400`` -> ("fashion-mnist", options); UserError.

    The options are the last ``:`` part when it is ``key=value`` items, so dataset names that
    hold a colon (``imagefolder:/data/pets``) need no quoting.
    """
    where = f"--proxy {ref}"
    body = ref[len(REAL_PREFIX) :].strip()
    name, sep, tail = body.rpartition(":")
    if sep and tail and all("=" in item for item in tail.split(",")):
        body, text = name, tail
    else:
        text = ""
    if not body:
        raise UserError(f"{where}: expected {_REAL_USAGE}")
    options = parse_options(where, _REAL_OPTIONS, text)
    if options["steps"] is not None and options["epochs"] is not None:
        raise UserError(f"{where}: give steps= or epochs=, not both")
    return body, options


def real_proxy(ref: str, *, data_dir: str | None = None, download: bool = False) -> Proxy:
    """The real training split of ``real:DATASET[:...]`` as a proxy: candidates train on it
    with the full-data recipe (:data:`nas_proxy.recipe.FULL_DATA`) under a budget of ``steps``
    optimizer steps (default :data:`REAL_STEPS`) or ``epochs``, the cosine schedule ending
    inside it, and are scored on the real validation split like on any proxy."""
    from nas_proxy.data import load_dataset

    name, opts = parse_real_ref(ref)
    dataset = load_dataset(name, data_dir=data_dir, download=download)
    steps = None if opts["epochs"] else opts["steps"] or REAL_STEPS
    given = {k: opts[k] for k in ("epochs", "lr", "batch_size") if opts[k] is not None}
    cfg = FULL_DATA.replace(**{"epochs": 1, **given, "max_steps": steps})
    cfg = cfg.replace(epochs=cfg.epochs_for(len(dataset.train_x)))
    # BatchNorm recalibration stays on (on real training batches), so that a candidate scores
    # exactly as rank's short-training column with the same recipe and budget.
    recipe = {**recipe_of(cfg), "max_steps": steps}
    meta = {
        "method": "real",
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "images": len(dataset.train_x),
        "classes": dataset.classes,
        "num_classes": dataset.num_classes,
        "shape": list(dataset.shape),
        "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
        "recipe": recipe,
        "fingerprint": "real:" + dataset.checksum + ":" + repr(sorted(recipe.items())),
    }
    return Proxy(dataset.train_x, dataset.train_y, meta, data=dataset)


def open_proxy(ref: str | Path, *, data_dir: str | None = None, download: bool = False) -> Proxy:
    """A proxy folder (:func:`load_proxy`) or a real-data proxy (:func:`real_proxy`)."""
    if is_real_ref(ref):
        return real_proxy(str(ref), data_dir=data_dir, download=download)
    return load_proxy(ref)


# Recipe entries that must be numbers, with the least value each may take ("int" entries must
# be whole numbers). A proxy is validated once, when loaded: a bad value would otherwise fail
# every candidate trained on it, one by one.
_RECIPE_NUMBERS: dict[str, tuple[str, float, bool]] = {  # key: (kind, least, least allowed)
    "epochs": ("int", 1, True),
    "batch_size": ("int", 1, True),
    "lr": ("float", 0.0, False),
    "momentum": ("float", 0.0, True),
    "weight_decay": ("float", 0.0, True),
    "label_smoothing": ("float", 0.0, True),
    "eval_every": ("int", 0, True),
    "recalibrate_batches": ("int", 0, True),
    "eval_batch_size": ("int", 1, True),
}


def _check_meta(meta: dict[str, Any], where: Path) -> int:
    """The proxy's number of classes (1 for a regression target), checked."""
    n = meta.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"{where}: num_classes must be a whole number >= 1 (got {n!r})")
    if not isinstance(meta.get("dataset"), str):
        raise UserError(f"{where}: 'dataset' must name the dataset the proxy was made from")
    return n


def _check_images(images: torch.Tensor, meta: dict[str, Any], where: Path) -> None:
    if not images.is_floating_point() or images.dim() < 2:
        raise UserError(
            f"{where}: images must be a float tensor of N samples (got {images.dtype} "
            f"{list(images.shape)})"
        )
    if len(images) == 0:
        raise UserError(f"{where}: the proxy holds no images")
    if not torch.isfinite(images).all():
        raise UserError(f"{where}: images hold NaN or infinite values")
    shape = meta.get("shape")
    if shape is not None and list(shape) != list(images.shape[1:]):
        raise UserError(
            f"{where}: images have shape {list(images.shape[1:])}, {META_FILE} says {shape}"
        )


def _check_labels(labels: torch.Tensor, n: int, num_classes: int, where: Path) -> None:
    """Hard labels (int, 0 <= y < num_classes), soft labels (float N x num_classes) or, for a
    one-output task, float regression targets (N)."""
    if len(labels) != n:
        raise UserError(f"{where}: {n} images but {len(labels)} labels")
    if labels.is_floating_point():
        soft = labels.dim() == 2 and labels.shape[1] == num_classes
        if not (soft or (labels.dim() == 1 and num_classes == 1)):
            raise UserError(
                f"{where}: float labels must be soft labels of shape [N, {num_classes}] "
                f"(got {list(labels.shape)}); class labels must be integers"
            )
        if not torch.isfinite(labels).all():
            raise UserError(f"{where}: labels hold NaN or infinite values")
        return
    if labels.dtype == torch.bool or labels.dim() != 1:
        raise UserError(
            f"{where}: labels must be N integers (got {labels.dtype} {list(labels.shape)})"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{where}: labels must lie in 0..{num_classes - 1} (found {low}..{high})")


def _learned_lr(tensors: dict[str, torch.Tensor], where: Path) -> float | None:
    if "lr" not in tensors:
        return None
    lr = tensors["lr"]
    if lr.numel() != 1 or not lr.is_floating_point() or not (0 < float(lr) < float("inf")):
        raise UserError(f"{where}: 'lr' must be one finite number > 0 (got {lr.tolist()})")
    return float(lr)


def _check_recipe(recipe: dict[str, Any], where: Path) -> None:
    for key, (kind, least, inclusive) in _RECIPE_NUMBERS.items():
        value = recipe.get(key)
        if value is None and key not in ("epochs", "lr", "batch_size"):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        whole = number and (kind == "float" or float(value).is_integer())
        if not (
            whole and math.isfinite(value) and (value >= least if inclusive else value > least)
        ):
            bound = f">= {least:g}" if inclusive else f"> {least:g}"
            what = "a whole number" if kind == "int" else "a number"
            raise UserError(f"{where}: recipe {key} must be {what} {bound} (got {value!r})")
    try:
        Proxy(torch.zeros(1, 1), torch.zeros(1), {"recipe": recipe}).train_config()
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{where}: recipe is not valid ({e})") from None


def check_compatible(proxy: Proxy, dataset: Dataset) -> None:
    """The proxy was made from ``dataset``: same name, sample shape, classes and normalisation
    (UserError otherwise: candidates trained on it would be scored on other data)."""
    if proxy.meta.get("dataset") != dataset.name:
        raise UserError(
            f"proxy {proxy.path} was distilled from '{proxy.meta.get('dataset')}', "
            f"not '{dataset.name}'"
        )
    if list(proxy.images.shape[1:]) != list(dataset.shape):
        raise UserError(
            f"proxy {proxy.path} images have shape {list(proxy.images.shape[1:])}, "
            f"dataset '{dataset.name}' has {list(dataset.shape)}"
        )
    if proxy.num_classes != dataset.num_classes:
        raise UserError(
            f"proxy {proxy.path} has {proxy.num_classes} classes, dataset '{dataset.name}' "
            f"has {dataset.num_classes}"
        )
    norm = proxy.meta.get("normalization")
    if norm is not None and not _same_numbers(norm, {"mean": dataset.mean, "std": dataset.std}):
        raise UserError(
            f"proxy {proxy.path} was normalised with {norm}, dataset '{dataset.name}' uses "
            f"mean {list(dataset.mean)}, std {list(dataset.std)}"
        )


def _same_numbers(norm: Any, expected: dict[str, Any]) -> bool:
    try:
        return all(
            len(norm[k]) == len(v)
            and all(
                math.isclose(float(a), float(b), rel_tol=1e-5)
                for a, b in zip(norm[k], v, strict=True)
            )
            for k, v in expected.items()
        )
    except (KeyError, TypeError, ValueError):
        return False


def real_view(proxy: Proxy, x: torch.Tensor) -> torch.Tensor:
    """Real data in the proxy's input space (ZCA-whitened when the proxy is)."""
    return proxy.zca.transform(x) if proxy.zca is not None else x


def train_on_proxy(
    proxy: Proxy,
    dataset: Dataset,
    spec: str,
    *,
    seed: int = 0,
    device: torch.device,
    score_split: str = "val",
    on_epoch: EpochCallback | None = None,
    desc: str | None = None,
    **overrides: Any,
) -> tuple[nn.Module, TrainResult]:
    """Train ``spec`` from scratch on the proxy with its recipe; score on real data.

    ``score_split``: ``val`` for search decisions (scored as the recipe's ``eval_every`` says,
    reported as ``val_accuracy``) or ``test`` for a final evaluation (scored once, after
    training, reported as ``test_accuracy``). BatchNorm statistics are recalibrated on real training
    images before scoring unless ``recalibrate_norm=False`` is passed.
    """
    check_compatible(proxy, dataset)
    cfg = proxy.train_config(seed=seed, **overrides)
    split = {"val": (dataset.val_x, dataset.val_y), "test": (dataset.test_x, dataset.test_y)}
    if score_split not in split:
        raise UserError(f"score split '{score_split}': expected val or test")
    x, y = split[score_split]
    scored = (real_view(proxy, x), y)
    return fit(
        spec,
        proxy.images,
        proxy.labels,
        cfg,
        num_classes=proxy.num_classes,
        device=device,
        val=scored if score_split == "val" else None,
        test=scored if score_split == "test" else None,
        recalibrate_x=real_view(proxy, dataset.train_x),
        on_epoch=on_epoch,
        desc=desc,
    )


def evaluate_proxy(
    proxy: Proxy,
    dataset: Dataset,
    specs: list[str],
    *,
    seeds: list[int],
    device: torch.device,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """One row per spec: test accuracy of ``spec`` trained on ``proxy`` for each seed.

    ``overrides`` replace recipe entries (``epochs``, ``lr``, ``recalibrate_norm``...; None
    keeps the proxy's). The test split is scored once, after training, never per epoch.
    """
    rows = []
    for spec in specs:
        start = time.perf_counter()
        accuracies = []
        for seed in seeds:
            _, res = train_on_proxy(
                proxy,
                dataset,
                spec,
                seed=seed,
                device=device,
                score_split="test",
                eval_every=0,
                desc=f"{proxy.method} {spec} seed {seed}",
                **overrides,
            )
            accuracies.append(res.test_accuracy)
        rows.append(
            {
                "proxy": str(proxy.path),
                "method": proxy.method,
                "arch": spec,
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "seeds": len(seeds),
                "accuracies": accuracies,
                "wall_s": round(time.perf_counter() - start, 3),
            }
        )
    return rows
