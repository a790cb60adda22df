"""The picture of a TTA: each view of a spec applied to a few test images, as the model sees them.

``augkit preview IMAGES --tta SPEC`` draws it, where SPEC is a run folder (its own TTA: the recipe's
``tta`` section, or the views an ``.onnx`` was exported with, at the run's image size), a preset
(``flip+shift``) or a recipe with a ``tta`` section. The views are the same batched tensor
operations ``predict`` runs (:func:`augkit.infer.tta.apply_view`) on the image decoded and resized
as ``predict`` does; only the normalization is left out, so the colours are the image's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from augkit.errors import ImageError, UsageError
from augkit.infer.engine import default_tta, load_for_inference, resolve_tta
from augkit.infer.onnx_backend import is_onnx_path
from augkit.infer.tta import apply_view
from augkit.io.images import read_image, write_image
from augkit.io.preprocess import eval_image
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.offline.preview import MAX_CELL, MAX_ROWS_COLS, pick_images, render_grid
from augkit.recipe.api import TTASpec

#: the image size views are drawn at when the spec is not a run's (a preset or a recipe)
DEFAULT_SIZE = 224


def resolve_spec(tta: str) -> tuple[TTASpec, int, str]:
    """(spec, image size, where it came from) for ``--tta``: a run folder, a checkpoint or an
    exported .onnx (the run's own TTA at its image size), else a preset or a recipe."""
    import torch  # deferred with the model: only a run folder needs it

    p = Path(tta)
    if p.is_dir() or p.suffix in (".pt",) or is_onnx_path(tta):
        model, meta, path = load_for_inference(p, torch.device("cpu"))
        spec, source = default_tta(meta, model)
        return spec, int(meta.image_size), f"{source} ({path})"
    return resolve_tta(tta), DEFAULT_SIZE, f"--tta {tta}"


def view_tiles(img: np.ndarray, spec: TTASpec, size: int) -> list[tuple[str, np.ndarray]]:
    """(view name, uint8 RGB picture) of every view of ``spec`` on ``img`` at the model's size."""
    import torch  # deferred: views are tensor operations

    x = torch.from_numpy(np.ascontiguousarray(eval_image(img, size))).permute(2, 0, 1)[None].float()
    return [
        (v.name, apply_view(x, v)[0].clamp(0, 255).round().byte().permute(1, 2, 0).contiguous().numpy())
        for v in spec.views
    ]


def tta_preview(
    sources: Sequence[str | os.PathLike],
    tta: str,
    output: str | os.PathLike,
    *,
    images: int = 4,
    cell: int = 160,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[Path, TTASpec, str]:
    """Draw every view of ``tta`` on up to ``images`` of ``sources`` (rows: images; columns: views)."""
    if not (1 <= images <= MAX_ROWS_COLS and 48 <= cell <= MAX_CELL):
        raise UsageError(f"--images must be 1-{MAX_ROWS_COLS} and --cell 48-{MAX_CELL} (got {images}, {cell})")
    output = Path(output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"{output}: preview output must end in .png, .jpg or .webp")
    spec, size, source = resolve_spec(tta)
    files = pick_images(sources, images)
    rows, names = [], []
    for f in files:
        try:
            img = read_image(f, max_pixels=max_pixels, min_side=size)
        except ImageError as exc:
            raise UsageError(str(exc)) from None
        tiles = view_tiles(img, spec, size)
        rows.append([t for _, t in tiles])
        names.append(str(f))
    headers = [v.name.replace(",", ", ").replace(">", " > ") for v in spec.views]  # wrap at the commas
    write_image(render_grid(rows, headers, names, cell), output, quality=92)
    return output, spec, source
