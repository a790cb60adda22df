"""``augkit export``: a run's model as one ONNX graph that needs neither Python nor augkit.

The graph takes a batch of uint8 RGB images ``(N, 3, S, S)`` at the run's image size (decoded
and resized as augkit does: the decode and resize policies are in the metadata), normalizes
them inside, runs the TTA views and their merge (the run recipe's ``tta`` section, or
``--tta``) inside, and returns class probabilities ``probs (N, K)``; a second output
``view_probs (V, N, K)`` holds each view's probabilities, the plain view always among them,
so ``augkit predict/evaluate model.onnx`` can serve any TTA made of those views
(:mod:`augkit.infer.onnx_backend`). The views are :class:`augkit.infer.tta.TTAWrapper`'s own tensor code,
traced by PyTorch's ``torch.export``-based ONNX exporter (``dynamo=True``, which needs
onnxscript: the older TorchScript exporter cannot trace a shift's pixel offset or ``rot90``).
After writing, the file is run once by onnxruntime on a test batch and compared with PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from augkit.errors import AugkitError, UsageError
from augkit.infer.engine import check_policies, choose_tta
from augkit.infer.onnx_backend import (
    INPUT,
    ONNX_HINT,
    OUTPUT,
    VIEW_OUTPUT,
    OnnxModel,
    import_onnxruntime,
    is_onnx_path,
    metadata_props,
)
from augkit.infer.options import SOURCE_OPTION, InferOptions, describe_tta
from augkit.infer.tta import TTAWrapper
from augkit.io.fileio import atomic_write_bytes
from augkit.models.checkpoint import ModelMeta, find_checkpoint, load_model
from augkit.recipe.api import TTASpec
from augkit.recipe.views import View

DEFAULT_OPSET, MIN_OPSET = 18, 18  # 18: Resize with antialias (the scale views' shrink)
#: ONNX probabilities must equal PyTorch's this closely on the test batch, or the export fails.
TOLERANCE = 1e-4
Note = Callable[[str], None]


class ExportGraph(nn.Module):
    """uint8 ``(N, 3, S, S)`` -> (merged probabilities ``(N, K)``, per-view ``(V, N, K)``)."""

    def __init__(self, model: nn.Module, meta: ModelMeta, spec: TTASpec):
        super().__init__()
        self.tta = TTAWrapper(model, spec.views, spec.merge, spec.beta, with_plain=True)
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def views(self) -> list[View]:
        return self.tta.all_views

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)  # registered buffers
        x = (images.float().div(255.0) - mean) / std  # as inference.to_model_input
        per_view = self.tta.view_probs(x)
        return self.tta.merge_views(per_view), per_view


@dataclass
class ExportResult:
    path: Path
    checkpoint: Path
    tta: TTASpec
    views: list[str]  # the graph's view_probs order
    opset: int
    bytes: int
    seconds: float
    max_abs_diff: float  # onnxruntime vs PyTorch on the test batch


def export_tta(meta: ModelMeta, tta: str | TTASpec | None) -> TTASpec:
    """``tta`` (a preset, recipe or file; ``none``: plain), else the run recipe's tta section, else plain."""
    if isinstance(tta, TTASpec):
        return tta
    return choose_tta(InferOptions(tta=tta), meta)[0]  # the one TTA rule, as predict and evaluate


def check_output(output: Path, overwrite: bool) -> None:
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"-o {output}: an ONNX file name ends in .onnx")
    if output.exists() and not overwrite:
        raise UsageError(f"{output}: already exists (use --overwrite to replace it)")
    if output.exists() and not output.is_file():
        raise UsageError(f"{output}: exists and is not a file")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent}: output folder not found")


def export_onnx(
    run: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tta: str | TTASpec | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    on_note: Note | None = None,
) -> ExportResult:
    """Write ``output`` (atomically; never over an existing file without ``overwrite``) and check
    it with onnxruntime against PyTorch (fails above :data:`TOLERANCE`)."""
    start = time.perf_counter()
    output = Path(output)
    if is_onnx_path(run):
        raise UsageError(f"{run}: already an exported model; export a run folder or checkpoint")
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: must be >= {MIN_OPSET} (antialiased Resize for the scale views)")
    check_output(output, overwrite)
    _require_onnx()
    ckpt = find_checkpoint(run)
    model, meta = load_model(ckpt, "cpu")
    check_policies(meta, ckpt)
    spec, source = (tta, SOURCE_OPTION) if isinstance(tta, TTASpec) else choose_tta(InferOptions(tta=tta), meta)
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise AugkitError(
            f"{ckpt}: the weights hold NaN or infinite values ({', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            + "): nothing was exported; train again with a lower --lr"
        )
    graph = ExportGraph(model, meta, spec).eval()
    if on_note is not None:
        on_note(f"exporting {meta.arch}: {describe_tta(spec, source)}; {len(graph.views)} view(s) (opset {opset}) ...")
    data = _to_onnx_bytes(graph, meta, spec, opset)
    try:
        atomic_write_bytes(output, data)
    except OSError as exc:  # read-only folder, disk full: one line, no partial file (atomic write)
        raise AugkitError(f"could not write {output}: {exc.strerror or exc} (no partial file was left)") from None
    diff = verify(output, graph, meta)
    if not diff <= TOLERANCE:  # NaN compares False: a NaN difference fails too
        output.unlink(missing_ok=True)
        raise AugkitError(
            f"{output}: "
            + (
                "the model's probabilities are NaN or infinite (its weights?)"
                if math.isnan(diff)
                else f"onnxruntime's probabilities differ from PyTorch's by {diff:.2g} (> {TOLERANCE:g})"
            )
            + "; the file was removed"
        )
    return ExportResult(
        output, ckpt, spec, [v.name for v in graph.views], opset, len(data), time.perf_counter() - start, diff
    )


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (deferred: optional extra)
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise UsageError(ONNX_HINT) from None
    import_onnxruntime()


def _to_onnx_bytes(graph: ExportGraph, meta: ModelMeta, spec: TTASpec, opset: int) -> bytes:
    """The serialized ONNX model with augkit's metadata; dynamic batch, fixed image size."""
    import onnx  # deferred: optional extra

    example = torch.zeros((2, 3, meta.image_size, meta.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                opset_version=opset,
                verbose=False,
                input_names=[INPUT],
                output_names=[OUTPUT, VIEW_OUTPUT],
                dynamic_shapes=({0: batch},),
                report=False,
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise AugkitError(f"ONNX export of {meta.arch} failed ({type(exc).__name__}: {first})") from None
    if program is None:
        raise AugkitError(f"ONNX export of {meta.arch} returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata_props(meta, spec, graph.views))
    proto.producer_name = "augkit"
    return proto.SerializeToString()


def verify(path: Path, graph: ExportGraph, meta: ModelMeta, n: int = 3) -> float:
    """Largest |onnxruntime - PyTorch| over both outputs on ``n`` seeded random images."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, meta.image_size, meta.image_size), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        probs, per_view = graph(images)
    session = OnnxModel(path, torch.device("cpu")).session()
    got, got_views = session.run([OUTPUT, VIEW_OUTPUT], {INPUT: images.numpy()})
    if not (torch.isfinite(probs).all() and torch.isfinite(per_view).all()):
        return math.nan  # the model itself gives NaN: the check cannot pass
    return max(
        float((torch.from_numpy(got) - probs).abs().max()), float((torch.from_numpy(got_views) - per_view).abs().max())
    )
