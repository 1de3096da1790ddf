"""What a search leaves to look at: Optuna's own plots as PNGs, a self-contained report.html,
and both attached to the study as Optuna artifacts, so optuna-dashboard shows them beside the
trials.

Plots (``optuna.visualization.matplotlib``, drawn on the non-interactive Agg backend):

    optimization_history.png        one objective (``optimization_history_<name>.png`` per
                                    objective when there are several)
    param_importances.png           with at least 2 complete trials and 1 parameter that varies
                                    among them (Optuna's default evaluator, PED-ANOVA)
    pareto_front.png                with 2 or 3 objectives

Artifacts go to a ``FileSystemArtifactStore`` under ``OUT/artifacts``
(``optuna-dashboard STORAGE --artifact-dir OUT/artifacts`` serves them). Optuna has no way to
detach an artifact, so a file is uploaded again only when its bytes changed: the study user
attribute ``artifact:<name>`` holds the id and SHA-256 of the latest upload under that name.
"""

from __future__ import annotations

import html
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_proxy.io import file_sha256, html_images, html_table, save_figure, write_html_page
from nas_proxy.search.results import TRIALS_CSV, objective_names

REPORT = "report.html"
ARTIFACTS_DIR = "artifacts"
ARTIFACT_ATTR = "artifact:"


def _pyplot():
    import matplotlib

    # Files only. A backend chosen already (a notebook's inline one) is left alone: switching
    # would close the user's open figures. Ours are closed once saved, so none is shown.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def importances_apply(trials: list[FrozenTrial]) -> bool:
    """At least 2 complete trials and a parameter they all have that takes 2 or more values:
    otherwise importances are undefined (Optuna would draw equal bars)."""
    if len(trials) < 2:
        return False
    common = optuna.search_space.intersection_search_space(trials)
    return any(len({repr(t.params[name]) for t in trials}) > 1 for name in common)


def write_plots(study: optuna.Study, out: str | Path) -> dict[str, Path]:
    """Draw the plots that apply to the study (module docstring) into ``out``; name -> file."""
    from optuna.visualization import matplotlib as vis

    names = objective_names(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    draws: dict[str, Callable[[], Any]] = {}
    if len(names) == 1:
        draws["optimization_history"] = lambda: vis.plot_optimization_history(
            study, target_name=names[0]
        )
    else:
        for i, name in enumerate(names):
            draws[f"optimization_history_{name}"] = lambda i=i, name=name: (
                vis.plot_optimization_history(study, target=lambda t: t.values[i], target_name=name)
            )
    if importances_apply(complete):
        draws["param_importances"] = lambda: vis.plot_param_importances(study)
    if 2 <= len(names) <= 3:  # Optuna draws Pareto fronts in 2 or 3 dimensions
        draws["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=names)

    plt = _pyplot()
    files = {}
    with warnings.catch_warnings():
        # The matplotlib backend is experimental, and PED-ANOVA warns on small studies; the
        # plots say what the warnings would.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name, draw in draws.items():
            fig = draw().figure
            try:
                files[name] = save_figure(
                    fig, Path(out) / f"{name}.png", dpi=90, bbox_inches="tight"
                )
            finally:
                plt.close(fig)
    return files


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
    )


def write_report(out: str | Path, summary: Mapping[str, Any], plots: Mapping[str, Path]) -> Path:
    """``out/report.html``: the search's counts, best trial (or Pareto front), promotion pick
    and plots. Self-contained (plots as data URIs), so it also reads as a dashboard artifact;
    its one link, to trials.csv, is relative. Nothing in it changes on a rerun that ran no
    trial (no wall time), so an unchanged report is not uploaded again."""
    best = summary.get("best") or {}
    facts = [
        ("study", summary["study"]),
        ("storage", summary["storage"]),
        ("objectives", ", ".join(summary.get("objectives", []))),
        ("sampler / pruner", f"{summary.get('sampler')} / {summary.get('pruner')}"),
        (
            "trials",
            f"{summary['trials']} finished: {summary['complete']} complete, "
            f"{summary['pruned']} pruned ({summary['rejected']} by constraints), "
            f"{summary['failed']} failed",
        ),
        ("best", f"trial {best['number']}: {best['arch']} = {best['score']:.4f}" if best else "-"),
    ]
    pick = (summary.get("promotion") or {}).get("pick")
    if pick:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in pick["scores"].items())
        facts.append(("promotion pick", f"trial {pick['number']}: {pick['arch']} ({scores})"))
    if summary.get("real_studies"):
        facts.append(("real-data scores (sibling studies)", ", ".join(summary["real_studies"])))
    pareto = ""
    if summary.get("pareto"):
        keys = list(summary["pareto"][0])
        rows = [[p[k] for k in keys] for p in summary["pareto"]]
        pareto = f"<h2>Pareto front</h2>{html_table(keys, rows)}"
    images = html_images(plots)
    body = (
        f"<table>{_rows(facts)}</table>{pareto}<h2>Plots</h2>"
        + (f"<div>{images}</div>" if images else "<p>No complete trial yet: nothing to plot.</p>")
        + f'<p>One row per trial: <a href="{TRIALS_CSV}">{TRIALS_CSV}</a>.</p>'
    )
    return write_html_page(Path(out) / REPORT, "Search report", body)


def attach_artifacts(study: optuna.Study, out: str | Path, files: Mapping[str, Path]) -> Path:
    """Upload ``files`` (artifact name -> file) to the study's artifact store under
    ``out/artifacts``, skipping a file whose bytes match the last upload under its name; returns
    the store's folder."""
    store_dir = Path(out) / ARTIFACTS_DIR
    store_dir.mkdir(parents=True, exist_ok=True)
    store = optuna.artifacts.FileSystemArtifactStore(str(store_dir))
    known = study.user_attrs
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, path in files.items():
            sha = file_sha256(path)
            if (known.get(ARTIFACT_ATTR + name) or {}).get("sha256") == sha:
                continue
            named = Path(tmp) / name  # Optuna names an artifact after its file
            shutil.copyfile(path, named)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(named), study_or_trial=study
            )
            study.set_user_attr(ARTIFACT_ATTR + name, {"id": artifact_id, "sha256": sha})
    return store_dir


def write_search_outputs(
    study: optuna.Study, out: str | Path, summary: Mapping[str, Any], proxy_dir: str | Path
) -> dict[str, Any]:
    """Plots, report.html and the artifacts (those two and the proxy's grid.png, when it has
    one); what the summary says about them."""
    plots = write_plots(study, out)
    report = write_report(out, summary, plots)
    files = {REPORT: report, **{p.name: p for p in plots.values()}}
    grid = Path(proxy_dir) / "grid.png"
    if grid.is_file():
        files["proxy-grid.png"] = grid
    store = attach_artifacts(study, out, files)
    return {
        "report": str(report),
        "plots": {name: str(p) for name, p in plots.items()},
        "artifacts": str(store),
    }
