"""Expert trajectories: networks trained on the real data, their weights at every epoch boundary.

Layout of a cache folder ``DIR/<key>/`` (docs/architecture.md, "File formats")::

    manifest.json                       settings (the key's inputs), per-expert finished epochs,
                                        per-epoch val accuracy, seeds, versions
    expert_003/epoch_012.safetensors    the model's ``state_dict`` after epoch 12 (parameters;
                                        for BatchNorm nets also the running-statistics buffers)
    expert_003/state.safetensors        optimizer + RNG state after the last finished epoch

``key`` hashes everything that decides a trajectory (dataset and its checksum, canonical spec,
optimizer and its settings, batch size, augmentation, ZCA, seed and the per-expert seed scheme),
but not the number of experts or epochs: expert ``i`` always starts from seed
``expert_seed(seed, i)``, and with a constant learning rate epoch ``e`` does not depend on how
many epochs were asked for. So asking for more experts trains only the new ones, and asking for
more epochs resumes each expert from its last saved epoch (weights + ``state.safetensors``) to a
result identical to training it longer in one go. A killed run resumes the same way. Every file is
written atomically; concurrent writers are serialised by ``flock`` (released when a process dies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas_proxy.augment import ZCA, ZCA_EPS, whiten
from nas_proxy.data import Dataset
from nas_proxy.errors import UserError
from nas_proxy.io import load_tensors, read_json, save_tensors, stable_hash, write_json
from nas_proxy.recipe import ExpertSettings, expert_seed
from nas_proxy.runtime import (
    init_worker_process,
    progress,
    versions,
    worker_threads,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SEED_SCHEME = "sha256('{seed}:{expert}')[:8] & 0x7fffffff"


def key_settings(dataset: Dataset, spec: str, settings: ExpertSettings) -> dict[str, Any]:
    """Every input that decides a trajectory; its stable hash is the cache key."""
    from nas_proxy.models import parse_spec

    return {
        "format": FORMAT_VERSION,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "spec": str(parse_spec(spec)),
        "optimizer": settings.optimizer,
        "lr": settings.lr,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
        "batch_size": settings.batch_size,
        "schedule": "none",
        "augment": settings.strategy(dataset.name),
        "zca": {"eps": ZCA_EPS} if settings.zca else None,
        "seed": settings.seed,
        "seed_scheme": SEED_SCHEME,
    }


def expert_key(dataset: Dataset, spec: str, settings: ExpertSettings) -> str:
    return stable_hash(key_settings(dataset, spec, settings))


def expert_dir(key_dir: Path, expert: int) -> Path:
    return key_dir / f"expert_{expert:03d}"


def epoch_file(key_dir: Path, expert: int, epoch: int) -> Path:
    return expert_dir(key_dir, expert) / f"epoch_{epoch:03d}.safetensors"


def load_trajectory(
    dir: str | Path, key: str, expert: int, epoch: int, device: torch.device = torch.device("cpu")
) -> dict[str, torch.Tensor]:
    """Weights of expert ``expert`` after epoch ``epoch`` (0: initialisation), a ``state_dict``."""
    path = epoch_file(Path(dir) / key, expert, epoch)
    if not path.is_file():
        raise UserError(f"{path}: no such expert snapshot (train more experts or epochs)")
    return load_tensors(path, device=device)


@dataclass
class ExpertCache:
    """A cache folder that holds at least ``experts`` experts of ``epochs`` epochs each."""

    root: Path
    key: str
    spec: str
    settings: dict[str, Any]
    experts: int
    epochs: int
    reused: bool
    wall_s: float
    zca: ZCA | None = None

    @property
    def dir(self) -> Path:
        return self.root / self.key

    def load(
        self, expert: int, epoch: int, device: torch.device = torch.device("cpu")
    ) -> dict[str, torch.Tensor]:
        return load_trajectory(self.root, self.key, expert, epoch, device=device)

    def summary(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "key": self.key,
            "experts": self.experts,
            "epochs": self.epochs,
            "reused": self.reused,
            "wall_s": round(self.wall_s, 3),
        }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the kernel drops it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(key_dir: Path) -> dict[str, Any] | None:
    path = key_dir / MANIFEST
    return read_json(path) if path.is_file() else None


def _update_manifest(
    key_dir: Path, settings: dict[str, Any], expert: int | None = None, **entry: Any
) -> dict[str, Any]:
    with _locked(key_dir / ".manifest.lock"):
        manifest = read_manifest(key_dir) or {
            "format_version": FORMAT_VERSION,
            "key": key_dir.name,
            "settings": settings,
            "experts": {},
        }
        if expert is not None:
            manifest["experts"].setdefault(str(expert), {}).update(entry)
        manifest["versions"] = versions()
        write_json(key_dir / MANIFEST, manifest)
        return manifest


def finished_epochs(manifest: dict[str, Any] | None, expert: int) -> int:
    if not manifest:
        return 0
    return int(manifest["experts"].get(str(expert), {}).get("epochs", 0))


def _describe_difference(have: dict[str, Any], want: dict[str, Any]) -> str:
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return ", ".join(f"{k}: {have.get(k)!r} (need {want.get(k)!r})" for k in keys)


def resolve_key_dir(out: str | Path, settings: dict[str, Any]) -> tuple[Path, Path]:
    """(root, key folder) for a request. ``out`` is normally the cache root; when it is itself a
    key folder (holds a manifest), it must have been trained with exactly these settings."""
    out = Path(out)
    key = stable_hash(settings)
    existing = read_manifest(out)
    if existing is not None and out.name != key:
        diff = _describe_difference(existing.get("settings", {}), settings)
        raise UserError(
            f"experts in {out} were trained with other settings ({diff}); pass the "
            "cache root or another folder"
        )
    root = out.parent if existing is not None else out
    key_dir = root / key
    manifest = read_manifest(key_dir)
    if manifest is not None and manifest.get("settings") != settings:
        raise UserError(
            f"{key_dir / MANIFEST}: settings do not match the folder's key (edited "
            "or corrupt); delete the folder"
        )
    return root, key_dir


def train_expert(
    dataset: Dataset,
    spec: str,
    settings: ExpertSettings,
    key_dir: Path,
    expert: int,
    epochs: int,
    device: torch.device,
) -> int:
    """Train (or resume, or extend) one expert to ``epochs`` epochs; returns epochs trained."""
    from nas_proxy.train import fit

    key = key_settings(dataset, spec, settings)
    edir = expert_dir(key_dir, expert)
    with _locked(edir / ".lock"):  # another process may be training this very expert
        state_path = edir / "state.safetensors"
        resume = load_tensors(state_path) if state_path.is_file() else None
        done = int(resume["epoch"]) if resume is not None else 0
        if done >= epochs:
            if finished_epochs(read_manifest(key_dir), expert) < done:  # killed before update
                _update_manifest(key_dir, key, expert, epochs=done)
            return 0
        history: list[float | None] = list(
            (read_manifest(key_dir) or {"experts": {}})["experts"]
            .get(str(expert), {})
            .get("val_accuracy", [])
        )[:done]

        def on_epoch(epoch: int, model: torch.nn.Module, metrics: dict[str, float]) -> None:
            save_tensors(epoch_file(key_dir, expert, epoch), model.state_dict())
            if epoch > 0:
                history.append(metrics.get("val_accuracy"))

        def on_state(epoch: int, state: dict[str, torch.Tensor]) -> None:
            # Order matters for kill -9: weights file, then state, then manifest.
            save_tensors(state_path, state)
            _update_manifest(
                key_dir,
                key,
                expert,
                epochs=epoch,
                seed=expert_seed(settings.seed, expert),
                device=str(device),
                val_accuracy=list(history),
            )

        cfg = settings.train_config(dataset.name, expert, epochs)
        initial = load_tensors(epoch_file(key_dir, expert, done)) if done else None
        fit(
            spec,
            dataset.train_x,
            dataset.train_y,
            cfg,
            num_classes=dataset.num_classes,
            device=device,
            val=(dataset.val_x, dataset.val_y),
            on_epoch=on_epoch,
            initial_state=initial,
            resume_state=resume,
            on_state=on_state,
            desc=f"expert {expert}",
        )
        return epochs - done


def _worker_job(args: tuple) -> int:
    dataset, spec, settings, key_dir, expert, epochs, device = args
    return train_expert(
        dataset, spec, ExpertSettings(**settings), Path(key_dir), expert, epochs, device
    )


def ensure_experts(
    dataset: Dataset,
    spec: str,
    num_experts: int,
    epochs: int,
    out: str | Path,
    settings: ExpertSettings | None = None,
    *,
    device: torch.device,
    workers: int = 1,
) -> ExpertCache:
    """Make sure ``num_experts`` experts of ``epochs`` epochs exist under ``out``; train what is
    missing (in ``workers`` processes) and reuse or extend the rest."""
    if num_experts < 1 or epochs < 1:
        raise UserError(
            f"need at least one expert and one epoch (got --num-experts "
            f"{num_experts}, --epochs {epochs})"
        )
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    if not dataset.is_image and settings is not None and settings.zca:
        raise UserError(f"--zca needs an image dataset, '{dataset.name}' is not one")
    settings = settings or ExpertSettings()
    start = time.perf_counter()
    key = key_settings(dataset, spec, settings)
    root, key_dir = resolve_key_dir(out, key)
    data, zca = whiten(dataset) if settings.zca else (dataset, None)
    manifest = _update_manifest(key_dir, key)
    todo = [i for i in range(num_experts) if finished_epochs(manifest, i) < epochs]
    bar = progress(total=len(todo), desc=f"experts ({key})", unit="expert")
    if workers > 1 and len(todo) > 1:
        _train_parallel(data, key["spec"], settings, key_dir, todo, epochs, device, workers, bar)
    else:
        for i in todo:
            train_expert(data, key["spec"], settings, key_dir, i, epochs, device)
            bar.update()
    bar.close()
    return ExpertCache(
        root=root,
        key=key_dir.name,
        spec=key["spec"],
        settings=key,
        experts=num_experts,
        epochs=epochs,
        reused=not todo,
        wall_s=time.perf_counter() - start,
        zca=zca,
    )


def _train_parallel(
    data: Dataset,
    spec: str,
    settings: ExpertSettings,
    key_dir: Path,
    todo: list[int],
    epochs: int,
    device: torch.device,
    workers: int,
    bar,
) -> None:
    # spawn (not fork): safe with threads and CUDA. The dataset's tensors travel through shared
    # memory (torch.multiprocessing), not through a file.
    import torch.multiprocessing as mp

    workers = min(workers, len(todo))
    threads = worker_threads(workers)
    jobs = [
        # A torch.device pickles as it is: the workers need not resolve it again.
        (data, spec, dataclasses.asdict(settings), str(key_dir), i, epochs, device)
        for i in todo
    ]
    with mp.get_context("spawn").Pool(
        workers, initializer=init_worker_process, initargs=(threads,)
    ) as pool:
        for _ in pool.imap_unordered(_worker_job, jobs):
            bar.update()
