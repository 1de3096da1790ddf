"""CLI contract: exit codes, one-line errors, --json on stdout, --config precedence."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nas_proxy.cli import main


def invoke(*args):
    """Run the real entry point in a subprocess: exit codes and stderr as a user sees them."""
    proc = subprocess.run(
        [sys.executable, "-m", "nas_proxy", *args], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_help_lists_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("train", "data"):
        assert cmd in res.output


def test_train_json_keys_and_stdout_is_one_object():
    code, out, err = invoke(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "mlp:hidden=64",
        "--epochs",
        "6",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    result = json.loads(out)
    for key in (
        "arch",
        "dataset",
        "epochs",
        "val_accuracy",
        "test_accuracy",
        "params",
        "flops",
        "wall_s",
    ):
        assert key in result
    assert result["test_accuracy"] > 0.8


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--arch", "resnet:depth=3"], "resnet"),
        (["train", "--arch", "convnet:depth=3,colour=red"], "colour"),
        (["train", "--arch", "mlp", "--device", "tpu"], "--device"),
        (["train", "--arch", "mlp", "--dataset", "nope"], "nope"),
        (
            ["train", "--arch", "mlp", "--dataset", "fashion-mnist", "--data-dir", "/no/such/dir"],
            "/no/such/dir",
        ),
        (["train", "--arch", "mlp", "--epochs", "0"], "epochs"),
        (["train", "--arch", "mlp", "--config", "/no/such.yaml"], "/no/such.yaml"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, needle):
    code, out, err = invoke(*args)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("dataset: digits\narch: mlp:hidden=16\nepochs: 1\nbatch-size: 64\n")
    code, out, err = invoke(
        "train", "--config", str(cfg), "--epochs", "2", "--json", "--device", "cpu"
    )
    assert code == 0, err
    result = json.loads(out)
    assert (
        result["epochs"] == 2
        and result["arch"].startswith("mlp:")
        and "hidden=16" in result["arch"]
    )


def test_unknown_config_key_is_a_user_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("arch: mlp\nepochz: 3\n")
    code, _, err = invoke("train", "--config", str(cfg))
    assert code == 2 and "epochz" in err and len(err.strip().splitlines()) == 1


def test_truncated_fashion_mnist_is_exit_2(tmp_path):
    import gzip
    import shutil
    from pathlib import Path

    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install it)")
    dst = tmp_path / "fashion-mnist"
    dst.mkdir()
    for f in src.glob("*.gz"):
        shutil.copy(f, dst / f.name)
    images = dst / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    code, _, err = invoke(
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path),
        "--arch",
        "mlp",
        "--epochs",
        "1",
    )
    assert code == 2 and "train-images" in err and len(err.strip().splitlines()) == 1


def test_loading_the_cli_imports_no_heavy_library():
    """--help and --version stay fast: the CLI imports torch only inside the commands."""
    code = (
        "import sys, nas_proxy, nas_proxy.cli; "
        "print(','.join(m for m in ('torch', 'numpy', 'optuna', 'timm') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_version_names_torch_and_the_allocator():
    code, out, err = invoke("--version")
    assert code == 0, err
    from importlib.metadata import version

    assert f"{version('nas-proxy')} (torch {version('torch')}, allocator " in out


def test_choices_and_recipe_defaults_come_from_the_library():
    from nas_proxy.distill import METHODS
    from nas_proxy.recipe import FULL_DATA, OPTIMIZERS, SCHEDULES
    from nas_proxy.search.samplers import PRUNERS
    from nas_proxy.theory.distill_tasks import METHODS as THEORY_METHODS

    def params(command):
        return {p.name: p for p in main.commands[command].params}

    assert tuple(params("distill")["method"].type.choices) == tuple(METHODS)
    assert tuple(params("pipeline")["pruner"].type.choices) == tuple(PRUNERS)
    assert tuple(params("theory")["method"].type.choices) == tuple(THEORY_METHODS)
    for command in ("train", "rank"):
        recipe = params(command)
        assert tuple(recipe["optimizer"].type.choices) == OPTIMIZERS
        assert tuple(recipe["schedule"].type.choices) == SCHEDULES
        assert (recipe["lr"].default, recipe["batch_size"].default) == (
            FULL_DATA.lr,
            FULL_DATA.batch_size,
        )
