"""A device is resolved once, at the edge (docs/architecture.md, "Devices").

``runtime.resolve_device`` turns "auto"/"cpu"/"cuda:N" into a ``torch.device``; only entry
points may call it. Everything below them takes the ``torch.device`` they pass down.
"""

import ast
from pathlib import Path

import nas_proxy

PACKAGE = Path(nas_proxy.__file__).parent

# Module -> the functions that are entry points (None: every function of the module).
ENTRIES: dict[str, set[str] | None] = {
    "nas_proxy.cli": None,  # every command: a flag becomes a torch.device
    "nas_proxy.api": {"distill"},  # the public API (before loading data; the rest delegate)
    "nas_proxy.distill": {"distill"},
    "nas_proxy.rank.api": {"rank"},
    "nas_proxy.pipeline": {"run_pipeline"},
    "nas_proxy.theory.experiment": {"run_theory"},
    # run_search's resolution (parent side), and the worker process's own entry
    "nas_proxy.search.workers": {"worker_devices", "build_worker"},
    # the ground-truth worker's entry (a process boundary: its Job carries the device's name)
    "nas_proxy.rank.ground_truth": {"_run"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve_calls(source: str) -> list[tuple[int, str | None]]:
    """(line, owner) of every call of ``resolve_device``, under any name it was imported as;
    the owner is the outermost function (``Class.method`` for a method), None at module level."""
    tree = ast.parse(source)
    names = {"resolve_device"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name == "resolve_device" and a.asname}
    found = []

    def visit(node: ast.AST, owner: str | None, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            here, inner = owner, scope
            if isinstance(child, ast.ClassDef):
                inner = f"{scope}{child.name}."
            if owner is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                here = scope + child.name  # the outermost function (a method: Class.name)
            if isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called in names:
                    found.append((child.lineno, here))
            visit(child, here, inner)

    visit(tree, None, "")
    return found


def allowed(module: str, function: str | None) -> bool:
    for prefix, functions in ENTRIES.items():
        if module == prefix or module.startswith(prefix + "."):
            if functions is None or (module == prefix and function in functions):
                return True
    return False


def test_only_entry_points_resolve_the_device():
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{line} in {function or 'module level'}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, function in resolve_calls(path.read_text())
        if path.name != "runtime.py" and not allowed(module_name(path), function)
    ]
    assert outside == []


def test_the_check_sees_every_call_and_its_owner():
    source = (
        "from nas_proxy.runtime import resolve_device as rd\n"
        "import nas_proxy.runtime as runtime\n"
        "def fit(device):\n"
        "    return rd(device)\n"
        "class Expert:\n"
        "    def load(self, device):\n"
        "        return runtime.resolve_device(device)\n"
        "DEV = resolve_device('cpu')\n"
    )
    assert resolve_calls(source) == [(4, "fit"), (7, "Expert.load"), (8, None)]
    assert allowed("nas_proxy.cli.train_cmd", "anything")
    assert allowed("nas_proxy.distill", "distill")
    assert not allowed("nas_proxy.distill.mtt", "distill")  # a method is not the entry
    assert not allowed("nas_proxy.train", "fit")


def test_internals_take_the_torch_device_and_record_its_name(tmp_path):
    from nas_proxy.data import load_dataset
    from nas_proxy.io import read_json
    from nas_proxy.recipe import TrainConfig
    from nas_proxy.runtime import resolve_device
    from nas_proxy.train import train_architecture

    device = resolve_device("auto")
    assert resolve_device(device) is device  # an entry given a torch.device keeps it
    cfg = TrainConfig(epochs=1, batch_size=256)
    data = load_dataset("digits")
    result = train_architecture("mlp:hidden=16", data, cfg, device=device, out=tmp_path)
    # Saved metadata keeps the device's name, as when it was resolved inside.
    assert result["device"] == read_json(tmp_path / "result.json")["device"] == device.type
