"""Who waited: the share of the step time spent waiting for data, the loader's and the model's rates,
in metrics.csv and the train summary, with advice when the loader is the bottleneck."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
from _digits import digits_folder
from typer.testing import CliRunner

from augkit.cli import app
from augkit.training.dataset import AugmentedImageFolder
from augkit.training.feed import BOTTLENECK_SHARE, FeedMeter, FeedStats, advice, from_rows

DELAY = 0.03  # seconds a deliberately slow loader spends on each item


def _slow(items: int, delay: float):
    for _ in range(items):
        time.sleep(delay)
        yield torch.zeros(4, 3, 8, 8), torch.zeros(4)


def test_a_slow_loader_is_seen_waiting_and_gets_advice():
    meter = FeedMeter(workers=0)
    for _x, _y in meter.iterate(_slow(6, DELAY)):
        pass  # the "step" costs nothing: every second of the epoch is waiting
    s = meter.stats()
    assert s.images == 24 and s.data_wait > 0.9
    assert s.loader_img_s == pytest.approx(24 / s.wait_seconds)
    tip = advice(s, cache=False, image_size=224)
    assert tip and "bottleneck" in tip and "--workers (now 0)" in tip and "--cache" in tip
    assert "--decode gpu" not in tip  # only offered when training on CUDA
    assert "--decode gpu" in advice(s, cache=False, image_size=224, gpu_decode=True)


def test_a_slow_step_is_not_blamed_on_the_loader():
    meter = FeedMeter(workers=2)
    for _ in meter.iterate(_slow(6, 0.0)):
        time.sleep(DELAY)  # the step is slow, the data is free
    s = meter.stats()
    assert s.data_wait < 0.2 and advice(s) is None
    assert s.loader_at_least  # workers kept up: only a lower bound of their rate is known
    assert s.model_img_s == pytest.approx(24 / (s.seconds - s.wait_seconds))


def test_run_summary_from_metric_rows():
    rows = [
        {"seconds": 2.0, "images_per_s": 50.0, "data_wait": 0.5},
        {"seconds": 2.0, "images_per_s": 50.0, "data_wait": 0.25},
    ]
    s = from_rows(rows, workers=0)
    assert s == FeedStats(images=200, seconds=4.0, wait_seconds=1.5, workers=0)
    assert s.data_wait == pytest.approx(0.375) and from_rows([], 0) is None


def test_train_reports_waiting_for_a_loader_made_slow_on_purpose(tmp_path: Path, monkeypatch):
    data = digits_folder(tmp_path / "data", digits=(0, 1), per_class=8, size=16)
    original = AugmentedImageFolder.__getitem__

    def slow_getitem(self, i):
        time.sleep(0.1)  # 1.6 s of loading in all, against 4 steps of a 16 px model
        return original(self, i)

    monkeypatch.setattr(AugmentedImageFolder, "__getitem__", slow_getitem)
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train", str(data), "-o", str(run), "--weights", "none", "--epochs", "1", "--image-size", "16",
            "--batch-size", "4", "--workers", "0", "--threads", "1", "--recipe", "none", "--val-split", "0",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with open(run / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["data_wait"]) > BOTTLENECK_SHARE, str(dict(row))
    assert float(row["loader_img_s"]) > 0 and float(row["model_img_s"]) > float(row["loader_img_s"])
    out = " ".join(res.output.split())
    assert "waiting for data" in out and "the data loader is the bottleneck" in out
