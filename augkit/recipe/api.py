"""Recipes: augkit's YAML format, its strict validation, and the albumentations pipeline it builds.

A recipe has a ``train`` section (a random pipeline of steps) and a ``tta`` section
(deterministic views and a merge mode). See the README for the format; ``augkit recipes
show NAME`` prints any recipe fully resolved, with every default filled in.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from augkit import __version__
from augkit.albu import import_albumentations
from augkit.errors import ImageError, RecipeError, UsageError
from augkit.io.fileio import read_bytes
from augkit.recipe.batchspec import BatchSpec, parse_batch
from augkit.recipe.fuse import Source, run_fused
from augkit.recipe.labelspec import LabelSpec, parse_labels
from augkit.recipe.ops import (
    ALBU_OP,  # noqa: F401  (re-exported: the pass-through op's name)
    BORDER_MODES,
    DEFAULT_BORDER,
    StepContext,
    get_op,
    is_op,
    list_composites,
    step_names,
    unknown_op_hint,
)
from augkit.recipe.params import Param, check_value, short, suggest
from augkit.recipe.policies import register as policies  # noqa: F401  (registers trivial_augment and rand_augment in the op registry)
from augkit.recipe.views import MERGE_MODES, View, parse_view, preset_views, view_to_yaml
from augkit.recipe.yamlio import LineDict, load_yaml

if TYPE_CHECKING:
    import albumentations as A

COMPOSITE_OPS = tuple(list_composites())  # kept for callers; the registry (OpSpec.composite) decides
TOP_KEYS = ("name", "description", "border", "fill", "train", "tta", "batch", "labels")
#: Largest recipe file read: real recipes are a few hundred bytes.
MAX_RECIPE_BYTES = 1 << 20
P_PARAM = Param("number", 1.0, lo=0.0, hi=1.0, help="probability that the step is applied")


@dataclass
class Step:
    """One validated step. ``params`` are resolved (defaults filled, ranges as [low, high])."""

    op: str
    params: dict[str, Any]
    p: float
    where: str
    line: int | None = None
    children: list[Step] = field(default_factory=list)

    def to_yaml(self) -> dict:
        body: dict[str, Any] = {}
        if get_op(self.op).composite:
            body.update({k: v for k, v in self.params.items()})
            body["p"] = self.p
            body["steps"] = [c.to_yaml() for c in self.children]
        else:
            body.update({k: v for k, v in self.params.items() if v is not None})
            body["p"] = self.p
        return {self.op: body}


@dataclass
class TTASpec:
    views: list[View]
    merge: str = "mean"
    beta: float = 0.0
    preset: str | None = None

    def to_yaml(self) -> dict:
        out: dict[str, Any] = (
            {"preset": self.preset} if self.preset else {"views": [view_to_yaml(v) for v in self.views]}
        )
        out.update({"merge": self.merge, "beta": self.beta})
        return out


@dataclass
class Recipe:
    name: str
    description: str
    train: list[Step]
    tta: TTASpec | None
    border: str = DEFAULT_BORDER
    fill: Any = 0
    source: str = "<string>"
    text: str = ""
    #: mixup/cutmix applied per batch by ``train`` (:mod:`augkit.training.mixing`); None: no batch mixing.
    batch: BatchSpec | None = None
    #: how labels follow the pixels on labelled datasets (:mod:`augkit.recipe.labelspec`); None: the defaults.
    labels: LabelSpec | None = None
    #: whether the recipe wrote its top-level ``border`` (labelled data warns about a written reflect/wrap)
    border_given: bool = False

    # -------------------------------------------------------------- views of the recipe
    def resolved(self) -> dict:
        """The recipe with every default filled in: what actually runs."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "border": self.border,
            "fill": self.fill,
            "train": [s.to_yaml() for s in self.train],
        }
        if self.batch is not None:
            out["batch"] = self.batch.to_yaml()
        if self.labels is not None:
            out["labels"] = self.labels.to_yaml()
        if self.tta is not None:
            out["tta"] = self.tta.to_yaml()
        return out

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False, default_flow_style=None, allow_unicode=True)

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the resolved recipe: comments and spacing don't count."""
        blob = json.dumps(self.resolved(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -------------------------------------------------------------- building
    def build(self) -> Augmenter:
        """A fresh pipeline for the ``train`` section (one per process / worker)."""
        return Augmenter(self)

    def to_albumentations(self) -> A.Compose:
        return build_compose(self.train, self.border, self.fill)[0]


def _border_value(border: str) -> int:
    return BORDER_MODES[border]


def build_transform(step: Step, border: str, fill: Any, leaves: list | None = None):
    """Turn a :class:`Step` into an albumentations transform; collect leaf transforms in ``leaves``."""
    spec = get_op(step.op)
    kids = [build_transform(c, border, fill, leaves) for c in step.children]
    if spec.build_step is not None:
        t = spec.build_step(step, kids)
    else:
        prm = dict(step.params)
        own_border, own_fill = spec.own_border or (border, fill)  # an op's own default, else the recipe's
        b = prm.pop("border", None) or own_border if spec.geometric else border
        f = prm.pop("fill", None) if spec.geometric else None
        f = own_fill if f is None else f
        f = tuple(f) if isinstance(f, list) else f
        assert spec.build is not None  # a leaf op builds its transform
        t = spec.build(prm, step.p, _border_value(b), f)
    if leaves is not None and not spec.composite:
        leaves.append((step, t))
    return t


def build_compose(steps: list[Step], border: str, fill: Any, **compose_args: Any) -> tuple[A.Compose, list]:
    """The Compose of ``steps`` and its leaves; ``compose_args`` go to ``A.Compose`` (keypoint_params, ...)."""
    A = import_albumentations()
    leaves: list = []
    compose = A.Compose([build_transform(s, border, fill, leaves) for s in steps], p=1.0, **compose_args)
    return compose, leaves


def leaf_transforms(t) -> list:
    """The transforms inside ``t`` (itself when it is not a composition), depth first."""
    if isinstance(t, import_albumentations().BaseCompose):
        out = []
        for c in t.transforms:
            out.extend(leaf_transforms(c))
        return out
    return [t]


def _clean(v: Any) -> Any:
    """Make a sampled parameter JSON-friendly; drop big arrays (maps, masks)."""
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()] if v.size <= 16 else None
    if isinstance(v, (np.floating, float)):
        return round(float(v), 6)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (list, tuple)):
        items = [_clean(x) for x in v]
        return None if len(items) > 16 else items
    if isinstance(v, dict):
        return {str(k): c for k, x in v.items() if (c := _clean(x)) is not None}
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return None


class Augmenter:
    """A built ``train`` pipeline. Call it with an RGB uint8 image and a seed.

    The seed fully decides the result: the pipeline's random generators are replaced by ones
    seeded from it before each call (albumentations' own per-transform seeding would give
    every transform the same stream). ``applied`` lists each applied step with its sampled
    parameters, for manifests.
    """

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.compose, self._leaves = build_compose(recipe.train, recipe.border, recipe.fill)
        self._all = leaf_transforms(self.compose)

    def __call__(self, image: np.ndarray, seed: int, *, fused: bool = True) -> tuple[np.ndarray, list[dict]]:
        """The augmented image and the applied steps. ``fused`` (default): consecutive geometric steps
        are one warp (:mod:`augkit.recipe.fuse`; same parameters and manifest); ``fused=False``: each
        step by itself, the pixels an exported albumentations pipeline reproduces exactly."""
        for t in self._all:
            t.params = {}
        seed_random_state(self.compose, seed)
        if fused:
            out = run_fused(self.compose, image)[0]
        else:
            out = self.compose(image=image)["image"]
        return out, applied_steps(self._leaves)

    def view(
        self, source: np.ndarray | Source, seed: int, size: int, *, fused: bool = True
    ) -> tuple[np.ndarray, list[dict]]:
        """The training view: the pipeline on ``source`` (the working image, or a
        :class:`~augkit.recipe.fuse.Source` such as a file to decode), then resize_short + centre crop
        to ``size x size``. ``fused``: the final resize and crop (and whatever the source folds, e.g. the
        resize from the decoded file) join the last geometric run's single warp."""
        for t in self._all:
            t.params = {}
        seed_random_state(self.compose, seed)
        if fused:
            out = run_fused(self.compose, source, size)[0]
        else:
            from augkit.io.preprocess import eval_image  # OpenCV loads when pixels are made, not with recipes

            image = source if isinstance(source, np.ndarray) else source.start()
            out = eval_image(self.compose(image=image)["image"], size)
        return out, applied_steps(self._leaves)


def applied_steps(leaves: list) -> list[dict]:
    """Each step applied in the last call of a pipeline, with its sampled parameters (for manifests)."""
    applied = []
    for step, t in leaves:
        for leaf in leaf_transforms(t):
            if leaf.params:
                prm = {
                    k: c
                    for k, v in leaf.params.items()
                    if k not in ("shape", "interpolation", "bbox_matrix", "fill_mask", "output_shape")
                    and (c := _clean(v)) is not None
                }
                rename = get_op(step.op).manifest
                prm = rename(prm) if rename else prm
                applied.append({"step": step.where, "op": step.op, "transform": type(leaf).__name__, "params": prm})
    return applied


def seed_random_state(compose: A.BaseCompose, seed: int) -> None:
    """The seeding augkit uses (and an exported pipeline needs to reproduce augkit's pixels)."""
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


# ====================================================================== parsing


def _step_entry(raw: Any, where: str, source: str | None, line: int | None) -> tuple[str, Any, int | None]:
    if isinstance(raw, str):
        return raw, None, line
    if not isinstance(raw, dict) or len(raw) != 1:
        keys = list(raw) if isinstance(raw, dict) else raw
        raise RecipeError(
            f"a step is a mapping with exactly one op name, got {short(keys)}",
            source=source,
            where=where,
            line=line,
            allowed=", ".join(step_names()),
        )
    op, body = next(iter(raw.items()))
    return op, body, (raw.line_of(op) if hasattr(raw, "line_of") else line)


def parse_steps(raw: Any, where: str, source: str | None, line: int | None) -> list[Step]:
    if not isinstance(raw, list):
        raise RecipeError(f"expected a list of steps, got {type(raw).__name__}", source=source, where=where, line=line)
    return [
        parse_step(item, f"{where}[{i}]", source, raw.line_of(i) if hasattr(raw, "line_of") else line)
        for i, item in enumerate(raw)
    ]


def _pop_p(body: dict, where: str, source: str | None, line: int | None) -> float:
    if "p" not in body:
        return P_PARAM.default
    pline = body.line_of("p") if hasattr(body, "line_of") else line
    return check_value(P_PARAM, "p", body["p"], where=where, source=source, line=pline)


def parse_step(raw: Any, where: str, source: str | None, line: int | None) -> Step:
    """One step (any registered op, composites included), validated by its registry entry."""
    op, body, line = _step_entry(raw, where, source, line)
    if not isinstance(op, str) or not is_op(op):
        names = step_names()
        hint = suggest(op, names) or unknown_op_hint(op)
        raise RecipeError(
            f"unknown op {short(op)}{hint}", source=source, where=where, line=line, allowed=", ".join(names)
        )
    where = f"{where} {op}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise RecipeError(
            f"{op} takes a mapping of parameters, got {short(body)}", source=source, where=where, line=line
        )
    p = _pop_p(body, where, source, line)
    rest = {k: v for k, v in body.items() if k != "p"}
    if hasattr(body, "key_lines"):
        rest = _with_lines(rest, body)
    ctx = StepContext(where, source, line, p, parse_steps)
    params, children = get_op(op).parse_body(rest, ctx)
    return Step(op, params, p, where, line, children)


def _with_lines(d: dict, like) -> dict:
    out = LineDict(d)
    out.line, out.key_lines = like.line, like.key_lines
    return out


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe text. Raises :class:`RecipeError` naming the line and key."""
    data = load_yaml(text, source)
    if data is None:
        raise RecipeError("the recipe is empty", source=source, allowed=", ".join(TOP_KEYS))
    if not isinstance(data, LineDict):
        raise RecipeError(
            f"a recipe is a mapping, got {type(data).__name__}", source=source, allowed=", ".join(TOP_KEYS)
        )
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(
                f"unknown top-level key {short(key)}" + suggest(key, TOP_KEYS),
                source=source,
                line=data.line_of(key),
                allowed=", ".join(TOP_KEYS),
            )
    if "train" not in data and "tta" not in data and "batch" not in data:
        raise RecipeError("a recipe needs a train, batch or tta section", source=source)
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise RecipeError(f"{key} must be a string, got {short(data[key])}", source=source, line=data.line_of(key))
    border = check_value(
        Param("choice", DEFAULT_BORDER, choices=tuple(BORDER_MODES)),
        "border",
        data.get("border", DEFAULT_BORDER),
        where="recipe",
        source=source,
        line=data.line_of("border"),
    )
    fill = check_value(
        Param("fill", 0), "fill", data.get("fill", 0), where="recipe", source=source, line=data.line_of("fill")
    )
    train = parse_steps(data["train"], "train", source, data.line_of("train")) if "train" in data else []
    tta = parse_tta(data["tta"], source, data.line_of("tta")) if "tta" in data else None
    batch = parse_batch(data["batch"], source, data.line_of("batch")) if "batch" in data else None
    labels = parse_labels(data["labels"], source, data.line_of("labels")) if "labels" in data else None
    default_name = Path(source).stem if source and not source.startswith("<") else "recipe"
    return Recipe(
        name=data.get("name", default_name),
        description=data.get("description", ""),
        train=train,
        tta=tta,
        border=border,
        fill=fill,
        source=source,
        text=text,
        batch=batch,
        labels=labels,
        border_given="border" in data,
    )


def parse_tta(raw: Any, source: str, line: int | None) -> TTASpec:
    allowed = ("preset", "views", "merge", "beta")
    if isinstance(raw, str):  # tta: flip+shift
        raw = {"preset": raw}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"tta must be a mapping or a preset name, got {short(raw)}",
            source=source,
            where="tta",
            line=line,
            allowed=", ".join(allowed),
        )
    for key in raw:
        if key not in allowed:
            raise RecipeError(
                f"unknown key {short(key)} in tta" + suggest(key, allowed),
                source=source,
                where="tta",
                line=raw.line_of(key) if hasattr(raw, "line_of") else line,
                allowed=", ".join(allowed),
            )
    if ("preset" in raw) == ("views" in raw):
        raise RecipeError("tta needs exactly one of preset or views", source=source, where="tta", line=line)
    merge = check_value(
        Param("choice", "mean", choices=MERGE_MODES),
        "merge",
        raw.get("merge", "mean"),
        where="tta",
        source=source,
        line=line,
    )
    beta = check_value(
        Param("number", 0.0, lo=0.0, hi=1.0), "beta", raw.get("beta", 0.0), where="tta", source=source, line=line
    )
    if "preset" in raw:
        try:
            views = preset_views(raw["preset"])
        except RecipeError as exc:
            raise RecipeError(
                str(exc).split(": ", 2)[-1].split(" (allowed")[0],
                source=source,
                where="tta",
                line=line,
                allowed=exc.allowed,
            ) from None
        return TTASpec(views, merge, beta, preset=str(raw["preset"]))
    items = raw["views"]
    if not isinstance(items, list) or not items:
        raise RecipeError("views must be a non-empty list", source=source, where="tta", line=line)
    views = [
        parse_view(
            v, where=f"tta.views[{i}]", source=source, line=items.line_of(i) if hasattr(items, "line_of") else line
        )
        for i, v in enumerate(items)
    ]
    names = [v.name for v in views]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RecipeError(f"duplicate view name(s) {sorted(dup)}", source=source, where="tta", line=line)
    return TTASpec(views, merge, beta)


# ====================================================================== finding recipes


def builtin_dir() -> Path:
    """The folder of built-in recipes (``augkit/recipe/builtin/``)."""
    return Path(str(resources.files("augkit.recipe.builtin")))


def list_builtin() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file; a FIFO, device or a file over :data:`MAX_RECIPE_BYTES` is refused unread."""
    try:
        data = read_bytes(path, max_bytes=MAX_RECIPE_BYTES)
        return data.decode("utf-8")
    except ImageError as exc:
        raise UsageError(
            f"{path}: cannot read recipe ({exc.reason}{': ' + exc.detail if exc.detail else ''})"
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read recipe (not UTF-8 text: {exc.reason} at byte {exc.start})") from None


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a built-in recipe by name (``default``) or a recipe file by path."""
    s = str(name_or_path)
    path = Path(s)
    if path.suffix.lower() in (".yaml", ".yml") or os.sep in s or "/" in s or path.exists():
        if not path.exists():
            raise UsageError(f"{s}: recipe file not found")
        return parse_recipe(read_recipe_text(path), s)
    names = list_builtin()
    if s not in names:
        raise UsageError(
            f"unknown recipe {s!r}{suggest(s, names)} (built-in: {', '.join(names)}; or give a path to a .yaml file)"
        )
    f = builtin_dir() / f"{s}.yaml"
    return parse_recipe(f.read_text(encoding="utf-8"), s)


# ====================================================================== extremes (for preview)


def step_extremes(step: Step) -> list[tuple[str, Step]]:
    """Each leaf step at the low and the high end of its ranges, always applied (p=1).

    Composites expand to their leaves; leaves without ranges (flips, albumentations transforms)
    appear once, applied. Each op's registry entry says how (:meth:`OpSpec.extreme_params`).
    """
    spec = get_op(step.op)
    if spec.composite:
        return [e for c in step.children for e in step_extremes(c)]
    return [(label, Step(step.op, prm, 1.0, step.where, step.line)) for label, prm in spec.extreme_params(step.params)]


# ====================================================================== export


def export_imports(compose: A.BaseCompose) -> list[str]:
    """Modules that define transforms the export names outside albumentations (augkit's policies):
    ``albumentations.load`` of the export needs them imported first. augkit's colour transforms are
    written as albumentations' own classes (same pixels), so they need none."""
    names = {t.to_dict_private()["__class_fullname__"] for t in leaf_transforms(compose)}
    mods = {n.rsplit(".", 1)[0] for n in names if "." in n}  # albumentations' own names are shortened
    return sorted(m for m in mods if m.split(".")[0] != "albumentations")


#: labelled dataset kind -> albumentations' name for its box convention (``recipes export --labels``)
EXPORT_BOX_FORMATS = {"yolo": "yolo", "coco": "coco", "voc": "pascal_voc", "masks": None}
#: labelled kinds whose objects may carry keypoints (YOLO pose, COCO keypoints)
EXPORT_KEYPOINT_KINDS = ("yolo", "coco")


def export_label_params(recipe: Recipe, labels: str) -> dict[str, Any]:
    """``A.Compose`` arguments for a labelled dataset's boxes and keypoints, with the recipe's label
    rules (``labels:`` section, or its defaults): ``bbox_params`` in the format's own box convention
    (clipped to the image, ``min_area``/``min_visibility`` as augkit drops objects) with the class ids
    in ``class_labels``; ``keypoint_params`` (xy pixels, kept in order and when outside the image, so
    the count stays fixed). A mask dataset needs neither: masks go in as ``mask=``."""
    if labels not in EXPORT_BOX_FORMATS:
        raise UsageError(f"--labels {labels!r} is not supported (allowed: {', '.join(EXPORT_BOX_FORMATS)})")
    box_format = EXPORT_BOX_FORMATS[labels]
    if box_format is None:
        return {}
    A = import_albumentations()
    spec = recipe.labels or LabelSpec()
    out: dict[str, Any] = {
        "bbox_params": A.BboxParams(
            format=box_format,
            label_fields=["class_labels"],
            min_area=float(spec.min_area),
            min_visibility=float(spec.min_visibility),
            clip=True,
        )
    }
    if labels in EXPORT_KEYPOINT_KINDS:
        # no label field: a detection-only call needs no keypoint arguments; kept in order, none removed
        out["keypoint_params"] = A.KeypointParams(format="xy", remove_invisible=False)
    return out


def export_albumentations(
    recipe: Recipe, path: str | os.PathLike, fmt: str | None = None, labels: str | None = None
) -> Path:
    """Write the ``train`` pipeline in albumentations' own serialized format (json or yaml).

    ``albumentations.load(path)`` reads it back; seeded with :func:`seed_random_state`, it gives
    the same pixels as augkit for the same seed. ``labels`` (yolo, coco, voc, masks): the pipeline
    is for that kind of labelled dataset: :func:`export_label_params` adds its ``bbox_params`` and
    ``keypoint_params``, and geometric steps get the label rules' border (default constant).
    """
    path = Path(path)
    fmt = fmt or ("yaml" if path.suffix.lower() in (".yaml", ".yml") else "json")
    if fmt not in ("json", "yaml"):
        raise UsageError(f"export format {fmt!r} is not supported (allowed: json, yaml)")
    if not recipe.train:
        raise UsageError(f"{recipe.source}: the recipe has no train section to export")
    from augkit.io.fileio import atomic_write_text  # deferred: images imports cv2, not needed to parse recipes

    if labels is None:
        compose = recipe.to_albumentations()
    else:
        params = export_label_params(recipe, labels)
        border = (recipe.labels or LabelSpec()).border
        compose = import_albumentations().Compose(
            build_compose(recipe.train, border, recipe.fill)[0].transforms, p=1.0, **params
        )
    d = import_albumentations().to_dict(compose)
    meta: dict[str, Any] = {"version": __version__, "recipe": recipe.name, "recipe_hash": recipe.hash}
    if labels is not None:
        meta["labels"] = labels
        if labels in EXPORT_KEYPOINT_KINDS:
            meta["keypoints"] = (
                "albumentations 2.0.8 does not swap left/right keypoints under a horizontal flip (augkit does, "
                "from flip_idx or COCO left_/right_ names) nor mark keypoints outside the image invisible"
            )
    needs = export_imports(compose)
    if needs:  # augkit's own transforms (the policies): albumentations.load finds them once imported
        meta["import_first"] = needs
    d.setdefault("__augkit__", meta)
    if fmt == "json":
        text = json.dumps(d, indent=2)
    else:
        text = yaml.safe_dump(json.loads(json.dumps(d)), sort_keys=False)
    atomic_write_text(path, text)
    return path
