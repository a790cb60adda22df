"""Hostile inputs and faults, round 3: names that are not UTF-8,
unreadable folders, aliased class folders, stale outputs, self-looping links, locks, huge plans,
SIGTERM, a damaged cache, recipes that cannot work, edited ONNX metadata, NaN training, read-only
outputs, and a progressive JPEG cut short. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _digits import digits_folder
from _imgs import class_folder
from typer.testing import CliRunner

from augkit import cli
from augkit.offline.dst import ERRORS, MANIFEST

runner = CliRunner()
FF = b"\xff"  # a byte that is never valid UTF-8 on its own


def invoke(*args) -> object:
    return runner.invoke(cli.app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def digits_ff(tmp_path_factory) -> Path:
    """3 digit classes of 4 images, plus d0/<0xFF>0.png (a copy of d0/0_00.png)."""
    root = digits_folder(tmp_path_factory.mktemp("ff") / "data", per_class=4, size=32)
    shutil.copyfile(root / "d0" / "0_00.png", os.fsencode(root / "d0") + b"/" + FF + b"0.png")
    return root


@pytest.fixture(scope="module")
def run_ff(digits_ff, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ff") / "run"
    res = invoke(
        "train", digits_ff, "-o", run, "--weights", "none", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return run


# ------------------------------------------------------------------ a. a file name with a 0xFF byte


def test_a_non_utf8_name_is_augmented_and_recorded_with_its_bytes(digits_ff, tmp_path):
    (digits_ff / "d1").joinpath("x").mkdir(exist_ok=True)
    bad = os.fsencode(digits_ff / "d1" / "x") + b"/" + FF + b"junk.jpg"
    Path(os.fsdecode(bad)).write_bytes(b"not an image")
    try:
        dst = tmp_path / "out"
        res = invoke("augment", digits_ff, dst, "--recipe", "digits")
        assert res.exit_code == 3, res.output  # the junk one is reported, the rest done
        assert "Traceback" not in res.output
        made = os.listdir(os.fsencode(dst / "d0"))
        assert FF + b"0__aug0.png" in made  # the output keeps the source's bytes
        (row,) = [r for r in rows(dst / MANIFEST) if r["source"].startswith("d0/\udcff")]
        assert os.fsencode(row["source"]) == b"d0/" + FF + b"0.png"
        (err,) = rows(dst / ERRORS)
        assert os.fsencode(err["path"]) == b"d1/x/" + FF + b"junk.jpg" and err["reason"] == "not an image"
        again = invoke("augment", digits_ff, dst, "--recipe", "digits")  # resumes: nothing redone
        assert again.exit_code == 3 and len(rows(dst / MANIFEST)) == 13
    finally:
        os.unlink(bad)
        os.rmdir(os.path.dirname(bad))


def test_a_non_utf8_name_trains_predicts_and_previews(digits_ff, run_ff, tmp_path):
    assert (run_ff / "best.pt").is_file()
    out = tmp_path / "p.csv"
    res = invoke("predict", run_ff, digits_ff, "-o", out, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert b"/d0/" + FF + b"0.png," in data and data.count(b"\n") == 14  # header + 13 images
    png = os.fsencode(tmp_path) + b"/p" + FF + b".png"
    res = invoke("preview", os.fsencode(digits_ff / "d0") + b"/" + FF + b"0.png", "-o", png)
    assert res.exit_code == 0, res.output
    assert os.path.getsize(png) > 1000


# ------------------------------------------------------------------ b. folders that cannot be listed


@pytest.fixture
def locked_folder(monkeypatch):
    """Make ``os.scandir`` refuse one folder with PermissionError. The tests run as root, where
    chmod 000 does not stop a read, so the refusal a non-root user gets is simulated here."""
    refused: list[str] = []
    real = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda p: refused.append(os.path.realpath(p))


@pytest.fixture
def digits_locked(tmp_path, locked_folder) -> Path:
    """3 digit classes of 4 images; d1/more (2 images) cannot be listed."""
    root = digits_folder(tmp_path / "data", per_class=4, size=32)
    more = root / "d1" / "more"
    more.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copyfile(root / "d1" / "1_00.png", more / name)
    locked_folder(more)
    return root


def test_b_augment_reports_an_unreadable_folder_and_exits_3(digits_locked, tmp_path):
    dst = tmp_path / "out"
    res = invoke("augment", digits_locked, dst, "--recipe", "digits")
    assert res.exit_code == 3, res.output
    assert "unreadable folders" in res.output and "more: permission denied" in res.output.replace("\n", "")
    (err,) = rows(dst / ERRORS)
    assert err["path"] == "d1/more" and err["reason"] == "permission denied" and err["kind"] == "unreadable folder"
    assert len(rows(dst / MANIFEST)) == 12


def test_b_train_reports_an_unreadable_folder_and_exits_3(digits_locked, tmp_path):
    run = tmp_path / "run"
    res = invoke(
        "train", digits_locked, "-o", run, "--weights", "none", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    errs = rows(run / "errors.jsonl")
    assert [(Path(e["path"]).relative_to(digits_locked).as_posix(), e["reason"]) for e in errs] == [
        ("d1/more", "permission denied")
    ]


def test_b_predict_counts_an_unreadable_folder_as_skipped(digits_locked, run_ff, tmp_path):
    res = invoke("predict", run_ff, digits_locked, "-o", tmp_path / "p.csv", "--device", "cpu", "--workers", "0")
    assert res.exit_code == 3, res.output
    assert "predicted 12 of 13" in res.output
    assert "d1/more,permission denied" in (tmp_path / "p.errors.csv").read_text()


# ------------------------------------------------------------------ e. a self-looping symlink


def test_e_a_self_looping_link_is_reported_per_file(tmp_path):
    src = digits_folder(tmp_path / "data", per_class=2, size=32)
    os.symlink("x.jpg", src / "d0" / "x.jpg")
    res = invoke("augment", src, tmp_path / "out", "--recipe", "digits")
    assert res.exit_code == 3, res.output
    (err,) = rows(tmp_path / "out" / ERRORS)
    assert err["path"] == "d0/x.jpg" and "symbolic links" in err["detail"]
    assert len(rows(tmp_path / "out" / MANIFEST)) == 6
    run = tmp_path / "run"
    res = invoke(
        "train", src, "-o", run, "--weights", "none", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    assert [e["reason"] for e in rows(run / "errors.jsonl")] == ["unreadable"]


# ------------------------------------------------------------------ c. a class folder linked to another class


def test_c_a_class_folder_linked_to_another_is_an_alias_in_augment_and_train(tmp_path):
    src = digits_folder(tmp_path / "data", per_class=4, size=32)
    os.symlink("d1", src / "a_alias")  # sorts before d1: the old walk gave d1's images to the alias
    dst = tmp_path / "out"
    res = invoke("augment", src, dst, "--recipe", "digits")
    assert res.exit_code == 3, res.output
    assert "has no images" not in res.output and "a_alias" in res.output
    made = rows(dst / MANIFEST)
    assert len(made) == 12 and {r["class"] for r in made} == {"d0", "d1", "d2"}
    assert not (dst / "a_alias").exists()
    (err,) = rows(dst / ERRORS)
    assert (err["path"], err["reason"]) == ("a_alias", "class alias") and "d1" in err["detail"]
    run = tmp_path / "run"
    res = invoke(
        "train", src, "-o", run, "--weights", "none", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    assert [e["reason"] for e in rows(run / "errors.jsonl")] == ["class alias"]
    assert yaml_classes(run) == ["d0", "d1", "d2"]


def yaml_classes(run: Path) -> list[str]:
    import torch

    return torch.load(run / "best.pt", weights_only=True, map_location="cpu")["meta"]["classes"]


# ------------------------------------------------------------------ d. a source changed after its outputs


def test_d_outputs_of_a_changed_source_are_made_again(tmp_path):
    import hashlib

    src = digits_folder(tmp_path / "data", per_class=2, size=32)
    dst = tmp_path / "out"
    assert invoke("augment", src, dst, "--recipe", "digits", "--copies", "2").exit_code == 0
    first = {r["output"]: r for r in rows(dst / MANIFEST)}
    row = first["d0/0_00__aug0.png"]
    data = (src / "d0" / "0_00.png").read_bytes()
    assert row["source_file"]["size"] == len(data)
    assert row["source_file"]["blake2b"] == hashlib.blake2b(data, digest_size=16).hexdigest()
    old = {o: (dst / o).read_bytes() for o in ("d0/0_00__aug0.png", "d0/0_00__aug1.png", "d1/1_00__aug0.png")}
    shutil.copyfile(src / "d2" / "2_00.png", src / "d0" / "0_00.png")  # new content, size and mtime
    res = invoke("augment", src, dst, "--recipe", "digits", "--copies", "2")
    assert res.exit_code == 0, res.output
    assert "remade" in res.output and "their source changed" in res.output
    assert (dst / "d0/0_00__aug0.png").read_bytes() != old["d0/0_00__aug0.png"]
    assert (dst / "d0/0_00__aug1.png").read_bytes() != old["d0/0_00__aug1.png"]
    assert (dst / "d1/1_00__aug0.png").read_bytes() == old["d1/1_00__aug0.png"]
    latest = {r["output"]: r for r in rows(dst / MANIFEST)}
    assert len(rows(dst / MANIFEST)) == 14  # 12, then the 2 outputs of the changed source
    assert latest["d0/0_00__aug0.png"]["source_file"]["blake2b"] != row["source_file"]["blake2b"]
    again = invoke("augment", src, dst, "--recipe", "digits", "--copies", "2")  # now current: nothing to do
    assert again.exit_code == 0 and "remade" not in again.output and len(rows(dst / MANIFEST)) == 14


# ------------------------------------------------------------------ f. two train runs into one RUN_DIR


def test_f_a_second_train_into_a_locked_run_dir_is_refused(tmp_path):
    from augkit.offline.dst import LOCK, locked

    src = digits_folder(tmp_path / "data", per_class=2, size=32)
    run = tmp_path / "run"
    args = ("train", src, "-o", run, "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0")  # fmt: skip
    with locked(run, what="RUN_DIR"):  # what a first `augkit train` holds while it runs
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert "another augkit run is using" in res.output and "RUN_DIR" in res.output
        assert str(run) in res.output.replace("\n", "")
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing of the second run written
    res = invoke(*args)  # once the first is done, the folder is free
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").is_file() and not (run / LOCK).exists()


# ------------------------------------------------------------------ g. a plan too big to build


@pytest.mark.parametrize("option", ["--copies", "--per-class"])
def test_g_a_huge_plan_is_refused_before_it_is_built(tmp_path, option, monkeypatch):
    import tracemalloc

    src = digits_folder(tmp_path / "data", per_class=2, size=32)
    tracemalloc.start()
    try:
        res = invoke("augment", src, tmp_path / "out", "--recipe", "digits", option, "1000000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.exit_code == 2, res.output
    assert "outputs" in res.output and "5,000,000" in res.output
    assert peak < 200e6  # the old code built every item first (9 GB, then MemoryError)
    assert not (tmp_path / "out").exists()


def test_g_a_plan_bigger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    import augkit.offline.run as run_mod

    src = digits_folder(tmp_path / "data", per_class=2, size=32)
    size = sum(p.stat().st_size for p in src.rglob("*.*"))
    free = shutil.disk_usage(tmp_path).free
    copies = free // size + 1  # just over what fits
    monkeypatch.setattr(run_mod, "MAX_PLANNED_OUTPUTS", 10**18)  # only the bytes bound here
    with pytest.raises(Exception, match="GB free") as info:
        from augkit.offline.run import AugmentOptions, make_plan
        from augkit.recipe.api import load_recipe

        monkeypatch.setattr(run_mod, "_outputs", lambda *a: pytest.fail("the plan was built"))
        make_plan(src, tmp_path / "out", load_recipe("digits"), AugmentOptions(copies=int(copies)))
    assert info.type.__name__ == "UsageError"


# ------------------------------------------------------------------ h. SIGTERM


def term_on_call(monkeypatch, owner, name: str, at: int) -> None:
    """Send this process SIGTERM when ``owner.name`` is called the ``at``-th time (1-based)."""
    import signal

    real, calls = getattr(owner, name), []

    def call(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, call)


def test_h_sigterm_in_augment_writes_the_records_and_exits_143(tmp_path, monkeypatch):
    from augkit.offline.dst import JOURNAL
    from augkit.offline.task import AugmentTask

    src = digits_folder(tmp_path / "data", per_class=4, size=32)
    dst = tmp_path / "out"
    term_on_call(monkeypatch, AugmentTask, "_make", 5)
    res = invoke("augment", src, dst, "--recipe", "digits", "--workers", "1")
    assert res.exit_code == 143, res.output
    assert "terminated (SIGTERM)" in res.output and "finished outputs are kept" in res.output
    done = rows(dst / MANIFEST)
    assert 3 <= len(done) < 12 and all((dst / r["output"]).is_file() for r in done)
    assert (dst / ERRORS).is_file() and not (dst / JOURNAL).exists()
    monkeypatch.undo()
    again = invoke("augment", src, dst, "--recipe", "digits")  # resumes
    assert again.exit_code == 0 and len(rows(dst / MANIFEST)) == 12


def test_h_sigterm_in_train_draws_the_curves_and_exits_143(tmp_path, monkeypatch):
    import augkit.training.loop as trainmod

    src = digits_folder(tmp_path / "data", per_class=3, size=32)
    run = tmp_path / "run"
    term_on_call(monkeypatch, trainmod, "_run_epoch", 2)
    res = invoke(
        "train", src, "-o", run, "--weights", "none", "--epochs", "3", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 143, res.output
    assert "terminated (SIGTERM)" in res.output and "--resume" in res.output
    assert (run / "curves.png").is_file() and (run / "last.pt").is_file()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_h_an_interrupted_predict_keeps_what_finished_and_says_so(digits_ff, run_ff, tmp_path, monkeypatch, sig):
    import signal

    import augkit.infer.engine as engine

    real = engine.DecodedImages.__getitem__

    def getitem(self, i):
        if i == 5:  # in the third batch of 2: two batches (4 images) are finished
            os.kill(os.getpid(), getattr(signal, sig))
        return real(self, i)

    monkeypatch.setattr(engine.DecodedImages, "__getitem__", getitem)
    out = tmp_path / "p.csv"
    args = ("predict", run_ff, digits_ff, "-o", out, "--device", "cpu", "--workers", "0", "--batch-size", "2")
    res = invoke(*args)
    assert res.exit_code == (143 if sig == "SIGTERM" else 130), res.output
    said = " ".join(res.output.split())
    assert "the 4 finished predictions are in" in said and "p.partial.csv" in said
    assert not out.exists()  # OUTPUT is written only when every input is done
    kept = (tmp_path / "p.partial.csv").read_bytes().splitlines()  # bytes: one name holds 0xFF
    assert kept[0].startswith(b"path,") and len(kept) == 5
    monkeypatch.undo()
    assert invoke(*args).exit_code == 0 and len(out.read_bytes().splitlines()) == 14  # a re-run is not refused


def test_h_predict_interrupted_before_any_batch_says_nothing_was_written(digits_ff, run_ff, tmp_path, monkeypatch):
    import signal

    import augkit.infer.engine as engine

    real = engine.DecodedImages.__getitem__

    def getitem(self, i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, i)

    monkeypatch.setattr(engine.DecodedImages, "__getitem__", getitem)
    out = tmp_path / "p.csv"
    res = invoke("predict", run_ff, digits_ff, "-o", out, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 130, res.output
    assert "no predictions were written" in " ".join(res.output.split()) and "kept" not in res.output
    assert not out.exists() and not (tmp_path / "p.partial.csv").exists()


# ------------------------------------------------------------------ i. a damaged --cache store


def test_i_cache_never_serves_changed_or_swapped_pixels_and_rebuilds_a_damaged_index(tmp_path):
    import numpy as np

    from augkit.io.images import read_image
    from augkit.io.preprocess import resize_short
    from augkit.training.cache import INDEX, PIXELS, ImageCache

    src = class_folder(tmp_path / "data", per_class=2, classes=("cat", "coffee"), size=(48, 40))
    paths = sorted(str(p) for p in src.rglob("*.*"))
    truth = {p: resize_short(read_image(p), 32) for p in paths}
    folder = tmp_path / "cache"
    assert ImageCache(folder, 32).prepare(paths) == []

    def fresh(notes=None):
        c = ImageCache(folder, 32, on_note=(notes.append if notes is not None else None))
        assert c.prepare(paths) == []
        return c

    def all_right(c) -> bool:
        return all(np.array_equal(c.get(p), truth[p]) for p in paths)

    assert all_right(fresh())
    # pixels overwritten in the store: a reader that prepared before still gets the right pixels
    reader = fresh()
    raw = bytearray((folder / PIXELS).read_bytes())
    raw[: len(raw) // 2] = bytes(len(raw) // 2)  # zeroes over the first half
    (folder / PIXELS).write_bytes(bytes(raw))
    assert all_right(reader)
    notes: list[str] = []
    assert all_right(fresh(notes)) and any("did not match their checksum" in n for n in notes)
    # two entries swapped in the index: each image keeps its own pixels
    doc = json.loads((folder / INDEX).read_text())
    a, b = list(doc["entries"])[:2]
    doc["entries"][a], doc["entries"][b] = doc["entries"][b], doc["entries"][a]
    (folder / INDEX).write_text(json.dumps(doc))
    notes = []
    assert all_right(fresh(notes)) and any("did not match their checksum" in n for n in notes)
    # damaged index files: rebuilt with a warning, never a traceback
    for bad in ("{not json", "[1, 2]", '{"format": "augkit-cache-v2", "entries": [1]}',
                '{"format": "augkit-cache-v2", "entries": {"k": ["x", 1, 1, 1]}}', "\xff"):  # fmt: skip
        (folder / INDEX).write_text(bad, encoding="latin-1")
        notes = []
        assert all_right(fresh(notes)), bad
        assert any("damaged" in n for n in notes), bad


# ------------------------------------------------------------------ j. transforms that cannot work in a recipe


@pytest.mark.parametrize(
    "step, says",
    [
        ("Lambda", "only runs Python functions"),
        ("MaskDropout", "needs 'mask' besides the image"),
        ("OverlayElements", "needs 'overlay_metadata'"),
        ("TextImage, font_path: /nonexistent.ttf", "needs 'textimage_metadata'"),
        ("BBoxSafeRandomCrop", "needs 'bboxes'"),
        ("RandomScale, scale_limit: 1000", "grow 1001x per side"),
        ("Affine, scale: [1, 30], fit_output: true", "grow 30x per side"),
    ],
)
def test_j_recipes_check_refuses_steps_that_cannot_work(tmp_path, step, says):
    f = tmp_path / "r.yaml"
    f.write_text(f"name: t\ntrain:\n  - albumentations: {{transform: {step}}}\n")
    res = invoke("recipes", "check", f)
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()) and "Traceback" not in res.output


def test_j_growth_within_the_bound_is_accepted(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(
        "name: t\ntrain:\n  - albumentations: {transform: RandomScale, scale_limit: 0.5}\n"
        "  - albumentations: {transform: Affine, scale: [0.5, 2], fit_output: true}\n"
        "  - albumentations: {transform: Affine, scale: [1, 30]}\n"  # without fit_output the size stays
    )
    res = invoke("recipes", "check", f)
    assert res.exit_code == 0, res.output


def test_j_every_accepted_albumentations_transform_runs_on_an_image():
    """The rule is general: every transform augkit lists is either refused when built or runs on a
    real photo (with its default parameters)."""
    import warnings

    from _imgs import photo

    from augkit.albu import import_albumentations
    from augkit.errors import RecipeError
    from augkit.recipe.passthrough import albumentations_transforms, build_albumentations

    A = import_albumentations()
    img = photo("astronaut", (64, 48))
    per_image = {"Crop"}  # its default box (up to 1024 px) is larger than this photo: a per-file error
    failed = []
    for name in albumentations_transforms():
        try:
            t = build_albumentations(name, {}, 1.0, where="test", source=None, line=None)
        except RecipeError:
            continue  # refused (or needs parameters)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                A.Compose([t], seed=0)(image=img.copy())
        except Exception as exc:  # noqa: BLE001
            if name not in per_image:
                failed.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    assert not failed


# ------------------------------------------------------------------ k. ONNX metadata edited after export


def tiny_export(path: Path, *, classes: int = 3, size: int = 32, views: int = 2, edit=None) -> Path:
    """A small graph with an augkit export's interface (uint8 images (N, 3, S, S) -> probs (N, K),
    view_probs (V, N, K); here a softmax over channel means, K = 3) and its metadata, which
    ``edit(props)`` may change as a user with a text editor or onnx.helper would."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from augkit.infer.engine import resolve_tta
    from augkit.infer.onnx_backend import metadata_props
    from augkit.io.images import DECODE_POLICY
    from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
    from augkit.models.checkpoint import ModelMeta
    from augkit.recipe.views import preset_views

    names = [f"c{i}" for i in range(classes)]
    meta = ModelMeta(
        arch="resnet18", classes=names, class_to_idx={c: i for i, c in enumerate(names)}, image_size=size,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), decode_policy=DECODE_POLICY, resize_policy=RESIZE_POLICY,
    )  # fmt: skip
    spec = resolve_tta("flip")
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probs"], axis=1),
        helper.make_node("Unsqueeze", ["probs", "zero"], ["u"]),
        helper.make_node("Concat", ["u"] * views, ["view_probs"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("view_probs", TensorProto.FLOAT, [views, "batch", 3])],
        initializer=[helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    props = metadata_props(meta, spec, list(preset_views("flip")))
    if edit is not None:
        edit(props)
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def _edit_meta(**changes):
    def edit(props):
        meta = json.loads(props["augkit.meta"])
        meta.update(changes)
        props["augkit.meta"] = json.dumps(meta)

    return edit


def _add_view(props):
    props["augkit.views"] = json.dumps(json.loads(props["augkit.views"]) + ["vflip"])


def _edit_plain_classes(props):
    props["classes"] = json.dumps(["a", "b", "c"])


@pytest.mark.parametrize(
    "edit, says",
    [
        (_edit_meta(classes=["c0", "c1", "c2", "c3"], class_to_idx={f"c{i}": i for i in range(4)}),
         "classes: the metadata lists 4, the graph's probs has 3"),
        (_edit_meta(image_size=40), "image size: the metadata says 40, the graph takes 32x32"),
        (_add_view, "views: the metadata lists 3, the graph's view_probs has 2"),
        (_edit_plain_classes, "the file's 'classes' entry differs"),
    ],
)  # fmt: skip
def test_k_edited_onnx_metadata_is_refused_naming_the_mismatch(digits_ff, tmp_path, edit, says):
    good = tiny_export(tmp_path / "good.onnx")
    res = invoke("predict", good, digits_ff / "d1", "--device", "cpu", "--workers", "0", "--tta", "none")
    assert res.exit_code == 0, res.output  # the unedited file works: the graph is a valid export
    bad = tiny_export(tmp_path / "bad.onnx", edit=edit)
    res = invoke("predict", bad, digits_ff / "d1", "--device", "cpu", "--workers", "0", "--tta", "none")
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()) and "Traceback" not in res.output


# ------------------------------------------------------------------ l. 5,000 classes in evaluate


def test_l_evaluate_with_5000_classes_keeps_a_bounded_report_and_picture(tmp_path):
    import numpy as np

    from augkit.infer.evaluate import score, write_confusion, write_report
    from augkit.recipe.views import preset_views

    k, n = 5000, 2000
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, n)
    pred = y.copy()
    pred[:40] = 9  # 40 images of various classes taken for class 9
    pred[40:70], y[40:70] = 11, 7  # the most confused pair: 7 taken for 11, 30 times
    probs = np.full((1, n, k), 0.1 / k, np.float32)
    probs[0, np.arange(n), pred] += 0.9
    classes = [f"class{i:04d}" for i in range(k)]
    views = list(preset_views("identity"))
    rep = score(probs, probs[0], y, views, 0, 1, classes)
    conf = rep["confusion"]
    assert conf["top_confused"][0] == {"true": "class0007", "predicted": "class0011", "count": 30}
    assert len(conf["top_confused"]) <= 50 and len(conf["labels"]) <= 30
    assert np.asarray(conf["matrix"]).shape == (len(conf["labels"]),) * 2
    i, j = conf["labels"].index("class0007"), conf["labels"].index("class0011")
    assert conf["matrix"][i][j] == 30
    write_report(rep, tmp_path / "r.json")
    assert (tmp_path / "r.json").stat().st_size < 5e6  # was 276 MB
    write_confusion(rep, tmp_path / "c.png")
    import cv2

    h, w = cv2.imread(str(tmp_path / "c.png")).shape[:2]
    assert max(h, w) <= 1400  # was 20,000 px a side
    small = score(probs[:, :5, :], probs[0, :5, :], y[:5], views, 0, 1, classes)
    assert "subset" in small["confusion"]  # the model's class count decides, not the data's
    eye = np.eye(3, dtype=np.float32)
    few = score(eye[None], eye, np.arange(3), views, 0, 1, ["a", "b", "c"])
    assert few["confusion"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]] and "subset" not in few["confusion"]


# ------------------------------------------------------------------ m. NaN weights, a learning rate that blows up


def test_m_a_diverging_learning_rate_stops_train_with_exit_1(tmp_path):
    src = digits_folder(tmp_path / "data", per_class=4, size=32)
    run = tmp_path / "run"
    res = invoke(
        "train", src, "-o", run, "--weights", "none", "--epochs", "2", "--image-size", "32", "--lr", "1e30",
        "--batch-size", "4", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    said = " ".join(res.output.split())
    assert "the training loss is" in said and "lower --lr" in said and "Traceback" not in res.output
    assert not (run / "best.pt").exists()  # no epoch finished: nothing that looks like a model


@pytest.fixture(scope="module")
def nan_weights(run_ff, tmp_path_factory) -> Path:
    import torch

    ckpt = torch.load(run_ff / "best.pt", weights_only=True, map_location="cpu")
    name = next(k for k, t in ckpt["state_dict"].items() if t.is_floating_point())
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(ckpt, path)
    return path


def test_m_nan_weights_stop_train_with_exit_1(digits_ff, nan_weights, tmp_path):
    res = invoke(
        "train", digits_ff, "-o", tmp_path / "run", "--weights", nan_weights, "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--device", "cpu", "--recipe", "digits", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "the training loss is nan" in " ".join(res.output.split())


def test_m_export_refuses_nan_weights(nan_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    res = invoke("export", nan_weights, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 1, res.output
    assert "NaN or infinite" in " ".join(res.output.split()) and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ n. a read-only or full output folder


def _refuse_writes(monkeypatch, module, err_no: int) -> None:
    import errno

    def refuse(path, data):
        raise OSError(err_no, os.strerror(err_no), str(Path(path).with_name(f".{Path(path).name}.0123abcd.tmp")))

    assert err_no in (errno.EROFS, errno.ENOSPC)
    monkeypatch.setattr(module, "atomic_write_bytes", refuse)


@pytest.mark.parametrize("err_no", [30, 28])  # EROFS, ENOSPC (as root a chmod does not stop a write)
def test_n_preview_into_a_read_only_or_full_folder_is_one_line_exit_1(digits_ff, tmp_path, monkeypatch, err_no):
    import augkit.io.images as images

    _refuse_writes(monkeypatch, images, err_no)
    out = tmp_path / "p.png"
    res = invoke("preview", digits_ff, "-o", out)
    assert res.exit_code == 1, res.output
    assert f"could not write {out}: {os.strerror(err_no)}" in " ".join(res.output.split())
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize("err_no", [30, 28])
def test_n_export_into_a_read_only_or_full_folder_is_one_line_exit_1(run_ff, tmp_path, monkeypatch, err_no):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import augkit.infer.export as export

    _refuse_writes(monkeypatch, export, err_no)
    monkeypatch.setattr(export, "_to_onnx_bytes", lambda *a: b"not built here: the write is what is tested")
    out = tmp_path / "m.onnx"
    res = invoke("export", run_ff, "-o", out)
    assert res.exit_code == 1, res.output
    assert f"could not write {out}: {os.strerror(err_no)}" in " ".join(res.output.split())
    assert "Traceback" not in res.output and not out.exists()


# ------------------------------------------------------------------ o. Ctrl-C while the pool starts


def test_o_the_pools_processes_leave_ctrl_c_to_the_run(tmp_path):
    """A Ctrl-C reaches the whole process group: the fork server (importing OpenCV and
    albumentations for ~1.7 s) and the workers printed KeyboardInterrupt tracebacks. They now
    start with SIGINT ignored (the run's own process handles it and ends the pool). Checked in a
    fresh interpreter, where this test's own fork server (if any) cannot answer for it."""
    import subprocess
    import sys

    script = f"""
import signal
from augkit.offline.executors.local import pool_context
from augkit.offline.executors.pool import PoolStarter
from augkit.offline.task import AugmentTask, TaskSettings
from augkit.recipe.api import load_recipe

r = load_recipe("digits")
task = AugmentTask({str(tmp_path)!r}, {str(tmp_path / "out")!r}, r.text, r.source, TaskSettings(None))
starter = PoolStarter(pool_context(), 1, task)
starter.start()
pool = starter.wait()
print("worker", pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN)
print("parent", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
starter.close()
"""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["worker", "True", "parent", "True"], res.stdout + res.stderr


# ------------------------------------------------------------------ p. a progressive JPEG cut short


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.85, 0.97])
def test_p_a_progressive_jpeg_cut_short_with_an_end_marker_is_truncated(tmp_path, fraction):
    """A cut before the last scan is found by the marker walk (coefficients never completed);
    one inside the last scan (0.85, 0.97 here) by decoding once more with a probe before EOI."""
    import io

    from _imgs import photo
    from PIL import Image

    from augkit.errors import ImageError
    from augkit.io.images import check_image_bytes, read_image

    buf = io.BytesIO()
    Image.fromarray(photo("astronaut", (320, 240))).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    assert read_image(whole).shape == (240, 320, 3)  # the complete file is fine
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * fraction)] + b"\xff\xd9")
    for kwargs in ({}, {"min_side": 100}):
        with pytest.raises(ImageError) as e:
            read_image(cut, **kwargs)
        assert e.value.reason == "truncated"
    if fraction < 0.8:  # the header check (no decode) already sees it
        with pytest.raises(ImageError, match="progressive JPEG ends after"):
            check_image_bytes(cut.read_bytes(), cut)
