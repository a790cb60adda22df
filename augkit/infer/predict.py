"""``predict``: class probabilities for images, optionally merged over TTA views, by one of the
engines in :data:`ENGINES` (``local``: this process and its decoding workers; ``ray``: a pool
of Ray actors, :mod:`augkit.infer.predict_ray`). Every engine takes the same
:class:`~augkit.infer.options.InferOptions` and returns the same
:class:`~augkit.infer.engine.Predictions`, written by :mod:`augkit.infer.files`.

The engine internals (inputs, decoding under the checkpoint's decode policy, the TTA forward pass,
top-k rows) are :mod:`augkit.infer.engine`, shared with :mod:`augkit.infer.evaluate`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from augkit.devices import resolve_device
from augkit.errors import UsageError
from augkit.infer.engine import (
    Predictions,
    check_top_k,
    choose_tta,
    collect_inputs,
    explicit_tta,
    load_for_inference,
    run_tta,
    top_row,
)
from augkit.infer.files import FORMATS, errors_path, format_errors, format_predictions, write_predictions
from augkit.infer.options import Hooks, InferOptions
from augkit.infer.predict_ray import predict_ray_engine
from augkit.recipe.params import suggest

__all__ = [  # the writers too: ``augkit.predict`` (the old path) offered them
    "ENGINES",
    "FORMATS",
    "Predictions",
    "errors_path",
    "format_errors",
    "format_predictions",
    "predict",
    "register_engine",
    "write_predictions",
]

#: A predict engine: (run, inputs, options, hooks) -> Predictions.
Engine = Callable[[str | os.PathLike, Sequence[str | os.PathLike], InferOptions, Hooks], Predictions]
ENGINES: dict[str, Engine] = {}


def register_engine(name: str) -> Callable[[Engine], Engine]:
    """Add a predict engine under ``name`` (``--engine NAME``)."""

    def add(fn: Engine) -> Engine:
        ENGINES[name] = fn
        return fn

    return add


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise UsageError(
            f"--engine {name!r} is not supported{suggest(name, list(ENGINES))} (allowed: {', '.join(ENGINES)})"
        )
    return ENGINES[name]


def predict(
    run: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    options: InferOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tta: Callable | None = None,
    **fields,
) -> Predictions:
    """Predict every input with the run's model.

    ``options`` (or its fields as keywords: ``tta``, ``top_k``, ``batch_size``, ``device``,
    ``workers``, ``max_pixels``, ``engine``, ...; see :class:`InferOptions`). With no ``tta`` the
    run's own TTA is used (its recipe's ``tta``; an ``.onnx``'s exported views); ``tta="none"``:
    the plain view. ``on_start(n)``, ``progress(k)`` and ``on_tta(spec, source)`` report progress."""
    opts = InferOptions.of(options, **fields)
    engine = get_engine(opts.engine)
    return engine(run, inputs, opts, Hooks(on_start=on_start, progress=progress, on_tta=on_tta))


@register_engine("local")
def predict_local(
    run: str | os.PathLike, inputs: Sequence[str | os.PathLike], opts: InferOptions, hooks: Hooks
) -> Predictions:
    """This process, with ``opts.workers`` decoding processes."""
    explicit_tta(opts)  # a bad --tta fails before the model loads
    dev = resolve_device(opts.device)
    model, meta, path = load_for_inference(run, dev)
    check_top_k(opts.top_k, meta)
    spec, source = choose_tta(opts, meta, model)
    hooks.tta(spec, source)
    paths = collect_inputs(inputs)
    hooks.start(len(paths))

    def predictions(res) -> Predictions:
        rows = [top_row(paths[i], p, meta.classes, opts.top_k) for i, p in zip(res.ok, res.merged)]
        return Predictions(list(meta.classes), rows, res.errors, spec, str(path), source)

    try:
        res = run_tta(
            model,
            meta,
            paths,
            spec,
            device=dev,
            batch_size=opts.batch_size,
            workers=opts.workers,
            max_pixels=opts.max_pixels,
            progress=hooks.progress,
        )
    except KeyboardInterrupt as exc:  # the caller may keep what finished (``exc.predictions``)
        if getattr(exc, "partial", None) is not None:
            exc.predictions = predictions(exc.partial)  # type: ignore[attr-defined]
        raise
    return predictions(res)


register_engine("ray")(predict_ray_engine)
