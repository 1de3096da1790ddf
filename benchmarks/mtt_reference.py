"""Seconds and peak memory of one MTT iteration of the reference implementation, on CPU.

The reference is ``distill.py`` of https://github.com/GeorgeCazenavette/mtt-distillation
(Cazenavette et al., 2022). Its code is not part of this repository: get a snapshot and pass
its folder::

    git clone https://github.com/GeorgeCazenavette/mtt-distillation /work/refsnap/mtt-distillation
    python benchmarks/mtt_reference.py --reference-dir /work/refsnap/mtt-distillation
    python benchmarks/mtt_reference.py --steps 10 --iterations 2        # quick check

This script was checked with the files as of these upstream commits (the newest version of
each file at the time; a clone of ``master`` that has them works), checked by sha256 at run time
(a mismatch is reported, not fatal): ``distill.py`` 1a6f6309, ``utils.py`` 2a70e989,
``buffer.py`` 89875dc6, ``networks.py`` and ``reparam_module.py`` 0c424937.

The snapshot is run unchanged, in a fresh child process per syn-steps setting, with its own
argparse flags (Fashion-MNIST, IPC 10, ``ConvNet`` = depth 3, width 128, instance norm, DSA
``color_crop_cutout_flip_scale_rotate``, batch_syn = all 100 images, lr_img 1000, lr_lr 1e-05,
lr_teacher 0.01, expert_epochs 2, max_start_epoch 20). Everything it needs on a CPU-only machine
without internet is supplied from a temporary folder put first on the child's ``PYTHONPATH``:

* ``wandb``: an offline stand-in. ``distill.py`` calls ``wandb.log`` once per iteration at its
  end (``Grand_Loss``); the stand-in stamps every call with ``time.perf_counter()`` and RSS, and
  at ``wandb.finish`` writes them, with the peak RSS, to a JSON file this script reads.
* ``sitecustomize``: torch threads (``--threads``) and a no-op ``.cuda()`` when no GPU is
  visible (``distill.py`` calls ``image_syn.cuda()`` when it saves images at iteration 0).
* ``kornia``: a stand-in when kornia is not installed (only used for ZCA, which is off).
* a launcher that adds a ``FashionMNIST`` branch to the snapshot's ``utils.get_dataset``
  (upstream knows only CIFAR10/100, Tiny and ImageNet; the branch is the one of
  DatasetCondensation, which that file was adapted from: 1×28×28, mean 0.2861, std 0.3530),
  wraps its ``utils.DiffAugment`` to give a 1-channel batch plain strides after ``rand_crop``
  (else current torch's CPU conv runs channels-last and ``ConvNet.forward``'s ``.view`` fails),
  then runs ``distill.py`` as ``__main__``. The data are the IDX files of ``--fmnist-dir``,
  decompressed where torchvision looks for them, so nothing is downloaded.

Expert trajectories are a random walk in the reference's own ``replay_buffer_0.pt`` format (a
list of trajectories, each a list of per-epoch lists of the parameters of the snapshot's
``get_network("ConvNet", ...)``): their values do not change the cost. There are more
trajectories than iterations, so the reference never reloads the file inside the loop.

Timing: iteration 0 evaluates the synthetic set (``--num_eval 1 --epoch_eval_train 1``, one
2-epoch training and one pass over the test set) and saves images; ``--eval_it`` is set past the
last iteration so it happens only there. The per-iteration times are the gaps between
consecutive ``Grand_Loss`` logs, i.e. iterations 1..N, each a full iteration (fresh student net,
``syn_steps`` unrolled steps, backward, two optimizer steps); iteration 0 is left out. Memory:
"start" is the RSS just before the first distillation step (after the dataset, the buffer and
the iteration-0 evaluation); the kernel's high-water mark is reset there (``/proc/self/clear_refs``)
so "peak" is the peak over the distillation iterations. The start RSS includes the whole
Fashion-MNIST train set held as tensors by ``distill.py``, so compare the growth column with
``benchmarks/mtt_speed.py``'s rather than the peak. The reference ConvNet treats 28×28 inputs
as 32×32 (padding 3 in its first conv): its feature maps are 32/16/8 where nas_proxy's are
28/14/7, about 1.3× the convolution work and activation memory per step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nas_proxy.launch import allocator_env

DEFAULT_REFERENCE = Path("/work/refsnap/mtt-distillation")
DEFAULT_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CLASSES, IPC = 10, 10
MAX_START_EPOCH, EXPERT_EPOCHS = 20, 2
STRATEGY = "color_crop_cutout_flip_scale_rotate"
IMPLEMENTATION = "reference mtt-distillation"

# sha256 of the snapshot files the docstring names (upstream commit of each in the comment).
SNAPSHOT_SHA256 = {
    "distill.py": "c52acb8d1938707b7996dcde4c34d0129794d51d40fe4003c09e9d7d1dbb2898",  # 1a6f6309
    "utils.py": "ab62c6916c9710ec46679d275bf5203a4d3a7deda063614001be78b41c7c11a5",  # 2a70e989
    "buffer.py": "0cc3cab41ced844bd9673a3b2a7e161b5a0e5262f49c84d7e1381409909f94fe",  # 89875dc6
    "networks.py": "05f4c562442231ab8460b9fd6013423c21f401a530b2cc36a4214225c4c7da1a",  # 0c424937
    "reparam_module.py": "f48c30c4d37f60e091c820f46cd9d37dcbda4220a7e9ed9f0f7cb1a050ee5406",
}

WANDB_STUB = '''\
"""Offline stand-in for wandb (benchmarks/mtt_reference.py): time-stamps every log call."""

import atexit
import json
import os
import resource
import sys
import time

_OUT = os.environ.get("MTT_REF_STATS")
_events = []
_state = {}


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


class _Config:
    def __init__(self, items):
        self._items = items


class _Run:
    name = "mtt-reference-benchmark"
    id = "offline"


class _Media:
    def __init__(self, *args, **kwargs):
        pass


Image = Histogram = _Media
config = _Config({})
run = None


def init(config=None, **kwargs):
    global run
    items = dict(vars(config)) if hasattr(config, "__dict__") else dict(config or {})
    globals()["config"] = _Config(items)
    run = _Run()
    _state["rss_at_init_kb"] = _status_kb("VmRSS")
    return run


def log(data, step=None, commit=None, **kwargs):
    event = {"t": time.perf_counter(), "keys": sorted(data), "step": step}
    event["rss_kb"], event["hwm_kb"] = _status_kb("VmRSS"), _status_kb("VmHWM")
    if "Synthetic_LR" in data and "rss_before_first_step_kb" not in _state:
        # just before the first distillation step: start of the measured stretch
        _state["rss_before_first_step_kb"] = event["rss_kb"]
        _state["hwm_before_first_step_kb"] = _status_kb("VmHWM")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            _state["hwm_reset"] = True
        except OSError:
            _state["hwm_reset"] = False
    if "Grand_Loss" in data:
        event["loss"] = float(data["Grand_Loss"])
    _events.append(event)


def _write(finished):
    if not _OUT or _state.get("written"):
        return
    _state["written"] = True
    torch = sys.modules.get("torch")
    out = dict(_state, finished=finished, events=_events)
    out["peak_rss_kb"] = _status_kb("VmHWM")
    out["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["threads"] = torch.get_num_threads() if torch is not None else None
    with open(_OUT, "w") as f:
        json.dump(out, f)


def finish(*args, **kwargs):
    _write(True)


atexit.register(_write, False)
'''

SITECUSTOMIZE = '''\
"""CPU shims for the reference run (benchmarks/mtt_reference.py)."""

import os

if os.environ.get("MTT_REF_SHIM") == "1":
    import torch

    _threads = int(os.environ.get("MTT_REF_THREADS", "0"))
    if _threads > 0:
        torch.set_num_threads(_threads)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
'''

KORNIA_STUB = '''\
"""Stand-in for kornia: the reference imports it only for ZCA whitening, which is off here."""


class _Missing:
    def __getattr__(self, name):
        raise ImportError("kornia is not installed (only needed for --zca)")


enhance = _Missing()
'''

LAUNCHER = '''\
"""Run the reference distill.py unchanged, with a Fashion-MNIST branch in its get_dataset.

usage: python mtt_ref_launch.py REFERENCE_DIR [distill.py flags]
       python mtt_ref_launch.py REFERENCE_DIR --make-buffer PATH EPOCHS TRAJECTORIES
"""

import os
import runpy
import sys

reference_dir = os.path.abspath(sys.argv[1])
sys.path.insert(0, reference_dir)

import torch  # noqa: E402
import utils  # noqa: E402  (the snapshot's)

_get_dataset = utils.get_dataset


def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None):
    if dataset != "FashionMNIST":
        return _get_dataset(dataset, data_path, batch_size, subset, args=args)
    from torchvision import datasets, transforms

    channel, im_size, num_classes = 1, (28, 28), 10
    mean, std = [0.2861], [0.3530]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    dst_train = datasets.FashionMNIST(data_path, train=True, download=True, transform=transform)
    dst_test = datasets.FashionMNIST(data_path, train=False, download=True, transform=transform)
    class_names = dst_train.classes
    class_map = {x: x for x in range(num_classes)}
    testloader = torch.utils.data.DataLoader(dst_test, batch_size=128, shuffle=False, num_workers=2)
    return (channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test,
            testloader, None, class_map, None)


utils.get_dataset = get_dataset
_diff_augment = utils.DiffAugment


def DiffAugment(x, *args, **kwargs):
    # rand_crop returns (N, C, H, W) as a permuted (N, H, W, C) view; with C = 1 those strides
    # pass is_contiguous(), so its .contiguous() keeps them, current CPU conv2d then runs (and
    # returns) channels-last and ConvNet.forward's .view(N, -1) fails. Give the batch the plain
    # layout older torch used; a 100x28x28 copy, only after crop.
    out = _diff_augment(x, *args, **kwargs)
    if out.dim() == 4 and out.stride() != torch.empty(out.shape, device="meta").stride():
        out = out.clone(memory_format=torch.contiguous_format)
    return out


utils.DiffAugment = DiffAugment  # distill.py imports it from utils; utils.epoch looks it up


def make_buffer(path, epochs, trajectories):
    """Random-walk trajectories of the snapshot's ConvNet, in replay_buffer_*.pt format."""
    net = utils.get_network("ConvNet", 1, 10, (28, 28), dist=False)
    params = [p.detach().clone() for p in net.parameters()]
    walk = []
    for _ in range(epochs):
        walk.append([p.clone() for p in params])
        params = [p + 0.01 * torch.randn_like(p) for p in params]
    # the trajectories share their per-epoch tensors: values do not change the cost
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save([list(walk) for _ in range(trajectories)], path)
    print(sum(p.numel() for p in walk[0]), "parameters,", epochs, "epochs")


if sys.argv[2:3] == ["--make-buffer"]:
    make_buffer(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
else:
    distill = os.path.join(reference_dir, "distill.py")
    sys.argv = [distill] + sys.argv[2:]
    runpy.run_path(distill, run_name="__main__")
'''


def write_shims(folder: Path) -> Path:
    """Write the wandb/kornia stand-ins, sitecustomize and the launcher; return the launcher."""
    import importlib.util

    (folder / "wandb").mkdir(parents=True)
    (folder / "wandb" / "__init__.py").write_text(WANDB_STUB)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    if importlib.util.find_spec("kornia") is None:
        (folder / "kornia").mkdir()
        (folder / "kornia" / "__init__.py").write_text(KORNIA_STUB)
    launcher = folder / "mtt_ref_launch.py"
    launcher.write_text(LAUNCHER)
    return launcher


def prepare_data(fmnist_dir: Path, data_path: Path) -> None:
    """Decompress the IDX files where torchvision's FashionMNIST looks, so it downloads nothing."""
    raw = data_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FMNIST_FILES:
        gz, plain = fmnist_dir / f"{name}.gz", fmnist_dir / name
        if gz.is_file():
            with gzip.open(gz, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        elif plain.is_file():
            os.symlink(plain, raw / name)
        else:
            raise FileNotFoundError(f"{gz} not found (Fashion-MNIST IDX files)")


def child_env(
    shims: Path, threads: int, stats: Path | None = None, allocator: str = "system"
) -> dict[str, str]:
    """Environment of a reference child: its malloc, shims first on PYTHONPATH, threads, stats."""
    env = allocator_env(allocator, dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shims), env.get("PYTHONPATH")]))
    env["MTT_REF_SHIM"] = "1"
    env["MTT_REF_THREADS"] = str(threads)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if stats is not None:
        env["MTT_REF_STATS"] = str(stats)
    return env


def snapshot_check(reference_dir: Path) -> str:
    """'matches' or which files differ from the snapshot the docstring names."""
    differ = []
    for name, digest in SNAPSHOT_SHA256.items():
        path = reference_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            differ.append(name)
    return "matches" if not differ else "differs: " + ", ".join(differ)


def run_setting(steps: int, args: argparse.Namespace, root: Path, launcher: Path) -> dict:
    """Run distill.py for one syn-steps setting in a fresh process; read its stand-in's stats."""
    work = root / f"steps{steps}"
    work.mkdir()
    stats = work / "stats.json"
    cmd = [
        sys.executable,
        str(launcher),
        str(args.reference_dir),
        "--dataset", "FashionMNIST",
        "--model", "ConvNet",
        "--ipc", str(IPC),
        "--syn_steps", str(steps),
        "--expert_epochs", str(EXPERT_EPOCHS),
        "--max_start_epoch", str(MAX_START_EPOCH),
        "--lr_img", "1000",
        "--lr_lr", "1e-05",
        "--lr_teacher", "0.01",
        "--batch_syn", str(CLASSES * IPC),
        "--dsa", "True",
        "--dsa_strategy", STRATEGY,
        "--pix_init", "real",
        "--Iteration", str(args.iterations),
        "--eval_it", str(args.iterations + 1),
        "--num_eval", "1",
        "--epoch_eval_train", "1",
        "--data_path", str(root / "data"),
        "--buffer_path", str(root / "buffers"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        env = child_env(root / "shims", args.threads, stats, args.allocator)
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=log)
    row: dict = {"steps": steps, "implementation": IMPLEMENTATION, "allocator": args.allocator}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    data = json.loads(stats.read_text()) if stats.is_file() else None
    if proc.returncode != 0 or data is None or not data.get("finished"):
        tail = (work / "log.txt").read_text().strip().splitlines() or ["killed"]
        row["error"] = f"exit {proc.returncode}: {tail[-1][:200]}"
        return row
    ends = [e["t"] for e in data["events"] if "Grand_Loss" in e["keys"]]
    times = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    starts = [e["t"] for e in data["events"] if "Synthetic_LR" in e["keys"]]
    kb = 1024
    base = data["rss_before_first_step_kb"] / kb
    peak = (data["peak_rss_kb"] if data.get("hwm_reset") else data["ru_maxrss_kb"]) / kb
    row.update(
        s_per_iteration=min(times) if times else None,
        median_s_per_iteration=statistics.median(times) if times else None,
        times=times,
        iteration0_step_s=ends[0] - starts[0] if ends and starts else None,
        peak_rss_mb=peak,
        base_rss_mb=base,
        peak_is_loop_only=bool(data.get("hwm_reset")),
        process_peak_rss_mb=data["ru_maxrss_kb"] / kb,
        rss_at_wandb_init_mb=data["rss_at_init_kb"] / kb,
        losses=[e["loss"] for e in data["events"] if "loss" in e],
        # high-water mark at the end of each iteration (since the reset when peak_is_loop_only)
        peak_after_iteration_mb=[
            e["hwm_kb"] / kb for e in data["events"] if "Grand_Loss" in e["keys"]
        ],
        threads=data["threads"],
    )
    return row


def markdown_row(r: dict) -> str:
    """One row (a ``--json-out`` entry) in the columns of this table and of mtt_speed.py's."""
    if "error" in r:
        return f"| {r['steps']} | {r['implementation']} | {r['error']} | | |"
    return (
        f"| {r['steps']} | {r['implementation']} (32×32 maps, fp32, "
        f"{r.get('allocator', 'system')} malloc) | {r['s_per_iteration']:.2f} "
        f"(median {r['median_s_per_iteration']:.2f}) | {r['peak_rss_mb']:.0f} | "
        f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f} |"
    )


def table(rows: list[dict], args: argparse.Namespace, snapshot: str) -> str:
    """Markdown table in the units of benchmarks/mtt_speed.py."""
    import torch

    lines = [
        f"### {dt.date.today().isoformat()}: reference mtt-distillation, Fashion-MNIST, IPC {IPC}, "
        "ConvNet (depth 3, width 128, instance norm)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads or 'default'} torch thread(s); load average at the "
        f"end {os.getloadavg()[0]:.1f}. Batch = all {CLASSES * IPC} synthetic images, DSA; "
        f"{args.iterations} timed iteration(s) per setting after iteration 0 (evaluation, left "
        f"out), in a fresh process: the fastest, (the median). Snapshot {snapshot}.",
        "",
        "| syn-steps | implementation | s / iteration | peak RSS MB | growth over start MB |",
        "|---|---|---|---|---|",
    ]
    lines += [markdown_row(r) for r in rows]
    steps = " ".join(str(s) for s in args.steps)
    lines += [
        "",
        f"Command: `python benchmarks/mtt_reference.py --steps {steps} --iterations "
        f"{args.iterations} --threads {args.threads} --allocator {args.allocator}`",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument(
        "--iterations", type=int, default=3, help="timed iterations after iteration 0 (>= 1)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--fmnist-dir", type=Path, default=DEFAULT_FMNIST, help="IDX files (.gz)")
    p.add_argument("--json-out", type=Path, help="also write the rows as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument(
        "--allocator",
        default="system",
        choices=["system", "tcmalloc"],
        help="malloc of the reference's processes (system: as it is run upstream)",
    )
    args = p.parse_args()
    if not (args.reference_dir / "distill.py").is_file():
        print(f"no reference snapshot at {args.reference_dir} (see --help)", file=sys.stderr)
        raise SystemExit(2)
    if args.iterations < 1:
        p.error("--iterations must be at least 1")
    args.reference_dir = args.reference_dir.resolve()
    snapshot = snapshot_check(args.reference_dir)
    if snapshot != "matches":
        print(f"warning: reference snapshot {snapshot}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="mtt_reference_"))
    try:
        launcher = write_shims(root / "shims")
        prepare_data(args.fmnist_dir, root / "data")
        buffer = root / "buffers" / "FashionMNIST" / "ConvNet" / "replay_buffer_0.pt"
        # epochs 0 .. max_start_epoch - 1 + expert_epochs; one trajectory per iteration and a
        # spare, so distill.py does not reload the file inside the loop
        subprocess.run(
            [sys.executable, str(launcher), str(args.reference_dir), "--make-buffer"]
            + [str(buffer), str(MAX_START_EPOCH + EXPERT_EPOCHS), str(args.iterations + 2)],
            env=child_env(root / "shims", args.threads),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = []
        for steps in args.steps:
            row = run_setting(steps, args, root, launcher)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(rows, args, snapshot))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
