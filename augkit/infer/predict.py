"""``predict``: class probabilities for images, optionally merged over TTA views, and the
CSV/JSONL files they are written to.

The engine (inputs, decoding under the checkpoint's decode policy, the TTA forward pass, top-k
rows) is :mod:`augkit.infer.engine`, shared with :mod:`augkit.infer.evaluate` and
:mod:`augkit.infer.predict_ray`; this module adds the rows' shape and their files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from augkit.devices import resolve_device
from augkit.infer.engine import Progress, check_top_k, collect_inputs, load_for_inference, resolve_tta, run_tta, top_row
from augkit.infer.files import FORMATS, errors_path, format_errors, format_predictions, write_predictions
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.recipe.api import TTASpec

__all__ = [
    "FORMATS",
    "Predictions",
    "errors_path",
    "format_errors",
    "format_predictions",
    "predict",
    "write_predictions",
]


# ====================================================================== predict


@dataclass
class Predictions:
    classes: list[str]
    rows: list[dict]  # {"path", "label", "prob", "top": [(label, prob), ...]} in input order
    errors: list[dict]
    tta: TTASpec
    checkpoint: str

    @property
    def counts(self) -> dict:
        return {"inputs": len(self.rows) + len(self.errors), "predicted": len(self.rows), "skipped": len(self.errors)}


def predict(
    run: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    tta: TTASpec | str | None = None,
    top_k: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int | None = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Predictions:
    """Predict every input with the run's model under ``tta`` (a spec, a ``--tta`` string or None).

    ``workers``: decoding processes; None picks :func:`augkit.infer.engine.default_workers`."""
    spec = tta if isinstance(tta, TTASpec) else resolve_tta(tta)
    dev = resolve_device(device)
    model, meta, path = load_for_inference(run, dev)
    check_top_k(top_k, meta)
    paths = collect_inputs(inputs)
    if on_start is not None:
        on_start(len(paths))
    res = run_tta(
        model,
        meta,
        paths,
        spec,
        device=dev,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        progress=progress,
    )
    rows = [top_row(paths[i], p, meta.classes, top_k) for i, p in zip(res.ok, res.merged)]
    return Predictions(list(meta.classes), rows, res.errors, spec, str(path))
