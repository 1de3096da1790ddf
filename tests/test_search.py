"""Search: a short study on a digits proxy, constraints, reuse, failures, multi-objective,
kill -9 and resume, two workers on one study (SQLite, and PostgreSQL when a server is given)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from nas_proxy.search import count_trials, open_study, run_search, set_full_score
from nas_proxy.search import trials_dataframe as frame_of

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = """
families:
  convnet:
    depth: {int: [1, 2]}
    width: [4, 8]
    norm: [none, batch]
"""
ATTRS = ("arch", "params", "flops", "proxy_score", "wall_s")
JSON_KEYS = {"study", "storage", "trials", "complete", "pruned", "failed", "best", "trials_csv"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, random_digits_proxy) -> Path:
    """A seeded random real subset of digits, 5 images per class, no augmentation."""
    return random_digits_proxy(tmp_path_factory.mktemp("proxy") / "digits-random", 5)


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


def search(proxy, space, out, **kw):
    kw = {"trials": 3, "epochs": 2, "device": "cpu", "seed": 0, **kw}
    return run_search(proxy, space, out, **kw)


def test_short_search_sets_every_attribute_and_writes_csv(proxy, tiny_space, tmp_path):
    out = tmp_path / "s"
    res = search(proxy, tiny_space, out, trials=6)
    assert JSON_KEYS <= set(res)
    assert res["trials"] == 6 and res["running"] == 0
    assert res["complete"] + res["pruned"] + res["failed"] == 6 and res["complete"] >= 5
    study = open_study(res["storage"], res["study"])
    for t in study.trials:
        assert {"arch", "params", "flops", "worker"} <= set(t.user_attrs)
        if t.state.name == "COMPLETE":
            assert set(ATTRS) <= set(t.user_attrs)
            assert t.value == t.user_attrs["proxy_score"]
            assert t.intermediate_values or "reused_from" in t.user_attrs
    assert res["best"]["arch"] == study.best_trial.user_attrs["arch"]
    csv = pd.read_csv(res["trials_csv"])
    assert list(csv["number"]) == list(range(6))
    assert {"state", "accuracy", *ATTRS, "duration_s", "param_depth"} <= set(csv.columns)

    # The rank stage writes full scores back; trials_dataframe reads them.
    set_full_score(res["storage"], res["study"], 0, 0.5)
    assert frame_of(open_study(res["storage"], res["study"]))["full_score"][0] == 0.5

    # A larger --trials extends the same study.
    res = search(proxy, tiny_space, out, trials=7)
    assert res["trials"] == 7 and len(pd.read_csv(res["trials_csv"])) == 7


def test_constraints_reject_before_training_and_equal_specs_are_reused(proxy, tmp_path):
    space = tmp_path / "one.yaml"
    space.write_text("families:\n  mlp:\n    depth: 1\n    hidden: 16\n")  # one spec only
    res = search(proxy, space, tmp_path / "a", trials=1, max_params=100)
    assert res["pruned"] == 1 and res["rejected"] == 1
    t = open_study(res["storage"], res["study"]).trials[0]
    assert t.user_attrs["prune_reason"].startswith("constraint")
    assert "wall_s" not in t.user_attrs  # never trained

    res = search(proxy, space, tmp_path / "b", trials=3)
    assert res["complete"] == 3 and res["reused"] == 2
    trials = open_study(res["storage"], res["study"]).trials
    assert [t.user_attrs.get("reused_from") for t in trials] == [None, 0, 0]
    assert trials[1].value == trials[0].value and trials[1].user_attrs["wall_s"] == 0.0


def test_grid_over_an_architectures_list_trains_each_spec_once(proxy, tmp_path):
    from nas_proxy.models import parse_spec

    specs = ["mlp:hidden=16", "convnet:depth=1,width=4", "convnet:depth=1,width=8,norm=batch"]
    space = tmp_path / "shortlist.yaml"
    space.write_text("architectures:\n" + "".join(f"  - {s}\n" for s in specs))
    res = search(proxy, space, tmp_path / "s", trials=3, sampler="grid", pruner="none")
    assert res["complete"] == 3 and res.get("reused", 0) == 0
    trials = open_study(res["storage"], res["study"]).trials
    assert sorted(t.user_attrs["arch"] for t in trials) == sorted(str(parse_spec(s)) for s in specs)
    assert all(t.params["arch"] == t.user_attrs["arch"] for t in trials)
    # no pruner reads them, so nothing is evaluated during training: one score, at the end
    # (with a pruner, 2 epochs are scored at epochs 1 and 2)
    assert all(list(t.intermediate_values) == [2] for t in trials)


def test_failing_trials_are_recorded_and_the_study_goes_on(
    proxy, tiny_space, tmp_path, monkeypatch
):
    import nas_proxy.search.objective as objective

    real = objective.train_on_proxy
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "train_on_proxy", flaky)
    res = search(proxy, tiny_space, tmp_path / "s", trials=3, pruner="none")
    assert res["trials"] == 3 and res["failed"] == 1 and res["complete"] == 2
    failed = [t for t in open_study(res["storage"], res["study"]).trials if t.state.name == "FAIL"]
    assert "out of memory" in failed[0].user_attrs["fail_reason"]


def test_multi_objective_returns_the_pareto_front(proxy, tiny_space, tmp_path):
    res = search(
        proxy, tiny_space, tmp_path / "s", trials=3, epochs=1, objectives="accuracy,params"
    )
    assert res["complete"] == 3 and res["pruner"] == "none" and res["sampler"] == "nsga2"
    assert res["pareto"] and {"number", "arch", "accuracy", "params"} <= set(res["pareto"][0])
    with pytest.raises(Exception, match="cannot prune multi-objective"):
        search(proxy, tiny_space, tmp_path / "t", objectives="accuracy,flops", pruner="median")


def cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``nas-proxy search ARGS`` through the console entry point, in this process."""
    from nas_proxy.cli import run

    monkeypatch.setattr(sys, "argv", ["nas-proxy", "search", *args])
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_user_error_exits_2_with_one_line(tmp_path, proxy, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("families:\n  convnet:\n    depth: {int: [3, 1]}\n")
    code, out, err = cli_in_process(
        monkeypatch,
        capsys,
        "--proxy",
        str(proxy),
        "--space",
        str(bad),
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and f"{bad}:3:" in err


def test_kill_9_then_rerun_reaches_the_count_with_nothing_running(
    proxy, tiny_space, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "s"
    args = (
        "--proxy",
        str(proxy),
        "--space",
        str(tiny_space),
        "--out",
        str(out),
        "--trials",
        "3",
        # Long enough (about a second per trial) that the kill lands inside a trial: with a
        # few epochs a trial ends within the poll interval and the kill can fall between two.
        "--epochs",
        "300",
        "--device",
        "cpu",
        "--json",  # the default pruner (median) never prunes the first 5 trials, but it makes
    )  # trials report their evaluations, which the loop below waits for
    env = {**os.environ, "NAS_PROXY_NO_PROGRESS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "nas_proxy", "search", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.monotonic() + 180
    study = None
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
        try:
            study = study or open_study(storage)
        except Exception:  # not created yet
            continue
        c = count_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # mid-training: one finished, the next has reported its first evaluation (of ten)
        if c.finished >= 1 and len(running) == 1 and running[0].intermediate_values:
            break
    assert p.poll() is None, "the search ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = count_trials(open_study(storage))
    assert before.running == 1 and before.finished < 3

    code, stdout, err = cli_in_process(monkeypatch, capsys, *args)  # the same command again
    assert code == 0, err
    res = json.loads(stdout)
    assert JSON_KEYS <= set(res)
    assert res["trials"] == 3 and res["running"] == 0 and res["requeued"] == 1
    states = [t.state.name for t in open_study(storage).trials]
    assert "RUNNING" not in states and "WAITING" not in states


def check_two_workers(proxy, space, out, storage=None, study="nas-proxy"):
    res = search(
        proxy, space, out, trials=6, workers=2, storage=storage, study_name=study, pruner="none"
    )
    assert res["trials"] == 6 and res["complete"] == 6 and res["running"] == 0
    trials = open_study(storage or res["storage"], study).trials
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none duplicated
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert len(pd.read_csv(res["trials_csv"])) == 6


def test_two_workers_share_one_study_exactly(proxy, tiny_space, tmp_path):
    check_two_workers(proxy, tiny_space, tmp_path / "s")


@pytest.mark.skipif(
    not os.environ.get("NAS_PROXY_TEST_POSTGRES_URL"),
    reason="NAS_PROXY_TEST_POSTGRES_URL is not set: no PostgreSQL server "
    "(.ci/postgres.sh starts one and sets it)",
)
def test_two_workers_on_postgresql(proxy, tiny_space, tmp_path):
    url = os.environ["NAS_PROXY_TEST_POSTGRES_URL"]
    check_two_workers(
        proxy, tiny_space, tmp_path / "s", storage=url, study=f"test-{os.getpid()}-{time.time_ns()}"
    )
