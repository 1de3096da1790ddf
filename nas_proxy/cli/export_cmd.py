"""``nas-proxy export``: a proxy as an image folder, to train on with other code."""

from __future__ import annotations

import click

from nas_proxy.cli.common import config_option, emit, json_option, main, proxy_option


@main.command("export")
@proxy_option()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="New folder (or an earlier export, which is replaced) for the images.",
)
@json_option
@config_option
def export_command(proxy_dir, out, as_json):
    """Write the proxy as an image folder: one PNG per image in one folder per class
    (de-normalized to 0-255), labels.json (with soft labels when the proxy has them),
    recipe.json and export.json (source, normalization, clipped pixels). In Python,
    nas_proxy.distill.ProxyDataset(DIR) reads a proxy folder as a torch Dataset instead."""
    from nas_proxy.distill.export import export_proxy

    result = export_proxy(proxy_dir, out)
    clipped = f", {100 * result['clipped_fraction']:.2f}% of values clipped to 0-255"
    emit(
        result,
        as_json,
        f"{result['images']} images in {result['classes']} class folders under {result['dir']}"
        + (clipped if result["clipped_values"] else ""),
    )
