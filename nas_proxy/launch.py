"""Console entry point: run the CLI under tcmalloc when it is installed (Linux).

Unrolled trajectory matching allocates and frees tens of GB per iteration in blocks of tens of
MB. glibc's malloc hands every block above its mmap threshold (at most 32 MB) back to the kernel
when it is freed, so the next step page-faults the same memory in again: on a 2-core VM 40% of an
MTT iteration was kernel time. tcmalloc keeps freed blocks for reuse; under it the same iteration
took 0.6x the time with a lower peak (``benchmarks/RESULTS.md``). An allocator can only be
chosen before the process starts, so the entry point re-executes itself once with ``LD_PRELOAD``.

``NAS_PROXY_ALLOCATOR`` chooses: ``auto`` (default: tcmalloc if found, else the system's),
``system`` (never re-execute), or the path of a malloc library to preload. Nothing happens when
``LD_PRELOAD`` already names a malloc. Only the standard library is imported before the re-exec.
Notebooks can get the same with ``LD_PRELOAD=<path of libtcmalloc_minimal.so.4> jupyter ...``.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

ENV_CHOICE = "NAS_PROXY_ALLOCATOR"
ENV_DONE = "NAS_PROXY_ALLOCATOR_PRELOADED"  # set on the re-executed process: never loop
TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")


def find_tcmalloc() -> str | None:
    """Absolute path of an installed tcmalloc (Debian/Ubuntu ``libtcmalloc-minimal4``, Fedora
    ``gperftools-libs``, conda ``gperftools``), or None."""
    dirs = [Path(sys.prefix) / "lib", Path("/usr/local/lib")]
    dirs += [Path("/usr/lib") / d for d in ("x86_64-linux-gnu", "aarch64-linux-gnu")]
    dirs += [Path("/usr/lib64"), Path("/usr/lib")]
    for d in dirs:
        for name in TCMALLOC_FILES:
            if (d / name).is_file():
                return str(d / name)
    return ctypes.util.find_library("tcmalloc_minimal")  # ldconfig's cache, a bare file name


def preload_plan(environ: dict[str, str], platform: str = sys.platform) -> str | None:
    """The library to preload for this process, or None to run as is.

    Raises ValueError for a ``NAS_PROXY_ALLOCATOR`` that names no file.
    """
    choice = environ.get(ENV_CHOICE, "auto").strip() or "auto"
    if platform != "linux" or environ.get(ENV_DONE) or choice == "system":
        return None
    if "malloc" in environ.get("LD_PRELOAD", ""):  # the user chose one already
        return None
    if choice == "auto":
        return find_tcmalloc()
    if not Path(choice).is_file():
        raise ValueError(
            f"{ENV_CHOICE}={choice}: no such file; use auto, system or the path of a malloc "
            "library such as libtcmalloc_minimal.so.4"
        )
    return choice


def preload_env(library: str, environ: dict[str, str]) -> dict[str, str]:
    """``environ`` for a process that should run with ``library`` as its malloc."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    env[ENV_DONE] = library
    # tcmalloc reports every allocation above 1 GB on stderr; datasets are that large
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(2**40))
    return env


def allocator_env(name: str, environ: dict[str, str]) -> dict[str, str]:
    """``environ`` for a child process that runs with ``name`` (system | tcmalloc) as its malloc,
    whatever this process runs with (benchmarks compare the two)."""
    env = {k: v for k, v in environ.items() if k not in (ENV_DONE, "LD_PRELOAD")}
    if name == "system":
        return {**env, ENV_CHOICE: "system"}
    library = find_tcmalloc() if name == "tcmalloc" else None
    if library is None:
        raise ValueError(f"allocator {name}: not found (expected system or an installed tcmalloc)")
    return preload_env(library, env)


def main() -> None:
    """Re-execute under the planned allocator if any, then run the CLI."""
    try:
        library = preload_plan(dict(os.environ))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if library:
        try:
            os.execve(sys.executable, sys.orig_argv, preload_env(library, dict(os.environ)))
        except OSError:
            pass  # cannot re-execute (e.g. a frozen interpreter): run with the system allocator

    from nas_proxy.cli import run

    run()
