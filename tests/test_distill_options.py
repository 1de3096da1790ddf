"""Each distillation method's typed options: unknown or foreign options are errors, every
option has a flag, and DC's loop settings reach the run from the command line."""

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from nas_proxy.data import load_dataset
from nas_proxy.distill import METHODS, distill
from nas_proxy.distill.options import FLAGS, OPTIONS, DCOptions, method_options, option_names
from nas_proxy.errors import UserError

TINY = "convnet:depth=2,width=8"


def cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "nas_proxy", *args], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_a_typo_is_an_error_not_a_silent_default():
    with pytest.raises(UserError, match="unknown option 'lr_imgs'"):
        method_options("dm", {"lr_imgs": 2.0})


def test_an_option_of_another_method_is_an_error():
    with pytest.raises(UserError, match="--syn-steps is not an option of --method random"):
        method_options("random", {"syn_steps": 5})


def test_values_are_checked_and_converted():
    options = method_options("dc", {"lr_img": 1, "outer_loop": "3", "arch": TINY})
    assert options == DCOptions(lr_img=1.0, outer_loop=3, arch=(TINY,))
    assert isinstance(options.lr_img, float)
    with pytest.raises(UserError, match="--outer-loop 0: must be at least 1"):
        method_options("dc", {"outer_loop": 0})
    with pytest.raises(UserError, match="--iterations 2.5: expected a whole number"):
        method_options("dm", {"iterations": 2.5})
    with pytest.raises(UserError, match="--lr-img fast: expected a number"):
        method_options("dm", {"lr_img": "fast"})
    with pytest.raises(UserError, match="--init sideways: expected real or noise"):
        method_options("dm", {"init": "sideways"})
    assert method_options("mtt", {"syn_steps": None}).given() == {}  # None: not given


def test_distill_refuses_before_writing_anything(tmp_path):
    with pytest.raises(UserError, match="--syn-steps"):
        distill("random", load_dataset("digits"), 2, tmp_path / "p", {"syn_steps": 5})
    assert not (tmp_path / "p").exists()


def test_every_option_has_one_flag_and_every_flag_an_option():
    used = {f.name for cls in OPTIONS.values() for f in fields(cls)}
    assert used == set(FLAGS)
    assert set(OPTIONS) == set(METHODS)


def test_cli_flag_the_method_does_not_read_is_exit_2(tmp_path):
    code, _, err = cli(
        "distill", "--method", "random", "--ipc", "1", "--syn-steps", "5", "--out", str(tmp_path)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--syn-steps is not an option of --method random" in err


def test_cli_config_key_the_method_does_not_read_is_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: herding\nipc: 1\nouter-loop: 3\n")
    code, _, err = cli("distill", "--config", str(cfg), "--out", str(tmp_path / "p"))
    assert code == 2 and "--outer-loop is not an option of --method herding" in err


def test_dc_loop_flags_reach_the_run(tmp_path):
    code, out, err = cli(
        "distill",
        "--method",
        "dc",
        "--ipc",
        "1",
        "--iterations",
        "1",
        "--outer-loop",
        "2",
        "--inner-loop",
        "1",
        "--lr-net",
        "0.02",
        "--batch-real",
        "4",
        "--arch",
        TINY,
        "--no-dsa",
        "--device",
        "cpu",
        "--json",
        "--out",
        str(tmp_path / "dc"),
    )
    assert code == 0, err
    assert json.loads(out)["iterations"] == 1
    settings = json.loads((tmp_path / "dc" / "proxy.json").read_text())["settings"]
    assert (settings["outer_loop"], settings["inner_loop"]) == (2, 1)
    assert (settings["lr_net"], settings["batch_real"]) == (0.02, 4)
    assert set(option_names("dc")) >= {"outer_loop", "inner_loop", "lr_net", "batch_real"}
