"""``augkit predict --engine ray``: batch TTA prediction on a Ray cluster through Ray Data.

The parent checks the run (decode and resize policies, classes, ``--top-k``) exactly as the
local path does, collects the inputs, and sends ``(index, path)`` records to
``ray.data.from_items``. A pool of actors (``map_batches`` with a callable class and
``ActorPoolStrategy``) loads the model **once per actor** from the checkpoint's bytes (sent
through Ray's object store, so the checkpoint need not be on shared storage) and runs the local
path's own :func:`augkit.predict.run_tta` on each batch of paths: the same decoding, the same
views, the same merge. Only the merged probabilities and error reasons come back; the parent
puts them back in input order and builds the same :class:`~augkit.predict.Predictions`, so the
same CSV/JSONL writer is used.

The images are read **by path** in the actors: on a multi-node cluster they must be on storage
that every node mounts at the same path (relative inputs are made absolute first).

Ray is an optional extra (``pip install "augkit[ray]"``), imported only when this engine runs.
"""
from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import UsageError
from .executors_ray import RayExecutor, import_ray
from .images import DEFAULT_MAX_PIXELS
from .predict import Predictions, Progress, collect_inputs, load_for_inference, resolve_tta
from .recipe import TTASpec


class _Predictor:
    """One Ray Data actor: builds the model from the checkpoint bytes once, then predicts batches."""

    def __init__(self, checkpoint: bytes, tta: TTASpec, device: str, batch_size: int, max_pixels: int | None):
        import cv2

        from .checkpoint import ModelMeta
        from .models import build_model
        from .predict import resolve_device

        cv2.setNumThreads(1)
        ckpt = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
        self.meta = ModelMeta.from_dict(ckpt["meta"])
        self.device = resolve_device(device)
        model = build_model(self.meta.arch, len(self.meta.classes))
        model.load_state_dict(ckpt["state_dict"])
        self.model = model.to(self.device).eval()
        self.tta, self.batch_size, self.max_pixels = tta, batch_size, max_pixels

    def __call__(self, batch: dict) -> dict:
        from .predict import run_tta

        index = [int(i) for i in batch["i"]]
        paths = [str(p) for p in batch["path"]]
        res = run_tta(self.model, self.meta, paths, self.tta, device=self.device, batch_size=self.batch_size,
                      workers=0, max_pixels=self.max_pixels)
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


def predict_ray(run: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, tta: TTASpec | str | None = None,
                top_k: int = 1, batch_size: int = 64, device: str = "cpu", address: str | None = None,
                workers: int | None = None, num_cpus: float | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
                on_start: Callable[[int], None] | None = None) -> Predictions:
    """:func:`augkit.predict.predict` on a Ray cluster; the same :class:`Predictions`.

    address: as for ``augkit augment --engine ray`` (None: ``RAY_ADDRESS``, a cluster started on this
    node, else a Ray started for this call; ``auto``; ``ray://host:10001``). workers: actors in the
    pool (default: the cluster's CPU count, or its GPU count when ``device`` is cuda). A Ray already
    initialised in this process is reused and left running; one started here is shut down.
    device: where each actor runs the model; ``cuda`` (or ``auto`` on a cluster with GPUs) gives
    every actor one GPU.
    """
    ray = import_ray()
    spec = tta if isinstance(tta, TTASpec) else resolve_tta(tta)
    _, meta, path = load_for_inference(run, torch.device("cpu"))  # the local path's checks, on the parent
    if not 1 <= top_k <= len(meta.classes):
        raise UsageError(f"--top-k {top_k}: the model has {len(meta.classes)} classes")
    paths = collect_inputs(inputs)
    if on_start is not None:
        on_start(len(paths))
    ex = RayExecutor(address=address, num_cpus=num_cpus, batch_size=batch_size, concurrency=workers)
    started = ex._init(ray)
    data_ctx = ray.data.DataContext.get_current()
    saved = (data_ctx.enable_progress_bars, data_ctx.print_on_execution_start)
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    k = len(meta.classes)
    probs = np.zeros((len(paths), k), np.float32)
    errors: dict[int, dict] = {}
    try:
        data_ctx.enable_progress_bars = False
        data_ctx.print_on_execution_start = False
        data_log.setLevel(logging.ERROR)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1)
        if use_gpu:
            n = max(1, min(workers or int(gpus) or 1, len(paths)))
            resources = {"num_gpus": 1, "num_cpus": num_cpus or 1}
        else:
            n, cpus = ex._pool(ray, len(paths))
            resources = {"num_cpus": cpus}
        per_call = max(1, min(batch_size, math.ceil(len(paths) / (4 * n))))
        items = [{"i": i, "path": os.path.abspath(p)} for i, p in enumerate(paths)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_call)))
        ds = ds.map_batches(_Predictor, fn_constructor_args=(path.read_bytes(), spec, device, batch_size, max_pixels),
                            batch_size=per_call, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
                            zero_copy_batch=False, **resources)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for i, p, reason, detail in zip(batch["i"], batch["probs"], batch["reason"], batch["detail"]):
                i = int(i)
                if reason:
                    errors[i] = {"path": paths[i], "reason": str(reason), "detail": str(detail)}
                else:
                    probs[i] = p
            if progress is not None:
                progress(len(batch["i"]))
    finally:
        data_ctx.enable_progress_bars, data_ctx.print_on_execution_start = saved
        data_log.setLevel(saved_level)
        if started:
            ray.shutdown()
    rows = []
    for i, p in enumerate(probs):  # input order, as the local path
        if i in errors:
            continue
        order = np.argsort(-p, kind="stable")[:top_k]
        top = [(meta.classes[c], float(p[c])) for c in order]
        rows.append({"path": paths[i], "label": top[0][0], "prob": top[0][1], "top": top})
    return Predictions(list(meta.classes), rows, [errors[i] for i in sorted(errors)], spec, str(path))
