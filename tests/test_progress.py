"""Progress bars: on a terminal and in Jupyter, not in logs or pipes, and off on request
(``nas-proxy --no-progress`` or $NAS_PROXY_NO_PROGRESS)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from click.testing import CliRunner

from nas_proxy.cli import main
from nas_proxy.runtime import NO_PROGRESS_ENV, progress

# A tqdm bar of `train --epochs 3`: "train:  67%|████  | 2/3 [00:01<00:00, 1.9ep/s]".
BAR = re.compile(r"\d/3 \[")


def run_on_terminal(*args: str, timeout: float = 120) -> str:
    """Run the CLI with stderr on a pseudo-terminal of 100 columns, as from an interactive
    shell, and return what it drew there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != NO_PROGRESS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas_proxy", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=max(1, deadline - time.monotonic())) == 0, chunks
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return b"".join(chunks).decode(errors="replace")


TRAIN = ("train", "--dataset", "digits", "--arch", "mlp:hidden=16", "--epochs", "3")


def test_cli_draws_bars_on_a_terminal():
    drawn = run_on_terminal(*TRAIN, "--device", "cpu")
    assert BAR.search(drawn), drawn


def test_no_progress_flag_hides_bars_here_and_in_child_processes(monkeypatch):
    monkeypatch.setenv(NO_PROGRESS_ENV, "")  # unset for this test, restored after it
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        try:
            assert not progress(range(3), file=terminal).disable
            result = CliRunner().invoke(main, ["--no-progress", "export", "--help"])
            assert result.exit_code == 0, result.output
            assert progress(range(3), file=terminal).disable
            # Set in the environment, so search workers (spawned processes) inherit it.
            assert os.environ[NO_PROGRESS_ENV] == "1"
        finally:
            os.close(master)


def test_bars_hide_off_a_terminal_and_with_the_environment_variable(monkeypatch):
    monkeypatch.setenv(NO_PROGRESS_ENV, "")  # unset for this test, restored after it
    assert progress(range(3), file=io.StringIO()).disable  # a log file or a pipe
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        try:
            assert not progress(range(3), file=terminal).disable
            monkeypatch.setenv(NO_PROGRESS_ENV, "1")
            assert progress(range(3), file=terminal).disable
        finally:
            os.close(master)


def test_bars_show_in_a_jupyter_kernel(monkeypatch, tmp_path):
    """A kernel's stderr is not a terminal, yet the notebook shows the bar: it must be on."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)  # the kernel inherits the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cell = (
        "from nas_proxy.runtime import progress\n"
        "bar = progress(range(3), desc='nb-bar', leave=True)\n"
        "from tqdm.notebook import tqdm_notebook\n"
        # Before the loop: close() at its end sets disable.
        "print('disabled', bar.disable, 'widget', isinstance(bar, tqdm_notebook))\n"
        "for _ in bar:\n"
        "    pass\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = nb.cells[0].outputs
    stdout = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "disabled False" in stdout
    # The bar itself: text on the kernel's stderr (tqdm.std), or a widget (tqdm.notebook, with
    # ipywidgets installed) whose plain-text form names it.
    if "widget True" in stdout:
        assert any(o.output_type == "display_data" for o in outputs), outputs
    else:
        stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
        assert "nb-bar" in stderr and "3/3" in stderr
