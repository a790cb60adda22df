"""One default-workers rule (augkit.devices.default_workers) behind train's and predict's defaults,
and a devices module that imports no torch until a device is resolved."""

from __future__ import annotations

import subprocess
import sys

import pytest

import augkit.infer.engine as inference_mod
from augkit import devices
from augkit.devices import WORKERS_RULES, default_workers
from augkit.training import config as train_config


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 5, 8, 16, 17, 64, 256])
def test_train_and_predict_defaults_are_the_roles_of_one_rule(cores, monkeypatch):
    monkeypatch.setattr(inference_mod, "usable_cores", lambda: cores)
    for dev in ("cpu", "cuda", "mps"):
        assert train_config.default_workers(dev, cores) == default_workers(dev, "train", cores)
        assert inference_mod.default_workers(dev) == default_workers(dev, "predict", cores)


def test_the_rule_table():
    # (cores, train cpu, train gpu, predict cpu, predict gpu)
    for cores, tc, tg, pc, pg in (
        (1, 0, 0, 0, 0),
        (2, 0, 1, 0, 1),
        (3, 1, 2, 0, 2),
        (8, 2, 7, 2, 4),
        (64, 4, 16, 4, 4),
    ):
        got = (
            default_workers("cpu", "train", cores),
            default_workers("cuda:1", "train", cores),
            default_workers("cpu", "predict", cores),
            default_workers("mps", "predict", cores),
        )
        assert got == (tc, tg, pc, pg), cores
    assert set(WORKERS_RULES) == {"train", "predict"} and train_config.WORKERS_RULE == WORKERS_RULES["train"]
    with pytest.raises(ValueError, match="role 'serve' is not one of train, predict"):
        default_workers("cpu", "serve", 4)


def test_default_cores_are_the_usable_cores(monkeypatch):
    monkeypatch.setattr(devices, "usable_cores", lambda: 8)
    assert default_workers("cpu", "train") == 2 and default_workers("cuda", "predict") == 4


def test_devices_and_train_config_import_no_torch():
    code = "import sys, augkit.devices, augkit.training.config; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
