"""Checkpoints a user edited, truncated or replaced: every one refused before use with a message
naming the file and what is wrong, exit 2, in predict, evaluate and ``train --weights``, and an absurd image size refused before it allocates anything."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
import torch
from _digits import digits_folder
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.io.images import DECODE_POLICY
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.models.archs import build_model
from augkit.models.checkpoint import MAX_IMAGE_SIZE, ModelMeta, load_checkpoint, load_model, save_checkpoint
from augkit.models.weights import weights_file_state_dict

CLASSES = ["d0", "d1", "d2"]
runner = CliRunner()


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict:
    """A valid checkpoint's contents (resnet18, 3 classes, 32 px), loaded back as saved."""
    path = tmp_path_factory.mktemp("ok") / "best.pt"
    torch.manual_seed(0)
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
    save_checkpoint(path, build_model("resnet18", 3), meta)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("data") / "d", per_class=2)


def edited(payload: dict, **meta) -> dict:
    """The payload with meta fields replaced (a value of ``...`` deletes the field)."""
    new = {k: v for k, v in payload["meta"].items() if meta.get(k, None) is not ...}
    new.update({k: v for k, v in meta.items() if v is not ...})
    return {**payload, "meta": new}


def write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _zip_junk() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("best/data.pkl", b"\x80\x02junk")
        zf.writestr("best/version", b"3\n")
    return buf.getvalue()


# (what was done to the file, how to make it, what the message must say)
CASES = [
    ("arch edited", lambda p: edited(p, arch="resnet19"), r"unknown arch 'resnet19'; did you mean 'resnet18'"),
    ("arch of the wrong type", lambda p: edited(p, arch=18), "arch 18: must be a string"),
    ("no meta", lambda p: {k: v for k, v in p.items() if k != "meta"}, "no 'meta' entry"),
    ("no state_dict", lambda p: {k: v for k, v in p.items() if k != "state_dict"}, "no 'state_dict' entry"),
    ("meta is a list", lambda p: {**p, "meta": [1, 2]}, "'meta' is a list"),
    ("state_dict is a string", lambda p: {**p, "state_dict": "weights"}, "'state_dict' is a str"),
    ("a field is missing", lambda p: edited(p, image_size=...), "meta has no image_size"),
    ("image_size 100000", lambda p: edited(p, image_size=100000), f"out of range .allowed: 8 to {MAX_IMAGE_SIZE}"),
    ("image_size negative", lambda p: edited(p, image_size=-3), "image_size -3: out of range"),
    ("image_size a float", lambda p: edited(p, image_size=32.5), "must be an integer"),
    ("image_size a string", lambda p: edited(p, image_size="32"), "must be an integer, not a str"),
    ("std all zero", lambda p: edited(p, std=[0.0, 0.0, 0.0]), "std .*must be > 0"),
    ("mean of 2 values", lambda p: edited(p, mean=[0.5, 0.5]), "mean .*list of 3 numbers"),
    ("std with NaN", lambda p: edited(p, std=[0.2, float("nan"), 0.2]), "3 finite numbers"),
    (
        "a class removed",
        lambda p: edited(p, classes=CLASSES[:2], class_to_idx={"d0": 0, "d1": 1}),
        "class list has 2 names but the model's head has 3 outputs",
    ),
    ("a class duplicated", lambda p: edited(p, classes=["d0", "d1", "d1"]), "names 'd1' more than once"),
    ("a class not a string", lambda p: edited(p, classes=["d0", 1, "d2"]), "non-empty strings, found 1"),
    (
        "class_to_idx edited",
        lambda p: edited(p, class_to_idx={"d0": 2, "d1": 1, "d2": 0}),
        "class_to_idx does not match",
    ),
    ("classes not a list", lambda p: edited(p, classes="d0,d1,d2"), "classes 'd0,d1,d2': must be a list"),
    ("decode policy not a string", lambda p: edited(p, decode_policy=None), "decode_policy None: must be a string"),
    (
        "a weight missing",
        lambda p: {**p, "state_dict": {k: v for k, v in p["state_dict"].items() if k != "layer1.0.conv1.weight"}},
        "weights do not fit a resnet18 with 3 classes",
    ),
    (
        "a weight not a tensor",
        lambda p: {**p, "state_dict": {**p["state_dict"], "fc.bias": [0, 0, 0]}},
        "entry 'fc.bias' is a list",
    ),
]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def bad_checkpoint(request, payload, tmp_path) -> tuple[Path, str]:
    _, make, message = request.param
    return write(tmp_path / "best.pt", make(payload)), message


def test_each_damage_is_refused_by_the_loader(bad_checkpoint):
    path, message = bad_checkpoint
    with pytest.raises(UsageError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_each_damage_is_exit_2_in_predict_and_evaluate(bad_checkpoint, data):
    path, message = bad_checkpoint
    for args in (("predict", path, data, "--device", "cpu"), ("evaluate", path, data, "--device", "cpu")):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, (args[0], res.output)
        assert "Traceback" not in res.output and str(path) in res.stderr
        assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("damage", ["truncated", "zip-like junk", "empty", "text"])
def test_damaged_files_are_refused(payload, tmp_path, data, damage):
    buf = io.BytesIO()
    torch.save(payload, buf)
    raw = buf.getvalue()
    content = {
        "truncated": raw[: len(raw) // 2],
        "zip-like junk": _zip_junk(),
        "empty": b"",
        "text": b"not a checkpoint\n",
    }[damage]
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="refused to load: not a safe checkpoint .* or a damaged file"):
        load_checkpoint(path)
    res = runner.invoke(app, ["predict", str(path), str(data), "--device", "cpu"])
    assert res.exit_code == 2 and str(path) in res.stderr, res.output


def test_train_weights_refuses_damaged_checkpoints(payload, tmp_path):
    """``train --weights FILE`` reads through models.weights_file_state_dict: the same checks."""
    for make, message in (
        (lambda p: {k: v for k, v in p.items() if k != "state_dict"}, "no 'state_dict' entry"),
        (lambda p: edited(p, classes=["d0", "d0", "d2"]), "more than once"),
        (lambda p: {"fc.weight": torch.zeros(3, 512), "bad": "text"}, "entry 'bad' is a str"),
    ):
        path = write(tmp_path / "w.pt", make(payload))
        with pytest.raises(UsageError, match=message):
            weights_file_state_dict(path)
    run = tmp_path / "run"
    run.mkdir()
    write(run / "best.pt", edited(payload, arch="resnet5"))
    with pytest.raises(UsageError, match="unknown arch 'resnet5'"):
        weights_file_state_dict(run)


def test_train_weights_cli_exit_2(payload, tmp_path, data):
    pytest.importorskip("augkit.training.loop")
    path = write(tmp_path / "w.pt", edited(payload, std=[0, 0, 0]))
    res = runner.invoke(
        app,
        [
            "train",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--weights",
            str(path),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 2 and "must be > 0" in res.stderr, res.output


def test_valid_checkpoints_still_load_and_plain_state_dicts_still_work(payload, tmp_path):
    path = write(tmp_path / "best.pt", payload)
    model, meta = load_model(path)
    assert meta.classes == CLASSES and meta.image_size == 32 and not model.training
    plain = write(tmp_path / "plain.pt", payload["state_dict"])
    assert set(weights_file_state_dict(plain)) == set(payload["state_dict"])
    old = write(tmp_path / "old.pt", edited(payload, decode_policy=...))  # saved before the field existed
    assert load_model(old)[1].decode_policy == ""


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"format": "augkit-checkpoint-v1", "meta": Evil()}))
    with pytest.raises(UsageError, match="not a safe checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_fifo_checkpoint_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        load_model(tmp_path)
