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

Threads are set up here too, before torch starts. OpenMP threads that spin while they wait
collapse under load: on a 2-core AMD EPYC beside one CPU-bound process, 30 MTT iterations took
4.6x their idle time, 1.9x with ``OMP_WAIT_POLICY=PASSIVE``, 1.5x with one thread (issue 15).
So the entry point sets ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` to the cores other
processes leave free (:func:`free_cores`), each unless the user set it. ``NAS_PROXY_THREADS=N``
fixes the count (``auto``, the default, chooses).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ENV_CHOICE = "NAS_PROXY_ALLOCATOR"
ENV_DONE = "NAS_PROXY_ALLOCATOR_PRELOADED"  # set on the re-executed process: never loop
TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
ENV_THREADS = "NAS_PROXY_THREADS"
# The OMP_NUM_THREADS this launcher chose: a nas-proxy started by a nas-proxy chooses afresh
# rather than taking its parent's choice for the user's.
ENV_THREADS_CHOSEN = "NAS_PROXY_THREADS_CHOSEN"


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


def allocator() -> str:
    """The malloc this process runs with: a preloaded tcmalloc/jemalloc/mimalloc (chosen by
    :func:`main`) or the system's; it changes speed and peak memory, not results."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores that other processes keep busy, out of :func:`available_cores`.

    The 1-minute load average, capped by the tasks runnable at this moment (besides this one)
    so that a job that has just ended does not count, and scaled from the machine's cores to
    the ones this process may use (the load is machine-wide, a container may see fewer)."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        busy = min(float(fields[0]), int(fields[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        try:
            busy = os.getloadavg()[0]
        except (OSError, AttributeError):
            return 0.0
    cores = available_cores()
    return max(0.0, busy) * cores / max(cores, os.cpu_count() or cores)


def free_cores(cores: int | None = None, busy: float | None = None) -> int:
    """Cores left free by other processes (at least 1): ``cores`` minus ``busy``, rounded;
    both default to what this machine says now."""
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


def requested_threads(environ: Mapping[str, str]) -> int | None:
    """``NAS_PROXY_THREADS`` as a count, or None for ``auto`` (unset).

    Raises ValueError for anything else."""
    text = environ.get(ENV_THREADS, "auto").strip() or "auto"
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV_THREADS}={text}: expected auto or a positive number of threads")
    return int(text)


def thread_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment entries that set this process's OpenMP threads before torch starts:
    a passive wait policy and a thread count, each only where the user has not chosen one.

    Raises ValueError for a bad ``NAS_PROXY_THREADS``."""
    out = {} if "OMP_WAIT_POLICY" in environ else {"OMP_WAIT_POLICY": "PASSIVE"}
    threads = requested_threads(environ)
    users = environ.get("OMP_NUM_THREADS")
    if threads is None and users and users != environ.get(ENV_THREADS_CHOSEN):
        return out  # the user's own OMP_NUM_THREADS
    threads = threads or free_cores()
    return {**out, "OMP_NUM_THREADS": str(threads), ENV_THREADS_CHOSEN: str(threads)}


def main() -> None:
    """Set up threads, re-execute under the planned allocator if any, then run the CLI."""
    try:
        os.environ.update(thread_settings(os.environ))
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
