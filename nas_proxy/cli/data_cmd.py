"""``nas-proxy data``: which datasets are available, and a look at one of them."""

from __future__ import annotations

from typing import Any

import click

from nas_proxy.cli.common import config_option, data_options, emit, json_option, main


@main.group("data")
def data_group() -> None:
    """Datasets: list what is found, or load one and show its splits."""


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list):
            return "x".join(map(str, v))
        return str(v)

    cols = ["name", "found", "train", "test", "classes", "shape", "path"]
    body = [
        [
            cell(r.get(c)) + (f"  ({r['error']})" if c == "path" and r.get("error") else "")
            for c in cols
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in body
    ]
    lines.append(
        "also: imagefolder:PATH (one subfolder per class), "
        "multi-index:d=..,k=..,n=..[,link=..,task=..,seed=..]"
    )
    return "\n".join(lines)


@data_group.command("list")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder that holds datasets (searched before $NAS_PROXY_DATA and system locations).",
)
@json_option
@config_option
def list_command(data_dir: str | None, as_json: bool) -> None:
    """Known datasets: whether each is found, where, and its sizes (train before val)."""
    from nas_proxy.data import list_datasets

    rows = list_datasets(data_dir)
    emit({"datasets": rows}, as_json, None if as_json else _table(rows))


@data_group.command("show")
@click.argument("name")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of the training split held out for validation.",
)
@data_options
@json_option
@config_option
def show_command(
    name: str, val_fraction: float, data_dir: str | None, download: bool, as_json: bool
) -> None:
    """Load dataset NAME (checking its files) and show its splits and normalization."""
    from nas_proxy.data import load_dataset

    data = load_dataset(name, data_dir=data_dir, download=download, val_fraction=val_fraction)
    result = {
        **data.summary(),
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": data.classes,
    }
    human = (
        f"{data.name}: train {result['train']}, val {result['val']}, test {result['test']}, "
        f"{data.num_classes} classes, shape {list(data.shape)}, checksum {data.checksum}\n"
        f"  path: {data.path or '-'}\n  mean {list(data.mean)}, std {list(data.std)}"
    )
    emit(result, as_json, human)
