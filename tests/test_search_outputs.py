"""What a search leaves to look at: Optuna's plots, report.html, study artifacts, callbacks, and
the sibling studies that show real-data scores per trial (a tiny real search on digits)."""

from __future__ import annotations

import optuna
import pytest
from html_links import check_page
from test_search import TINY_SPACE, search

from nas_proxy.search import open_study, set_full_score
from nas_proxy.study_records import real_study_name, record_promoted


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, random_digits_proxy):
    return random_digits_proxy(tmp_path_factory.mktemp("proxy") / "digits-random", 5)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


def artifact_names(study: optuna.Study) -> list[str]:
    return sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study))


def test_search_writes_plots_report_artifacts_and_calls_back(proxy, space, tmp_path):
    out = tmp_path / "s"
    seen: list[tuple[int, str]] = []

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seen.append((trial.number, trial.state.name))

    res = search(proxy, space, out, trials=4, callbacks=[record])
    assert [n for n, _ in seen] == [0, 1, 2, 3]  # once per finished trial, in order
    assert all(state != "RUNNING" for _, state in seen)
    assert set(res["plots"]) == {"optimization_history", "param_importances"}
    assert (out / "optimization_history.png").is_file()
    refs = check_page(out / "report.html", standalone=True)
    assert sum(tag == "img" for tag, _ in refs) == 2
    assert ("a", "trials.csv") in refs

    study = open_study(res["storage"], res["study"])
    assert study.metric_names == ["accuracy"]
    names = artifact_names(study)
    assert {"report.html", "optimization_history.png", "param_importances.png"} <= set(names)
    assert "proxy-grid.png" in names  # the proxy's image grid, beside the trials
    stored = sorted((out / "artifacts").iterdir())
    assert len(stored) == len(names)

    # A rerun that runs no trial changes no file, so nothing is uploaded again.
    seen.clear()
    res = search(proxy, space, out, trials=4, callbacks=[record])
    assert seen == []
    assert artifact_names(open_study(res["storage"], res["study"])) == names
    assert sorted((out / "artifacts").iterdir()) == stored

    # One more trial: one more callback, and the changed files are uploaded again.
    res = search(proxy, space, out, trials=5, callbacks=[record])
    assert [n for n, _ in seen] == [4]
    again = artifact_names(open_study(res["storage"], res["study"]))
    assert again.count("report.html") == 2 and again.count("proxy-grid.png") == 1


def test_two_workers_call_back_once_per_trial(proxy, space, tmp_path):
    seen: list[int] = []
    res = search(
        proxy,
        space,
        tmp_path / "s",
        trials=4,
        workers=2,
        pruner="none",
        callbacks=[lambda study, trial: seen.append(trial.number)],
    )
    assert res["trials"] == 4
    assert sorted(seen) == [0, 1, 2, 3]  # every trial, none twice


def test_multi_objective_writes_the_pareto_front(proxy, space, tmp_path):
    out = tmp_path / "s"
    res = search(proxy, space, out, trials=3, epochs=1, objectives="accuracy,params")
    assert {"pareto_front", "optimization_history_accuracy", "optimization_history_params"} <= set(
        res["plots"]
    )
    assert (out / "pareto_front.png").is_file()
    refs = check_page(out / "report.html", standalone=True)
    assert sum(tag == "img" for tag, _ in refs) == len(res["plots"])


def test_real_scores_become_trials_of_sibling_studies(proxy, space, tmp_path):
    res = search(proxy, space, tmp_path / "s", trials=2, epochs=1)
    url, name = res["storage"], res["study"]
    set_full_score(url, name, 1, 0.75)
    set_full_score(url, name, 1, 0.75)  # the same score again is not a second trial
    study = open_study(url, name)
    record_promoted(study, 5, 0, {"stage": "e5", "score": 0.6, "cost_s": 1.5})

    source = {t.number: t for t in study.trials}
    full = optuna.load_study(study_name=real_study_name(name, "full"), storage=url)
    (t,) = full.trials
    assert t.value == 0.75 and t.user_attrs["source_trial"] == 1
    assert t.params == source[1].params and t.user_attrs["arch"] == source[1].user_attrs["arch"]
    assert full.user_attrs == {"source_study": name, "fidelity": "full"}

    real = optuna.load_study(study_name=real_study_name(name, "real-e5"), storage=url)
    (t,) = real.trials
    assert t.value == 0.6 and t.user_attrs["source_trial"] == 0 and t.user_attrs["cost_s"] == 1.5
    assert t.params == source[0].params

    res = search(proxy, space, tmp_path / "s", trials=2, epochs=1)
    assert res["real_studies"] == [f"{name}:full", f"{name}:real-e5"]


def test_a_long_study_name_keeps_its_siblings_within_the_column():
    long = "x" * 600
    name = real_study_name(long, "real-e10")
    assert len(name) <= 512 and name.endswith(":real-e10")
    assert name != real_study_name("x" * 599 + "y", "real-e10")
