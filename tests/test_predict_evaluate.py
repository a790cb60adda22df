"""``augkit predict`` and ``augkit evaluate`` on a tiny digits model (32 px, three classes).

The model is a resnet18 with random (seeded) convolutions whose head is fitted by logistic
regression on their features: a real, accurate classifier built in about a second.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torch
from _tinymodel import CLASSES, SIZE, digit_rgb, make_run, write_png
from typer.testing import CliRunner

import augkit.infer.engine as inference_mod
import augkit.infer.files as outfiles_mod
from augkit.cli import app
from augkit.errors import UsageError
from augkit.infer.engine import to_model_input
from augkit.infer.evaluate import evaluate
from augkit.infer.predict import predict
from augkit.io.images import read_image
from augkit.io.preprocess import eval_image
from augkit.models.archs import build_model
from augkit.models.checkpoint import ModelMeta, save_checkpoint

PER_CLASS = 6
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    images, target = digits
    fit = slice(PER_CLASS * 3, PER_CLASS * 3 + 150)  # never the images written to the data folder
    return make_run(tmp_path_factory.mktemp("run"), images[fit], target[fit])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, digits):
    """data/<zero|one|two>/..., 6 digits each; one file with a non-ASCII name and a space."""
    images, target = digits
    root = tmp_path_factory.mktemp("data")
    seen = {c: 0 for c in range(3)}
    for img, t in zip(images, target):
        if seen[t] < PER_CLASS:
            name = f"d{seen[t]}.png" if seen[t] else "цифра 0.png"
            write_png(root / CLASSES[t] / name, digit_rgb(img))
            seen[t] += 1
    return root


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- predict


def test_plain_predict_equals_the_model_on_hand_decoded_images(run_dir, data_dir):
    preds = predict(run_dir, [data_dir], tta=None, top_k=3, device="cpu", workers=0)
    from augkit.models.checkpoint import load_model

    model, meta = load_model(run_dir)
    paths = [r["path"] for r in preds.rows]
    x = torch.from_numpy(np.stack([eval_image(read_image(p), SIZE) for p in paths]))
    with torch.no_grad():
        p = torch.softmax(model(to_model_input(x, meta, torch.device("cpu"))), -1).numpy()
    got = np.array([[dict(r["top"])[c] for c in CLASSES] for r in preds.rows], dtype=np.float32)
    assert np.array_equal(got, p)  # identity-only TTA is exactly the plain prediction
    assert len(paths) == 3 * PER_CLASS and any("цифра" in q for q in paths)


def test_predict_decodes_each_image_once(run_dir, data_dir, monkeypatch):
    calls: list[str] = []
    real = inference_mod.read_image

    def counting(path, **kw):
        calls.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(inference_mod, "read_image", counting)
    preds = predict(run_dir, [data_dir], tta="flip+shift", device="cpu", workers=0)
    assert len(preds.rows) == 3 * PER_CLASS
    assert sorted(calls) == sorted(r["path"] for r in preds.rows)  # 10 views, one decode each


def test_workers_do_not_change_predictions(run_dir, data_dir):
    a = predict(run_dir, [data_dir], tta="flip", device="cpu", workers=0, batch_size=4)
    b = predict(run_dir, [data_dir], tta="flip", device="cpu", workers=2, batch_size=4)
    assert [(r["path"], r["label"]) for r in a.rows] == [(r["path"], r["label"]) for r in b.rows]
    assert np.allclose([r["prob"] for r in a.rows], [r["prob"] for r in b.rows], atol=1e-6)


def test_predictions_csv_rescored_equals_evaluate(run_dir, data_dir, tmp_path):
    for tta in ("flip+shift", None):
        out, rep = tmp_path / f"{tta}.csv", tmp_path / f"{tta}.json"
        res = cli(
            "predict",
            run_dir,
            data_dir,
            *(["--tta", tta] if tta else []),
            "-o",
            out,
            "--workers",
            "0",
            "--device",
            "cpu",
            "--top-k",
            "2",
        )
        assert res.exit_code == 0, res.output
        rows = read_csv(out)
        assert list(rows[0]) == ["path", "label", "prob", "label_2", "prob_2"]
        right = sum(Path(r["path"]).parent.name == r["label"] for r in rows)
        res = cli(
            "evaluate",
            run_dir,
            data_dir,
            "--tta",
            tta or "identity",
            "--report",
            rep,
            "--workers",
            "0",
            "--device",
            "cpu",
        )
        assert res.exit_code == 0, res.output
        report = json.loads(rep.read_text())
        assert report["counts"]["evaluated"] == len(rows) == 3 * PER_CLASS
        assert report["accuracy"]["tta"] == right / len(rows)
        if tta is None:
            assert report["accuracy"]["plain"] == right / len(rows)
        assert (tmp_path / f"{tta}.errors.csv").read_text() == "path,reason,detail\n"


def test_jsonl_to_stdout(run_dir, data_dir):
    res = cli(
        "predict",
        run_dir,
        data_dir / "one",
        "--format",
        "jsonl",
        "--top-k",
        "3",
        "--tta",
        "tta-flip",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == PER_CLASS
    assert all(len(x["top_k"]) == 3 and x["top_k"][0]["label"] == x["label"] for x in lines)
    assert sum(x["label"] == "one" for x in lines) >= PER_CLASS - 1
    assert "predicted 6 of 6 images with TTA tta-flip (2 views, merge mean)" in res.stderr


def test_bad_images_are_reported_not_fatal(run_dir, data_dir, tmp_path):
    src = tmp_path / "in"
    good = read_image(next((data_dir / "two").glob("d*.png")))
    write_png(src / "ok.png", good)
    write_png(src / "png-named.jpg", good)  # decoded by content
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(good, (64, 64)), cv2.COLOR_RGB2BGR))
    (src / "truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (src / "text.jpg").write_text("this is not a picture")
    (src / "empty.png").write_bytes(b"")
    (src / ".DS_Store").write_bytes(b"\0\1")  # litter: ignored, never an input
    listing = tmp_path / "list.txt"
    listing.write_text("# extra inputs\nin/ok.png\nin/gone.png\n", encoding="utf-8")
    out = tmp_path / "preds.csv"
    res = cli("predict", run_dir, src, listing, "-o", out, "--workers", "0", "--device", "cpu", "--tta", "flip")
    assert res.exit_code == 3, res.output
    rows = read_csv(out)
    errors = {Path(e["path"]).name: e["reason"] for e in read_csv(tmp_path / "preds.errors.csv")}
    assert errors == {
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "empty.png": "not an image",
        "gone.png": "not found",
    }
    assert sorted(Path(r["path"]).name for r in rows) == ["ok.png", "png-named.jpg"]  # list's ok.png: a duplicate
    assert "predicted 2 of 6 images" in res.stderr and "truncated" in res.stderr


# ---------------------------------------------------------------- evaluate


def test_evaluate_report_and_confusion(run_dir, data_dir, tmp_path):
    rep, png = tmp_path / "r.json", tmp_path / "cm.png"
    res = cli(
        "evaluate",
        run_dir,
        data_dir,
        "--tta",
        "flip+shift",
        "--report",
        rep,
        "--confusion",
        png,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--top-k",
        "2",
    )
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["classes"]["model"] == CLASSES and not r["classes"]["subset"]
    assert r["accuracy"]["plain"] >= 0.8  # labels follow the model's mapping, not the folder order
    assert r["accuracy"]["top_k"] == 2 and r["accuracy"]["tta_top_k"] >= r["accuracy"]["tta"]
    assert [v["name"] for v in r["views"]] == r["tta"]["views"] and len(r["views"]) == 10
    m = np.array(r["confusion"]["matrix"])
    assert m.sum() == 3 * PER_CLASS and m.sum(1).tolist() == [PER_CLASS] * 3
    assert np.trace(m) / m.sum() == r["accuracy"]["tta"]
    assert sum(pc["n"] for pc in r["per_class"]) == 3 * PER_CLASS
    assert 0 <= r["mcnemar"]["p_value"] <= 1
    assert r["suggested_views"]["views"] and "optimistic" in r["suggested_views"]["note"]
    assert set(r["suggested_views"]["views"]) <= set(r["tta"]["views"])
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 50
    for text in ("plain", "TTA", "McNemar", "single views", "per class", "suggested views", "optimistic"):
        assert text in res.stderr
    assert cli("evaluate", run_dir, data_dir, "--report", rep, "--device", "cpu").exit_code == 2  # no overwrite


def test_class_mismatch_lists_the_differences(run_dir, data_dir, tmp_path, digits):
    bad = tmp_path / "bad"
    for cls in ("zero", "one", "three"):
        write_png(bad / cls / "a.png", digit_rgb(digits[0][0]))
    with pytest.raises(UsageError, match=r"not the model: three; in the model but not the folder: two"):
        evaluate(run_dir, bad, tta="flip", device="cpu", workers=0)
    res = cli("evaluate", run_dir, bad, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 2 and "three" in res.stderr


def test_a_subset_of_classes_is_allowed_and_said(run_dir, data_dir, tmp_path):
    sub = tmp_path / "sub"
    for cls in ("zero", "two"):
        for f in (data_dir / cls).iterdir():
            write_png(sub / cls / f.name, read_image(f))
    res = cli("evaluate", run_dir, sub, "--device", "cpu", "--workers", "0", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["classes"]["subset"] and r["classes"]["missing_from_data"] == ["one"]
    assert "missing: one" in res.stderr


def test_recipe_file_views_and_merge_override(run_dir, data_dir, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ntta:\n  views: [hflip, {crop: {position: tl, size: 0.9}}]\n  merge: max\n")
    rep = tmp_path / "r.json"
    res = cli(
        "evaluate",
        run_dir,
        data_dir,
        "--tta",
        recipe,
        "--merge",
        "tsharpen",
        "--beta",
        "0.5",
        "--report",
        rep,
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["tta"]["views"] == ["hflip", "crop(tl,0.9)"] and r["tta"]["merge"] == "tsharpen"
    assert r["tta"]["beta"] == 0.5
    assert [v["in_merge"] for v in r["views"]] == [True, True, False]  # the plain view, scored only


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tta", "flip+shfit"], "did you mean 'shift'"),
        (["--tta", "TRAIN_ONLY"], "no tta section"),
        (["--tta", "nosuch.yaml"], "not found"),
        (["--top-k", "4"], "3 classes"),
        (["--batch-size", "0"], "batch-size"),
        (["--merge", "median"], "median"),
        (["--beta", "2"], "beta"),
        (["--device", "cuda:7"], "cuda"),
        (["--format", "xml"], "xml"),
    ],
)
def test_bad_options_exit_2(run_dir, data_dir, tmp_path, args, message):
    if "cuda" in message and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if "TRAIN_ONLY" in args:
        recipe = tmp_path / "train-only.yaml"
        recipe.write_text("name: t\ntrain:\n  - flip: {direction: horizontal}\n")
        args = [str(recipe) if a == "TRAIN_ONLY" else a for a in args]
    res = cli("predict", run_dir, data_dir, "--workers", "0", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_existing_output_is_never_overwritten(run_dir, data_dir, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("keep me")
    res = cli("predict", run_dir, data_dir, "-o", out, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert out.read_text() == "keep me"
    res = cli("predict", run_dir, data_dir, "-o", out, "--device", "cpu", "--workers", "0", "--overwrite")
    assert res.exit_code == 0 and len(read_csv(out)) == 3 * PER_CLASS


def test_end_to_end_through_augkit_train(data_dir, tmp_path):
    pytest.importorskip("augkit.training.loop")
    run = tmp_path / "run"
    res = cli(
        "train",
        data_dir,
        "-o",
        run,
        "--weights",
        "none",
        "--epochs",
        "1",
        "--image-size",
        SIZE,
        "--recipe",
        "none",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    out, rep = tmp_path / "p.csv", tmp_path / "r.json"
    res = cli("predict", run, data_dir, "--tta", "tta-flip-shift", "-o", out, "--workers", "0", "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = cli(
        "evaluate", run, data_dir, "--tta", "tta-flip-shift", "--report", rep, "--workers", "0", "--device", "cpu"
    )
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    report = json.loads(rep.read_text())
    assert report["accuracy"]["tta"] == sum(Path(r["path"]).parent.name == r["label"] for r in rows) / len(rows)
    assert report["classes"]["model"] == sorted(CLASSES)  # train's mapping, used as saved


def test_a_failed_write_exits_1_and_leaves_no_file(run_dir, data_dir, tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outfiles_mod, "atomic_write_text", full)
    out = tmp_path / "p.csv"
    res = cli("predict", run_dir, data_dir, "-o", out, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 1 and "No space left" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_another_decode_policy_is_refused(tmp_path, digits):
    from augkit.models.checkpoint import load_checkpoint

    run = make_run(tmp_path, digits[0][:30], digits[1][:30])
    ckpt = load_checkpoint(run / "best.pt")
    meta = ModelMeta.from_dict({**ckpt["meta"], "decode_policy": "pil: no exif"})
    model = build_model("resnet18", 3)
    model.load_state_dict(ckpt["state_dict"])
    save_checkpoint(run / "best.pt", model, meta)
    res = cli("predict", run, tmp_path, "--device", "cpu")
    assert res.exit_code == 2 and "decode policy" in res.stderr


# ---------------------------------------------------------------- evaluate you can act on


def test_precision_recall_f1_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    from augkit.infer.evaluate import macro, precision_recall_f1

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 3, 60))  # class 3 is never predicted
    got = precision_recall_f1(y, pred, 5)  # class 4: neither present nor predicted
    want = precision_recall_fscore_support(y, pred, labels=list(range(5)), zero_division=0)
    for g, w in zip((got["precision"], got["recall"], got["f1"], got["support"]), want):
        np.testing.assert_allclose(g, w)
    avg = precision_recall_fscore_support(y, pred, labels=list(range(5)), average="macro", zero_division=0)
    assert [macro(got)[k] for k in ("precision", "recall", "f1")] == pytest.approx(list(avg[:3]))  # all classes
    avg = precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert [macro(got, present_only=True)[k] for k in ("precision", "recall", "f1")] == pytest.approx(list(avg[:3]))


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory, digits):
    """Three classes, with two images of a 'one' filed under zero and one 'two' under one."""
    images, target = digits
    root = tmp_path_factory.mktemp("mislabelled")
    for c in range(3):
        for i, img in enumerate(images[target == c][:5]):
            write_png(root / CLASSES[c] / f"{c}_{i}.png", digit_rgb(img))
    for i, (c, wrong) in enumerate(((1, 0), (1, 0), (2, 1))):
        write_png(root / CLASSES[wrong] / f"really_{CLASSES[c]}_{i}.png", digit_rgb(images[target == c][10 + i]))
    return root


def test_evaluate_reports_prf_gallery_and_a_readable_confusion(run_dir, mislabelled, tmp_path):
    from sklearn.metrics import precision_recall_fscore_support

    from augkit.infer.gallery import FRAME

    rep, cm, gal = tmp_path / "r.json", tmp_path / "cm.png", tmp_path / "mistakes.png"
    res = cli(
        "evaluate",
        run_dir,
        mislabelled,
        "--tta",
        "flip",
        "--report",
        rep,
        "--confusion",
        cm,
        "--gallery",
        gal,
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    m = np.array(r["confusion"]["matrix"])  # rows true, columns TTA prediction: the pairs behind P/R/F1
    y = np.repeat(np.arange(3), m.sum(1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in m])
    p, rc, f1, n = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    assert [c["precision"] for c in r["per_class"]] == pytest.approx(list(p))
    assert [c["recall"] for c in r["per_class"]] == pytest.approx(list(rc))
    assert [c["f1"] for c in r["per_class"]] == pytest.approx(list(f1))
    assert r["macro"]["tta"]["f1"] == pytest.approx(f1.mean())
    for text in ("precision", "recall", "F1", "macro F1", "confident mistake"):
        assert text in res.stderr
    # the gallery: one red-framed tile per mistake, the planted ones among them, most confident first
    wrong = int(m.sum() - np.trace(m))
    assert len(r["mistakes"]) == wrong >= 2
    assert sum("really_" in x["path"] for x in r["mistakes"]) >= 2
    assert [x["prob"] for x in r["mistakes"]] == sorted((x["prob"] for x in r["mistakes"]), reverse=True)
    frames = np.all(read_image(gal) == np.array(FRAME, np.uint8), axis=2).astype(np.uint8)
    assert cv2.connectedComponents(frames)[0] - 1 == min(wrong, 24)
    # the confusion picture: large enough to read, titled with what it shows
    assert min(read_image(cm).shape[:2]) >= 600
    assert r["confusion"]["predictions"].startswith("TTA predictions: flip")
    # top-k: no column when k >= the number of classes (3 here; the default k is 5)
    assert r["accuracy"]["top_k"] is None and r["accuracy"]["tta_top_k"] is None and "top-" not in res.stderr


def test_plain_evaluation_is_titled_plain(run_dir, data_dir):
    from augkit.infer.evaluate import draw_confusion

    r = evaluate(run_dir, data_dir, tta="identity", device="cpu", workers=0, top_k=2)
    assert r["confusion"]["predictions"] == "plain predictions, no TTA" and r["accuracy"]["top_k"] == 2
    assert not r["mistakes"] or r["mistakes"][0]["prob"] >= r["mistakes"][-1]["prob"]
    big = draw_confusion(np.eye(40, dtype=int), [f"class {i}" for i in range(40)])
    assert min(big.shape[:2]) >= 600 and max(big.shape[:2]) <= 1400


# ---------------------------------------------------------------- one TTA rule, one options object


RECIPE_WITH_TTA = "name: digits-shift\ntrain:\n  - flip: {direction: horizontal}\ntta: {preset: shift, merge: mean}\n"


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, run_dir):
    """run_dir's model, saved as if trained with a recipe whose tta section is ``shift``."""
    from augkit.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "best.pt")
    meta = ModelMeta.from_dict({**ckpt["meta"], "recipe_text": RECIPE_WITH_TTA, "recipe_name": "digits-shift"})
    model = build_model("resnet18", 3)
    model.load_state_dict(ckpt["state_dict"])
    out = tmp_path_factory.mktemp("recipe_run")
    save_checkpoint(out / "best.pt", model, meta)
    return out


def _probs(preds) -> np.ndarray:
    return np.array([[dict(r["top"])[c] for c in CLASSES] for r in preds.rows])


def test_predict_defaults_to_the_run_recipes_tta(recipe_run, data_dir):
    told = []
    default = predict(recipe_run, [data_dir], top_k=3, on_tta=lambda spec, source: told.append((spec, source)))
    shift = predict(recipe_run, [data_dir], tta="shift", top_k=3)
    plain = predict(recipe_run, [data_dir], tta="none", top_k=3)
    assert np.array_equal(_probs(default), _probs(shift))
    assert not np.allclose(_probs(default), _probs(plain))  # shift views do change the probabilities
    assert np.array_equal(_probs(plain), _probs(predict(recipe_run, [data_dir], tta="identity", top_k=3)))
    assert default.tta.preset == "shift" and "digits-shift" in default.tta_source
    assert told[0][0].preset == "shift" and "digits-shift" in told[0][1]


def test_every_command_prints_the_tta_and_none_turns_it_off(recipe_run, data_dir, tmp_path):
    common = ["--workers", "0", "--device", "cpu"]
    res = cli("predict", recipe_run, data_dir, *common)
    assert res.exit_code == 0, res.output
    assert "predict: TTA shift (" in res.stderr and "the run's recipe 'digits-shift'" in res.stderr
    assert "--tta none turns it off" in res.stderr
    res = cli("predict", recipe_run, data_dir, "--tta", "none", *common)
    assert res.exit_code == 0 and "predict: TTA none (the plain view), from --tta" in res.stderr
    assert "predicted 18 of 18 images with TTA none (1 view" in res.stderr
    rep = tmp_path / "r.json"
    res = cli("evaluate", recipe_run, data_dir, "--report", rep, *common)
    assert res.exit_code == 0, res.output
    assert "evaluate: TTA shift (" in res.stderr and "digits-shift" in res.stderr
    r = json.loads(rep.read_text())
    assert r["tta"]["resolved"]["preset"] == "shift" and "digits-shift" in r["tta"]["source"]
    res = cli("evaluate", recipe_run, data_dir, "--tta", "identity", "--report", tmp_path / "p.json", *common)
    assert res.exit_code == 0 and "evaluate: TTA none (the plain view)" in res.stderr
    r = json.loads((tmp_path / "p.json").read_text())
    assert r["tta"]["views"] == ["identity"] and r["accuracy"]["tta"] == r["accuracy"]["plain"]


def test_a_run_without_a_recipe_tta_is_plain_and_says_so(run_dir, data_dir):
    res = cli("predict", run_dir, data_dir, "--workers", "0", "--device", "cpu")
    assert res.exit_code == 0 and "TTA none (the plain view): plain: the run's recipe has no tta section" in res.stderr
    r = evaluate(run_dir, data_dir, device="cpu", workers=0)
    assert r["tta"]["views"] == ["identity"]  # no longer flip for every model (text and digits must not flip)


def test_export_and_predict_on_the_onnx_use_the_same_default(recipe_run, data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = tmp_path / "m.onnx"
    res = cli("export", recipe_run, "-o", onnx)
    assert res.exit_code == 0, res.output
    assert "TTA shift (" in res.stderr and "digits-shift" in res.stderr
    told = []
    got = predict(onnx, [data_dir], top_k=3, on_tta=lambda s, src: told.append(src))
    want = predict(recipe_run, [data_dir], top_k=3)
    assert np.abs(_probs(got) - _probs(want)).max() < 1e-4 and "exported with" in told[0]
    plain = predict(onnx, [data_dir], tta="none", top_k=3)
    assert np.abs(_probs(plain) - _probs(predict(recipe_run, [data_dir], tta="none", top_k=3))).max() < 1e-4


def test_one_options_object_validated_in_one_place(run_dir, data_dir):
    from augkit.infer.options import InferOptions
    from augkit.infer.predict import ENGINES, predict_local

    assert set(ENGINES) == {"local", "ray"} and ENGINES["local"] is predict_local
    opts = InferOptions(tta="flip", top_k=2, batch_size=4)
    a = predict(run_dir, [data_dir], opts)
    b = predict(run_dir, [data_dir], tta="flip", top_k=2, batch_size=4)
    assert a.rows == b.rows
    for bad, message in (
        ({"batch_size": 0}, "--batch-size 0"),
        ({"top_k": 0}, "--top-k 0"),
        ({"merge": "median"}, "not a merge mode"),
        ({"beta": 1.5}, "--beta 1.5"),
        ({"workers": -1}, "--workers -1"),
        ({"address": "auto"}, "--address needs --engine ray"),
    ):
        with pytest.raises(UsageError, match=message):
            InferOptions(**bad)
    with pytest.raises(UsageError, match="did you mean 'ray'"):
        predict(run_dir, [data_dir], engine="rya")
    with pytest.raises(TypeError, match="unknown inference option"):
        predict(run_dir, [data_dir], topk=3)


# ---------------------------------------------------------------- pictures that explain


def test_gallery_tiles_are_named_by_file_and_the_title_is_whole(monkeypatch, data_dir):
    import augkit.infer.gallery as gallery

    drawn = []
    real = cv2.putText
    monkeypatch.setattr(
        gallery.cv2, "putText", lambda img, text, *a, **k: (drawn.append(text), real(img, text, *a, **k))
    )
    files = sorted(str(p) for p in (data_dir / "one").iterdir())[:3]
    mistakes = [{"path": f, "true": "one", "predicted": "seven", "prob": 0.9} for f in files]
    mistakes[0]["path"] = str(Path(files[0]).with_name("IMG_20240101_123456_a_very_long_camera_name.png"))
    title = "most confident mistakes (TTA predictions: flip+shift, merge mean, beta 0.25): 3 of 17 wrong of 1800 " * 2
    img = gallery.draw_gallery(mistakes, title)
    for f in files[1:]:
        assert Path(f).name in drawn  # each tile names its file
    long = next(t for t in drawn if t.startswith("IMG_2024"))
    assert long.endswith("name.png") and "~" in long  # a long name keeps its start and its end
    words = " ".join(t for t in drawn if "confident" in t or "wrong" in t or "merge" in t)
    assert words.split() == title.split()  # the title is wrapped, never cut
    assert img.shape[1] >= 600


def test_confusion_shading_makes_a_small_confusion_visible():
    from augkit.infer.evaluate import CONFUSED, draw_confusion

    img = draw_confusion(np.array([[95, 5], [0, 100]]), ["cat", "dog"])
    cell = img[72 + 20 : 72 + 30, :]  # a band across the first row's cells
    reddish = (cell[..., 0].astype(int) - cell[..., 2].astype(int) > 25) & (cell[..., 1] < 215)
    assert reddish.any()  # 5% of the row confused: a visible red tint, not near-white
    assert CONFUSED[0] > CONFUSED[2]


def test_an_engine_is_one_registry_entry_and_the_summary_names_it(run_dir, data_dir, monkeypatch):
    """``--engine NAME`` dispatches through ``ENGINES``; the closing line names a non-local engine."""
    from augkit.infer import predict as predict_mod

    calls = []

    def fake_ray(run, inputs, opts, hooks):
        calls.append(opts)
        return predict_mod.predict_local(run, inputs, opts, hooks)

    monkeypatch.setitem(predict_mod.ENGINES, "ray", fake_ray)
    res = cli("predict", run_dir, data_dir, "--engine", "ray", "--workers", "0", "--device", "cpu", "--tta", "flip")
    assert res.exit_code == 0, res.output
    assert calls and calls[0].engine == "ray" and calls[0].tta == "flip"
    assert "predicted 18 of 18 images with TTA flip (2 views, merge mean) (engine ray)" in res.stderr
