"""A proxy outside nas-proxy: ``nas-proxy export`` (an image folder) and ``ProxyDataset``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nas_proxy.augment import ZCA
from nas_proxy.data import load_dataset
from nas_proxy.distill import ProxyDataset, distill, export_proxy, load_proxy
from nas_proxy.distill.export import class_folders, from_pixels
from nas_proxy.distill.proxy import save_proxy
from nas_proxy.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def random_proxy(tmp_path_factory, digits) -> Path:
    """A real proxy: 2 random real digits per class, as `nas-proxy distill --method random`."""
    out = tmp_path_factory.mktemp("proxy") / "random"
    distill("random", digits, 2, out, {}, seed=0, device="cpu")
    return out


def read_pngs(folder: Path) -> tuple[torch.Tensor, list[dict]]:
    """The exported images in proxy order (uint8 N×C×H×W), and labels.json's entries."""
    entries = json.loads((folder / "labels.json").read_text())["images"]
    arrays = [np.asarray(Image.open(folder / e["file"])) for e in entries]
    pixels = torch.from_numpy(np.stack(arrays))
    return (pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2)), entries


def test_export_cli_writes_class_folders_that_round_trip(random_proxy, tmp_path, digits):
    out = tmp_path / "images"
    proc = subprocess.run(
        [sys.executable, "-m", "nas_proxy", "export", "--proxy", str(random_proxy)]
        + ["--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 20 and result["clipped_values"] == 0
    assert result["per_class"] == {name: 2 for name in digits.classes}

    # One folder per class, named by class, holding that class's 2 PNGs (and nothing else).
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(digits.classes)
    assert all(len(list((out / f).glob("*.png"))) == 2 for f in folders)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "export.json",
        "labels.json",
        "recipe.json",
    ]

    proxy = load_proxy(random_proxy)
    pixels, entries = read_pngs(out)
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (20, 1, 8, 8)
    assert [e["label"] for e in entries] == proxy.labels.tolist()
    assert all(e["file"].startswith(f"{e['class']}/") for e in entries)
    # Back in the normalized space, every value is within half a grey level of the proxy's.
    norm = json.loads((out / "export.json").read_text())["normalization"]
    assert norm == proxy.meta["normalization"]
    back = from_pixels(pixels, norm)
    step = 1 / (255 * norm["std"][0])
    assert (back - proxy.images).abs().max() <= 0.5 * step + 1e-6
    assert json.loads((out / "recipe.json").read_text()) == proxy.recipe


def test_soft_labels_and_zca_proxy(tmp_path, digits):
    """Soft labels go to labels.json and pick the folder by argmax; a ZCA proxy's PNGs are its
    images de-whitened (what they look like), not the whitened values it trains on."""
    real = digits.train_x[:30]
    zca = ZCA().fit(digits.train_x)
    soft = torch.nn.functional.one_hot(digits.train_y[:30], 10).float() * 0.8 + 0.02
    save_proxy(
        tmp_path / "p", zca.transform(real), soft, method="mtt", dataset=digits, ipc=3, zca=zca
    )
    summary = export_proxy(tmp_path / "p", tmp_path / "out")
    assert summary["zca"] and summary["soft_labels"]

    pixels, entries = read_pngs(tmp_path / "out")
    assert [e["label"] for e in entries] == digits.train_y[:30].tolist()
    assert torch.allclose(torch.tensor([e["soft_label"] for e in entries]), soft)
    back = from_pixels(pixels, summary["normalization"])
    step = 1 / (255 * digits.std[0])
    assert (back - real).abs().max() <= 0.5 * step + 1e-4  # + float error of the ZCA round trip


def test_export_replaces_an_earlier_export_but_no_other_folder(random_proxy, tmp_path):
    out = tmp_path / "images"
    export_proxy(random_proxy, out)
    (out / "0" / "stale.png").write_bytes(b"")
    export_proxy(random_proxy, out)  # re-running replaces the whole folder
    assert not (out / "0" / "stale.png").exists()
    assert len(list(out.glob("*/*.png"))) == 20

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        export_proxy(random_proxy, other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_export_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nas_proxy", "export", "--proxy", str(tmp_path / "none")]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such directory" in proc.stderr


def test_class_folders_are_safe_and_unique():
    names = ["T-shirt/top", "Trouser", "T-shirt top", "labels.json", "..", "cat"]
    assert class_folders(names) == [
        "T-shirt_top",
        "Trouser",
        "T-shirt_top_2",
        "labels.json_3",
        "class_4",
        "cat",
    ]


def test_proxy_dataset_feeds_a_dataloader(random_proxy):
    data = ProxyDataset(random_proxy)
    proxy = load_proxy(random_proxy)
    assert len(data) == 20 and data.classes == [str(c) for c in range(10)]
    assert data.recipe == proxy.recipe and not data.soft_labels
    image, label = data[3]
    assert isinstance(label, int) and torch.equal(image, proxy.images[3])

    batches = list(DataLoader(data, batch_size=8, shuffle=False))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, proxy.images) and torch.equal(y, proxy.labels)

    flipped = ProxyDataset(random_proxy, transform=lambda t: t.flip(-1))
    assert torch.equal(flipped[0][0], proxy.images[0].flip(-1))
