"""Running a model exported by ``augkit export`` (an ``.onnx`` file) with onnxruntime, so that
``predict`` and ``evaluate`` can check the exported file with the same decoding, rows and report.

The graph (see :mod:`augkit.infer.export`) takes uint8 ``(N, 3, S, S)`` images and returns two
outputs: ``probs``, the merge of its TTA views (what a deployment uses), and ``view_probs``
``(V, N, K)``, the probabilities of every view it computes, the plain view always among them.
augkit merges a requested TTA from ``view_probs`` with the same code as the PyTorch path, so
any TTA whose views the graph computes works (``--tta flip`` on a ``flip+shift`` export); one
that needs a view the graph lacks is refused, naming the views it has: the views are fixed at
export time. The model's metadata (classes, image size, normalization, decode policy) is read
from the file's ``metadata_props`` and validated like a checkpoint's, then checked against the
graph itself (:func:`check_graph`): an edited class list, image size or view list that the
graph's shapes contradict is refused (exit 2) naming the mismatch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from augkit.errors import UsageError
from augkit.infer.tta import IDENTITY, merge_probs
from augkit.io.images import decode_policy_margin, decode_policy_reduces
from augkit.models.checkpoint import ModelMeta, meta_from_dict
from augkit.recipe.api import TTASpec, parse_tta
from augkit.recipe.views import View, parse_view, view_to_yaml

ONNX_FORMAT = "augkit-onnx-v1"
ONNX_HINT = 'ONNX export and .onnx inference need the onnx extra: pip install "augkit[onnx]"'
#: metadata_props keys of an exported file (plain keys for other tools, JSON under augkit.*)
KEY_FORMAT, KEY_META, KEY_VIEWS, KEY_TTA = "augkit.format", "augkit.meta", "augkit.views", "augkit.tta"
INPUT, OUTPUT, VIEW_OUTPUT = "images", "probs", "view_probs"


def is_onnx_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model (by its suffix, as a user spells it)."""
    return Path(path).suffix.lower() == ".onnx"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime  # deferred: optional extra; `import augkit` never imports it
    except ImportError:
        raise UsageError(ONNX_HINT) from None
    return onnxruntime


def metadata_props(meta: ModelMeta, spec: TTASpec, views: list[View]) -> dict[str, str]:
    """What an export writes into the ONNX file's metadata (all strings)."""
    return {
        KEY_FORMAT: ONNX_FORMAT,
        KEY_META: json.dumps(asdict(meta)),
        KEY_VIEWS: json.dumps([view_to_yaml(v) for v in views]),
        KEY_TTA: json.dumps(spec.to_yaml()),
        "classes": json.dumps(meta.classes),
        "image_size": str(meta.image_size),
        "input": f"{INPUT}: uint8 (N, 3, {meta.image_size}, {meta.image_size}) RGB, resized and center-cropped "
        f"as augkit does ({meta.resize_policy})",
        "decode_policy": meta.decode_policy,
        "tta": " | ".join(v.name for v in spec.views) + f" ({spec.merge})",
        **preprocessing_props(meta, spec),
    }


def preprocessing_props(meta: ModelMeta, spec: TTASpec) -> dict[str, str]:
    """How to feed the graph without augkit, in words (docs/onnx.md has a runnable script)."""
    s = meta.image_size
    if decode_policy_reduces(meta.decode_policy):
        need = s * decode_policy_margin(meta.decode_policy)
        jpeg = (
            f"a JPEG is decoded at 1/k scale (OpenCV IMREAD_REDUCED_COLOR_k; libjpeg gives ceil(side / k)) with k "
            f"the largest of 8, 4, 2 whose reduced shorter side is still >= {need} px, else at full size"
        )
    else:
        jpeg = "a JPEG is decoded at full size"
    return {
        "decode": "RGB uint8 (OpenCV imdecode, BGR to RGB); EXIF orientation applied; alpha composited over white; "
        f"16-bit divided by 257; grey to 3 channels; {jpeg}",
        "resize": f"shorter side to {s} px: scale = {s} / shorter side, new sides max({s}, round(side * scale)); "
        f"unchanged when the shorter side is already {s}",
        "interpolation": "OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging",
        "crop": f"center {s}x{s}: top = (height - {s}) // 2, left = (width - {s}) // 2",
        "layout": f"{INPUT}: uint8 0..255, NCHW (N, 3, {s}, {s}), RGB channel order, dynamic batch",
        "normalization": f"inside the graph: (x / 255 - mean) / std, mean {list(meta.mean)}, std {list(meta.std)}",
        "tta_inside": f"yes: {OUTPUT} merges {len(spec.views)} view(s) by {spec.merge} inside the graph; "
        f"{VIEW_OUTPUT} holds each view's probabilities (softmax applied)",
        "reference": "docs/onnx.md: a reference onnxruntime + OpenCV script",
    }


@dataclass
class OnnxInfo:
    """An export's metadata, validated: the model's, the graph's views, and its own TTA."""

    meta: ModelMeta
    views: list[View]  # the order of the graph's view_probs output
    tta: TTASpec  # what its probs output merges


def parse_metadata(props: dict[str, str], source: str | os.PathLike) -> OnnxInfo:
    """Validate an export's metadata_props; a :class:`UsageError` names the file and the problem."""
    if props.get(KEY_FORMAT) != ONNX_FORMAT:
        raise UsageError(
            f"{source}: not an augkit export (metadata {KEY_FORMAT} is {props.get(KEY_FORMAT)!r}, "
            f"expected {ONNX_FORMAT!r}); export a run with augkit export RUN -o model.onnx"
        )
    try:
        meta_raw, views_raw, tta_raw = (json.loads(props[k]) for k in (KEY_META, KEY_VIEWS, KEY_TTA))
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{source}: damaged augkit export metadata ({type(exc).__name__}: {exc})") from None
    meta = meta_from_dict(meta_raw, source, check_model=False)  # onnxruntime runs it: no torchvision/timm needed
    if not isinstance(views_raw, list) or not views_raw:
        raise UsageError(f"{source}: damaged augkit export metadata: {KEY_VIEWS} must be a non-empty list")
    views = [parse_view(v, where=f"views[{i}]", source=str(source), line=None) for i, v in enumerate(views_raw)]
    return OnnxInfo(meta, views, parse_tta(tta_raw, str(source), None))


def check_graph(info: OnnxInfo, props: dict[str, str], inputs: list, outputs: list, source) -> None:
    """The metadata against the graph's own shapes (``images (N, 3, S, S)``, ``probs (N, K)``,
    ``view_probs (V, N, K)``) and against the plain keys written beside it for other tools
    (``classes``, ``image_size``); a :class:`UsageError` names each mismatch."""
    meta, problems = info.meta, []

    def dim(shape, i):
        return shape[i] if shape is not None and len(shape) > i and isinstance(shape[i], int) else None

    shapes = {x.name: getattr(x, "shape", None) for x in list(inputs) + list(outputs)}
    size_h, size_w = dim(shapes.get(INPUT), 2), dim(shapes.get(INPUT), 3)
    if (size_h, size_w) != (None, None) and (size_h, size_w) != (meta.image_size, meta.image_size):
        problems.append(f"image size: the metadata says {meta.image_size}, the graph takes {size_h}x{size_w}")
    for name, axis in ((OUTPUT, 1), (VIEW_OUTPUT, 2)):
        k = dim(shapes.get(name), axis)
        if k is not None and k != len(meta.classes):
            problems.append(f"classes: the metadata lists {len(meta.classes)}, the graph's {name} has {k}")
    v = dim(shapes.get(VIEW_OUTPUT), 0)
    if v is not None and v != len(info.views):
        problems.append(f"views: the metadata lists {len(info.views)}, the graph's {VIEW_OUTPUT} has {v}")
    try:
        plain_classes = json.loads(props["classes"]) if "classes" in props else meta.classes
    except ValueError:
        plain_classes = None
    if plain_classes != meta.classes:
        problems.append("classes: the file's 'classes' entry differs from its augkit.meta")
    if "image_size" in props and props["image_size"] != str(meta.image_size):
        problems.append(
            f"image size: the file's 'image_size' entry says {props['image_size']}, its augkit.meta {meta.image_size}"
        )
    if problems:
        raise UsageError(
            f"{source}: the export's metadata does not match its graph (edited after export?): "
            + "; ".join(problems)
            + ". Export the run again with augkit export"
        )


class OnnxModel:
    """An exported model run by onnxruntime; :meth:`runner` serves a TTA from its views."""

    #: the graph's inputs and outputs (onnxruntime NodeArg lists), set by :meth:`_read_props`
    _io: tuple[list[Any], list[Any]]

    def __init__(self, path: str | os.PathLike, device: torch.device):
        ort = import_onnxruntime()
        self.path, self.device = Path(path), device
        self._ort = ort
        self._session: Any = None
        try:
            props = self._read_props()
            self.info = parse_metadata(props, self.path)
            check_graph(self.info, props, *self._io, self.path)
        except UsageError:
            raise
        except Exception as exc:  # onnxruntime raises its own types on a damaged file
            raise UsageError(
                f"{self.path}: cannot load the ONNX model ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        self.meta = self.info.meta
        self._index = {v.chain: i for i, v in enumerate(self.info.views)}

    def _read_props(self) -> dict[str, str]:
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = 1  # metadata only; the session that runs is made in session()
        probe = self._ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._check_io(probe)
        self._io = (probe.get_inputs(), probe.get_outputs())
        return dict(probe.get_modelmeta().custom_metadata_map)

    def _check_io(self, session: Any) -> None:
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if names_in != [INPUT] or names_out[:2] != [OUTPUT, VIEW_OUTPUT]:
            raise UsageError(
                f"{self.path}: not an augkit export (inputs {names_in}, outputs {names_out}; "
                f"expected {INPUT} -> {OUTPUT}, {VIEW_OUTPUT})"
            )

    def session(self) -> Any:
        """The onnxruntime session, made on first use with the caller's thread count (the
        CPU thread rule is applied around the run, see :func:`augkit.devices.cpu_threads`)."""
        if self._session is None:
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            providers = ["CPUExecutionProvider"]
            if self.device.type == "cuda" and "CUDAExecutionProvider" in self._ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            self._session = self._ort.InferenceSession(str(self.path), opts, providers=providers)
        return self._session

    def view_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(V, N, K)`` probabilities of the graph's views for uint8 ``(N, H, W, 3)`` images."""
        x = images.permute(0, 3, 1, 2).contiguous().numpy()
        out = self.session().run([VIEW_OUTPUT], {INPUT: x})[0]
        return torch.from_numpy(out)

    def runner(self, tta: TTASpec, *, with_plain: bool = False) -> OnnxRunner:
        """Serve ``tta`` from the graph's views, or refuse naming the views the graph has."""
        missing = [v.name for v in tta.views if v.chain not in self._index]
        if missing:
            have = ", ".join(v.name for v in self.info.views)
            raise UsageError(
                f"{self.path}: TTA view(s) {', '.join(missing)} are not in this export (its views are "
                f"fixed when exported: {have}); choose among them, or export again with augkit export "
                "RUN --tta ..."
            )
        return OnnxRunner(self, tta, with_plain)


class OnnxRunner:
    """What :func:`augkit.infer.engine.run_tta` runs (``all_views``, ``plain_index``, ``probs``,
    ``merge_views``, as its PyTorch runner) over an export's views: the same merge code."""

    def __init__(self, model: OnnxModel, tta: TTASpec, with_plain: bool):
        self.model, self.views = model, list(tta.views)
        self.merge, self.beta = tta.merge, float(tta.beta)
        ident = [i for i, v in enumerate(self.views) if v.is_identity]
        need_plain = with_plain or self.beta > 0
        self.all_views = self.views + ([IDENTITY] if need_plain and not ident else [])
        self.plain_index = ident[0] if ident else (len(self.views) if need_plain else None)
        self._pick = [model._index[v.chain] for v in self.all_views]

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(len(all_views), N, K)`` probabilities for uint8 ``(N, H, W, 3)`` images."""
        return self.model.view_probs(images)[self._pick]

    def merge_views(self, p: torch.Tensor) -> torch.Tensor:
        plain = p[self.plain_index] if self.plain_index is not None else None
        return merge_probs(p[: len(self.views)], self.merge, self.beta, plain)
