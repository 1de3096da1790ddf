"""``nas-proxy evaluate``: JSON keys, recalibration flag, exit codes, refusal of pickles."""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner

from nas_proxy.cli import main, run
from nas_proxy.data import load_dataset
from nas_proxy.distill.subsets import run_random
from nas_proxy.io import file_sha256, read_json, write_json

FAST = ["--epochs", "40", "--device", "cpu"]


def cli(monkeypatch, *args: str) -> tuple[int, str, str]:
    """The real entry point (``run``: exit-code mapping included), in-process, with click's
    test isolation capturing stdout and stderr separately."""
    monkeypatch.setattr(sys, "argv", ["nas-proxy", *args])
    with CliRunner().isolation() as (out, err, _):
        try:
            run()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy") / "random"
    run_random(load_dataset("digits"), 3, out, {}, seed=0, device=torch.device("cpu"))
    return out


def test_help_lists_evaluate():
    res = CliRunner().invoke(main, ["evaluate", "--help"])
    assert res.exit_code == 0 and "--no-recalibrate" in res.output


def test_json_results_per_proxy_and_arch(monkeypatch, proxy_dir):
    code, out, err = cli(
        monkeypatch,
        "evaluate",
        "--proxy",
        str(proxy_dir),
        "--arch",
        "mlp:hidden=16",
        "--arch",
        "convnet:depth=1,width=4",
        "--seeds",
        "2",
        "--json",
        *FAST,
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["arch"].split(":")[0] for r in results] == ["mlp", "convnet"]
    for r in results:
        assert {
            "proxy",
            "method",
            "arch",
            "accuracy_mean",
            "accuracy_std",
            "seeds",
            "accuracies",
            "wall_s",
        } <= set(r)
        assert r["method"] == "random" and r["seeds"] == 2 and len(r["accuracies"]) == 2
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["accuracy_std"] >= 0.0
        assert r["accuracy_mean"] > 0.2  # 40 steps on 30 real images: well above chance


def test_table_and_no_recalibrate_flag(monkeypatch, proxy_dir):
    args = (
        "evaluate",
        "--proxy",
        str(proxy_dir),
        "--arch",
        "convnet:depth=1,width=4,norm=batch",
        "--seeds",
        "1",
        *FAST,
    )
    code, out, err = cli(monkeypatch, *args)
    assert code == 0, err
    assert "accuracy" in out.splitlines()[0] and "±" in out
    code, out, err = cli(monkeypatch, *args, "--no-recalibrate", "--json")
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--proxy", "/no/such/proxy", "--arch", "mlp"], "/no/such/proxy"),
        (["--arch", "mlp"], "--proxy"),
        (["--proxy", "{proxy}", "--arch", "convnet:colour=red"], "colour"),
        (
            ["--proxy", "{proxy}", "--arch", "mlp", "--dataset", "mnist", "--data-dir", "{proxy}"],
            "mnist",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(monkeypatch, proxy_dir, args, needle):
    args = [a.replace("{proxy}", str(proxy_dir)) for a in args]
    code, _, err = cli(monkeypatch, "evaluate", *args, *FAST)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


class _TouchOnUnpickle:
    """A pickle payload that creates ``marker`` when unpickled (as an attacker's would)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_disguised_as_proxy_is_refused_and_never_run(
    monkeypatch, proxy_dir, tmp_path, writer
):
    # the payload is live: unpickling a twin of it does create its marker
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    evil = tmp_path / "evil"
    shutil.copytree(proxy_dir, evil)
    tensors = evil / "proxy.safetensors"
    if writer == "pickle":
        tensors.write_bytes(pickle.dumps({"images": _TouchOnUnpickle(marker)}))
    else:
        torch.save({"images": _TouchOnUnpickle(marker)}, tensors)
    # a consistent checksum, so that the safetensors parser itself has to refuse it
    meta = read_json(evil / "proxy.json")
    write_json(evil / "proxy.json", {**meta, "tensors_sha256": file_sha256(tensors)})

    code, _, err = cli(monkeypatch, "evaluate", "--proxy", str(evil), "--arch", "mlp", *FAST)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "proxy.safetensors" in err
    assert not marker.exists()
