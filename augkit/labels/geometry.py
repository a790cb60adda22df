"""Labels that move with the pixels: a recipe's ``train`` steps applied to an image and its labels.

One engine for every label kind. Each object's geometry travels through the recipe's albumentations
pipeline as points (the four corners of its box, the vertices of its polygons, its keypoints) and
as masks (instance masks and the semantic mask, nearest neighbour, filled with the ignore value
where a warp brings in pixels from outside the image), so a step moves every label with the same
matrix (or map) it moves the pixels with: augkit's ops, the geometric ops inside
``trivial_augment``/``rand_augment`` (:class:`augkit.recipe.policies.transform.PolicyAugment`) and
albumentations pass-through steps alike. Pixel-only steps leave labels alone.

After the pipeline (rules from the recipe's ``labels:`` section, :mod:`augkit.recipe.labelspec`):

- an object's box comes from its transformed mask, else its transformed polygon clipped to the
  image (both exact after a rotation), else the box of its four transformed corners (``box_from``);
  boxes are clipped to the image, so coordinates such as 1.0000001 x width never leave it;
- an object is dropped when nothing of it is left in the image (``outside``), when less than
  ``min_visibility`` of its area stays in view, or when its box is smaller than ``min_area`` pixels;
  one that lost a part is ``clipped`` (Pascal VOC ``truncated`` is set);
- keypoints that leave the image keep their place in the list with visibility 0 (x = y = 0), so
  counts stay fixed; after a mirror (a horizontal or vertical flip, a transpose: found from the
  orientation of three probe points) left and right keypoints swap (``flip_idx``, or COCO
  ``left_*``/``right_*`` names).

Coordinates: :mod:`augkit.labels.model` uses pixel edges (a pixel's centre is at i + 0.5);
albumentations and OpenCV warps use pixel indices (a pixel's centre is at i), so points are shifted
by half a pixel on the way in and out. That is exact for flips, rotations, affine and perspective
warps, crops and pads; the transforms that resize (:data:`RESIZERS`) scale keypoints in edge
coordinates, as OpenCV resizes pixels, so they get them in edge coordinates.

A step that cannot move a label kind the dataset has is a :class:`~augkit.errors.RecipeError` when
the pipeline is built (``augkit recipes check`` builds it): non-rigid warps (elastic, grid and optical
distortion, piecewise affine, thin-plate spline) bend straight edges and move points only
approximately, so they are refused with boxes, polygons and keypoints (masks follow them exactly);
so is ``Morphological``, which grows or shrinks shapes; a grid shuffle cuts outlines apart; 3D
transforms and a few that need data augkit does not pass (other images, bounding boxes or a mask to
choose a crop) are refused too. Pixel erasers (``CoarseDropout``, ``GridDropout``, ``Erasing``, ...)
move nothing: labels stay, as for any pixel-only step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from augkit.albu import import_albumentations
from augkit.errors import RecipeError, UsageError
from augkit.labels.model import DatasetInfo, Labels, Obj, box_from_mask, box_from_points
from augkit.recipe.api import Recipe, applied_steps, build_compose, leaf_transforms, seed_random_state
from augkit.recipe.fuse import run_fused
from augkit.recipe.labelspec import COPYING_BORDERS, LabelSpec
from augkit.recipe.ops import ALBU_OP, BORDER_MODES
from augkit.recipe.params import suggest

#: the label kinds a step may have to move: boxes, polygons and keypoints travel as points,
#: masks (one per object, COCO RLE) and semantic (one class-index mask per image) as masks
LABEL_KINDS = ("boxes", "polygons", "keypoints", "masks", "semantic")
#: the kinds each dataset format can hold (keypoints are added when the dataset declares them)
FORMAT_KINDS = {
    "yolo": ("boxes", "polygons"),
    "coco": ("boxes", "polygons", "masks"),
    "voc": ("boxes",),
    "masks": ("semantic",),
}
_POINT_KINDS = ("boxes", "polygons", "keypoints")
_MASK_KINDS = ("masks", "semantic")
#: albumentations transforms that bend straight lines and move points only approximately
NON_RIGID = (
    "ElasticTransform",
    "GridDistortion",
    "OpticalDistortion",
    "PiecewiseAffine",
    "ThinPlateSpline",
    "GridElasticDeform",
)
#: albumentations transforms that need data augkit does not pass them, and what that is
NEEDS_DATA = {
    "Mosaic": "other images and their labels",
    "OverlayElements": "overlay images",
    "RandomSizedBBoxSafeCrop": "albumentations bounding boxes",
    "BBoxSafeRandomCrop": "albumentations bounding boxes",
    "AtLeastOneBBoxRandomCrop": "albumentations bounding boxes",
    "RandomCropNearBBox": "a cropping box",
}
_MASK_NEEDED = ("CropNonEmptyMaskIfExists", "MaskDropout", "ConstrainedCoarseDropout")
#: albumentations transforms that grow or shrink shapes (masks follow them, points cannot)
SHAPE_CHANGING = ("Morphological",)
#: albumentations transforms that resize with cv2.resize. Masks: OpenCV's INTER_NEAREST there samples
#: pixel (floor(i * scale)), up to a pixel off the image; INTER_NEAREST_EXACT samples pixel centres.
#: Keypoints: they scale x * scale, which is exact in pixel-edge coordinates (the image's own resize maps
#: pixel centres (i + 0.5) * scale), so their keypoints are handed over in edge coordinates
RESIZERS = (
    "Resize",
    "RandomResizedCrop",
    "RandomSizedCrop",
    "CropAndPad",
    "LongestMaxSize",
    "SmallestMaxSize",
    "RandomScale",
)
_CV2_INTER_NEAREST, _CV2_INTER_NEAREST_EXACT = 0, 6
#: cv2.BORDER_CONSTANT, and the border modes whose keypoint functions add mirrored copies
#: (albumentations' REFLECT_BORDER_MODES: cv2.BORDER_REFLECT and BORDER_REFLECT_101)
_CV2_BORDER_CONSTANT, _MIRRORING_BORDERS = 0, (2, 4)
#: OpenCV border modes that copy image content into the frame (cv2.BORDER_REFLECT, _WRAP, _REFLECT_101)
_COPYING_CV2 = {2: "reflect", 3: "wrap", BORDER_MODES["reflect"]: "reflect", BORDER_MODES["wrap"]: "wrap"}
_EPS = 1e-6


# ====================================================================== what a dataset holds


def label_kinds(info: DatasetInfo) -> tuple[str, ...]:
    """The label kinds a dataset can hold (:data:`LABEL_KINDS`): its format's, plus keypoints when it
    declares them (``kpt_shape`` or keypoint names)."""
    kinds = set(FORMAT_KINDS.get(info.kind, ("boxes", "polygons", "masks")))
    if info.kpt_shape or info.keypoint_names:
        kinds.add("keypoints")
    return tuple(k for k in LABEL_KINDS if k in kinds)


def kinds_of_format(kind: str) -> tuple[str, ...]:
    """Every label kind a dataset of format ``kind`` may hold (YOLO and COCO with keypoints), for checking
    a recipe before any dataset is at hand (``augkit recipes check --labels KIND``)."""
    if kind not in FORMAT_KINDS:
        raise UsageError(
            f"unknown label format {kind!r}{suggest(kind, FORMAT_KINDS)} (allowed: {', '.join(FORMAT_KINDS)})"
        )
    kinds = set(FORMAT_KINDS[kind]) | ({"keypoints"} if kind in ("yolo", "coco") else set())
    return tuple(k for k in LABEL_KINDS if k in kinds)


def flip_index(info: DatasetInfo, count: int) -> list[int] | None:
    """For each of ``count`` keypoints, the index of its mirror image: ``info.flip_idx``, else from
    COCO-style names (``left_eye`` <-> ``right_eye``); None when nothing swaps."""
    if info.flip_idx is not None and len(info.flip_idx) == count:
        return [int(i) for i in info.flip_idx]
    names = info.keypoint_names
    if not names or len(names) != count:
        return None
    where = {n: i for i, n in enumerate(names)}
    out = list(range(count))
    for i, n in enumerate(names):
        for a, b in (
            ("left", "right"),
            ("right", "left"),
            ("Left", "Right"),
            ("Right", "Left"),
            ("l_", "r_"),
            ("r_", "l_"),
        ):
            if n.startswith(a) and n.replace(a, b, 1) in where:
                out[i] = where[n.replace(a, b, 1)]
                break
    return out if out != list(range(count)) else None


# ====================================================================== checking a recipe


def _targets(leaf) -> set[str]:
    t = getattr(leaf, "_targets", ())
    t = t if isinstance(t, tuple) else (t,)
    return {x.name for x in t if x is not None}


def _refusal(leaf, kinds: tuple[str, ...]) -> tuple[str, str] | None:
    """(label kind, why) when ``leaf`` cannot move a kind in ``kinds``; None when it moves them all."""
    A = import_albumentations()
    if isinstance(leaf, A.ImageOnlyTransform):
        return None  # pixels only: labels stay where they are
    name = type(leaf).__name__
    if isinstance(leaf, A.Transform3D):
        return kinds[0], "it works on 3D volumes, not on images"
    if name in NEEDS_DATA:
        return kinds[0], f"it needs {NEEDS_DATA[name]}, which augkit does not pass"
    if name in _MASK_NEEDED and not set(kinds) & set(_MASK_KINDS):
        return kinds[0], "it chooses its region from a mask, and this dataset has none"
    targets = _targets(leaf)
    for kind in kinds:
        if kind in _POINT_KINDS and name in NON_RIGID:
            return kind, "it bends straight lines and moves points only approximately (masks follow it exactly)"
        if kind in _POINT_KINDS and name in SHAPE_CHANGING:
            return kind, "it grows or shrinks shapes, which points cannot follow (masks follow it exactly)"
        if kind in ("boxes", "polygons") and name == "RandomGridShuffle":
            return kind, "it cuts objects apart into shuffled tiles"
        if kind in _POINT_KINDS and "KEYPOINTS" not in targets:
            return kind, "it does not move points"
        if kind in _MASK_KINDS and "MASK" not in targets:
            return kind, "it does not move masks"
    return None


def _check_leaves(recipe: Recipe, leaves: list, kinds: tuple[str, ...]) -> None:
    for step, t in leaves:
        for leaf in leaf_transforms(t):
            bad = _refusal(leaf, kinds)
            if bad is not None:
                kind, why = bad
                name = type(leaf).__name__
                what = name if step.op == ALBU_OP else f"{step.op} ({name})"
                raise RecipeError(
                    f"{what} cannot move the {kind} of a labelled dataset: {why}",
                    source=recipe.source,
                    where=step.where,
                    line=step.line,
                    allowed="pixel-only steps, and geometric steps that move " + ", ".join(kinds),
                )


def label_warnings(recipe: Recipe, leaves: list | None = None) -> list[str]:
    """What a recipe does on labelled data that the user should know (not errors): borders that copy
    objects without their labels, and a ``batch:`` section (classification only)."""
    spec = recipe.labels or LabelSpec()
    if leaves is None:
        leaves = build_compose(recipe.train, spec.border, recipe.fill)[1]
    why = "fills the border with mirror (reflect) or wrapped copies of what is near the edge, objects included, and those copies have no labels"
    out = []
    if recipe.border_given and recipe.border in COPYING_BORDERS and spec.border not in COPYING_BORDERS:
        out.append(
            f"border: {recipe.border} (the recipe's) is not used on labelled data: it {why}; geometric steps use "
            f"labels.border ({spec.border}) instead (write labels: {{border: {recipe.border}}} to use it anyway)"
        )
    seen = set()
    for step, t in leaves:
        for leaf in leaf_transforms(t):
            border_mode = getattr(leaf, "border_mode", None)
            mode = _COPYING_CV2.get(border_mode) if isinstance(border_mode, int) else None
            if mode is not None and step.where not in seen:
                seen.add(step.where)
                out.append(f"{step.where}: border {mode} on labelled data {why}; border constant does not")
    if recipe.batch is not None:
        out.append(
            "batch: mixup and cutmix are for classification only (they mix class labels); "
            "labelled data does not use the batch section"
        )
    return out


def check_labelled(recipe: Recipe, kinds: tuple[str, ...] | list[str]) -> list[str]:
    """Check that every step of ``recipe`` moves every label kind in ``kinds`` (:data:`LABEL_KINDS`);
    raise :class:`RecipeError` naming the step and the kind otherwise. Returns the warnings
    (:func:`label_warnings`). This is what ``recipes check`` runs for a labelled dataset."""
    unknown = [k for k in kinds if k not in LABEL_KINDS]
    if unknown:
        raise UsageError(f"unknown label kind(s) {unknown} (allowed: {', '.join(LABEL_KINDS)})")
    spec = recipe.labels or LabelSpec()
    leaves = build_compose(recipe.train, spec.border, recipe.fill)[1]
    _check_leaves(recipe, leaves, tuple(kinds))
    return label_warnings(recipe, leaves)


# ====================================================================== what happened to each object


@dataclass
class ObjectFate:
    """What one input object became: ``kept`` (whole, in view), ``clipped`` (cut by the border,
    kept) or ``dropped`` (``reason``: outside, min_visibility, min_area, empty, invalid, lost)."""

    index: int
    cls: int
    fate: str
    reason: str = ""
    visibility: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "cls": self.cls, "fate": self.fate}
        if self.reason:
            d["reason"] = self.reason
        d["visibility"] = round(float(self.visibility), 4)
        return d


@dataclass
class LabelStats:
    """Per-object fates of one augmented image; kept + clipped + dropped = the input objects."""

    objects: list[ObjectFate] = field(default_factory=list)

    def count(self, fate: str) -> int:
        return sum(o.fate == fate for o in self.objects)

    @property
    def kept(self) -> int:
        return self.count("kept")

    @property
    def clipped(self) -> int:
        return self.count("clipped")

    @property
    def dropped(self) -> int:
        return self.count("dropped")

    def reasons(self) -> dict[str, int]:
        """Dropped objects by reason."""
        out: dict[str, int] = {}
        for o in self.objects:
            if o.fate == "dropped":
                out[o.reason] = out.get(o.reason, 0) + 1
        return out

    def to_record(self) -> dict[str, Any]:
        """A small JSON-able summary for a manifest row."""
        return {"kept": self.kept, "clipped": self.clipped, "dropped": self.dropped, "dropped_by": self.reasons()}


# ====================================================================== polygon helpers


def polygon_area(poly: np.ndarray) -> float:
    """Area of a simple polygon (K, 2) (shoelace; 0 for fewer than 3 points)."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def clip_polygon(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """The part of polygon ``poly`` (K, 2) inside [0, width] x [0, height] (Sutherland-Hodgman: exact for
    any simple polygon against a rectangle; written here because OpenCV clips convex polygons only)."""
    pts = [tuple(p) for p in np.asarray(poly, dtype=np.float64)]
    for axis, bound, keep_below in (
        (0, 0.0, False),
        (0, float(width), True),
        (1, 0.0, False),
        (1, float(height), True),
    ):
        if not pts:
            break

        def inside(p, axis=axis, bound=bound, keep_below=keep_below):
            return p[axis] <= bound if keep_below else p[axis] >= bound

        out = []
        prev = pts[-1]
        for cur in pts:
            if inside(cur):
                if not inside(prev):
                    out.append(_cross(prev, cur, axis, bound))
                out.append(cur)
            elif inside(prev):
                out.append(_cross(prev, cur, axis, bound))
            prev = cur
        pts = out
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _cross(a, b, axis: int, bound: float) -> tuple[float, float]:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    p = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
    p[axis] = bound
    return p[0], p[1]


# ====================================================================== the pipeline


@dataclass
class _Span:
    corners: slice
    polygons: list[slice]
    keypoints: slice | None
    mask: int | None  # index into the stacked instance masks


class _Quads:
    """The moved corners of every object's box, (N, 4, 2), and what follows from them, computed at once."""

    def __init__(self, quads: np.ndarray, W: int, H: int):
        self.size = (W, H)
        self.limits = np.array([W, H, W, H], dtype=np.float64)
        self.lost = np.isnan(quads).any(axis=(1, 2))
        q = np.where(np.isnan(quads), 0.0, quads)
        whole = np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1)
        self.box = np.minimum(np.maximum(whole, 0.0), self.limits)
        full = np.clip(whole[:, 2] - whole[:, 0], 0, None) * np.clip(whole[:, 3] - whole[:, 1], 0, None)
        seen = (self.box[:, 2] - self.box[:, 0]) * (self.box[:, 3] - self.box[:, 1])
        self.visibility = np.divide(seen, full, out=np.zeros_like(seen), where=full > 0)
        out = (q < -_EPS).any(axis=(1, 2)) | (q[:, :, 0] > W + _EPS).any(axis=1) | (q[:, :, 1] > H + _EPS).any(axis=1)
        self.out = np.asarray(out, dtype=bool)  # (N,): some corner left the image
        self.finite_in = np.ones(len(quads), dtype=bool)  # whether the input box was finite (set by the caller)


class LabelledPipeline:
    """A recipe's ``train`` steps for a labelled dataset. Call it with an RGB uint8 image, its
    :class:`~augkit.labels.model.Labels` and a seed; it returns the image, the labels moved with it,
    the :class:`LabelStats` and the applied steps with their sampled parameters (for manifests).

    The seed decides everything, as for :class:`augkit.recipe.api.Augmenter`: the same seed gives the
    same image and labels in any process. ``warnings`` lists what :func:`label_warnings` found.
    """

    def __init__(self, recipe: Recipe, info: DatasetInfo, kinds: tuple[str, ...] | None = None):
        A = import_albumentations()
        self.recipe, self.info = recipe, info
        self.spec = recipe.labels or LabelSpec()
        self.kinds = tuple(kinds) if kinds is not None else label_kinds(info)
        # Points are moved by replaying the steps a call applied (:meth:`_replay_points`) when the
        # pipeline allows it (:func:`replayable`), else by the Compose itself (its keypoint processor).
        self.compose, self._leaves = build_compose(recipe.train, self.spec.border, recipe.fill)
        self.replay = replayable(self.compose)
        if not self.replay:
            with warnings.catch_warnings():  # a pixel-only recipe has no step that moves points: fine here
                warnings.filterwarnings("ignore", message="Got processor for keypoints", category=UserWarning)
                self.compose, self._leaves = build_compose(
                    recipe.train,
                    self.spec.border,
                    recipe.fill,
                    keypoint_params=A.KeypointParams(
                        format="xy", label_fields=["point_ids"], remove_invisible=False, check_each_transform=False
                    ),
                )
        _check_leaves(recipe, self._leaves, self.kinds)
        self.warnings = label_warnings(recipe, self._leaves)
        self._all = leaf_transforms(self.compose)
        for step, t in self._leaves:
            for leaf in leaf_transforms(t):
                if getattr(leaf, "fill_mask", None) is not None and "fill_mask" not in step.params:
                    leaf.fill_mask = self.spec.ignore_value  # masks: out-of-image pixels get the ignore value
                if type(leaf).__name__ in RESIZERS:
                    if getattr(leaf, "mask_interpolation", None) == _CV2_INTER_NEAREST:
                        leaf.mask_interpolation = _CV2_INTER_NEAREST_EXACT
                    _keypoints_in_edge_coordinates(leaf)
                if getattr(leaf, "border_mode", None) in _MIRRORING_BORDERS:
                    _keypoints_without_mirror_copies(leaf)

    def __call__(
        self, image: np.ndarray, labels: Labels, seed: int
    ) -> tuple[np.ndarray, Labels, LabelStats, list[dict]]:
        H, W = image.shape[:2]
        points, spans, probes, finite = self._points(labels, W, H)
        data: dict[str, Any] = {"image": image}
        if not self.replay:
            data.update(keypoints=points - 0.5, point_ids=np.arange(len(points)))
        if labels.semantic is not None:
            if labels.semantic.shape[:2] != (H, W):
                raise UsageError(
                    f"the mask is {labels.semantic.shape[1]}x{labels.semantic.shape[0]}, the image {W}x{H}"
                )
            data["mask"] = np.ascontiguousarray(labels.semantic)
        inst = [o.mask for o in labels.objects if o.mask is not None]
        if inst:
            if any(m.shape[:2] != (H, W) for m in inst):
                raise UsageError(f"an object mask differs in size from its image ({W}x{H})")
            data["masks"] = np.stack([m.astype(np.uint8) for m in inst])
        for t in self._all:
            t.params = {}
        seed_random_state(self.compose, seed)
        if self.replay and len(data) == 1:  # the image alone: its geometric steps as one warp, as unlabelled
            img, out = run_fused(self.compose, image)[0], {}
        else:  # masks (and points, unless replayed) move inside the Compose, step by step
            out = self.compose(**data)
            img = out["image"]
        H2, W2 = img.shape[:2]
        if self.replay:
            moved = self._replay_points(points - 0.5) + 0.5
        else:
            moved = np.full((len(points), 2), np.nan)
            ids = np.asarray(out["point_ids"], dtype=np.int64).reshape(-1)
            if len(ids):
                moved[ids] = np.asarray(out["keypoints"], dtype=np.float64).reshape(len(ids), -1)[:, :2] + 0.5
        mirror, scale = _orientation(points[probes], moved[probes])
        # no step moved anything (pixel-only steps, or none applied): boxes stay as given, not re-derived
        diff = np.abs(moved - points)
        still = (H2, W2) == (H, W) and not np.isnan(diff).any() and float(diff.max(initial=0.0)) <= 1e-3
        quads = _Quads(moved[: 4 * len(labels.objects)].reshape(-1, 4, 2), W2, H2)
        quads.finite_in = finite
        masks = out.get("masks")
        result = Labels(semantic=out.get("mask"), palette=labels.palette)
        stats = LabelStats()
        for i, (obj, span) in enumerate(zip(labels.objects, spans)):
            new, fate = self._object(i, obj, span, moved, quads, masks, mirror, scale, still)
            stats.objects.append(fate)
            if new is not None:
                result.objects.append(new)
        return img, result, stats, applied_steps(self._leaves)

    def _replay_points(self, xy: np.ndarray) -> np.ndarray:
        """``xy`` (pixel-index coordinates) moved by the steps the last call applied, in the order it
        applied them, each with the parameters it drew (``leaf.params``: its sampled values and the
        image shape it saw): the same functions the Compose would call on the points, without its
        per-call conversion, validation and filtering of a keypoint array (which
        ``remove_invisible=False`` makes a no-op). Points stay float64 (the Compose keeps float32)."""
        kp = np.zeros((len(xy), 5), dtype=np.float64)  # albumentations' columns: x, y, z, angle, scale
        kp[:, :2] = xy
        for leaf in self._all:
            fn = leaf._key2func.get("keypoints") if leaf.params else None
            if fn is None:
                continue
            m = _point_matrix(leaf)
            if m is not None:  # the same map as the step's keypoint function, without its per-call cost
                kp[:, :2] = kp[:, :2] @ m[:, :2].T + m[:, 2]
                continue
            kp = np.ascontiguousarray(fn(kp, **leaf.params), dtype=np.float64)
            if len(kp) != len(xy):  # a transform that adds or removes points: never silently misassigned
                raise RuntimeError(f"{type(leaf).__name__} returned {len(kp)} points for {len(xy)}")
        return kp[:, :2]

    # ------------------------------------------------------------------ points in, points out
    @staticmethod
    def _points(labels: Labels, W: int, H: int) -> tuple[np.ndarray, list[_Span], slice, np.ndarray]:
        """Every point to move, in one array: the four corners of each object's box (all objects first,
        so they can be handled as one (N, 4, 2) array), then each object's polygons and keypoints, then
        three probe points around the centre (their orientation afterwards tells a mirror). Also returns
        whether each object's box is finite."""
        n_obj = len(labels.objects)
        boxes = np.array([o.box for o in labels.objects], dtype=np.float64).reshape(n_obj, 4)
        chunks = [boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)]
        n = 4 * n_obj
        spans: list[_Span] = []
        m = 0

        def add(a: np.ndarray) -> slice:
            nonlocal n
            chunks.append(np.asarray(a, dtype=np.float64).reshape(-1, 2))
            n += len(chunks[-1])
            return slice(n - len(chunks[-1]), n)

        for i, obj in enumerate(labels.objects):
            polys = [add(p) for p in obj.polygons]
            kps = add(obj.keypoints[:, :2]) if obj.keypoints is not None else None
            spans.append(_Span(slice(4 * i, 4 * i + 4), polys, kps, m if obj.mask is not None else None))
            m += obj.mask is not None
        probes = add(np.array([[W * 0.5, H * 0.5], [W * 0.75, H * 0.5], [W * 0.5, H * 0.75]]))
        pts = np.concatenate(chunks)
        pts[~np.isfinite(pts)] = 0.0  # NaN/inf would stop albumentations; such objects are dropped as invalid
        return pts, spans, probes, np.asarray(np.isfinite(boxes).all(axis=1), dtype=bool)

    def _object(
        self,
        i: int,
        obj: Obj,
        span: _Span,
        moved: np.ndarray,
        quads: _Quads,
        masks,
        mirror: bool,
        scale: float,
        still: bool,
    ):
        W, H = quads.size
        spec = self.spec
        drop = lambda reason, vis=0.0: (None, ObjectFate(i, obj.cls, "dropped", reason, vis))  # noqa: E731
        if not quads.finite_in[i] or not all(np.isfinite(p).all() for p in obj.polygons):
            return drop("invalid")
        if quads.lost[i]:
            return drop("lost")
        quad_out = bool(quads.out[i])
        polys = [moved[s] for s in span.polygons]
        if any(np.isnan(p).any() for p in polys):
            return drop("lost")
        clipped_polys = [c for c in (clip_polygon(p, W, H) for p in polys) if len(c) >= 3 and polygon_area(c) > 0]
        mask = None if span.mask is None else np.asarray(masks[span.mask]) == 1
        source = "corners"
        if spec.box_from == "auto" and not still:
            source = "mask" if mask is not None else ("polygon" if polys else "corners")
        if source == "mask":
            assert mask is not None and obj.mask is not None  # source is "mask" only when the object has one
            box = box_from_mask(mask)
            full = float(obj.mask.sum()) * scale
            vis = min(1.0, float(mask.sum()) / full) if full > 0 else 0.0
            touches = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            clipped = quad_out and touches
        elif source == "polygon":
            full = sum(polygon_area(p) for p in polys)
            seen = sum(polygon_area(c) for c in clipped_polys)
            box = box_from_points(np.concatenate(clipped_polys)) if clipped_polys else None
            vis = min(1.0, seen / full) if full > 0 else float(box is not None)
            clipped = any(np.any(p < -_EPS) or np.any(p[:, 0] > W + _EPS) or np.any(p[:, 1] > H + _EPS) for p in polys)
        else:
            box, vis, clipped = quads.box[i], float(quads.visibility[i]), quad_out
        if box is None or box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            return drop("outside" if (quad_out or source != "corners") else "empty")
        box = np.minimum(np.maximum(box, 0.0), quads.limits)
        if vis < spec.min_visibility:
            return drop("min_visibility", vis)
        if (box[2] - box[0]) * (box[3] - box[1]) < spec.min_area:
            return drop("min_area", vis)
        attrs = dict(obj.attrs)
        if clipped and self.info.kind == "voc":
            attrs["truncated"] = 1
        new = Obj(
            cls=obj.cls,
            box=box,
            polygons=clipped_polys if polys else [],
            mask=mask,
            keypoints=self._keypoints(obj, span, moved, quads.size, mirror),
            attrs=attrs,
        )
        return new, ObjectFate(i, obj.cls, "clipped" if clipped else "kept", "", vis)

    def _keypoints(self, obj: Obj, span: _Span, moved: np.ndarray, size, mirror: bool) -> np.ndarray | None:
        if obj.keypoints is None:
            return None
        W, H = size
        xy = moved[span.keypoints]
        v = obj.keypoints[:, 2]
        ok = np.isfinite(xy).all(1) & (v > 0)
        ok &= (xy[:, 0] >= 0) & (xy[:, 0] <= W) & (xy[:, 1] >= 0) & (xy[:, 1] <= H)
        out = np.zeros_like(obj.keypoints)
        out[ok, :2] = xy[ok]
        out[ok, 2] = v[ok]
        flip = flip_index(self.info, len(out)) if mirror else None
        return out[flip] if flip is not None else out


def _point_matrix(leaf) -> np.ndarray | None:
    """The 2x3 map (pixel-index coordinates) albumentations 2.0.8 applies to the points of an applied
    flip (``keypoints_hflip``/``vflip``: ``W - 1 - x``) or ``Affine`` (``keypoints_affine`` with its
    ``matrix``; mirrored copies are never added here, see :func:`_keypoints_without_mirror_copies`),
    or None for any other step (its own keypoint function moves the points)."""
    name, prm = type(leaf).__name__, leaf.params
    if name == "HorizontalFlip":
        return np.array([[-1.0, 0.0, prm["shape"][1] - 1.0], [0.0, 1.0, 0.0]])
    if name == "VerticalFlip":
        return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, prm["shape"][0] - 1.0]])
    if name == "Affine" and "matrix" in prm:
        return np.asarray(prm["matrix"], dtype=np.float64)[:2]
    return None


def replayable(compose) -> bool:
    """Whether the applied steps of a call can be replayed on points afterwards, in the order of
    :func:`leaf_transforms`: every container applies each child at most once, in list order
    (Compose, Sequential, OneOf, and SomeOf without replacement, which sorts what it draws), and no
    transform object appears twice. Anything else (SomeOf with replacement, other containers)
    moves the points inside the Compose, as albumentations does."""
    A = import_albumentations()
    seen: set[int] = set()

    def ok(t) -> bool:
        if id(t) in seen:
            return False
        seen.add(id(t))
        if not isinstance(t, A.BaseCompose):
            return hasattr(t, "_key2func")
        if type(t) not in (A.Compose, A.Sequential, A.OneOf, A.SomeOf):
            return False
        if isinstance(t, A.SomeOf) and getattr(t, "replace", True):
            return False
        return all(ok(c) for c in t.transforms)

    return ok(compose)


def _keypoints_without_mirror_copies(leaf) -> None:
    """Make ``leaf``'s keypoint function ignore its mirroring border: with ``border_mode`` reflect,
    albumentations 2.0.8 (``keypoints_affine``, ``pad_keypoints``) adds a mirrored copy of every point
    for each copy of the image the border shows; augkit labels only the object itself (the copies
    stay unlabelled, as documented for ``reflect``), and a copy must never stand in for it. The
    pixels keep the mirroring border: only the points' call sees a constant one (the same mapping
    of the point itself, without the copies)."""
    apply = leaf._key2func.get("keypoints", leaf.apply_to_keypoints)

    def wrapped(keypoints: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        mode = leaf.border_mode
        leaf.border_mode = _CV2_BORDER_CONSTANT
        try:
            return apply(keypoints, *args, **params)
        finally:
            leaf.border_mode = mode

    leaf.apply_to_keypoints = wrapped
    if "keypoints" in getattr(leaf, "_key2func", {}):
        leaf._key2func["keypoints"] = wrapped


def _keypoints_in_edge_coordinates(leaf) -> None:
    """Make ``leaf`` (a resize, exact in pixel-edge coordinates: ``x * scale``) take the pixel-index
    coordinates the pipeline carries (see the module docstring). albumentations 2.0.8 calls a target's
    function through ``_key2func``, filled when the transform is built, so that entry is replaced too."""
    apply = leaf.apply_to_keypoints

    def wrapped(keypoints: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        shifted = np.array(keypoints, dtype=np.float64, copy=True)
        shifted[:, :2] += 0.5
        out = np.array(apply(shifted, *args, **params), dtype=np.float64, copy=True)
        out[:, :2] -= 0.5
        return out

    leaf.apply_to_keypoints = wrapped
    if "keypoints" in getattr(leaf, "_key2func", {}):
        leaf._key2func["keypoints"] = wrapped


def _orientation(before: np.ndarray, after: np.ndarray) -> tuple[bool, float]:
    """(whether the pipeline mirrored the image, its area scale) from three probe points."""

    def cross(p: np.ndarray) -> float:
        a, b = p[1] - p[0], p[2] - p[0]
        return float(a[0] * b[1] - a[1] * b[0])

    c0, c1 = cross(before), cross(after)
    if not np.isfinite(c1) or c0 == 0:
        return False, 1.0
    return (c1 * c0) < 0, abs(c1 / c0)


def build_labelled(recipe: Recipe, info: DatasetInfo) -> LabelledPipeline:
    """The recipe's ``train`` pipeline for the labelled dataset ``info``; a :class:`RecipeError` names a
    step that cannot move one of the dataset's label kinds (:func:`label_kinds`)."""
    return LabelledPipeline(recipe, info)
