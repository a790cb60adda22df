"""The ``labels:`` section of a recipe: how boxes, polygons, keypoints and masks follow the pixels.

Pure data, validated without albumentations or torch (``augkit recipes check`` reads it);
:mod:`augkit.labels.geometry` applies it. Every key is optional; the defaults are what a labelled
dataset gets from a recipe without a ``labels:`` section::

    labels:
      border: constant     # border of the geometric steps on labelled data (not the recipe's border)
      min_visibility: 0.1  # drop an object when less than this fraction of its area stays in the image
      min_area: 4          # drop an object whose box is smaller than this, in pixels
      box_from: auto       # auto: from the object's mask, else its polygon, else its box's 4 corners
      ignore_value: 255    # mask value written where a warp brings in pixels from outside the image

Why ``border: constant``: ``reflect`` and ``wrap`` fill the corners of a rotated or shifted image
with mirror copies of what is near the edge, objects included, and those copies have no labels.
The recipe's top-level ``border`` is for unlabelled (classification) images; a step's own
``border:`` still wins. ``reflect``/``wrap`` on labelled data are allowed with a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from augkit.errors import RecipeError
from augkit.recipe.ops import BORDER_MODES
from augkit.recipe.params import Param, check_params

#: where a box comes from after a step: auto (mask, else polygon, else the box's corners) or corners only
BOX_FROM = ("auto", "corners")
#: borders that copy image content (objects included) into the frame without their labels
COPYING_BORDERS = ("reflect", "wrap")

LABEL_PARAMS: dict[str, Param] = {
    "border": Param(
        "choice",
        "constant",
        choices=tuple(BORDER_MODES),
        help="border of geometric steps on labelled data (reflect and wrap copy objects without their labels)",
    ),
    "min_visibility": Param(
        "number", 0.1, lo=0.0, hi=1.0, help="drop an object when less than this fraction of its area stays in view"
    ),
    "min_area": Param("number", 4.0, lo=0.0, hi=None, help="drop an object whose box is smaller than this, in pixels"),
    "box_from": Param(
        "choice", "auto", choices=BOX_FROM, help="auto: from the mask, else the polygon, else the box's corners"
    ),
    "ignore_value": Param(
        "int", 255, lo=0, hi=255, help="mask value where a warp brings in pixels from outside the image"
    ),
}


@dataclass(frozen=True)
class LabelSpec:
    """Validated label rules (see the module docstring for each key and its default)."""

    border: str = "constant"
    min_visibility: float = 0.1
    min_area: float = 4.0
    box_from: str = "auto"
    ignore_value: int = 255

    def to_yaml(self) -> dict[str, Any]:
        return asdict(self)


def parse_labels(raw: Any, source: str, line: int | None) -> LabelSpec:
    """The ``labels:`` section (``None``/empty: every default); errors name the file, line and key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            "labels must be a mapping such as {min_visibility: 0.3}",
            source=source,
            where="labels",
            line=line,
            allowed=", ".join(LABEL_PARAMS),
        )
    prm = check_params(raw, LABEL_PARAMS, what="labels", where="labels", source=source, line=line)
    return LabelSpec(**prm)


def describe_labels() -> str:
    """One line for listings: the keys of the labels section with their defaults."""
    return "; ".join(
        f"{k}: {p.default:g} = {p.help}" if isinstance(p.default, float) else f"{k}: {p.default} = {p.help}"
        for k, p in LABEL_PARAMS.items()
    )
