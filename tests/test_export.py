"""``augkit export``: the ONNX graph's probabilities equal augkit's PyTorch path within
1e-4 on real images, plain and with ``flip+shift`` built in; ``predict``/``evaluate`` on the
exported file give the run's answers; metadata, atomic no-overwrite writes, and the exit-2
messages (a view the export lacks, a bad opset, a missing extra, a file that is not an export).

Two exports of a tiny digits ResNet-18 (32 px) are shared by the module (a few seconds each).
"""

from __future__ import annotations

import csv
import json
import sys

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from _tinymodel import CLASSES, digit_rgb, digits3, make_run, write_png  # noqa: E402

from augkit.cli import app  # noqa: E402
from augkit.errors import UsageError  # noqa: E402
from augkit.infer.engine import DecodedImages, collect_inputs, load_for_inference, resolve_tta, run_tta  # noqa: E402
from augkit.infer.evaluate import evaluate  # noqa: E402
from augkit.infer.export import export_onnx  # noqa: E402
from augkit.infer.predict import predict  # noqa: E402

runner = CliRunner()
TOL = 1e-4


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run, a labelled digits folder plus two real photos, and its plain and flip+shift exports."""
    import skimage.data

    root = tmp_path_factory.mktemp("export")
    images, target = digits3()
    (root / "run").mkdir()
    make_run(root / "run", images[:90], target[:90])
    for i in range(90, 102):
        write_png(root / "data" / CLASSES[target[i]] / f"{i}.png", digit_rgb(images[i], 40))
    photos = root / "photos"
    for name in ("chelsea", "coffee"):
        write_png(photos / f"{name}.png", cv2.resize(getattr(skimage.data, name)(), (60, 45)))
    exports = {tta: export_onnx(root / "run", root / f"{tta}.onnx", tta=tta).path for tta in ("none", "flip+shift")}
    return root, exports


def _probs(preds) -> np.ndarray:
    """(N, K) probabilities in the model's class order from predict rows with top_k = K."""
    return np.array([[dict(r["top"])[c] for c in CLASSES] for r in preds.rows])


@pytest.mark.parametrize("tta,export", [("none", "none"), ("flip+shift", "flip+shift"), ("flip", "flip+shift")])
def test_onnx_probabilities_equal_pytorch_on_real_images(setup, tta, export):
    root, exports = setup
    inputs = [root / "data", root / "photos"]
    spec = None if tta == "none" else tta
    ours = predict(root / "run", inputs, tta=spec, top_k=len(CLASSES))
    onnx = predict(exports[export], inputs, tta=spec, top_k=len(CLASSES))
    assert [r["path"] for r in onnx.rows] == [r["path"] for r in ours.rows] and len(ours.rows) == 14
    assert np.abs(_probs(onnx) - _probs(ours)).max() < TOL
    assert [r["label"] for r in onnx.rows] == [r["label"] for r in ours.rows]


@pytest.mark.parametrize("export", ["none", "flip+shift"])
def test_the_graph_alone_merges_its_views_like_augkit(setup, export):
    """What a deployment sees: onnxruntime's ``probs`` on augkit-decoded uint8 images."""
    import onnxruntime as ort

    root, exports = setup
    paths = collect_inputs([root / "data", root / "photos"])
    images = torch.stack([DecodedImages(paths, 32)[i][1] for i in range(len(paths))])
    got = ort.InferenceSession(str(exports[export])).run(["probs"], {"images": images.permute(0, 3, 1, 2).numpy()})[0]
    model, meta, _ = load_for_inference(root / "run", torch.device("cpu"))
    want = run_tta(model, meta, paths, resolve_tta(None if export == "none" else export), device=torch.device("cpu"))
    assert got.shape == (len(paths), len(CLASSES)) and np.abs(got - want.merged).max() < TOL


def test_predict_cli_on_the_onnx_gives_the_runs_labels(setup, tmp_path):
    root, exports = setup
    for src, out in ((root / "run", tmp_path / "run.csv"), (exports["flip+shift"], tmp_path / "onnx.csv")):
        res = cli("predict", src, root / "data", "-o", out, "--workers", 0, "--device", "cpu")
        assert res.exit_code == 0, res.output
    rows = [
        list(csv.DictReader(open(p, newline="", encoding="utf-8")))
        for p in (tmp_path / "run.csv", tmp_path / "onnx.csv")
    ]
    assert [r["label"] for r in rows[1]] == [r["label"] for r in rows[0]] and len(rows[0]) == 12


def test_evaluate_on_the_onnx_gives_the_runs_report(setup):
    root, exports = setup
    ours, onnx = (evaluate(src, root / "data", tta="flip") for src in (root / "run", exports["flip+shift"]))
    for key in ("plain", "tta", "plain_top_k", "tta_top_k"):
        assert onnx["accuracy"][key] == ours["accuracy"][key], key
    assert onnx["confusion"]["matrix"] == ours["confusion"]["matrix"]


def test_metadata_names_classes_size_policy_and_tta(setup):
    import onnx

    root, exports = setup
    model = onnx.load(str(exports["flip+shift"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == CLASSES and props["image_size"] == "32"
    meta = json.loads(props["augkit.meta"])
    assert meta["decode_policy"] == props["decode_policy"] and meta["arch"] == "resnet18"
    assert json.loads(props["augkit.tta"]) == {"preset": "flip+shift", "merge": "mean", "beta": 0.0}
    assert len(json.loads(props["augkit.views"])) == 10
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims][1:] == [3, 32, 32] and dims[0].dim_param  # dynamic batch


def test_a_view_the_export_lacks_is_refused(setup):
    root, exports = setup
    res = cli("predict", exports["none"], root / "data", "--tta", "flip")
    assert res.exit_code == 2 and "not in this export" in res.output and "identity" in res.output
    res = cli("evaluate", exports["flip+shift"], root / "data", "--tta", "ten-crop")
    assert res.exit_code == 2 and "crop(center,0.875)" in res.output


def test_an_existing_file_is_never_overwritten(setup):
    root, exports = setup
    before = exports["none"].read_bytes()
    res = cli("export", root / "run", "-o", exports["none"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert exports["none"].read_bytes() == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.parametrize(
    "args,message",
    [
        (["--opset", "17"], "--opset 17: must be >= 18"),
        (["--tta", "flipp"], "did you mean 'flip'"),
    ],
)
def test_bad_options_exit_2(setup, tmp_path, args, message):
    root, _ = setup
    res = cli("export", root / "run", "-o", tmp_path / "m.onnx", *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_inputs_exit_2(setup, tmp_path):
    root, exports = setup
    res = cli("export", exports["none"], "-o", tmp_path / "again.onnx")
    assert res.exit_code == 2 and "already an exported model" in res.output
    res = cli("export", root / "run", "-o", tmp_path / "m.pt")
    assert res.exit_code == 2 and "ends in .onnx" in res.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    res = cli("predict", junk, root / "data")
    assert res.exit_code == 2 and "cannot load the ONNX model" in res.output


def test_a_missing_extra_says_what_to_install(setup, tmp_path, monkeypatch):
    root, exports = setup
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(UsageError, match=r'pip install "augkit\[onnx\]"'):
        predict(exports["none"], [root / "data"])
    res = cli("export", root / "run", "-o", tmp_path / "m.onnx")
    assert res.exit_code == 2 and 'pip install "augkit[onnx]"' in res.output
