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
    from nas_proxy.search.study import WorkerConfig, default_storage, lock_file_name

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
    from nas_proxy.search.study import build_worker, create_or_resume

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

    from nas_proxy.search.study import build_worker, create_or_resume, worker_id

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
