"""The package as a user installs it: a wheel that carries the search spaces, and a library that
leaves Optuna's logging alone."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source (so the build leaves nothing in the checkout),
    with this environment's setuptools and no network."""
    # --no-build-isolation builds with the setuptools installed here: from 70.1 it writes
    # wheels itself (torch depends on a newer one, so a fresh install of the project has it).
    pytest.importorskip("setuptools", minversion="70.1", reason="building a wheel offline")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "nas_proxy", src / "nas_proxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = (work / "dist").glob("nas_proxy-*.whl")
    return built


def test_wheel_carries_the_search_spaces(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "nas_proxy" / "search_spaces").iterdir())
    assert sorted(n.rsplit("/", 1)[1] for n in names if "/search_spaces/" in n) == shipped
    assert "nas_proxy/search_spaces/convnet.yaml" in names
    assert all(n.startswith(("nas_proxy/", "nas_proxy-")) for n in names), names  # no tests/


def test_default_space_loads_from_an_installed_wheel(wheel, tmp_path):
    """Install the wheel into a fresh venv and load the pipeline's default space from there.

    A fresh install with its dependencies would download torch (gigabytes): instead the venv
    is made without pip, the wheel is installed into it with ``--no-deps`` by this
    environment's pip (``pip --python``: a real install, with dist-info and the console
    script), and a ``.pth`` file puts this environment's site-packages *after* the venv's for
    the dependencies. Path lines of a ``.pth`` add folders but do not run the ``.pth`` files
    in them, so the editable install of the checkout stays out; the check below asserts that
    nas_proxy and its spaces come from the venv, and it runs from a folder without
    ``search_spaces/``.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = (
        "import json, nas_proxy\n"
        "from nas_proxy.pipeline import DEFAULT_SPACE\n"
        "from nas_proxy.search import load_space\n"
        "space = load_space(DEFAULT_SPACE)\n"
        "print(json.dumps({'module': nas_proxy.__file__, 'space': str(space.path),\n"
        "                  'families': [f.family for f in space.families]}))\n"
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run(
        [str(python), "-c", check], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert Path(found["module"]).is_relative_to(purelib)
    assert found["space"] == str(Path(purelib, "nas_proxy", "search_spaces", "convnet.yaml"))
    assert found["families"] == ["convnet"]
    assert (venv / "bin" / "nas-proxy").is_file()  # the console script was installed too


def test_loading_a_study_leaves_optuna_logging_alone(tmp_path, caplog):
    from nas_proxy.rank.candidates import load_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url)
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default, whatever ran before
    try:
        with caplog.at_level(logging.INFO, logger="nas_proxy"):
            load_study(url, "s")
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)
    assert any(
        r.name == "nas_proxy.rank.candidates" and "loaded study s" in r.message
        for r in caplog.records
    )


def test_spaces_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from nas_proxy.errors import UserError
    from nas_proxy.search.space import resolve_space, shipped_spaces

    monkeypatch.chdir(tmp_path)  # no search_spaces/ here
    shipped = shipped_spaces()
    assert set(shipped) == {"convnet", "mixed", "mlp", "timm_small"}
    for name in ("mlp", "mlp.yaml", "search_spaces/mlp.yaml"):
        assert resolve_space(name) == shipped["mlp"]
    (tmp_path / "mlp.yaml").write_text("families: {mlp: {}}\n")
    assert resolve_space("mlp.yaml") == Path("mlp.yaml")  # a file of the user's comes first
    with pytest.raises(UserError, match="shipped: convnet, mixed, mlp, timm_small"):
        resolve_space("elsewhere/mlp.yaml")
