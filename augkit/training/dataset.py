"""Online augmentation: an image folder (or a list of files) plus a recipe, as a torch ``Dataset``.

:class:`AugmentedImageFolder` is a drop-in replacement for ``torchvision.datasets.ImageFolder``:
the same ``classes``, ``class_to_idx``, ``samples`` (same paths, same order) and ``targets``.
The one difference: augkit ignores hidden files and folders (``.x``, AppleDouble ``._x.jpg``,
``.ipynb_checkpoints/``) and OS litter (``Thumbs.db``, ``.DS_Store``), which ImageFolder would
load as images or even as a class; it also reads only ``.jpg .jpeg .png .bmp .webp .tif .tiff``
(not ``.ppm``/``.pgm``).

Per sample: ``read_image`` (augkit's decode policy) -> ``resize_short(image_size)`` -> the
recipe's ``train`` pipeline -> ``resize_short`` + ``center_crop(image_size)`` -> a CHW tensor.
That is what ``fused=False`` computes step by step. By default (``fused=True``) the recipe's
consecutive geometric steps are one warp (:mod:`augkit.recipe.fuse`, same parameters), the final
resize + crop joins the last geometric run's warp, and with the memory cache off (``memory_cache=0``,
no ``cache=``) so does the first resize, for every sample (one bilinear resampling from the file,
whatever was drawn): a recipe whose geometry runs first and last (flip + affine) goes from the
decoded file straight to ``image_size x image_size`` in one ``cv2.warpAffine``,
decoding the JPEG at the DCT scale that warp needs and converting only the region it reaches
(:class:`~augkit.io.warped.DecodedFile`). The parameters are drawn for the same working-size image
either way, so seeds and manifests do not change; the pixels agree within tests/test_fuse.py's
tolerance. The evaluation view (no recipe) is never fused: it stays ``eval_image``, as predict's.
JPEGs are decoded at reduced size (libjpeg DCT scaling: the largest 1/2, 1/4, 1/8 whose shorter
side is still >= ``image_size``) when the decode policy allows it, then resized as above. With
``cache=`` the first two steps are done once per image (:mod:`augkit.training.cache`).

Randomness: the recipe is seeded per sample from ``derive_seed(seed, key, epoch, salt="train")``
where ``key`` is the file's path relative to the folder. Nothing depends on the worker process,
the worker count or the order of loading, so ``num_workers=0`` and ``num_workers=2`` give the same
tensors, every epoch differs (call :meth:`set_epoch`), and no two workers repeat each other.
``set_epoch`` reaches persistent workers too (the epoch lives in shared memory).

OpenCV and forked DataLoader workers: call ``cv2.setNumThreads(1)`` in the main process before
the loader starts its workers (``augkit train`` does). Do not call it in a ``worker_init_fn``:
in a child forked while the parent's OpenCV thread pool was busy, that call can hang forever.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from augkit.errors import ImageError, UsageError
from augkit.io.fileio import read_bytes
from augkit.io.images import DECODE_POLICY, check_image_bytes, decode_policy_reduces, max_bytes_for, read_image
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, eval_image, resize_short
from augkit.io.scan import scan_folder
from augkit.io.warped import DecodedFile, ShapeChanged
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.recipe.api import Recipe, load_recipe
from augkit.seeding import derive_seed
from augkit.training.cache import ImageCache
from augkit.training.config import CHECKS

OUTPUTS = ("float", "uint8")
#: default in-memory budget of decoded images per process (500 digits at 32 px take 1.5 MB)
MEMORY_CACHE_BYTES = 256 << 20
_KEEP = object()


class SharedEpoch:
    """The epoch a dataset's augmentations are drawn for, in a shared-memory tensor, so that
    :meth:`set_epoch` reaches persistent DataLoader workers too."""

    def _init_epoch(self, epoch: int = 0) -> None:
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentations ``__getitem__`` returns (call before each epoch)."""
        self._epoch[0] = int(epoch)


class AugmentedImageFolder(SharedEpoch, Dataset):
    """An image folder (``root/<class>/.../<file>``) or a list of ``(path, label)`` pairs, with a recipe.

    Args:
        root_or_samples: a folder laid out like ImageFolder, or a sequence of ``(path, label)``
            pairs (labels are class indices; ``classes`` names them).
        recipe: a :class:`~augkit.recipe.api.Recipe`, a built-in recipe name, a recipe file, or None
            (no augmentation: the evaluation view).
        image_size: output height and width.
        seed: decides every augmentation together with the sample's key and the epoch.
        output: ``"float"`` (float32, 0..1, normalized when ``normalize``) or ``"uint8"`` (0..255).
        normalize: subtract ``mean`` and divide by ``std`` (float output only).
        check: ``"header"`` (default) reads every file once at construction and checks its
            signature, header, pixel limit and end marker; ``"full"`` decodes every file;
            ``"none"`` trusts the files. Files that fail are left out and listed in ``errors``.
        classes: for a folder, a fixed class list (e.g. the training set's) to label a
            validation folder with; every class folder found must be in it.
        cache: an :class:`~augkit.training.cache.ImageCache` or a folder for one: every image is decoded
            and resized once, at construction, and read from a memory-mapped file afterwards.
            Files that fail to decode are left out and listed in ``errors``.
        memory_cache: bytes of decoded, resized images each process keeps in memory (the
            first ones it loads, until the budget is used); 0 turns this off (and lets the fused
            view fold the first resize too: one warp from the decoded file).
        fused: one warp per geometric run, folded with the final resize + crop (default); False:
            every step by itself, as the recipe's exported albumentations pipeline does it.
    """

    def __init__(
        self,
        root_or_samples: str | os.PathLike | Sequence[tuple[str | os.PathLike, int]],
        recipe: Recipe | str | os.PathLike | None = None,
        *,
        image_size: int = 224,
        seed: int = 0,
        output: str = "float",
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        check: str | bool = "header",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        classes: Sequence[str] | None = None,
        check_workers: int = 4,
        cache: ImageCache | str | os.PathLike | None = None,
        memory_cache: int = MEMORY_CACHE_BYTES,
        fused: bool = True,
    ):
        if output not in OUTPUTS:
            raise UsageError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
        check = {True: "header", False: "none"}.get(check, check) if isinstance(check, bool) else check
        if check not in CHECKS:
            raise UsageError(f"check {check!r} is not one of {', '.join(CHECKS)}")
        if int(image_size) < 1:
            raise UsageError(f"image_size must be a positive number of pixels, got {image_size}")
        self.recipe = load_recipe(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
        self.image_size, self.seed, self.output, self.normalize = int(image_size), int(seed), output, normalize
        self.mean, self.std, self.max_pixels = tuple(map(float, mean)), tuple(map(float, std)), max_pixels
        self._mean, self._std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
        self.root: str | None = None
        self._reduced = decode_policy_reduces(DECODE_POLICY)  # JPEGs may be decoded at reduced size
        self.cache: ImageCache | None = None  # set after the check: the check decodes without it
        self.ignored: list[str] = []  # files and folders the scan skipped on purpose (hidden, litter, non-image)
        self.errors: list[ImageError] = []  # files that failed the check: left out
        if isinstance(root_or_samples, (str, os.PathLike)):
            items = self._from_folder(root_or_samples, classes)
        else:
            items = self._from_pairs(root_or_samples, classes)
        if check != "none":
            items = self._check(items, check, check_workers)
        self.cache = self._open_cache(cache)
        if self.cache is not None:
            items = self._fill_cache(items)
        self._set_items(items)
        self._init_epoch()
        self._augmenter = None
        self._memo = _Memo(memory_cache)
        self.fused = bool(fused)

    # ------------------------------------------------------------------ building the sample list
    def _from_folder(self, root, classes) -> list[tuple[str, int, str]]:
        directory = os.path.expanduser(os.fspath(root))
        self.root = directory
        scan = scan_folder(directory)
        self.ignored = list(scan.ignored) + [f for f, c in scan.items if not c]
        # folders that could not be listed: reported like bad files (errors.jsonl, exit 3), never dropped silently
        self.errors += [
            ImageError(os.path.join(directory, rel), why, "folder not listed") for rel, why in scan.unreadable
        ]
        self.errors += [  # a class folder linked to another: trained once, under the real folder's class
            ImageError(os.path.join(directory, a), "class alias", f"a link to {t}: its images count once, as {t}")
            for a, t in scan.aliases
        ]
        if scan.flat:
            raise UsageError(f"{directory}: no class folders with images (expected {directory}/<class>/<image>)")
        if scan.empty_classes:
            raise UsageError(f"{directory}: class folder(s) with no images: {', '.join(scan.empty_classes)}")
        if classes is None:
            self.classes = list(scan.classes)
        else:
            self.classes = list(classes)
            unknown = [c for c in scan.classes if c not in self.classes]
            if unknown:
                raise UsageError(
                    f"{directory}: class folder(s) not among the {len(self.classes)} known classes: "
                    f"{', '.join(unknown)}"
                )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        return [(os.path.join(directory, *rel.split("/")), self.class_to_idx[c], rel) for rel, c in scan.items if c]

    def _from_pairs(self, pairs, classes) -> list[tuple[str, int, str]]:
        items = []
        for i, pair in enumerate(pairs):
            try:
                path, label = pair
                label = int(label)
            except (TypeError, ValueError):
                raise UsageError(f"sample {i}: expected a (path, label) pair, got {pair!r}") from None
            if label < 0:
                raise UsageError(f"sample {i} ({path}): label {label} is negative")
            items.append((os.fspath(path), label, os.fspath(path)))
        top = max((t for _, t, _ in items), default=-1)
        if classes is None:
            self.classes = [str(i) for i in range(top + 1)]
        else:
            self.classes = list(classes)
            if top >= len(self.classes):
                raise UsageError(f"label {top} has no class name ({len(self.classes)} classes given)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        return items

    def _check(self, items, how: str, workers: int) -> list[tuple[str, int, str]]:
        probe = self.decode if how == "full" else self._probe
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda it: _try(probe, it[0]), items))
        self.errors += [e for e in results if e is not None]
        return [it for it, e in zip(items, results) if e is None]

    def _probe(self, path: str) -> None:
        limit = max_bytes_for(self.max_pixels) if self.max_pixels is not None else None
        check_image_bytes(read_bytes(path, max_bytes=limit), path, max_pixels=self.max_pixels)

    def _open_cache(self, cache) -> ImageCache | None:
        if cache is None or isinstance(cache, ImageCache):
            if cache is not None and cache.size != self.image_size:
                raise UsageError(
                    f"cache {cache.folder} holds short side {cache.size}, not image_size {self.image_size}"
                )
            return cache
        return ImageCache(cache, self.image_size, max_pixels=self.max_pixels)

    def _fill_cache(self, items: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
        assert self.cache is not None  # called only with a cache
        failed = self.cache.prepare([p for p, _, _ in items])
        self.errors += failed
        bad = {e.path for e in failed}
        return [it for it in items if it[0] not in bad]

    def _set_items(self, items: list[tuple[str, int, str]]) -> None:
        self._items = items
        self.samples = [(p, t) for p, t, _ in items]
        self.targets = [t for _, t, _ in items]
        self.imgs = self.samples  # ImageFolder's alias
        self.keys = [k for _, _, k in items]

    def subset(self, indices: Sequence[int], *, recipe=_KEEP) -> AugmentedImageFolder:
        """A dataset of some samples (same classes, seed and size), optionally with another recipe."""
        sub = copy.copy(self)
        sub._set_items([self._items[i] for i in indices])
        if recipe is not _KEEP:
            sub.recipe = load_recipe(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
        sub._init_epoch(self.epoch)
        sub._augmenter = None
        return sub

    # ------------------------------------------------------------------ the Dataset protocol
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target, key = self._items[index]
        return self.load(path, key), target

    def load(self, path: str, key: str) -> torch.Tensor:
        if self.recipe is None or not self.recipe.train:
            return self.to_tensor(eval_image(self.start_image(path), self.image_size))
        seed = derive_seed(self.seed, key, self.epoch, salt="train")
        aug = self._get_augmenter()
        if not (self.fused and self.cache is None and self._memo.budget == 0):
            return self.to_tensor(aug.view(self.start_image(path), seed, self.image_size, fused=self.fused)[0])
        # no decoded image kept anywhere: draw the recipe for the working size, then warp from the file
        src = DecodedFile(path, self.image_size, max_pixels=self.max_pixels, reduced=self._reduced)
        try:
            return self.to_tensor(aug.view(src, seed, self.image_size)[0])
        except ShapeChanged:  # EXIF turned the picture: the same draws for the turned shape
            return self.to_tensor(aug.view(src, seed, self.image_size)[0])

    def start_image(self, path: str) -> np.ndarray:
        """The decoded image resized to shorter side ``image_size``: what the recipe starts from.
        Kept in memory (per process, up to ``memory_cache`` bytes), so small datasets are decoded
        once per process rather than once per epoch; a private copy each time."""
        img = self._memo.get(path)
        if img is None:
            img = np.ascontiguousarray(resize_short(self.decode(path), self.image_size))
            self._memo.put(path, img)
        return img.copy()

    def decode(self, path: str) -> np.ndarray:
        """The image as the pipeline starts from it: from the cache, or decoded (at reduced size
        when the decode policy allows; the caller resizes exactly as for a full decode)."""
        if self.cache is not None:
            return self.cache.get(path)
        return read_image(path, max_pixels=self.max_pixels, min_side=self.image_size if self._reduced else None)

    def sample_seed(self, index: int) -> int:
        """The seed the recipe gets for sample ``index`` in the current epoch."""
        return derive_seed(self.seed, self._items[index][2], self.epoch, salt="train")

    def to_tensor(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        if self.output == "uint8":
            return x
        x = x.float().div_(255.0)
        if self.normalize:
            x = x.sub_(self._mean).div_(self._std)
        return x

    def _get_augmenter(self):
        if self._augmenter is None:
            self._augmenter = self.recipe.build()
        return self._augmenter

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_augmenter"] = None  # each worker builds its own pipeline
        state["_memo"] = _Memo(self._memo.budget)  # and keeps its own decoded images
        return state

    def __repr__(self) -> str:
        src = self.root if self.root is not None else "<samples>"
        name = self.recipe.name if self.recipe is not None else None
        return (
            f"{type(self).__name__}({src!r}, {len(self)} samples, {len(self.classes)} classes, recipe={name!r}, "
            f"image_size={self.image_size}, seed={self.seed}, epoch={self.epoch}, output={self.output!r})"
        )


def _try(fn, path: str) -> ImageError | None:
    try:
        fn(path)
    except ImageError as exc:
        return exc
    return None


class _Memo:
    """Decoded images by path, up to ``budget`` bytes (shared by a dataset and its subsets)."""

    def __init__(self, budget: int):
        self.budget, self.used = int(budget), 0
        self.images: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray | None:
        return self.images.get(path)

    def put(self, path: str, img: np.ndarray) -> None:
        if path not in self.images and self.used + img.nbytes <= self.budget:
            self.images[path] = img
            self.used += img.nbytes
