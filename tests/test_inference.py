"""The inference engine on hostile inputs and under the decode policy and thread rule
(issues 8 and 9): special files, /dev/zero, absurd shapes, paths spelled several ways, v1 and
v2 checkpoints, intra-op threads, and command modules that import no torch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torch
from _tinymodel import SIZE, digit_rgb, make_run, write_png
from typer.testing import CliRunner

import augkit.infer.engine as inference_mod
from augkit.cli import app
from augkit.devices import compute_threads
from augkit.infer.engine import collect_inputs, default_workers, to_model_input
from augkit.infer.predict import predict
from augkit.io.images import LEGACY_DECODE_POLICIES, read_image
from augkit.io.preprocess import eval_image
from augkit.models.checkpoint import load_model

runner = CliRunner()
HANG_LIMIT_S = 60  # a FIFO read blocks forever; the alarm turns a regression into a failure


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    images, target = digits
    return make_run(tmp_path_factory.mktemp("run"), images[30:180], target[30:180])


@pytest.fixture(scope="module")
def v1_run(tmp_path_factory, digits):
    images, target = digits
    return make_run(tmp_path_factory.mktemp("v1"), images[30:180], target[30:180], LEGACY_DECODE_POLICIES[0])


@pytest.fixture
def good(tmp_path, digits) -> Path:
    return write_png(tmp_path / "in" / "good.png", digit_rgb(digits[0][0]))


@pytest.fixture
def no_hang():
    def fail(*_):
        raise TimeoutError(f"blocked for {HANG_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(HANG_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def predict_cli(run: Path, *inputs, out: Path):
    return cli("predict", run, *inputs, "-o", out, "--device", "cpu", "--workers", "0")


def errors_of(out: Path) -> dict[str, str]:
    with open(out.with_name(out.stem + ".errors.csv"), newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}


# ---------------------------------------------------------------- special files


def test_fifo_in_folder_argument_and_list_is_reported_not_read(run_dir, good, tmp_path, no_hang):
    os.mkfifo(good.parent / "pipe.jpg")  # inside the input folder
    os.mkfifo(tmp_path / "arg.jpg")  # named on the command line
    os.mkfifo(tmp_path / "listed.jpg")  # an entry of a list file
    (tmp_path / "list.txt").write_text("listed.jpg\n")
    out = tmp_path / "p.csv"
    res = predict_cli(run_dir, good.parent, tmp_path / "arg.jpg", tmp_path / "list.txt", out=out)
    assert res.exit_code == 3, res.output
    assert errors_of(out) == {
        "pipe.jpg": "not a regular file",
        "arg.jpg": "not a regular file",
        "listed.jpg": "not a regular file",
    }
    assert "predicted 1 of 4 images" in res.stderr


def test_dev_zero_as_argument_list_entry_and_symlink_is_refused_unread(run_dir, good, tmp_path, no_hang):
    (good.parent / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "list.lst").write_text("/dev/zero\n")
    out = tmp_path / "p.csv"
    res = predict_cli(run_dir, good.parent, "/dev/zero", tmp_path / "list.lst", out=out)
    assert res.exit_code == 3, res.output
    assert errors_of(out) == {"zero.jpg": "not a regular file", "zero": "not a regular file"}  # /dev/zero once
    assert "predicted 1 of 3 images" in res.stderr


def test_a_list_file_that_is_a_fifo_or_huge_is_refused(run_dir, good, tmp_path, no_hang):
    os.mkfifo(tmp_path / "pipe.txt")
    res = predict_cli(run_dir, good, tmp_path / "pipe.txt", out=tmp_path / "a.csv")
    assert res.exit_code == 2 and "pipe.txt: cannot read the list of paths (not a regular file" in res.stderr
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:  # sparse: no disk used, but larger than any list of paths
        fh.truncate(inference_mod.MAX_LIST_BYTES + 1)
    res = predict_cli(run_dir, good, huge, out=tmp_path / "b.csv")
    assert res.exit_code == 2 and "huge.txt: cannot read the list of paths (too large" in res.stderr


def test_evaluate_reports_a_fifo_in_a_class_folder(run_dir, tmp_path, digits, no_hang):
    for cls, d in (("zero", 0), ("one", 1)):
        write_png(tmp_path / "data" / cls / "a.png", digit_rgb(digits[0][list(digits[1]).index(d)]))
    os.mkfifo(tmp_path / "data" / "one" / "pipe.png")
    res = cli("evaluate", run_dir, tmp_path / "data", "--device", "cpu", "--workers", "0")
    assert res.exit_code == 3 and "pipe.png: not a regular file" in res.stderr, res.output


def test_an_extreme_aspect_ratio_is_reported_from_its_header(run_dir, good, tmp_path):
    thin = tmp_path / "in" / "thin.png"
    ok, buf = cv2.imencode(".png", np.zeros((1, 999_999), np.uint8))  # a few KB, 1 x 999999
    assert ok and len(buf) < 20_000
    thin.write_bytes(buf.tobytes())
    out = tmp_path / "p.csv"
    res = predict_cli(run_dir, good.parent, out=out)
    assert res.exit_code == 3, res.output
    assert errors_of(out) == {"thin.png": "bad dimensions"}


# ---------------------------------------------------------------- one input per file


def test_a_file_spelled_three_ways_is_predicted_once_in_the_first_spelling(run_dir, good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = ["in/good.png", str(tmp_path / "in" / "good.png"), "in/../in/good.png", "./in//good.png"]
    (tmp_path / "paths.txt").write_text(spellings[1] + "\n")
    preds = predict(run_dir, [*spellings, "paths.txt"], device="cpu", workers=0)
    assert [r["path"] for r in preds.rows] == ["in/good.png"]
    assert collect_inputs(["in", "in/good.png"]) == ["in/good.png"]


def test_two_links_to_one_file_stay_two_inputs(good, tmp_path):
    (good.parent / "alias.png").symlink_to(good)
    assert collect_inputs([good.parent]) == [str(good.parent / "alias.png"), str(good)]


# ---------------------------------------------------------------- decode policy


@pytest.fixture
def big_jpeg(tmp_path, digits) -> Path:
    """A camera-sized JPEG of a digit '2' (2400 x 1800): decoded at 1/8 under policies v2 and v3 (225 >= 2 x 32)."""
    img = cv2.resize(digit_rgb(digits[0][list(digits[1]).index(2)]), (2400, 1800), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big" / "two.jpg"
    path.parent.mkdir()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    path.write_bytes(buf.tobytes())
    return path


def _probs(run: Path, img: np.ndarray) -> np.ndarray:
    model, meta = load_model(run)
    x = to_model_input(torch.from_numpy(eval_image(img, SIZE)[None]), meta, torch.device("cpu"))
    with torch.no_grad():
        return torch.softmax(model(x), -1)[0].numpy()


def _row_probs(preds) -> np.ndarray:
    return np.array([dict(preds.rows[0]["top"])[c] for c in preds.classes], dtype=np.float32)


def test_v3_checkpoint_decodes_reduced_and_agrees_with_full_decoding(run_dir, big_jpeg, monkeypatch):
    seen: list[dict] = []
    real = inference_mod.read_image
    monkeypatch.setattr(inference_mod, "read_image", lambda p, **kw: seen.append(kw) or real(p, **kw))
    preds = predict(run_dir, [big_jpeg], top_k=3, device="cpu", workers=0)
    assert seen == [{"max_pixels": 100_000_000, "min_side": SIZE, "reduced": True, "margin": 2}]
    reduced = read_image(big_jpeg, min_side=SIZE, reduced=True)
    assert min(reduced.shape[:2]) == 1800 // 8  # the libjpeg 1/8 decode
    np.testing.assert_allclose(_row_probs(preds), _probs(run_dir, reduced), atol=1e-6)
    full = _probs(run_dir, read_image(big_jpeg, reduced=False))
    assert preds.rows[0]["label"] == preds.classes[int(full.argmax())] == "two"
    np.testing.assert_allclose(_row_probs(preds), full, atol=0.05)


def test_v2_checkpoint_keeps_its_margin_of_1(digits, tmp_path, big_jpeg, monkeypatch):
    """A model saved under decode policy v2 is fed JPEGs reduced as far as its image size (margin 1),
    exactly as it was trained; v3 keeps 2x."""
    (tmp_path / "v2").mkdir()
    v2_run = make_run(tmp_path / "v2", digits[0][30:90], digits[1][30:90], LEGACY_DECODE_POLICIES[1])
    seen: list[dict] = []
    real = inference_mod.read_image
    monkeypatch.setattr(inference_mod, "read_image", lambda p, **kw: seen.append(kw) or real(p, **kw))
    preds = predict(v2_run, [big_jpeg], top_k=3, device="cpu", workers=0)
    assert [(kw["reduced"], kw["margin"]) for kw in seen] == [(True, 1)]
    v2 = read_image(big_jpeg, min_side=SIZE, margin=1)
    np.testing.assert_allclose(_row_probs(preds), _probs(v2_run, v2), atol=1e-6)


def test_v1_checkpoint_keeps_full_decoding(v1_run, big_jpeg, monkeypatch):
    seen: list[dict] = []
    real = inference_mod.read_image
    monkeypatch.setattr(inference_mod, "read_image", lambda p, **kw: seen.append(kw) or real(p, **kw))
    preds = predict(v1_run, [big_jpeg], top_k=3, device="cpu", workers=0)
    assert [kw["reduced"] for kw in seen] == [False]
    full = read_image(big_jpeg, reduced=False)
    np.testing.assert_allclose(_row_probs(preds), _probs(v1_run, full), atol=1e-6)


def test_unknown_decode_policy_is_a_clear_error(digits, tmp_path, good):
    (tmp_path / "r").mkdir()
    run = make_run(tmp_path / "r", digits[0][:30], digits[1][:30], "augkit-v9: from the future")
    res = predict_cli(run, good, out=tmp_path / "p.csv")
    assert res.exit_code == 2 and "decode policy 'augkit-v9: from the future'" in res.stderr


# ---------------------------------------------------------------- threads and workers


@pytest.mark.parametrize("workers", [0, 1])
def test_intra_op_threads_are_cores_minus_workers_and_restored(run_dir, good, workers, monkeypatch):
    seen: list[int] = []
    real = inference_mod.to_model_input
    monkeypatch.setattr(inference_mod, "to_model_input", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    predict(run_dir, [good], device="cpu", workers=workers)
    assert seen == [compute_threads(workers, "cpu")]
    assert torch.get_num_threads() == before


def test_default_workers_rule(monkeypatch):
    for cores, cpu, gpu in ((1, 0, 0), (2, 0, 1), (4, 1, 3), (8, 2, 4), (64, 4, 4)):
        monkeypatch.setattr(inference_mod, "usable_cores", lambda: cores)
        assert (default_workers("cpu"), default_workers(torch.device("cuda"))) == (cpu, gpu), cores


def test_cli_default_workers_follow_the_rule(run_dir, good, tmp_path, monkeypatch):
    used: list[int] = []
    real = inference_mod.DataLoader
    monkeypatch.setattr(inference_mod, "DataLoader", lambda *a, **kw: used.append(kw["num_workers"]) or real(*a, **kw))
    res = cli("predict", run_dir, good, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert used == [min(default_workers("cpu"), 1)]


def test_command_modules_import_no_torch():
    code = (
        "import sys, augkit.commands.predict, augkit.commands.evaluate; "
        "heavy = [m for m in ('torch', 'torchvision', 'ray', 'albumentations') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- docs/onnx.md's reference script


def _doc_script() -> str:
    text = (Path(__file__).parent.parent / "docs" / "onnx.md").read_text(encoding="utf-8")
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_onnx_reference_script_equals_augkit_predict(run_dir, digits, tmp_path):
    """docs/onnx.md's onnxruntime + OpenCV script, run as written, gives augkit predict's
    probabilities to 1e-4: a photo JPEG that takes the reduced (1/4) decode, a small digit PNG that
    is enlarged, a grey PNG, and a JPEG of odd aspect ratio and non-ASCII name."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import skimage.data

    from augkit.infer.export import export_onnx

    model = export_onnx(run_dir, tmp_path / "model.onnx", tta="flip").path
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    photo = skimage.data.chelsea()  # 451 x 300: its shorter side / 4 = 75 >= 2 x 32, / 8 = 38 < 64
    cv2.imwrite(str(imgs / "cat.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    write_png(imgs / "digit.png", digit_rgb(digits[0][5], 20))
    cv2.imwrite(str(imgs / "grey.png"), cv2.resize(skimage.data.camera(), (45, 70), interpolation=cv2.INTER_AREA))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(photo, (97, 41)), cv2.COLOR_RGB2BGR))
    (imgs / "кот wide.jpg").write_bytes(buf.tobytes())
    paths = sorted(str(p) for p in imgs.iterdir())
    script = tmp_path / "reference.py"
    script.write_text(_doc_script(), encoding="utf-8")
    assert len([line for line in _doc_script().splitlines() if line.strip()]) <= 20
    res = subprocess.run([sys.executable, str(script), str(model), *paths], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = {r["path"]: r for r in map(json.loads, res.stdout.splitlines())}
    preds = predict(model, paths, top_k=3, device="cpu", workers=0)  # the .onnx's own TTA: flip
    assert preds.tta.preset == "flip" and len(preds.rows) == len(got) == 4
    for row in preds.rows:
        want = dict(row["top"])
        assert max(abs(got[row["path"]]["probs"][c] - want[c]) for c in want) < 1e-4, row["path"]
        assert got[row["path"]]["label"] == row["label"]


def test_onnx_metadata_specifies_the_preprocessing(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from augkit.infer.export import export_onnx

    path = export_onnx(run_dir, tmp_path / "m.onnx", tta="flip+shift").path
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert "EXIF orientation applied" in props["decode"] and "IMREAD_REDUCED_COLOR_k" in props["decode"]
    assert ">= 64 px" in props["decode"]  # 2 x the 32 px input
    assert "round(side * scale)" in props["resize"] and "INTER_AREA when shrinking" in props["interpolation"]
    assert props["crop"].startswith("center 32x32") and "NCHW" in props["layout"] and "RGB" in props["layout"]
    assert props["normalization"].startswith("inside the graph") and "0.485" in props["normalization"]
    assert props["tta_inside"].startswith("yes") and "10 view(s)" in props["tta_inside"]
