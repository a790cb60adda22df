"""What a new user meets first: ``--weights imagenet`` on a machine that cannot download them is
refused before any work, with ``--weights none`` offered in the same message; ``augkit models
--timm`` reads timm's name list (no model built) and names real families; timm's did-you-mean
points to augkit's own command."""

from __future__ import annotations

import json
import os
import socket
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
import torch
from _digits import digits_folder
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.models import weights as weights_mod

runner = CliRunner()
FAST = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """stderr with table borders and line wraps removed (a wrapped cell reads as one line)."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached weights (an empty torch hub folder) and no network: every connection fails as an
    unplugged machine's does. Returns the hosts that were tried."""
    tried = []

    def unreachable(address, *a, **k):
        tried.append(address[0])
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tried


def test_imagenet_offline_is_refused_before_any_work_offering_weights_none(offline, tmp_path):
    data = digits_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    start = time.monotonic()
    res = cli("train", data, "-o", run, *FAST)  # --weights imagenet is the default
    assert res.exit_code == 2, res.output
    msg = " ".join(res.stderr.split())
    assert "none are cached" in msg and "cannot be reached (Network is unreachable)" in msg
    assert "--weights none" in msg and "download.pytorch.org" in msg
    assert offline == ["download.pytorch.org"]
    assert not run.exists()  # nothing written: said before training
    assert time.monotonic() - start < 60
    res = cli("train", data, "-o", run, "--weights", "none", *FAST)  # the offered fix works offline
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").is_file()


def test_cached_weights_need_no_network(offline, tmp_path):
    url, cached, folder = weights_mod.imagenet_source("resnet18")
    assert cached is None and folder == str(tmp_path / "hub" / "checkpoints")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]).write_bytes(b"stand-in")
    assert weights_mod.check_imagenet_reachable("resnet18") == "cached" and offline == []


def test_a_reachable_host_is_left_to_the_download(monkeypatch, tmp_path):
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert weights_mod.check_imagenet_reachable("resnet18") == "downloadable"


# ---------------------------------------------------------------- augkit models --timm


def test_models_timm_lists_real_families_without_building_a_model(monkeypatch):
    timm = pytest.importorskip("timm")
    from augkit.models import archs

    def no_build(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(archs, "_build", no_build)
    res = cli("models", "--timm", "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = [line.split(",") for line in res.stdout.splitlines()[1:]]
    assert len(rows) == len(timm.list_models()) > 1000
    family = {r[0]: r[1] for r in rows}
    assert family["timm/resnet18"] == "resnet" and family["timm/vit_base_patch16_224"] == "vision_transformer"
    assert len(set(family.values())) > 50 and "timm" not in set(family.values())
    assert "reading timm's model list" in res.stderr
    res = cli("models", "--timm", "convnext_at*")
    assert res.exit_code == 0 and "timm/convnext_atto" in res.stdout and "convnext" in res.stdout


def test_timm_did_you_mean_points_to_augkits_command():
    pytest.importorskip("timm")
    from augkit.models.archs import check_arch

    with pytest.raises(UsageError, match=r"did you mean 'resnet18'.*augkit models --timm"):
        check_arch("timm/resnet18x")
    res = cli("models", "--timm", "resnt18")
    assert res.exit_code == 2 and "did you mean" in res.stderr and "augkit models --timm" in res.stderr


# ---------------------------------------------------------------- status lines that are true


def test_ctrl_c_in_train_says_the_exact_command_to_resume_and_it_works(tmp_path, monkeypatch):
    import shlex

    import augkit.training.loop as trainmod

    data = digits_folder(tmp_path / "data", per_class=4)
    args = ["train", str(data), "-o", str(tmp_path / "run"), "--weights", "none", *FAST]
    args[args.index("--epochs") + 1] = "2"
    monkeypatch.setattr("sys.argv", ["augkit", *args])
    real = trainmod._run_epoch

    def ctrl_c_in_epoch_2(e, *a, **k):
        if e == 1:
            raise KeyboardInterrupt
        return real(e, *a, **k)

    monkeypatch.setattr(trainmod, "_run_epoch", ctrl_c_in_epoch_2)
    res = cli(*args)
    assert res.exit_code == 130, res.output
    msg = " ".join(res.stderr.split())
    assert "run the same command again" not in msg and "last.pt" in msg
    command = msg.split("resume with: ", 1)[1]
    assert command.startswith("augkit train ") and command.endswith(" --resume")
    monkeypatch.setattr(trainmod, "_run_epoch", real)
    res = cli(*shlex.split(command)[1:])  # exactly what it said
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + epochs 1 and 2


def test_ctrl_c_before_the_first_epoch_says_start_again(tmp_path):
    from augkit.commands.train import resume_hint

    hint = resume_hint(tmp_path, ["train", "data", "-o", str(tmp_path)])
    assert "--resume" not in hint and "start again with: augkit train data -o" in hint


def test_the_train_summary_names_the_engine(monkeypatch):
    from augkit.commands.train import engine_line
    from augkit.training.distributed import ENV_KEYS

    assert engine_line("cpu").startswith("one process")
    for key in ENV_KEYS:
        monkeypatch.setenv(key, "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert engine_line("cpu") == "distributed: 2 processes (torchrun, DistributedDataParallel, gloo)"


def test_augment_counts_add_up_no_0_of_0_and_a_recipe_mix_is_reported(tmp_path):
    from _imgs import class_folder

    from augkit.offline.run import augment

    src, dst = class_folder(tmp_path / "src", per_class=2), tmp_path / "dst"
    first = augment(src, dst, "light", copies=2, workers=1)
    assert first.to_process == first.written == first.processed == 12 and first.already_done == 0
    res = cli("augment", src, dst, "-r", "light", "-n", "2", "-w", "1")  # a no-op
    assert res.exit_code == 0, res.output
    text = flat(res.stderr)
    assert "0/0" not in text and "nothing to do: all 12 planned outputs are already done" in text
    assert "local (this process" in text
    # another recipe into the same folder: nothing of the old one counts as "already done" for this one
    again = augment(src, dst, "heavy", copies=3, workers=1)
    assert again.already_done == again.verified  # only outputs recomputed under heavy and found identical
    assert again.processed == again.to_process == 18
    assert again.written + again.verified + len(again.existing) == 18
    assert set(name for name, _ in again.recipes.values()) == {"light", "heavy"}
    res = cli("augment", src, dst, "-r", "heavy", "-n", "3", "-w", "1")
    text = flat(res.stderr)
    assert "mixes augmented outputs of 2 recipes" in text and "light" in text and "heavy" in text
    assert "6 (recorded with these settings" in text and "12 to process" in text and "12 existing kept" in text


def test_the_augment_summary_names_the_engine():
    from augkit.commands.augment import _engine_text
    from augkit.offline.run import AugmentOptions

    assert _engine_text(AugmentOptions(engine="ray")).startswith("ray (Ray Data actors")
    assert _engine_text(AugmentOptions(workers=2)).startswith("local (this process, plus up to 2 worker")


# ---------------------------------------------------------------- held-out data


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    """Digits augmented by augkit itself: 6 sources a class, 3 copies each plus the original."""
    from augkit.offline.run import augment

    root = tmp_path_factory.mktemp("held_out")
    src = digits_folder(root / "src", per_class=6)
    augment(src, root / "dst", "digits", copies=3, originals=True, workers=1)
    return root / "dst"


def _sources(dst, keys) -> set[str]:
    from augkit.offline.dst import latest_rows

    rows = latest_rows(dst)
    return {rows[k]["source"] for k in keys}


def test_a_split_of_augmented_data_keeps_each_source_on_one_side(augmented):
    from augkit.training.config import TrainConfig
    from augkit.training.loop import load_data, stratified_split

    cfg = TrainConfig(data=augmented, out=augmented.parent / "unused", recipe=None, val_split=0.25, image_size=32)
    data = load_data(cfg, None)
    train, val = _sources(augmented, data.train.keys), _sources(augmented, data.val.keys)
    assert len(data.train) + len(data.val) == 3 * 6 * 4 and train and val
    assert not train & val  # no source photo on both sides
    assert "grouped by source: 18 source images of 72" in data.layout
    assert len(val) == 6 and len(data.val) == 6 * 4  # round(6 sources x 0.25): two sources a class, 4 files each
    # what the plain stratified split did: copies of one photo on both sides
    full = load_data(TrainConfig(data=augmented, out="x", recipe=None, val_split=0, image_size=32), None).train
    tr, va = stratified_split(full.targets, 0.25, 0)
    keys = full.keys
    assert _sources(augmented, [keys[i] for i in tr]) & _sources(augmented, [keys[i] for i in va])


def test_an_unused_test_folder_is_named_and_test_evaluates_it(tmp_path):
    data = tmp_path / "data"
    for split, start in (("train", 0), ("val", 8), ("test", 12)):
        digits_folder(data / split, per_class=4 if split != "train" else 8, start=start)
    run = tmp_path / "run"
    res = cli("train", data, "-o", run, "--weights", "none", *FAST)
    assert res.exit_code == 0, res.output
    text = flat(res.stderr)
    assert f"{data / 'test'} was not used" in text and f"--test {data / 'test'}" in text
    assert f"augkit evaluate {run} {data / 'test'}" in text
    run2 = tmp_path / "run2"
    res = cli("train", data, "-o", run2, "--weights", "none", "--test", data / "test", *FAST)
    assert res.exit_code == 0, res.output
    text = flat(res.stderr)
    assert "was not used" not in text and "12 held-out images" in text
    report = json.loads((run2 / "test_report.json").read_text())
    from augkit.infer.evaluate import evaluate

    again = evaluate(run2, data / "test", device="cpu", workers=0)
    assert report["accuracy"] == again["accuracy"] and report["counts"]["evaluated"] == 12
    res = cli("train", data, "-o", tmp_path / "run3", "--weights", "none", "--test", tmp_path / "nope", *FAST)
    assert res.exit_code == 2 and "--test" in res.stderr and not (tmp_path / "run3").exists()


# ---------------------------------------------------------------- pictures that explain


def test_curves_log_loss_axis_best_epoch_and_early_stop_marked_legend_outside(tmp_path, monkeypatch):
    import numpy as np

    import augkit.training.plot as plot
    from augkit.io.images import read_image

    labels = []
    real_text = plot._text
    monkeypatch.setattr(plot, "_text", lambda img, s, org, *a, **k: (labels.append(s), real_text(img, s, org, *a, **k)))
    losses = [(2.3, 1.5), (0.9, 0.7), (0.4, 0.5), (0.25, 0.55), (0.2, 0.6)]
    rows = [
        dict(epoch=i + 1, train_loss=t, val_loss=v, train_acc=0.5, val_acc=0.5, lr_first=1e-3, lr_last=1e-3)
        for i, (t, v) in enumerate(losses)
    ]
    path = tmp_path / "curves.png"
    plot.plot_curves(rows, path, best_epoch=3, stopped="early stop: no improvement in val_acc for 2 epochs")
    img = read_image(path)
    assert "loss (log scale)" in labels and "1e0" in labels and "1e-1" in labels
    assert "best 3" in labels and "early stop" in labels

    def has(color, region) -> bool:
        return bool(np.all(region == np.array(color, np.uint8), axis=-1).any())

    third, top = 1200 // 3, 55
    left, right = 60, third - 15
    best_x = round(left + (right - left) * 2 / 4)  # epoch 3 of 5
    assert has(plot.BEST_COLOR, img[top:-45, best_x - 1 : best_x + 2])
    assert has(plot.CHOICE_COLOR, img[top:-45, right - 1 : right + 2])  # the early stop, at the last epoch
    legend = img[25:top, :third]
    assert has(plot.TRAIN_COLOR, legend) and has(plot.VAL_COLOR, legend)  # the legend sits above the chart
    plot.plot_curves(rows, tmp_path / "plain.png")  # no best epoch given: no mark
    assert not has(plot.BEST_COLOR, read_image(tmp_path / "plain.png"))
