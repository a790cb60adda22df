"""Architectures beyond ResNet: every torchvision classifier has a family and a head
augkit finds; per family, head mode trains exactly the new head and leaves BatchNorm statistics
alone; checkpoints rebuild any of them; train -> predict -> evaluate -> export end to end; the
exit-2 messages for an unknown architecture, a size the model cannot take and a missing extra.

Cheap by design: the families are checked with 2 tiny images and one optimizer step (ViT-B/16 at
its required 224 px, with the backbone frozen so backward stops at the head); the end-to-end runs
use 3 digit classes at 32 px, one epoch, random weights.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import torch
from _digits import digits_folder
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.io.images import DECODE_POLICY
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.models import archs
from augkit.models.archs import build_model, check_arch, family_of, head_name, torchvision_archs
from augkit.models.checkpoint import ModelMeta, load_model, save_checkpoint
from augkit.models.weights import load_backbone_weights
from augkit.training.freeze import set_phase, split_params, train_mode

runner = CliRunner()
TIMM_MODEL = "timm/mobilenetv3_small_050"
#: (arch, input side, head module name): one model per family the issue names.
FAMILIES = [
    ("resnet18", 32, "fc"),
    ("convnext_tiny", 32, "classifier.2"),
    ("efficientnet_b0", 32, "classifier.1"),
    ("mobilenet_v3_small", 32, "classifier.3"),
    ("regnet_y_400mf", 32, "fc"),
    ("vit_b_16", 224, "heads.head"),
    (TIMM_MODEL, 32, "classifier"),
]


def _needs(arch: str) -> None:
    if archs.is_timm(arch):
        pytest.importorskip("timm")


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_every_torchvision_classifier_has_a_family():
    names = torchvision_archs()
    assert len(names) >= 80 and {"resnet18", "convnext_tiny", "vit_b_16", "maxvit_t"} <= set(names)
    assert [n for n in names if family_of(n) == "other"] == []


@pytest.mark.parametrize("arch,size,head", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_head_mode_trains_only_the_new_head_and_keeps_batchnorm_stats(arch, size, head):
    _needs(arch)
    torch.manual_seed(0)
    model = build_model(arch, 3)
    assert head_name(model) == head
    set_phase(model, "head")
    train_mode(model, "head")
    backbone, new_head = split_params(model)
    assert [tuple(p.shape) for p in new_head][0][0] == 3 and len(new_head) == 2
    assert all(not p.requires_grad for p in backbone) and all(p.requires_grad for p in new_head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 3)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    # only the head moves (a random EfficientNet's eval-mode features are ~1e-14, so its weight barely does)
    assert f"{head}.bias" in changed and changed <= {f"{head}.weight", f"{head}.bias"}, sorted(changed)[:5]
    assert model.get_submodule(head).weight.grad is not None
    assert all(p.grad is None for p in backbone)  # backward stopped at the head
    assert any("running_mean" in k for k in before) or arch.startswith(("vit", "convnext"))


def test_head_mode_keeps_the_dropout_in_front_of_the_head():
    model = build_model("efficientnet_b0", 3)
    train_mode(model, "head")
    assert model.classifier.training and model.classifier[0].training  # Dropout before the new head
    assert not model.features.training
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_backbone_weights_load_around_any_head():
    src, dst = build_model("mobilenet_v3_small", 10), build_model("mobilenet_v3_small", 3)
    loaded = load_backbone_weights(dst, src.state_dict(), "src")
    assert "classifier.0.weight" in loaded and "classifier.3.weight" not in loaded  # the pretrained 576->1024 stays
    assert torch.equal(dst.state_dict()["classifier.0.weight"], src.state_dict()["classifier.0.weight"])
    with pytest.raises(UsageError, match="weights do not fit this architecture"):
        load_backbone_weights(dst, build_model("resnet18", 3).state_dict(), "resnet weights")


def _meta(arch: str, size: int = 32) -> ModelMeta:
    classes = ["a", "b", "c"]
    return ModelMeta(
        arch=arch,
        classes=classes,
        class_to_idx={c: i for i, c in enumerate(classes)},
        image_size=size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        decode_policy=DECODE_POLICY,
        resize_policy=RESIZE_POLICY,
    )


@pytest.mark.parametrize("arch", ["efficientnet_b0", "squeezenet1_1", TIMM_MODEL])
def test_a_checkpoint_rebuilds_its_architecture(arch, tmp_path):
    _needs(arch)
    torch.manual_seed(1)
    model = build_model(arch, 3).eval()
    save_checkpoint(tmp_path / "best.pt", model, _meta(arch))
    loaded, meta = load_model(tmp_path)
    assert meta.arch == arch and meta.arch_source == archs.arch_source(arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_timm_checkpoint_without_timm_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    save_checkpoint(tmp_path / "best.pt", build_model(TIMM_MODEL, 3), _meta(TIMM_MODEL))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    with pytest.raises(UsageError, match=r'pip install "augkit\[timm\]"'):
        load_model(tmp_path)
    with pytest.raises(UsageError, match=r'pip install "augkit\[timm\]"'):
        check_arch(TIMM_MODEL)


@pytest.mark.parametrize(
    "arch,size,message",
    [
        ("resnet19", 32, r"unknown arch 'resnet19'; did you mean 'resnet18'"),
        ("convnext_tiy", 32, r"did you mean 'convnext_tiny'"),
        ("vit_b_16", 64, r"vit_b_16 cannot take 64 px images .*needs exactly 224 px; use --image-size 224"),
        ("maxvit_t", 96, r"maxvit_t cannot take 96 px images .*ImageNet size is 224 px"),
    ],
)
def test_train_refuses_an_unknown_arch_or_a_size_it_cannot_take(arch, size, message, tmp_path):
    data = digits_folder(tmp_path / "data", per_class=2)
    res = cli(
        "train",
        data,
        "-o",
        tmp_path / "run",
        "--arch",
        arch,
        "--image-size",
        size,
        "--weights",
        "none",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert res.exit_code == 2, res.output
    assert re.search(message, " ".join(res.output.split())), res.output
    assert not (tmp_path / "run" / "best.pt").exists()


def test_timm_names_are_checked_with_did_you_mean():
    pytest.importorskip("timm")
    with pytest.raises(UsageError, match=r"timm has no model 'resnet19'; did you mean 'resnet18'"):
        check_arch("timm/resnet19")


def test_models_command_lists_names_sizes_and_parameters():
    res = cli("models", "--format", "csv", "vit_b_16")
    assert res.exit_code == 0, res.output
    assert "vit_b_16,ViT,224,86567656,torchvision" in res.output
    res = cli("models", "efficientnet_b7", "--format", "csv")
    assert "efficientnet_b7,EfficientNet,600,66347960,torchvision" in res.output
    res = cli("models", "nothing-like-this")
    assert res.exit_code == 2 and "no architecture matches" in res.output


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("arch,size", [(a, s) for a, s, _ in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_train_predict_evaluate_export_end_to_end(arch, size, tmp_path):
    """Every family the issue names: one epoch from random weights, predict, evaluate, export;
    predict on the exported .onnx gives the run's labels."""
    _needs(arch)
    data = digits_folder(tmp_path / "data", per_class=4 if size <= 64 else 2)
    run = tmp_path / "run"
    res = cli(
        "train",
        data,
        "-o",
        run,
        "--arch",
        arch,
        "--weights",
        "none",
        "--epochs",
        "1",
        "--image-size",
        size,
        "--recipe",
        "none",
        "--batch-size",
        6,
        "--workers",
        0,
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    res = cli("predict", run, data, "-o", tmp_path / "run.csv", "--tta", "flip", "--workers", 0, "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = cli("evaluate", run, data, "--tta", "flip", "--workers", 0, "--device", "cpu")
    assert res.exit_code == 0, res.output
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    res = cli("export", run, "-o", tmp_path / "m.onnx", "--tta", "flip")
    assert res.exit_code == 0, res.output
    res = cli("predict", tmp_path / "m.onnx", data, "-o", tmp_path / "onnx.csv", "--tta", "flip", "--workers", 0)
    assert res.exit_code == 0, res.output
    assert [r["label"] for r in _read(tmp_path / "onnx.csv")] == [r["label"] for r in _read(tmp_path / "run.csv")]


def test_importing_augkit_imports_neither_timm_nor_onnx():
    """The extras load only when used: timm for a timm/ arch, onnxruntime for an .onnx or an export."""
    import subprocess

    code = (
        "import sys, augkit, augkit.models.archs, augkit.models.weights, augkit.infer.engine, augkit.infer.predict, augkit.infer.export, "
        "augkit.commands.models, augkit.commands.export; "
        "print(sorted(m for m in ('timm', 'onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("arch", ["googlenet", "mobilenet_v3_small"])
def test_imagenet_weights_path_loads_every_weight_but_the_head(arch, monkeypatch):
    """``--weights imagenet``'s real code path with the download replaced by torchvision's own
    1000-class model of the same architecture (GoogLeNet's ImageNet weights carry auxiliary heads
    augkit builds without: dropped)."""
    import torchvision

    from augkit.models.weights import imagenet_state_dict

    kwargs = {"aux_logits": True, "init_weights": True} if arch == "googlenet" else {}
    reference = torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()
    monkeypatch.setattr(torchvision.models.get_model_weights(arch), "get_state_dict", lambda self, *a, **k: reference)
    state = imagenet_state_dict(arch)
    assert not any(k.startswith(("aux1.", "aux2.")) for k in state)
    model = build_model(arch, 3)
    loaded = load_backbone_weights(model, state, f"ImageNet weights for {arch}")
    head = head_name(model)
    assert loaded and all(not k.startswith(head + ".") for k in loaded)
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in loaded)
