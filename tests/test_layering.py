"""Imports flow one way (docs/architecture.md, "Layers"): no module imports a higher layer.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import nas_proxy

PACKAGE = Path(nas_proxy.__file__).parent

# Lowest first. A module may import its own top-level package and anything in a lower layer;
# packages that share a layer (search and rank, say) stay independent of each other.
LAYERS = [
    {"errors"},
    {"io", "launch", "study_storage"},  # study_storage: Optuna storages behind a URL
    {"runtime"},
    {"data", "models", "study_records"},
    {"augment"},  # DSA and ZCA; whitens a dataset
    {"recipe"},  # TrainConfig and the recipe defaults: stdlib only, so the CLI can read them
    {"train"},
    {"experts"},
    {"distill"},
    {"search", "rank", "theory"},
    {"pipeline"},
    {"cli"},
    {"api", "__init__", "__main__"},  # the public API and `python -m nas_proxy`: above all
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# (importing module, imported package): the reasons these are allowed.
EXCEPTIONS = {
    # The console entry point chooses the allocator, then starts the CLI (inside main()).
    ("nas_proxy.launch", "cli"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level(module: str) -> str:
    """``nas_proxy.rank.compare`` -> ``rank``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every nas_proxy import in ``source``, the text of ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            # `from nas_proxy import search` imports the subpackage, not just the root
            if base == "nas_proxy":
                names = [
                    base if a.name.startswith("__") else f"{base}.{a.name}" for a in node.names
                ]
            else:
                names = [base]
        else:
            continue
        out += [(node.lineno, n) for n in names if n.split(".")[0] == "nas_proxy"]
    return out


def imported_modules(path: Path) -> list[tuple[int, str]]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        here = top_level(module)
        assert here in LAYER, f"{module}: add {here!r} to LAYERS here and in docs/architecture.md"
        for line, target in imported_modules(path):
            if target == "nas_proxy":  # the package root, for __version__: kept light
                continue
            there = top_level(target)
            assert there in LAYER, f"{path}:{line}: {target} is in no layer"
            if there == here or (module, there) in EXCEPTIONS:
                continue
            if LAYER[there] >= LAYER[here]:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} -> {target}")
    return found


def test_lower_layers_never_import_higher_ones():
    assert upward_imports() == []


def test_the_check_resolves_relative_and_lazy_imports():
    source = (
        "import nas_proxy.io\n"
        "from . import unroll\n"
        "def f():\n"
        "    from .. import search, __version__\n"
        "    from ..rank.compare import rank\n"
    )
    found = [n for _, n in imports_of(source, "nas_proxy.distill.mtt", is_package=False)]
    assert found == [
        "nas_proxy.io",
        "nas_proxy.distill",
        "nas_proxy.search",
        "nas_proxy",
        "nas_proxy.rank.compare",
    ]
    assert top_level("nas_proxy.rank.compare") == "rank" and top_level("nas_proxy") == "__init__"
