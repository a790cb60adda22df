"""``augkit predict --engine ray``: batch TTA prediction on a Ray cluster through Ray Data.

The parent checks the run (decode and resize policies, classes, ``--top-k``) exactly as the
local path does, collects the inputs, and sends ``(index, path)`` records to
``ray.data.from_items``. A pool of actors (``map_batches`` with a callable class and
``ActorPoolStrategy``) loads the model **once per actor** from the checkpoint's bytes (sent
through Ray's object store, so the checkpoint need not be on shared storage) and runs the local
path's own :func:`augkit.infer.engine.run_tta` on each batch of paths: the same decoding, the same
views, the same merge. Only the merged probabilities and error reasons come back; the parent
puts them back in input order and builds the same :class:`~augkit.infer.engine.Predictions`, so the
same CSV/JSONL writer is used.

The images are read **by path** in the actors: on a multi-node cluster they must be on storage
that every node mounts at the same path (relative inputs are made absolute first).

Ray is an optional extra (``pip install "augkit[ray]"``), imported only when this engine runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

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
from augkit.infer.onnx_backend import is_onnx_path
from augkit.infer.options import Hooks, InferOptions
from augkit.models.checkpoint import load_checkpoint_bytes, model_from_checkpoint
from augkit.ray_session import check_pool_options, import_ray, ray_session
from augkit.recipe.api import TTASpec


class _Predictor:
    """One Ray Data actor: builds the model from the checkpoint bytes once, then predicts batches."""

    def __init__(
        self, checkpoint: bytes, source: str, tta: TTASpec, device: str, batch_size: int, max_pixels: int | None
    ):
        cv2.setNumThreads(1)  # one OpenCV thread per actor: no oversubscription
        model, self.meta = model_from_checkpoint(load_checkpoint_bytes(checkpoint, source), source)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tta, self.batch_size, self.max_pixels = tta, batch_size, max_pixels

    def __call__(self, batch: dict) -> dict:
        index = [int(i) for i in batch["i"]]
        paths = [str(p) for p in batch["path"]]
        res = run_tta(
            self.model,
            self.meta,
            paths,
            self.tta,
            device=self.device,
            batch_size=self.batch_size,
            workers=0,
            max_pixels=self.max_pixels,
            set_threads=False,
        )
        k = len(self.meta.classes)
        probs = np.zeros((len(paths), k), np.float32)
        reason = np.array([""] * len(paths), dtype=object)
        detail = np.array([""] * len(paths), dtype=object)
        for row, j in enumerate(res.ok):
            probs[j] = res.merged[row]
        bad = {e["path"]: e for e in res.errors}
        for j, p in enumerate(paths):
            if p in bad:
                reason[j], detail[j] = bad[p]["reason"] or "decode failed", bad[p].get("detail", "")
        return {"i": np.array(index, dtype=np.int64), "probs": probs, "reason": reason, "detail": detail}


def predict_ray(
    run: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    options: InferOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tta: Callable | None = None,
    **fields,
) -> Predictions:
    """:func:`augkit.infer.predict.predict` on a Ray cluster (``engine="ray"``); the same
    :class:`Predictions`. ``options`` or its fields as keywords, as for ``predict``."""
    base = options if options is not None else InferOptions(workers=None, engine="ray")  # None: the cluster's CPUs
    opts = InferOptions.of(base, **{**fields, "engine": "ray"})
    return predict_ray_engine(run, inputs, opts, Hooks(on_start=on_start, progress=progress, on_tta=on_tta))


def predict_ray_engine(
    run: str | os.PathLike, inputs: Sequence[str | os.PathLike], opts: InferOptions, hooks: Hooks
) -> Predictions:
    """The ``ray`` engine of :data:`augkit.infer.predict.ENGINES`.

    ``opts.address``: as for ``augkit augment --engine ray`` (None: ``RAY_ADDRESS``, a cluster
    started on this node, else a Ray started for this call; ``auto``; ``ray://host:10001``).
    ``opts.workers``: actors in the pool (None/0: the cluster's CPU count, or its GPU count when
    ``device`` is cuda). A Ray already initialised in this process is reused and left running;
    one started here is shut down. ``opts.device``: where each actor runs the model; ``cuda`` (or
    ``auto`` on a cluster with GPUs) gives every actor one GPU.
    """
    if is_onnx_path(run):
        raise UsageError(f"{run}: --engine ray runs a run folder or checkpoint, not an exported .onnx")
    import_ray()  # fail now, before the model is loaded, if the extra is missing
    check_pool_options(batch_size=opts.batch_size, num_cpus=opts.num_cpus, workers=opts.workers or None)
    explicit_tta(opts)  # a bad --tta fails before the model loads
    _, meta, path = load_for_inference(run, torch.device("cpu"))  # the local path's checks, on the parent
    check_top_k(opts.top_k, meta)
    spec, source = choose_tta(opts, meta)
    hooks.tta(spec, source)
    paths = collect_inputs(inputs)
    hooks.start(len(paths))
    probs = np.zeros((len(paths), len(meta.classes)), np.float32)
    errors: dict[int, dict] = {}
    with ray_session(opts.address) as session:
        device = opts.device
        gpu = device.startswith("cuda") or (device == "auto" and session.gpus() >= 1)
        pool = session.actor_pool(len(paths), workers=opts.workers, num_cpus=opts.num_cpus, gpu=gpu)
        records = [{"i": i, "path": os.path.abspath(p)} for i, p in enumerate(paths)]
        ds = session.map_batches(
            records,
            _Predictor,
            (path.read_bytes(), str(path), spec, device, opts.batch_size, opts.max_pixels),
            batch_size=opts.batch_size,
            pool=pool,
        )
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            _gather(batch, paths, probs, errors)
            if hooks.progress is not None:
                hooks.progress(len(batch["i"]))
    # input order, as the local path
    rows = [top_row(paths[i], p, meta.classes, opts.top_k) for i, p in enumerate(probs) if i not in errors]
    return Predictions(list(meta.classes), rows, [errors[i] for i in sorted(errors)], spec, str(path), source)


def _gather(batch: dict, paths: list[str], probs: np.ndarray, errors: dict[int, dict]) -> None:
    """Put one result batch back in input order."""
    for i, p, reason, detail in zip(batch["i"], batch["probs"], batch["reason"], batch["detail"]):
        i = int(i)
        if reason:
            errors[i] = {"path": paths[i], "reason": str(reason), "detail": str(detail)}
        else:
            probs[i] = p
