"""augkit augment: layout, manifest, determinism across workers, resume after kill, bad inputs, safety."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _imgs import class_folder, photo, write
from typer.testing import CliRunner

from augkit.cli import app
from augkit.io.images import read_image
from augkit.offline import task as taskmod
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.recipe.api import load_recipe

runner = CliRunner()


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def images(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in files(root).items() if not k.endswith((".jsonl", ".yaml"))}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def src(tmp_path):
    return class_folder(tmp_path / "src", per_class=3)


def run(src, dst, **kw):
    plan = make_plan(src, dst, load_recipe(kw.pop("recipe", "default")), AugmentOptions(**kw))
    return run_plan(plan)


def test_layout_names_and_manifest(src, tmp_path):
    dst = tmp_path / "dst"
    r = run(src, dst, copies=2, workers=1)
    assert r.exit_code == 0 and r.written == 18
    assert sorted(images(dst)) == sorted(
        f"{c}/{c}{i}__aug{k}{'.jpg' if i % 2 == 0 else '.png'}"
        for c in ("cat", "coffee", "rocket")
        for i in range(3)
        for k in range(2)
    )
    m = rows(dst / "manifest.jsonl")
    assert len(m) == 18 and {r["output"] for r in m} == set(images(dst))
    row = m[0]
    for key in (
        "source",
        "output",
        "class",
        "copy",
        "seed",
        "sample_seed",
        "transforms",
        "recipe_hash",
        "augkit",
        "albumentations",
    ):
        assert key in row
    assert row["class"] == "cat" and row["source"] == "cat/cat0.jpg"
    assert any(t["params"] for r in m for t in r["transforms"])  # sampled parameters are recorded
    assert (dst / "augkit-run.yaml").is_file() and (dst / "errors.jsonl").read_text() == ""
    # outputs are real, changed images of the same size
    a, b = read_image(src / "cat/cat1.png"), read_image(dst / "cat/cat1__aug0.png")
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_copies_differ_from_each_other(src, tmp_path):
    run(src, tmp_path / "d", copies=4, workers=1)
    outs = [(tmp_path / "d" / f"cat/cat1__aug{k}.png").read_bytes() for k in range(4)]
    assert len(set(outs)) == 4


def test_byte_identical_at_any_worker_count(src, tmp_path):
    run(src, tmp_path / "w1", copies=2, seed=7, workers=1)
    run(src, tmp_path / "w2", copies=2, seed=7, workers=2)
    run(src, tmp_path / "w3", copies=2, seed=7, workers=3)
    a, b, c = images(tmp_path / "w1"), images(tmp_path / "w2"), images(tmp_path / "w3")
    assert a == b == c
    assert rows(tmp_path / "w1/manifest.jsonl") == rows(tmp_path / "w2/manifest.jsonl")
    run(src, tmp_path / "s8", copies=2, seed=8, workers=2)
    other = images(tmp_path / "s8")
    assert sum(other[k] != a[k] for k in a) >= len(a) - 2  # another seed: other pictures


def test_identical_rerun_does_nothing_and_existing_is_never_overwritten(src, tmp_path):
    dst = tmp_path / "dst"
    run(src, dst, copies=1, workers=1)
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    r = run(src, dst, copies=1, workers=1)
    assert r.written == 0 and r.already_done == 9 and r.exit_code == 0
    assert before == {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    # another seed must not silently replace outputs made with seed 0
    r = run(src, dst, copies=1, seed=1, workers=1)
    assert r.written == 0 and len(r.existing) == 9 and r.exit_code == 3
    assert before == {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    assert "output exists" in (dst / "errors.jsonl").read_text()
    r = run(src, dst, copies=1, seed=1, workers=1, overwrite=True)
    assert r.written == 9 and r.exit_code == 0


def test_per_class_tops_up_to_n(tmp_path):
    src = tmp_path / "src"
    class_folder(src, per_class=2, classes=("cat",))
    class_folder(src, per_class=5, classes=("coffee",))
    r = run(src, tmp_path / "dst", per_class=7, workers=1)
    assert r.exit_code == 0
    count = lambda c: len(list((tmp_path / "dst" / c).iterdir()))
    assert count("cat") == 7 and count("coffee") == 7  # originals + augmented
    assert (tmp_path / "dst/cat/cat0.jpg").read_bytes() == (src / "cat/cat0.jpg").read_bytes()


def test_flat_folder_and_non_ascii_names(tmp_path):
    src = tmp_path / "flat"
    write(src / "кошка 😺.png", photo())
    write(src / "plain.jpg", photo(offset=3))
    r = run(src, tmp_path / "out", copies=1, workers=2)
    assert r.exit_code == 0
    assert sorted(images(tmp_path / "out")) == ["plain__aug0.jpg", "кошка 😺__aug0.png"]


def test_bad_inputs_are_reported_and_counts_add_up(src, tmp_path):
    bad = src / "cat"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not really a jpeg")
    (bad / "noise.jpg").write_bytes(os.urandom(1000))
    good = (src / "cat/cat0.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(good[: len(good) // 2])
    write(bad / "big.png", photo(size=(300, 300)))
    (bad / ".DS_Store").write_bytes(b"x")
    (bad / "._cat0.jpg").write_bytes(b"x")
    dst = tmp_path / "dst"
    r = run(src, dst, copies=1, workers=2, max_pixels=50_000)
    reasons = {e["path"]: e["reason"] for e in rows(dst / "errors.jsonl")}
    assert reasons == {
        "cat/empty.jpg": "not an image",
        "cat/text.jpg": "not an image",
        "cat/noise.jpg": "not an image",
        "cat/cut.jpg": "truncated",
        "cat/big.png": "too large",
    }
    assert r.written == 9 and r.exit_code == 3
    assert r.written + len(reasons) == len({i.src for i in r.plan.items})  # every input processed or reported
    assert not any(n.startswith(("empty", "text", "noise", "cut", "big")) for n in os.listdir(dst / "cat"))


def test_strict_aborts_and_keeps_finished_work(src, tmp_path):
    (src / "rocket" / "zz_bad.jpg").write_bytes(b"junk")
    dst = tmp_path / "dst"
    r = run(src, dst, copies=1, workers=1, strict=True)
    assert r.exit_code == 1 and r.aborted and "zz_bad.jpg" in r.aborted
    done = rows(dst / "manifest.jsonl")
    assert done and all((dst / d["output"]).stat().st_size > 0 for d in done)
    (src / "rocket" / "zz_bad.jpg").unlink()
    r = run(src, dst, copies=1, workers=1, strict=True)
    assert r.exit_code == 0 and r.already_done == len(done)


def test_disk_full_fails_cleanly_and_resumes(src, tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    real = taskmod.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(taskmod, "atomic_write_bytes", flaky)
    r = run(src, dst, copies=1, workers=1)
    assert r.exit_code == 1 and "No space left" in r.fatal
    written = [p for p in dst.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")]
    assert len(written) == 4 and all(p.stat().st_size > 0 for p in written)
    assert not [p for p in dst.rglob(".*.tmp")]
    monkeypatch.setattr(taskmod, "atomic_write_bytes", real)
    r = run(src, dst, copies=1, workers=1)
    assert r.exit_code == 0 and r.written == 5 and r.already_done == 4


def test_killed_run_resumes_to_the_same_result(tmp_path):
    src = class_folder(tmp_path / "src", per_class=12, size=(160, 120))
    ref, dst = tmp_path / "ref", tmp_path / "dst"
    cmd = [
        sys.executable,
        "-m",
        "augkit",
        "augment",
        str(src),
        str(dst),
        "--copies",
        "4",
        "--workers",
        "2",
        "--seed",
        "3",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(dst.rglob("*__aug*"))) < 20:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL) if False else proc.kill()
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", str(dst)], check=False)  # pool workers of the killed run
    partial = len(list(dst.rglob("*__aug*")))
    assert 0 < partial < 144, "the kill should land mid-run"
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    subprocess.run(cmd[:5] + [str(ref)] + cmd[6:], check=True, capture_output=True)
    assert images(dst) == images(ref)
    assert rows(dst / "manifest.jsonl") == rows(ref / "manifest.jsonl")
    assert not list(dst.rglob(".*.tmp")) and not (dst / ".augkit-journal.jsonl").exists()


def test_cli_refuses_dst_inside_src(src):
    res = runner.invoke(app, ["augment", str(src), str(src / "out")])
    assert res.exit_code == 2 and "inside the input folder" in res.output


def test_cli_bad_recipe_exit_2(src, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  - flip: {direction: sideways}\n")
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "o"), "--recipe", str(bad)])
    assert res.exit_code == 2 and "bad.yaml:2" in res.output and "sideways" in res.output
    assert not (tmp_path / "o").exists()


def test_cli_dry_run_writes_nothing(src, tmp_path):
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "o"), "--copies", "2", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would write 18 files" in res.output and not (tmp_path / "o").exists()


def test_cli_end_to_end_with_summary(src, tmp_path):
    res = runner.invoke(
        app,
        ["augment", str(src), str(tmp_path / "o"), "--copies", "1", "--workers", "2", "--format", "png", "--originals"],
    )
    assert res.exit_code == 0, res.output
    assert "written" in res.output and "manifest" in res.output
    assert len(list((tmp_path / "o").rglob("*__aug0.png"))) == 9
    assert (tmp_path / "o/cat/cat0.jpg").read_bytes() == (src / "cat/cat0.jpg").read_bytes()


def test_cli_options_validated(src, tmp_path):
    for args in (
        ["--copies", "0"],
        ["--copies", "2", "--per-class", "5"],
        ["--format", "gif"],
        ["--quality", "0"],
        ["--recipe", "defualt"],
    ):
        res = runner.invoke(app, ["augment", str(src), str(tmp_path / "o"), *args])
        assert res.exit_code == 2, (args, res.output)
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "o"), "--recipe", "defualt"])
    assert "did you mean 'default'" in res.output


def test_preview_draws_labelled_grid(src, tmp_path):
    out = tmp_path / "p.png"
    res = runner.invoke(app, ["preview", str(src), "-o", str(out), "--images", "3", "--versions", "4"])
    assert res.exit_code == 0, res.output
    grid = read_image(out)
    assert grid.shape[1] >= 5 * 160  # original + 4 versions
    res = runner.invoke(app, ["preview", str(src), "-o", str(tmp_path / "x.png"), "--extremes"])
    assert res.exit_code == 0, res.output
    wide = read_image(tmp_path / "x.png")
    assert wide.shape[1] > grid.shape[1]  # one column per step end


def test_max_side_shrinks_never_enlarges_and_is_recorded(tmp_path):
    src = tmp_path / "src"
    write(src / "cat" / "big.jpg", photo(size=(320, 240)))
    write(src / "cat" / "tall.png", photo(size=(120, 300)))
    write(src / "cat" / "small.png", photo(size=(40, 30)))
    dst = tmp_path / "dst"
    r = run(src, dst, copies=1, workers=1, max_side=100, originals=True)
    assert r.exit_code == 0 and r.written == 6
    sizes = {p: read_image(dst / "cat" / p).shape[:2] for p in ("big__aug0.jpg", "tall__aug0.png", "small__aug0.png")}
    assert sizes == {"big__aug0.jpg": (75, 100), "tall__aug0.png": (100, 40), "small__aug0.png": (30, 40)}
    for name in ("big.jpg", "tall.png", "small.png"):  # originals stay byte for byte
        assert (dst / "cat" / name).read_bytes() == (src / "cat" / name).read_bytes()
    m = {row["output"]: row for row in rows(dst / "manifest.jsonl")}
    assert m["cat/big__aug0.jpg"]["max_side"] == 100 and (
        m["cat/big__aug0.jpg"]["width"],
        m["cat/big__aug0.jpg"]["height"],
    ) == (100, 75)
    assert "max_side: 100" in (dst / "augkit-run.yaml").read_text()
    assert run(src, dst, copies=1, workers=1, max_side=100, originals=True).already_done == 6
    r = run(src, dst, copies=1, workers=1, originals=True)  # another size: outputs are checked, not trusted
    assert sorted(r.existing) == ["cat/big__aug0.jpg", "cat/tall__aug0.png"] and r.written == 0
    assert r.already_done == 4  # the originals and the small image's copy come out byte-identical
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "o"), "--max-side", "0"])
    assert res.exit_code == 2 and "--max-side must be >= 1" in res.output


def test_unchanged_copies_are_counted_and_require_change_redraws_them(tmp_path):
    src = class_folder(tmp_path / "src", per_class=3)
    recipe = tmp_path / "rare.yaml"
    recipe.write_text("train:\n  - flip: {direction: horizontal, p: 0.5}\n")
    kw = dict(recipe=str(recipe), copies=4, format="png", workers=1, seed=3)
    plain = run(src, tmp_path / "plain", **kw)
    same = {
        r["output"]
        for r in rows(tmp_path / "plain/manifest.jsonl")
        if np.array_equal(read_image(tmp_path / "plain" / r["output"]), read_image(src / r["source"]))
    }
    assert plain.unchanged == len(same) > 0
    assert {r["output"] for r in rows(tmp_path / "plain/manifest.jsonl") if r["unchanged"]} == same
    redrawn = run(src, tmp_path / "redrawn", require_change=True, **kw)
    assert redrawn.exit_code == 0 and redrawn.unchanged == 0
    m = {r["output"]: r for r in rows(tmp_path / "redrawn/manifest.jsonl")}
    assert all(m[o]["redraws"] >= 1 for o in same) and all(m[o]["redraws"] == 0 for o in m if o not in same)
    a, b = images(tmp_path / "plain"), images(tmp_path / "redrawn")
    assert {k for k in a if a[k] != b[k]} == same  # copies that changed at the first draw are untouched
    again = run(src, tmp_path / "again", require_change=True, **kw)
    assert images(tmp_path / "again") == b and again.unchanged == 0  # redraws are reproducible
    res = runner.invoke(
        app,
        ["augment", str(src), str(tmp_path / "cli"), "-r", str(recipe), "-n", "4", "-f", "png", "-s", "3", "-w", "1"],
    )
    assert res.exit_code == 0 and f"unchanged copies │ {len(same)} (identical" in res.output


def _task_and_items(src, dst, **kw):
    opts = AugmentOptions(**kw)
    rec = load_recipe("default")
    plan = make_plan(src, dst, rec, opts)
    return taskmod.AugmentTask(plan.src, plan.dst, rec.text, rec.source, opts.settings()), plan.items


def test_chunks_with_overlapped_writes_equal_item_by_item_and_report_each_failure(src, tmp_path, monkeypatch):
    """The pool's run_chunk (each write overlapping the next item) gives the same files and records
    as one item at a time, and a failing write is reported for its own item only."""
    (src / "cat" / "zz_bad.jpg").write_bytes(b"not a jpeg")
    one, items = _task_and_items(src, tmp_path / "one", copies=2, seed=3)
    chunk, items2 = _task_and_items(src, tmp_path / "chunk", copies=2, seed=3)
    a, b = [one(it) for it in items], chunk.run_chunk(items2)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]
    assert [r["status"] for r in b].count("bad") == 2  # zz_bad.jpg, both copies
    assert images(tmp_path / "one") == images(tmp_path / "chunk") and len(images(tmp_path / "chunk")) == 18

    real, calls = taskmod.atomic_write_bytes, {"n": 0}

    def faulty(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("a bug in a write")
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(taskmod, "atomic_write_bytes", faulty)
    (src / "cat" / "zz_bad.jpg").unlink()
    task, items3 = _task_and_items(src, tmp_path / "faulty", copies=1, seed=3)
    res = task.run_chunk(items3[:5])
    assert [r["status"] for r in res] == ["ok", "failed", "fatal", "ok", "ok"]
    assert "ValueError: a bug in a write" in res[1]["detail"] and "No space left" in res[2]["detail"]
    assert [r["item"] for r in res] == items3[:5]
    assert all((tmp_path / "faulty" / r["item"].out).is_file() == (r["status"] == "ok") for r in res)


def test_in_process_run_overlaps_each_write_with_the_next_item_and_records_in_order(src, tmp_path, monkeypatch):
    """With one worker the run stays in this process; each file's write (fsync included) runs in the
    writer thread while the next item is made, one item ahead, and results come back in plan order."""
    import threading

    from augkit.offline.executors.local import LocalExecutor

    task, items = _task_and_items(src, tmp_path / "out", copies=1, seed=3)
    events: list[str] = []
    real_make, real_write = task._make, task._write

    def make(item):
        events.append(f"make {item.out}")
        return real_make(item)

    def write(item, *rest):
        if threading.current_thread() is not threading.main_thread():
            events.append(f"write {item.out} in the writer thread")
        return real_write(item, *rest)

    monkeypatch.setattr(task, "_make", make)
    monkeypatch.setattr(task, "_write", write)
    results = list(LocalExecutor(workers=1).run(task, items))
    assert [r["item"] for r in results] == items and all(r["status"] == "ok" for r in results)
    # every write ran in the writer thread (one by one, they ran here, between the items' work)
    assert sum(e.endswith("in the writer thread") for e in events) == len(items)
