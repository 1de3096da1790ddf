"""Search-space files: parsing, validation errors with line numbers, sampling, building."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nas_proxy.errors import UserError
from nas_proxy.models import build_model, parse_spec
from nas_proxy.search import load_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize("name", ["convnet", "mlp", "mixed"])
def test_shipped_spaces_sample_and_build(name):
    space = load_space(SPACES / f"{name}.yaml")
    specs = space.sample(30, seed=0)
    assert len(specs) == 30 and len(set(specs)) > 5
    for spec in specs:
        assert str(parse_spec(spec)) == spec  # canonical
        build_model(spec, (1, 8, 8), 10)


def test_timm_space_samples_parse_and_each_model_builds_at_8x8():
    space = load_space(SPACES / "timm_small.yaml")
    specs = space.sample(30, seed=0)
    assert all(s.startswith("timm:") and str(parse_spec(s)) == s for s in specs)
    space.check_build((1, 8, 8), 10)  # one build per listed model and per drop_rate end


def test_sampling_is_deterministic_and_conditional_widths_follow_depth():
    space = load_space(SPACES / "convnet.yaml")
    assert space.sample(10, seed=3) == space.sample(10, seed=3)
    for spec in space.sample(30, seed=1):
        opts = parse_spec(spec).options
        if opts["widths"] is not None:
            assert len(opts["widths"]) == opts["depth"]


def test_multi_family_space_prefixes_parameter_names():
    space = load_space(SPACES / "mixed.yaml")
    grid = space.grid()
    assert grid["family"] == ["convnet", "mlp"]
    assert "convnet.depth" in grid and "mlp.hidden" in grid


def test_fixed_values_when_conditions_and_float_steps(tmp_path):
    path = write(
        tmp_path,
        """
        families:
          mlp:
            depth: [0, 2]
            hidden: {int: [16, 64], step: 16, when: {depth: {min: 1}}}
            dropout: {float: [0.0, 0.3], step: 0.1, when: {depth: [2]}}
            act: gelu
    """,
    )
    for spec in load_space(path).sample(20, seed=0):
        opts = parse_spec(spec).options
        assert opts["dropout"] in (0.0, 0.1, 0.2, 0.3)  # no 0.30000000000000004
        if opts["depth"] == 2:
            assert opts["act"] == "gelu" and opts["hidden"] in (16, 32, 48, 64)


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("families:\n  convnet:\n    depth: [1, 2]\n    colour: [red]\n", 4, "unknown key"),
        ("families:\n  convnet:\n    depth: {int: [4, 1]}\n", 3, "impossible range"),
        ("families:\n  convnet:\n    depth: [1]\n    norm: [batch, bogus]\n", 4, "bogus"),
        ("families:\n  convnet:\n    depth: {int: [1, 9]}\n", 3, "rejected by the model"),
        ("families:\n  convnet:\n    depth: {int: [1, 3], stepp: 1}\n", 3, "stepp"),
        ("families:\n  nosuch:\n    depth: [1]\n", 2, "unknown model family"),
        ("families:\n  convnet:\n    widths: {choices: [8], per_layer: depth}\n", 3, "per_layer"),
        ("families:\n  mlp:\n    hidden: {float: [0, 1], log: true}\n", 3, "log range"),
        ("families:\n  mlp:\n    depth: [1]\n    depth: [2]\n", 4, "twice"),
        ("familys:\n  mlp: {}\n", 1, "unknown key"),
        ("families:\n  mlp:\n    depth: [1, 2\n", 4, "not valid YAML"),
    ],
)
def test_errors_name_file_and_line(tmp_path, body, line, words):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError) as e:
        load_space(path)
    assert f"{path}:{line}:" in str(e.value) and words in str(e.value)


def test_grid_needs_finite_parameters(tmp_path):
    with pytest.raises(UserError, match=r"mlp.yaml:\d+: 'hidden' is continuous"):
        load_space(SPACES / "mlp.yaml").grid()


def test_model_that_cannot_build_at_the_input_size_names_the_line(tmp_path):
    path = write(
        tmp_path,
        """
        families:
          mlp:
            depth: [1]
            hidden: [8]
    """,
    )
    load_space(path).check_build((1, 8, 8), 10)  # fine
    path = write(
        tmp_path,
        """
        families:
          convnet:
            depth: [1]
            width: [8]
    """,
    )
    with pytest.raises(UserError, match=r"space.yaml:\d+: .*does not build"):
        load_space(path).check_build((64,), 10)  # a convnet needs images


def test_architectures_list_is_one_categorical_over_canonical_specs(tmp_path):
    path = write(
        tmp_path,
        """
        description: a shortlist
        architectures:
          - mlp:depth=1,hidden=32
          - convnet:width=16,depth=1
    """,
    )
    space = load_space(path)
    canonical = [
        str(parse_spec("mlp:depth=1,hidden=32")),
        str(parse_spec("convnet:depth=1,width=16")),
    ]
    assert space.architectures == tuple(canonical)
    assert space.grid() == {"arch": canonical} and not space.numeric
    assert set(space.sample(20, seed=0)) == set(canonical)  # both drawn, nothing else
    space.check_build((1, 8, 8), 10)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("architectures: mlp\n", "non-empty list"),
        ("architectures: []\n", "non-empty list"),
        ("architectures:\n  - mlp\n  - 3\n", "item 2 is not a spec string"),
        ("architectures:\n  - mlp:colour=red\n", "item 1 (mlp:colour=red) is not a valid spec"),
        ("architectures:\n  - mlp:depth=1\n  - mlp:depth=1,act=relu\n", "repeats item 1"),
        ("architectures: [mlp]\nfamilies:\n  mlp: {}\n", "not both"),
    ],
)
def test_architectures_errors_name_file_and_line(tmp_path, body, words):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=r"bad\.yaml:\d+:") as e:
        load_space(path)
    assert words in str(e.value)
