"""One warp per sample: a recipe's consecutive geometric steps resampled once.

:func:`run_fused` walks a built pipeline (an ``A.Compose`` of augkit's steps) exactly as
albumentations 2.0.8's ``Compose.__call__`` would: the same ``should_apply`` / ``get_params`` /
``update_transform_params`` / ``get_params_dependent_on_data`` calls, in the same order, on the
same seeded generators, so every sampled parameter (and so the manifest, ``applied_steps``) is
what the step-by-step pipeline draws. What changes is how the pixels of geometric steps are made:

* Geometric steps that are affine maps (``flip``, ``shift``, ``rotate``, ``affine``, the
  ``HorizontalFlip``/``VerticalFlip``/``Affine`` (no ``fit_output``)/``Rotate`` (no ``crop_border``)
  albumentations classes, and the Shear/Translate/Rotate ops drawn by ``trivial_augment`` and
  ``rand_augment``) are not applied one by one: their matrices are multiplied into one 3x3 matrix.
* A *run* of such steps ends at any other step (a pixel step, a geometric step that is not a
  matrix such as ``ElasticTransform``, a step whose border, fill or interpolation differs from the
  run's). The run is then drawn with ONE ``cv2.warpAffine`` (the run's border and fill), and the
  step that ended it runs on those pixels, where today's order runs it. Pixel steps are never moved.
* On an image (offline ``augment``, the training memory cache), a run with at most one resampling
  step (flips are exact index maps) is replayed step by step: fusing gains nothing there, so its
  pixels are exactly the step-by-step ones.
* A :class:`Source` may fold more into the run: :class:`~augkit.io.warped.DecodedFile` (training,
  memory cache off) folds the resize from the decoded file to the working size into every run that
  starts from the file (flips only, or none, included: every such sample is resampled once, the
  same way), and :func:`run_fused` with ``size`` folds the final resize + centre crop, so a recipe
  whose last applied step is geometric goes from the decoded JPEG straight to ``size x size``.

Where fused and step-by-step pixels differ: (1) interpolation rounding (one bilinear resampling
instead of several: less blur, the point); (2) near the borders: a chain fills each step's border
from the previous step's output, the single warp fills from the source image, so border regions
that a later step moves into view differ (and with border ``constant`` the fused result can show
pixels a chain had cut off); (3) a folded downscale is bilinear (no area averaging) within 2x.
tests/test_fuse.py states and checks the tolerance away from the borders for every geometric op.
``Augmenter(...)(img, seed, fused=False)`` gives the step-by-step pixels (what an exported
albumentations pipeline reproduces exactly).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from augkit.albu import import_albumentations

_EYE = np.eye(3)
_LINEAR, _REPLICATE = 1, 1  # cv2.INTER_LINEAR, cv2.BORDER_REPLICATE (OpenCV loads when pixels are made)


class Source(Protocol):
    """Where a walk's pixels come from before anything is applied (the *working* image).

    ``shape``: (height, width) of the working image (what the recipe's parameters are drawn for);
    ``start()``: the working image itself (RGB uint8); ``folds(interp)``: whether :meth:`render`
    may be used for a run with that interpolation; ``render(inv, out_hw, border, fill, interp)``:
    the pixels at ``inv @ (x, y, 1)`` of the working image for each output pixel (x, y), one warp.
    """

    shape: tuple[int, int]

    def start(self) -> np.ndarray: ...

    def folds(self, interp: int) -> bool: ...

    def render(self, inv: np.ndarray, out_hw: tuple[int, int], border: int, fill: Any, interp: int) -> np.ndarray: ...


class ImageSource:
    """An image already at working size (offline ``augment``, the in-memory cache): nothing to fold."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.shape = (int(image.shape[0]), int(image.shape[1]))

    def start(self) -> np.ndarray:
        return self.image

    def folds(self, interp: int) -> bool:
        return False

    def render(self, inv: np.ndarray, out_hw: tuple[int, int], border: int, fill: Any, interp: int) -> np.ndarray:
        from augkit.io.warped import warp  # OpenCV loads when pixels are made, not when a recipe is read

        return warp(self.image, inv, out_hw, border, fill, interp)


@functools.lru_cache(maxsize=1)
def _classes() -> dict[str, Any]:
    """albumentations' classes the walk knows (loaded with the first pipeline, not at import)."""
    A = import_albumentations()
    from augkit.recipe.policies.transform import PolicyAugment  # albumentations subclass: loads with it

    return {
        "Compose": A.Compose,
        "Sequential": A.Sequential,
        "OneOf": A.OneOf,
        "SomeOf": A.SomeOf,
        "HorizontalFlip": A.HorizontalFlip,
        "VerticalFlip": A.VerticalFlip,
        "Affine": A.Affine,
        "Rotate": A.Rotate,
        "PolicyAugment": PolicyAugment,
    }


def is_matrix_step(t: Any) -> bool:
    """Whether a leaf transform is an affine map of the image onto itself (same size) that a run may fuse."""
    c = _classes()
    kind = type(t)
    if kind in (c["HorizontalFlip"], c["VerticalFlip"], c["PolicyAugment"]):
        return True
    if kind is c["Affine"]:
        return not t.fit_output
    if kind is c["Rotate"]:
        return not t.crop_border
    return False


@dataclass
class _Run:
    """Geometric steps drawn but not yet applied: ``inv`` maps the run's output pixel indices to its
    input's; ``steps`` replays each as its own code applies it; ``warps`` counts the resampling ones."""

    shape: tuple[int, int]
    inv: np.ndarray = field(default_factory=lambda: _EYE.copy())
    steps: list[Callable[[np.ndarray], np.ndarray]] = field(default_factory=list)
    warps: int = 0
    border: int = _REPLICATE  # a run of flips only (or none) folded with a resize: edges as cv2.resize
    fill: Any = 0
    interp: int = _LINEAR


def _same_fill(a: Any, b: Any) -> bool:
    a, b = (tuple(x) if isinstance(x, (list, tuple)) else (x,) for x in (a, b))
    return a == b or (len(a) == 1 and len(b) == 1 and float(a[0]) == float(b[0]))


@dataclass
class Walk:
    """One fused call: the source, the materialized image (None: still the source), the open run."""

    source: Source
    img: np.ndarray | None = None
    run: _Run = field(init=False)
    #: how many times pixels were resampled by a fused warp (for tests and benchmarks)
    warps_done: int = 0

    def __post_init__(self) -> None:
        self.run = _Run(self.source.shape)

    # ------------------------------------------------------------------ geometry
    def add(self, inv: np.ndarray, replay: Callable[[np.ndarray], np.ndarray], *, flip: bool, border: int = 0,
            fill: Any = 0, interp: int = 1) -> None:  # fmt: skip
        """Append one geometric step (its inverse matrix) to the open run; a step whose border, fill
        or interpolation differs from the run's resampling steps first closes the run."""
        run = self.run
        if not flip and run.warps and (border != run.border or interp != run.interp or not _same_fill(fill, run.fill)):
            self.materialize()
            run = self.run
        run.inv = run.inv @ inv
        run.steps.append(replay)
        if not flip:
            run.warps += 1
            run.border, run.fill, run.interp = int(border), fill, int(interp)

    def materialize(self) -> np.ndarray:
        """The pixels as they are now (the open run applied); the run is closed."""
        if self.img is not None and not self.run.steps:
            return self.img
        img = self._render(None)
        self.img, self.run = img, _Run((int(img.shape[0]), int(img.shape[1])))
        return img

    def _render(self, size: int | None) -> np.ndarray:
        """The open run's pixels: the whole working extent, or (``size``) the final resize_short +
        centre crop to ``size`` folded in."""
        run = self.run
        base = self.img
        folding = base is None and self.source.folds(run.interp)  # a run of flips only too: one resampling
        if not folding:
            if base is None:
                base = self.source.start()
            if run.warps <= 1:  # nothing to gain: each step exactly as its own code does it
                for step in run.steps:
                    base = step(base)
                return base if size is None else _final_view(base, size)
        out_hw, final = run.shape, _EYE
        if size is not None:
            out_hw, final = (size, size), final_matrix(run.shape, size)
        inv = run.inv @ final
        self.warps_done += 1
        if base is None:  # folding: the source draws the run (and what it folds) itself
            return self.source.render(inv, out_hw, run.border, run.fill, run.interp)
        return ImageSource(base).render(inv, out_hw, run.border, run.fill, run.interp)

    def finish(self, size: int | None) -> np.ndarray:
        """The walk's result: the image, or its final ``size x size`` view (resize_short + centre crop)."""
        if size is None:
            return self.materialize()
        if self.img is not None and not self.run.steps:
            return _final_view(self.img, size)
        return self._render(size)

    # ------------------------------------------------------------------ the pipeline
    def call(self, t: Any, force: bool = False) -> None:
        """``t(force_apply=force, image=...)`` as albumentations runs it, geometry deferred."""
        c = _classes()
        kind = type(t)
        if kind is c["Compose"]:
            if force or t.py_random.random() < t.p:  # Compose draws even at p=1
                for child in t.transforms:
                    self.call(child)
        elif kind is c["Sequential"]:
            if force or t.py_random.random() < t.p:
                for child in t.transforms:
                    self.call(child)
        elif kind is c["OneOf"]:
            if t.transforms_ps and (force or t.py_random.random() < t.p):
                idx = t.random_generator.choice(len(t.transforms), p=t.transforms_ps)
                self.call(t.transforms[idx], force=True)
        elif kind is c["SomeOf"]:
            if t.py_random.random() < t.p:
                for i in t._get_idx():
                    self.call(t.transforms[i])
        elif is_matrix_step(t):
            self._matrix_step(t, force)
        else:  # any other step: on the pixels as they are now, by its own code
            self.img = t(force_apply=force, image=self.materialize())["image"]
            self.run = _Run((int(self.img.shape[0]), int(self.img.shape[1])))

    def _matrix_step(self, t: Any, force: bool) -> None:
        """BasicTransform.__call__'s draws (same calls, same order), then the step's matrices."""
        params = draw(t, force, self.run.shape)
        if params is None:
            return
        h, w = self.run.shape
        c = _classes()
        kind = type(t)
        if kind is c["PolicyAugment"]:
            self._policy(t, params["ops"], h, w)
            return

        def replay(img: np.ndarray, t=t, params=params) -> np.ndarray:
            return t.apply_with_params(params, image=img)["image"]

        if kind is c["HorizontalFlip"]:
            self.add(np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), replay, flip=True)
        elif kind is c["VerticalFlip"]:
            self.add(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, h - 1.0], [0.0, 0.0, 1.0]]), replay, flip=True)
        else:  # Affine, Rotate: a forward 3x3 matrix; albumentations skips an identity one
            fwd = np.asarray(params["matrix"], dtype=np.float64)
            if fwd.shape == (2, 3):
                fwd = np.vstack([fwd, [0.0, 0.0, 1.0]])
            if np.allclose(fwd, np.eye(3)):
                return
            self.add(np.linalg.inv(fwd), replay, flip=False, border=t.border_mode, fill=t.fill, interp=t.interpolation)

    def _policy(self, t: Any, ops: list[dict], h: int, w: int) -> None:
        """A policy's drawn ops in turn: Shear/Translate/Rotate join the run (nearest neighbour, the
        policy's border); the others (colour, Sharpness, ...) run on the pixels there."""
        import cv2

        from augkit.recipe.policies.functional import apply_op
        from augkit.recipe.policies.transform import inverse_matrix

        for d in ops:
            name, mag = d["op"], d["magnitude"]
            inv = inverse_matrix(name, mag, h, w)

            def replay(img: np.ndarray, name=name, mag=mag) -> np.ndarray:
                return apply_op(img, name, mag, t.border_mode, t.fill)

            if inv is None:
                self.img = replay(self.materialize())
                self.run = _Run((int(self.img.shape[0]), int(self.img.shape[1])))
            else:
                inv3 = np.vstack([inv, [0.0, 0.0, 1.0]])
                self.add(inv3, replay, flip=False, border=t.border_mode, fill=t.fill, interp=cv2.INTER_NEAREST)


def draw(t: Any, force: bool, shape: tuple[int, int]) -> dict | None:
    """``BasicTransform.__call__``'s draws for an image of ``shape`` (height, width), the same calls in
    the same order on the step's seeded generators, without pixels: the sampled parameters (also left in
    ``t.params``, as albumentations leaves them), or None when the step is not applied."""
    t.params = {}
    if not t.should_apply(force_apply=force):
        return None
    h, w = shape
    data = {"image": np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (h, w, 3))}  # the shape, no pixels
    params = t.get_params()
    params = t.update_transform_params(params=params, data=data)
    params.update(t.get_params_dependent_on_data(params=params, data=data))
    t.params = params
    return params


def final_matrix(shape: tuple[int, int], size: int) -> np.ndarray:
    """Output pixel of the ``size x size`` final view -> pixel of an image of ``shape``: what
    ``center_crop(resize_short(img, size), size)`` does (half-pixel centres, as cv2.resize)."""
    from augkit.io.preprocess import short_side_shape  # OpenCV loads when pixels are made

    h, w = shape
    nh, nw = short_side_shape(h, w, size)
    top, left = max(0, (nh - size) // 2), max(0, (nw - size) // 2)
    sx, sy = w / nw, h / nh
    return np.array(
        [[sx, 0.0, (left + 0.5) * sx - 0.5], [0.0, sy, (top + 0.5) * sy - 0.5], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _final_view(img: np.ndarray, size: int) -> np.ndarray:
    from augkit.io.preprocess import eval_image  # OpenCV loads when pixels are made

    return eval_image(img, size)


def run_fused(compose: Any, source: Source | np.ndarray, size: int | None = None) -> tuple[np.ndarray, Walk]:
    """Run a seeded ``compose`` on ``source`` with consecutive geometric steps fused (see above).

    The caller seeds ``compose`` first (:func:`augkit.recipe.api.seed_random_state`) and reads the
    applied steps from its leaves afterwards, exactly as for ``compose(image=...)``. ``size``: return
    the final ``size x size`` view (resize_short + centre crop), folded into the last run's warp."""
    src = ImageSource(source) if isinstance(source, np.ndarray) else source
    walk = Walk(src, img=source if isinstance(source, np.ndarray) else None)
    walk.call(compose)
    return walk.finish(size), walk
