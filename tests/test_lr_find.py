"""--lr auto: the sweep, the rule, divergence, what the range test puts back, and real runs:
deterministic, leaving no trace (training with the chosen value as a number gives the same run)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from _digits import digits_folder
from torch import nn
from typer.testing import CliRunner

import augkit.training.loop as loop
from augkit.cli import app
from augkit.training.config import TrainConfig
from augkit.training.lr_find import (
    MAX_STEPS,
    MIN_STEPS,
    RULE,
    preserved,
    range_test,
    rng_state,
    smooth,
    sweep_lrs,
    sweep_steps,
    valley,
)


def test_sweep_is_exponential_and_bounded():
    lrs = sweep_lrs(50, 1e-6, 1.0)
    assert lrs[0] == 1e-6 and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    assert sweep_steps(10_000) == MAX_STEPS and sweep_steps(30) == MIN_STEPS and sweep_steps(500) == 50


def test_smoothing_is_fastais_debiased_average():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no pull towards 0
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.5**2)])


def test_valley_is_the_middle_of_the_longest_fall():
    # flat, then falling over steps 5..25, then rising
    losses = [3.0] * 5 + [3.0 - 0.1 * i for i in range(1, 21)] + [1.0 + 0.5 * i for i in range(1, 10)]
    idx, start, end = valley(losses)
    assert start <= 5 and end == 24
    assert start < idx < end and idx == start + int((end - start) / 3) + int((end - start) / 3 / 2)


def test_range_test_stops_on_divergence_and_chooses_on_the_fall():
    """A loss that falls between 1e-4 and 1e-2 and explodes beyond 1e-1: the sweep stops early and
    the choice lies on the fall."""

    def loss_at(lr: float) -> float:
        x = math.log10(lr)
        return 2.0 if x < -4 else 2.0 - 0.8 * (x + 4) if x < -2 else 0.4 * 10 ** (2 * (x + 2))

    result = range_test(loss_at, 60)
    assert result.steps < 60 and "diverged" in result.stopped
    low = result.lrs[result.minimum]
    assert result.smoothed[result.minimum] == min(result.smoothed[6 : result.steps - 3])
    assert 1e-2 < low < 1e-1 and result.lr == low / 10  # the rule: a tenth of the smoothed minimum
    assert abs(math.log10(result.lrs[result.index] / result.lr)) <= 0.05 and len(result.losses) == result.steps
    assert result.rule == RULE and "minimum/10" in result.summary()
    nan = range_test(lambda lr: float("nan") if lr > 1e-3 else 1.0 - lr, 40)
    assert "not finite" in nan.stopped and all(math.isfinite(v) for v in nan.losses)


def test_preserved_puts_back_weights_optimizer_modes_and_random_states():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the optimizer has state before the test
    model.eval()
    model[0].weight.requires_grad_(False)
    random.seed(5), np.random.seed(5)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()}
    before = rng_state()

    def step(lr: float) -> float:  # a training step that uses every random source
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x + torch.randn_like(x) * np.random.rand() * random.random()), y)
        loss.backward()
        opt.step()
        return loss.item()

    with preserved(model, opt):
        result = range_test(step, 20)
        assert not torch.equal(model[0].weight, weights["0.weight"])  # the sweep did train
    assert result.steps >= 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for k, s in opt.state_dict()["state"].items():
        assert all(torch.equal(t, opt_state[k][n]) for n, t in s.items())
    assert opt.param_groups[0]["lr"] == 1e-3
    assert not model.training and not model[1].training and not model[0].weight.requires_grad
    after = rng_state()
    assert torch.equal(after["torch"], before["torch"])
    assert after["python"] == before["python"]
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(after["numpy"], before["numpy"])
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"), digits=(0, 1, 2), per_class=10, size=16)


OUTCOME = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr_backbone", "lr_head", "lr_first", "lr_last")
TINY = dict(
    recipe="digits",
    weights="none",
    epochs=2,
    batch_size=8,
    image_size=16,
    workers=0,
    device="cpu",
    seed=6,
    progress=False,
    threads=1,
    schedule="onecycle",
)


@pytest.fixture(scope="module")
def auto_run(data, tmp_path_factory):
    """One --lr auto run (library call), shared by the tests below."""
    out = tmp_path_factory.mktemp("auto") / "a"
    return loop.train(TrainConfig(data=data, out=out, lr="auto", **TINY)), out


def test_lr_auto_is_deterministic_leaves_no_trace_and_records_its_choice(data, auto_run, tmp_path):
    """Two --lr auto runs with one seed (the second through the CLI) choose the same rate and train
    identically; a run given that rate as a number trains identically too: the range test put back
    the weights, optimizer, random states and data order."""
    a, out = auto_run
    assert a.lr_find is not None and a.lr == a.lr_find["lr"] == a.lr_find["lrs"][a.lr_find["minimum"]] / 10
    r = CliRunner().invoke(
        app,
        ["train", str(data), "-o", str(tmp_path / "b"), "--lr", "auto", "--epochs", "2", "--batch-size", "8"]
        + ["--image-size", "16", "--weights", "none", "--workers", "0", "--device", "cpu", "--recipe", "digits"]
        + ["--seed", "6", "--threads", "1", "--schedule", "onecycle"],
    )
    assert r.exit_code == 0, r.output
    assert "lr auto:" in r.output and "rule: minimum/10" in r.output and "lr_find.png" in r.output
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert b["lr_find"]["lrs"] == a.lr_find["lrs"] and b["lr_find"]["losses"] == a.lr_find["losses"]
    assert b["lr_find"]["lr"] == a.lr
    plain = loop.train(TrainConfig(data=data, out=tmp_path / "plain", lr=a.lr, **TINY))

    def rows(history):  # what the run computed (not its timings)
        return [{k: row[k] for k in OUTCOME} for row in history]

    assert rows(a.history) == rows(b["history"]) == rows(plain.history)
    ca = torch.load(out / "last.pt", weights_only=True)
    cp = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    assert all(torch.equal(v, cp["state_dict"][k]) for k, v in ca["state_dict"].items())
    # settings.yaml records the chosen value and the rule; the sweep is drawn
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert s["augkit_train"]["lr"] == "auto" and s["resolved"]["optimizer"]["lr"] == a.lr
    assert s["resolved"]["lr_find"]["chosen_lr"] == a.lr and s["resolved"]["lr_find"]["rule"] == RULE
    assert s["resolved"]["optimizer"]["lr_source"].startswith("--lr auto")
    png = cv2.imread(str(out / "lr_find.png"))
    assert png is not None and png.shape[:2] == (480, 800)
    assert (png[..., 2] > 180).sum() > 50 and ((png[..., 2] > 180) & (png[..., 1] < 80)).sum() > 20  # the red mark
    # bounded: a short run gets the shortest sweep
    assert a.lr_find["planned"] == MIN_STEPS and a.lr_find["steps"] <= MIN_STEPS


def test_resumed_lr_auto_run_reuses_its_choice(data, auto_run, tmp_path, monkeypatch):
    """Interrupted after epoch 1 and resumed: the range test is not run again (its result is in
    last.pt), and the run ends as an uninterrupted one."""
    whole = auto_run[0]
    real = loop._run_epoch

    def interrupted(e, *args, **kwargs):
        if e == 1:
            raise KeyboardInterrupt
        return real(e, *args, **kwargs)

    monkeypatch.setattr(loop, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(TrainConfig(data=data, out=tmp_path / "b", lr="auto", **TINY))
    monkeypatch.setattr(loop, "_run_epoch", real)
    monkeypatch.setattr(loop, "range_test", lambda *a, **k: pytest.fail("the range test ran again on resume"))
    resumed = loop.train(TrainConfig(data=data, out=tmp_path / "b", lr="auto", resume=True, **TINY))
    assert resumed.resumed_from == 1 and resumed.lr == whole.lr

    def sweep(r):
        return {k: v for k, v in r.lr_find.items() if k != "seconds"}

    assert sweep(resumed) == sweep(whole)
    assert [{k: r[k] for k in OUTCOME} for r in resumed.history] == [{k: r[k] for k in OUTCOME} for r in whole.history]
