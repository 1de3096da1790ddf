"""The console entry point re-executes itself under tcmalloc when one is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas_proxy.launch import (
    ENV_CHOICE,
    ENV_DONE,
    ENV_THREADS,
    ENV_THREADS_CHOSEN,
    find_tcmalloc,
    free_cores,
    preload_plan,
    thread_settings,
)

TCMALLOC = find_tcmalloc()
SCRIPT = Path(sys.executable).with_name("nas-proxy")


def test_plan_respects_choices_and_existing_preloads(tmp_path):
    lib = tmp_path / "libfakemalloc.so"
    lib.write_bytes(b"")
    assert preload_plan({ENV_CHOICE: str(lib)}) == str(lib)
    assert preload_plan({ENV_CHOICE: "system"}) is None
    assert preload_plan({ENV_CHOICE: str(lib)}, platform="darwin") is None
    assert preload_plan({ENV_CHOICE: str(lib), ENV_DONE: str(lib)}) is None  # never loops
    assert preload_plan({ENV_CHOICE: str(lib), "LD_PRELOAD": "/x/libjemalloc.so.2"}) is None
    assert preload_plan({}) == TCMALLOC
    with pytest.raises(ValueError, match="no such file"):
        preload_plan({ENV_CHOICE: str(tmp_path / "missing.so")})


def _version(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (ENV_CHOICE, ENV_DONE, "LD_PRELOAD")}
    return subprocess.run(
        [str(SCRIPT), "--version"], env={**clean, **env}, capture_output=True, text=True
    )


@pytest.mark.skipif(not SCRIPT.exists(), reason="the nas-proxy console script is not installed")
def test_console_script_runs_under_tcmalloc_unless_told_not_to():
    if TCMALLOC is None:
        pytest.skip("no tcmalloc installed (Debian: apt-get install libtcmalloc-minimal4)")
    res = _version()
    assert res.returncode == 0 and "allocator tcmalloc" in res.stdout, res.stdout + res.stderr
    res = _version(**{ENV_CHOICE: "system"})
    assert res.returncode == 0 and "allocator system" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(not SCRIPT.exists(), reason="the nas-proxy console script is not installed")
def test_console_script_refuses_a_missing_allocator_in_one_line(tmp_path):
    res = _version(**{ENV_CHOICE: str(tmp_path / "nope.so")})
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no such file" in res.stderr


# --------------------------------------------------------------------------- threads (issue 15)


@pytest.mark.parametrize(
    ("cores", "busy", "free"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 5.0, 1), (16, 3.2, 13), (1, 0, 1)],
)
def test_free_cores_are_what_others_leave_and_never_below_one(cores, busy, free):
    assert free_cores(cores, busy) == free


def test_thread_settings_are_passive_and_leave_the_users_choices_alone(monkeypatch):
    import nas_proxy.launch

    monkeypatch.setattr(nas_proxy.launch, "busy_cores", lambda: 0.0)  # the load, held still
    auto = thread_settings({})
    assert auto["OMP_WAIT_POLICY"] == "PASSIVE"
    assert auto["OMP_NUM_THREADS"] == auto[ENV_THREADS_CHOSEN] == str(free_cores())
    assert "OMP_WAIT_POLICY" not in thread_settings({"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_NUM_THREADS" not in thread_settings({"OMP_NUM_THREADS": "3"})  # the user's
    assert thread_settings({ENV_THREADS: "3"})["OMP_NUM_THREADS"] == "3"  # the override wins
    assert thread_settings({ENV_THREADS: "3", "OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "3"
    # a parent nas-proxy's choice is no user's: a child chooses afresh
    inherited = {"OMP_NUM_THREADS": "7", ENV_THREADS_CHOSEN: "7"}
    assert thread_settings(inherited)["OMP_NUM_THREADS"] == str(free_cores())
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match=f"{ENV_THREADS}={bad}: expected auto"):
            thread_settings({ENV_THREADS: bad})


_REPORT_THREADS = (
    "import os, sys, nas_proxy.cli as cli\n"
    "def report():\n"
    "    import torch\n"
    "    print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())\n"
    "cli.run = report\n"
    "sys.argv = ['nas-proxy']\n"
    "from nas_proxy.launch import main\n"
    "main()\n"
)


def _threads_under_launcher(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMP_", "NAS_PROXY_THREADS", "NAS_PROXY_ALLOCATOR"))
    }
    return subprocess.run(
        [sys.executable, "-c", _REPORT_THREADS],
        env={**clean, ENV_CHOICE: "system", **env},
        capture_output=True,
        text=True,
    )


def test_the_entry_point_starts_torch_with_the_chosen_threads():
    res = _threads_under_launcher(**{ENV_THREADS: "1"})
    assert res.returncode == 0 and res.stdout.split() == ["PASSIVE", "1"], res.stderr
    res = _threads_under_launcher(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2")
    assert res.returncode == 0 and res.stdout.split() == ["ACTIVE", "2"], res.stderr
    res = _threads_under_launcher(**{ENV_THREADS: "many"})
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert f"{ENV_THREADS}=many" in res.stderr


def test_pool_workers_share_the_threads(monkeypatch):
    from nas_proxy.errors import UserError
    from nas_proxy.runtime import worker_threads

    monkeypatch.setenv(ENV_THREADS, "4")
    assert [worker_threads(w) for w in (1, 2, 3, 8)] == [4, 2, 1, 1]
    monkeypatch.setenv(ENV_THREADS, "lots")
    with pytest.raises(UserError, match="NAS_PROXY_THREADS=lots"):
        worker_threads(2)
