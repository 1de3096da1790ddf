"""``nas-proxy theory``: subspace metrics on hand-made cases, a tiny distillation, the CLI and
the notebook."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nas_proxy.theory import subspace as S


def _basis(d: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g))[0].T.contiguous()


def test_data_inside_span_has_fraction_one_and_zero_angles():
    W = _basis(50, 3)
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    x = z @ W  # every row is a combination of W's rows
    assert S.variance_fraction(x, W) == pytest.approx(1.0, abs=1e-9)
    assert S.variance_fraction(x, W, center=False) == pytest.approx(1.0, abs=1e-9)
    assert max(S.data_angles_deg(x, W)) == pytest.approx(0.0, abs=1e-4)
    # a non-orthonormal W spanning the same rows gives the same answers
    mixed = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [3.0, 0.0, 1.0]]) @ W
    assert S.variance_fraction(x, mixed) == pytest.approx(1.0, abs=1e-9)


def test_data_orthogonal_to_span_has_fraction_zero_and_right_angles():
    d, k = 20, 2
    basis = _basis(d, 2 * k)
    W, other = basis[:k], basis[k:]
    x = torch.randn(30, k, generator=torch.Generator().manual_seed(2)) @ other
    assert S.variance_fraction(x, W) == pytest.approx(0.0, abs=1e-9)
    assert S.principal_angles_deg(W, other) == pytest.approx([90.0, 90.0], abs=1e-4)
    assert S.principal_angles_deg(W, W) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_isotropic_gaussian_gives_k_over_d_within_sampling_tolerance():
    d, k, n = 100, 2, 4000
    W = _basis(d, k, seed=3)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tol = S.isotropic_tolerance(k, d, n)  # 4 sigma of the chi-square ratio: ≈ 0.0026 here
    assert tol < 0.2 * k / d
    for center in (True, False):
        assert S.variance_fraction(x, W, center=center) == pytest.approx(k / d, abs=tol)


def test_centering_removes_an_offset_outside_the_span():
    d, k = 30, 2
    basis = _basis(d, k + 1, seed=5)
    W, off = basis[:k], basis[k:]
    x = torch.randn(50, k, generator=torch.Generator().manual_seed(6)) @ W
    shifted = x + 10 * off  # same offset for every row
    assert S.variance_fraction(shifted, W) == pytest.approx(1.0, abs=1e-6)
    assert S.variance_fraction(shifted, W, center=False) < 0.1


def test_weight_alignment_separates_learned_change_from_random_init():
    d, k, h = 60, 2, 40
    W = _basis(d, k, seed=7)
    g = torch.Generator().manual_seed(8)
    init = torch.randn(h, d, generator=g) / math.sqrt(d)
    learned = init + 3 * torch.randn(h, k, generator=g) @ W
    report = S.weight_alignment(learned, W, init)
    assert report["change_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert max(report["change_angles_deg"]) < 1e-3
    assert report["fraction"] > 0.9  # the learned part dominates the random init
    assert S.weight_alignment(init, W)["fraction"] < 0.15  # ≈ k/d for the init alone


def test_subspace_report_keys_and_change_fraction():
    d, k = 40, 2
    W = _basis(d, k, seed=9)
    x0 = torch.randn(10, d, generator=torch.Generator().manual_seed(10))
    x = x0 + torch.randn(10, k, generator=torch.Generator().manual_seed(11)) @ W
    rep = S.subspace_report(x, W, x0)
    assert rep["change_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert rep["isotropic_fraction"] == pytest.approx(k / d)
    assert len(rep["principal_angles_deg"]) == k
    assert np.all(np.diff(rep["principal_angles_deg"]) >= 0)


# ---------------------------------------------------------------------------------------------
# Distillation, CLI and notebook (tiny settings: a few seconds each)

TINY = [
    "--d",
    "12",
    "--k",
    "2",
    "--n-syn",
    "4",
    "--n-train",
    "600",
    "--hidden",
    "16",
    "--iterations",
    "4",
    "--eval-steps",
    "20",
    "--eval-seeds",
    "1",
    "--scaling",
    "8,12",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def small_task():
    from nas_proxy.data import load_dataset

    return load_dataset("multi-index:d=10,k=2,n=2000,n_test=500,link=sumtanh,seed=0")


def test_perf_distillation_reduces_its_loss(small_task, tmp_path):
    import csv

    from nas_proxy.theory.distill_tasks import distill_perf

    torch.set_num_threads(1)
    opts = {
        "arch": "mlp:hidden=16,depth=1",
        "iterations": 60,
        "syn_steps": 10,
        "lr_img": 30.0,
        "batch_real": 1800,
        "checkpoint_every": 1000,
    }
    summary = distill_perf(small_task, 4, tmp_path / "p", opts, seed=0)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "p" / "log.csv"))]
    assert len(losses) == 60 and summary["images"] == 4
    # each iteration draws a fresh network, so compare averages over a window
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.02
    from nas_proxy.distill.proxy import load_proxy

    proxy = load_proxy(tmp_path / "p")
    assert proxy.method == "perf" and tuple(proxy.images.shape) == (4, 10)
    assert not torch.equal(proxy.images, proxy.extra["init"])


def test_gm_and_regression_write_proxies(tmp_path):
    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import load_proxy
    from nas_proxy.theory.distill_tasks import distill_task

    reg = load_dataset("multi-index:d=8,k=2,n=300,n_test=100,link=sumtanh,task=regression")
    opts = {"arch": "mlp:hidden=8,depth=1", "iterations": 2, "batch_real": 64}
    for method, data in (("gm", reg), ("perf", reg)):
        distill_task(method, data, 5, tmp_path / method, {**opts, "syn_steps": 3}, seed=0)
        proxy = load_proxy(tmp_path / method)
        assert proxy.labels.dtype == torch.float32 and len(proxy.labels) == 5


def test_cli_theory_returns_every_key(tmp_path):
    from click.testing import CliRunner

    from nas_proxy.cli import main

    res = CliRunner().invoke(
        main, ["theory", "--method", "perf", *TINY, "--out", str(tmp_path / "t"), "--json"]
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for key in (
        "method",
        "d",
        "k",
        "n_syn",
        "test_error_distilled",
        "test_error_random",
        "subspace_fraction",
        "isotropic_fraction",
        "principal_angles_deg",
        "transfer",
        "change_subspace_fraction",
        "weight_alignment",
        "scaling",
        "plots",
    ):
        assert key in result, key
    assert set(result["test_error_random"]) == {"4", "40", "400", "540"}  # n_syn, 10x, 100x, all
    assert set(result["transfer"]) >= {"pretrained", "scratch"}
    assert result["isotropic_fraction"] == pytest.approx(2 / 12)
    assert [row["d"] for row in result["scaling"]] == [8, 12]
    assert {"distilled", "random_4", "real_540"} == set(result["weight_alignment"])
    for path in result["plots"].values():
        assert path.endswith(".png") and (tmp_path / "t" / path.split("/")[-1]).is_file()
    assert set(result["plots"]) == {
        "sample_efficiency",
        "subspace_fractions",
        "principal_angles",
        "transfer",
        "scaling",
    }


def test_cli_theory_user_errors():
    from click.testing import CliRunner

    from nas_proxy.cli import main
    from nas_proxy.errors import UserError

    res = CliRunner().invoke(main, ["theory", "--d", "5", "--k", "6"])
    assert isinstance(res.exception, UserError) and "--k" in str(res.exception)
    res = CliRunner().invoke(main, ["theory", "--scaling", "50,x"])
    assert isinstance(res.exception, UserError) and "--scaling" in str(res.exception)
    res = CliRunner().invoke(
        main,
        [
            "theory",
            "--method",
            "mtt",
            "--task",
            "regression",
            "--d",
            "6",
            "--n-train",
            "100",
            "--iterations",
            "1",
        ],
    )
    assert isinstance(res.exception, UserError) and "mtt" in str(res.exception)


def test_notebook_executes(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    # as tests/test_notebooks.py: "python3" must be this interpreter (the nas_proxy under test)
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", sys.executable), spec.argv
    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("NAS_PROXY_THEORY_OUT", str(tmp_path))
    monkeypatch.setenv("NAS_PROXY_NO_PROGRESS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(root / "notebooks" / "theory.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(root)}}
    )
    client.execute()
    assert (tmp_path / "scaling.png").is_file() and (tmp_path / "result.json").is_file()
