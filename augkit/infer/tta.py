"""Test-time augmentation on tensors: apply views to a batch, undo them, merge probabilities.

Views are *described* in :mod:`augkit.recipe.views`; this module runs them as batched tensor
operations on ``(N, C, H, W)`` float tensors (already decoded, resized and normalized), so an
image is decoded once however many views it gets. :class:`TTAWrapper` wraps any classifier.

Kinds (the registry :data:`KERNELS` has one entry per kind in ``views.VIEW_KINDS``):

* ``hflip`` / ``vflip`` / ``rot90``: ``torch.flip`` / ``torch.rot90`` (exact; invertible).
* ``shift``: translate by ``round(x * W)``, ``round(y * H)`` pixels; the uncovered border is
  filled by reflection (no black bars the model never saw in training).
* ``crop``: cut a ``size`` fraction of each side at a position, resize back to ``H x W``
  (bilinear; the model sees the same input size as the plain view).
* ``scale``: resize by ``factor`` (bilinear, antialiased when shrinking); the model sees a
  different input size, so such views go through the model in their own forward pass.

Merging works on probabilities, never on raw logits (ttach's ``tsharpen`` takes the square
root of logits and returns NaN for negative ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augkit.recipe.views import MERGE_MODES, VIEW_KINDS, Primitive, View, make_view, preset_views, prim

# ====================================================================== view kernels

KERNELS: dict[str, Callable[..., Tensor]] = {}
INVERSES: dict[str, Callable[..., Tensor]] = {}


def kernel(kind: str, inverse: Callable[..., Tensor] | None = None):
    """Register the batched implementation of a view kind (and its inverse, if it has one)."""
    if kind not in VIEW_KINDS:
        raise KeyError(f"{kind!r} is not a view kind in augkit.recipe.views.VIEW_KINDS")

    def deco(fn):
        KERNELS[kind] = fn
        if inverse is not None:
            INVERSES[kind] = inverse
        return fn

    return deco


@kernel("identity", inverse=lambda x: x)
def _identity(x: Tensor) -> Tensor:
    return x


@kernel("hflip", inverse=lambda x: x.flip(-1))
def _hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


@kernel("vflip", inverse=lambda x: x.flip(-2))
def _vflip(x: Tensor) -> Tensor:
    return x.flip(-2)


@kernel("rot90", inverse=lambda x, k: torch.rot90(x, -k, dims=(-2, -1)))
def _rot90(x: Tensor, k: int) -> Tensor:
    """``k`` quarter turns counter-clockwise (as ``numpy.rot90`` on an H x W image)."""
    return torch.rot90(x, k, dims=(-2, -1))


def shift_pixels(size: int, fraction: float) -> int:
    """The whole-pixel offset of a shift: ``round(fraction * size)`` (half to even)."""
    return int(round(fraction * size))


@kernel("shift")
def _shift(t: Tensor, x: float, y: float) -> Tensor:
    """Translate content by (dx, dy) pixels, + = right/down; reflect into the uncovered border."""
    h, w = t.shape[-2:]
    dx, dy = shift_pixels(w, x), shift_pixels(h, y)
    if dx:
        t = F.pad(t, (dx, 0, 0, 0) if dx > 0 else (0, -dx, 0, 0), mode="reflect")
        t = t[..., :, :w] if dx > 0 else t[..., :, -dx:]
    if dy:
        t = F.pad(t, (0, 0, dy, 0) if dy > 0 else (0, 0, 0, -dy), mode="reflect")
        t = t[..., :h, :] if dy > 0 else t[..., -dy:, :]
    return t


def crop_box(h: int, w: int, position: str, size: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering ``size`` of each side at ``position``."""
    ch, cw = max(1, int(round(size * h))), max(1, int(round(size * w)))
    top = {"center": (h - ch) // 2, "tl": 0, "tr": 0, "bl": h - ch, "br": h - ch}[position]
    left = {"center": (w - cw) // 2, "tl": 0, "tr": w - cw, "bl": 0, "br": w - cw}[position]
    return top, left, ch, cw


def _resize(t: Tensor, h: int, w: int) -> Tensor:
    if t.shape[-2:] == (h, w):
        return t
    shrink = h < t.shape[-2] or w < t.shape[-1]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


@kernel("crop")
def _crop(t: Tensor, position: str, size: float) -> Tensor:
    h, w = t.shape[-2:]
    top, left, ch, cw = crop_box(h, w, position, size)
    return _resize(t[..., top : top + ch, left : left + cw], h, w)


@kernel("scale")
def _scale(t: Tensor, factor: float) -> Tensor:
    h, w = t.shape[-2:]
    return _resize(t, max(1, int(round(h * factor))), max(1, int(round(w * factor))))


def apply_primitive(x: Tensor, p: Primitive) -> Tensor:
    return KERNELS[p.kind](x, **p.kwargs)


def apply_view(x: Tensor, view: View) -> Tensor:
    """The view of a batch ``(N, C, H, W)``: its chain applied left to right."""
    for p in view.chain:
        x = apply_primitive(x, p)
    return x


def is_invertible(view: View) -> bool:
    """True when every step can be undone exactly (flips and quarter turns)."""
    return all(p.kind in INVERSES for p in view.chain)


def deaug(x: Tensor, view: View) -> Tensor:
    """Undo a view (for dense outputs, or to check a view): ``deaug(apply_view(x, v), v) == x``.

    Only flips and quarter turns are invertible; a shift loses its reflected border and a
    crop or scale loses pixels, so they raise ``ValueError``.
    """
    if not is_invertible(view):
        bad = [p.kind for p in view.chain if p.kind not in INVERSES]
        raise ValueError(f"view {view.name!r} is not invertible ({', '.join(bad)} loses pixels)")
    for p in reversed(view.chain):
        x = INVERSES[p.kind](x, **p.kwargs)
    return x


# ====================================================================== merging probabilities

MERGES: dict[str, Callable[[Tensor], Tensor]] = {}
_TINY = 1e-30


def merger(name: str):
    """Register a merge: ``(V, N, K)`` probabilities -> ``(N, K)`` probabilities summing to 1."""
    if name not in MERGE_MODES:
        raise KeyError(f"{name!r} is not a merge mode in augkit.recipe.views.MERGE_MODES")

    def deco(fn):
        MERGES[name] = fn
        return fn

    return deco


def _renorm(p: Tensor) -> Tensor:
    return p / p.sum(-1, keepdim=True).clamp_min(_TINY)


@merger("mean")
def merge_mean(p: Tensor) -> Tensor:
    """Arithmetic mean of the views' probabilities (already sums to 1)."""
    return p.mean(0)


@merger("gmean")
def merge_gmean(p: Tensor) -> Tensor:
    """Geometric mean, renormalised: softmax of the mean log-probability (0 is clamped to 1e-30)."""
    return torch.softmax(p.clamp_min(_TINY).log().mean(0), dim=-1)


@merger("max")
def merge_max(p: Tensor) -> Tensor:
    """Per class, the largest probability over the views, renormalised."""
    return _renorm(p.amax(0))


@merger("tsharpen")
def merge_tsharpen(p: Tensor) -> Tensor:
    """Mean of the square roots of the probabilities, renormalised (a temperature-sharpened mean)."""
    return _renorm(p.clamp_min(0).sqrt().mean(0))


def merge_probs(p: Tensor, merge: str = "mean", beta: float = 0.0, plain: Tensor | None = None) -> Tensor:
    """Merge ``(V, N, K)`` probabilities; with ``beta > 0`` blend in the plain view:
    ``(1 - beta) * merged + beta * plain``."""
    if merge not in MERGES:
        raise ValueError(f"unknown merge {merge!r} (allowed: {', '.join(MERGE_MODES)})")
    merged = MERGES[merge](p)
    if beta:
        if plain is None:
            raise ValueError("beta > 0 needs the plain (identity) view's probabilities")
        merged = (1.0 - beta) * merged + beta * plain
    return merged


# ====================================================================== the wrapper

IDENTITY = make_view(prim("identity"))


class TTAWrapper(nn.Module):
    """Wrap a classifier returning logits ``(N, K)``; ``forward`` returns merged probabilities.

    ``views``: a preset name (``"flip+shift"``) or a list of :class:`~augkit.recipe.views.View`.
    All views of a batch go through the model together: the views are concatenated along
    the batch axis (views that change the input size, like ``scale``, form their own group),
    in pieces of at most ``max_batch`` images when given. With ``beta > 0`` (or
    ``with_plain=True``) the identity view is computed too, even when ``views`` lacks it.

    >>> tta = TTAWrapper(model, "flip+shift", merge="mean")
    >>> probs = tta(images)                      # (N, K)
    >>> per_view = tta.view_probs(images)        # (V, N, K), V = len(tta.all_views)
    """

    def __init__(
        self,
        model: nn.Module,
        views: str | Sequence[View] = "identity",
        merge: str = "mean",
        beta: float = 0.0,
        *,
        max_batch: int | None = None,
        with_plain: bool = False,
    ):
        super().__init__()
        views = preset_views(views) if isinstance(views, str) else list(views)
        if not views:
            raise ValueError("TTAWrapper needs at least one view")
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r} (allowed: {', '.join(MERGE_MODES)})")
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.model = model
        self.views: list[View] = views
        self.merge, self.beta, self.max_batch = merge, float(beta), max_batch
        ident = [i for i, v in enumerate(views) if v.is_identity]
        need_plain = with_plain or self.beta > 0
        self.all_views: list[View] = views + ([IDENTITY] if need_plain and not ident else [])
        self.plain_index: int | None = ident[0] if ident else (len(views) if need_plain else None)

    def augment(self, x: Tensor) -> list[Tensor]:
        """Each view of ``x``, in the order of :attr:`all_views`."""
        return [apply_view(x, v) for v in self.all_views]

    def _logits(self, batch: Tensor) -> Tensor:
        if self.max_batch is None or batch.shape[0] <= self.max_batch:
            return self.model(batch)
        return torch.cat([self.model(c) for c in batch.split(self.max_batch)])

    def view_probs(self, x: Tensor) -> Tensor:
        """Softmax probabilities of every view: ``(len(all_views), N, K)``."""
        n = x.shape[0]
        outs = self.augment(x)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(outs):
            groups.setdefault(tuple(t.shape[1:]), []).append(i)
        probs: list[Tensor | None] = [None] * len(outs)
        for idx in groups.values():
            batch = outs[idx[0]] if len(idx) == 1 else torch.cat([outs[i] for i in idx])
            p = torch.softmax(self._logits(batch).float(), dim=-1)
            for j, i in enumerate(idx):
                probs[i] = p[j * n : (j + 1) * n]
        return torch.stack([p for p in probs if p is not None])  # every slot is filled: each view is in a group

    def merge_views(self, p: Tensor) -> Tensor:
        """Merge the output of :meth:`view_probs` with this wrapper's merge and beta."""
        plain = p[self.plain_index] if self.plain_index is not None else None
        return merge_probs(p[: len(self.views)], self.merge, self.beta, plain)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge_views(self.view_probs(x))
