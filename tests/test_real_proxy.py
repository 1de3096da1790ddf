"""Searching on short real training (``--proxy real:DATASET[:steps=N]``): candidates train on the
real training split with the full-data recipe for N steps, exactly as a direct training would;
bad references are one-line errors; a study resumes only on the same budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_proxy.data import load_dataset
from nas_proxy.distill.proxy import REAL_STEPS, parse_real_ref, real_proxy
from nas_proxy.errors import UserError
from nas_proxy.recipe import FULL_DATA
from nas_proxy.search import run_search
from nas_proxy.train import fit

SPECS = ("convnet:depth=1,width=8,norm=batch", "mlp:depth=1,hidden=32")
STEPS = 30


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("architectures:\n" + "".join(f"  - {s}\n" for s in SPECS))
    return path


def test_candidates_train_as_a_direct_run_with_the_full_data_recipe(space, tmp_path):
    res = run_search(
        f"real:digits:steps={STEPS}",
        space,
        tmp_path / "s",
        trials=2,
        sampler="grid",
        pruner="none",
        device="cpu",
    )
    assert res["complete"] == 2
    data = load_dataset("digits")
    cfg = FULL_DATA.replace(max_steps=STEPS, epochs=1, eval_every=0)
    rows = {r["arch"]: r["proxy_score"] for r in pd_rows(tmp_path / "s" / "trials.csv")}
    assert len(rows) == 2
    for arch, score in rows.items():
        _, direct = fit(
            arch,
            data.train_x,
            data.train_y,
            cfg,
            num_classes=data.num_classes,
            device=torch.device("cpu"),
            val=(data.val_x, data.val_y),
            recalibrate_x=data.train_x,
        )
        assert score == pytest.approx(direct.val_accuracy, abs=1e-9)
    # 30 steps of batch 128 learn digits well past chance (10 %); the ConvNet is not an accident
    assert max(rows.values()) > 0.5


def pd_rows(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def test_the_budget_is_steps_by_default_or_epochs():
    proxy = real_proxy("real:digits")
    assert proxy.method == "real" and proxy.data is not None
    assert proxy.train_config().max_steps == REAL_STEPS
    assert proxy.train_config().total_steps(len(proxy.images)) == REAL_STEPS
    two = real_proxy("real:digits:epochs=2,lr=0.1,batch_size=64").train_config()
    assert (two.max_steps, two.epochs, two.lr, two.batch_size) == (None, 2, 0.1, 64)
    assert real_proxy("real:digits:steps=40").fingerprint != proxy.fingerprint
    # a dataset name that holds a colon keeps it; the options are the last part
    assert parse_real_ref("real:imagefolder:/data/pets:steps=5") == (
        "imagefolder:/data/pets",
        {"steps": 5, "epochs": None, "lr": None, "batch_size": None},
    )
    assert parse_real_ref("real:imagefolder:/data/pets")[0] == "imagefolder:/data/pets"


@pytest.mark.parametrize(
    "ref, message",
    [
        ("real:", "expected real:DATASET"),
        ("real:digits:steps=0", "steps takes int >= 1"),
        ("real:digits:steps=5,epochs=1", "not both"),
        ("real:digits:speed=5", "unknown key 'speed'"),
        ("real:nosuch", "unknown dataset 'nosuch'"),
    ],
)
def test_bad_references_are_user_errors(ref, message):
    with pytest.raises(UserError, match=message):
        real_proxy(ref)


def test_cli_exits_2_in_one_line_and_a_study_resumes_only_on_its_budget(
    space, tmp_path, monkeypatch, capsys
):
    from test_search import cli_in_process

    def cli(*args: str) -> tuple[int, str]:
        code, _, err = cli_in_process(monkeypatch, capsys, *args)
        return code, err

    common = ("--space", str(space), "--out", str(tmp_path / "s"), "--trials", "1")
    code, err = cli("--proxy", "real:digits:steps=0", *common)
    assert code == 2 and err.strip().count("\n") == 0 and "steps=" in err
    assert cli("--proxy", "real:digits:steps=10", "--pruner", "none", *common)[0] == 0
    code, err = cli("--proxy", "real:digits:steps=20", "--pruner", "none", *common)
    assert code == 2 and "other settings: proxy_sha256" in err
