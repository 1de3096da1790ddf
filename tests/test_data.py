"""Dataset registry and loaders: real files in the real formats, and the ways they go wrong."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nas_proxy.data import list_datasets, load_dataset
from nas_proxy.data.cifar import safe_load
from nas_proxy.data.idx import read_idx
from nas_proxy.data.multi_index import (
    make_multi_index,
    multi_index_labels,
    orthonormal_rows,
)
from nas_proxy.data.registry import find_dataset_dir
from nas_proxy.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def unnormalize(x: torch.Tensor, data) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * torch.tensor(data.std).view(shape) + torch.tensor(data.mean).view(shape)


# ---------------------------------------------------------------- digits


def test_digits_shapes_splits_and_normalization():
    data = load_dataset("digits")
    assert data.shape == (1, 8, 8) and data.num_classes == 10
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (1294, 144, 359)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    per_channel = data.train_x.transpose(0, 1).reshape(1, -1)
    assert per_channel.mean().abs() < 1e-4 and abs(per_channel.std() - 1) < 1e-3
    raw = unnormalize(data.train_x, data)
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5  # pixels were scaled to [0, 1]
    assert load_dataset("digits") is data  # loaded once per process


def test_digits_test_split_fixed_and_val_seeded():
    a = load_dataset("digits", val_seed=0)
    b = load_dataset("digits", val_seed=1)
    c = load_dataset("digits", val_fraction=0.2)
    # the test set never moves: compare in pixel space (normalization follows the train split)
    for other in (b, c):
        assert torch.allclose(unnormalize(a.test_x, a), unnormalize(other.test_x, other), atol=1e-5)
        assert torch.equal(a.test_y, other.test_y)
    assert not torch.equal(a.val_y, b.val_y) or not torch.equal(a.val_x, b.val_x)
    assert a.checksum != b.checksum != c.checksum
    # stratified: every class keeps about its share in val
    counts = torch.bincount(a.val_y, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16
    assert len(c.val_y) == round(0.2 * 1438)


# ---------------------------------------------------------------- IDX (MNIST family)


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist is not "
    "installed (/usr/share/datasets/fashion-mnist absent)",
)
def test_fashion_mnist_from_debian_location(isolated_data, monkeypatch):
    from nas_proxy.data import locate

    monkeypatch.setattr(locate, "SYSTEM_ROOTS", [FASHION_DIR.parent])
    data = load_dataset("fashion-mnist", val_fraction=0.1)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54000, 6000, 10000)
    assert data.shape == (1, 28, 28) and data.classes[0] == "T-shirt/top"
    assert torch.bincount(data.val_y).tolist() == [600] * 10
    assert data.path == str(FASHION_DIR)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_roundtrip(tmp_path, write_idx, gz):
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), images)
    assert np.array_equal(read_idx(path, 2051), images)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_data_dir(isolated_data, fake_mnist, gz):
    root = isolated_data / "data"
    fake_mnist(root / "mnist", n_train=50, n_test=20, gz=gz)
    data = load_dataset("mnist", data_dir=str(root), val_fraction=0.2)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (40, 10, 20)
    assert data.shape == (1, 28, 28) and data.path == str(root / "mnist")
    # torchvision's layout, and the files directly in the named folder, are found too
    fake_mnist(isolated_data / "tv" / "FashionMNIST" / "raw", gz=gz)
    assert find_dataset_dir("fashion-mnist", str(isolated_data / "tv")).name == "raw"
    assert find_dataset_dir("mnist", str(root / "mnist")) == root / "mnist"


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_a_user_error(isolated_data, fake_mnist, gz):
    folder = fake_mnist(isolated_data / "m", gz=gz)
    victim = folder / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(UserError, match="train-images-idx3-ubyte") as err:
        load_dataset("mnist", data_dir=str(folder))
    assert "truncated" in str(err.value) and "\n" not in str(err.value)


def test_idx_bad_magic_extra_bytes_and_label_mismatch(isolated_data, fake_mnist, write_idx):
    folder = fake_mnist(isolated_data / "m")
    labels = folder / "train-labels-idx1-ubyte"
    write_idx(labels, np.arange(50) % 10, magic=2051)  # an images magic on a labels file
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte: bad magic number 2051"):
        load_dataset("mnist", data_dir=str(folder))
    write_idx(labels, np.arange(50) % 10)
    with open(labels, "ab") as f:
        f.write(b"\0\0")  # trailing garbage
    with pytest.raises(UserError, match="unexpected bytes"):
        load_dataset("mnist", data_dir=str(folder))
    write_idx(labels, np.arange(49) % 10)
    with pytest.raises(UserError, match="49 labels for 50 images"):
        load_dataset("mnist", data_dir=str(folder))


def test_idx_bad_labels(isolated_data, fake_mnist, write_idx):
    folder = fake_mnist(isolated_data / "m")
    labels = folder / "train-labels-idx1-ubyte"
    write_idx(labels, np.r_[np.arange(49) % 10, 12])
    with pytest.raises(UserError, match="label 12 out of range"):
        load_dataset("mnist", data_dir=str(folder))
    write_idx(labels, np.arange(50) % 9)  # class 9 never occurs
    with pytest.raises(UserError, match="class 9 has no samples"):
        load_dataset("mnist", data_dir=str(folder))


def test_corrupt_gzip(isolated_data, fake_mnist):
    folder = fake_mnist(isolated_data / "m", gz=True)
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(gzip.compress(b"x")[:-6])
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip"):
        load_dataset("mnist", data_dir=str(folder))


# ---------------------------------------------------------------- CIFAR


def _dump(path: Path, obj, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _batch(n: int, label_key: bytes, classes: int, rng) -> dict:
    return {
        b"batch_label": b"batch",
        label_key: [i % classes for i in range(n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar10(folder: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(n, b"labels", 10, rng) for i in range(1, 6)}
    batches["data_batch_1"][b"data"][0] = np.repeat([10, 20, 30], 1024)  # R, G, B planes
    for name, batch in {**batches, "test_batch": _batch(n, b"labels", 10, rng)}.items():
        _dump(folder / name, batch)
    _dump(
        folder / "batches.meta",
        {
            b"label_names": [
                b"airplane",
                b"automobile",
                b"bird",
                b"cat",
                b"deer",
                b"dog",
                b"frog",
                b"horse",
                b"ship",
                b"truck",
            ],
            b"num_cases_per_batch": n,
            b"num_vis": 3072,
        },
    )
    return folder


def test_cifar10_loader(isolated_data):
    folder = write_cifar10(isolated_data / "cifar-10-batches-py")
    data = load_dataset("cifar10", data_dir=str(isolated_data), val_fraction=0.0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (50, 0, 10)
    assert data.shape == (3, 32, 32) and data.classes[9] == "truck"
    assert data.path == str(folder)
    first = unnormalize(data.train_x[:1], data)[0]  # the planes land in the right channels
    assert torch.allclose(first.mean(dim=(1, 2)), torch.tensor([10, 20, 30]) / 255, atol=1e-5)
    assert len(data.mean) == 3


def test_cifar100_loader(isolated_data):
    rng = np.random.default_rng(1)
    folder = isolated_data / "c100" / "cifar-100-python"
    for name, n in (("train", 200), ("test", 40)):
        batch = _batch(n, b"fine_labels", 100, rng)
        batch[b"coarse_labels"] = [i % 20 for i in range(n)]
        _dump(folder / name, batch, protocol=4)  # a Python 3 pickle must load as well
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [b"c%d" % i for i in range(100)],
            b"coarse_label_names": [b"s%d" % i for i in range(20)],
        },
    )
    data = load_dataset("cifar100", data_dir=str(isolated_data / "c100"), val_fraction=0.5)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (100, 100, 40)
    assert data.num_classes == 100 and data.classes[7] == "c7"


class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_cifar_pickle_is_refused(isolated_data, protocol):
    folder = write_cifar10(isolated_data / "cifar-10-batches-py")
    marker = isolated_data / "pwned"
    _dump(folder / "data_batch_3", {b"data": _Evil(marker), b"labels": [0]}, protocol)
    with pytest.raises(
        UserError,
        match=r"data_batch_3: unsafe pickle, refusing to unpickle "
        r"(posix|os)\.system",
    ):
        load_dataset("cifar10", data_dir=str(isolated_data))
    assert not marker.exists()
    _dump(folder / "evil", _Evil(marker), protocol)
    with pytest.raises(UserError, match="unsafe pickle"):
        safe_load(folder / "evil")
    assert not marker.exists()


def test_cifar_garbage_and_wrong_content(isolated_data):
    folder = write_cifar10(isolated_data / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(UserError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", data_dir=str(isolated_data))
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError, match="test_batch: 'data' must be a uint8 N×3072 array"):
        load_dataset("cifar10", data_dir=str(isolated_data))


# ---------------------------------------------------------------- imagefolder


def _png(path: Path, value: int, size=(4, 4), mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def test_imagefolder_gray_and_rgb(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        for i in range(10):
            _png(tmp_path / "gray" / name / f"{i}.png", 20 * c + i)
    (tmp_path / "gray" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(f"imagefolder:{tmp_path / 'gray'}", val_fraction=0.25)
    assert data.classes == ["cat", "dog"] and data.shape == (1, 4, 4)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (12, 4, 4)
    assert torch.bincount(data.test_y).tolist() == [2, 2]

    for split, n in (("train", 3), ("test", 2)):
        for c in range(3):
            for i in range(n):
                _png(tmp_path / "rgb" / split / f"k{c}" / f"{i}.png", 50 * c, (5, 3), "RGB")
    data = load_dataset(f"imagefolder:{tmp_path / 'rgb'}", val_fraction=0.0)
    assert data.shape == (3, 3, 5) and (len(data.train_y), len(data.test_y)) == (9, 6)


def test_imagefolder_errors(tmp_path):
    _png(tmp_path / "a" / "x" / "0.png", 1)
    (tmp_path / "a" / "empty").mkdir()
    with pytest.raises(UserError, match="empty: class folder has no images"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    _png(tmp_path / "b" / "x" / "0.png", 1)
    _png(tmp_path / "b" / "y" / "0.png", 1, size=(5, 4))
    with pytest.raises(UserError, match=r"0.png: image size 5x4 differs from 4x4"):
        load_dataset(f"imagefolder:{tmp_path / 'b'}")
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


# ---------------------------------------------------------------- multi-index


def test_multi_index_teacher_structure():
    x, y, W = make_multi_index(d=16, k=3, n=4000, link="prod", seed=3)
    assert W.shape == (3, 16) and x.shape == (4000, 16) and y.dtype == torch.int64
    assert torch.allclose(W @ W.T, torch.eye(3), atol=1e-5)
    assert torch.equal(W, orthonormal_rows(16, 3, seed=3))
    assert abs(y.float().mean().item() - 0.5) < 0.05

    # labels depend on x only through W x: moving orthogonally to span(W) changes nothing ...
    xd, Wd = x.double(), W.double()
    noise = 3 * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    away = xd + noise - (noise @ Wd.T) @ Wd
    assert torch.equal(multi_index_labels(away, W, "prod"), y)
    # ... while moving inside the span does
    assert not torch.equal(multi_index_labels(xd + (noise @ Wd.T) @ Wd, W, "prod"), y)


@pytest.mark.parametrize("link", ["prod", "sumtanh", "quadratic", "argmax"])
def test_multi_index_links_balanced_and_transferable(link):
    x, y, W = make_multi_index(d=8, k=2, n=4000, link=link, seed=0)
    shares = torch.bincount(y).float() / len(y)
    assert len(shares) == 2 and (shares - 0.5).abs().max() < 0.05
    # another link on the same teacher: same inputs and W, different labels
    x2, y2, W2 = make_multi_index(
        d=8, k=2, n=4000, link="quadratic" if link != "quadratic" else "prod", seed=0, W=W
    )
    assert torch.equal(x, x2) and W2 is W and not torch.equal(y, y2)


def test_multi_index_dataset_and_regression():
    data = load_dataset("multi-index:d=12,k=2,n=500,n_test=300,link=sumtanh,seed=1")
    assert data.shape == (12,) and (len(data.train_y), len(data.val_y)) == (450, 50)
    assert len(data.test_y) == 300 and data.mean == (0.0,) and data.std == (1.0,)
    W = data.extras["W"]
    assert data.extras["link"] == "sumtanh" and W.shape == (2, 12)
    assert torch.equal(multi_index_labels(data.test_x, W, "sumtanh"), data.test_y)
    assert load_dataset("Multi-Index:seed=1,link=sumtanh,n_test=300,n=500,k=2,d=12") is data
    reg = load_dataset("multi-index:d=12,k=2,n=500,task=regression,seed=1")
    assert reg.train_y.dtype == torch.float32 and reg.classes == ["target"]
    assert torch.equal(reg.extras["W"], W) and reg.checksum != data.checksum
    for bad, msg in (
        ("d=2,k=3", "1 <= k <= d"),
        ("link=cubic", "unknown link"),
        ("depth=3", "bad parameter"),
        ("n=ten", "not an integer"),
    ):
        with pytest.raises(UserError, match=msg):
            load_dataset(f"multi-index:{bad}")


# ---------------------------------------------------------------- lookup, listing, CLI


def test_missing_data_dir_and_not_found(isolated_data, monkeypatch):
    with pytest.raises(UserError, match="nope: no such directory"):
        load_dataset("digits", data_dir=str(isolated_data / "nope"))
    monkeypatch.setenv("NAS_PROXY_DATA", str(isolated_data / "gone"))
    with pytest.raises(UserError, match="NAS_PROXY_DATA.*gone: no such directory"):
        load_dataset("mnist")
    monkeypatch.setenv("NAS_PROXY_DATA", str(isolated_data))
    with pytest.raises(UserError, match=r"dataset 'cifar10' not found .*--data-dir.*--download"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_download_only_when_asked_and_not_found(isolated_data, fake_mnist, monkeypatch):
    import dataclasses

    from nas_proxy.data import registry

    calls = []

    def fake_download(root: Path) -> None:  # stands in for the network
        calls.append(root)
        fake_mnist(root / "MNIST" / "raw", gz=True)

    source = dataclasses.replace(registry.FILE_SOURCES["mnist"], download=fake_download)
    monkeypatch.setitem(registry.FILE_SOURCES, "mnist", source)
    with pytest.raises(UserError, match="not found"):
        load_dataset("mnist")
    assert calls == []
    data = load_dataset("mnist", download=True)  # into the private cache of isolated_data
    assert calls == [isolated_data / "cache" / "data"] and len(data.test_y) == 20
    assert load_dataset("MNIST", download=True) is data and len(calls) == 1  # found: no fetch


def test_list_datasets(isolated_data, fake_mnist):
    fake_mnist(isolated_data / "mnist", n_train=30, n_test=10, gz=True)
    rows = {r["name"]: r for r in list_datasets(str(isolated_data))}
    assert rows["digits"]["found"] and rows["digits"]["train"] == 1438
    assert rows["mnist"] == {
        "name": "mnist",
        "found": True,
        "path": str(isolated_data / "mnist"),
        "train": 30,
        "test": 10,
        "classes": 10,
        "shape": [1, 28, 28],
    }
    assert rows["cifar10"]["found"] is False and rows["multi-index"]["found"]


def test_cli_data_list_json(isolated_data, fake_mnist):
    from nas_proxy.cli import main

    fake_mnist(isolated_data / "mnist")
    result = CliRunner().invoke(main, ["data", "list", "--json", "--data-dir", str(isolated_data)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["datasets"]
    assert {"name", "found", "path", "train", "test", "classes", "shape"} <= set(rows[0])
    assert {r["name"] for r in rows if r["found"]} >= {"digits", "mnist", "multi-index"}
    human = CliRunner().invoke(main, ["data", "list", "--data-dir", str(isolated_data)])
    assert human.exit_code == 0 and "mnist" in human.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["data", "list", "--data-dir", "{tmp}/nope"],
        ["data", "show", "mnist", "--data-dir", "{tmp}/m"],
    ],
)
def test_cli_user_errors_exit_2(isolated_data, fake_mnist, monkeypatch, capsys, args):
    from nas_proxy.cli import run

    victim = fake_mnist(isolated_data / "m") / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-1])
    monkeypatch.setattr(sys, "argv", ["nas-proxy", *(a.format(tmp=isolated_data) for a in args)])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "no such directory" in err or "t10k-images-idx3-ubyte: truncated" in err


def test_imagefolder_follows_symlinks_only_inside_its_root(tmp_path):
    """Issue 15: links inside the dataset are followed (each real folder once, so a link to
    an ancestor cannot loop); a class folder or a file that links out of it is refused."""
    root, outside = tmp_path / "set", tmp_path / "elsewhere"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(5):
            _png(root / name / f"{i}.png", 40 * c + i)
    _png(outside / "cow" / "0.png", 200)
    (root / "dog" / "alias.png").symlink_to(root / "cat" / "0.png")  # inside: one more dog
    (root / "cat" / "again").symlink_to(root / "cat")  # a loop back to its own class
    data = load_dataset(f"imagefolder:{root}", val_fraction=0.0)
    assert data.classes == ["cat", "dog"]
    assert torch.bincount(torch.cat([data.train_y, data.test_y])).tolist() == [5, 6]

    (root / "cow").symlink_to(outside / "cow")
    with pytest.raises(UserError, match=r"cow: a symlink to .*elsewhere/cow, outside"):
        load_dataset(f"imagefolder:{root}")
    (root / "cow").unlink()
    (root / "cat" / "stray.png").symlink_to(outside / "cow" / "0.png")
    with pytest.raises(UserError, match=r"stray.png: a symlink to .*, outside"):
        load_dataset(f"imagefolder:{root}")
