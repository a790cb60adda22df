"""``augkit augment SRC DST``: write augmented copies of an image folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from augkit.commands._common import cli_errors, err, out
from augkit.errors import UsageError
from augkit.io.scan import count_images
from augkit.limits import AUGMENT_PRELOAD, DEFAULT_MAX_PIXELS, MAX_REDRAWS
from augkit.offline.executors.local import ENGINES, WARM_ITEMS, get_executor

if TYPE_CHECKING:
    from augkit.offline.run import AugmentResult

# numpy, OpenCV, albumentations and rich's progress are imported inside the command, after a big
# job has set its workers' imports going (see _warm_up).


@cli_errors
def command(
    src: Path = typer.Argument(..., help="Input folder: class folders (SRC/cat/*.jpg) or a flat folder of images."),
    dst: Path = typer.Argument(..., help="Output folder (created; must not be inside SRC)."),
    recipe: str = typer.Option("default", "--recipe", "-r", help="Built-in recipe name or a recipe .yaml file."),
    copies: Optional[int] = typer.Option(None, "--copies", "-n", help="Augmented copies per image (default: 1)."),
    per_class: Optional[int] = typer.Option(
        None, "--per-class", help="Top every class up to N images (originals included)."
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="One seed decides every random choice."),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-w",
        help="Worker processes for jobs large enough to repay starting them (default: CPU count; small jobs run in this process); with --engine ray, Ray actors (default: the cluster's CPUs).",
    ),
    originals: bool = typer.Option(False, "--originals/--no-originals", help="Also copy each original into DST."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="Output format: jpg, png, webp, bmp (default: keep the source format)."
    ),
    quality: int = typer.Option(95, "--quality", "-q", help="JPEG/WebP quality 1-100."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist."),
    strict: bool = typer.Option(False, "--strict", help="Abort on the first bad input (finished outputs are kept)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be written; write nothing."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", help="Reject images with more pixels (read from the header)."
    ),
    max_side: Optional[int] = typer.Option(
        None,
        "--max-side",
        help="Shrink each image so its longer side is at most N px before the recipe (never enlarges; JPEGs are decoded at reduced size). Originals copied with --originals stay byte for byte.",
    ),
    require_change: bool = typer.Option(
        False,
        "--require-change",
        help=f"Redraw a copy in which no step changed a pixel (an exact duplicate of its source), up to {MAX_REDRAWS} times, from seeds derived from its own; recorded in the manifest.",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="Executor: local (this process, plus a process pool for larger jobs) or ray (Ray Data; needs augkit's ray extra).",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --engine ray: the Ray cluster, auto (the one `ray start` started on this node) or ray://HOST:10001 (default: RAY_ADDRESS, else a running cluster on this node, else a Ray started for this run).",
    ),
    labels: Optional[str] = typer.Option(
        None,
        "--labels",
        help="SRC's kind: yolo, coco, voc, masks (a labelled dataset: labels move with the pixels, DST is the same kind) or folders (class folders). Default: detected from SRC's layout.",
    ),
    link: bool = typer.Option(
        False, "--link", help="Labelled datasets: splits not augmented are linked (symlinks), not copied, into DST."
    ),
    augment_splits: Optional[str] = typer.Option(
        None,
        "--augment-splits",
        help="Labelled datasets: the splits to augment, comma-separated (default: train; the others are copied).",
    ),
) -> None:
    """Write augmented copies of SRC into DST, keeping its class folders.

    Outputs are named <stem>__aug<k>.<ext>. DST also gets manifest.jsonl (append-only: one row per output written, by every run), errors.jsonl (skipped inputs and why) and augkit-run.yaml (the settings of every run). Re-running the same command skips finished work, so an interrupted run resumes. Small jobs run in this process; larger ones also start --workers processes once the work left repays them (the outputs are the same either way).

    Exit codes: 0 all done; 1 the run failed (e.g. disk full); 2 bad options or recipe, or another run is using DST; 3 finished, but some inputs were skipped (see errors.jsonl).
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not supported (allowed: {', '.join(ENGINES)})")
    if address is not None and engine != "ray":
        raise UsageError("--address needs --engine ray")
    # built first: a missing Ray extra fails before any work, and a big local job gets its workers'
    # imports going on another core while this process imports its own and loads the recipe
    executor = get_executor(engine, workers=workers, **({"address": address} if engine == "ray" else {}))
    if not dry_run:
        _warm_up(executor, src, copies)
    from rich.markup import escape as esc
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from augkit.offline.executors.result import ItemResult
    from augkit.offline.labelled import LabelledOptions, make_labelled_plan, resolve_kind
    from augkit.offline.run import AugmentOptions, Plan, make_plan, run_plan
    from augkit.recipe.api import load_recipe

    kind = resolve_kind(src, labels)  # a labelled-looking SRC is never augmented as class folders silently
    if kind is None and (link or augment_splits):
        raise UsageError("--link and --augment-splits need a labelled dataset (--labels yolo|coco|voc|masks)")
    common: dict[str, Any] = dict(
        copies=copies,
        per_class=per_class,
        seed=seed,
        workers=workers,
        originals=originals,
        format=fmt,
        quality=quality,
        overwrite=overwrite,
        strict=strict,
        dry_run=dry_run,
        max_pixels=max_pixels,
        engine=engine,
        max_side=max_side,
        require_change=require_change,
    )
    rec = load_recipe(recipe)
    plan: Plan
    if kind:
        lopts = LabelledOptions(labels=kind, link=link, augment_splits=_split_list(augment_splits), **common)
        lplan = make_labelled_plan(src, dst, rec, lopts)
        err.print(f"{esc(str(src))}: {esc(_inputs(lplan))}")
        for w in lplan.warnings:
            err.print(f"[yellow]warning:[/] {esc(w)}")
        plan = lplan
    else:
        plan = make_plan(src, dst, rec, AugmentOptions(labels=labels, **common))
    for cls in plan.empty_classes:
        err.print(f"[yellow]warning:[/] class folder {esc(str(src / cls))} has no images")
    for alias, target in plan.aliases:
        err.print(
            f"[yellow]warning:[/] class folder {esc(str(src / alias))} is a link to {esc(target)}: "
            f"its images are augmented once, under {esc(target)}"
        )
    if rec.batch is not None:  # mixup/cutmix mix pairs of images in a training batch: nothing to write here
        err.print(
            f"note: the recipe's batch section ({'/'.join(rec.batch.kinds)}) applies in `augkit train` only; "
            "augment writes single images"
        )
    progress = Progress(
        TextColumn("[bold]augment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=dry_run,
    )
    task_id: TaskID | None = None

    def on_start(n: int) -> None:
        nonlocal task_id
        if n:  # nothing to write: no "0/0" bar (the summary says everything was already done)
            task_id = progress.add_task("augment", total=n, rate="")

    def on_progress(res: ItemResult) -> None:
        if task_id is None:
            return
        t = progress.tasks[0]
        rate = f"{t.completed / t.elapsed:.1f} img/s" if t.elapsed else ""
        progress.update(task_id, advance=1, rate=rate)

    with progress:
        result = run_plan(plan, executor=executor, on_start=on_start, on_progress=on_progress)
    _summary(result)
    raise typer.Exit(code=result.exit_code)


def _engine_text(opts) -> str:
    """The engine that ran, as the summary names it."""
    if opts.engine == "ray":
        return "ray (Ray Data actors; --engine local: this machine's processes)"
    n = opts.workers or os.cpu_count() or 1
    return f"local (this process, plus up to {n} worker process(es) when the work repays them)"


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UsageError(f"--augment-splits {text!r}: name at least one split (e.g. train,val)")
    return names


def _inputs(plan) -> str:
    info = getattr(plan, "info", None)  # a labelled dataset: its splits and what happens to each
    if info is None:
        return f"{len({i.src for i in plan.items})} images in {len(plan.classes) or 1} class(es)"
    modes = {"augment": "augmented", "copy": "copied", "link": "linked"}
    splits = ", ".join(f"{s} {len(v)} {modes[plan.split_modes[s]]}" for s, v in info.splits.items())
    return f"{info.kind} dataset: {len(info.items)} images ({splits}), {len(info.names)} classes"


def _warm_up(executor, src: Path, copies: int | None) -> None:
    """When a quick count of SRC says the job will be big, start the local pool's fork server
    now: it imports OpenCV and albumentations for the workers while this process does the same.
    (A --per-class job counts one output per image here; run_plan looks again once it has the plan.)"""
    prepare = getattr(executor, "prepare", None)
    copies = 1 if copies is None else copies
    if prepare is not None and copies >= 1:  # a bad --copies is reported by the plan
        prepare(AUGMENT_PRELOAD, count_images(src, -(-WARM_ITEMS // copies)) * copies)


def _summary(r: AugmentResult) -> None:
    from rich.markup import escape as esc
    from rich.table import Table

    from augkit.offline.dst import ERRORS, MANIFEST

    plan = r.plan
    if r.dry_run:
        todo = [i for i in r.todo if not i.verify]
        check = len(r.todo) - len(todo)
        out.print(
            "dry run: "
            + esc(
                f"would write {len(todo)} files into {plan.dst} "
                f"({r.already_done} already done, {check} existing outputs would be checked and kept)"
            )
        )
        for item in todo[:20]:
            out.print(
                esc(f"  {item.src} -> {item.out}")
                + ("" if item.copy < 0 else f"  (copy {item.copy}, seed {item.seed})")
            )
        if len(todo) > 20:
            out.print(f"  ... and {len(todo) - 20} more")
    t = Table(title="augkit augment", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("recipe", f"{plan.recipe.name} ({plan.recipe.hash})")
    t.add_row(
        "inputs",
        _inputs(plan) + (f", {len(plan.ignored)} other files ignored" if plan.ignored else ""),
    )
    t.add_row("planned outputs", str(len(plan.items)))
    if not r.dry_run:
        t.add_row("engine", _engine_text(plan.options))
        t.add_row("already done", f"{r.already_done - r.verified} (recorded with these settings: not touched)")
        if r.to_process:  # the progress bar's total, accounted for: written + verified + kept + skipped
            parts = [f"{r.written} written in {r.seconds:.1f} s ({r.rate:.1f} img/s)"]
            parts += [f"{r.verified} recomputed and identical (kept)"] if r.verified else []
            parts += [f"{len(r.existing)} existing kept"] if r.existing else []
            if r.skipped_outputs:  # the outputs of bad inputs (each input listed once below)
                inputs = len(r.bad)
                parts += [f"{r.skipped_outputs} skipped ({inputs} bad input{'s' if inputs != 1 else ''})"]
            left = r.to_process - r.processed
            parts += [f"{left} not reached (the run stopped)"] if left > 0 else []
            t.add_row("this run", f"{r.to_process} to process: " + ", ".join(parts))
        else:
            t.add_row("this run", f"nothing to do: all {r.already_done} planned outputs are already done")
    else:
        t.add_row("already done", str(r.already_done))
    if r.stale:
        t.add_row("[yellow]remade", f"{len(r.stale)} (their source changed since they were made)")
    if r.existing:
        t.add_row("[yellow]kept existing", f"{len(r.existing)} (use --overwrite to replace)")
    if not r.dry_run:
        t.add_row(
            "unchanged copies",
            f"{r.unchanged} (identical to their source"
            + (f", after {MAX_REDRAWS} redraws)" if plan.options.require_change else "; --require-change redraws them)")
            if r.unchanged
            else "0",
        )
    if r.bad:
        t.add_row("[red]skipped inputs", str(len(r.bad)))
    if plan.unreadable:
        t.add_row("[red]unreadable folders", f"{len(plan.unreadable)} (their images were not read)")
    if plan.links_into_dst:
        t.add_row("[yellow]links into DST", f"{len(plan.links_into_dst)} not read (augkit never reads its own outputs)")
    if plan.per_class_counts:
        what = "objects per class" if getattr(plan, "info", None) is not None else "per class"
        t.add_row(what, ", ".join(f"{c or '.'}={n}" for c, n in sorted(plan.per_class_counts.items())))
    totals = getattr(plan, "totals", None)  # a labelled dataset: what happened to its objects
    if totals:
        reasons = ", ".join(f"{k} {n}" for k, n in totals["reasons"].items())
        t.add_row(
            "objects",
            f"{totals['kept']} kept, {totals['clipped']} clipped, {totals['dropped']} dropped"
            + (f" ({reasons})" if reasons else "")
            + f" in {totals['augmented']} augmented outputs",
        )
    err.print(t)
    if len(r.recipes) > 1:
        mix = "; ".join(f"{name} ({h[:12]}): {n}" for h, (name, n) in sorted(r.recipes.items(), key=lambda x: -x[1][1]))
        err.print(
            "[yellow]warning:[/] "
            + esc(
                f"{plan.dst} mixes augmented outputs of {len(r.recipes)} recipes ({mix}); training on it mixes "
                "them too. Use a new DST per recipe, or --overwrite to remake every output with this one"
            ),
            soft_wrap=True,
        )
    for b in r.bad[:10]:
        err.print(
            "  [red]skipped[/] "
            + esc(f"{plan.src / b['path']}: {b['reason']}" + (f" ({b['detail']})" if b["detail"] else ""))
        )
    for rel, why in plan.unreadable[:10]:
        err.print("  [red]unreadable folder[/] " + esc(f"{plan.src / rel}: {why}"))
    if len(r.bad) > 10:
        err.print(f"  ... {len(r.bad) - 10} more in {plan.dst / ERRORS}")
    if not r.dry_run:
        err.print(esc(f"manifest: {plan.dst / MANIFEST}   errors: {plan.dst / ERRORS}"))
    if r.aborted:
        err.print(f"[bold red]aborted:[/] {esc(r.aborted)}; finished outputs are kept, fix the input and re-run")
    if r.fatal:
        err.print(f"[bold red]failed:[/] {esc(r.fatal)}; finished outputs are intact, re-run to resume")
