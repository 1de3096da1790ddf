"""The one training loop: learning, determinism, label kinds, BN recalibration."""

import math

import pytest
import torch

from nas_proxy.data import load_dataset
from nas_proxy.train import (
    TrainConfig,
    TrainingDiverged,
    evaluate,
    fit,
    has_batch_norm,
    recalibrate_norm,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_convnet_learns_digits(digits):
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=64, seed=0)
    _, res = fit(
        "convnet:depth=2,width=16",
        digits.train_x,
        digits.train_y,
        cfg,
        num_classes=10,
        device="cpu",
        val=(digits.val_x, digits.val_y),
        test=(digits.test_x, digits.test_y),
    )
    assert res.val_accuracy > 0.85 and res.test_accuracy > 0.85
    assert res.params > 0 and res.flops > 0 and res.arch.startswith("convnet:")
    assert len(res.history) == 4 and res.history[0]["train_loss"] > res.history[-1]["train_loss"]


def test_same_seed_same_weights_other_seed_differs(digits):
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=3, augment="color_crop")
    runs = [
        fit(
            "mlp:hidden=32",
            digits.train_x,
            digits.train_y,
            cfg.replace(seed=s),
            num_classes=10,
            device="cpu",
        )[0]
        for s in (3, 3, 4)
    ]
    a, b, c = (torch.cat([p.flatten() for p in m.parameters()]) for m in runs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_soft_labels_train_like_hard_labels(digits):
    soft = torch.nn.functional.one_hot(digits.train_y, 10).float()
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=64)
    _, res = fit(
        "mlp:hidden=32",
        digits.train_x,
        soft,
        cfg,
        num_classes=10,
        device="cpu",
        val=(digits.val_x, digits.val_y),
    )
    assert res.val_accuracy > 0.8


def test_regression_targets_use_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0])
    cfg = TrainConfig(epochs=40, lr=0.05, batch_size=64, weight_decay=0.0)
    model, res = fit("mlp:hidden=32", x, y, cfg, num_classes=1, device="cpu", val=(x, y))
    assert res.val_accuracy is None
    assert res.val_loss < 0.1 * float(y.var())


def test_divergence_is_reported(digits):
    cfg = TrainConfig(epochs=2, lr=1e6, batch_size=64, momentum=0.0)
    with pytest.raises(TrainingDiverged):
        fit(
            "mlp:hidden=32,depth=2",
            digits.train_x,
            digits.train_y,
            cfg,
            num_classes=10,
            device="cpu",
        )


def test_recalibration_replaces_synthetic_batch_statistics(digits):
    # A BN net trained on 20 shifted images keeps their statistics; recalibration on real
    # images must bring the running mean back to the real data's and restore accuracy.
    x_few = digits.train_x[:100] + 3.0
    cfg = TrainConfig(epochs=30, lr=0.05, batch_size=100, recalibrate_norm=False)
    model, _ = fit(
        "convnet:depth=2,width=16,norm=batch",
        x_few,
        digits.train_y[:100],
        cfg,
        num_classes=10,
        device="cpu",
    )
    assert has_batch_norm(model)
    before, _ = evaluate(model, digits.val_x, digits.val_y)
    assert recalibrate_norm(model, digits.train_x + 3.0 * 0, batches=4, batch_size=256)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert math.isfinite(float(bn.running_mean.sum()))
    after, _ = evaluate(model, digits.val_x, digits.val_y)
    assert after > before + 0.1
