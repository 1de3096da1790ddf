"""The rank report: ranks.csv, summary.json, report.md, a self-contained report.html and plots.

The headline table is built once (:func:`headline_rows`) and rendered both as Markdown and as
HTML, so the two never disagree. Plots are PNGs; the HTML embeds them as base64 data URIs so the
file can be mailed or attached without its folder.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nas_proxy.io import (
    atomic_write,
    html_images,
    html_table,
    save_figure,
    write_html_page,
    write_json,
)

HEADERS = (
    "proxy",
    "ρ [95% CI]",
    "τ",
    "top-k overlap",
    "regret",
    "ρ top-N [95% CI]",
    "cost / candidate",
    "speed-up",
    "cost @N",
    "÷ full @N",
)
TRUST_HEADERS = ("budget per candidate", "trust", "ρ [95% CI]", "lead over the cheaper choice")


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _with_ci(v: float | None, ci: Sequence[float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f} [no CI]"


def _seconds(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.1f} s"


def _speedup(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}×" if v >= 10 else f"{v:.2g}×"  # 0.48× says "slower than full training"


def _ratio(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"1/{1 / v:.0f}" if v < 0.5 else f"{v:.2g}×"


def headline_headers(summary: dict[str, Any]) -> list[str]:
    """The headline's column names, with the projected search size in place of N."""
    n = str(summary.get("project_to", "N"))
    return [h.replace("@N", f"@{n}") for h in HEADERS]


def headline_text(summary: dict[str, Any]) -> str:
    """The headline table as aligned plain text, and where the report is (the CLI's output)."""
    rows = [headline_headers(summary), *headline_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, f"report: {summary['report']}"])


def headline_rows(summary: dict[str, Any], block: dict[str, Any] | None = None) -> list[list[str]]:
    """One row per proxy, then the ground truth's own line (its cost and noise ceiling).

    ``block``: a subset's metrics (``summary["subsets"][name]``) instead of all candidates'.
    """
    block = block or summary
    rows = []
    for p in block["proxies"]:
        rows.append(
            [
                p["name"],
                _with_ci(p["spearman"], p["spearman_ci"]),
                _num(p["kendall"]),
                _num(p["top_k_overlap"], 2),
                _num(p["regret"], 4),
                _with_ci(p["spearman_top"], p["spearman_top_ci"]),
                _seconds(p["cost_s_per_candidate"]),
                _speedup(p["speedup"]),
                _seconds(p.get("cost_s_projected")),
                _ratio(p.get("cost_ratio_projected")),
            ]
        )
    c = block["ceiling"]
    rows.append(
        [
            f"full data ({c['seeds']} seed{'s' if c['seeds'] != 1 else ''}): ceiling",
            _with_ci(c["value"], c["ci"]),
            "",
            "",
            "",
            _with_ci(c["value_top"], c["ci_top"]),
            _seconds(summary["full"]["cost_s_per_candidate"]),
            "1×",
            _seconds(summary["full"]["cost_s_per_candidate"]),
            "1×",
        ]
    )
    return rows


def trust_rows(block: dict[str, Any]) -> list[list[str]]:
    """The proxy to trust at each budget (the cost-ρ frontier, cheapest first)."""
    rows = []
    for t in block.get("trust", []):
        upto = f"below {_seconds(t['to_s'])}" if t["to_s"] is not None else "and more"
        if t["cheaper"] is None:
            lead = "the cheapest choice"
        elif t["better_than_cheaper"] is None:
            lead = ""  # no interval to compare
        elif t["better_than_cheaper"]:
            lead = "beyond the noise"
        else:
            lead = f"within the noise: {t['cheaper']} is as defensible"
        rows.append(
            [
                f"{_seconds(t['from_s'])} {upto}",
                t["proxy"],
                _with_ci(t["spearman"], t["spearman_ci"]),
                lead,
            ]
        )
    return rows


def md_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """A Markdown table (the report's, and the benchmarks' RESULTS.md snippets)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _own(notes: list[str]) -> list[str]:
    # The ceiling's caveats are listed once, under the ceiling; Kendall's bootstrap drops the
    # same resamples as Spearman's (same seed, same rule), so its line would repeat.
    return [s for s in notes if not s.startswith(("ceiling", "kendall bootstrap"))]


def _notes(summary: dict[str, Any]) -> list[str]:
    """Every caveat the metrics raised, prefixed by what it concerns."""
    out = [f"noise ceiling: {s}" for s in summary["ceiling"]["notes"]]
    for p in summary["proxies"]:
        out += [f"{p['name']}: {s}" for s in _own(p["notes"])]
        out += [f"{p['name']} (top {summary['top_n']}): {s}" for s in _own(p["notes_top"])]
    return list(dict.fromkeys(out))


def _intro(summary: dict[str, Any]) -> list[str]:
    full = summary["full"]
    recipe = full["recipe"]
    epochs = f"{recipe['epochs']} epoch{'s' if recipe['epochs'] != 1 else ''}"
    return [
        f"{summary['n']} candidates on {summary['dataset']}; ground truth: full-data training, "
        f"{epochs} ({recipe['optimizer']}, lr {recipe['lr']}, batch "
        f"{recipe['batch_size']}), seeds {full['seeds']}, scored on the validation split "
        "(mean over seeds).",
        f"ρ: Spearman, τ: Kendall, over all candidates; top-N: the same over the best "
        f"{summary['top_n']} by full score. Top-k overlap and regret use k = {summary['top_k']}. "
        "Cost per candidate includes the candidate's share of building the proxy.",
        f"Runs (ground truth and proxies) trained now: {summary['trained']}, reused from the "
        f"cache: {summary['reused']}.",
    ]


def _candidates_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = ["arch", "full_score", "full_rank"] + [
        c for c in table.columns if c.startswith("proxy_rank:")
    ]
    sub = table.sort_values("full_rank", na_position="last")[cols]
    headers = [c.replace("proxy_rank:", "rank: ") for c in cols]
    rows = [
        [
            (
                "n/a"
                if pd.isna(v)
                else (
                    f"{v:.4f}"
                    if isinstance(v, float) and k == "full_score"
                    else (f"{v:g}" if isinstance(v, float) else str(v))
                )
            )
            for k, v in r.items()
        ]
        for r in sub.to_dict("records")
    ]
    return headers, rows


def _blocks(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(title, metrics) of each headline table: the subsets first (a benchmark's held-out half
    is its headline), then all candidates."""
    out = [(f"{name} ({b['n']} candidates)", b) for name, b in summary.get("subsets", {}).items()]
    return [*out, (f"All candidates ({summary['n']})", summary)]


def _trust_intro(summary: dict[str, Any]) -> str:
    return (
        f"The proxy to trust at each budget: the cost-ρ Pareto frontier, with costs amortised "
        f"over {summary.get('project_to')} candidates (a real search)."
    )


def _md_blocks(summary: dict[str, Any]) -> list[str]:
    parts = []
    for title, block in _blocks(summary):
        parts += [
            f"## {title}",
            "",
            md_table(headline_headers(summary), headline_rows(summary, block)),
            "",
        ]
        if block.get("trust"):
            parts += [_trust_intro(summary), "", md_table(TRUST_HEADERS, trust_rows(block)), ""]
    return parts


def write_markdown(path: Path, summary: dict[str, Any], table: pd.DataFrame) -> Path:
    parts = [
        "# Rank fidelity report",
        "",
        *[f"{s}  " for s in _intro(summary)],
        "",
        *_md_blocks(summary),
        "![proxy vs full score](scatter.png)",
        "",
        "![cost vs rho](cost_vs_rho.png)",
        "",
    ]
    notes = _notes(summary)
    if notes:
        parts += ["## Notes", "", *[f"- {s}" for s in notes], ""]
    cand_headers, cand_rows = _candidates_rows(table)
    parts += ["## Candidates", "", md_table(cand_headers, cand_rows), ""]
    text = "\n".join(parts)
    return atomic_write(path, lambda p: p.write_text(text))


def write_html(
    path: Path, summary: dict[str, Any], table: pd.DataFrame, images: Sequence[Path]
) -> Path:
    """Self-contained: no external stylesheet, script or image source."""
    cand_headers, cand_rows = _candidates_rows(table)
    imgs = html_images({p.stem: p for p in images})
    notes = "".join(f"<li>{html.escape(s)}</li>" for s in _notes(summary))
    intro = "".join(f"<p>{html.escape(s)}</p>" for s in _intro(summary))
    body = (
        intro
        + "".join(
            f"<h2>{html.escape(title)}</h2>"
            + html_table(headline_headers(summary), headline_rows(summary, block))
            + (
                f"<p>{html.escape(_trust_intro(summary))}</p>"
                + html_table(TRUST_HEADERS, trust_rows(block))
                if block.get("trust")
                else ""
            )
            for title, block in _blocks(summary)
        )
        + f"<div>{imgs}</div>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + f"<h2>Candidates</h2>{html_table(cand_headers, cand_rows)}"
    )
    return write_html_page(path, "Rank fidelity report", body)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _figure()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path


def plot_scatter(path: Path, table: pd.DataFrame, summary: dict[str, Any]) -> Path:
    """Full score (x) against each proxy's score as a within-proxy percentile (y).

    Proxy scores live on different scales (accuracy, log synflow, parameter count), so each is
    mapped to its rank percentile (1 = the proxy's best) to share one axis.
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "os^Dv<>pPX*h"
    for i, p in enumerate(summary["proxies"]):
        r = table[f"proxy_rank:{p['name']}"].astype(float)
        pct = 1 - (r - 1) / max(r.count() - 1, 1)
        rho = "n/a" if p["spearman"] is None else f"{p['spearman']:.2f}"
        ax.scatter(
            table["full_score"],
            pct,
            s=28,
            alpha=0.75,
            marker=markers[i % len(markers)],
            color=plt.get_cmap("tab10")(i % 10),
            label=f"{p['name']} (ρ={rho})",
        )
    ax.set_xlabel("full-data score (validation, mean over seeds)")
    ax.set_ylabel("proxy score, rank percentile (1 = proxy's best)")
    ax.set_title(f"Proxy vs full-data ranking ({summary['n']} candidates)")
    ax.grid(alpha=0.3)
    if summary["proxies"]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_cost_vs_rho(path: Path, summary: dict[str, Any]) -> Path:
    """Spearman ρ (with its CI) against cost per candidate, log scale, with the Pareto frontier.

    Filled markers: cost with the build amortised over ``project_to`` candidates (a real
    search), where the frontier is drawn; hollow markers joined to them: cost over the ranked
    candidates only. The ceiling is a band.
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("tab10")
    points = {}
    for i, p in enumerate(summary["proxies"]):
        cost, rho = p.get("cost_s_projected"), p["spearman"]
        if cost is None or rho is None:
            continue
        color = cmap(i % 10)
        ci = p["spearman_ci"]
        err = [[rho - ci[0]], [ci[1] - rho]] if ci else None
        x = max(cost, 1e-4)
        points[p["name"]] = (x, rho)
        ax.errorbar([x], [rho], yerr=err, fmt="o", capsize=3, color=color, label=p["name"])
        here = p.get("cost_s_per_candidate")
        if here is not None and here > cost * 1.01:
            ax.plot([x, here], [rho, rho], color=color, lw=0.8, alpha=0.6)
            ax.plot([here], [rho], "o", mfc="none", color=color, alpha=0.8)
        ax.annotate(p["name"], (x, rho), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = [points[n] for n in summary.get("frontier", []) if n in points]
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="crimson", lw=1.5, alpha=0.7, label="Pareto frontier")
    c, full_cost = summary["ceiling"], summary["full"]["cost_s_per_candidate"]
    if c["value"] is not None:
        ax.axhline(c["value"], color="k", ls="--", lw=1, label="noise ceiling")
        if c["ci"]:
            ax.axhspan(c["ci"][0], c["ci"][1], color="k", alpha=0.08)
    if full_cost:
        ax.axvline(full_cost, color="gray", ls=":", lw=1, label="full training, one seed")
    ax.set_xscale("log")
    ax.set_xlabel(
        f"cost per candidate (s, log scale); filled: build shared by "
        f"{summary.get('project_to')} candidates, hollow: by the {summary['n']} ranked"
    )
    ax.set_ylabel("Spearman ρ with full-data ranking")
    ax.set_title("Rank fidelity vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def write_report(out: str | Path, table: pd.DataFrame, summary: dict[str, Any]) -> dict[str, str]:
    """Write every report file into ``out``; returns {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "ranks": atomic_write(out / "ranks.csv", lambda p: table.to_csv(p, index=False)),
        "scatter": plot_scatter(out / "scatter.png", table, summary),
        "cost_vs_rho": plot_cost_vs_rho(out / "cost_vs_rho.png", summary),
    }
    files["markdown"] = write_markdown(out / "report.md", summary, table)
    files["html"] = write_html(
        out / "report.html", summary, table, [files["scatter"], files["cost_vs_rho"]]
    )
    paths = {k: str(v) for k, v in files.items()}
    paths["summary"] = str(out / "summary.json")
    write_json(out / "summary.json", {**summary, "files": paths})
    return paths
