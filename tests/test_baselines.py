"""Baseline proxies (random, herding, DM, DC) on digits with tiny settings."""

from __future__ import annotations

import pytest
import torch

from nas_proxy.augment import dsa_strategy_for
from nas_proxy.data import load_dataset
from nas_proxy.distill import subsets, synthetic
from nas_proxy.distill.common import class_indices
from nas_proxy.distill.dc import gradient_distance, run_dc
from nas_proxy.distill.dm import dm_loss, run_dm
from nas_proxy.distill.proxy import DEFAULT_RECIPE, load_proxy
from nas_proxy.distill.subsets import (
    classifier_input,
    fresh_net,
    herding_features,
    herding_select,
    run_herding,
    run_random,
)
from nas_proxy.io import file_sha256

CPU = torch.device("cpu")
IPC = 2
TINY_ARCH = ["convnet:depth=2,width=8"]
RUNS = {
    "random": (run_random, {}),
    "herding": (run_herding, {"arch": TINY_ARCH, "herding_features": "random"}),
    "dm": (run_dm, {"arch": TINY_ARCH, "iterations": 3, "batch_real": 16}),
    "dc": (
        run_dc,
        {"arch": TINY_ARCH, "iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8},
    ),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def no_grid(monkeypatch):
    """Skip drawing PNGs (about a second each) in tests that only look at the tensors."""
    monkeypatch.setattr(subsets, "save_image_grid", lambda *a, **k: None)
    monkeypatch.setattr(synthetic, "save_image_grid", lambda *a, **k: None)


@pytest.mark.parametrize("method", list(RUNS))
def test_method_writes_a_valid_proxy(method, digits, tmp_path):
    run, opts = RUNS[method]
    summary = run(digits, IPC, tmp_path / method, opts, seed=0, device=CPU)
    for key in ("dir", "method", "ipc", "images", "iterations", "wall_s"):
        assert key in summary
    assert summary["method"] == method and summary["images"] == IPC * digits.num_classes

    proxy = load_proxy(summary["dir"])
    assert proxy.method == method and proxy.meta["ipc"] == IPC
    assert proxy.images.shape == (IPC * digits.num_classes, *digits.shape)
    assert proxy.images.dtype == torch.float32 and torch.isfinite(proxy.images).all()
    assert proxy.labels.dtype == torch.long
    assert (
        proxy.labels.bincount(minlength=digits.num_classes).tolist() == [IPC] * digits.num_classes
    )
    # every method gets the same evaluation recipe: the shared default + the dataset's DSA
    assert proxy.recipe == {**DEFAULT_RECIPE, "augment": dsa_strategy_for("digits")}
    assert proxy.meta["tensors_sha256"] == file_sha256(proxy.path / "proxy.safetensors")
    assert (proxy.path / "grid.png").stat().st_size > 0


def test_dsa_none_gives_an_unaugmented_recipe(digits, tmp_path, no_grid):
    proxy = load_proxy(
        run_random(
            digits, IPC, tmp_path / "n", {"dsa": "none", "eval_epochs": 7}, seed=0, device=CPU
        )["dir"]
    )
    assert proxy.recipe["augment"] is None and proxy.recipe["epochs"] == 7


def test_dm_with_zca_stores_the_whitening(digits, tmp_path, no_grid):
    opts = {**RUNS["dm"][1], "zca": True, "iterations": 1}
    proxy = load_proxy(run_dm(digits, IPC, tmp_path / "z", opts, seed=0, device=CPU)["dir"])
    assert proxy.zca is not None and proxy.meta["zca"] is True
    # the synthetic images live in whitened space: whitening real data lands on the same scale
    white = proxy.zca.transform(digits.train_x[:200])
    assert 0.2 < float(proxy.images.std() / white.std()) < 5.0


def test_random_subset_is_deterministic_and_real(digits, tmp_path, no_grid):
    a = load_proxy(run_random(digits, IPC, tmp_path / "a", {}, seed=3, device=CPU)["dir"])
    b = load_proxy(run_random(digits, IPC, tmp_path / "b", {}, seed=3, device=CPU)["dir"])
    c = load_proxy(run_random(digits, IPC, tmp_path / "c", {}, seed=4, device=CPU)["dir"])
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # real training images with their own labels
    for img, label in zip(a.images, a.labels, strict=True):
        match = (digits.train_x == img).flatten(1).all(1).nonzero().flatten()
        assert len(match) and (digits.train_y[match] == label).any()


def test_herding_tracks_the_class_mean_better_than_random(digits, tmp_path, no_grid):
    opts = {"arch": TINY_ARCH, "herding_features": "random"}
    features, _ = herding_features(digits, opts, seed=0, device=CPU)
    g = torch.Generator().manual_seed(0)
    for idx in class_indices(digits.train_y, digits.num_classes):
        f = features[idx]
        herded = f[herding_select(f, 5)].mean(0)
        random = torch.stack(
            [f[torch.randperm(len(f), generator=g)[:5]].mean(0) for _ in range(20)]
        )
        gap_herded = (herded - f.mean(0)).norm()
        gap_random = (random - f.mean(0)).norm(dim=1)
        assert gap_herded < gap_random.min()

    herd = load_proxy(run_herding(digits, IPC, tmp_path / "h", opts, seed=0, device=CPU)["dir"])
    rand = load_proxy(run_random(digits, IPC, tmp_path / "r", {}, seed=0, device=CPU)["dir"])
    assert not torch.equal(herd.images, rand.images)


def test_herding_select_picks_distinct_rows_nearest_the_mean_first():
    f = torch.tensor([[0.0], [10.0], [2.0], [-1.0], [5.0]])  # mean 3.2
    chosen = herding_select(f, 3).tolist()
    # 2 is nearest 3.2 on its own; then (2 + 5) / 2 = 3.5 is the nearest pair mean
    assert len(set(chosen)) == 3 and chosen[:2] == [2, 4]


def test_dm_loss_decreases(digits, tmp_path, no_grid):
    opts = {"arch": TINY_ARCH, "iterations": 20, "batch_real": 16, "init": "noise", "dsa": "none"}
    summary = run_dm(digits, IPC, tmp_path / "dm", opts, seed=0, device=CPU)
    distilled = load_proxy(summary["dir"]).images
    start = torch.randn(distilled.shape, generator=torch.Generator().manual_seed(0))
    by_class = class_indices(digits.train_y, digits.num_classes)
    real = [digits.train_x[idx] for idx in by_class]
    g = torch.Generator().manual_seed(123)
    nets = [fresh_net(TINY_ARCH[0], digits, g, CPU).requires_grad_(False) for _ in range(4)]

    def mean_loss(images):  # the DM objective on fixed held-out networks, full real classes
        return sum(float(dm_loss(n, real, images, None, g)) for n in nets) / len(nets)

    assert mean_loss(distilled) < 0.5 * mean_loss(start)


def test_dm_is_deterministic_under_seed(digits, tmp_path, no_grid):
    opts = RUNS["dm"][1]
    a = load_proxy(run_dm(digits, IPC, tmp_path / "a", opts, seed=1, device=CPU)["dir"])
    b = load_proxy(run_dm(digits, IPC, tmp_path / "b", opts, seed=1, device=CPU)["dir"])
    assert torch.equal(a.images, b.images)


def test_gradient_distance_is_the_layerwise_cosine_distance():
    w = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    assert float(gradient_distance([w, bias], [2 * w, -bias])) == pytest.approx(0.0, abs=1e-5)
    # opposite directions: 1 - (-1) per output unit; 1-d tensors are ignored
    assert float(gradient_distance([w, bias], [-w, bias])) == pytest.approx(8.0, abs=1e-4)


@pytest.mark.parametrize("spec", ["convnet:depth=2,width=8", "mlp:hidden=16"])
def test_classifier_input_is_the_embedding(digits, spec):
    net = fresh_net(spec, digits, torch.Generator().manual_seed(0), CPU)
    x = digits.train_x[:5].clone().requires_grad_(True)
    emb = classifier_input(net, x)
    assert emb.shape[0] == 5 and emb.dim() == 2
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
