"""The console entry point re-executes itself under tcmalloc when one is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas_proxy.launch import ENV_CHOICE, ENV_DONE, find_tcmalloc, preload_plan

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
