"""--schedule / --warmup: the learning rate of every step against torch's own schedulers, the
head-only phase of --freeze finetune, a real run's every step, metrics.csv and the torchrun relaunch."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _digits import digits_folder
from typer.testing import CliRunner

import augkit.commands.train as train_cmd
import augkit.training.loop as loop
from augkit.cli import app
from augkit.errors import UsageError
from augkit.training.config import DEFAULT_SCHEDULE, TrainConfig
from augkit.training.distributed import train_cli_args
from augkit.training.freeze import FreezePlan
from augkit.training.schedule import ONECYCLE_WARMUP, SCHEDULES, StepLRs, factor, warmup_steps

PEAK = 3e-3


def torch_lrs(make, steps: int, peak: float = PEAK) -> list[float]:
    """The learning rate torch's scheduler gives each of ``steps`` optimizer steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def ours(schedule: str, total: int, warmup: int, per_epoch: int = 1) -> list[float]:
    return [PEAK * factor(schedule, t, total, warmup, per_epoch) for t in range(total)]


@pytest.mark.parametrize("total,warmup", [(50, 15), (37, 5), (200, 60), (3, 2)])
def test_onecycle_is_torchs_onecyclelr(total, warmup):
    want = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=PEAK, total_steps=total, pct_start=warmup / total, cycle_momentum=False
        ),
        total,
    )
    assert ours("onecycle", total, warmup) == pytest.approx(want, rel=1e-9, abs=1e-15)
    # warm-up starts at peak/25, reaches the peak at the end of the rise, ends at peak/25/1e4
    got = ours("onecycle", total, warmup)
    assert got[0] == pytest.approx(PEAK / 25) and got[warmup - 1] == pytest.approx(PEAK)
    assert got[-1] == pytest.approx(PEAK / 25 / 1e4) and max(got) == pytest.approx(PEAK)


def linear_then(main, warmup: int):
    """torch's LinearLR warm-up (1/W to 1 over W steps), then ``main`` (SequentialLR)."""

    def make(o):
        if warmup == 0:
            return main(o)
        if warmup == 1:  # a one-step warm-up is the peak itself
            lin = torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0)
        else:
            lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, main(o)], milestones=[warmup])

    return make


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_cosine_step_constant_are_torchs_schedulers_after_linear_warmup(warmup):
    total = 60
    span = total - warmup
    cases = {
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=span, eta_min=0.0),
        "step": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[span // 2, int(0.75 * span)], gamma=0.1),
        "constant": lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0),
    }
    for name, main in cases.items():
        want = torch_lrs(linear_then(main, warmup), total)
        got = ours(name, total, warmup)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), name
        if warmup:  # linear warm-up: first step peak/W, peak at its last step
            assert got[0] == pytest.approx(PEAK / warmup) and got[warmup - 1] == pytest.approx(PEAK), name
        assert got[warmup] == pytest.approx(PEAK), name  # the peak right after warm-up
    assert ours("cosine", total, warmup)[-1] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi * (span - 1) / span)))
    assert ours("step", total, warmup)[-1] == pytest.approx(PEAK * 0.01)


def test_cosine_epoch_is_the_old_per_epoch_schedule():
    """``cosine-epoch`` keeps augkit's schedule before per-step ones (its default until issue 20's
    measurement chose onecycle): loop.epoch_lrs, the same at every step of an epoch."""
    cfg = TrainConfig(data=".", out="x", lr=PEAK, epochs=7)
    for plan in (FreezePlan("none", ""), FreezePlan("finetune", "", 2, 0.1), FreezePlan("head", "")):
        lrs = StepLRs("cosine-epoch", PEAK, 7, 5, None, plan)
        for epoch in range(7):
            for step in range(5):
                assert lrs.at(epoch, step) == pytest.approx(loop.epoch_lrs(cfg, plan, epoch), abs=1e-15)
    assert DEFAULT_SCHEDULE == "onecycle"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_finetune_head_phase_then_schedule_with_the_backbone_share(schedule):
    """--freeze finetune: head alone at a constant peak (backbone 0) for its epochs; the schedule
    (warm-up included) starts at the first all-layers step, the backbone at lr x its multiplier."""
    plan = FreezePlan("finetune", "", warmup_epochs=2, backbone_lr_mult=0.1)
    lrs = StepLRs(schedule, PEAK, epochs=8, steps_per_epoch=4, warmup=1.0, plan=plan)
    assert lrs.start_epoch == 2 and lrs.total == 24
    for epoch in range(2):
        for step in range(4):
            assert lrs.at(epoch, step) == (0.0, PEAK)
    w = lrs.warmup_steps
    assert w == 4  # --warmup 1 epoch = 4 steps
    for t in range(24):
        backbone, head = lrs.at(2 + t // 4, t % 4)
        assert head == pytest.approx(PEAK * factor(schedule, t, 24, w, 4))
        assert backbone == pytest.approx(0.1 * head)
    first, last = lrs.at(2, 0)[1], lrs.at(7, 3)[1]
    expect_first = {"onecycle": PEAK / 25, "cosine-epoch": PEAK / 4}.get(schedule, PEAK / 4)
    assert first == pytest.approx(expect_first)
    expect_last = {
        "onecycle": PEAK / 25 / 1e4,
        "cosine": PEAK * 0.5 * (1 + math.cos(math.pi * 19 / 20)),
        "step": PEAK * 0.01,
        "constant": PEAK,
        "cosine-epoch": PEAK * 0.5 * (1 + math.cos(math.pi * 5 / 6)),
    }[schedule]
    assert last == pytest.approx(expect_last, rel=1e-6)
    # head mode: the head follows the schedule from the first step, the backbone stays at 0
    head_only = StepLRs(schedule, PEAK, 3, 4, None, FreezePlan("head", ""))
    assert all(head_only.at(e, s)[0] == 0.0 for e in range(3) for s in range(4))


def test_warmup_steps_defaults_and_bounds():
    assert warmup_steps("onecycle", None, 10, 100) == round(ONECYCLE_WARMUP * 100)
    assert warmup_steps("onecycle", 2.5, 10, 100) == 25
    assert warmup_steps("onecycle", 50.0, 10, 100) == 99  # the descent keeps one step at least
    assert warmup_steps("cosine", None, 10, 100) == 0
    assert warmup_steps("cosine", 0.5, 10, 100) == 5
    assert warmup_steps("constant", 50.0, 10, 100) == 100
    with pytest.raises(ValueError, match="not one of"):
        factor("linear", 0, 10, 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"), digits=(0, 1, 2), per_class=10, size=16)


TINY = dict(
    recipe="digits",
    weights="none",
    epochs=3,
    batch_size=8,
    image_size=16,
    workers=0,
    device="cpu",
    seed=2,
    progress=False,
    threads=1,
)


def test_real_run_sets_every_steps_lr_and_writes_it(data, tmp_path, monkeypatch):
    """A real run (--freeze finetune, --schedule cosine --warmup 1): every optimizer step's rates are
    the formula's, metrics.csv holds lr_first/lr_last, settings.yaml the resolved schedule."""
    seen: list[tuple[float, float]] = []
    real = loop.set_lrs
    monkeypatch.setattr(loop, "set_lrs", lambda opt, lrs: (seen.append(tuple(lrs)), real(opt, lrs)))
    cfg = TrainConfig(
        data=data, out=tmp_path / "run", freeze="finetune", schedule="cosine", warmup=1.0, lr=PEAK, **TINY
    )
    result = loop.train(cfg)
    per_epoch = len(seen) // 3 - 1  # each epoch: one set at its start, then one per step
    plan = result.plan
    assert plan.mode == "finetune" and plan.warmup_epochs == 1
    lrs = StepLRs("cosine", PEAK, 3, per_epoch, 1.0, plan)
    want = []
    for e in range(3):
        want += [lrs.at(e, 0)] + [lrs.at(e, s) for s in range(per_epoch)]
    assert [v for pair in seen for v in pair] == pytest.approx([v for pair in want for v in pair])
    assert seen[0] == (0.0, PEAK)  # head alone at the peak
    assert seen[1 + per_epoch + 1] == pytest.approx(
        (PEAK / per_epoch, PEAK / per_epoch)
    )  # warm-up, mult 1 (no pretraining)
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for e, row in enumerate(rows):
        assert float(row["lr_first"]) == pytest.approx(lrs.at(e, 0)[1], rel=1e-5)
        assert float(row["lr_last"]) == pytest.approx(lrs.at(e, per_epoch - 1)[1], rel=1e-5)
    settings = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())
    sched = settings["resolved"]["optimizer"]["schedule"]
    assert (
        sched["name"] == "cosine"
        and sched["warmup_steps"] == per_epoch
        and sched["head_only_epochs_at_constant_lr"] == 1
    )
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    # resuming with another schedule is refused, naming it
    with pytest.raises(UsageError, match="schedule"):
        loop.train(
            TrainConfig(
                data=data,
                out=tmp_path / "run",
                freeze="finetune",
                schedule="onecycle",
                warmup=1.0,
                lr=PEAK,
                resume=True,
                **{**TINY, "epochs": 4},
            )
        )


def test_bad_schedule_options_are_usage_errors(data, tmp_path):
    r = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "r"), "--schedule", "linear"])
    assert r.exit_code == 2 and "linear" in r.output
    for kwargs, match in (
        (dict(warmup=5.0, epochs=3), "--warmup must be >= 0 and at most --epochs"),
        (dict(ema=1.0), "--ema must be a decay between 0 and 1"),
        (dict(lr="fast"), "--lr must be > 0 \\(a number\\) or auto"),
        (dict(lr=-1.0), "--lr must be > 0 \\(a number\\) or auto"),
    ):
        with pytest.raises(UsageError, match=match):
            TrainConfig(data=data, out=tmp_path / "r", **kwargs).validate()
    r = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "r"), "--lr", "fast"])
    assert r.exit_code == 2 and "not a number" in r.output


def test_relaunch_args_carry_the_new_options(data, tmp_path, monkeypatch):
    """The torchrun relaunch (train_cli_args) round-trips --schedule, --warmup, --ema and --lr auto."""

    class Done:
        skipped: list = []

    seen = []
    monkeypatch.setattr(train_cmd, "train", lambda cfg, console=None: seen.append(cfg) or Done())
    for extra in (dict(schedule="onecycle", warmup=0.5, ema=0.999, lr="auto"), dict(schedule="step", lr=0.0123)):
        cfg = TrainConfig(data=data, out=tmp_path / "run", **{**TINY, "progress": True}, **extra)
        r = CliRunner().invoke(app, ["train", *train_cli_args(cfg)])
        assert r.exit_code == 0, r.output
        assert {k: str(v) for k, v in asdict(seen[-1]).items()} == {k: str(v) for k, v in asdict(cfg).items()}


def test_curves_show_the_learning_rate_and_the_sweep_marks_its_choice(tmp_path):
    """curves.png's third chart draws the head's first/last-step rates; lr_find.png marks the choice."""
    from augkit.io.images import read_image
    from augkit.training.plot import CHOICE_COLOR, LR_COLOR, plot_curves, plot_lr_find

    rows = [
        {"epoch": e + 1, "train_loss": 1 / (e + 1), "train_acc": 0.5, "lr_first": 1e-3 * (e + 1), "lr_last": 1e-4}
        for e in range(4)
    ]

    def count(img, rgb, box):  # pixels of about this colour inside box (x0, x1)
        part = img[:, box[0] : box[1]].astype(int)
        return int((abs(part - np.array(rgb)).sum(-1) < 40).sum())

    plot_curves(rows, tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    third = img.shape[1] // 3
    assert count(img, LR_COLOR, (2 * third, img.shape[1])) > 100 and count(img, LR_COLOR, (0, 2 * third)) == 0
    plot_curves([{k: v for k, v in r.items() if not k.startswith("lr")} for r in rows], tmp_path / "none.png")
    assert count(read_image(tmp_path / "none.png"), LR_COLOR, (0, img.shape[1])) == 0  # nothing to draw

    lrs = [1e-6 * 10 ** (i / 4) for i in range(21)]
    losses = [2.0 - 0.05 * i for i in range(21)]
    plot_lr_find(lrs, losses, losses, 3e-3, "minimum/10", tmp_path / "s.png", minimum=20)
    sweep = read_image(tmp_path / "s.png")
    left = count(sweep, CHOICE_COLOR, (0, sweep.shape[1] // 2))
    right = count(sweep, CHOICE_COLOR, (sweep.shape[1] // 2, sweep.shape[1]))
    assert right > 100 and left < right  # 3e-3 lies in the right half of a 1e-6..1e-1 axis
