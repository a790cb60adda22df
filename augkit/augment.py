"""Offline augmentation of an image folder: a *plan* (work items with their seeds) and its
execution by an executor, with an atomic, resumable output folder and a manifest.

Output layout: ``DST/<same relative folder>/<stem>__aug<k><ext>`` for copy ``k`` (0-based);
``DST/manifest.jsonl`` (one row per output), ``DST/errors.jsonl`` (one row per skipped input),
``DST/augkit-run.yaml`` (resolved settings and recipe). While running, finished rows are
appended to the hidden journal ``DST/.augkit-journal.jsonl`` so a killed run can resume.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import yaml

from . import __version__
from .errors import EXIT_OK, EXIT_SKIPPED, AugkitError, ImageError, UsageError
from .images import (DEFAULT_MAX_PIXELS, DECODE_POLICY, OUTPUT_FORMATS, atomic_write_bytes, atomic_write_text,
                     encode_image, read_bytes, decode_image, scan_folder)
from .recipe import Recipe, parse_recipe
from .seeding import derive_seed

MANIFEST, ERRORS, RUNFILE, JOURNAL = "manifest.jsonl", "errors.jsonl", "augkit-run.yaml", ".augkit-journal.jsonl"


@dataclass
class AugmentOptions:
    copies: int | None = None  # default 1 unless per_class is given
    per_class: int | None = None
    seed: int = 0
    workers: int | None = None
    originals: bool = False
    format: str | None = None  # jpg | png | webp | bmp; None keeps each source's format
    quality: int = 95
    overwrite: bool = False
    strict: bool = False
    dry_run: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    engine: str = "local"

    def validate(self) -> None:
        if self.copies is None and self.per_class is None:
            self.copies = 1
        if self.copies is not None and self.per_class is not None:
            raise UsageError("--copies and --per-class are exclusive: --per-class decides the copies per image")
        if self.per_class is None and (self.copies is None or self.copies < 1):
            raise UsageError(f"--copies must be >= 1, got {self.copies}")
        if self.per_class is not None and self.per_class < 1:
            raise UsageError(f"--per-class must be >= 1, got {self.per_class}")
        if self.format is not None and self.format.lower() not in OUTPUT_FORMATS:
            raise UsageError(f"--format {self.format!r} is not supported (allowed: {', '.join(OUTPUT_FORMATS)})")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be in [1, 100], got {self.quality}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class WorkItem:
    src: str  # path relative to SRC (posix)
    out: str  # path relative to DST (posix)
    cls: str
    copy: int  # copy index; -1 for a copy of the original
    seed: int  # the sample seed, derived from (seed, src, copy)
    verify: bool = False  # the output exists without a manifest row: keep it only if it is byte-identical


@dataclass
class Plan:
    src: Path
    dst: Path
    recipe: Recipe
    options: AugmentOptions
    items: list[WorkItem]
    ignored: list[str]
    empty_classes: list[str]
    classes: list[str]
    per_class_counts: dict[str, int] = field(default_factory=dict)


def _check_dirs(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d:
        raise UsageError(f"output folder {dst} is the input folder: choose another DST")
    if s in d.parents:
        raise UsageError(f"output folder {dst} is inside the input folder {src}: augkit would read its own "
                         "outputs; choose a DST outside SRC")
    if d in s.parents:
        raise UsageError(f"input folder {src} is inside the output folder {dst}: choose a DST that does not "
                         "contain SRC")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"output {dst} exists and is not a folder")


def make_plan(src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe, options: AugmentOptions) -> Plan:
    """Every output to produce, with its seed. Pure: reads the folder listing, writes nothing."""
    options.validate()
    src, dst = Path(src), Path(dst)
    _check_dirs(src, dst)
    if not recipe.train:
        raise UsageError(f"recipe {recipe.name!r} has no train section: nothing to augment with")
    scan = scan_folder(src)
    if not scan.items:
        raise UsageError(f"{src}: no images found (looked for {', '.join(sorted({'.jpg', '.png', '.webp', '.bmp', '.tif'}))} "
                         "in the folder and its class folders)")
    by_class: dict[str, list[str]] = defaultdict(list)
    for rel, cls in scan.items:
        by_class[cls].append(rel)
    copies_of: dict[str, int] = {}
    originals = options.originals
    counts: dict[str, int] = {}
    if options.per_class is not None:
        originals = True  # a balanced folder holds the originals plus the top-up
        for cls, rels in by_class.items():
            need = max(0, options.per_class - len(rels))
            base, extra = divmod(need, len(rels))
            for i, rel in enumerate(rels):
                copies_of[rel] = base + (1 if i < extra else 0)
            counts[cls] = len(rels) + need
    else:
        copies_of = {rel: options.copies for rel, _ in scan.items}
    items: list[WorkItem] = []
    seen: dict[str, str] = {}
    for rel, cls in scan.items:
        p = Path(rel)
        ext = OUTPUT_FORMATS[options.format.lower()] if options.format else p.suffix
        stem = p.stem
        parent = p.parent.as_posix()
        outs = []
        if originals:
            outs.append((-1, f"{stem}{p.suffix}"))
        outs += [(k, f"{stem}__aug{k}{ext}") for k in range(copies_of[rel])]
        for k, name in outs:
            out = name if parent == "." else f"{parent}/{name}"
            if out.lower() in seen:  # a.jpg and a.png both asked for a__aug0.jpg
                name = f"{stem}_{p.suffix.lstrip('.').lower()}{name[len(stem):]}"
                out = name if parent == "." else f"{parent}/{name}"
            if out.lower() in seen:
                raise UsageError(f"{rel} and {seen[out.lower()]} would both write {out}")
            seen[out.lower()] = rel
            items.append(WorkItem(rel, out, cls, k, derive_seed(options.seed, rel, k, salt="augment")))
    return Plan(src, dst, recipe, options, items, scan.ignored, scan.empty_classes, scan.classes, counts)


class AugmentTask:
    """What a worker does with one item: read SRC file, augment with the item's seed, write DST file."""

    def __init__(self, src: Path, dst: Path, recipe_text: str, recipe_source: str, options: AugmentOptions):
        self.src, self.dst = Path(src), Path(dst)
        self.recipe_text, self.recipe_source, self.options = recipe_text, recipe_source, options
        self._aug = None
        self._last = None  # (src, bytes, decoded image) of the last source

    def setup(self) -> None:
        if self._aug is None:
            self._aug = parse_recipe(self.recipe_text, self.recipe_source).build()

    def _decoded(self, src: str, path: Path):
        """Decode once per source: the copies of one image are consecutive work items, so the
        last decoded image is reused (each executor hands a worker consecutive items in chunks)."""
        last = self._last
        if last is not None and last[0] == src:
            return last[1], last[2]
        self._last = None
        data = read_bytes(path)
        img = decode_image(data, path, max_pixels=self.options.max_pixels)
        self._last = (src, data, img)
        return data, img

    def __call__(self, item: WorkItem) -> dict:
        t0 = time.perf_counter()
        path = self.src / item.src
        out_path = self.dst / item.out
        try:
            data, img = self._decoded(item.src, path)
        except ImageError as exc:
            return {"status": "bad", "item": item, "reason": exc.reason, "detail": exc.detail}
        applied: list = []
        if item.copy < 0:
            payload = data  # the original, byte for byte
        else:
            self.setup()
            out, applied = self._aug(img.copy(), item.seed)  # the cached image stays pristine
            payload = encode_image(out, out_path.suffix, quality=self.options.quality)
        if item.verify:
            try:
                same = out_path.read_bytes() == payload
            except OSError:
                same = False
            if not same:
                return {"status": "exists", "item": item}
            return {"status": "ok", "item": item, "transforms": applied, "width": int(img.shape[1]),
                    "height": int(img.shape[0]), "verified": True}
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out_path, payload)
        except OSError as exc:
            return {"status": "fatal", "item": item, "reason": "write failed",
                    "detail": f"{out_path}: {exc.strerror or exc}"}
        return {"status": "ok", "item": item, "transforms": applied, "width": int(img.shape[1]),
                "height": int(img.shape[0]), "seconds": time.perf_counter() - t0}


@dataclass
class AugmentResult:
    plan: Plan
    written: int = 0
    already_done: int = 0
    bad: list[dict] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # outputs present but not from these settings
    fatal: str | None = None
    aborted: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        if self.fatal or self.aborted:
            return 1
        return EXIT_SKIPPED if (self.bad or self.existing) else EXIT_OK

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _manifest_row(plan: Plan, item: WorkItem, res: dict) -> dict:
    import albumentations

    return {"source": item.src, "output": item.out, "class": item.cls, "copy": item.copy,
            "kind": "original" if item.copy < 0 else "augmented", "seed": plan.options.seed,
            "sample_seed": item.seed, "transforms": res.get("transforms", []),
            "width": res.get("width"), "height": res.get("height"),
            "recipe": plan.recipe.name, "recipe_hash": plan.recipe.hash,
            "augkit": __version__, "albumentations": albumentations.__version__}


def _read_rows(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
    except FileNotFoundError:
        pass
    return rows


def _done_rows(plan: Plan) -> dict[str, dict]:
    """Rows of outputs finished earlier with the same recipe and seed, keyed by output path."""
    rows = {}
    for r in _read_rows(plan.dst / MANIFEST) + _read_rows(plan.dst / JOURNAL):
        if (r.get("recipe_hash") == plan.recipe.hash and r.get("seed") == plan.options.seed
                and (plan.dst / r.get("output", "\0")).is_file()):
            rows[r["output"]] = r
    return rows


def run_plan(plan: Plan, *, executor=None, on_progress: Callable[[dict], None] | None = None,
             on_start: Callable[[int], None] | None = None) -> AugmentResult:
    """Execute a plan: skip finished work, write the rest, then the manifest and errors files."""
    from .executors import get_executor

    opts = plan.options
    result = AugmentResult(plan, dry_run=opts.dry_run)
    done = _done_rows(plan) if plan.dst.exists() and not opts.overwrite else {}
    todo: list[WorkItem] = []
    for item in plan.items:
        if item.out in done:
            result.already_done += 1
        elif (plan.dst / item.out).exists() and not opts.overwrite:
            # e.g. finished by a killed run before its row reached the journal: recompute and compare
            todo.append(replace(item, verify=True))
        else:
            todo.append(item)
    if opts.dry_run:
        result.todo = todo  # type: ignore[attr-defined]
        return result
    plan.dst.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(plan)
    _write_runfile(plan)
    executor = executor or get_executor(opts.engine, workers=opts.workers)
    task = AugmentTask(plan.src, plan.dst, plan.recipe.text, plan.recipe.source, opts)
    rows = dict(done)
    t0 = time.perf_counter()
    if on_start:
        on_start(len(todo))
    journal = open(plan.dst / JOURNAL, "a", encoding="utf-8")
    try:
        for res in executor.run(task, todo):
            item = res["item"]
            if res["status"] == "ok":
                row = _manifest_row(plan, item, res)
                rows[item.out] = row
                journal.write(json.dumps(row, ensure_ascii=False) + "\n")
                journal.flush()
                if res.get("verified"):
                    result.already_done += 1
                else:
                    result.written += 1
            elif res["status"] == "exists":
                result.existing.append(item.out)
            elif res["status"] == "bad":
                result.bad.append({"path": item.src, "reason": res["reason"], "detail": res["detail"]})
                if opts.strict:
                    result.aborted = f"{plan.src / item.src}: {res['reason']} ({res['detail']}) [--strict]"
                    break
            else:
                result.fatal = res["detail"]
                break
            if on_progress:
                on_progress(res)
    finally:
        journal.close()
        result.seconds = time.perf_counter() - t0
        _finalize(plan, result, rows)
    return result


_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def _remove_stale_temps(plan: Plan) -> None:
    """Temp files of a killed run (``.<name>.<hex8>.tmp``, never an output) are removed on resume."""
    for folder in {(plan.dst / it.out).parent for it in plan.items} | {plan.dst}:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if _TEMP.match(e.name) and e.is_file(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass


def _dedupe_bad(bad: list[dict]) -> list[dict]:
    seen, out = set(), []
    for b in bad:
        if b["path"] not in seen:
            seen.add(b["path"])
            out.append(b)
    return out


def _finalize(plan: Plan, result: AugmentResult, rows: dict[str, dict]) -> None:
    """Write manifest and errors atomically; drop the journal once its rows are in the manifest."""
    result.bad = _dedupe_bad(result.bad)
    order = {it.out: i for i, it in enumerate(plan.items)}
    ordered = sorted(rows.values(), key=lambda r: order.get(r["output"], len(order)))
    try:
        atomic_write_text(plan.dst / MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
        errors = [dict(b, kind="bad input") for b in result.bad]
        errors += [{"path": o, "reason": "output exists", "detail": "not made with this recipe and seed; "
                    "use --overwrite to replace", "kind": "existing output"} for o in result.existing]
        atomic_write_text(plan.dst / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
        (plan.dst / JOURNAL).unlink(missing_ok=True)
    except OSError as exc:
        # Disk full or read-only: the journal (if any) still lets the next run resume.
        result.fatal = result.fatal or f"could not write {MANIFEST}/{ERRORS} in {plan.dst}: {exc.strerror or exc}"


def _write_runfile(plan: Plan) -> None:
    opts = asdict(plan.options)
    settings = {"augkit": __version__, "source": str(plan.src), "destination": str(plan.dst),
                "decode_policy": DECODE_POLICY, "options": opts, "recipe_hash": plan.recipe.hash,
                "recipe": plan.recipe.resolved()}
    atomic_write_text(plan.dst / RUNFILE, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))


def augment(src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe | str, **options) -> AugmentResult:
    """Augment ``src`` into ``dst`` (the Python API behind ``augkit augment``)."""
    from .recipe import load_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    plan = make_plan(src, dst, recipe, AugmentOptions(**options))
    return run_plan(plan)
