"""Command-line interface: a thin layer that turns flags into library calls.

Each command lives in its own module and registers itself on ``main``. Shared behaviour
(``--config``, ``--json``, ``--seed``, ``--device``, exit codes) lives in ``common``.
"""

from __future__ import annotations

# Importing the command modules registers them on ``main``.
from nas_proxy.cli import data_cmd as _data_cmd  # noqa: E402,F401
from nas_proxy.cli import distill_cmd as _distill_cmd  # noqa: E402,F401
from nas_proxy.cli import evaluate_cmd as _evaluate_cmd  # noqa: E402,F401
from nas_proxy.cli import experts_cmd as _experts_cmd  # noqa: E402,F401
from nas_proxy.cli import export_cmd as _export_cmd  # noqa: E402,F401
from nas_proxy.cli import pipeline_cmd as _pipeline_cmd  # noqa: E402,F401
from nas_proxy.cli import rank_cmd as _rank_cmd  # noqa: E402,F401
from nas_proxy.cli import search_cmd as _search_cmd  # noqa: E402,F401
from nas_proxy.cli import theory_cmd as _theory_cmd  # noqa: E402,F401
from nas_proxy.cli import train_cmd as _train_cmd  # noqa: E402,F401
from nas_proxy.cli.common import main, run

__all__ = ["main", "run"]
