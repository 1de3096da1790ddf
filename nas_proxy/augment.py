"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021) and ZCA whitening.

DSA transforms are differentiable w.r.t. the images, so distillation can push gradients through
them into the synthetic set. Semantics follow the DSA/MTT reference (``aug_mode='S'``): a strategy
is a ``_``-joined list of ops; each call picks ONE op uniformly at random from the list (``color``
counts as one op and applies brightness, saturation and contrast in turn), then draws that op's
parameters independently per image. ``DSAParams(mode="all")`` applies every op in order instead
(the reference's ``'M'`` mode), and ``DSAParams(batch_shared=True)`` draws one parameter set for
the whole batch (the reference's seeded "batch mode", used when a real and a synthetic batch of
different sizes must see the same transform).

Randomness comes only from an explicit ``torch.Generator`` (drawn on the generator's device,
CPU by default, then moved to the images' device), never from the global RNG. Re-running ``dsa``
with a generator in the same state gives bit-identical output, which is what lets memory-bounded
distillation recompute an inner step, and what makes the "siamese" use possible: restore the
generator state and apply the same transform to another batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nas_proxy.errors import UserError

if TYPE_CHECKING:
    from nas_proxy.data import Dataset

DEFAULT_DSA = "color_crop_cutout_flip_scale_rotate"
NO_AUGMENT = "none"

# Glyph datasets: a mirrored 2, 3, 5, 7 or character is no longer the same class (or any class),
# so flipping teaches the network a false invariance. MTT used the full strategy everywhere, but it
# never distilled digits; clothes and natural images are mirror-symmetric, so they keep 'flip'.
_NO_FLIP_DATASETS = frozenset({"digits", "mnist", "emnist", "kmnist", "usps", "svhn"})
# Vector tasks have no spatial structure for image ops to act on.
_NON_IMAGE_DATASETS = frozenset({"multi-index"})


@dataclass(frozen=True)
class DSAParams:
    """Op settings; the defaults are the published DSA/MTT ones (``ParamDiffAug``)."""

    strategy: str = DEFAULT_DSA
    ratio_scale: float = 1.2  # per-axis scale factor in [1/r, r]
    ratio_rotate: float = 15.0  # degrees, uniform in [-r, r]
    ratio_crop_pad: float = 0.125  # max translation as a fraction of the side (zero fill)
    ratio_cutout: float = 0.5  # side of the zeroed square as a fraction of the image side
    brightness: float = 1.0  # x + (u - 0.5) * b
    saturation: float = 2.0  # channel-mean blend factor u * s (identity on 1-channel images)
    contrast: float = 0.5  # image-mean blend factor u + c
    prob_flip: float = 0.5  # horizontal flip probability
    mode: str = "single"  # "single": one random op per call (reference 'S'); "all": every op ('M')
    batch_shared: bool = False  # one parameter draw for the whole batch instead of one per image

    def __post_init__(self) -> None:
        if self.mode not in ("single", "all"):
            raise UserError(f"DSA mode '{self.mode}' is unknown; allowed: single, all")
        parse_strategy(self.strategy)


Op = Callable[[torch.Tensor, DSAParams, torch.Generator, int], torch.Tensor]


def _uniform(g: torch.Generator, n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """``n×k`` uniforms in [0, 1) from ``g``, delivered on ``like``'s device and dtype."""
    return torch.rand(n, k, generator=g, device=g.device).to(like.device, like.dtype)


def _randint(g: torch.Generator, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, (n, 1), generator=g, device=g.device).to(device)


def _color(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    u = _uniform(g, n, 3, x).view(n, 3, 1, 1, 1)
    x = x + (u[:, 0] - 0.5) * p.brightness
    if x.shape[1] > 1:  # with one channel the channel mean is the pixel itself: a no-op
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (u[:, 1] * p.saturation) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u[:, 2] + p.contrast) + m


def _crop(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    """Translate by whole pixels with zero fill (the reference's pad-and-crop).

    Index gathers instead of grid_sample: exact pixel copies, no interpolation blur, and no
    N×H×W index grid to build.
    """
    N, C, H, W = x.shape
    sh, sw = int(H * p.ratio_crop_pad + 0.5), int(W * p.ratio_crop_pad + 0.5)
    th = _randint(g, n, -sh, sh + 1, x.device)
    tw = _randint(g, n, -sw, sw + 1, x.device)
    # Index 0 and H+1 of the padded image are the zero border; clamping sends every pixel that
    # was shifted in from outside the image there.
    rows = (torch.arange(1, H + 1, device=x.device) + th).clamp_(0, H + 1).expand(N, H)
    cols = (torch.arange(1, W + 1, device=x.device) + tw).clamp_(0, W + 1).expand(N, W)
    xp = F.pad(x, (1, 1, 1, 1))
    xp = xp.gather(2, rows.view(N, 1, H, 1).expand(N, C, H, W + 2))
    return xp.gather(3, cols.view(N, 1, 1, W).expand(N, C, H, W))


def _cutout(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    """Zero a square of side ratio·H × ratio·W whose centre may sit anywhere on the image."""
    _, _, H, W = x.shape
    ch, cw = int(H * p.ratio_cutout + 0.5), int(W * p.ratio_cutout + 0.5)
    # Centre range as in the reference (even sides may also centre on the far edge), clipped box.
    top = _randint(g, n, 0, H + 1 - ch % 2, x.device) - ch // 2
    left = _randint(g, n, 0, W + 1 - cw % 2, x.device) - cw // 2
    r, c = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_r = (r >= top) & (r < top + ch)  # n×H
    in_c = (c >= left) & (c < left + cw)  # n×W
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _flip(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    flip = _uniform(g, n, 1, x).view(n, 1, 1, 1) < p.prob_flip
    return torch.where(flip, x.flip(3), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through affine maps ``theta`` (n×2×3, output → input coordinates)."""
    theta = theta.to(x.device, x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    r = p.ratio_scale
    s = torch.rand(n, 2, generator=g, device=g.device) * (r - 1.0 / r) + 1.0 / r
    theta = torch.zeros(n, 2, 3, device=g.device)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    return _warp(x, theta)


def _rotate(x: torch.Tensor, p: DSAParams, g: torch.Generator, n: int) -> torch.Tensor:
    a = (torch.rand(n, generator=g, device=g.device) * 2 - 1) * math.radians(p.ratio_rotate)
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(n, 2, 3)
    return _warp(x, theta)


OPS: dict[str, Op] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


@functools.lru_cache(maxsize=128)
def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """Ops of a strategy string, in order; ``()`` for None/''/'none'. Unknown ops: UserError."""
    if strategy is None or strategy.strip().lower() in ("", NO_AUGMENT):
        return ()
    ops = tuple(strategy.strip().lower().split("_"))
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise UserError(
            f"DSA strategy '{strategy}': unknown op(s) {', '.join(repr(b) for b in bad)}; "
            f"allowed ops: {', '.join(OPS)} joined by '_' (e.g. '{DEFAULT_DSA}'), or 'none'"
        )
    return ops


def dsa_strategy_for(dataset_name: str) -> str:
    """Default DSA strategy for a dataset name ('digits', 'cifar10', ...)."""
    base = dataset_name.split(":", 1)[0].strip().lower()
    if base in _NON_IMAGE_DATASETS:
        return NO_AUGMENT
    if base in _NO_FLIP_DATASETS:
        return "_".join(op for op in parse_strategy(DEFAULT_DSA) if op != "flip")
    return DEFAULT_DSA


def resolve_strategy(value: bool | str | None, dataset_name: str) -> str | None:
    """The strategy a user's augmentation value names, the one place spellings are read:
    None, False, '', 'none', 'false' → None; True, 'dsa', 'true', 'default' → the dataset's
    default (:func:`dsa_strategy_for`); any other string → itself, checked."""
    if value is None or value is False:
        return None
    text = str(value).strip().lower()
    if text in ("", NO_AUGMENT, "false"):
        return None
    if value is True or text in ("dsa", "true", "default"):
        return dsa_strategy_for(dataset_name)
    parse_strategy(str(value))  # unknown ops: UserError
    return str(value)


def dsa(
    x: torch.Tensor,
    strategy: str | None = None,
    generator: torch.Generator | None = None,
    params: DSAParams | None = None,
) -> torch.Tensor:
    """Augment an N×C×H×W batch differentiably.

    ``strategy`` (if given) overrides ``params.strategy``; with neither, ``DEFAULT_DSA``.
    Without a generator a fresh, non-deterministically seeded one is used (the global RNG is
    never touched); pass one for reproducible or siamese (replayed) transforms.
    """
    p = params or DSAParams()
    ops = parse_strategy(strategy if strategy is not None else p.strategy)
    if not ops:
        return x
    if x.dim() != 4:
        raise ValueError(f"dsa expects an N×C×H×W batch, got shape {tuple(x.shape)}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    n = 1 if p.batch_shared else x.shape[0]
    if p.mode == "single":
        pick = int(torch.randint(len(ops), (1,), generator=generator, device=generator.device))
        ops = (ops[pick],)
    for op in ops:
        x = OPS[op](x, p, generator, n)
    return x


class Augment:
    """A DSA callable with its own generator; its state can be checkpointed and restored."""

    def __init__(self, strategy: str, seed: int | None = None, params: DSAParams | None = None):
        self.params = replace(params or DSAParams(), strategy=strategy)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @property
    def strategy(self) -> str:
        return self.params.strategy

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return dsa(x, generator=self.generator, params=self.params)

    def get_state(self) -> torch.Tensor:
        """Generator state as a uint8 tensor (storable in safetensors)."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.to("cpu", torch.uint8))

    def __repr__(self) -> str:
        return f"Augment(strategy={self.strategy!r})"


def make_augment(
    strategy: str | None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    params: DSAParams | None = None,
) -> Augment | None:
    """A callable ``x -> dsa(x)`` drawing from its own CPU generator; None for None/'none'.

    ``device`` is accepted for call-site symmetry but parameters are always drawn on CPU, so a
    seed gives the same augmentation sequence on every device.
    """
    del device
    if not parse_strategy(strategy):
        return None
    return Augment(strategy, seed=seed, params=params)


class ZCA:
    """ZCA whitening of flattened images (the kornia ``ZCAWhitening`` used by MTT/KIP).

    ``W = U (S + eps)^-1/2 Uᵀ`` from the eigendecomposition ``U S Uᵀ`` of the unbiased covariance
    of the training images; ``transform(x) = (x - mean) W`` and ``inverse`` undoes it. ``eps``
    (MTT's 0.1) is absolute, so it regularises relative to the data's variance scale.
    """

    def __init__(self, eps: float = 0.1):
        if not eps >= 0:
            raise UserError(f"ZCA eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.shape: tuple[int, ...] | None = None
        self._state: dict[str, torch.Tensor] = {}
        self._mats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def fitted(self) -> bool:
        return self._mats is not None

    def fit(self, x: torch.Tensor) -> ZCA:
        """Fit on training images N×C×H×W (or N×D); returns self."""
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"ZCA.fit needs at least 2 samples, got shape {tuple(x.shape)}")
        flat = x.detach().reshape(x.shape[0], -1)
        flat = flat.float() if flat.dtype != torch.float64 else flat
        mean = flat.mean(dim=0)
        centred = flat - mean
        cov = (centred.T @ centred / (flat.shape[0] - 1)).double().cpu()
        # eigh over svd: the covariance is symmetric PSD, and eigh is several times faster.
        vals, vecs = torch.linalg.eigh(cov)
        self._set(
            tuple(x.shape[1:]),
            mean.float().cpu(),
            vecs.float().contiguous(),  # eigh returns column-major storage
            vals.clamp(min=0).float(),  # tiny negatives are rounding noise
        )
        return self

    def _set(
        self, shape: tuple[int, ...], mean: torch.Tensor, vecs: torch.Tensor, vals: torch.Tensor
    ) -> None:
        """Build both matrices from the stored state; fit and from_state share this path so a
        round-tripped ZCA computes bit-identical transforms."""
        self.shape = shape
        self._state = {"mean": mean, "eigvecs": vecs, "eigvals": vals}
        u, s = vecs.double(), vals.double() + self.eps
        whiten = (u * s.rsqrt()) @ u.T
        colour = (u * s.sqrt()) @ u.T
        self._mats = (mean, whiten.float(), colour.float())
        self._on.clear()

    def _matrices(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._mats is None or self.shape is None:
            raise RuntimeError("ZCA is not fitted: call fit() or from_state() first")
        k = len(self.shape)
        if tuple(x.shape[-k:]) != self.shape:
            raise ValueError(f"ZCA fitted on shape {self.shape}, got {tuple(x.shape)}")
        key = (x.device, x.dtype)
        if key not in self._on:  # cache device copies: these can be 2×38 MB for CIFAR
            self._on[key] = tuple(m.to(x.device, x.dtype) for m in self._mats)
        return self._on[key]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten images (any leading dims + the fitted shape); differentiable."""
        mean, whiten, _ = self._matrices(x)
        d = mean.numel()
        return ((x.reshape(-1, d) - mean) @ whiten).reshape(x.shape)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to the input space (for viewing synthetic images)."""
        mean, _, colour = self._matrices(x)
        d = mean.numel()
        return (x.reshape(-1, d) @ colour + mean).reshape(x.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors only (safetensors-storable, no pickling)."""
        if self.shape is None:
            raise RuntimeError("ZCA is not fitted")
        return {
            **self._state,
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "shape": torch.tensor(self.shape, dtype=torch.int64),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> ZCA:
        missing = {"mean", "eigvecs", "eigvals", "eps", "shape"} - set(state)
        if missing:
            raise UserError(f"ZCA state is missing tensor(s): {', '.join(sorted(missing))}")
        zca = cls(eps=float(state["eps"]))
        shape = tuple(int(s) for s in state["shape"].tolist())
        mean, vecs, vals = (
            state[k].detach().cpu().float().contiguous() for k in ("mean", "eigvecs", "eigvals")
        )
        d = math.prod(shape)
        if mean.shape != (d,) or vecs.shape != (d, d) or vals.shape != (d,):
            raise UserError(f"ZCA state tensors do not match shape {list(shape)}")
        zca._set(shape, mean, vecs, vals)
        return zca


ZCA_EPS = 0.1  # MTT's kornia ZCAWhitening eps
_ZCA_CACHE: dict[tuple[str, str], tuple[Dataset, ZCA]] = {}


def whiten(dataset: Dataset, eps: float = ZCA_EPS) -> tuple[Dataset, ZCA]:
    """The dataset with every split ZCA-whitened (fitted on the training split), and the ZCA.

    Memoised for the last dataset: experts and MTT both need the same whitened tensors.
    """
    cache_key = (dataset.name, f"{dataset.checksum}:{eps}")
    if cache_key not in _ZCA_CACHE:
        zca = ZCA(eps=eps).fit(dataset.train_x)
        white = replace(
            dataset,
            train_x=zca.transform(dataset.train_x),
            val_x=zca.transform(dataset.val_x),
            test_x=zca.transform(dataset.test_x),
        )
        _ZCA_CACHE.clear()
        _ZCA_CACHE[cache_key] = (white, zca)
    return _ZCA_CACHE[cache_key]
