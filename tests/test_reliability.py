"""Reliability (issue 15): many processes on one study, bad input as clear errors, files that
others can read, resumes that read right, thread choice under load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("NAS_PROXY_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES,
    reason="NAS_PROXY_TEST_POSTGRES_URL is not set: no PostgreSQL server "
    "(.ci/postgres.sh starts one and sets it)",
)

# Each process imports first, says "ready", and opens the storage only on "go": all of them
# create the schema at the same moment.
_OPEN_STUDY = """
import sys
from nas_proxy.search.study import create_or_resume
print("ready", flush=True)
sys.stdin.readline()
create_or_resume(sys.argv[1], "race", ["accuracy"], {"seed": 0}, {})
print("opened", flush=True)
"""


@pytest.fixture
def fresh_postgres_db():
    """A new, empty database on the test server (dropped afterwards)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    base = make_url(POSTGRES)
    assert base.host in ("127.0.0.1", "localhost")
    name = f"nas_proxy_fresh_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(
        host=base.host, port=base.port, user=base.username, dbname=base.database
    )
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@needs_postgres
def test_processes_started_together_on_an_empty_postgres_database_all_run(fresh_postgres_db):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STUDY, fresh_postgres_db],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == "opened", err


# --------------------------------------------------------------------------- many processes

# A space of 6 * 61 = 366 specs: distinct draws are the rule, repeats the exception.
WIDE_SPACE = """
families:
  convnet:
    depth: {int: [1, 2]}
    width: {int: [4, 64]}
    norm: [none, batch, instance]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, random_digits_proxy) -> Path:
    """A seeded random real subset of digits, 3 images per class."""
    return random_digits_proxy(tmp_path_factory.mktemp("proxy") / "digits-random", 3)


@pytest.fixture
def wide_space(tmp_path) -> Path:
    path = tmp_path / "wide.yaml"
    path.write_text(WIDE_SPACE)
    return path


def _worker_config(proxy: Path, space: Path, out: Path, **kw):
    from nas_proxy.search.workers import WorkerConfig, lock_file_name
    from nas_proxy.study_storage import default_storage

    fields = {
        "index": 0,
        "storage": default_storage(out),
        "study_name": "nas-proxy",
        "space": str(space),
        "proxy": str(proxy),
        "target": 4,
        "lock_path": str(out / lock_file_name("nas-proxy")),
        "objectives": ("accuracy",),
        "sampler": "tpe",
        "pruner": "none",
        "seed": 0,
        "device": "cpu",
        "threads": None,
        "epochs": 1,
        "lr": None,
        "max_params": None,
        "max_flops": None,
        "data_dir": None,
        "download": False,
    }
    return WorkerConfig(**{**fields, **kw})


def _archs(storage: str) -> list[str]:
    from nas_proxy.search import open_study

    return [t.user_attrs.get("arch") for t in open_study(storage).trials]


def test_two_searches_on_one_study_sample_different_specs(proxy, wide_space, tmp_path):
    """Two `nas-proxy search` processes with the same flags hold two samplers alike in all but
    their process: each builds its own (as build_worker does) and they take turns."""
    from nas_proxy.search.study import create_or_resume
    from nas_proxy.search.workers import build_worker

    out = tmp_path / "s"
    cfg = _worker_config(proxy, wide_space, out)
    create_or_resume(cfg.storage, cfg.study_name, cfg.objectives, {"seed": 0}, {}, out)
    a, b = build_worker(cfg), build_worker(cfg)
    for study, objective in (a, b, a, b):
        study.optimize(objective, n_trials=1)
    archs = _archs(cfg.storage)
    assert len(archs) == 4 and len(set(archs)) == 4, archs


def test_resumed_search_does_not_replay_its_first_choices(proxy, wide_space, tmp_path):
    from nas_proxy.search import open_study, run_search

    kw = {"epochs": 1, "device": "cpu", "pruner": "none"}
    res = run_search(proxy, wide_space, tmp_path / "s", trials=3, **kw)
    run_search(proxy, wide_space, tmp_path / "s", trials=6, **kw)  # resume, extended
    trials = open_study(res["storage"]).trials
    first, resumed = [t.params for t in trials[:3]], [t.params for t in trials[3:]]
    assert len(resumed) == 3 and not any(p in first for p in resumed), (first, resumed)


def test_a_spec_running_elsewhere_is_not_trained_again(proxy, tmp_path):
    """Trial 0 of a spec is running in "another process"; trial 1 draws the same spec: it
    waits for trial 0 and takes its score instead of training the spec a second time."""
    import threading

    import optuna

    from nas_proxy.search.liveness import worker_id
    from nas_proxy.search.study import create_or_resume
    from nas_proxy.search.workers import build_worker

    space = tmp_path / "one.yaml"
    space.write_text("families:\n  mlp:\n    depth: 1\n    hidden: 16\n")  # one spec only
    out = tmp_path / "s"
    cfg = _worker_config(proxy, space, out)
    create_or_resume(cfg.storage, cfg.study_name, cfg.objectives, {"seed": 0}, {}, out)
    other = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    running = other.ask()
    running.set_user_attr("worker", worker_id())  # alive: this process
    running.set_user_attr("arch", "mlp:act=relu,depth=1,dropout=0.0,hidden=16,norm=none")

    def finish() -> None:
        time.sleep(2.0)
        running.set_user_attr("proxy_score", 0.5)
        other.tell(running, 0.5)

    thread = threading.Thread(target=finish)
    thread.start()
    study, objective = build_worker(cfg)
    study.optimize(objective, n_trials=1)
    thread.join()
    second = study.trials[1]
    assert second.state.name == "COMPLETE", second.user_attrs
    assert second.user_attrs["reused_from"] == 0 and second.value == 0.5
    assert second.user_attrs["wall_s"] == 0.0  # never trained


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``nas-proxy ARGS`` through the console entry point, in this process."""
    from nas_proxy.cli import run

    monkeypatch.setattr(sys, "argv", ["nas-proxy", *args])
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _search_args(proxy: Path, space: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--proxy",
        str(proxy),
        "--space",
        str(space),
        "--out",
        str(out),
        "--trials",
        "1",
        "--epochs",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.parametrize("name", ["a/b", "x" * 500, "/../../x/TRAVERSED"])
def test_study_names_never_become_paths(proxy, wide_space, tmp_path, monkeypatch, capsys, name):
    out = tmp_path / "deep" / "er" / "s"
    code, _, err = _cli(monkeypatch, capsys, *_search_args(proxy, wide_space, out, "--study", name))
    assert code == 0, err
    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert made == {Path("deep"), Path("deep/er"), Path("wide.yaml")}  # nothing outside --out


def test_a_study_name_too_long_for_the_storage_is_a_user_error(
    proxy, wide_space, tmp_path, monkeypatch, capsys
):
    args = _search_args(proxy, wide_space, tmp_path / "s", "--study", "x" * 600)
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "--study" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("form", ["sqlite:///{}/study.db", "journal:{}/study.log"])
def test_storage_folders_are_created_only_under_out(
    proxy, wide_space, tmp_path, monkeypatch, capsys, form
):
    elsewhere = tmp_path / "elsewhere" / "sub"
    out = tmp_path / "s"
    args = _search_args(proxy, wide_space, out, "--storage", form.format(elsewhere))
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "elsewhere").exists()

    inside = out / "db" / "sub"
    code, _, err = _cli(
        monkeypatch, capsys, *_search_args(proxy, wide_space, out, "--storage", form.format(inside))
    )
    assert code == 0, err
    assert inside.is_dir()


# --------------------------------------------------------------------------- bad proxies


def _tampered(proxy: Path, dest: Path, tensors=None, meta=None) -> Path:
    """A copy of ``proxy`` with tensors and metadata entries replaced, checksum kept valid
    (what a hand-edited or buggy-tool proxy looks like)."""
    from nas_proxy.distill.proxy import META_FILE, TENSORS_FILE
    from nas_proxy.io import file_sha256, load_tensors, read_json, save_tensors, write_json

    loaded = {**load_tensors(proxy / TENSORS_FILE), **(tensors or {})}
    save_tensors(dest / TENSORS_FILE, loaded)
    info = {**read_json(proxy / META_FILE), **(meta or {})}
    info["tensors_sha256"] = file_sha256(dest / TENSORS_FILE)
    write_json(dest / META_FILE, info)
    return dest


def _bad_proxies():
    import torch

    recipe = {"epochs": 1, "lr": 0.01, "batch_size": 256}
    return {
        "labels out of range": ({"labels": torch.arange(30) % 10 + 1}, None, "labels must lie"),
        "negative labels": ({"labels": torch.arange(30) % 10 - 1}, None, "labels must lie"),
        "float labels": ({"labels": (torch.arange(30) % 10).float()}, None, "float labels"),
        "zero images": (
            {"images": torch.zeros(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.long)},
            None,
            "no images",
        ),
        "NaN images": ({"images": torch.full((30, 1, 8, 8), float("nan"))}, None, "NaN"),
        "epochs NaN": (None, {"recipe": {**recipe, "epochs": float("nan")}}, "recipe epochs"),
        "string batch": (None, {"recipe": {**recipe, "batch_size": "32"}}, "recipe batch_size"),
        "vector lr": (None, {"recipe": {**recipe, "lr": [0.1, 0.2]}}, "recipe lr"),
        "bad optimizer": (None, {"recipe": {**recipe, "optimizer": "rmsprop"}}, "optimizer"),
        "shape": (None, {"shape": [3, 8, 8]}, "shape"),
        "num_classes": (None, {"num_classes": "ten"}, "num_classes"),
    }


@pytest.mark.parametrize("case", sorted(_bad_proxies()))
def test_a_bad_proxy_is_refused_when_loaded(proxy, tmp_path, case):
    from nas_proxy.distill.proxy import load_proxy
    from nas_proxy.errors import UserError

    tensors, meta, message = _bad_proxies()[case]
    bad = _tampered(proxy, tmp_path / "bad", tensors, meta)
    with pytest.raises(UserError, match=message):
        load_proxy(bad)


@pytest.mark.parametrize(
    "meta",
    [
        {"num_classes": 12},
        {"normalization": {"mean": [0.5], "std": [0.25]}},
    ],
)
def test_a_proxy_that_disagrees_with_its_dataset_is_refused(proxy, tmp_path, meta):
    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import check_compatible, load_proxy
    from nas_proxy.errors import UserError

    bad = load_proxy(_tampered(proxy, tmp_path / "bad", meta=meta))
    with pytest.raises(UserError, match="dataset 'digits'"):
        check_compatible(bad, load_dataset("digits"))


def test_search_on_a_nan_proxy_exits_2_before_any_trial(
    proxy, wide_space, tmp_path, monkeypatch, capsys
):
    import torch

    bad = _tampered(proxy, tmp_path / "bad", {"images": torch.full((30, 1, 8, 8), float("nan"))})
    out = tmp_path / "s"
    code, _, err = _cli(monkeypatch, capsys, *_search_args(bad, wide_space, out))
    assert code == 2 and "NaN" in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "study.db").exists()


# --------------------------------------------------------------------------- --config


def test_config_keys_are_the_long_flag_names(proxy, wide_space, tmp_path, monkeypatch, capsys):
    import json

    import yaml

    cfg = tmp_path / "search.yaml"
    settings = {"proxy": str(proxy), "space": str(wide_space), "out": str(tmp_path / "s")}
    settings |= {"study": "from-config", "json": True, "trials": 1, "epochs": 1, "device": "cpu"}
    cfg.write_text(yaml.safe_dump(settings))
    code, out, err = _cli(monkeypatch, capsys, "search", "--config", str(cfg))
    assert code == 0, err
    assert json.loads(out)["study"] == "from-config"


def test_a_config_file_that_is_not_utf8_is_a_user_error(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("arch: mlp\n# caf\u00e9\n".encode("latin-1"))
    code, _, err = _cli(monkeypatch, capsys, "train", "--config", str(cfg))
    assert code == 2 and "UTF-8" in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- unwritable --out


def _writers(tmp_path: Path, proxy: Path, space: Path, out: str) -> dict[str, list[str]]:
    """One cheap invocation of every command that writes, its output folder at ``out``: if
    the folder were not checked first, each would work (briefly) and then fail writing."""
    digits = ["--dataset", "digits", "--device", "cpu"]
    return {
        "train": ["train", "--arch", "mlp:hidden=8", "--epochs", "1", *digits, "--out", out],
        "distill": ["distill", *digits, "--method", "random", "--ipc", "1", "--out", out],
        "distill --experts": [
            "distill",
            *digits,
            "--ipc",
            "1",
            "--iterations",
            "1",
            "--out",
            str(tmp_path / "ok"),
            "--experts",
            out,
        ],
        "experts": [
            "experts",
            *digits,
            "--arch",
            "mlp:hidden=8",
            "--num-experts",
            "1",
            "--out",
            out,
        ],
        "export": ["export", "--proxy", str(proxy), "--out", out],
        "search": _search_args(proxy, space, Path(out)),
        "theory": ["theory", *TINY_THEORY, "--out", out],
        "pipeline": ["pipeline", "--dataset", "digits", "--out", out, "--device", "cpu"],
        "rank": ["rank", "--proxy", str(proxy), "--sample", "2", "--out", out, "--device", "cpu"],
    }


@pytest.mark.parametrize(
    "command",
    [
        "train",
        "distill",
        "distill --experts",
        "experts",
        "export",
        "search",
        "theory",
        "pipeline",
        "rank",
    ],
)
def test_an_unwritable_output_folder_is_refused_before_any_work(
    proxy, wide_space, tmp_path, monkeypatch, capsys, command
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = _writers(tmp_path, proxy, wide_space, str(blocker / "out"))[command]
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a-file" in err and "not a folder" in err, err
    assert not (tmp_path / "ok").exists()  # refused up front: nothing made, nothing trained


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_output_folder_is_refused(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    args = ["train", "--arch", "mlp:hidden=8", "--epochs", "1", "--dataset", "digits"]
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", str(locked / "run"))
    assert code == 2 and "cannot write there" in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- theory defaults

TINY_THEORY = [
    "--d",
    "8",
    "--k",
    "2",
    "--n-syn",
    "4",
    "--n-train",
    "100",
    "--hidden",
    "8",
    "--iterations",
    "2",
    "--eval-steps",
    "5",
    "--eval-seeds",
    "1",
    "--device",
    "cpu",
]


def test_theory_runs_of_two_methods_get_their_own_default_folders(tmp_path, monkeypatch, capsys):
    """Issue 15: `theory --method gm`, then `--method perf`, both with the default --out,
    used to share runs/theory and the second was refused. Each also writes its plots
    atomically: a figure that fails half-way leaves the earlier plot intact."""
    import json

    import matplotlib.figure

    from nas_proxy.theory.experiment import make_plots

    monkeypatch.chdir(tmp_path)
    for method in ("gm", "perf"):
        code, out, err = _cli(monkeypatch, capsys, "theory", "--method", method, *TINY_THEORY)
        assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "runs" / "theory").iterdir())
    assert folders == ["gm", "perf"]
    result = json.loads((tmp_path / "runs/theory/perf/result.json").read_text())
    assert result["method"] == "perf" and result["out"] == "runs/theory/perf"

    plot = tmp_path / "runs/theory/perf/sample_efficiency.png"
    before = plot.read_bytes()

    def dies_half_way(fig, fname, **kwargs):
        Path(fname).write_bytes(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        make_plots(result, plot.parent)
    assert plot.read_bytes() == before
    assert not [p for p in plot.parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- files and resumes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    from nas_proxy.io import save_tensors, write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        import torch

        save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == mode


def test_an_atomic_rewrite_keeps_the_files_mode(tmp_path):
    from nas_proxy.io import write_json

    path = tmp_path / "shared.json"
    write_json(path, {"v": 1})
    path.chmod(0o640)
    write_json(path, {"v": 2})
    assert path.stat().st_mode & 0o777 == 0o640 and '"v": 2' in path.read_text()


class _Killed(Exception):
    """Stands for kill -9 inside an iteration."""


def _count_run(out: Path, iterations: int, die_at: int | None = None) -> dict:
    """The real outer loop of every distillation method on a tensor that counts iterations
    (checkpoint every 2); ``die_at`` raises inside that iteration, after the ones before."""
    import torch

    from nas_proxy.distill.common import run_iterations

    counter = torch.zeros(1)

    def step(it: int, generator: torch.Generator) -> dict[str, float]:
        if it == die_at:
            raise _Killed
        counter.add_(1)
        return {"loss": float(counter)}

    summary = run_iterations(
        out=out,
        iterations=iterations,
        step=step,
        tensors={"counter": counter},
        optimizers={},
        settings={"kind": "count"},
        seed=0,
        checkpoint_every=2,
    )
    return {**summary, "counter": float(counter)}


def test_a_checkpoint_is_one_file_whose_tensors_and_iteration_agree(tmp_path):
    """A kill between the two renames of a two-file checkpoint left new tensors beside the
    old iteration. Here: the files of a run at iteration 6 land in a run at iteration 4 (as
    a kill after the first rename left them); the resume must read 6 with the tensors of 6."""
    import shutil

    _count_run(tmp_path / "at4", 4)
    _count_run(tmp_path / "at6", 6)
    assert sorted(p.name for p in (tmp_path / "at6").iterdir()) == [
        "checkpoint.safetensors",
        "log.csv",
    ]
    shutil.copy(tmp_path / "at6" / "checkpoint.safetensors", tmp_path / "at4")
    resumed = _count_run(tmp_path / "at4", 8)
    assert resumed["resumed_from"] == 6 and resumed["counter"] == 8.0


def test_a_resumed_log_has_each_iteration_once(tmp_path):
    import csv

    with pytest.raises(_Killed):
        _count_run(tmp_path / "run", 6, die_at=3)  # logged 1, 2, 3; checkpoint at 2
    with open(tmp_path / "run" / "log.csv", "a") as f:
        f.write("4,4.0")  # and a row the kill cut short
    resumed = _count_run(tmp_path / "run", 6)
    assert resumed["resumed_from"] == 2 and resumed["counter"] == 6.0
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_an_image_grid_that_fails_half_way_leaves_the_old_one(tmp_path, monkeypatch):
    import matplotlib.figure
    import torch

    from nas_proxy.distill.common import save_image_grid

    images, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 0, 1, 1])
    grid = save_image_grid(images, labels, tmp_path / "grid.png")
    before = grid.read_bytes()

    def dies_half_way(fig, fname, **kwargs):
        Path(fname).write_bytes(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(images, labels, tmp_path / "grid.png")
    assert grid.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left
