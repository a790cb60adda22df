"""What a new user meets first: ``--weights imagenet`` on a machine that cannot download them is
refused before any work, with ``--weights none`` offered in the same message; ``augkit models
--timm`` reads timm's name list (no model built) and names real families; timm's did-you-mean
points to augkit's own command."""

from __future__ import annotations

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
