"""Spec parsing, model families, params and FLOPs (nas_proxy.models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nas_proxy.errors import UserError
from nas_proxy.models import (
    ArchSpec,
    Option,
    build_model,
    count_flops,
    count_params,
    list_families,
    model_profile,
    parse_spec,
    register_family,
)
from nas_proxy.models import registry as model_registry
from nas_proxy.models.layers import AvgPool2x2

SHAPES = [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32)]

# Small members of each family, so that forward + backward at every shape stays fast.
SMALL_SPECS = [
    "convnet:depth=3,width=8",
    "convnet:depth=4,widths=4/8/8/16,norm=batch,act=gelu,pool=max,kernel=5,dropout=0.1",
    "convnet:depth=2,width=8,norm=layer,act=leakyrelu,pool=none",
    "convnet:depth=2,width=6,norm=group,act=silu",
    "mlp:hidden=16,depth=2,norm=batch,act=tanh,dropout=0.1",
    "mlp:depth=0",
    # timm models, narrowed through their own kwargs (tuples are written a/b/c)
    "timm:resnet10t,channels=8/16/32/64,stem_width=8",
    "timm:mobilenetv3_small_050",
    "timm:convnext_atto,depths=1/1/1/1,dims=8/16/32/64",
    "timm:vit_tiny_patch16_224,depth=1,embed_dim=32,num_heads=2",
]
CONVNEXT = "timm:convnext_atto,depths=1/1/1/1,dims=8/16/32/64"
# The real models users pick, checked at every size by the slow test.
TIMM_MODELS = [
    "resnet18",
    "resnet10t",
    "mobilenetv3_small_050",
    "mobilenetv3_small_100",
    "efficientnet_b0",
    "convnext_atto",
    "regnetx_002",
    "ghostnet_050",
    "vit_tiny_patch16_224",
    "lcnet_050",
]


# ---------------------------------------------------------------------------------------------
# spec strings


@pytest.mark.parametrize(
    "text",
    [
        "convnet",
        "convnet:depth=3,width=128,norm=instance,act=relu,pool=avg",
        "convnet:widths=32/64/128,depth=3",
        "convnet:dropout=0.25,kernel=7",
        "mlp:hidden=256,depth=1",
        "mlp:depth=0,hidden=7",
        "timm:resnet18",
        "timm:mobilenetv3_small_050,drop_rate=0.1",
        "timm:resnet18,small_input=false,drop_path_rate=0.05",
    ],
)
def test_spec_round_trip(text):
    spec = parse_spec(text)
    again = parse_spec(str(spec))
    assert again == spec
    assert str(again) == str(spec)
    assert parse_spec(spec) == spec  # an ArchSpec is accepted too
    assert hash(again) == hash(spec)


def test_defaults_filled_and_canonical_string():
    spec = parse_spec("convnet")
    assert spec.options == {
        "depth": 3,
        "width": 128,
        "widths": None,
        "norm": "instance",
        "act": "relu",
        "pool": "avg",
        "kernel": 3,
        "dropout": 0.0,
    }
    assert (
        str(spec)
        == "convnet:act=relu,depth=3,dropout=0.0,kernel=3,norm=instance,pool=avg,width=128"
    )
    assert str(parse_spec("mlp")) == "mlp:act=relu,depth=1,dropout=0.0,hidden=256,norm=none"


def test_key_order_case_and_spacing_do_not_matter():
    a = parse_spec("convnet:width=64,depth=2,norm=BATCH")
    b = parse_spec(" convnet: depth=2 , norm=batch,width=64 ")
    assert a == b and str(a) == str(b)
    assert {a: 1}[b] == 1  # usable as a cache key


def test_equal_architectures_give_equal_strings():
    # uniform per-layer widths are the same network as width=W
    assert parse_spec("convnet:depth=2,widths=16/16") == parse_spec("convnet:depth=2,width=16")
    mixed = parse_spec("convnet:depth=2,widths=16/32,width=8")
    assert mixed.options["widths"] == (16, 32) and mixed.options["width"] is None
    assert (
        str(mixed)
        == "convnet:act=relu,depth=2,dropout=0.0,kernel=3,norm=instance,pool=avg,widths=16/32"
    )
    # a linear classifier has no hidden layer, whatever hidden says
    assert parse_spec("mlp:depth=0,hidden=7,act=tanh") == parse_spec("mlp:depth=0")
    # timm: model name first, kwargs sorted, small_input shown only when switched off
    timm_spec = parse_spec("timm:resnet18,small_input=false,drop_rate=0.1")
    assert str(timm_spec) == "timm:resnet18,drop_rate=0.1,small_input=false"
    assert timm_spec.options == {"name": "resnet18", "small_input": False, "drop_rate": 0.1}
    assert str(parse_spec("timm:resnet18,small_input=true")) == "timm:resnet18"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resnet:depth=3", ["unknown model family 'resnet'", "convnet", "mlp", "timm"]),
        ("convnet:depht=3", ["unknown key 'depht'", "depth (int 1..6, default 3)", "widths"]),
        ("convnet:norm=foo", ["norm='foo'", "instance|batch|group|layer|none"]),
        ("convnet:depth=7", ["depth='7'", "int 1..6"]),
        ("convnet:depth=two", ["depth='two'", "int 1..6"]),
        ("convnet:kernel=4", ["kernel='4'", "one of 3|5|7"]),
        ("convnet:dropout=1.5", ["dropout='1.5'", "float 0.0..0.9"]),
        ("convnet:act=swish", ["act='swish'", "relu|gelu|leakyrelu|sigmoid|silu|tanh"]),
        ("convnet:depth=3,widths=8/16", ["widths=8/16 has 2 entries but depth=3"]),
        ("convnet:widths=8/x/8", ["widths='8/x/8'", "ints joined by '/'"]),
        ("convnet:depth=2,depth=3", ["given twice"]),
        ("convnet:depth", ["expected key=value"]),
        ("convnet:depth=2,,width=3", ["empty item"]),
        ("mlp:depth=9", ["depth='9'", "int 0..8"]),
        ("mlp:norm=group", ["none|batch|layer"]),
        ("timm:resnet19", ["unknown model 'resnet19'", "resnet18"]),
        ("timm:drop_rate=0.1", ["timm:NAME"]),
        ("timm:resnet18,pretrained=true", ["pretrained cannot be set"]),
        ("timm:resnet18,small_input=maybe", ["small_input='maybe'", "true|false"]),
        ("", ["non-empty string"]),
    ],
)
def test_bad_specs_are_user_errors_listing_what_is_allowed(text, expected):
    with pytest.raises(UserError) as info:
        parse_spec(text)
    for fragment in expected:
        assert fragment in str(info.value)


def test_timm_kwarg_that_timm_rejects_is_a_user_error():
    with pytest.raises(UserError, match="timm:resnet10t: timm rejected foo=3") as info:
        build_model("timm:resnet10t,foo=3", (3, 32, 32), 10)
    assert "drop_rate" in str(info.value)  # lists what the model accepts


def test_register_family_and_list_families():
    assert {"convnet", "mlp", "timm"} <= set(list_families())

    def build_linear(options, in_shape, num_classes):
        return nn.Sequential(
            nn.Flatten(), nn.Linear(in_shape[0], num_classes, bias=options["bias"])
        )

    try:
        register_family("linear", build_linear, {"bias": Option(bool, True)})
        assert "linear" in list_families()
        spec = parse_spec("linear:bias=no")
        assert spec == ArchSpec("linear", {"bias": False}) and str(spec) == "linear:bias=false"
        assert count_params(build_model(spec, (5,), 3)) == 15
        with pytest.raises(ValueError, match="already registered"):
            register_family("linear", build_linear, {})
    finally:
        model_registry._FAMILIES.pop("linear", None)


# ---------------------------------------------------------------------------------------------
# building and running


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_every_family_runs_forward_and_backward(spec, shape):
    torch.manual_seed(0)
    model = build_model(spec, shape, num_classes=7)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_common_timm_models_run_at_small_sizes(name):
    for shape in SHAPES:
        model = build_model(f"timm:{name}", shape, num_classes=10)
        model(torch.randn(2, *shape)).sum().backward()


def test_vector_input():
    assert build_model("mlp:hidden=8", (20,), 4)(torch.randn(5, 20)).shape == (5, 4)
    for spec in ("convnet", "timm:resnet18"):
        with pytest.raises(UserError, match="needs image input"):
            build_model(spec, (20,), 4)


def test_convnet_pooling_stops_at_one_by_one():
    model = build_model("convnet:depth=4,width=4,norm=batch", (1, 8, 8), 10)
    pools = [m for m in model.features if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no pooling
    assert model.classifier.in_features == 4


def test_convnet_refuses_norm_of_single_values():
    # depth 4 on 8×8: the 4th conv sees a 1×1 map; instance norm there would output a constant
    with pytest.raises(UserError, match="norm=instance at layer 4.*depth <= 3 or norm=batch"):
        build_model("convnet:depth=4,width=4", (1, 8, 8), 10)
    with pytest.raises(UserError, match="norm=group at layer 4"):
        build_model("convnet:depth=4,width=4,norm=group", (1, 8, 8), 10)  # 1 channel per group
    build_model("convnet:depth=4,width=8,norm=group", (1, 8, 8), 10)  # 2 channels per group
    build_model("convnet:depth=4,width=4,norm=layer", (1, 8, 8), 10)


def test_convnet_norm_layers():
    def norm_of(norm, width=6):
        return build_model(f"convnet:depth=1,width={width},norm={norm}", (1, 8, 8), 2).features[1]

    instance, group, layer = norm_of("instance"), norm_of("group"), norm_of("layer")
    assert isinstance(instance, nn.GroupNorm) and instance.num_groups == 6
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 2  # gcd(4, 6)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    assert isinstance(norm_of("batch"), nn.BatchNorm2d)
    assert isinstance(norm_of("none"), nn.Identity)


def test_timm_small_input_adaptation():
    resnet = build_model("timm:resnet10t,channels=8/16/32/64,stem_width=8", (3, 32, 32), 10)
    assert resnet.conv1[0].stride == (1, 1) and isinstance(resnet.maxpool, nn.Identity)
    plain = build_model("timm:resnet10t,channels=8/16/32/64,small_input=false", (3, 32, 32), 10)
    assert plain.conv1[0].stride == (2, 2) and isinstance(plain.maxpool, nn.MaxPool2d)
    convnext = build_model(CONVNEXT, (1, 28, 28), 10)
    assert convnext.stem[0].stride == (1, 1) and convnext.stem[0].kernel_size == (3, 3)
    mobilenet = build_model("timm:mobilenetv3_small_050", (1, 8, 8), 10)
    assert mobilenet.conv_stem.stride == (1, 1)
    vit = build_model("timm:vit_tiny_patch16_224,depth=1,embed_dim=32,num_heads=2", (3, 28, 28), 10)
    assert vit.patch_embed.patch_size == (4, 4) and vit.patch_embed.grid_size == (7, 7)


def test_timm_too_small_input_names_the_minimum():
    with pytest.raises(UserError, match=r"fails on 3×8×8 input.*runs from 32×32 upward"):
        build_model(CONVNEXT + ",small_input=false", (3, 8, 8), 10)


def test_functional_call_matches_module():
    torch.manual_seed(1)
    model = build_model("convnet:depth=3,width=8", (3, 32, 32), 10)
    x = torch.randn(4, 3, 32, 32)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    out = torch.func.functional_call(model, params, (x,))
    assert torch.equal(out, model(x))
    out.sum().backward()
    assert all(p.grad is not None for p in params.values())


@pytest.mark.parametrize("spec", ["convnet:depth=2,width=8", CONVNEXT])
def test_same_seed_same_parameters(spec):
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(spec, (1, 28, 28), 10).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ---------------------------------------------------------------------------------------------
# parameters and FLOPs


def test_count_params():
    model = build_model("mlp:hidden=16,depth=1", (1, 8, 8), 10)
    assert count_params(model) == (64 * 16 + 16) + (16 * 10 + 10)
    convnet = build_model("convnet:depth=2,width=8", (3, 32, 32), 10)
    assert count_params(convnet) == sum(p.numel() for p in convnet.parameters())
    convnet.classifier.weight.requires_grad_(False)  # only trainable parameters count
    assert count_params(convnet) == sum(p.numel() for p in convnet.parameters()) - 8 * 8 * 8 * 10


def test_flops_hand_checked():
    # FlopCounterMode counts matmuls and convolutions only (2 per multiply-add): no bias,
    # normalisation, activation or pooling FLOPs.
    mlp = build_model("mlp:hidden=16,depth=1", (1, 8, 8), 10)
    assert count_flops(mlp, (1, 8, 8)) == 2 * (64 * 16 + 16 * 10)
    conv = build_model("convnet:depth=1,width=4,norm=none", (1, 8, 8), 10)
    assert count_flops(conv, (1, 8, 8)) == 2 * 8 * 8 * 4 * 9 + 2 * (4 * 4 * 4) * 10
    # depth 4 on 8×8: feature maps 8, 4, 2, 1 (pooling stops at 1×1)
    deep = build_model("convnet:depth=4,width=4,norm=none", (1, 8, 8), 10)
    convs = 2 * 9 * (8 * 8 * 1 * 4 + 4 * 4 * 4 * 4 + 2 * 2 * 4 * 4 + 1 * 1 * 4 * 4)
    assert count_flops(deep, (1, 8, 8)) == convs + 2 * 4 * 10


def test_count_flops_restores_each_module_mode():
    model = build_model("convnet:depth=2,width=4,norm=batch", (1, 8, 8), 10)
    model.train()
    model.features[1].eval()  # e.g. a frozen BatchNorm
    running = model.features[1].running_mean.clone()
    count_flops(model, (1, 8, 8))
    assert model.training and not model.features[1].training and model.features[4].training
    assert torch.equal(model.features[1].running_mean, running)


def test_model_profile_is_cached_and_leaves_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    profile = model_profile("mlp:depth=1,hidden=16", (1, 8, 8), 10)
    assert torch.equal(torch.rand(3), expected)
    assert profile == {
        "arch": "mlp:act=relu,depth=1,dropout=0.0,hidden=16,norm=none",
        "params": 1210,
        "flops": 2368,
    }
    profile["params"] = -1  # the caller's copy; the cache keeps its own
    again = model_profile(parse_spec("mlp:hidden=16"), [1, 8, 8], 10)
    assert again["params"] == 1210


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 17, 19), (2, 3, 7, 7)])
def test_avg_pool_2x2_equals_avg_pool2d_to_second_derivatives(shape):
    pool = AvgPool2x2()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    fast = shape[-1] * shape[-2] >= AvgPool2x2.MIN_AREA
    assert ("AvgPool" not in type(pool(x).grad_fn).__name__) == fast  # which path ran

    def derivatives(fn):
        y = fn(x)
        (g,) = torch.autograd.grad((y**3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g**2).sum(), x)
        return y, g, gg

    for ours, plain in zip(
        derivatives(pool), derivatives(lambda t: F.avg_pool2d(t, 2)), strict=True
    ):
        assert torch.allclose(ours, plain, rtol=1e-12, atol=1e-12)
    bf16 = x.detach().bfloat16()
    assert torch.allclose(pool(bf16).float(), F.avg_pool2d(bf16, 2).float(), rtol=2e-2, atol=2e-2)
