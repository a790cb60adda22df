"""augkit augment under faults and hostile inputs: per-file errors instead of crashes,
one-line failures instead of tracebacks, a locked DST, append-only records, no reading of its own
outputs, special files that never block."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _imgs import class_folder, photo, write
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.offline import dst as outdir
from augkit.offline.executors.local import LocalExecutor
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.offline.task import STAGE_ITEMS
from augkit.recipe.api import load_recipe

runner = CliRunner()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(src, dst, executor=None, **kw):
    plan = make_plan(src, dst, load_recipe(kw.pop("recipe", "default")), AugmentOptions(**kw))
    return run_plan(plan, executor=executor)


@pytest.fixture
def src(tmp_path):
    return class_folder(tmp_path / "src", per_class=3)


@pytest.mark.parametrize(
    "executor", [LocalExecutor(workers=1), LocalExecutor(workers=2, adaptive=False)], ids=["in-process", "pool"]
)
def test_an_output_that_cannot_be_encoded_is_a_per_file_error(src, tmp_path, executor):
    tall = np.ascontiguousarray(np.repeat(photo(size=(200, 170)), 100, axis=0))  # 200x17000: webp max is 16383
    write(src / "cat" / "tall.png", tall)
    r = run(src, tmp_path / "d", executor, copies=1, format="webp")
    assert r.exit_code == 3 and r.written == 9
    errors = rows(tmp_path / "d" / "errors.jsonl")
    assert [(e["path"], e["reason"]) for e in errors] == [("cat/tall.png", "encode failed")]
    assert "200x17000" in errors[0]["detail"]


def test_an_output_name_over_255_bytes_is_a_per_file_error_and_the_run_can_finish(src, tmp_path):
    long = "é" * 122 + "ab.png"  # 250 bytes; its output name "é...ab__aug0.png" needs 256
    write(src / "cat" / long, photo())
    dst = tmp_path / "d"
    for _ in range(2):
        r = run(src, dst, copies=1, workers=1)
        assert r.exit_code == 3 and not r.fatal
        errors = rows(dst / "errors.jsonl")
        assert [(e["path"], e["reason"]) for e in errors] == [(f"cat/{long}", "name too long")]
    assert r.already_done == 9 and r.written == 0


def test_read_only_dst_is_one_line_exit_1(src, tmp_path, monkeypatch):
    real = Path.mkdir

    def read_only(self, *a, **kw):
        if "ro" in self.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "ro" / "out")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    assert f"{tmp_path / 'ro' / 'out'}: Read-only file system" in res.output


def test_disk_full_while_recording_progress_stops_cleanly_and_keeps_records(src, tmp_path, monkeypatch):
    real = outdir.Journal.append
    calls = {"n": 0}

    def full(self, row):
        calls["n"] += 1
        if calls["n"] > 5:
            raise outdir.io_error(
                "cannot record progress in", self.path, OSError(errno.ENOSPC, "No space left on device")
            )
        real(self, row)

    monkeypatch.setattr(outdir.Journal, "append", full)
    dst = tmp_path / "d"
    res = runner.invoke(app, ["augment", str(src), str(dst), "--workers", "1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = res.output.replace("\n", "")  # the summary wraps long paths
    assert f"{dst / '.augkit-journal.jsonl'}: No space left on device" in text
    assert len(rows(dst / "manifest.jsonl")) == 5  # everything recorded so far is in the manifest
    monkeypatch.setattr(outdir.Journal, "append", real)
    # the sixth output, and the others committed in its group (augkit.offline.task.STAGE_ITEMS at most),
    # exist without a row: verified and kept, the others written
    r = run(src, dst, copies=1, workers=1)
    assert r.exit_code == 0 and 1 <= r.verified <= STAGE_ITEMS and r.already_done == 5 + r.verified
    assert r.already_done + r.written == 9


def test_run_file_that_cannot_be_written_is_one_line_exit_1(src, tmp_path, monkeypatch):
    real = outdir.atomic_write_text

    def full(path, text):
        if Path(path).name == outdir.RUNFILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(outdir, "atomic_write_text", full)
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "d")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "augkit-run.yaml: No space left on device" in res.output


def test_a_second_run_on_the_same_dst_is_refused_and_touches_nothing(src, tmp_path):
    dst = tmp_path / "d"
    with outdir.locked(dst):
        temp = dst / "cat" / ".cat0__aug0.jpg.0123abcd.tmp"  # the other run's write in flight
        temp.parent.mkdir(parents=True)
        temp.write_bytes(b"half")
        res = runner.invoke(app, ["augment", str(src), str(dst)])
        assert res.exit_code == 2 and "another augkit run is using" in res.output
        assert temp.exists()
        with pytest.raises(UsageError, match="another augkit run"):
            run(src, dst)
    r = run(src, dst, copies=1, workers=1)  # the lock is gone with its holder; stale temps are cleaned
    assert r.exit_code == 0 and not temp.exists() and not (dst / outdir.LOCK).exists()


def test_manifest_and_run_file_keep_the_history(src, tmp_path):
    dst = tmp_path / "d"
    assert run(src, dst, copies=1, workers=1).written == 9
    r = run(src, dst, copies=2, recipe="light", workers=1)  # aug1 is new; aug0 exists: kept
    adopted = r.already_done  # an unchanged copy can be byte-identical under both recipes: recorded again
    assert r.written == 9 and len(r.existing) + adopted == 9 and adopted < 9
    assert run(src, dst, copies=1, recipe="light", workers=1, overwrite=True).written == 9
    m = rows(dst / "manifest.jsonl")
    # nothing removed; the newest row of each output comes last (an adopted output's row is not repeated)
    assert len(m) == 9 + (9 + adopted) + (9 - adopted)
    latest = {}
    for row in m:
        latest[row["output"]] = row["recipe"]
    assert set(latest.values()) == {"light"}
    assert [x["recipe"] for x in m[:9]] == ["default"] * 9  # the first run's rows are still there
    runs = yaml.safe_load((dst / "augkit-run.yaml").read_text())["runs"]
    assert [x["recipe"]["name"] for x in runs] == ["default", "light", "light"]
    assert runs[2]["options"]["overwrite"] is True


def test_links_into_dst_are_never_read(src, tmp_path):
    dst = tmp_path / "d"
    run(src, dst, copies=1, workers=1)
    os.symlink(dst, src / "mirror")  # a class folder that is DST
    os.symlink(dst / "cat", src / "coffee" / "deep")  # a folder inside DST
    os.symlink(dst / "cat" / "cat0__aug0.jpg", src / "rocket" / "evil.jpg")  # one output
    for _ in range(2):
        r = run(src, dst, copies=1, workers=1)
        assert r.exit_code == 0 and r.written == 0 and r.already_done == 9
        assert sorted(r.plan.links_into_dst) == [
            "coffee/deep/cat0__aug0.jpg",
            "coffee/deep/cat1__aug0.png",
            "coffee/deep/cat2__aug0.jpg",
            "mirror",
            "rocket/evil.jpg",
        ]
    assert not list(dst.rglob("*__aug0__aug0*")) and not (dst / "mirror").exists()
    ignored = [e for e in rows(dst / "errors.jsonl") if e["kind"] == "ignored input"]
    assert {e["reason"] for e in ignored} == {"leads into DST"} and len(ignored) == 5


def test_special_files_in_src_are_reported_and_never_block(src, tmp_path):
    os.mkfifo(src / "cat" / "fifo.jpg")
    os.symlink("/dev/zero", src / "cat" / "zero.jpg")
    dst = tmp_path / "d"
    cmd = [sys.executable, "-m", "augkit", "augment", str(src), str(dst), "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    reasons = {e["path"]: e["reason"] for e in rows(dst / "errors.jsonl")}
    assert reasons == {"cat/fifo.jpg": "not a regular file", "cat/zero.jpg": "not a regular file"}


def test_per_class_extra_copies_are_spread_by_the_seed(tmp_path):
    src = class_folder(tmp_path / "src", per_class=8, classes=("cat",))
    picked = []
    for seed in (0, 1, 2):
        plan = make_plan(src, tmp_path / f"d{seed}", load_recipe("default"), AugmentOptions(per_class=11, seed=seed))
        extra = sorted(i.src for i in plan.items if i.copy == 0)
        assert len(extra) == 3 and len(plan.items) == 11
        picked.append(extra)
    assert picked[0] != ["cat/cat0.jpg", "cat/cat1.png", "cat/cat2.jpg"]  # not the alphabetically first
    assert len({tuple(p) for p in picked}) > 1  # another seed, other files
    again = make_plan(src, tmp_path / "d0", load_recipe("default"), AugmentOptions(per_class=11, seed=0))
    assert sorted(i.src for i in again.items if i.copy == 0) == picked[0]


def test_a_refused_run_leaves_no_folders_behind_not_even_parents(tmp_path):
    from augkit.offline.dst import locked

    dst = tmp_path / "a" / "b" / "c"
    try:
        with locked(dst):
            raise KeyboardInterrupt  # refused, or interrupted, before writing anything
    except KeyboardInterrupt:
        pass
    assert not (tmp_path / "a").exists()  # the parents this run created went with it
    keep = tmp_path / "keep"
    (keep / "x").mkdir(parents=True)
    with locked(keep / "x" / "run"):
        (keep / "x" / "run" / "out.txt").write_text("work")
    assert (keep / "x" / "run" / "out.txt").is_file()  # a folder with work in it stays


def test_a_bad_input_with_several_copies_is_counted_per_output_and_listed_once(src, tmp_path):
    (src / "cat" / "zz_bad.jpg").write_bytes(b"not a jpeg")
    r = run(src, tmp_path / "d", copies=2, workers=1)
    assert [b["path"] for b in r.bad] == ["cat/zz_bad.jpg"] and r.skipped_outputs == 2
    assert r.processed == r.to_process  # every output accounted for: the run did not stop
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "e"), "--copies", "2", "--workers", "1"])
    text = " ".join(res.output.replace("│", " ").split())  # the summary table wraps its cells
    assert res.exit_code == 3 and "2 skipped (1 bad input)" in text and "not reached" not in text
