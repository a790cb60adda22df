"""``augkit augment`` on a labelled dataset (YOLO, COCO, Pascal VOC, mask folders): the labels move
with the pixels, and DST is a complete dataset of the same kind.

The same machinery as a classification folder (:mod:`augkit.offline.run`): a plan of work items with
per-item seeds, the same executors, journal, manifest and resume, so ``--workers 1`` and ``2`` give
byte-identical files and a killed run resumes to the files of an uninterrupted one. What differs:

- **Splits.** The training split (``train``; a dataset with one split: that one) is augmented; the
  others are copied unchanged (``link=True``: symbolic links to the source files), so DST holds every
  split. ``augment_splits`` names the splits to augment instead.
- **Work items** are images; a worker reads the image and its labels (:func:`augkit.labels.formats`'
  ``read``), moves the labels through the recipe (:mod:`augkit.labels.geometry`) and writes the
  image and its label file (the format's ``write``), each atomically.
- **Records.** Each manifest row says, per output, how many objects were kept, clipped and dropped
  (with each dropped object's reason), and carries the format's record of the output (for COCO the
  image entry and its annotations): after the run, the format's ``finish`` writes the dataset-level
  files (YOLO ``data.yaml``, the COCO JSON with new unique ids) from the manifest, in plan order,
  so they survive a resume and do not depend on the worker count.
- **Balance.** ``per_class`` counts *objects* (detection): see :func:`copies_per_image`.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from augkit.errors import ImageError, UsageError
from augkit.io.fileio import atomic_symlink, atomic_write_bytes, atomic_write_text
from augkit.io.images import OUTPUT_FORMATS, encode_image
from augkit.labels.formats import FORMATS, LabelError, LabelFormat, check_item_size, detect_kind, open_dataset
from augkit.labels.geometry import LabelledPipeline, LabelStats, build_labelled
from augkit.labels.model import KINDS, DatasetInfo, Item, Labels
from augkit.limits import AUGMENT_PRELOAD, MAX_REDRAWS
from augkit.offline.dst import ERRORS, latest_rows, read_rows, remove_stale_temps
from augkit.offline.executors.result import ItemResult, Status
from augkit.offline.run import MAX_PLANNED_OUTPUTS, AugmentOptions, AugmentResult, Plan, check_dirs, run_plan
from augkit.offline.task import NAME_MAX, AugmentTask, TaskSettings, WorkItem, bad_item, redraw_seed, write_failed
from augkit.recipe.api import Recipe, load_recipe, parse_recipe
from augkit.seeding import derive_seed

__all__ = [
    "LABEL_CHOICES",
    "LabelledOptions",
    "LabelledPlan",
    "LabelledTask",
    "augment_labelled",
    "copies_per_image",
    "make_labelled_plan",
    "resolve_kind",
]

#: what ``--labels`` takes: a labelled kind, or ``folders`` (a classification folder, class per sub-folder)
LABEL_CHOICES = (*KINDS, "folders")


def resolve_kind(src: str | os.PathLike, labels: str | None) -> str | None:
    """The labelled kind to augment SRC as (``labels`` forces it), or None for a classification folder
    (``labels="folders"``, or a layout that looks like no labelled dataset)."""
    if labels is not None and labels not in LABEL_CHOICES:
        raise UsageError(f"--labels {labels!r} is not supported (allowed: {', '.join(LABEL_CHOICES)})")
    if labels == "folders":
        return None
    return labels or detect_kind(Path(src))


@dataclass
class LabelledOptions(AugmentOptions):
    #: copied splits (and ``originals``) become symbolic links to the source files instead of copies
    link: bool = False
    #: the splits to augment; None: ``train`` (else the one split whose name starts with train, e.g.
    #: COCO's train2017, else the only split)
    augment_splits: list[str] | None = None

    def validate(self) -> None:
        super().validate()
        if self.max_side is not None:
            raise UsageError(
                "--max-side is not supported with a labelled dataset yet: its label files give pixel "
                "coordinates of the full-size images (resize the dataset first, or drop --max-side)"
            )


# ====================================================================== planning


@dataclass
class LabelledPlan(Plan):
    """A :class:`~augkit.offline.run.Plan` for a labelled dataset; ``run_plan`` executes it."""

    options: LabelledOptions  # (narrower than Plan's: make_labelled_plan builds it from one)
    info: DatasetInfo = field(kw_only=True)  # after Plan's fields with defaults: keyword only
    #: split -> "augment", "copy" or "link"
    split_modes: dict[str, str] = field(default_factory=dict)
    #: totals over the plan's outputs once it ran (see :func:`label_totals`)
    totals: dict = field(default_factory=dict)
    #: dataset-level problems (orphan label files, duplicate ids...): reported in the errors file
    label_issues: list[dict] = field(default_factory=list)
    #: what the recipe does to labels that the user should know (reflect borders copy objects unlabelled)
    warnings: list[str] = field(default_factory=list)

    def make_task(self) -> LabelledTask:
        o = self.options
        return LabelledTask(self.src, self.dst, self.recipe.text, self.recipe.source, o.settings(), self.info, o.link)

    def row_fields(self, item: WorkItem, res: ItemResult) -> dict:
        # an image of a labelled dataset has objects, not a class
        row: dict[str, Any] = {"class": None, "split": item.cls}
        for key in ("objects", "label_record", "linked"):
            if key in res:
                row[key] = res[key]
        return row

    def finish(self, result: AugmentResult) -> None:
        """The dataset-level files (data.yaml, the COCO JSON) from every finished output's record,
        in plan order, then the totals over the plan's outputs."""
        rows = latest_rows(self.dst)
        done = [rows[it.out] for it in self.items if it.out in rows and "label_record" in rows[it.out]]
        try:
            FORMATS[self.info.kind].finish(self.info, self.dst, [r["label_record"] for r in done])
            if self.label_issues:  # after the per-file errors run_plan wrote
                errors = read_rows(self.dst / ERRORS) + [dict(i, kind="label issue") for i in self.label_issues]
                atomic_write_text(self.dst / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
        except OSError as exc:
            result.fatal = result.fatal or f"cannot write the dataset files in {self.dst}: {exc.strerror or exc}"
        reported = {b["path"] for b in result.bad}
        result.bad += [i for i in self.label_issues if i["path"] not in reported]
        remove_stale_temps(self._label_folders())  # temps of label files a killed run left (we hold the lock)
        self.totals = label_totals(done)

    def _label_folders(self) -> set[Path]:
        """Every folder of DST (label files and the COCO JSON may lie beside the images or apart)."""
        folders = {self.dst}
        for root, dirs, _ in os.walk(self.dst):  # links are not followed: --link's targets are SRC's
            folders.update(Path(root) / d for d in dirs)
        return folders


def _rel(info: DatasetInfo, item: Item) -> str:
    try:
        return FORMATS[info.kind].image_rel(info, item)
    except ValueError:
        raise UsageError(
            f"{item.image}: the image lies outside the dataset folder {info.root}; augkit writes DST "
            "as a copy of SRC's layout, so every image must be inside SRC"
        ) from None


def _splits_to_augment(info: DatasetInfo, asked: list[str] | None) -> list[str]:
    names = list(info.splits)
    if asked:
        unknown = [s for s in asked if s not in info.splits]
        if unknown:
            raise UsageError(
                f"{info.root}: no split named {', '.join(map(repr, unknown))} (the dataset has: {', '.join(names)})"
            )
        return list(asked)
    if "train" in info.splits:
        return ["train"]
    trains = [s for s in names if s.lower().startswith("train")]  # COCO's train2017
    if len(trains) == 1:
        return trains
    if len(names) == 1:
        return names
    raise UsageError(
        f"{info.root}: the dataset has splits {', '.join(names)} and none is called train: "
        "name the ones to augment with --augment-splits (the others are copied)"
    )


def _object_classes(info: DatasetInfo, item: Item) -> Counter:
    """Objects per class id of one image (for per_class); a file that cannot be read counts none
    (its worker reports it)."""
    try:
        labels = FORMATS[info.kind].read(info, item)
    except (LabelError, ImageError, OSError):
        return Counter()
    return Counter(o.cls for o in labels.objects)


def copies_per_image(objects: dict[str, Counter], per_class: int, seed: int) -> tuple[dict[str, int], dict[int, int]]:
    """Augmented copies per image so that every class reaches ``per_class`` objects (detection).

    Counting objects, originals included: while a class is below the target, the class furthest
    below it (fewest objects; ties by class id) gets one more copy of one of the images that
    contain it, taken in turn in an order drawn from the seed. A copy counts every object of its
    image, so classes that share images with rare ones grow too, and a class already at the target
    is never topped up on its own. Objects a copy later drops (moved out of the frame) are not
    foreseen: the counts are of source objects. Returns (copies per image, objects per class after).
    """
    counts: Counter = Counter()
    holders: dict[int, list[str]] = {}
    for rel, c in objects.items():
        counts.update(c)
        for cls in c:
            holders.setdefault(cls, []).append(rel)
    for cls in holders:
        holders[cls].sort(key=lambda r: derive_seed(seed, r, cls, salt="per-class"))  # sorts now: with this cls
    copies = dict.fromkeys(objects, 0)
    turn = dict.fromkeys(holders, 0)
    heap = [(counts[cls], cls) for cls in holders if counts[cls] < per_class]
    heapq.heapify(heap)
    while heap:  # each round adds >= 1 object to the class it serves: it ends
        n, cls = heapq.heappop(heap)
        if n != counts[cls]:  # grew meanwhile (a copy made for another class): look again
            if counts[cls] < per_class:
                heapq.heappush(heap, (counts[cls], cls))
            continue
        rel = holders[cls][turn[cls] % len(holders[cls])]
        turn[cls] += 1
        copies[rel] += 1
        counts.update(objects[rel])
        if counts[cls] < per_class:
            heapq.heappush(heap, (counts[cls], cls))
    return copies, dict(counts)


def _aug_name(rel: str, k: int, fmt: str | None) -> str:
    p = Path(rel)
    ext = OUTPUT_FORMATS[fmt.lower()] if fmt else p.suffix
    parent = "" if p.parent.as_posix() == "." else p.parent.as_posix() + "/"
    return f"{parent}{p.stem}__aug{k}{ext}"


def make_labelled_plan(
    src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe, options: LabelledOptions
) -> LabelledPlan:
    """Every output of a labelled dataset, with its seed. Reads the dataset's index (and, for
    ``per_class``, its label files); writes nothing."""
    options.validate()
    src, dst = Path(src), Path(dst)
    check_dirs(src, dst)
    if not recipe.train:
        raise UsageError(f"recipe {recipe.name!r} has no train section: nothing to augment with")
    if options.labels == "folders":
        raise UsageError("--labels folders is a classification folder: use augkit.offline.run.make_plan")
    # absolute: workers (Ray actors among them) may run in another working folder
    info = open_dataset(src.resolve(), options.labels)
    # a step that cannot move this dataset's labels: a RecipeError now, not one per file
    warnings = build_labelled(recipe, info).warnings
    issues = [
        {"path": _shown(info, e.path), "reason": f"bad labels: {e.reason}",
         "detail": (f"line {e.line}: " if e.line is not None else "") + e.detail}
        for e in FORMATS[info.kind].check(info)
    ]  # fmt: skip
    augmented = _splits_to_augment(info, options.augment_splits)
    modes = {s: ("augment" if s in augmented else "link" if options.link else "copy") for s in info.splits}
    images = {s: [_rel(info, it) for it in items] for s, items in info.splits.items()}
    if not any(images.values()):
        raise UsageError(f"{src}: the {info.kind} dataset has no images")
    copies: dict[str, int] = {}
    counts: dict[str, int] = {}
    n_aug = sum(len(images[s]) for s in augmented)
    each = 0  # copies per augmented image, without --per-class
    # outputs at most: a typo such as --copies 1000000000 is refused before anything is built
    if options.per_class is not None:
        most = options.per_class * max(1, len(info.names)) + len(info.items)
    else:
        assert options.copies is not None  # validate() sets it (default 1) unless --per-class is given
        each = options.copies
        most = each * n_aug + len(info.items)
    if most > MAX_PLANNED_OUTPUTS:
        what = f"--per-class {options.per_class}" if options.per_class is not None else f"--copies {options.copies}"
        raise UsageError(
            f"{what} may ask for up to {most:,} outputs from {len(info.items):,} images, more than the "
            f"{MAX_PLANNED_OUTPUTS:,} one run may plan; ask for fewer"
        )
    if options.per_class is not None:
        if info.kind == "masks":
            raise UsageError(
                "--per-class counts objects (boxes, polygons, keypoints); a mask dataset has none: use --copies"
            )
        objects = {rel: _object_classes(info, it) for s in augmented for rel, it in zip(images[s], info.splits[s])}
        copies, after = copies_per_image(objects, options.per_class, options.seed)
        counts = {_name_of(info.names, c): n for c, n in sorted(after.items())}
        absent = [n for c, n in enumerate(info.names) if not after.get(c)]
        if absent:
            warnings = [*warnings, f"--per-class: no object of {', '.join(absent)} in {', '.join(augmented)}: "
                        "copies cannot add any"]  # fmt: skip
    originals = options.originals or options.per_class is not None  # a balanced split holds its originals
    d = dst.resolve()
    items: list[WorkItem] = []
    links: list[str] = []
    seen: dict[str, str] = {}
    for split, rels in images.items():
        for rel, it in zip(rels, info.splits[split]):
            real = Path(os.path.realpath(it.image))  # realpath: a self-looping link does not raise
            if real == d or d in real.parents:
                links.append(rel)
                continue
            outs: list[tuple[int, str]] = []
            if modes[split] != "augment" or originals:
                outs.append((-1, rel))
            if modes[split] == "augment":
                n = copies.get(rel, 0) if options.per_class is not None else each
                outs += [(k, _aug_name(rel, k, options.format)) for k in range(n)]
            for k, out in outs:
                key = str(Path(out).with_suffix("")).lower()  # a.jpg and a.png would share a label file
                if key in seen and seen[key] != rel:
                    raise UsageError(
                        f"{rel} and {seen[key]} would both write the labels of {Path(out).with_suffix('')}: "
                        "rename one of them"
                    )
                seen[key] = rel
                items.append(WorkItem(rel, out, split, k, derive_seed(options.seed, rel, k, salt="augment")))
    return LabelledPlan(
        src,
        dst,
        recipe,
        options,
        items,
        ignored=[],
        empty_classes=[],
        classes=list(info.names),
        per_class_counts=counts,
        links_into_dst=links,
        info=info,
        split_modes=modes,
        label_issues=issues,
        warnings=list(warnings),
    )


def _shown(info: DatasetInfo, path: str | os.PathLike) -> str:
    """A path as the errors file shows it: relative to SRC where it lies inside."""
    try:
        return Path(path).relative_to(info.root).as_posix()
    except ValueError:
        return str(path)


def augment_labelled(
    src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe | str, labels: str | None = None, **options
) -> AugmentResult:
    """Augment a labelled dataset ``src`` into ``dst`` (the Python API behind ``augkit augment`` on
    one). ``labels`` forces the kind (yolo, coco, voc, masks); by default it is detected."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    kind = resolve_kind(src, labels)
    if kind is None:
        raise UsageError(f"{src}: not a labelled dataset (yolo, coco, voc or masks); use augkit.augment for folders")
    plan = make_labelled_plan(src, dst, recipe, LabelledOptions(labels=kind, **options))
    return run_plan(plan)


# ====================================================================== records


def stats_record(stats: LabelStats, names: list[str]) -> dict:
    """One output's objects, JSON-able: how many were kept, clipped and dropped (by reason), and
    which were clipped or dropped (index in the source's labels, class name, reason)."""

    def entry(o) -> dict:
        return {"object": int(o.index), "class": _name_of(names, o.cls)}

    return {
        **stats.to_record(),
        "clipped_objects": [entry(o) for o in stats.objects if o.fate == "clipped"],
        "dropped_objects": [
            dict(entry(o), reason=o.reason, visibility=round(float(o.visibility), 4))
            for o in stats.objects
            if o.fate == "dropped"
        ],
    }


def _name_of(names: list[str], cls: int) -> str:
    return names[int(cls)] if 0 <= int(cls) < len(names) else str(cls)


def label_totals(rows: list[dict]) -> dict:
    """Totals over manifest rows: outputs, objects kept/clipped/dropped, drop reasons, outputs left
    without objects. ``objects in`` = kept + clipped + dropped over the augmented outputs."""
    t = {"outputs": len(rows), "augmented": 0, "kept": 0, "clipped": 0, "dropped": 0}
    reasons: dict[str, int] = {}
    for r in rows:
        o = r.get("objects")
        if not isinstance(o, dict) or r.get("copy", -1) < 0:
            continue
        t["augmented"] += 1
        for key in ("kept", "clipped", "dropped"):
            t[key] += int(o.get(key, 0))
        for reason, n in (o.get("dropped_by") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    return {**t, "reasons": dict(sorted(reasons.items()))}


# ====================================================================== the worker


@dataclass
class _Pending:
    """What a worker writes for one output: the image (bytes, or a link target) and its labels."""

    payload: bytes | None
    link_to: Path | None
    item: Item
    labels: Labels
    size: tuple[int, int]
    copy_label_files: list[Path]


def _label_error(item: WorkItem, exc: ImageError) -> ItemResult:
    """A bad label file is reported like a bad image: its file (and line) and the reason."""
    line = getattr(exc, "line", None)
    where = f"{exc.path}:{line}" if line is not None else exc.path
    return bad_item(item, f"bad labels: {exc.reason}", where + (f": {exc.detail}" if exc.detail else ""))


class LabelledTask(AugmentTask):
    """What a worker does with one image of a labelled dataset: read it and its labels, augment
    both with the item's seed, write the image and its label file (or copy/link them unchanged)."""

    preload = (*AUGMENT_PRELOAD, "augkit.offline.labelled")

    def __init__(
        self,
        src: Path,
        dst: Path,
        recipe_text: str,
        recipe_source: str,
        settings: TaskSettings,
        info: DatasetInfo,
        link: bool = False,
    ):
        super().__init__(src, dst, recipe_text, recipe_source, settings)
        self.info, self.link = info, link
        # the base's ``_aug`` (an Augmenter) stays None: this task moves labels with the pixels
        self._pipeline: LabelledPipeline | None = None
        self._items: dict[str, Item] | None = None
        self._last_labels: tuple[str, Labels] | None = None  # the last source's parsed labels (_labels)

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _pipeline=None, _items=None, _last_labels=None)

    def setup(self) -> None:
        if self._pipeline is None:
            self._pipeline = build_labelled(parse_recipe(self.recipe_text, self.recipe_source), self.info)
            self._items = {_rel(self.info, it): it for it in self.info.items}

    @property
    def fmt(self) -> LabelFormat:
        return FORMATS[self.info.kind]

    def _make(self, item: WorkItem):
        t0 = time.perf_counter()
        self.setup()
        out_path = self.dst / item.out
        if len(os.fsencode(out_path.name)) > NAME_MAX:
            return bad_item(item, "name too long", f"output name {out_path.name!r} is over {NAME_MAX} bytes; rename it")
        assert self._items is not None  # setup() built it
        it = self._items[item.src]
        try:
            data, img = self._decoded(item.src, Path(it.image))  # (data.yaml may name images outside SRC)
        except ImageError as exc:
            return bad_item(item, exc.reason, exc.detail)
        size = (int(img.shape[1]), int(img.shape[0]))
        try:
            mismatch = check_item_size(it, size)
            if mismatch is not None:
                raise mismatch
            labels = self._labels(item.src, it, size)
        except LabelError as exc:
            return _label_error(item, exc)
        source = self._source_record(item.src)
        assert source is not None  # _decoded just read item.src and kept its record
        rec: ItemResult = {
            "status": Status.OK,
            "item": item,
            "transforms": [],
            "width": size[0],
            "height": size[1],
            "source": source,  # a re-run remakes outputs of a changed image
        }
        if item.copy < 0:
            link_to = Path(it.image).resolve() if self.link else None
            files = list(self.fmt.label_paths(self.info, it))
            pending = _Pending(None if link_to else data, link_to, it, labels, size, files)
            if self.link:
                rec["linked"] = True
        else:
            try:
                out, out_labels, stats, rec["transforms"], rec["redraws"], rec["unchanged"] = self._augment_both(
                    img, labels, item.seed
                )
            except LabelError as exc:
                return _label_error(item, exc)
            except Exception as exc:  # noqa: BLE001 - an op that fails on this image: report the file
                return bad_item(item, "augment failed", f"{type(exc).__name__}: {exc}")
            rec["objects"] = stats_record(stats, self.info.names)
            try:
                payload = encode_image(out, out_path.suffix, quality=self.settings.quality)
            except Exception as exc:  # noqa: BLE001 - ImageError or cv2.error
                return bad_item(
                    item, "encode failed", f"{out.shape[1]}x{out.shape[0]} image to {out_path.suffix}: {exc}"
                )
            pending = _Pending(payload, None, it, out_labels, (int(out.shape[1]), int(out.shape[0])), [])
        if item.verify:
            return self._verify(item, out_path, pending, rec)
        done: ItemResult = {**rec, "seconds": time.perf_counter() - t0}
        return item, out_path, pending, done

    def _labels(self, src: str, it: Item, size: tuple[int, int]) -> Labels:
        """Parse a source's labels once: its copies are consecutive items (as :meth:`_decoded` reuses
        its pixels), and the pipeline builds new labels, never changing the ones it is given."""
        last = self._last_labels
        if last is not None and last[0] == src:
            return last[1]
        # the size as decoded: a format that does not store it (YOLO) need not read the header again
        labels = self.fmt.read(self.info, it if it.size is not None else replace(it, size=size))
        self._last_labels = (src, labels)
        return labels

    def _augment_both(
        self, img: np.ndarray, labels: Labels, seed: int
    ) -> tuple[np.ndarray, Labels, LabelStats, list[dict], int, bool]:
        """(image, labels, stats, applied steps, redraws, unchanged); ``require_change`` redraws a copy
        whose pixels equal its source's, as for a classification folder."""
        assert self._pipeline is not None  # _make ran setup()
        tries = MAX_REDRAWS + 1 if self.settings.require_change else 1
        for attempt in range(tries):
            out, out_labels, stats, applied = self._pipeline(img.copy(), labels, redraw_seed(seed, attempt))
            unchanged = out.shape == img.shape and bool((out == img).all())
            if not unchanged:
                break
        return out, out_labels, stats, applied, attempt, unchanged

    def _verify(self, item: WorkItem, out_path: Path, pending: _Pending | bytes, rec: ItemResult) -> ItemResult:
        """An output found without a manifest row (a killed run): kept if it is what this run would
        write, and its label file is written again (the run may have died before or while writing it).
        ``pending`` is what this task's ``_make`` made (the base class's takes its bare image bytes)."""
        assert isinstance(pending, _Pending)
        try:
            same = (
                os.readlink(out_path) == str(pending.link_to)
                if pending.link_to is not None
                else (not out_path.is_symlink() and out_path.read_bytes() == pending.payload)
            )
        except OSError:
            same = False
        if not same:
            return {"status": Status.EXISTS, "item": item}
        done = self._write(item, out_path, pending, rec, image=False)
        if done.get("status") != Status.OK:
            return done
        return {**done, "verified": True}

    def _write(
        self, item: WorkItem, out_path: Path, pending: _Pending | bytes, rec: ItemResult, image: bool = True
    ) -> ItemResult:
        """The image, then its label file (the format's writer), each atomically (fsync, rename). This
        runs in the writer thread while the next item is made (``iter_items``/``run_chunk``), so the two
        fsyncs wait there, not on the core. The result (and so the manifest row) comes back only once
        both are in place; an image found without a row by a resumed run is verified and its label file
        written again (:meth:`_verify`). ``pending`` is what this task's ``_make`` made (the base class's
        takes its bare image bytes)."""
        assert isinstance(pending, _Pending)
        try:
            if image:
                self._place(out_path, pending.link_to, pending.payload)  # makes the folder
            rec["label_record"] = self._write_labels(item, pending)
        except OSError as exc:
            return write_failed(item, out_path, exc)
        return rec

    def _write_labels(self, item: WorkItem, pending: _Pending) -> dict:
        record = self.fmt.write(self.info, self.dst, pending.item, item.out, pending.labels, pending.size)
        for f in pending.copy_label_files:  # unchanged labels: the source's own bytes (or a link)
            self._place(self.dst / Path(f).relative_to(self.info.root), f)
        return record

    def _place(self, path: Path, source: Path | None, payload: bytes | None = None) -> None:
        """Write ``payload`` to ``path``, or put there a copy of (``link``: a symbolic link to) ``source``;
        atomically either way (a temp name, then ``os.replace``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if payload is not None:
            atomic_write_bytes(path, payload)
            return
        assert source is not None  # no payload: an unchanged original or label file, placed from its source
        if self.link:
            atomic_symlink(Path(source).resolve(), path)
        else:
            atomic_write_bytes(path, Path(source).read_bytes())
