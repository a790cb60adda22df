"""``augkit train --decode gpu``: plan each sample on a CPU worker, make its pixels on the device.

Where cores are few, decoding JPEGs is what the GPU waits for. With ``--decode gpu`` a DataLoader
worker no longer decodes or touches a pixel; per sample it

1. reads the file's bytes and header (augkit's checks: pixel limit before any decode, truncation),
   and the JPEG's EXIF orientation (nvJPEG does not apply it: the orientation is folded into the
   matrix below, so the picture is used as the CPU path shows it);
2. seeds the recipe exactly as :meth:`AugmentedImageFolder.load` does (``derive_seed(seed, key,
   epoch, salt="train")``) and walks it with :class:`PlanWalk`, a :class:`~augkit.recipe.fuse.Walk`
   that draws every step with the same calls in the same order but records instead of rendering:
   the geometric run's matrix (output pixel of the ``size x size`` view -> pixel of the stored,
   full-size picture: the run, the final resize + crop, the stretch from the working size and the
   EXIF orientation, composed) and each later pixel step's sampled parameters. The parameters drawn
   (hence ``applied_steps`` and the manifest) are the CPU path's for the same seed;
3. returns the JPEG's bytes (a 1-D uint8 tensor), the matrix, a whole-factor pre-shrink and the
   parameters; :func:`collate` keeps the bytes as a list (:class:`PlannedBatch`).

On the device, :class:`DeviceDecoder` decodes the batch's JPEGs with one batched
``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), area-shrinks a picture by a whole factor
first when the warp would shrink it by 2x or more (``avg_pool2d``, standing in for the CPU path's DCT
scaling), pads the pictures to a common size, draws every sample with ONE batched ``grid_sample``
(bilinear; the border emulated per sample in its own extent: ``constant`` with the fill, ``reflect``
as OpenCV's BORDER_REFLECT_101, ``replicate``), then runs the colour steps as batched tensor
arithmetic with OpenCV's/albucore's uint8 rounding (``color``, ``linear``, albumentations'
``GaussianBlur``) and returns uint8 ``(N, 3, size, size)``: ``model_input`` normalizes it as before.

What ``--decode gpu`` supports: geometric matrix steps (flip, shift, rotate, affine and
albumentations' HorizontalFlip/VerticalFlip/Affine/Rotate, bilinear, border constant/reflect/
replicate) forming ONE run from the file, then only ``color``, ``linear`` and albumentations'
``GaussianBlur``, inside ``one_of``/``sequential``/``some_of`` (without replacement). Anything else
is refused before training starts (:func:`check_recipe`, a :class:`~augkit.errors.UsageError`
naming the step). Files that are not JPEGs (a PNG among JPEGs) are decoded on the worker by
augkit's decode policy and sent as pixels; the device then warps them like a decoded JPEG.

Where the pixels differ from ``--decode cpu`` (docs/training.md, "Decoding on the GPU"): the JPEG
decoder (nvJPEG's IDCT and chroma upsampling, full size, vs libjpeg's DCT-scaled decode); a
whole-factor average pool instead of DCT scaling on large downscales; float bilinear sampling vs
OpenCV's 1/32-pixel fixed point; and the colour steps run on the ``size x size`` view, where the CPU
path runs them on the working image before its centre crop (contrast's grey mean is the view's,
a blur reads the view's reflected edge). tests/test_gpu_decode.py states the tolerances.
Reproducible: the same seed gives the same plan at any worker count, and the device work is
elementwise or a fixed sum order (no atomics, no cuDNN), so the same tensors on one device. Every
choice (which samples get which step, kernel lengths) is made on the host from the batch's
parameters, and small tensors travel pinned: preparing a batch should not wait on the device (the
prefetcher prepares it on its side stream while the previous batch trains; unmeasured on a GPU).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from augkit.albu import import_albumentations
from augkit.errors import ImageError, UsageError
from augkit.io.fileio import read_bytes
from augkit.io.images import DCT_MARGIN, DECODE_POLICY, decode_image, decode_policy_reduces, max_bytes_for, read_header
from augkit.io.jpeg import reduction
from augkit.io.preprocess import short_side_shape
from augkit.io.warped import stretch
from augkit.recipe.api import Recipe, build_compose, leaf_transforms, seed_random_state
from augkit.recipe.colour import ColorJitter, RandomBrightnessContrast
from augkit.recipe.fuse import Walk, draw, final_matrix, is_matrix_step

#: what ``--decode gpu`` runs, for error messages and help
SUPPORTED = (
    "geometric steps first (flip, shift, rotate, affine; bilinear; border constant, reflect or replicate), "
    "then only color, linear and albumentations GaussianBlur (inside one_of, sequential, some_of without replace)"
)
_CONSTANT, _REPLICATE, _REFLECT = 0, 1, 4  # cv2.BORDER_* (augkit.recipe.ops.BORDER_MODES)
_BORDERS = {_CONSTANT: "constant", _REPLICATE: "replicate", _REFLECT: "reflect"}
_LINEAR = 1  # cv2.INTER_LINEAR
#: the kinds of pixel step the device runs, by slot kind
COLOR, LINEAR, BLUR = "color", "linear", "blur"
#: parameters per slot before a blur kernel's taps: [applied, b, c, s, h, o0, o1, o2, o3]
_HEAD = 9


def _pixel_kind(t: Any) -> str | None:
    A = import_albumentations()
    kind = type(t)
    if kind is ColorJitter:
        return COLOR
    if kind is RandomBrightnessContrast:
        return LINEAR
    if kind is A.GaussianBlur:
        return BLUR
    return None


def _blur_taps(t: Any) -> int:
    """The longest kernel a GaussianBlur can draw (albumentations' create_gaussian_kernel_1d sizes)."""
    lo, hi = (int(v) for v in t.blur_limit)
    sizes = [hi + (1 - hi % 2)] if hi > 0 else []
    if lo == 0:
        sizes.append(int(float(t.sigma_limit[1]) * 3.5) * 2 + 1)
    return max(sizes)


@dataclass(frozen=True)
class DeviceSpec:
    """What :func:`check_recipe` found: the run's border, fill, and the pixel steps' slots (depth first)."""

    border: int = _REPLICATE
    fill: tuple[float, float, float] = (0.0, 0.0, 0.0)
    slots: tuple[str, ...] = ()
    width: int = _HEAD  # parameters per slot

    @property
    def border_name(self) -> str:
        return _BORDERS[self.border]


def check_recipe(recipe: Recipe | None) -> DeviceSpec:
    """The device plan of ``recipe``'s train pipeline, or a :class:`UsageError` naming the first step
    ``--decode gpu`` cannot run (and what it supports). Called before any data is read."""
    if recipe is None or not recipe.train:
        return DeviceSpec()
    A = import_albumentations()
    compose, leaves = build_compose(recipe.train, recipe.border, recipe.fill)
    names = {id(leaf): step.where for step, t in leaves for leaf in leaf_transforms(t)}
    state: dict[str, Any] = {"pixel": None, "warp": None, "slots": [], "width": _HEAD}

    def refuse(t: Any, why: str) -> UsageError:
        where = names.get(id(t), type(t).__name__)
        return UsageError(
            f"--decode gpu cannot run recipe {recipe.name!r}: step {where}: {why}. It supports {SUPPORTED}; "
            "use --decode cpu for this recipe"
        )

    def visit(t: Any) -> None:
        kind = type(t)
        if kind in (A.Compose, A.Sequential, A.OneOf) or (kind is A.SomeOf and not t.replace):
            for child in t.transforms:
                visit(child)
            return
        if kind is A.SomeOf:
            raise refuse(t, "some_of with replace: true may apply a step twice")
        pixel = _pixel_kind(t)
        if pixel is not None:
            state["pixel"] = state["pixel"] or t
            state["slots"].append(pixel)
            if pixel == BLUR:
                state["width"] = max(state["width"], 2 + _blur_taps(t))
            return
        if not is_matrix_step(t) or kind not in (A.HorizontalFlip, A.VerticalFlip, A.Affine, A.Rotate):
            raise refuse(t, f"{kind.__name__} has no device implementation")
        if state["pixel"] is not None:
            first = names.get(id(state["pixel"]), type(state["pixel"]).__name__)
            raise refuse(t, f"a geometric step after the pixel step {first} (the device warps once, first)")
        if kind in (A.Affine, A.Rotate):
            if int(t.interpolation) != _LINEAR:
                raise refuse(t, f"interpolation {t.interpolation} (the device samples bilinear only)")
            if int(t.border_mode) not in _BORDERS:
                raise refuse(t, f"border mode {t.border_mode} (the device has {', '.join(_BORDERS.values())})")
            warp = (int(t.border_mode), _fill3(t.fill))
            if state["warp"] is not None and state["warp"] != warp:
                raise refuse(t, "a border or fill different from an earlier geometric step's (one warp has one)")
            state["warp"] = warp

    visit(compose)
    border, fill = state["warp"] or (_REPLICATE, (0.0, 0.0, 0.0))
    return DeviceSpec(border, fill, tuple(state["slots"]), state["width"])


def _fill3(fill: Any) -> tuple[float, float, float]:
    vals = [float(v) for v in fill] if isinstance(fill, (list, tuple)) else [float(fill)]
    vals = (vals * 3)[:3] if len(vals) == 1 else (vals + [0.0, 0.0])[:3]
    return vals[0], vals[1], vals[2]


def check_options(recipe: Recipe | None, device: torch.device, *, cache: bool) -> DeviceSpec:
    """Everything ``--decode gpu`` needs, checked before any data is read (UsageError: exit 2): a recipe
    the device can run, no ``--cache`` (its store holds images decoded on the CPU: one or the other),
    a CUDA training device. The recipe is checked first: that answer does not depend on the machine."""
    spec = check_recipe(recipe)
    if cache:
        raise UsageError(
            "--decode gpu with --cache: the cache stores images decoded on the CPU, --decode gpu decodes on the "
            "device every epoch; choose one (--cache for few cores and a dataset that fits on disk)"
        )
    check_device(device)
    return spec


def check_device(device: torch.device) -> None:
    """``--decode gpu`` needs the run to train on a CUDA device (nvJPEG decodes there)."""
    if not torch.cuda.is_available():
        raise UsageError("--decode gpu needs a CUDA device (torch.cuda.is_available() is False); use --decode cpu")
    if device.type != "cuda":
        raise UsageError(f"--decode gpu decodes on the training device, which is {device.type}; use --device cuda")


# ====================================================================== the plan (CPU worker)


def exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation (1..8; 1 when absent or unreadable), read from the header by Pillow."""
    from PIL import Image  # torchvision's dependency; reads the header only

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a header Pillow does not follow: OpenCV's decode is the policy; treat as upright
        return 1
    return value if 1 <= value <= 8 else 1


def orientation_matrix(orientation: int, stored_hw: tuple[int, int]) -> np.ndarray:
    """3x3: pixel of the picture as shown (EXIF orientation applied) -> pixel of the stored picture."""
    h, w = stored_hw
    x, y = {
        1: ((1, 0, 0), (0, 1, 0)),
        2: ((-1, 0, w - 1), (0, 1, 0)),
        3: ((-1, 0, w - 1), (0, -1, h - 1)),
        4: ((1, 0, 0), (0, -1, h - 1)),
        5: ((0, 1, 0), (1, 0, 0)),
        6: ((0, 1, 0), (-1, 0, h - 1)),
        7: ((0, -1, w - 1), (-1, 0, h - 1)),
        8: ((0, -1, w - 1), (1, 0, 0)),
    }[orientation]
    return np.array([x, y, (0, 0, 1)], dtype=np.float64)


class _Recorder:
    """A :class:`~augkit.recipe.fuse.Source` that keeps the one render's matrix and border."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.inv: np.ndarray | None = None

    def start(self) -> np.ndarray:
        raise AssertionError("--decode gpu: a checked recipe never needs the working image on the CPU")

    def folds(self, interp: int) -> bool:
        return True

    def render(self, inv: np.ndarray, out_hw: tuple[int, int], border: int, fill: Any, interp: int) -> np.ndarray:
        if self.inv is not None:
            raise AssertionError("--decode gpu: a checked recipe warps once")
        self.inv = inv
        return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*out_hw, 3))


class PlanWalk(Walk):
    """A fuse walk that draws every step as the CPU path does and renders nothing: the geometric run
    goes to the source (a :class:`_Recorder`); each pixel step's draws are kept in ``pixel``."""

    def __init__(self, source: _Recorder, slots: dict[int, int]):
        super().__init__(source)
        self.slots = slots  # id(leaf) -> slot index
        self.pixel: list[tuple[int, dict]] = []

    def call(self, t: Any, force: bool = False) -> None:
        if id(t) not in self.slots:
            super().call(t, force)
            return
        params = draw(t, force, self.run.shape)  # the CPU path's draws, on the working shape
        if params is not None:
            self.pixel.append((self.slots[id(t)], params))


@dataclass
class PlannedSample:
    """One sample's plan: ``payload`` (JPEG bytes, 1-D uint8; or decoded pixels, CHW uint8),
    ``matrix`` (3x3 float64: output pixel -> payload pixel), ``shrink`` (whole-factor area shrink
    first; 1: none), ``params`` (slots x width float64: each pixel step's draws, row 0 = applied)."""

    payload: torch.Tensor
    matrix: np.ndarray
    shrink: int
    params: np.ndarray
    path: str = ""


class Planner:
    """Plans samples of one recipe at one output size (one per worker process)."""

    def __init__(self, recipe: Recipe | None, size: int, *, max_pixels: int | None, reduced: bool | None = None):
        self.spec = check_recipe(recipe)
        self.recipe, self.size, self.max_pixels = recipe, int(size), max_pixels
        self.reduced = decode_policy_reduces(DECODE_POLICY) if reduced is None else reduced
        self.compose = None
        if recipe is not None and recipe.train:
            self.compose = build_compose(recipe.train, recipe.border, recipe.fill)[0]
            self._all = leaf_transforms(self.compose)
            kinds = [t for t in self._all if _pixel_kind(t) is not None]
            self._slots = {id(t): i for i, t in enumerate(kinds)}

    def plan(self, path: str, seed: int) -> PlannedSample:
        data = read_bytes(path, max_bytes=max_bytes_for(self.max_pixels))
        head = read_header(data, path, max_pixels=self.max_pixels)
        if head.jpeg is not None:
            stored = (head.jpeg.height, head.jpeg.width)
            orientation = exif_orientation(data)
            full = stored[::-1] if orientation >= 5 else stored
            k = reduction(full[1], full[0], min_side=self.size * DCT_MARGIN) if self.reduced else 1
            payload = torch.from_numpy(np.frombuffer(data, np.uint8).copy())
        else:  # another format: decoded here by the policy, sent as pixels
            rgb = decode_image(data, path, max_pixels=self.max_pixels)
            stored = full = (int(rgb.shape[0]), int(rgb.shape[1]))
            orientation, k = 1, 1
            payload = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
        shape = short_side_shape(-(-full[0] // k), -(-full[1] // k), self.size)  # the working shape, as DecodedFile
        inv, params = self.walk(shape, seed)
        m = orientation_matrix(orientation, stored) @ stretch(shape, full) @ inv
        s = float(np.linalg.svd(m[:2, :2], compute_uv=False).min())
        return PlannedSample(payload, m, int(s) if s >= 2 else 1, params, str(path))

    def walk(self, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The recipe drawn for a working image of ``shape``: (output pixel -> working pixel, parameters)."""
        params = np.zeros((len(self.spec.slots), self.spec.width), np.float64)
        if self.compose is None:
            return final_matrix(shape, self.size), params
        for t in self._all:  # as Augmenter.view
            t.params = {}
        seed_random_state(self.compose, seed)
        src = _Recorder(shape)
        walk = PlanWalk(src, self._slots)
        walk.call(self.compose)
        walk.finish(self.size)
        assert src.inv is not None  # finish renders the open run from the source
        last = -1
        for slot, prm in walk.pixel:
            if slot <= last:  # some_of keeps order; anything else would be a new container
                raise AssertionError(f"--decode gpu: pixel steps out of order ({slot} after {last})")
            last = slot
            params[slot] = _encode(self.spec.slots[slot], prm, self.spec.width)
        return src.inv, params


def _encode(kind: str, prm: dict, width: int) -> np.ndarray:
    row = np.zeros(width, np.float64)
    row[0] = 1.0
    if kind == COLOR:
        row[1:5] = prm["brightness"], prm["contrast"], prm["saturation"], prm["hue"]
        row[5:9] = prm["order"]
    elif kind == LINEAR:
        row[1:3] = prm["alpha"], prm["beta"]
    else:
        kernel = np.asarray(prm["kernel"], np.float64)
        row[1] = len(kernel)
        row[2 : 2 + len(kernel)] = kernel
    return row


class GpuDecodeFolder(Dataset):
    """An :class:`~augkit.training.dataset.AugmentedImageFolder` whose samples are plans
    (:class:`PlannedSample`, label): same files, seeds and epochs (``set_epoch`` on the folder
    reaches this view), nothing decoded. Batch it with :func:`collate`."""

    def __init__(self, folder: Any):
        self.folder = folder
        self.planner = Planner(folder.recipe, folder.image_size, max_pixels=folder.max_pixels)

    @property
    def spec(self) -> DeviceSpec:
        return self.planner.spec

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[PlannedSample, int]:
        path, target = self.folder.samples[index]
        return self.planner.plan(path, self.folder.sample_seed(index)), target


class PlannedBatch:
    """A batch of plans (:func:`collate`): payloads and paths as lists, the rest stacked."""

    def __init__(
        self,
        payloads: list[torch.Tensor],
        matrices: torch.Tensor,
        shrink: torch.Tensor,
        params: torch.Tensor,
        paths: list[str] | None = None,
    ):
        self.payloads, self.matrices, self.shrink, self.params = payloads, matrices, shrink, params
        self.paths = paths if paths is not None else [""] * len(payloads)
        self.shape = (len(payloads),)  # the feed meter counts images by shape[0]

    def __len__(self) -> int:
        return len(self.payloads)

    def pin_memory(self) -> PlannedBatch:
        """Pixels (non-JPEG files) pinned for their non-blocking copy; JPEG bytes go to nvJPEG as they are."""
        payloads = [p.pin_memory() if p.dim() == 3 else p for p in self.payloads]
        return PlannedBatch(payloads, self.matrices, self.shrink, self.params, self.paths)


def collate(samples: list[tuple[PlannedSample, int]]) -> tuple[PlannedBatch, torch.Tensor]:
    """DataLoader ``collate_fn`` for :class:`GpuDecodeFolder`."""
    plans = [p for p, _ in samples]
    batch = PlannedBatch(
        [p.payload for p in plans],
        torch.from_numpy(np.stack([p.matrix for p in plans])),
        torch.tensor([p.shrink for p in plans], dtype=torch.int64),
        torch.from_numpy(np.stack([p.params for p in plans])),
        [p.path for p in plans],
    )
    return batch, torch.tensor([t for _, t in samples], dtype=torch.int64)


# ====================================================================== the pixels (device)


class DeviceDecoder:
    """``decoder(batch, device)``: a :class:`PlannedBatch` -> uint8 ``(N, 3, size, size)`` on ``device``."""

    def __init__(self, spec: DeviceSpec, size: int):
        self.spec, self.size = spec, int(size)

    def __call__(self, batch: PlannedBatch, device: torch.device) -> torch.Tensor:
        imgs = decode_payloads(batch.payloads, device, batch.paths)
        x = warp_batch(imgs, batch.matrices, batch.shrink, self.size, self.spec.border, self.spec.fill)
        params = batch.params.cpu()  # every choice (which samples, which op) is made here, on the host:
        for j, kind in enumerate(self.spec.slots):  # no device -> host sync in the batch's preparation
            row = params[:, j]
            idx = (row[:, 0] == 1).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            on = to_device(idx, device)
            sub, prm = x[on], row[idx]
            if kind == COLOR:
                sub = color_jitter(sub, prm[:, 1:5], prm[:, 5:9].long())
            elif kind == LINEAR:
                sub = multiply_add(sub, to_device(prm[:, 1], device), to_device(prm[:, 2], device))
            else:
                sub = gaussian_blur(sub, prm[:, 1].long(), prm[:, 2:])
            x[on] = sub
        return x.to(torch.uint8)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without waiting for the device: pinned first on cuda (a copy
    from pageable memory can block until the stream's earlier work is done)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def decode_payloads(
    payloads: list[torch.Tensor], device: torch.device, paths: list[str] | None = None
) -> list[torch.Tensor]:
    """Each payload as CHW uint8 on ``device``: JPEG bytes decoded (one batched nvJPEG call on cuda;
    libjpeg per image elsewhere), pixels copied. A batch nvJPEG refuses (a JPEG kind it does not
    decode, e.g. CMYK) is decoded by libjpeg on the CPU instead, each image; one that fails there
    too is an :class:`~augkit.errors.ImageError` naming its file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, p in enumerate(payloads) if p.dim() == 1]
    out: list[torch.Tensor | None] = [None] * len(payloads)
    if jpegs:
        data = [payloads[i] for i in jpegs]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # nvJPEG (or libjpeg) refused the batch: libjpeg, one image at a time, names the file
            names = paths or [""] * len(payloads)
            decoded = [_decode_one(d, names[i]) for i, d in zip(jpegs, data)]
        for i, img in zip(jpegs, decoded):
            out[i] = img.to(device, non_blocking=True)
    for i, p in enumerate(payloads):
        if out[i] is None:
            out[i] = p.to(device, non_blocking=True)
    return [t for t in out if t is not None]


def _decode_one(data: torch.Tensor, path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise ImageError(path or "<bytes>", "not decoded", f"libjpeg: {exc}") from None


def warp_batch(
    imgs: list[torch.Tensor],
    matrices: torch.Tensor,
    shrink: torch.Tensor,
    size: int,
    border: int,
    fill: tuple[float, float, float],
) -> torch.Tensor:
    """Every picture warped to ``size x size`` by its matrix (output pixel -> picture pixel, pixel
    centres at integers, as OpenCV) in one bilinear ``grid_sample``; float32, rounded to integers.

    A picture the matrix shrinks by ``f >= 2`` is first averaged over ``f x f`` blocks. The pictures
    are padded to a common size; the border is made in each picture's own extent (reflect: the
    coordinate mirrored about its first and last pixel centres, which for bilinear sampling is
    BORDER_REFLECT_101; replicate: clamped; constant: ``fill`` outside, by sampling ``img - fill``
    with zeros outside and adding ``fill`` back)."""
    device = imgs[0].device
    n = len(imgs)
    mats = matrices.to(torch.float64).clone()
    fill_t = to_device(torch.tensor(fill, dtype=torch.float32), device).view(1, 3, 1, 1)
    pictures, sizes = [], []
    for i, img in enumerate(imgs):  # per sample: one pool and one copy (pixels are never looped over)
        f = int(shrink[i])
        pic = img.float()
        if f > 1:
            pic = F.avg_pool2d(pic[None], f, ceil_mode=True)[0]  # partial edge blocks average what they hold
            to_pooled = torch.tensor([[1 / f, 0, -(f - 1) / (2 * f)], [0, 1 / f, -(f - 1) / (2 * f)], [0, 0, 1]])
            mats[i] = to_pooled.to(torch.float64) @ mats[i]
        pictures.append(pic)
        sizes.append(pic.shape[1:])
    hm, wm = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = torch.zeros((n, 3, hm, wm), dtype=torch.float32, device=device)
    for i, pic in enumerate(pictures):  # constant: img - fill, so that zeros outside are the fill
        batch[i, :, : pic.shape[1], : pic.shape[2]] = pic - fill_t[0] if border == _CONSTANT else pic
    hw = to_device(torch.tensor([[s[1], s[0]] for s in sizes], dtype=torch.float32), device)  # (n, 2): w, h
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32, device=device),
        torch.arange(size, dtype=torch.float32, device=device),
        indexing="ij",
    )
    base = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(size * size, device=device)], 1)  # (S*S, 3)
    uv = torch.einsum("pk,njk->npj", base, to_device(mats[:, :2].to(torch.float32), device))  # (n, S*S, 2)
    last = (hw - 1).view(n, 1, 2)
    if border == _REFLECT:
        period = (2 * last).clamp(min=1)
        t = torch.remainder(uv, period)
        uv = torch.where(t > last, period - t, t)
        uv = torch.where(last > 0, uv, torch.zeros_like(uv))
    elif border == _REPLICATE:
        uv = torch.minimum(uv.clamp(min=0), last)
    wh = to_device(torch.tensor([wm, hm], dtype=torch.float32), device)
    grid = ((2 * uv + 1) / wh - 1).view(n, size, size, 2)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if border == _CONSTANT:
        out = out + fill_t
    return out.round_().clamp_(0, 255)


# ---------------------------------------------------------------------- colour (uint8 values in float32)


def _trunc_table(v: torch.Tensor) -> torch.Tensor:
    """albucore's table: clip to [0, 255], then truncate (what ``astype(uint8)`` does)."""
    return v.clamp(0, 255).floor()


def multiply_add(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``linear`` (RandomBrightnessContrast on uint8): ``x * alpha + beta`` in float32, clipped, truncated."""
    a = alpha.to(torch.float32).view(-1, 1, 1, 1)
    b = beta.to(torch.float32).view(-1, 1, 1, 1)
    return _trunc_table(x * a + b)


def grey(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 RGB2GRAY, (N, 1, H, W): ``(9798 R + 19235 G + 3735 B + 2**14) >> 15`` (what its
    code computes, checked bit-exact on random pixels; exact in float32: the sum stays below 2**24)."""
    y = x[:, 0:1] * 9798 + x[:, 1:2] * 19235 + x[:, 2:3] * 3735 + 16384
    return torch.floor(y / 32768)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``color`` (augkit's ColorJitter on uint8) for a batch: ``factors`` (N, 4) brightness, contrast,
    saturation, hue; ``order`` (N, 4) each sample's drawn order (both on the host: the selection is
    made there). Each of the 4 positions runs each op on the samples that have it there (and where it
    changes something, as the CPU path skips)."""
    factors, order = factors.cpu(), order.cpu()
    b, c, s, h = factors.unbind(1)
    active = (b != 1, c != 1, s != 1, h != 0)
    for pos in range(4):
        for op in range(4):
            sel = ((order[:, pos] == op) & active[op]).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            on, f = to_device(sel, x.device), to_device(factors[sel, op], x.device)
            sub = x[on]
            if op == 0:
                sub = _trunc_table(sub * f.to(torch.float32).view(-1, 1, 1, 1))
            elif op == 1:
                sub = _contrast(sub, f)
            elif op == 2:
                sub = _saturation(sub, f)
            else:
                sub = _hue(sub, f)
            x[on] = sub
    return x


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``contrast_table(f, grey mean)``: the mean an exact integer sum over the pixel count (float64)."""
    g = grey(x)
    mean = g.to(torch.int64).sum(dim=(1, 2, 3)).to(torch.float64) / float(g.shape[2] * g.shape[3])
    value = (mean * (1 - f)).to(torch.float32).view(-1, 1, 1, 1)
    out = _trunc_table(x * f.to(torch.float32).view(-1, 1, 1, 1) + value)
    flat = torch.floor(mean + 0.5).to(torch.float32).view(-1, 1, 1, 1).expand_as(x)
    return torch.where((f == 0).view(-1, 1, 1, 1), flat, out)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``cv2.addWeighted(img, f, grey3, 1 - f, 0)`` on uint8: float32, rounded half to even."""
    g = grey(x)
    a = f.to(torch.float32).view(-1, 1, 1, 1)
    out = (x * a + g * (1 - f).to(torch.float32).view(-1, 1, 1, 1)).round().clamp(0, 255)
    return torch.where((f == 0).view(-1, 1, 1, 1), g.expand_as(x), out)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 RGB -> HSV (H in [0, 180), its integer tables: exact), H shifted by
    albumentations' hue table, HSV -> RGB (OpenCV's float conversion, truncated as its vectorised code
    does; the pixels its scalar code converts at the end of a row differ by up to 1 level)."""
    xi = x.to(torch.int64)
    r, g, b = xi[:, 0], xi[:, 1], xi[:, 2]
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    sdiv = torch.where(
        v > 0, torch.round((255 << 12) / v.clamp(min=1).double()), torch.zeros_like(v, dtype=torch.float64)
    )
    hdiv = torch.where(diff > 0, torch.round((180 << 12) / (6.0 * diff.clamp(min=1).double())), torch.zeros_like(sdiv))
    s = (diff * sdiv.to(torch.int64) + (1 << 11)) >> 12
    hh = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    hh = torch.div(hh * hdiv.to(torch.int64) + (1 << 11), 4096, rounding_mode="floor")
    hh = torch.where(hh < 0, hh + 180, hh)
    shift = (180 * f.to(torch.float64)).view(-1, 1, 1)
    hh = torch.floor(torch.remainder(hh.to(torch.float64) + shift, 180.0))
    # HSV -> RGB, OpenCV's HSV2RGB_f on h, s / 255, v / 255 in float32
    hf = hh.to(torch.float32) * (6.0 / 180.0)
    sf = s.to(torch.float32) * (1.0 / 255.0)
    vf = v.to(torch.float32) * (1.0 / 255.0)
    sector = torch.floor(hf)
    hf = hf - sector
    sector = sector.to(torch.int64)
    bad = (sector < 0) | (sector >= 6)
    sector = torch.where(bad, torch.zeros_like(sector), sector)
    hf = torch.where(bad, torch.zeros_like(hf), hf)
    tab = torch.stack([vf, vf * (1 - sf), vf * (1 - sf * hf), vf * (1 - sf * (1 - hf))], 1)  # (N, 4, H, W)
    sectors = to_device(torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]]), x.device)
    pick = sectors[sector]  # (N, H, W, 3): indices of b, g, r in tab
    bgr = torch.gather(tab, 1, pick.permute(0, 3, 1, 2))
    # truncated, as OpenCV's vectorised code does for whole runs of pixels (64 at a time with AVX-512 here); its
    # scalar code, for the rest of a row (which pixels depends on the width and the CPU), rounds: 1 level there
    rgb = (bgr.flip(1) * 255).floor()
    return torch.where((s == 0).unsqueeze(1), v.unsqueeze(1).to(torch.float32).expand_as(rgb), rgb).clamp(0, 255)


def gaussian_blur(x: torch.Tensor, lengths: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """albumentations' GaussianBlur (``cv2.sepFilter2D``, BORDER_REFLECT_101) with each sample's own
    kernel: kernels centred in one odd length; a fixed sum over the taps (the same order every run)."""
    lengths, taps = lengths.cpu(), taps.cpu()
    k = int(lengths.max())
    n = x.shape[0]
    kernels = torch.zeros((n, k), dtype=torch.float32)
    for i in range(n):  # per sample, on the host: at most a few taps moved
        length = int(lengths[i])
        off = (k - length) // 2
        kernels[i, off : off + length] = taps[i, :length].to(torch.float32)
    kernels = to_device(kernels, x.device)
    r = k // 2
    h, w = x.shape[2], x.shape[3]
    if r >= min(h, w):
        raise UsageError(f"--decode gpu: a blur kernel of {k} taps is too long for {w}x{h} images")
    pad = F.pad(x, (r, r, r, r), mode="reflect")
    taps_of = [kernels[:, t].view(-1, 1, 1, 1) for t in range(k)]
    rows = torch.zeros_like(pad[:, :, :, :w])
    for t in range(k):  # horizontal pass, then vertical: a fixed order of float32 sums
        rows += taps_of[t] * pad[:, :, :, t : t + w]
    out = torch.zeros_like(x)
    for t in range(k):
        out += taps_of[t] * rows[:, :, t : t + h, :]
    return out.round().clamp(0, 255)


def describe(spec: DeviceSpec) -> str:
    """How ``--decode gpu`` feeds this run (settings.yaml's ``resolved.decode``)."""
    steps = ", ".join(spec.slots) or "none"
    return (
        "gpu: JPEGs decoded by nvJPEG on the device (batched), the geometry as one bilinear grid_sample "
        f"(border {spec.border_name}), then the pixel steps ({steps}) on the device; workers only plan"
    )
