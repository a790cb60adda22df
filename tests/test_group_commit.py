"""Group commit (augkit.io.fileio.Staged): outputs are made durable together, one barrier per group,
and renamed into place only after it; a failed barrier leaves nothing half-visible."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from _imgs import class_folder

from augkit.io import fileio
from augkit.io.fileio import Staged, atomic_symlink, atomic_write_bytes, is_temp_name, staging
from augkit.offline.executors.local import LocalExecutor
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.offline.task import STAGE_ITEMS
from augkit.recipe.api import load_recipe

pytestmark = pytest.mark.skipif(not fileio.can_stage(), reason="group commit needs syncfs (Linux)")


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_staged_files_appear_only_after_the_barrier_in_order(tmp_path, monkeypatch):
    barriers, real = [], fileio._barrier
    monkeypatch.setattr(fileio, "_barrier", lambda paths: (barriers.append(len(paths)), real(paths)))
    batch = Staged()
    with staging(batch):
        atomic_write_bytes(tmp_path / "a.txt", b"first")
        atomic_write_bytes(tmp_path / "a.txt", b"second")  # the later write of a name wins, as unstaged
        atomic_symlink(tmp_path / "a.txt", tmp_path / "link.txt")
    assert all(is_temp_name(n) for n in names(tmp_path)) and len(names(tmp_path)) == 3  # nothing visible yet
    batch.commit()
    assert names(tmp_path) == ["a.txt", "link.txt"] and barriers == [3]
    assert (tmp_path / "a.txt").read_bytes() == b"second" and (tmp_path / "link.txt").is_symlink()
    atomic_write_bytes(tmp_path / "b.txt", b"outside")  # outside the block: written, synced, renamed at once
    assert (tmp_path / "b.txt").read_bytes() == b"outside" and barriers == [3]


def test_a_failed_barrier_renames_nothing_and_removes_the_temps(tmp_path, monkeypatch):
    def eio(paths):
        raise OSError(errno.EIO, "Input/output error", str(paths[0]))

    monkeypatch.setattr(fileio, "_barrier", eio)
    batch = Staged()
    with staging(batch):
        for i in range(3):
            atomic_write_bytes(tmp_path / f"{i}.jpg", b"x" * 10)
    with pytest.raises(OSError, match="Input/output error"):
        batch.commit()
    assert names(tmp_path) == []


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_in_process_run_pays_one_barrier_per_group_not_one_fsync_per_file(tmp_path, monkeypatch):
    src = class_folder(tmp_path / "src", per_class=8, size=(64, 48))
    barriers, real_barrier, fsyncs, real_fsync = [], fileio._barrier, [], os.fsync
    monkeypatch.setattr(fileio, "_barrier", lambda paths: (barriers.append(len(paths)), real_barrier(paths)))
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    plan = make_plan(src, tmp_path / "dst", load_recipe("light"), AugmentOptions(copies=2, seed=1))
    r = run_plan(plan, executor=LocalExecutor(workers=1))
    outputs = len(rows(tmp_path / "dst" / "manifest.jsonl"))
    assert r.exit_code == 0 and outputs == len(plan.items) > 2 * STAGE_ITEMS
    assert sum(barriers) == outputs  # every output went through a barrier, in groups of STAGE_ITEMS (+1)
    assert max(barriers) <= STAGE_ITEMS + 1 and len(barriers) <= -(-outputs // STAGE_ITEMS) + 1
    assert len(fsyncs) < len(barriers) + 8  # the records' own syncs only, never one per output
    assert not [p for p in (tmp_path / "dst").rglob(".*.tmp")]


def test_a_failed_barrier_in_a_run_is_one_write_error_and_the_run_resumes(tmp_path, monkeypatch):
    src = class_folder(tmp_path / "src", per_class=8, size=(64, 48))
    real, calls = fileio._barrier, []

    def fails_second(paths):
        calls.append(len(paths))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(paths[0]))
        real(paths)

    monkeypatch.setattr(fileio, "_barrier", fails_second)
    dst = tmp_path / "dst"
    plan = make_plan(src, dst, load_recipe("light"), AugmentOptions(copies=1, seed=1))
    r = run_plan(plan, executor=LocalExecutor(workers=1))
    assert r.exit_code == 1 and "Input/output error" in r.fatal
    done = rows(dst / "manifest.jsonl")
    assert len(done) == calls[0] and all((dst / row["output"]).is_file() for row in done)  # the first group
    images = [p for p in dst.rglob("*.jpg")] + [p for p in dst.rglob("*.png")]
    assert len(images) == len(done) and not [p for p in dst.rglob(".*.tmp")]  # the failed group: nothing
    monkeypatch.setattr(fileio, "_barrier", real)
    again = run_plan(make_plan(src, dst, load_recipe("light"), AugmentOptions(copies=1, seed=1)))
    total = len(plan.items)
    assert again.exit_code == 0 and again.already_done == calls[0] and again.written == total - calls[0]
