"""DDP training on CPU: ``torchrun --standalone --nproc_per_node=2`` (gloo) for one tiny epoch, and
``augkit train --nproc 2``. Both ranks must end with the same parameters (equal to rank 0's
checkpoint), read disjoint shards covering the training set, and only rank 0 writes the run folder.

The launching tests are marked ``ddp`` (``pytest -m "not ddp"`` skips them); each takes ~10-15 s.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _digits import digits_folder

from augkit.models.checkpoint import load_checkpoint
from augkit.training.config import TrainConfig
from augkit.training.distributed import DistContext, ShardSampler, torchrun_command, train_cli_args, under_torchrun

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"best.pt", "last.pt", "metrics.csv", "settings.yaml", "curves.png", "errors.jsonl"}
TINY = dict(
    weights="none",
    epochs=1,
    batch_size=4,
    image_size=16,
    recipe="digits",
    workers=0,
    device="cpu",
    val_split=0.25,
    seed=3,
)

# Run by torchrun in each process: trains through augkit.training.loop.train() (reporting as the CLI does), and records (test-only,
# by wrapping train_one_epoch) the parameters each rank ends with and the sample indices it read.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import torch
    import augkit.training.loop as T
    from augkit.commands.train import train as train_and_report  # train() with the CLI's display

    out_dir = sys.argv[3]
    rank = int(os.environ["RANK"])
    original = T.train_one_epoch

    def recording(model, loader, *args, **kwargs):
        res = original(model, loader, *args, **kwargs)
        net = getattr(model, "module", model)
        torch.save({k: v.detach().clone() for k, v in net.named_parameters()}, f"{out_dir}/params{rank}.pt")
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"ddp": type(model).__name__, "indices": list(loader.sampler),
                       "world": int(os.environ["WORLD_SIZE"])}, fh)
        return res

    T.train_one_epoch = recording
    cfg = T.TrainConfig(data=sys.argv[1], out=sys.argv[2], **json.loads(sys.argv[4]))
    train_and_report(cfg)
""")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("ddp") / "data", per_class=8, size=16)


def _needs_gloo():
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")


@pytest.mark.ddp
def test_torchrun_two_ranks_equal_parameters(digits, tmp_path):
    _needs_gloo()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(driver),
        str(digits),
        str(run),
        str(rec),
        json.dumps(TINY),
    ]
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    # both ranks trained a DDP model and end with the same parameters, equal to rank 0's checkpoint
    p0, p1 = torch.load(rec / "params0.pt"), torch.load(rec / "params1.pt")
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    saved = load_checkpoint(run / "last.pt")["state_dict"]
    assert all(torch.equal(saved[k], p0[k]) for k in p0)
    best = load_checkpoint(run / "best.pt")["state_dict"]
    assert all(torch.equal(best[k], p0[k]) for k in p0)  # one epoch: best is last

    # disjoint shards (DistributedSampler, padded to equal length) that cover the training set
    r0, r1 = (json.loads((rec / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel" and r0["world"] == 2
    assert len(r0["indices"]) == len(r1["indices"])
    n_train = 18  # 24 images, 2 of each class held out for validation
    assert set(r0["indices"]) | set(r1["indices"]) == set(range(n_train))
    assert not set(r0["indices"]) & set(r1["indices"])

    # only rank 0 wrote: one run folder with one set of files, one metrics row, one summary printed
    assert {f.name for f in run.iterdir()} == RUN_FILES
    assert sorted(f.name for f in tmp_path.rglob("*.pt") if f.parent == run) == ["best.pt", "last.pt"]
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1"]
    assert p.stderr.count("augkit train:") == 1 and p.stderr.count("data: 18 train / 6 val") == 1
    import yaml

    settings = yaml.safe_load((run / "settings.yaml").read_text())
    assert settings["resolved"]["distributed"] == {"world_size": 2, "backend": "gloo"}


@pytest.mark.ddp
def test_cli_nproc_2(digits, tmp_path):
    _needs_gloo()
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "augkit",
        "train",
        str(digits),
        "-o",
        str(run),
        "--nproc",
        "2",
        "--weights",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--recipe",
        "digits",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--val-split",
        "0.25",
    ]
    p = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert {f.name for f in run.iterdir()} == RUN_FILES
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["meta"]["classes"] == ["d0", "d1", "d2"]
    row = ckpt["history"][0]
    assert row["val_acc"] is not None and 0 <= row["val_acc"] <= 1
    # the validation metrics cover all 6 held-out images once: accuracy is a multiple of 1/6
    assert abs(row["val_acc"] * 6 - round(row["val_acc"] * 6)) < 1e-9


def test_nproc_bad_options_fail_before_launch(digits, tmp_path):
    """Options are checked before torchrun starts: exit code 2 and augkit's message, no run folder."""
    from typer.testing import CliRunner

    from augkit.cli import app

    r = CliRunner().invoke(app, ["train", str(tmp_path / "missing"), "-o", str(tmp_path / "run"), "--nproc", "2"])
    assert r.exit_code == 2 and "data folder not found" in r.output
    assert not (tmp_path / "run").exists()


def test_helpers_without_a_launch(digits, tmp_path):
    assert not under_torchrun() or os.environ.get("WORLD_SIZE")
    # each index exactly once across ranks, shards of unequal length are fine for evaluation
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]] and [len(ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]
    # a disabled context changes nothing
    ctx = DistContext()
    model = torch.nn.Linear(2, 2)
    stats = {"loss": 1.0, "acc": 0.5, "images": 4, "seconds": 1.0}
    assert ctx.wrap(model) is model and ctx.reduce(stats) is stats and ctx.train_sampler([1], 0) is None
    # the relaunch reproduces the configuration
    cfg = TrainConfig(data=digits, out=tmp_path / "run", **TINY)
    args = train_cli_args(cfg)
    assert args[:3] == [str(digits), "--output", str(tmp_path / "run")]
    assert args[args.index("--weights") + 1] == "none" and args[args.index("--seed") + 1] == "3"
    cmd = torchrun_command(2, ["train", *args])
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert cmd[7:9] == ["augkit", "train"]


def test_relaunch_args_round_trip(digits, tmp_path, monkeypatch):
    """``train_cli_args`` gives back the same TrainConfig when parsed by ``augkit train``."""
    from dataclasses import asdict

    from typer.testing import CliRunner

    import augkit.commands.train as cmd
    from augkit.cli import app

    seen = []
    monkeypatch.setattr(cmd, "train", lambda cfg, console=None: seen.append(cfg) or _Done())
    cfg = TrainConfig(data=digits, out=tmp_path / "run", amp=True, resume=True, lr=0.0123, **TINY)
    r = CliRunner().invoke(app, ["train", *train_cli_args(cfg)])
    assert r.exit_code == 0, r.output
    got, want = asdict(seen[0]), asdict(cfg)
    assert {k: str(v) for k, v in got.items()} == {k: str(v) for k, v in want.items()}


class _Done:
    skipped: list = []
