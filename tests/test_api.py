"""The public Python API: nas_proxy.distill / search / rank on digits with tiny budgets."""

from __future__ import annotations

import json

import pytest

import nas_proxy
from nas_proxy.errors import UserError

TINY_SPACE = """\
description: two tiny MLPs
families:
  mlp:
    hidden: [8, 16]
"""


def test_stage_calls_are_keyword_only_and_survive_submodule_imports():
    import nas_proxy.distill.options  # the import system sets nas_proxy.distill to the module
    import nas_proxy.rank.metrics

    assert callable(nas_proxy.distill) and callable(nas_proxy.rank)
    assert nas_proxy.distill.METHODS and nas_proxy.rank.spearman  # still the packages
    with pytest.raises(TypeError):
        nas_proxy.distill("digits", 2, "out")


def test_distill_refuses_a_foreign_option_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--iterations is not an option of --method random"):
        nas_proxy.distill(ipc=2, out=tmp_path / "p", method="random", options={"iterations": 3})
    assert not (tmp_path / "p").exists()


def test_distill_search_rank_chain(tmp_path):
    proxy = tmp_path / "proxy"
    made = nas_proxy.distill(ipc=3, out=proxy, method="random", options={"dsa": "none"}, seed=1)
    assert made["method"] == "random" and made["images"] == 30
    assert json.loads((proxy / "proxy.json").read_text())["method"] == "random"

    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    found = nas_proxy.search(
        proxy=proxy, space=space, out=tmp_path / "s", trials=2, epochs=2, device="cpu"
    )
    assert found["trials"] == 2 and found["complete"] == 2

    (tmp_path / "c.yaml").write_text("- mlp:hidden=8\n- mlp:hidden=16\n- mlp:hidden=32\n")
    summary = nas_proxy.rank(
        out=tmp_path / "r",
        candidates=tmp_path / "c.yaml",
        proxies=[proxy],
        recipe={"epochs": 1},
        proxy_overrides={"epochs": 5},
        ceiling_seeds=1,
        zero_cost=["params"],
        short_match=False,
        n_boot=0,
        device="cpu",
    )
    assert summary["n"] == 3 and summary["main_proxy"] == "random"
    assert [p["name"] for p in summary["proxies"]] == ["random", "params"]
    assert summary["full"]["seeds"] == [0] and (tmp_path / "r" / "report.md").is_file()


def test_train_architecture_saves_weights_that_reproduce_its_test_accuracy(tmp_path):
    from nas_proxy.data import load_dataset
    from nas_proxy.io import load_tensors
    from nas_proxy.models import build_model
    from nas_proxy.recipe import TrainConfig
    from nas_proxy.train import evaluate, train_architecture

    data = load_dataset("digits")
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=128, recalibrate_norm=False, seed=3)
    result = train_architecture("mlp:hidden=32", data, cfg, device="cpu", out=tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["config"] == cfg.to_dict() and len(saved["history"]) == 2
    model = build_model("mlp:hidden=32", data.shape, data.num_classes)
    model.load_state_dict(load_tensors(tmp_path / "model.safetensors"))
    accuracy, _ = evaluate(model, data.test_x, data.test_y, 1024)
    assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-6) and accuracy > 0.5
