"""Tests driven by the registries: every command of ``augkit`` (each entry of ``augkit.cli.COMMANDS``
and each sub-command of a group such as ``recipes``) answers ``--help`` and has a minimal happy path
in :data:`HAPPY`, and every engine of ``augkit.offline.executors.local.ENGINES`` runs a tiny plan with the same
bytes as the in-process reference.

A command added later without an entry in :data:`HAPPY` fails ``test_happy_path`` (as albumentations'
``check_all_augs_exists`` does for transforms). One tiny training run (digits, 32 px, 1 epoch,
random weights) made through ``augkit train`` is shared by the module for predict, evaluate and export.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from _digits import digits_folder
from _ray import local_ray
from typer.testing import CliRunner

from augkit import cli
from augkit.commands._lazy import load_command
from augkit.offline.dst import MANIFEST
from augkit.offline.executors.local import ENGINES, LocalExecutor, get_executor
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.recipe.api import list_builtin, load_recipe

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # Ray Data's own context
runner = CliRunner()
CLASSES = ["d0", "d1", "d2"]
PER_CLASS = 6  # images per class of the shared data folder (18 in all)


@dataclass(frozen=True)
class EngineNeeds:
    """What an engine's test needs: its pytest mark and a context to run in (which skips without the extra)."""

    mark: Any
    context: Callable[[], Any]


#: engines that need an extra (the others run as they are)
ENGINE_NEEDS = {"ray": EngineNeeds(pytest.mark.ray, local_ray)}


def command_paths() -> list[str]:
    """Every runnable command, as it is typed after ``augkit``: ``augment``, ``recipes list``, ..."""
    paths = []
    for name, (module, attr, _) in cli.COMMANDS.items():
        cmd = load_command(name, module, attr)
        subs = getattr(cmd, "commands", None)  # a group (a Typer app) has sub-commands
        paths += [f"{name} {sub}" for sub in subs] if subs else [name]
    return paths


def invoke(*args: str | os.PathLike):
    res = runner.invoke(cli.app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res


@dataclass
class Env:
    """What the happy paths share: the data folder, the trained run, and a scratch folder per test."""

    data: Path
    run: Path
    train_output: str
    tmp: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 digit classes of 6 images (32 px)."""
    return digits_folder(tmp_path_factory.mktemp("registry") / "data", per_class=PER_CLASS, size=32)


@pytest.fixture(scope="module")
def shared(data, tmp_path_factory) -> tuple[Path, Path, str]:
    """(data, run, train output): one ``augkit train`` run on the data."""
    run = tmp_path_factory.mktemp("registry") / "run"
    res = invoke(
        "train",
        data,
        "-o",
        run,
        "--weights",
        "none",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--recipe",
        "digits",
        "--workers",
        "0",
    )
    return data, run, res.output


@pytest.fixture
def env(shared, tmp_path) -> Env:
    return Env(*shared, tmp_path)


# ============================================================================= happy paths

HAPPY: dict[str, Callable[[Env], None]] = {}


def happy(path: str):
    """Register the happy path of ``augkit <path>``."""

    def register(fn: Callable[[Env], None]) -> Callable[[Env], None]:
        HAPPY[path] = fn
        return fn

    return register


@happy("recipes list")
def _recipes_list(env: Env) -> None:
    out = invoke("recipes", "list").stdout
    assert all(name in out for name in list_builtin())


@happy("recipes show")
def _recipes_show(env: Env) -> None:
    text = invoke("recipes", "show", "default").stdout
    assert text.startswith("# recipe default") and yaml.safe_load(text)["train"]


@happy("recipes check")
def _recipes_check(env: Env) -> None:
    f = env.tmp / "mine.yaml"  # what `recipes show` prints is a recipe file that checks
    f.write_text(invoke("recipes", "show", "digits").stdout)
    assert f"{f}: ok" in invoke("recipes", "check", f).stdout


@happy("recipes export")
def _recipes_export(env: Env) -> None:
    import albumentations as A

    f = env.tmp / "default.yaml"
    invoke("recipes", "export", "default", "--to", "albumentations", "-o", f)
    assert isinstance(A.load(str(f), data_format="yaml"), A.Compose)


@happy("recipes ops")
def _recipes_ops(env: Env) -> None:
    assert "TTA presets (combine with +):" in invoke("recipes", "ops").stdout


@happy("labels check")
def _labels_check(env: Env) -> None:
    from _labelled import yolo_dataset

    root = yolo_dataset(env.tmp / "yolo").root
    res = invoke("labels", "check", root)
    assert res.stdout == "" and "yolo dataset" in res.output and "no problems found" in res.output


@happy("preview")
def _preview(env: Env) -> None:
    out = env.tmp / "p.png"
    invoke("preview", env.data, "-o", out, "--images", "2", "--versions", "2", "--cell", "48")
    img = cv2.imdecode(np.fromfile(out, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] >= 2 * 48 and img.shape[1] >= 3 * 48  # 2 rows, original + 2


@happy("augment")
def _augment(env: Env) -> None:
    dst = env.tmp / "aug"
    invoke("augment", env.data, dst, "--copies", "1", "--seed", "3", "--recipe", "digits")
    rows = [json.loads(line) for line in (dst / MANIFEST).read_text().splitlines()]
    assert len(rows) == 3 * PER_CLASS and all((dst / r["output"]).is_file() for r in rows)


@happy("train")
def _train(env: Env) -> None:
    # the module's shared run, made by `augkit train` once
    assert (env.run / "best.pt").is_file() and (env.run / "settings.yaml").is_file()
    assert len((env.run / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch


@happy("predict")
def _predict(env: Env) -> None:
    out = env.tmp / "p.csv"
    invoke("predict", env.run, env.data, "-o", out, "--tta", "flip", "--device", "cpu", "--workers", "0")
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 * PER_CLASS and {r["label"] for r in rows} <= set(CLASSES)


@happy("evaluate")
def _evaluate(env: Env) -> None:
    report = env.tmp / "r.json"
    invoke("evaluate", env.run, env.data, "--tta", "flip", "--report", report, "--device", "cpu", "--workers", "0")
    rep = json.loads(report.read_text())
    assert rep["counts"]["evaluated"] == 3 * PER_CLASS and 0 <= rep["accuracy"]["tta"] <= 1


@happy("export")
def _export(env: Env) -> None:
    for module in ("onnx", "onnxruntime"):  # the onnx extra
        pytest.importorskip(module)
    import onnxruntime as ort

    out = env.tmp / "m.onnx"
    invoke("export", env.run, "-o", out, "--tta", "flip")
    images = np.stack([cv2.imread(str(p))[:, :, ::-1] for p in sorted(env.data.rglob("*_00.png"))])
    probs = ort.InferenceSession(str(out)).run(
        ["probs"], {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}
    )
    assert probs[0].shape == (3, len(CLASSES)) and np.allclose(probs[0].sum(1), 1, atol=1e-4)


@happy("report")
def _report(env: Env) -> None:
    report, page = env.tmp / "r.json", env.tmp / "run.html"
    invoke("evaluate", env.run, env.data, "--tta", "flip", "--report", report, "--device", "cpu", "--workers", "0")
    invoke("report", env.run, report, "-o", page)
    text = page.read_text()
    assert "Per class" in text and "data:image/png;base64," in text and "http" not in text.split("<body>")[1]


@happy("models")
def _models(env: Env) -> None:
    assert "resnet18" in invoke("models", "resnet18").stdout


# ============================================================================= the tests


@pytest.mark.parametrize("path", command_paths())
def test_help(path):
    res = runner.invoke(cli.app, [*path.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and path.split()[-1] in res.output


def test_every_happy_path_names_a_command():
    stale = set(HAPPY) - set(command_paths())
    assert not stale, f"HAPPY has entries for commands that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("path", command_paths())
def test_happy_path(path, env):
    if path not in HAPPY:
        pytest.fail(f"`augkit {path}` has no happy path: add one to HAPPY in tests/test_cli_registry.py")
    HAPPY[path](env)


@pytest.fixture(scope="module")
def tiny_plan_ref(data, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The in-process outputs of a tiny plan (6 images, 1 copy each): what every engine must write."""
    src = data
    ref = tmp_path_factory.mktemp("engines") / "ref"
    run_plan(_tiny_plan(src, ref), executor=LocalExecutor(workers=1))
    return src, _outputs(ref)


def _tiny_plan(src: Path, dst: Path, engine: str = "local"):
    plan = make_plan(src, dst, load_recipe("digits"), AugmentOptions(seed=11, engine=engine))
    plan.items = [it for it in plan.items if it.src.endswith(("_00.png", "_01.jpg"))]  # 2 images per class
    return plan


def _outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "augkit-run.yaml"
    }


@pytest.mark.parametrize(
    "engine", [pytest.param(e, marks=ENGINE_NEEDS[e].mark) if e in ENGINE_NEEDS else e for e in ENGINES]
)
def test_every_engine_runs_a_tiny_plan(engine, tiny_plan_ref, tmp_path):
    needs = ENGINE_NEEDS.get(engine)
    src, ref = tiny_plan_ref
    with needs.context() if needs else contextlib.nullcontext():
        r = run_plan(_tiny_plan(src, tmp_path / engine, engine), executor=get_executor(engine, workers=1))
    assert r.exit_code == 0 and r.written == 6 and not r.bad
    assert _outputs(tmp_path / engine) == ref  # images, manifest and errors: byte for byte


def test_augment_and_preview_say_the_batch_section_is_for_training(tmp_path):
    """A recipe's batch: section (mixup/cutmix) mixes training batches; augment and preview say so
    instead of ignoring it silently."""
    from typer.testing import CliRunner

    from augkit.cli import app

    src = Path(__file__).resolve().parents[1] / "samples"
    runner = CliRunner()
    res = runner.invoke(app, ["augment", str(src), str(tmp_path / "out"), "-r", "digits-mixup", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "batch section (mixup) applies in `augkit train` only" in res.output
    res = runner.invoke(app, ["preview", str(src), "-r", "digits-mixup", "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert "batch section (mixup) is not shown" in res.output
    assert (tmp_path / "p.png").stat().st_size > 0
