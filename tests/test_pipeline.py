"""``nas-proxy pipeline``: experts → distill → search → rank on digits with a tiny budget.

The session's one pipeline run is shared with the notebook tests (``tiny_pipeline``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nas_proxy.cli import main

# Every budget at its minimum that still exercises each stage.
TINY = [
    "--iterations",
    "3",
    "--num-experts",
    "1",
    "--syn-steps",
    "3",
    "--expert-epochs",
    "1",
    "--max-start-epoch",
    "0",
    "--trials",
    "3",
    "--search-epochs",
    "3",
    "--sample",
    "3",
    "--top-k",
    "1",
    "--rank-epochs",
    "1",
    "--zero-cost",
    "params,naswot",
    "--device",
    "cpu",
]

# A small corner of the ConvNet space: the test is about the plumbing, not the search.
SPACE = """\
description: tiny ConvNets for the pipeline test
families:
  convnet:
    depth: {int: [1, 2]}
    width: [8, 16]
    norm: [instance, batch]
    act: [relu, tanh]
"""

_RUN: dict[str, object] = {}  # one run per session, whichever test module asks first


def run_tiny_pipeline(root: Path) -> dict[str, object]:
    if not _RUN:
        out = root / "quickstart"
        space = root / "tiny.yaml"
        space.write_text(SPACE)
        res = CliRunner().invoke(
            main,
            [
                "pipeline",
                "--dataset",
                "digits",
                "--out",
                str(out),
                "--space",
                str(space),
                *TINY,
                "--json",
            ],
        )
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        assert res.exit_code == 0, res.stderr
        _RUN.update(out=out, result=json.loads(res.stdout), stderr=res.stderr)
    return _RUN


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    import os

    os.environ.setdefault("NAS_PROXY_NO_PROGRESS", "1")
    return run_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))  # one torch thread: --threads


def test_pipeline_json_has_every_stage(tiny_pipeline):
    result = tiny_pipeline["result"]
    for stage in ("experts", "distill", "search", "rank"):
        assert stage in result, stage
    assert result["distill"]["method"] == "mtt"
    assert result["distill"]["baselines"]["random"]["method"] == "random"
    assert result["search"]["complete"] == 3  # no pruner: every trial has a final score
    rank = result["rank"]
    for key in ("n", "spearman", "spearman_ci", "kendall", "top_k_overlap", "regret", "report"):
        assert key in rank
    names = [p["name"] for p in rank["proxies"]]
    assert names[0] == "mtt (search)" and "random" in names and "naswot" in names
    # The proxy's cost includes its share of the distillation (experts included).
    mtt = rank["proxies"][0]
    # proxy.json records the build cost when the proxy is saved, a few ms before the summary's.
    assert mtt["amortized_s"] == pytest.approx(result["distill"]["wall_s"], abs=1.0)
    assert mtt["amortized_s"] > 0.5 * result["distill"]["wall_s"]


def test_pipeline_writes_report_and_says_where(tiny_pipeline):
    out = tiny_pipeline["out"]
    result = tiny_pipeline["result"]
    assert Path(result["report"]).is_file()
    assert (out / "pipeline.json").is_file() and (out / "rank" / "report.md").is_file()
    assert f"the report is {result['report']}" in tiny_pipeline["stderr"]
    assert json.loads((out / "pipeline.json").read_text())["report"] == result["report"]


def test_index_links_every_stage_and_nothing_is_broken(tiny_pipeline):
    """The HTML check of issue 17 (tests/html_links.py: parsed, as no browser installs here)."""
    from html_links import check_page

    out = tiny_pipeline["out"]
    result = tiny_pipeline["result"]
    assert result["index"] == str(out / "index.html")
    targets = {t for _, t in check_page(out / "index.html")}
    experts = {p.relative_to(out).as_posix() for p in (out / "experts").glob("*/manifest.json")}
    assert experts and experts <= targets
    assert {"mtt/grid.png", "random/grid.png", "search/report.html", "rank/report.html"} <= targets
    assert {f"search/{name}.png" for name in result["search"]["plots"]} <= targets
    assert "search/optimization_history.png" in targets
    for report in ("search/report.html", "rank/report.html"):
        check_page(out / report, standalone=True)


def test_rank_scores_show_as_trials_of_the_full_sibling_study(tiny_pipeline):
    from nas_proxy.search import full_scores, open_study
    from nas_proxy.study_records import real_studies

    search = tiny_pipeline["result"]["search"]
    study = open_study(search["storage"], search["study"])
    assert real_studies(study) == [f"{search['study']}:full"]
    sibling = open_study(search["storage"], f"{search['study']}:full")
    scores = full_scores(study)
    assert scores and {t.user_attrs["source_trial"]: t.value for t in sibling.trials} == scores
