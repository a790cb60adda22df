"""Does a recipe fit the images it will meet? Warnings about magnitudes that are absolute pixels.

TrivialAugment Wide's translations come from torchvision's table in **pixels** (up to 32 px,
whatever the image size), unlike RandAugment's (a fraction of the side) and augkit's own ``shift``
and ``affine`` (fractions). On small images (28-32 px digits) a 32 px translation moves the whole
content out of the frame: the sample becomes the fill colour with its label kept. ``augkit recipes
check --image-size N`` and ``augkit train`` say so before any work.
"""

from __future__ import annotations

from collections.abc import Iterator

from augkit.recipe.api import Recipe, Step
from augkit.recipe.policies.functional import augmentation_space

#: warn when a step can translate by at least this fraction of the image's side
TRANSLATE_WARN_FRACTION = 0.5


def _steps(steps: list[Step]) -> Iterator[Step]:
    for s in steps:
        yield s
        yield from _steps(s.children)


def size_warnings(recipe: Recipe, image_size: int) -> list[str]:
    """One line per step whose largest translation is at least half of a ``image_size`` px image."""
    out = []
    for step in _steps(recipe.train):
        if step.op != "trivial_augment":
            continue
        values, _signed = augmentation_space("trivial_augment", image_size, image_size)["TranslateX"]
        top = float(values.max()) if values is not None else 0.0
        if top >= TRANSLATE_WARN_FRACTION * image_size:
            out.append(
                f"{step.where}: translates by up to {top:.0f} px (torchvision's TrivialAugment "
                f"Wide table, in pixels), {top / image_size:.0%} of a {image_size} px image: content can leave "
                "the frame while its label stays; at this size rand_augment (translations scale with the image) "
                "or augkit's shift/affine steps fit better"
            )
    return out
