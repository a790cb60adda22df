"""Offline augmentation of an image folder: a *plan* (work items with their seeds) and its
execution by an executor, with an atomic, resumable output folder and its records.

Output layout: ``DST/<same relative folder>/<stem>__aug<k><ext>`` for copy ``k`` (0-based). The
records (manifest history, errors, run history, journal, lock) are described in
:mod:`augkit.offline.dst`; the work on one item in :mod:`augkit.offline.task`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from augkit import __version__
from augkit.errors import EXIT_OK, EXIT_SKIPPED, UsageError
from augkit.io.images import DECODE_POLICY, OUTPUT_FORMATS
from augkit.io.scan import scan_folder
from augkit.labels.formats import detect_kind
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.offline.dst import (
    ERRORS,
    JOURNAL,
    MANIFEST,
    RUNFILE,
    Journal,
    RecordError,
    append_run,
    finalize,
    latest_rows,
    locked,
    remove_stale_temps,
)
from augkit.offline.executors.local import get_executor
from augkit.offline.executors.result import ItemResult, Status
from augkit.offline.task import AugmentTask, TaskSettings, WorkItem
from augkit.recipe.api import Recipe, load_recipe
from augkit.seeding import derive_seed

__all__ = [
    "AugmentOptions",
    "AugmentResult",
    "Plan",
    "WorkItem",
    "augment",
    "make_plan",
    "run_plan",
    "MANIFEST",
    "ERRORS",
    "RUNFILE",
    "JOURNAL",
]


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
    max_side: int | None = None  # shrink so the longer side is <= max_side (never enlarge)
    require_change: bool = False  # redraw copies identical to their source
    labels: str | None = None  # "folders": SRC is a classification folder even if it looks labelled

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
        for name in ("workers", "max_pixels", "max_side"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def settings(self) -> TaskSettings:
        return TaskSettings(self.max_pixels, self.max_side, self.quality, self.require_change)


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
    links_into_dst: list[str] = field(default_factory=list)  # inputs that lead into DST: skipped
    recipe_hash: str = ""  # the recipe's hash, computed once (it is in every manifest row)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason): its images not read
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (class folder, folder it links to): not read twice

    def __post_init__(self) -> None:
        self.recipe_hash = self.recipe_hash or self.recipe.hash

    # Hooks for plans of other inputs (augkit.offline.labelled.LabelledPlan: labelled datasets).
    def make_task(self) -> AugmentTask:
        """What each worker runs."""
        return AugmentTask(self.src, self.dst, self.recipe.text, self.recipe.source, self.options.settings())

    def row_fields(self, item: WorkItem, res: ItemResult) -> dict:
        """Fields a manifest row has beyond the common ones."""
        return {}

    def finish(self, result: AugmentResult) -> None:
        """Called under DST's lock after the manifest is written (a labelled dataset's data.yaml, COCO JSON)."""


def _check_dirs(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d:
        raise UsageError(f"output folder {dst} is the input folder: choose another DST")
    if s in d.parents:
        raise UsageError(
            f"output folder {dst} is inside the input folder {src}: augkit would read its own "
            "outputs; choose a DST outside SRC"
        )
    if d in s.parents:
        raise UsageError(
            f"input folder {src} is inside the output folder {dst}: choose a DST that does not contain SRC"
        )
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"output {dst} exists and is not a folder")


check_dirs = _check_dirs  # public: a labelled dataset's plan checks SRC and DST the same way


def _split_links_into_dst(
    src: Path, dst: Path, items: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Inputs whose real path lies in DST (a symlink in SRC pointing there): augkit must never
    augment its own outputs. Returns (kept items, skipped relative paths)."""
    d = dst.resolve()
    kept: list[tuple[str, str]] = []
    links: list[tuple[str, str]] = []
    for rel, cls in items:
        # os.path.realpath, not Path.resolve: a self-looping link (x.jpg -> x.jpg) makes resolve raise
        # RuntimeError; realpath returns the link, and the worker reports the file ("unreadable")
        real = Path(os.path.realpath(src / rel))
        (links if real == d or d in real.parents else kept).append((rel, cls))
    return kept, [rel for rel, _ in links]


def _copies_per_file(by_class: dict[str, list[str]], options: AugmentOptions) -> tuple[dict[str, int], dict]:
    """Copies for each file; with ``per_class`` the remainder goes to files chosen by the seed."""
    if options.per_class is None:
        assert options.copies is not None  # __post_init__ sets copies to 1 when per_class is not given
        return {rel: options.copies for rels in by_class.values() for rel in rels}, {}
    copies, counts = {}, {}
    for cls, rels in by_class.items():
        need = max(0, options.per_class - len(rels))
        base, extra = divmod(need, len(rels))
        lucky = set(sorted(rels, key=lambda r: derive_seed(options.seed, r, 0, salt="per-class"))[:extra])
        copies.update({rel: base + (rel in lucky) for rel in rels})
        counts[cls] = len(rels) + need
    return copies, counts


def _outputs(rel: str, copies: int, originals: bool, fmt: str | None) -> list[tuple[int, str, str]]:
    """(copy, output name, the name with the source's extension folded in) for one source."""
    p = Path(rel)
    ext = OUTPUT_FORMATS[fmt.lower()] if fmt else p.suffix
    outs = [(-1, f"{p.stem}{p.suffix}")] if originals else []
    outs += [(k, f"{p.stem}__aug{k}{ext}") for k in range(copies)]
    alt = f"{p.stem}_{p.suffix.lstrip('.').lower()}"
    parent = "" if p.parent.as_posix() == "." else p.parent.as_posix() + "/"
    return [(k, parent + name, parent + alt + name[len(p.stem) :]) for k, name in outs]


def _not_labelled(src: Path, labels: str | None) -> None:
    """A labelled dataset is never augmented as class folders unless asked (``labels="folders"``):
    its images/ and labels/ would become two classes and its labels would be lost."""
    if labels not in (None, "folders"):
        raise UsageError(f"labels={labels!r}: use augkit.offline.labelled.augment_labelled for a labelled dataset")
    kind = None if labels == "folders" else detect_kind(src)
    if kind is not None:
        raise UsageError(
            f"{src} looks like a {kind} dataset: augment it with its labels (augkit augment --labels {kind}; "
            "Python: augkit.offline.labelled.augment_labelled), or pass --labels folders (labels='folders') "
            "to treat its sub-folders as classes"
        )


#: The most outputs one plan may hold: a plan keeps one small record per output in memory (~0.5 KB
#: each: 5 million is ~2.5 GB), so a typo such as ``--copies 1000000000`` is refused before it is built.
MAX_PLANNED_OUTPUTS = 5_000_000


def _check_size(
    src: Path, dst: Path, found: list[tuple[str, str]], copies_of: dict[str, int], originals: bool, options
) -> None:
    """Refuse a plan too big to build or to write, before building it: more outputs than
    :data:`MAX_PLANNED_OUTPUTS`, or, for a first run into a new DST with outputs in the sources'
    format and size, more bytes than DST's file system has free (a resumed run skips what is done,
    and a disk that fills during the run still ends it cleanly)."""
    per_source = {rel: copies_of[rel] + originals for rel, _ in found}
    total = sum(per_source.values())
    if total > MAX_PLANNED_OUTPUTS:
        what = f"--per-class {options.per_class}" if options.per_class is not None else f"--copies {options.copies}"
        raise UsageError(
            f"{what} asks for {total:,} outputs from {len(found):,} images, more than the {MAX_PLANNED_OUTPUTS:,} "
            "one run may plan; ask for fewer, or run in parts (one class folder at a time)"
        )
    if options.format is not None or options.max_side is not None or dst.exists():
        return  # outputs of another format or size: their bytes cannot be told from the sources'
    need = 0
    for rel, n in per_source.items():
        try:
            need += os.stat(src / rel).st_size * n
        except OSError:
            continue  # reported per file when read
    probe = next((p for p in (dst, *dst.parents) if p.exists()), None)
    try:
        free = shutil.disk_usage(probe).free if probe is not None else None
    except OSError:
        free = None
    if free is not None and need > free:
        raise UsageError(
            f"the plan would write about {need / 1e9:,.1f} GB ({total:,} outputs of the sources' sizes) "
            f"but {probe} has {free / 1e9:,.1f} GB free; ask for fewer copies, or use --max-side/--format"
        )


def make_plan(src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe, options: AugmentOptions) -> Plan:
    """Every output to produce, with its seed. Pure: reads the folder listing, writes nothing."""
    options.validate()
    src, dst = Path(src), Path(dst)
    _check_dirs(src, dst)
    if not recipe.train:
        raise UsageError(f"recipe {recipe.name!r} has no train section: nothing to augment with")
    _not_labelled(src, options.labels)
    scan = scan_folder(src, exclude=dst)
    found, links = _split_links_into_dst(src, dst, scan.items)
    empty, empty_links = _split_links_into_dst(src, dst, [(c, c) for c in scan.empty_classes])
    links += empty_links  # a class folder that is a link to DST (never entered by the scan)
    if not found:
        raise UsageError(
            f"{src}: no images found (looked for .bmp, .jpg, .png, .tif, .webp in the folder and its class folders)"
            + "".join(f"; {src / rel}: {why}" for rel, why in scan.unreadable)
        )
    by_class: dict[str, list[str]] = defaultdict(list)
    for rel, cls in found:
        by_class[cls].append(rel)
    copies_of, counts = _copies_per_file(by_class, options)
    originals = options.originals or options.per_class is not None  # a balanced folder holds the originals
    _check_size(src, dst, found, copies_of, originals, options)
    items: list[WorkItem] = []
    seen: dict[str, str] = {}
    for rel, cls in found:
        for k, out, alt in _outputs(rel, copies_of[rel], originals, options.format):
            if out.lower() in seen:  # a.jpg and a.png both asked for a__aug0.jpg
                out = alt
            if out.lower() in seen:
                raise UsageError(f"{rel} and {seen[out.lower()]} would both write {out}")
            seen[out.lower()] = rel
            items.append(WorkItem(rel, out, cls, k, derive_seed(options.seed, rel, k, salt="augment")))
    plan = Plan(src, dst, recipe, options, items, scan.ignored, [c for c, _ in empty], scan.classes, counts, links)
    plan.unreadable, plan.aliases = list(scan.unreadable), list(scan.aliases)
    return plan


@dataclass
class AugmentResult:
    plan: Plan
    written: int = 0
    already_done: int = 0
    bad: list[dict] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # outputs present but not from these settings
    stale: list[str] = field(default_factory=list)  # outputs whose source changed since: made again
    unchanged: int = 0  # augmented copies identical to their source (no step changed a pixel)
    fatal: str | None = None
    aborted: str | None = None
    seconds: float = 0.0
    dry_run: bool = False
    todo: list[WorkItem] = field(default_factory=list)  # what a dry run would do
    #: this run's share: items handed to the executor (the progress bar's total), and those of them
    #: that were recomputed and found byte-identical to the output already there (in already_done too)
    to_process: int = 0
    verified: int = 0
    #: outputs of this run not made because their input was bad (``bad`` lists each input once)
    skipped_outputs: int = 0
    #: recipe hash -> (recipe name, outputs) of the augmented outputs DST holds after the run
    recipes: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        """Items of this run accounted for: written + verified + kept existing + skipped."""
        return self.written + self.verified + len(self.existing) + self.skipped_outputs

    @property
    def exit_code(self) -> int:
        if self.fatal or self.aborted:
            return 1
        return EXIT_SKIPPED if (self.bad or self.existing or self.plan.unreadable or self.plan.aliases) else EXIT_OK

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@lru_cache(maxsize=1)
def _albumentations_version() -> str:
    """From the package metadata: importing albumentations just for its version costs ~0.5 s."""
    try:
        return metadata.version("albumentations")
    except metadata.PackageNotFoundError:
        return "unknown"


def _manifest_row(plan: Plan, item: WorkItem, res: ItemResult) -> dict:
    opts = plan.options
    row = {
        "source": item.src,
        "output": item.out,
        "class": item.cls,
        "copy": item.copy,
        "kind": "original" if item.copy < 0 else "augmented",
        "seed": opts.seed,
        "sample_seed": item.seed,
        "transforms": res.get("transforms", []),
        "width": res.get("width"),
        "height": res.get("height"),
        "max_side": opts.max_side,
        "recipe": plan.recipe.name,
        "recipe_hash": plan.recipe_hash,
        "augkit": __version__,
        "albumentations": _albumentations_version(),
    }
    if res.get("source"):  # size, mtime and hash of the source as read: a re-run redoes outputs of a changed source
        row["source_file"] = res["source"]
    if item.copy >= 0:
        row["unchanged"] = bool(res.get("unchanged"))
        if opts.require_change:
            row.update(require_change=True, redraws=int(res.get("redraws", 0)))
    row.update(plan.row_fields(item, res))
    return row


def _same_settings(plan: Plan, row: dict) -> bool:
    """Whether a recorded output was made as this plan would make it."""
    o = plan.options
    if row.get("kind") == "original":  # a byte-for-byte copy, whatever the recipe or the sizes
        return True
    return (
        row.get("recipe_hash") == plan.recipe_hash
        and row.get("seed") == o.seed
        and row.get("max_side") == o.max_side
        and bool(row.get("require_change", False)) == o.require_change
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name over 255 bytes: the task reports it per file
        return False


def _source_changed(plan: Plan, rel: str, row: dict, stats: dict[str, tuple | None]) -> bool:
    """Whether the source of a recorded output differs (size or mtime) from when it was made.
    Rows from an augkit that did not record sources cannot tell: they count as current."""
    made = row.get("source_file")
    if not isinstance(made, dict):
        return False
    if rel not in stats:
        try:
            st = os.stat(plan.src / rel)
            stats[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stats[rel] = None  # gone or unreadable: redo, and the worker reports it
    return stats[rel] != (made.get("size"), made.get("mtime_ns"))


def _todo(plan: Plan, result: AugmentResult) -> list[WorkItem]:
    """The items still to run; finished ones count as already done (unless their source changed
    since: then they are made again), unrecorded outputs are verified."""
    opts = plan.options
    done = {} if opts.overwrite or not plan.dst.is_dir() else latest_rows(plan.dst)
    todo = []
    stats: dict[str, tuple | None] = {}
    for item in plan.items:
        row = done.get(item.out)
        exists = _is_file(plan.dst / item.out) if (row or not opts.overwrite) else False
        if row is not None and exists and _same_settings(plan, row) and _source_changed(plan, item.src, row, stats):
            result.stale.append(item.out)  # made by augkit from an older version of the source: made again
            todo.append(item)
        elif row is not None and exists and _same_settings(plan, row):
            result.already_done += 1
        elif exists and not opts.overwrite:
            # e.g. finished by a killed run before its row reached the journal: recompute and compare
            todo.append(replace(item, verify=True))
        else:
            todo.append(item)
    return todo


def _run_entry(plan: Plan, executor) -> dict:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "augkit": __version__,
        "source": str(plan.src),
        "destination": str(plan.dst),
        "decode_policy": DECODE_POLICY,
        "executor": type(executor).__name__,
        "options": asdict(plan.options),
        "recipe_hash": plan.recipe_hash,
        "recipe": plan.recipe.resolved(),
    }


def run_plan(
    plan: Plan,
    *,
    executor=None,
    on_progress: Callable[[ItemResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> AugmentResult:
    """Execute a plan: skip finished work, write the rest, then the manifest and errors files.

    Raises :class:`~augkit.offline.dst.RecordError` when the output folder cannot be written before any work (exit 1)
    and :class:`UsageError` when another run holds DST; failures during the run end it cleanly
    with ``result.fatal`` set and everything finished so far recorded."""
    opts = plan.options
    result = AugmentResult(plan, dry_run=opts.dry_run)
    if opts.dry_run:
        result.todo = _todo(plan, result)
        return result
    executor = executor or get_executor(opts.engine, workers=opts.workers)
    task = plan.make_task()
    with locked(plan.dst):
        if hasattr(executor, "prepare"):  # e.g. start a pool's fork server while we check what is done
            executor.prepare(task.preload, len(plan.items))
        todo = _todo(plan, result)
        remove_stale_temps({(plan.dst / it.out).parent for it in plan.items} | {plan.dst})
        append_run(plan.dst, _run_entry(plan, executor))
        result.to_process = len(todo)
        if on_start:
            on_start(len(todo))
        _execute(plan, executor, task, todo, result, on_progress)
        result.recipes = recipes_in(plan.dst)
    return result


def recipes_in(dst: Path) -> dict[str, tuple[str, int]]:
    """Recipe hash -> (name, count) of the augmented outputs that DST's manifest records and that
    still exist: more than one means DST mixes outputs of different recipes."""
    out: dict[str, tuple[str, int]] = {}
    for rel, row in latest_rows(dst).items():
        if row.get("kind") == "original" or not _is_file(dst / rel):
            continue
        key = str(row.get("recipe_hash", "?"))
        name, n = out.get(key, (str(row.get("recipe", "?")), 0))
        out[key] = (name, n + 1)
    return out


def _record(plan: Plan, result: AugmentResult, res: ItemResult, journal: Journal, rows: list[dict]) -> None:
    """Account one result; sets ``result.aborted``/``fatal`` when the run must stop."""
    item, status = res["item"], res["status"]
    if status == Status.OK:
        row = _manifest_row(plan, item, res)
        journal.append(row)
        rows.append(row)
        result.unchanged += bool(res.get("unchanged"))
        if res.get("verified"):
            result.already_done += 1
            result.verified += 1
        else:
            result.written += 1
    elif status == Status.EXISTS:
        result.existing.append(item.out)
    elif status in (Status.BAD, Status.FAILED):
        result.skipped_outputs += 1
        result.bad.append({"path": item.src, "reason": res["reason"], "detail": res.get("detail", "")})
        if plan.options.strict:
            result.aborted = f"{plan.src / item.src}: {res['reason']} ({res.get('detail', '')}) [--strict]"
    else:
        result.fatal = res.get("detail") or res.get("reason") or "the run failed"


def _execute(
    plan: Plan,
    executor,
    task: AugmentTask,
    todo: list[WorkItem],
    result: AugmentResult,
    on_progress: Callable[[ItemResult], None] | None,
) -> None:
    rows: list[dict] = []
    t0 = time.perf_counter()
    journal = Journal(plan.dst)
    try:
        for res in executor.run(task, todo):
            _record(plan, result, res, journal, rows)
            if result.aborted or result.fatal:
                break
            if on_progress:
                on_progress(res)
    except RecordError as exc:  # the journal could not be written: stop, record what we can
        result.fatal = str(exc)
    finally:
        journal.close()
        result.seconds = time.perf_counter() - t0
        _finalize(plan, result, rows)


def _dedupe_bad(bad: list[dict]) -> list[dict]:
    seen, out = set(), []
    for b in bad:
        if b["path"] not in seen:
            seen.add(b["path"])
            out.append(b)
    return out


def _finalize(plan: Plan, result: AugmentResult, rows: list[dict]) -> None:
    result.bad = _dedupe_bad(result.bad)
    errors = [dict(b, kind="bad input") for b in result.bad]
    errors += [
        {
            "path": o,
            "reason": "output exists",
            "detail": "not made with these settings; use --overwrite to replace",
            "kind": "existing output",
        }
        for o in result.existing
    ]
    errors += [
        {
            "path": p,
            "reason": "leads into DST",
            "detail": "a link to augkit's own outputs: not read",
            "kind": "ignored input",
        }
        for p in plan.links_into_dst
    ]
    errors += [
        {"path": rel, "reason": why, "detail": "a folder that could not be listed: its images were not read",
         "kind": "unreadable folder"}
        for rel, why in plan.unreadable
    ]  # fmt: skip
    errors += [
        {"path": alias, "reason": "class alias", "detail": f"a link to {target}: its images are written once, under {target}",
         "kind": "ignored input"}
        for alias, target in plan.aliases
    ]  # fmt: skip
    order = {it.out: i for i, it in enumerate(plan.items)}
    try:
        finalize(plan.dst, rows, errors, lambda r: order.get(r["output"], len(order)))
    except RecordError as exc:
        result.fatal = result.fatal or str(exc)
    if not result.fatal:
        plan.finish(result)


def augment(src: str | os.PathLike, dst: str | os.PathLike, recipe: Recipe | str, **options) -> AugmentResult:
    """Augment ``src`` into ``dst`` (the Python API behind ``augkit augment``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    plan = make_plan(src, dst, recipe, AugmentOptions(**options))
    return run_plan(plan)
