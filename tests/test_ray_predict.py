"""``augkit predict --engine ray``: the same rows as the local path (labels equal, probabilities
allclose), errors included, through the API and the CLI. One local Ray cluster (2 CPUs) is shared
by the module; tests that need Ray are marked ``ray`` and skip when it is not installed.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _digits import digits_folder
from _ray import local_ray
from typer.testing import CliRunner

from augkit.cli import app
from augkit.infer.predict import predict
from augkit.io.images import DECODE_POLICY
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.models.archs import build_model
from augkit.models.checkpoint import ModelMeta, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")
runner = CliRunner()
CLASSES = ["d0", "d1", "d2"]


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    """A tiny untrained resnet18 (seeded) saved as an augkit run folder."""
    run = tmp_path_factory.mktemp("model") / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    meta = ModelMeta(
        arch="resnet18",
        classes=CLASSES,
        class_to_idx={c: i for i, c in enumerate(CLASSES)},
        image_size=32,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        decode_policy=DECODE_POLICY,
        resize_policy=RESIZE_POLICY,
    )
    save_checkpoint(run / "best.pt", model, meta, epoch=1)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = digits_folder(tmp_path_factory.mktemp("imgs") / "in", per_class=6, size=40)
    (root / "d1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _same(local, remote):
    assert [r["path"] for r in remote.rows] == [r["path"] for r in local.rows]
    assert [r["label"] for r in remote.rows] == [r["label"] for r in local.rows]
    assert [[lab for lab, _ in r["top"]] for r in remote.rows] == [[lab for lab, _ in r["top"]] for r in local.rows]
    np.testing.assert_allclose(
        [[p for _, p in r["top"]] for r in remote.rows],
        [[p for _, p in r["top"]] for r in local.rows],
        rtol=1e-5,
        atol=1e-6,
    )
    assert remote.errors == local.errors and remote.counts == local.counts


@pytest.mark.ray
def test_ray_predictions_equal_local(ray_cluster, model_run, images):
    from augkit.infer.predict_ray import predict_ray

    local = predict(model_run, [images], tta="flip+shift", top_k=3, batch_size=4, device="cpu")
    seen = []
    remote = predict_ray(
        model_run,
        [images],
        tta="flip+shift",
        top_k=3,
        batch_size=4,
        device="cpu",
        workers=2,
        on_start=seen.append,
        progress=seen.append,
    )
    assert len(local.rows) == 18 and [e["reason"] for e in local.errors] == ["truncated"]
    _same(local, remote)
    assert seen[0] == 19 and sum(seen[1:]) == 19  # on_start, then progress over every input
    assert ray_cluster.is_initialized()  # a Ray this process started is reused and left running


@pytest.mark.ray
def test_cli_engine_ray_same_csv_rows(ray_cluster, model_run, images, tmp_path, monkeypatch):
    monkeypatch.chdir(images.parent)  # relative inputs: the actors get absolute paths, the rows keep these
    out = {}
    for engine in ("local", "ray"):
        o = tmp_path / f"{engine}.csv"
        res = runner.invoke(
            app,
            [
                "predict",
                str(model_run),
                "in",
                "--tta",
                "flip",
                "-k",
                "2",
                "-b",
                "8",
                "--device",
                "cpu",
                "--engine",
                engine,
                "-o",
                str(o),
            ],
        )
        assert res.exit_code == 3, res.output  # one input skipped
        out[engine] = list(csv.reader(io.StringIO(o.read_text())))
        assert (tmp_path / f"{engine}.errors.csv").read_text().count("broken.jpg") == 1
    loc, ray_rows = out["local"], out["ray"]
    assert ray_rows[0] == loc[0] == ["path", "label", "prob", "label_2", "prob_2"]
    assert [(r[0], r[1], r[3]) for r in ray_rows[1:]] == [(r[0], r[1], r[3]) for r in loc[1:]]
    assert all(r[0].startswith("in") for r in loc[1:])
    np.testing.assert_allclose(
        [[float(r[2]), float(r[4])] for r in ray_rows[1:]], [[float(r[2]), float(r[4])] for r in loc[1:]], atol=2e-6
    )


def test_address_needs_engine_ray(model_run, images):
    res = runner.invoke(app, ["predict", str(model_run), str(images), "--address", "auto"])
    assert res.exit_code == 2 and "--address needs --engine ray" in res.output
    res = runner.invoke(app, ["predict", str(model_run), str(images), "--engine", "spark"])
    assert res.exit_code == 2 and "not supported" in res.output


def test_missing_extra_says_how_to_install(model_run, images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    res = runner.invoke(app, ["predict", str(model_run), str(images), "--engine", "ray"])
    assert res.exit_code == 2 and 'pip install "augkit[ray]"' in res.output
