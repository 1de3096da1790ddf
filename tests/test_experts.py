"""Expert trajectories: cache keys, reuse, extension identical to one long run, workers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from nas_proxy.cli import main
from nas_proxy.data import load_dataset
from nas_proxy.errors import UserError
from nas_proxy.experts import (
    ExpertSettings,
    ensure_experts,
    epoch_file,
    expert_key,
    expert_seed,
    load_trajectory,
    read_manifest,
)

SPEC = "convnet:depth=1,width=4"  # tiny, and DSA on: the augmentation RNG must resume too
SETTINGS = ExpertSettings(batch_size=128)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_key_changes_with_every_setting_but_not_with_counts(digits):
    base = expert_key(digits, SPEC, SETTINGS)
    variants = [
        dataclasses.replace(SETTINGS, **change)
        for change in (
            {"lr": 0.02},
            {"momentum": 0.5},
            {"weight_decay": 1e-4},
            {"batch_size": 64},
            {"augment": None},
            {"augment": "crop"},
            {"zca": True},
            {"optimizer": "adam"},
            {"seed": 1},
        )
    ]
    keys = {expert_key(digits, SPEC, s) for s in variants}
    keys.add(expert_key(digits, "convnet:depth=1,width=8", SETTINGS))
    keys.add(expert_key(dataclasses.replace(digits, checksum="other"), SPEC, SETTINGS))
    assert base not in keys and len(keys) == len(variants) + 2
    # the canonical spec, not its spelling, decides
    assert expert_key(digits, "convnet:width=4,depth=1", SETTINGS) == base
    assert expert_seed(0, 1) != expert_seed(0, 2) != expert_seed(1, 1)


def test_reuse_then_extend_equals_one_long_run(digits, tmp_path):
    short = ensure_experts(digits, SPEC, 1, 2, tmp_path / "a", SETTINGS, device="cpu")
    assert not short.reused
    first = epoch_file(short.dir, 0, 2)
    mtime = first.stat().st_mtime_ns
    again = ensure_experts(digits, SPEC, 1, 2, tmp_path / "a", SETTINGS, device="cpu")
    assert again.reused and again.key == short.key and first.stat().st_mtime_ns == mtime

    # more epochs and more experts: only the missing part is trained
    extended = ensure_experts(digits, SPEC, 2, 3, tmp_path / "a", SETTINGS, device="cpu")
    assert not extended.reused and first.stat().st_mtime_ns == mtime
    manifest = read_manifest(extended.dir)
    assert {k: v["epochs"] for k, v in manifest["experts"].items()} == {"0": 3, "1": 3}
    assert len(manifest["experts"]["0"]["val_accuracy"]) == 3

    straight = ensure_experts(digits, SPEC, 1, 3, tmp_path / "b", SETTINGS, device="cpu")
    for epoch in range(4):
        a = load_trajectory(tmp_path / "a", extended.key, 0, epoch)
        b = load_trajectory(tmp_path / "b", straight.key, 0, epoch)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs"
    other = load_trajectory(tmp_path / "a", extended.key, 1, 3)
    assert not torch.equal(other["classifier.weight"], a["classifier.weight"])


def test_incompatible_key_folder_is_refused(digits, tmp_path):
    cache = ensure_experts(digits, SPEC, 1, 1, tmp_path, SETTINGS, device="cpu")
    ensure_experts(digits, SPEC, 1, 1, cache.dir, SETTINGS, device="cpu")  # its own key: fine
    with pytest.raises(UserError, match="other settings.*lr"):
        ensure_experts(
            digits, SPEC, 1, 1, cache.dir, dataclasses.replace(SETTINGS, lr=0.02), device="cpu"
        )
    with pytest.raises(UserError, match="no such expert snapshot"):
        load_trajectory(tmp_path, cache.key, 0, 5)


def test_zca_experts_and_parallel_workers_match_serial(digits, tmp_path):
    settings = dataclasses.replace(SETTINGS, zca=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 workers on 2 cores: same float summation order
    try:
        serial = ensure_experts(digits, SPEC, 2, 1, tmp_path / "s", settings, device="cpu")
    finally:
        torch.set_num_threads(threads)
    parallel = ensure_experts(digits, SPEC, 2, 1, tmp_path / "p", settings, device="cpu", workers=2)
    assert serial.zca is not None and serial.settings["zca"] == {"eps": 0.1}
    for i in range(2):
        a = load_trajectory(serial.root, serial.key, i, 1)
        b = load_trajectory(parallel.root, parallel.key, i, 1)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_json_keys_and_reuse(tmp_path):
    args = [
        "experts",
        "--dataset",
        "digits",
        "--arch",
        SPEC,
        "--num-experts",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--json",
    ]
    runs = [CliRunner().invoke(main, args) for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0], runs[0].output
    results = [json.loads(r.stdout) for r in runs]
    assert set(results[0]) >= {"dir", "key", "experts", "epochs", "reused", "wall_s"}
    assert [r["reused"] for r in results] == [False, True]
    assert CliRunner().invoke(main, [*args, "--epochs", "0"]).exit_code == 2
