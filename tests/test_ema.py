"""--ema: the moving average against a hand-computed one (and timm's ModelEmaV3), and in a real run:
validated beside the raw weights, best.pt the better of the two, resumable."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from _digits import digits_folder
from torch import nn

import augkit.training.loop as loop
from augkit.models.checkpoint import load_checkpoint
from augkit.training.config import TrainConfig
from augkit.training.ema import ModelEma


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def sgd_steps(model: nn.Module, ema_objs: list, steps: int) -> list[dict]:
    """``steps`` SGD steps on fixed random data; each EMA updated after each; the weights after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    after = []
    for _ in range(steps):
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for e in ema_objs:
            e.update(model)
        after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return after


def test_ema_equals_a_hand_computed_average_with_warmup_and_copied_buffers():
    model = toy()
    ema = ModelEma(model, decay=0.6)
    after = sgd_steps(model, [ema], 5)
    # decay of update n: 0, then min(0.6, 1 - n^(-2/3)): 0, 0.370, 0.519, 0.6 (capped), 0.6
    decays = [0.0] + [min(0.6, 1 - n ** (-2 / 3)) for n in range(2, 6)]
    assert decays[1] == pytest.approx(0.37004, abs=1e-4) and decays[3] == 0.6
    assert [ema.decay_at(n) for n in range(1, 6)] == pytest.approx(decays)
    params = [k for k, _ in model.named_parameters()]
    for k in params:
        want = after[0][k]
        for n in range(1, 5):
            want = decays[n] * want + (1 - decays[n]) * after[n][k]
        assert torch.allclose(ema.module.state_dict()[k], want, atol=1e-6), k
        if k != "0.bias":  # (a bias in front of BatchNorm gets no gradient)
            assert not torch.allclose(want, after[-1][k], atol=1e-4), k  # an average, not the last weights
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):  # BatchNorm buffers: copied
        assert torch.equal(ema.module.state_dict()[k], after[-1][k]), k
    assert ema.updates == 5 and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_matches_timms_model_ema_v3():
    timm_ema = pytest.importorskip("timm.utils.model_ema")
    model = toy()
    ours = ModelEma(model, decay=0.9)
    theirs = timm_ema.ModelEmaV3(model, decay=0.9, use_warmup=True, exclude_buffers=True)

    class Stepped:  # timm's training script passes the update count as step
        n = 0

        def update(self, m):
            self.n += 1
            theirs.update(m, step=self.n)

    sgd_steps(model, [ours, Stepped()], 12)
    for (k, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7), k


def test_ema_state_round_trips():
    model = toy()
    ema = ModelEma(model, decay=0.9)
    sgd_steps(model, [ema], 3)
    other = ModelEma(toy(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    assert all(torch.equal(a, b) for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()))
    with pytest.raises(ValueError, match="between 0 and 1"):
        ModelEma(model, decay=1.0)


def test_best_pt_candidate_is_the_better_of_raw_and_ema():
    raw_wins = {"epoch": 1, "val_acc": 0.8, "val_loss": 0.5, "ema_val_acc": 0.7, "ema_val_loss": 0.4, "weights": "raw"}
    ema_wins = {
        "epoch": 2,
        "val_acc": 0.75,
        "val_loss": 0.5,
        "ema_val_acc": 0.85,
        "ema_val_loss": 0.6,
        "weights": "ema",
    }
    assert loop._better(ema_wins, raw_wins)  # 0.85 (EMA) beats 0.80 (raw)
    assert not loop._better({**ema_wins, "weights": "raw"}, raw_wins)  # its raw 0.75 would not


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"), digits=(0, 1, 2), per_class=10, size=16)


TINY = dict(recipe="digits", weights="none", batch_size=8, image_size=16, workers=0, device="cpu", seed=4)


def test_real_run_validates_the_ema_and_best_pt_holds_the_winner(data, tmp_path):
    out = tmp_path / "run"
    result = loop.train(TrainConfig(data=data, out=out, epochs=2, ema=0.7, progress=False, threads=1, **TINY))
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["ema_val_acc"] != "" and r["weights"] in ("raw", "ema") for r in rows)
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["ema"]["updates"] == 2 * 3 and last["ema"]["decay"] == 0.7  # 24 images / batch 8, 2 epochs
    row = rows[result.best_epoch - 1]
    assert result.best_weights == row["weights"]
    if result.best_epoch == 2:  # best.pt is the last epoch's raw or averaged weights, as the row says
        want = last["ema"]["state_dict"] if row["weights"] == "ema" else last["state_dict"]
        assert all(torch.equal(best["state_dict"][k], want[k]) for k in want)
    # the weights in best.pt score what the row says on the validation images
    model, _ = loop.build_start_model("resnet18", 3, "none")
    model.load_state_dict(best["state_dict"])
    cfg = TrainConfig(data=data, out=out, **TINY)
    d = loop.load_data(cfg, None)
    va = loop.validate(model, loop.make_loader(d.val, cfg, torch.device("cpu"), shuffle=False), torch.device("cpu"))
    key = "ema_val_acc" if row["weights"] == "ema" else "val_acc"
    assert va["acc"] == pytest.approx(float(row[key]), abs=1e-6)


def test_resumed_run_continues_the_average(data, tmp_path, monkeypatch):
    """Killed after epoch 1 and resumed: the same EMA (and metrics) as an uninterrupted run."""
    cfg = dict(epochs=2, ema=0.7, progress=False, threads=1, **TINY)
    loop.train(TrainConfig(data=data, out=tmp_path / "a", **cfg))
    real = loop._run_epoch

    def interrupted(e, *args, **kwargs):
        if e == 1:
            raise KeyboardInterrupt
        return real(e, *args, **kwargs)

    monkeypatch.setattr(loop, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(TrainConfig(data=data, out=tmp_path / "b", **cfg))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["ema"]["updates"] == 3
    monkeypatch.setattr(loop, "_run_epoch", real)
    result = loop.train(TrainConfig(data=data, out=tmp_path / "b", resume=True, **cfg))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert result.resumed_from == 1 and b["ema"]["updates"] == 6
    for k, v in a["ema"]["state_dict"].items():
        assert torch.equal(v, b["ema"]["state_dict"][k]), k
    outcome = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc", "weights")
    assert [{k: r[k] for k in outcome} for r in a["history"]] == [{k: r[k] for k in outcome} for r in b["history"]]
