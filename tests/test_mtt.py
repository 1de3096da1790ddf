"""Trajectory matching: the unrolled inner loop's gradients, learning, resume, divergence, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from nas_proxy.augment import dsa
from nas_proxy.cli import main
from nas_proxy.data import load_dataset
from nas_proxy.distill import distill, mtt
from nas_proxy.distill.common import DistillDiverged, read_checkpoint
from nas_proxy.distill.presets import PRESETS, resolve_options
from nas_proxy.distill.proxy import load_proxy
from nas_proxy.distill.unroll import unroll_sgd
from nas_proxy.errors import UserError
from nas_proxy.io import read_json
from nas_proxy.models import build_model

CPU = torch.device("cpu")
ARCH = "convnet:depth=1,width=4"
# Tiny settings: 2 experts of 3 epochs, 4 inner steps, a few iterations.
TINY = {
    "arch": [ARCH],
    "num_experts": 2,
    "expert_epochs": 1,
    "max_start_epoch": 2,
    "syn_steps": 4,
    "batch_syn": 10,
    "iterations": 4,
    "checkpoint_every": 2,
    "expert_batch_size": 128,
    "lr_img": 100.0,
    "eval_epochs": 5,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def experts_root(tmp_path_factory):
    return tmp_path_factory.mktemp("experts")


@pytest.fixture
def no_grid(monkeypatch):
    """Drawing PNGs costs about a second each; most tests only look at tensors."""
    monkeypatch.setattr(mtt, "save_image_grid", lambda *a, path=None, **k: a[2])
    monkeypatch.setattr(mtt.shutil, "copyfile", lambda *a: None)


def _problem(spec: str, shape: tuple[int, ...], seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(spec, shape, 3).double().train()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    x = torch.randn(9, *shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 3, dtype=torch.float64).softmax(1).requires_grad_()
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    target = {k: v.detach() + 0.05 for k, v in params.items()}
    return model, params, x, y, lr, target


def _matching_loss(model, params, x, y, lr, target, *, memory_bounded=False, augment=None):
    g = torch.Generator().manual_seed(1)
    out = unroll_sgd(
        model,
        params,
        x,
        y,
        lr,
        steps=5,
        batch_size=4,
        generator=g,
        augment=augment,
        memory_bounded=memory_bounded,
    )
    return sum(((out[k] - target[k]) ** 2).sum() for k in out), g.get_state()


def test_unroll_gradient_matches_finite_differences():
    model, params, x, y, lr, target = _problem("mlp:hidden=6", (5,))
    inputs = [x, y, lr, *params.values()]
    loss, _ = _matching_loss(model, params, x, y, lr, target)
    grads = torch.autograd.grad(loss, inputs)
    g = torch.Generator().manual_seed(2)
    directions = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in inputs]
    eps = 1e-6

    def shifted(sign: float):
        moved = [(t + sign * eps * d).detach() for t, d in zip(inputs, directions, strict=True)]
        p = dict(zip(params, moved[3:], strict=True))
        with torch.no_grad():  # also exercises the graph-free path
            return _matching_loss(model, p, moved[0], moved[1], moved[2], target)[0]

    numeric = (shifted(1) - shifted(-1)) / (2 * eps)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, directions, strict=True))
    assert torch.allclose(numeric, analytic, rtol=1e-6, atol=1e-9), (numeric, analytic)


def test_memory_bounded_gradient_equals_full_graph():
    model, params, x, y, lr, target = _problem(ARCH, (1, 8, 8))
    x = torch.randn(9, 1, 8, 8, dtype=torch.float64, requires_grad=True)

    def augment(batch, gen):
        return dsa(batch, "color_crop_cutout_scale_rotate", generator=gen)

    inputs = [x, y, lr, *params.values()]
    results = []
    for bounded in (False, True):
        loss, state = _matching_loss(
            model, params, x, y, lr, target, memory_bounded=bounded, augment=augment
        )
        results.append((loss, state, torch.autograd.grad(loss, inputs)))
    (l1, s1, g1), (l2, s2, g2) = results
    assert torch.equal(s1, s2)  # both modes consume the generator identically
    assert torch.allclose(l1, l2, rtol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_bf16_inner_steps_follow_fp32():
    """Mixed precision changes the numbers (autocast really ran) but not the direction of the
    image gradient, in either mode."""
    torch.manual_seed(0)
    shape = (1, 16, 16)
    model = build_model("convnet:depth=2,width=16", shape, 4).train()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(24, *shape, requires_grad=True)
    y = torch.arange(4).repeat_interleave(6)
    lr = torch.tensor(0.05, requires_grad=True)
    grads = {}
    for name, amp, bounded in [
        ("fp32", None, False),
        ("bf16", torch.bfloat16, False),
        ("bf16-bounded", torch.bfloat16, True),
    ]:
        out = unroll_sgd(
            model,
            params,
            x,
            y,
            lr,
            steps=4,
            batch_size=12,
            generator=torch.Generator().manual_seed(3),
            memory_bounded=bounded,
            amp_dtype=amp,
        )
        assert all(v.dtype == torch.float32 for v in out.values())
        loss = sum(((out[k] - target[k]) ** 2).sum() for k in out)
        grads[name] = torch.autograd.grad(loss, x)[0].flatten()

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0).item()

    assert not torch.allclose(grads["bf16"], grads["fp32"], rtol=1e-4, atol=0)
    assert cos("bf16", "fp32") > 0.98
    assert cos("bf16-bounded", "bf16") > 0.999


def test_precision_auto_follows_native_bf16(monkeypatch, digits):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert mtt.resolve_precision("auto", CPU) == "fp32"
    assert mtt.resolve_precision("bf16", CPU) == "bf16"  # explicit choices are kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert mtt.resolve_precision("auto", CPU) == "bf16"
    # the config (and so a run's fingerprint) holds the resolved value, never "auto"
    assert mtt.mtt_config(digits, 1, {"precision": "auto"}, CPU).precision == "bf16"


def test_mtt_loss_decreases_and_writes_a_proxy(digits, experts_root, tmp_path):
    # One expert, one start epoch: every iteration matches the same segment.
    opts = {
        **TINY,
        "experts": experts_root,
        "num_experts": 1,
        "max_start_epoch": 0,
        "iterations": 12,
        "checkpoint_every": 12,
        "lr_img": 1000.0,
    }
    summary = distill("mtt", digits, 2, tmp_path / "p", opts, seed=0, device=CPU)
    for key in ("dir", "method", "ipc", "images", "iterations", "wall_s"):
        assert key in summary
    losses = [
        float(r.split(",")[1]) for r in (tmp_path / "p" / "log.csv").read_text().splitlines()[1:]
    ]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    proxy = load_proxy(summary["dir"])
    assert proxy.method == "mtt" and proxy.images.shape == (20, 1, 8, 8)
    assert proxy.lr == pytest.approx(summary["lr"]) and proxy.lr > 0
    assert proxy.recipe["epochs"] == 5 and proxy.recipe["augment"]
    assert proxy.meta["expert_key"] == summary["experts"][0]["key"]
    assert (tmp_path / "p" / "grid.png").is_file()
    assert (tmp_path / "p" / "grid_iter_0012.png").is_file()


def test_resume_after_kill_equals_uninterrupted_run(
    digits, experts_root, tmp_path, no_grid, monkeypatch
):
    opts = {**TINY, "experts": experts_root, "soft_labels": True, "iterations": 6}
    distill("mtt", digits, 2, tmp_path / "once", opts, seed=3, device=CPU)

    calls = {"n": 0}
    real_unroll = mtt.unroll_sgd

    def dies_at_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_unroll(*args, **kwargs)

    monkeypatch.setattr(mtt, "unroll_sgd", dies_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        distill("mtt", digits, 2, tmp_path / "twice", opts, seed=3, device=CPU)
    assert read_checkpoint(tmp_path / "twice")[1]["iteration"] == 4
    monkeypatch.setattr(mtt, "unroll_sgd", real_unroll)
    summary = distill("mtt", digits, 2, tmp_path / "twice", opts, seed=3, device=CPU)
    assert summary["resumed_from"] == 4

    a, b = load_proxy(tmp_path / "once"), load_proxy(tmp_path / "twice")
    assert torch.equal(a.images, b.images) and a.lr == b.lr
    assert a.labels.dtype == torch.float32 and torch.equal(a.labels, b.labels)
    assert torch.allclose(a.labels.sum(1), torch.ones(len(a.labels)))
    # a finished run extends to more iterations instead of starting over
    more = distill(
        "mtt", digits, 2, tmp_path / "twice", {**opts, "iterations": 7}, seed=3, device=CPU
    )
    assert more["resumed_from"] == 6
    with pytest.raises(UserError, match="other settings"):
        distill("mtt", digits, 2, tmp_path / "twice", {**opts, "lr_img": 5.0}, seed=3, device=CPU)


def test_absurd_image_lr_stops_with_a_clear_message(digits, experts_root, tmp_path, no_grid):
    opts = {**TINY, "experts": experts_root, "lr_img": 1e30, "iterations": 6}
    with pytest.raises(DistillDiverged, match="not finite|learning rate"):
        distill("mtt", digits, 2, tmp_path / "nan", opts, seed=0, device=CPU)
    assert not (tmp_path / "nan" / "proxy.json").exists()


def test_several_architectures_take_turns(digits, experts_root, tmp_path, no_grid):
    opts = {
        **TINY,
        "experts": experts_root,
        "arch": [ARCH, "mlp:hidden=16"],
        "memory_bounded": True,
    }
    summary = distill("mtt", digits, 2, tmp_path / "multi", opts, seed=0, device=CPU)
    assert len({e["key"] for e in summary["experts"]}) == 2
    archs = [r.split(",")[4] for r in (tmp_path / "multi" / "log.csv").read_text().splitlines()]
    assert archs[1:] == ["0", "1", "0", "1"]
    assert "," in load_proxy(summary["dir"]).meta["expert_key"]


def test_options_merge_and_errors(digits, tmp_path):
    o = resolve_options("cifar10", 10, {"preset": "cifar10-ipc10", "syn_steps": 7, "zca": None})
    assert o["syn_steps"] == 7 and o["zca"] is True and o["lr_img"] == 1000.0
    assert resolve_options("digits", 10, {})["arch"] == ["convnet:depth=2,width=32"]
    assert {"cifar10-ipc1", "cifar10-ipc50", "cifar100-ipc50"} <= set(PRESETS)
    with pytest.raises(UserError, match="unknown; known presets"):
        resolve_options("digits", 10, {"preset": "cifar11-ipc3"})
    with pytest.raises(UserError, match="larger than class"):
        distill("mtt", digits, 1000, tmp_path, {}, seed=0, device=CPU)
    with pytest.raises(UserError, match="unknown; known methods"):
        distill("kip", digits, 1, tmp_path, {}, seed=0, device=CPU)
    with pytest.raises(UserError, match="--precision fp16: expected auto, fp32 or bf16"):
        mtt.mtt_config(digits, 1, {"precision": "fp16"})


def test_cli_distill_tiny_digits(experts_root, tmp_path):
    out = tmp_path / "cli"
    args = [
        "distill",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--out",
        str(out),
        "--arch",
        ARCH,
        "--experts",
        str(experts_root),
        "--iterations",
        "2",
        "--syn-steps",
        "3",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "1",
        "--num-experts",
        "2",
        "--eval-epochs",
        "3",
        "--precision",
        "bf16",
        "--device",
        "cpu",
        "--json",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert {"dir", "method", "ipc", "images", "iterations", "wall_s"} <= set(result)
    assert result["method"] == "mtt" and result["images"] == 10
    assert load_proxy(out).meta["recipe"]["epochs"] == 3
    settings = read_json(out / "proxy.json")["settings"]
    assert settings["syn_steps"] == 3 and settings["precision"] == "bf16"
    # divergence is the user's hyperparameter problem: a UserError (exit 2, one line)
    args[args.index("--out") + 1] = str(tmp_path / "nan")
    res = CliRunner().invoke(main, [*args, "--lr-img", "1e30"])
    assert isinstance(res.exception, UserError) and "checkpoint" in str(res.exception)


def test_hardsigmoid_gates_are_unrolled_and_other_failures_stop_before_experts(
    digits, tmp_path, monkeypatch, no_grid
):
    from nas_proxy.distill.unroll import second_order_error
    from nas_proxy.models import layers

    spec = "timm:mobilenetv3_small_050"  # squeeze-excite gates use nn.Hardsigmoid
    raw = build_model(spec, digits.shape, 10).train()
    assert "hardsigmoid_backward" in second_order_error(raw, digits.shape)
    fixed = layers.twice_differentiable(build_model(spec, digits.shape, 10).train())
    fixed.load_state_dict(raw.state_dict())
    assert second_order_error(fixed, digits.shape) is None
    x = torch.randn(4, *digits.shape)
    torch.testing.assert_close(fixed.eval()(x), raw.eval()(x))

    opts = {**TINY, "arch": [spec], "num_experts": 1, "max_start_epoch": 0, "syn_steps": 2}
    summary = distill(
        "mtt", digits, 1, tmp_path / "p", {**opts, "experts": tmp_path / "e"}, seed=0, device=CPU
    )
    assert load_proxy(summary["dir"]).images.shape[0] == 10

    # Without the replacement torch's own error is caught before any expert trains.
    monkeypatch.setattr(layers, "twice_differentiable", lambda m: m)
    with pytest.raises(UserError, match="second derivative.*hardsigmoid_backward"):
        distill(
            "mtt",
            digits,
            1,
            tmp_path / "q",
            {**opts, "experts": tmp_path / "f"},
            seed=0,
            device=CPU,
        )
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())
