"""DSA augmentation and ZCA whitening."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from nas_proxy.augment import (
    DEFAULT_DSA,
    OPS,
    ZCA,
    DSAParams,
    dsa,
    dsa_strategy_for,
    make_augment,
    parse_strategy,
)
from nas_proxy.errors import UserError

SHAPES = [(4, 1, 8, 8), (4, 3, 8, 8), (4, 1, 28, 28), (4, 3, 32, 32)]
STRATEGIES = [*OPS, DEFAULT_DSA]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shape_dtype_preserved_and_gradient_flows(shape, strategy):
    x = images(shape).requires_grad_(True)
    for mode in ("single", "all"):
        y = dsa(x, strategy, generator=gen(1), params=DSAParams(mode=mode))
        assert y.shape == x.shape and y.dtype == x.dtype
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_images_but_keeps_scale(op):
    x = images((16, 3, 32, 32))
    y = dsa(x, op, generator=gen(2))
    assert not torch.equal(x, y) and torch.isfinite(y).all()
    assert y.abs().max() < 10 * x.abs().max()


def test_float64_supported():
    x = images((4, 3, 8, 8)).double()
    assert dsa(x, DEFAULT_DSA, generator=gen()).dtype == torch.float64


def test_same_generator_state_is_bit_identical_and_seed_matters():
    x = images((8, 3, 32, 32))
    for strategy in STRATEGIES:
        assert torch.equal(dsa(x, strategy, gen(5)), dsa(x, strategy, gen(5)))
    # A batch is 8 images: different seeds give different transforms for every op.
    for strategy in OPS:
        assert not torch.equal(dsa(x, strategy, gen(5)), dsa(x, strategy, gen(6)))


def test_replay_from_saved_state_and_siamese_batch_shared():
    g = gen(3)
    state = g.get_state()
    x = images((8, 3, 16, 16))
    first = dsa(x, generator=g)
    g.set_state(state)
    assert torch.equal(first, dsa(x, generator=g))  # memory-bounded recomputation relies on this
    # batch_shared: one draw for the batch, so batches of different sizes see the same transform.
    shared = DSAParams(batch_shared=True)
    for op in OPS:
        big = dsa(x, op, gen(4), shared)
        small = dsa(x[:3], op, gen(4), shared)
        assert torch.allclose(big[:3], small, atol=1e-6)
        one = [dsa(x[i : i + 1], op, gen(4), shared) for i in (0, 5)]
        assert torch.allclose(big[[0, 5]], torch.cat(one), atol=1e-6)


def test_per_sample_parameters_differ_within_batch():
    x = images((1, 1, 28, 28)).expand(32, 1, 28, 28)
    for op in ("crop", "cutout", "scale", "rotate", "color"):
        y = dsa(x, op, gen(7))
        assert not all(torch.equal(y[0], y[i]) for i in range(1, 32)), op


def test_global_rng_untouched():
    before = torch.random.get_rng_state()
    x = images((4, 3, 8, 8))
    dsa(x)  # no generator: a private fresh one
    dsa(x, generator=gen())
    make_augment(DEFAULT_DSA, seed=1)(x)
    assert torch.equal(before, torch.random.get_rng_state())


def test_none_and_make_augment():
    x = images((4, 1, 8, 8))
    assert dsa(x, "none") is x
    assert make_augment(None) is None and make_augment("none") is None
    a, b = make_augment(DEFAULT_DSA, seed=9), make_augment(DEFAULT_DSA, seed=9)
    outs_a, outs_b = [a(x) for _ in range(4)], [b(x) for _ in range(4)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b, strict=True))
    state = a.get_state()
    nxt = a(x)
    a.set_state(state)
    assert torch.equal(nxt, a(x))


def test_unknown_op_is_user_error_naming_allowed_ops():
    with pytest.raises(UserError, match="'blur'.*allowed ops: color, crop, cutout"):
        dsa(images((2, 1, 8, 8)), "color_blur")
    with pytest.raises(UserError):
        make_augment("crop__flip")
    with pytest.raises(UserError, match="mode"):
        DSAParams(mode="some")


def test_strategy_for_datasets():
    assert "flip" not in parse_strategy(dsa_strategy_for("digits"))
    assert "flip" not in parse_strategy(dsa_strategy_for("mnist"))
    assert dsa_strategy_for("fashion-mnist") == DEFAULT_DSA
    assert dsa_strategy_for("cifar10") == DEFAULT_DSA
    assert dsa_strategy_for("imagefolder:/x/y") == DEFAULT_DSA
    assert make_augment(dsa_strategy_for("multi-index:d=8,k=2")) is None


def test_crop_is_a_zero_filled_integer_shift():
    x = torch.arange(1.0, 65.0).view(1, 1, 8, 8)
    y = dsa(x, "crop", gen(0))
    # Every output pixel is either an input pixel or zero fill, and shifts are ≤ 1 pixel here.
    assert set(y.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    assert (y == 0).sum() <= 15


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(64, 1, 32, 32)
    zeroed = (dsa(x, "cutout", gen(0)) == 0).sum(dim=(1, 2, 3))
    assert zeroed.max() == 16 * 16 and zeroed.min() > 0


def correlated(n: int, shape, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    d = torch.Size(shape).numel()
    mix = torch.randn(d, d, generator=g) / d**0.5
    return (torch.randn(n, d, generator=g) @ mix + 0.3).view(n, *shape)


def test_zca_whitens_and_inverts():
    x = correlated(4000, (3, 4, 4))
    zca = ZCA(eps=1e-6).fit(x)
    y = zca.transform(x).reshape(len(x), -1)
    cov = torch.cov(y.T)
    assert torch.allclose(cov, torch.eye(cov.shape[0]), atol=2e-3)
    assert torch.allclose(zca.inverse(zca.transform(x)), x, atol=1e-4)
    # With MTT's eps the transform shrinks low-variance directions instead of blowing them up.
    assert (
        torch.linalg.eigvalsh(torch.cov(ZCA(0.1).fit(x).transform(x).reshape(4000, -1).T)).max() < 1
    )


def test_zca_safetensors_round_trip_and_gradient():
    x = correlated(500, (1, 6, 6))
    zca = ZCA(eps=0.1).fit(x)
    back = ZCA.from_state(load(save(zca.state_dict())))
    probe = correlated(7, (1, 6, 6), seed=1).requires_grad_(True)
    assert torch.equal(zca.transform(probe), back.transform(probe))
    assert torch.equal(zca.inverse(probe), back.inverse(probe))
    back.transform(probe).sum().backward()
    assert torch.isfinite(probe.grad).all() and probe.grad.abs().sum() > 0
    with pytest.raises(UserError):
        ZCA.from_state({"mean": torch.zeros(3)})
    with pytest.raises(RuntimeError):
        ZCA().transform(probe)
