"""Rank stage: candidates, zero-cost scores, the cached ground truth, the report, the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas_proxy.cli.common import run as cli_run
from nas_proxy.errors import UserError
from nas_proxy.models import build_model
from nas_proxy.rank import baselines
from nas_proxy.rank.candidates import load_candidates_file

CPU = torch.device("cpu")

# Small, fast candidates that still differ in quality on digits.
CANDIDATES = [
    "mlp:hidden=16",
    "mlp:hidden=64,depth=2",
    "convnet:depth=1,width=8",
    "convnet:depth=2,width=16,norm=batch",
    "convnet:depth=2,width=8,act=tanh,pool=max",
]
SUMMARY_KEYS = (
    "n",
    "spearman",
    "spearman_ci",
    "kendall",
    "top_k_overlap",
    "regret",
    "report",
    "proxies",
    "ceiling",
)
PROXY_KEYS = (
    "name",
    "spearman",
    "spearman_ci",
    "kendall",
    "top_k_overlap",
    "regret",
    "cost_s_per_candidate",
    "speedup",
    "spearman_top",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and a second OpenMP thread that spins while the
    other core is busy (2 shared cores) slows them down by up to 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args: str) -> tuple[int, str, str]:
    """The real entry point in a subprocess: exit code, stdout, stderr as a user sees them."""
    proc = subprocess.run(
        [sys.executable, "-m", "nas_proxy", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NAS_PROXY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
    )
    return proc.returncode, proc.stdout, proc.stderr


def cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process (no second torch import): code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["nas-proxy", *args])
    try:
        cli_run()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A random-subset proxy of digits, a candidates file, and one CLI rank run over them."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill

    root = tmp_path_factory.mktemp("rank")
    distill("random", load_dataset("digits"), 5, root / "random", {}, seed=0, device="cpu")
    cands = root / "cands.yaml"
    cands.write_text("".join(f"- {c}\n" for c in CANDIDATES))
    args = [
        "rank",
        "--candidates",
        str(cands),
        "--proxy",
        str(root / "random"),
        "--proxy-epochs",
        "5",
        "--short-epochs",
        "1",
        "--epochs",
        "2",
        "--bootstrap",
        "200",
        "--device",
        "cpu",
        "--json",
    ]
    code, out, err = cli(*args, "--out", str(root / "first"))
    assert code == 0, err
    return {"root": root, "args": args, "summary": json.loads(out), "stderr": err}


def test_rank_json_keys_and_proxies_side_by_side(digits_run):
    s = digits_run["summary"]
    for key in SUMMARY_KEYS:
        assert key in s
    assert s["n"] == len(CANDIDATES)
    names = [p["name"] for p in s["proxies"]]
    # Matched-cost short training is on by default: the rival the proxy must beat.
    assert names == ["random", "short-1ep", "short=random", *baselines.ZERO_COST]
    assert s["main_proxy"] == "random"
    for p in s["proxies"]:
        for key in PROXY_KEYS:
            assert key in p
        assert p["cost_s_per_candidate"] is not None and p["cost_s_per_candidate"] >= 0
    assert s["spearman"] == s["proxies"][0]["spearman"]
    assert s["ceiling"]["seeds"] == 2 and s["full"]["seeds"] == [0, 1]
    # Never a NaN anywhere in the report object.
    json.dumps(s, allow_nan=False)
    assert s["trained"] == len(CANDIDATES) * (2 + 1 + 1 + 1 + len(baselines.ZERO_COST))
    assert "report:" in digits_run["stderr"]  # the human headline goes to stderr with --json


def test_report_files_and_self_contained_html(digits_run):
    s = digits_run["summary"]
    out = digits_run["root"] / "first"
    for name in (
        "ranks.csv",
        "summary.json",
        "report.md",
        "report.html",
        "scatter.png",
        "cost_vs_rho.png",
    ):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    sources = re.findall(r"""src\s*=\s*["']([^"']*)""", html)
    assert sources and all(src.startswith("data:") for src in sources)
    assert "<link" not in html and "<script" not in html
    assert json.loads((out / "summary.json").read_text())["n"] == s["n"]

    import pandas as pd

    table = pd.read_csv(out / "ranks.csv")
    for col in (
        "arch",
        "family",
        "full_score",
        "full_score_seed0",
        "full_score_seed1",
        "full_rank",
        "proxy_score",
        "proxy_rank",
        "proxy_score:random",
        "proxy_score:synflow",
        "proxy_rank:naswot",
    ):
        assert col in table.columns, col
    assert len(table) == len(CANDIDATES)
    assert np.allclose(
        table["full_score"], table[["full_score_seed0", "full_score_seed1"]].mean(axis=1)
    )
    md = (out / "report.md").read_text()
    assert "| proxy | ρ [95% CI]" in md and "ceiling" in md and "nan" not in md.lower()


def test_cached_ground_truth_is_reused(digits_run, monkeypatch, capsys):
    """A second report over the same candidates trains nothing."""
    code, out, err = cli_in_process(
        monkeypatch, capsys, *digits_run["args"], "--out", str(digits_run["root"] / "second")
    )
    assert code == 0, err
    again = json.loads(out)
    assert again["trained"] == 0
    assert again["reused"] == digits_run["summary"]["trained"]
    assert again["spearman"] == digits_run["summary"]["spearman"]
    assert (
        again["full"]["cost_s_per_candidate"]
        == digits_run["summary"]["full"]["cost_s_per_candidate"]
    )


def _fake_study(storage: str, n: int = 12):
    """A finished study whose trials carry the search stage's attributes (no training)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.set_user_attr("dataset", "digits")
    study.set_user_attr("nas_proxy_settings", {"seed": 0})
    dist = optuna.distributions.IntDistribution(1, 512)
    for i in range(n):
        hidden = 8 + 8 * i
        study.add_trial(
            optuna.trial.create_trial(
                params={"hidden": hidden},
                distributions={"hidden": dist},
                value=i / n,
                user_attrs={
                    "arch": f"mlp:hidden={hidden}",
                    "proxy_score": i / n,
                    "wall_s": 0.5,
                    "params": 0,
                    "flops": 0,
                },
            )
        )
    return study


def test_stratified_sample_from_a_study_covers_the_range(tmp_path):
    from nas_proxy.rank.candidates import sample_study

    study = _fake_study(f"sqlite:///{tmp_path / 'study.db'}")
    chosen = sample_study(study, 5, 2, seed=0)
    scores = sorted(c.proxy_score for c in chosen)
    assert len(chosen) == 5
    assert scores[-2:] == [10 / 12, 11 / 12]  # the top-k always
    assert scores[0] <= 3 / 12  # and the low end of the range, not only the crowded top
    assert [c.trial for c in sample_study(study, 5, 2, seed=0)] == [c.trial for c in chosen]


def test_rank_from_study_writes_full_scores_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAS_PROXY_NO_PROGRESS", "1")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _fake_study(storage)
    code, out, err = cli_in_process(
        monkeypatch,
        capsys,
        "rank",
        "--study",
        "s",
        "--storage",
        storage,
        "--sample",
        "4",
        "--top-k",
        "1",
        "--epochs",
        "1",
        "--zero-cost",
        "params",
        "--bootstrap",
        "100",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "rank"),
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n"] == 4
    assert summary["main_proxy"] == "search"
    # The search trained with seed 0: ground truth skips it (shared initial weights).
    assert summary["full"]["seeds"] == [1, 2]

    from nas_proxy.rank.candidates import load_study

    attrs = load_study(storage, "s").user_attrs
    written = {k: v for k, v in attrs.items() if k.startswith("full_score:")}
    assert len(written) == 4 and all(0 <= v <= 1 for v in written.values())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["rank", "--out", "x"], "--candidates"),
        (
            [
                "rank",
                "--candidates",
                "a.yaml",
                "--study",
                "s",
                "--storage",
                "sqlite:///x.db",
                "--out",
                "x",
            ],
            "exactly one",
        ),
        (["rank", "--study", "s", "--out", "x"], "--storage"),
        (["rank", "--candidates", "/no/such.yaml", "--out", "x"], "/no/such.yaml"),
        (["rank", "--candidates", "CANDS", "--zero-cost", "synflow,magic", "--out", "x"], "magic"),
        (["rank", "--candidates", "CANDS", "--proxy-lr-range", "1,-2", "--out", "x"], "positive"),
        (["rank", "--candidates", "CANDS", "--proxy-lr-range", "a,b", "--out", "x"], "a,b"),
        (["rank", "--candidates", "CANDS", "--ensemble", "--out", "x"], "two or more --proxy"),
    ],
)
def test_user_errors_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    cands = tmp_path / "c.yaml"
    cands.write_text("- mlp:hidden=8\n")
    args = [str(cands) if a == "CANDS" else a for a in args]
    code, _, err = cli_in_process(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], err


def test_candidates_file_names_the_bad_entry(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- mlp:hidden=8\n- convnet:depth=2,colour=red\n")
    with pytest.raises(UserError, match=r"c\.yaml: entry 2.*colour"):
        load_candidates_file(path)
    path.write_text("- mlp:hidden=8\n- mlp:hidden=8,depth=1\n")  # same canonical spec
    assert len(load_candidates_file(path)) == 1
    path.write_text("arch: mlp\n")
    with pytest.raises(UserError, match="list"):
        load_candidates_file(path)


@pytest.mark.parametrize(
    "spec",
    ["convnet:depth=2,width=8,norm=batch", "mlp:hidden=16", "convnet:depth=1,width=4,act=tanh"],
)
def test_zero_cost_scores_are_finite_and_deterministic(spec):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    for name in baselines.ZERO_COST:
        a = baselines.zero_cost_score(name, spec, x, y, num_classes=10, seed=3, device=CPU)
        b = baselines.zero_cost_score(name, spec, x, y, num_classes=10, seed=3, device=CPU)
        assert a["score"] is not None and math.isfinite(a["score"]), name
        assert a["score"] == pytest.approx(b["score"]), name


def test_naswot_prefers_networks_that_separate_inputs():
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, dtype=torch.long)
    torch.manual_seed(0)
    wide = baselines.naswot(build_model("mlp:hidden=256", (1, 8, 8), 10), x, y)
    narrow = baselines.naswot(build_model("mlp:hidden=2", (1, 8, 8), 10), x, y)
    assert wide > narrow


def test_parse_zero_cost():
    assert baselines.parse_zero_cost("none") == []
    assert baselines.parse_zero_cost("grad-norm, NASWOT,params") == ["gradnorm", "naswot", "params"]
    with pytest.raises(UserError, match="unknown score 'nope'"):
        baselines.parse_zero_cost("synflow,nope")


def test_degenerate_report_has_no_nan_with_two_workers(tmp_path):
    """Two candidates and one seed: every correlation is undefined and said so, never NaN.
    Two worker processes share the runs (the parallel path)."""
    from nas_proxy.rank.candidates import Candidate
    from nas_proxy.rank.compare import rank_candidates
    from nas_proxy.rank.ground_truth import DataRef
    from nas_proxy.train import TrainConfig

    cands = [Candidate("mlp:hidden=8", "mlp"), Candidate("mlp:hidden=32", "mlp")]
    s = rank_candidates(
        cands,
        data=DataRef("digits"),
        recipe=TrainConfig(epochs=1),
        out=tmp_path / "r",
        zero_cost=["params"],
        ceiling_seeds=1,
        device="cpu",
        n_boot=50,
        workers=2,
    )
    text = json.dumps(s, allow_nan=False)
    assert s["spearman"] is None and "n=2 < 3" in text
    assert s["ceiling"]["value"] is None
    assert s["trained"] == 4 and s["full"]["failed"] == 0
    assert "nan" not in (tmp_path / "r" / "report.md").read_text().lower()


def test_cli_default_zero_cost_list_matches_the_library():
    from nas_proxy.cli.options import ZERO_COST_DEFAULT

    assert baselines.parse_zero_cost(ZERO_COST_DEFAULT) == list(baselines.ZERO_COST)


def test_load_study_uses_the_search_opener(tmp_path):
    """rank opens studies exactly as search does: its errors name the studies a storage holds,
    and a missing journal file is an error instead of a new empty study."""
    import optuna

    from nas_proxy.rank.candidates import load_study
    from nas_proxy.study_storage import make_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="found", storage=make_storage(url))
    assert load_study(url, "found").study_name == "found"
    with pytest.raises(UserError, match="it has: found"):
        load_study(url, "missing")
    with pytest.raises(UserError, match="journal file not found"):
        load_study(str(tmp_path / "none.log"), "found")
    assert not (tmp_path / "none.log").exists()


def test_equal_settings_train_once_and_keep_each_scorers_name(tmp_path):
    """Two proxies' matched short runs can coincide: one training serves both columns, and a
    later run that reads the shared cache file still files each record under its own scorer."""
    from nas_proxy.data import load_dataset
    from nas_proxy.rank.ground_truth import DataRef, full_scorer, make_jobs, run_jobs
    from nas_proxy.recipe import TrainConfig

    data = DataRef("digits")
    cfg = TrainConfig(epochs=1, batch_size=64, eval_every=0)
    scorers = [full_scorer(cfg, name="short=a"), full_scorer(cfg, name="short=b")]
    specs = ["mlp:hidden=16", "mlp:hidden=32"]
    jobs = make_jobs(scorers, specs, data, load_dataset("digits").checksum, tmp_path, "cpu")
    assert len({j.path for j in jobs}) == 2  # same settings: one cache file per spec

    records, counts = run_jobs(jobs)
    assert counts == {"trained": 2, "reused": 2}
    assert [r["scorer"] for r in records] == ["short=a", "short=a", "short=b", "short=b"]
    assert records[0]["score"] == records[2]["score"] and records[1]["score"] == records[3]["score"]

    again, counts = run_jobs(list(reversed(jobs)))
    assert counts == {"trained": 0, "reused": 4}
    assert [r["scorer"] for r in again] == ["short=b", "short=b", "short=a", "short=a"]
