"""Promotion across fidelities on digits (order, budgets, kill -9, two processes) and the replay
simulator on a hand-made table."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nas_proxy.errors import UserError
from nas_proxy.rank.candidates import study_trials
from nas_proxy.search import open_study, run_search
from nas_proxy.search.promote import parse_stage, proxy_ranked
from nas_proxy.search.replay import (
    Fidelity,
    Stage,
    promoted_count,
    replay,
    run_policy,
    single,
    staged,
)
from nas_proxy.study_records import promoted_scores

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
families:
  convnet:
    depth: {int: [1, 2]}
    width: [4, 8, 16]
    norm: [none, batch]
"""
ENV = {**os.environ, "NAS_PROXY_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, random_digits_proxy) -> Path:
    return random_digits_proxy(tmp_path_factory.mktemp("proxy") / "digits-random", 5)


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _search(proxy, space, out, promote, **kw):
    kw = {"trials": 6, "epochs": 1, "device": "cpu", "seed": 0, "pruner": "none", **kw}
    return run_search(proxy, space, out, promote=promote, **kw)


def test_parse_stage_accepts_fractions_counts_budgets_and_refuses_the_rest():
    s = parse_stage("short:epochs=1,top=0.2")
    assert (s.name, s.epochs, s.top, s.budget_s) == ("short", 1, 0.2, None)
    assert parse_stage("full:epochs=15,top=3,budget=600").budget_s == 600
    assert parse_stage("s:epochs=1,top=1.0").top == 1.0 and parse_stage("s:epochs=1,top=1").top == 1
    bad_stages = ("short", "short:epochs=1", "s:epochs=0,top=1", "s:epochs=1,top=1.5", "s:top=x")
    for bad in (*bad_stages, "s:epochs=1,top=0", "s:epochs=1,top=2,budget=-1", "s:epochs=1,lr=1"):
        with pytest.raises(UserError):
            parse_stage(bad)


def test_bad_promote_flag_is_one_line_and_exit_2(proxy, space, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "nas_proxy", "search", "--proxy", str(proxy), "--space",
         str(space), "--out", str(tmp_path / "o"), "--promote", "short:epochs=1,top=zero"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "--promote" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_promotion_order_budgets_pick_and_rerun_trains_nothing(proxy, space, tmp_path):
    out = tmp_path / "s"
    stages = ["short:epochs=1,top=0.5", "full:epochs=2,top=1"]
    res = _search(proxy, space, out, stages)
    study = open_study(res["storage"], res["study"])
    ranked = proxy_ranked(study)
    records = promoted_scores(study)
    half = math.ceil(0.5 * len(ranked))
    # short: exactly the best half by proxy score; full: the best of those by short score
    assert set(records[1]) == {n for n, _, _ in ranked[:half]}
    best_short = max(records[1], key=lambda n: (records[1][n]["score"], -n))
    assert set(records[2]) == {best_short}
    promo = res["promotion"]
    assert promo["pick"]["number"] == best_short and promo["trained_now"] == half + 1
    assert set(promo["pick"]["scores"]) == {"proxy", "short", "full"}
    assert [r["trained"] for r in promo["stages"]] == [len(ranked), half, 1]
    assert all(r["cost_s"] > 0 for r in promo["stages"][1:])
    csv = pd.read_csv(res["trials_csv"]).set_index("number")
    assert csv.loc[best_short, "real_score@2"] == pytest.approx(records[2][best_short]["score"])
    # rank reads the real-data scores promotion paid for
    by_trial = {c.trial: c for c in study_trials(study)}
    assert by_trial[best_short].promoted[2][0] == records[2][best_short]["score"]
    # a rerun finds every stage finished: nothing trains again, the records stay as they were
    again = _search(proxy, space, out, stages)
    assert again["promotion"]["trained_now"] == 0
    assert promoted_scores(open_study(res["storage"], res["study"])) == records
    # a stage's budget in seconds stops it after the candidate that spends it
    out2 = tmp_path / "b"
    res2 = _search(proxy, space, out2, ["short:epochs=1,top=1.0,budget=0.001"])
    assert res2["promotion"]["stages"][1]["trained"] == 1


def _cli(proxy, space, out, *promote) -> list[str]:
    flags = [f"--promote={p}" for p in promote]
    return [sys.executable, "-m", "nas_proxy", "search", "--proxy", str(proxy), "--space",
            str(space), "--out", str(out), "--trials", "6", "--epochs", "1", "--pruner", "none",
            "--device", "cpu", "--json", *flags]  # fmt: skip


def test_rerun_after_kill_9_continues_the_stage_and_trains_nothing_twice(proxy, space, tmp_path):
    out = tmp_path / "k"
    stage = "short:epochs=2,top=1.0"
    p = subprocess.Popen(
        _cli(proxy, space, out, stage), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    storage = f"sqlite:///{out / 'study.db'}"
    deadline, first = time.monotonic() + 240, {}
    while time.monotonic() < deadline and p.poll() is None and not first:
        time.sleep(0.1)
        try:
            first = promoted_scores(open_study(storage)).get(2, {})
        except UserError:  # not created yet
            continue
    assert p.poll() is None and first, "the search ended before promotion could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    study = open_study(storage)
    n_candidates = len(proxy_ranked(study))
    done_before = promoted_scores(study).get(2, {})
    assert len(done_before) < n_candidates
    rerun = subprocess.run(
        _cli(proxy, space, out, stage), cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    res = json.loads(rerun.stdout)
    after = promoted_scores(open_study(storage))[2]
    assert set(after) == {n for n, _, _ in proxy_ranked(open_study(storage))}
    assert all(after[n] == done_before[n] for n in done_before)  # finished ones not retrained
    assert res["promotion"]["trained_now"] == len(after) - len(done_before)


def test_two_processes_on_one_study_promote_each_candidate_once(proxy, space, tmp_path):
    url = os.environ.get("NAS_PROXY_TEST_POSTGRES_URL")
    out = tmp_path / "two"
    extra = ["--storage", url, "--study", f"promote-{os.getpid()}-{time.time_ns()}"] if url else []
    stage = "short:epochs=1,top=1.0"
    procs = [
        subprocess.Popen(
            [*_cli(proxy, space, out, stage), *extra],
            cwd=ROOT,
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=400)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout))
    study = open_study(results[0]["storage"] if not url else url, results[0]["study"])
    records = promoted_scores(study)[1]
    assert set(records) == {n for n, _, _ in proxy_ranked(study)}
    assert sum(r["promotion"]["trained_now"] for r in results) == len(records)


# --------------------------------------------------------------------------- replay


def _table() -> dict[str, Fidelity]:
    """Four candidates; full scores 0.90, 0.80, 0.70, 0.95 (candidate 3 is the best), one run
    each. The proxy ranks 0 best and 3 second; short training ranks 3 best. Costs: proxy 0,
    short 0.1 of a full training, full 1."""

    def fid(scores, cost):
        s = np.array(scores, dtype=float)[:, None]
        return Fidelity(s, np.full_like(s, cost))

    return {
        "proxy": fid([0.9, 0.1, 0.2, 0.8], 0.0),
        "short": fid([0.5, 0.4, 0.3, 0.6], 10.0),
        "full": fid([0.90, 0.80, 0.70, 0.95], 100.0),
    }


def test_replay_staged_policy_finds_the_best_and_single_fidelities_do_not():
    assert [promoted_count(t, 5) for t in (0.5, 1.0, 0.01, 3, 9, None)] == [3, 5, 1, 3, 5, 5]
    fid = _table()
    observed = {k: (f.scores[:, 0], f.costs[:, 0] / 100.0) for k, f in fid.items()}
    order = np.array([1, 2, 0, 3])
    two = staged(
        "proxy>short top 2>full top 1", [Stage("proxy"), Stage("short", 2), Stage("full", 1)]
    )
    # proxy screens all (free); short trains 0 and 3 (0.2); full trains 3 (best short): 1.2
    assert run_policy(two, order, observed, budget=1.2) == (3, pytest.approx(1.2))
    # one unit short of the full stage: the pick is the best at the short stage, still 3
    assert run_policy(two, order, observed, budget=1.0)[0] == 3
    # the proxy alone picks candidate 0 at no cost; full training in this order picks 1 then 2
    assert run_policy(single("proxy"), order, observed, budget=1.0) == (0, 0.0)
    assert run_policy(single("full"), order, observed, budget=2.0) == (1, pytest.approx(2.0))
    rows = replay(fid, [single("proxy"), two, single("full")], [1.2, 4.0], replays=200, seed=0)
    by = {(r["policy"], r["budget"]): r for r in rows}
    assert by[("proxy only", 1.2)]["regret_mean"] == pytest.approx(0.05)
    assert by[(two.name, 1.2)]["regret_mean"] == 0.0 and by[(two.name, 1.2)]["regret_std"] == 0.0
    assert by[("full only", 4.0)]["regret_mean"] == 0.0  # a budget that trains every candidate
    # one full training of a random candidate: mean regret over the four equally likely picks
    assert by[("full only", 1.2)]["regret_mean"] == pytest.approx(0.125, abs=0.03)


def test_replay_draws_a_shared_run_once_for_every_candidate():
    """Two proxies (columns) that each rank a different candidate first: with ``shared`` a
    replay sees one proxy, so the proxy's pick is always that proxy's favourite (0 or 3) and
    never a mix of the two; per-candidate draws can mix them and pick 1 or 2 as well."""
    scores = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    full = Fidelity(np.array([[0.9], [0.5], [0.5], [1.0]]), np.full((4, 1), 1.0))
    picks = {}
    for shared in (True, False):
        fid = {"proxy": Fidelity(scores, np.zeros_like(scores), shared=shared), "full": full}
        rows = replay(fid, [single("proxy")], [1.0], replays=400, seed=0)
        picks[shared] = rows[0]
    # shared: half the replays pick 0 (regret 0.1), half pick 3 (regret 0)
    assert picks[True]["regret_mean"] == pytest.approx(0.05, abs=0.02)
    assert picks[True]["regret_p90"] == pytest.approx(0.1)
    # mixed draws sometimes put 1 or 2 on top (regret 0.5)
    assert picks[False]["regret_mean"] > picks[True]["regret_mean"] + 0.05
