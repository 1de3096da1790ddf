"""Search-space files: YAML -> Optuna trial parameters -> canonical architecture spec strings.

The format is documented in ``nas_proxy/search_spaces/README.md`` (shipped beside the spaces
themselves: ``convnet``, ``mlp``, ``timm_small``, ``mixed``). In short::

    families:
      convnet:
        depth: {int: [1, 4]}
        width: [32, 64, 128]                       # a list is a categorical choice
        widths: {choices: [16, 32, 64], per_layer: depth, when: {depth: {min: 2}}}
        lr_free_key: 0.0                           # a scalar is a fixed value

or, instead of ``families``, a fixed list of specs (``architectures: [timm:resnet18, mlp]``): one
categorical parameter ``arch`` over them, for screening a shortlist across fidelities.

Each family entry maps spec keys to a choice, a range or a fixed value. A space with several
families gets a top-level categorical parameter ``family``, and every other parameter is then
named ``FAMILY.key`` so that two families never share an Optuna distribution. The mapping from
parameter values to the spec is deterministic, and the spec is canonicalised by the model
registry, so equal architectures always give equal strings.

Validation is strict and happens at load time: unknown keys, impossible ranges and values the
model registry rejects are a :class:`UserError` naming ``FILE:LINE``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from nas_proxy.errors import UserError

FAMILY_PARAM = "family"
MAX_LAYERS = 32  # per-layer parameters: a sanity bound on the number a depth key may ask for
_KINDS = ("choices", "int", "float", "value")
_PARAM_KEYS = (*_KINDS, "step", "log", "when", "per_layer")
_TOP_KEYS = ("families", "architectures", "description")
ARCH_PARAM = "arch"  # the one parameter of an ``architectures:`` space
# The model name of families whose spec is ``FAMILY:NAME,key=value`` (timm); see _spec_text.
HEAD_KEY = "model"


# --------------------------------------------------------------------------- YAML with lines


class _Map(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in out:
            raise UserError(f"{loader.name}:{line}: key {key!r} given twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"--space {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--space {path}: cannot read ({e})") from None
    loader = _Loader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({e.problem or e.context})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Condition:
    """``when: {key: ...}``: the value of an earlier key is in ``values`` or within [min, max]."""

    key: str
    values: tuple | None = None
    min: float | None = None
    max: float | None = None

    def holds(self, value: Any) -> bool:
        if self.values is not None:
            return value in self.values
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class Param:
    """One spec key of one family: a fixed value, a categorical choice or an int/float range."""

    key: str
    name: str  # Optuna parameter name (``key`` or ``FAMILY.key``; ``_i`` appended per layer)
    kind: str  # value | choices | int | float
    line: int
    value: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per_layer: str | None = None  # key whose value is the number of layers
    when: tuple[Condition, ...] = ()

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(c.key in values and c.holds(values[c.key]) for c in self.when)

    def draw(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind == "value":
            return self.value
        if self.kind == "choices":
            return trial.suggest_categorical(name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        # 10 significant digits: a stepped 0.30000000000000004 becomes 0.3 in the spec string.
        return float(f"{value:.10g}")

    def candidates(self) -> list[Any]:
        """Values to validate against the model registry: all of them where few, else the ends."""
        if self.kind == "value":
            return [self.value]
        if self.kind == "choices":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            values = list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
            return values if len(values) <= 64 else [values[0], values[-1]]
        return [self.low, self.high]

    def grid_values(self) -> list[Any] | None:
        """Every value this parameter can take, or None when it is continuous."""
        if self.kind == "float" and self.step is None:
            return None
        if self.kind == "int" and self.log:
            return None
        if self.kind == "float":
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return (
            self.candidates()
            if self.kind != "int"
            else list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        )

    @property
    def max_value(self) -> Any:
        return max(self.candidates())


@dataclass(frozen=True)
class FamilySpace:
    family: str
    params: tuple[Param, ...]
    line: int


@dataclass
class SearchSpace:
    """A parsed search-space file. ``suggest`` maps an Optuna trial to a canonical spec."""

    path: Path
    families: tuple[FamilySpace, ...]
    description: str = ""
    sha256: str = ""
    # A fixed list of canonical specs (an ``architectures:`` file), searched instead of families.
    architectures: tuple[str, ...] = ()
    _checked_shapes: set = field(default_factory=set, repr=False)

    @property
    def multi_family(self) -> bool:
        return len(self.families) > 1

    def suggest(self, trial: optuna.Trial) -> str:
        """Suggest every active parameter on ``trial`` and return the canonical spec string."""
        if self.architectures:
            return str(trial.suggest_categorical(ARCH_PARAM, self.architectures))
        if self.multi_family:
            name = trial.suggest_categorical(FAMILY_PARAM, [f.family for f in self.families])
            fam = next(f for f in self.families if f.family == name)
        else:
            fam = self.families[0]
        values = _draw_values(fam, trial)
        return _canonical(str(self.path), fam, values)

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """``n`` specs drawn uniformly at random (through the same ``suggest`` path)."""
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" chatter
        try:
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        finally:
            optuna.logging.set_verbosity(verbosity)
        specs = []
        for _ in range(n):
            trial = study.ask()
            specs.append(self.suggest(trial))
            study.tell(trial, 0.0)
        return specs

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values for Optuna's GridSampler; UserError if one is continuous."""
        if self.architectures:
            return {ARCH_PARAM: list(self.architectures)}
        out: dict[str, list[Any]] = {}
        if self.multi_family:
            out[FAMILY_PARAM] = [f.family for f in self.families]
        for fam in self.families:
            for p in fam.params:
                if p.kind == "value":
                    continue
                values = p.grid_values()
                if values is None:
                    raise UserError(
                        f"{self.path}:{p.line}: '{p.key}' is continuous; the grid "
                        "sampler needs choices or a step (or use --sampler tpe)"
                    )
                for name in _layer_names(p, fam):
                    out[name] = values
        return out

    @property
    def numeric(self) -> bool:
        """Whether any parameter is an int/float range (what CMA-ES can work on)."""
        return any(p.kind in ("int", "float") for f in self.families for p in f.params)

    def check_build(self, in_shape: Sequence[int], num_classes: int) -> None:
        """Build each family once per listed value (ends of ranges) at ``in_shape``.

        Catches values that parse but cannot build for this input size (a timm model that
        collapses an 8×8 image, a kwarg timm rejects), naming the line. No training; each
        distinct spec is built once.
        """
        key = (tuple(in_shape), num_classes)
        if key in self._checked_shapes:
            return
        for spec in self.architectures:
            _check_builds(spec, in_shape, num_classes, f"{self.path}: architectures: {spec}")
        built: set[str] = set()
        for fam in self.families:
            for p in fam.params:
                values = p.candidates()
                if p.kind == "int":  # the ends of an int range are enough
                    values = sorted({values[0], values[-1]})
                for value in values:
                    spec = _canonical(
                        str(self.path), fam, _base_values(fam, {p.key: value}), line=p.line
                    )
                    if spec not in built:
                        built.add(spec)
                        where = f"{self.path}:{p.line}: {p.key}={_format(value)}"
                        _check_builds(spec, in_shape, num_classes, where)
        self._checked_shapes.add(key)


def _check_builds(spec: str, in_shape: Sequence[int], num_classes: int, where: str) -> None:
    from nas_proxy.models import build_model

    try:
        build_model(spec, tuple(in_shape), num_classes)
    except Exception as e:  # UserError or a model that crashes on this shape
        reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        raise UserError(f"{where} does not build for input {tuple(in_shape)}: {reason}") from None


# --------------------------------------------------------------------------- spec mapping


def _layer_names(p: Param, fam: FamilySpace) -> list[str]:
    if not p.per_layer:
        return [p.name]
    ref = next(q for q in fam.params if q.key == p.per_layer)
    return [f"{p.name}_{i}" for i in range(1, int(ref.max_value) + 1)]


def _draw_values(fam: FamilySpace, trial: optuna.Trial) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for p in fam.params:
        if not p.active(values):
            continue
        if p.per_layer:
            n = int(values[p.per_layer])
            values[p.key] = tuple(p.draw(trial, f"{p.name}_{i}") for i in range(1, n + 1))
        else:
            values[p.key] = p.draw(trial, p.name)
    return values


def _base_values(fam: FamilySpace, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One valid assignment: ``override`` where given, else each active key's first value."""
    override = override or {}
    values: dict[str, Any] = {}
    for p in fam.params:
        if not p.active(values) and p.key not in override:
            continue
        value = override.get(p.key, p.candidates()[0])
        if p.per_layer and not isinstance(value, tuple):
            value = (value,) * int(values.get(p.per_layer, 1))
        values[p.key] = value
    return values


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "/".join(_format(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def _spec_text(family: str, values: Mapping[str, Any]) -> str:
    """``family:key=value,...``; a ``model`` value leads (``timm:resnet18,drop_rate=0.1``)."""
    items = [f"{k}={_format(v)}" for k, v in values.items() if k != HEAD_KEY]
    if HEAD_KEY in values:
        items.insert(0, _format(values[HEAD_KEY]))
    return f"{family}:{','.join(items)}" if items else family


def _canonical(
    path: str, fam: FamilySpace, values: Mapping[str, Any], line: int | None = None
) -> str:
    from nas_proxy.models import parse_spec

    text = _spec_text(fam.family, values)
    try:
        return str(parse_spec(text))
    except UserError as e:
        raise UserError(f"{path}:{line or fam.line}: {text} is not a valid spec: {e}") from None


# --------------------------------------------------------------------------- parsing


SHIPPED_SUFFIX = ".yaml"


def shipped_spaces() -> dict[str, Path]:
    """The search spaces shipped as package data, by name (``convnet`` -> its YAML file).

    They are package data (``nas_proxy/search_spaces/``) so that an installed wheel has them;
    ``search_spaces/`` at the top of a checkout links to the same folder.
    """
    folder = importlib.resources.files("nas_proxy").joinpath("search_spaces")
    return {
        entry.name.removesuffix(SHIPPED_SUFFIX): Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(SHIPPED_SUFFIX)
    }


def resolve_space(space: str | Path) -> Path:
    """A space file: ``space`` itself when it names a file, else the shipped space of that name:
    ``convnet``, ``convnet.yaml``, or ``search_spaces/convnet.yaml`` (the path README.md uses,
    so that its commands work outside a checkout too). Anything else is a UserError."""
    path = Path(space)
    if path.is_file():
        return path
    shipped = shipped_spaces()
    name = path.name.removesuffix(SHIPPED_SUFFIX)
    if path.parent in (Path("."), Path("search_spaces")) and name in shipped:
        return shipped[name]
    raise UserError(
        f"--space {space}: file not found, and no shipped space has that name (shipped: "
        f"{', '.join(shipped)})"
    )


def load_space(path: str | Path) -> SearchSpace:
    """Parse and validate a search-space file or shipped space name (see :func:`resolve_space`;
    format: ``nas_proxy/search_spaces/README.md``)."""
    path = resolve_space(path)
    data = _read_yaml(path)
    where = str(path)
    if not isinstance(data, _Map):
        raise UserError(f"{where}: expected a mapping with a 'families' or 'architectures' key")
    for key in data:
        if key not in _TOP_KEYS:
            raise UserError(
                f"{where}:{data.key_lines[key]}: unknown key {key!r}; allowed: "
                f"{', '.join(_TOP_KEYS)}"
            )
    description = str(data.get("description", ""))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if "architectures" in data:
        if "families" in data:
            raise UserError(f"{where}:{data.line}: give 'families' or 'architectures', not both")
        line = data.key_lines["architectures"]
        specs = _parse_architectures(f"{where}:{line}", data["architectures"])
        return SearchSpace(path, (), description, digest, architectures=specs)
    families = data.get("families")
    if not isinstance(families, _Map) or not families:
        line = data.key_lines.get("families", data.line)
        raise UserError(f"{where}:{line}: 'families' must map family names to their parameters")
    multi = len(families) > 1
    parsed = tuple(
        _parse_family(where, str(name), body, families.key_lines[name], multi)
        for name, body in families.items()
    )
    space = SearchSpace(path=path, families=parsed, description=description, sha256=digest)
    _validate_combinations(space)
    return space


def _parse_architectures(at: str, items: Any) -> tuple[str, ...]:
    """``architectures: [spec, ...]``: canonical, distinct specs the model registry accepts."""
    from nas_proxy.models import parse_spec

    if not isinstance(items, list) or not items:
        raise UserError(f"{at}: 'architectures' must be a non-empty list of architecture specs")
    specs: list[str] = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise UserError(f"{at}: architectures item {i} is not a spec string: {item!r}")
        try:
            spec = str(parse_spec(item))
        except UserError as e:
            raise UserError(
                f"{at}: architectures item {i} ({item}) is not a valid spec: {e}"
            ) from None
        if spec in specs:
            raise UserError(
                f"{at}: architectures item {i} ({item}) repeats item {specs.index(spec) + 1}"
            )
        specs.append(spec)
    return tuple(specs)


def _parse_family(where: str, family: str, body: Any, line: int, multi: bool) -> FamilySpace:
    from nas_proxy.models.registry import get_family

    try:
        get_family(family)
    except UserError as e:
        raise UserError(f"{where}:{line}: {e}") from None
    if body is None:
        body = _Map()
    if not isinstance(body, _Map):
        raise UserError(
            f"{where}:{line}: family {family!r} must map spec keys to values, choices or ranges"
        )
    params: list[Param] = []
    for key, spec in body.items():
        key_line = body.key_lines[key]
        name = f"{family}.{key}" if multi else str(key)
        param = _parse_param(where, str(key), name, spec, key_line, params)
        params.append(param)
        _validate_param(where, family, param, params)
    return FamilySpace(family=family, params=tuple(params), line=line)


def _parse_param(
    where: str, key: str, name: str, spec: Any, line: int, earlier: list[Param]
) -> Param:
    at = f"{where}:{line}"
    if not key.isidentifier():
        raise UserError(f"{at}: {key!r} is not a spec key")
    if key == FAMILY_PARAM:
        raise UserError(f"{at}: 'family' is reserved (list several families under 'families')")
    if isinstance(spec, list):
        spec = {"choices": spec}
    elif not isinstance(spec, dict):
        spec = {"value": spec}
    unknown = [k for k in spec if k not in _PARAM_KEYS]
    if unknown:
        raise UserError(
            f"{at}: unknown key {unknown[0]!r} in '{key}'; allowed: {', '.join(_PARAM_KEYS)}"
        )
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        raise UserError(
            f"{at}: '{key}' needs exactly one of {', '.join(_KINDS)} "
            f"(got {', '.join(kinds) or 'none'})"
        )
    kind = kinds[0]
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{at}: '{key}': log must be true or false")
    if kind in ("value", "choices") and ("step" in spec or "log" in spec):
        raise UserError(f"{at}: '{key}': step and log apply to int/float ranges only")
    fields: dict[str, Any] = {}
    if kind == "value":
        fields["value"] = _scalar(at, key, spec["value"])
    elif kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{at}: '{key}': choices must be a non-empty list")
        choices = [_scalar(at, key, c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise UserError(f"{at}: '{key}': choices repeat a value")
        fields["choices"] = tuple(choices)
    else:
        fields.update(_parse_range(at, key, kind, spec[kind], step, log))
    per_layer = spec.get("per_layer")
    if per_layer is not None:
        ref = next((p for p in earlier if p.key == per_layer), None)
        if ref is None:
            raise UserError(
                f"{at}: '{key}': per_layer: {per_layer!r} must name a key defined "
                "above it in the same family"
            )
        values = ref.candidates()
        if (
            not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            or ref.kind == "float"
        ):
            raise UserError(f"{at}: '{key}': per_layer key {per_layer!r} must take integers")
        if min(values) < 1 or max(values) > MAX_LAYERS:
            raise UserError(
                f"{at}: '{key}': per_layer key {per_layer!r} must stay within 1..{MAX_LAYERS}"
            )
    when = _parse_when(at, key, spec.get("when"), earlier)
    return Param(
        key=key,
        name=name,
        kind=kind,
        line=line,
        step=fields.pop("step", None),
        log=bool(log),
        per_layer=per_layer,
        when=when,
        **fields,
    )


def _scalar(at: str, key: str, value: Any) -> Any:
    if isinstance(value, (dict, list)):
        raise UserError(f"{at}: '{key}': expected a plain value, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{at}: '{key}': {value} is not a finite number")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_range(at: str, key: str, kind: str, bounds: Any, step: Any, log: bool) -> dict[str, Any]:
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(map(_number, bounds)):
        raise UserError(f"{at}: '{key}': {kind} takes [low, high], got {bounds!r}")
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise UserError(f"{at}: '{key}': int range bounds must be integers, got {bounds!r}")
    if not all(math.isfinite(b) for b in bounds) or low > high:
        raise UserError(f"{at}: '{key}': impossible range [{low}, {high}] (need low <= high)")
    if step is not None:
        if not _number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise UserError(
                f"{at}: '{key}': step must be a positive "
                f"{'integer' if kind == 'int' else 'number'}, got {step!r}"
            )
        if log:
            raise UserError(f"{at}: '{key}': step and log cannot be combined")
        span = (high - low) / step
        if kind == "float" and abs(span - round(span)) > 1e-9:
            raise UserError(
                f"{at}: '{key}': range [{low}, {high}] is not a whole number of steps of {step}"
            )
    if log and low <= 0:
        raise UserError(f"{at}: '{key}': a log range needs low > 0, got {low}")
    return {"low": low, "high": high, "step": step}


def _parse_when(at: str, key: str, when: Any, earlier: list[Param]) -> tuple[Condition, ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise UserError(
            f"{at}: '{key}': when must map earlier keys to a value, a list of "
            "values or {min: .., max: ..}"
        )
    out = []
    for ref, test in when.items():
        if not any(p.key == ref for p in earlier):
            raise UserError(f"{at}: '{key}': when: {ref!r} must name a key defined above it")
        if isinstance(test, dict):
            bad = [k for k in test if k not in ("min", "max")] or [
                k for k, v in test.items() if not _number(v)
            ]
            if bad or not test:
                raise UserError(f"{at}: '{key}': when: {ref}: expected {{min: N, max: N}}")
            out.append(Condition(ref, min=test.get("min"), max=test.get("max")))
        elif isinstance(test, list):
            out.append(Condition(ref, values=tuple(test)))
        else:
            out.append(Condition(ref, values=(test,)))
    return tuple(out)


def _validate_param(where: str, family: str, param: Param, params: list[Param]) -> None:
    """Every value the parameter can take must be accepted by the model registry."""
    from nas_proxy.models import parse_spec

    fam = FamilySpace(family, tuple(params), param.line)
    for value in param.candidates():
        text = _spec_text(family, _base_values(fam, {param.key: value}))
        try:
            parse_spec(text)
        except UserError as e:
            raise UserError(
                f"{where}:{param.line}: {param.key}={_format(value)} is rejected "
                f"by the model registry: {e}"
            ) from None


def _validate_combinations(space: SearchSpace, n: int = 32) -> None:
    """Random combinations must form valid specs too (cross-key rules such as widths/depth)."""
    space.sample(n, seed=0)
